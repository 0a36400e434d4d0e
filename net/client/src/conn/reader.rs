//! The read side of a connection and its timer: the read role (reader thread or a caller
//! reading its own reply), dispatch of replies and pushes by correlation id, failing everything
//! when the connection ends, and the timer thread that fails expired requests.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::handshake::api_name;
use super::{
    CALLER_READ_SLICE, Callback, Pending, PendingEntry, PushEvent, PushEventKind, PushRoute,
    READER_LINGER, ReadRole, ReadSide, ReadStop, Shared, lock,
};
use crate::error::ClientError;
use crate::protocol::{
    ApiKey, FrameKind, OwnedFrame, Push, Request, Response, ServerMessage, UnsubscribeRequest,
};

impl Shared {
    /// The reader thread: reads whenever requests or subscriptions wait and no caller reads
    /// its own reply, and an idle socket after [`READER_LINGER`].
    pub(super) fn read_loop(self: Arc<Self>) {
        let reason = loop {
            if let Err(reason) = self.take_read_role() {
                break reason;
            }
            let read = {
                let mut side = lock(&self.read_side);
                if side.sliced {
                    // Back to blocking reads (an idle socket must not wake this thread).
                    if let Err(e) = self.socket.set_read_timeout(None) {
                        drop(side);
                        self.release_read_role();
                        break e.to_string();
                    }
                    side.sliced = false;
                }
                self.read_once(&mut side)
            };
            self.release_read_role();
            match read {
                Ok(()) | Err(ReadStop::Slice) => {}
                Err(ReadStop::Closed(reason)) => break reason,
            }
        };
        if reason.is_empty() {
            return; // already failed by whoever saw it first
        }
        debug!(addr = %self.addr, %reason, "connection closed");
        self.fail_all(ClientError::ConnectionLost {
            addr: self.addr.clone(),
            reason,
        });
    }

    /// Waits until the reader thread should read, and takes the read role. `Err` ends the
    /// thread: the reason to fail the connection with, empty if it has failed already.
    fn take_read_role(&self) -> Result<(), String> {
        let mut state = lock(&self.state);
        loop {
            if state.closed.is_some() {
                return Err(String::new());
            }
            if self.dropped.load(Ordering::Relaxed) {
                return Err("closed by the client".into());
            }
            let idle_for = state.last_activity.elapsed();
            if state.reader == ReadRole::Nobody
                && (!self.caller_reads
                    || !state.pending.is_empty()
                    || !state.routes.is_empty()
                    || idle_for >= READER_LINGER)
            {
                state.reader = ReadRole::Thread;
                return Ok(());
            }
            // The holder wakes this thread when it lets go with work left; without work, the
            // linger (counted from the release) decides, so look again after it.
            let wait = if state.reader == ReadRole::Nobody {
                READER_LINGER.saturating_sub(idle_for)
            } else {
                READER_LINGER
            };
            state = self
                .read_wake
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets go of the read role; wakes the reader thread if requests or subscriptions still
    /// wait (or the connection has ended).
    pub(super) fn release_read_role(&self) {
        let mut state = lock(&self.state);
        state.reader = ReadRole::Nobody;
        state.last_activity = Instant::now();
        if !state.pending.is_empty() || !state.routes.is_empty() || state.closed.is_some() {
            self.read_wake.notify_one();
        }
    }

    /// A caller holding the read role: reads and dispatches until `rx` has its reply, then
    /// lets go of the role.
    pub(super) fn read_own_reply(
        &self,
        rx: &flume::Receiver<Result<Response, ClientError>>,
    ) -> Result<Response, ClientError> {
        let stopped = {
            let mut side = lock(&self.read_side);
            let mut stopped = None;
            if !side.sliced {
                match self.socket.set_read_timeout(Some(CALLER_READ_SLICE)) {
                    Ok(()) => side.sliced = true,
                    Err(e) => stopped = Some(e.to_string()),
                }
            }
            while stopped.is_none() && rx.is_empty() {
                match self.read_once(&mut side) {
                    Ok(()) | Err(ReadStop::Slice) => {}
                    Err(ReadStop::Closed(reason)) => stopped = Some(reason),
                }
            }
            stopped
        };
        if let Some(reason) = stopped {
            // Completes every request, this one included.
            self.fail_all(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                reason,
            });
        }
        self.release_read_role();
        match rx.try_recv() {
            Ok(result) => {
                self.caller_read_replies.fetch_add(1, Ordering::Relaxed);
                result
            }
            // Unreachable: the entry was completed (reply, deadline or failure) before the loop
            // above ended.
            Err(_) => Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                reason: "reply dropped".into(),
            }),
        }
    }

    /// One socket read, then every whole frame it completed is dispatched.
    fn read_once(&self, side: &mut ReadSide) -> Result<(), ReadStop> {
        let n = match side.stream.read(side.decoder.read_buf()) {
            Ok(0) if self.dropped.load(Ordering::Relaxed) => {
                return Err(ReadStop::Closed("closed by the client".into()));
            }
            Ok(0) => return Err(ReadStop::Closed("closed by the server".into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadStop::Slice);
            }
            Err(e) => return Err(ReadStop::Closed(e.to_string())),
        };
        side.decoder.filled(n);
        loop {
            match side.decoder.next_frame_owned() {
                Ok(Some(frame)) => self.dispatch(frame),
                Ok(None) => break,
                Err(e) => return Err(ReadStop::Closed(format!("framing lost: {e}"))),
            }
        }
        // A connection going idle after a large fetch gives the memory back.
        if side.decoder.buffered_bytes() == 0 {
            side.decoder.release_memory();
        }
        Ok(())
    }

    fn dispatch(&self, frame: OwnedFrame) {
        let h = frame.header;
        match ServerMessage::decode_owned(&frame) {
            Ok(ServerMessage::Response {
                correlation_id,
                response,
            }) => self.complete(correlation_id, Ok(response)),
            Ok(ServerMessage::Error {
                correlation_id,
                api_key,
                error,
            }) => {
                let e = ClientError::server(api_name(api_key), error.code, error.message);
                self.complete(correlation_id, Err(e));
            }
            Ok(ServerMessage::Push(push)) => self.route_push(push),
            Ok(ServerMessage::PushError {
                subscription_id,
                error,
            }) => {
                let e = ClientError::server("Push", error.code, error.message);
                self.end_subscription(subscription_id, e);
            }
            // A well-framed frame that does not decode: fail whatever it answers.
            Err(e) => match h.kind {
                FrameKind::Response | FrameKind::Error => {
                    self.complete(h.correlation_id, Err(e.into()));
                }
                // A push that cannot be read leaves a gap in the subscription: end it.
                FrameKind::Push | FrameKind::PushError => {
                    self.end_subscription(h.correlation_id, e.into());
                }
                FrameKind::Request => warn!(addr = %self.addr, "server sent a request frame"),
            },
        }
    }

    fn complete(&self, correlation_id: u32, result: Result<Response, ClientError>) {
        let entry = {
            let mut state = lock(&self.state);
            let entry = state.pending.remove(&correlation_id);
            if let (Some(e), Ok(Response::Subscribe(s))) = (&entry, &result)
                && let Pending::Subscribe { route, .. } = &e.pending
            {
                state.routes.insert(s.subscription_id, route.clone());
            }
            entry
        };
        let Some(entry) = entry else {
            // Its deadline passed. A late Subscribe still created a subscription: end it.
            if let Ok(Response::Subscribe(s)) = &result {
                self.unsubscribe_orphan(s.subscription_id);
            }
            debug!(correlation_id, "reply to a request no longer awaited");
            return;
        };
        self.release_permit();
        entry.pending.complete(result);
    }

    fn unsubscribe_orphan(&self, subscription_id: u32) {
        let Ok(version) = self.versions.version(ApiKey::Unsubscribe) else {
            return;
        };
        let request = Request::Unsubscribe(UnsubscribeRequest { subscription_id });
        let ignore: Callback = Box::new(|_| {});
        if self.permits_tx.try_send(()).is_err() {
            return;
        }
        match self.register(
            ApiKey::Unsubscribe,
            Duration::from_secs(30),
            Pending::Callback(ignore),
            false,
        ) {
            Ok((id, _)) => {
                // A failed write aborts the connection, which completes the entry.
                let _ = self.write(id, version, &request);
            }
            Err(_) => self.release_permit(),
        }
    }

    fn route_push(&self, push: Push) {
        let id = push.subscription_id;
        let Some(route) = lock(&self.state).routes.get(&id).cloned() else {
            return; // unsubscribed locally; the server stops after the Unsubscribe response
        };
        let event = PushEvent {
            tag: route.tag,
            kind: PushEventKind::Push(push),
        };
        if !deliver(&route, event) {
            lock(&self.state).routes.remove(&id);
        }
    }

    fn end_subscription(&self, subscription_id: u32, error: ClientError) {
        let Some(route) = lock(&self.state).routes.remove(&subscription_id) else {
            return;
        };
        let event = PushEvent {
            tag: route.tag,
            kind: PushEventKind::End(error),
        };
        deliver(&route, event);
    }

    /// The connection is over: every awaited reply and every subscription learns why.
    fn fail_all(&self, error: ClientError) {
        let _ = self.socket.shutdown(Shutdown::Both);
        let (pending, routes) = {
            let mut state = lock(&self.state);
            state.closed = Some(error.clone());
            self.timer_wake.notify_all();
            self.read_wake.notify_all();
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.routes),
            )
        };
        for (_, entry) in pending {
            self.release_permit();
            entry.pending.complete(Err(error.clone()));
        }
        for (_, route) in routes {
            let kind = PushEventKind::End(error.clone());
            deliver(
                &route,
                PushEvent {
                    tag: route.tag,
                    kind,
                },
            );
        }
    }

    /// Fails requests whose deadline passed. Sleeps until the earliest deadline; a request due
    /// earlier than the current target wakes it (`register`).
    pub(super) fn timer_loop(self: Arc<Self>) {
        let mut state = lock(&self.state);
        loop {
            if state.closed.is_some() {
                return;
            }
            let now = Instant::now();
            let expired: Vec<u32> = state
                .pending
                .iter()
                .filter(|(_, e)| e.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            if !expired.is_empty() {
                let entries: Vec<PendingEntry> = expired
                    .iter()
                    .filter_map(|id| state.pending.remove(id))
                    .collect();
                drop(state);
                for e in entries {
                    self.release_permit();
                    let error = ClientError::Timeout {
                        api: e.api.name(),
                        timeout: e.timeout,
                    };
                    e.pending.complete(Err(error));
                }
                state = lock(&self.state);
                continue;
            }
            let next = state.pending.values().map(|e| e.deadline).min();
            state.timer_target = next;
            state = match next {
                None => self
                    .timer_wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(t) => {
                    self.timer_wake
                        .wait_timeout(state, t.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Hands a push event to a consumer's queue. The queue holds far more than the credits let the
/// server push, so `try_send` succeeds unless the server broke flow control; then the reader
/// waits (TCP backpressure) rather than drop data. Returns false if the consumer is gone.
fn deliver(route: &PushRoute, event: PushEvent) -> bool {
    match route.tx.try_send(event) {
        Ok(()) => true,
        Err(flume::TrySendError::Full(event)) => {
            warn!(
                tag = route.tag,
                "push queue full: the consumer is behind its credit window; reader waits"
            );
            route.tx.send(event).is_ok()
        }
        Err(flume::TrySendError::Disconnected(_)) => false,
    }
}
