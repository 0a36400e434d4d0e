//! docs/security.md's quick start, run as written: the offline block (keys, users, tokens,
//! ACLs), the server block, the clients block; `0.0.0.0:7070` and `broker:7070` become a test
//! port on 127.0.0.1 / `localhost`, certificates come from the test PKI (rcgen, at test time).
//! Then what the doc promises about errors: no credentials -> which flags to pass; a token
//! without the ACL -> which `acl add` grants it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

fn block(doc: &str, mark: &str) -> String {
    let mut lines = doc.lines().skip_while(|l| l.trim() != mark);
    assert!(
        lines.next().is_some(),
        "docs/security.md lost the block {mark}"
    );
    let fence = lines.next().unwrap();
    assert!(fence.starts_with("```"), "{fence}");
    lines
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn bash(dir: &Path, data: &Path, script: &str) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("bash");
    c.arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("SHARDLINE_DATA_DIR", data)
        .env_remove("SHARDLINE_TOKEN")
        .env_remove("SHARDLINE_PASSWORD")
        .env_remove("SHARDLINE_ADDR")
        .env("SHARDLINE_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> (Output, String, String) {
    let out = c.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out, o, e)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created (bash and its serve).
        unsafe { libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn security_quick_start_runs_as_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fix = |s: String| {
        s.replace("0.0.0.0:7070", &format!("127.0.0.1:{port}"))
            .replace("broker:7070", &format!("localhost:{port}"))
    };
    let offline = fix(block(&doc, "<!-- security-quickstart: offline -->"));
    let server = fix(block(&doc, "<!-- security-quickstart: server -->"));
    let clients = fix(block(&doc, "<!-- security-quickstart: clients -->"));
    assert!(offline.contains("--operation describe") && clients.contains("--group billing"));

    let dir = tempfile::tempdir().unwrap();
    common::Pki::generate(dir.path());
    let data = dir.path().join("data");

    let (out, stdout, stderr) = run(bash(dir.path(), &data, &offline));
    assert!(out.status.success(), "offline block: {stdout}\n{stderr}");
    let token = std::fs::read_to_string(dir.path().join("orders.token")).unwrap();
    assert!(token.starts_with("slt_"), "{token}");

    let mut serve = bash(dir.path(), &data, &server);
    serve
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut server = Server(serve.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("shardline listening on 127.0.0.1:"),
        "{first:?}"
    );

    let (out, stdout, stderr) = run(bash(dir.path(), &data, &clients));
    assert!(out.status.success(), "clients block: {stdout}\n{stderr}");
    assert!(
        stdout.contains("created topic orders (2 partitions)"),
        "{stdout}"
    );
    let mut values: Vec<u32> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("created topic"))
        .skip(2) // the produce count
        .map(|l| l.parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=10).collect::<Vec<_>>(), "{stdout}");

    // The errors the doc promises.
    let addr = format!("localhost:{port}");
    let cli = |args: &str| {
        run(bash(
            dir.path(),
            &data,
            &format!("shardline --addr {addr} --tls-ca ca.pem {args}"),
        ))
    };
    let (out, _, stderr) = cli("topic list");
    assert!(!out.status.success());
    assert!(
        stderr.contains("--token-file") && !stderr.contains("api 40"),
        "{stderr}"
    );
    let (out, _, stderr) = cli("--token-file orders.token consume orders --count 1");
    assert!(!out.status.success());
    assert!(
        stderr.contains("svc-orders") && stderr.contains("shardline acl add"),
        "{stderr}"
    );
    drop(server);
}
