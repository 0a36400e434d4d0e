//! A consumer fed through a bounded channel, for the peer drivers (NATS, Redis): their clients
//! receive on threads or tasks of their own, which hand whole deliveries to the load
//! generator's consumer thread here. The bound holds the broker back when the consumer thread
//! falls behind, as credits do for Shardline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{Consumer, DriverError, Received};

/// Deliveries waiting for the consumer thread, per consumer.
pub(crate) const DELIVERIES_QUEUED_MAX: usize = 64;

/// Messages of one partition, in order, as one broker read returned them.
pub(crate) struct Delivery {
    pub(crate) partition: u32,
    /// `(offset if the broker has a dense one, value)`.
    pub(crate) messages: Vec<(Option<u64>, Bytes)>,
}

pub(crate) type FeedItem = Result<Delivery, DriverError>;

/// The consumer side of the channel. Dropping it closes the channel, which tells the feeding
/// thread or task to stop.
pub(crate) struct FeedConsumer {
    rx: flume::Receiver<FeedItem>,
    /// Kept across polls so that the registered waker stays registered.
    pending: Option<flume::r#async::RecvFut<'static, FeedItem>>,
    /// The feeder ended (its sender is gone): nothing more will come.
    ended: bool,
    /// Held until the consumer is dropped (stops the feeder, waits for it if it is a thread).
    _guard: Option<Box<dyn Send>>,
}

impl FeedConsumer {
    /// A channel and the consumer reading it; the feeder gets the sender.
    pub(crate) fn channel() -> (flume::Sender<FeedItem>, flume::Receiver<FeedItem>) {
        flume::bounded(DELIVERIES_QUEUED_MAX)
    }

    pub(crate) fn new(rx: flume::Receiver<FeedItem>, guard: Option<Box<dyn Send>>) -> Self {
        FeedConsumer {
            rx,
            pending: None,
            ended: false,
            _guard: guard,
        }
    }

    fn deliver(
        item: FeedItem,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Result<usize, DriverError> {
        let d = item?;
        for (offset, value) in &d.messages {
            on_message(Received {
                partition: d.partition,
                offset: *offset,
                value,
            });
        }
        Ok(d.messages.len())
    }
}

impl Consumer for FeedConsumer {
    fn poll_deliver(
        &mut self,
        cx: &mut Context<'_>,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Poll<Result<usize, DriverError>> {
        if self.ended {
            return Poll::Pending;
        }
        if self.pending.is_none() {
            match self.rx.try_recv() {
                Ok(item) => return Poll::Ready(Self::deliver(item, on_message)),
                Err(flume::TryRecvError::Disconnected) => {
                    self.ended = true;
                    return Poll::Pending;
                }
                Err(flume::TryRecvError::Empty) => {}
            }
        }
        let fut = self
            .pending
            .get_or_insert_with(|| self.rx.clone().into_recv_async());
        match Pin::new(fut).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                self.pending = None;
                match r {
                    Ok(item) => Poll::Ready(Self::deliver(item, on_message)),
                    Err(flume::RecvError::Disconnected) => {
                        self.ended = true;
                        Poll::Pending
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec;

    #[test]
    fn deliveries_arrive_in_order_and_a_closed_feed_ends_quietly() {
        let (tx, rx) = FeedConsumer::channel();
        let mut c = FeedConsumer::new(rx, None);
        let waker = exec::current_thread_waker();
        let mut cx = Context::from_waker(&waker);
        let mut seen = Vec::new();
        let mut on = |m: Received<'_>| seen.push((m.partition, m.offset, m.value.to_vec()));
        assert!(c.poll_deliver(&mut cx, &mut on).is_pending());
        let feeder = std::thread::spawn(move || {
            for i in 0..3u64 {
                let d = Delivery {
                    partition: 1,
                    messages: vec![(Some(i), Bytes::from(vec![i as u8]))],
                };
                tx.send(Ok(d)).map_err(|_| "closed")?;
            }
            Ok::<_, &str>(())
        });
        let deadline = crate::clock::now_us() + 10_000_000;
        let mut n = 0;
        while n < 3 && crate::clock::now_us() < deadline {
            match c.poll_deliver(&mut cx, &mut on) {
                Poll::Ready(Ok(k)) => n += k,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => exec::park_until(deadline),
            }
        }
        assert_eq!(feeder.join().ok(), Some(Ok(())));
        assert_eq!(n, 3);
        // The sender is gone: the consumer reports nothing more, and no error.
        assert!(c.poll_deliver(&mut cx, &mut on).is_pending());
        assert!(c.poll_deliver(&mut cx, &mut on).is_pending());
        assert_eq!(
            seen,
            vec![
                (1, Some(0), vec![0]),
                (1, Some(1), vec![1]),
                (1, Some(2), vec![2])
            ]
        );
    }
}
