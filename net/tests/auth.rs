//! Authentication and authorization against a real server on loopback:
//! - before a successful Authenticate, every api but Handshake/Authenticate is refused with
//!   AUTHENTICATION_REQUIRED (the list of apis is exhaustive: a new api must be added here);
//! - wrong passwords, unknown users and bad tokens all get the one code AUTHENTICATION_FAILED,
//!   with the same message; repeated failures from one address are rate limited;
//! - ACLs deny by default, each operation is denied until its own entry is added (the
//!   running server picks up file changes), deny entries win, listings are filtered;
//! - a revoked token stops working on open connections and new ones without a restart;
//! - a verified client certificate authenticates as its common name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;
#[path = "hostile/every_api.rs"]
mod every_api;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Pki, Raw, start};
use every_api::{fetch, produce, subscribe};
use shardline_net::auth::acl::parse_resource;
use shardline_net::auth::{AclEntry, Operation, Permission, SecurityFile};
use shardline_net::client::{Client, ClientConfig, ClientTls, Credentials};
use shardline_net::protocol::*;
use shardline_net::server::{AuthConfig, Server, ServerConfig};
use shardline_net::tls::ServerTlsConfig;

const PASSWORD: &str = "correct horse battery staple";

fn auth_server(dir: &Path, db: &SecurityFile, tls: Option<ServerTlsConfig>) -> (Server, PathBuf) {
    let file = dir.join("security.json");
    db.save(&file).unwrap();
    let server = start(
        &dir.join("data"),
        ServerConfig {
            tls,
            auth: AuthConfig {
                enabled: true,
                file: Some(file.clone()),
                reload_interval_ms: 20,
                failures_max: 3,
                failure_window_ms: 60_000,
                ..AuthConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    (server, file)
}

fn acl(principal: &str, resource: &str, operation: Operation, permission: Permission) -> AclEntry {
    let (resource, pattern_type, pattern) = parse_resource(resource).unwrap();
    AclEntry {
        principal: principal.into(),
        resource,
        pattern,
        pattern_type,
        operation,
        permission,
    }
}

fn authenticate(raw: &mut Raw, user: &str, password: &str) -> Result<Response, u16> {
    raw.call(&Request::Authenticate(AuthenticateRequest {
        mechanism: AuthMechanism::Password,
        username: user.into(),
        secret: password.into(),
    }))
}

fn every_api() -> Vec<Request> {
    every_api::every_api_on("t", "t")
}

fn assert_refused_everywhere(raw: &mut Raw, want: u16) {
    for r in every_api() {
        assert_eq!(raw.call(&r).map(|_| ()), Err(want), "{:?}", r.api_key());
    }
    raw.send(&Request::GrantCredits(GrantCreditsRequest {
        subscription_id: 1,
        records: 1,
        bytes: 1,
    }));
    assert_eq!(
        raw.call(&Request::Ping(PingRequest { nonce: 2 }))
            .map(|_| ()),
        Err(want)
    );
}

fn users() -> SecurityFile {
    let mut db = SecurityFile::default();
    db.add_user("alice", PASSWORD).unwrap();
    db.add_user("bob", PASSWORD).unwrap();
    db.acls
        .push(acl("alice", "cluster", Operation::Admin, Permission::Allow));
    db
}

#[test]
fn unauthenticated_and_wrongly_authenticated_clients_are_refused_for_every_api() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = auth_server(dir.path(), &users(), None);
    // Set up a topic as alice, so that refusals are not "unknown topic".
    let mut admin = Raw::connect(server.addr());
    admin.handshake();
    authenticate(&mut admin, "alice", PASSWORD).unwrap();
    admin
        .call(&Request::CreateTopic(CreateTopicRequest {
            name: "t".into(),
            config: TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
        }))
        .unwrap();

    let mut anonymous = Raw::connect(server.addr());
    anonymous.handshake();
    assert_refused_everywhere(&mut anonymous, code::AUTHENTICATION_REQUIRED);

    // Wrong password, unknown user, malformed and unknown tokens: one code, one message.
    let mut wrong = Raw::connect(server.addr());
    wrong.handshake();
    let attempts = [
        (AuthMechanism::Password, "alice", "wrong"),
        (AuthMechanism::Password, "mallory", PASSWORD),
        (AuthMechanism::Token, "", "slt_0011_not-a-token"),
    ];
    for (mechanism, user, secret) in attempts {
        let r = wrong.call(&Request::Authenticate(AuthenticateRequest {
            mechanism,
            username: user.into(),
            secret: secret.into(),
        }));
        assert_eq!(r.map(|_| ()), Err(code::AUTHENTICATION_FAILED), "{user}");
    }
    assert_refused_everywhere(&mut wrong, code::AUTHENTICATION_REQUIRED);

    // The address has used its 3 failures: even the right password is now rate limited.
    assert_eq!(
        authenticate(&mut wrong, "alice", PASSWORD).map(|_| ()),
        Err(code::AUTHENTICATION_RATE_LIMITED)
    );

    // The authenticated super user was not disturbed: every api answers (errors allowed,
    // but not the authentication codes).
    for r in every_api() {
        if let Err(c) = admin.call(&r) {
            assert!(
                ![
                    code::AUTHENTICATION_REQUIRED,
                    code::AUTHENTICATION_FAILED,
                    code::AUTHORIZATION_FAILED
                ]
                .contains(&c),
                "{:?}: {c}",
                r.api_key()
            );
        }
    }
    server.shutdown().unwrap();
}

/// Polls `f` until it returns true (the server re-reads the file every 20 ms).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn each_operation_is_denied_until_its_acl_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let (server, file) = auth_server(dir.path(), &users(), None);
    let mut alice = Raw::connect(server.addr());
    alice.handshake();
    authenticate(&mut alice, "alice", PASSWORD).unwrap();
    for name in ["t", "other"] {
        alice
            .call(&Request::CreateTopic(CreateTopicRequest {
                name: name.into(),
                config: TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            }))
            .unwrap();
    }
    alice.call(&produce("t")).unwrap();

    let mut bob = Raw::connect(server.addr());
    bob.handshake();
    let who = authenticate(&mut bob, "bob", PASSWORD).unwrap();
    assert_eq!(
        who,
        Response::Authenticate(AuthenticateResponse {
            principal: "bob".into()
        })
    );
    let describe = Request::DescribeTopic(DescribeTopicRequest { name: "t".into() });
    let create = Request::CreateTopic(CreateTopicRequest {
        name: "bobs".into(),
        config: TopicConfig {
            partitions: 1,
            ..TopicConfig::default()
        },
    });
    let delete = Request::DeleteTopic(DeleteTopicRequest { name: "t".into() });
    let stats = Request::Stats(StatsRequest {});
    // Needs Admin on the group besides Describe on the topic (allowed by then).
    let reset = Request::ResetOffsets(ResetOffsetsRequest {
        group: "g".into(),
        topic: "t".into(),
        dry_run: true,
        ..ResetOffsetsRequest::default()
    });
    let purge = Request::QueuePurge(QueuePurgeRequest { topic: "t".into() });
    // (operation, resource, requests needing it)
    let cases: Vec<(Operation, &str, Vec<Request>)> = vec![
        (Operation::Produce, "topic:t", vec![produce("t")]),
        (
            Operation::Consume,
            "topic:t",
            vec![fetch("t"), subscribe("t")],
        ),
        (Operation::Describe, "topic:t", vec![describe.clone()]),
        (Operation::Create, "topic:bobs", vec![create]),
        (Operation::Describe, "cluster", vec![stats]),
        (Operation::Admin, "group:g", vec![reset]),
        (Operation::Delete, "topic:t", vec![purge, delete]),
    ];
    for (operation, resource, requests) in &cases {
        for r in requests {
            assert_eq!(
                bob.call(r).map(|_| ()),
                Err(code::AUTHORIZATION_FAILED),
                "{:?} before its ACL",
                r.api_key()
            );
        }
        let mut db = SecurityFile::load(&file).unwrap();
        db.acls
            .push(acl("bob", resource, *operation, Permission::Allow));
        db.save(&file).unwrap();
        let probe = requests[0].clone();
        eventually(&format!("{operation:?} allowed"), || {
            bob.call(&probe) != Err(code::AUTHORIZATION_FAILED)
        });
        for r in &requests[1..] {
            assert_ne!(bob.call(r).map(|_| ()), Err(code::AUTHORIZATION_FAILED));
        }
        // Allowing this operation allowed nothing on the other topic.
        assert_eq!(
            bob.call(&produce("other")).map(|_| ()),
            Err(code::AUTHORIZATION_FAILED)
        );
    }
    // Listings show only what bob may describe.
    let Ok(Response::ListTopics(l)) = bob.call(&Request::ListTopics(ListTopicsRequest {})) else {
        panic!("list topics");
    };
    let names: Vec<_> = l.topics.iter().map(|t| t.name.as_str()).collect();
    assert!(!names.contains(&"other"), "{names:?}");
    // A deny entry wins over the allow.
    let mut db = SecurityFile::load(&file).unwrap();
    db.acls.push(acl(
        "*",
        "topic-prefix:",
        Operation::Describe,
        Permission::Deny,
    ));
    db.save(&file).unwrap();
    eventually("deny wins", || {
        bob.call(&describe) == Err(code::AUTHORIZATION_FAILED)
    });
    server.shutdown().unwrap();
}

#[test]
fn revoked_tokens_stop_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = users();
    let (id, token) = db.create_token("svc", "test").unwrap();
    db.acls.push(acl(
        "svc",
        "cluster",
        Operation::Describe,
        Permission::Allow,
    ));
    let (server, file) = auth_server(dir.path(), &db, None);
    let config = ClientConfig {
        credentials: Some(Credentials::Token(token.clone())),
        ..ClientConfig::default()
    };
    let client = Client::connect(&server.addr().to_string(), config.clone()).unwrap();
    client.stats().unwrap();
    // Revoke through the real CLI, as an operator would.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["token", "revoke", &id, "--security-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the open connection is refused", || {
        client
            .stats()
            .is_err_and(|e| e.code() == Some(code::AUTHENTICATION_FAILED) || e.code().is_none())
    });
    let e = Client::connect(&server.addr().to_string(), config).unwrap_err();
    assert_eq!(e.code(), Some(code::AUTHENTICATION_FAILED), "{e}");
    server.shutdown().unwrap();
}

#[test]
fn password_and_certificate_principals_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mut tls = ServerTlsConfig::new(&pki.server_cert, &pki.server_key);
    tls.client_ca = Some(pki.ca.clone());
    let (server, _) = auth_server(dir.path(), &users(), Some(tls));
    let addr = server.addr().to_string();
    // The certificate says "alice": no Authenticate needed, and alice is a super user.
    let cert = ClientTls::new(&pki.ca, Some((&pki.client_cert, &pki.client_key))).unwrap();
    let by_cert = ClientConfig {
        tls: Some(cert.clone()),
        ..ClientConfig::default()
    };
    let client = Client::connect(&addr, by_cert).unwrap();
    client.stats().unwrap();
    // bob logs in with his password over the same mutual TLS and is no super user.
    let bob = ClientConfig {
        tls: Some(cert),
        credentials: Some(Credentials::Password {
            username: "bob".into(),
            password: PASSWORD.into(),
        }),
        ..ClientConfig::default()
    };
    let client = Client::connect(&addr, bob).unwrap();
    let e = client.stats().unwrap_err();
    assert_eq!(e.code(), Some(code::AUTHORIZATION_FAILED), "{e}");
    server.shutdown().unwrap();
}

/// AlterSecurity (api 41) on a single server: a super user's change is in force when it is
/// answered and written to the security file (no plaintext); anyone else is refused.
#[test]
fn alter_security_on_a_single_server_applies_at_once_and_needs_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (server, file) = auth_server(dir.path(), &users(), None);
    let addr = server.addr();
    let mut bob = Raw::connect(addr);
    bob.handshake();
    authenticate(&mut bob, "bob", PASSWORD).unwrap();
    let add_carol = Request::AlterSecurity(AlterSecurityRequest {
        op: SecurityOp::UserAdd,
        name: "carol".into(),
        secret: "carol's secret".into(),
        ..AlterSecurityRequest::default()
    });
    assert_eq!(
        bob.call(&add_carol).map(|_| ()),
        Err(code::AUTHORIZATION_FAILED)
    );
    let mut alice = Raw::connect(addr);
    alice.handshake();
    authenticate(&mut alice, "alice", PASSWORD).unwrap();
    let Ok(Response::AlterSecurity(r)) = alice.call(&add_carol) else {
        panic!("alice (admin on cluster) may add users");
    };
    assert!(r.message.contains("carol"), "{r:?}");
    assert_eq!(
        alice.call(&add_carol).map(|_| ()),
        Err(code::INVALID_ARGUMENT)
    );
    // In force at once, without waiting for the file watcher.
    let mut carol = Raw::connect(addr);
    carol.handshake();
    authenticate(&mut carol, "carol", "carol's secret").unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"carol\"") && !text.contains("carol's secret"));
    // A token: returned once, stored as a digest.
    let Ok(Response::AlterSecurity(t)) =
        alice.call(&Request::AlterSecurity(AlterSecurityRequest {
            op: SecurityOp::TokenCreate,
            name: "svc".into(),
            ..AlterSecurityRequest::default()
        }))
    else {
        panic!("token create");
    };
    assert!(t.token.starts_with("slt_"), "{t:?}");
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains(t.token.rsplit('_').next().unwrap())
    );
    server.shutdown().unwrap();
}
