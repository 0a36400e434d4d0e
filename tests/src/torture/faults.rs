//! The faults the harness injects ([`Fault`]) and the fixed schedule of a `cycles` run:
//! process kills and pauses, torn segment tails, proxy cuts and delays, a stalled subscriber,
//! a write burst.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;
use rand_xoshiro::Xoshiro256PlusPlus;
use shardline_engine::batch;
use shardline_net::protocol::Acks;

use super::ledger::PartitionLedger;
use super::load::acked_records;
use super::verify::retry_client;
use super::{BURST_TOPIC, Config, Fault, Report, Restart, Rig, Shared, TOPIC, groups, lock};

/// The delay the proxy adds to everything during a `NetDelay` cycle.
const NET_DELAY: Duration = Duration::from_millis(30);
/// How often [`wait_serving`] pings a restarting server.
const SERVING_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A torn tail with nothing to cut appends 1..this random bytes (less than a page).
const TORN_GARBAGE_BYTES_END: usize = 4096;
/// `Burst`: threads, and the value of each one-record batch (1 MiB batches with the headers).
const BURST_THREADS: usize = 4;
const BURST_VALUE_BYTES: usize = (1 << 20) - 512;

/// The fixed schedule of a `cycles` run: at least `kill_cycles_min` kills and every other fault
/// once, shuffled; `None` for a timed run.
pub(super) fn schedule(cfg: &Config, rng: &mut Xoshiro256PlusPlus) -> Option<Vec<Fault>> {
    let n = cfg.cycles?;
    let mut s: Vec<Fault> = cfg
        .faults
        .iter()
        .copied()
        .filter(|f| *f != Fault::Kill)
        .collect();
    if cfg.faults.contains(&Fault::Kill) {
        s.extend(std::iter::repeat_n(Fault::Kill, cfg.kill_cycles_min));
    }
    while s.len() < n {
        s.push(cfg.faults[rng.random_range(0..cfg.faults.len())]);
    }
    // Fisher-Yates.
    for i in (1..s.len()).rev() {
        let j = rng.random_range(0..=i);
        s.swap(i, j);
    }
    Some(s)
}

/// Injects one fault; returns the restart it caused, if any.
pub(super) fn inject(
    cfg: &Config,
    fault: Fault,
    rig: &mut Rig,
    rng: &mut Xoshiro256PlusPlus,
    report: &mut Report,
) -> anyhow::Result<Option<Restart>> {
    let shared = &rig.shared;
    match fault {
        Fault::Kill | Fault::Torn => kill_and_restart(cfg, fault, rig, rng).map(Some),
        Fault::Pause => {
            rig.srv.pause();
            std::thread::sleep(cfg.pause);
            rig.srv.resume();
            if let Err(e) = wait_serving(shared, cfg.restart_limit) {
                shared.violation(format!("server not serving after SIGCONT: {e:#}"));
            }
            Ok(None)
        }
        Fault::NetDrop => {
            rig.proxy.cut_all();
            Ok(None)
        }
        Fault::NetDelay => {
            rig.proxy.set_delay(NET_DELAY);
            std::thread::sleep(cfg.cycle);
            rig.proxy.set_delay(Duration::ZERO);
            Ok(None)
        }
        Fault::Stall => {
            // Every kind of consumer stops at once: a group member stops polling past its
            // session (its partitions move), a queue consumer holds its leases past the
            // visibility timeout, a subscriber stops reading.
            if cfg.group_members > 0 {
                let m = rng.random_range(0..cfg.group_members) as u64;
                shared.groups.pause_member.store(m + 1, Ordering::Release);
            }
            if cfg.queue_consumers > 0 {
                let c = rng.random_range(0..cfg.queue_consumers) as u64;
                shared.queue.stall_consumer.store(c + 1, Ordering::Release);
            }
            stall(shared, cfg)?;
            Ok(None)
        }
        Fault::Burst => {
            report.burst_acked_bytes += burst(shared, cfg)?;
            Ok(None)
        }
    }
}

/// `Kill` and `Torn`: SIGKILL, for `Torn` a torn tail on a random partition, then a restart
/// that must serve again within the restart limit.
fn kill_and_restart(
    cfg: &Config,
    fault: Fault,
    rig: &mut Rig,
    rng: &mut Xoshiro256PlusPlus,
) -> anyhow::Result<Restart> {
    let shared = &rig.shared;
    let torn = (fault == Fault::Torn).then(|| rng.random_range(0..cfg.partitions));
    if torn.is_some() && cfg.group_members > 0 {
        // The tear may take back records the group consumed: members leave first.
        groups::park(shared);
    }
    rig.srv.kill9()?;
    if let Some(p) = torn {
        // Acknowledgements already on their way are in the ledger before it is read.
        shared.hold_producers();
        let torn = tear_tail(
            &rig.spec.data_dir,
            p,
            &shared.ledger[p as usize],
            rng,
            cfg.sabotage,
        );
        shared.hold.store(false, Ordering::Release);
        torn?;
        shared.torn_epoch[p as usize].fetch_add(1, Ordering::Relaxed);
    }
    let log_bytes = dir_bytes(&rig.spec.data_dir);
    let t = Instant::now();
    rig.srv = rig.spec.start()?;
    let listening_ms = t.elapsed().as_secs_f64() * 1e3;
    lock(&shared.server_addr).clone_from(&rig.srv.addr);
    rig.proxy.set_target(&rig.srv.addr);
    let serving = wait_serving(shared, cfg.restart_limit.saturating_sub(t.elapsed()));
    let serving_ms = t.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = serving {
        shared.violation(format!("server not serving after restart: {e:#}"));
    } else if t.elapsed() > cfg.restart_limit {
        shared.violation(format!(
            "server took {serving_ms:.0} ms to serve again (limit {:?})",
            cfg.restart_limit
        ));
    }
    if let Some(p) = torn
        && cfg.group_members > 0
    {
        let moved = retry_client(shared).and_then(|c| groups::after_torn(shared, &c, p));
        if let Err(e) = moved {
            shared.violation(format!("[group] after a torn tail: {e:#}"));
        }
    }
    Ok(Restart {
        fault,
        log_bytes,
        listening_ms,
        serving_ms,
    })
}

/// Waits until the server answers a ping on its bootstrap address.
fn wait_serving(shared: &Shared, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let r = shared.client(false).and_then(|c| c.ping());
        match r {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("{e}"),
            Err(_) => std::thread::sleep(SERVING_POLL_INTERVAL),
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The newest segment file of `partition` of the torture topic.
fn last_segment(data_dir: &Path, partition: u32) -> anyhow::Result<PathBuf> {
    let topics = data_dir.join("topics");
    let topic_dir = std::fs::read_dir(&topics)
        .with_context(|| format!("listing {}", topics.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(name, id)| name == TOPIC && id.parse::<u64>().is_ok())
        })
        .context("the torture topic's directory")?;
    let pdir = topic_dir.join(partition.to_string());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&pdir)
        .with_context(|| format!("listing {}", pdir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().context("no segment file")
}

/// Tears the tail of `partition`'s newest segment beyond every acknowledged batch: truncates
/// at a random byte past the end of the last acknowledged batch in the file, or, when there is
/// nothing past it, appends a partial batch of random bytes.
fn tear_tail(
    data_dir: &Path,
    partition: u32,
    ledger: &Mutex<PartitionLedger>,
    rng: &mut Xoshiro256PlusPlus,
    sabotage: bool,
) -> anyhow::Result<()> {
    let path = last_segment(data_dir, partition)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let last_acked = lock(ledger).acked.values().map(|a| a.last_offset).max();
    // Walk the batches; the acknowledged region ends after the last batch holding an
    // acknowledged offset.
    let mut pos = 0usize;
    let mut acked_end = 0usize;
    while pos + batch::HEADER_BYTES <= bytes.len() {
        let Ok(h) = batch::BatchHeader::parse(&bytes[pos..]) else {
            break;
        };
        let len = h.batch_length as usize;
        if len == 0 || pos + len > bytes.len() {
            break;
        }
        if last_acked.is_some_and(|l| h.base_offset <= l) {
            acked_end = pos + len;
        }
        pos += len;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if sabotage && acked_end > 0 {
        let at = rng.random_range(0..acked_end as u64);
        f.set_len(at).context("truncating the segment")?;
    } else if acked_end < bytes.len() {
        let at = rng.random_range(acked_end as u64..=bytes.len() as u64);
        f.set_len(at).context("truncating the segment")?;
    } else {
        use std::io::{Seek, SeekFrom, Write};
        let garbage: Vec<u8> = (0..rng.random_range(1..TORN_GARBAGE_BYTES_END))
            .map(|_| rng.random())
            .collect();
        f.seek(SeekFrom::End(0))?;
        f.write_all(&garbage).context("appending a torn batch")?;
    }
    f.sync_all().context("syncing the torn segment")?;
    Ok(())
}

/// A subscriber that takes everything the server pushes at first and then stops reading
/// while producers go on for a cycle; the tail consumers must keep advancing meanwhile.
fn stall(shared: &Shared, cfg: &Config) -> anyhow::Result<()> {
    use shardline_net::client::{Consumer, ConsumerConfig};
    use shardline_net::protocol::OffsetSpec;
    let client = retry_client(shared)?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
    for p in 0..cfg.partitions {
        consumer.subscribe(TOPIC, p, OffsetSpec::Earliest)?;
    }
    let before = shared.consumer_records.load(Ordering::Relaxed);
    let acked_before = acked_records(shared);
    std::thread::sleep(cfg.cycle);
    let (after, acked_after) = (
        shared.consumer_records.load(Ordering::Relaxed),
        acked_records(shared),
    );
    if acked_after > acked_before && after == before {
        shared.violation("tail consumers stopped while one subscriber stalled".into());
    }
    drop(consumer);
    Ok(())
}

/// 1 MiB batches with `leader` acks from four threads for a cycle: the server must throttle
/// them (bounded unflushed bytes) rather than buffer without bound. Returns bytes acknowledged.
fn burst(shared: &Arc<Shared>, cfg: &Config) -> anyhow::Result<u64> {
    let until = Instant::now() + cfg.cycle;
    let acked = Arc::new(AtomicU64::new(0));
    let threads: Vec<JoinHandle<()>> = (0..BURST_THREADS)
        .map(|_| {
            let sh = shared.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let Ok(c) = sh.client(false) else { return };
                let value = vec![0x5Au8; BURST_VALUE_BYTES];
                while Instant::now() < until && !sh.stop.load(Ordering::Relaxed) {
                    let Ok(b) = batch::batch_of_values([value.clone()]) else {
                        return;
                    };
                    match c.produce(BURST_TOPIC, 0, b, Acks::Leader) {
                        Ok(_) => {
                            acked.fetch_add(value.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(acked.load(Ordering::Relaxed))
}
