//! The client connection's byte stream: a blocking `std::net::TcpStream`, optionally carrying
//! TLS (a `rustls::ClientConnection` driven by hand), split into a reader (the reader thread)
//! and a writer (callers, under the writer lock) (docs/security.md, "TLS").
//!
//! ```text
//!  WireWriter::write_all(plaintext)            WireReader::read(out)
//!  --------------------------------            ---------------------
//!  lock sock_write                              lock tls: plaintext ready? -> return it
//!    lock tls: encrypt, drain records -> buf    read the socket (no lock held)
//!    unlock tls                                 lock tls: read_tls + process_new_packets
//!    write buf to the socket (blocking)         anything to send (a KeyUpdate answer)?
//!  unlock sock_write                              try_lock sock_write: drain and write it;
//!                                                 busy: the current writer drains it next
//! ```
//!
//! The TLS state lock is never held across a blocking socket call, so a writer blocked on a
//! full socket never stops the reader from draining responses (which is what lets the server
//! make progress). Records reach the socket in the order rustls produced them because they are
//! drained only while `sock_write` is held.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::ClientConnection;

use shardline_protocol::tls::ClientTls;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

pub(crate) struct TlsShared {
    conn: Mutex<ClientConnection>,
    sock_write: Mutex<TcpStream>,
}

impl TlsShared {
    /// Writes every record rustls has queued. The caller holds `sock_write` (passed in).
    fn drain(&self, sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        loop {
            buf.clear();
            {
                let mut c = lock(&self.conn);
                while c.wants_write() {
                    c.write_tls(buf)?;
                }
            }
            if buf.is_empty() {
                return Ok(());
            }
            sock.write_all(buf)?;
        }
    }
}

pub(crate) enum WireWriter {
    Plain(TcpStream),
    Tls {
        shared: Arc<TlsShared>,
        records: Vec<u8>,
    },
}

pub(crate) enum WireReader {
    Plain(TcpStream),
    Tls {
        shared: Arc<TlsShared>,
        sock: TcpStream,
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// Ciphertext read from the socket per read call.
const TLS_READ_BYTES: usize = 64 << 10;

/// Wraps a connected socket. With `tls`, runs the TLS handshake to completion first (blocking,
/// within the socket's read/write timeouts, which the caller has set).
pub(crate) fn wrap(
    stream: TcpStream,
    addr: &str,
    tls: Option<&ClientTls>,
) -> io::Result<(WireReader, WireWriter)> {
    let reader_sock = stream.try_clone()?;
    let Some(tls) = tls else {
        return Ok((WireReader::Plain(reader_sock), WireWriter::Plain(stream)));
    };
    let name = tls
        .server_name_for(addr)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut conn = ClientConnection::new(tls.config.clone(), name).map_err(tls_error)?;
    let mut sock = stream;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during the TLS handshake",
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(explain_handshake_error(e)),
        }
    }
    // TLS 1.3 client authentication: the server verifies our certificate after our last
    // handshake flight, so a refusal arrives with the first read (the reader thread reports it).
    let shared = Arc::new(TlsShared {
        conn: Mutex::new(conn),
        sock_write: Mutex::new(sock),
    });
    let reader = WireReader::Tls {
        shared: shared.clone(),
        sock: reader_sock,
        buf: vec![0; TLS_READ_BYTES].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    let writer = WireWriter::Tls {
        shared,
        records: Vec::new(),
    };
    Ok((reader, writer))
}

fn explain_handshake_error(e: io::Error) -> io::Error {
    let text = e.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        return io::Error::new(
            e.kind(),
            format!("TLS handshake failed ({text}): is the server serving plain TCP?"),
        );
    }
    io::Error::new(e.kind(), format!("TLS handshake failed: {text}"))
}

impl WireWriter {
    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            WireWriter::Plain(s) => s.write_all(data),
            WireWriter::Tls { shared, records } => {
                let mut sock = lock(&shared.sock_write);
                // rustls buffers at most 64 KiB of records: encrypt what it takes, send it,
                // repeat (a large produce is many rounds, with bounded memory).
                let mut rest = data;
                let mut stalled = false;
                while !rest.is_empty() {
                    let n = lock(&shared.conn).writer().write(rest)?;
                    shared.drain(&mut sock, records)?;
                    if n == 0 {
                        // Nothing taken even with an empty buffer: the session is closing.
                        if stalled {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "TLS session does not accept data",
                            ));
                        }
                        stalled = true;
                    } else {
                        stalled = false;
                    }
                    rest = &rest[n..];
                }
                shared.drain(&mut sock, records)?;
                // A writer that grew past one large produce gives the memory back.
                if records.capacity() > 1 << 20 {
                    *records = Vec::new();
                }
                Ok(())
            }
        }
    }
}

impl WireReader {
    /// Like `Read::read`: `Ok(0)` at the end of the stream.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let (shared, sock, buf, start, end) = match self {
            WireReader::Plain(s) => return s.read(out),
            WireReader::Tls {
                shared,
                sock,
                buf,
                start,
                end,
            } => (shared, sock, buf, start, end),
        };
        loop {
            let wants_write = {
                let mut c = lock(&shared.conn);
                // Feed what the socket gave, as far as rustls takes it (it refuses more while
                // its plaintext buffer is full: then the caller drains plaintext first).
                while *start < *end {
                    let mut pending = &buf[*start..*end];
                    match c.read_tls(&mut pending) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => *start += n,
                    }
                    c.process_new_packets().map_err(tls_error)?;
                }
                match c.reader().read(out) {
                    // Ok(0) with a non-empty `out`: the server sent close_notify.
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                c.wants_write()
            };
            if wants_write && let Ok(mut s) = shared.sock_write.try_lock() {
                shared.drain(&mut s, &mut Vec::new())?;
            }
            if *start < *end {
                // rustls took nothing and yielded nothing: cannot progress.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS: record buffer stuck",
                ));
            }
            let n = loop {
                match sock.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                return Ok(0);
            }
            *start = 0;
            *end = n;
        }
    }
}
