//! Request timing of one Kafka connection, for finding where a producer's time goes
//! (docs/performance.md, "Where the 1-producer time went"). Off unless the target
//! `shardline_kafka_trace` logs at debug (`RUST_LOG=shardline_kafka_trace=debug`); then each
//! connection logs its averages when it closes or moves: how long the reader waited for the next
//! request's size prefix (the client's gap), how long its body took to arrive, the dispatch
//! (decode, checks, copy, enqueue), the wait for the answer (append, fsync, encode, and any
//! earlier answer ahead of it), the write, and how many answers were owed when a request came.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The log target that turns timing on.
pub(crate) const TARGET: &str = "shardline_kafka_trace";

#[derive(Default)]
pub(crate) struct Trace {
    requests: Cell<u64>,
    gap: Cell<Duration>,
    body: Cell<Duration>,
    dispatch: Cell<Duration>,
    answer: Cell<Duration>,
    write: Cell<Duration>,
    owed: Cell<u64>,
    /// Read-complete instants of the requests whose answers are owed, oldest first.
    pending: RefCell<VecDeque<Instant>>,
    started: Cell<Option<Instant>>,
}

fn add(c: &Cell<Duration>, d: Duration) {
    c.set(c.get() + d);
}

impl Trace {
    /// `Some` when the target is enabled at debug.
    pub(crate) fn new() -> Option<Trace> {
        tracing::enabled!(target: TARGET, tracing::Level::DEBUG).then(|| Trace {
            started: Cell::new(Some(Instant::now())),
            ..Trace::default()
        })
    }

    /// A request was read: `start` before its size prefix, `prefix` when the prefix was in,
    /// `done` when the body was.
    pub(crate) fn read(&self, start: Instant, prefix: Instant, done: Instant) {
        self.requests.set(self.requests.get() + 1);
        add(&self.gap, prefix - start);
        add(&self.body, done - prefix);
        let owed = self.pending.borrow().len() as u64;
        self.owed.set(self.owed.get() + owed);
    }

    /// The request read at `done` was dispatched; `answers`: it gets an answer.
    pub(crate) fn dispatched(&self, done: Instant, answers: bool) {
        add(&self.dispatch, done.elapsed());
        if answers {
            self.pending.borrow_mut().push_back(done);
        }
    }

    /// The writer got the oldest owed answer at `ready` and wrote it now.
    pub(crate) fn written(&self, ready: Instant) {
        if let Some(read) = self.pending.borrow_mut().pop_front() {
            add(&self.answer, ready.saturating_duration_since(read));
            add(&self.write, ready.elapsed());
        }
    }

    /// Logs the averages (microseconds per request).
    pub(crate) fn log(&self, shard: usize) {
        let n = self.requests.get().max(1);
        let us = |c: &Cell<Duration>| c.get().as_secs_f64() * 1e6 / n as f64;
        let life = self
            .started
            .get()
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        tracing::debug!(
            target: TARGET,
            shard,
            requests = self.requests.get(),
            seconds = life,
            gap_us = us(&self.gap),
            body_us = us(&self.body),
            dispatch_us = us(&self.dispatch),
            answer_us = us(&self.answer),
            write_us = us(&self.write),
            owed_at_arrival = self.owed.get() as f64 / n as f64,
            "kafka connection timing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched_to_their_requests_in_order() {
        let t = Trace::default();
        let t0 = Instant::now();
        let (p, d) = (
            t0 + Duration::from_micros(10),
            t0 + Duration::from_micros(30),
        );
        t.read(t0, p, d);
        t.dispatched(d, true);
        t.read(d, d, d + Duration::from_micros(5));
        t.dispatched(d + Duration::from_micros(5), false); // acks=0: no answer owed
        t.written(d + Duration::from_micros(100));
        assert_eq!(t.requests.get(), 2);
        assert_eq!(t.gap.get(), Duration::from_micros(10));
        assert_eq!(t.body.get(), Duration::from_micros(25));
        assert_eq!(t.answer.get(), Duration::from_micros(100));
        // The second request arrived while the first answer was owed.
        assert_eq!(t.owed.get(), 1);
        assert!(t.pending.borrow().is_empty());
        // A write with nothing owed changes nothing.
        t.written(Instant::now());
        assert_eq!(t.answer.get(), Duration::from_micros(100));
    }
}
