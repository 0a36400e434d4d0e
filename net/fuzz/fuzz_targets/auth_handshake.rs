//! Fuzzes what an unauthenticated peer controls in the authentication handshake: the bytes of
//! an Authenticate payload (api 40) through the request decoder, and whatever decodes through
//! the credential check against a security file with a user and a token; plus the raw input as
//! a token and as a security file. Properties: no panic; a decoded request re-encodes and
//! decodes back equal; only the real secrets authenticate.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none auth_handshake`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardline_net::auth::SecurityFile;
use shardline_net::auth::store::parse_token;
use shardline_net::protocol::{ApiKey, FrameBuf, FrameDecoder, FrameEncoder, Request, DecoderConfig};

struct Fixture {
    db: SecurityFile,
    token: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut db = SecurityFile::default();
        db.add_user("alice", "pw").expect("user");
        // Cheap argon2 parameters (the PHC string carries them) keep the fuzzer fast; the
        // code path is the same as with the default cost.
        let cheap = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$ZmFrZWZha2VmYWtlZmFrZQ";
        db.users.get_mut("alice").expect("alice").password_hash = cheap.into();
        let (_, token) = db.create_token("svc", "").expect("token");
        Fixture { db, token }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let api = ApiKey::Authenticate.as_u16();
    if let Ok(request) = Request::decode(api, 0, data) {
        let mut buf = FrameBuf::new();
        let mut enc = FrameEncoder::default();
        enc.request(&mut buf, 1, 0, &request).expect("re-encode");
        let mut dec = FrameDecoder::new(DecoderConfig::default()).expect("decoder");
        dec.push(&buf);
        let frame = dec.next_frame_owned().expect("frame").expect("whole frame");
        assert_eq!(Request::decode_owned_frame(&frame).expect("decode back"), request);
        if let Request::Authenticate(a) = &request {
            if let Some(v) = f.db.verify(a.mechanism, &a.username, &a.secret) {
                assert!(a.secret == f.token || a.username == "alice", "{v:?}");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_token(text);
        assert!(f.db.check_token(text).is_none() || text == f.token);
        let _ = SecurityFile::parse(text);
    }
});
