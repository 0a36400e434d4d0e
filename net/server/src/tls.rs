//! A served connection's byte stream: plain TCP or TLS (`futures-rustls` directly over
//! glommio's `TcpStream`, which implements the futures-io traits), and its split into a reader
//! and a writer half for the connection's two tasks (docs/security.md, "TLS").

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use shardline_engine::rt::{self, net::TcpStream};

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a finished TLS handshake tells about the client.
#[derive(Debug, Default, Clone)]
pub(crate) struct Peer {
    /// The client certificate's subject common name, when mutual TLS verified one.
    pub(crate) cert_common_name: Option<String>,
}

/// Wraps an accepted socket: TLS handshake within `timeout` when `acceptor` is set.
pub(crate) async fn establish(
    stream: TcpStream,
    acceptor: Option<&TlsAcceptor>,
    timeout: Duration,
) -> io::Result<(Stream, Peer)> {
    let Some(acceptor) = acceptor else {
        return Ok((Stream::Plain(stream), Peer::default()));
    };
    let tls = match rt::timeout(timeout, acceptor.accept(stream)).await {
        Some(r) => r?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
    };
    let peer = Peer {
        cert_common_name: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| common_name(c.as_ref())),
    };
    Ok((Stream::Tls(Box::new(tls)), peer))
}

/// The subject CN of a DER certificate, found by a minimal scan: the OID 2.5.4.3 followed by
/// a UTF8String/PrintableString. The chain was verified by rustls already; this only names it.
fn common_name(der: &[u8]) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    // The subject comes after the issuer: take the last CN in the certificate.
    let mut found = None;
    let mut at = 0;
    while let Some(i) = der
        .get(at..)
        .and_then(|rest| rest.windows(CN_OID.len()).position(|w| w == CN_OID))
    {
        let value = at + i + CN_OID.len();
        if let (Some(&tag), Some(&len)) = (der.get(value), der.get(value + 1))
            && matches!(tag, 0x0c | 0x13)
            && len < 0x80
            && let Some(bytes) = der.get(value + 2..value + 2 + usize::from(len))
            && let Ok(s) = std::str::from_utf8(bytes)
        {
            found = Some(s.to_string());
        }
        at = value;
    }
    found
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    /// Plain TCP: one gathering `sendmsg` (engine `rt::net::poll_write_vectored`); TLS: the
    /// first buffer (rustls gathers records itself).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => shardline_engine::rt::net::poll_write_vectored(s, cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Splits a stream so one task reads while another writes. The `RefCell` is borrowed only
/// inside a synchronous `poll_*` call, never across an await. For TLS this relies on
/// futures-rustls' `poll_read` not writing to the socket once the handshake is done (it writes
/// only a last-gasp alert on a fatal error), so each half registers wakers for its own
/// direction only; rustls queues anything the reader side must send (a KeyUpdate answer) for
/// the writer's next flush.
pub(crate) fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    let s = Rc::new(RefCell::new(stream));
    (ReadHalf(s.clone()), WriteHalf(s))
}

pub(crate) struct ReadHalf(Rc<RefCell<Stream>>);
pub(crate) struct WriteHalf(Rc<RefCell<Stream>>);

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
        Pin::new(&mut *self.0.borrow_mut()).poll_write_vectored(cx, bufs)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_the_subject_cn() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc-orders");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), Some("svc-orders".into()));
        assert_eq!(common_name(b"\x06\x03\x55\x04\x03"), None);
        assert_eq!(common_name(b""), None);
    }
}
