//! Round-trip latency of Shardline's network path, beside a raw TCP ping-pong on 127.0.0.1 in
//! the same run (docs/performance.md, "Network"; ../shared/DESIGN.md, "Performance yardsticks").
//!
//! Phases, all one request at a time (closed loop), `--count` measured round trips after
//! `--warmup` unmeasured ones, clock read on the client thread around each round trip:
//! - `raw`: the yardstick. A `std::net` echo server thread and a client thread, TCP_NODELAY,
//!   blocking reads and writes. Symmetric messages of `--sizes` bytes, plus two runs shaped like
//!   Shardline's own frames (request and response sizes of a Ping and of the produce below),
//!   and, as a diagnostic, those two with the reply written in two `write`s (16-byte frame
//!   header, then the rest), which is how Shardline's server writes every response.
//!   Each in two placements: `cross` (server thread on the shard's core, client on the other
//!   core, as Shardline is measured) and `same` (both on one core).
//! - `shardline`: `Server::start` in this process, one shard pinned to the first usable CPU, a
//!   1-partition topic; through the client library (`Client::ping`, `Client::produce` of one
//!   100-byte record with `Acks::Leader`), and the same two requests through a minimal client
//!   speaking the raw codec (no client threads: separates the library's cost from the server's).
//!   Client thread on the other CPU (`cross`) and, as a diagnostic, on the shard's CPU (`same`).
//!   Target: p50 and p99 within 1.5x of the raw ping-pong of the same frame sizes and placement.
//! - `forward`: two shards (one per CPU), a 2-partition topic (partition p on shard p); leader
//!   produces to each partition over a raw-codec connection to the owning shard's direct
//!   address, and over one to the other shard's direct address, which forwards the request to
//!   the owner over the engine's shard channel. forwarded - direct = the cross-shard hop.
//!
//! The `shardline` and `forward` phases run once per `--spin-before-park-us` value (a fresh
//! server each time). Blocking waits everywhere: the client library parks its caller until the
//! reader thread hands it the reply, so the figures include wake-ups, as an application's would.
//!
//! Run: `cargo run --release -p shardline-bench --bin net_rtt -- [--json FILE]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use shardline_bench::bench_dir;
use shardline_engine::{EngineConfig, batch, rt as engine_rt};
use shardline_net::client::{Client, ClientConfig, TopicConfig};
use shardline_net::protocol::{
    Acks, DecoderConfig, FRAME_BYTES_MAX_DEFAULT, FrameBuf, FrameDecoder, FrameEncoder,
    HandshakeRequest, PingRequest, PingResponse, ProducePartition, ProducePartitionResult,
    ProduceRequest, ProduceResponse, ProduceTopic, ProduceTopicResult, Request, Response,
    ServerMessage, code, supported_apis,
};
use shardline_net::server::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(about = "Loopback round trips: Shardline's client and server beside a raw TCP ping-pong")]
struct Args {
    /// Directory on a real disk for the engine's data (a fresh subdirectory is used and removed).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Phases to run, comma separated: raw, shardline, forward.
    #[arg(long, default_value = "raw,shardline,forward", value_delimiter = ',')]
    phases: Vec<String>,
    /// Measured round trips per measurement.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Unmeasured round trips before each measurement.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Symmetric raw ping-pong message sizes in bytes.
    #[arg(long, default_value = "64,100,160", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Value bytes of the produced record.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Engine `spin_before_park_us` values; the Shardline phases run once per value.
    #[arg(long, default_value = "0,50", value_delimiter = ',')]
    spin_before_park_us: Vec<u64>,
    /// Client placements for the `raw` and `shardline` phases: cross (client on the other CPU
    /// than the shard) and same (client on the shard's CPU).
    #[arg(long, default_value = "cross,same", value_delimiter = ',')]
    placements: Vec<String>,
    /// Append one JSON object per measurement (and per comparison) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

const TOPIC: &str = "rtt";
/// A raw-codec client gives up on a reply after this.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(30);
const FORWARD_TOPIC: &str = "fwd";

/// Nanosecond histogram, 100 ns to 60 s, three significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(100, 60_000_000_000, 3).context("histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) -> anyhow::Result<()> {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(100);
    h.record(ns).context("recording a latency")
}

/// Latency summary in microseconds (0.1 us resolution).
#[derive(Debug, Clone, Copy)]
struct Summary {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Summary {
        Summary {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }

    fn json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p999": self.p999, "max": self.max, "mean": self.mean,
        })
    }
}

/// One measurement, for the table and the JSON lines.
#[derive(Debug, Clone)]
struct Row {
    phase: &'static str,
    what: String,
    placement: String,
    spin_us: Option<u64>,
    req_bytes: usize,
    resp_bytes: usize,
    s: Summary,
}

struct Out {
    json: Option<std::fs::File>,
    run: String,
}

impl Out {
    fn emit(&mut self, v: serde_json::Value) -> anyhow::Result<()> {
        if let Some(f) = self.json.as_mut() {
            let mut v = v;
            v["bench"] = "net_rtt".into();
            v["run"] = self.run.clone().into();
            writeln!(f, "{v}").context("writing the JSON file")?;
        }
        Ok(())
    }

    fn row(&mut self, r: &Row) -> anyhow::Result<()> {
        let spin = r.spin_us.map_or("-".to_string(), |s| s.to_string());
        println!(
            "{:<9} {:<34} {:<6} {:>5} {:>5}/{:<5} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
            r.phase,
            r.what,
            r.placement,
            spin,
            r.req_bytes,
            r.resp_bytes,
            r.s.p50,
            r.s.p90,
            r.s.p99,
            r.s.p999,
            r.s.max,
            r.s.mean
        );
        self.emit(serde_json::json!({
            "kind": "measurement",
            "phase": r.phase,
            "what": r.what,
            "placement": r.placement,
            "spin_before_park_us": r.spin_us,
            "request_bytes": r.req_bytes,
            "response_bytes": r.resp_bytes,
            "latency_us": r.s.json(),
        }))
    }
}

fn header() {
    println!(
        "{:<9} {:<34} {:<6} {:>5} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "phase",
        "what",
        "place",
        "spin",
        "req/resp B",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "mean us"
    );
}

/// Runs `f` on a new thread pinned to `cpu` (threads it spawns inherit the pinning).
fn on_cpu<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::Builder::new()
        .name(format!("net-rtt-cpu{cpu}"))
        .spawn(move || {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                bail!("cannot pin a thread to CPU {cpu}");
            }
            f()
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("measurement thread panicked"))?
}

/// Times `count` round trips after `warmup` unmeasured ones.
fn measure(
    count: usize,
    warmup: usize,
    mut round_trip: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = histogram()?;
    for i in 0..warmup + count {
        let t0 = Instant::now();
        round_trip()?;
        let took = t0.elapsed();
        if i >= warmup {
            record(&mut h, took)?;
        }
    }
    Ok(h)
}

// ------------------------------------------------------------------------------------------
// Raw TCP ping-pong

/// One raw ping-pong measurement: the client sends `req` bytes, the server answers `resp` bytes,
/// in one write, or in two (the 16-byte frame header, then the rest) when `split`, as
/// Shardline's server writes its responses.
fn raw_pingpong(
    req: usize,
    resp: usize,
    split: bool,
    server_cpu: usize,
    client_cpu: usize,
    args: &Args,
) -> anyhow::Result<Histogram<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
    let addr = listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name("net-rtt-echo".into())
        .spawn(move || -> anyhow::Result<()> {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: server_cpu }) {
                bail!("cannot pin the echo server to CPU {server_cpu}");
            }
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut inb = vec![0u8; req];
            let outb = vec![0xA5u8; resp];
            loop {
                match s.read_exact(&mut inb) {
                    Ok(()) if split && resp > 16 => {
                        s.write_all(&outb[..16])?;
                        s.write_all(&outb[16..])?;
                    }
                    Ok(()) => s.write_all(&outb)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .context("spawning the echo server")?;
    let (count, warmup) = (args.count, args.warmup);
    let h = on_cpu(client_cpu, move || {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let outb = vec![0x5Au8; req];
        let mut inb = vec![0u8; resp];
        measure(count, warmup, || {
            s.write_all(&outb)?;
            s.read_exact(&mut inb)?;
            Ok(())
        })
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    Ok(h)
}

// ------------------------------------------------------------------------------------------
// A minimal raw-codec client (as in net/tests/server_raw.rs): one request at a time.

struct Raw {
    s: TcpStream,
    enc: FrameEncoder,
    dec: FrameDecoder,
    buf: FrameBuf,
    next: u32,
    shard: u32,
    /// Bytes of the last request and response frames.
    last_sizes: (usize, usize),
}

impl Raw {
    fn connect(addr: SocketAddr) -> anyhow::Result<Raw> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(RAW_READ_TIMEOUT))?;
        let mut r = Raw {
            s,
            enc: FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT)?,
            dec: FrameDecoder::new(DecoderConfig::default())?,
            buf: FrameBuf::new(),
            next: 1,
            shard: u32::MAX,
            last_sizes: (0, 0),
        };
        let hs = Request::Handshake(HandshakeRequest {
            client_id: "net_rtt".into(),
            apis: supported_apis(),
        });
        match r.call(&hs)? {
            Response::Handshake(h) => r.shard = h.shard,
            other => bail!("handshake answered with {:?}", other.api_key()),
        }
        Ok(r)
    }

    fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        let cid = self.next;
        self.next = self.next.wrapping_add(1);
        self.buf.clear();
        self.enc.request(&mut self.buf, cid, 0, request)?;
        self.s.write_all(&self.buf)?;
        loop {
            if let Some(f) = self.dec.next_frame()? {
                self.last_sizes = (
                    self.buf.len(),
                    usize::try_from(f.header.frame_bytes()).unwrap_or(usize::MAX),
                );
                match ServerMessage::decode(&f)? {
                    ServerMessage::Response {
                        correlation_id,
                        response,
                    } if correlation_id == cid => return Ok(response),
                    ServerMessage::Error { error, .. } => {
                        bail!("server error {}: {}", error.code, error.message)
                    }
                    _ => continue,
                }
            }
            let n = self.s.read(self.dec.read_buf())?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.dec.filled(n);
        }
    }
}

fn produce_request(topic: &str, partition: u32, batch: Bytes) -> Request {
    Request::Produce(ProduceRequest {
        acks: Acks::Leader,
        // What the client library sends (its request_timeout, 30 s).
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition { partition, batch }],
        }],
    })
}

fn check_produce(r: Response) -> anyhow::Result<()> {
    match r {
        Response::Produce(p) => {
            let part = p
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .context("empty produce response")?;
            if part.error_code != code::NONE {
                bail!("produce failed: code {}", part.error_code);
            }
            Ok(())
        }
        other => bail!("produce answered with {:?}", other.api_key()),
    }
}

/// Frame sizes (request, response) of a Ping and of a one-record produce to `TOPIC`.
fn frame_sizes(value_bytes: usize) -> anyhow::Result<((usize, usize), (usize, usize))> {
    let mut enc = FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT)?;
    let mut size_req = |r: &Request| -> anyhow::Result<usize> {
        let mut b = FrameBuf::new();
        Ok(enc.request(&mut b, 1, 0, r)?)
    };
    let ping_req = size_req(&Request::Ping(PingRequest { nonce: 1 }))?;
    let batch = batch::batch_of_values([vec![0x5Au8; value_bytes]])?;
    let produce_req = size_req(&produce_request(TOPIC, 0, batch))?;
    let mut enc = FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT)?;
    let mut size_resp = |r: &Response| -> anyhow::Result<usize> {
        let mut b = FrameBuf::new();
        Ok(enc.response(&mut b, 1, 0, r)?)
    };
    let ping_resp = size_resp(&Response::Ping(PingResponse { nonce: 1 }))?;
    let produce_resp = size_resp(&Response::Produce(ProduceResponse {
        topics: vec![ProduceTopicResult {
            name: TOPIC.into(),
            partitions: vec![ProducePartitionResult {
                partition: 0,
                error_code: code::NONE,
                base_offset: 1000,
                last_offset: 1000,
                error_message: None,
            }],
        }],
    }))?;
    Ok(((ping_req, ping_resp), (produce_req, produce_resp)))
}

// ------------------------------------------------------------------------------------------
// Shardline

fn start_server(dir: &std::path::Path, shards: usize, spin_us: u64) -> anyhow::Result<Server> {
    let engine = EngineConfig {
        shards,
        pin_shards: true,
        spin_before_park_us: spin_us,
        ..EngineConfig::with_data_dir(dir)
    };
    let server = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    Server::start(engine, server).context("starting the server")
}

/// `(ping via client, produce via client, ping raw codec, produce raw codec)` histograms.
fn shardline_client_rtts(
    addr: SocketAddr,
    value_bytes: usize,
    count: usize,
    warmup: usize,
) -> anyhow::Result<[Histogram<u64>; 4]> {
    let client = Client::connect(&addr.to_string(), ClientConfig::default())?;
    let ping = measure(count, warmup, || {
        client.ping()?;
        Ok(())
    })?;
    let value = vec![0x5Au8; value_bytes];
    let mut next = batch::batch_of_values([value.clone()])?;
    let mut h = histogram()?;
    for i in 0..warmup + count {
        let b = std::mem::replace(&mut next, Bytes::new());
        let t0 = Instant::now();
        let ack = client.produce(TOPIC, 0, b, Acks::Leader)?;
        let took = t0.elapsed();
        if ack.is_none() {
            bail!("a leader produce returned no ack");
        }
        if i >= warmup {
            record(&mut h, took)?;
        }
        // The next batch is built outside the timed part, as a producer's would be.
        next = batch::batch_of_values([value.clone()])?;
    }
    let produce = h;
    drop(client);
    let mut raw = Raw::connect(addr)?;
    let mut nonce = 0u64;
    let raw_ping = measure(count, warmup, || {
        nonce += 1;
        match raw.call(&Request::Ping(PingRequest { nonce }))? {
            Response::Ping(p) if p.nonce == nonce => Ok(()),
            other => bail!("ping answered with {:?}", other.api_key()),
        }
    })?;
    let raw_produce = raw_produce_rtts(&mut raw, TOPIC, 0, value_bytes, count, warmup)?;
    Ok([ping, produce, raw_ping, raw_produce])
}

fn raw_produce_rtts(
    raw: &mut Raw,
    topic: &str,
    partition: u32,
    value_bytes: usize,
    count: usize,
    warmup: usize,
) -> anyhow::Result<Histogram<u64>> {
    let value = vec![0x5Au8; value_bytes];
    let mut next = produce_request(topic, partition, batch::batch_of_values([value.clone()])?);
    let mut h = histogram()?;
    for i in 0..warmup + count {
        let t0 = Instant::now();
        let r = raw.call(&next)?;
        let took = t0.elapsed();
        check_produce(r)?;
        if i >= warmup {
            record(&mut h, took)?;
        }
        next = produce_request(topic, partition, batch::batch_of_values([value.clone()])?);
    }
    Ok(h)
}

/// The target of every Shardline-to-raw ratio, for p50 and p99.
const RATIO_TARGET: f64 = 1.5;

/// What every phase needs, and the rows measured so far.
struct Bench {
    args: Args,
    cpus: Vec<usize>,
    /// The shard's CPU (the first usable one), and the other one.
    shard_cpu: usize,
    other_cpu: usize,
    /// Frame sizes in bytes, (request, response): a Ping, and a one-record produce.
    ping_frames: (usize, usize),
    produce_frames: (usize, usize),
    out: Out,
    rows: Vec<Row>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_args(&args)?;
    // The engine places shards on the main thread's affinity mask: this thread never pins
    // itself; every measurement runs on a pinned thread of its own.
    let cpus = engine_rt::usable_cpus();
    if cpus.len() < 2 {
        bail!("needs two usable CPUs, has {cpus:?}");
    }
    let (ping_frames, produce_frames) = frame_sizes(args.value_bytes)?;
    let out = Out::open(args.json.as_deref())?;
    let mut b = Bench {
        shard_cpu: cpus[0],
        other_cpu: cpus[1],
        cpus,
        ping_frames,
        produce_frames,
        out,
        rows: Vec::new(),
        args,
    };
    let load_start = loadavg();
    println!("load average at start: {load_start}");
    let ((ping_req, ping_resp), (prod_req, prod_resp)) = (ping_frames, produce_frames);
    println!(
        "net_rtt: 127.0.0.1, shard CPU {}, other CPU {}; {} round trips after \
         {} warm-up, one at a time; frames: ping {ping_req}/{ping_resp} B, produce of one \
         {}-byte record {prod_req}/{prod_resp} B (request/response)",
        b.shard_cpu, b.other_cpu, b.args.count, b.args.warmup, b.args.value_bytes
    );
    header();
    if b.has("raw") {
        b.raw_phase()?;
    }
    let (dir, _guard) = bench_dir(Some(&b.args.dir))?;
    for spin in b.args.spin_before_park_us.clone() {
        if b.has("shardline") {
            b.shardline_phase(&dir, spin)?;
        }
        if b.has("forward") {
            b.forward_phase(&dir, spin)?;
        }
    }
    let load_end = loadavg();
    println!("load average at end: {load_end}");
    b.out.emit(serde_json::json!({
        "kind": "run",
        "count": b.args.count,
        "warmup": b.args.warmup,
        "shard_cpu": b.shard_cpu,
        "other_cpu": b.other_cpu,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "ping_frame_bytes": [ping_req, ping_resp],
        "produce_frame_bytes": [prod_req, prod_resp],
    }))?;
    b.print_ratios()
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    for p in &args.phases {
        if !["raw", "shardline", "forward"].contains(&p.as_str()) {
            bail!("unknown phase '{p}' (raw, shardline, forward)");
        }
    }
    for p in &args.placements {
        if !["cross", "same"].contains(&p.as_str()) {
            bail!("unknown placement '{p}' (cross, same)");
        }
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them (empty if unreadable).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Out {
    /// Output to stdout, and JSON lines appended to `json` if given.
    fn open(json: Option<&std::path::Path>) -> anyhow::Result<Out> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let json = match json {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Out {
            json,
            run: started.to_string(),
        })
    }
}

impl Bench {
    fn has(&self, phase: &str) -> bool {
        self.args.phases.iter().any(|x| x == phase)
    }

    /// The client's CPU in a placement: the shard's (`same`) or the other one (`cross`).
    fn client_cpu(&self, placement: &str) -> usize {
        if placement == "same" {
            self.shard_cpu
        } else {
            self.other_cpu
        }
    }

    /// Prints and records one measurement.
    fn push(&mut self, r: Row) -> anyhow::Result<()> {
        self.out.row(&r)?;
        self.rows.push(r);
        Ok(())
    }

    /// The yardstick: raw ping-pongs of `--sizes` and of Shardline's frame shapes, in each
    /// placement.
    fn raw_phase(&mut self) -> anyhow::Result<()> {
        let ((ping_req, ping_resp), (prod_req, prod_resp)) =
            (self.ping_frames, self.produce_frames);
        let mut shapes: Vec<(String, usize, usize, bool)> = self
            .args
            .sizes
            .iter()
            .map(|&s| (format!("tcp ping-pong {s} B"), s, s, false))
            .collect();
        shapes.push((
            "tcp ping-pong, ping-shaped".into(),
            ping_req,
            ping_resp,
            false,
        ));
        shapes.push((
            "tcp ping-pong, produce-shaped".into(),
            prod_req,
            prod_resp,
            false,
        ));
        // Diagnostics: replies written as Shardline's server writes them (header, then body).
        shapes.push((
            "tcp, ping-shaped, 2-write reply".into(),
            ping_req,
            ping_resp,
            true,
        ));
        shapes.push((
            "tcp, produce-shaped, 2-write reply".into(),
            prod_req,
            prod_resp,
            true,
        ));
        for placement in self.args.placements.clone() {
            for (what, req, resp, split) in &shapes {
                let client_cpu = self.client_cpu(&placement);
                let h = raw_pingpong(*req, *resp, *split, self.shard_cpu, client_cpu, &self.args)?;
                self.push(Row {
                    phase: "raw",
                    what: what.clone(),
                    placement: placement.clone(),
                    spin_us: None,
                    req_bytes: *req,
                    resp_bytes: *resp,
                    s: Summary::of(&h),
                })?;
            }
        }
        Ok(())
    }

    /// One shard: ping and produce through the client library and the raw codec, in each
    /// placement.
    fn shardline_phase(&mut self, dir: &std::path::Path, spin: u64) -> anyhow::Result<()> {
        let ((ping_req, ping_resp), (prod_req, prod_resp)) =
            (self.ping_frames, self.produce_frames);
        let sub = dir.join(format!("one-shard-spin{spin}"));
        let server = start_server(&sub, 1, spin)?;
        let addr = server.addr();
        let admin = Client::connect(&addr.to_string(), ClientConfig::default())?;
        admin.create_topic(
            TOPIC,
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        )?;
        drop(admin);
        for placement in self.args.placements.clone() {
            let (vb, n, w) = (self.args.value_bytes, self.args.count, self.args.warmup);
            let hs = on_cpu(self.client_cpu(&placement), move || {
                shardline_client_rtts(addr, vb, n, w)
            })?;
            let names = [
                ("client ping", ping_req, ping_resp),
                ("client produce 1x100B leader", prod_req, prod_resp),
                ("raw-codec ping", ping_req, ping_resp),
                ("raw-codec produce 1x100B leader", prod_req, prod_resp),
            ];
            for (h, (what, req, resp)) in hs.iter().zip(names) {
                self.push(Row {
                    phase: "shardline",
                    what: what.replace("100B", &format!("{vb}B")),
                    placement: placement.clone(),
                    spin_us: Some(spin),
                    req_bytes: req,
                    resp_bytes: resp,
                    s: Summary::of(h),
                })?;
            }
        }
        server.shutdown()?;
        Ok(())
    }

    /// Two shards: produce to each partition via its owner and via the other shard; prints the
    /// cross-shard hop (forwarded - owner) per partition.
    fn forward_phase(&mut self, dir: &std::path::Path, spin: u64) -> anyhow::Result<()> {
        let sub = dir.join(format!("two-shards-spin{spin}"));
        let server = start_server(&sub, 2, spin)?;
        let addr = server.addr();
        let shard_addrs = server.shard_addrs();
        let (vb, n, w) = (self.args.value_bytes, self.args.count, self.args.warmup);
        let hs = on_cpu(self.other_cpu, move || {
            forward_rtts(addr, &shard_addrs, vb, n, w)
        })?;
        let mut by_partition: Vec<(u32, Summary, Summary)> = Vec::new();
        let mut direct = None;
        for ForwardRtts {
            partition,
            via,
            frame_bytes: (req_bytes, resp_bytes),
            h,
        } in &hs
        {
            let owner = *via == *partition;
            let what = format!(
                "produce p{partition} via shard {via} ({})",
                if owner { "owner" } else { "forwarded" }
            );
            // Placement: the client's CPU relative to the partition owner's.
            let same = self.cpus[*partition as usize] == self.other_cpu;
            let r = Row {
                phase: "forward",
                what,
                placement: if same { "same" } else { "cross" }.to_string(),
                spin_us: Some(spin),
                req_bytes: *req_bytes,
                resp_bytes: *resp_bytes,
                s: Summary::of(h),
            };
            let s = r.s;
            self.push(r)?;
            if owner {
                direct = Some(s);
            } else if let Some(d) = direct.take() {
                by_partition.push((*partition, d, s));
            }
        }
        for (partition, d, f) in by_partition {
            self.print_hop(spin, partition, d, f)?;
        }
        server.shutdown()?;
        Ok(())
    }

    fn print_hop(
        &mut self,
        spin: u64,
        partition: u32,
        d: Summary,
        f: Summary,
    ) -> anyhow::Result<()> {
        let other_cpu = self.other_cpu;
        println!(
            "forward   cross-shard hop, partition {partition} (owner on cpu {}, client on \
             cpu {other_cpu}), spin {spin}: p50 {:+.1} us, p99 {:+.1} us (forwarded - owner)",
            self.cpus[partition as usize],
            f.p50 - d.p50,
            f.p99 - d.p99
        );
        self.out.emit(serde_json::json!({
            "kind": "hop",
            "spin_before_park_us": spin,
            "partition": partition,
            "owner_cpu": self.cpus[partition as usize],
            "client_cpu": other_cpu,
            "direct_us": d.json(),
            "forwarded_us": f.json(),
            "hop_p50_us": ((f.p50 - d.p50) * 10.0).round() / 10.0,
            "hop_p99_us": ((f.p99 - d.p99) * 10.0).round() / 10.0,
        }))
    }

    /// Ratios: Shardline against the raw ping-pong shaped like its frames, same placement.
    fn print_ratios(&mut self) -> anyhow::Result<()> {
        let raw_of = |shape: &str, placement: &str| {
            self.rows
                .iter()
                .find(|r| {
                    r.phase == "raw"
                        && r.what == format!("tcp ping-pong, {shape}")
                        && r.placement == placement
                })
                .map(|r| r.s)
        };
        let mut ratios = Vec::new();
        for r in self.rows.iter().filter(|r| r.phase == "shardline") {
            let shape = if r.what.contains("ping") {
                "ping-shaped"
            } else {
                "produce-shaped"
            };
            if let Some(y) = raw_of(shape, &r.placement) {
                ratios.push((r.clone(), shape, y));
            }
        }
        if !ratios.is_empty() {
            println!(
                "\nratios to the raw ping-pong of the same frame sizes and placement (target: \
                 p50 and p99 <= 1.5x)"
            );
        }
        for (r, shape, y) in ratios {
            self.print_ratio(&r, shape, y)?;
        }
        Ok(())
    }

    fn print_ratio(&mut self, r: &Row, shape: &str, y: Summary) -> anyhow::Result<()> {
        let (p50, p99) = (r.s.p50 / y.p50, r.s.p99 / y.p99);
        let met = p50 <= RATIO_TARGET && p99 <= RATIO_TARGET;
        println!(
            "{:<34} {:<6} spin {:>3}: p50 {:>6.1} / {:>6.1} us = {:>5.2}x   p99 {:>7.1} / {:>7.1} \
             us = {:>5.2}x   {}",
            r.what,
            r.placement,
            r.spin_us.unwrap_or(0),
            r.s.p50,
            y.p50,
            p50,
            r.s.p99,
            y.p99,
            p99,
            if met { "met" } else { "missed" }
        );
        self.out.emit(serde_json::json!({
            "kind": "ratio",
            "what": r.what,
            "placement": r.placement,
            "spin_before_park_us": r.spin_us,
            "yardstick": format!("tcp ping-pong, {shape}"),
            "shardline_us": r.s.json(),
            "yardstick_us": y.json(),
            "ratio_p50": (p50 * 100.0).round() / 100.0,
            "ratio_p99": (p99 * 100.0).round() / 100.0,
            "target": RATIO_TARGET,
            "met": met,
        }))
    }
}

/// Produce round trips to `partition` through shard `via`'s direct address.
struct ForwardRtts {
    partition: u32,
    via: u32,
    /// (request, response) frame bytes.
    frame_bytes: (usize, usize),
    h: Histogram<u64>,
}

/// On a two-shard server whose partition p lives on shard p: produce round trips to each
/// partition via each shard's direct address, the owner first for each partition.
fn forward_rtts(
    addr: SocketAddr,
    shard_addrs: &[SocketAddr],
    value_bytes: usize,
    count: usize,
    warmup: usize,
) -> anyhow::Result<Vec<ForwardRtts>> {
    let admin = Client::connect(&addr.to_string(), ClientConfig::default())?;
    admin.create_topic(
        FORWARD_TOPIC,
        TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        },
    )?;
    let route = admin.route(FORWARD_TOPIC)?;
    if route.partition_shards != [0, 1] {
        bail!(
            "expected partition p on shard p, got {:?}",
            route.partition_shards
        );
    }
    drop(admin);
    let mut hs = Vec::new();
    for partition in 0..2u32 {
        for via in [partition, 1 - partition] {
            let mut raw = Raw::connect(shard_addrs[via as usize])?;
            if raw.shard != via {
                bail!("shard {via}'s address was served by shard {}", raw.shard);
            }
            let h = raw_produce_rtts(
                &mut raw,
                FORWARD_TOPIC,
                partition,
                value_bytes,
                count,
                warmup,
            )?;
            hs.push(ForwardRtts {
                partition,
                via,
                frame_bytes: raw.last_sizes,
                h,
            });
        }
    }
    Ok(hs)
}
