//! The SAM template deploys every function crate, and nothing else: each crate
//! under `functions/` has an `AWS::Serverless::Function` resource whose
//! `Metadata.BuildProperties.Binary` names the crate's binary, and each function resource
//! names a binary some crate builds.
//!
//! The template is read as text (no YAML crate in the workspace): top-level
//! resources are the keys indented two spaces under `Resources:`, and the
//! `Type`, `BuildMethod` and `Binary` lines inside each one are enough here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent")
        .to_path_buf()
}

/// The binary each crate under `functions/` builds: its `[[bin]] name`, else
/// the package name (what `cargo lambda build` and `Binary:` refer to).
fn function_binaries() -> BTreeMap<String, String> {
    let mut binaries = BTreeMap::new();
    let dir = repo_root().join("functions");
    for entry in std::fs::read_dir(&dir).expect("functions/ is readable") {
        let path = entry.expect("directory entry").path();
        let manifest = path.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).expect("Cargo.toml is readable");
        let mut section = String::new();
        let mut package_name = None;
        let mut bin_name = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            let Some(value) = line
                .strip_prefix("name")
                .and_then(|rest| rest.trim_start().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
            else {
                continue;
            };
            match section.as_str() {
                "[package]" => package_name = package_name.or(Some(value)),
                "[[bin]]" => bin_name = bin_name.or(Some(value)),
                _ => {}
            }
        }
        let crate_dir = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 directory name")
            .to_string();
        let binary = bin_name
            .or(package_name)
            .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
        binaries.insert(crate_dir, binary);
    }
    binaries
}

#[derive(Debug, Default)]
struct Resource {
    kind: Option<String>,
    build_method: Option<String>,
    binary: Option<String>,
}

/// The top-level resources of the template, by logical id.
fn template_resources(text: &str) -> BTreeMap<String, Resource> {
    let mut resources: BTreeMap<String, Resource> = BTreeMap::new();
    let mut in_resources = false;
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if indent == 0 {
            in_resources = content == "Resources:";
            current = None;
            continue;
        }
        if !in_resources {
            continue;
        }
        if indent == 2 {
            let id = content.trim_end_matches(':').to_string();
            resources.entry(id.clone()).or_default();
            current = Some(id);
            continue;
        }
        let Some(id) = &current else { continue };
        let resource = resources.get_mut(id).expect("resource was inserted");
        let value_of = |key: &str| {
            content
                .strip_prefix(key)
                .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        };
        if indent == 4 {
            if let Some(kind) = value_of("Type:") {
                resource.kind = Some(kind);
            }
        } else if let Some(method) = value_of("BuildMethod:") {
            resource.build_method = Some(method);
        } else if let Some(binary) = value_of("Binary:") {
            resource.binary = Some(binary);
        }
    }
    resources
}

#[test]
fn every_function_crate_has_a_template_resource_and_vice_versa() {
    let path = repo_root().join("template.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()));
    let resources = template_resources(&text);

    let crates = function_binaries();
    assert!(
        crates.len() >= 6,
        "expected the six function crates, found {crates:?}"
    );

    let mut deployed: BTreeMap<String, String> = BTreeMap::new();
    for (id, resource) in &resources {
        if resource.kind.as_deref() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource
            .binary
            .clone()
            .unwrap_or_else(|| panic!("function resource {id} has no Metadata Binary"));
        assert_eq!(
            resource.build_method.as_deref(),
            Some("rust-cargolambda"),
            "function resource {id} must build with cargo lambda"
        );
        if let Some(other) = deployed.insert(binary.clone(), id.clone()) {
            panic!("binary {binary} is deployed twice: by {other} and {id}");
        }
    }

    let built: BTreeSet<&String> = crates.values().collect();
    for (crate_dir, binary) in &crates {
        assert!(
            deployed.contains_key(binary),
            "functions/{crate_dir} (binary {binary}) has no AWS::Serverless::Function \
             with `Binary: {binary}` in template.yaml"
        );
    }
    for (binary, id) in &deployed {
        assert!(
            built.contains(binary),
            "template resource {id} deploys binary {binary}, which no crate under functions/ builds"
        );
    }
}

#[test]
fn the_text_reader_finds_resources_types_and_binaries() {
    let text = "\
Transform: AWS::Serverless-2016-10-31
Resources:
  AuthFunction:
    Type: AWS::Serverless::Function
    Metadata:
      BuildMethod: rust-cargolambda
      Binary: auth
    Properties:
      Handler: bootstrap
  # a comment
  JobsQueue:
    Type: AWS::SQS::Queue
Outputs:
  Binary: not-a-resource
";
    let resources = template_resources(text);
    assert_eq!(resources.len(), 2);
    let auth = &resources["AuthFunction"];
    assert_eq!(auth.kind.as_deref(), Some("AWS::Serverless::Function"));
    assert_eq!(auth.build_method.as_deref(), Some("rust-cargolambda"));
    assert_eq!(auth.binary.as_deref(), Some("auth"));
    assert_eq!(
        resources["JobsQueue"].kind.as_deref(),
        Some("AWS::SQS::Queue")
    );
    assert!(resources["JobsQueue"].binary.is_none());
}
