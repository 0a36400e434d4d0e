//! Real Kafka clients against a real `shardline serve --kafka-listen` process (issue 15,
//! docs/kafka.md): kcat (librdkafka 2.0), confluent-kafka (librdkafka 2.1x) and kafka-python
//! 3.x, cross-protocol reads both ways, a SIGKILL between an acks=all produce and the consume,
//! and malformed input on a raw socket. A client that is not installed skips its test with a
//! message (`.ci/run` installs them all).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// A `shardline serve` child with a Kafka listener; killed (by its PID) on drop.
struct Served {
    child: Child,
    native: String,
    kafka: String,
}

impl Served {
    fn start(dir: &Path) -> Served {
        Self::start_with(dir, &[])
    }

    /// With extra `serve` arguments.
    fn start_with(dir: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
            .args(extra)
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--kafka-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = |prefix: &str| {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            l.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{l:?}"))
                .to_string()
        };
        let native = line("shardline listening on ");
        let kafka = line("kafka listening on ");
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Served {
            child,
            native,
            kafka,
        }
    }

    /// SIGKILL, no shutdown: what was acknowledged must be on disk already.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["--addr", &self.native])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shardline {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(cmd: &str, args: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: `{cmd} {}` failed: client not installed (.ci/run installs it)",
            args.join(" ")
        );
    }
    ok
}

fn have_kcat() -> bool {
    installed("kcat", &["-V"])
}

fn have_python_module(m: &str) -> bool {
    installed("python3", &["-c", &format!("import {m}")])
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka")
        .join(name)
}

/// Runs `cmd`, feeding `input`, and returns stdout; fails the test on a non-zero exit.
fn run(cmd: &mut Command, input: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kcat(kafka: &str, args: &[&str], input: &[u8]) -> String {
    let mut c = Command::new("timeout");
    c.args(["60", "kcat", "-b", kafka]).args(args);
    run(&mut c, input)
}

fn lines(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("{i}\n")).collect()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

// Proves: kcat (librdkafka 2.0) sees the topic in Metadata, produces 10,000 lines and reads
// exactly those lines back, compressed (gzip, zstd) batches included.
#[test]
fn kcat_metadata_produce_and_consume() {
    if !have_kcat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "lines", "--partitions", "3"]);
    let meta = kcat(&s.kafka, &["-L", "-t", "lines"], b"");
    assert!(meta.contains("topic \"lines\" with 3 partitions"), "{meta}");
    assert!(meta.contains("leader 0"), "{meta}");
    kcat(
        &s.kafka,
        &["-P", "-t", "lines"],
        lines(0, 10_000).as_bytes(),
    );
    kcat(
        &s.kafka,
        &["-P", "-t", "lines", "-z", "gzip"],
        lines(10_000, 11_000).as_bytes(),
    );
    kcat(
        &s.kafka,
        &["-P", "-t", "lines", "-z", "zstd"],
        lines(11_000, 12_000).as_bytes(),
    );
    let got = kcat(&s.kafka, &["-C", "-t", "lines", "-e", "-q"], b"");
    assert_eq!(sorted_lines(&got), sorted_lines(&lines(0, 12_000)));
}

// Proves: the one auto-create setting (`serve --auto-create --auto-create-partitions`, i.e.
// `[server] auto_create_topics`) serves the Kafka listener too: kcat produces to a topic nobody
// created, it gets the configured partition count, and the lines read back; without the
// setting an unknown topic stays unknown.
#[test]
fn server_auto_create_serves_kafka_clients() {
    if !have_kcat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start_with(
        dir.path(),
        &["--auto-create", "--auto-create-partitions", "3"],
    );
    kcat(&s.kafka, &["-P", "-t", "fresh"], lines(0, 100).as_bytes());
    let meta = kcat(&s.kafka, &["-L", "-t", "fresh"], b"");
    assert!(meta.contains("topic \"fresh\" with 3 partitions"), "{meta}");
    let got = kcat(&s.kafka, &["-C", "-t", "fresh", "-e", "-q"], b"");
    assert_eq!(sorted_lines(&got), sorted_lines(&lines(0, 100)));
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    let meta = kcat(&s.kafka, &["-L", "-t", "fresh"], b"");
    assert!(meta.contains("Unknown topic or partition"), "{meta}");
}

// Proves: records produced through either protocol are read through the other (Kafka batches
// of every codec, uncompressed, gzip, snappy, lz4 and zstd, converted for the native reader;
// native batches converted for kcat).
#[test]
fn cross_protocol_reads_both_ways() {
    if !have_kcat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "k2n", "--partitions", "2"]);
    s.cli(&["topic", "create", "n2k", "--partitions", "2"]);
    kcat(&s.kafka, &["-P", "-t", "k2n"], lines(0, 2000).as_bytes());
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for (i, codec) in codecs.iter().enumerate() {
        let from = 2000 + 500 * i;
        kcat(
            &s.kafka,
            &["-P", "-t", "k2n", "-z", codec],
            lines(from, from + 500).as_bytes(),
        );
    }
    let total = 2000 + 500 * codecs.len();
    let mut consume = Command::new(BIN);
    consume.args(["--addr", &s.native, "consume", "k2n", "--count"]);
    consume
        .arg(total.to_string())
        .args(["--timeout-ms", "20000"]);
    assert_eq!(
        sorted_lines(&run(&mut consume, b"")),
        sorted_lines(&lines(0, total))
    );
    let mut produce = Command::new(BIN);
    produce.args(["--addr", &s.native, "produce", "n2k"]);
    run(&mut produce, lines(5000, 8000).as_bytes());
    let got = kcat(&s.kafka, &["-C", "-t", "n2k", "-e", "-q"], b"");
    assert_eq!(sorted_lines(&got), sorted_lines(&lines(5000, 8000)));
}

// Proves: confluent-kafka's idempotent producer with acks=all, gzip and zstd, is acknowledged
// and every record reads back exactly once.
#[test]
fn confluent_kafka_idempotent_acks_all_gzip_zstd() {
    if !have_python_module("confluent_kafka") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "ck", "--partitions", "3"]);
    let mut c = Command::new("timeout");
    c.args(["120", "python3"])
        .arg(script("ck_produce_consume.py"))
        .args([&s.kafka, "ck", "3000"]);
    let out = run(&mut c, b"");
    assert_eq!(out.trim(), "ok 6000");
}

// Proves: kafka-python 3.x's default producer (idempotent, acks=all) works unchanged.
#[test]
fn kafka_python_default_producer() {
    if !have_python_module("kafka") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "kp", "--partitions", "2"]);
    let mut c = Command::new("timeout");
    c.args(["120", "python3"])
        .arg(script("kp_produce.py"))
        .args([&s.kafka, "kp", "1000"]);
    let out = run(&mut c, b"");
    assert_eq!(out.trim(), "ok 1000");
}

// Proves: what kcat had acknowledged at acks=all survives a SIGKILL of the server.
#[test]
fn sigkill_after_acks_all_loses_nothing() {
    if !have_kcat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "durable", "--partitions", "2"]);
    // kcat exits 0 only once every message is delivered (acknowledged).
    kcat(
        &s.kafka,
        &["-P", "-t", "durable", "-X", "acks=all"],
        lines(0, 5000).as_bytes(),
    );
    s.kill();
    let s = Served::start(dir.path());
    let got = kcat(&s.kafka, &["-C", "-t", "durable", "-e", "-q"], b"");
    assert_eq!(sorted_lines(&got), sorted_lines(&lines(0, 5000)));
}

/// A Kafka request frame: size, header v1 (key, version, correlation id, client id), body.
fn request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&correlation_id.to_be_bytes());
    f.extend_from_slice(&4i16.to_be_bytes());
    f.extend_from_slice(b"test");
    f.extend_from_slice(body);
    let mut out = (i32::try_from(f.len()).unwrap()).to_be_bytes().to_vec();
    out.extend_from_slice(&f);
    out
}

fn response(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap()];
    s.read_exact(&mut body).unwrap();
    body
}

/// True when the server closed `s` (EOF) within a few seconds.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

// Proves: a Kafka batch with a wrong CRC is refused with CORRUPT_MESSAGE; malformed frames,
// oversize frames and unknown api keys close only their own connection; an unsupported
// ApiVersions version gets error 35 with the list; the server keeps serving.
#[test]
fn bad_input_gets_kafka_errors_or_a_closed_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "bad"]);
    // Produce v3 with a batch whose CRC is wrong.
    let mut batch = vec![0u8; 61];
    batch[8..12].copy_from_slice(&49i32.to_be_bytes());
    batch[16] = 2;
    batch[57..61].copy_from_slice(&1i32.to_be_bytes());
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id
    body.extend_from_slice(&1i16.to_be_bytes()); // acks
    body.extend_from_slice(&5000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(b"bad");
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes());
    body.extend_from_slice(&(i32::try_from(batch.len()).unwrap()).to_be_bytes());
    body.extend_from_slice(&batch);
    let mut c = TcpStream::connect(&s.kafka).unwrap();
    c.write_all(&request(0, 3, 11, &body)).unwrap();
    let r = response(&mut c);
    // correlation id, 1 topic, "bad", 1 partition, index 0, error code.
    assert_eq!(&r[..4], &11i32.to_be_bytes());
    let error_at = 4 + 4 + 2 + 3 + 4 + 4;
    assert_eq!(
        i16::from_be_bytes([r[error_at], r[error_at + 1]]),
        2,
        "CORRUPT_MESSAGE"
    );
    // ApiVersions v9: error 35 and the list, v0 body.
    c.write_all(&request(18, 9, 12, &[])).unwrap();
    let r = response(&mut c);
    assert_eq!(&r[..4], &12i32.to_be_bytes());
    assert_eq!(i16::from_be_bytes([r[4], r[5]]), 35);
    assert!(
        i32::from_be_bytes([r[6], r[7], r[8], r[9]]) >= 8,
        "the api list"
    );
    // Unknown api key, negative size, oversize, truncated body: the connection is closed.
    let unknown = request(9999, 0, 1, &[]);
    let cases: Vec<Vec<u8>> = vec![
        unknown,
        (-5i32).to_be_bytes().to_vec(),
        (i32::MAX).to_be_bytes().to_vec(),
        request(3, 4, 1, &[0, 0, 0, 5]),
    ];
    for case in cases {
        let mut c = TcpStream::connect(&s.kafka).unwrap();
        c.write_all(&case).unwrap();
        assert!(closed(&mut c), "{case:?}");
    }
    // The server still serves: the first connection and new ones.
    c.write_all(&request(18, 0, 13, &[])).unwrap();
    let r = response(&mut c);
    assert_eq!(i16::from_be_bytes([r[4], r[5]]), 0);
    if have_kcat() {
        let meta = kcat(&s.kafka, &["-L"], b"");
        assert!(meta.contains("topic \"bad\""), "{meta}");
    }
}

// Proves: kcat as a consumer group (-G) commits, and a later run of the same group resumes
// from the committed offsets, across a server restart too.
#[test]
fn kcat_group_resumes_from_committed_offsets_across_a_restart() {
    if !have_kcat() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "grp", "--partitions", "3"]);
    kcat(&s.kafka, &["-P", "-t", "grp"], lines(0, 1000).as_bytes());
    let group = [
        "-G",
        "kcat-group",
        "grp",
        "-e",
        "-q",
        "-X",
        "auto.offset.reset=earliest",
    ];
    let first = kcat(&s.kafka, &group, b"");
    assert_eq!(sorted_lines(&first), sorted_lines(&lines(0, 1000)));
    kcat(&s.kafka, &["-P", "-t", "grp"], lines(1000, 1500).as_bytes());
    let second = kcat(&s.kafka, &group, b"");
    assert_eq!(sorted_lines(&second), sorted_lines(&lines(1000, 1500)));
    s.kill();
    let s = Served::start(dir.path());
    kcat(&s.kafka, &["-P", "-t", "grp"], lines(1500, 1600).as_bytes());
    let third = kcat(&s.kafka, &group, b"");
    assert_eq!(sorted_lines(&third), sorted_lines(&lines(1500, 1600)));
}

// Proves: a confluent-kafka group of two members rebalances when one leaves, and across the
// synchronous commit points no record is lost or seen twice.
#[test]
fn confluent_kafka_group_rebalances_without_loss_or_duplicates() {
    if !have_python_module("confluent_kafka") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "cg", "--partitions", "4"]);
    let mut c = Command::new("timeout");
    c.args(["120", "python3"])
        .arg(script("ck_group.py"))
        .args([&s.kafka, "cg", "3000"]);
    assert_eq!(run(&mut c, b"").trim(), "ok 3000");
}

// Proves: kafka-python 3.x's default producer and a committing group consumer; a second
// consumer of the group finds nothing left.
#[test]
fn kafka_python_group_consumer() {
    if !have_python_module("kafka") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "kpg", "--partitions", "2"]);
    let mut c = Command::new("timeout");
    c.args(["120", "python3"])
        .arg(script("kp_group.py"))
        .args([&s.kafka, "kpg", "500"]);
    assert_eq!(run(&mut c, b"").trim(), "ok 500");
}

/// Where `.ci/run` installs kafkajs.
const KAFKAJS_DIR: &str = "/opt/kafkajs";

// Proves: KafkaJS (no flexible versions) produces with acks=-1 and reads everything back as
// a consumer group.
#[test]
fn kafkajs_producer_and_consumer_group() {
    let dir_ok = Path::new(KAFKAJS_DIR).join("node_modules/kafkajs").is_dir();
    if !dir_ok {
        eprintln!("SKIPPED: kafkajs not installed in {KAFKAJS_DIR} (.ci/run installs it)");
        return;
    }
    if !installed("node", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Served::start(dir.path());
    s.cli(&["topic", "create", "kjs", "--partitions", "2"]);
    let mut c = Command::new("timeout");
    c.args(["120", "node"])
        .arg(script("kafkajs_group.js"))
        .args([KAFKAJS_DIR, &s.kafka, "kjs", "1000"]);
    assert_eq!(run(&mut c, b"").trim(), "ok 1000");
}

// Proves: the `[kafka]` table parses, is validated with the key named, and an unknown key is
// an error.
#[test]
fn kafka_config_table_parses_and_is_validated() {
    use shardline_net::cli::config::FileConfig;
    let c = FileConfig::parse(
        "[kafka]\nlisten = \"127.0.0.1:9092\"\nadvertised_listeners = \"PLAINTEXT://kafka.example:19092\"\nauto_create_topics = true\ndefault_partitions = 3\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.kafka.listen.as_deref(), Some("127.0.0.1:9092"));
    assert!(c.kafka.auto_create_topics, "deprecated alias, still read");
    assert_eq!(c.kafka.default_partitions, Some(3));
    let e = FileConfig::parse("[kafka]\nlisten = \"nowhere\"\n").unwrap_err();
    assert_eq!(e.key, "kafka.listen");
    let e = FileConfig::parse("[kafka]\ndefault_partitions = 0\n").unwrap_err();
    assert_eq!(e.key, "kafka.default_partitions");
    assert!(FileConfig::parse("[kafka]\nlisten_typo = 1\n").is_err());
}
