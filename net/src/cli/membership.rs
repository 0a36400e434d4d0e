//! `shardline topic reassign` (docs/operations.md, "Moving partitions"; docs/replication.md,
//! "Membership changes").

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use shardline_client::{Client, ClientError};

/// A replica set as given (`--replicas 4,1,2`): sorted, without repeats; node ids start at 1.
pub fn replica_set(given: &[u64]) -> Result<Vec<u64>, String> {
    let mut v = given.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        return Err("no node ids".into());
    }
    if v.contains(&0) {
        return Err("node ids start at 1".into());
    }
    Ok(v)
}

/// Moves partition `partition` of `topic` onto `replicas`; with `wait`, polls
/// DescribeReplicas until every replica of the new set is reported (bounded by `wait`).
pub fn reassign(
    client: &Client,
    topic: &str,
    partition: u32,
    replicas: &[u64],
    wait: Option<Duration>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let replicas = replica_set(replicas).map_err(|e| anyhow!("--replicas: {e}"))?;
    let r = client
        .reassign_partition(topic, partition, &replicas)
        .map_err(|e| match e {
            ClientError::Server { message, .. } => anyhow!("reassign refused: {message}"),
            e => anyhow!(e),
        })?;
    writeln!(out, "moving {topic}/{partition} onto {:?}", r.replicas)?;
    let Some(wait) = wait else {
        return Ok(());
    };
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(d) = client.describe_replicas(topic)
            && let Some(p) = d.partitions.iter().find(|p| p.partition == partition)
        {
            let mut set = p.replicas.clone();
            set.sort_unstable();
            if set == r.replicas && p.leader != 0 {
                writeln!(
                    out,
                    "moved {topic}/{partition}: replicas={:?} leader={}",
                    p.replicas, p.leader
                )?;
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{topic}/{partition} not moved within {} s (it goes on in the background: \
                 see `shardline topic describe {topic}`)",
                wait.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_sets_are_sorted_and_refuse_zero_or_none() {
        assert_eq!(replica_set(&[4, 1, 2, 2]), Ok(vec![1, 2, 4]));
        assert!(replica_set(&[0, 1]).is_err());
        assert!(replica_set(&[]).is_err());
    }
}
