//! The dependency rule of `shared/src`, checked over its source text.
//!
//! The crate is arranged in layers, each a folder (or, for a domain, one
//! folder per domain):
//!
//! | layer   | folders                                                    |
//! |---------|------------------------------------------------------------|
//! | kernel  | `kernel/`                                                  |
//! | ports   | `ports/`                                                   |
//! | web     | `web/`                                                     |
//! | domains | `activity/`, `users/`, `credits/`, `characters/`, ...      |
//! | runtime | `runtime/`                                                 |
//!
//! A module may name (`use crate::...`, `super::...` or an inline
//! `crate::...` path) only modules of its own layer or of a lower one; a
//! domain may name other domains, but the domains' graph has no cycle. So no
//! import cycle spans more than one folder of the table: the rule
//! `docs/architecture.md` states. The test prints the figures that document
//! quotes (files in import cycles, the largest functions).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers bottom to top. A top-level module not listed is a domain.
const LAYERS: [(&str, usize); 4] = [("kernel", 0), ("ports", 1), ("web", 2), ("runtime", 4)];
const DOMAIN_LAYER: usize = 3;

type Module = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `characters/routes.rs` -> `[characters, routes]`; `jobs/mod.rs` -> `[jobs]`.
fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).expect("file under src");
    let mut parts: Module = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Source without comments and string literals, so that only code is read.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            i += end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = &rest[2 + hashes..];
            let end = body.find(&close).map_or(body.len(), |e| e + close.len());
            i += 2 + hashes + end;
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() {
                match bytes[i + j] {
                    b'\\' => j += 2,
                    b'"' => {
                        j += 1;
                        break;
                    }
                    _ => j += 1,
                }
            }
            i += j;
            out.push_str("\"\"");
        } else if rest.starts_with('\'') && rest.len() > 3 && rest[1..].starts_with('\\') {
            // A char literal with an escape such as '\'' or '\\'.
            let end = rest[2..].find('\'').map_or(rest.len(), |e| e + 3);
            i += end.max(4).min(rest.len());
        } else if rest.starts_with('\'') && rest.len() > 2 && rest.as_bytes()[2] == b'\'' {
            i += 3;
        } else {
            let ch = rest.chars().next().expect("non-empty");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::d}`) into its paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Module>) {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{') {
        let inner = &inner[..inner.rfind('}').unwrap_or(inner.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !inner[start..].trim().is_empty() {
            expand(prefix, &inner[start..], out);
        }
        return;
    }
    match tree.split_once("::") {
        Some((head, rest)) => {
            let mut next = prefix.to_vec();
            next.push(head.trim().to_string());
            expand(&next, rest, out);
        }
        None => {
            let name = tree.split_whitespace().next().unwrap_or("");
            let mut path = prefix.to_vec();
            if !name.is_empty() && name != "self" && name != "*" {
                path.push(name.to_string());
            }
            out.push(path);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path a file names: its `use` trees and its inline
/// `crate::`/`super::` paths, as written (relative forms unresolved).
fn named_paths(code: &str) -> Vec<Module> {
    let mut paths = Vec::new();
    // `use` declarations, possibly spanning lines.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !is_ident(rest[..at].chars().last().unwrap_or(' '));
        let after = &rest[at + 4..];
        if before_ok
            && (after.trim_start().starts_with("crate::")
                || after.trim_start().starts_with("super::")
                || after.trim_start().starts_with("self::"))
        {
            let end = after.find(';').unwrap_or(after.len());
            expand(&[], &after[..end], &mut paths);
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    // Inline paths.
    for keyword in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(keyword) {
            let prev = rest[..at].chars().last().unwrap_or(' ');
            let after = &rest[at..];
            rest = &rest[at + keyword.len()..];
            if is_ident(prev) || prev == ':' {
                continue;
            }
            let path: String = after
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            let parts: Module = path
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            paths.push(parts);
        }
    }
    paths
}

struct Crate {
    files: BTreeMap<Module, PathBuf>,
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

fn read_crate() -> Crate {
    let root = src_dir();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let files: BTreeMap<Module, PathBuf> = paths
        .into_iter()
        .map(|path| (module_of(&root, &path), path))
        .collect();
    let mut edges = BTreeMap::new();
    for (module, path) in &files {
        let source = std::fs::read_to_string(path).expect("readable source");
        let mut targets = BTreeSet::new();
        for named in named_paths(&code_only(&source)) {
            let full: Module = match named.first().map(String::as_str) {
                Some("crate") => named[1..].to_vec(),
                Some("super") => {
                    let mut base = module.clone();
                    let mut rest = &named[..];
                    while rest.first().map(String::as_str) == Some("super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                Some("self") => {
                    let mut base = module.clone();
                    base.extend(named[1..].iter().cloned());
                    base
                }
                _ => continue,
            };
            if let Some(target) = (1..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|prefix| files.contains_key(prefix))
                && &target != module
            {
                targets.insert(target);
            }
        }
        edges.insert(module.clone(), targets);
    }
    Crate { files, edges }
}

/// The layer (or domain) folder a module belongs to.
fn top(module: &Module) -> String {
    module.first().cloned().unwrap_or_else(|| "lib".into())
}

/// The folder whose files may form a cycle among themselves: a domain's
/// folder, or one module (file or folder) of a layer folder
/// (`ports/storage`, `kernel/config`).
fn unit(module: &Module) -> String {
    let first = top(module);
    match module.get(1) {
        Some(second) if layer(&first) != DOMAIN_LAYER => format!("{first}/{second}"),
        _ => first,
    }
}

fn layer(unit: &str) -> usize {
    LAYERS
        .iter()
        .find(|(name, _)| *name == unit)
        .map_or(DOMAIN_LAYER, |(_, layer)| *layer)
}

/// Strongly connected components (Tarjan) of a graph given as edges.
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct State<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on_stack: BTreeSet<N>,
        next: usize,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(v: &N, edges: &BTreeMap<N, BTreeSet<N>>, s: &mut State<N>) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on_stack.insert(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("on the stack");
                s.on_stack.remove(&w);
                let done = &w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(v, edges, &mut state);
        }
    }
    state.out
}

fn show(module: &Module) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("/")
    }
}

#[test]
fn the_parser_reads_use_trees_and_inline_paths() {
    let code = code_only(
        "use crate::a::{b, c::{d, e as f}};\n// use crate::not_me;\nlet s = \"crate::nor_me\";\nuse super::g;\nfn x() { crate::h::i(); }",
    );
    let found: BTreeSet<String> = named_paths(&code).iter().map(|p| p.join("::")).collect();
    // Every path of the use tree and the inline call; a path's prefix (`crate::a`, from the
    // inline scan stopping at `{`) resolves to the same module and does no harm.
    for expected in [
        "crate::a::b",
        "crate::a::c::d",
        "crate::a::c::e",
        "crate::h::i",
        "super::g",
    ] {
        assert!(
            found.contains(expected),
            "{expected} missing from {found:?}"
        );
    }
    // Nothing from comments or string literals.
    assert!(
        found
            .iter()
            .all(|p| !p.contains("not_me") && !p.contains("nor_me")),
        "{found:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let krate = read_crate();
    let mut upward = Vec::new();
    for (from, targets) in &krate.edges {
        for to in targets {
            let (a, b) = (top(from), top(to));
            if a != "lib" && layer(&a) < layer(&b) {
                upward.push(format!("{} -> {}", show(from), show(to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one (kernel < ports < web < domains < runtime):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_cycle_spans_two_folders() {
    let krate = read_crate();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut witness: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, targets) in &krate.edges {
        let a = unit(from);
        if a == "lib" {
            continue;
        }
        folders.entry(a.clone()).or_default();
        for to in targets {
            let b = unit(to);
            if a != b {
                folders.entry(a.clone()).or_default().insert(b.clone());
                witness
                    .entry((a.clone(), b))
                    .or_insert_with(|| format!("{} -> {}", show(from), show(to)));
            }
        }
    }
    let found = cycles(&folders);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let members: BTreeSet<&String> = component.iter().collect();
            let edges: Vec<&String> = witness
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|(_, w)| w)
                .collect();
            format!(
                "{:?}, through e.g. {:?}",
                members,
                edges.iter().take(6).collect::<Vec<_>>()
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles spanning folders:\n{}",
        described.join("\n")
    );

    // The figures docs/architecture.md quotes.
    let file_cycles = cycles(&krate.edges);
    let in_cycles: usize = file_cycles.iter().map(Vec::len).sum();
    println!(
        "shared/src: {} files, {} in import cycles ({} cycles, largest {})",
        krate.files.len(),
        in_cycles,
        file_cycles.len(),
        file_cycles.iter().map(Vec::len).max().unwrap_or(0)
    );
}
