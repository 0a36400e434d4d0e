//! TLS on the binary protocol, over real loopback sockets with certificates made at test time:
//! a real external client (`openssl s_client`) completes a handshake and verifies the chain;
//! the Rust client works end to end over TLS (produce, fetch, shard-direct connections); a
//! plain-TCP client against a TLS listener, and a TLS client against a plain listener, fail
//! quickly with a clear error (no hang); mutual TLS refuses a client without a certificate and
//! one whose certificate another CA signed, and accepts the right one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;
#[path = "common/spawn.rs"]
mod spawn;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Pki, start};
use shardline_engine::batch;
use shardline_net::client::{Acks, Client, ClientConfig, ClientTls, TopicConfig};
use shardline_net::server::ServerConfig;
use shardline_net::tls::ServerTlsConfig;

fn tls_server(pki: &Pki, data: &std::path::Path, mtls: bool) -> shardline_net::server::Server {
    let mut tls = ServerTlsConfig::new(&pki.server_cert, &pki.server_key);
    if mtls {
        tls.client_ca = Some(pki.ca.clone());
    }
    tls.handshake_timeout_ms = 2000;
    start(
        data,
        ServerConfig {
            tls: Some(tls),
            ..ServerConfig::default()
        },
    )
}

fn config(tls: Option<ClientTls>) -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        tls,
        ..ClientConfig::default()
    }
}

fn one_batch(value: &[u8]) -> Bytes {
    batch::batch_of_values([value.to_vec()]).unwrap()
}

#[test]
fn openssl_s_client_completes_a_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = tls_server(&pki, &dir.path().join("data"), false);
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-CAfile"])
        .arg(&pki.ca)
        .args([
            "-connect",
            &server.addr().to_string(),
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed for this test (.ci/run installs Debian's openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl failed: {text}");
    assert!(text.contains("CONNECTION ESTABLISHED"), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    server.shutdown().unwrap();
}

#[test]
fn openssl_s_client_refuses_a_server_it_does_not_trust() {
    // Guards the previous test against passing vacuously: without the CA, openssl must fail.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = tls_server(&pki, &dir.path().join("data"), false);
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-CAfile"])
        .arg(&pki.stranger_cert)
        .args(["-connect", &server.addr().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(!out.status.success());
    server.shutdown().unwrap();
}

#[test]
fn rust_client_round_trip_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = tls_server(&pki, &dir.path().join("data"), false);
    let tls = ClientTls::new(&pki.ca, None).unwrap();
    let client = Client::connect(&server.addr().to_string(), config(Some(tls))).unwrap();
    let topic = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    client.create_topic("secure", topic).unwrap();
    // Both partitions: shard-aware routing opens TLS connections to the shards' own addresses.
    for p in 0..2 {
        for i in 0..20u32 {
            let value = format!("secret-{p}-{i}");
            let ack = client
                .produce("secure", p, one_batch(value.as_bytes()), Acks::Durable)
                .unwrap();
            assert_eq!(ack.unwrap().base_offset, u64::from(i));
        }
        let fetched = client
            .fetch("secure", p, 0, Duration::ZERO, 1 << 20)
            .unwrap();
        let mut values: Vec<Vec<u8>> = Vec::new();
        for chunk in &fetched.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                values.extend(batch::decode(b).unwrap().1.into_iter().map(|r| r.value));
            }
        }
        assert_eq!(values.len(), 20);
        assert_eq!(values[19], format!("secret-{p}-19").into_bytes());
    }
    // Regression: a batch far above rustls' 64 KiB record buffer (the client used to fail with
    // "failed to write whole buffer").
    let big = batch::batch_of_values([vec![9u8; 3 << 20]]).unwrap();
    client.produce("secure", 0, big, Acks::Leader).unwrap();
    drop(client);
    server.shutdown().unwrap();
}

#[test]
fn plain_client_against_tls_listener_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = tls_server(&pki, &dir.path().join("data"), false);
    let started = Instant::now();
    let e = Client::connect(&server.addr().to_string(), config(None)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("TLS"), "unclear error: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A raw socket sending garbage is closed by the server well within the handshake timeout.
    let mut raw = std::net::TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&[0u8; 64]).unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut sink);
    assert!(started.elapsed() < Duration::from_secs(6));
    // The server keeps serving TLS clients.
    let tls = ClientTls::new(&pki.ca, None).unwrap();
    let ok = Client::connect(&server.addr().to_string(), config(Some(tls))).unwrap();
    ok.ping().unwrap();
    drop(ok);
    server.shutdown().unwrap();
}

#[test]
fn tls_client_against_plain_listener_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = start(&dir.path().join("data"), ServerConfig::default());
    let started = Instant::now();
    let tls = ClientTls::new(&pki.ca, None).unwrap();
    let e = Client::connect(&server.addr().to_string(), config(Some(tls))).unwrap_err();
    assert!(e.to_string().contains("TLS"), "unclear error: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().unwrap();
}

#[test]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let server = tls_server(&pki, &dir.path().join("data"), true);
    let addr = server.addr().to_string();
    // No client certificate.
    let anonymous = ClientTls::new(&pki.ca, None).unwrap();
    let e = Client::connect(&addr, config(Some(anonymous))).unwrap_err();
    assert!(
        e.to_string().contains("Connect") || e.to_string().contains("connect"),
        "{e}"
    );
    // A certificate from another CA.
    let stranger = ClientTls::new(&pki.ca, Some((&pki.stranger_cert, &pki.stranger_key))).unwrap();
    assert!(Client::connect(&addr, config(Some(stranger))).is_err());
    // openssl without a certificate is refused too. In TLS 1.3 the server checks the client's
    // certificate after the client's last flight, so its alert comes with the first read:
    // -ign_eof keeps s_client reading until the server ends the session.
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-ign_eof", "-CAfile"])
        .arg(&pki.ca)
        .args(["-connect", &addr])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("certificate required"),
        "openssl without a certificate was not refused: {text}"
    );
    // The right certificate works.
    let alice = ClientTls::new(&pki.ca, Some((&pki.client_cert, &pki.client_key))).unwrap();
    let client = Client::connect(&addr, config(Some(alice))).unwrap();
    client.ping().unwrap();
    drop(client);
    server.shutdown().unwrap();
}

/// The real binary: `serve --tls-cert/--tls-key`, and the CLI with `--tls-ca` creates a topic,
/// produces and consumes; without `--tls-ca` it fails with one clear line.
#[test]
fn cli_serves_and_connects_over_tls() {
    const BIN: &str = env!("CARGO_BIN_EXE_shardline");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = spawn::listening_addr(&mut server);
    let cli = |args: &[&str], stdin: &str, tls: bool| {
        let mut c = Command::new(BIN);
        c.args(["--addr", &addr]);
        if tls {
            c.arg("--tls-ca").arg(&pki.ca);
        }
        let mut child = c
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = cli(&["topic", "create", "t"], "", true);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["produce", "t"], "one\ntwo\n", true);
    assert_eq!((code, out.trim()), (0, "2"), "{err}");
    let (code, out, err) = cli(
        &["consume", "t", "--count", "2", "--timeout-ms", "10000"],
        "",
        true,
    );
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"), "{err}");
    let (code, _, err) = cli(&["topic", "list"], "", false);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("shardline: error:") && err.contains("TLS"),
        "{err}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
