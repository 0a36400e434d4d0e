//! Hostile clients on the Kafka listener (issue 16 on the second protocol): a request size
//! header is never allocated up front, a client that must authenticate gets a small frame limit
//! and a short deadline, and the listener keeps serving everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::start;
use shardline_net::auth::store::SecurityFile;
use shardline_net::server::{AuthConfig, KafkaConfig, ServerConfig};

/// Reads until EOF or a reset; `true` if the server closed within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return true;
            }
            Err(_) => return false,
        }
    }
}

/// ApiVersions v0 (allowed before SASL) gets its answer: the listener still serves.
fn api_versions_answered(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    req.extend(10i32.to_be_bytes()); // size
    req.extend(18i16.to_be_bytes()); // ApiVersions
    req.extend(0i16.to_be_bytes()); // v0
    req.extend(7i32.to_be_bytes()); // correlation id
    req.extend((-1i16).to_be_bytes()); // no client id
    s.write_all(&req).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    let size = i32::from_be_bytes(head[..4].try_into().unwrap());
    assert!(size > 4, "{size}");
    assert_eq!(i32::from_be_bytes(head[4..].try_into().unwrap()), 7);
}

// Proves: with SASL required, a size header beyond the unauthenticated limit closes the
// connection at once (nothing allocated, no wait for the body), a connection that never
// authenticates is closed after `unadmitted_timeout_ms`, and other clients are still served.
#[test]
fn before_sasl_large_frames_are_refused_and_idle_connections_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("security.json");
    let mut db = SecurityFile::default();
    db.add_user("alice", "correct horse battery staple")
        .unwrap();
    db.save(&file).unwrap();
    let server = start(
        &dir.path().join("data"),
        ServerConfig {
            auth: AuthConfig {
                enabled: true,
                file: Some(file),
                ..AuthConfig::default()
            },
            kafka: KafkaConfig {
                listen: Some("127.0.0.1:0".into()),
                ..KafkaConfig::default()
            },
            unadmitted_timeout_ms: 1000,
            unadmitted_frame_bytes_max: 64 << 10,
            ..ServerConfig::default()
        },
    );
    let addr = server.kafka_addr().unwrap();

    // Many connections announcing 90 MiB each (below request_bytes_max): refused at the header.
    let mut big: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&(90i32 << 20).to_be_bytes()).unwrap();
            s.write_all(&[0u8; 64]).unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    for s in &mut big {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "an oversized unauthenticated request was not refused"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // Silent unauthenticated connection: closed after unadmitted_timeout_ms (1 s).
    let mut idle = TcpStream::connect(addr).unwrap();
    let t1 = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(8)),
        "an unauthenticated idle connection was kept"
    );
    assert!(
        t1.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t1.elapsed()
    );

    // A client that keeps asking ApiVersions but never authenticates is closed at the same
    // deadline, counted from its start (not reset by each request).
    let mut chatty = TcpStream::connect(addr).unwrap();
    chatty
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t2 = Instant::now();
    let mut answered = 0;
    for _ in 0..40 {
        let mut req = Vec::new();
        req.extend(10i32.to_be_bytes());
        req.extend(18i16.to_be_bytes());
        req.extend(0i16.to_be_bytes());
        req.extend(9i32.to_be_bytes());
        req.extend((-1i16).to_be_bytes());
        if chatty.write_all(&req).is_err() {
            break;
        }
        let mut head = [0u8; 4];
        if chatty.read_exact(&mut head).is_err() {
            break;
        }
        let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(head)).unwrap()];
        if chatty.read_exact(&mut body).is_err() {
            break;
        }
        answered += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 1, "ApiVersions before SASL must be answered");
    assert!(
        t2.elapsed() < Duration::from_secs(4),
        "an unauthenticated connection outlived its deadline: {:?}, {answered} answers",
        t2.elapsed()
    );

    api_versions_answered(addr);
    server.shutdown().unwrap();
}

// Proves: without auth, a body announced large and sent slowly is held only as far as it
// arrived and the listener keeps answering others meanwhile; the connection that stops
// sending mid-body is closed after `frame_receive_timeout_ms`.
#[test]
fn a_stalled_large_request_is_closed_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("data"),
        ServerConfig {
            kafka: KafkaConfig {
                listen: Some("127.0.0.1:0".into()),
                ..KafkaConfig::default()
            },
            frame_receive_timeout_ms: 1500,
            ..ServerConfig::default()
        },
    );
    let addr = server.kafka_addr().unwrap();
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(&(90i32 << 20).to_be_bytes()).unwrap();
    stalled.write_all(&[0u8; 4096]).unwrap();
    api_versions_answered(addr);
    let t0 = Instant::now();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)),
        "a stalled request body was waited for indefinitely"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    api_versions_answered(addr);
    server.shutdown().unwrap();
}
