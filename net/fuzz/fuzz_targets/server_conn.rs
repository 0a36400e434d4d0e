//! Fuzzes the server's connection handling, not only the frame decoder (issue 16): one
//! in-process server (one shard, auth off, small frame and deadline limits) runs for the whole
//! session; each input is written to a fresh TCP connection, either raw (a peer that never
//! handshakes) or behind a valid Handshake (first byte odd), then the connection is half-closed
//! and drained. The server's code runs in this process, so libFuzzer's coverage feedback steers
//! the input through the decoder, the admission gates, the request decoder and the handlers.
//! Property: after every input the server still answers a Ping on a new connection (no panic,
//! no wedged shard; a shard panic would exit the process, which libFuzzer reports).
//!
//! Run: `cd net/fuzz && cargo +nightly fuzz run -s none server_conn -- -max_len=4096`.

#![no_main]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shardline_engine::EngineConfig;
use shardline_net::protocol::{
    DecoderConfig, FrameBuf, FrameDecoder, FrameEncoder, HandshakeRequest, PingRequest, Request,
    ServerMessage, supported_apis,
};
use shardline_net::server::{Server, ServerConfig};

struct Fixture {
    addr: SocketAddr,
    _server: Server,
    _dir: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shardline-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = EngineConfig::with_data_dir(&dir);
        e.shards = 1;
        e.pin_shards = false;
        e.io_memory_bytes = 512 << 10;
        let s = ServerConfig {
            listen: "127.0.0.1:0".into(),
            unadmitted_timeout_ms: 500,
            frame_receive_timeout_ms: 500,
            idle_timeout_ms: 500,
            ..ServerConfig::default()
        };
        let server = Server::start(e, s).expect("server");
        Fixture {
            addr: server.addr(),
            _server: server,
            _dir: dir,
        }
    })
}

fn frame(cid: u32, r: &Request) -> Vec<u8> {
    let mut buf = FrameBuf::new();
    FrameEncoder::default()
        .request(&mut buf, cid, 0, r)
        .expect("encode");
    buf.to_vec()
}

fn handshake() -> Vec<u8> {
    frame(
        1,
        &Request::Handshake(HandshakeRequest {
            client_id: "fuzz".into(),
            apis: supported_apis(),
        }),
    )
}

/// Connects, sends `bytes`, half-closes and reads until the server closes (bounded).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut tmp = [0u8; 4096];
    while out.len() < (1 << 20) {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
        }
    }
    out
}

fn still_serves(addr: SocketAddr) {
    let mut bytes = handshake();
    bytes.extend(frame(2, &Request::Ping(PingRequest { nonce: 42 })));
    let answer = exchange(addr, &bytes);
    let mut dec = FrameDecoder::new(DecoderConfig::default()).expect("decoder");
    dec.push(&answer);
    let mut pinged = false;
    while let Ok(Some(f)) = dec.next_frame_owned() {
        if let Ok(ServerMessage::Response { correlation_id: 2, .. }) = ServerMessage::decode_owned(&f) {
            pinged = true;
        }
    }
    assert!(pinged, "the server stopped answering after an input");
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut bytes = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        bytes.extend(handshake());
    }
    bytes.extend_from_slice(data.get(1..).unwrap_or_default());
    let _ = exchange(f.addr, &bytes);
    still_serves(f.addr);
});
