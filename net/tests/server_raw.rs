//! The server over a real loopback socket, spoken to with the raw codec (no client library):
//! handshake gating, topic admin, pipelined produce keeping per-partition order, fetch,
//! subscribe with credits (never more pushed than granted), and bad input (garbage, oversize
//! frames, unknown api) that closes or errors one connection while the server keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shardline_engine::EngineConfig;
use shardline_engine::batch;
use shardline_net::protocol::{
    DecoderConfig, FRAME_BYTES_MAX_DEFAULT, FrameBuf, FrameDecoder, FrameEncoder, Request,
    Response, ServerMessage, code, messages::*, supported_apis,
};
use shardline_net::server::{Server, ServerConfig};

fn start(dir: &std::path::Path) -> Server {
    let mut e = EngineConfig::with_data_dir(dir);
    e.shards = 2;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        idle_timeout_ms: 2000,
        ..ServerConfig::default()
    };
    Server::start(e, s).unwrap()
}

struct Raw {
    s: TcpStream,
    enc: FrameEncoder,
    dec: FrameDecoder,
    next: u32,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            enc: FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT).unwrap(),
            dec: FrameDecoder::new(DecoderConfig::default()).unwrap(),
            next: 1,
        }
    }

    fn send(&mut self, r: &Request) -> u32 {
        let cid = self.next;
        self.next += 1;
        let mut buf = FrameBuf::new();
        self.enc.request(&mut buf, cid, 0, r).unwrap();
        self.s.write_all(&buf).unwrap();
        cid
    }

    /// Next server message, or None when the server closed the connection.
    fn recv(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(f) = self.dec.next_frame_owned().unwrap() {
                return Some(ServerMessage::decode_owned(&f).unwrap());
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    self.dec.push(&tmp[..n]);
                }
            }
        }
    }

    fn call(&mut self, r: &Request) -> ServerMessage {
        let cid = self.send(r);
        loop {
            match self.recv().expect("connection closed") {
                ServerMessage::Response { correlation_id, .. }
                | ServerMessage::Error { correlation_id, .. }
                    if correlation_id != cid => {}
                m => return m,
            }
        }
    }

    fn handshake(&mut self) {
        let r = Request::Handshake(HandshakeRequest {
            client_id: "raw".into(),
            apis: supported_apis(),
        });
        assert!(matches!(
            self.call(&r),
            ServerMessage::Response {
                response: Response::Handshake(_),
                ..
            }
        ));
    }
}

fn produce(topic: &str, partition: u32, values: &[&str], acks: Acks) -> Request {
    let batch = batch::batch_of_values(values.iter().map(|v| v.as_bytes().to_vec())).unwrap();
    Request::Produce(ProduceRequest {
        acks,
        timeout_ms: 10_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition { partition, batch }],
        }],
    })
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn requests_before_handshake_are_refused_then_everything_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut c = Raw::connect(server.addr());
    match c.call(&Request::Ping(PingRequest { nonce: 7 })) {
        ServerMessage::Error { error, .. } => assert_eq!(error.code, code::HANDSHAKE_REQUIRED),
        m => panic!("{m:?}"),
    }
    c.handshake();
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "t".into(),
        config: TopicConfig {
            partitions: 3,
            ..TopicConfig::default()
        },
    });
    assert!(matches!(
        c.call(&create),
        ServerMessage::Response {
            response: Response::CreateTopic(_),
            ..
        }
    ));
    match c.call(&create) {
        ServerMessage::Error { error, .. } => assert_eq!(error.code, code::TOPIC_EXISTS),
        m => panic!("{m:?}"),
    }
    // Metadata: three partitions, a direct address per shard.
    match c.call(&Request::Metadata(MetadataRequest { topics: vec![] })) {
        ServerMessage::Response {
            response: Response::Metadata(m),
            ..
        } => {
            assert_eq!(m.shards.len(), 2);
            assert_eq!(m.topics[0].partition_shards.len(), 3);
        }
        m => panic!("{m:?}"),
    }
    // Pipelined produces to one partition: offsets follow the request order.
    let cids: Vec<u32> = (0..50)
        .map(|i| c.send(&produce("t", 1, &[&format!("m{i}")], Acks::Durable)))
        .collect();
    let mut base_by_cid = std::collections::HashMap::new();
    while base_by_cid.len() < cids.len() {
        match c.recv().unwrap() {
            ServerMessage::Response {
                correlation_id,
                response: Response::Produce(p),
            } => {
                let r = &p.topics[0].partitions[0];
                assert_eq!(r.error_code, code::NONE, "{r:?}");
                base_by_cid.insert(correlation_id, r.base_offset);
            }
            m => panic!("{m:?}"),
        }
    }
    for (i, cid) in cids.iter().enumerate() {
        assert_eq!(
            base_by_cid[cid], i as u64,
            "per-partition order follows request order"
        );
    }
    // Unknown topic is a per-partition error, the connection stays usable.
    match c.call(&produce("nope", 0, &["x"], Acks::Leader)) {
        ServerMessage::Response {
            response: Response::Produce(p),
            ..
        } => {
            assert_eq!(p.topics[0].partitions[0].error_code, code::UNKNOWN_TOPIC)
        }
        m => panic!("{m:?}"),
    }
    // Fetch everything back.
    let fetch = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: "t".into(),
            partitions: vec![FetchPartition {
                partition: 1,
                offset: 0,
                max_bytes: 1 << 20,
                max_records: 0,
            }],
        }],
        isolation: Default::default(),
    });
    match c.call(&fetch) {
        ServerMessage::Response {
            response: Response::Fetch(f),
            ..
        } => {
            let p = &f.topics[0].partitions[0];
            assert_eq!(p.high_watermark, 50);
            let mut values = Vec::new();
            for ch in &p.chunks {
                for b in batch::split_batches(ch).unwrap() {
                    values.extend(batch::decode(b).unwrap().1.into_iter().map(|r| r.value));
                }
            }
            assert_eq!(values.len(), 50);
            assert_eq!(values[7], b"m7".to_vec());
        }
        m => panic!("{m:?}"),
    }
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn subscriptions_push_within_credit_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut c = Raw::connect(server.addr());
    c.handshake();
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "s".into(),
        config: TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    });
    c.call(&create);
    for i in 0..10 {
        c.call(&produce(
            "s",
            0,
            &[&format!("a{i}"), &format!("b{i}")],
            Acks::Leader,
        ));
    }
    let sub = Request::Subscribe(SubscribeRequest {
        topic: "s".into(),
        partition: 0,
        start: OffsetSpec::Earliest,
        credit_records: 4,
        credit_bytes: 1 << 20,
        isolation: Default::default(),
    });
    let id = match c.call(&sub) {
        ServerMessage::Response {
            response: Response::Subscribe(s),
            ..
        } => s.subscription_id,
        m => panic!("{m:?}"),
    };
    let mut got = 0u64;
    let mut next_expected = 0;
    // Receive what the initial credit allows: exactly 4 records (two 2-record batches).
    while got < 4 {
        match c.recv().unwrap() {
            ServerMessage::Push(p) => {
                assert_eq!(p.subscription_id, id);
                got += u64::from(p.records);
                next_expected = p.next_offset;
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(got, 4);
    // No more arrive without a grant.
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        c.recv().is_none(),
        "nothing may be pushed beyond the granted credit"
    );
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.dec = FrameDecoder::new(DecoderConfig::default()).unwrap();
    c.send(&Request::GrantCredits(GrantCreditsRequest {
        subscription_id: id,
        records: 16,
        bytes: 1 << 20,
    }));
    while got < 20 {
        match c.recv().unwrap() {
            ServerMessage::Push(p) => {
                got += u64::from(p.records);
                assert!(p.next_offset > next_expected);
                next_expected = p.next_offset;
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(next_expected, 20);
    drop(c);
    server.shutdown().unwrap();
}

#[test]
fn garbage_oversize_and_idle_clients_do_not_hurt_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut good = Raw::connect(server.addr());
    good.handshake();
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "g".into(),
        config: TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    });
    assert!(matches!(good.call(&create), ServerMessage::Response { .. }));
    // Oversize frame header: refused with an error, then closed, before any body is sent.
    let mut big = Raw::connect(server.addr());
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    big.s.write_all(&h).unwrap();
    match big.recv() {
        Some(ServerMessage::Error { error, .. }) => assert_eq!(error.code, code::FRAME_TOO_LARGE),
        m => panic!("{m:?}"),
    }
    assert!(big.recv().is_none(), "closed after a fatal error");
    // Random garbage on many connections (bounded: 200 connections x 4 KiB).
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..200 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = s.write_all(&bytes);
    }
    // A silent client is closed by the idle timeout (2 s here).
    // The good client pings meanwhile, so only the silent one is idle.
    let mut idle = Raw::connect(server.addr());
    idle.s
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut closed = false;
    for _ in 0..40 {
        let mut tmp = [0u8; 4096];
        match idle.s.read(&mut tmp) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {} // the idle-timeout error frame; EOF follows
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        assert!(matches!(
            good.call(&Request::Ping(PingRequest { nonce: 1 })),
            ServerMessage::Response { .. }
        ));
    }
    assert!(closed, "a silent client is closed by the idle timeout");
    // The well-behaved client still works.
    match good.call(&produce("g", 0, &["still", "here"], Acks::Durable)) {
        ServerMessage::Response {
            response: Response::Produce(p),
            ..
        } => assert_eq!(p.topics[0].partitions[0].error_code, code::NONE),
        m => panic!("{m:?}"),
    }
    drop(good);
    server.shutdown().unwrap();
}

/// 10,000 random or mutated frames over 100 connections (mutations of valid Handshake, Produce,
/// Fetch and Subscribe frames: flipped bytes, truncations, wrong lengths and api keys), then a
/// well-behaved client still produces and consumes correctly and the server is alive.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn ten_thousand_bad_frames_then_a_good_client_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut setup = Raw::connect(server.addr());
    setup.handshake();
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "f".into(),
        config: TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        },
    });
    assert!(matches!(
        setup.call(&create),
        ServerMessage::Response { .. }
    ));
    // Valid frames to mutate.
    let mut enc = FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT).unwrap();
    let mut templates: Vec<Vec<u8>> = Vec::new();
    let reqs = [
        Request::Handshake(HandshakeRequest {
            client_id: "fuzz".into(),
            apis: supported_apis(),
        }),
        produce("f", 0, &["a", "bb", "ccc"], Acks::Durable),
        Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "f".into(),
                partitions: vec![FetchPartition {
                    partition: 1,
                    offset: 0,
                    max_bytes: 4096,
                    max_records: 0,
                }],
            }],
            isolation: Default::default(),
        }),
        Request::Subscribe(SubscribeRequest {
            topic: "f".into(),
            partition: 0,
            start: OffsetSpec::Earliest,
            credit_records: 10,
            credit_bytes: 4096,
            isolation: Default::default(),
        }),
    ];
    for r in &reqs {
        let mut b = FrameBuf::new();
        enc.request(&mut b, 9, 0, r).unwrap();
        templates.push(b.to_vec());
    }
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut frames_sent = 0;
    for conn in 0..100 {
        let Ok(mut s) = TcpStream::connect(server.addr()) else {
            continue;
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // Half the connections start with a valid handshake so mutations reach the payload
        // decoders instead of stopping at the handshake gate.
        if conn % 2 == 0 {
            let _ = s.write_all(&templates[0]);
        }
        let mut out = Vec::new();
        for _ in 0..100 {
            let t = &templates[(rnd() % templates.len() as u64) as usize];
            let mut f = t.clone();
            match rnd() % 5 {
                0 => {
                    for _ in 0..1 + rnd() % 8 {
                        let at = (rnd() as usize) % f.len();
                        f[at] ^= 1 << (rnd() % 8);
                    }
                }
                1 => f.truncate((rnd() as usize) % f.len()),
                2 => f[0..4].copy_from_slice(&((rnd() % (1 << 24)) as u32).to_le_bytes()),
                3 => f[4..6].copy_from_slice(&((rnd() % 300) as u16).to_le_bytes()),
                _ => f = (0..(rnd() % 256)).map(|_| rnd() as u8).collect(),
            }
            out.extend_from_slice(&f);
            frames_sent += 1;
        }
        let _ = s.write_all(&out);
        // Read whatever comes back (errors, maybe responses) without waiting long.
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut sink = [0u8; 65536];
        let _ = s.read(&mut sink);
    }
    assert_eq!(frames_sent, 10_000);
    // The well-behaved client: produce 200 records over 2 partitions, then read them all back.
    let mut good = Raw::connect(server.addr());
    good.handshake();
    for i in 0..100 {
        for p in 0..2 {
            match good.call(&produce("f", p, &[&format!("p{p}-{i}")], Acks::Durable)) {
                ServerMessage::Response {
                    response: Response::Produce(r),
                    ..
                } => {
                    assert_eq!(r.topics[0].partitions[0].error_code, code::NONE)
                }
                m => panic!("{m:?}"),
            }
        }
    }
    for p in 0..2u32 {
        let fetch = Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "f".into(),
                partitions: vec![FetchPartition {
                    partition: p,
                    offset: 0,
                    max_bytes: 1 << 20,
                    max_records: 0,
                }],
            }],
            isolation: Default::default(),
        });
        match good.call(&fetch) {
            ServerMessage::Response {
                response: Response::Fetch(f),
                ..
            } => {
                let r = &f.topics[0].partitions[0];
                let mut ours = Vec::new();
                for ch in &r.chunks {
                    for b in batch::split_batches(ch).unwrap() {
                        for rec in batch::decode(b).unwrap().1 {
                            if rec.value.starts_with(format!("p{p}-").as_bytes()) {
                                ours.push(String::from_utf8(rec.value).unwrap());
                            }
                        }
                    }
                }
                let want: Vec<String> = (0..100).map(|i| format!("p{p}-{i}")).collect();
                assert_eq!(ours, want, "the good client's records, in order");
            }
            m => panic!("{m:?}"),
        }
    }
    drop(good);
    server.shutdown().unwrap();
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A subscriber with unlimited credit that never reads: the server's memory for it stays
/// bounded (outbox limit + two engine read-aheads + socket buffers), and other clients keep
/// producing and fetching.
#[test]
fn a_client_that_stops_reading_holds_bounded_memory_and_hurts_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = EngineConfig::with_data_dir(dir.path());
    e.shards = 1;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        outbox_bytes_max: 4 << 20,
        ..ServerConfig::default()
    };
    let server = Server::start(e, s).unwrap();
    let mut good = Raw::connect(server.addr());
    good.handshake();
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "big".into(),
        config: TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    });
    assert!(matches!(good.call(&create), ServerMessage::Response { .. }));
    let mut slow = Raw::connect(server.addr());
    slow.handshake();
    let sub = Request::Subscribe(SubscribeRequest {
        topic: "big".into(),
        partition: 0,
        start: OffsetSpec::Earliest,
        credit_records: u32::MAX,
        credit_bytes: u64::MAX / 2,
        isolation: Default::default(),
    });
    assert!(matches!(slow.call(&sub), ServerMessage::Response { .. }));
    // From here on `slow` reads nothing. Produce 96 MiB in 1 MiB batches.
    let value = vec![0xabu8; (1 << 20) - 256];
    let rss_before = rss_bytes();
    for _ in 0..96 {
        let batch = batch::batch_of_values([value.clone()]).unwrap();
        let req = Request::Produce(ProduceRequest {
            acks: Acks::Durable,
            timeout_ms: 30_000,
            topics: vec![ProduceTopic {
                name: "big".into(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    batch,
                }],
            }],
        });
        match good.call(&req) {
            ServerMessage::Response {
                response: Response::Produce(p),
                ..
            } => assert_eq!(p.topics[0].partitions[0].error_code, code::NONE),
            m => panic!("{m:?}"),
        }
    }
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "memory grew by {} MiB for a stalled reader",
        grown >> 20
    );
    // The good client still fetches (from disk: the slow one's data is long out of the cache).
    let fetch = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        max_bytes: 2 << 20,
        topics: vec![FetchTopic {
            name: "big".into(),
            partitions: vec![FetchPartition {
                partition: 0,
                offset: 3,
                max_bytes: 2 << 20,
                max_records: 1,
            }],
        }],
        isolation: Default::default(),
    });
    match good.call(&fetch) {
        ServerMessage::Response {
            response: Response::Fetch(f),
            ..
        } => {
            let p = &f.topics[0].partitions[0];
            assert_eq!(p.error_code, code::NONE);
            assert_eq!(p.high_watermark, 96);
            assert!(!p.chunks.is_empty());
        }
        m => panic!("{m:?}"),
    }
    drop(slow);
    drop(good);
    server.shutdown().unwrap();
}

/// Beyond `connections_max`, a new connection gets LIMIT_EXCEEDED and is closed; once one
/// closes, a new one is accepted again.
#[test]
fn connections_beyond_the_limit_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = EngineConfig::with_data_dir(dir.path());
    e.shards = 1;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        connections_max: 3,
        ..ServerConfig::default()
    };
    let server = Server::start(e, s).unwrap();
    let mut open: Vec<Raw> = (0..3).map(|_| Raw::connect(server.addr())).collect();
    for c in &mut open {
        c.handshake();
    }
    let mut extra = Raw::connect(server.addr());
    match extra.recv() {
        Some(ServerMessage::Error { error, .. }) => assert_eq!(error.code, code::LIMIT_EXCEEDED),
        m => panic!("{m:?}"),
    }
    assert!(extra.recv().is_none(), "refused connections are closed");
    drop(open.pop());
    // The server notices the close asynchronously: retry briefly (bounded).
    let mut accepted = false;
    for _ in 0..50 {
        let mut c = Raw::connect(server.addr());
        let r = Request::Handshake(HandshakeRequest {
            client_id: "again".into(),
            apis: supported_apis(),
        });
        if let ServerMessage::Response { .. } = c.call_or_closed(&r) {
            accepted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(accepted, "a slot freed by a closed connection is reused");
    drop(open);
    server.shutdown().unwrap();
}

impl Raw {
    /// Like `call`, but a closed connection answers as an Error message with code 0.
    fn call_or_closed(&mut self, r: &Request) -> ServerMessage {
        let cid = self.send(r);
        loop {
            match self.recv() {
                None => {
                    return ServerMessage::Error {
                        correlation_id: cid,
                        api_key: 0,
                        error: ErrorResponse {
                            code: 0,
                            message: "closed".into(),
                        },
                    };
                }
                Some(ServerMessage::Response { correlation_id, .. }) if correlation_id != cid => {}
                Some(m) => return m,
            }
        }
    }
}
