//! The fault-injection harness (`torture` binary; docs/reliability.md).
//!
//! ```text
//!  producers (durable acks) --+--> proxy (cut, delay) --+--> shardline serve (real process,
//!  producers (shard-aware) ---+-------------------------+     SIGKILL / SIGSTOP / torn tails,
//!  tail consumers (fetch) ----+                               small disk)
//!        |                                                        ^
//!        v                                                        |
//!     ledger (acked offset ranges) --- verify after every fault --+ (scan from the last
//!                                                                    verified point)
//! ```
//!
//! Producers never resend a batch (each has its own sequence numbers), so a record may be
//! missing only if it was never acknowledged, and may never appear twice. Tail consumers read
//! everything the server makes visible: data they saw must survive a process kill (visibility
//! follows completed writes), except after an injected torn tail, which stands for a power loss
//! and may take back whatever was not acknowledged as durable.

pub mod groups;
pub mod idempotent;
pub mod ledger;
pub mod proxy;
pub mod queue;
pub mod recovery;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use shardline_engine::batch;
use shardline_net::client::{Client, ClientConfig, ClientError};
use shardline_net::protocol::{Acks, TopicConfig, code};

use ledger::{Acked, PartitionLedger, Scan, Violation};
use proxy::Proxy;
use server::{ServerProc, ServerSpec};

pub const TOPIC: &str = "torture";
const BURST_TOPIC: &str = "torture-burst";

/// Faults the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL the server under load and restart it.
    Kill,
    /// SIGSTOP the server longer than the clients' request timeout, then SIGCONT.
    Pause,
    /// SIGKILL, then tear the tail of a partition's last segment beyond the acknowledged data
    /// (truncate at a random byte, or append a partial batch), then restart.
    Torn,
    /// Cut every connection through the proxy.
    NetDrop,
    /// Delay everything through the proxy for the cycle.
    NetDelay,
    /// A subscriber that stops reading while producers go on.
    Stall,
    /// Producers with `leader` acks and 1 MiB batches, far beyond what the disk absorbs.
    Burst,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Torn,
        Fault::NetDrop,
        Fault::NetDelay,
        Fault::Stall,
        Fault::Burst,
    ];

    pub fn parse(s: &str) -> anyhow::Result<Fault> {
        Ok(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "torn" => Fault::Torn,
            "netdrop" => Fault::NetDrop,
            "netdelay" => Fault::NetDelay,
            "stall" => Fault::Stall,
            "burst" => Fault::Burst,
            _ => bail!("unknown fault {s:?} (kill, pause, torn, netdrop, netdelay, stall, burst)"),
        })
    }
}

/// Settings of one harness run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub seed: u64,
    /// Either a fixed schedule (`cycles`) or random faults until `duration` is up.
    pub cycles: Option<usize>,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    /// In a fixed schedule: at least this many `Kill` cycles.
    pub kill_cycles_min: usize,
    pub partitions: u32,
    pub producers: usize,
    pub consumers: usize,
    /// Idempotent producers on the torture topic (one more feeds the work queue).
    pub idempotent_producers: usize,
    /// Members of the consumer group on the torture topic (0: no group).
    pub group_members: usize,
    /// Competing consumers of the work queue (0: no queue).
    pub queue_consumers: usize,
    pub queue_partitions: u32,
    pub shards: usize,
    /// Load between faults.
    pub cycle: Duration,
    pub pause: Duration,
    pub request_timeout: Duration,
    /// The server must be back (listening and answering) within this.
    pub restart_limit: Duration,
    /// Peak RSS of the server must stay below this.
    pub rss_limit_bytes: u64,
    pub segment_bytes: u64,
    pub unflushed_bytes_max: u64,
    pub cache_bytes: u64,
    /// Disk-full phase on a small loop-mounted ext4 (root only; skipped with a reason otherwise).
    pub disk_full: bool,
    pub disk_full_mib: u64,
    /// Print a line per cycle.
    pub verbose: bool,
    /// Self-test of the harness: torn-tail faults cut into acknowledged data, which the
    /// checks must then report.
    pub sabotage: bool,
}

/// One restart of the server.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub fault: Fault,
    pub log_bytes: u64,
    /// Spawn to "listening" (includes recovery).
    pub listening_ms: f64,
    /// Spawn to the first answered request.
    pub serving_ms: f64,
}

/// What a run found. `violations` must be empty.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub cycles: usize,
    pub faults: BTreeMap<String, u64>,
    pub acked_batches: u64,
    pub acked_records: u64,
    pub unknown_records: u64,
    pub records_verified: u64,
    pub acked_records_verified: u64,
    pub consumer_records_checked: u64,
    pub producer_errors: u64,
    pub restarts: Vec<Restart>,
    pub restart_serving_ms_max: f64,
    pub peak_rss_bytes: u64,
    pub rss_limit_bytes: u64,
    pub burst_acked_bytes: u64,
    pub idempotent: idempotent::IdempotentReport,
    pub groups: Option<groups::GroupReport>,
    pub queue: Option<queue::QueueReport>,
    /// Violations per invariant family (the `[family]` prefix; `log` when there is none).
    pub violations_by_family: BTreeMap<String, u64>,
    pub disk_full: Option<DiskFullReport>,
    pub disk_full_skipped: Option<String>,
    pub duration_s: f64,
    pub violations: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct DiskFullReport {
    pub filesystem_mib: u64,
    pub acked_records: u64,
    pub disk_full_errors: u64,
    pub other_errors: u64,
    pub records_verified: u64,
    pub served_after_full: bool,
    pub writable_after_space_freed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the harness and its worker threads.
struct Shared {
    /// The server's bootstrap address (changes at every restart).
    server_addr: Mutex<String>,
    proxy_addr: String,
    ledger: Vec<Mutex<PartitionLedger>>,
    stop: AtomicBool,
    /// Producers hold off while set (verification reads a quiet log).
    hold: AtomicBool,
    /// Producers currently between "not holding" and the end of a send.
    sending: AtomicU64,
    producer_errors: AtomicU64,
    consumer_records: AtomicU64,
    /// Bumped on every torn-tail injection, per partition: consumers then accept that data they
    /// saw beyond the acknowledged point is gone.
    torn_epoch: Vec<AtomicU64>,
    violations: Mutex<Vec<String>>,
    request_timeout: Duration,
    /// Producers stop (at the end; consumers go on draining).
    load_stop: AtomicBool,
    /// The work queue's acknowledged batches.
    queue_ledger: Vec<Mutex<PartitionLedger>>,
    idempotent: idempotent::Stats,
    groups: groups::GroupState,
    queue: queue::QueueState,
}

/// A send in progress (see [`Shared::start_send`]).
struct Sending<'a>(&'a Shared);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    fn violation(&self, v: String) {
        let mut all = lock(&self.violations);
        if all.len() < 200 {
            all.push(v);
        }
    }

    fn load_stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.load_stop.load(Ordering::Relaxed)
    }

    /// Counts a send in progress, unless producers are held (then `None`).
    fn start_send(&self) -> Option<Sending<'_>> {
        self.sending.fetch_add(1, Ordering::AcqRel);
        let s = Sending(self);
        if self.hold.load(Ordering::Acquire) {
            return None;
        }
        Some(s)
    }

    /// Holds the producers and waits (bounded) for the sends in flight.
    fn hold_producers(&self) {
        self.hold.store(true, Ordering::Release);
        let deadline = Instant::now() + self.request_timeout * 3;
        while self.sending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The client in `slot`, connecting a new one if there is none; `None` (after a short
    /// back-off) while the server cannot be reached.
    fn cached_client(&self, slot: &mut Option<Client>, via_proxy: bool) -> Option<Client> {
        if let Some(c) = slot {
            return Some(c.clone());
        }
        match self.client(via_proxy) {
            Ok(c) => Some(slot.insert(c).clone()),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        }
    }

    fn client(&self, via_proxy: bool) -> Result<Client, ClientError> {
        let addr = if via_proxy {
            self.proxy_addr.clone()
        } else {
            lock(&self.server_addr).clone()
        };
        let cfg = ClientConfig {
            client_id: "torture".into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: self.request_timeout,
            shard_aware: !via_proxy,
            ..ClientConfig::default()
        };
        Client::connect(&addr, cfg)
    }
}

/// The server settings of a run (also for the recovery measurements).
pub fn server_spec(cfg: &Config) -> anyhow::Result<ServerSpec> {
    let data_dir = cfg.dir.join("data");
    std::fs::create_dir_all(&data_dir).context("creating the data dir")?;
    Ok(ServerSpec {
        bin: server::shardline_bin()?,
        config: ServerSpec::write_config(
            &cfg.dir,
            cfg.segment_bytes,
            cfg.unflushed_bytes_max,
            cfg.cache_bytes,
        )?,
        data_dir,
        shards: cfg.shards,
        start_timeout: cfg.restart_limit,
    })
}

/// Runs the harness; `Err` only when the run itself could not be carried out.
pub fn run(cfg: &Config) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut report = Report {
        seed: cfg.seed,
        rss_limit_bytes: cfg.rss_limit_bytes,
        ..Report::default()
    };
    if cfg.group_members > 0 && cfg.pause <= groups::SESSION_TIMEOUT {
        bail!(
            "--pause-ms must outlast the group session timeout ({:?})",
            groups::SESSION_TIMEOUT
        );
    }
    let spec = server_spec(cfg)?;
    let mut srv = spec.start()?;
    let proxy = Proxy::start(&srv.addr)?;
    let shared = Arc::new(Shared {
        server_addr: Mutex::new(srv.addr.clone()),
        proxy_addr: proxy.addr.to_string(),
        ledger: (0..cfg.partitions)
            .map(|_| Mutex::new(PartitionLedger::default()))
            .collect(),
        stop: AtomicBool::new(false),
        hold: AtomicBool::new(false),
        sending: AtomicU64::new(0),
        producer_errors: AtomicU64::new(0),
        consumer_records: AtomicU64::new(0),
        torn_epoch: (0..cfg.partitions).map(|_| AtomicU64::new(0)).collect(),
        violations: Mutex::new(Vec::new()),
        request_timeout: cfg.request_timeout,
        load_stop: AtomicBool::new(false),
        queue_ledger: (0..cfg.queue_partitions)
            .map(|_| Mutex::new(PartitionLedger::default()))
            .collect(),
        idempotent: idempotent::Stats::default(),
        groups: groups::GroupState::new(cfg.partitions, cfg.group_members),
        queue: queue::QueueState::new(cfg.queue_partitions),
    });
    {
        let admin = shared.client(false)?;
        admin.create_topic(
            TOPIC,
            TopicConfig {
                partitions: cfg.partitions,
                ..TopicConfig::default()
            },
        )?;
        // The burst topic is not verified: retention keeps a long soak's disk use bounded.
        admin.create_topic(
            BURST_TOPIC,
            TopicConfig {
                partitions: 1,
                retention_bytes: Some(256 << 20),
                segment_bytes: Some(32 << 20),
                ..TopicConfig::default()
            },
        )?;
        if cfg.queue_consumers > 0 {
            queue::create(&admin, cfg.queue_partitions)?;
        }
    }
    let peak_rss = Arc::new(AtomicU64::new(0));
    let rss_pid = Arc::new(AtomicU64::new(u64::from(srv.pid)));
    let monitor = spawn_rss_monitor(rss_pid.clone(), peak_rss.clone(), shared.clone());

    let workers = spawn_workers(cfg, &shared);
    let schedule = schedule(cfg, &mut rng);
    let mut verified = Verified::new(cfg);
    let mut cycle = 0usize;
    loop {
        let fault = match &schedule {
            Some(s) => match s.get(cycle) {
                Some(f) => *f,
                None => break,
            },
            None => {
                if t0.elapsed() >= cfg.duration {
                    break;
                }
                cfg.faults[rng.random_range(0..cfg.faults.len())]
            }
        };
        cycle += 1;
        std::thread::sleep(cfg.cycle);
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
        let restarted = inject(
            cfg,
            fault,
            &mut srv,
            &spec,
            &proxy,
            &shared,
            &mut rng,
            &mut report,
        )?;
        if let Some(r) = restarted {
            rss_pid.store(u64::from(srv.pid), Ordering::Relaxed);
            report.restarts.push(r);
        }
        // Let the load run on the healed system, then verify on a quiet log.
        std::thread::sleep(cfg.cycle / 2);
        let (records, acked) = verify(&shared, &mut verified, false)?;
        report.records_verified += records;
        report.acked_records_verified += acked;
        if srv.exited() {
            shared.violation(format!("cycle {cycle}: the server exited by itself"));
            break;
        }
        if cfg.verbose {
            eprintln!(
                "cycle {cycle:>4} {fault:<9?} acked {:>9} verified {:>9} group {:>9} queue acks \
                 {:>7} rss {:>5} MiB  violations {}",
                acked_records(&shared),
                report.records_verified,
                lock(&shared.groups.tracker).records,
                lock(&shared.queue.tracker).acks,
                peak_rss.load(Ordering::Relaxed) >> 20,
                lock(&shared.violations).len()
            );
        }
        if !lock(&shared.violations).is_empty() {
            break;
        }
    }
    finish_load(cfg, &shared, workers, &mut report)?;
    // A full scan from offset 0 of every partition, then a clean restart and another one.
    let mut from_zero = Verified::new(cfg);
    verify(&shared, &mut from_zero, true)?;
    let status = srv.terminate(Duration::from_secs(60))?;
    if !status.success() {
        shared.violation(format!("graceful shutdown exited with {status}"));
    }
    srv = spec.start()?;
    lock(&shared.server_addr).clone_from(&srv.addr);
    let mut again = Verified::new(cfg);
    let (records, acked) = verify(&shared, &mut again, true)?;
    report.records_verified += records;
    report.acked_records_verified += acked;
    let _ = srv.terminate(Duration::from_secs(60));
    shared.stop.store(true, Ordering::Relaxed);
    let _ = monitor.join();
    drop(proxy);

    if cfg.disk_full {
        match disk_full_phase(cfg, &spec) {
            Ok(DiskFull::Ran(r)) => report.disk_full = Some(r),
            Ok(DiskFull::Skipped(why)) => {
                eprintln!("disk-full phase skipped: {why}");
                report.disk_full_skipped = Some(why);
            }
            Err(e) => shared.violation(format!("disk-full phase: {e:#}")),
        }
    }

    report.cycles = cycle;
    for l in &shared.ledger {
        let l = lock(l);
        report.acked_batches += l.acked.len() as u64;
        report.acked_records += l.acked_records;
        report.unknown_records += l.unknown_records;
    }
    report.producer_errors = shared.producer_errors.load(Ordering::Relaxed);
    report.consumer_records_checked = shared.consumer_records.load(Ordering::Relaxed);
    report.idempotent = shared
        .idempotent
        .report(cfg.idempotent_producers + usize::from(cfg.queue_consumers > 0));
    report.peak_rss_bytes = peak_rss.load(Ordering::Relaxed);
    report.restart_serving_ms_max = report
        .restarts
        .iter()
        .map(|r| r.serving_ms)
        .fold(0.0, f64::max);
    if report.peak_rss_bytes > cfg.rss_limit_bytes {
        shared.violation(format!(
            "server RSS peaked at {} MiB, limit {} MiB",
            report.peak_rss_bytes >> 20,
            cfg.rss_limit_bytes >> 20
        ));
    }
    report.violations = lock(&shared.violations).clone();
    for v in &report.violations {
        let family = v
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map_or("log", |(f, _)| f);
        *report
            .violations_by_family
            .entry(family.to_string())
            .or_default() += 1;
    }
    report.duration_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The harness's threads, by how they are stopped.
struct Workers {
    /// Stopped by `load_stop`.
    producers: Vec<JoinHandle<()>>,
    /// Stopped by their own flags after draining.
    group_members: Vec<JoinHandle<()>>,
    queue_consumers: Vec<JoinHandle<()>>,
    /// Stopped by `stop`.
    tail_consumers: Vec<JoinHandle<()>>,
}

fn spawn_workers(cfg: &Config, shared: &Arc<Shared>) -> Workers {
    let mut w = Workers {
        producers: Vec::new(),
        group_members: Vec::new(),
        queue_consumers: Vec::new(),
        tail_consumers: Vec::new(),
    };
    let seed_of = |i: u64| cfg.seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..cfg.producers {
        let sh = shared.clone();
        let partitions = cfg.partitions;
        let seed = seed_of(i as u64);
        w.producers.push(std::thread::spawn(move || {
            producer_loop(&sh, i as u32 + 1, partitions, i % 2 == 0, seed);
        }));
    }
    // Idempotent producers: ids 101.. on the torture topic, 201 on the work queue.
    let idempotent = (0..cfg.idempotent_producers).map(|i| (false, 101 + i as u32, i % 2 == 1));
    let feeding_queue = (cfg.queue_consumers > 0).then_some((true, 201, true));
    for (to_queue, producer, via_proxy) in idempotent.chain(feeding_queue) {
        let sh = shared.clone();
        let seed = seed_of(u64::from(producer));
        let sabotage = cfg.sabotage;
        w.producers.push(std::thread::spawn(move || {
            let target = if to_queue {
                idempotent::Target {
                    topic: queue::QUEUE,
                    ledger: &sh.queue_ledger,
                    batch_records_max: 8,
                    via_proxy,
                }
            } else {
                idempotent::Target {
                    topic: TOPIC,
                    ledger: &sh.ledger,
                    batch_records_max: 16,
                    via_proxy,
                }
            };
            idempotent::producer_loop(&sh, &target, producer, seed, sabotage);
        }));
    }
    for m in 0..cfg.group_members {
        let sh = shared.clone();
        w.group_members.push(std::thread::spawn(move || {
            groups::member_loop(&sh, m, m == 0)
        }));
    }
    if cfg.group_members > 0 {
        let sh = shared.clone();
        w.group_members
            .push(std::thread::spawn(move || groups::watch_committed(&sh)));
    }
    for c in 0..cfg.queue_consumers {
        let sh = shared.clone();
        let seed = seed_of(300 + c as u64);
        w.queue_consumers.push(std::thread::spawn(move || {
            queue::consumer_loop(&sh, c, c == 0, seed);
        }));
    }
    for c in 0..cfg.consumers {
        let sh = shared.clone();
        let mine: Vec<u32> = (0..cfg.partitions)
            .filter(|p| (*p as usize) % cfg.consumers == c)
            .collect();
        w.tail_consumers
            .push(std::thread::spawn(move || consumer_loop(&sh, &mine)));
    }
    w
}

/// Stops the load, lets the group and the queue consumers drain what was acknowledged and
/// checks it, then stops every worker.
fn finish_load(
    cfg: &Config,
    shared: &Arc<Shared>,
    workers: Workers,
    report: &mut Report,
) -> anyhow::Result<()> {
    shared.load_stop.store(true, Ordering::Relaxed);
    shared.hold.store(false, Ordering::Relaxed);
    for w in workers.producers {
        let _ = w.join();
    }
    // A run that failed already does not wait for what may never come.
    let drain_limit = if lock(&shared.violations).is_empty() {
        Duration::from_secs(90)
    } else {
        Duration::ZERO
    };
    let client = retry_client(shared)?;
    if cfg.group_members > 0 {
        if let Err(e) = groups::check_committed(shared, &client) {
            shared.violation(format!("[group] reading committed offsets: {e:#}"));
        }
        report.groups = Some(groups::drain(shared, drain_limit));
    }
    shared.groups.stop.store(true, Ordering::Relaxed);
    for w in workers.group_members {
        let _ = w.join();
    }
    let queue_report =
        (cfg.queue_consumers > 0).then(|| queue::drain(shared, &client, drain_limit));
    shared.queue.stop.store(true, Ordering::Relaxed);
    for w in workers.queue_consumers {
        let _ = w.join();
    }
    if let Some(r) = queue_report {
        report.queue = Some(queue::finish(shared, &client, r, cfg.queue_consumers));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers.tail_consumers {
        let _ = w.join();
    }
    Ok(())
}

fn acked_records(shared: &Shared) -> u64 {
    shared.ledger.iter().map(|l| lock(l).acked_records).sum()
}

/// The fixed schedule of a `cycles` run: at least `kill_cycles_min` kills and every other fault
/// once, shuffled; `None` for a timed run.
fn schedule(cfg: &Config, rng: &mut Xoshiro256PlusPlus) -> Option<Vec<Fault>> {
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

fn spawn_rss_monitor(
    pid: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    shared: Arc<Shared>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::Relaxed) {
            let p = pid.load(Ordering::Relaxed);
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status"))
                && let Some(kib) = s
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            {
                peak.fetch_max(kib * 1024, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Injects one fault; returns the restart it caused, if any.
#[allow(clippy::too_many_arguments)]
fn inject(
    cfg: &Config,
    fault: Fault,
    srv: &mut ServerProc,
    spec: &ServerSpec,
    proxy: &Proxy,
    shared: &Arc<Shared>,
    rng: &mut Xoshiro256PlusPlus,
    report: &mut Report,
) -> anyhow::Result<Option<Restart>> {
    match fault {
        Fault::Kill | Fault::Torn => {
            let torn = (fault == Fault::Torn).then(|| rng.random_range(0..cfg.partitions));
            if torn.is_some() && cfg.group_members > 0 {
                // The tear may take back records the group consumed: members leave first.
                groups::park(shared);
            }
            srv.kill9()?;
            if let Some(p) = torn {
                // Acknowledgements already on their way are in the ledger before it is read.
                shared.hold_producers();
                let torn = tear_tail(
                    &spec.data_dir,
                    p,
                    &shared.ledger[p as usize],
                    rng,
                    cfg.sabotage,
                );
                shared.hold.store(false, Ordering::Release);
                torn?;
                shared.torn_epoch[p as usize].fetch_add(1, Ordering::Relaxed);
            }
            let log_bytes = dir_bytes(&spec.data_dir);
            let t = Instant::now();
            *srv = spec.start()?;
            let listening_ms = t.elapsed().as_secs_f64() * 1e3;
            lock(&shared.server_addr).clone_from(&srv.addr);
            proxy.set_target(&srv.addr);
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
            Ok(Some(Restart {
                fault,
                log_bytes,
                listening_ms,
                serving_ms,
            }))
        }
        Fault::Pause => {
            srv.pause();
            std::thread::sleep(cfg.pause);
            srv.resume();
            if let Err(e) = wait_serving(shared, cfg.restart_limit) {
                shared.violation(format!("server not serving after SIGCONT: {e:#}"));
            }
            Ok(None)
        }
        Fault::NetDrop => {
            proxy.cut_all();
            Ok(None)
        }
        Fault::NetDelay => {
            proxy.set_delay(Duration::from_millis(30));
            std::thread::sleep(cfg.cycle);
            proxy.set_delay(Duration::ZERO);
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

/// Waits until the server answers a ping on its bootstrap address.
fn wait_serving(shared: &Shared, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let r = shared.client(false).and_then(|c| c.ping());
        match r {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
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
        let garbage: Vec<u8> = (0..rng.random_range(1..4096))
            .map(|_| rng.random())
            .collect();
        f.seek(SeekFrom::End(0))?;
        f.write_all(&garbage).context("appending a torn batch")?;
    }
    f.sync_all().context("syncing the torn segment")?;
    Ok(())
}

/// A verifying producer: batches of 1..=16 records to partitions in turn, `durable` acks, every
/// acknowledgement recorded; on an error the batch's fate is unknown and the producer moves on
/// with new sequence numbers (never a resend), reconnecting as needed.
fn producer_loop(shared: &Shared, producer: u32, partitions: u32, via_proxy: bool, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut seqs = vec![0u64; partitions as usize];
    let mut client: Option<Client> = None;
    let mut p = producer % partitions;
    while !shared.load_stopped() {
        shared.sending.fetch_add(1, Ordering::AcqRel);
        if shared.hold.load(Ordering::Acquire) {
            shared.sending.fetch_sub(1, Ordering::AcqRel);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let Some(c) = shared.cached_client(&mut client, via_proxy) else {
            shared.sending.fetch_sub(1, Ordering::AcqRel);
            continue;
        };
        let n = rng.random_range(1..=16u64);
        let seq_base = seqs[p as usize];
        seqs[p as usize] += n;
        let values = (seq_base..seq_base + n).map(|s| ledger::value(producer, p, s));
        let result = batch::batch_of_values(values)
            .map_err(|e| anyhow::anyhow!("building a batch: {e}"))
            .and_then(|b| Ok(c.produce(TOPIC, p, b, Acks::Durable)?));
        match result {
            Ok(Some(ack)) => {
                if ack.last_offset + 1 - ack.base_offset != n {
                    shared.violation(format!(
                        "partition {p}: ack {}..={} for a batch of {n}",
                        ack.base_offset, ack.last_offset
                    ));
                }
                let mut l = lock(&shared.ledger[p as usize]);
                l.acked.insert(
                    ack.base_offset,
                    Acked {
                        last_offset: ack.last_offset,
                        producer,
                        seq_base,
                    },
                );
                l.acked_records += n;
            }
            Ok(None) => shared.violation("a durable produce returned no ack".into()),
            Err(e) => {
                lock(&shared.ledger[p as usize]).unknown_records += n;
                shared.producer_errors.fetch_add(1, Ordering::Relaxed);
                let transient = e.downcast_ref::<ClientError>().is_some_and(|ce| {
                    matches!(
                        ce,
                        ClientError::Connect { .. }
                            | ClientError::ConnectionLost { .. }
                            | ClientError::Timeout { .. }
                    ) || ce.code().is_some_and(|c| {
                        [code::SHUTTING_DOWN, code::BUSY, code::TIMEOUT].contains(&c)
                    })
                });
                if !transient {
                    shared.violation(format!("producer {producer}: unexpected error: {e:#}"));
                }
                client = None;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        shared.sending.fetch_sub(1, Ordering::AcqRel);
        p = (p + 1) % partitions;
    }
}

/// A verifying tail consumer: long-poll fetches from its position on each partition; checks
/// contiguity, byte identity, per-producer order, CRC (the batch decode validates it), and that
/// data it saw is still there after a process kill.
fn consumer_loop(shared: &Shared, partitions: &[u32]) {
    struct Pos {
        next: u64,
        last_seq: HashMap<u32, u64>,
        torn_epoch: u64,
    }
    let mut pos: Vec<Pos> = partitions
        .iter()
        .map(|_| Pos {
            next: 0,
            last_seq: HashMap::new(),
            torn_epoch: 0,
        })
        .collect();
    let mut client: Option<Client> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        for (i, &p) in partitions.iter().enumerate() {
            let Some(c) = shared.cached_client(&mut client, false) else {
                break;
            };
            let at = &mut pos[i];
            let r = c.fetch(TOPIC, p, at.next, Duration::from_millis(50), 1 << 20);
            let r = match r {
                Ok(r) => r,
                Err(e) if e.code() == Some(code::OFFSET_OUT_OF_RANGE) => {
                    // The log is shorter than what this consumer saw.
                    let torn = shared.torn_epoch[p as usize].load(Ordering::Relaxed);
                    if torn == at.torn_epoch {
                        shared.violation(format!(
                            "partition {p}: offset {} was visible before a process kill and \
                             is gone after it ({e})",
                            at.next
                        ));
                        return;
                    }
                    at.torn_epoch = torn;
                    // Rewind to the end of the acknowledged data (never below the log start).
                    let acked_end = lock(&shared.ledger[p as usize])
                        .acked
                        .values()
                        .map(|a| a.last_offset + 1)
                        .max()
                        .unwrap_or(0);
                    at.next = acked_end.min(at.next);
                    continue;
                }
                Err(_) => {
                    client = None;
                    break;
                }
            };
            if r.error_code != code::NONE {
                client = None;
                break;
            }
            for chunk in &r.chunks {
                let records = match decode_chunk(chunk) {
                    Ok(x) => x,
                    Err(e) => {
                        shared.violation(format!("partition {p}: corrupt batch served: {e}"));
                        return;
                    }
                };
                for (offset, value) in records {
                    if offset < at.next {
                        continue;
                    }
                    if offset != at.next {
                        shared.violation(format!(
                            "partition {p}: consumer expected offset {}, got {offset}",
                            at.next
                        ));
                        return;
                    }
                    let ok = ledger::identity(&value).is_some_and(|(prod, part, seq)| {
                        part == p
                            && value == ledger::value(prod, part, seq)
                            && at.last_seq.insert(prod, seq).is_none_or(|prev| prev < seq)
                    });
                    if !ok {
                        shared.violation(format!(
                            "partition {p}: consumer found a wrong, duplicate or reordered \
                             record at offset {offset}"
                        ));
                        return;
                    }
                    at.next = offset + 1;
                    shared.consumer_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Verified points of every verified topic: per partition, the offset up to which the log was
/// checked and each producer's highest sequence below it.
struct Verified {
    topic: Vec<(u64, HashMap<u32, u64>)>,
    queue: Vec<(u64, HashMap<u32, u64>)>,
    groups: bool,
    queue_enabled: bool,
}

impl Verified {
    fn new(cfg: &Config) -> Verified {
        Verified {
            topic: vec![(0, HashMap::new()); cfg.partitions as usize],
            queue: vec![
                (0, HashMap::new());
                if cfg.queue_consumers > 0 {
                    cfg.queue_partitions as usize
                } else {
                    0
                }
            ],
            groups: cfg.group_members > 0,
            queue_enabled: cfg.queue_consumers > 0,
        }
    }
}

/// Holds the producers, waits for sends in flight, scans every partition of the torture topic
/// and the work queue from its verified point to the high watermark against the ledger, and
/// moves the verified point; reads the group's committed offsets and the queue's ack floors back.
/// Returns (records scanned, acknowledged records found).
fn verify(shared: &Shared, verified: &mut Verified, from_zero: bool) -> anyhow::Result<(u64, u64)> {
    shared.hold_producers();
    let result = (|| {
        let client = retry_client(shared)?;
        let (mut records, mut acked) = (0, 0);
        let topics = [
            (TOPIC, &shared.ledger, &mut verified.topic),
            (queue::QUEUE, &shared.queue_ledger, &mut verified.queue),
        ];
        for (topic, ledgers, points) in topics {
            for (p, point) in points.iter_mut().enumerate() {
                let (from, last_seq) = if from_zero {
                    (0, HashMap::new())
                } else {
                    point.clone()
                };
                let (r, end) =
                    scan_partition(&client, topic, &ledgers[p], p as u32, from, last_seq)?;
                records += r.records;
                acked += r.acked_found;
                for v in &r.violations {
                    shared.violation(format!("{topic} {}", v.0));
                }
                *point = (end, r.last_seq);
            }
        }
        if verified.groups {
            groups::check_committed(shared, &client)?;
        }
        if verified.queue_enabled {
            queue::check_floors(shared, &client)?;
        }
        Ok((records, acked))
    })();
    shared.hold.store(false, Ordering::Release);
    result
}

fn retry_client(shared: &Shared) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match shared.client(false) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Decodes a fetched chunk (consecutive whole batches; the decode checks each CRC) into
/// `(offset, value)` pairs.
fn decode_chunk(chunk: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, shardline_engine::Error> {
    let mut out = Vec::new();
    for b in batch::split_batches(chunk)? {
        let (h, records) = batch::decode(b)?;
        out.extend(
            records
                .into_iter()
                .map(|r| (h.base_offset + u64::from(r.offset_delta), r.value)),
        );
    }
    Ok(out)
}

/// Scans one partition from `from` to its high watermark.
fn scan_partition(
    client: &Client,
    topic: &str,
    ledger: &Mutex<PartitionLedger>,
    p: u32,
    from: u64,
    last_seq: HashMap<u32, u64>,
) -> anyhow::Result<(ledger::ScanResult, u64)> {
    // Held for the whole scan: no acknowledgement lands between reading the high watermark
    // and checking the ledger.
    let ledger = lock(ledger);
    let first = client.fetch(topic, p, from, Duration::ZERO, 1 << 20)?;
    if first.log_start != 0 {
        bail!(
            "partition {p}: log start moved to {} (no retention here)",
            first.log_start
        );
    }
    let end = first.high_watermark;
    let mut scan = Scan::new(p, &ledger, from, last_seq);
    let mut at = from;
    let mut chunks = first.chunks;
    let mut guard = 0u64;
    while at < end {
        for chunk in &chunks {
            let records = match decode_chunk(chunk) {
                Ok(x) => x,
                Err(e) => {
                    let mut r = scan.finish(at);
                    r.violations.push(Violation(format!(
                        "partition {p}: corrupt batch served at {at}: {e}"
                    )));
                    return Ok((r, at));
                }
            };
            for (offset, value) in records {
                if offset >= at && offset < end {
                    scan.record(offset, &value);
                    at = offset + 1;
                }
            }
        }
        if at >= end {
            break;
        }
        guard += 1;
        if guard > 10_000_000 {
            bail!("partition {p}: scan does not advance at {at}");
        }
        let r = client.fetch(topic, p, at, Duration::ZERO, 4 << 20)?;
        if r.chunks.is_empty() {
            break;
        }
        chunks = r.chunks;
    }
    Ok((scan.finish(end), end))
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
    let threads: Vec<JoinHandle<()>> = (0..4)
        .map(|_| {
            let sh = shared.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let Ok(c) = sh.client(false) else { return };
                let value = vec![0x5Au8; (1 << 20) - 512];
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

enum DiskFull {
    Ran(DiskFullReport),
    Skipped(String),
}

/// A server on a small loop-mounted ext4: durable producers write until the disk is full. Every
/// produce must end acknowledged or with DISK_FULL (no other error, no hang, no crash); every
/// acknowledged record must read back; the server must still serve reads.
fn disk_full_phase(cfg: &Config, spec: &ServerSpec) -> anyhow::Result<DiskFull> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(DiskFull::Skipped("not root (needs mount)".into()));
    }
    for tool in ["mkfs.ext4", "mount", "umount"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Ok(DiskFull::Skipped(format!("{tool} not found")));
        }
    }
    let image = cfg.dir.join("small-disk.img");
    let mnt = cfg.dir.join("small-disk");
    std::fs::create_dir_all(&mnt)?;
    let f = std::fs::File::create(&image)?;
    f.set_len(cfg.disk_full_mib << 20)?;
    drop(f);
    let sh = |args: &[&str]| -> anyhow::Result<bool> {
        Ok(std::process::Command::new(args[0])
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?
            .success())
    };
    let img = image.to_string_lossy().to_string();
    let mnt_s = mnt.to_string_lossy().to_string();
    if !sh(&["mkfs.ext4", "-q", "-F", &img])? {
        return Ok(DiskFull::Skipped("mkfs.ext4 failed".into()));
    }
    if !sh(&["mount", "-o", "loop", &img, &mnt_s])? {
        return Ok(DiskFull::Skipped(
            "mount -o loop failed (no loop devices in this sandbox?)".into(),
        ));
    }
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt_s.clone());
    let dspec = ServerSpec {
        data_dir: mnt.join("data"),
        shards: 1,
        ..spec.clone()
    };
    std::fs::create_dir_all(&dspec.data_dir)?;
    let srv = dspec.start()?;
    let ccfg = ClientConfig {
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let client = Client::connect(&srv.addr, ccfg)?;
    client.create_topic(
        TOPIC,
        TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    )?;
    let mut report = DiskFullReport {
        filesystem_mib: cfg.disk_full_mib,
        ..DiskFullReport::default()
    };
    // Ballast: freed once the disk is full, to show the partition takes writes again.
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 8 << 20]).context("writing the ballast file")?;
    let mut ledger = PartitionLedger::default();
    let mut seq = 0u64;
    let mut produce =
        |report: &mut DiskFullReport, ledger: &mut PartitionLedger| -> anyhow::Result<bool> {
            let n = 64u64;
            let values = (seq..seq + n).map(|s| ledger::value(1, 0, s));
            let b = batch::batch_of_values(values).map_err(|e| anyhow::anyhow!("{e}"))?;
            let r = client.produce(TOPIC, 0, b, Acks::Durable);
            let seq_base = seq;
            seq += n;
            match r {
                Ok(Some(ack)) => {
                    ledger.acked.insert(
                        ack.base_offset,
                        Acked {
                            last_offset: ack.last_offset,
                            producer: 1,
                            seq_base,
                        },
                    );
                    ledger.acked_records += n;
                    Ok(true)
                }
                Ok(None) => bail!("durable produce without an ack"),
                // The failed write's partition is reopened from disk ("repaired"); until that is
                // done it keeps answering DISK_FULL (one consistent, retriable error).
                Err(e) if e.code() == Some(code::DISK_FULL) => {
                    report.disk_full_errors += 1;
                    Ok(false)
                }
                Err(e) => {
                    report.other_errors += 1;
                    bail!("error other than disk full on a full disk: {e}")
                }
            }
        };
    // Bounded: the disk holds at most disk_full_mib.
    let deadline = Instant::now() + Duration::from_secs(120);
    while report.disk_full_errors < 20 && Instant::now() < deadline {
        produce(&mut report, &mut ledger)?;
    }
    if report.disk_full_errors == 0 {
        bail!(
            "{} MiB filesystem never reported disk full within the time limit",
            cfg.disk_full_mib
        );
    }
    // Space comes back: writes must succeed again within a bounded time, without a restart.
    std::fs::remove_file(&ballast).context("removing the ballast")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut recovered = false;
    while Instant::now() < deadline {
        if produce(&mut report, &mut ledger)? {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    report.writable_after_space_freed = recovered;
    if !recovered {
        bail!("the partition did not take writes again within 20 s of space being freed");
    }
    report.acked_records = ledger.acked_records;
    // Reads still work, and every acknowledged record is there, before and after a restart.
    let ledger = Mutex::new(ledger);
    let (r, _) = scan_partition(&client, TOPIC, &ledger, 0, 0, HashMap::new())?;
    report.records_verified = r.records;
    if r.failed() {
        bail!("after disk full: {:?}", r.violations);
    }
    report.served_after_full = client.ping().is_ok();
    if !report.served_after_full {
        bail!("server does not answer after the disk filled up");
    }
    drop(client);
    let status = srv.terminate(Duration::from_secs(60))?;
    if !status.success() {
        bail!("server on the full disk exited with {status} on SIGTERM");
    }
    let srv = dspec.start()?;
    let client = Client::connect(&srv.addr, ClientConfig::default())?;
    let (r, _) = scan_partition(&client, TOPIC, &ledger, 0, 0, HashMap::new())?;
    if r.failed() {
        bail!("after disk full and a restart: {:?}", r.violations);
    }
    drop(client);
    srv.terminate(Duration::from_secs(60))?;
    Ok(DiskFull::Ran(report))
}
