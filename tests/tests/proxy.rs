//! The TCP fault proxy (tests/src/proxy.rs) in front of an echo server: pass, delay,
//! blackhole and reset, switched while connections are open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shardline_tests::proxy::{Mode, Proxy};

/// An echo server on 127.0.0.1 (a thread per connection); lives as long as the test process.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    got
}

#[test]
fn pass_and_delay() {
    let p = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&p);
    assert_eq!(round_trip(&mut s, b"hello"), b"hello");
    p.set_mode(Mode::Delay(Duration::from_millis(150)));
    let t = Instant::now();
    assert_eq!(round_trip(&mut s, b"slow"), b"slow");
    // Delayed each way.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    p.set_mode(Mode::Pass);
    let t = Instant::now();
    assert_eq!(round_trip(&mut s, b"fast"), b"fast");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(p.open_connections(), 1);
    assert_eq!(p.bytes(), (2 * 13, 0));
}

#[test]
fn blackhole_drops_silently_until_healed() {
    let p = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&p);
    assert_eq!(round_trip(&mut s, b"before"), b"before");
    p.set_mode(Mode::Blackhole);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.write_all(b"lost").unwrap();
    let mut buf = [0u8; 16];
    let e = s.read(&mut buf).expect_err("nothing comes back");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    // New connections are accepted but black-holed too.
    let mut s2 = connect(&p);
    s2.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s2.write_all(b"x").unwrap();
    assert!(s2.read(&mut buf).is_err());
    assert!(p.bytes().1 >= 5, "{:?}", p.bytes());
    // Healed: the same connection carries new bytes; the dropped ones stay dropped.
    p.set_mode(Mode::Pass);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(round_trip(&mut s, b"after"), b"after");
}

#[test]
fn reset_kills_open_connections_and_refuses_new_ones() {
    let p = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&p);
    assert_eq!(round_trip(&mut s, b"up"), b"up");
    p.set_mode(Mode::Reset);
    let mut buf = [0u8; 4];
    // The open connection is reset: reads fail (RST) or end; writes soon fail.
    match s.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0),
    }
    assert_eq!(p.open_connections(), 0);
    // A new connection is accepted, then reset at once.
    let mut s2 = connect(&p);
    let r = s2.read(&mut buf);
    assert!(matches!(&r, Ok(0)) || r.is_err(), "{r:?}");
    // Back to pass: new connections work; `reset_connections` is a one-shot.
    p.set_mode(Mode::Pass);
    let mut s3 = connect(&p);
    assert_eq!(round_trip(&mut s3, b"again"), b"again");
    p.reset_connections();
    match s3.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0),
    }
    assert_eq!(p.mode(), Mode::Pass);
    let mut s4 = connect(&p);
    assert_eq!(round_trip(&mut s4, b"ok"), b"ok");
    assert!(p.accepted() >= 4);
}
