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

mod disk_full;
mod faults;
pub mod groups;
pub mod idempotent;
pub mod ledger;
mod load;
pub mod proxy;
pub mod queue;
pub mod recovery;
pub mod server;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use shardline_net::client::{Client, ClientConfig, ClientError};
use shardline_net::protocol::TopicConfig;

use ledger::PartitionLedger;
use load::RssMonitor;
use proxy::Proxy;
use server::{ServerProc, ServerSpec};
use verify::{Verified, verify};

pub use disk_full::DiskFullReport;

pub const TOPIC: &str = "torture";
const BURST_TOPIC: &str = "torture-burst";
/// The burst topic's retention and segment size: a long soak's disk use stays bounded.
const BURST_RETENTION_BYTES: u64 = 256 << 20;
const BURST_SEGMENT_BYTES: u64 = 32 << 20;
/// How long a graceful shutdown (SIGTERM) may take.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// A producer's pause while the harness holds the load, and after a failed send.
const PRODUCER_HOLD_INTERVAL: Duration = Duration::from_millis(5);
const PRODUCER_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How often [`Shared::hold_producers`] checks for sends in flight.
const HOLD_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A client connection: how long connecting may take, and the back-off after a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);
/// Violations kept in full; later ones are dropped (the first ones say what went wrong).
const VIOLATIONS_KEPT_MAX: usize = 200;

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
    fn new(cfg: &Config, server_addr: &str, proxy: &Proxy) -> Shared {
        Shared {
            server_addr: Mutex::new(server_addr.to_string()),
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
        }
    }

    fn violation(&self, v: String) {
        let mut all = lock(&self.violations);
        if all.len() < VIOLATIONS_KEPT_MAX {
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
            std::thread::sleep(HOLD_POLL_INTERVAL);
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
                std::thread::sleep(CONNECT_BACKOFF);
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
            connect_timeout: CONNECT_TIMEOUT,
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

/// The system under test and the harness around it, from the first start to the end of the
/// load.
struct Rig {
    spec: ServerSpec,
    srv: ServerProc,
    proxy: Proxy,
    shared: Arc<Shared>,
    rss: RssMonitor,
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
    let mut rig = start(cfg)?;
    let workers = load::spawn_workers(cfg, &rig.shared);
    report.cycles = run_cycles(cfg, t0, &mut rig, &mut rng, &mut report)?;
    load::finish_load(cfg, &rig.shared, workers, &mut report)?;
    let Rig {
        spec,
        srv,
        proxy,
        shared,
        rss,
    } = rig;
    verify_after_restart(cfg, &spec, srv, &shared, &mut report)?;
    shared.stop.store(true, Ordering::Relaxed);
    report.peak_rss_bytes = rss.join();
    drop(proxy);
    if cfg.disk_full {
        disk_full::run_phase(cfg, &spec, &shared, &mut report);
    }
    tally(cfg, &shared, &mut report);
    report.duration_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Starts the server and the proxy in front of it, creates the topics and watches the server's
/// memory.
fn start(cfg: &Config) -> anyhow::Result<Rig> {
    let spec = server_spec(cfg)?;
    let srv = spec.start()?;
    let proxy = Proxy::start(&srv.addr)?;
    let shared = Arc::new(Shared::new(cfg, &srv.addr, &proxy));
    create_topics(cfg, &shared)?;
    let rss = RssMonitor::spawn(srv.pid, shared.clone());
    Ok(Rig {
        spec,
        srv,
        proxy,
        shared,
        rss,
    })
}

fn create_topics(cfg: &Config, shared: &Shared) -> anyhow::Result<()> {
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
            retention_bytes: Some(BURST_RETENTION_BYTES),
            segment_bytes: Some(BURST_SEGMENT_BYTES),
            ..TopicConfig::default()
        },
    )?;
    if cfg.queue_consumers > 0 {
        queue::create(&admin, cfg.queue_partitions)?;
    }
    Ok(())
}

/// The fault cycles under load: inject a fault, let the load run on the healed system, verify
/// on a quiet log. Stops at the end of the schedule (or of the duration), at the first
/// violation, or when the server exits by itself. Returns the cycles run.
fn run_cycles(
    cfg: &Config,
    t0: Instant,
    rig: &mut Rig,
    rng: &mut Xoshiro256PlusPlus,
    report: &mut Report,
) -> anyhow::Result<usize> {
    let schedule = faults::schedule(cfg, rng);
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
        if let Some(r) = faults::inject(cfg, fault, rig, rng, report)? {
            rig.rss.watch(rig.srv.pid);
            report.restarts.push(r);
        }
        // Let the load run on the healed system, then verify on a quiet log.
        std::thread::sleep(cfg.cycle / 2);
        let (records, acked) = verify(&rig.shared, &mut verified, false)?;
        report.records_verified += records;
        report.acked_records_verified += acked;
        if rig.srv.exited() {
            rig.shared
                .violation(format!("cycle {cycle}: the server exited by itself"));
            break;
        }
        if cfg.verbose {
            print_cycle(cycle, fault, rig, report);
        }
        if !lock(&rig.shared.violations).is_empty() {
            break;
        }
    }
    Ok(cycle)
}

/// The `--verbose` line of a cycle.
fn print_cycle(cycle: usize, fault: Fault, rig: &Rig, report: &Report) {
    let shared = &rig.shared;
    eprintln!(
        "cycle {cycle:>4} {fault:<9?} acked {:>9} verified {:>9} group {:>9} queue acks \
         {:>7} rss {:>5} MiB  violations {}",
        load::acked_records(shared),
        report.records_verified,
        lock(&shared.groups.tracker).records,
        lock(&shared.queue.tracker).acks,
        rig.rss.peak_bytes() >> 20,
        lock(&shared.violations).len()
    );
}

/// A full scan from offset 0 of every partition, then a clean restart and another one; stops
/// the server at the end.
fn verify_after_restart(
    cfg: &Config,
    spec: &ServerSpec,
    srv: ServerProc,
    shared: &Shared,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut from_zero = Verified::new(cfg);
    verify(shared, &mut from_zero, true)?;
    let status = srv.terminate(SHUTDOWN_LIMIT)?;
    if !status.success() {
        shared.violation(format!("graceful shutdown exited with {status}"));
    }
    let srv = spec.start()?;
    lock(&shared.server_addr).clone_from(&srv.addr);
    let mut again = Verified::new(cfg);
    let (records, acked) = verify(shared, &mut again, true)?;
    report.records_verified += records;
    report.acked_records_verified += acked;
    let _ = srv.terminate(SHUTDOWN_LIMIT);
    Ok(())
}

/// Fills the report's totals from the shared state and adds the end-of-run violations.
fn tally(cfg: &Config, shared: &Shared, report: &mut Report) {
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
}
