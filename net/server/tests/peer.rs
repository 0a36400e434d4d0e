//! The node-to-node transport as a library (docs/replication.md, "Node-to-node transport"):
//! three transports in one process, each on an engine of its own, over 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardline_engine::{Engine, EngineConfig};
use shardline_server::peer::config::parse_cluster_list;
use shardline_server::peer::{
    ClusterConfig, InboundHandler, PeerSettings, PeerTlsConfig, PeerTransport, SendError,
};

type Inbox = flume::Receiver<(u64, Vec<(u64, Bytes)>)>;

struct Node {
    engine: Engine,
    transport: PeerTransport,
    inbox: Inbox,
}

impl Node {
    fn stop(self) {
        self.transport.shutdown();
        self.engine.shutdown().unwrap();
    }
}

fn engine(dir: &Path) -> Engine {
    let mut e = EngineConfig::with_data_dir(dir);
    e.shards = 1;
    e.pin_shards = false;
    e.io_memory_bytes = 256 << 10;
    Engine::open(e).unwrap()
}

/// Ports that were free a moment ago (the transports bind them right after).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn cluster_list(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

fn settings() -> PeerSettings {
    PeerSettings {
        backoff_min_ms: 10,
        backoff_max_ms: 200,
        connect_timeout_ms: 500,
        handshake_timeout_ms: 2_000,
        ..PeerSettings::default()
    }
}

fn start_node(
    dir: &Path,
    cluster_id: &str,
    node_id: u64,
    list: &str,
    tls: Option<PeerTlsConfig>,
    settings: PeerSettings,
) -> Node {
    let config = ClusterConfig {
        node_id,
        cluster_id: cluster_id.into(),
        nodes: parse_cluster_list(list),
        tls,
        ..ClusterConfig::default()
    };
    let spec = config.resolve().unwrap();
    let engine = engine(&dir.join(format!("node-{node_id}")));
    let (tx, inbox) = flume::unbounded();
    let handler: InboundHandler = Arc::new(move |from, messages| {
        let _ = tx.send((from, messages));
    });
    let transport = PeerTransport::start(&engine, spec, settings, handler).unwrap();
    Node {
        engine,
        transport,
        inbox,
    }
}

/// Waits (bounded) until `cond` holds; there is no event for "a link came up" outside the
/// transport, so this polls its counters.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until every link among `nodes` (not to nodes outside it) is up.
fn all_connected(nodes: &[&Node]) {
    let ids: Vec<u64> = nodes.iter().map(|n| n.transport.node_id()).collect();
    for n in nodes {
        for peer in n
            .transport
            .peer_ids()
            .into_iter()
            .filter(|p| ids.contains(p))
        {
            wait_until(&format!("link {} -> {peer}", n.transport.node_id()), || {
                n.transport.link_stats(peer).unwrap().connected
            });
        }
    }
}

fn recv(inbox: &Inbox) -> (u64, Vec<(u64, Bytes)>) {
    inbox
        .recv_timeout(Duration::from_secs(10))
        .expect("a frame")
}

fn three(dir: &Path, tls: impl Fn(u64) -> Option<PeerTlsConfig>) -> Vec<Node> {
    let ports = free_ports(3);
    let list = cluster_list(&ports);
    (1..=3)
        .map(|id| start_node(dir, "test", id, &list, tls(id), settings()))
        .collect()
}

#[test]
fn one_frame_per_peer_per_flush_carries_every_group() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = three(dir.path(), |_| None);
    all_connected(&nodes.iter().collect::<Vec<_>>());
    let t1 = &nodes[0].transport;
    // A round: 200 groups' messages to node 2, 50 to node 3, then one flush.
    for g in 0..200u64 {
        t1.send(2, g, Bytes::from(format!("to-2 group {g}")))
            .unwrap();
    }
    for g in 0..50u64 {
        t1.send(3, 1000 + g, Bytes::from(vec![g as u8; 100]))
            .unwrap();
    }
    assert_eq!(t1.link_stats(2).unwrap().messages_queued, 200);
    t1.flush();
    let (from, msgs) = recv(&nodes[1].inbox);
    assert_eq!(from, 1);
    assert_eq!(msgs.len(), 200, "the whole round in one frame");
    for (i, (g, m)) in msgs.iter().enumerate() {
        assert_eq!(*g, i as u64);
        assert_eq!(&m[..], format!("to-2 group {i}").as_bytes());
    }
    let (from, msgs) = recv(&nodes[2].inbox);
    assert_eq!((from, msgs.len()), (1, 50));
    assert_eq!(msgs[7], (1007, Bytes::from(vec![7u8; 100])));
    let s = t1.link_stats(2).unwrap();
    assert_eq!(
        (s.frames_sent, s.messages_sent, s.messages_queued),
        (1, 200, 0)
    );
    // Nothing else arrived: exactly one frame.
    assert!(nodes[1].inbox.try_recv().is_err());
    let r = nodes[1].transport.link_stats(1).unwrap();
    assert_eq!((r.frames_received, r.messages_received), (1, 200));

    // Every direction works, and each flush is one more frame.
    for round in 0..3u64 {
        for n in &nodes {
            for p in n.transport.peer_ids() {
                n.transport
                    .send(p, round, Bytes::from_static(b"hb"))
                    .unwrap();
                n.transport
                    .send(p, round + 100, Bytes::from_static(b"ae"))
                    .unwrap();
            }
            n.transport.flush();
        }
        for n in &nodes {
            let mut froms: Vec<u64> = (0..2)
                .map(|_| recv(&n.inbox))
                .map(|(f, m)| {
                    assert_eq!(m.len(), 2);
                    f
                })
                .collect();
            froms.sort_unstable();
            let mut expected = n.transport.peer_ids();
            expected.sort_unstable();
            assert_eq!(froms, expected);
        }
    }
    assert_eq!(t1.link_stats(2).unwrap().frames_sent, 4);
    // A flush with nothing queued sends nothing.
    t1.flush();
    assert_eq!(t1.send(9, 0, Bytes::new()), Err(SendError::UnknownNode(9)));
    assert_eq!(t1.send(1, 0, Bytes::new()), Err(SendError::UnknownNode(1)));
    let big = Bytes::from(vec![0u8; 16 << 20]);
    assert!(matches!(
        t1.send(2, 0, big),
        Err(SendError::TooLarge { .. })
    ));
    for n in nodes {
        n.stop();
    }
}

#[test]
fn a_dead_peer_bounds_the_queue_and_a_restarted_one_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let list = cluster_list(&ports);
    let small = PeerSettings {
        queue_messages_max: 100,
        ..settings()
    };
    let n1 = start_node(dir.path(), "test", 1, &list, None, small.clone());
    // Node 2 is down: node 1 keeps retrying, and its queue stays bounded.
    for round in 0..50u64 {
        for g in 0..10 {
            n1.transport
                .send(2, g, Bytes::from(format!("{round}/{g}")))
                .unwrap();
        }
        n1.transport.flush();
    }
    let s = n1.transport.link_stats(2).unwrap();
    assert!(!s.connected);
    assert_eq!(s.messages_queued, 100);
    assert_eq!(s.messages_dropped, 400);
    wait_until("a connect error", || {
        n1.transport.link_stats(2).unwrap().last_error.is_some()
    });
    // Node 2 starts: the link comes up and the newest 100 messages arrive (oldest dropped).
    let n2 = start_node(dir.path(), "test", 2, &list, None, small.clone());
    all_connected(&[&n1, &n2]);
    let (from, msgs) = recv(&n2.inbox);
    assert_eq!(from, 1);
    assert_eq!(msgs.len(), 100);
    assert_eq!(&msgs[0].1[..], b"40/0");
    assert_eq!(&msgs[99].1[..], b"49/9");
    // Node 2 restarts: node 1 notices and reconnects; node 2's new instance gets new rounds.
    n2.stop();
    let n2 = start_node(dir.path(), "test", 2, &list, None, small);
    wait_until("the second connect", || {
        let s = n1.transport.link_stats(2).unwrap();
        s.connects >= 2 && s.connected
    });
    n1.transport
        .send(2, 5, Bytes::from_static(b"after"))
        .unwrap();
    n1.transport.flush();
    // The first write after a peer restart may hit the dead socket; a new round gets through.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        if let Ok((_, m)) = n2.inbox.recv_timeout(Duration::from_millis(200)) {
            break m;
        }
        assert!(Instant::now() < deadline, "no frame after the restart");
        n1.transport
            .send(2, 5, Bytes::from_static(b"after"))
            .unwrap();
        n1.transport.flush();
    };
    assert_eq!(got[0], (5, Bytes::from_static(b"after")));
    n1.stop();
    n2.stop();
}

#[test]
fn wrong_cluster_and_unknown_nodes_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let list = cluster_list(&ports[..2]);
    let n1 = start_node(dir.path(), "blue", 1, &list, None, settings());
    // Same list, other cluster id, as node 2.
    let other = start_node(dir.path(), "green", 2, &list, None, settings());
    wait_until("the refusal", || n1.transport.refusals().0 >= 1);
    let (_, reason) = n1.transport.refusals();
    let reason = reason.unwrap();
    assert!(reason.contains("cluster id 'green'"), "{reason}");
    wait_until("the dialler's error", || {
        other.transport.link_stats(1).unwrap().last_error.is_some()
    });
    let e = other.transport.link_stats(1).unwrap().last_error.unwrap();
    assert!(
        e.contains("refused the handshake") && e.contains("'green'"),
        "{e}"
    );
    assert!(!other.transport.link_stats(1).unwrap().connected);
    other.stop();

    // A node id node 1 does not list (9, dialling node 1 from its own list).
    let stranger_list = format!("1@127.0.0.1:{},9@127.0.0.1:{}", ports[0], ports[2]);
    let stranger = start_node(dir.path(), "blue", 9, &stranger_list, None, settings());
    wait_until("the dialler's error", || {
        stranger
            .transport
            .link_stats(1)
            .unwrap()
            .last_error
            .is_some_and(|e| e.contains("refused"))
    });
    let (_, reason) = n1.transport.refusals();
    assert!(
        reason
            .as_deref()
            .unwrap()
            .contains("node 9 is not in the cluster list"),
        "{reason:?}"
    );
    stranger.stop();

    // Hostile bytes: no panic, the connection is refused, the node keeps working.
    use std::io::{Read, Write};
    let before = n1.transport.refusals().0;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[4, 0, 0, 0, 1, 0, 0, 0],
    ] {
        let mut s = std::net::TcpStream::connect(n1.transport.listen_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(garbage).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    wait_until("three more refusals", || {
        n1.transport.refusals().0 >= before + 3
    });
    let n2 = start_node(dir.path(), "blue", 2, &list, None, settings());
    all_connected(&[&n1, &n2]);
    n2.transport.send(1, 1, Bytes::from_static(b"ok")).unwrap();
    n2.transport.flush();
    assert_eq!(recv(&n1.inbox).1.len(), 1);
    n1.stop();
    n2.stop();
}

mod pki {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    pub(super) fn ca(dir: &Path, name: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        (Issuer::new(params, key), path)
    }

    pub(super) fn leaf(
        issuer: &Issuer<'static, KeyPair>,
        dir: &Path,
        stem: &str,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[test]
fn mutual_tls_links_carry_messages_and_refuse_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, ca) = pki::ca(dir.path(), "cluster-ca");
    let tls = |id: u64| {
        let (cert, key) = pki::leaf(&issuer, dir.path(), &format!("node{id}"));
        Some(PeerTlsConfig {
            cert,
            key,
            ca: ca.clone(),
        })
    };
    let ports = free_ports(3);
    let list = cluster_list(&ports);
    let n1 = start_node(dir.path(), "tls", 1, &list, tls(1), settings());
    let n2 = start_node(dir.path(), "tls", 2, &list, tls(2), settings());
    all_connected(&[&n1, &n2]);
    n1.transport
        .send(2, 42, Bytes::from_static(b"secret"))
        .unwrap();
    n1.transport.flush();
    assert_eq!(
        recv(&n2.inbox),
        (1, vec![(42, Bytes::from_static(b"secret"))])
    );
    n2.transport
        .send(1, 43, Bytes::from_static(b"back"))
        .unwrap();
    n2.transport.flush();
    assert_eq!(
        recv(&n1.inbox),
        (2, vec![(43, Bytes::from_static(b"back"))])
    );

    // Node 3 with a certificate from another CA (trusting it too): the TLS handshake fails.
    let (other_issuer, other_ca) = pki::ca(dir.path(), "other-ca");
    let (cert, key) = pki::leaf(&other_issuer, dir.path(), "intruder");
    let n3 = start_node(
        dir.path(),
        "tls",
        3,
        &list,
        Some(PeerTlsConfig {
            cert,
            key,
            ca: other_ca,
        }),
        settings(),
    );
    wait_until("node 1 refusing the intruder", || {
        n1.transport
            .refusals()
            .1
            .is_some_and(|r| r.contains("TLS handshake failed"))
    });
    wait_until("the intruder's error", || {
        n3.transport
            .link_stats(1)
            .unwrap()
            .last_error
            .is_some_and(|e| e.contains("TLS"))
    });
    assert!(!n3.transport.link_stats(1).unwrap().connected);
    // A plain-TCP node cannot talk to a TLS node either.
    let plain_ports = format!("1@127.0.0.1:{},4@127.0.0.1:{}", ports[0], free_ports(1)[0]);
    let plain = start_node(dir.path(), "tls", 4, &plain_ports, None, settings());
    wait_until("the plain node's error", || {
        plain.transport.link_stats(1).unwrap().last_error.is_some()
    });
    assert!(!plain.transport.link_stats(1).unwrap().connected);
    for n in [n1, n2, n3, plain] {
        n.stop();
    }
}

#[test]
fn a_round_above_the_frame_limit_splits_into_frames() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let list = cluster_list(&ports);
    let small = PeerSettings {
        frame_bytes_max: 8192,
        ..settings()
    };
    let n1 = start_node(dir.path(), "test", 1, &list, None, small.clone());
    let n2 = start_node(dir.path(), "test", 2, &list, None, small);
    all_connected(&[&n1, &n2]);
    // 10 messages of 3000 bytes in one round: 2 per 8 KiB frame, so 5 frames.
    for g in 0..10u64 {
        n1.transport
            .send(2, g, Bytes::from(vec![g as u8; 3000]))
            .unwrap();
    }
    n1.transport.flush();
    let mut got = Vec::new();
    while got.len() < 10 {
        got.extend(recv(&n2.inbox).1);
    }
    // The sender counts a frame once its write completed, which may be after the receiver
    // has it: wait for the count, then check it is exactly 5.
    wait_until("the frames counted", || {
        n1.transport.link_stats(2).unwrap().frames_sent >= 5
    });
    assert_eq!(n1.transport.link_stats(2).unwrap().frames_sent, 5);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, (g, m))| *g == i as u64 && m.len() == 3000)
    );
    n1.stop();
    n2.stop();
}

/// Reads one peer frame from a blocking socket (bounded by its read timeout).
fn read_peer_frame(s: &mut std::net::TcpStream) -> Option<shardline_server::peer::frame::Frame> {
    use std::io::Read;
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(f)) = shardline_server::peer::frame::decode(&mut buf, 1 << 20) {
            return Some(f);
        }
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn kafka_addresses_travel_in_the_handshake_and_version_2_peers_are_still_spoken_to() {
    use shardline_server::peer::frame::{self, Frame, Hello, RefuseCode};
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let list = cluster_list(&ports);
    let with_kafka = |k: &str| PeerSettings {
        kafka_address: k.to_string(),
        advertised_address: "127.0.0.1:7070".into(),
        ..settings()
    };
    // Node 3 is played by hand: a version 2 node, which refuses version 3 Hellos.
    let fake = std::net::TcpListener::bind(("127.0.0.1", ports[2])).unwrap();
    let n1 = start_node(
        dir.path(),
        "test",
        1,
        &list,
        None,
        with_kafka("127.0.0.1:19092"),
    );
    let n2 = start_node(
        dir.path(),
        "test",
        2,
        &list,
        None,
        with_kafka("127.0.0.1:29092"),
    );
    all_connected(&[&n1, &n2]);
    assert_eq!(
        n1.transport.kafka_addresses(),
        vec![
            (1, "127.0.0.1:19092".to_string()),
            (2, "127.0.0.1:29092".to_string())
        ]
    );
    assert_eq!(
        n2.transport.kafka_addresses(),
        n1.transport.kafka_addresses()
    );
    assert_eq!(n1.transport.node_ids(), vec![1, 2, 3]);

    // Node 1 dials node 3: version 3 is refused by version, then it speaks version 2.
    let (versions, held) = play_version_2_node(&fake);
    assert_eq!(versions.first(), Some(&3), "{versions:?}");
    assert_eq!(versions.last(), Some(&2), "{versions:?}");
    wait_until("node 1's link to the version 2 node", || {
        n1.transport.link_stats(3).unwrap().connected
    });
    assert_eq!(n1.transport.kafka_addresses().len(), 2, "node 3 has none");

    // A version 2 Hello to node 1 is answered with a version 2 Welcome.
    let mut s = std::net::TcpStream::connect(n1.transport.listen_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = bytes::BytesMut::new();
    let hello = Hello {
        version: 2,
        node_id: 3,
        to_node_id: 1,
        cluster_id: "test".into(),
        client_address: "127.0.0.1:7003".into(),
        kafka_address: String::new(),
    };
    frame::encode_hello(&mut out, &hello);
    s.write_all(&out).unwrap();
    match read_peer_frame(&mut s) {
        Some(Frame::Welcome(w)) => {
            assert_eq!((w.version, w.node_id, w.kafka_address.as_str()), (2, 1, ""));
            assert_eq!(w.client_address, "127.0.0.1:7070");
        }
        other => panic!("{other:?}"),
    }
    // Version 1 is still refused.
    let mut s = std::net::TcpStream::connect(n1.transport.listen_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = bytes::BytesMut::new();
    frame::encode_hello(
        &mut out,
        &Hello {
            version: 1,
            ..hello
        },
    );
    s.write_all(&out).unwrap();
    assert!(matches!(
        read_peer_frame(&mut s),
        Some(Frame::Refuse {
            code: RefuseCode::Version,
            ..
        })
    ));
    drop(held);
    n1.stop();
    n2.stop();
}

/// Plays node 3 of version 2 on `fake`: refuses node 1's version 3 Hellos by version and
/// welcomes its version 2 Hello. Returns the versions node 1 sent and the accepted connection.
fn play_version_2_node(fake: &std::net::TcpListener) -> (Vec<u16>, Option<std::net::TcpStream>) {
    use shardline_server::peer::frame::{self, Frame, Hello, RefuseCode};
    use std::io::Write;
    let mut versions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (mut s, _) = fake.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let Some(Frame::Hello(h)) = read_peer_frame(&mut s) else {
            continue;
        };
        if h.node_id != 1 {
            continue; // node 2 dials node 3 too: not looked at here
        }
        versions.push(h.version);
        let mut out = bytes::BytesMut::new();
        if h.version == 3 {
            assert_eq!(h.kafka_address, "127.0.0.1:19092");
            frame::encode_refuse(&mut out, RefuseCode::Version, "version 3 is not supported");
            s.write_all(&out).unwrap();
            continue;
        }
        assert_eq!((h.version, h.kafka_address.as_str()), (2, ""));
        let welcome = Hello {
            version: 2,
            node_id: 3,
            to_node_id: 1,
            cluster_id: "test".into(),
            client_address: "127.0.0.1:7003".into(),
            kafka_address: String::new(),
        };
        frame::encode_welcome(&mut out, &welcome);
        s.write_all(&out).unwrap();
        return (versions, Some(s));
    }
    (versions, None)
}
