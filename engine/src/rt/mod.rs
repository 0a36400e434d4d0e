//! The runtime seam: the only module that imports glommio (docs/architecture.md, "Runtime seam").
//! Executors pinned to cores, local task spawning, timers, and [`DmaStorage`] (O_DIRECT files on
//! io_uring). A move to another io_uring runtime touches this module only. [`StdFs`] is the
//! blocking `std::fs` backend of the same storage trait, for the engine handle's threads.

mod dma;
pub mod std_fs;

use std::future::Future;
use std::time::Duration;

pub use dma::{DmaStorage, dma_alignment_ok};
pub use std_fs::StdFs;

/// TCP for the network server, re-exported through the seam (so `net` never names glommio).
/// Listeners bind with SO_REUSEPORT: every shard may listen on the same address and the kernel
/// spreads connections across them.
pub mod net {
    use std::cell::RefCell;
    use std::io;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll};

    use futures_lite::{AsyncRead, AsyncWrite};
    pub use glommio::net::{TcpListener, TcpStream};

    /// Splits a stream so one task can read while another writes. glommio keeps separate
    /// readiness sources for the two directions, and the `RefCell` is borrowed only inside a
    /// synchronous `poll_*` call, never across an await, so the halves cannot conflict.
    pub fn split(stream: TcpStream) -> (ReadHalf, WriteHalf) {
        let s = Rc::new(RefCell::new(stream));
        (ReadHalf(s.clone()), WriteHalf(s))
    }

    /// Most buffers one `sendmsg` takes (Linux's `IOV_MAX` is 1024).
    pub const IOV_MAX: usize = 1024;

    /// One `sendmsg(2)` (gathering, `MSG_DONTWAIT`) on the socket for all of `bufs`: a response's header
    /// and body, and every response queued behind it, leave in one system call and, small
    /// enough, one TCP segment, so the peer wakes once per batch instead of once per part.
    /// glommio's stream has no vectored write; when the socket is full this falls back to
    /// its `poll_write` of the first buffer, which registers the waker for writability.
    pub fn poll_write_vectored(
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let iov_count = bufs.len().min(IOV_MAX);
        if iov_count > 1 {
            let fd = stream.as_raw_fd();
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` (guaranteed by std on Unix);
            // the slices outlive the call and `iov_count` is within `bufs`. A zeroed
            // `msghdr` is valid (no address, no control data).
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
                msg.msg_iovlen = iov_count as _;
                // glommio's sockets are blocking; MSG_DONTWAIT makes this one call
                // non-blocking, as glommio's own `send` does.
                libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => {}
                io::ErrorKind::Interrupted => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                _ => return Poll::Ready(Err(e)),
            }
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(stream).poll_write(cx, first)
    }

    pub struct ReadHalf(Rc<RefCell<TcpStream>>);
    pub struct WriteHalf(Rc<RefCell<TcpStream>>);

    impl ReadHalf {
        pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
            Ok(self.0.borrow().peer_addr()?)
        }
    }

    impl AsyncRead for ReadHalf {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for WriteHalf {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            poll_write_vectored(&mut self.0.borrow_mut(), cx, bufs)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
        }
    }
}

use crate::error::{Error, Result};

/// Settings of one shard executor.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    pub name: String,
    /// CPU to pin to (from the process's affinity mask), or `None` for unpinned.
    pub cpu: Option<usize>,
    /// Memory registered with io_uring for DMA buffers (must fit RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// Spin this long before parking when idle (0 = park at once).
    pub spin_before_park: Duration,
}

/// Handle of a running shard thread.
pub struct ExecutorHandle {
    inner: glommio::ExecutorJoinHandle<()>,
}

impl ExecutorHandle {
    pub fn join(self) -> Result<()> {
        self.inner
            .join()
            .map_err(|e| Error::Runtime(format!("shard thread failed: {e}")))
    }
}

/// Starts an executor on its own thread and runs `main` in it until it returns.
pub fn spawn_executor<G, F>(spec: ExecutorSpec, main: G) -> Result<ExecutorHandle>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let placement = match spec.cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let mut b = glommio::LocalExecutorBuilder::new(placement)
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes);
    if !spec.spin_before_park.is_zero() {
        b = b.spin_before_park(spec.spin_before_park);
    }
    let inner = b
        .spawn(main)
        .map_err(|e| Error::Runtime(startup_hint(&e.to_string())))?;
    Ok(ExecutorHandle { inner })
}

fn startup_hint(e: &str) -> String {
    if e.contains("MemLock") || e.contains("memlock") {
        format!(
            "cannot start a shard: {e}. Locked memory (ulimit -l) must be at least 512 KiB \
             plus io_memory; raise it or lower engine.io_memory_bytes"
        )
    } else if e.contains("Operation not permitted") || e.contains("ENOSYS") {
        format!("cannot start a shard: {e}. io_uring seems disabled (kernel.io_uring_disabled?)")
    } else {
        format!("cannot start a shard: {e}")
    }
}

/// Spawns a task on the current shard; it runs to completion even if the handle is dropped.
pub fn spawn_local<F>(fut: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(fut).detach();
}

pub async fn sleep(d: Duration) {
    glommio::timer::sleep(d).await;
}

/// Runs `fut` for at most `d`; `None` on timeout.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(d).await;
        None
    })
    .await
}

/// Yields this task *and* the task queue, so the executor runs other tasks and polls io_uring
/// for completions before coming back. A loop that always finds work ready (a busy request
/// inbox) must call this now and then, or cooperative scheduling starves flushes and I/O.
pub async fn yield_to_io() {
    glommio::executor().yield_task_queue_now().await;
}

/// Works around a glommio 0.9 probe bug: the first DMA file a thread opens on a device decides,
/// by reading its first block, whether the device supports polled I/O (IOPOLL), and caches the
/// answer per thread and device. If that file is empty the read returns 0 bytes without touching
/// the poll path, glommio concludes "pollable", and every later read on that device fails with
/// EOPNOTSUPP on devices (like virtio) that cannot poll. So each shard first opens a non-empty
/// probe file in the data directory, which makes the probe real.
pub async fn prime_dma_probe(dir: &std::path::Path) -> std::io::Result<()> {
    let path =
        dir.join(format!(".dma-probe-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::write(&path, vec![0x5a; 4096])?;
    let r = async {
        let f = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await?;
        let _ = f.read_at_aligned(0, 4096).await?;
        f.close().await?;
        Ok::<(), glommio::GlommioError<()>>(())
    }
    .await;
    let _ = std::fs::remove_file(&path);
    r.map_err(std::io::Error::from)
}

/// Yields to other tasks of this shard if the executor asks for it (long loops).
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Usable CPUs of this process, in order: the affinity mask of the process's main thread
/// (tid = pid), not of the calling thread, so an application that pinned the thread calling
/// `Engine::open` does not squeeze every shard onto that one core. Falls back to all CPUs.
pub fn usable_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let pid = std::process::id() as libc::pid_t;
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: valid pointer to a local set of the size passed.
    let ok = unsafe { libc::sched_getaffinity(pid, size, &mut set) } == 0;
    let cpus: Vec<usize> = if ok {
        // SAFETY: CPU_ISSET reads the set filled above; the index is below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}
