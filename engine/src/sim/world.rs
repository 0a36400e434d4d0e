//! The simulated world: partitions (a core each), producers, readers, the clock, timers, the
//! running jobs and the storage, all driven by one seeded PRNG.

mod checks;
mod crashes;
mod jobs;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use super::model::Model;
use super::storage::{OpKind, SimStorage, Verdict};
use super::{SimConfig, Stats};
use crate::batch::ValidatedBatch;
use crate::batch::{BatchBuilder, ProducerInfo};
use crate::error::Result;
use crate::log::{LogConfig, PartitionLog};
use crate::partition::{Action, PartitionCore, Produced};
use crate::shard::{Acks, ProduceAck};
use crate::storage::Storage;
use checks::{read_once, verify_read};

type Core = PartitionCore<SimStorage, u64>;
type Actions = Vec<Action<SimStorage, u64>>;
/// An invariant violation (or a failure the simulator cannot continue after).
pub(super) type Check<T = ()> = std::result::Result<T, String>;

/// Start of the simulated clock (ms since the Unix epoch; record timestamps follow it).
const EPOCH_MS: i64 = 1_700_000_000_000;
const PRODUCERS_PER_PARTITION: usize = 2;
const SUBSCRIBERS_PER_PARTITION: usize = 2;
/// Retries pick among a producer's last this many batches: the dedup window, as a client
/// retries only its in-flight batches (older retries meet a known gap; see the module doc).
const RETRY_WINDOW: usize = crate::idempotence::DEDUP_WINDOW_BATCHES;

/// What a finished job hands back.
enum Done {
    Flush(crate::log::FlushDone<SimStorage>),
    Repair(Box<Result<PartitionLog<SimStorage>>>),
    Snapshot(u64, Result<()>),
    /// The roll's error is the shard's to log; retention carries on.
    Roll(#[allow(dead_code, reason = "logged by the shard, ignored here")] Result<()>),
    Expired(#[allow(dead_code, reason = "logged by the shard, ignored here")] Result<()>),
}

struct Task {
    part: usize,
    fut: Pin<Box<dyn Future<Output = Done>>>,
}

struct Timer {
    deadline_ms: i64,
    part: usize,
}

/// A produce request waiting for its reply.
struct Request {
    part: usize,
    acks: Acks,
    /// The offsets the reply must carry (`None`: refused, the reply must be an error).
    expect: Option<ProduceAck>,
}

struct Producer {
    producer_id: u64,
    next_sequence: u32,
    /// Batches appended: (producer id, base sequence, bytes), newest last.
    sent: Vec<(u64, u32, Bytes)>,
}

struct Part {
    dir: PathBuf,
    key: (Arc<str>, u32),
    log_config: LogConfig,
    core: Option<Core>,
    model: Model,
    /// High watermark last seen in this process lifetime.
    last_hw: u64,
    /// Last offset of the last durable reply in this process lifetime.
    last_durable_reply: Option<u64>,
    /// Durable acks not yet checked against the durable image.
    unprobed: Vec<ProduceAck>,
    producers: Vec<Producer>,
    subscribers: Vec<u64>,
    retention_running: bool,
}

/// Fault rates of one seed (per mille of released operations).
struct Faults {
    eio_per_mille: u64,
    crash_per_mille: u64,
    disk_full: bool,
}

pub(super) struct World {
    rng: Xoshiro256PlusPlus,
    cfg: SimConfig,
    now_ms: i64,
    storage: SimStorage,
    parts: Vec<Part>,
    tasks: Vec<Task>,
    timers: Vec<Timer>,
    requests: std::collections::BTreeMap<u64, Request>,
    next_token: u64,
    next_producer_id: u64,
    next_batch: u64,
    faults: Faults,
    /// The step at which the process dies (after `die_after_ops`).
    crash_at: Option<usize>,
    pub(super) step: usize,
    /// `SIM_VERBOSE` set: every event is printed (replaying one seed).
    verbose: bool,
    pub(super) trace: u64,
    pub(super) stats: Stats,
}

impl World {
    pub(super) fn new(cfg: SimConfig) -> Check<Self> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let faults = Faults {
            eio_per_mille: [0, 0, 3, 15][(rng.next_u64() % 4) as usize],
            crash_per_mille: [0, 5, 15, 40][(rng.next_u64() % 4) as usize],
            disk_full: false,
        };
        let mut w = World {
            rng,
            cfg,
            now_ms: EPOCH_MS,
            storage: SimStorage::new(),
            parts: Vec::new(),
            tasks: Vec::new(),
            timers: Vec::new(),
            requests: Default::default(),
            next_token: 1,
            next_producer_id: 1,
            next_batch: 0,
            faults,
            crash_at: None,
            step: 0,
            verbose: std::env::var_os("SIM_VERBOSE").is_some(),
            trace: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
        };
        for i in 0..w.cfg.partitions {
            let part = w.new_part(i)?;
            w.parts.push(part);
            w.reopen(i)?;
        }
        Ok(w)
    }

    fn new_part(&mut self, i: usize) -> Check<Part> {
        let dir = PathBuf::from(format!("/sim/topics/t{i}/0"));
        self.storage
            .create_dir_all(&dir)
            .map_err(|e| e.to_string())?;
        let log_config = LogConfig {
            segment_bytes: 64 << 10,
            segment_ms: 100 + self.below(600),
            checkpoint_interval_bytes: [4 << 10, 16 << 10, 1 << 30][self.below(3) as usize],
            retention_bytes: self.chance(300).then_some(160 << 10),
            retention_ms: self.chance(500).then_some(300 + self.below(1200)),
            cache_bytes: [0, 8 << 10, 1 << 20][self.below(3) as usize],
            preallocate_bytes: [0, 16 << 10][self.below(2) as usize],
            write_chunk_bytes: 64 << 10,
            ..LogConfig::default()
        };
        let producers = (0..PRODUCERS_PER_PARTITION)
            .map(|_| {
                let producer_id = self.next_producer_id;
                self.next_producer_id += 1;
                Producer {
                    producer_id,
                    next_sequence: 0,
                    sent: Vec::new(),
                }
            })
            .collect();
        Ok(Part {
            dir,
            key: (Arc::from(format!("t{i}").as_str()), 0),
            log_config,
            core: None,
            model: Model::default(),
            last_hw: 0,
            last_durable_reply: None,
            unprobed: Vec::new(),
            producers,
            subscribers: vec![0; SUBSCRIBERS_PER_PARTITION],
            retention_running: false,
        })
    }

    // --- randomness and the trace -----------------------------------------------------------

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn note(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            println!("[{} {}ms] {}", self.step, self.now_ms - EPOCH_MS, what());
        }
    }

    fn mix(&mut self, v: u64) {
        self.trace = (self.trace ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }

    // --- the step loop ----------------------------------------------------------------------

    /// One step: one event picked by the seed, then the jobs it unblocked, then the checks.
    pub(super) fn step(&mut self) -> Check {
        self.stats.steps += 1;
        if self.crash_at == Some(self.step) {
            self.crash(false)?;
        }
        let pending = !self.storage.pending().is_empty();
        let roll = self.below(1000);
        self.mix(roll);
        match roll {
            0..300 => self.produce()?,
            300..650 if pending => self.release()?,
            300..650 => self.advance_clock(20)?,
            650..760 => self.advance_clock(120)?,
            760..840 => self.fetch()?,
            840..910 => self.tail()?,
            910..940 => self.retention()?,
            940..960 => self.evict(),
            960..970 => {
                self.faults.disk_full = !self.faults.disk_full;
                self.mix(u64::from(self.faults.disk_full));
            }
            970..990 => {
                if self.chance(self.faults.crash_per_mille * 10) {
                    let kill = self.chance(300);
                    self.crash(kill)?;
                }
            }
            _ => {
                if self.crash_at.is_none() && self.chance(self.faults.crash_per_mille * 10) {
                    let ops = self.below(6);
                    self.storage.crash_image().die_after_ops(Some(ops));
                    self.crash_at = Some(self.step + 1 + self.below(15) as usize);
                }
            }
        }
        self.poll_tasks()?;
        self.probe()?;
        for p in 0..self.parts.len() {
            self.check_watermarks(p)?;
        }
        Ok(())
    }

    /// The end of a run: faults off, every operation and timer runs out, every durable producer
    /// must have been answered; then a last power loss and its checks.
    pub(super) fn finish(&mut self) -> Check {
        if self.crash_at.is_some() {
            self.crash(false)?;
        }
        self.faults = Faults {
            eio_per_mille: 0,
            crash_per_mille: 0,
            disk_full: false,
        };
        for _ in 0..100_000 {
            self.poll_tasks()?;
            let pending = self.storage.pending();
            if !pending.is_empty() {
                let i = self.below(pending.len() as u64) as usize;
                self.storage.release(pending[i].id, Verdict::Run);
                continue;
            }
            if let Some(t) = self.timers.iter().map(|t| t.deadline_ms).min() {
                self.now_ms = self.now_ms.max(t);
                self.fire_timers()?;
                continue;
            }
            break;
        }
        self.probe()?;
        if let Some((token, r)) = self.requests.iter().next() {
            let failed = self.parts[r.part]
                .core
                .as_ref()
                .and_then(|c| c.failure().map(str::to_string));
            return Err(format!(
                "request {token} ({:?}) on partition {} was never answered (partition failure: {failed:?})",
                r.acks, r.part
            ));
        }
        let kill = self.chance(300);
        self.crash(kill)
    }

    // --- events -----------------------------------------------------------------------------

    fn build_batch(&mut self, p: usize, producer: Option<ProducerInfo>) -> Check<Bytes> {
        let n = 1 + self.below(4) as usize;
        let mut b = BatchBuilder::new();
        if let Some(info) = producer {
            b = b.producer(info);
        }
        self.next_batch += 1;
        for i in 0..n {
            let fill = "x".repeat(self.below(400) as usize);
            let value = format!("p{p}-b{}-r{i}-{fill}", self.next_batch);
            b.push(
                self.now_ms * 1000 + i as i64,
                None,
                value.into_bytes(),
                Vec::new(),
            );
        }
        b.build().map_err(|e| e.to_string())
    }

    /// A produce: a plain batch, an idempotent producer's next batch, or a retry of one of its
    /// earlier batches (same bytes, same sequence), at a random ack level.
    fn produce(&mut self) -> Check {
        let p = self.below(self.parts.len() as u64) as usize;
        let acks = [Acks::None, Acks::Leader, Acks::Durable][self.below(3) as usize];
        let kind = self.below(100);
        let k = self.below(PRODUCERS_PER_PARTITION as u64) as usize;
        let (batch, idem, is_retry) = if kind < 40 {
            (self.build_batch(p, None)?, None, false)
        } else if kind < 75 || self.parts[p].producers[k].sent.is_empty() {
            let pr = &self.parts[p].producers[k];
            let info = ProducerInfo {
                producer_id: pr.producer_id,
                producer_epoch: 0,
                base_sequence: pr.next_sequence,
            };
            let b = self.build_batch(p, Some(info))?;
            (b, Some((info.producer_id, info.base_sequence)), false)
        } else {
            let len = self.parts[p].producers[k].sent.len();
            let back = self.below(len.min(RETRY_WINDOW) as u64) as usize;
            let (pid, seq, bytes) = self.parts[p].producers[k].sent[len - 1 - back].clone();
            (bytes, Some((pid, seq)), true)
        };
        let token = if acks == Acks::None && self.chance(500) {
            None
        } else {
            self.next_token += 1;
            Some(self.next_token)
        };
        let (now, mut out) = (self.now_ms, Vec::new());
        let core = self.parts[p].core.as_mut().ok_or("no core")?;
        let validated = ValidatedBatch::validate(batch.clone())
            .map_err(|e| format!("the simulator built an invalid batch: {e}"))?;
        let produced = core.produce(validated, acks, token, now, &mut out);
        let failed = core.failure().is_some();
        let log_start = core.watermarks().log_start;
        let facts = (is_retry, failed, log_start);
        let expect = self.check_produced(p, k, produced, &batch, idem, facts)?;
        self.mix(expect.map_or(u64::MAX, |a| a.base_offset));
        self.note(|| {
            format!(
                "p{p} produce {acks:?} token {token:?} idem {idem:?} retry {is_retry}: {produced:?}"
            )
        });
        if let Some(token) = token {
            self.requests.insert(
                token,
                Request {
                    part: p,
                    acks,
                    expect,
                },
            );
        }
        self.stats.produced += 1;
        self.perform(p, out)
    }

    /// Checks what `produce` returned against the model (dense offsets, idempotence) and
    /// updates it; returns the offsets the reply must carry.
    fn check_produced(
        &mut self,
        p: usize,
        k: usize,
        produced: Produced,
        batch: &Bytes,
        idem: Option<(u64, u32)>,
        (is_retry, failed, log_start): (bool, bool, u64),
    ) -> Check<Option<ProduceAck>> {
        let part = &mut self.parts[p];
        match produced {
            Produced::Appended { appended, .. } => {
                if appended.base_offset != part.model.next_offset {
                    return Err(format!(
                        "invariant 6 (dense offsets): appended at {}, the log ended at {}",
                        appended.base_offset, part.model.next_offset
                    ));
                }
                // Retention removed the original: its producer state may be gone with it after
                // a crash (the producer snapshot can lag), then the retry is a new batch.
                if let Some(key) = idem
                    && let Some(original) = part.model.idempotent.get(&key)
                    && original.last_offset >= log_start
                {
                    return Err(format!(
                        "invariant 5 (idempotence): producer {} sequence {} appended again at {}, \
                         its original is at {original:?}",
                        key.0, key.1, appended.base_offset
                    ));
                }
                let (base, last) = (appended.base_offset, appended.last_offset);
                part.model.append(base, last, batch.clone(), idem);
                if let Some((pid, seq)) = idem
                    && !is_retry
                {
                    let pr = &mut part.producers[k];
                    let n = u32::try_from(last - base + 1).map_err(|e| e.to_string())?;
                    pr.next_sequence = seq + n;
                    pr.sent.push((pid, seq, batch.clone()));
                }
                self.stats.appended += 1;
                Ok(Some(ProduceAck {
                    base_offset: base,
                    last_offset: last,
                }))
            }
            Produced::Duplicate(ack) => {
                let key = idem.ok_or("a plain batch was answered as a duplicate")?;
                match part.model.idempotent.get(&key) {
                    Some(original) if *original == ack => {
                        self.stats.duplicates += 1;
                        Ok(Some(ack))
                    }
                    original => Err(format!(
                        "invariant 5 (idempotence): retry of producer {} sequence {} answered \
                         with {ack:?}, the model has {original:?}",
                        key.0, key.1
                    )),
                }
            }
            Produced::Refused => {
                // A next batch refused on a writable partition: its predecessor was lost
                // (crash, repair); the producer starts over under a new id.
                if idem.is_some() && !is_retry && !failed {
                    part.producers[k].producer_id = self.next_producer_id;
                    part.producers[k].next_sequence = 0;
                    self.next_producer_id += 1;
                }
                self.stats.refused += 1;
                Ok(None)
            }
        }
    }

    /// Completes one pending storage operation, picked at random (reordering), with a fault
    /// sometimes.
    fn release(&mut self) -> Check {
        let pending = self.storage.pending();
        let i = self.below(pending.len() as u64) as usize;
        let op = &pending[i];
        let verdict = if op.kind == OpKind::Write && self.faults.disk_full {
            Verdict::NoSpace
        } else if self.chance(self.faults.eio_per_mille) {
            Verdict::Eio
        } else {
            Verdict::Run
        };
        if verdict != Verdict::Run {
            self.stats.faults += 1;
        }
        self.mix(op.kind as u64);
        self.note(|| {
            format!(
                "release {} {:?} {}: {verdict:?}",
                op.id,
                op.kind,
                op.path.display()
            )
        });
        self.storage.release(op.id, verdict);
        Ok(())
    }

    fn advance_clock(&mut self, max_ms: u64) -> Check {
        self.now_ms += 1 + self.below(max_ms) as i64;
        self.fire_timers()
    }

    fn fire_timers(&mut self) -> Check {
        loop {
            let now = self.now_ms;
            let due = self
                .timers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.deadline_ms <= now)
                .min_by_key(|(i, t)| (t.deadline_ms, *i))
                .map(|(i, _)| i);
            let Some(i) = due else { return Ok(()) };
            let t = self.timers.remove(i);
            let mut out = Vec::new();
            if let Some(core) = self.parts[t.part].core.as_mut() {
                core.sync_timer_fired(&mut out);
            }
            self.perform(t.part, out)?;
        }
    }

    /// A fetch at a random offset in `[log start, high watermark]`.
    fn fetch(&mut self) -> Check {
        let p = self.below(self.parts.len() as u64) as usize;
        let max_bytes = 1 + self.below(16 << 10) as usize;
        let max_records = 1 + self.below(40) as usize;
        let core = self.parts[p].core.as_ref().ok_or("no core")?;
        let w = core.watermarks();
        let offset = w.log_start + self.rng.next_u64() % (w.written_offset - w.log_start + 1);
        let log = self.parts[p].core.as_ref().ok_or("no core")?.log();
        let r = read_once(&log, offset, max_bytes, max_records)?;
        let end = verify_read(&self.parts[p].model, offset, &r, w.written_offset)?;
        drop(log);
        self.stats.reads += 1;
        self.mix(end);
        Ok(())
    }

    /// A subscriber reads on from where it stopped.
    fn tail(&mut self) -> Check {
        let p = self.below(self.parts.len() as u64) as usize;
        let s = self.below(SUBSCRIBERS_PER_PARTITION as u64) as usize;
        let part = &self.parts[p];
        let core = part.core.as_ref().ok_or("no core")?;
        let w = core.watermarks();
        let pos = part.subscribers[s].max(w.log_start);
        if pos > w.written_offset {
            return Err(format!(
                "invariant 7: subscriber at {pos} is beyond the high watermark {}",
                w.written_offset
            ));
        }
        let r = read_once(&core.log(), pos, 64 << 10, 1000)?;
        let end = verify_read(&part.model, pos, &r, w.written_offset)?;
        self.parts[p].subscribers[s] = end;
        self.stats.reads += 1;
        self.mix(end);
        Ok(())
    }

    /// The retention timer on one partition: a producer snapshot, the roll of an expired active
    /// segment, then the deletion of expired segments.
    fn retention(&mut self) -> Check {
        let p = self.below(self.parts.len() as u64) as usize;
        let now = self.now_ms;
        let part = &mut self.parts[p];
        if part.retention_running {
            return Ok(());
        }
        let core = part.core.as_mut().ok_or("no core")?;
        if let Some(job) = core.take_snapshot_job() {
            let upto = job.upto_offset();
            self.spawn(p, async move { Done::Snapshot(upto, job.run().await) });
        }
        let part = &mut self.parts[p];
        let roll = part.core.as_ref().ok_or("no core")?.retention_roll();
        part.retention_running = true;
        self.spawn(p, async move { Done::Roll(roll.run(now).await) });
        Ok(())
    }

    fn evict(&mut self) {
        let p = self.below(self.parts.len() as u64) as usize;
        if let Some(core) = self.parts[p].core.as_mut() {
            core.evict_cache(0);
        }
    }
}
