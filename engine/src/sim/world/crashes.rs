//! Crashes of the simulated process (power loss or SIGKILL) and the reopening of every
//! partition after one.

use crate::partition::{CoreConfig, Sabotage};
use std::path::PathBuf;

use super::checks::{check_whole_log, open_now};
use super::{Check, Core, Done, World};
use rand_xoshiro::rand_core::Rng;

impl World {
    /// Power loss (or SIGKILL): every job, timer and waiting producer of the process is gone;
    /// each unsynced block write lands or not; every partition reopens and is checked.
    pub(super) fn crash(&mut self, kill: bool) -> Check {
        self.stats.crashes += 1;
        self.mix(0xC0A5 + u64::from(kill));
        self.note(|| format!("CRASH (kill {kill})"));
        self.tasks.clear();
        self.timers.clear();
        self.requests.clear();
        self.crash_at = None;
        for part in &mut self.parts {
            part.core = None;
            part.retention_running = false;
            part.last_durable_reply = None;
        }
        self.storage.forget_operations();
        let keep_per_mille = [0, 500, 1000][self.below(3) as usize];
        let image = self.storage.crash_image().clone();
        image.die_after_ops(None);
        let rng = &mut self.rng;
        let keep = |_, _, _| rng.next_u64() % 1000 < keep_per_mille;
        if kill {
            image.kill(keep);
        } else {
            image.crash(keep);
        }
        let dirs: Vec<PathBuf> = self.parts.iter().map(|p| p.dir.clone()).collect();
        self.storage
            .reset_shadow(&dirs)
            .map_err(|e| e.to_string())?;
        for p in 0..self.parts.len() {
            self.reopen(p)?;
        }
        Ok(())
    }

    /// Opens partition `p` on the image (recovery), then checks invariants 3, 4, 6 and 7 over
    /// the whole recovered log.
    pub(super) fn reopen(&mut self, p: usize) -> Check {
        let sabotage = self.cfg.sabotage;
        let part = &mut self.parts[p];
        self.storage.set_passthrough(true);
        let opened = open_now(Core::open(
            self.storage.clone(),
            &part.dir,
            part.key.clone(),
            part.log_config.clone(),
            CoreConfig {
                sync_interval_ms: 5 + self.rng.next_u64() % 50,
            },
            self.now_ms,
        ));
        self.storage.set_passthrough(false);
        let opened = opened?.map_err(|e| format!("reopen of partition {p} failed: {e}"))?;
        let w = opened.core.watermarks();
        if w.next_offset < part.model.durable_acked_end || w.written_offset < w.next_offset {
            return Err(format!(
                "invariant 3: partition {p} reopened at {w:?}, below the durable-acked end {}",
                part.model.durable_acked_end
            ));
        }
        part.model.truncate(w.next_offset)?;
        check_whole_log(&opened.core.log(), &part.model)
            .map_err(|e| format!("invariant 4: after the crash, partition {p}: {e}"))?;
        let lost = part
            .subscribers
            .iter()
            .filter(|s| **s > w.written_offset)
            .count();
        self.stats.reader_saw_lost += lost as u64;
        for s in &mut part.subscribers {
            *s = (*s).min(w.written_offset);
        }
        part.last_hw = w.written_offset;
        let mut core = opened.core;
        if sabotage {
            core.sabotage(Sabotage::AckBeforeSync);
        }
        part.core = Some(core);
        if let Some(job) = opened.snapshot {
            let upto = job.upto_offset();
            self.spawn(p, async move { Done::Snapshot(upto, job.run().await) });
        }
        self.mix(w.next_offset);
        self.note(|| format!("p{p} reopened: {w:?}"));
        Ok(())
    }
}
