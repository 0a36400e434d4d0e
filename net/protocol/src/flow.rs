//! Credit-based flow control of subscriptions (docs/protocol.md, "Flow control").
//!
//! The server keeps one [`CreditWindow`] per subscription and asks it, before each push, how many
//! of the next batches it may send. The client keeps one [`ConsumerWindow`] and learns from it
//! when to send GrantCredits. Both are plain state machines: no I/O, no clock.
//!
//! The rules, in the server's terms. Per subscription and per dimension (records, bytes) the
//! server keeps `credit = granted - pushed`, where `granted` starts at the Subscribe request's
//! credit, the *window*. Since the client grants back exactly what it consumed,
//! `credit = window - in flight`.
//! 1. A push of whole batches costing `r` records and `b` bytes may be sent only if
//!    `r <= credit_records` and `b <= credit_bytes`.
//! 2. Exception, so that a batch larger than the window cannot stall the subscription forever: a
//!    push of exactly one batch that exceeds the *window* in records or bytes may be sent when
//!    `credit >= window` in each dimension the batch exceeds (nothing of the subscription is in
//!    flight there) and `credit >= cost` in the others.
//! 3. Every push subtracts its full cost; credit may go negative (after rule 2), and the client's
//!    grants pay the debt back first. Grants add (saturating). Batches are never split or
//!    re-encoded to fit.
//!
//! So the client never holds more than its window from one subscription, except one oversized
//! batch held alone.

/// Cost of a push or of one batch: records delivered and batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushCost {
    pub records: u64,
    pub bytes: u64,
}

/// Signed credit in one dimension: i128 holds any u64 grant sum minus any u64 push sum.
type Signed = i128;

/// The server's credit state for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditWindow {
    window_records: Signed,
    window_bytes: Signed,
    credit_records: Signed,
    credit_bytes: Signed,
}

/// Saturates a grant sum well inside i128 (a client cannot overflow it).
const CREDIT_MAX: Signed = u64::MAX as Signed;

impl CreditWindow {
    /// From the Subscribe request: the initial credit, which is also the window.
    pub fn new(credit_records: u32, credit_bytes: u64) -> CreditWindow {
        CreditWindow {
            window_records: Signed::from(credit_records),
            window_bytes: Signed::from(credit_bytes),
            credit_records: Signed::from(credit_records),
            credit_bytes: Signed::from(credit_bytes),
        }
    }

    /// A GrantCredits request.
    pub fn grant(&mut self, records: u32, bytes: u64) {
        self.credit_records = (self.credit_records + Signed::from(records)).min(CREDIT_MAX);
        self.credit_bytes = (self.credit_bytes + Signed::from(bytes)).min(CREDIT_MAX);
    }

    /// Current credit, clamped at zero (it is negative while an oversized batch is unpaid).
    pub fn credit(&self) -> PushCost {
        let clamp = |v: Signed| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        PushCost {
            records: clamp(self.credit_records),
            bytes: clamp(self.credit_bytes),
        }
    }

    pub fn window(&self) -> PushCost {
        let clamp = |v: Signed| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
        PushCost {
            records: clamp(self.window_records),
            bytes: clamp(self.window_bytes),
        }
    }

    /// Whether a push of `batches` batches costing `cost` may be sent now (rules 1 and 2).
    pub fn admits(&self, batches: usize, cost: PushCost) -> bool {
        if batches == 0 {
            return false;
        }
        let records = Signed::from(cost.records);
        let bytes = Signed::from(cost.bytes);
        if records <= self.credit_records && bytes <= self.credit_bytes {
            return true;
        }
        if batches != 1 {
            return false;
        }
        // Rule 2: one batch may go alone, beyond the credit, once the credit covers at least
        // half the window (or the whole cost, if smaller). The client grants back as soon as it
        // has consumed half the window, so after it has consumed everything pushed the server's
        // credit always exceeds half the window: requiring more (the batch's full cost, when the
        // batch is larger than half the window) could leave both sides waiting forever.
        let half_records = (self.window_records + 1) / 2;
        let half_bytes = (self.window_bytes + 1) / 2;
        let records_ok = self.credit_records >= records.min(half_records);
        let bytes_ok = self.credit_bytes >= bytes.min(half_bytes);
        records_ok && bytes_ok
    }

    /// How many of the leading `batches` (each a cost) the next push may carry; 0 means wait for
    /// credit. The push is then sent and [`CreditWindow::consume`]d.
    pub fn fit(&self, batches: impl IntoIterator<Item = PushCost>) -> usize {
        let mut total = PushCost::default();
        let mut n = 0;
        for b in batches {
            let next = PushCost {
                records: total.records.saturating_add(b.records),
                bytes: total.bytes.saturating_add(b.bytes),
            };
            if !self.admits(n + 1, next) {
                break;
            }
            total = next;
            n += 1;
        }
        n
    }

    /// Records a push that [`CreditWindow::admits`] allowed: its full cost is subtracted.
    pub fn consume(&mut self, batches: usize, cost: PushCost) {
        assert!(
            self.admits(batches, cost),
            "push of {batches} batches {cost:?} beyond credit {self:?}"
        );
        self.credit_records -= Signed::from(cost.records);
        self.credit_bytes -= Signed::from(cost.bytes);
    }
}

/// The client's side: counts what the application consumed and says when to grant it back.
/// It grants back exactly what was consumed, batched: a GrantCredits goes out once half the
/// window (in either dimension) has been consumed, which keeps the pipe full with one grant per
/// half window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerWindow {
    window: PushCost,
    consumed: PushCost,
}

impl ConsumerWindow {
    pub fn new(credit_records: u32, credit_bytes: u64) -> ConsumerWindow {
        ConsumerWindow {
            window: PushCost {
                records: u64::from(credit_records),
                bytes: credit_bytes,
            },
            consumed: PushCost::default(),
        }
    }

    /// The application is done with `cost` of pushed data (a push's `records` and batch
    /// bytes). Returns the grant to send now, if any, as `(records, bytes)`.
    pub fn consumed(&mut self, cost: PushCost) -> Option<(u32, u64)> {
        self.consumed.records = self.consumed.records.saturating_add(cost.records);
        self.consumed.bytes = self.consumed.bytes.saturating_add(cost.bytes);
        let half_records = self.consumed.records.saturating_mul(2) >= self.window.records;
        let half_bytes = self.consumed.bytes.saturating_mul(2) >= self.window.bytes;
        if !(half_records || half_bytes) {
            return None;
        }
        // Records above u32::MAX stay owed and go out with the next grant.
        let records = u32::try_from(self.consumed.records).unwrap_or(u32::MAX);
        let bytes = self.consumed.bytes;
        self.consumed.records -= u64::from(records);
        self.consumed.bytes = 0;
        Some((records, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cost(records: u64, bytes: u64) -> PushCost {
        PushCost { records, bytes }
    }

    #[test]
    fn pushes_within_credit_pass_and_beyond_wait() {
        let mut w = CreditWindow::new(10, 1000);
        assert!(w.admits(2, cost(10, 1000)));
        assert!(!w.admits(2, cost(11, 10)));
        assert_eq!(w.fit([cost(4, 400), cost(4, 400), cost(4, 400)]), 2);
        w.consume(2, cost(8, 800));
        assert_eq!(w.fit([cost(4, 400)]), 0);
        w.grant(8, 800);
        assert_eq!(w.fit([cost(4, 400)]), 1);
        assert!(!w.admits(0, cost(0, 0)), "an empty push is never sent");
    }

    #[test]
    fn a_large_batch_goes_alone_once_half_the_window_is_free() {
        let mut w = CreditWindow::new(100, 1000);
        w.consume(1, cost(60, 600));
        // Larger than the credit (40/400) and than half the window: waits.
        assert!(!w.admits(1, cost(70, 700)));
        w.grant(10, 100);
        // Credit 50/500 = half the window: a lone batch may go, but never with another one.
        assert!(w.admits(1, cost(70, 700)));
        assert!(
            w.admits(1, cost(5, 5000)),
            "larger than the whole window too"
        );
        assert!(!w.admits(2, cost(71, 710)));
        assert_eq!(w.fit([cost(70, 700), cost(1, 10)]), 1);
        w.consume(1, cost(70, 700));
        assert_eq!(w.credit(), cost(0, 0));
        // In debt (-20/-200): nothing goes until it is granted back.
        assert!(!w.admits(1, cost(1, 10)));
        w.grant(20, 200);
        assert!(!w.admits(1, cost(1, 10)));
        w.grant(1, 10);
        assert!(w.admits(1, cost(1, 10)));
    }

    #[test]
    fn consumer_grants_every_half_window() {
        let mut c = ConsumerWindow::new(100, 1 << 20);
        assert_eq!(c.consumed(cost(10, 1000)), None);
        assert_eq!(c.consumed(cost(40, 1000)), Some((50, 2000)));
        assert_eq!(c.consumed(cost(1, 600 << 10)), Some((1, 600 << 10)));
    }

    proptest! {
        /// A server following `fit` and a client granting back everything it consumed: the
        /// client never holds more than its window, except one oversized batch held alone, and
        /// the subscription never stalls.
        #[test]
        fn in_flight_stays_within_window(
            window_records in 1u32..50,
            window_bytes in 1u64..5000,
            batches in proptest::collection::vec((1u64..80, 1u64..8000), 1..60),
            consume_every in 1usize..4,
        ) {
            let mut server = CreditWindow::new(window_records, window_bytes);
            let mut client = ConsumerWindow::new(window_records, window_bytes);
            let mut held: Vec<PushCost> = Vec::new(); // batches at the client, not consumed
            let mut next = 0;
            let mut steps = 0;
            while next < batches.len() {
                steps += 1;
                prop_assert!(steps < 10_000, "stalled at batch {next}");
                let costs = batches[next..].iter().map(|&(r, b)| cost(r, b));
                let n = server.fit(costs);
                if n > 0 {
                    let total = batches[next..next + n].iter().fold(cost(0, 0), |t, &(r, b)| {
                        cost(t.records + r, t.bytes + b)
                    });
                    server.consume(n, total);
                    held.extend(batches[next..next + n].iter().map(|&(r, b)| cost(r, b)));
                    next += n;
                    let in_flight = held.iter().fold(cost(0, 0), |t, c| {
                        cost(t.records + c.records, t.bytes + c.bytes)
                    });
                    // Per dimension: within the window, or (rule 2) a lone batch sent with at
                    // most half the window still held before it.
                    let last = held[held.len() - 1];
                    let before_last = cost(in_flight.records - last.records, in_flight.bytes - last.bytes);
                    let ok = |held_d: u64, before_d: u64, window_d: u64| {
                        held_d <= window_d || (n == 1 && before_d <= window_d / 2)
                    };
                    prop_assert!(
                        ok(in_flight.records, before_last.records, u64::from(window_records))
                            && ok(in_flight.bytes, before_last.bytes, window_bytes),
                        "client holds {in_flight:?} in {} batches, window {window_records}/{window_bytes}",
                        held.len());
                }
                if n == 0 || steps % consume_every == 0 {
                    // The client consumes its oldest batch and grants back the way the real
                    // client does: through ConsumerWindow, once half the window is consumed.
                    if !held.is_empty() {
                        let c = held.remove(0);
                        if let Some((r, b)) = client.consumed(c) {
                            server.grant(r, b);
                        }
                    }
                }
            }
        }
    }
}
