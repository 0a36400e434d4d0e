//! `torture --nodes N` (issue 14): N real `shardline serve` processes as one cluster, a topic
//! whose partitions have min(N, 3) replicas, an idempotent producer at `acks all` writing
//! unique ids through the leader-following client, and `cycles` faults on the current leader
//! of a partition, alternating SIGKILL + restart and SIGSTOP past the election timeout +
//! SIGCONT. Afterwards every node must reach the same high watermark and hold the same records
//! at the same offsets, with dense offsets, no id twice, and every acknowledged id at its
//! acknowledged offset in send order. Returns the violations (empty: none).
//!
//! With [`ClusterOptions::net_faults`], a fault proxy sits on every node-to-node link
//! (`mesh.rs`) and a network phase follows the cycles; with [`ClusterOptions::disk_full`], the
//! last node's data directory is a small tmpfs whose disk fills while it is a follower
//! (`cluster_faults.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shardline_net::client::{
    Acks, Backoff, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, TopicConfig,
};

use crate::cluster::Cluster;
use crate::mesh::Mesh;

pub(crate) const TOPIC: &str = "torture-ids";
pub(crate) const PARTITIONS: u32 = 2;

/// What `torture --nodes N` does.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Leader faults (SIGKILL + restart, SIGSTOP + SIGCONT, alternating).
    pub cycles: usize,
    /// Link faults through proxies: delay, drops, resets, partitions, heal.
    pub net_faults: bool,
    /// A follower's disk fills up, then space returns (root only; skipped otherwise).
    pub disk_full: bool,
    /// Size of the disk-full node's tmpfs.
    pub disk_full_mib: u64,
}

/// What a cluster torture run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ClusterReport {
    pub nodes: usize,
    pub kills: u64,
    pub pauses: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub net: Option<crate::cluster_faults::NetReport>,
    pub disk_full: Option<crate::cluster_faults::DiskFullReport>,
    pub disk_full_skipped: Option<String>,
    pub violations: Vec<String>,
}

pub(crate) fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

#[derive(Default)]
pub(crate) struct Ledger {
    pub(crate) acked: BTreeMap<u64, (u32, u64)>,
    sent: u64,
    failed: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Partition -> (leader, epoch) as node `id` sees it.
pub(crate) fn view(c: &Cluster, id: u64) -> Option<Vec<(u64, u64)>> {
    let client = Client::connect_node(&c.node(id).addr, config()).ok()?;
    let r = client.describe_cluster(&[TOPIC]).ok()?;
    let t = r.topics.into_iter().find(|t| t.name == TOPIC)?;
    Some(t.partitions.iter().map(|p| (p.leader, p.epoch)).collect())
}

pub(crate) fn wait_view(
    c: &Cluster,
    id: u64,
    what: &str,
    ok: impl Fn(&[(u64, u64)]) -> bool,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = view(c, id)
            && ok(&v)
        {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("node {id}: {what} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn wait_acks(ledger: &Mutex<Ledger>, n: usize) -> anyhow::Result<()> {
    let start = lock(ledger).acked.len();
    let deadline = Instant::now() + Duration::from_secs(40);
    while lock(ledger).acked.len() < start + n {
        if Instant::now() >= deadline {
            bail!(
                "{n} more acks within 40 s (acked {})",
                lock(ledger).acked.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn produce(bootstrap: &str, stop: &AtomicBool, ledger: &Mutex<Ledger>) -> anyhow::Result<()> {
    let client = Client::connect(bootstrap, config())?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            idempotent: true,
            retries_max: 1_000,
            delivery_timeout: Some(Duration::from_secs(40)),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            },
            ..ProducerConfig::default()
        },
    )?;
    let mut id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut handles = Vec::new();
        for _ in 0..20 {
            let p = (id % u64::from(PARTITIONS)) as u32;
            let record = ProducerRecord::new(TOPIC, format!("id-{id}")).partition(p);
            handles.push((id, producer.send_record(record)));
            id += 1;
        }
        for (id, h) in handles {
            let r = h.wait();
            let mut l = lock(ledger);
            l.sent += 1;
            match r {
                Ok(d) => {
                    l.acked
                        .insert(id, (d.partition, d.offset.unwrap_or(u64::MAX)));
                }
                Err(_) => l.failed += 1,
            }
        }
    }
    producer.close()?;
    Ok(())
}

/// Runs the cluster torture: `opts.nodes` processes of `bin` under `dir`.
pub fn run(bin: &Path, dir: &Path, opts: &ClusterOptions) -> anyhow::Result<ClusterReport> {
    let nodes = opts.nodes;
    if nodes < 3 {
        bail!("--nodes needs at least 3 (a majority must survive a fault)");
    }
    let mut report = ClusterReport {
        nodes,
        ..ClusterReport::default()
    };
    // Declared before the cluster, so that it is unmounted after the processes died.
    let disk = if opts.disk_full {
        crate::cluster_faults::mount_disk(dir, opts.disk_full_mib, &mut report)?
    } else {
        None
    };
    let mut c = Cluster::new(bin, dir, nodes)?;
    if let Some(d) = &disk {
        let last = c.nodes.len() - 1;
        c.nodes[last].data_dir = d.path.join("data");
    }
    let mesh = if opts.net_faults {
        Some(Mesh::install(&mut c)?)
    } else {
        None
    };
    c.start_all()?;
    let replicas = nodes.min(3) as u32;
    Client::connect(&c.bootstrap(), config())?
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
            replicas,
        )
        .context("creating the topic")?;
    wait_view(&c, 1, "every partition has a leader", all_led)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = {
        let (b, s, l) = (c.bootstrap(), stop.clone(), ledger.clone());
        std::thread::spawn(move || produce(&b, &s, &l))
    };
    let faults = (|| -> anyhow::Result<()> {
        wait_acks(&ledger, 100)?;
        leader_faults(&mut c, opts.cycles, &ledger, &mut report)?;
        if let Some(mesh) = &mesh {
            report.net = Some(crate::cluster_faults::net_phase(
                &c,
                mesh,
                &ledger,
                &mut report,
            )?);
        }
        if let Some(disk) = &disk {
            let r = crate::cluster_faults::disk_full_phase(&mut c, disk, &ledger, &mut report)?;
            report.disk_full = Some(r);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Release);
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))?;
    faults?;
    produced?;
    let ledger = std::mem::take(&mut *lock(&ledger));
    report.sent = ledger.sent;
    report.acked = ledger.acked.len() as u64;
    report.failed = ledger.failed;
    let found = verify(&c, &ledger)?;
    report.violations.extend(found);
    c.kill_all();
    drop(disk);
    Ok(report)
}

/// Every partition has a leader in this view.
pub(crate) fn all_led(v: &[(u64, u64)]) -> bool {
    v.len() == PARTITIONS as usize && v.iter().all(|l| l.0 != 0)
}

/// A node other than `not` that runs now.
pub(crate) fn witness(c: &Cluster, not: u64) -> anyhow::Result<u64> {
    (1..=c.nodes.len() as u64)
        .find(|&n| n != not && c.node(n).pid.is_some())
        .context("a running node")
}

/// `cycles` faults on a partition's leader: SIGKILL + restart and SIGSTOP + SIGCONT in turn.
fn leader_faults(
    c: &mut Cluster,
    cycles: usize,
    ledger: &Mutex<Ledger>,
    report: &mut ClusterReport,
) -> anyhow::Result<()> {
    for cycle in 0..cycles {
        let before = wait_view(c, witness(c, 0)?, "leaders", all_led)?;
        let p = cycle % PARTITIONS as usize;
        let victim = before[p].0;
        if cycle % 2 == 0 {
            c.kill(victim)?;
            report.kills += 1;
        } else {
            c.pause(victim)?;
            report.pauses += 1;
        }
        let after = wait_view(c, witness(c, victim)?, "a new leader", |v| {
            v[p].0 != 0 && v[p].0 != victim && v[p].1 > before[p].1
        })?;
        wait_acks(ledger, 100)?;
        if cycle % 2 == 0 {
            c.spawn(victim)?;
            c.wait_links(victim, Duration::from_secs(30))?;
        } else {
            c.resume(victim)?;
            wait_view(c, victim, "the resumed node steps down", |v| {
                v[p].0 != victim && v[p].1 >= after[p].1
            })?;
        }
        wait_acks(ledger, 100)?;
    }
    Ok(())
}

pub(crate) fn high_watermark(addr: &str, partition: u32) -> anyhow::Result<u64> {
    let r = Client::connect_node(addr, config())?.describe_replicas(TOPIC)?;
    Ok(r.partitions
        .iter()
        .find(|p| p.partition == partition)
        .map_or(0, |p| p.high_watermark))
}

fn read_all(addr: &str, partition: u32, end: u64) -> anyhow::Result<Vec<(u64, String)>> {
    let consumer = Consumer::new(
        Client::connect_node(addr, config())?,
        ConsumerConfig::default(),
    )?;
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset < end {
        if Instant::now() >= deadline {
            bail!("{addr} p{partition}: could not read to {end}");
        }
        let f = consumer.fetch(TOPIC, partition, offset, Duration::from_millis(200))?;
        for r in f.records {
            out.push((r.offset, String::from_utf8_lossy(&r.value).into_owned()));
        }
        offset = f.next_offset;
    }
    Ok(out)
}

fn verify(c: &Cluster, ledger: &Ledger) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for p in 0..PARTITIONS {
        let deadline = Instant::now() + Duration::from_secs(20);
        let end = loop {
            let hw = c
                .nodes
                .iter()
                .map(|n| high_watermark(&n.addr, p))
                .collect::<anyhow::Result<Vec<u64>>>()?;
            if hw.iter().all(|&h| h == hw[0]) {
                break hw[0];
            }
            if Instant::now() >= deadline {
                v.push(format!("p{p}: nodes did not converge ({hw:?})"));
                break hw.iter().copied().min().unwrap_or(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let logs = c
            .nodes
            .iter()
            .map(|n| read_all(&n.addr, p, end))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (i, log) in logs.iter().enumerate().skip(1) {
            if log != &logs[0] {
                v.push(format!("p{p}: node {} differs from node 1", i + 1));
            }
        }
        let first = &logs[0];
        if let Some((i, (o, _))) = first.iter().enumerate().find(|(i, (o, _))| *o != *i as u64) {
            v.push(format!("p{p}: offset gap at {i} (offset {o})"));
        }
        let mut seen = HashMap::new();
        for (offset, value) in first {
            if seen.insert(value.clone(), *offset).is_some() {
                v.push(format!("p{p}: {value} twice"));
            }
        }
        let mut last = None;
        for (id, (_, offset)) in ledger.acked.iter().filter(|(_, (q, _))| *q == p) {
            let value = format!("id-{id}");
            if seen.get(&value) != Some(offset) {
                v.push(format!("p{p}: acked {value} at {offset} is not there"));
            }
            if last >= Some(*offset) {
                v.push(format!("p{p}: {value} out of send order"));
            }
            last = Some(*offset);
        }
    }
    Ok(v)
}
