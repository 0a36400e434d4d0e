//! `shardline group ...`: consumer groups from the command line (docs/operations.md,
//! "Consumer groups"): list them, describe one (members, assignment, committed offsets and lag
//! per partition), reset a group's offsets (refused while it has live members).

use std::io::{self, Write};

use clap::{ArgGroup, Subcommand};
use shardline_net::cli::stats::Table;
use shardline_net::client::Client;
use shardline_net::protocol::OffsetResetTarget;

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Every group: topics, live members, generation.
    List,
    /// Members and their partitions, and per partition the committed offset, log end and lag.
    Describe { group: String },
    /// Move the group's committed offsets; the group must have no live members.
    #[command(group(ArgGroup::new("to").required(true).multiple(false)
        .args(["to_earliest", "to_latest", "to_offset", "to_timestamp"])))]
    ResetOffsets {
        group: String,
        #[arg(long, value_name = "T")]
        topic: String,
        /// Only this partition [default: every partition of the topic].
        #[arg(long, value_name = "N")]
        partition: Option<u32>,
        /// To the log start.
        #[arg(long)]
        to_earliest: bool,
        /// To the log end (skip everything written so far).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped into each partition's log start..log end).
        #[arg(long, value_name = "N")]
        to_offset: Option<u64>,
        /// To the first message at or after this time (milliseconds since the epoch).
        #[arg(long, value_name = "MS")]
        to_timestamp: Option<i64>,
        /// Print the new offsets without writing them.
        #[arg(long)]
        dry_run: bool,
    },
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn partitions(p: &[u32]) -> String {
    if p.is_empty() {
        return "-".to_string();
    }
    p.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn run(client: &Client, command: GroupCommand) -> anyhow::Result<()> {
    let mut text = String::new();
    match command {
        GroupCommand::List => {
            let l = client.list_groups()?;
            let mut t = Table::new(&["GROUP", "TOPICS", "MEMBERS", "GENERATION"]);
            for g in &l.groups {
                t.row(vec![
                    g.group.clone(),
                    g.topics.join(","),
                    g.members.to_string(),
                    g.generation.to_string(),
                ]);
            }
            t.render(&mut text);
            if l.truncated {
                text.push_str("(more groups not listed)\n");
            }
        }
        GroupCommand::Describe { group } => {
            let (d, lag) = client.describe_group_lag(&group)?;
            let total: u64 = lag.iter().filter_map(|l| l.lag).sum();
            text.push_str(&format!(
                "group {}  topic {}  generation {}  members {}  coordinator slot {}  lag {total}\n\n",
                d.group,
                d.topic,
                d.generation,
                d.members.len(),
                d.coordinator_slot
            ));
            if !d.members.is_empty() {
                let mut t = Table::new(&["MEMBER", "CLIENT", "ASSIGNED", "OWNED", "LAST SEEN"]);
                for m in &d.members {
                    t.row(vec![
                        m.member_id.clone(),
                        m.client_id.clone(),
                        partitions(&m.assigned),
                        partitions(&m.owned),
                        format!("{} ms ago", m.last_seen_ms_ago),
                    ]);
                }
                t.render(&mut text);
                text.push('\n');
            }
            let mut t = Table::new(&["PARTITION", "COMMITTED", "LOG END", "LAG", "MEMBER"]);
            for l in &lag {
                let owner = d
                    .members
                    .iter()
                    .find(|m| m.owned.contains(&l.partition))
                    .map_or("-", |m| m.member_id.as_str());
                t.row(vec![
                    l.partition.to_string(),
                    or_dash(l.committed),
                    l.log_end.to_string(),
                    or_dash(l.lag),
                    owner.to_string(),
                ]);
            }
            t.render(&mut text);
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
            dry_run,
        } => {
            let target = match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, _, _, _) => OffsetResetTarget::Earliest,
                (_, true, _, _) => OffsetResetTarget::Latest,
                (_, _, Some(o), _) => OffsetResetTarget::Offset(o),
                (_, _, _, Some(ms)) => OffsetResetTarget::TimestampMs(ms),
                _ => {
                    anyhow::bail!("one of --to-earliest, --to-latest, --to-offset, --to-timestamp")
                }
            };
            let done = client.reset_offsets(&group, &topic, partition, target, dry_run)?;
            let mut t = Table::new(&["PARTITION", "PREVIOUS", "NEW"]);
            for r in &done {
                t.row(vec![
                    r.partition.to_string(),
                    or_dash(r.previous),
                    r.offset.to_string(),
                ]);
            }
            t.render(&mut text);
            if dry_run {
                text.push_str("(dry run: nothing written)\n");
            }
        }
    }
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
