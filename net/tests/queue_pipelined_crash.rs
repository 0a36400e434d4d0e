//! Pipelined acks and group commit of the ack log across a crash, against the real `shardline`
//! binary on 127.0.0.1 (docs/semantics.md, "Work queues"): four consumers receive one message at
//! a time and pipeline their acks (`Client::queue_ack_start`, answers collected later) while
//! the server is SIGKILLed mid-stream. After the restart no message is lost and none is acked
//! twice: a message whose ack was answered before the crash never comes back; one whose ack was
//! sent but not answered either comes back or stays done (its ack reached the disk); every
//! other message comes back, and each that comes back is acked once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use shardline_engine::batch::{BatchBuilder, now_us};
use shardline_net::client::{
    Acks, Client, ClientConfig, PendingAck, QueueConsumer, QueueConsumerConfig, QueueReceipt,
    QueueSettings, TopicConfig, all_ok,
};

#[path = "common/spawn.rs"]
mod spawn;

use spawn::ServerProc;

const PARTITIONS: u32 = 2;
const PER_PARTITION: u64 = 1500;

/// The clients' configuration: a 10 s request timeout.
fn config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// (partition, offset) of a message.
type Id = (u32, u64);

#[test]
#[allow(clippy::too_many_lines, reason = "one crash scenario, told in order")]
fn pipelined_acks_across_sigkill_are_kept_or_redelivered_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let confirmed: Arc<Mutex<BTreeSet<Id>>> = Arc::default();
    // Acks sent, answered or not.
    let sent: Arc<Mutex<BTreeSet<Id>>> = Arc::default();
    {
        let server = ServerProc::start(dir.path());
        let c = server.client_with(config());
        let settings = QueueSettings {
            visibility_timeout_ms: 60_000,
            max_deliveries: 100,
            backoff_base_ms: 5,
            backoff_max_ms: 40,
            dead_letter_topic: None,
            priority_levels: 1,
        };
        let topic = TopicConfig {
            partitions: PARTITIONS,
            ..Default::default()
        };
        c.create_queue("q", topic, settings).unwrap();
        for p in 0..PARTITIONS {
            let mut b = BatchBuilder::new();
            for i in 0..PER_PARTITION {
                b.push(now_us(), None, format!("m{p}-{i}").into_bytes(), Vec::new());
            }
            c.produce("q", p, b.build().unwrap(), Acks::Durable)
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress) = mpsc::channel::<usize>();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let (c, stop) = (server.client_with(config()), stop.clone());
                let seen = Seen {
                    confirmed: confirmed.clone(),
                    sent: sent.clone(),
                    progress: progress_tx.clone(),
                };
                std::thread::spawn(move || consume_until_error(&c, &seen, &stop))
            })
            .collect();
        // Kill mid-stream: after a third of the messages were acked, with acks in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < (PER_PARTITION * u64::from(PARTITIONS) / 3) as usize {
            let left = deadline.saturating_duration_since(Instant::now());
            seen += progress
                .recv_timeout(left)
                .expect("consumers made no progress");
        }
        server.stop(libc::SIGKILL);
        stop.store(true, Ordering::Release);
        for t in consumers {
            t.join().unwrap();
        }
    }
    let confirmed = confirmed.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(!confirmed.is_empty());
    assert!(confirmed.is_subset(&sent));

    // Restart; drain everything that comes back, acking with a QueueConsumer.
    let server = ServerProc::start(dir.path());
    let mut q = QueueConsumer::new(
        server.client_with(config()),
        "q",
        QueueConsumerConfig::default(),
    );
    let mut back: BTreeSet<Id> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "draining took too long");
        let got = q.receive(1, Duration::from_millis(300)).unwrap();
        if got.is_empty() {
            break;
        }
        for m in &got {
            let id = (m.partition, m.offset);
            assert!(
                !confirmed.contains(&id),
                "message {id:?} was acked (answered) before the crash and came back"
            );
            assert!(
                back.insert(id),
                "message {id:?} delivered twice after the restart"
            );
        }
        let receipts: Vec<_> = got.iter().map(|m| m.receipt()).collect();
        q.ack(&receipts).unwrap();
    }
    q.flush().unwrap();
    assert!(
        q.take_refused().is_empty(),
        "every ack after the restart counted"
    );
    assert_eq!(q.acked(), back.len() as u64);

    // None lost: each message was acked before the crash (answered, or sent and made durable
    // before the kill: then it does not come back either) or delivered (and acked) after it.
    let all: BTreeSet<Id> = (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |o| (p, o)))
        .collect();
    for id in &all {
        assert!(
            back.contains(id) || sent.contains(id),
            "message {id:?} was never acked and did not come back: lost"
        );
    }
    let unanswered_done = all
        .iter()
        .filter(|id| !back.contains(id) && !confirmed.contains(id))
        .count();
    eprintln!(
        "confirmed before the crash {}, sent unanswered and durable {unanswered_done}, redelivered {}",
        confirmed.len(),
        back.len()
    );
    let stats = q.client().queue_stats("q").unwrap();
    for s in &stats {
        assert_eq!((s.depth, s.in_flight), (0, 0), "{s:?}");
        assert_eq!(s.ack_floor, PER_PARTITION);
    }
}

/// One message per receive, acks pipelined (up to 16 unanswered); records each ack the server
/// answered as done. Ends at the first error (the server was killed) or at `stop`.
/// What the consumers report to the test.
struct Seen {
    confirmed: Arc<Mutex<BTreeSet<Id>>>,
    sent: Arc<Mutex<BTreeSet<Id>>>,
    progress: mpsc::Sender<usize>,
}

fn consume_until_error(c: &Client, seen: &Seen, stop: &AtomicBool) {
    let mut in_flight: VecDeque<PendingAck> = VecDeque::new();
    let settle = |receipts: &[QueueReceipt], codes: Vec<u16>| {
        assert!(all_ok(&codes), "ack refused before the crash: {codes:?}");
        let mut set = seen.confirmed.lock().unwrap();
        for r in receipts {
            assert!(set.insert((r.partition, r.offset)), "acked twice: {r:?}");
        }
        let _ = seen.progress.send(receipts.len());
    };
    while !stop.load(Ordering::Acquire) {
        // Answers that arrived, oldest first.
        while let Some(front) = in_flight.front() {
            match front.try_wait() {
                None => break,
                Some(Ok(codes)) => {
                    let done = in_flight.pop_front().unwrap();
                    settle(done.receipts(), codes);
                }
                Some(Err(_)) => return,
            }
        }
        if in_flight.len() >= 16 {
            // Window full: block on the oldest (bounded by the request timeout).
            let oldest = in_flight.pop_front().unwrap();
            let receipts = oldest.receipts().to_vec();
            match oldest.wait() {
                Ok(codes) => settle(&receipts, codes),
                Err(_) => return,
            }
            continue;
        }
        let Ok(got) = c.queue_receive("q", None, 1, None, Duration::from_millis(100)) else {
            return;
        };
        let receipts: Vec<QueueReceipt> = got.iter().map(|m| m.receipt()).collect();
        if receipts.is_empty() {
            continue;
        }
        seen.sent
            .lock()
            .unwrap()
            .extend(receipts.iter().map(|r| (r.partition, r.offset)));
        match c.queue_ack_start("q", &receipts) {
            Ok(a) => in_flight.push_back(a),
            Err(_) => return,
        }
    }
}
