//! The cluster simulator's network: frames (one per sender, receiver and round, carrying every
//! group's messages) delayed, reordered, dropped and duplicated at rates the seed picks, and
//! cut between the two sides of a network partition (checked at delivery, so a frame in flight
//! when the partition starts is lost too).

use bytes::Bytes;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::Rng;

use crate::replication::{GroupId, NodeId};

/// One frame in flight.
pub(super) struct Frame {
    pub(super) deliver_at_ms: u64,
    pub(super) from: NodeId,
    pub(super) to: NodeId,
    pub(super) msgs: Vec<(GroupId, Bytes)>,
}

pub(super) struct SimNet {
    in_flight: Vec<Frame>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    /// Usual delay range (ms); 1 in 20 frames is slow (up to `slow_ms`).
    delay_ms: (u64, u64),
    slow_ms: u64,
    /// Side of each node (index = id - 1) while partitioned.
    sides: Option<Vec<u8>>,
}

fn below(rng: &mut Xoshiro256PlusPlus, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

impl SimNet {
    pub(super) fn new(rng: &mut Xoshiro256PlusPlus) -> Self {
        SimNet {
            in_flight: Vec::new(),
            drop_per_mille: [0, 10, 50, 150][below(rng, 4) as usize],
            dup_per_mille: [0, 10, 50][below(rng, 3) as usize],
            delay_ms: [(0, 2), (1, 20), (5, 60)][below(rng, 3) as usize],
            slow_ms: [50, 300, 1500][below(rng, 3) as usize],
            sides: None,
        }
    }

    /// Queues a frame; returns whether it was dropped.
    pub(super) fn send(
        &mut self,
        from: NodeId,
        to: NodeId,
        msgs: Vec<(GroupId, Bytes)>,
        now_ms: u64,
        rng: &mut Xoshiro256PlusPlus,
    ) -> bool {
        if below(rng, 1000) < self.drop_per_mille {
            return true;
        }
        let copies = if below(rng, 1000) < self.dup_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.delay_ms;
            let delay = if below(rng, 20) == 0 {
                below(rng, self.slow_ms + 1)
            } else {
                lo + below(rng, hi - lo + 1)
            };
            self.in_flight.push(Frame {
                deliver_at_ms: now_ms + delay,
                from,
                to,
                msgs: msgs.clone(),
            });
        }
        false
    }

    /// The frames due by `now_ms`, in a random order (frames between the sides of a
    /// partition are lost).
    pub(super) fn take_due(&mut self, now_ms: u64, rng: &mut Xoshiro256PlusPlus) -> Vec<Frame> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].deliver_at_ms <= now_ms {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Fisher-Yates with the seed's generator.
        for k in (1..due.len()).rev() {
            let j = below(rng, k as u64 + 1) as usize;
            due.swap(k, j);
        }
        due.retain(|f| self.connected(f.from, f.to));
        due
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let Some(sides) = &self.sides else {
            return true;
        };
        let side = |n: NodeId| {
            usize::try_from(n - 1)
                .ok()
                .and_then(|i| sides.get(i))
                .copied()
        };
        side(a) == side(b)
    }

    pub(super) fn partition(&mut self, sides: Vec<u8>) {
        self.sides = Some(sides);
    }

    pub(super) fn is_partitioned(&self) -> bool {
        self.sides.is_some()
    }

    pub(super) fn heal(&mut self) {
        self.sides = None;
    }

    /// No more drops, duplicates or slow frames (the end of a run).
    pub(super) fn quiet(&mut self) {
        self.drop_per_mille = 0;
        self.dup_per_mille = 0;
        self.slow_ms = self.delay_ms.1;
    }
}
