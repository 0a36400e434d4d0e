//! The console's JSON endpoints (`/ui/api/...`): the same figures the CLI shows (`topic
//! describe`, `queue stats`, `group describe`, `stats`), read from the engine on the metrics
//! listener's connection thread (never a shard thread: the engine calls block on the shards).

use serde_json::{Value, json};

use super::{Console, HttpRequest, HttpResponse};
use crate::metrics::{gather, snapshot_of};
use crate::protocol::Histogram;

/// Messages one browse returns at most.
const BROWSE_MESSAGES_MAX: usize = 200;
/// Bytes of a message value shown in a browse.
const VALUE_PREVIEW_BYTES: usize = 1024;
/// Messages one redrive from the console moves at most.
const REDRIVE_MESSAGES_MAX: usize = 100_000;

fn failed(e: &impl std::fmt::Display) -> HttpResponse {
    // Engine errors name topics and limits, never addresses or internals.
    HttpResponse::error("503 Service Unavailable", &e.to_string())
}

fn percentiles_us(h: &Histogram) -> Value {
    let s = snapshot_of(h);
    let us = |q: f64| s.quantile(q) as f64 / 1000.0;
    json!({ "count": s.count(), "p50": us(0.5), "p99": us(0.99), "p999": us(0.999) })
}

/// Cluster and shard overview: counters (the page turns successive polls into rates),
/// latency percentiles, connections.
pub(super) fn overview(c: &Console) -> HttpResponse {
    let uptime_ms = c.shared().started.elapsed().as_millis() as u64;
    let m = match gather(c.engine(), &c.shared().metrics, uptime_ms, true) {
        Ok(m) => m,
        Err(e) => return failed(&e),
    };
    let mut totals = [0u64; 4];
    let mut per_shard = vec![[0u64; 2]; m.shards.len()];
    for p in &m.partitions {
        totals[0] += p.produced_records;
        totals[1] += p.fetched_records;
        totals[2] += p.produced_bytes;
        totals[3] += p.fetched_bytes;
        if let Some(s) = per_shard.get_mut(p.shard as usize) {
            s[0] += p.produced_records;
            s[1] += p.fetched_records;
        }
    }
    let shards: Vec<Value> = m
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "shard": s.shard,
                "partitions": s.partitions,
                "connections_open": s.connections_open,
                "connections_accepted": s.connections_accepted,
                "connections_refused": s.connections_refused,
                "requests": s.requests.iter().map(|r| r.count).sum::<u64>(),
                "errors": s.errors.iter().map(|r| r.count).sum::<u64>(),
                "produced_records": per_shard[i][0],
                "fetched_records": per_shard[i][1],
                "cache_bytes": s.cache_bytes,
                "unflushed_bytes": s.unflushed_bytes,
                "append_durable_us": percentiles_us(&s.append_durable_ns),
                "append_memory_us": percentiles_us(&s.append_memory_ns),
                "fsync_us": percentiles_us(&s.fsync_ns),
            })
        })
        .collect();
    HttpResponse::json(&json!({
        "server": c.shared().server_id,
        "uptime_ms": m.uptime_ms,
        "resident_bytes": m.resident_bytes,
        "produced_records": totals[0],
        "fetched_records": totals[1],
        "produced_bytes": totals[2],
        "fetched_bytes": totals[3],
        "connections_open": m.shards.iter().map(|s| s.connections_open).sum::<u64>(),
        "shards": shards,
    }))
}

/// Every user topic with its settings and each partition's offsets and size (as `topic
/// describe`).
pub(super) fn topics(c: &Console) -> HttpResponse {
    let mut out = Vec::new();
    let mut list = c.engine().list_topics();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    for t in list {
        let d = match c.engine().describe_topic(&t.name) {
            Ok(d) => d,
            Err(shardline_engine::Error::UnknownTopic(_)) => continue, // deleted meanwhile
            Err(e) => return failed(&e),
        };
        let cfg = &d.info.config;
        out.push(json!({
            "name": t.name,
            "id": t.id,
            "partitions": cfg.partitions,
            "retention_bytes": cfg.retention_bytes,
            "retention_ms": cfg.retention_ms,
            "segment_bytes": cfg.segment_bytes,
            "queue": cfg.queue.is_some(),
            "encrypted": cfg.encrypted,
            "partition_info": d.partitions,
        }));
    }
    HttpResponse::json(&Value::Array(out))
}

/// Consumer groups with their committed offsets and lag per partition.
pub(super) fn groups(c: &Console) -> HttpResponse {
    let list = match c.engine().list_groups() {
        Ok(l) => l,
        Err(e) => return failed(&e),
    };
    let mut out = Vec::new();
    for g in list {
        let d = match c.engine().describe_group(&g.group) {
            Ok(d) => d,
            Err(e) => return failed(&e),
        };
        let hw: Vec<u64> = c
            .engine()
            .describe_topic(&d.topic)
            .map(|t| t.partitions.iter().map(|p| p.high_watermark).collect())
            .unwrap_or_default();
        let partitions: Vec<Value> = hw
            .iter()
            .enumerate()
            .map(|(p, &high)| {
                let committed = d
                    .offsets
                    .iter()
                    .find(|(q, _)| *q as usize == p)
                    .map(|(_, c)| c.offset);
                json!({
                    "partition": p,
                    "committed": committed,
                    "high_watermark": high,
                    "lag": committed.map(|o| high.saturating_sub(o)),
                })
            })
            .collect();
        out.push(json!({
            "group": g.group,
            "topic": d.topic,
            "generation": d.generation,
            "members": d.members,
            "partitions": partitions,
        }));
    }
    HttpResponse::json(&Value::Array(out))
}

/// Work queues: settings and each partition's stats (as `queue stats`); dead-letter queues
/// are marked.
pub(super) fn queues(c: &Console) -> HttpResponse {
    let mut topics = c.engine().list_topics();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let dlqs: Vec<String> = topics
        .iter()
        .filter_map(|t| t.config.queue.as_ref()?.dead_letter_topic.clone())
        .collect();
    let mut out = Vec::new();
    for t in topics {
        let Some(q) = &t.config.queue else {
            continue;
        };
        let stats = match c.engine().queue_stats(&t.name) {
            Ok(s) => s,
            Err(shardline_engine::Error::UnknownTopic(_)) => continue,
            Err(e) => return failed(&e),
        };
        let sum = |f: fn(&shardline_engine::queue::QueuePartitionStats) -> u64| {
            stats.iter().map(f).sum::<u64>()
        };
        out.push(json!({
            "name": t.name,
            "is_dead_letter_queue": dlqs.contains(&t.name),
            "dead_letter_topic": q.dead_letter_topic,
            "priority_levels": q.priority_levels,
            "strict_priority": q.strict_priority,
            "max_deliveries": q.max_deliveries,
            "visibility_timeout_ms": q.visibility_timeout_ms,
            "depth": sum(|s| s.depth),
            "ready": sum(|s| s.ready),
            "delayed": sum(|s| s.delayed),
            "in_flight": sum(|s| s.in_flight),
            "oldest_age_ms": stats.iter().map(|s| s.oldest_age_ms).max().unwrap_or(0),
            "partition_stats": stats,
        }));
    }
    HttpResponse::json(&Value::Array(out))
}

/// Browses the messages of a queue that are not acked (a dead-letter queue's, typically),
/// without leasing them: `?topic=NAME[&partition=P][&max=N]`.
pub(super) fn messages(c: &Console, req: &HttpRequest) -> HttpResponse {
    let Some(topic) = req.param("topic") else {
        return HttpResponse::error("400 Bad Request", "give ?topic=NAME");
    };
    let max = req
        .param("max")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, BROWSE_MESSAGES_MAX);
    let partitions: Vec<u32> = match req.param("partition").map(str::parse::<u32>) {
        Some(Ok(p)) => vec![p],
        Some(Err(_)) => return HttpResponse::error("400 Bad Request", "bad partition"),
        None => match c.engine().route(topic) {
            Ok(r) => (0..r.shards.len() as u32).collect(),
            Err(e) => return HttpResponse::error("404 Not Found", &e.to_string()),
        },
    };
    let mut out = Vec::new();
    for p in partitions {
        let msgs = match c.engine().queue_peek(topic, p, max - out.len().min(max)) {
            Ok(m) => m,
            Err(e) => return HttpResponse::error("400 Bad Request", &e.to_string()),
        };
        for m in msgs {
            let value = &m.value[..m.value.len().min(VALUE_PREVIEW_BYTES)];
            let headers: Vec<Value> = m
                .headers
                .iter()
                .map(|h| json!({ "key": h.key, "value": String::from_utf8_lossy(&h.value) }))
                .collect();
            out.push(json!({
                "partition": m.partition,
                "offset": m.offset,
                "attempt": m.attempt,
                "timestamp_ms": m.timestamp_us / 1000,
                "priority": m.priority,
                "key": m.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": String::from_utf8_lossy(value),
                "value_bytes": m.value.len(),
                "headers": headers,
            }));
        }
        if out.len() >= max {
            break;
        }
    }
    HttpResponse::json(&Value::Array(out))
}

/// Moves a dead-letter queue's messages back to where they came from: `?dlq=NAME[&max=N]`.
pub(super) fn redrive(c: &Console, req: &HttpRequest) -> HttpResponse {
    let Some(dlq) = req.param("dlq") else {
        return HttpResponse::error("400 Bad Request", "give ?dlq=NAME");
    };
    let max = req
        .param("max")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(REDRIVE_MESSAGES_MAX)
        .min(REDRIVE_MESSAGES_MAX);
    match c.engine().queue_redrive(dlq, max) {
        Ok(moved) => {
            tracing::info!(dlq, moved, "redrive from the web console");
            HttpResponse::json(&json!({ "dlq": dlq, "moved": moved }))
        }
        Err(e) => HttpResponse::error("400 Bad Request", &e.to_string()),
    }
}
