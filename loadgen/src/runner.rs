//! One run: create the topic, start consumers then producers on their own threads, wait for
//! the producers, drain the consumers (bounded), merge what every thread measured.

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::clock;
use crate::consumer::{self, ConsumerPlan, ConsumerReport, Control};
use crate::driver::{Consumer, Driver, DriverError, Producer};
use crate::producer::{self, ProducerPlan, ProducerReport};
use crate::progress::{self, Progress};
use crate::result::{Counters, Measured, RunResult};
use crate::scheduler::{OpenLoop, Pacing};
use crate::stats::{self, PerSecond};
use crate::workload::Workload;

/// The phases of a run on the shared clock (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTimes {
    pub start_us: u64,
    pub warmup_end_us: u64,
    pub end_us: u64,
    pub drain_timeout_us: u64,
}

impl RunTimes {
    pub fn new(start_us: u64, w: &Workload) -> Self {
        let warmup_end_us = start_us + clock::duration_us(w.warmup);
        RunTimes {
            start_us,
            warmup_end_us,
            end_us: warmup_end_us + clock::duration_us(w.duration),
            drain_timeout_us: clock::duration_us(w.drain_timeout),
        }
    }

    /// After this, producers give up on acks and on overdue sends.
    pub fn drain_deadline_us(&self) -> u64 {
        self.end_us + self.drain_timeout_us
    }

    /// Slots of a per-second series: the run, the producers' and the consumers' drains.
    pub fn seconds_max(&self) -> usize {
        let us = self.drain_deadline_us() + self.drain_timeout_us - self.start_us;
        usize::try_from(us.div_ceil(1_000_000))
            .unwrap_or(usize::MAX)
            .min(100_000)
            + 1
    }
}

/// Why a run could not complete (as opposed to completing with bad numbers).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("starting a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("{0} thread panicked")]
    Panicked(String),
    #[error("{0}")]
    Merge(String),
}

/// Options that do not change what is measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Draw the live progress line on stderr.
    pub progress: bool,
}

/// Where the load threads run: producer and consumer threads start after the shards' cores so
/// that, with more cores than shards, load generation and the broker do not share a core.
struct Placement {
    /// Empty when threads are not pinned.
    cores: Vec<core_affinity::CoreId>,
    shards: usize,
}

impl Placement {
    fn new(w: &Workload) -> Placement {
        let cores = if w.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        Placement {
            cores,
            shards: w.shards as usize,
        }
    }

    /// The core of load thread `k` (producers first, then consumers).
    fn core_of(&self, k: usize) -> Option<core_affinity::CoreId> {
        (!self.cores.is_empty()).then(|| self.cores[(self.shards + k) % self.cores.len()])
    }
}

/// The first send is this far from now, so every thread is up before it.
const START_DELAY_US: u64 = 10_000;

fn join<T>(h: JoinHandle<T>, what: &str) -> Result<T, RunError> {
    h.join().map_err(|_| RunError::Panicked(what.to_string()))
}

/// The running consumer threads, how to tell each to drain or stop, and how each says it is
/// done.
struct Consumers {
    handles: Vec<JoinHandle<ConsumerReport>>,
    /// Per consumer: its partitions and its control channel.
    controls: Vec<(Vec<u32>, flume::Sender<Control>)>,
    done: flume::Receiver<usize>,
    /// Kept open until the drain ends, so that `done` waits out the drain timeout even when
    /// every consumer has gone.
    _done_tx: flume::Sender<usize>,
}

/// Runs the workload against the driver's topic `topic` (created afresh).
pub fn run(
    w: &Workload,
    driver: &dyn Driver,
    topic: &str,
    opts: RunOptions,
) -> Result<RunResult, RunError> {
    driver.create_topic(topic, w.partitions)?;
    let placement = Placement::new(w);
    let progress = opts.progress.then(|| Arc::new(Progress::default()));

    // Consumers first: their subscriptions must exist before the first message.
    let mut pending_consumers = Vec::new();
    for j in 0..w.consumers {
        let partitions = w.consumer_partitions(j);
        pending_consumers.push((j, partitions.clone(), driver.consumer(topic, &partitions)?));
    }
    let mut producers = Vec::new();
    for _ in 0..w.producers {
        producers.push(driver.producer(topic, w.acks)?);
    }

    let times = RunTimes::new(clock::now_us() + START_DELAY_US, w);
    let consumers = spawn_consumers(w, pending_consumers, times, &placement, &progress)?;
    let producer_handles = spawn_producers(w, producers, times, &placement, &progress)?;
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let reporter = match &progress {
        Some(p) => Some(progress::spawn_reporter(p.clone(), times, stop_rx)?),
        None => None,
    };

    let mut producer_reports = Vec::new();
    for (i, h) in producer_handles.into_iter().enumerate() {
        producer_reports.push(join(h, &format!("producer {i}"))?);
    }
    let consumer_reports = drain_consumers(w, consumers, &producer_reports, &times)?;
    let _ = stop_tx.send(());
    if let Some(r) = reporter {
        join(r, "progress")?;
    }
    let mut result = merge_reports(w, driver.name(), &times, producer_reports, consumer_reports)?;
    result.durability = driver.durability(w.acks);
    Ok(result)
}

/// Starts a thread per consumer (`(index, partitions, consumer)`).
fn spawn_consumers(
    w: &Workload,
    pending: Vec<(u32, Vec<u32>, Box<dyn Consumer>)>,
    times: RunTimes,
    placement: &Placement,
    progress: &Option<Arc<Progress>>,
) -> Result<Consumers, RunError> {
    let (done_tx, done_rx) = flume::bounded(w.consumers.max(1) as usize);
    let mut consumers = Consumers {
        handles: Vec::new(),
        controls: Vec::new(),
        done: done_rx,
        _done_tx: done_tx.clone(),
    };
    for (j, partitions, c) in pending {
        let (ctl_tx, ctl_rx) = flume::bounded(2);
        consumers.controls.push((partitions.clone(), ctl_tx));
        let plan = ConsumerPlan {
            index: j as usize,
            partitions,
            partition_count: w.partitions,
            times,
            core: placement.core_of((w.producers + j) as usize),
            progress: progress.clone(),
            control: ctl_rx,
            done: done_tx.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("loadgen-consumer-{j}"))
            .spawn(move || consumer::run_consumer(plan, c))?;
        consumers.handles.push(h);
    }
    Ok(consumers)
}

/// Starts a thread per producer, open loop at the workload's rate if it has one.
fn spawn_producers(
    w: &Workload,
    producers: Vec<Box<dyn Producer>>,
    times: RunTimes,
    placement: &Placement,
    progress: &Option<Arc<Progress>>,
) -> Result<Vec<JoinHandle<ProducerReport>>, RunError> {
    let mut handles = Vec::new();
    for (i, p) in producers.into_iter().enumerate() {
        let pacing = match w.rate {
            Some(rate) => Pacing::OpenLoop(OpenLoop::new(
                times.start_us,
                rate,
                w.batch.into(),
                w.producers.into(),
                i as u64,
            )),
            None => Pacing::ClosedLoop,
        };
        let plan = ProducerPlan {
            index: i,
            partitions: w.producer_partitions(i as u32),
            partition_count: w.partitions,
            message_bytes: w.message_size as usize,
            batch_messages: w.batch,
            inflight_max: w.inflight as usize,
            pacing,
            times,
            core: placement.core_of(i),
            progress: progress.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("loadgen-producer-{i}"))
            .spawn(move || producer::run_producer(plan, p))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Drain: each consumer exits once it has every acknowledged message of its partitions, or is
/// stopped at the drain timeout. Returns what each measured.
fn drain_consumers(
    w: &Workload,
    consumers: Consumers,
    producer_reports: &[ProducerReport],
    times: &RunTimes,
) -> Result<Vec<ConsumerReport>, RunError> {
    let mut acked_by_partition = vec![0u64; w.partitions as usize];
    for r in producer_reports {
        for (a, b) in acked_by_partition.iter_mut().zip(&r.acked_by_partition) {
            *a += b;
        }
    }
    for (partitions, ctl) in &consumers.controls {
        let targets = partitions
            .iter()
            .map(|&p| (p, acked_by_partition[p as usize]))
            .collect();
        let _ = ctl.send(Control::Drain { targets });
    }
    let drain_deadline = clock::now_us() + times.drain_timeout_us;
    let mut drained = 0;
    while drained < consumers.controls.len() {
        match consumers.done.recv_timeout(clock::until_us(drain_deadline)) {
            Ok(_) => drained += 1,
            Err(_) => break,
        }
    }
    for (_, ctl) in &consumers.controls {
        let _ = ctl.try_send(Control::Stop);
    }
    let mut consumer_reports = Vec::new();
    for (j, h) in consumers.handles.into_iter().enumerate() {
        consumer_reports.push(join(h, &format!("consumer {j}"))?);
    }
    Ok(consumer_reports)
}

fn merge_reports(
    w: &Workload,
    driver: &str,
    times: &RunTimes,
    producers: Vec<ProducerReport>,
    consumers: Vec<ConsumerReport>,
) -> Result<RunResult, RunError> {
    let mut m = Measured {
        publish: stats::new_histogram(),
        delay: stats::new_histogram(),
        send_to_ack: stats::new_histogram(),
        publish_corrected: None,
        e2e: stats::new_histogram(),
        acked_per_second: PerSecond::new(times.seconds_max()),
        received_per_second: PerSecond::new(times.seconds_max()),
        errors_per_second: PerSecond::new(times.seconds_max()),
    };
    let mut c = Counters::default();
    let mut first_error: Option<String> = None;
    let mut corrected = stats::new_histogram();
    let mut all_corrected = !producers.is_empty();
    let mut pinned = 0;
    for r in &producers {
        stats::merge(&mut m.publish, &r.publish).map_err(RunError::Merge)?;
        stats::merge(&mut m.delay, &r.delay).map_err(RunError::Merge)?;
        stats::merge(&mut m.send_to_ack, &r.send_to_ack).map_err(RunError::Merge)?;
        match &r.publish_corrected {
            Some(h) => stats::merge(&mut corrected, h).map_err(RunError::Merge)?,
            None => all_corrected = false,
        }
        m.acked_per_second.merge(&r.acked_per_second);
        m.errors_per_second.merge(&r.errors_per_second);
        c.sent += r.sent;
        c.acked += r.acked;
        c.errors += r.errors;
        c.unsent += r.unsent;
        c.acked_in_window += r.acked_in_window;
        pinned += usize::from(r.pinned);
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
    }
    if all_corrected {
        m.publish_corrected = Some(corrected);
    }
    for r in &consumers {
        stats::merge(&mut m.e2e, &r.e2e).map_err(RunError::Merge)?;
        m.received_per_second.merge(&r.received_per_second);
        c.received += r.received;
        c.received_in_window += r.received_in_window;
        c.errors += r.errors;
        c.corrupt += r.corrupt;
        for chk in &r.checks {
            c.duplicates += chk.duplicates;
            c.gaps += chk.gaps;
            c.out_of_order += chk.out_of_order;
            c.malformed += chk.malformed;
        }
        pinned += usize::from(r.pinned);
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
    }
    c.first_error = first_error;
    c.pinned_threads = pinned as u64;
    Ok(RunResult::build(driver, w, times, c, &m))
}
