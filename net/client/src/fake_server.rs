//! The client against a scripted fake server (threads, loopback TCP, the real codec): proves the
//! connection layer (handshake, pipelined replies by correlation id, deadlines, connection
//! loss), the producer (batching, offsets in order, retries only on retriable codes) and the
//! consumer (pushes, skipping records below the start, credits granted back, fetch) without the
//! real broker. The fake keeps partitions as in-memory lists of batches; `Script` injects
//! failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use shardline_format as batch;

use super::*;
use crate::protocol::{
    CreateTopicResponse, DecoderConfig, FetchPartitionResult, FetchResponse, FetchTopicResult,
    FrameBuf, FrameDecoder, FrameEncoder, HandshakeResponse, ListOffsetsPartitionResult,
    ListOffsetsResponse, ListOffsetsTopicResult, MetadataResponse, PingResponse,
    ProducePartitionResult, ProduceResponse, ProduceTopicResult, Push, Request, Response,
    ShardAddress, SubscribeResponse, TopicMetadata, UnsubscribeResponse, negotiate, supported_apis,
};

/// Failures the fake server injects.
#[derive(Default)]
struct Script {
    /// Answer this many Produce partitions with this code before accepting.
    produce_failures: Vec<u16>,
    /// Never answer Ping.
    swallow_pings: bool,
    /// Close the connection on the next Ping.
    close_on_ping: bool,
    /// Close the connection right after the next reply (the client sees it while idle).
    close_after_reply: bool,
}

#[derive(Default)]
struct FakeState {
    topics: HashMap<String, Vec<Vec<Bytes>>>,
    script: Script,
    grants: Vec<(u32, u32, u64)>,
    produce_requests: usize,
}

struct Fake {
    addr: String,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let s = Arc::clone(&state);
        let a = addr.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let s = Arc::clone(&s);
                let a = a.clone();
                thread::spawn(move || serve(stream, &s, &a));
            }
        });
        Fake { addr, state }
    }

    fn client(&self) -> Client {
        let config = ClientConfig {
            request_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        Client::connect(&self.addr, config).unwrap()
    }

    fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state.lock().unwrap().script);
    }
}

fn next_offset(log: &[Bytes]) -> u64 {
    log.last()
        .map_or(0, |b| batch::BatchHeader::parse(b).unwrap().next_offset())
}

enum Answer {
    Reply(Response),
    Error(u16),
    Silence,
    Close,
}

fn serve(mut stream: TcpStream, state: &Mutex<FakeState>, addr: &str) {
    let mut decoder = FrameDecoder::new(DecoderConfig::default()).unwrap();
    let mut encoder = FrameEncoder::default();
    let mut out = FrameBuf::new();
    let mut next_subscription = 1u32;
    loop {
        let n = match stream.read(decoder.read_buf()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.filled(n);
        while let Some(frame) = decoder.next_frame_owned().unwrap() {
            let h = frame.header;
            let request = Request::decode_owned_frame(&frame).unwrap();
            let mut push = None;
            // Taken with the request (not after the reply is written: the client may have read
            // that reply and scripted the next close before this thread looks again).
            let (answer, close) = {
                let mut st = state.lock().unwrap();
                let close = std::mem::take(&mut st.script.close_after_reply);
                let a = answer(&mut st, request, addr, &mut next_subscription, &mut push);
                (a, close)
            };
            out.clear();
            match answer {
                Answer::Reply(r) => {
                    encoder
                        .response(&mut out, h.correlation_id, h.api_version, &r)
                        .unwrap();
                }
                Answer::Error(code) => {
                    let e = crate::protocol::ErrorResponse::new(code, "scripted");
                    encoder
                        .error(&mut out, h.correlation_id, h.api_key, 0, &e)
                        .unwrap();
                }
                Answer::Silence => {}
                Answer::Close => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
            if let Some(p) = push {
                encoder.push(&mut out, 0, &p).unwrap();
            }
            if stream.write_all(&out).is_err() {
                return;
            }
            if close {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "test double: one scripted answer per api"
)]
fn answer(
    st: &mut FakeState,
    request: Request,
    addr: &str,
    next_subscription: &mut u32,
    push: &mut Option<Push>,
) -> Answer {
    let topic_meta = |st: &FakeState, name: &str| match st.topics.get(name) {
        Some(parts) => TopicMetadata {
            name: name.to_string(),
            error_code: code::NONE,
            topic_id: 1,
            partition_shards: vec![0; parts.len()],
        },
        None => TopicMetadata {
            name: name.to_string(),
            error_code: code::UNKNOWN_TOPIC,
            ..Default::default()
        },
    };
    let r = match request {
        Request::Handshake(h) => Response::Handshake(HandshakeResponse {
            server_id: "fake".into(),
            apis: negotiate(&supported_apis(), &h.apis),
            frame_bytes_max: 16 << 20,
            shard: 0,
            shard_count: 1,
        }),
        Request::Ping(p) => {
            if st.script.close_on_ping {
                st.script.close_on_ping = false;
                return Answer::Close;
            }
            if st.script.swallow_pings {
                return Answer::Silence;
            }
            Response::Ping(PingResponse { nonce: p.nonce })
        }
        Request::Metadata(m) => Response::Metadata(MetadataResponse {
            shards: vec![ShardAddress {
                shard: 0,
                address: addr.to_string(),
            }],
            topics: m.topics.iter().map(|t| topic_meta(st, t)).collect(),
        }),
        Request::CreateTopic(c) => {
            if st.topics.contains_key(&c.name) {
                return Answer::Error(code::TOPIC_EXISTS);
            }
            let n = c.config.partitions as usize;
            st.topics.insert(c.name.clone(), vec![Vec::new(); n]);
            Response::CreateTopic(CreateTopicResponse {
                topic: TopicInfo {
                    name: c.name,
                    topic_id: 1,
                    config: c.config,
                    partition_shards: vec![0; n],
                },
            })
        }
        Request::Produce(p) => {
            st.produce_requests += 1;
            let mut topics = Vec::new();
            for t in p.topics {
                let mut results = Vec::new();
                for part in t.partitions {
                    if !st.script.produce_failures.is_empty() {
                        let error_code = st.script.produce_failures.remove(0);
                        results.push(ProducePartitionResult {
                            partition: part.partition,
                            error_code,
                            error_message: Some("scripted".into()),
                            ..Default::default()
                        });
                        continue;
                    }
                    let log = &mut st.topics.get_mut(&t.name).unwrap()[part.partition as usize];
                    let base = next_offset(log);
                    let mut bytes = part.batch.to_vec();
                    batch::set_base_offset(&mut bytes, base);
                    let h = batch::validate(&bytes).unwrap();
                    log.push(Bytes::from(bytes));
                    results.push(ProducePartitionResult {
                        partition: part.partition,
                        error_code: code::NONE,
                        base_offset: base,
                        last_offset: h.last_offset(),
                        error_message: None,
                    });
                }
                topics.push(ProduceTopicResult {
                    name: t.name,
                    partitions: results,
                });
            }
            if p.acks == Acks::None {
                return Answer::Silence;
            }
            Response::Produce(ProduceResponse { topics })
        }
        Request::Fetch(f) => {
            let mut topics = Vec::new();
            for t in f.topics {
                let mut partitions = Vec::new();
                for fp in t.partitions {
                    let log = &st.topics[&t.name][fp.partition as usize];
                    let chunks: Vec<Bytes> = log
                        .iter()
                        .filter(|b| batch::BatchHeader::parse(b).unwrap().next_offset() > fp.offset)
                        .cloned()
                        .collect();
                    let end = next_offset(log);
                    partitions.push(FetchPartitionResult {
                        partition: fp.partition,
                        high_watermark: end,
                        next_offset: end.max(fp.offset),
                        records: u32::try_from(end.saturating_sub(fp.offset)).unwrap(),
                        chunks,
                        ..Default::default()
                    });
                }
                topics.push(FetchTopicResult {
                    name: t.name,
                    partitions,
                });
            }
            Response::Fetch(FetchResponse { topics })
        }
        Request::ListOffsets(l) => Response::ListOffsets(ListOffsetsResponse {
            topics: l
                .topics
                .into_iter()
                .map(|t| ListOffsetsTopicResult {
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| ListOffsetsPartitionResult {
                            partition: p.partition,
                            error_code: code::NONE,
                            error_message: None,
                            offset: next_offset(&st.topics[&t.name][p.partition as usize]),
                        })
                        .collect(),
                    name: t.name,
                })
                .collect(),
        }),
        Request::Subscribe(s) => {
            let Some(parts) = st.topics.get(&s.topic) else {
                return Answer::Error(code::UNKNOWN_TOPIC);
            };
            let log = &parts[s.partition as usize];
            let end = next_offset(log);
            let start = match s.start {
                OffsetSpec::Earliest => 0,
                OffsetSpec::At(o) => o,
                _ => end,
            };
            let id = *next_subscription;
            *next_subscription += 1;
            let chunks: Vec<Bytes> = log
                .iter()
                .filter(|b| batch::BatchHeader::parse(b).unwrap().next_offset() > start)
                .cloned()
                .collect();
            if !chunks.is_empty() {
                *push = Some(Push {
                    subscription_id: id,
                    records: u32::try_from(end - start).unwrap(),
                    next_offset: end,
                    high_watermark: end,
                    log_start: 0,
                    chunks,
                });
            }
            Response::Subscribe(SubscribeResponse {
                subscription_id: id,
                start_offset: start,
                high_watermark: end,
                log_start: 0,
            })
        }
        Request::GrantCredits(g) => {
            st.grants.push((g.subscription_id, g.records, g.bytes));
            return Answer::Silence;
        }
        Request::Unsubscribe(u) => Response::Unsubscribe(UnsubscribeResponse {
            subscription_id: u.subscription_id,
            next_offset: 0,
        }),
        _ => return Answer::Error(code::UNKNOWN_API),
    };
    Answer::Reply(r)
}

fn topic(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        ..TopicConfig::default()
    }
}

#[test]
fn admin_calls_and_unknown_topics_come_back_typed() {
    let fake = Fake::start();
    let client = fake.client();
    assert_eq!(client.server_id().as_deref(), Some("fake"));
    client.ping().unwrap();
    let t = client.create_topic("orders", topic(3)).unwrap();
    assert_eq!(t.partition_shards.len(), 3);
    let e = client.create_topic("orders", topic(3)).unwrap_err();
    assert_eq!(e.code(), Some(code::TOPIC_EXISTS), "{e}");
    assert_eq!(client.partitions("orders").unwrap(), 3);
    let e = client.partitions("nope").unwrap_err();
    assert_eq!(e.code(), Some(code::UNKNOWN_TOPIC), "{e}");
    let e = client.stats().unwrap_err();
    assert_eq!(e.code(), Some(code::UNKNOWN_API), "the fake has no Stats");
}

#[test]
fn producer_delivers_offsets_in_send_order_and_fetch_reads_them_back() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(2)).unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default()).unwrap();
    let handles: Vec<_> = (0..200)
        .map(|i| producer.send("t", Some(b"same-key"), format!("v{i}"), vec![]))
        .collect();
    let deliveries: Vec<Delivery> = handles.into_iter().map(|h| h.wait().unwrap()).collect();
    let partition = partition_for_key(b"same-key", 2);
    for (i, d) in deliveries.iter().enumerate() {
        assert_eq!(d.partition, partition);
        assert_eq!(
            d.offset,
            Some(i as u64),
            "one key, one partition, offsets in order"
        );
    }
    assert!(
        fake.state.lock().unwrap().produce_requests < 200,
        "records were batched"
    );
    producer.close().unwrap();
    let consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    let fetched = consumer
        .fetch("t", partition, 150, Duration::from_millis(10))
        .unwrap();
    let values: Vec<String> = fetched
        .records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .collect();
    assert_eq!(
        values.first().map(String::as_str),
        Some("v150"),
        "skips below 150"
    );
    assert_eq!(values.len(), 50);
    assert_eq!(fetched.next_offset, 200);
}

#[test]
fn keyless_records_spread_and_unknown_topics_fail_their_handles() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(4)).unwrap();
    let config = ProducerConfig {
        batch_bytes_max: 1024,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).unwrap();
    let handles: Vec<_> = (0..100)
        .map(|_| producer.send("t", None, vec![0u8; 100], vec![]))
        .collect();
    let mut partitions: Vec<u32> = handles
        .into_iter()
        .map(|h| h.wait().unwrap().partition)
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    assert_eq!(
        partitions,
        [0, 1, 2, 3],
        "round-robin per batch reaches every partition"
    );
    let e = producer
        .send("missing", None, "x", vec![])
        .wait()
        .unwrap_err();
    assert_eq!(e.code(), Some(code::UNKNOWN_TOPIC));
    let e = producer
        .send_record(ProducerRecord::new("t", "x").partition(9))
        .wait()
        .unwrap_err();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    producer.flush().unwrap();
}

#[test]
fn retriable_codes_are_retried_and_others_are_not() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let config = ProducerConfig {
        retries_max: 3,
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).unwrap();
    fake.script(|s| s.produce_failures = vec![code::BUSY, code::DISK_FULL]);
    let d = producer.send("t", None, "a", vec![]).wait().unwrap();
    assert_eq!(d.offset, Some(0), "delivered after two retriable failures");
    fake.script(|s| s.produce_failures = vec![code::CORRUPT_BATCH]);
    let e = producer.send("t", None, "b", vec![]).wait().unwrap_err();
    assert_eq!(
        e.code(),
        Some(code::CORRUPT_BATCH),
        "not retriable: reported at once"
    );
    fake.script(|s| s.produce_failures = vec![code::BUSY; 4]);
    let e = producer.send("t", None, "c", vec![]).wait().unwrap_err();
    assert_eq!(e.code(), Some(code::BUSY), "gives up after retries_max");
    let d = producer.send("t", None, "d", vec![]).wait().unwrap();
    assert_eq!(d.offset, Some(1));
    // The server's TIMEOUT means "appended, not durable in time": resending could duplicate.
    fake.script(|s| s.produce_failures = vec![code::TIMEOUT]);
    let e = producer.send("t", None, "e", vec![]).wait().unwrap_err();
    assert_eq!(
        e.code(),
        Some(code::TIMEOUT),
        "a plain producer does not resend"
    );
    let d = producer.send("t", None, "f", vec![]).wait().unwrap();
    assert_eq!(d.offset, Some(2), "the TIMEOUT attempt was not retried");
}

#[test]
fn a_request_without_answer_times_out_and_a_lost_connection_is_replaced() {
    let fake = Fake::start();
    let client = fake.client();
    fake.script(|s| s.swallow_pings = true);
    let e = client.ping().unwrap_err();
    assert!(matches!(e, ClientError::Timeout { api: "Ping", .. }), "{e}");
    fake.script(|s| {
        s.swallow_pings = false;
        s.close_on_ping = true;
    });
    let e = client.ping().unwrap_err();
    assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e}");
    client.ping().expect("a new bootstrap connection");
}

#[test]
fn a_blocked_caller_reads_its_own_replies_and_keeps_its_deadline() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let conn = crate::conn::block_on(client.bootstrap()).unwrap();
    let before = conn.caller_read_replies();
    for i in 0..20u64 {
        client.ping().unwrap();
        let b = batch::batch_of_values([format!("{i}")]).unwrap();
        let ack = client.produce("t", 0, b, Acks::Leader).unwrap().unwrap();
        assert_eq!(ack.base_offset, i);
    }
    // A closed loop on a plain-TCP connection: the calls read their replies themselves (the
    // reader thread takes over only after an idle gap, which a loaded machine may cause).
    let read_by_callers = conn.caller_read_replies() - before;
    assert!(
        read_by_callers >= 10,
        "{read_by_callers} of 40 replies read by their callers"
    );
    // A reading caller still fails at its deadline (request_timeout 500 ms; reads are sliced).
    fake.script(|s| s.swallow_pings = true);
    let started = std::time::Instant::now();
    let e = client.ping().unwrap_err();
    assert!(matches!(e, ClientError::Timeout { api: "Ping", .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The connection survives the timeout: the next call (read by the caller) works.
    fake.script(|s| s.swallow_pings = false);
    client.ping().unwrap();
    assert!(!conn.is_closed());
    // A server closing the connection while it is idle after a caller read its reply: the
    // reader thread notices after its linger, without any request.
    fake.script(|s| s.close_after_reply = true);
    client.ping().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !conn.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "idle close never noticed"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pipelined_calls_from_many_threads_get_their_own_replies() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let c = client.clone();
            thread::spawn(move || {
                for _ in 0..50 {
                    c.ping().unwrap();
                    let b = batch::batch_of_values([format!("{i}")]).unwrap();
                    c.produce("t", 0, b, Acks::Leader).unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        client.list_offsets("t", 0, OffsetSpec::Latest).unwrap(),
        400
    );
}

#[test]
fn subscriptions_skip_below_the_start_and_grant_credit_back() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    client
        .produce(
            "t",
            0,
            batch::batch_of_values(values).unwrap(),
            Acks::Durable,
        )
        .unwrap();
    let config = ConsumerConfig {
        credit_records: 8,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, config).unwrap();
    let info = consumer.subscribe("t", 0, OffsetSpec::At(4)).unwrap();
    assert_eq!(info.start_offset, 4);
    let mut got = Vec::new();
    while let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
        got.push((r.offset, String::from_utf8(r.value).unwrap()));
    }
    assert_eq!(
        got.first(),
        Some(&(4, "v4".to_string())),
        "batch starts at 0: skipped"
    );
    assert_eq!(got.len(), 6);
    // 6 records consumed of a window of 8: past half, so one grant of exactly that.
    let grants = fake.state.lock().unwrap().grants.clone();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!((grants[0].1, grants[0].2 > 0), (6, true));
    assert_eq!(consumer.assignment(), [("t".to_string(), 0, 10)]);
    assert_eq!(consumer.unsubscribe("t", 0).unwrap(), 0);
    assert!(
        consumer.poll(Duration::ZERO).is_err(),
        "no subscriptions left"
    );
}

#[test]
fn acks_none_resolves_without_offsets() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let config = ProducerConfig {
        acks: Acks::None,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), config).unwrap();
    let d = producer.send("t", None, "x", vec![]).wait().unwrap();
    assert_eq!(d.offset, None);
    producer.close().unwrap();
    // The fake answers nothing for acks = none; a later request on the connection still works.
    assert_eq!(client.list_offsets("t", 0, OffsetSpec::Latest).unwrap(), 1);
}

// Issue 16, finding 7: a batch is not retried past its delivery timeout, however many retries
// `retries_max` still allows; it fails with its last error.
#[test]
fn retries_stop_at_the_delivery_timeout() {
    let fake = Fake::start();
    let client = fake.client();
    client.create_topic("t", topic(1)).unwrap();
    let config = ProducerConfig {
        retries_max: 1_000_000,
        delivery_timeout: Some(Duration::from_millis(300)),
        backoff: Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).unwrap();
    fake.script(|s| s.produce_failures = vec![code::BUSY; 100_000]);
    let started = std::time::Instant::now();
    let e = producer.send("t", None, "x", vec![]).wait().unwrap_err();
    assert_eq!(e.code(), Some(code::BUSY));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
