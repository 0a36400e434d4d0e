//! Shared by the security tests: certificates generated at test time with rcgen (no checked-in
//! keys), and an in-process server on 127.0.0.1 with an ephemeral port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use shardline_engine::EngineConfig;
use shardline_net::server::{Server, ServerConfig};

/// PEM files of a test PKI: a CA, a server leaf for `localhost` and `127.0.0.1`, and a client
/// leaf whose common name is `alice`. A second, unrelated CA signs `stranger`.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    pub(crate) stranger_cert: PathBuf,
    pub(crate) stranger_key: PathBuf,
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    sans: &[&str],
    cn: &str,
    dir: &Path,
    stem: &str,
) -> (PathBuf, PathBuf) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

impl Pki {
    pub(crate) fn generate(dir: &Path) -> Pki {
        let (issuer, ca_pem) = ca("shardline test CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca_pem).unwrap();
        let (server_cert, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            "shardline",
            dir,
            "server",
        );
        let (client_cert, client_key) = leaf(&issuer, &[], "alice", dir, "client");
        let (other, _) = ca("another CA");
        let (stranger_cert, stranger_key) = leaf(&other, &[], "stranger", dir, "stranger");
        Pki {
            dir: dir.to_path_buf(),
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
            stranger_cert,
            stranger_key,
        }
    }
}

pub(crate) fn engine_config(dir: &Path) -> EngineConfig {
    let mut e = EngineConfig::with_data_dir(dir);
    e.shards = 2;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    e
}

pub(crate) fn start(dir: &Path, server: ServerConfig) -> Server {
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        idle_timeout_ms: 5000,
        ..server
    };
    Server::start(engine_config(dir), s).unwrap()
}

/// A raw protocol connection (no client library): send requests, read server messages.
pub(crate) struct Raw {
    s: std::net::TcpStream,
    enc: shardline_net::protocol::FrameEncoder,
    dec: shardline_net::protocol::FrameDecoder,
    next: u32,
    /// Bytes read but not yet taken by the decoder (`push` stops after each whole frame).
    pending: Vec<u8>,
}

impl Raw {
    pub(crate) fn connect(addr: std::net::SocketAddr) -> Raw {
        use shardline_net::protocol::{DecoderConfig, FRAME_BYTES_MAX_DEFAULT};
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            enc: shardline_net::protocol::FrameEncoder::new(FRAME_BYTES_MAX_DEFAULT).unwrap(),
            dec: shardline_net::protocol::FrameDecoder::new(DecoderConfig::default()).unwrap(),
            next: 1,
            pending: Vec::new(),
        }
    }

    pub(crate) fn send(&mut self, r: &shardline_net::protocol::Request) -> u32 {
        use std::io::Write;
        let cid = self.next;
        self.next += 1;
        let mut buf = shardline_net::protocol::FrameBuf::new();
        self.enc.request(&mut buf, cid, 0, r).unwrap();
        self.s.write_all(&buf).unwrap();
        cid
    }

    /// Next server message, or None when the server closed the connection.
    pub(crate) fn recv(&mut self) -> Option<shardline_net::protocol::ServerMessage> {
        use std::io::Read;
        loop {
            if let Some(f) = self.dec.next_frame_owned().unwrap() {
                return Some(shardline_net::protocol::ServerMessage::decode_owned(&f).unwrap());
            }
            if !self.pending.is_empty() {
                let taken = self.dec.push(&self.pending);
                self.pending.drain(..taken);
                if taken > 0 {
                    continue;
                }
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    let taken = self.dec.push(&tmp[..n]);
                    self.pending.extend_from_slice(&tmp[taken..n]);
                }
            }
        }
    }

    /// Sends and returns the answer: `Ok(response)` or `Err(error code)`.
    pub(crate) fn call(
        &mut self,
        r: &shardline_net::protocol::Request,
    ) -> Result<shardline_net::protocol::Response, u16> {
        use shardline_net::protocol::ServerMessage;
        let cid = self.send(r);
        loop {
            match self.recv().expect("connection closed") {
                ServerMessage::Response {
                    correlation_id,
                    response,
                } if correlation_id == cid => return Ok(response),
                ServerMessage::Error {
                    correlation_id,
                    error,
                    ..
                } if correlation_id == cid => return Err(error.code),
                _ => {}
            }
        }
    }

    pub(crate) fn handshake(&mut self) {
        use shardline_net::protocol::{HandshakeRequest, Request, supported_apis};
        self.call(&Request::Handshake(HandshakeRequest {
            client_id: "raw".into(),
            apis: supported_apis(),
        }))
        .unwrap();
    }
}
