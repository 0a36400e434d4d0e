//! A cluster of real `shardline serve` processes on 127.0.0.1 for tests (issue 14): N nodes
//! with `--node-id`/`--cluster` on free ports, each ready when it printed its listening line
//! and logged a link up to every other node (log lines, never a sleep); SIGKILL, SIGSTOP,
//! SIGCONT and restart by PID, of processes this harness started only.
//!
//! Depends on std, anyhow and libc only, so that net/tests can include it with `#[path]` (the
//! `shardline-tests` crate depends on `shardline-net`, which cannot depend back on it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One node: its ports and data directory (kept across restarts) and, while it runs, its
/// process.
pub struct Node {
    pub id: u64,
    /// Client address (`--listen`).
    pub addr: String,
    /// Node-to-node address (its cluster-list entry).
    pub peer_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    lines: Option<mpsc::Receiver<String>>,
    pub pid: Option<u32>,
    /// Whether it is stopped (SIGSTOP) now.
    pub stopped: bool,
}

/// N nodes of one cluster.
pub struct Cluster {
    pub bin: PathBuf,
    pub nodes: Vec<Node>,
    pub cluster_id: String,
    /// `1@127.0.0.1:P1,2@...`
    pub list: String,
    pub shards: usize,
    /// Extra `serve` arguments of every node.
    pub extra: Vec<String>,
    /// Extra `serve` arguments of one node (index `id - 1`; e.g. its own `--kafka-listen`).
    pub node_extra: Vec<Vec<String>>,
    /// Per-node cluster lists (index = id - 1), used instead of `list` when set: a fault proxy
    /// mesh (`mesh.rs`) points each node's entries for the others at proxies.
    pub node_lists: Vec<String>,
}

/// Ports free now (bound together, then released: the OS does not hand them out again soon).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("binding a free port")?;
    ls.iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<_, std::io::Error>>()
        .context("a free port")
}

fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid")?;
    // SAFETY: kill(2) with a PID this harness spawned and has not reaped yet.
    let r = unsafe { libc::kill(pid, sig) };
    if r != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Cluster {
    /// Lays out `n` nodes under `dir` (not started).
    pub fn new(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Cluster> {
        let ports = free_ports(2 * n)?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let id = i as u64 + 1;
            nodes.push(Node {
                id,
                addr: format!("127.0.0.1:{}", ports[2 * i]),
                peer_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
                data_dir: dir.join(format!("node-{id}")),
                child: None,
                lines: None,
                pid: None,
                stopped: false,
            });
        }
        let list = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            bin: bin.to_path_buf(),
            nodes,
            cluster_id: "test".into(),
            list,
            shards: 1,
            extra: Vec::new(),
            node_extra: Vec::new(),
            node_lists: Vec::new(),
        })
    }

    /// Every node's client address, comma separated (a client's bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// The `serve` command of node `id` (as `start` runs it), with `cluster_id`.
    pub fn command(&self, id: u64, cluster_id: &str) -> Command {
        let n = self.node(id);
        let list = self.node_lists.get((id - 1) as usize).unwrap_or(&self.list);
        let mut c = Command::new(&self.bin);
        c.args(["serve", "--listen", &n.addr, "--shards"])
            .arg(self.shards.to_string())
            .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&n.data_dir)
            .args(["--node-id", &id.to_string()])
            // An empty per-node list: the node's own flags say (`--join`, in `node_extra`).
            .args(["--cluster", list].iter().filter(|_| !list.is_empty()))
            .args(["--cluster-id", cluster_id])
            .args(&self.extra)
            .args(self.node_extra.get((id - 1) as usize).into_iter().flatten())
            .env("RUST_LOG", "info");
        c
    }

    /// Starts every node, then waits until each has its links up.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for id in 1..=self.nodes.len() as u64 {
            self.spawn(id)?;
        }
        for id in 1..=self.nodes.len() as u64 {
            self.wait_links(id, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Starts (or restarts) node `id` and waits for its listening line.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let cluster_id = self.cluster_id.clone();
        let mut child = self
            .command(id, &cluster_id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning shardline serve")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let err = BufReader::new(child.stderr.take().context("stderr")?);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut first = String::new();
        out.read_line(&mut first)
            .context("reading the listening line")?;
        if !first.starts_with("shardline listening on ") {
            let _ = child.kill();
            let _ = child.wait();
            let log: Vec<String> = rx.try_iter().collect();
            bail!("node {id} did not start: {first:?}; log: {log:?}");
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let n = &mut self.nodes[(id - 1) as usize];
        n.pid = Some(child.id());
        n.child = Some(child);
        n.lines = Some(rx);
        n.stopped = false;
        Ok(())
    }

    /// Waits for a log line of node `id` containing every word in `words`.
    pub fn wait_log(&self, id: u64, words: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let rx = self.node(id).lines.as_ref().context("node not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if words.iter().all(|w| line.contains(w)) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("node {id}: no log line with {words:?} within {timeout:?}"),
            }
        }
    }

    /// Waits until node `id` logged a link up to every other node.
    pub fn wait_links(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let mut up = std::collections::BTreeSet::new();
        let want = self.nodes.len() - 1;
        let deadline = Instant::now() + timeout;
        while up.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .wait_log(id, &["peer link up"], left)
                .with_context(|| format!("links of node {id}: {up:?} up"))?;
            if let Some(peer) = line.split("peer=").nth(1) {
                up.insert(peer.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        Ok(())
    }

    /// SIGKILL of node `id` (reaped).
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let n = &mut self.nodes[(id - 1) as usize];
        if let Some(mut c) = n.child.take() {
            if n.stopped {
                // A stopped process dies of SIGKILL too; wake it so nothing lingers.
                let _ = signal(c.id(), libc::SIGCONT);
            }
            signal(c.id(), libc::SIGKILL)?;
            c.wait().context("reaping")?;
        }
        n.pid = None;
        n.lines = None;
        n.stopped = false;
        Ok(())
    }

    /// Whether node `id` was started and its process has not exited (a crash shows here).
    pub fn alive(&mut self, id: u64) -> bool {
        let n = &mut self.nodes[(id - 1) as usize];
        n.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGSTOP of node `id`.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let n = &mut self.nodes[(id - 1) as usize];
        let pid = n.pid.context("node not running")?;
        signal(pid, libc::SIGSTOP)?;
        n.stopped = true;
        Ok(())
    }

    /// SIGCONT of node `id`.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        let n = &mut self.nodes[(id - 1) as usize];
        let pid = n.pid.context("node not running")?;
        signal(pid, libc::SIGCONT)?;
        n.stopped = false;
        Ok(())
    }

    /// Kills every node this harness started.
    pub fn kill_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            let _ = self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
