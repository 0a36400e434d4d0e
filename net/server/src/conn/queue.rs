//! Serving the work-queue apis (22..=29) on a connection: each request runs as its own task
//! on the listener's shard and calls the engine, which forwards to the partition's shard.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardline_engine::{self as engine, Engine, ReceiveOptions};

use super::Conn;
use crate::convert::{ToEngine, ToWire, lease_code};
use crate::protocol::messages::CreateTopicResponse;
use crate::protocol::queue::*;
use crate::protocol::{Request, Response};

/// Room kept in a frame for everything of a queue response but the messages' bytes.
const RESPONSE_ENVELOPE_BYTES: usize = 64 << 10;

thread_local! {
    /// Where a receive on "any partition" starts, rotating so consumers spread over partitions.
    static NEXT_PARTITION: Cell<u32> = const { Cell::new(0) };
}

/// Slice of a long poll spent waiting on one partition before trying the others again.
const ANY_PARTITION_SLICE: Duration = Duration::from_millis(50);

impl Conn {
    /// Runs one queue request as a task; answers it when done.
    pub(super) fn serve_queue(self: &Rc<Self>, cid: u32, api: u16, ver: u16, request: Request) {
        self.begin();
        let c = self.clone();
        shardline_engine::rt::spawn_local(async move {
            c.answer_queue(cid, api, ver, request).await;
            c.end();
        });
    }

    /// Runs one queue request and answers it.
    pub(super) async fn answer_queue(&self, cid: u32, api: u16, ver: u16, request: Request) {
        match queue_request(&self.engine, request, self.shared.cfg.frame_bytes_max).await {
            Ok(r) => self.send_response(cid, ver, &r),
            Err(e) => self.send_error(cid, api, ver, &(&e).to_wire()),
        }
    }
}

async fn queue_request(
    engine: &Engine,
    request: Request,
    frame_bytes_max: u32,
) -> engine::Result<Response> {
    match request {
        Request::QueueCreate(m) => {
            let e = engine.clone();
            // Control plane: may wait for every shard (this one too), so not on this thread.
            let info = on_thread(move || {
                let mut cfg: engine::TopicConfig = m.config.to_engine();
                cfg.queue = Some(m.queue.to_engine());
                e.create_queue(&m.name, cfg)
            })
            .await?;
            let queue = info
                .config
                .queue
                .as_ref()
                .map(ToWire::to_wire)
                .unwrap_or_default();
            let topic = CreateTopicResponse {
                topic: (&info).to_wire(),
            }
            .topic;
            Ok(Response::QueueCreate(QueueCreateResponse { topic, queue }))
        }
        Request::QueueReceive(m) => {
            let budget = (frame_bytes_max as usize).saturating_sub(RESPONSE_ENVELOPE_BYTES);
            receive(engine, &m, budget)
                .await
                .map(|messages| Response::QueueReceive(QueueMessages { messages }))
        }
        Request::QueueAck(m) => {
            let codes =
                per_partition(&m.receipts, |p, rs| engine.queue_ack_async(&m.topic, p, rs)).await?;
            Ok(Response::QueueAck(codes))
        }
        Request::QueueNack(m) => {
            let codes = per_partition(&m.receipts, |p, rs| {
                engine.queue_nack_async(&m.topic, p, rs, m.delay_ms)
            })
            .await?;
            Ok(Response::QueueNack(codes))
        }
        Request::QueueChangeVisibility(m) => {
            let codes = per_partition(&m.receipts, |p, rs| {
                engine.queue_change_visibility_async(&m.topic, p, rs, m.visibility_timeout_ms)
            })
            .await?;
            Ok(Response::QueueChangeVisibility(codes))
        }
        Request::QueueStats(m) => {
            let s = engine.queue_stats_async(&m.topic).await?;
            Ok(Response::QueueStats(QueueStatsResponse {
                partitions: s.iter().map(ToWire::to_wire).collect(),
            }))
        }
        Request::QueuePeek(m) => {
            let msgs = engine
                .queue_peek_async(&m.topic, m.partition, m.max_messages as usize)
                .await?;
            let budget = (frame_bytes_max as usize).saturating_sub(RESPONSE_ENVELOPE_BYTES);
            let mut used = 0;
            let messages = msgs
                .into_iter()
                .map(ToWire::to_wire)
                .take_while(|x| {
                    used += x.size_estimate();
                    used <= budget
                })
                .collect();
            Ok(Response::QueuePeek(QueueMessages { messages }))
        }
        Request::QueueRedrive(m) => {
            let moved = engine
                .queue_redrive_async(&m.dead_letter_topic, m.max_messages as usize)
                .await?;
            Ok(Response::QueueRedrive(QueueRedriveResponse { moved }))
        }
        _ => Err(engine::Error::InvalidArgument("not a queue request".into())),
    }
}

async fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> engine::Result<T> + Send + 'static,
) -> engine::Result<T> {
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("shardline-admin".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| engine::Error::Runtime(format!("cannot start admin thread: {e}")))?;
    rx.recv_async()
        .await
        .map_err(|_| engine::Error::Runtime("admin thread died".into()))?
}

/// Groups receipts by partition, runs `call` per partition, and answers one code per receipt
/// in request order (a failed partition gives its error code to each of its receipts).
async fn per_partition<F, Fut>(
    receipts: &[QueueReceipt],
    mut call: F,
) -> engine::Result<QueueLeaseResponse>
where
    F: FnMut(u32, Vec<engine::Receipt>) -> Fut,
    Fut: std::future::Future<Output = engine::Result<engine::queue::LeaseResults>>,
{
    let mut partitions: Vec<u32> = receipts.iter().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut codes = vec![0u16; receipts.len()];
    for p in partitions {
        let idx: Vec<usize> = (0..receipts.len())
            .filter(|&i| receipts[i].partition == p)
            .collect();
        let rs = idx.iter().map(|&i| receipts[i].to_engine()).collect();
        match call(p, rs).await {
            Ok(results) => {
                for (i, r) in idx.iter().zip(results.iter()) {
                    codes[*i] = lease_code(r);
                }
            }
            Err(e) => idx.iter().for_each(|&i| codes[i] = e.code()),
        }
    }
    Ok(QueueLeaseResponse { error_codes: codes })
}

async fn receive(
    engine: &Engine,
    m: &QueueReceiveRequest,
    budget_bytes: usize,
) -> engine::Result<Vec<QueueMessage>> {
    let options = |wait: Duration| ReceiveOptions {
        max_messages: (m.max_messages.max(1)) as usize,
        visibility_timeout_ms: (m.visibility_timeout_ms > 0).then_some(m.visibility_timeout_ms),
        max_wait: wait,
    };
    let wait = Duration::from_millis(u64::from(m.max_wait_ms)).min(engine::queue::RECEIVE_WAIT_MAX);
    let got = match m.partition {
        Some(p) => {
            engine
                .queue_receive_async(&m.topic, p, options(wait))
                .await?
        }
        None => receive_any(engine, &m.topic, options, wait).await?,
    };
    fit(engine, &m.topic, got, budget_bytes).await
}

/// A receive from any partition: every partition once, then a long-poll slice on one at a
/// time. On a cluster only the partitions whose queue this node serves are asked (the
/// others answer `NotLeader`; that answer is returned when no partition is served here).
async fn receive_any(
    engine: &Engine,
    topic: &str,
    options: impl Fn(Duration) -> ReceiveOptions,
    wait: Duration,
) -> engine::Result<Vec<engine::QueueMessage>> {
    let n = engine.route(topic)?.shards.len() as u32;
    let start = NEXT_PARTITION.with(|c| {
        let v = c.get();
        c.set(v.wrapping_add(1));
        v
    });
    let deadline = Instant::now() + wait;
    let mut round = 0usize;
    loop {
        let mut served = Vec::new();
        let mut not_leader = None;
        for i in 0..n {
            let p = (start + i) % n;
            match engine
                .queue_receive_async(topic, p, options(Duration::ZERO))
                .await
            {
                Ok(got) if !got.is_empty() => return Ok(got),
                Ok(_) => served.push(p),
                Err(e @ engine::Error::NotLeader { .. }) => {
                    not_leader.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let (true, Some(e)) = (served.is_empty(), not_leader) {
            return Err(e);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || served.is_empty() {
            return Ok(Vec::new());
        }
        // Long-poll one partition for a slice, then look at all again.
        let p = served[round % served.len()];
        round += 1;
        let slice = if n == 1 {
            left
        } else {
            left.min(ANY_PARTITION_SLICE)
        };
        let got = engine.queue_receive_async(topic, p, options(slice)).await?;
        if !got.is_empty() {
            return Ok(got);
        }
    }
}

/// Keeps the messages that fit the response frame; gives the rest back at once (their
/// delivery counts already rose: documented in docs/semantics.md).
async fn fit(
    engine: &Engine,
    topic: &str,
    got: Vec<engine::QueueMessage>,
    budget_bytes: usize,
) -> engine::Result<Vec<QueueMessage>> {
    let mut used = 0usize;
    let mut keep = Vec::with_capacity(got.len());
    let mut give_back: Vec<(u32, engine::Receipt)> = Vec::new();
    for m in got {
        let w = m.to_wire();
        used += w.size_estimate();
        if used <= budget_bytes || keep.is_empty() {
            keep.push(w);
        } else {
            give_back.push((w.partition, w.receipt().to_engine()));
        }
    }
    for (p, r) in give_back {
        let _ = engine
            .queue_change_visibility_async(topic, p, vec![r], 0)
            .await;
    }
    Ok(keep)
}
