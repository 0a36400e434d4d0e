//! `shardline`: the broker (`serve`) and a command line client, as DESIGN.md's "Command line
//! contracts" specify:
//!
//! ```text
//! shardline serve [--config FILE] [--data-dir DIR] [--listen 127.0.0.1:7070] [--shards N]
//!                 [--metrics-listen 127.0.0.1:9464] [--tls-cert FILE --tls-key FILE
//!                 [--tls-client-ca FILE]] [--node-id N --cluster 1@HOST:PORT,2@HOST:PORT,...
//!                 [--cluster-id NAME] [--peer-tls-cert F --peer-tls-key F --peer-tls-ca F]]
//! shardline [--tls-ca FILE [--tls-client-cert FILE --tls-client-key FILE]
//!           [--tls-server-name NAME]] <client command>   (TLS, docs/security.md)
//! shardline [--addr 127.0.0.1:7070] topic create NAME [--partitions N] [--retention-bytes B]
//!                                                     [--retention-ms MS]
//!                                                     [--replicas R]
//! shardline [--addr ...] topic list | topic describe NAME [--json] | topic delete NAME
//! shardline [--addr ...] produce TOPIC [--key K | --key-separator SEP] [-H NAME=VALUE]...
//!                                      [--partition N] [--acks none|leader|durable|all] [--idempotent]
//! shardline [--addr ...] consume TOPIC [--group G [--session-timeout-ms MS]] [--partition N]
//!                                      [--from earliest|latest|OFFSET|RFC3339|-DURATION]
//!                                      [--format FMT | --json] [--count N] [--timeout-ms MS]
//!                                      [--isolation appended|durable]
//! shardline [--addr ...] request QUEUE [VALUE] | reply QUEUE [TEMPLATE | --command CMD]
//! shardline [--wait 10s] <client command>   (retry connecting while the server starts)
//! shardline [--addr ...] stats [--no-partitions]
//! shardline [--addr ...] top [--interval-ms MS] [--iterations N]
//! shardline [--addr ...] topic alter NAME [--retention-bytes B|none] [--retention-ms MS|none]
//! shardline [--addr ...] group list | group describe GROUP
//! shardline [--addr ...] group reset-offsets GROUP --topic T [--partition N] [--dry-run]
//!                        --to-earliest|--to-latest|--to-offset N|--to-timestamp MS
//! shardline [--addr ...] queue purge QUEUE   (and the other queue commands, docs/semantics.md)
//! shardline --addr ... user add|remove|passwd NAME | token create|revoke ... | acl add|remove ...
//!                        (on a running server; on a cluster every node; docs/security.md)
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
use std::io::{self, BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shardline_net::cli::config::LogFormat;
use shardline_net::client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, SendHandle, TopicConfig,
};
use shardline_net::protocol::{ReadIsolation, SettingChange};

#[path = "shardline/group.rs"]
mod group_cli;
#[path = "shardline/hints.rs"]
mod hints;
#[path = "shardline/queue.rs"]
mod queue_cli;
#[path = "shardline/records.rs"]
mod records;
#[path = "shardline/reqrep.rs"]
mod reqrep;
#[path = "shardline/security.rs"]
mod security;
#[path = "shardline/serve.rs"]
mod serve;

const DEFAULT_ADDR: &str = "127.0.0.1:7070";

#[derive(Debug, Parser)]
#[command(
    name = "shardline",
    version,
    about = "Shardline: a thread-per-core message broker, and its command line client"
)]
struct Cli {
    /// Server to talk to (client commands); or set $SHARDLINE_ADDR [default: 127.0.0.1:7070]
    #[arg(long, global = true, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Keep retrying to connect for this long while the server starts (`10s`, `500ms`)
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    wait: Option<Duration>,
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
    /// Send a request to a work queue and print the reply (request-reply).
    Request(reqrep::RequestArgs),
    /// Answer requests from a work queue: echo, a template, or a shell command's output.
    Reply(reqrep::ReplyArgs),
    /// Cluster nodes: add one (started with `serve --join`), remove a drained one.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    #[command(flatten)]
    Security(security::SecurityCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Add a node that is not in the initial list: ID@HOST:PORT, its node-to-node address
    /// (start it with `serve --node-id ID --join ... --peer-listen HOST:PORT`).
    AddNode { node: String },
    /// Remove a node; refused while it holds replicas (move them with `topic reassign`).
    RemoveNode { id: u64 },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file with an [engine] and a [server] table; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where topics and metadata live (engine.data_dir) [default: $SHARDLINE_DATA_DIR, else
    /// $XDG_DATA_HOME/shardline, else /var/lib/shardline as root, ~/.local/share/shardline
    /// otherwise]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bootstrap listener; port 0 picks a free port; or set $SHARDLINE_LISTEN (server.listen)
    /// [default: 127.0.0.1:7070]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Number of shards, one per core; 0 = every usable core (engine.shards).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Prometheus endpoint, GET /metrics; port 0 picks one; or set $SHARDLINE_METRICS_LISTEN
    /// (metrics.listen) [default: 127.0.0.1:9464]
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Create a topic the first time a client asks for it by name (a producer does before its
    /// first produce), with --auto-create-partitions partitions (server.auto_create_topics).
    #[arg(long)]
    auto_create: bool,
    /// Partitions of an auto-created topic (server.auto_create_partitions) [default: 1]
    #[arg(long, value_name = "N", requires = "auto_create")]
    auto_create_partitions: Option<u32>,
    /// Print the effective configuration (file, defaults and flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Kafka wire-protocol listener (kafka.listen); port 0 picks one (docs/kafka.md).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_listen: Option<String>,
    #[command(flatten)]
    tls: security::ServeTlsArgs,
    #[command(flatten)]
    cluster: Box<shardline_net::cli::cluster::ClusterArgs>,
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
        /// Replicas of each partition: 1 to 5, at most the cluster's node count.
        #[arg(long, default_value_t = 1, value_name = "R",
              value_parser = clap::value_parser!(u32).range(1..=5))]
        replicas: u32,
    },
    /// List topics: name, partitions, retention.
    List,
    /// Show a topic's settings and each partition's state: leader, replicas, in sync, epoch,
    /// high watermark.
    Describe {
        name: String,
        /// One JSON object: {"name", "topic_id", "replicas", "partitions": [{"partition",
        /// "leader", "replicas", "in_sync", "epoch", "high_watermark", ...}]}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Change a topic's retention; a setting not given is kept, `none` removes the limit.
    Alter {
        name: String,
        #[arg(long, value_name = "B|none", value_parser = parse_setting)]
        retention_bytes: Option<SettingChange>,
        #[arg(long, value_name = "MS|none", value_parser = parse_setting)]
        retention_ms: Option<SettingChange>,
        /// Grow the topic to N partitions (never shrinks). Keyed records map by
        /// crc32c(key) % N, so most keys move to another partition (docs/semantics.md).
        #[arg(long, value_name = "N")]
        partitions: Option<u32>,
    },
    /// Move a partition of a replicated topic onto other nodes, online (new replicas catch up
    /// as learners, then one joint configuration change; docs/operations.md).
    Reassign {
        name: String,
        #[arg(long, value_name = "P")]
        partition: u32,
        /// The new replica set: node ids, `1,2,4`.
        #[arg(long, value_name = "ID,...", value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
        /// Return once the move is recorded, without waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for the move to finish.
        #[arg(long, value_name = "S", default_value_t = 300)]
        wait_secs: u64,
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
    /// Committed: fsynced on a majority of the replicas.
    All,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::None => Acks::None,
            AcksArg::Leader => Acks::Leader,
            AcksArg::Durable => Acks::Durable,
            // On a partition with one replica `all` is `durable` (a majority of one is the
            // leader's fsync); with more it waits for the commit (issue 14).
            AcksArg::All => Acks::All,
        }
    }
}

#[derive(Debug, Args)]
struct ProduceArgs {
    topic: String,
    /// Key of every message (messages with one key go to one partition).
    #[arg(long, value_name = "K", conflicts_with = "key_separator")]
    key: Option<String>,
    /// Each line is KEY<SEP>VALUE (split at the first SEP; a line without it has no key).
    /// Lines without a key spread over the partitions, a batch at a time.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header on every message (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE",
          value_parser = records::parse_header)]
    headers: Vec<shardline_net::client::Header>,
    /// Send every message to this partition.
    #[arg(long, value_name = "N")]
    partition: Option<u32>,
    /// What counts as acknowledged: none (sent), leader (appended), durable (fsynced), all
    /// (committed: fsynced on a majority of the replicas; on a topic with one replica the
    /// same as durable).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Idempotent producer: retries after lost connections or timeouts never duplicate
    /// (always on against a cluster, where a leader change is retried).
    #[arg(long)]
    idempotent: bool,
    /// Compress each batch: none, lz4 or zstd (stored compressed; consumers decompress).
    #[arg(long, value_name = "CODEC", default_value = "none")]
    compression: shardline_format::compress::Codec,
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
    /// Where to start in every partition: earliest, latest, an offset, an RFC 3339 time
    /// (2026-12-03T10:00:00Z) or a duration back from now (-5m) (with --group: only
    /// partitions without a committed offset).
    #[arg(long, default_value = "earliest", value_parser = records::parse_from,
          value_name = "FROM", allow_hyphen_values = true)]
    from: OffsetSpec,
    /// Read only this partition.
    #[arg(long, value_name = "N", conflicts_with = "group")]
    partition: Option<u32>,
    /// Print each record with this template: %t topic, %p partition, %o offset, %k key,
    /// %s value, %T timestamp (ms), %h headers, %K/%S key/value bytes, \n \t [default: %s]
    #[arg(long, value_name = "FMT", value_parser = records::parse_template,
          conflicts_with = "json")]
    format: Option<records::Template>,
    /// Print each record as one JSON object per line (topic, partition, offset,
    /// timestamp_ms, key, value, headers).
    #[arg(long)]
    json: bool,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this long, whatever was received (default: no limit).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// What to read: appended (default; a `durable` producer's records once written) or
    /// durable (only what an fdatasync covered: never taken back by a crash).
    #[arg(long, default_value = "appended", value_parser = parse_isolation, value_name = "I")]
    isolation: ReadIsolation,
}

fn parse_isolation(s: &str) -> Result<ReadIsolation, String> {
    match s {
        "appended" => Ok(ReadIsolation::Appended),
        "durable" => Ok(ReadIsolation::Durable),
        _ => Err(format!("'{s}': appended or durable")),
    }
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}': {e} (examples: 10s, 500ms)"))
}

impl ConsumeArgs {
    fn output(&self) -> records::OutputFormat {
        match (&self.format, self.json) {
            (_, true) => records::OutputFormat::Json,
            (Some(t), false) => records::OutputFormat::Template(t.0.clone()),
            (None, false) => records::OutputFormat::Value,
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // `serve` sets up logging once its configuration is known (`[log]`).
    if !matches!(cli.command, Command::Serve(_)) {
        serve::init_logging("warn", LogFormat::Full);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Client errors not explained where they happened get the generic advice.
            let e = match e.downcast::<ClientError>() {
                Ok(client_error) => hints::explain(client_error, hints::Subject::default()),
                Err(e) => e,
            };
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("shardline: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The command line. `serve --help` is printed from the serve flags alone: the client flags
/// (`--addr`, `--user`, `--tls-ca`...) are global so that they may follow any client
/// subcommand, and would otherwise be listed for `serve`, which refuses them.
fn parse_cli() -> Result<Cli, clap::Error> {
    use clap::{Args as _, CommandFactory};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if subcommand(&args) == Some("serve") && args.iter().any(|a| a == "--help" || a == "-h") {
        let about = Cli::command()
            .find_subcommand("serve")
            .and_then(|c| c.get_about().cloned())
            .unwrap_or_default();
        let mut command = ServeArgs::augment_args(clap::Command::new("serve"))
            .bin_name("shardline serve")
            .about(about);
        let _ = command.print_help();
        std::process::exit(0);
    }
    Cli::try_parse_from(args)
}

/// The first argument that is neither an option nor the value of a global option.
fn subcommand(args: &[std::ffi::OsString]) -> Option<&str> {
    const VALUED: [&str; 9] = [
        "--addr",
        "--wait",
        "--user",
        "--password-file",
        "--token-file",
        "--tls-ca",
        "--tls-client-cert",
        "--tls-client-key",
        "--tls-server-name",
    ];
    let mut rest = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(a) = rest.next() {
        if VALUED.contains(&a) {
            rest.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
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

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Serve(args) = cli.command {
        if cli.addr.is_some() {
            bail!("--addr is for client commands; serve listens on --listen");
        }
        if cli.wait.is_some() {
            bail!(
                "--wait is for client commands; serve prints 'shardline listening on ADDR' when ready"
            );
        }
        if cli.security.is_set() {
            bail!("--tls-ca, --user and friends are for client commands; serve uses --tls-cert");
        }
        return serve::serve(args);
    }
    if let Command::Security(command) = cli.command {
        // With --addr, user/token/acl changes go to that server (on a cluster, to every node).
        let Some(addr) = cli.addr.as_deref().filter(|_| security::online(&command)) else {
            return security::run(command);
        };
        let mut client_config = ClientConfig::default();
        cli.security.apply(&mut client_config)?;
        let client = connect(addr, client_config, cli.wait)?;
        return security::run_online(&client, command);
    }
    let addr = cli
        .addr
        .clone()
        .or_else(|| {
            std::env::var("SHARDLINE_ADDR")
                .ok()
                .filter(|a| !a.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let mut client_config = ClientConfig::default();
    cli.security.apply(&mut client_config)?;
    let client = connect(&addr, client_config, cli.wait)?;
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
        Command::Request(args) => reqrep::request(client, args),
        Command::Reply(args) => reqrep::serve_replies(&client, args),
        Command::Cluster(c) => {
            let mut out = io::stdout().lock();
            match c {
                ClusterCommand::AddNode { node } => {
                    shardline_net::cli::nodes::add_node(&client, &node, &mut out)
                }
                ClusterCommand::RemoveNode { id } => {
                    shardline_net::cli::nodes::remove_node(&client, id, &mut out)
                }
            }
        }
    }
}

/// Connects; with `--wait`, retries a server that does not listen yet (connection refused)
/// until that long has passed.
fn connect(addr: &str, config: ClientConfig, wait: Option<Duration>) -> anyhow::Result<Client> {
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        match Client::connect(addr, config.clone()) {
            Ok(client) => return Ok(client),
            Err(e @ ClientError::Connect { .. }) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "server not reachable yet; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(hints::explain(e, hints::Subject::default())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client commands

/// A message that says what to do (hints.rs).
fn explain(e: ClientError, topic: &str) -> anyhow::Error {
    hints::explain(e, hints::Subject { topic: Some(topic) })
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
            replicas,
        } => {
            let config = TopicConfig {
                partitions,
                retention_bytes,
                retention_ms,
                ..TopicConfig::default()
            };
            let t = if replicas == 1 {
                client.create_topic(&name, config)
            } else {
                client.create_replicated_topic(&name, config, replicas)
            }
            .map_err(|e| explain(e, &name))?;
            // On a cluster, return once every partition has a leader (writes work at once).
            shardline_net::cli::cluster::wait_for_leaders(client, &name);
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
        TopicCommand::Describe { name, json: true } => {
            shardline_net::cli::cluster::describe_json(client, &name, &mut out)
                .map_err(|e| explain(e, &name))?;
        }
        TopicCommand::Describe { name, json: false } => {
            let d = client
                .describe_topic(&name)
                .map_err(|e| explain(e, &name))?;
            let r = client
                .describe_replicas(&name)
                .map_err(|e| explain(e, &name))?;
            let c = d.topic.config;
            writeln!(
                out,
                "topic {} id={} partitions={} replicas={} retention_bytes={} retention_ms={} \
                 segment_bytes={} segment_ms={}",
                d.topic.name,
                d.topic.topic_id,
                c.partitions,
                r.replicas,
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
                if let Some(rp) = r.partitions.iter().find(|rp| rp.partition == p.partition) {
                    write!(
                        out,
                        " leader={} replicas={:?} in_sync={:?} epoch={}",
                        rp.leader, rp.replicas, rp.in_sync, rp.epoch
                    )?;
                }
                match p.failure {
                    Some(f) => writeln!(out, " failure={f:?}")?,
                    None => writeln!(out)?,
                }
            }
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            no_wait,
            wait_secs,
        } => {
            let wait = (!no_wait).then(|| std::time::Duration::from_secs(wait_secs));
            shardline_net::cli::membership::reassign(
                client, &name, partition, &replicas, wait, &mut out,
            )?;
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).map_err(|e| explain(e, &name))?;
            writeln!(out, "deleted topic {name}")?;
        }
        TopicCommand::Alter {
            name,
            retention_bytes,
            retention_ms,
            partitions,
        } => {
            if retention_bytes.is_none() && retention_ms.is_none() && partitions.is_none() {
                bail!(
                    "nothing to change: give --partitions, --retention-bytes and/or \
                     --retention-ms"
                );
            }
            if let Some(n) = partitions {
                let t = client
                    .add_partitions(&name, n)
                    .map_err(|e| explain(e, &name))?;
                writeln!(
                    out,
                    "altered topic {} partitions={}",
                    t.name, t.config.partitions
                )?;
                if retention_bytes.is_none() && retention_ms.is_none() {
                    return Ok(());
                }
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

/// Batch size of `produce`, as Kafka's `batch.size` default.
const PRODUCE_BATCH_BYTES: usize = 16 << 10;

/// Messages sent and not yet waited for; beyond this, `produce` waits for the oldest.
const PRODUCE_HANDLES_MAX: usize = 65_536;

fn produce(client: Client, args: ProduceArgs) -> anyhow::Result<()> {
    // Fail early and clearly on an unknown topic.
    client
        .route(&args.topic)
        .map_err(|e| explain(e, &args.topic))?;
    // Against a cluster a leader change is retried on the new leader: only an idempotent
    // producer can do that without risking a duplicate.
    let acks: Acks = args.acks.into();
    let cluster = acks != Acks::None && client.is_cluster().unwrap_or(false);
    let config = ProducerConfig {
        acks,
        idempotent: args.idempotent || cluster,
        // A cluster's leader change takes 1-2 s: keep retrying within the delivery timeout.
        retries_max: if cluster {
            1_000
        } else {
            ProducerConfig::default().retries_max
        },
        // The sticky partitioner moves on when a batch closes: Kafka's 16 KiB batch size
        // spreads the unkeyed lines of one run over the partitions.
        batch_bytes_max: PRODUCE_BATCH_BYTES,
        compression: args.compression,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config)?;
    let mut handles: VecDeque<SendHandle> = VecDeque::new();
    let mut tally = Tally::default();
    for line in io::stdin().lock().split(b'\n') {
        let mut line = line.context("reading stdin")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let (key, value) = match &args.key_separator {
            Some(sep) => records::split_key(&line, sep.as_bytes()),
            None => (args.key.as_deref().map(str::as_bytes), &line[..]),
        };
        let mut record = shardline_net::client::ProducerRecord::new(args.topic.as_str(), value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        for h in &args.headers {
            record = record.header(h.key.as_str(), h.value.as_slice());
        }
        handles.push_back(producer.send_record(record));
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
    let partition_count = client
        .partitions(&args.topic)
        .map_err(|e| explain(e, &args.topic))?;
    let partitions = match args.partition {
        Some(p) if p >= partition_count => bail!(
            "topic '{}' has {partition_count} partitions (0..{}): --partition {p} is not one of them",
            args.topic,
            partition_count.saturating_sub(1)
        ),
        Some(p) => p..p + 1,
        None => 0..partition_count,
    };
    let output = args.output();
    let deadline = args
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    // `--from OFFSET` means "records at or after OFFSET" in every partition: a partition that
    // ends before OFFSET is followed from its end, one that starts after it from its start.
    let min_offset = match args.from {
        OffsetSpec::At(o) => Some(o),
        _ => None,
    };
    let config = ConsumerConfig {
        isolation: args.isolation,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config)?;
    for p in partitions {
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
                output.write(&mut out, &record)?;
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
        let config = GroupConsumerConfig {
            consumer: ConsumerConfig {
                isolation: args.isolation,
                ..config.consumer.clone()
            },
            ..config
        };
        let mut consumer =
            GroupConsumer::new(client, config).map_err(|e| explain(e, &args.topic))?;
        let output = args.output();
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
                    output.write(&mut out, &record)?;
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
