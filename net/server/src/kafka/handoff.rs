//! A Kafka connection follows its partition to the owning shard (docs/kafka.md, "Performance").
//!
//! The Kafka listener shares one address across the shards (SO_REUSEPORT), so a connection
//! lands on a shard chosen by the kernel's hash, and Kafka clients know nothing of shards: a
//! producer of one partition had every request read, decoded and checked on one shard and
//! appended on the other (a cross-shard hop and two busy shard threads per request) about half
//! the time. The native client connects to the owner's direct address instead.
//!
//! So when [`MOVE_AFTER`] consecutive produce requests of a connection each went wholly to one
//! other shard, the reader stops at that frame boundary (nothing of the next request has been
//! read: the reader reads exact frame sizes), the writer sends every answer still owed, and the
//! socket's descriptor is duplicated and handed to the owning shard, which serves the
//! connection from there on. The client sees nothing but a short pause of its pipeline once.
//! Per-partition order holds: every earlier produce was acknowledged before the new shard reads
//! the next one. Only plain TCP connections without SASL move (TLS and session state stay where
//! they are), at most [`MOVES_MAX`] times (a client that alternates between partitions on
//! different shards does not ping-pong).

use std::cell::Cell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use shardline_engine::rt;
use shardline_engine::rt::net::TcpStream;
use shardline_engine::{Engine, ShardHandle};

use crate::Shared;

/// Consecutive produce requests wholly for one other shard before the connection moves there.
pub(crate) const MOVE_AFTER: u32 = 8;
/// Moves of one connection at most.
pub(crate) const MOVES_MAX: u32 = 3;

/// Where a connection's produces go, and whether it may move (a field of `KConn`).
pub(crate) struct Follow {
    /// The socket's descriptor: `None` for TLS, with SASL, on one shard, or moves used up.
    fd: Option<RawFd>,
    /// Moves so far (carried along).
    moves: u32,
    /// (other shard, consecutive produces wholly for it).
    streak: Cell<(usize, u32)>,
}

impl Follow {
    /// A connection that never moves.
    #[cfg(test)]
    fn off() -> Follow {
        Follow {
            fd: None,
            moves: MOVES_MAX,
            streak: Cell::new((0, 0)),
        }
    }

    /// For a connection on `stream`: it may move when it is plain TCP without SASL on an
    /// engine of more than one shard and has moved fewer than [`MOVES_MAX`] times.
    pub(crate) fn new(stream: &TcpStream, shared: &Shared, engine: &Engine, moves: u32) -> Follow {
        let may = shared.tls.is_none()
            && shared.auth.is_none()
            && engine.shard_count() > 1
            && moves < MOVES_MAX;
        Follow {
            fd: may.then(|| stream.as_raw_fd()),
            moves,
            streak: Cell::new((0, 0)),
        }
    }

    /// Whether produces should report their shards ([`Follow::produced`]).
    pub(crate) fn watching(&self) -> bool {
        self.fd.is_some()
    }

    /// A produce request went to `shards` (one entry per partition) from shard `here`.
    pub(crate) fn produced(&self, here: usize, mut shards: impl Iterator<Item = usize>) {
        let Some(first) = shards.next() else { return };
        let (other, n) = self.streak.get();
        if first == here || shards.any(|s| s != first) {
            self.streak.set((0, 0));
        } else if other == first {
            self.streak.set((first, n.saturating_add(1)));
        } else {
            self.streak.set((first, 1));
        }
    }

    /// The shard to move to, when due.
    pub(crate) fn due(&self) -> Option<usize> {
        let (other, n) = self.streak.get();
        (self.fd.is_some() && n >= MOVE_AFTER).then_some(other)
    }
}

/// What the owning shard needs to go on serving a moved connection.
pub(crate) struct Moving {
    pub(crate) fd: OwnedFd,
    pub(crate) shared: Arc<Shared>,
    pub(crate) from: usize,
    pub(crate) moves: u32,
}

impl Moving {
    /// Duplicates the descriptor of `follow`'s socket (the caller then drops its stream, which
    /// closes the original; the socket lives on in the duplicate). `None` when it may not move
    /// or the duplicate fails (the connection then closes as it would have).
    pub(crate) fn take(follow: &Follow, shared: &Arc<Shared>, from: usize) -> Option<Moving> {
        let fd = follow.fd?;
        // SAFETY: `fd` is the descriptor of the stream the caller still holds (it is closed
        // only when that stream is dropped, after this returns); the borrow ends here.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let fd = borrowed.try_clone_to_owned().ok()?;
        Some(Moving {
            fd,
            shared: shared.clone(),
            from,
            moves: follow.moves + 1,
        })
    }

    /// Hands the connection to `shard`; on the way there it becomes a stream of that shard's
    /// reactor. False when the shard cannot take it (stopping): the duplicate is closed with the
    /// task, and the caller counts the connection closed. The shard's inbox is bounded and
    /// `run_on_shard` waits for room, so the hand-over is sent from a helper thread: this
    /// shard never blocks on another's inbox (two shards handing connections to each other with
    /// full inboxes would otherwise wait on each other).
    pub(crate) async fn send(self, engine: &Engine, shard: usize) -> bool {
        let task = Box::new(move |h: ShardHandle| {
            let Moving {
                fd,
                shared,
                from,
                moves,
            } = self;
            // SAFETY: `fd` is an open TCP socket that this process owns alone (the original
            // descriptor was closed when the old shard dropped its stream); ownership passes
            // to the stream.
            let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
            shared.metrics.connection_moved(from, h.shard);
            rt::spawn_local(super::serve_plain(stream, h.engine, h.shard, shared, moves));
        });
        let engine = engine.clone();
        super::off_shard(move || engine.run_on_shard(shard, task).is_ok())
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow() -> Follow {
        Follow {
            fd: Some(0),
            moves: 0,
            streak: Cell::new((0, 0)),
        }
    }

    #[test]
    fn moves_after_a_streak_of_produces_for_one_other_shard() {
        let f = follow();
        for _ in 0..MOVE_AFTER - 1 {
            f.produced(0, [1].into_iter());
            assert_eq!(f.due(), None);
        }
        f.produced(0, [1].into_iter());
        assert_eq!(f.due(), Some(1));
    }

    #[test]
    fn a_produce_for_this_shard_or_for_two_shards_breaks_the_streak() {
        let f = follow();
        for _ in 0..MOVE_AFTER - 1 {
            f.produced(0, [1].into_iter());
        }
        f.produced(0, [0].into_iter());
        f.produced(0, [1].into_iter());
        assert_eq!(f.due(), None);
        for _ in 0..MOVE_AFTER - 2 {
            f.produced(0, [1, 1].into_iter());
        }
        f.produced(0, [1, 2].into_iter());
        assert_eq!(f.due(), None);
        for _ in 0..MOVE_AFTER {
            f.produced(0, [2].into_iter());
        }
        assert_eq!(f.due(), Some(2));
        // An empty produce changes nothing.
        f.produced(0, std::iter::empty());
        assert_eq!(f.due(), Some(2));
    }

    #[test]
    fn a_connection_that_may_not_move_never_is_due() {
        let f = Follow::off();
        for _ in 0..MOVE_AFTER * 2 {
            f.produced(0, [1].into_iter());
        }
        assert_eq!(f.due(), None);
        assert!(!f.watching());
    }
}
