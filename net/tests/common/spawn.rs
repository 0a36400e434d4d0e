//! Starting the real `shardline serve` binary for the end-to-end tests (cli_e2e, queue_e2e,
//! semantics_e2e): 127.0.0.1 with an ephemeral port, two shards, the given data directory; and
//! [`ServerProc`], such a process owned by a test (signalled by its pid, reaped when dropped).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shardline_net::client::{Client, ClientConfig};

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

/// A `shardline serve` process this test started ([`serve`]); SIGKILLed and reaped when
/// dropped.
pub(crate) struct ServerProc {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl ServerProc {
    /// Starts this package's `shardline` binary with [`serve`] on `dir`.
    pub(crate) fn start(dir: &Path) -> ServerProc {
        let (child, addr) = serve(env!("CARGO_BIN_EXE_shardline"), dir);
        ServerProc { child, addr }
    }

    /// A client of the server with the default configuration.
    pub(crate) fn client(&self) -> Client {
        self.client_with(ClientConfig::default())
    }

    pub(crate) fn client_with(&self, config: ClientConfig) -> Client {
        Client::connect(&self.addr, config).unwrap()
    }

    /// Sends `signal` to the process, then waits (bounded: 30 s) for its exit status.
    pub(crate) fn stop(mut self, signal: libc::c_int) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling the child we started, by its pid.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
