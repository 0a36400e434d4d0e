//! One client connection: a `std::net::TcpStream` with three owners.
//!
//! ```text
//!  callers (any thread, any runtime)          reader thread                 timer thread
//!  ---------------------------------          -------------                 ------------
//!  acquire permit (bounded in flight)         read -> FrameDecoder          sleeps until the
//!  register correlation id -> Pending   <---  dispatch by correlation id    earliest deadline,
//!  encode + write under the writer lock       pushes -> subscription queue  fails what expired
//!  await the bounded(1) reply (flume)         on EOF/error: fail everything
//! ```
//!
//! Writes are serialized by a mutex and done by the calling thread (no hand-off to a writer
//! thread: waking another thread costs ~65 us here, DESIGN.md). Reads, likewise, skip the reader
//! thread where they can: a caller blocked in a blocking form ([`block_on`]) on a plain-TCP
//! connection without subscriptions that nobody is reading claims the *read role* when it
//! registers its request, reads the socket itself and dispatches what arrives (its own reply,
//! and anyone else's) until its reply is there; then it hands the role back (waking the reader
//! thread only if others still wait). The reader thread takes the role when requests wait and no
//! caller reads, and, after [`READER_LINGER`] without requests, to notice the server closing an
//! idle connection. A write that fails or times out half-way leaves the stream unframed, so it aborts the connection. Every request has a deadline
//! enforced by the timer thread, so a reply future always completes, on any runtime, without a
//! runtime timer. A failed connection is never reused; the pool (`pool.rs`) opens a new one.

mod handshake;
mod reader;

use handshake::{HandshakeError, handshake};

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tracing::debug;

use super::ClientConfig;
use super::error::ClientError;
use super::tls::{WireReader, WireWriter};
use crate::protocol::{
    ApiKey, DecoderConfig, FrameBuf, FrameDecoder, FrameEncoder, HandshakeResponse,
    NegotiatedVersions, Push, Request, Response,
};

/// A reply slot: bounded(1), written once by whoever completes the request.
pub(crate) type Reply = flume::Sender<Result<Response, ClientError>>;

/// A completion run on the reader (or timer) thread. It must not block.
pub(crate) type Callback = Box<dyn FnOnce(Result<Response, ClientError>) + Send>;

/// Who waits for a request's outcome.
pub(crate) enum Pending {
    /// A caller awaits the reply.
    Call(Reply),
    /// A Subscribe: on success the reader registers `route` *before* it reads the next frame, so
    /// the subscription's first push (which follows the response) is never missed.
    Subscribe { reply: Reply, route: PushRoute },
    /// Completion by callback (the producer's event loop).
    Callback(Callback),
}

impl Pending {
    fn complete(self, result: Result<Response, ClientError>) {
        match self {
            // The receiver may be gone (a cancelled future): nothing to do then.
            Pending::Call(reply) | Pending::Subscribe { reply, .. } => {
                let _ = reply.try_send(result);
            }
            Pending::Callback(f) => f(result),
        }
    }
}

/// Where a subscription's pushes go: the consumer's bounded queue, tagged with the consumer's own
/// key for the subscription (server ids are unique per connection only).
#[derive(Debug, Clone)]
pub(crate) struct PushRoute {
    pub(crate) tx: flume::Sender<PushEvent>,
    pub(crate) tag: u64,
}

#[derive(Debug)]
pub(crate) struct PushEvent {
    pub(crate) tag: u64,
    pub(crate) kind: PushEventKind,
}

#[derive(Debug)]
pub(crate) enum PushEventKind {
    Push(Push),
    /// The subscription is over; nothing more follows for this tag.
    End(ClientError),
}

struct PendingEntry {
    api: ApiKey,
    timeout: Duration,
    deadline: Instant,
    pending: Pending,
}

/// Who reads the socket (the decoder and the read half are used by one thread at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadRole {
    Nobody,
    /// The connection's reader thread.
    Thread,
    /// A blocked caller waiting for its own reply.
    Caller,
}

/// How long the reader thread leaves an idle socket to the next caller before it reads it
/// itself (to see the server's close; a caller then waits for it to hand the reply over).
const READER_LINGER: Duration = Duration::from_millis(50);

/// A reading caller's socket reads time out after this, to check whether its deadline passed
/// (the timer thread fails the request; the caller must notice).
const CALLER_READ_SLICE: Duration = Duration::from_millis(100);

thread_local! {
    /// Set while the thread runs a blocking form of the client ([`block_on`]): it has nothing
    /// else to do than wait, so it may read its own reply off the socket.
    static BLOCKING_CALLER: Cell<bool> = const { Cell::new(false) };
}

/// Runs a blocking form's future on the calling thread, letting the connection layer read the
/// caller's reply on this thread (no cross-thread wake-up). Only for futures that await one
/// request at a time: a future that also waits for something else concurrently (a `race`/`or`)
/// would not be polled while this thread reads.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BLOCKING_CALLER.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BLOCKING_CALLER.with(|b| b.replace(true)));
    futures_lite::future::block_on(f)
}

/// The read half and its frame decoder: used by whoever holds the read role.
struct ReadSide {
    stream: WireReader,
    decoder: FrameDecoder,
    /// The socket's receive timeout is [`CALLER_READ_SLICE`] (set by a reading caller; the reader
    /// thread clears it before it reads).
    sliced: bool,
}

/// Why a read of the socket stopped.
enum ReadStop {
    /// The receive timeout passed without data (a reading caller checks its deadline).
    Slice,
    /// The connection is over, for this reason.
    Closed(String),
}

struct State {
    pending: HashMap<u32, PendingEntry>,
    /// Who reads the socket now.
    reader: ReadRole,
    /// When a request was last registered or a caller stopped reading (the reader thread's
    /// linger counts from here).
    last_activity: Instant,
    routes: HashMap<u32, PushRoute>,
    /// Set once, when the connection fails; every later request fails with it at once.
    closed: Option<ClientError>,
    /// The deadline the timer thread sleeps towards; a request due earlier wakes it.
    timer_target: Option<Instant>,
}

struct Writer {
    stream: WireWriter,
    encoder: FrameEncoder,
    buf: FrameBuf,
}

/// A write buffer grown past this by a large produce is dropped after use.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;

struct Shared {
    /// `host:port` as the caller named it (for errors).
    addr: String,
    peer: SocketAddr,
    handshake: HandshakeResponse,
    versions: NegotiatedVersions,
    state: Mutex<State>,
    timer_wake: Condvar,
    /// Wakes the reader thread: requests wait and nobody reads, or the connection ends.
    read_wake: Condvar,
    /// Blocked callers may read their own replies (plain TCP: a TLS stream is read by the
    /// reader thread only).
    caller_reads: bool,
    read_side: Mutex<ReadSide>,
    /// Replies a caller read itself (tests and diagnostics).
    caller_read_replies: std::sync::atomic::AtomicU64,
    writer: Mutex<Writer>,
    /// For `shutdown` without taking the writer lock.
    socket: TcpStream,
    next_correlation_id: AtomicU32,
    /// The last handle was dropped: the end of the stream is ours, not the server's.
    dropped: AtomicBool,
    /// A counting semaphore: a slot per request awaiting its reply (`inflight_requests_max`).
    permits_tx: flume::Sender<()>,
    permits_rx: flume::Receiver<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind: still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A handshaken connection. Dropping the last handle closes the socket; its threads then exit.
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::Relaxed);
        let _ = self.shared.socket.shutdown(Shutdown::Both);
        // A parked reader thread sees `dropped` and ends the connection.
        let _state = lock(&self.shared.state);
        self.shared.read_wake.notify_all();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("shard", &self.shared.handshake.shard)
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` (every address it resolves to, in turn), sets TCP_NODELAY, does the
    /// Handshake and starts the reader and timer threads. Blocking.
    pub(crate) fn open(addr: &str, config: &ClientConfig) -> Result<Connection, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let candidates: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| connect_error(e.to_string()))?
            .collect();
        let mut last = String::from("no address resolved");
        let mut stream = None;
        for a in candidates {
            match TcpStream::connect_timeout(&a, config.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let stream = stream.ok_or_else(|| connect_error(last))?;
        let io = |e: io::Error| connect_error(e.to_string());
        stream.set_nodelay(true).map_err(io)?;
        let peer = stream.peer_addr().map_err(io)?;
        // Socket timeouts are per socket, shared by every clone: they bound the TLS handshake
        // and the protocol Handshake, then are relaxed below.
        stream
            .set_read_timeout(Some(config.connect_timeout))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(config.connect_timeout))
            .map_err(io)?;
        let socket = stream.try_clone().map_err(io)?;
        let (mut reader_stream, mut writer_stream) =
            super::tls::wrap(stream, addr, config.tls.as_ref()).map_err(io)?;
        let mut decoder = FrameDecoder::new(DecoderConfig {
            frame_bytes_max: config.response_frame_bytes_max,
            read_buffer_bytes: config.read_buffer_bytes,
        })?;
        let handshake = handshake(&mut reader_stream, &mut writer_stream, &mut decoder, config)
            .map_err(|e| match e {
                HandshakeError::Io(e) => connect_error(format!("handshake: {e}")),
                HandshakeError::Client(e) => e,
            })?;
        let versions = NegotiatedVersions::from_chosen(&handshake.apis);
        let encoder = FrameEncoder::new(handshake.frame_bytes_max)?;
        socket.set_read_timeout(None).map_err(io)?;
        // A write that cannot progress for this long (server not reading) aborts the connection
        // instead of holding the writer lock forever.
        socket
            .set_write_timeout(Some(config.request_timeout))
            .map_err(io)?;
        let (permits_tx, permits_rx) = flume::bounded(config.inflight_requests_max.max(1));
        let caller_reads = matches!(reader_stream, WireReader::Plain(_));
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            peer,
            handshake,
            versions,
            read_wake: Condvar::new(),
            caller_reads,
            read_side: Mutex::new(ReadSide {
                stream: reader_stream,
                decoder,
                sliced: false,
            }),
            caller_read_replies: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State {
                pending: HashMap::new(),
                reader: ReadRole::Nobody,
                last_activity: Instant::now(),
                routes: HashMap::new(),
                closed: None,
                timer_target: None,
            }),
            timer_wake: Condvar::new(),
            writer: Mutex::new(Writer {
                stream: writer_stream,
                encoder,
                buf: FrameBuf::new(),
            }),
            socket,
            next_correlation_id: AtomicU32::new(1),
            dropped: AtomicBool::new(false),
            permits_tx,
            permits_rx,
        });
        let reader = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("shardline-client-read {addr}"))
            .spawn(move || reader.read_loop())
            .map_err(io)?;
        let timer = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("shardline-client-timer {addr}"))
            .spawn(move || timer.timer_loop());
        let connection = Connection { shared };
        // Without its timer the connection cannot keep its deadlines: refuse it (dropping it
        // closes the socket and stops the reader).
        spawned.map_err(io)?;
        debug!(
            addr,
            shard = connection.shard(),
            server = %connection.shared.handshake.server_id,
            "connected"
        );
        Ok(connection)
    }

    /// Whether the server speaks the read-options trailer (Fetch and Subscribe version 1):
    /// it can honour `ReadIsolation::Durable`.
    pub(crate) fn supports_read_isolation(&self) -> bool {
        let fetch = self.shared.versions.version(ApiKey::Fetch);
        let subscribe = self.shared.versions.version(ApiKey::Subscribe);
        matches!((fetch, subscribe), (Ok(f), Ok(s)) if f >= 1 && s >= 1)
    }

    /// The shard whose listener accepted this connection.
    pub(crate) fn shard(&self) -> u32 {
        self.shared.handshake.shard
    }

    pub(crate) fn shard_count(&self) -> u32 {
        self.shared.handshake.shard_count
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The server's frame limit: requests above it fail locally with `FrameTooLarge`.
    pub(crate) fn frame_bytes_max(&self) -> u32 {
        self.shared.handshake.frame_bytes_max
    }

    pub(crate) fn server_id(&self) -> &str {
        &self.shared.handshake.server_id
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed.is_some()
    }

    /// Sends `request` and waits for its reply (or its deadline, or the connection's failure).
    pub(crate) async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let (reply, rx) = flume::bounded(1);
        let claim = self.shared.caller_reads && BLOCKING_CALLER.with(Cell::get);
        if self
            .submit_as(request, timeout, Pending::Call(reply), claim)
            .await?
        {
            return self.shared.read_own_reply(&rx);
        }
        self.await_reply(rx).await
    }

    /// Replies this connection's callers read off the socket themselves (no reader thread).
    #[cfg(test)]
    pub(crate) fn caller_read_replies(&self) -> u64 {
        self.shared.caller_read_replies.load(Ordering::Relaxed)
    }

    /// A Subscribe: pushes of the new subscription go to `route`.
    pub(crate) async fn subscribe(
        &self,
        request: &Request,
        route: PushRoute,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let (reply, rx) = flume::bounded(1);
        let pending = Pending::Subscribe { reply, route };
        self.submit(request, timeout, pending).await?;
        self.await_reply(rx).await
    }

    async fn await_reply(
        &self,
        rx: flume::Receiver<Result<Response, ClientError>>,
    ) -> Result<Response, ClientError> {
        match rx.recv_async().await {
            Ok(result) => result,
            // Unreachable in practice: every entry is completed exactly once before it is dropped.
            Err(_) => Err(self.lost("reply dropped")),
        }
    }

    /// Registers `pending` and writes the request. `Ok` means `pending` will be completed
    /// exactly once (reply, error frame, deadline or connection failure); `Err` means it never
    /// will be and the caller has the error. Waits while `inflight_requests_max` requests are
    /// awaiting replies.
    pub(crate) async fn submit(
        &self,
        request: &Request,
        timeout: Duration,
        pending: Pending,
    ) -> Result<(), ClientError> {
        self.submit_as(request, timeout, pending, false)
            .await
            .map(|_| ())
    }

    /// [`Connection::submit`]; with `claim`, takes the read role if nobody reads: then the
    /// result is `Ok(true)` and the caller must read until `pending` is completed
    /// ([`Shared::read_own_reply`]).
    async fn submit_as(
        &self,
        request: &Request,
        timeout: Duration,
        pending: Pending,
        claim: bool,
    ) -> Result<bool, ClientError> {
        // The semaphore's receiver lives in `shared`, next to the sender: this cannot fail.
        if self.shared.permits_tx.send_async(()).await.is_err() {
            return Err(self.lost("permit queue closed"));
        }
        self.submit_with_permit(request, timeout, pending, claim)
    }

    /// Like [`Connection::submit`] without waiting: fails when `inflight_requests_max` requests
    /// are awaiting replies. For fire-and-forget cleanup in `Drop`, which must not block.
    pub(crate) fn try_submit(
        &self,
        request: &Request,
        timeout: Duration,
        pending: Pending,
    ) -> Result<(), ClientError> {
        if self.shared.permits_tx.try_send(()).is_err() {
            return Err(ClientError::InvalidArgument(
                "too many requests in flight".into(),
            ));
        }
        self.submit_with_permit(request, timeout, pending, false)
            .map(|_| ())
    }

    fn submit_with_permit(
        &self,
        request: &Request,
        timeout: Duration,
        pending: Pending,
        claim: bool,
    ) -> Result<bool, ClientError> {
        let api = request.api_key();
        let version = match self.shared.versions.version(api) {
            Ok(v) => v,
            Err(e) => {
                self.shared.release_permit();
                return Err(e.into());
            }
        };
        let (correlation_id, claimed) = match self.shared.register(api, timeout, pending, claim) {
            Ok(r) => r,
            Err(e) => {
                self.shared.release_permit();
                return Err(e);
            }
        };
        if let Err(e) = self.shared.write(correlation_id, version, request) {
            // If the reader or the timer already took the entry, it has been (or will be)
            // completed: report success so that it is not reported twice.
            let entry = lock(&self.shared.state).pending.remove(&correlation_id);
            if entry.is_some() {
                self.shared.release_permit();
                if claimed {
                    self.shared.release_read_role();
                }
                return Err(e);
            }
        }
        Ok(claimed)
    }

    /// Writes a request that has no response (GrantCredits, Produce with `acks = none`).
    pub(crate) fn send_oneway(&self, request: &Request) -> Result<(), ClientError> {
        debug_assert!(!request.expects_response());
        if let Some(e) = lock(&self.shared.state).closed.clone() {
            return Err(e);
        }
        let version = self.shared.versions.version(request.api_key())?;
        let correlation_id = self.shared.next_id();
        self.shared.write(correlation_id, version, request)
    }

    /// Stops routing pushes of `subscription_id` (before an Unsubscribe, or when the consumer
    /// forgets it).
    pub(crate) fn remove_route(&self, subscription_id: u32) {
        lock(&self.shared.state).routes.remove(&subscription_id);
    }

    fn lost(&self, reason: &str) -> ClientError {
        ClientError::ConnectionLost {
            addr: self.shared.addr.clone(),
            reason: reason.to_string(),
        }
    }
}

impl Shared {
    fn next_id(&self) -> u32 {
        self.next_correlation_id.fetch_add(1, Ordering::Relaxed)
    }

    fn release_permit(&self) {
        let _ = self.permits_rx.try_recv();
    }

    /// Registers a request awaiting its reply. With `claim`, the caller takes the read role if
    /// nobody holds it (the second value: then it must read until its reply is there);
    /// otherwise a reader thread parked while nobody reads is woken.
    fn register(
        &self,
        api: ApiKey,
        timeout: Duration,
        pending: Pending,
        claim: bool,
    ) -> Result<(u32, bool), ClientError> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut state = lock(&self.state);
        if let Some(e) = &state.closed {
            return Err(e.clone());
        }
        // Ids wrap after 2^32 requests; skip one still awaiting its reply (bounded by the
        // permits, so this loop ends within `inflight_requests_max + 1` steps).
        let mut id = self.next_id();
        while state.pending.contains_key(&id) {
            id = self.next_id();
        }
        state.pending.insert(
            id,
            PendingEntry {
                api,
                timeout,
                deadline,
                pending,
            },
        );
        if state.timer_target.is_none_or(|t| deadline < t) {
            state.timer_target = Some(deadline);
            self.timer_wake.notify_one();
        }
        state.last_activity = now;
        let mut claimed = false;
        if state.reader == ReadRole::Nobody {
            // Not with subscriptions: their pushes go to queues that the caller itself may be
            // the one to drain.
            if claim && state.routes.is_empty() {
                state.reader = ReadRole::Caller;
                claimed = true;
            } else {
                self.read_wake.notify_one();
            }
        }
        Ok((id, claimed))
    }

    fn write(
        &self,
        correlation_id: u32,
        version: u16,
        request: &Request,
    ) -> Result<(), ClientError> {
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        w.buf.clear();
        // Encoding errors (a frame above the server's limit) write nothing: the stream is fine.
        w.encoder
            .request(&mut w.buf, correlation_id, version, request)?;
        let written = w.stream.write_all(&w.buf);
        if w.buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            w.buf = FrameBuf::new();
        }
        drop(guard);
        if let Err(e) = written {
            // Part of a frame may be on the wire: the stream is no longer framed.
            let reason = format!("write failed: {e}");
            let _ = self.socket.shutdown(Shutdown::Both);
            return Err(ClientError::ConnectionLost {
                addr: self.addr.clone(),
                reason,
            });
        }
        Ok(())
    }
}
