//! The queue state machine against a model that keeps one plain record per message, driven by
//! random operations (proptest), plus the priority policy and snapshot/replay.

use super::*;
use proptest::prelude::*;

fn settings(levels: u8) -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: 100,
        max_deliveries: 3,
        backoff_base_ms: 10,
        backoff_max_ms: 40,
        priority_levels: levels,
        window_max: 1 << 20,
        strict_priority: false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum M {
    Visible(i64),
    Leased { attempt: u32, until: i64 },
    Dead,
    Done,
}

/// The model: per message its attempts and state; leases go to the lowest visible offsets.
#[derive(Debug, Default)]
struct Model {
    msgs: Vec<(u32, M)>,
}

impl Model {
    fn tick(&mut self, now: i64, s: &QueueSettings) {
        for (attempts, m) in &mut self.msgs {
            if let M::Leased { until, .. } = *m
                && until <= now
            {
                *m = requeue(*attempts, None, now, s);
            }
        }
    }

    fn lease(&mut self, now: i64, max: usize, vis: u64, s: &QueueSettings) -> Vec<Receipt> {
        self.tick(now, s);
        let mut out = Vec::new();
        for (o, (attempts, m)) in self.msgs.iter_mut().enumerate() {
            if out.len() == max {
                break;
            }
            if let M::Visible(at) = *m
                && at <= now
            {
                *attempts += 1;
                *m = M::Leased {
                    attempt: *attempts,
                    until: now + vis as i64,
                };
                out.push(Receipt {
                    offset: o as u64,
                    attempt: *attempts,
                });
            }
        }
        out
    }

    fn leased(&self, r: Receipt) -> Result<(), LeaseError> {
        match self.msgs.get(r.offset as usize) {
            None => Err(LeaseError::Unknown),
            Some((_, M::Done)) => Err(LeaseError::Done),
            Some((_, M::Leased { attempt, .. })) if *attempt == r.attempt => Ok(()),
            Some(_) => Err(LeaseError::NotLeased),
        }
    }
}

fn requeue(attempts: u32, delay: Option<u64>, now: i64, s: &QueueSettings) -> M {
    if attempts >= s.max_deliveries {
        return M::Dead;
    }
    let d = delay.unwrap_or_else(|| backoff_ms(s.backoff_base_ms, s.backoff_max_ms, attempts));
    M::Visible(now + d as i64)
}

#[derive(Debug, Clone)]
enum Op {
    Add(u8),
    Lease(usize),
    Ack(usize),
    Nack(usize, Option<u64>),
    Advance(i64),
    DeadLetter,
    Extend(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..20).prop_map(Op::Add),
        (1usize..8).prop_map(Op::Lease),
        any::<usize>().prop_map(Op::Ack),
        (any::<usize>(), proptest::option::of(0u64..50)).prop_map(|(i, d)| Op::Nack(i, d)),
        (0i64..120).prop_map(Op::Advance),
        Just(Op::DeadLetter),
        (any::<usize>(), 0u64..200).prop_map(|(i, v)| Op::Extend(i, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn state_machine_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let s = settings(1);
        let mut q = QueueState::new(s, 0);
        let mut m = Model::default();
        let mut now = 1_000i64;
        // Every receipt ever handed out (stale ones included): acks pick from these.
        let mut receipts: Vec<Receipt> = Vec::new();
        for op in ops {
            match op {
                Op::Add(n) => for _ in 0..n {
                    q.add(m.msgs.len() as u64, 0, now, now);
                    m.msgs.push((0, M::Visible(0)));
                },
                Op::Lease(max) => {
                    let got = q.lease(now, max, s.visibility_timeout_ms);
                    let want = m.lease(now, max, s.visibility_timeout_ms, &s);
                    prop_assert_eq!(&got, &want);
                    receipts.extend(got);
                }
                Op::Ack(i) if !receipts.is_empty() => {
                    let r = receipts[i % receipts.len()];
                    let want = m.leased(r);
                    prop_assert_eq!(q.ack(r), want);
                    if want.is_ok() { m.msgs[r.offset as usize].1 = M::Done; }
                }
                Op::Nack(i, d) if !receipts.is_empty() => {
                    let r = receipts[i % receipts.len()];
                    let want = m.leased(r);
                    let got = q.nack(r, d, now);
                    prop_assert_eq!(got.is_ok(), want.is_ok());
                    if want.is_ok() {
                        let e = &mut m.msgs[r.offset as usize];
                        e.1 = requeue(e.0, d, now, &s);
                        prop_assert_eq!(got.unwrap().is_none(), e.1 == M::Dead);
                    }
                }
                Op::Extend(i, v) if !receipts.is_empty() => {
                    let r = receipts[i % receipts.len()];
                    q.tick(now);
                    m.tick(now, &s);
                    let want = m.leased(r);
                    prop_assert_eq!(q.change_visibility(r, v, now).is_ok(), want.is_ok());
                    if want.is_ok() {
                        m.msgs[r.offset as usize].1 = M::Leased { attempt: r.attempt, until: now + v as i64 };
                    }
                }
                Op::Advance(d) => now += d,
                Op::DeadLetter => {
                    q.tick(now);
                    m.tick(now, &s);
                    for (o, attempts, _) in q.dead_pending() {
                        prop_assert_eq!(m.msgs[o as usize], (attempts, M::Dead));
                        q.dead_lettered(o);
                        m.msgs[o as usize].1 = M::Done;
                    }
                }
                _ => {}
            }
            // Invariants after every step.
            q.tick(now);
            m.tick(now, &s);
            let c = q.counts();
            let leased = m.msgs.iter().filter(|x| matches!(x.1, M::Leased { .. })).count();
            let dead = m.msgs.iter().filter(|x| x.1 == M::Dead).count();
            let waiting = m.msgs.iter().filter(|x| matches!(x.1, M::Visible(_))).count();
            prop_assert_eq!(c.in_flight as usize, leased);
            prop_assert_eq!(c.dead_pending as usize, dead);
            prop_assert_eq!((c.ready + c.delayed) as usize, waiting);
            let floor = m.msgs.iter().position(|x| x.1 != M::Done).unwrap_or(m.msgs.len());
            prop_assert_eq!(c.floor, floor as u64);
        }
    }

    /// A snapshot taken at any point, restored and rescanned, gives the same durable picture:
    /// done messages stay done, delivery counts are kept, and nothing stays in flight.
    #[test]
    fn snapshot_restore_keeps_done_and_attempts(ops in proptest::collection::vec(op(), 1..80)) {
        let s = settings(1);
        let mut q = QueueState::new(s, 0);
        let mut now = 1_000i64;
        let mut receipts: Vec<Receipt> = Vec::new();
        for op in ops {
            match op {
                Op::Add(n) => for _ in 0..n { let o = q.scanned(); q.add(o, 0, now, now); },
                Op::Lease(max) => receipts.extend(q.lease(now, max, 100)),
                Op::Ack(i) if !receipts.is_empty() => { let _ = q.ack(receipts[i % receipts.len()]); }
                Op::Nack(i, d) if !receipts.is_empty() => { let _ = q.nack(receipts[i % receipts.len()], d, now); }
                Op::Advance(d) => now += d,
                _ => {}
            }
        }
        let snap = q.snapshot();
        let floor = snap.floor;
        prop_assert!(snap.facts.len() <= q.window_len(), "bounded by the window");
        let mut r = QueueState::new(s, 0);
        r.restore(snap.clone());
        for o in floor..q.scanned() { r.add(o, 0, now, now); }
        // A snapshot of the restored state, taken before and after the rescan, says the same.
        prop_assert_eq!(r.snapshot().facts.len(), snap.facts.len());
        prop_assert_eq!(r.floor(), q.floor());
        let live: Vec<u64> = q.peek(usize::MAX).iter().map(|x| x.0).collect();
        let back: Vec<u64> = r.peek(usize::MAX).iter().map(|x| x.0).collect();
        prop_assert_eq!(&live, &back);
        let attempts: Vec<u32> = q.peek(usize::MAX).iter().map(|x| x.1).collect();
        let attempts_back: Vec<u32> = r.peek(usize::MAX).iter().map(|x| x.1).collect();
        prop_assert_eq!(attempts, attempts_back);
        prop_assert_eq!(r.counts().in_flight, 0);
    }
}

#[test]
fn higher_priority_goes_first_by_weight_and_lower_is_not_starved() {
    let mut q = QueueState::new(settings(2), 0);
    // 100 low, then 100 high.
    for o in 0..200u64 {
        q.add(o, u8::from(o >= 100), 0, 0);
    }
    let got = q.lease(0, 45, 1000);
    let high = got.iter().filter(|r| r.offset >= 100).count();
    // Weight 8:1: of 45 deliveries about 40 are high and 5 low.
    assert!((38..=41).contains(&high), "{high} {got:?}");
    assert_eq!(got[0].offset, 100, "a high message goes first");
    assert!(
        got[..10].iter().any(|r| r.offset < 100),
        "low is served early too"
    );
    // Within a level, FIFO.
    let lows: Vec<u64> = got
        .iter()
        .filter(|r| r.offset < 100)
        .map(|r| r.offset)
        .collect();
    assert_eq!(lows, (0..lows.len() as u64).collect::<Vec<_>>());
}

#[test]
fn priority_above_the_declared_levels_is_clamped() {
    let mut q = QueueState::new(settings(3), 0);
    q.add(0, 0, 0, 0);
    q.add(1, 200, 0, 0);
    assert_eq!(q.lease(0, 1, 10)[0].offset, 1);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff_ms(100, 1000, 1), 100);
    assert_eq!(backoff_ms(100, 1000, 2), 200);
    assert_eq!(backoff_ms(100, 1000, 4), 800);
    assert_eq!(backoff_ms(100, 1000, 5), 1000);
    assert_eq!(backoff_ms(100, 1000, 400), 1000);
}

#[test]
fn retention_skips_lost_messages() {
    let mut q = QueueState::new(settings(1), 0);
    for o in 0..5 {
        q.add(o, 0, 0, 0);
    }
    let r = q.lease(0, 1, 10)[0];
    q.ack(r).unwrap();
    assert_eq!(q.skip_to(8), 4 + 3);
    assert_eq!(q.floor(), 8);
    assert_eq!(q.scanned(), 8);
}

#[test]
fn stale_receipts_are_refused_after_redelivery() {
    let mut q = QueueState::new(settings(1), 0);
    q.add(0, 0, 0, 0);
    let first = q.lease(0, 1, 10)[0];
    q.tick(100);
    let second = q.lease(200, 1, 10)[0];
    assert_eq!(second.attempt, 2);
    assert_eq!(q.ack(first), Err(LeaseError::NotLeased));
    assert_eq!(q.ack(second), Ok(()));
    assert_eq!(q.ack(second), Err(LeaseError::Done));
    assert_eq!(
        q.ack(Receipt {
            offset: 9,
            attempt: 1
        }),
        Err(LeaseError::Unknown)
    );
}

/// Guards the snapshot size: one message stuck at the floor while 10,000 after it are acked
/// must not make the snapshot list 10,000 facts.
#[test]
fn snapshot_is_bounded_by_the_window_not_by_the_done_range() {
    let mut q = QueueState::new(settings(1), 0);
    for o in 0..10_000 {
        q.add(o, 0, 0, 0);
    }
    for r in q.lease(0, 10_000, 1_000_000) {
        if r.offset != 0 {
            q.ack(r).unwrap();
        }
    }
    let snap = q.snapshot();
    assert_eq!((snap.floor, snap.scanned, snap.facts.len()), (0, 10_000, 1));
    let mut r = QueueState::new(settings(1), 0);
    r.restore(snap);
    assert_eq!(r.not_done_in(0, 10_005), 1 + 5);
    for o in 0..10_000 {
        r.add(o, 0, 0, 0);
    }
    assert_eq!(r.window_len(), 1);
    let again = r.lease(0, 10, 100);
    assert_eq!(
        again,
        vec![Receipt {
            offset: 0,
            attempt: 2
        }]
    );
}

/// Purge discards every state below the end (ready, delayed, in flight, dead-pending and
/// not yet scanned), keeps what is above it, and its leases are refused afterwards; a snapshot
/// taken after it restores to the same state (what the ack log keeps).
#[test]
fn purge_discards_everything_below_the_end_and_survives_a_snapshot() {
    let mut q = QueueState::new(settings(1), 0);
    for o in 0..6 {
        q.add(o, 0, o as i64, 0);
    }
    let leased = q.lease(0, 3, 1_000); // 0, 1, 2 in flight
    q.nack(leased[1], Some(500), 0).unwrap(); // 1 delayed
    assert_eq!(q.counts().in_flight, 2);
    // 6..9 exist in the log but are not scanned; 9 and up arrive after the purge point.
    assert_eq!(q.purge(9), 9);
    let c = q.counts();
    assert_eq!(
        (c.ready, c.delayed, c.in_flight, c.dead_pending),
        (0, 0, 0, 0)
    );
    assert_eq!((q.floor(), q.scanned()), (9, 9));
    assert_eq!(q.ack(leased[0]), Err(LeaseError::Done));
    assert_eq!(q.nack(leased[2], None, 0), Err(LeaseError::Done));
    assert_eq!(q.purge(3), 0, "a purge below the floor changes nothing");
    q.add(9, 0, 9, 0);
    let mut restored = QueueState::new(settings(1), 0);
    restored.restore(q.snapshot());
    restored.add(9, 0, 9, 0);
    assert_eq!(restored.floor(), 9);
    let r = restored.lease(0, 10, 100);
    assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![9]);
    assert_eq!(q.lease(0, 10, 100), r);
}

// ------------------------------------------------------------------ delay, expiry, strict

fn timed(delay_ms: Option<u64>, ttl_ms: Option<u64>) -> Timing {
    Timing::from_message(1_000, delay_ms, ttl_ms)
}

#[test]
fn a_delayed_message_is_not_delivered_before_its_time_and_survives_a_snapshot() {
    let mut q = QueueState::new(settings(1), 0);
    q.add_timed(0, 0, 1_000, timed(Some(500), None), 1_000);
    q.add(1, 0, 1_000, 1_000);
    assert_eq!(q.counts().delayed, 1);
    assert_eq!(q.next_due_ms(), Some(1_500));
    let first = q.lease(1_000, 10, 100_000);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].offset, 1, "the undelayed one only");
    assert!(q.lease(1_499, 10, 100_000).is_empty());
    // A restart: the snapshot and the message's own headers give the same time back.
    let mut r = QueueState::new(settings(1), 0);
    r.restore(q.snapshot());
    r.add_timed(0, 0, 1_000, timed(Some(500), None), 1_200);
    r.add(1, 0, 1_000, 1_200);
    // (The in-flight one is redelivered after a restart, as any lease.)
    let early: Vec<u64> = r
        .lease(1_499, 10, 100_000)
        .iter()
        .map(|x| x.offset)
        .collect();
    assert_eq!(early, vec![1]);
    assert_eq!(r.lease(1_500, 10, 100_000)[0].offset, 0);
    assert_eq!(q.lease(1_500, 10, 100_000)[0].offset, 0);
}

#[test]
fn an_expired_message_is_dead_lettered_with_its_reason_not_delivered() {
    let mut q = QueueState::new(settings(1), 0);
    q.add_timed(0, 0, 1_000, timed(None, Some(100)), 1_000);
    q.add_timed(1, 0, 1_000, timed(None, Some(100)), 1_200); // already expired when scanned
    q.add_timed(2, 0, 1_000, timed(Some(50), Some(10)), 1_000); // expires while delayed
    assert_eq!(q.dead_pending(), vec![(1, 0, DeadReason::Expired)]);
    assert_eq!(q.next_due_ms(), Some(1_010));
    assert!(q.lease(1_100, 10, 1_000).is_empty(), "nothing deliverable");
    assert_eq!(
        q.dead_pending(),
        vec![
            (0, 0, DeadReason::Expired),
            (1, 0, DeadReason::Expired),
            (2, 0, DeadReason::Expired)
        ]
    );
    assert_eq!(DeadReason::Expired.as_str(), "expired");
    for o in 0..3 {
        q.dead_lettered(o);
    }
    assert_eq!(q.window_len(), 0);
    assert_eq!(q.floor(), 3);
}

#[test]
fn a_message_expiring_in_flight_can_be_acked_but_not_redelivered() {
    let mut q = QueueState::new(settings(1), 0);
    q.add_timed(0, 0, 1_000, timed(None, Some(100)), 1_000);
    q.add_timed(1, 0, 1_000, timed(None, Some(100)), 1_000);
    let got = q.lease(1_000, 2, 500);
    assert_eq!(got.len(), 2);
    q.tick(1_200); // past the ttl, within the lease
    assert!(q.dead_pending().is_empty(), "leases are not taken away");
    assert_eq!(q.ack(got[0]), Ok(()));
    assert_eq!(q.nack(got[1], Some(0), 1_200), Ok(None), "not requeued");
    assert_eq!(q.dead_pending(), vec![(1, 1, DeadReason::Expired)]);
}

#[test]
fn strict_priority_never_delivers_a_lower_level_while_a_higher_one_waits() {
    let mut s = settings(3);
    s.strict_priority = true;
    let mut q = QueueState::new(s, 0);
    for o in 0..300u64 {
        q.add(o, (o % 3) as u8, 0, 0);
    }
    let got = q.lease(0, 300, 1000);
    let levels: Vec<u64> = got.iter().map(|r| r.offset % 3).collect();
    assert!(
        levels.windows(2).all(|w| w[0] >= w[1]),
        "never a lower level before a higher one"
    );
    assert_eq!(levels.iter().filter(|l| **l == 2).count(), 100);
    // A higher message arriving later goes before the lower ones still waiting.
    let mut q = QueueState::new(s, 0);
    q.add(0, 0, 0, 0);
    q.add(1, 0, 0, 0);
    assert_eq!(q.lease(0, 1, 1000)[0].offset, 0);
    q.add(2, 2, 0, 0);
    assert_eq!(q.lease(0, 1, 1000)[0].offset, 2);
    assert_eq!(q.lease(0, 1, 1000)[0].offset, 1);
}
