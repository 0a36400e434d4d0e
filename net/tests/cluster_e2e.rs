//! Three real `shardline serve` processes as one cluster (issue 14): a replicated topic
//! (`--replicas 3`), an idempotent producer at `acks all` writing unique ids through the
//! leader-following client, and faults on the leader mid-stream: SIGKILL then restart, SIGSTOP
//! past the election timeout then SIGCONT (it must step down and catch up). At the end every
//! node's copy of every partition is read back: every acknowledged id is present exactly once,
//! at its acknowledged offset, in send order per partition, with no offset gap, and every node
//! holds the same records at the same offsets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;
#[allow(unreachable_pub)]
#[path = "../../tests/src/ledger.rs"]
mod ledger;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster::Cluster;
use ledger::{Load, RunningProducer, config, converged_high_watermark, read_all};
use shardline_net::client::{Acks, Client, TopicConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const TOPIC: &str = "ids";
const PARTITIONS: u32 = 2;

/// Partition -> (leader, epoch) as node `id` sees it (None: the node does not answer).
fn leaders(c: &Cluster, id: u64) -> Option<Vec<(u64, u64)>> {
    let client = Client::connect_node(&c.node(id).addr, config()).ok()?;
    let r = client.describe_cluster(&[TOPIC]).ok()?;
    let t = r.topics.into_iter().find(|t| t.name == TOPIC)?;
    Some(t.partitions.iter().map(|p| (p.leader, p.epoch)).collect())
}

/// Polls (bounded) until `ok` holds for node `id`'s view; returns that view.
fn wait_view(
    c: &Cluster,
    id: u64,
    what: &str,
    ok: impl Fn(&[(u64, u64)]) -> bool,
) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = leaders(c, id)
            && ok(&v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "node {id}: {what} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_three_node_cluster_keeps_every_acknowledged_id_through_leader_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 3).unwrap();
    c.start_all().unwrap();

    // A replica set of three, created through node 2 (the controller forwards).
    let admin = Client::connect(&c.node(2).addr, config()).unwrap();
    admin
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    let all_led = |v: &[(u64, u64)]| v.len() == PARTITIONS as usize && v.iter().all(|l| l.0 != 0);
    wait_view(&c, 1, "every partition has a leader", all_led);

    let producer = RunningProducer::start(
        c.bootstrap(),
        Load {
            topic: TOPIC.into(),
            partitions: PARTITIONS,
            round: 20,
        },
    );
    producer.wait_acks(200);

    // 1. SIGKILL the leader of partition 0; a new leader takes over; restart the old one.
    let view = wait_view(&c, 1, "leaders", all_led);
    let killed = view[0].0;
    let witness = if killed == 1 { 2 } else { 1 };
    c.kill(killed).unwrap();
    wait_view(&c, witness, "a new leader of partition 0", |v| {
        v[0].0 != 0 && v[0].0 != killed && v[0].1 > view[0].1
    });
    producer.wait_acks(200);
    c.spawn(killed).unwrap();
    c.wait_links(killed, Duration::from_secs(30)).unwrap();
    producer.wait_acks(200);

    // 2. SIGSTOP the leader of partition 0 past the election timeout; SIGCONT: it steps down
    // and follows the new leader's epoch.
    let view = wait_view(&c, witness, "leaders", all_led);
    let paused = view[0].0;
    let witness = (1..=3).find(|&n| n != paused).unwrap();
    c.pause(paused).unwrap();
    let after = wait_view(&c, witness, "a leader other than the stopped one", |v| {
        v[0].0 != 0 && v[0].0 != paused && v[0].1 > view[0].1
    });
    producer.wait_acks(200);
    c.resume(paused).unwrap();
    wait_view(&c, paused, "the resumed node steps down", |v| {
        v[0].0 != paused && v[0].1 >= after[0].1
    });
    producer.wait_acks(200);

    let ledger = producer.finish();
    assert!(ledger.acked.len() >= 1_000, "acked {}", ledger.acked.len());

    // Every node catches up to the same high watermark, then holds the same records.
    let addrs: Vec<&str> = c.nodes.iter().map(|n| n.addr.as_str()).collect();
    let mut logs: Vec<HashMap<u32, Vec<(u64, String)>>> = vec![HashMap::new(); addrs.len()];
    for p in 0..PARTITIONS {
        let end = converged_high_watermark(&addrs, TOPIC, p);
        for (i, addr) in addrs.iter().enumerate() {
            logs[i].insert(p, read_all(addr, TOPIC, p, end));
        }
    }
    for p in 0..PARTITIONS {
        let first = &logs[0][&p];
        for (i, log) in logs.iter().enumerate() {
            assert_eq!(&log[&p], first, "node {} p{p} equals node 1", i + 1);
        }
        // Dense offsets from 0, no id twice (acknowledged or not), every acknowledged id at
        // its acknowledged offset; and in send order.
        ledger::check_log(&ledger, p, first);
        let mut last = None;
        for (id, (_, offset)) in ledger.acked.iter().filter(|(_, (q, _))| *q == p) {
            assert!(last < Some(*offset), "p{p}: id-{id} out of send order");
            last = Some(*offset);
        }
    }
    eprintln!(
        "cluster_e2e: sent {} acked {} failed {}",
        ledger.sent,
        ledger.acked.len(),
        ledger.failed
    );
}

/// Failover time, measured (docs/performance.md, "Cluster: failover and throughput"): a
/// partition of three replicas; `kills` times (env `FAILOVER_KILLS`, default 20): SIGKILL its
/// leader, then produce one record at `acks all` through the leader-following client every
/// 10 ms until one is acknowledged; the time from the kill to that ack is one sample. The
/// killed node restarts and rejoins before the next kill. `SHARDLINE_BIN` picks the binary
/// (a release build for figures).
#[test]
#[ignore = "a measurement (about 20 leader kills); run by hand"]
fn measure_failover() {
    let bin = std::env::var("SHARDLINE_BIN").unwrap_or_else(|_| BIN.to_string());
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(&bin), dir.path(), 3).unwrap();
    c.start_all().unwrap();
    let client = Client::connect(&c.bootstrap(), config()).unwrap();
    client
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    let one = |client: &Client| {
        let mut b = shardline_engine::batch::BatchBuilder::new();
        b.push_value(b"x".to_vec());
        client.produce(TOPIC, 0, b.build().unwrap(), Acks::All)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while one(&client).is_err() {
        assert!(Instant::now() < deadline, "a first produce");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut samples = Vec::new();
    for k in 0..kills {
        let alive = (1..=3u64).find(|&n| c.node(n).pid.is_some()).unwrap();
        let leader = wait_view(&c, alive, "a leader", |v| v[0].0 != 0)[0].0;
        let start = Instant::now();
        c.kill(leader).unwrap();
        loop {
            if one(&client).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "kill {k}: no new leader"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = start.elapsed();
        samples.push(took);
        eprintln!("kill {k}: node {leader}, first all ack after {took:?}");
        c.spawn(leader).unwrap();
        c.wait_links(leader, Duration::from_secs(30)).unwrap();
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    eprintln!(
        "failover over {} kills: p50 {:?} max {:?} min {:?}",
        samples.len(),
        p50,
        max,
        samples[0]
    );
}

/// A port prefix `p` (4 digits) such that `p1`, `p2` and `p3` are free now.
fn free_prefix(avoid: u32) -> u32 {
    for p in (2000..6500).step_by(37) {
        if p == avoid {
            continue;
        }
        let free = (1..=3)
            .all(|n| std::net::TcpListener::bind(("127.0.0.1", (p * 10 + n) as u16)).is_ok());
        if free {
            return p;
        }
    }
    panic!("no free port prefix");
}

/// README's "A three-node cluster on one machine in four commands" runs as written, with free
/// ports and a temporary directory in place of the ones shown; each `#> text` line must appear
/// in stdout, in order.
#[test]
fn readme_cluster_commands_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim() != "<!-- cluster-quickstart -->");
    assert!(lines.next().is_some(), "README has its cluster block");
    assert!(lines.next().unwrap().starts_with("```"));
    let block: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    let block = block.join("\n");
    assert_eq!(
        block.lines().filter(|l| !l.starts_with("#>")).count(),
        4,
        "four commands"
    );
    let dir = tempfile::tempdir().unwrap();
    let client_prefix = free_prefix(0);
    let peer_prefix = free_prefix(client_prefix);
    let script = block
        .replace("127.0.0.1:707", &format!("127.0.0.1:{client_prefix}"))
        .replace("127.0.0.1:710", &format!("127.0.0.1:{peer_prefix}"))
        .replace(
            "/tmp/shardline-",
            &format!("{}/shardline-", dir.path().display()),
        );
    let path = dir.path().join("cluster.sh");
    std::fs::write(&path, format!("set -e\n{script}\n")).unwrap();
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("bash")
            .arg(&path)
            .current_dir(dir.path())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HOME", dir.path())
            .env("RUST_LOG", "warn")
            .env_remove("SHARDLINE_ADDR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let pgid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The three servers run on in the script's process group (ours): end them by its id.
    // SAFETY: signalling the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    // The servers hold the pipes until they die; the readers end then.
    let (stdout, stderr) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    let status = status.unwrap_or_else(|| panic!("timed out\n{stdout}\n{stderr}"));
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let mut out_lines = stdout.lines();
    for want in block.lines().filter_map(|l| l.strip_prefix("#> ")) {
        assert!(
            out_lines.any(|l| l.contains(want)),
            "README promises '{want}'; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
