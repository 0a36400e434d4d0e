//! The web console (`/ui` on the metrics listener; docs/operations.md, "Web console"):
//! - in a real headless browser (Debian's chromium, driven over the DevTools protocol on a pipe:
//!   `--remote-debugging-pipe`, no crate and no websocket needed): the page loads, its numbers
//!   match the CLI's (`topic describe`, `queue stats --json`), a dead-letter queue is browsed,
//!   and a redrive from the console moves the messages back. A screenshot and the page's HTML
//!   are kept in `target/test-artifacts/` when a check fails. Skipped, saying so, only when no
//!   chromium is installed (`apt-get install chromium`; .ci/run installs it);
//! - over plain HTTP with authentication on: no token, 401; a read-only token reads but cannot
//!   redrive (403); an admin token without the CSRF header, 403; with it, the redrive happens;
//!   the login form sets the cookie that authenticates the next requests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shardline_net::auth::acl::parse_resource;
use shardline_net::auth::{AclEntry, Operation, Permission, SecurityFile};
use shardline_net::client::{
    Client, ClientConfig, Credentials, QueueMessage, QueueSettings, SendOptions, TopicConfig,
};
use shardline_net::server::{AuthConfig, Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

// ------------------------------------------------------------------------------ fixtures

/// A queue `jobs` (one delivery allowed) whose three messages are all in `jobs.dlq`, a topic
/// `events` with records in both partitions, and a group `readers` with a committed offset.
fn populate(c: &Client) {
    c.create_topic(
        "events",
        TopicConfig {
            partitions: 2,
            ..Default::default()
        },
    )
    .unwrap();
    for p in 0..2u32 {
        let values = (0..(40 + p * 7))
            .map(|i| format!("e{i}").into_bytes())
            .collect();
        c.queue_send("events", p, values, SendOptions::default())
            .unwrap();
    }
    c.commit_offsets(
        "readers",
        "events",
        "",
        0,
        vec![shardline_net::client::CommitOffset {
            partition: 0,
            offset: 15,
            metadata: String::new(),
        }],
    )
    .unwrap();
    let settings = QueueSettings {
        visibility_timeout_ms: 30_000,
        max_deliveries: 1,
        backoff_base_ms: 0,
        backoff_max_ms: 0,
        dead_letter_topic: Some("jobs.dlq".into()),
        priority_levels: 1,
    };
    c.create_queue(
        "jobs",
        TopicConfig {
            partitions: 1,
            ..Default::default()
        },
        settings,
    )
    .unwrap();
    let values = ["a", "b", "c"].map(|v| v.as_bytes().to_vec()).to_vec();
    c.queue_send("jobs", 0, values, SendOptions::default())
        .unwrap();
    let got = c
        .queue_receive("jobs", None, 10, None, Duration::from_secs(5))
        .unwrap();
    assert_eq!(got.len(), 3);
    let receipts: Vec<_> = got.iter().map(QueueMessage::receipt).collect();
    c.queue_nack("jobs", &receipts, None).unwrap();
    wait_for("three dead letters", || {
        c.queue_stats("jobs.dlq").unwrap()[0].depth == 3
            && c.queue_stats("jobs").unwrap()[0].depth == 0
    });
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(addr: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// `key=value` of one line of `topic describe` output that starts with `prefix`.
fn field(text: &str, prefix: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {text}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .to_string()
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ------------------------------------------------------------------------------ DevTools

/// Chromium driven over the DevTools protocol on a pipe (fd 3: commands to the browser, fd 4:
/// its answers and events; each message is JSON followed by a NUL byte).
struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDLINE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    (fds[0], fds[1])
}

impl Browser {
    fn launch(chromium: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Out of the way first, so that dup2 onto 3 and 4 cannot clobber a source.
                let a = libc::fcntl(cmd_read, libc::F_DUPFD, 10);
                let b = libc::fcntl(out_write, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // SAFETY: these fds are ours and each is wrapped once.
        let (to, from_file) = unsafe {
            libc::close(cmd_read);
            libc::close(out_write);
            (
                std::fs::File::from_raw_fd(cmd_write),
                std::fs::File::from_raw_fd(out_read),
            )
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(from_file);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page.
    fn wait(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(&format!("!!({expression})"));
            if v == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the element with `data-k=key`, digits only (the page groups thousands).
    fn number(&mut self, key: &str) -> u64 {
        let text = self.eval(&format!(
            "(document.querySelector('[data-k=\"{key}\"]') || {{}}).textContent"
        ));
        let digits: String = text
            .as_str()
            .unwrap_or_else(|| panic!("no element {key}"))
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{key} shows {text}"))
    }

    /// Keeps a screenshot and the page's HTML for a failed check.
    fn keep_artifacts(&mut self, name: &str) {
        let dir = artifacts_dir();
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        if let Some(data) = shot["data"].as_str() {
            std::fs::write(dir.join(format!("{name}.png")), base64_decode(data)).unwrap();
        }
        if let Some(html) = self.eval("document.documentElement.outerHTML").as_str() {
            std::fs::write(dir.join(format!("{name}.html")), html).unwrap();
        }
        eprintln!("kept {name}.png and {name}.html in {}", dir.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

// ------------------------------------------------------------------------------ tests

fn server(dir: &Path, auth: AuthConfig) -> (Server, SocketAddr) {
    let mut s = common::start(
        dir,
        ServerConfig {
            auth,
            ..ServerConfig::default()
        },
    );
    let metrics = s.serve_metrics("127.0.0.1:0").unwrap();
    (s, metrics)
}

// Proves: the console page, rendered by a real browser, shows the figures the CLI shows, and
// its redrive button moves the dead letters back to their queue.
#[test]
fn console_in_a_headless_browser_matches_the_cli_and_redrives() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: no chromium found (apt-get install chromium, or set SHARDLINE_CHROMIUM)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = server(dir.path(), AuthConfig::default());
    let addr = server.addr().to_string();
    let c = Client::connect(&addr, ClientConfig::default()).unwrap();
    populate(&c);
    let describe = cli(&addr, &["topic", "describe", "events"]);
    let dlq_stats: Value =
        serde_json::from_str(cli(&addr, &["queue", "stats", "jobs.dlq", "--json"]).trim()).unwrap();

    let mut b = Browser::launch(&chromium);
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.navigate(&format!("http://{metrics}/ui"));
        b.wait("its first refresh", "document.body.dataset.loaded === '1'");
        for p in 0..2 {
            for key in ["high_watermark", "log_start"] {
                let cli_value: u64 = field(&describe, &format!("partition {p} "), key)
                    .parse()
                    .unwrap();
                assert_eq!(
                    b.number(&format!("topic:events:{p}:{key}")),
                    cli_value,
                    "events/{p} {key}"
                );
            }
        }
        assert_eq!(b.number("topic:events:1:high_watermark"), 47);
        assert_eq!(
            b.number("queue:jobs.dlq:depth"),
            dlq_stats["depth"].as_u64().unwrap(),
            "DLQ depth as `queue stats`"
        );
        assert_eq!(b.number("queue:jobs:depth"), 0);
        assert_eq!(b.number("group:readers:0:lag"), 40 - 15);
        assert!(b.number("overview:connections_open") >= 1);
        // A chart and per-shard latency rows are drawn.
        b.wait(
            "the chart",
            "document.querySelectorAll('#chart polyline').length === 2",
        );
        b.wait(
            "shard rows",
            "document.querySelectorAll('#shards tbody tr').length === 2",
        );

        // Browse the dead-letter queue: three messages with their reason.
        b.eval("document.querySelector('button[data-browse=\"jobs.dlq\"]').click()");
        b.wait(
            "the browsed messages",
            "document.querySelector('#browse').dataset.count === '3'",
        );
        let reasons = b.eval("document.querySelector('#browse-table tbody').textContent");
        assert!(
            reasons
                .as_str()
                .unwrap()
                .contains("x-dlq-reason=max_deliveries_nacked"),
            "{reasons}"
        );

        // Redrive: two clicks (arm, confirm), as a person would.
        let button = "document.querySelector('button[data-redrive=\"jobs.dlq\"]')";
        b.eval(&format!("{button}.click()"));
        b.wait(
            "the armed button",
            &format!("{button}.dataset.armed === '1'"),
        );
        b.eval(&format!("{button}.click()"));
        b.wait(
            "the redrive result",
            "document.querySelector('#action-result').dataset.moved === '3'",
        );
        wait_for("the messages back in jobs", || {
            c.queue_stats("jobs").unwrap()[0].depth == 3
                && c.queue_stats("jobs.dlq").unwrap()[0].depth == 0
        });
        b.wait(
            "the new depths",
            "document.querySelector('[data-k=\"queue:jobs:depth\"]').textContent === '3'",
        );
    }));
    if let Err(panic) = checks {
        b.keep_artifacts("console_e2e");
        std::panic::resume_unwind(panic);
    }
    if std::env::var_os("SHARDLINE_KEEP_SCREENSHOTS").is_some() {
        b.keep_artifacts("console_e2e_passed");
    }
    drop(b);
    server.shutdown().unwrap();
}

/// One HTTP request; (status code, headers, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn acl(principal: &str, resource: &str, operation: Operation) -> AclEntry {
    let (resource, pattern_type, pattern) = parse_resource(resource).unwrap();
    AclEntry {
        principal: principal.into(),
        resource,
        pattern,
        pattern_type,
        operation,
        permission: Permission::Allow,
    }
}

// Proves: with auth on, the console needs a token (bearer or the login cookie), is read-only
// without the admin permission, and refuses a state change without the CSRF header.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order: no token, read-only, CSRF, login"
)]
fn console_authentication_read_only_and_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SecurityFile::default();
    let (_, admin) = db.create_token("ops", "console test").unwrap();
    let (_, viewer) = db.create_token("viewer", "console test").unwrap();
    db.acls.push(acl("ops", "cluster", Operation::Admin));
    db.acls.push(acl("viewer", "cluster", Operation::Describe));
    let file = dir.path().join("security.json");
    db.save(&file).unwrap();
    let auth = AuthConfig {
        enabled: true,
        file: Some(file),
        ..AuthConfig::default()
    };
    let (server, metrics) = server(&dir.path().join("data"), auth);
    let config = ClientConfig {
        credentials: Some(Credentials::Token(admin.clone())),
        ..ClientConfig::default()
    };
    let c = Client::connect(&server.addr().to_string(), config).unwrap();
    populate(&c);

    // The page itself holds no data and loads without a token; the data does not.
    assert_eq!(http(metrics, "GET", "/ui", &[], "").0, 200);
    assert_eq!(http(metrics, "GET", "/ui/api/queues", &[], "").0, 401);
    let bad = "Bearer slt_0000_nope";
    assert_eq!(
        http(
            metrics,
            "GET",
            "/ui/api/queues",
            &[("Authorization", bad)],
            ""
        )
        .0,
        401
    );
    let viewer_h = format!("Bearer {viewer}");
    let (status, _, body) = http(
        metrics,
        "GET",
        "/ui/api/queues",
        &[("Authorization", &viewer_h)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let queues: Value = serde_json::from_str(&body).unwrap();
    let dlq = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "jobs.dlq")
        .unwrap();
    assert_eq!(dlq["depth"], 3);
    assert_eq!(dlq["is_dead_letter_queue"], true);
    let whoami = http(
        metrics,
        "GET",
        "/ui/api/whoami",
        &[("Authorization", &viewer_h)],
        "",
    );
    assert!(whoami.2.contains("\"admin\":false"), "{}", whoami.2);

    let csrf = ("X-Shardline-Console", "1");
    let redrive = "/ui/api/redrive?dlq=jobs.dlq";
    let (status, _, body) = http(
        metrics,
        "POST",
        redrive,
        &[("Authorization", &viewer_h), csrf],
        "",
    );
    assert_eq!(status, 403, "read-only: {body}");
    let admin_h = format!("Bearer {admin}");
    let (status, _, body) = http(metrics, "POST", redrive, &[("Authorization", &admin_h)], "");
    assert_eq!(status, 403, "no CSRF header: {body}");
    assert_eq!(
        c.queue_stats("jobs.dlq").unwrap()[0].depth,
        3,
        "nothing moved"
    );

    // The login form: a wrong token is refused, the right one sets the cookie.
    let form = "application/x-www-form-urlencoded";
    let (status, head, _) = http(
        metrics,
        "POST",
        "/ui/login",
        &[("Content-Type", form)],
        "token=wrong",
    );
    assert_eq!(status, 303);
    assert!(head.contains("Location: /ui?login=failed"), "{head}");
    let encoded: String = admin
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, head, _) = http(
        metrics,
        "POST",
        "/ui/login",
        &[("Content-Type", form)],
        &format!("token={encoded}"),
    );
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .expect("a cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap();
    let (status, _, body) = http(metrics, "POST", redrive, &[("Cookie", cookie), csrf], "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"moved\":3"), "{body}");
    wait_for("the messages back in jobs", || {
        c.queue_stats("jobs").unwrap()[0].depth == 3
    });
    server.shutdown().unwrap();
}

// Proves: every metric family the committed Grafana dashboard (deploy/grafana/shardline.json)
// queries is one the server exports, so the dashboard cannot drift from the metrics.
#[test]
fn grafana_dashboard_queries_only_exported_families() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/shardline.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = server(dir.path(), AuthConfig::default());
    let c = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    populate(&c);
    let (status, _, text) = http(metrics, "GET", "/metrics", &[], "");
    assert_eq!(status, 200);
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("shardline_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let family = ["_bucket", "_total", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_string();
                queried.insert(family);
            }
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|f| !exported.contains(f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}; exported: {exported:?}"
    );
    server.shutdown().unwrap();
}
