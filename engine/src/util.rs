//! Small runtime-agnostic helpers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls all futures concurrently on the current task and returns their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let mut done = true;
        for (f, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(outs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// A single-threaded "something changed" signal: waiters register, `notify_all` wakes them.
/// Used to wake subscriptions and long-polls when a partition's high watermark moves.
#[derive(Default)]
pub struct LocalNotify {
    version: std::cell::Cell<u64>,
    wakers: std::cell::RefCell<Vec<Waker>>,
}

impl LocalNotify {
    pub fn notify_all(&self) {
        self.version.set(self.version.get().wrapping_add(1));
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Current version; pass it to `changed` to wait for the next notification after it.
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Resolves once `notify_all` has been called after `seen` was read.
    pub async fn changed(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            if self.version.get() != seen {
                Poll::Ready(())
            } else {
                let mut ws = self.wakers.borrow_mut();
                if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                    ws.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

/// Open-file descriptors: the process limit and how many are open (issue 16: partitions and
/// connections are admitted only while their descriptors fit).
pub mod fd {
    /// The soft RLIMIT_NOFILE, or `None` if it cannot be read or is unlimited.
    pub fn open_files_limit() -> Option<usize> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid pointer to a local struct.
        let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        if r != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return None;
        }
        usize::try_from(lim.rlim_cur).ok()
    }

    /// Descriptors open in this process right now (entries of /proc/self/fd), or `None` where
    /// that cannot be read.
    pub fn open_files() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }
}
