//! Users, tokens and ACLs on a cluster of three real `shardline serve` processes with
//! authentication required (docs/security.md, "On a cluster"): changes made with the real
//! CLI on one node (AlterSecurity, through the controller) reach every node; the CLI is
//! answered once its node applied the change; an ACL removed on node 3 revokes on node 1,
//! also on a connection already open there; a node killed during a change has it after its
//! restart; each node's own security file at the first cluster start is merged once. Neither
//! the controller's security log nor any node's security file holds a password or a token
//! secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{Client, ClientConfig, ClientError, Credentials};
use shardline_net::protocol::code;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const ADMIN_PASSWORD: &str = "admin-pass-7f3e";
const ALICE_PASSWORD: &str = "alice-pass-91c2";
const OLD_PASSWORD: &str = "old-pass-5d10";
const ALICE_NEW_PASSWORD: &str = "alice-new-pass-33ab";

/// Runs the real CLI; returns its stdout (fails the test on a non-zero exit).
fn cli(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "shardline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The CLI as admin against `addr`.
fn admin(addr: &str, pw: &Path, args: &[&str], stdin: &str) -> String {
    let mut all = vec!["--addr", addr, "--user", "admin", "--password-file"];
    all.push(pw.to_str().unwrap());
    all.extend_from_slice(args);
    cli(&all, stdin)
}

fn config(credentials: Credentials) -> ClientConfig {
    ClientConfig {
        credentials: Some(credentials),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn password(user: &str, password: &str) -> Credentials {
    Credentials::Password {
        username: user.into(),
        password: password.into(),
    }
}

/// Whether `credentials` log in at `addr` and may read the node's stats (describe on
/// cluster).
fn allowed(addr: &str, credentials: &Credentials) -> Result<(), ClientError> {
    let c = Client::connect(addr, config(credentials.clone()))?;
    c.stats().map(|_| ())
}

/// The error code of a refusal (`None`: allowed, or no code).
fn refused(r: Result<(), ClientError>) -> Option<u16> {
    r.err().and_then(|e| e.code())
}

/// Waits (at most 30 s) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn no_secrets_in(path: &Path, secrets: &[&str]) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    for s in secrets {
        assert!(!text.contains(s), "{} holds a secret", path.display());
    }
}

/// `acl VERB --principal P --resource cluster --operation O`.
fn acl(verb: &'static str, principal: &'static str, operation: &'static str) -> [&'static str; 8] {
    [
        "acl",
        verb,
        "--principal",
        principal,
        "--resource",
        "cluster",
        "--operation",
        operation,
    ]
}

/// The cluster under test, its admin's password file and the nodes' client addresses.
struct Setup {
    c: Cluster,
    dir: tempfile::TempDir,
    pw: std::path::PathBuf,
    addrs: Vec<String>,
}

impl Setup {
    fn admin(&self, node: usize, args: &[&str], stdin: &str) -> String {
        admin(&self.addrs[node - 1], &self.pw, args, stdin)
    }
}

/// Three nodes with auth required; before the first start node 1's own file has the admin
/// (admin on cluster), node 2's an old user. Both files are merged: admin logs in on every
/// node, and the old user on node 1.
fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(Path::new(BIN), dir.path(), 3).unwrap();
    // Failed logins are expected while a change travels: no rate limit in the way.
    let toml = dir.path().join("serve.toml");
    std::fs::write(
        &toml,
        "[server.auth]\nenabled = true\nfailures_max = 1000000\n",
    )
    .unwrap();
    c.extra = vec!["--config".into(), toml.to_str().unwrap().into()];
    let pw = dir.path().join("admin.pw");
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let (d1, d2) = (c.node(1).data_dir.clone(), c.node(2).data_dir.clone());
    let d1 = d1.to_str().unwrap();
    cli(&["user", "add", "admin", "--data-dir", d1], ADMIN_PASSWORD);
    let mut grant = acl("add", "admin", "admin").to_vec();
    grant.extend(["--data-dir", d1]);
    cli(&grant, "");
    cli(
        &["user", "add", "old", "--data-dir", d2.to_str().unwrap()],
        OLD_PASSWORD,
    );
    c.start_all().unwrap();
    let addrs: Vec<String> = (1..=3).map(|n| c.node(n).addr.clone()).collect();
    let admin_login = password("admin", ADMIN_PASSWORD);
    for a in &addrs {
        eventually("node 1's own file is merged everywhere", || {
            allowed(a, &admin_login).is_ok()
        });
    }
    // Node 2's own user too: it logs in on node 1 (no ACL: logged in, then denied).
    eventually("node 2's own file is merged", || {
        refused(allowed(&addrs[0], &password("old", OLD_PASSWORD)))
            == Some(code::AUTHORIZATION_FAILED)
    });
    Setup { c, dir, pw, addrs }
}

/// `user add` + `acl add` on node 1 (answered once applied there), in force on nodes 2 and
/// 3; `acl remove` on node 3 revokes on node 1, on an open connection and new ones.
fn add_on_one_revoke_on_three(s: &Setup, alice: &Credentials) {
    let out = s.admin(1, &["user", "add", "alice"], ALICE_PASSWORD);
    assert!(out.contains("user alice added"), "{out}");
    assert_eq!(
        refused(allowed(&s.addrs[0], alice)),
        Some(code::AUTHORIZATION_FAILED)
    );
    s.admin(1, &acl("add", "alice", "describe"), "");
    allowed(&s.addrs[0], alice).unwrap();
    for a in &s.addrs[1..] {
        eventually("alice logs in and is authorised on nodes 2 and 3", || {
            allowed(a, alice).is_ok()
        });
    }
    let open = Client::connect(&s.addrs[0], config(alice.clone())).unwrap();
    open.stats().unwrap();
    s.admin(3, &acl("remove", "alice", "describe"), "");
    assert_eq!(
        refused(allowed(&s.addrs[2], alice)),
        Some(code::AUTHORIZATION_FAILED)
    );
    eventually("the removal reaches node 1's open connection", || {
        open.stats()
            .is_err_and(|e| e.code() == Some(code::AUTHORIZATION_FAILED))
    });
    eventually("and new ones on node 1", || {
        refused(allowed(&s.addrs[0], alice)) == Some(code::AUTHORIZATION_FAILED)
    });
}

/// Node 3 SIGKILLed during a token create and an ACL add; after its restart the token logs
/// in and is authorised there. Returns the token.
fn change_while_node_3_is_down(s: &mut Setup) -> String {
    s.c.kill(3).unwrap();
    let token = s.admin(
        1,
        &[
            "token",
            "create",
            "svc",
            "--description",
            "while node 3 was down",
        ],
        "",
    );
    let token = token.trim().to_string();
    assert!(token.starts_with("slt_"), "{token}");
    s.admin(2, &acl("add", "svc", "describe"), "");
    s.c.spawn(3).unwrap();
    let svc = Credentials::Token(token.clone());
    eventually("the restarted node has the token and its ACL", || {
        allowed(&s.addrs[2], &svc).is_ok()
    });
    token
}

/// `user passwd` and `user remove` on node 2, in force on the other nodes.
fn passwd_and_remove(s: &Setup, alice: &Credentials) {
    let new_pw = s.dir.path().join("alice-new.pw");
    std::fs::write(&new_pw, format!("{ALICE_NEW_PASSWORD}\n")).unwrap();
    let new_pw = new_pw.to_str().unwrap();
    let out = s.admin(
        2,
        &["user", "passwd", "alice", "--new-password-file", new_pw],
        "",
    );
    assert!(out.contains("password of alice changed"), "{out}");
    eventually("the old password fails on node 3", || {
        refused(allowed(&s.addrs[2], alice)) == Some(code::AUTHENTICATION_FAILED)
    });
    let alice_new = password("alice", ALICE_NEW_PASSWORD);
    eventually("the new one logs in on node 1", || {
        refused(allowed(&s.addrs[0], &alice_new)) == Some(code::AUTHORIZATION_FAILED)
    });
    s.admin(2, &["user", "remove", "old"], "");
    eventually("old is gone on node 3", || {
        refused(allowed(&s.addrs[2], &password("old", OLD_PASSWORD)))
            == Some(code::AUTHENTICATION_FAILED)
    });
}

#[test]
fn user_token_and_acl_changes_reach_every_node() {
    let mut s = start();
    let alice = password("alice", ALICE_PASSWORD);
    add_on_one_revoke_on_three(&s, &alice);
    let token = change_while_node_3_is_down(&mut s);
    passwd_and_remove(&s, &alice);

    let secret = token.rsplit('_').next().unwrap().to_string();
    let secrets = [
        ALICE_PASSWORD,
        ALICE_NEW_PASSWORD,
        ADMIN_PASSWORD,
        OLD_PASSWORD,
        secret.as_str(),
    ];
    let file = |n: u64| s.c.node(n).data_dir.join("security.json");
    for n in 1..=3 {
        let log = s.c.node(n).data_dir.join("controller").join("security.log");
        assert!(!std::fs::read(&log).unwrap().is_empty(), "node {n}: no log");
        no_secrets_in(&log, &secrets);
        no_secrets_in(&file(n), &secrets);
        // Each node's own file was merged once (a restart imports nothing again).
        let d = &s.c.node(n).data_dir;
        assert!(d.join("security.imported.json").exists(), "node {n}");
        assert!(!d.join("security.import.json").exists(), "node {n}");
    }
    // Every node's copy of the state is the same.
    eventually("every node's security file is the same", || {
        let now: Vec<String> = (1..=3)
            .map(|n| std::fs::read_to_string(file(n)).unwrap())
            .collect();
        now[0] == now[1] && now[1] == now[2] && now[0].contains("\"alice\"")
    });
    s.c.kill_all();
}
