//! The smallest executor that fits: each producer and consumer thread polls its own futures
//! with a waker that unparks the thread, and parks (optionally until a deadline) when nothing is
//! ready. No runtime, no extra threads, and a wake-up is a futex, not a poll loop.

use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::{self, Thread};

use crate::clock;

struct ThreadWaker {
    thread: Thread,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.thread.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.thread.unpark();
    }
}

/// A waker that unparks the calling thread.
pub fn current_thread_waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker {
        thread: thread::current(),
    }))
}

/// Parks the calling thread until it is woken or `deadline_us` (on [`clock`]) passes. May
/// return early (spurious wake-ups); callers re-check their state in a loop.
pub fn park_until(deadline_us: u64) {
    let d = clock::until_us(deadline_us);
    if !d.is_zero() {
        thread::park_timeout(d);
    }
}

/// Pins the calling thread to `core` if given; returns whether it is pinned.
pub fn pin_current(core: Option<core_affinity::CoreId>) -> bool {
    core.is_some_and(core_affinity::set_for_current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll};

    #[test]
    fn a_wake_from_another_thread_ends_the_park() {
        let (tx, rx) = flume::bounded::<u32>(1);
        let waker = current_thread_waker();
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(rx.recv_async());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let sender = thread::spawn(move || tx.send(7));
        let deadline = clock::now_us() + 10_000_000;
        let got = loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                break v;
            }
            assert!(clock::now_us() < deadline, "never woken");
            park_until(deadline);
        };
        assert_eq!(got.ok(), Some(7));
        assert!(sender.join().is_ok());
    }
}
