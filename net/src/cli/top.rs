//! `shardline top`: a live view of the server, refreshed every interval. On a terminal it
//! redraws the screen and quits on `q` or Ctrl-C (the terminal is put in non-canonical mode
//! and restored on exit); otherwise it prints one snapshot per interval, for logs and pipes.
//! `--iterations` bounds the number of refreshes in both modes.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use shardline_engine::metrics::HistogramSnapshot;

use super::stats::{Table, bytes, histogram_delta, percentiles, topic_lag, topic_totals};
use crate::client::{Client, ClientError};
use crate::protocol::MetricsResponse;
use crate::server::histogram_snapshot;

/// What `top` does.
#[derive(Debug, Clone, Copy)]
pub struct TopOptions {
    pub interval: Duration,
    /// Stop after this many refreshes (`None`: until q, Ctrl-C or the end of the world).
    pub iterations: Option<u64>,
}

/// Puts the terminal in non-canonical, no-echo, no-signal mode; restores it when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a valid, initialised termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawTerminal { saved })
        }
    }

    /// Waits up to `timeout` for a key; true if it asks to quit (q, Q, Ctrl-C, Ctrl-D).
    fn quit_requested(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one valid pollfd; read into a local buffer of the size passed.
        unsafe {
            if libc::poll(&mut fd, 1, ms) <= 0 {
                return false;
            }
            let mut buf = [0u8; 16];
            let n = libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len());
            let n = usize::try_from(n).unwrap_or(0);
            buf[..n].iter().any(|b| matches!(b, b'q' | b'Q' | 3 | 4))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved by `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 / seconds
}

fn shard_histograms(
    m: &MetricsResponse,
    get: fn(&crate::protocol::ShardMetrics) -> &crate::protocol::Histogram,
) -> Vec<HistogramSnapshot> {
    m.shards
        .iter()
        .map(|s| histogram_snapshot(get(s)))
        .collect()
}

/// One screen: per-topic rates since the previous snapshot, per-shard latency percentiles
/// over the same interval.
pub fn frame(now: &MetricsResponse, before: &MetricsResponse, seconds: f64) -> String {
    let mut out = String::new();
    let seconds = seconds.max(1e-3);
    let _ = writeln!(
        out,
        "shardline top  uptime {:.0}s  memory {}  interval {seconds:.1}s  (q quits)\n",
        now.uptime_ms as f64 / 1000.0,
        bytes(now.resident_bytes)
    );
    let (topics, previous) = (topic_totals(now), topic_totals(before));
    let lag = topic_lag(now);
    let mut t = Table::new(&[
        "TOPIC",
        "PARTS",
        "IN msg/s",
        "IN MiB/s",
        "OUT msg/s",
        "OUT MiB/s",
        "LOG END",
        "SIZE",
        "LAG",
    ]);
    for (name, n) in &topics {
        let b = previous.get(name).copied().unwrap_or_default();
        t.row(vec![
            name.clone(),
            n.partitions.to_string(),
            format!(
                "{:.0}",
                rate(n.produced_records, b.produced_records, seconds)
            ),
            format!(
                "{:.2}",
                rate(n.produced_bytes, b.produced_bytes, seconds) / 1048576.0
            ),
            format!("{:.0}", rate(n.fetched_records, b.fetched_records, seconds)),
            format!(
                "{:.2}",
                rate(n.fetched_bytes, b.fetched_bytes, seconds) / 1048576.0
            ),
            n.log_end.to_string(),
            bytes(n.size_bytes),
            // Needs a committed position: the largest group lag; plain fetch consumers have
            // none the server knows.
            lag.get(name)
                .map_or_else(|| "-".to_string(), u64::to_string),
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    let mut t = Table::new(&[
        "SHARD",
        "APPEND durable p50/p99/p999",
        "FSYNC p50/p99/p999",
        "FLUSHES/s",
        "REQ/s",
        "CONNS",
    ]);
    let durable = (
        shard_histograms(now, |s| &s.append_durable_ns),
        shard_histograms(before, |s| &s.append_durable_ns),
    );
    let fsync = (
        shard_histograms(now, |s| &s.fsync_ns),
        shard_histograms(before, |s| &s.fsync_ns),
    );
    for (i, s) in now.shards.iter().enumerate() {
        let b = before.shards.get(i);
        let empty = HistogramSnapshot::default();
        let delta = |h: &(Vec<HistogramSnapshot>, Vec<HistogramSnapshot>)| {
            histogram_delta(&h.0[i], h.1.get(i).unwrap_or(&empty))
        };
        let requests: u64 = s.requests.iter().map(|r| r.count).sum();
        let requests_before: u64 = b.map_or(0, |b| b.requests.iter().map(|r| r.count).sum());
        t.row(vec![
            s.shard.to_string(),
            percentiles(&delta(&durable)),
            percentiles(&delta(&fsync)),
            format!(
                "{:.0}",
                rate(s.flushes, b.map_or(0, |b| b.flushes), seconds)
            ),
            format!("{:.0}", rate(requests, requests_before, seconds)),
            s.connections_open.to_string(),
        ]);
    }
    t.render(&mut out);
    out
}

/// Runs the view until q, Ctrl-C, `--iterations` or an error.
pub fn run(client: &Client, options: TopOptions) -> Result<(), ClientError> {
    let tty = std::io::stdout().is_terminal();
    let terminal = if tty && std::io::stdin().is_terminal() {
        RawTerminal::enter()
    } else {
        None
    };
    let mut before = client.metrics(true)?;
    let mut taken = Instant::now();
    let mut shown = 0u64;
    while options.iterations.is_none_or(|n| shown < n) {
        let quit = match &terminal {
            Some(t) => t.quit_requested(options.interval),
            None => {
                std::thread::sleep(options.interval);
                false
            }
        };
        if quit {
            break;
        }
        let now = client.metrics(true)?;
        let seconds = taken.elapsed().as_secs_f64();
        taken = Instant::now();
        let mut text = frame(&now, &before, seconds);
        if terminal.is_none() {
            // q only quits when the keyboard is ours.
            text = text.replacen("  (q quits)", "", 1);
        }
        let mut stdout = std::io::stdout().lock();
        let written = if tty {
            write!(stdout, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(stdout, "--- {:.1}s\n{text}", now.uptime_ms as f64 / 1000.0)
        };
        if written.and_then(|()| stdout.flush()).is_err() {
            break; // stdout closed (`| head`)
        }
        before = now;
        shown += 1;
    }
    Ok(())
}
