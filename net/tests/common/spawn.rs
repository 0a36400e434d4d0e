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
    let addr = listening_addr(&mut child);
    (child, addr)
}

/// The protocol address a just-spawned `shardline serve` prints as its first stdout line.
pub(crate) fn listening_addr(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("shardline listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string()
}

/// Like [`serve`], with `/metrics` on an ephemeral port as well: returns the child, the
/// protocol address and the metrics address (from the start-up log, which names it before the
/// listening line is printed). Both pipes are drained so the server never blocks on them.
pub(crate) fn serve_with_metrics(bin: &str, dir: &Path) -> (Child, String, String) {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("shardline listening on ")
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_string();
    let metrics = (&mut err)
        .lines()
        .take(200)
        .map_while(Result::ok)
        .find_map(|l| {
            l.contains("metrics endpoint listening")
                .then(|| {
                    l.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                })
                .flatten()
        })
        .expect("the metrics address in the start-up log");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, addr, metrics)
}
