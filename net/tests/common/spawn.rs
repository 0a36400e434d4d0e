//! Starting the real `shardline serve` binary for the end-to-end tests (cli_e2e, queue_e2e,
//! semantics_e2e): 127.0.0.1 with an ephemeral port, two shards, the given data directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Spawns `bin serve` on `dir` and returns the child and the address it printed.
pub(crate) fn serve(bin: &str, dir: &Path) -> (Child, String) {
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("shardline listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    (child, addr)
}
