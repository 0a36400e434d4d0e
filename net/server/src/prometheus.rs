//! The `/metrics` endpoint: a [`MetricsResponse`] encoded in the OpenMetrics text format
//! (which Prometheus scrapes natively) by `prometheus-client`, served by a small HTTP/1.1
//! responder on a thread of its own (docs/operations.md, "Metrics").
//!
//! Why a hand-written responder: the endpoint answers one `GET` with `Connection: close`; the
//! request head is parsed by `httparse` and capped at 8 KiB, reads and writes have timeouts, and
//! each connection gets a short-lived thread, at most [`CONNECTIONS_MAX`] at once (more are
//! answered 503 at once), so a silent client cannot hold up a scrape. An HTTP framework
//! would bring an async runtime into a broker whose shards must not share their cores.
//! Gathering happens on this thread: the shards only copy their counters between requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shardline_engine::metrics::{FamilyKind, HistogramSnapshot, family_spec};

use super::metrics::snapshot_of;
use crate::protocol::{ApiKey, Histogram, MetricsResponse, code_name};

/// Upper bounds of latency buckets, in nanoseconds (10 us .. 10 s).
const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of size buckets, in bytes (256 B .. 64 MiB).
const SIZE_BOUNDS_BYTES: [u64; 10] = [
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// Metrics connections served at once; more get 503 without being read.
pub(crate) const CONNECTIONS_MAX: usize = 4;

/// Longest request head accepted.
const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// OpenMetrics text, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// The whole snapshot as one prometheus-client collector.
#[derive(Debug)]
struct Snapshot(MetricsResponse);

fn api_name(key: u16) -> String {
    ApiKey::from_u16(key).map_or_else(|| "unknown".to_string(), |k| k.name().to_string())
}

fn shard_label(shard: u32) -> Labels {
    vec![("shard", shard.to_string())]
}

/// Starts one family; `samples` then encodes each member.
fn family<'a, T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    items: impl IntoIterator<Item = (T, Labels)>,
    mut sample: impl FnMut(&mut MetricEncoder, T) -> std::fmt::Result,
) -> std::fmt::Result
where
    T: 'a,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (value, labels) in items {
        if labels.is_empty() {
            sample(&mut m, value)?;
        } else {
            let mut member = m.encode_family(&labels)?;
            sample(&mut member, value)?;
        }
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = (i64, Labels)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Gauge, items, |m, v| {
        m.encode_gauge(&v)
    })
}

fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: impl IntoIterator<Item = (u64, Labels)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Counter, items, |m, v| {
        m.encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(&v, None)
    })
}

/// `scale` converts the recorded unit into the exported one (ns -> s: 1e-9).
fn histograms<'h>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[u64],
    scale: f64,
    items: impl IntoIterator<Item = (&'h Histogram, Labels)>,
) -> std::fmt::Result {
    family(enc, name, help, MetricType::Histogram, items, |m, h| {
        let s: HistogramSnapshot = snapshot_of(h);
        let cumulative = s.cumulative(bounds);
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(bounds.len() + 1);
        // prometheus-client wants per-bucket counts and accumulates them itself.
        let mut previous = 0;
        for (&bound, &c) in bounds.iter().zip(&cumulative) {
            buckets.push((bound as f64 * scale, c - previous));
            previous = c;
        }
        let count = s.count();
        buckets.push((f64::INFINITY, count - previous));
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            s.sum as f64 * scale,
            count,
            &buckets,
            None,
        )
    })
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Snapshot {
    fn partitions(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let ps = &self.0.partitions;
        let labels = |p: &crate::protocol::PartitionMetrics| -> Labels {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.to_string()),
            ]
        };
        type Get = fn(&crate::protocol::PartitionMetrics) -> u64;
        let offset_gauges: [(&str, &str, Get); 4] = [
            (
                "shardline_partition_log_start_offset",
                "First readable offset",
                |p| p.log_start,
            ),
            (
                "shardline_partition_log_end_offset",
                "Log end offset: the next offset a reader can see (high watermark)",
                |p| p.high_watermark,
            ),
            (
                "shardline_partition_durable_offset",
                "Offsets below this are covered by fdatasync",
                |p| p.durable_offset,
            ),
            (
                "shardline_partition_size_bytes",
                "Bytes of the partition's log on disk",
                |p| p.size_bytes,
            ),
        ];
        for (name, help, get) in offset_gauges {
            gauges(
                enc,
                name,
                help,
                ps.iter().map(|p| (i64_of(get(p)), labels(p))),
            )?;
        }
        let flows: [(&str, &str, Get); 4] = [
            (
                "shardline_partition_produced_records",
                "Records appended",
                |p| p.produced_records,
            ),
            (
                "shardline_partition_produced_bytes",
                "Record batch bytes appended",
                |p| p.produced_bytes,
            ),
            (
                "shardline_partition_fetched_records",
                "Records delivered to readers (fetches and subscription pushes)",
                |p| p.fetched_records,
            ),
            (
                "shardline_partition_fetched_bytes",
                "Record batch bytes read for readers (whole batches)",
                |p| p.fetched_bytes,
            ),
        ];
        for (name, help, get) in flows {
            counters(enc, name, help, ps.iter().map(|p| (get(p), labels(p))))?;
        }
        Ok(())
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one table of shard families after another, in exposition order; splitting it would scatter the order"
    )]
    fn shards(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let ss = &self.0.shards;
        type Get = fn(&crate::protocol::ShardMetrics) -> u64;
        let shard_gauges: [(&str, &str, Get); 4] = [
            (
                "shardline_shard_partitions",
                "Partitions owned by the shard",
                |s| u64::from(s.partitions),
            ),
            (
                "shardline_shard_cache_bytes",
                "Memory held by the shard's cache of recent batches",
                |s| s.cache_bytes,
            ),
            (
                "shardline_shard_unflushed_bytes",
                "Memory held by appended batches not yet written",
                |s| s.unflushed_bytes,
            ),
            (
                "shardline_connections_open",
                "Client connections open on the shard",
                |s| s.connections_open,
            ),
        ];
        for (name, help, get) in shard_gauges {
            gauges(
                enc,
                name,
                help,
                ss.iter().map(|s| (i64_of(get(s)), shard_label(s.shard))),
            )?;
        }
        let shard_counters: [(&str, &str, Get); 5] = [
            (
                "shardline_shard_flushes",
                "Group commits (flushes) completed",
                |s| s.flushes,
            ),
            (
                "shardline_shard_fsyncs",
                "Group commits that ended with fdatasync",
                |s| s.syncs,
            ),
            (
                "shardline_shard_flushed_bytes",
                "Bytes written by group commits (a carried partial last block is written again)",
                |s| s.flushed_bytes,
            ),
            (
                "shardline_connections_accepted",
                "Client connections accepted",
                |s| s.connections_accepted,
            ),
            (
                "shardline_connections_refused",
                "Connections refused at once (connections_max reached)",
                |s| s.connections_refused,
            ),
        ];
        for (name, help, get) in shard_counters {
            counters(
                enc,
                name,
                help,
                ss.iter().map(|s| (get(s), shard_label(s.shard))),
            )?;
        }
        let reads = ss.iter().flat_map(|s| {
            [("hit", s.cache_hits), ("miss", s.cache_misses)].map(|(result, n)| {
                (
                    n,
                    vec![
                        ("shard", s.shard.to_string()),
                        ("result", result.to_string()),
                    ],
                )
            })
        });
        counters(
            enc,
            "shardline_shard_cache_reads",
            "Reads served from the cache (hit) or from disk (miss)",
            reads,
        )?;
        family(
            enc,
            "shardline_shard_cache_hit_ratio",
            "Cache hits / reads since start (NaN before the first read)",
            MetricType::Gauge,
            ss.iter().map(|s| {
                let reads = s.cache_hits + s.cache_misses;
                let ratio = if reads == 0 {
                    f64::NAN
                } else {
                    s.cache_hits as f64 / reads as f64
                };
                (ratio, shard_label(s.shard))
            }),
            |m, v| m.encode_gauge(&v),
        )?;
        self.requests(enc)?;
        self.shard_histograms(enc)
    }

    fn requests(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let ss = &self.0.shards;
        let requests = ss.iter().flat_map(|s| {
            s.requests.iter().map(|r| {
                let labels = vec![("shard", s.shard.to_string()), ("api", api_name(r.api_key))];
                (r.count, labels)
            })
        });
        counters(
            enc,
            "shardline_requests",
            "Requests received, by api",
            requests,
        )?;
        let errors = ss.iter().flat_map(|s| {
            s.errors.iter().map(|e| {
                let labels = vec![
                    ("shard", s.shard.to_string()),
                    ("api", api_name(e.api_key)),
                    ("code", e.code.to_string()),
                    ("error", code_name(e.code).to_string()),
                ];
                (e.count, labels)
            })
        });
        counters(
            enc,
            "shardline_request_errors",
            "Errors answered, by api and error code (whole requests and single partitions)",
            errors,
        )
    }

    fn shard_histograms(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let ss = &self.0.shards;
        let append = ss.iter().flat_map(|s| {
            [
                ("durable", &s.append_durable_ns),
                ("memory", &s.append_memory_ns),
            ]
            .map(|(a, h)| {
                (
                    h,
                    vec![("shard", s.shard.to_string()), ("acks", a.to_string())],
                )
            })
        });
        histograms(
            enc,
            "shardline_append_latency_seconds",
            "Produce on the shard: append to durable ack (acks=durable), in-memory append (memory)",
            &LATENCY_BOUNDS_NS,
            1e-9,
            append,
        )?;
        type Get = fn(&crate::protocol::ShardMetrics) -> &Histogram;
        let timed: [(&str, &str, Get); 2] = [
            (
                "shardline_flush_write_seconds",
                "Writes of one group commit (segment creation included)",
                |s| &s.flush_write_ns,
            ),
            (
                "shardline_fsync_seconds",
                "fdatasync of one group commit",
                |s| &s.fsync_ns,
            ),
        ];
        for (name, help, get) in timed {
            let items = ss.iter().map(|s| (get(s), shard_label(s.shard)));
            histograms(enc, name, help, &LATENCY_BOUNDS_NS, 1e-9, items)?;
        }
        let sized: [(&str, &str, Get); 2] = [
            (
                "shardline_flush_size_bytes",
                "Bytes written by one group commit",
                |s| &s.flush_bytes,
            ),
            (
                "shardline_produce_batch_size_bytes",
                "Size of each appended record batch",
                |s| &s.batch_bytes,
            ),
        ];
        for (name, help, get) in sized {
            let items = ss.iter().map(|s| (get(s), shard_label(s.shard)));
            histograms(enc, name, help, &SIZE_BOUNDS_BYTES, 1.0, items)?;
        }
        Ok(())
    }

    /// Extra families (engine `metrics::EXTRA_FAMILIES`), grouped by family.
    fn extras(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut names: Vec<&str> = self.0.samples.iter().map(|s| s.family.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let Some(spec) = family_spec(name) else {
                continue;
            };
            let items = self.0.samples.iter().filter(|s| s.family == name).map(|s| {
                let labels: Labels = spec
                    .labels
                    .iter()
                    .zip(&s.labels)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                (s.value, labels)
            });
            match spec.kind {
                FamilyKind::Gauge => gauges(enc, spec.name, spec.help, items)?,
                FamilyKind::Counter => counters(
                    enc,
                    spec.name,
                    spec.help,
                    items.map(|(v, l)| (u64::try_from(v).unwrap_or(0), l)),
                )?,
            }
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let none = || std::iter::once((0, Labels::new()));
        gauges(
            &mut enc,
            "shardline_uptime_seconds",
            "Seconds since the server started",
            none().map(|_| (i64_of(self.0.uptime_ms / 1000), Labels::new())),
        )?;
        gauges(
            &mut enc,
            "shardline_process_resident_memory_bytes",
            "Resident memory of the server process",
            none().map(|_| (i64_of(self.0.resident_bytes), Labels::new())),
        )?;
        self.partitions(&mut enc)?;
        self.shards(&mut enc)?;
        self.extras(&mut enc)
    }
}

/// Encodes a snapshot as OpenMetrics text (ends with `# EOF`).
pub fn encode(snapshot: MetricsResponse) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(snapshot)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

// Keeps the label-set bound visible: every `Labels` value is a valid prometheus label set.
const _: fn(&Labels) -> &dyn EncodeLabelSet = |l| l;

/// What the HTTP thread calls to get the text of one scrape.
pub(crate) type Render = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The running `/metrics` endpoint; stops when dropped.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Starts serving `/metrics`, and the web console under `/ui` (docs/operations.md, "Web
    /// console") when `console` is given.
    pub(crate) fn start_with_console(
        addr: SocketAddr,
        render: Render,
        console: Option<Arc<crate::console::Console>>,
    ) -> std::io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shardline-metrics".into())
            .spawn(move || {
                let busy = Arc::new(AtomicUsize::new(0));
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    match conn {
                        Ok(stream) => serve_one(stream, &render, console.as_ref(), &busy),
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics accept failed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(MetricsEndpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one connection on a thread of its own, within [`CONNECTIONS_MAX`].
fn serve_one(
    mut stream: TcpStream,
    render: &Render,
    console: Option<&Arc<crate::console::Console>>,
    busy: &Arc<AtomicUsize>,
) {
    if busy.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
        busy.fetch_sub(1, Ordering::AcqRel);
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "busy\n",
        );
        return;
    }
    let (render, done) = (render.clone(), busy.clone());
    let console = console.cloned();
    let spawned = std::thread::Builder::new()
        .name("shardline-metrics-conn".into())
        .spawn(move || {
            if let Err(e) = answer(stream, &render, console.as_deref()) {
                tracing::debug!(error = %e, "metrics request failed");
            }
            done.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        busy.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "cannot start a metrics connection thread");
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Reads one request head and answers it.
fn answer(
    mut stream: TcpStream,
    render: &Render,
    console: Option<&crate::console::Console>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; REQUEST_HEAD_BYTES_MAX];
    let mut filled = 0;
    let (method, path, headers, head_bytes) = loop {
        if filled == buf.len() {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(head_bytes)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let headers: Vec<(String, Vec<u8>)> = req
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect();
                break (method, path, headers, head_bytes);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                );
            }
        }
    };
    if let Some(console) = console
        && crate::console::serves(&path)
    {
        let already = buf[head_bytes..filled].to_vec();
        return crate::console::answer_http(console, stream, method, path, headers, already);
    }
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        );
    }
    let path = path.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", "see /metrics\n");
    }
    match render() {
        Ok(text) if method == "HEAD" => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                text.len()
            );
            stream.write_all(head.as_bytes())
        }
        Ok(text) => respond(&mut stream, "200 OK", CONTENT_TYPE, &text),
        Err(e) => respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            &format!("{e}\n"),
        ),
    }
}
