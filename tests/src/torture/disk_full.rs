//! The disk-full phase: a server on a small loop-mounted ext4 (root only; skipped with a
//! reason otherwise). Durable producers write until the disk is full; every produce must end
//! acknowledged or with DISK_FULL (no other error, no hang, no crash); once space is freed the
//! partition takes writes again without a restart; every acknowledged record reads back, before
//! and after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use shardline_engine::batch;
use shardline_net::client::{Client, ClientConfig};
use shardline_net::protocol::{Acks, TopicConfig, code};

use super::ledger::{self, Acked, PartitionLedger};
use super::server::{ServerProc, ServerSpec};
use super::verify::scan_partition;
use super::{Config, Report, SHUTDOWN_LIMIT, Shared, TOPIC};

/// Records per batch of the disk-full producer.
const BATCH_RECORDS: u64 = 64;
/// The only producer of the phase (its identity in the record values).
const PRODUCER: u32 = 1;
/// Freed once the disk is full, to show the partition takes writes again.
const BALLAST_BYTES: usize = 8 << 20;
/// DISK_FULL answers to collect before space is freed.
const DISK_FULL_ERRORS_MIN: u64 = 20;
/// Filling the disk is bounded: it holds at most `disk_full_mib`.
const FILL_LIMIT: Duration = Duration::from_secs(120);
/// After space is freed, writes must succeed again within this; tried at this interval.
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);
const RECOVERY_RETRY_INTERVAL: Duration = Duration::from_millis(100);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Serialize)]
pub struct DiskFullReport {
    pub filesystem_mib: u64,
    pub acked_records: u64,
    pub disk_full_errors: u64,
    pub other_errors: u64,
    pub records_verified: u64,
    pub served_after_full: bool,
    pub writable_after_space_freed: bool,
}

/// Runs the phase and records its outcome in `report` (a failure is a violation).
pub(super) fn run_phase(cfg: &Config, spec: &ServerSpec, shared: &Shared, report: &mut Report) {
    match disk_full_phase(cfg, spec) {
        Ok(Ok(r)) => report.disk_full = Some(r),
        Ok(Err(why)) => {
            eprintln!("disk-full phase skipped: {why}");
            report.disk_full_skipped = Some(why);
        }
        Err(e) => shared.violation(format!("disk-full phase: {e:#}")),
    }
}

/// The phase; `Ok(Err(reason))` when it cannot run here.
fn disk_full_phase(
    cfg: &Config,
    spec: &ServerSpec,
) -> anyhow::Result<Result<DiskFullReport, String>> {
    let disk = match SmallDisk::mount(cfg)? {
        Ok(d) => d,
        Err(why) => return Ok(Err(why)),
    };
    let dspec = ServerSpec {
        data_dir: disk.mnt.join("data"),
        shards: 1,
        ..spec.clone()
    };
    std::fs::create_dir_all(&dspec.data_dir)?;
    let srv = dspec.start()?;
    let ccfg = ClientConfig {
        request_timeout: REQUEST_TIMEOUT,
        ..ClientConfig::default()
    };
    let client = Client::connect(&srv.addr, ccfg)?;
    client.create_topic(
        TOPIC,
        TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    )?;
    let mut filler = Filler {
        client: &client,
        ledger: PartitionLedger::default(),
        seq: 0,
        report: DiskFullReport {
            filesystem_mib: cfg.disk_full_mib,
            ..DiskFullReport::default()
        },
    };
    let ballast = disk.mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; BALLAST_BYTES]).context("writing the ballast file")?;
    filler.fill(cfg.disk_full_mib)?;
    // Space comes back: writes must succeed again within a bounded time, without a restart.
    std::fs::remove_file(&ballast).context("removing the ballast")?;
    filler.recover()?;
    let Filler {
        ledger, mut report, ..
    } = filler;
    report.acked_records = ledger.acked_records;
    let ledger = Mutex::new(ledger);
    check_reads(&dspec, srv, client, &ledger, &mut report)?;
    drop(disk);
    Ok(Ok(report))
}

/// A small ext4 image, loop-mounted under the run's directory; unmounted on drop.
struct SmallDisk {
    mnt: PathBuf,
}

impl SmallDisk {
    /// Makes and mounts the filesystem; `Ok(Err(reason))` when this machine cannot (not root,
    /// a tool missing, no loop devices).
    fn mount(cfg: &Config) -> anyhow::Result<Result<SmallDisk, String>> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Err("not root (needs mount)".into()));
        }
        for tool in ["mkfs.ext4", "mount", "umount"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Ok(Err(format!("{tool} not found")));
            }
        }
        let image = cfg.dir.join("small-disk.img");
        let mnt = cfg.dir.join("small-disk");
        std::fs::create_dir_all(&mnt)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(cfg.disk_full_mib << 20)?;
        drop(f);
        let img = image.to_string_lossy().to_string();
        let mnt_s = mnt.to_string_lossy().to_string();
        if !quiet(&["mkfs.ext4", "-q", "-F", &img])? {
            return Ok(Err("mkfs.ext4 failed".into()));
        }
        if !quiet(&["mount", "-o", "loop", &img, &mnt_s])? {
            return Ok(Err(
                "mount -o loop failed (no loop devices in this sandbox?)".into(),
            ));
        }
        Ok(Ok(SmallDisk { mnt }))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}

/// Runs a command with its output discarded; whether it succeeded.
fn quiet(args: &[&str]) -> anyhow::Result<bool> {
    Ok(std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?
        .success())
}

/// The phase's durable producer and what it has seen.
struct Filler<'a> {
    client: &'a Client,
    ledger: PartitionLedger,
    seq: u64,
    report: DiskFullReport,
}

impl Filler<'_> {
    /// One durable batch: `true` when acknowledged, `false` on DISK_FULL, `Err` on anything
    /// else.
    fn produce(&mut self) -> anyhow::Result<bool> {
        let n = BATCH_RECORDS;
        let values = (self.seq..self.seq + n).map(|s| ledger::value(PRODUCER, 0, s));
        let b = batch::batch_of_values(values).map_err(|e| anyhow::anyhow!("{e}"))?;
        let r = self.client.produce(TOPIC, 0, b, Acks::Durable);
        let seq_base = self.seq;
        self.seq += n;
        match r {
            Ok(Some(ack)) => {
                self.ledger.acked.insert(
                    ack.base_offset,
                    Acked {
                        last_offset: ack.last_offset,
                        producer: PRODUCER,
                        seq_base,
                    },
                );
                self.ledger.acked_records += n;
                Ok(true)
            }
            Ok(None) => bail!("durable produce without an ack"),
            // The failed write's partition is reopened from disk ("repaired"); until that is
            // done it keeps answering DISK_FULL (one consistent, retriable error).
            Err(e) if e.code() == Some(code::DISK_FULL) => {
                self.report.disk_full_errors += 1;
                Ok(false)
            }
            Err(e) => {
                self.report.other_errors += 1;
                bail!("error other than disk full on a full disk: {e}")
            }
        }
    }

    /// Produces until the disk is full (a few DISK_FULL answers in a row), bounded in time.
    fn fill(&mut self, filesystem_mib: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + FILL_LIMIT;
        while self.report.disk_full_errors < DISK_FULL_ERRORS_MIN && Instant::now() < deadline {
            self.produce()?;
        }
        if self.report.disk_full_errors == 0 {
            bail!("{filesystem_mib} MiB filesystem never reported disk full within the time limit");
        }
        Ok(())
    }

    /// After space was freed: a produce must be acknowledged again within the limit.
    fn recover(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        let mut recovered = false;
        while Instant::now() < deadline {
            if self.produce()? {
                recovered = true;
                break;
            }
            std::thread::sleep(RECOVERY_RETRY_INTERVAL);
        }
        self.report.writable_after_space_freed = recovered;
        if !recovered {
            bail!("the partition did not take writes again within 20 s of space being freed");
        }
        Ok(())
    }
}

/// Reads still work, and every acknowledged record is there, before and after a restart; the
/// server stops cleanly on the full disk.
fn check_reads(
    dspec: &ServerSpec,
    srv: ServerProc,
    client: Client,
    ledger: &Mutex<PartitionLedger>,
    report: &mut DiskFullReport,
) -> anyhow::Result<()> {
    let (r, _) = scan_partition(&client, TOPIC, ledger, 0, 0, HashMap::new())?;
    report.records_verified = r.records;
    if r.failed() {
        bail!("after disk full: {:?}", r.violations);
    }
    report.served_after_full = client.ping().is_ok();
    if !report.served_after_full {
        bail!("server does not answer after the disk filled up");
    }
    drop(client);
    let status = srv.terminate(SHUTDOWN_LIMIT)?;
    if !status.success() {
        bail!("server on the full disk exited with {status} on SIGTERM");
    }
    let srv = dspec.start()?;
    let client = Client::connect(&srv.addr, ClientConfig::default())?;
    let (r, _) = scan_partition(&client, TOPIC, ledger, 0, 0, HashMap::new())?;
    if r.failed() {
        bail!("after disk full and a restart: {:?}", r.violations);
    }
    drop(client);
    srv.terminate(SHUTDOWN_LIMIT)?;
    Ok(())
}
