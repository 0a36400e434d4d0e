//! The process limits io_uring and O_DIRECT need, checked before the engine starts so that a
//! limit set too low is reported by name, with the setting that raises it
//! (docs/operations.md, "Deployment"): the locked-memory limit (`ulimit -l`, systemd
//! `LimitMEMLOCK=`, `docker run --ulimit memlock=-1`) and the open-file limit (`ulimit -n`,
//! `LimitNOFILE=`, `--ulimit nofile=...`).

/// Locked memory glommio needs per executor before its I/O buffers (it refuses to start below).
pub const MEMLOCK_BASE_BYTES: u64 = 512 << 10;
/// Open files below which the server cannot run a handful of partitions and connections.
pub const NOFILE_MIN: u64 = 256;

/// A limit as the kernel reports it; `None` = unlimited.
fn limit(resource: libc::__rlimit_resource_t) -> (Option<u64>, Option<u64>) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(resource, &raw mut r) } != 0 {
        return (None, None);
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    (finite(r.rlim_cur), finite(r.rlim_max))
}

/// Raises the soft open-file limit to the hard one (as most servers do); returns the soft
/// limit in force afterwards (`None` = unlimited).
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = limit(libc::RLIMIT_NOFILE);
    if soft.is_some() && soft != hard {
        let r = libc::rlimit {
            rlim_cur: hard.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: hard.unwrap_or(libc::RLIM_INFINITY),
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer; raising the soft limit up
        // to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) } == 0 {
            return hard;
        }
    }
    soft
}

fn kib(b: u64) -> String {
    format!("{} KiB", b >> 10)
}

/// What the limits allow, before the engine starts: `Err` with a message naming the setting
/// when the server cannot start; `Ok(warnings)` otherwise.
pub fn check(shards: usize, io_memory_bytes: usize) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let (memlock, _) = limit(libc::RLIMIT_MEMLOCK);
    let per_shard = MEMLOCK_BASE_BYTES + io_memory_bytes as u64;
    let wanted = per_shard * shards.max(1) as u64;
    let raise = "raise it: `ulimit -l unlimited` in the shell (or /etc/security/limits.conf), \
                 LimitMEMLOCK=infinity in the systemd unit (deploy/shardline.service), \
                 `docker run --ulimit memlock=-1` for containers";
    if let Some(have) = memlock {
        if have < MEMLOCK_BASE_BYTES {
            return Err(format!(
                "the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {}, and io_uring needs \
                 {} + engine.io_memory_bytes per shard ({} for {shards} shard(s)); {raise}",
                kib(have),
                kib(MEMLOCK_BASE_BYTES),
                kib(wanted)
            ));
        }
        if have < wanted {
            warnings.push(format!(
                "the locked-memory limit (`ulimit -l`) is {}, below the {} that {shards} \
                 shard(s) with engine.io_memory_bytes = {} may lock; if the server fails to \
                 start, {raise}",
                kib(have),
                kib(wanted),
                io_memory_bytes
            ));
        }
    }
    if let Some(have) = raise_nofile()
        && have < NOFILE_MIN
    {
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE, `ulimit -n`) is {have}, below the {NOFILE_MIN} \
             the server needs (every segment and connection is a file; 65536 is a good value): \
             `ulimit -n 65536`, LimitNOFILE=65536 in the systemd unit, \
             `docker run --ulimit nofile=65536`"
        ));
    }
    Ok(warnings)
}
