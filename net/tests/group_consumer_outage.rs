//! Regression: a group member whose server is unreachable for longer than its few quick
//! resubscription attempts must resume its partitions once the server answers again. It used to
//! drop the ended subscriptions while still owning the partitions, so every later poll failed
//! with "the consumer has no subscriptions" (or, with other partitions still live, the dropped
//! ones were never consumed again). Found by the torture harness (docs/reliability.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_engine::batch;
use shardline_net::client::{
    Acks, Client, ClientConfig, GroupConsumer, GroupConsumerConfig, OffsetSpec, TopicConfig,
};
use shardline_net::server::ServerConfig;

/// A loopback proxy that can be taken down (every connection cut, new ones closed at once) and
/// brought back.
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (up2, sockets2) = (up.clone(), sockets.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if !up2.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let server = TcpStream::connect(&target).unwrap();
                let mut all = sockets2.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || pump(from, to));
                }
            }
        });
        Proxy { addr, up, sockets }
    }

    fn down(&self) {
        self.up.store(false, Ordering::Release);
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::Release);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn produce(c: &Client, from: u64, n: u64) {
    let values = (from..from + n).map(|i| format!("m{i}"));
    c.produce(
        "t",
        0,
        batch::batch_of_values(values).unwrap(),
        Acks::Durable,
    )
    .unwrap();
}

#[test]
fn a_group_member_resumes_its_partitions_after_an_outage_longer_than_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), ServerConfig::default());
    let direct = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    direct
        .create_topic(
            "t",
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    produce(&direct, 0, 10);
    let proxy = Proxy::start(server.addr().to_string());
    let via_proxy = Client::connect(
        &proxy.addr,
        ClientConfig {
            shard_aware: false,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let mut cfg = GroupConsumerConfig::new("g", "t");
    cfg.reset = OffsetSpec::Earliest;
    cfg.session_timeout = Duration::from_secs(30);
    let mut member = GroupConsumer::new(via_proxy, cfg).unwrap();
    let mut next = 0u64;
    // Errors while the connections come back (a commit on a cut connection) are fine; being
    // stuck is not.
    let mut take = |member: &mut GroupConsumer, until: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last_error = None;
        while next < until {
            assert!(
                Instant::now() < deadline,
                "stuck at offset {next}; last error: {last_error:?}"
            );
            match member.poll(Duration::from_millis(100)) {
                Ok(Some(r)) => {
                    assert_eq!(r.offset, next, "in order, without gaps");
                    assert_eq!(r.value, format!("m{next}").into_bytes());
                    next += 1;
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
        }
    };
    take(&mut member, 10);
    // The outage: the subscription ends and its quick resubscriptions fail.
    proxy.down();
    for _ in 0..10 {
        let _ = member.poll(Duration::from_millis(50));
    }
    proxy.up();
    produce(&direct, 10, 10);
    take(&mut member, 20);
    drop(server);
}
