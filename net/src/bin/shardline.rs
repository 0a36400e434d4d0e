//! `shardline`: the broker (`serve`) and a command line client, as DESIGN.md's "Command line
//! contracts" specify:
//!
//! ```text
//! shardline serve [--config FILE] [--data-dir DIR] [--listen 127.0.0.1:7070] [--shards N]
//!                 [--metrics-listen 127.0.0.1:9464] [--tls-cert FILE --tls-key FILE
//!                 [--tls-client-ca FILE]]
//! shardline [--tls-ca FILE [--tls-client-cert FILE --tls-client-key FILE]
//!           [--tls-server-name NAME]] <client command>   (TLS, docs/security.md)
//! shardline [--addr 127.0.0.1:7070] topic create NAME [--partitions N] [--retention-bytes B]
//!                                                     [--retention-ms MS]
//! shardline [--addr ...] topic list | topic describe NAME | topic delete NAME
//! shardline [--addr ...] produce TOPIC [--key K] [--acks none|leader|durable] [--idempotent]
//! shardline [--addr ...] consume TOPIC [--group G [--session-timeout-ms MS]]
//!                                      [--from earliest|latest|OFFSET] [--count N] [--timeout-ms MS]
//! shardline [--addr ...] stats [--no-partitions]
//! shardline [--addr ...] top [--interval-ms MS] [--iterations N]
//! shardline [--addr ...] topic alter NAME [--retention-bytes B|none] [--retention-ms MS|none]
//! shardline [--addr ...] group list | group describe GROUP
//! shardline [--addr ...] group reset-offsets GROUP --topic T [--partition N] [--dry-run]
//!                        --to-earliest|--to-latest|--to-offset N|--to-timestamp MS
//! shardline [--addr ...] queue purge QUEUE   (and the other queue commands, docs/semantics.md)
//! shardline serve --print-config [--config FILE] [flags]
//! ```
//! Output for machines goes to stdout (`serve` prints exactly `shardline listening on <addr>`;
//! `produce` prints the number of messages acknowledged; `consume` one value per line); logs and
//! errors go to stderr, errors as one line `shardline: error: ...`. With `--group`, `consume`
//! is a member of the consumer group (docs/semantics.md): it reads only its share of the
//! partitions, starts each at the group's committed offset (`--from` applies to partitions
//! without one), and commits what it has printed and flushed (at least once).
//! Exit codes: 0 success, 1 a failure (server unreachable, unknown topic, a server error),
//! 2 bad flags.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shardline_net::cli::config::{FileConfig, LogFormat};
use shardline_net::client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, SendHandle, TopicConfig, code,
};
use shardline_net::protocol::SettingChange;
use shardline_net::server::Server;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[path = "shardline/group.rs"]
mod group_cli;
#[path = "shardline/queue.rs"]
mod queue_cli;
#[path = "shardline/security.rs"]
mod security;

const DEFAULT_ADDR: &str = "127.0.0.1:7070";

#[derive(Debug, Parser)]
#[command(
    name = "shardline",
    version,
    about = "Shardline: a thread-per-core message broker, and its command line client"
)]
struct Cli {
    /// Server to talk to (client commands) [default: 127.0.0.1:7070]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    addr: Option<String>,
    #[command(flatten)]
    security: security::ClientSecurityArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send one message per stdin line; prints the number of messages acknowledged.
    Produce(ProduceArgs),
    /// Print messages, one value per line, until --count messages or --timeout-ms.
    Consume(ConsumeArgs),
    /// Print every figure of the server as tables (shards, latencies, partitions, requests).
    Stats {
        /// Leave out the per-partition table.
        #[arg(long)]
        no_partitions: bool,
    },
    /// A live view: per-topic rates, per-shard latency percentiles; q or Ctrl-C quits.
    Top {
        /// Refresh every this many milliseconds.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval_ms: u64,
        /// Stop after this many refreshes (default: until q or Ctrl-C).
        #[arg(long, value_name = "N")]
        iterations: Option<u64>,
    },
    /// Work queues: create, send, receive, ack, nack, stats, purge, dead letters.
    #[command(subcommand)]
    Queue(queue_cli::QueueCommand),
    /// Consumer groups: list, describe (members, offsets, lag), reset offsets.
    #[command(subcommand)]
    Group(group_cli::GroupCommand),
    #[command(flatten)]
    Security(security::SecurityCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file with an [engine] and a [server] table; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where topics and metadata live (engine.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bootstrap listener; port 0 picks a free port (server.listen) [default: 127.0.0.1:7070]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Number of shards, one per core; 0 = every usable core (engine.shards).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Prometheus endpoint, GET /metrics; port 0 picks one (metrics.listen)
    /// [default: 127.0.0.1:9464]
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Print the effective configuration (file, defaults and flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Kafka wire-protocol listener (kafka.listen); port 0 picks one (docs/kafka.md).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_listen: Option<String>,
    #[command(flatten)]
    tls: security::ServeTlsArgs,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1, value_name = "N")]
        partitions: u32,
        /// Keep at most this many bytes per partition (whole segments are deleted).
        #[arg(long, value_name = "B")]
        retention_bytes: Option<u64>,
        /// Keep data at most this long.
        #[arg(long, value_name = "MS")]
        retention_ms: Option<u64>,
    },
    /// List topics: name, partitions, retention.
    List,
    /// Show a topic's settings and each partition's state.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Change a topic's retention; a setting not given is kept, `none` removes the limit.
    Alter {
        name: String,
        #[arg(long, value_name = "B|none", value_parser = parse_setting)]
        retention_bytes: Option<SettingChange>,
        #[arg(long, value_name = "MS|none", value_parser = parse_setting)]
        retention_ms: Option<SettingChange>,
    },
}

fn parse_setting(s: &str) -> Result<SettingChange, String> {
    match s {
        "none" => Ok(SettingChange::Clear),
        _ => s
            .parse::<u64>()
            .map(SettingChange::Set)
            .map_err(|_| "expected a number or 'none'".to_string()),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AcksArg {
    None,
    Leader,
    Durable,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::Durable => Acks::Durable,
        }
    }
}

#[derive(Debug, Args)]
struct ProduceArgs {
    topic: String,
    /// Key of every message (messages with one key go to one partition).
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// What counts as acknowledged: none (sent), leader (appended), durable (fsynced).
    #[arg(long, value_enum, default_value_t = AcksArg::Durable)]
    acks: AcksArg,
    /// Idempotent producer: retries after lost connections or timeouts never duplicate.
    #[arg(long)]
    idempotent: bool,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    topic: String,
    /// Consume as a member of this group: partitions are shared with the group's other
    /// members, and consumed offsets are committed (resumed on the next run).
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// With --group: a member silent this long is dropped and its partitions move.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Where to start in every partition: earliest, latest, or an offset (with --group: only
    /// partitions without a committed offset).
    #[arg(long, default_value = "earliest", value_parser = parse_from, value_name = "FROM")]
    from: OffsetSpec,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long, whatever was received (default: no limit).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

fn parse_from(s: &str) -> Result<OffsetSpec, String> {
    match s {
        "earliest" => Ok(OffsetSpec::Earliest),
        "latest" => Ok(OffsetSpec::Latest),
        _ => s
            .parse::<u64>()
            .map(OffsetSpec::At)
            .map_err(|_| "expected earliest, latest or an offset".to_string()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // `serve` sets up logging once its configuration is known (`[log]`).
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging("warn", LogFormat::Full);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("shardline: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print in full; flag errors are one line plus a hint, exit code 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    // clap puts the details (missing arguments, possible values) on indented lines after the
    // first; keep them, drop the usage block.
    let rendered = e.to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut message = first.strip_prefix("error: ").unwrap_or(first).to_string();
    for detail in lines.take_while(|l| l.starts_with("  ")) {
        message.push(' ');
        message.push_str(detail.trim());
    }
    eprintln!("shardline: error: {message} (see 'shardline --help')");
    ExitCode::from(2)
}

/// Logs go to stderr; `RUST_LOG`, when set, wins over the configured level.
fn init_logging(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(filter);
    match format {
        LogFormat::Full => builder.init(),
        LogFormat::Compact => builder.compact().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Serve(args) = cli.command {
        if cli.addr.is_some() {
            bail!("--addr is for client commands; serve listens on --listen");
        }
        if cli.security.is_set() {
            bail!("--tls-ca, --user and friends are for client commands; serve uses --tls-cert");
        }
        return serve(args);
    }
    if let Command::Security(command) = cli.command {
        return security::run(command);
    }
    let addr = cli.addr.as_deref().unwrap_or(DEFAULT_ADDR);
    let mut client_config = ClientConfig::default();
    cli.security.apply(&mut client_config)?;
    let client = Client::connect(addr, client_config)?;
    match cli.command {
        Command::Serve(_) | Command::Security(_) => Ok(()),
        Command::Topic(t) => topic(&client, t),
        Command::Produce(args) => produce(client, args),
        Command::Consume(args) => consume(client, args),
        Command::Stats { no_partitions } => {
            let m = client.metrics(!no_partitions)?;
            let mut out = io::stdout().lock();
            out.write_all(shardline_net::cli::stats::render(&m).as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Top {
            interval_ms,
            iterations,
        } => {
            let options = shardline_net::cli::top::TopOptions {
                interval: Duration::from_millis(interval_ms.max(100)),
                iterations,
            };
            Ok(shardline_net::cli::top::run(&client, options)?)
        }
        Command::Queue(q) => queue_cli::run(&client, q),
        Command::Group(g) => group_cli::run(&client, g),
    }
}

// ---------------------------------------------------------------------------------------------
// serve

fn load_config(path: &Path) -> anyhow::Result<FileConfig> {
    FileConfig::load(path).map_err(|e| anyhow!("config {}: {e}", path.display()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => load_config(path)?,
        None => FileConfig::default(),
    };
    // An address set by the operator must be served; the default one is best effort (a
    // second server on the machine keeps running without metrics, with a warning).
    let metrics_explicit = args.metrics_listen.is_some()
        || args.config.is_some() && config.metrics != Default::default();
    if let Some(dir) = args.data_dir {
        config.engine.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.engine.shards = shards;
    }
    args.tls.apply(&mut config.server.tls)?;
    args.tls
        .apply_security(&mut config.engine, &mut config.server);
    if let Some(metrics) = args.metrics_listen {
        config.metrics.listen = metrics;
        config.metrics.enabled = true;
    }
    if let Some(kafka) = args.kafka_listen {
        config.kafka.listen = Some(kafka);
    }
    config
        .validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    if args.print_config {
        let text = config.to_toml().context("printing the configuration")?;
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    init_logging(&config.log.level, config.log.format);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.engine.data_dir.display(),
        "starting"
    );
    // Registered before the server starts, so that a signal during start-up is not lost: it
    // is handled (a clean shutdown) as soon as the server is up.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    config.server.kafka = config.kafka.clone();
    let mut server =
        Server::start(config.engine, config.server).context("cannot start the server")?;
    if config.metrics.enabled {
        match server.serve_metrics(&config.metrics.listen) {
            Ok(_) => {}
            Err(e) if !metrics_explicit => {
                tracing::warn!(error = %e, "metrics endpoint not started (default address busy); set metrics.listen");
            }
            Err(e) => {
                let _ = server.shutdown();
                return Err(anyhow!("cannot serve metrics: {e}"));
            }
        }
    }
    // `Server::start` warns when the address is not loopback and TLS is off.
    let addr = server.addr();
    info!(%addr, shards = ?server.shard_addrs(), "serving");
    {
        let mut out = io::stdout().lock();
        writeln!(out, "shardline listening on {addr}").context("stdout")?;
        // Second line only with a Kafka listener (scripts reading one line are unaffected).
        if let Some(kafka) = server.kafka_addr() {
            writeln!(out, "kafka listening on {kafka}").context("stdout")?;
        }
        out.flush().context("stdout")?;
    }
    let signal = signals.forever().next();
    info!(?signal, "shutting down");
    server.shutdown().context("shutdown")?;
    info!("stopped");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// client commands

/// A clearer message for the errors people hit most.
fn explain(e: ClientError, topic: &str) -> anyhow::Error {
    match e.code() {
        Some(code::UNKNOWN_TOPIC) => anyhow!("unknown topic '{topic}'"),
        Some(code::TOPIC_EXISTS) => anyhow!("topic '{topic}' already exists"),
        _ => e.into(),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[allow(
    clippy::too_many_lines,
    reason = "one short arm per `shardline topic` subcommand"
)]
fn topic(client: &Client, command: TopicCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_bytes,
            retention_ms,
        } => {
            let config = TopicConfig {
                partitions,
                retention_bytes,
                retention_ms,
                ..TopicConfig::default()
            };
            let t = client
                .create_topic(&name, config)
                .map_err(|e| explain(e, &name))?;
            let n = t.partition_shards.len();
            let plural = if n == 1 { "" } else { "s" };
            writeln!(out, "created topic {} ({n} partition{plural})", t.name)?;
        }
        TopicCommand::List => {
            for t in client.list_topics()? {
                writeln!(
                    out,
                    "{}\tpartitions={}\tretention_bytes={}\tretention_ms={}",
                    t.name,
                    t.partition_shards.len(),
                    opt(t.config.retention_bytes),
                    opt(t.config.retention_ms)
                )?;
            }
        }
        TopicCommand::Describe { name } => {
            let d = client
                .describe_topic(&name)
                .map_err(|e| explain(e, &name))?;
            let c = d.topic.config;
            writeln!(
                out,
                "topic {} id={} partitions={} retention_bytes={} retention_ms={} \
                 segment_bytes={} segment_ms={}",
                d.topic.name,
                d.topic.topic_id,
                c.partitions,
                opt(c.retention_bytes),
                opt(c.retention_ms),
                opt(c.segment_bytes),
                opt(c.segment_ms)
            )?;
            for p in d.partitions {
                write!(
                    out,
                    "partition {} shard={} log_start={} high_watermark={} durable_offset={} \
                     size_bytes={} segments={} produced_records={} fetched_records={}",
                    p.partition,
                    p.shard,
                    p.log_start,
                    p.high_watermark,
                    p.durable_offset,
                    p.size_bytes,
                    p.segments,
                    p.produced_records,
                    p.fetched_records
                )?;
                match p.failure {
                    Some(f) => writeln!(out, " failure={f:?}")?,
                    None => writeln!(out)?,
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).map_err(|e| explain(e, &name))?;
            writeln!(out, "deleted topic {name}")?;
        }
        TopicCommand::Alter {
            name,
            retention_bytes,
            retention_ms,
        } => {
            if retention_bytes.is_none() && retention_ms.is_none() {
                bail!("nothing to change: give --retention-bytes and/or --retention-ms");
            }
            let t = client
                .alter_topic_retention(
                    &name,
                    retention_bytes.unwrap_or_default(),
                    retention_ms.unwrap_or_default(),
                )
                .map_err(|e| explain(e, &name))?;
            writeln!(
                out,
                "altered topic {} retention_bytes={} retention_ms={}",
                t.name,
                opt(t.config.retention_bytes),
                opt(t.config.retention_ms)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Messages sent and not yet waited for; beyond this, `produce` waits for the oldest.
const PRODUCE_HANDLES_MAX: usize = 65_536;

fn produce(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    // Fail early and clearly on an unknown topic.
    client
        .route(&args.topic)
        .map_err(|e| explain(e, &args.topic))?;
    let config = ProducerConfig {
        acks: args.acks.into(),
        idempotent: args.idempotent,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let key = args.key.as_deref().map(str::as_bytes);
    let mut handles: VecDeque<SendHandle> = VecDeque::new();
    let mut tally = Tally::default();
    for line in io::stdin().lock().split(b'\n') {
        let mut line = line.context("reading stdin")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        handles.push_back(producer.send(&args.topic, key, line, Vec::new()));
        if handles.len() >= PRODUCE_HANDLES_MAX
            && let Some(h) = handles.pop_front()
        {
            tally.add(h.wait());
        }
    }
    for h in handles {
        tally.add(h.wait());
    }
    producer.close()?;
    println!("{}", tally.acked);
    match tally.first_error {
        None => Ok(()),
        Some(e) => Err(anyhow!(
            "{} of {} messages failed; first error: {}",
            tally.failed,
            tally.acked + tally.failed,
            explain(e, &args.topic)
        )),
    }
}

#[derive(Default)]
struct Tally {
    acked: u64,
    failed: u64,
    first_error: Option<ClientError>,
}

impl Tally {
    fn add<T>(&mut self, r: Result<T, ClientError>) {
        match r {
            Ok(_) => self.acked += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// How long one poll waits when there is no --timeout-ms.
const POLL_WAIT: Duration = Duration::from_secs(1);

fn consume(client: Client, args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = &args.group {
        return group_consume::run(client, &args, group);
    }
    let partitions = client
        .partitions(&args.topic)
        .map_err(|e| explain(e, &args.topic))?;
    let deadline = args
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    // `--from OFFSET` means "records at or after OFFSET" in every partition: a partition that
    // ends before OFFSET is followed from its end, one that starts after it from its start.
    let min_offset = match args.from {
        OffsetSpec::At(o) => Some(o),
        _ => None,
    };
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default())?;
    for p in 0..partitions {
        let start = match min_offset {
            Some(o) => {
                let earliest = client.list_offsets(&args.topic, p, OffsetSpec::Earliest)?;
                let latest = client.list_offsets(&args.topic, p, OffsetSpec::Latest)?;
                OffsetSpec::At(o.clamp(earliest, latest.max(earliest)))
            }
            None => args.from,
        };
        consumer
            .subscribe(&args.topic, p, start)
            .map_err(|e| explain(e, &args.topic))
            .with_context(|| format!("subscribing to partition {p}"))?;
    }
    let mut out = BufWriter::new(io::stdout().lock());
    let mut printed = 0u64;
    let result = (|| -> anyhow::Result<()> {
        while args.count.is_none_or(|c| printed < c) {
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => POLL_WAIT,
            };
            if consumer.buffered_records() == 0 {
                out.flush()?;
            }
            if let Some(record) = consumer.poll(wait)? {
                if min_offset.is_some_and(|m| record.offset < m) {
                    continue;
                }
                out.write_all(&record.value)?;
                out.write_all(b"\n")?;
                printed += 1;
            }
        }
        out.flush()?;
        Ok(())
    })();
    match result {
        // A closed pipe (`| head`) is the reader's way of saying it has enough.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// `consume --group`: prints what the member is assigned; commits only what it has written to
/// stdout and flushed (at least once: a crash re-prints at most what followed the last commit).
mod group_consume {
    use super::*;
    use shardline_net::client::{GroupConsumer, GroupConsumerConfig};

    /// Printed records between commits, at most.
    const COMMIT_EVERY_RECORDS: u64 = 1000;
    const COMMIT_EVERY: Duration = Duration::from_millis(200);

    /// Commits; a commit refused because a rebalance moved the partitions is only reported
    /// (their new owner re-reads from the previous commit: at least once).
    fn commit(consumer: &mut GroupConsumer) -> anyhow::Result<()> {
        use shardline_net::client::code;
        match consumer.commit() {
            Err(e)
                if matches!(
                    e.code(),
                    Some(code::ILLEGAL_GENERATION | code::NOT_ASSIGNED | code::UNKNOWN_MEMBER)
                ) =>
            {
                eprintln!("shardline: note: commit refused after a rebalance: {e}");
                Ok(())
            }
            other => other.map_err(Into::into),
        }
    }

    pub(super) fn run(client: Client, args: &ConsumeArgs, group: &str) -> anyhow::Result<()> {
        client
            .route(&args.topic)
            .map_err(|e| explain(e, &args.topic))?;
        let config = GroupConsumerConfig {
            session_timeout: Duration::from_millis(args.session_timeout_ms),
            auto_commit: false,
            reset: args.from,
            ..GroupConsumerConfig::new(group, &args.topic)
        };
        let mut consumer = GroupConsumer::new(client, config)?;
        let deadline = args
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut out = BufWriter::new(io::stdout().lock());
        let (mut printed, mut uncommitted) = (0u64, 0u64);
        let mut last_commit = Instant::now();
        let result = (|| -> anyhow::Result<()> {
            while args.count.is_none_or(|c| printed < c) {
                let wait = match deadline {
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => left.min(COMMIT_EVERY),
                        _ => break,
                    },
                    None => COMMIT_EVERY,
                };
                if let Some(record) = consumer.poll(wait)? {
                    out.write_all(&record.value)?;
                    out.write_all(b"\n")?;
                    printed += 1;
                    uncommitted += 1;
                }
                if uncommitted > 0
                    && (uncommitted >= COMMIT_EVERY_RECORDS
                        || last_commit.elapsed() >= COMMIT_EVERY)
                {
                    out.flush()?;
                    commit(&mut consumer)?;
                    (uncommitted, last_commit) = (0, Instant::now());
                }
            }
            out.flush()?;
            Ok(())
        })();
        let closing = commit(&mut consumer)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))
            .and_then(|()| consumer.close());
        match result {
            Err(e)
                if e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
            {
                Ok(())
            }
            Ok(()) => closing.map_err(Into::into),
            other => other,
        }
    }
}
