//! The cost of TLS and of encryption at rest, measured side by side in one run
//! (docs/performance.md, "Security overhead"). The yardstick is the same workload with both off.
//!
//! Two in-process servers (one shard each, pinned to the first usable CPU): one plain TCP, one
//! TLS 1.3 (rustls, ring, AES-256-GCM; certificate made at start with rcgen). Each has a plain
//! topic and an encrypted one (`[server.encryption] topics`). For each of the four
//! combinations, in interleaved rounds (so drift hits all alike), the client library (client
//! thread on the other CPU):
//! - produce: `--requests` closed-loop produce requests, each one batch of `--records` records
//!   of `--value-bytes`, `Acks::Leader` (no fsync in the path: the network and crypto cost is
//!   what is measured); latency per request, throughput = batch bytes / wall time;
//! - fetch: reads everything back with 1 MiB fetches (decryption on the way out for the
//!   encrypted topic); throughput only.
//!
//! Run: `cargo run --release -p shardline-bench --bin security_overhead -- [--json FILE]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use shardline_bench::{LatencySummary, bench_dir, latency_histogram, mib_per_s, micros};
use shardline_engine::crypto::Keyring;
use shardline_engine::{EngineConfig, batch};
use shardline_net::client::{Acks, Client, ClientConfig, ClientTls, TopicConfig};
use shardline_net::server::{EncryptionConfig, Server, ServerConfig};
use shardline_net::tls::ServerTlsConfig;

/// The two topics of each server: `enc-*` topics are encrypted at rest.
const PLAIN_TOPIC: &str = "plain-t";
const ENCRYPTED_TOPIC: &str = "enc-t";
/// Read-back: the most one fetch asks for, how long it waits for data, and how long the whole
/// read-back may take.
const FETCH_BYTES_MAX: u32 = 1 << 20;
const FETCH_WAIT: Duration = Duration::from_millis(100);
const READ_BACK_LIMIT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(about = "Throughput and latency with TLS and encryption at rest on and off")]
struct Args {
    /// Directory on a real disk for the engines' data.
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Produce requests per measurement.
    #[arg(long, default_value_t = 5000)]
    requests: u32,
    /// Records per batch.
    #[arg(long, default_value_t = 64)]
    records: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Interleaved rounds (each measures all four combinations).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Also write the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Setup {
    tls: bool,
    server: Server,
    client: Client,
}

fn start(dir: &Path, tls: Option<ServerTlsConfig>, key: &Path) -> anyhow::Result<Server> {
    let engine = EngineConfig {
        shards: 1,
        pin_shards: true,
        encryption_key_file: Some(key.to_path_buf()),
        ..EngineConfig::with_data_dir(dir)
    };
    let server = ServerConfig {
        listen: "127.0.0.1:0".into(),
        tls,
        encryption: EncryptionConfig {
            topics: vec!["enc-*".into()],
        },
        ..ServerConfig::default()
    };
    Server::start(engine, server).context("starting a server")
}

#[derive(Default)]
struct Result1 {
    produce: Option<Histogram<u64>>,
    produce_bytes: u64,
    produce_time: Duration,
    fetch_bytes: u64,
    fetch_time: Duration,
}

fn measure(
    client: &Client,
    topic: &str,
    batch: &bytes::Bytes,
    requests: u32,
    into: &mut Result1,
) -> anyhow::Result<()> {
    let h = match &mut into.produce {
        Some(h) => h,
        None => into.produce.insert(latency_histogram()?),
    };
    let start_offset = client
        .list_offsets(topic, 0, shardline_net::client::OffsetSpec::Latest)
        .context("list offsets")?;
    let t0 = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        client.produce(topic, 0, batch.clone(), Acks::Leader)?;
        h.saturating_record(micros(t.elapsed()));
    }
    into.produce_time += t0.elapsed();
    into.produce_bytes += batch.len() as u64 * u64::from(requests);
    // Read it all back.
    let t0 = Instant::now();
    let mut offset = start_offset;
    let end = start_offset + u64::from(requests) * batch::decode(batch)?.1.len() as u64;
    let mut fetched = 0u64;
    // Leader acks come before the write: the tail becomes visible a flush later (long poll).
    let deadline = Instant::now() + READ_BACK_LIMIT;
    while offset < end {
        let f = client.fetch(topic, 0, offset, FETCH_WAIT, FETCH_BYTES_MAX)?;
        anyhow::ensure!(
            f.error_code == 0,
            "fetch error {}: {:?}",
            f.error_code,
            f.error_message
        );
        fetched += f.chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        anyhow::ensure!(Instant::now() < deadline, "fetch stuck at offset {offset}");
        offset = offset.max(f.next_offset);
    }
    into.fetch_time += t0.elapsed();
    into.fetch_bytes += fetched;
    Ok(())
}

/// The certificate, its key, the CA the client trusts, and the at-rest keyring, made now.
struct Credentials {
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_path: PathBuf,
    keys: PathBuf,
}

fn write_credentials(dir: &Path) -> anyhow::Result<Credentials> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .context("certificate")?;
    let creds = Credentials {
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
        ca_path: dir.join("ca.pem"),
        keys: dir.join("keys.json"),
    };
    std::fs::write(&creds.cert_path, cert.cert.pem())?;
    std::fs::write(&creds.key_path, cert.signing_key.serialize_pem())?;
    std::fs::write(&creds.ca_path, cert.cert.pem())?;
    std::fs::write(&creds.keys, Keyring::generate_file_text(1)?)?;
    Ok(creds)
}

/// A server with TLS off, then one with TLS on, each with a client and both topics.
fn start_setups(dir: &Path, creds: &Credentials) -> anyhow::Result<Vec<Setup>> {
    let mut setups = Vec::new();
    for tls in [false, true] {
        let data = dir.join(if tls { "tls" } else { "plain" });
        let server_tls = tls.then(|| ServerTlsConfig::new(&creds.cert_path, &creds.key_path));
        let server = start(&data, server_tls, &creds.keys)?;
        let config = ClientConfig {
            tls: if tls {
                Some(ClientTls::new(&creds.ca_path, None)?)
            } else {
                None
            },
            ..ClientConfig::default()
        };
        let client = Client::connect(&server.addr().to_string(), config)?;
        for t in [PLAIN_TOPIC, ENCRYPTED_TOPIC] {
            client.create_topic(
                t,
                TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            )?;
        }
        setups.push(Setup {
            tls,
            server,
            client,
        });
    }
    Ok(setups)
}

/// The batch every produce sends: `--records` values of `--value-bytes`, a fixed pattern.
fn test_batch(args: &Args) -> anyhow::Result<bytes::Bytes> {
    let values = (0..args.records).map(|i| {
        let mut v = vec![0u8; args.value_bytes];
        for (j, b) in v.iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8;
        }
        v
    });
    Ok(batch::batch_of_values(values)?)
}

/// A warm-up, then `--rounds` interleaved rounds over the four combinations; the results keyed
/// by (TLS, encrypted at rest).
fn run_rounds(
    args: &Args,
    setups: &[Setup],
    batch: &bytes::Bytes,
) -> anyhow::Result<Vec<((bool, bool), Result1)>> {
    // Warm-up: connections, caches, allocator.
    for s in setups {
        for t in [PLAIN_TOPIC, ENCRYPTED_TOPIC] {
            let mut sink = Result1::default();
            measure(&s.client, t, batch, args.requests / 10 + 1, &mut sink)?;
        }
    }
    let mut results: Vec<((bool, bool), Result1)> = Vec::new();
    for s in setups {
        for enc in [false, true] {
            results.push(((s.tls, enc), Result1::default()));
        }
    }
    for _ in 0..args.rounds {
        for s in setups {
            for enc in [false, true] {
                let topic = if enc { ENCRYPTED_TOPIC } else { PLAIN_TOPIC };
                let r = results
                    .iter_mut()
                    .find(|(k, _)| *k == (s.tls, enc))
                    .map(|(_, r)| r)
                    .context("result slot")?;
                measure(&s.client, topic, batch, args.requests, r)?;
            }
        }
    }
    Ok(results)
}

/// Prints the table; returns one JSON line per combination.
fn report(
    args: &Args,
    batch_bytes: usize,
    results: &[((bool, bool), Result1)],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut lines = Vec::new();
    println!(
        "batch {} B ({} x {} B), {} requests x {} rounds, acks leader",
        batch_bytes, args.records, args.value_bytes, args.requests, args.rounds
    );
    println!("tls   at-rest  produce MiB/s  p50 us  p99 us  p999 us  fetch MiB/s");
    for ((tls, enc), r) in results {
        let h = r.produce.as_ref().context("no samples")?;
        let s = LatencySummary::of(h);
        let produce = mib_per_s(r.produce_bytes, r.produce_time);
        let fetch = mib_per_s(r.fetch_bytes, r.fetch_time);
        println!(
            "{:<5} {:<8} {:>13.1} {:>7} {:>7} {:>8} {:>12.1}",
            if *tls { "on" } else { "off" },
            if *enc { "on" } else { "off" },
            produce,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            fetch
        );
        lines.push(serde_json::json!({
            "tls": tls, "encrypted_at_rest": enc, "batch_bytes": batch_bytes,
            "produce_mib_per_s": (produce * 10.0).round() / 10.0,
            "produce_latency_us": s.to_json(),
            "fetch_mib_per_s": (fetch * 10.0).round() / 10.0,
        }));
    }
    Ok(lines)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, _guard) = bench_dir(Some(&args.dir))?;
    let creds = write_credentials(&dir)?;
    // Shards pin to the first usable CPU; the client thread runs on another one.
    let first_cpu = core_affinity::get_core_ids()
        .and_then(|c| c.first().map(|c| c.id))
        .unwrap_or(0);
    shardline_bench::pin_current_thread_away_from(first_cpu);
    let setups = start_setups(&dir, &creds)?;
    let batch = test_batch(&args)?;
    let results = run_rounds(&args, &setups, &batch)?;
    let lines = report(&args, batch.len(), &results)?;
    if let Some(path) = &args.json {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text)?;
    }
    for s in setups {
        drop(s.client);
        s.server.shutdown()?;
    }
    Ok(())
}
