//! The README cannot drift from what the code does.
//!
//! - The walkthrough: every fenced `sh` block preceded by a line
//!   `<!-- readme-test -->` is run, in order and in one bash process
//!   (`set -euo pipefail`), against a local stack on a fresh database with
//!   its worker and schedules running, as a reader runs them against
//!   `cargo run -p local`: the commands reach the stack through `$BASE`. Each
//!   `curl` the blocks run reports its status, and the statuses of each block
//!   must be exactly the ones its `# → NNN` comments state, in order: a status
//!   that changed, a command without its stated status, or a command that
//!   fails is a failure naming the block.
//! - The Data section names every migration in `migrations/`.
//! - `samconfig.toml` names every parameter of `template.yaml`, and only
//!   those, and sets the flags `sam build` and `sam deploy` need.
//!
//! The walkthrough needs `bash` and `curl`, and uses `jq`; on a machine
//! without jq, a small stand-in (Python 3, which the test command needs
//! anyway) evaluates the few filters the README uses: paths such as
//! `.order.id`, `.items[].name`, optionally collected in `[...]`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use local::{LocalOptions, LocalStack};

const MARK: &str = "<!-- readme-test -->";
const STATUS_PREFIX: &str = "README-STATUS ";
const BLOCK_PREFIX: &str = "README-BLOCK ";
/// The whole walkthrough's deadline (a job renders in about a second).
const DEADLINE: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("local/ has a parent")
        .to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("README.md is readable")
}

/// A marked block: where it starts, its text, and the statuses it states.
#[derive(Debug)]
struct Block {
    line: usize,
    code: String,
    expected: Vec<u16>,
}

/// The statuses a block's `# → NNN` comments state, in order.
fn stated_statuses(code: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for line in code.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("# →") {
            rest = &rest[at + "# →".len()..];
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(status) = digits.parse() {
                statuses.push(status);
            }
        }
    }
    statuses
}

fn marked_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != MARK {
            i += 1;
            continue;
        }
        let open = i + 1;
        assert!(
            lines.get(open).map(|l| l.trim()) == Some("```sh"),
            "README.md:{}: {MARK} must be followed by a ```sh block",
            i + 1
        );
        let close = (open + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("README.md:{}: the block is not closed", open + 1));
        let code = lines[open + 1..close].join("\n");
        blocks.push(Block {
            line: open + 1,
            expected: stated_statuses(&code),
            code,
        });
        i = close + 1;
    }
    blocks
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The jq stand-in for machines without jq (see the module comment).
const JQ_STAND_IN: &str = r#"#!/usr/bin/env python3
import json, re, sys
raw, flt = False, None
for arg in sys.argv[1:]:
    if arg.startswith("-") and len(arg) > 1:
        raw = raw or "r" in arg
    elif flt is None:
        flt = arg
collect = flt.startswith("[") and flt.endswith("]")
path = flt[1:-1] if collect else flt
if path != "." and not re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*|\[\d*\])+", path):
    sys.exit("jq stand-in: unsupported filter %r; install jq" % flt)
values = [json.load(sys.stdin)]
for name, index in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d*)\]", path):
    step = []
    for value in values:
        if name:
            step.append(value.get(name) if isinstance(value, dict) else None)
        elif index == "":
            step.extend(value.values() if isinstance(value, dict) else value)
        else:
            step.append(value[int(index)] if int(index) < len(value) else None)
    values = step
if collect:
    values = [values]
for value in values:
    print(value if raw and isinstance(value, str) else json.dumps(value, indent=2))
"#;

/// The script: the curl wrapper (`-q`: no `~/.curlrc`, so the machine's
/// settings cannot change what runs), then each block behind a marker line.
fn script(blocks: &[Block]) -> String {
    let mut script = format!(
        "set -euo pipefail\n\
         curl() {{ command curl -q --write-out '%{{stderr}}{STATUS_PREFIX}%{{http_code}}\\n' \"$@\"; }}\n"
    );
    for (n, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo '{BLOCK_PREFIX}{n}' >&2\n{}\n", block.code));
    }
    script
}

/// The statuses each block's commands answered, from the script's stderr.
fn answered_statuses(stderr: &str, blocks: usize) -> Vec<Vec<u16>> {
    let mut answered: Vec<Vec<u16>> = vec![Vec::new(); blocks];
    let mut current = None;
    for line in stderr.lines() {
        if let Some(n) = line.strip_prefix(BLOCK_PREFIX) {
            current = n.trim().parse::<usize>().ok();
        } else if let Some(status) = line.strip_prefix(STATUS_PREFIX) {
            let block = current.expect("a status before the first block");
            answered[block].push(status.trim().parse().unwrap_or(0));
        }
    }
    answered
}

/// The end of a long output, for failure messages.
fn tail(text: &str) -> &str {
    const KEEP: usize = 6000;
    let mut start = text.len().saturating_sub(KEEP);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[test]
fn the_walkthrough_is_marked_and_states_its_statuses() {
    let blocks = marked_blocks(&readme());
    assert!(
        blocks.len() >= 8,
        "the walkthrough's blocks are marked {MARK}: found {}",
        blocks.len()
    );
    let text = blocks
        .iter()
        .map(|b| b.code.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    // From sign-in through an admin action, as the README promises.
    for step in [
        "/dev/token",
        "/api/v1/auth/session",
        "/api/v1/characters",
        "\"dry_run\": true",
        "/generate",
        "/api/v1/jobs/",
        "/images",
        "/download",
        "/api/v1/gallery",
        "/api/v1/credits/purchases",
        "/pay",
        "/api/v1/admin/",
    ] {
        assert!(
            text.contains(step),
            "the walkthrough lost its `{step}` step"
        );
    }
    for block in &blocks {
        let curls = block.code.matches("curl ").count();
        assert_eq!(
            curls,
            block.expected.len(),
            "README.md:{}: each curl states its status with `# → NNN`:\n{}",
            block.line,
            block.code
        );
    }
}

#[tokio::test]
async fn the_walkthrough_runs_as_written_against_the_local_stack() {
    assert!(on_path("bash"), "the README walkthrough test needs bash");
    assert!(
        on_path("curl"),
        "the README walkthrough test needs curl (Debian: apt-get install curl)"
    );
    let blocks = marked_blocks(&readme());
    assert!(!blocks.is_empty(), "no {MARK} blocks in README.md");

    let work = std::env::temp_dir().join(format!("readme-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).expect("a working directory");
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if !on_path("jq") {
        let shim = work.join("bin");
        std::fs::create_dir_all(&shim).expect("the jq stand-in's directory");
        let jq = shim.join("jq");
        std::fs::write(&jq, JQ_STAND_IN).expect("write the jq stand-in");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&jq, std::fs::Permissions::from_mode(0o755))
            .expect("make the jq stand-in executable");
        let mut dirs = vec![shim];
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs).expect("PATH");
    }

    // The stack as `cargo run -p local` runs it (worker and schedules on), on a
    // fresh database, logged in as the runtime login like every other test.
    let database_url = testkit::fresh_database().await;
    let stack = LocalStack::start(LocalOptions {
        port: 0,
        database_url: Some(testkit::runtime_url(&database_url)),
        migration_url: Some(database_url.clone()),
        data_dir: work.join("data"),
        signing_key: Some(testkit::signing_key()),
        background_tasks: true,
    })
    .await
    .expect("start the local stack");

    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(script(&blocks))
        .current_dir(&work)
        .env("BASE", &stack.base_url)
        .env("PATH", &path)
        // A proxy configured for the machine must not stand between curl and the stack.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run bash");
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the walkthrough did not finish within {DEADLINE:?}"))
        .expect("the walkthrough's output");
    stack.stop().await.expect("stop the local stack");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = || {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            tail(&stdout),
            tail(&stderr)
        )
    };

    let answered = answered_statuses(&stderr, blocks.len());
    for (block, answered) in blocks.iter().zip(&answered) {
        assert_eq!(
            answered,
            &block.expected,
            "README.md:{}: the block's commands answered {answered:?}, the README states {:?}:\n{}\n{}",
            block.line,
            block.expected,
            block.code,
            report()
        );
    }
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n{}",
        output.status,
        report()
    );
    // The image the walkthrough downloads is one.
    let png = std::fs::read(work.join("aria.png")).expect("the walkthrough saves aria.png");
    assert!(png.starts_with(b"\x89PNG"), "aria.png is not a PNG");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn the_data_section_covers_every_migration() {
    let readme = readme();
    let data = readme
        .split("\n## Data\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a Data section");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("migrations")).expect("migrations/") {
        let name = entry
            .expect("an entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".sql") && !data.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "the README's Data section does not describe {missing:?}"
    );
}

#[test]
fn samconfig_names_every_template_parameter_and_the_flags_sam_needs() {
    let template = std::fs::read_to_string(repo_root().join("template.yaml")).expect("template");
    let parameters: BTreeSet<String> = template
        .lines()
        .skip_while(|l| *l != "Parameters:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && !l.starts_with("  #"))
        .filter(|l| l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_string())
        .collect();
    assert!(parameters.len() > 20, "template parameters: {parameters:?}");

    let samconfig =
        std::fs::read_to_string(repo_root().join("samconfig.toml")).expect("samconfig.toml");
    // Entries ("Name=value") and the optional ones in comments ("# "Name=<...>",").
    let named: BTreeSet<String> = samconfig
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches('#').trim();
            let l = l.strip_prefix('"')?;
            let (name, _) = l.split_once('=')?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric())
                .then(|| name.to_string())
        })
        .collect();
    assert_eq!(named, parameters, "samconfig.toml's parameter_overrides");

    let flags: Vec<String> = samconfig
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .collect();
    for flag in [
        "beta_features = true",
        "capabilities = \"CAPABILITY_IAM\"",
        "resolve_s3 = true",
        "confirm_changeset = true",
    ] {
        assert!(
            flags.iter().any(|l| l == flag),
            "samconfig.toml lacks `{flag}`"
        );
    }
}
