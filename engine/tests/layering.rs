//! The engine's layers (docs/architecture.md, "Layers"): a module imports only from its own
//! layer and the layers below it. This test reads every `.rs` file under `engine/src`, collects
//! the `crate::<module>` paths it uses (in `use` lines, grouped `use crate::{..}` lists and
//! inline paths; comments are skipped), and fails naming the file and line of every path that
//! reaches a higher layer, or a module the table below does not place.

use std::path::{Path, PathBuf};

/// Bottom up. A new top-level module must be placed here (the test fails until it is).
const LAYERS: &[(&str, &[&str])] = &[
    (
        "format and API types",
        &["batch", "api", "error", "crypto", "util"],
    ),
    (
        "storage, runtime seam and log",
        &[
            "storage",
            "rt",
            "log",
            "config",
            "metadata",
            "producer_ids",
            "metrics",
        ],
    ),
    ("partition core", &["partition", "idempotence"]),
    // Raft groups over partition logs (docs/replication.md): drives partition cores.
    ("replication", &["replication"]),
    ("shard (runtime shell)", &["shard"]),
    // `engine`, `groups` and `queue` are the crate root's re-exports of `broker::*`.
    ("broker", &["broker", "engine", "groups", "queue"]),
    // Test infrastructure on top: nothing imports it (it drives the partition core).
    ("simulator", &["sim"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a file under `src` belongs to (`None` for the crate root, which
/// re-exports every layer).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// `(line number, module)` for every `crate::<module>` the source names outside comments.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Inside `crate::{ ... }` (possibly over several lines).
    let mut group: Option<Group> = None;
    for (i, raw) in source.lines().enumerate() {
        let number = i + 1;
        let mut rest = raw.split("//").next().unwrap_or("");
        loop {
            if let Some(g) = group.as_mut() {
                match g.feed(rest, number, &mut out) {
                    Some(used) => {
                        rest = &rest[used..];
                        group = None;
                    }
                    None => break,
                }
            }
            let Some(at) = rest.find("crate::") else {
                break;
            };
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `$crate::` (macros) and `foo_crate::` are other crates.
            if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(list) = rest.strip_prefix('{') {
                rest = list;
                group = Some(Group::default());
                continue;
            }
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.push((number, ident));
            }
        }
    }
    out
}

/// The first segment of each path in a `use crate::{a::b, c, d::{e, f}}` list (top-level
/// items only: nested braces belong to the item before them).
#[derive(Default)]
struct Group {
    depth: usize,
    /// The next identifier at depth 0 starts an item (after `{` or `,`).
    between_items: bool,
    started: bool,
    ident: String,
}

impl Group {
    /// Reads `text` (one line's rest); `Some(bytes used)` once the list's closing brace is read.
    fn feed(&mut self, text: &str, line: usize, out: &mut Vec<(usize, String)>) -> Option<usize> {
        if !self.started {
            self.started = true;
            self.between_items = true;
        }
        for (i, c) in text.char_indices() {
            let in_ident = c.is_alphanumeric() || c == '_';
            if self.depth == 0 && self.between_items && in_ident {
                self.ident.push(c);
                continue;
            }
            if !self.ident.is_empty() {
                let ident = std::mem::take(&mut self.ident);
                if ident != "self" {
                    out.push((line, ident));
                }
                self.between_items = false;
            }
            match c {
                '{' => self.depth += 1,
                '}' if self.depth == 0 => return Some(i + 1),
                '}' => self.depth -= 1,
                ',' if self.depth == 0 => self.between_items = true,
                _ => {}
            }
        }
        None
    }
}

/// Every violation in one file: "file:line: `from` (layer n) imports `to` (layer m)".
fn check_file(relative: &Path, source: &str) -> Vec<String> {
    let Some(module) = module_of(relative) else {
        return Vec::new();
    };
    let Some(own) = layer_of(&module) else {
        return vec![format!(
            "{}: module `{module}` is in no layer of tests/layering.rs",
            relative.display()
        )];
    };
    let mut out = Vec::new();
    for (line, target) in crate_paths(source) {
        match layer_of(&target) {
            Some(l) if l <= own => {}
            Some(l) => out.push(format!(
                "{}:{line}: `{module}` ({}) imports `crate::{target}` ({}), a higher layer",
                relative.display(),
                LAYERS[own].0,
                LAYERS[l].0
            )),
            None => out.push(format!(
                "{}:{line}: `crate::{target}` is in no layer of tests/layering.rs",
                relative.display()
            )),
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.map(|e| e.path())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

// Proves: no file under engine/src imports from a layer above its own, and every module is
// placed in a layer.
#[test]
fn no_module_imports_from_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut violations = Vec::new();
    let mut paths_seen = 0;
    for path in &files {
        let source = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let Ok(relative) = path.strip_prefix(&src) else {
            panic!("{} is not under {}", path.display(), src.display());
        };
        paths_seen += crate_paths(&source).len();
        violations.extend(check_file(relative, &source));
    }
    assert!(
        paths_seen > 100,
        "the scanner found only {paths_seen} crate paths"
    );
    assert!(
        violations.is_empty(),
        "imports from a higher layer (docs/architecture.md, \"Layers\"):\n{}",
        violations.join("\n")
    );
}

// Proves: the checker itself catches an upward import in each form it reads (a `use` line, a
// grouped list spanning lines, an inline path) and an unplaced module, and ignores comments
// and other crates' paths.
#[test]
fn the_checker_reports_upward_imports() {
    let upward = "use crate::error::Result;\nuse crate::shard::Acks;\n";
    let v = check_file(Path::new("log/mod.rs"), upward);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("log/mod.rs:2: `log`"), "{v:?}");

    let grouped = "use crate::{\n    batch::Header,\n    broker::Engine,\n};\n";
    let v = check_file(Path::new("shard.rs"), grouped);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("shard.rs:3") && v[0].contains("crate::broker"),
        "{v:?}"
    );

    let one_line = "use crate::{api::{Acks, OffsetSpec}, queue::QueueConfig};";
    let v = check_file(Path::new("config.rs"), one_line);
    assert_eq!(v.len(), 1, "{v:?}");

    let inline = "fn f() { let _ = crate::engine::Engine::open; }";
    assert_eq!(check_file(Path::new("partition/core.rs"), inline).len(), 1);

    let ignored = "// crate::broker in a comment\nmacro_rules! m { () => { $crate::shard::X } }\nuse shardline_crate::broker;\n";
    assert!(check_file(Path::new("batch.rs"), ignored).is_empty());

    assert_eq!(
        check_file(Path::new("newthing.rs"), "").len(),
        1,
        "unplaced module"
    );
    assert_eq!(
        check_file(Path::new("api/mod.rs"), "use crate::nowhere::X;").len(),
        1
    );
    assert!(
        check_file(Path::new("broker/engine.rs"), upward).is_empty(),
        "downward is fine"
    );
}
