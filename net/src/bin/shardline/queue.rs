//! `shardline queue ...`: work queues from the command line (docs/semantics.md, "Work queues").

use std::io::{self, BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use shardline_engine::batch::{BatchBuilder, now_us};
use shardline_net::client::{
    Acks, Client, QueueMessage, QueueReceipt, QueueSettings, SendOptions, TopicConfig,
};

use super::hints::check_receipts;

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Create a work-queue topic (and its dead-letter topic NAME.dlq unless --no-dlq).
    Create {
        name: String,
        #[arg(long, default_value_t = 1, value_name = "N")]
        partitions: u32,
        /// How long a received message stays invisible unless acked.
        #[arg(long, default_value_t = 30_000, value_name = "MS")]
        visibility_timeout_ms: u64,
        /// Deliveries before a message goes to the dead-letter topic.
        #[arg(long, default_value_t = 5, value_name = "N")]
        max_deliveries: u32,
        /// Redelivery delay after a failed delivery; doubles per delivery up to --backoff-max-ms.
        #[arg(long, default_value_t = 1_000, value_name = "MS")]
        backoff_base_ms: u64,
        #[arg(long, default_value_t = 60_000, value_name = "MS")]
        backoff_max_ms: u64,
        /// Dead-letter topic [default: NAME.dlq].
        #[arg(long, value_name = "TOPIC", conflicts_with = "no_dlq")]
        dlq: Option<String>,
        /// Drop messages after --max-deliveries instead of dead-lettering them.
        #[arg(long)]
        no_dlq: bool,
        /// Priority levels (1..=10); a message's level is its `priority` header.
        #[arg(long, default_value_t = 1, value_name = "N")]
        priority_levels: u8,
        /// Strict priority: never deliver a lower level while a higher one has messages ready
        /// [default: weighted, each level 8x the share of the one below].
        #[arg(long)]
        strict_priority: bool,
    },
    /// Send one message per stdin line; prints the number acknowledged.
    Send {
        topic: String,
        #[arg(long, default_value_t = 0, value_name = "P")]
        partition: u32,
        /// Priority level of every message (the `priority` header).
        #[arg(long, value_name = "LEVEL")]
        priority: Option<u8>,
        /// Deliver no message before this long after it is sent (500ms, 30s, 5m, 2h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Dead-letter (reason `expired`) a message not acked this long after it is sent.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Receive messages, print one value per line, and ack them (unless --no-ack).
    Receive {
        topic: String,
        /// Only this partition [default: any].
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
        /// Exit after this many messages.
        #[arg(long, default_value_t = 1, value_name = "N")]
        count: u64,
        /// Exit when nothing arrives for this long.
        #[arg(long, default_value_t = 1_000, value_name = "MS")]
        timeout_ms: u64,
        /// Visibility timeout of these deliveries [default: the queue's].
        #[arg(long, value_name = "MS")]
        visibility_timeout_ms: Option<u64>,
        /// Leave the messages in flight; print PARTITION:OFFSET:ATTEMPT before each value.
        #[arg(long)]
        no_ack: bool,
    },
    /// Ack deliveries named by PARTITION:OFFSET:ATTEMPT receipts.
    Ack {
        topic: String,
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Give deliveries back (visible again after --delay-ms, or the backoff).
    Nack {
        topic: String,
        #[arg(required = true)]
        receipts: Vec<String>,
        #[arg(long, value_name = "MS")]
        delay_ms: Option<u64>,
    },
    /// Depth, in flight, oldest message age and counters of each partition.
    Stats {
        topic: String,
        /// One JSON object per partition.
        #[arg(long)]
        json: bool,
    },
    /// Discard every message of the queue (all partitions) below its current end, in-flight
    /// ones included; prints what each partition discarded.
    Purge { queue: String },
    /// Inspect or re-drive a dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show messages not yet acked, in offset order, without receiving them: offset,
    /// deliveries so far, value.
    Peek {
        topic: String,
        /// Only this partition [default: every partition].
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
        /// At most this many messages per partition.
        #[arg(long, default_value_t = 10, value_name = "N")]
        max: u32,
    },
    /// Extend the lease of deliveries named by PARTITION:OFFSET:ATTEMPT receipts (their
    /// messages stay invisible for --timeout-ms from now; 0 makes them visible at once).
    ChangeVisibility {
        topic: String,
        #[arg(required = true)]
        receipts: Vec<String>,
        #[arg(long, value_name = "MS")]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Show dead-lettered messages: offset, reason, deliveries, origin, value.
    List {
        dlq: String,
        #[arg(long, default_value_t = 100, value_name = "N")]
        max: u32,
    },
    /// Move dead-lettered messages back to the topic they came from.
    Redrive {
        dlq: String,
        #[arg(long, default_value_t = 1_000_000, value_name = "N")]
        max: u32,
    },
}

#[allow(
    clippy::too_many_lines,
    reason = "one short arm per `shardline queue` subcommand"
)]
pub(crate) fn run(client: &Client, command: QueueCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        QueueCommand::Create {
            name,
            partitions,
            visibility_timeout_ms,
            max_deliveries,
            backoff_base_ms,
            backoff_max_ms,
            dlq,
            no_dlq,
            priority_levels,
            strict_priority,
        } => {
            let dead_letter_topic = (!no_dlq).then(|| dlq.unwrap_or_else(|| format!("{name}.dlq")));
            let queue = QueueSettings {
                visibility_timeout_ms,
                max_deliveries,
                backoff_base_ms,
                backoff_max_ms,
                dead_letter_topic: dead_letter_topic.clone(),
                priority_levels,
            }
            .with_strict_priority(strict_priority);
            let config = TopicConfig {
                partitions,
                ..Default::default()
            };
            client
                .create_queue(&name, config, queue)
                .map_err(|e| explain(e, &name))?;
            let dlq =
                dead_letter_topic.map_or_else(String::new, |d| format!(", dead letters to {d}"));
            let plural = if partitions == 1 { "" } else { "s" };
            writeln!(
                out,
                "created queue {name} ({partitions} partition{plural}{dlq})"
            )?;
        }
        QueueCommand::Send {
            topic,
            partition,
            priority,
            delay,
            ttl,
        } => {
            let mut sent = 0u64;
            let mut batch = BatchBuilder::new();
            let options = SendOptions {
                priority,
                delay,
                ttl,
            };
            let headers = || options.headers();
            for line in io::stdin().lock().lines() {
                batch.push(now_us(), None, line?.into_bytes(), headers());
                if batch.len() >= 1000 {
                    let b = std::mem::take(&mut batch);
                    sent += b.len() as u64;
                    client
                        .produce(&topic, partition, b.build()?, Acks::Durable)
                        .map_err(|e| explain(e, &topic))?;
                }
            }
            if !batch.is_empty() {
                sent += batch.len() as u64;
                client
                    .produce(&topic, partition, batch.build()?, Acks::Durable)
                    .map_err(|e| explain(e, &topic))?;
            }
            writeln!(out, "{sent}")?;
        }
        QueueCommand::Receive {
            topic,
            partition,
            count,
            timeout_ms,
            visibility_timeout_ms,
            no_ack,
        } => {
            let mut got = 0u64;
            let idle = Duration::from_millis(timeout_ms);
            let mut last = Instant::now();
            while got < count && last.elapsed() < idle {
                let max = u32::try_from(count - got).unwrap_or(u32::MAX).min(1000);
                let wait = idle.saturating_sub(last.elapsed());
                let vis = visibility_timeout_ms.map(Duration::from_millis);
                let msgs = client
                    .queue_receive(&topic, partition, max, vis, wait)
                    .map_err(|e| explain(e, &topic))?;
                if msgs.is_empty() {
                    continue;
                }
                last = Instant::now();
                for m in &msgs {
                    if no_ack {
                        write!(out, "{}:{}:{}\t", m.partition, m.offset, m.attempt)?;
                    }
                    out.write_all(&m.value)?;
                    writeln!(out)?;
                }
                out.flush()?;
                if !no_ack {
                    let receipts: Vec<QueueReceipt> =
                        msgs.iter().map(QueueMessage::receipt).collect();
                    let codes = client
                        .queue_ack(&topic, &receipts)
                        .map_err(|e| explain(e, &topic))?;
                    check_receipts(&receipts, &codes)?;
                }
                got += msgs.len() as u64;
            }
        }
        QueueCommand::Ack { topic, receipts } => {
            let r = parse_receipts(&receipts)?;
            let codes = client
                .queue_ack(&topic, &r)
                .map_err(|e| explain(e, &topic))?;
            check_receipts(&r, &codes)?;
            writeln!(out, "acked {}", r.len())?;
        }
        QueueCommand::Nack {
            topic,
            receipts,
            delay_ms,
        } => {
            let r = parse_receipts(&receipts)?;
            let codes = client
                .queue_nack(&topic, &r, delay_ms.map(Duration::from_millis))
                .map_err(|e| explain(e, &topic))?;
            check_receipts(&r, &codes)?;
            writeln!(out, "nacked {}", r.len())?;
        }
        QueueCommand::Stats { topic, json } => {
            for s in client.queue_stats(&topic).map_err(|e| explain(e, &topic))? {
                if json {
                    writeln!(
                        out,
                        "{{\"partition\":{},\"depth\":{},\"ready\":{},\"delayed\":{},\"in_flight\":{},\
                         \"oldest_age_ms\":{},\"acked\":{},\"nacked\":{},\"expired\":{},\
                         \"dead_lettered\":{},\"dropped\":{},\"lost\":{},\"ack_floor\":{},\
                         \"high_watermark\":{}}}",
                        s.partition,
                        s.depth,
                        s.ready,
                        s.delayed,
                        s.in_flight,
                        s.oldest_age_ms,
                        s.acked,
                        s.nacked,
                        s.expired,
                        s.dead_lettered,
                        s.dropped,
                        s.lost,
                        s.ack_floor,
                        s.high_watermark
                    )?;
                } else {
                    writeln!(
                        out,
                        "partition {} depth={} in_flight={} delayed={} oldest_age_ms={} acked={} \
                         nacked={} expired={} dead_lettered={} ack_floor={} high_watermark={}",
                        s.partition,
                        s.depth,
                        s.in_flight,
                        s.delayed,
                        s.oldest_age_ms,
                        s.acked,
                        s.nacked,
                        s.expired,
                        s.dead_lettered,
                        s.ack_floor,
                        s.high_watermark
                    )?;
                }
            }
        }
        QueueCommand::Dlq(DlqCommand::List { dlq, max }) => {
            let partitions = client.partitions(&dlq).map_err(|e| explain(e, &dlq))?;
            for p in 0..partitions {
                for m in client
                    .queue_peek(&dlq, p, max)
                    .map_err(|e| explain(e, &dlq))?
                {
                    let h = |k| {
                        m.header(k)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    };
                    writeln!(
                        out,
                        "{}:{}\treason={}\tdeliveries={}\torigin={}/{}/{}\t{}",
                        m.partition,
                        m.offset,
                        h("x-dlq-reason"),
                        h("x-dlq-delivery-count"),
                        h("x-dlq-original-topic"),
                        h("x-dlq-original-partition"),
                        h("x-dlq-original-offset"),
                        String::from_utf8_lossy(&m.value)
                    )?;
                }
            }
        }
        QueueCommand::Purge { queue } => {
            let mut total = 0;
            for p in client.queue_purge(&queue).map_err(|e| explain(e, &queue))? {
                total += p.purged;
                writeln!(
                    out,
                    "partition {} purged={} purged_until={}",
                    p.partition, p.purged, p.purged_until
                )?;
            }
            writeln!(out, "purged {total}")?;
        }
        QueueCommand::Peek {
            topic,
            partition,
            max,
        } => {
            let partitions = match partition {
                Some(p) => p..p + 1,
                None => 0..client.partitions(&topic).map_err(|e| explain(e, &topic))?,
            };
            for p in partitions {
                for m in client
                    .queue_peek(&topic, p, max)
                    .map_err(|e| explain(e, &topic))?
                {
                    write!(
                        out,
                        "{}:{}\tdeliveries={}\t",
                        m.partition, m.offset, m.attempt
                    )?;
                    out.write_all(&m.value)?;
                    writeln!(out)?;
                }
            }
        }
        QueueCommand::ChangeVisibility {
            topic,
            receipts,
            timeout_ms,
        } => {
            let r = parse_receipts(&receipts)?;
            let codes = client
                .queue_change_visibility(&topic, &r, Duration::from_millis(timeout_ms))
                .map_err(|e| explain(e, &topic))?;
            check_receipts(&r, &codes)?;
            writeln!(out, "changed visibility of {} to {timeout_ms} ms", r.len())?;
        }
        QueueCommand::Dlq(DlqCommand::Redrive { dlq, max }) => {
            let moved = client
                .queue_redrive(&dlq, max)
                .map_err(|e| explain(e, &dlq))?;
            writeln!(out, "redriven {moved}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn parse_receipts(args: &[String]) -> anyhow::Result<Vec<QueueReceipt>> {
    args.iter()
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            let [p, o, a] = parts.as_slice() else {
                bail!("receipt '{s}' is not PARTITION:OFFSET:ATTEMPT");
            };
            Ok(QueueReceipt {
                partition: p.parse().with_context(|| format!("receipt '{s}'"))?,
                offset: o.parse().with_context(|| format!("receipt '{s}'"))?,
                attempt: a.parse().with_context(|| format!("receipt '{s}'"))?,
            })
        })
        .collect()
}

/// A client error in the words of the command line (see `hints.rs`).
fn explain(e: shardline_net::client::ClientError, topic: &str) -> anyhow::Error {
    super::hints::explain(e, super::hints::Subject { topic: Some(topic) })
}

/// A duration as people write it: a number and a unit (`500ms`, `30s`, `5m`, `2h`, `1d`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: write a number and a unit, like 30s"))?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!(
                "'{text}' has no unit: write {n}ms, {n}s, {n}m, {n}h or {n}d"
            ));
        }
        u => {
            return Err(format!(
                "unknown unit '{u}' in '{text}': use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{text}' is too long"))
}
