//! `shardline serve`: the configuration file, flags and environment merged into one
//! configuration, the limits checked, the server (and its cluster transport and metrics) started,
//! and a clean shutdown on SIGINT/SIGTERM (docs/operations.md).

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use shardline_net::cli::config::FileConfig;
use shardline_net::server::Server;
use tracing::info;

use shardline_net::cli::config::LogFormat;
use tracing_subscriber::EnvFilter;

use super::ServeArgs;

fn load_config(path: &Path) -> anyhow::Result<FileConfig> {
    FileConfig::load(path).map_err(|e| anyhow!("config {}: {e}", path.display()))
}

/// Applies `serve`'s flags and environment over the file's configuration (flags win); returns
/// whether `--print-config` was given.
fn apply_serve_flags(config: &mut FileConfig, args: ServeArgs) -> anyhow::Result<bool> {
    if let Some(dir) = args.data_dir {
        config.engine.data_dir = dir;
    } else if !args.config.as_deref().is_some_and(config_sets_data_dir) {
        config.engine.data_dir = shardline_net::cli::config::default_data_dir();
    }
    if let Some(listen) = args.listen.or_else(|| env_nonempty("SHARDLINE_LISTEN")) {
        config.server.listen = listen;
    }
    if let Some(shards) = args.shards {
        config.engine.shards = shards;
    }
    if args.auto_create {
        config.server.auto_create_topics = true;
    }
    if let Some(n) = args.auto_create_partitions {
        config.server.auto_create_partitions = n;
    }
    args.tls.apply(&mut config.server.tls)?;
    args.tls
        .apply_security(&mut config.engine, &mut config.server);
    if let Some(metrics) = args
        .metrics_listen
        .or_else(|| env_nonempty("SHARDLINE_METRICS_LISTEN"))
    {
        config.metrics.listen = metrics;
        config.metrics.enabled = true;
    }
    // Host names (`localhost:7070`) are resolved here, as clients resolve --addr.
    for (key, addr) in [
        ("server.listen", &mut config.server.listen),
        ("metrics.listen", &mut config.metrics.listen),
    ] {
        *addr = shardline_net::cli::config::resolve_listen(addr)
            .map_err(|e| anyhow!("invalid configuration: {key}: {e}"))?;
    }
    args.cluster.apply(&mut config.cluster);
    if let Some(kafka) = args.kafka_listen {
        config.kafka.listen = Some(kafka);
    }
    Ok(args.print_config)
}

pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => load_config(path)?,
        None => FileConfig::default(),
    };
    // An address set by the operator must be served; the default one is best effort (a
    // second server on the machine keeps running without metrics, with a warning).
    let metrics_explicit = args.metrics_listen.is_some()
        || args.config.is_some() && config.metrics != Default::default();
    let print_config = apply_serve_flags(&mut config, args)?;
    config
        .validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    if print_config {
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
    // io_uring's locked memory and the open files, checked here so that a limit set too low
    // is reported with the setting to change (the engine fails later and less clearly).
    let shards = match config.engine.shards {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    match shardline_net::cli::limits::check(shards, config.engine.io_memory_bytes) {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(e) => bail!("cannot start the server: {e}"),
    }
    // Registered before the server starts, so that a signal during start-up is not lost: it
    // is handled (a clean shutdown) as soon as the server is up.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    let cluster = shardline_net::cli::cluster::resolve(config.cluster.as_ref())?;
    shardline_net::cli::cluster::check_data_dir(&config.engine.data_dir, config.cluster.as_ref())?;
    config.server.kafka = config.kafka.clone();
    let mut server =
        Server::start(config.engine, config.server).context("cannot start the server")?;
    if let Some(spec) = &cluster {
        let nodes = u32::try_from(spec.nodes.len()).unwrap_or(u32::MAX);
        server.set_cluster(spec.node_id, nodes);
    }
    let advertised =
        shardline_net::cli::cluster::advertised_address(config.cluster.as_ref(), server.addr());
    server.set_advertised_address(&advertised);
    let joining = config.cluster.as_ref().is_some_and(|c| c.join);
    let peers = match cluster {
        Some(spec) => {
            match shardline_net::cli::cluster::start_cluster_as(&server, spec, &advertised, joining)
            {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = server.shutdown();
                    return Err(e);
                }
            }
        }
        None => None,
    };
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
    if let Some(t) = peers {
        t.shutdown();
    }
    server.shutdown().context("shutdown")?;
    info!("stopped");
    Ok(())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether the config file names `engine.data_dir` (then the built-in default does not apply).
fn config_sets_data_dir(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("engine")?.get("data_dir").cloned())
        .is_some()
}

/// Logs go to stderr; `RUST_LOG`, when set, wins over the configured level.
pub(crate) fn init_logging(default_level: &str, format: LogFormat) {
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
