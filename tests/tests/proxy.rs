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
    // Healed: the connections that lost bytes are reset (a TCP stream never has a hole);
    // new connections pass.
    p.set_mode(Mode::Pass);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match s.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0),
    }
    assert_eq!(p.open_connections(), 0);
    let mut s3 = connect(&p);
    assert_eq!(round_trip(&mut s3, b"after"), b"after");
    // A connection idle during a blackhole lost nothing and survives it.
    p.set_mode(Mode::Blackhole);
    p.set_mode(Mode::Pass);
    assert_eq!(round_trip(&mut s3, b"still"), b"still");
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

mod transport {
    //! The node-to-node transport (net/server/src/peer) through a proxy on each direction of
    //! one link: what later cluster tests build on.

    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, channel};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use shardline_engine::{Engine, EngineConfig};
    use shardline_net::server::peer::config::parse_cluster_list;
    use shardline_net::server::peer::{ClusterConfig, PeerSettings, PeerTransport};
    use shardline_tests::proxy::{Mode, Proxy};

    type Inbox = Receiver<(u64, Vec<(u64, Bytes)>)>;

    fn node(dir: &std::path::Path, id: u64, list: &str) -> (Engine, PeerTransport, Inbox) {
        let mut e = EngineConfig::with_data_dir(dir.join(format!("n{id}")));
        e.shards = 1;
        e.pin_shards = false;
        e.io_memory_bytes = 256 << 10;
        let engine = Engine::open(e).unwrap();
        let spec = ClusterConfig {
            node_id: id,
            nodes: parse_cluster_list(list),
            ..ClusterConfig::default()
        }
        .resolve()
        .unwrap();
        let (tx, rx) = channel();
        let settings = PeerSettings {
            backoff_min_ms: 10,
            backoff_max_ms: 100,
            write_timeout_ms: 1_000,
            ..PeerSettings::default()
        };
        let handler = Arc::new(move |from, m| {
            let _ = tx.send((from, m));
        });
        let t = PeerTransport::start(&engine, spec, settings, handler).unwrap();
        (engine, t, rx)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends one round until it arrives (a round sent into a dying connection is lost, as
    /// Raft's messages may be); returns how long the first delivery took.
    fn deliver(t: &PeerTransport, to: u64, inbox: &Inbox, tag: &'static [u8]) -> Duration {
        let start = Instant::now();
        loop {
            t.send(to, 7, Bytes::from_static(tag)).unwrap();
            t.flush();
            if let Ok((_, m)) = inbox.recv_timeout(Duration::from_millis(300)) {
                assert!(m.iter().all(|(g, b)| *g == 7 && &b[..] == tag), "{m:?}");
                // Drain duplicates of the retries.
                while inbox.try_recv().is_ok() {}
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never delivered");
        }
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn a_link_through_the_proxy_survives_delay_blackhole_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (free_port(), free_port());
        let real = |p: u16| -> std::net::SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
        // Node 1 reaches node 2 through `to2`, node 2 reaches node 1 through `to1`.
        let to2 = Proxy::start(real(p2)).unwrap();
        let to1 = Proxy::start(real(p1)).unwrap();
        let list1 = format!("1@127.0.0.1:{p1},2@{}", to2.addr());
        let list2 = format!("1@{},2@127.0.0.1:{p2}", to1.addr());
        let (e1, t1, in1) = node(dir.path(), 1, &list1);
        let (e2, t2, in2) = node(dir.path(), 2, &list2);
        wait_until("both links", || {
            t1.link_stats(2).unwrap().connected && t2.link_stats(1).unwrap().connected
        });
        deliver(&t1, 2, &in2, b"pass");
        deliver(&t2, 1, &in1, b"pass back");

        to2.set_mode(Mode::Delay(Duration::from_millis(150)));
        let took = deliver(&t1, 2, &in2, b"delayed");
        assert!(took >= Duration::from_millis(150), "{took:?}");
        to2.set_mode(Mode::Pass);

        // A partition of the 1 -> 2 direction: nothing arrives, nothing errs on the sender.
        to2.set_mode(Mode::Blackhole);
        t1.send(2, 7, Bytes::from_static(b"lost")).unwrap();
        t1.flush();
        assert!(in2.recv_timeout(Duration::from_millis(300)).is_err());
        // The other direction still works.
        deliver(&t2, 1, &in1, b"other way");
        // Healed: the link that lost bytes is reset, reconnects, and carries whole frames.
        to2.set_mode(Mode::Pass);
        wait_until("a reconnect after the blackhole", || {
            let s = t1.link_stats(2).unwrap();
            s.connects >= 2 && s.connected
        });
        deliver(&t1, 2, &in2, b"healed");

        // Reset: the link drops and cannot come back until the proxy passes again.
        let connects = t1.link_stats(2).unwrap().connects;
        to2.set_mode(Mode::Reset);
        wait_until("the link down", || !t1.link_stats(2).unwrap().connected);
        std::thread::sleep(Duration::from_millis(200));
        let s = t1.link_stats(2).unwrap();
        assert!(!s.connected && s.connects == connects, "{s:?}");
        to2.set_mode(Mode::Pass);
        deliver(&t1, 2, &in2, b"after reset");
        assert!(t1.link_stats(2).unwrap().connects > connects);
        // Nothing was ever refused: no frame was torn by the proxy.
        assert_eq!(t2.refusals().0, 0);
        t1.shutdown();
        t2.shutdown();
        e1.shutdown().unwrap();
        e2.shutdown().unwrap();
    }
}
