//! The real `shardline serve` process: started on 127.0.0.1 with an ephemeral port, killed,
//! paused and resumed by its PID (only processes this harness started).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the `shardline` binary is: `$SHARDLINE_BIN`, or next to this executable's directory
/// (`target/<profile>/`, which `cargo test --workspace` and `cargo build` fill).
pub fn shardline_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDLINE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("shardline");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the shardline binary near {}: build it first \
         (cargo build -p shardline-net --bin shardline) or set SHARDLINE_BIN",
        exe.display()
    )
}

/// A running server and how to reach it.
pub struct ServerProc {
    child: Child,
    pub addr: String,
    pub pid: u32,
    /// From spawn to the "listening" line (recovery included).
    pub start_time: Duration,
}

/// How to start the server: the same every time, so restarts find their data.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub shards: usize,
    /// Longest a start (with recovery) may take before it counts as a failure.
    pub start_timeout: Duration,
}

impl ServerSpec {
    /// Writes the TOML config the server starts with: small segments (rolls happen), bounded
    /// unflushed bytes and cache (memory limits the harness checks).
    pub fn write_config(
        dir: &Path,
        segment_bytes: u64,
        unflushed_bytes_max: u64,
        cache_bytes: u64,
    ) -> anyhow::Result<PathBuf> {
        let path = dir.join("torture-server.toml");
        let text = format!(
            "[engine]\nunflushed_bytes_max_per_shard = {unflushed_bytes_max}\n\
             cache_bytes_per_shard = {cache_bytes}\nsync_interval_ms = 50\n\
             [engine.topic_defaults]\nsegment_bytes = {segment_bytes}\n"
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn start(&self) -> anyhow::Result<ServerProc> {
        let t0 = Instant::now();
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0", "--shards"])
            .arg(self.shards.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("server stdout")?;
        // The first line names the address; read it on a thread so a hung start times out.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(r.read_line(&mut line).map(|_| line));
            // Drain the rest so the server never blocks on a full pipe.
            let mut sink = String::new();
            while r.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        let line = match rx.recv_timeout(self.start_timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                kill(pid, libc::SIGKILL);
                let _ = child.wait();
                bail!("reading the server's first line: {e}");
            }
            Err(_) => {
                kill(pid, libc::SIGKILL);
                let _ = child.wait();
                bail!("server did not start within {:?}", self.start_timeout);
            }
        };
        let Some(addr) = line.trim().strip_prefix("shardline listening on ") else {
            kill(pid, libc::SIGKILL);
            let status = child.wait().ok();
            bail!("server printed {line:?} instead of its address (exit: {status:?})");
        };
        Ok(ServerProc {
            addr: addr.to_string(),
            pid,
            child,
            start_time: t0.elapsed(),
        })
    }
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a PID this harness spawned and has not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

impl ServerProc {
    /// SIGKILL and reap (the process is gone; start a new one).
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        kill(self.pid, libc::SIGKILL);
        self.child.wait().context("reaping the server")?;
        Ok(())
    }

    pub fn pause(&self) {
        kill(self.pid, libc::SIGSTOP);
    }

    pub fn resume(&self) {
        kill(self.pid, libc::SIGCONT);
    }

    /// SIGTERM and wait (bounded) for the exit status; SIGKILL if it does not come.
    pub fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        kill(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                kill(self.pid, libc::SIGKILL);
                let _ = self.child.wait();
                bail!("server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (without reaping a live one).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Resident set size in bytes (`VmRSS` of /proc/PID/status).
    pub fn rss_bytes(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if !self.exited() {
            kill(self.pid, libc::SIGCONT);
            kill(self.pid, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
