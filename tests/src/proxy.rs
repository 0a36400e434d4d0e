//! A TCP fault proxy for cluster tests: one per node-to-node link, on 127.0.0.1, switchable at
//! run time (docs/replication.md, "Node-to-node transport", "The fault proxy").
//!
//! ```text
//! dialler ──> proxy.addr() ──> target
//! ```
//! [`Mode::Pass`] forwards bytes as they come; [`Mode::Delay`] forwards each chunk after a fixed
//! delay (latency, not a throughput limit: chunks are timestamped on read and written by
//! another thread when due); [`Mode::Blackhole`] keeps connections open and silently drops
//! every byte in both directions (a network partition as TCP sees it: no error, no progress);
//! a connection that lost bytes is reset when the blackhole ends (TCP never delivers a stream
//! with a hole: a partition long enough to lose data ends the connection); [`Mode::Reset`] resets every open connection with a TCP RST and resets new ones as soon as
//! they are accepted. [`Proxy::reset_connections`] resets the open connections once and keeps
//! the mode. Plain std threads: the proxy does not need, nor disturb, the runtime under test.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
}

struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// Bytes of this connection were dropped by a blackhole.
    tainted: Arc<AtomicBool>,
}

struct Shared {
    mode: Mutex<Mode>,
    conns: Mutex<Vec<Conn>>,
    stopping: AtomicBool,
    accepted: AtomicU64,
    bytes_forwarded: AtomicU64,
    bytes_dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn mode(&self) -> Mode {
        *lock(&self.mode)
    }
}

/// A running proxy; dropping it stops it and resets its connections.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// Closes `s` with a TCP RST: linger 0, then wake its readers (`SHUT_RD` sends nothing), so
/// the last close of the socket resets instead of sending FIN.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        Proxy::start_on("127.0.0.1:0".parse().map_err(io::Error::other)?, target)
    }

    /// Listens on `listen` and forwards to `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            bytes_forwarded: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, target, &s))?;
        Ok(Proxy {
            addr,
            target,
            shared,
            accept: Some(accept),
        })
    }

    /// Where to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode; [`Mode::Reset`] also resets every open connection now, and leaving
    /// [`Mode::Blackhole`] resets the connections that lost bytes.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
        match mode {
            Mode::Reset => self.reset_connections(),
            Mode::Blackhole => {}
            Mode::Pass | Mode::Delay(_) => lock(&self.shared.conns).retain(|c| {
                let tainted = c.tainted.load(Ordering::Acquire);
                if tainted {
                    reset(&c.client);
                    reset(&c.upstream);
                }
                !tainted
            }),
        }
    }

    /// Resets every open connection (TCP RST to both ends); the mode stays.
    pub fn reset_connections(&self) {
        for c in lock(&self.shared.conns).drain(..) {
            reset(&c.client);
            reset(&c.upstream);
        }
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Bytes forwarded (both directions) and bytes dropped by [`Mode::Blackhole`].
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_forwarded.load(Ordering::Acquire),
            self.shared.bytes_dropped.load(Ordering::Acquire),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.reset_connections();
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        if shared.mode() == Mode::Reset {
            reset(&client);
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            reset(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let clones = (
            client.try_clone(),
            upstream.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
        );
        let (Ok(c_read), Ok(u_write), Ok(u_read), Ok(c_write)) = clones else {
            reset(&client);
            reset(&upstream);
            continue;
        };
        let tainted = Arc::new(AtomicBool::new(false));
        lock(&shared.conns).push(Conn {
            client,
            upstream,
            tainted: tainted.clone(),
        });
        pump(c_read, u_write, shared.clone(), tainted.clone());
        pump(u_read, c_write, shared.clone(), tainted);
    }
}

/// One direction: a reader thread stamps chunks, a writer thread writes them when due.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, tainted: Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_shared = shared.clone();
    let reader_tainted = tainted.clone();
    let reader = move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = match reader_shared.mode() {
                Mode::Pass => Instant::now(),
                Mode::Delay(d) => Instant::now() + d,
                Mode::Blackhole => {
                    reader_tainted.store(true, Ordering::Release);
                    reader_shared
                        .bytes_dropped
                        .fetch_add(n as u64, Ordering::AcqRel);
                    continue;
                }
                Mode::Reset => break,
            };
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = move || {
        for (due, chunk) in rx {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            // A chunk read before a switch to Blackhole or Reset is not delivered after it.
            if matches!(shared.mode(), Mode::Blackhole | Mode::Reset) {
                tainted.store(true, Ordering::Release);
                shared
                    .bytes_dropped
                    .fetch_add(chunk.len() as u64, Ordering::AcqRel);
                continue;
            }
            shared
                .bytes_forwarded
                .fetch_add(chunk.len() as u64, Ordering::AcqRel);
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        // The reading side ended (EOF or reset): pass the end on.
        let _ = to.shutdown(Shutdown::Write);
    };
    let _ = std::thread::Builder::new()
        .name("proxy-read".into())
        .spawn(reader);
    let _ = std::thread::Builder::new()
        .name("proxy-write".into())
        .spawn(writer);
}
