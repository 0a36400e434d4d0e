//! `shardline request` and `shardline reply`: request-reply over a work queue
//! (docs/semantics.md, "Request-reply"), in the spirit of `nats request` / `nats reply`.

use std::io::{self, BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use shardline_net::client::{Client, QueueMessage, Requester, reply};

use super::hints::{Subject, check_receipts, explain};

#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// Work queue the responders receive from.
    topic: String,
    /// Request body; without it, every stdin line is one request.
    value: Option<String>,
    /// Partition of the queue to send to.
    #[arg(long, default_value_t = 0, value_name = "P")]
    partition: u32,
    /// How long to wait for each reply.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    /// Work queue to receive requests from.
    topic: String,
    /// Reply body; `{}` is replaced by the request body [default: the request body (echo)].
    #[arg(conflicts_with = "command")]
    template: Option<String>,
    /// Answer with this shell command's stdout; the request body is its stdin.
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    /// Exit after answering this many requests [default: run until interrupted].
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit when no request arrives for this long [default: never].
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

pub(crate) fn request(client: Client, args: RequestArgs) -> anyhow::Result<()> {
    let subject = Subject {
        topic: Some(&args.topic),
    };
    client.route(&args.topic).map_err(|e| explain(e, subject))?;
    let requester = Requester::new(client).map_err(|e| explain(e, subject))?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let bodies: Box<dyn Iterator<Item = io::Result<String>>> = match args.value {
        Some(v) => Box::new(std::iter::once(Ok(v))),
        None => Box::new(io::stdin().lock().lines()),
    };
    let mut out = io::stdout().lock();
    for body in bodies {
        let body = body.context("reading stdin")?;
        let answer = requester
            .request(&args.topic, args.partition, body, timeout)
            .map_err(|e| match e {
                shardline_net::client::ClientError::Timeout { .. } => anyhow::anyhow!(
                    "no reply within {} ms: is a responder running ('shardline reply {}')? \
                     Raise --timeout-ms for slow ones",
                    args.timeout_ms,
                    args.topic
                ),
                e => explain(e, subject),
            })?;
        out.write_all(&answer.value)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

pub(crate) fn serve_replies(client: &Client, args: ReplyArgs) -> anyhow::Result<()> {
    let subject = Subject {
        topic: Some(&args.topic),
    };
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut last = Instant::now();
    let mut answered = 0u64;
    while args.count.is_none_or(|c| answered < c) {
        let wait = match idle {
            Some(idle) => match idle.checked_sub(last.elapsed()) {
                Some(left) if !left.is_zero() => left.min(Duration::from_secs(1)),
                _ => break,
            },
            None => Duration::from_secs(1),
        };
        let max = args
            .count
            .map_or(100, |c| u32::try_from(c - answered).unwrap_or(100).min(100));
        let messages = client
            .queue_receive(&args.topic, None, max, None, wait)
            .map_err(|e| explain(e, subject))?;
        if messages.is_empty() {
            continue;
        }
        last = Instant::now();
        for m in &messages {
            let body = answer(&args, m)?;
            reply(client, m, body).map_err(|e| match e {
                shardline_net::client::ClientError::InvalidArgument(_) => anyhow::anyhow!(
                    "message {}:{} of '{}' is not a request (no reply-to header): send \
                     requests with 'shardline request'",
                    m.partition,
                    m.offset,
                    args.topic
                ),
                e => explain(e, subject),
            })?;
            let receipt = [m.receipt()];
            let codes = client
                .queue_ack(&args.topic, &receipt)
                .map_err(|e| explain(e, subject))?;
            check_receipts(&receipt, &codes)?;
            answered += 1;
        }
    }
    Ok(())
}

fn answer(args: &ReplyArgs, m: &QueueMessage) -> anyhow::Result<Vec<u8>> {
    if let Some(command) = &args.command {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run --command '{command}'"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin closes the pipe: not an error.
            let _ = stdin.write_all(&m.value);
        }
        let out = child.wait_with_output().context("--command")?;
        if !out.status.success() {
            bail!("--command '{command}' failed ({})", out.status);
        }
        let mut body = out.stdout;
        if body.last() == Some(&b'\n') {
            body.pop();
        }
        return Ok(body);
    }
    Ok(match &args.template {
        None => m.value.clone(),
        Some(t) => t
            .replace("{}", &String::from_utf8_lossy(&m.value))
            .into_bytes(),
    })
}
