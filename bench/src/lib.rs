//! Shardline benchmarks. Every benchmark here is compared with a named yardstick measured on the
//! same machine in the same run (docs/performance.md, ../shared/STYLE.md habit 12):
//!
//! - `benches/codec.rs` (criterion): batch encode/validate, CRC32C, index lookups; yardstick:
//!   the `crc32c` crate on the same bytes (the floor of any validation), and memory bandwidth;
//! - `src/bin/append_bench.rs`: one shard appending durably and at `leader` level, and the
//!   latency of a lone durable append; yardstick: fio on the same directory
//!   (`bench/disk-baseline.sh` runs both and prints the ratios);
//! - `src/bin/idle_bench.rs`: CPU and memory that idle partitions cost; yardstick: the targets
//!   (< 1% of a core, < 64 KiB per partition).
//!
//! This library holds what the binaries share: process resource probes, the data directory
//! check (never benchmark tmpfs), and the JSON-lines output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

/// `statfs` magic of tmpfs: benchmarks of a durable log on RAM would measure nothing real.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// CPU time (user + system) this process has used so far (`getrusage(RUSAGE_SELF)`).
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills a caller-owned struct; a zeroed rusage is a valid value.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let to_duration = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    to_duration(usage.ru_utime) + to_duration(usage.ru_stime)
}

/// Resident set size of this process in bytes (second field of `/proc/self/statm`, in pages).
pub fn resident_bytes() -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has no resident field")?
        .parse()
        .context("statm resident field")?;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page_bytes).unwrap_or(4096))
}

/// Number of open file descriptors of this process.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Filesystem type magic of `dir` (`statfs.f_type`).
fn filesystem_magic(dir: &Path) -> anyhow::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statfs with a NUL-terminated path and a caller-owned, zeroed struct.
    let fs = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        if libc::statfs(c_path.as_ptr(), &mut fs) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("statfs {}", dir.display()));
        }
        fs
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(fs.f_type as i64)
}

/// A benchmark data directory: `dir` if given (created if missing), else a fresh temporary
/// directory under the current directory (or /var/tmp if that is not writable). Refuses tmpfs.
/// The returned guard removes a temporary directory when dropped.
pub fn bench_dir(dir: Option<&Path>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    let (path, guard) = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let run = tempfile::Builder::new()
                .prefix("shardline-bench-")
                .tempdir_in(d)
                .with_context(|| format!("creating a run directory in {}", d.display()))?;
            (run.path().to_path_buf(), Some(run))
        }
        None => {
            let run = tempfile::Builder::new()
                .prefix("shardline-bench-")
                .tempdir_in(".")
                .or_else(|_| {
                    tempfile::Builder::new()
                        .prefix("shardline-bench-")
                        .tempdir_in("/var/tmp")
                })
                .context("creating a temporary directory in . or /var/tmp")?;
            (run.path().to_path_buf(), Some(run))
        }
    };
    if filesystem_magic(&path)? == TMPFS_MAGIC {
        bail!(
            "{} is on tmpfs: a durable-append benchmark needs the real disk (pass --dir)",
            path.display()
        );
    }
    Ok((path, guard))
}

/// Latency summary of a histogram recorded in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50": self.p50_us,
            "p90": self.p90_us,
            "p99": self.p99_us,
            "p999": self.p999_us,
            "max": self.max_us,
            "mean": (self.mean_us * 10.0).round() / 10.0,
        })
    }
}

/// A histogram of microseconds from 1 us to 60 s, three significant digits.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// Microseconds of `d`, at least 1 (the histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Prints one JSON object on one line (the `--json` output format of the bench binaries).
pub fn print_json_line(v: &serde_json::Value) {
    println!("{v}");
}

/// Mebibytes per second (the unit fio prints as MiB/s).
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

/// Pins the calling thread to a CPU other than `avoid` if the process may use one, so that a
/// benchmark's producer thread does not share a core with the shard it drives.
pub fn pin_current_thread_away_from(avoid: usize) -> Option<usize> {
    let ids = core_affinity::get_core_ids()?;
    let other = ids.into_iter().find(|c| c.id != avoid)?;
    core_affinity::set_for_current(other).then_some(other.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_probes_return_plausible_values() {
        assert!(resident_bytes().unwrap() > 0);
        assert!(open_fd_count() >= 3);
        let spin_until = std::time::Instant::now() + Duration::from_millis(20);
        while std::time::Instant::now() < spin_until {}
        assert!(process_cpu_time() >= Duration::from_millis(10));
    }

    #[test]
    fn tmpfs_is_refused() {
        // /dev/shm is tmpfs on the Linux systems this runs on; where it is not, nothing to check.
        let shm = Path::new("/dev/shm");
        if filesystem_magic(shm).ok() != Some(TMPFS_MAGIC) {
            return;
        }
        let probe = shm.join("shardline-bench-check");
        assert!(bench_dir(Some(&probe)).is_err());
        let _ = std::fs::remove_dir_all(&probe);
    }

    #[test]
    fn latency_summary_reads_quantiles() {
        let mut h = latency_histogram().unwrap();
        for v in 1..=100 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!((s.count, s.p50_us, s.max_us), (100, 50, 100));
    }
}
