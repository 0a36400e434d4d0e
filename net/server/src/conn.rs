//! One client connection: a reader task (decode, dispatch) and a writer task (drain the outbox).
//! Bounded everywhere: requests in flight, bytes queued for the socket, subscriptions, and each
//! subscription's credit window (docs/protocol.md, "Flow control").

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::io::IoSlice;

use futures_lite::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardline_engine::batch::BatchHeader;
use shardline_engine::rt::{self, net::TcpStream};
use shardline_engine::util::{LocalNotify, join_all};
use shardline_engine::{Engine, FetchRequest as EngineFetch, Subscription};

use super::Shared;
use crate::convert::{ToEngine, ToWire};
use crate::protocol::{
    ApiKey, CreditWindow, ErrorResponse, FrameBuf, FrameDecoder, FrameEncoder, FrameParts,
    NegotiatedVersions, OwnedFrame, PushCost, Request, Response, WireError, code, messages::*,
    negotiate, supported_apis,
};

mod admin;
mod budget;
mod data;
mod ingress;
mod queue;

enum Out {
    Flat(FrameBuf),
    Parts(FrameParts),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Flat(b) => b.len(),
            Out::Parts(p) => p.len(),
        }
    }
}

/// Most frames one vectored write gathers.
const WRITE_BATCH_FRAMES_MAX: usize = 64;
/// Most bytes one vectored write gathers (a single larger frame still goes alone).
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// Bounds of one read-ahead response of a subscription (the consumer's byte credit, clamped):
/// at most two are held per subscription, so this bounds its memory on the server.
const SUBSCRIPTION_READ_BYTES_MIN: u64 = 64 << 10;
const SUBSCRIPTION_READ_BYTES_MAX: u64 = 1 << 20;

/// Writes every byte of `slices`, in order, with as few `sendmsg` calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    slices: &[&[u8]],
) -> std::io::Result<()> {
    let (mut first, mut offset) = (0usize, 0usize);
    while first < slices.len() {
        let end = slices.len().min(first + rt::net::IOV_MAX);
        let iov: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&slices[first][offset..]))
            .chain(slices[first + 1..end].iter().map(|s| IoSlice::new(s)))
            .collect();
        let mut n = wr.write_vectored(&iov).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < slices.len() {
            let left = slices[first].len() - offset;
            if n < left {
                offset += n;
                n = 0;
            } else {
                n -= left;
                first += 1;
                offset = 0;
            }
        }
    }
    Ok(())
}

struct Sub {
    window: RefCell<CreditWindow>,
    /// Next offset the subscriber expects.
    position: Cell<u64>,
    changed: LocalNotify,
    cancelled: Cell<bool>,
    /// Its read-ahead's reservation in the memory budget, returned when it goes.
    _readahead: budget::ReadAheadCharge,
}

/// Correlation id, api key and api version of the request being answered.
#[derive(Debug, Clone, Copy)]
struct Call {
    cid: u32,
    api: u16,
    ver: u16,
}

struct Conn {
    engine: Engine,
    shard: usize,
    shared: Arc<Shared>,
    encoder: RefCell<FrameEncoder>,
    queue: RefCell<VecDeque<Out>>,
    queued_bytes: Cell<usize>,
    /// Wakes the writer (new frames) and waiters for outbox space (frames written).
    outbox: LocalNotify,
    inflight: Cell<usize>,
    /// Bytes of the frames of the requests in flight, charged to the receive share
    /// (`Shared::receive_bytes`) until answered (released in proportion as they end).
    inflight_bytes: Cell<usize>,
    inflight_changed: LocalNotify,
    subs: RefCell<HashMap<u32, Rc<Sub>>>,
    next_sub: Cell<u32>,
    versions: RefCell<Option<NegotiatedVersions>>,
    closed: Cell<bool>,
    /// Session and ACL cache (docs/security.md); a no-op when auth is off.
    auth: super::session::ConnAuth,
}

/// Serves one accepted connection until it closes.
pub(super) async fn serve(
    stream: TcpStream,
    engine: Engine,
    shard: usize,
    shared: Arc<Shared>,
    refuse: bool,
) {
    let frame_max = shared.cfg.frame_bytes_max;
    let Ok(encoder) = FrameEncoder::new(frame_max) else {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let peer_addr = stream.peer_addr().ok();
    let handshake_timeout = Duration::from_millis(
        shared
            .cfg
            .tls
            .as_ref()
            .map_or(0, |t| t.handshake_timeout_ms.max(1)),
    );
    let (stream, peer) =
        match super::tls::establish(stream, shared.tls.as_ref(), handshake_timeout).await {
            Ok(s) => s,
            Err(e) => {
                // No secrets here: the error is rustls' (bad record, unknown CA, no certificate).
                tracing::info!(peer = ?peer_addr, error = %e, "TLS handshake failed");
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
    if let Some(cn) = &peer.cert_common_name {
        tracing::debug!(peer = ?peer_addr, client_cert = %cn, "mutual TLS");
    }
    let (mut rd, mut wr) = super::tls::split(stream);
    let c = Rc::new(Conn {
        engine,
        shard,
        shared: shared.clone(),
        encoder: RefCell::new(encoder),
        queue: RefCell::new(VecDeque::new()),
        queued_bytes: Cell::new(0),
        outbox: LocalNotify::default(),
        inflight: Cell::new(0),
        inflight_bytes: Cell::new(0),
        inflight_changed: LocalNotify::default(),
        subs: RefCell::new(HashMap::new()),
        next_sub: Cell::new(1),
        versions: RefCell::new(None),
        closed: Cell::new(false),
        auth: super::session::ConnAuth::new(
            shared.auth.clone(),
            peer_addr,
            peer.cert_common_name.as_deref(),
        ),
    });
    let writer = {
        let c = c.clone();
        async move { c.write_loop(&mut wr).await }
    };
    // Connections per client address (quota.rs); registered only if within the limit.
    let ip = peer_addr.map(|p| p.ip());
    let address_ok = refuse || ip.is_none_or(|ip| shared.quotas.connect(ip));
    let reader = {
        let c = c.clone();
        async move {
            if refuse {
                let e = ErrorResponse::new(code::LIMIT_EXCEEDED, refusal(&c.shared));
                c.send_error(0, 0, 0, &e);
            } else if !address_ok {
                let e = ErrorResponse::new(
                    code::LIMIT_EXCEEDED,
                    "too many connections from this address",
                );
                c.send_error(0, 0, 0, &e);
            } else {
                c.read_loop(&mut rd).await;
            }
            c.close();
        }
    };
    futures_lite::future::zip(reader, writer).await;
    if let (Some(ip), true, false) = (ip, address_ok, refuse) {
        shared.quotas.disconnect(ip);
    }
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    shared.metrics.connection_closed(shard);
}

/// Why a connection is refused at accept: the connection limit (the configured one or what
/// the open-files limit leaves) or the memory budget.
fn refusal(shared: &Shared) -> String {
    if shared.receive_bytes.load(Ordering::Acquire) > shared.cfg.receive_bytes_max() {
        return "server memory budget for receiving frames exhausted: retry later".into();
    }
    format!(
        "too many connections (limit {}: connections_max, or what the open-files limit \
         RLIMIT_NOFILE leaves after partitions)",
        shared.connections_limit
    )
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Frames never written go back to the outbox share of the memory budget.
        self.shared
            .outbox_bytes
            .fetch_sub(self.queued_bytes.get(), Ordering::AcqRel);
        self.shared
            .receive_bytes
            .fetch_sub(self.inflight_bytes.get(), Ordering::AcqRel);
    }
}

impl Conn {
    fn close(&self) {
        self.closed.set(true);
        for s in self.subs.borrow_mut().drain().map(|(_, s)| s) {
            s.cancelled.set(true);
            s.changed.notify_all();
        }
        self.outbox.notify_all();
    }

    fn enqueue(&self, out: Out) {
        self.queued_bytes.set(self.queued_bytes.get() + out.len());
        self.shared
            .outbox_bytes
            .fetch_add(out.len(), Ordering::AcqRel);
        self.queue.borrow_mut().push_back(out);
        self.outbox.notify_all();
    }

    /// Waits while this connection's outbox is over its own limit, or holds bytes while the
    /// server's outbox share of the memory budget is spent (then the connections that queue
    /// the most slow down first; one with nothing queued is never held).
    async fn wait_for_outbox_space(&self) {
        let total_max = self.shared.cfg.outbox_bytes_total_max();
        let over = || {
            let own = self.queued_bytes.get();
            own > self.shared.cfg.outbox_bytes_max
                || (own > 0 && self.shared.outbox_bytes.load(Ordering::Acquire) > total_max)
        };
        while over() && !self.closed.get() {
            let seen = self.outbox.version();
            self.outbox.changed(seen).await;
        }
    }

    /// Writes queued frames in order. Everything queued when the writer wakes (up to
    /// [`WRITE_BATCH_FRAMES_MAX`] frames and [`WRITE_BATCH_BYTES_MAX`] bytes) leaves in one
    /// vectored write: pipelined responses and a response's header and body share a system
    /// call and, when small, a TCP segment.
    async fn write_loop(&self, wr: &mut super::tls::WriteHalf) {
        let mut batch: Vec<Out> = Vec::new();
        loop {
            {
                let mut queue = self.queue.borrow_mut();
                let mut bytes = 0usize;
                while let Some(front) = queue.front() {
                    let full = batch.len() >= WRITE_BATCH_FRAMES_MAX
                        || bytes + front.len() > WRITE_BATCH_BYTES_MAX;
                    if !batch.is_empty() && full {
                        break;
                    }
                    bytes += front.len();
                    batch.extend(queue.pop_front());
                }
            }
            if batch.is_empty() {
                if self.closed.get() {
                    let _ = wr.close().await;
                    return;
                }
                let seen = self.outbox.version();
                if self.queue.borrow().is_empty() && !self.closed.get() {
                    self.outbox.changed(seen).await;
                }
                continue;
            }
            let len: usize = batch.iter().map(Out::len).sum();
            let r = {
                let slices: Vec<&[u8]> = batch
                    .iter()
                    .flat_map(|out| -> Box<dyn Iterator<Item = &[u8]> + '_> {
                        match out {
                            Out::Flat(b) => Box::new(std::iter::once(&b[..])),
                            Out::Parts(p) => Box::new(p.slices()),
                        }
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                write_all_vectored(wr, &slices).await
            };
            batch.clear();
            self.queued_bytes
                .set(self.queued_bytes.get().saturating_sub(len));
            self.shared.outbox_bytes.fetch_sub(len, Ordering::AcqRel);
            self.outbox.notify_all();
            if r.is_err() {
                // The peer is gone: stop reading too.
                self.close();
                return;
            }
            if self.queue.borrow().is_empty() {
                let _ = wr.flush().await;
            }
        }
    }

    fn version(&self, api: ApiKey) -> u16 {
        self.versions
            .borrow()
            .as_ref()
            .and_then(|v| v.version(api).ok())
            .unwrap_or(0)
    }

    fn send_error(&self, correlation_id: u32, api_key: u16, api_version: u16, e: &ErrorResponse) {
        self.shared.metrics.error(self.shard, api_key, e.code);
        let mut buf = FrameBuf::new();
        if self
            .encoder
            .borrow_mut()
            .error(&mut buf, correlation_id, api_key, api_version, e)
            .is_ok()
        {
            self.enqueue(Out::Flat(buf));
        }
    }

    fn send_response(&self, correlation_id: u32, api_version: u16, r: &Response) {
        self.shared.metrics.response_errors(self.shard, r);
        let parts = self
            .encoder
            .borrow_mut()
            .response_parts(correlation_id, api_version, r);
        match parts {
            Ok(p) => self.enqueue(Out::Parts(p)),
            Err(e) => {
                let api = r.api_key().as_u16();
                self.send_error(
                    correlation_id,
                    api,
                    api_version,
                    &ErrorResponse::from_wire(&e),
                );
            }
        }
    }

    fn begin(&self) {
        self.inflight.set(self.inflight.get() + 1);
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        // The frames in flight are released in proportion: all of them with the last one.
        let n = self.inflight.get();
        if n > 0 && self.inflight_bytes.get() > 0 {
            let part = self.inflight_bytes.get() / n;
            self.inflight_bytes.set(self.inflight_bytes.get() - part);
            self.shared.receive_bytes.fetch_sub(part, Ordering::AcqRel);
        }
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        self.inflight_changed.notify_all();
    }

    async fn read_loop(self: &Rc<Self>, rd: &mut super::tls::ReadHalf) {
        let mut charge = budget::ReceiveCharge::new(self.shared.clone());
        self.read_frames(rd, &mut charge).await;
    }

    /// Whether the connection has handshaken and, when auth is on, authenticated: until then it
    /// gets a small frame limit, a small read buffer and a short deadline (issue 16).
    fn admitted(&self) -> bool {
        self.versions.borrow().is_some() && self.auth.authenticated()
    }

    async fn read_frames(
        self: &Rc<Self>,
        rd: &mut super::tls::ReadHalf,
        charge: &mut budget::ReceiveCharge,
    ) {
        let cfg = &self.shared.cfg;
        let Ok(mut decoder) = FrameDecoder::new(budget::decoder_config(cfg, false)) else {
            return;
        };
        let mut admitted = false;
        let mut timer = budget::ReadTimer::new(cfg);
        loop {
            if !admitted && self.admitted() {
                // Full limits from now on (bytes already buffered are kept).
                admitted = true;
                timer.admitted();
                if decoder
                    .set_config(budget::decoder_config(cfg, true))
                    .is_err()
                {
                    return;
                }
            }
            // Frames already buffered first (after a read, or behind the Handshake).
            let mut completed = false;
            loop {
                let frame = match decoder.next_frame_owned() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.fatal(&e);
                        return;
                    }
                };
                charge.update(&decoder);
                completed = true;
                self.dispatch(frame).await;
                if self.closed.get() {
                    return;
                }
                if !admitted && self.admitted() {
                    // Frames behind the Handshake are decoded with the raised limits.
                    break;
                }
            }
            if !admitted && self.admitted() {
                continue;
            }
            timer.frame_progress(decoder.buffered_bytes() > 0, completed);
            // Backpressure: stop reading while too much is in flight or queued.
            while self.inflight.get() >= self.shared.cfg.inflight_requests_max && !self.closed.get()
            {
                let seen = self.inflight_changed.version();
                self.inflight_changed.changed(seen).await;
            }
            self.wait_for_outbox_space().await;
            self.wait_for_receive_share().await;
            if self.closed.get() || self.shared.stopping.load(Ordering::Acquire) {
                return;
            }
            if decoder.buffered_bytes() > 0 && !charge.wait_for_room(&timer).await {
                let e = ErrorResponse::new(
                    code::LIMIT_EXCEEDED,
                    "server memory budget for receiving frames exhausted: retry later",
                );
                self.send_error(0, 0, 0, &e);
                return;
            }
            let quiet = self.inflight.get() == 0 && self.subs.borrow().is_empty();
            let partial = decoder.buffered_bytes() > 0;
            let Some(wait) = timer.next_wait(quiet, partial) else {
                self.send_error(0, 0, 0, &timer.expired_error());
                return;
            };
            // Allocate first and charge it, then wait: an idle connection's buffer counts too.
            decoder.read_buf();
            charge.update(&decoder);
            let n = match rt::timeout(wait, rd.read(decoder.read_buf())).await {
                Some(r) => r,
                None => {
                    charge.update(&decoder);
                    if timer.ended_on_deadline(quiet, partial) {
                        self.send_error(0, 0, 0, &timer.expired_error());
                        return;
                    }
                    continue;
                }
            };
            let n = match n {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.filled(n);
            charge.update(&decoder);
        }
    }

    /// While the receive share is spent, a connection with requests in flight is not read
    /// until they are answered (its own answers release its charge: no polling, no deadlock;
    /// connections with nothing in flight keep being read, within their frame deadlines).
    async fn wait_for_receive_share(&self) {
        let max = self.shared.cfg.receive_bytes_max();
        while self.inflight_bytes.get() > 0
            && self.shared.receive_bytes.load(Ordering::Acquire) > max
            && !self.closed.get()
        {
            let seen = self.inflight_changed.version();
            self.inflight_changed.changed(seen).await;
        }
    }

    fn fatal(&self, e: &WireError) {
        let (cid, api, ver) = e.correlation_id().map_or((0, 0, 0), |c| (c, 0, 0));
        self.send_error(cid, api, ver, &ErrorResponse::from_wire(e));
    }

    /// One request frame: decoded, gated (handshake first, then the ACLs), then routed.
    async fn dispatch(self: &Rc<Self>, frame: OwnedFrame) {
        let h = frame.header;
        let (cid, api, ver) = (h.correlation_id, h.api_key, h.api_version);
        self.shared.metrics.request(self.shard, api);
        if let Some(request) = self.admit(&frame) {
            let (before, bytes) = (self.inflight.get(), frame.payload.len());
            self.route(Call { cid, api, ver }, request).await;
            if self.inflight.get() > before {
                // Still running (handed to a shard): its frame counts until it is answered.
                self.inflight_bytes.set(self.inflight_bytes.get() + bytes);
                self.shared.receive_bytes.fetch_add(bytes, Ordering::AcqRel);
            }
        }
    }

    /// Decodes the frame and checks that the request may run now; answers (or closes) and
    /// returns `None` if not.
    fn admit(&self, frame: &OwnedFrame) -> Option<Request> {
        let h = frame.header;
        let (cid, api, ver) = (h.correlation_id, h.api_key, h.api_version);
        if let Some(e) = self.refuse_undecoded(api) {
            // Payloads of a client that has not handshaken (or authenticated, when auth is
            // on) are not decoded at all (issue 16, finding 4).
            self.send_error(cid, api, ver, &e);
            return None;
        }
        let request = match Request::decode_owned_frame(frame) {
            Ok(r) => r,
            Err(e) => {
                if e.is_fatal() {
                    self.fatal(&e);
                    self.close();
                } else {
                    self.send_error(cid, api, ver, &ErrorResponse::from_wire(&e));
                }
                return None;
            }
        };
        let handshaken = self.versions.borrow().is_some();
        if !handshaken && !matches!(request, Request::Handshake(_)) {
            let e = ErrorResponse::new(code::HANDSHAKE_REQUIRED, "send Handshake first");
            self.send_error(cid, api, ver, &e);
            return None;
        }
        if let Err(denied) = self.auth.gate(&request) {
            if request.expects_response() || denied.close {
                self.send_error(cid, api, ver, &denied.error);
            }
            if denied.close {
                self.close();
            }
            return None;
        }
        Some(request)
    }

    /// The answer to a request from a client that may not send it yet, judged by its api key
    /// alone: before the Handshake only Handshake; with auth on, before authenticating only
    /// Handshake and Authenticate.
    fn refuse_undecoded(&self, api: u16) -> Option<ErrorResponse> {
        let handshake = ApiKey::Handshake.as_u16();
        if self.versions.borrow().is_none() && api != handshake {
            return Some(ErrorResponse::new(
                code::HANDSHAKE_REQUIRED,
                "send Handshake first",
            ));
        }
        if !self.auth.authenticated() && api != handshake && api != ApiKey::Authenticate.as_u16() {
            return Some(ErrorResponse::new(
                code::AUTHENTICATION_REQUIRED,
                "authenticate first (Authenticate, api 40)",
            ));
        }
        None
    }

    /// Runs an admitted request. Barriers (topic and queue creation, alterations, resets,
    /// purges, Authenticate) finish before the next request is read; the others run in tasks
    /// of their own, so that pipelined requests overlap.
    async fn route(self: &Rc<Self>, call: Call, request: Request) {
        let Call { cid, api, ver } = call;
        match request {
            Request::Handshake(r) => self.handshake(cid, ver, &r),
            Request::Ping(p) => {
                self.send_response(cid, ver, &Response::Ping(PingResponse { nonce: p.nonce }))
            }
            Request::Metadata(m) => {
                if self.shared.cfg.auto_create_topics {
                    self.auto_create(&m.topics).await;
                }
                let resp = Response::Metadata(self.metadata(&m));
                self.send_response(cid, ver, &super::session::filter_response(&self.auth, resp));
            }
            ref r if let Err(e) = self.partition_quota(r) => self.send_error(cid, api, ver, &e),
            Request::CreateTopic(_)
            | Request::DeleteTopic(_)
            | Request::AlterTopic(_)
            | Request::AddPartitions(_)
            | Request::CreateReplicatedTopic(_)
            | Request::ReassignPartition(_)
            | Request::AlterNode(_) => {
                self.barrier(call, async || self.admin(request).await).await;
            }
            Request::ListTopics(_)
            | Request::DescribeTopic(_)
            | Request::DescribeReplicas(_)
            | Request::DescribeCluster(_)
            | Request::Stats(_)
            | Request::Metrics(_) => self.spawn_call(call, async move |c| c.admin(request).await),
            Request::Produce(p) => self.produce_within_quota(cid, api, ver, p).await,
            Request::Fetch(f) => self.fetch_within_quota(cid, api, ver, f),
            Request::ListOffsets(l) => {
                self.begin();
                let c = self.clone();
                rt::spawn_local(async move {
                    let resp = c.list_offsets(l).await;
                    c.send_response(cid, ver, &Response::ListOffsets(resp));
                    c.end();
                });
            }
            Request::QueueCreate(_) => {
                // A barrier like CreateTopic: later requests may use the queue.
                self.begin();
                self.answer_queue(cid, api, ver, request).await;
                self.end();
            }
            Request::QueueReceive(_)
            | Request::QueueAck(_)
            | Request::QueueNack(_)
            | Request::QueueChangeVisibility(_)
            | Request::QueueStats(_)
            | Request::QueuePeek(_)
            | Request::QueueRedrive(_) => self.serve_queue(cid, api, ver, request),
            Request::Subscribe(s) => self.subscribe(cid, ver, s).await,
            Request::InitProducer(_)
            | Request::JoinGroup(_)
            | Request::Heartbeat(_)
            | Request::LeaveGroup(_)
            | Request::OffsetCommit(_)
            | Request::OffsetFetch(_)
            | Request::DescribeGroup(_) => self.spawn_call(call, async move |c| {
                super::semantics::handle(&c.engine, request).await
            }),
            Request::ResetOffsets(_) | Request::QueuePurge(_) => {
                // Barriers, like AlterTopic: requests behind them see their effect.
                let engine = self.engine.clone();
                self.barrier(call, async || super::ops::handle(&engine, request).await)
                    .await;
            }
            Request::ListGroups(_) => self.spawn_call(call, async move |c| {
                super::ops::handle(&c.engine, request).await
            }),
            Request::AlterSecurity(r) => {
                // A barrier: requests behind it run with the change in force.
                let (engine, auth) = (self.engine.clone(), self.shared.auth.clone());
                self.barrier(call, async || {
                    super::auth::replicated::handle(&engine, auth, r).await
                })
                .await;
            }
            Request::Authenticate(a) => {
                // A barrier: requests behind it run with its outcome.
                self.begin();
                match self.auth.authenticate(a).await {
                    Ok(r) => self.send_response(cid, ver, &Response::Authenticate(r)),
                    Err(e) => self.send_error(cid, api, ver, &e),
                }
                self.end();
            }
            Request::GrantCredits(g) => {
                if let Some(s) = self.subs.borrow().get(&g.subscription_id) {
                    s.window.borrow_mut().grant(g.records, g.bytes);
                    s.changed.notify_all();
                }
            }
            Request::Unsubscribe(u) => self.unsubscribe(cid, api, ver, u.subscription_id),
        }
    }

    /// The partition quota's verdict on a request that creates partitions (CreateTopic,
    /// CreateReplicatedTopic, AddPartitions); every other request passes.
    fn partition_quota(&self, request: &Request) -> Result<(), ErrorResponse> {
        let quotas = &self.shared.quotas;
        match request {
            Request::CreateTopic(t) => quotas.check_create(&self.engine, t.config.partitions),
            Request::CreateReplicatedTopic(t) => {
                quotas.check_create(&self.engine, t.config.partitions)
            }
            Request::AddPartitions(a) => {
                quotas.check_add_partitions(&self.engine, &a.name, a.partitions)
            }
            _ => Ok(()),
        }
    }

    /// Runs `work` before the next request is read, and answers with its result.
    async fn barrier(
        &self,
        call: Call,
        work: impl AsyncFnOnce() -> Result<Response, shardline_engine::Error>,
    ) {
        self.begin();
        let r = work().await;
        self.reply_admin(call.cid, call.api, call.ver, r);
        self.end();
    }

    /// Runs `work` in a task of its own (later requests are read meanwhile), and answers with
    /// its result.
    fn spawn_call(
        self: &Rc<Self>,
        call: Call,
        work: impl AsyncFnOnce(&Rc<Conn>) -> Result<Response, shardline_engine::Error> + 'static,
    ) {
        self.begin();
        let c = self.clone();
        rt::spawn_local(async move {
            let r = work(&c).await;
            c.reply_admin(call.cid, call.api, call.ver, r);
            c.end();
        });
    }

    fn handshake(&self, cid: u32, ver: u16, r: &HandshakeRequest) {
        let chosen = negotiate(&supported_apis(), &r.apis);
        *self.versions.borrow_mut() = Some(NegotiatedVersions::from_chosen(&chosen));
        let resp = HandshakeResponse {
            server_id: self.shared.server_id.clone(),
            apis: chosen,
            frame_bytes_max: self.shared.cfg.frame_bytes_max,
            shard: self.shard as u32,
            shard_count: self.engine.shard_count() as u32,
        };
        self.send_response(cid, ver, &Response::Handshake(resp));
    }

    /// Produce, after the principal's byte-rate quota admits it (a refusal is answered unless
    /// `acks = none`).
    async fn produce_within_quota(
        self: &Rc<Self>,
        cid: u32,
        api: u16,
        ver: u16,
        p: ProduceRequest,
    ) {
        if self.shared.quotas.rates_enabled() {
            let key = self.auth.quota_key();
            let bytes = super::quota::produce_bytes(&p);
            let dir = super::quota::Direction::Produce;
            let admitted = self.shared.quotas.admit(&key, dir, bytes, Instant::now());
            if let Err(e) = admitted {
                if p.acks != Acks::None {
                    self.send_error(cid, api, ver, &e);
                }
                return;
            }
        }
        self.produce(cid, ver, p).await
    }

    /// Fetch in a task of its own, after the fetch quota admits it; the bytes fetched are
    /// charged afterwards.
    fn fetch_within_quota(self: &Rc<Self>, cid: u32, api: u16, ver: u16, f: FetchRequest) {
        let quota_key = self
            .shared
            .quotas
            .rates_enabled()
            .then(|| self.auth.quota_key());
        if let Some(key) = &quota_key {
            let dir = super::quota::Direction::Fetch;
            if let Err(e) = self.shared.quotas.admit(key, dir, 0, Instant::now()) {
                self.send_error(cid, api, ver, &e);
                return;
            }
        }
        self.begin();
        let c = self.clone();
        rt::spawn_local(async move {
            let resp = c.fetch(f).await;
            if let Some(key) = &quota_key {
                let bytes = super::quota::fetch_bytes(&resp);
                let dir = super::quota::Direction::Fetch;
                c.shared.quotas.charge(key, dir, bytes, Instant::now());
            }
            c.send_response(cid, ver, &Response::Fetch(resp));
            c.end();
        });
    }

    fn unsubscribe(&self, cid: u32, api: u16, ver: u16, subscription_id: u32) {
        let sub = self.subs.borrow_mut().remove(&subscription_id);
        match sub {
            Some(s) => {
                s.cancelled.set(true);
                s.changed.notify_all();
                let resp = UnsubscribeResponse {
                    subscription_id,
                    next_offset: s.position.get(),
                };
                self.send_response(cid, ver, &Response::Unsubscribe(resp));
            }
            None => {
                let e = ErrorResponse::new(
                    code::UNKNOWN_SUBSCRIPTION,
                    format!("no subscription {subscription_id}"),
                );
                self.send_error(cid, api, ver, &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;

    use super::*;

    /// Takes at most `step` bytes per call, from the first buffers only, and sometimes says
    /// "not now" first: what a socket with a small, draining buffer does.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        #[test]
        fn vectored_writes_deliver_every_byte_in_order(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..40),
            step in 1usize..700,
        ) {
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut w = Trickle { out: Vec::new(), step, calls: 0 };
            futures_lite::future::block_on(write_all_vectored(&mut w, &slices)).unwrap();
            prop_assert_eq!(w.out, parts.concat());
        }
    }
}
