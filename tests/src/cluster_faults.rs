//! The fault phases of `torture --nodes N` beyond leader kills and pauses (issue 14, "Must be
//! shown by tests"), against real `shardline serve` processes:
//!
//! - **network** ([`net_phase`]), through a proxy on every node-to-node link (`mesh.rs`):
//!   latency on every link; one direction of a leader's link to a follower dropping every
//!   byte; TCP resets of every link; a minority partition holding a leader (the majority
//!   elects another and acknowledges `all` produces sent to it directly; the old leader
//!   follows after healing); a minority partition of a follower
//!   (the leaders keep their epochs: pre-vote keeps a returning follower from disturbing
//!   them); every node cut off from every other (no majority anywhere: no acknowledgement
//!   while it lasts), then healing. Acknowledged produces must keep coming after each step.
//! - **disk full on a follower** ([`disk_full_phase`]): the last node's data directory is a
//!   small tmpfs ([`crate::tmpfs::Tmpfs`], root only; skipped with the reason otherwise).
//!   While that node is a follower, a ballast file fills its disk: the two others keep
//!   acknowledging at `all`, the full node falls behind (its high watermark stops), does not
//!   crash, and once the ballast is removed it catches up to where the leaders were.
//!
//! The run's final check (`cluster_torture::verify`) then reads every node's copy of every
//! partition: every acknowledged id exactly once, at its offset, in order, no offset gap.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shardline_engine::batch;
use shardline_net::client::{Acks, Client};

use crate::cluster::Cluster;
use crate::cluster_torture::{
    ClusterReport, Ledger, PARTITIONS, TOPIC, all_led, config, high_watermark, lock, wait_acks,
    wait_view, witness,
};
use crate::mesh::Mesh;
use crate::proxy::Mode;
use crate::tmpfs::Tmpfs;

/// Latency added to every link in the delay step.
const LINK_DELAY: Duration = Duration::from_millis(20);
/// How long a partitioned follower stays cut off: past the longest election timeout (1.9 s),
/// so that it would campaign if pre-vote did not stop it.
const FOLLOWER_CUT: Duration = Duration::from_secs(3);
/// With no majority anywhere: time for requests committed before the cut to be answered, then
/// the window in which no acknowledgement may arrive.
const SPLIT_SETTLE: Duration = Duration::from_millis(1500);
const SPLIT_QUIET: Duration = Duration::from_secs(3);
/// A full follower must catch up within this once space returns (its replicas reopen with a
/// backoff of 1 s doubling to 30 s).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
const BALLAST: &str = "ballast";
/// The majority's leader must acknowledge produces within this while the old one is cut off.
const MAJORITY_LIMIT: Duration = Duration::from_secs(20);

/// What the network phase did.
#[derive(Debug, Default, serde::Serialize)]
pub struct NetReport {
    pub delays: u64,
    pub drops: u64,
    pub resets: u64,
    pub partitions: u64,
    /// Acknowledgements counted in the no-majority window (must be 0).
    pub acks_without_majority: u64,
    /// Bytes the link proxies forwarded and dropped over the whole run.
    pub wire_bytes_forwarded: u64,
    pub wire_bytes_dropped: u64,
}

/// What the disk-full phase did.
#[derive(Debug, Default, serde::Serialize)]
pub struct DiskFullReport {
    pub node: u64,
    pub filesystem_mib: u64,
    pub ballast_bytes: u64,
    /// Per partition, when the disk had been full for a while: the full node's high watermark
    /// and its leader's.
    pub follower_high_watermarks: Vec<u64>,
    pub leader_high_watermarks: Vec<u64>,
    /// From the ballast's removal until the full node reached those leaders' watermarks.
    pub catch_up_ms: u64,
}

/// Mounts the disk-full node's tmpfs under `dir`; `None` (the reason in `report`) when this
/// machine may not.
pub(crate) fn mount_disk(
    dir: &std::path::Path,
    mib: u64,
    report: &mut ClusterReport,
) -> anyhow::Result<Option<Tmpfs>> {
    match Tmpfs::mount(&dir.join("full-disk"), mib)? {
        Ok(t) => Ok(Some(t)),
        Err(why) => {
            eprintln!("disk-full phase skipped: {why}");
            report.disk_full_skipped = Some(why);
            Ok(None)
        }
    }
}

fn acked(ledger: &Mutex<Ledger>) -> u64 {
    lock(ledger).acked.len() as u64
}

/// Runs the network steps in turn; violations go to `report`.
pub(crate) fn net_phase(
    c: &Cluster,
    mesh: &Mesh,
    ledger: &Mutex<Ledger>,
    report: &mut ClusterReport,
) -> anyhow::Result<NetReport> {
    let mut r = NetReport::default();
    mesh.delay_all(LINK_DELAY);
    wait_acks(ledger, 100).context("with latency on every link")?;
    mesh.heal();
    r.delays += 1;

    let v = wait_view(c, witness(c, 0)?, "leaders", all_led)?;
    let (leader, follower) = (v[0].0, other(c, &[v[0].0])?);
    mesh.set(leader, follower, Mode::Blackhole);
    wait_acks(ledger, 100).context("with a leader's link to a follower dropping")?;
    mesh.heal();
    r.drops += 1;

    for _ in 0..3 {
        mesh.reset_all();
        r.resets += 1;
        wait_acks(ledger, 30).context("after resetting every link")?;
    }

    minority_with_leader(c, mesh, ledger)?;
    minority_follower(c, mesh, ledger, report)?;
    r.partitions += 2;
    r.acks_without_majority = no_majority(mesh, ledger)?;
    r.partitions += 1;
    if r.acks_without_majority != 0 {
        report.violations.push(format!(
            "{} produces acknowledged while no two nodes could talk",
            r.acks_without_majority
        ));
    }
    (r.wire_bytes_forwarded, r.wire_bytes_dropped) = mesh.bytes();
    Ok(r)
}

/// A running node not in `not`.
fn other(c: &Cluster, not: &[u64]) -> anyhow::Result<u64> {
    (1..=c.nodes.len() as u64)
        .find(|n| !not.contains(n) && c.node(*n).pid.is_some())
        .context("another running node")
}

/// Cuts partition 0's leader off: the majority elects a leader and acknowledges; after healing
/// the old leader follows the new one.
fn minority_with_leader(c: &Cluster, mesh: &Mesh, ledger: &Mutex<Ledger>) -> anyhow::Result<()> {
    let before = wait_view(c, witness(c, 0)?, "leaders", all_led)?;
    let victim = before[0].0;
    mesh.partition(&[victim]);
    let after = wait_view(c, witness(c, victim)?, "a leader in the majority", |v| {
        v[0].0 != 0 && v[0].0 != victim && v[0].1 > before[0].1
    })?;
    // The majority's commits through the new leader directly, then through the leader-following
    // producer: when its bootstrap node is the one cut off, that node answers its metadata
    // requests with no leader, and the client asks the other nodes (net/client/src/cluster.rs,
    // `ask_other_nodes`).
    majority_commits(c, after[0].0)?;
    wait_acks(ledger, 20).context("the producer follows the majority's leader during the cut")?;
    mesh.heal();
    wait_view(c, victim, "the healed old leader follows", |v| {
        v[0].0 != victim && v[0].0 != 0 && v[0].1 >= after[0].1
    })?;
    wait_acks(ledger, 50).context("after healing a leader's partition")?;
    Ok(())
}

/// Produces records `probe-N` to partition 0 at `acks all` through node `leader` directly
/// until three are acknowledged (bounded: 20 s); they are not in the ledger, and the final
/// check still requires them once, at dense offsets, on every node.
fn majority_commits(c: &Cluster, leader: u64) -> anyhow::Result<()> {
    let client = Client::connect_node(&c.node(leader).addr, config())?;
    let deadline = Instant::now() + MAJORITY_LIMIT;
    let mut acked = 0;
    let mut n = 0;
    while acked < 3 {
        if Instant::now() >= deadline {
            bail!("the majority's leader {leader} acknowledged {acked} of 3 produces in 20 s");
        }
        let b = batch::batch_of_values([format!("probe-{n}").into_bytes()])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        n += 1;
        match client.produce(TOPIC, 0, b, Acks::All) {
            Ok(Some(_)) => acked += 1,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Ok(())
}

/// Cuts off a node that leads nothing, past an election timeout: acknowledgements continue, and
/// after healing every partition has the same leader at the same epoch (pre-vote).
fn minority_follower(
    c: &Cluster,
    mesh: &Mesh,
    ledger: &Mutex<Ledger>,
    report: &mut ClusterReport,
) -> anyhow::Result<()> {
    let before = wait_view(c, witness(c, 0)?, "leaders", all_led)?;
    let leaders: Vec<u64> = before.iter().map(|l| l.0).collect();
    let f = other(c, &leaders)?;
    mesh.partition(&[f]);
    let cut_at = Instant::now();
    wait_acks(ledger, 100).context("with a follower cut off")?;
    // The fault's duration, not a synchronisation: the follower must outlast its timeout.
    std::thread::sleep(FOLLOWER_CUT.saturating_sub(cut_at.elapsed()));
    mesh.heal();
    wait_view(c, f, "the healed follower knows the leaders", |v| {
        v.iter().zip(&before).all(|(a, b)| a.0 == b.0)
    })?;
    wait_acks(ledger, 50).context("after healing a follower's partition")?;
    let after = wait_view(c, witness(c, f)?, "leaders", all_led)?;
    if after != before {
        report.violations.push(format!(
            "a follower partitioned for {FOLLOWER_CUT:?} disturbed the leaders on return \
             ((leader, epoch) {before:?} -> {after:?})"
        ));
    }
    Ok(())
}

/// Every node alone: no acknowledgement may arrive once the requests committed before the cut
/// were answered; after healing, acknowledgements resume. Returns the acks in the window.
fn no_majority(mesh: &Mesh, ledger: &Mutex<Ledger>) -> anyhow::Result<u64> {
    mesh.isolate_all();
    std::thread::sleep(SPLIT_SETTLE);
    let start = acked(ledger);
    std::thread::sleep(SPLIT_QUIET);
    let during = acked(ledger) - start;
    mesh.heal();
    wait_acks(ledger, 100).context("after healing a split with no majority")?;
    Ok(during)
}

/// Per partition, node `id`'s high watermark (its own view).
fn watermarks(c: &Cluster, id: u64) -> anyhow::Result<Vec<u64>> {
    (0..PARTITIONS)
        .map(|p| high_watermark(&c.node(id).addr, p))
        .collect()
}

/// Makes node `f` lead nothing: if it leads a partition, SIGSTOP past the election timeout
/// until another node leads it, then SIGCONT until `f` follows.
fn make_follower(c: &mut Cluster, f: u64) -> anyhow::Result<()> {
    let v = wait_view(c, witness(c, 0)?, "leaders", all_led)?;
    let led: Vec<usize> = (0..v.len()).filter(|&p| v[p].0 == f).collect();
    if led.is_empty() {
        return Ok(());
    }
    c.pause(f)?;
    let moved = |v: &[(u64, u64)]| led.iter().all(|&p| v[p].0 != 0 && v[p].0 != f);
    let w = witness(c, f)?;
    let r = wait_view(c, w, "another leader", moved);
    c.resume(f)?;
    r?;
    wait_view(c, f, "the paused node follows", moved)?;
    Ok(())
}

/// Fills the last node's disk while it follows, checks it falls behind without dying while the
/// others acknowledge, then frees the space and waits for it to catch up.
pub(crate) fn disk_full_phase(
    c: &mut Cluster,
    disk: &Tmpfs,
    ledger: &Mutex<Ledger>,
    report: &mut ClusterReport,
) -> anyhow::Result<DiskFullReport> {
    let f = c.nodes.len() as u64;
    make_follower(c, f)?;
    let mut r = DiskFullReport {
        node: f,
        filesystem_mib: disk.size_mib,
        ballast_bytes: disk.fill(BALLAST)?,
        ..DiskFullReport::default()
    };
    wait_acks(ledger, 150).context("with a follower's disk full")?;
    let leaders = wait_view(c, witness(c, f)?, "leaders", all_led)?;
    r.follower_high_watermarks = watermarks(c, f)?;
    r.leader_high_watermarks = (0..PARTITIONS)
        .map(|p| high_watermark(&c.node(leaders[p as usize].0).addr, p))
        .collect::<anyhow::Result<_>>()?;
    if !c.alive(f) {
        report
            .violations
            .push(format!("node {f} died when its disk filled"));
        return Ok(r);
    }
    // Only the partitions `f` follows: leadership balance may have handed one back to it (its
    // preferred leader) before the disk filled; it cannot fall behind itself there.
    let followed: Vec<(u64, u64)> = r
        .follower_high_watermarks
        .iter()
        .zip(&r.leader_high_watermarks)
        .enumerate()
        .filter(|(p, _)| leaders[*p].0 != f)
        .map(|(_, (a, b))| (*a, *b))
        .collect();
    let behind = !followed.is_empty() && followed.iter().all(|(a, b)| a < b);
    if !behind {
        report.violations.push(format!(
            "node {f} kept up on a full disk (high watermarks {:?}, leaders {:?})",
            r.follower_high_watermarks, r.leader_high_watermarks
        ));
    }
    disk.drain(BALLAST)?;
    let drained = Instant::now();
    loop {
        let hw = watermarks(c, f).unwrap_or_default();
        if hw.len() == r.leader_high_watermarks.len()
            && hw
                .iter()
                .zip(&r.leader_high_watermarks)
                .all(|(a, b)| a >= b)
        {
            break;
        }
        if drained.elapsed() > CATCH_UP_LIMIT {
            report.violations.push(format!(
                "node {f} did not catch up within {CATCH_UP_LIMIT:?} after space returned \
                 (high watermarks {hw:?}, leaders had {:?})",
                r.leader_high_watermarks
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r.catch_up_ms = drained.elapsed().as_millis() as u64;
    if !c.alive(f) {
        report
            .violations
            .push(format!("node {f} died after its disk filled"));
    }
    Ok(r)
}
