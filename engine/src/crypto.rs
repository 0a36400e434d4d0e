//! Encryption at rest: record batch bodies sealed with AES-256-GCM (docs/storage.md,
//! "Encrypted batches"; docs/security.md, "Encryption at rest").
//!
//! ```text
//!  header (64 bytes, flags bit 3 set, key_id = master key id, body_length = 16 + n + 16)
//!  64: salt [16] | ciphertext of the rkyv body [n] | GCM tag [16] | zero padding to 16
//! ```
//!
//! Keys and nonces. The key file holds master keys by id; `active` seals new batches, every id
//! opens old ones (rotation: add a key, make it active, keep the old ones). A batch is sealed
//! under a *session key* `HMAC-SHA256(master, "shardline batch v1" | topic_id | partition |
//! salt)` with a 128-bit salt drawn from the OS when a partition's writer opens, and with the
//! nonce `base_offset (u64 LE) | 0u32`. Why this never repeats a (key, nonce) pair: within one
//! session base offsets strictly increase (the sealer enforces it: a base at or below the last
//! one sealed — a partition repaired after an I/O error rewinds its offsets — draws a fresh
//! salt first); across sessions, partitions and topics the session keys differ (a salt
//! collision has probability ~2^-128 per pair). Plain random 96-bit nonces would instead
//! cap a key at ~2^32 batches (NIST SP 800-38D), which a busy broker reaches in days.
//!
//! What is authenticated: the body by the tag; the header bytes [16, 64) (magic, version,
//! flags, record count, body length, key id, timestamps, producer) as associated data; the
//! base offset through the nonce; the topic and partition through the key. A batch moved to
//! another offset, partition or topic, or read with a wrong key, fails to open (an error,
//! never garbage). The CRC is computed after sealing, so it covers the ciphertext and disk
//! corruption is still told apart from a wrong key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::batch::{self, BatchHeader, HEADER_BYTES, flags, padded};
use crate::error::{Error, Result};

const SALT_BYTES: usize = 16;
const TAG_BYTES: usize = 16;
/// Bytes a sealed body adds to the plaintext body.
pub const SEAL_OVERHEAD_BYTES: usize = SALT_BYTES + TAG_BYTES;
const KDF_LABEL: &[u8] = b"shardline batch v1";
/// Header bytes authenticated as associated data.
const AAD: std::ops::Range<usize> = 16..HEADER_BYTES;

/// Master keys by id, from the key file.
pub struct Keyring {
    active: u32,
    keys: HashMap<u32, [u8; 32]>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("ids", &ids)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    active: u32,
    /// id -> 64 hex digits (32 bytes).
    keys: HashMap<String, String>,
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn bad_key(msg: String) -> Error {
    Error::InvalidArgument(format!("encryption key file: {msg}"))
}

impl Keyring {
    /// Reads a key file: `{"active": 1, "keys": {"1": "<64 hex digits>"}}`.
    pub fn load(path: &Path) -> Result<Keyring> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_key(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| bad_key(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> std::result::Result<Keyring, String> {
        let f: KeyFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for (id, hex) in &f.keys {
            let id: u32 = id
                .parse()
                .map_err(|_| format!("key id '{id}' is not a number"))?;
            if id == 0 {
                return Err("key id 0 means 'not encrypted'; use 1 and up".into());
            }
            let key = decode_hex32(hex).ok_or_else(|| format!("key {id} is not 64 hex digits"))?;
            keys.insert(id, key);
        }
        if !keys.contains_key(&f.active) {
            return Err(format!("active key {} is not in the file", f.active));
        }
        Ok(Keyring {
            active: f.active,
            keys,
        })
    }

    /// A new key file's text with one random key (id 1), for `shardline` tooling and tests.
    pub fn generate_file_text(id: u32) -> Result<String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| Error::Runtime(format!("random: {e}")))?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "{{\"active\": {id}, \"keys\": {{\"{id}\": \"{hex}\"}}}}\n"
        ))
    }

    pub fn active_id(&self) -> u32 {
        self.active
    }

    fn session_cipher(
        &self,
        key_id: u32,
        topic_id: u64,
        partition: u32,
        salt: &[u8],
    ) -> Result<Aes256Gcm> {
        let master = self.keys.get(&key_id).ok_or_else(|| Error::CorruptLog {
            path: format!("topic {topic_id} partition {partition}"),
            reason: format!("encryption key {key_id} is not in the key file"),
        })?;
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(master)
            .map_err(|e| Error::Runtime(format!("hmac: {e}")))?;
        mac.update(KDF_LABEL);
        mac.update(&topic_id.to_le_bytes());
        mac.update(&partition.to_le_bytes());
        mac.update(salt);
        let key = mac.finalize().into_bytes();
        Aes256Gcm::new_from_slice(&key).map_err(|e| Error::Runtime(format!("aes: {e}")))
    }

    /// Opens one sealed batch: the plaintext batch (flag cleared, key id 0, CRC recomputed).
    /// A wrong key, or a batch moved from elsewhere, is an error.
    pub fn open(&self, sealed: &[u8], topic_id: u64, partition: u32) -> Result<Bytes> {
        let h = BatchHeader::parse(sealed)?;
        let body = h.body_length as usize;
        if h.flags & flags::ENCRYPTED == 0 || body < SEAL_OVERHEAD_BYTES {
            return Err(Error::CorruptBatch("not a sealed batch".into()));
        }
        if sealed.len() < HEADER_BYTES + body {
            return Err(Error::CorruptBatch("sealed batch is cut short".into()));
        }
        let salt = &sealed[HEADER_BYTES..HEADER_BYTES + SALT_BYTES];
        let n = body - SEAL_OVERHEAD_BYTES;
        let cipher = self.session_cipher(h.key_id, topic_id, partition, salt)?;
        let ct_start = HEADER_BYTES + SALT_BYTES;
        let tag = Tag::from_slice(&sealed[ct_start + n..ct_start + n + TAG_BYTES]);
        let mut out = BytesMut::zeroed(padded(HEADER_BYTES + n));
        out[..HEADER_BYTES].copy_from_slice(&sealed[..HEADER_BYTES]);
        out[HEADER_BYTES..HEADER_BYTES + n].copy_from_slice(&sealed[ct_start..ct_start + n]);
        let nonce = nonce(h.base_offset);
        let (head, rest) = out.split_at_mut(HEADER_BYTES);
        cipher
            .decrypt_in_place_detached(&nonce, &sealed[AAD], &mut rest[..n], tag)
            .map_err(|_| Error::CorruptLog {
                path: format!("topic {topic_id} partition {partition}"),
                reason: format!(
                    "batch at offset {} does not decrypt with key {}: wrong key, or data moved",
                    h.base_offset, h.key_id
                ),
            })?;
        head[19] &= !flags::ENCRYPTED;
        head[24..28].copy_from_slice(&(n as u32).to_le_bytes());
        head[28..32].copy_from_slice(&0u32.to_le_bytes());
        let len = out.len() as u32;
        out[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = batch::compute_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        Ok(out.freeze())
    }

    /// Opens every batch of a chunk of consecutive batches (as fetches return them); batches
    /// that are not sealed pass through unchanged.
    pub fn open_chunk(&self, chunk: &Bytes, topic_id: u64, partition: u32) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(chunk.len());
        for b in batch::split_batches(chunk)? {
            let h = BatchHeader::parse(b)?;
            if h.flags & flags::ENCRYPTED != 0 && h.key_id != 0 {
                out.extend_from_slice(&self.open(b, topic_id, partition)?);
            } else {
                out.extend_from_slice(b);
            }
        }
        Ok(out.freeze())
    }
}

fn nonce(base_offset: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&base_offset.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// What a partition log needs to seal (in `LogConfig`).
#[derive(Clone, Debug)]
pub struct TopicEncryption {
    pub keyring: Arc<Keyring>,
    pub topic_id: u64,
    pub partition: u32,
}

/// Seals one partition's batches: one session (salt, key) per writer, renewed if offsets
/// ever go backwards.
pub struct Sealer {
    spec: TopicEncryption,
    salt: [u8; SALT_BYTES],
    cipher: Aes256Gcm,
    last_base: Option<u64>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("spec", &self.spec).finish()
    }
}

impl Sealer {
    pub fn new(spec: TopicEncryption) -> Result<Sealer> {
        let (salt, cipher) = Self::session(&spec)?;
        Ok(Sealer {
            spec,
            salt,
            cipher,
            last_base: None,
        })
    }

    fn session(spec: &TopicEncryption) -> Result<([u8; SALT_BYTES], Aes256Gcm)> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| Error::Runtime(format!("random: {e}")))?;
        let k = &spec.keyring;
        let cipher = k.session_cipher(k.active, spec.topic_id, spec.partition, &salt)?;
        Ok((salt, cipher))
    }

    /// Seals a validated plaintext batch that will be appended at `base_offset`; the result
    /// has its base offset set and a valid CRC.
    pub fn seal(&mut self, plain: &[u8], base_offset: u64) -> Result<Bytes> {
        let h = BatchHeader::parse(plain)?;
        if h.flags & flags::ENCRYPTED != 0 {
            return Err(Error::InvalidArgument(
                "batch is already encrypted; this topic is encrypted by the broker".into(),
            ));
        }
        if self.last_base.is_some_and(|last| base_offset <= last) {
            // Offsets rewound (a repaired partition): never reuse a nonce under this key.
            (self.salt, self.cipher) = Self::session(&self.spec)?;
        }
        self.last_base = Some(base_offset);
        let n = h.body_length as usize;
        let body = HEADER_BYTES + SEAL_OVERHEAD_BYTES + n;
        let mut out = BytesMut::zeroed(padded(body));
        out[..HEADER_BYTES].copy_from_slice(&plain[..HEADER_BYTES]);
        out[0..8].copy_from_slice(&base_offset.to_le_bytes());
        let len = out.len() as u32;
        out[8..12].copy_from_slice(&len.to_le_bytes());
        out[19] |= flags::ENCRYPTED;
        out[24..28].copy_from_slice(&((n + SEAL_OVERHEAD_BYTES) as u32).to_le_bytes());
        out[28..32].copy_from_slice(&self.spec.keyring.active.to_le_bytes());
        out[HEADER_BYTES..HEADER_BYTES + SALT_BYTES].copy_from_slice(&self.salt);
        let ct = HEADER_BYTES + SALT_BYTES;
        out[ct..ct + n].copy_from_slice(&plain[HEADER_BYTES..HEADER_BYTES + n]);
        let aad: [u8; 48] = out[AAD]
            .try_into()
            .map_err(|_| Error::Runtime("aad size".into()))?;
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(base_offset), &aad, &mut out[ct..ct + n])
            .map_err(|_| Error::Runtime("encryption failed".into()))?;
        out[ct + n..ct + n + TAG_BYTES].copy_from_slice(&tag);
        let crc = batch::compute_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(text: &str) -> Arc<Keyring> {
        Arc::new(Keyring::parse(text).expect("keyring"))
    }

    const K1: &str = r#"{"active": 1, "keys": {"1": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}}"#;
    const K1_OTHER: &str = r#"{"active": 1, "keys": {"1": "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}}"#;

    fn spec(k: &Arc<Keyring>, partition: u32) -> TopicEncryption {
        TopicEncryption {
            keyring: k.clone(),
            topic_id: 7,
            partition,
        }
    }

    #[test]
    fn seal_then_open_gives_back_the_batch_and_hides_it() {
        let k = keyring(K1);
        let plain = batch::batch_of_values([b"top secret value".to_vec(), b"another".to_vec()])
            .expect("batch");
        let mut sealer = Sealer::new(spec(&k, 0)).expect("sealer");
        let sealed = sealer.seal(&plain, 42).expect("seal");
        assert!(
            batch::check_crc(&sealed).is_ok(),
            "CRC covers the ciphertext"
        );
        assert!(
            !sealed.windows(10).any(|w| w == b"top secret"),
            "plaintext leaked"
        );
        let h = BatchHeader::parse(&sealed).expect("header");
        assert_eq!((h.key_id, h.base_offset), (1, 42));
        let opened = k.open(&sealed, 7, 0).expect("open");
        let mut want = BytesMut::from(&plain[..]);
        batch::set_base_offset(&mut want, 42);
        assert_eq!(&opened[..], &want[..]);
        let (_, records) = batch::decode(&opened).expect("decode");
        assert_eq!(records[0].value, b"top secret value");
        // The chunk form, mixed with a plain batch.
        let mut chunk = BytesMut::from(&sealed[..]);
        chunk.extend_from_slice(&plain);
        let both = k.open_chunk(&chunk.freeze(), 7, 0).expect("chunk");
        assert_eq!(both.len(), opened.len() + plain.len());
    }

    #[test]
    fn wrong_key_moved_or_tampered_batches_fail_to_open() {
        let k = keyring(K1);
        let plain = batch::batch_of_values([b"x".to_vec()]).expect("batch");
        let sealed = Sealer::new(spec(&k, 3))
            .expect("sealer")
            .seal(&plain, 5)
            .expect("seal");
        assert!(keyring(K1_OTHER).open(&sealed, 7, 3).is_err(), "wrong key");
        assert!(k.open(&sealed, 7, 4).is_err(), "other partition");
        assert!(k.open(&sealed, 8, 3).is_err(), "other topic");
        let mut moved = BytesMut::from(&sealed[..]);
        batch::set_base_offset(&mut moved, 6);
        assert!(k.open(&moved, 7, 3).is_err(), "other offset");
        let mut flipped = BytesMut::from(&sealed[..]);
        flipped[HEADER_BYTES + SALT_BYTES] ^= 1;
        assert!(k.open(&flipped, 7, 3).is_err(), "tampered body");
        let mut header = BytesMut::from(&sealed[..]);
        header[40] ^= 1;
        assert!(k.open(&header, 7, 3).is_err(), "tampered timestamp");
        let rotated = keyring(
            r#"{"active": 2, "keys": {"2": "1111111111111111111111111111111111111111111111111111111111111111"}}"#,
        );
        let e = rotated.open(&sealed, 7, 3).expect_err("missing key id");
        assert!(e.to_string().contains("key 1"), "{e}");
    }

    #[test]
    fn rewound_offsets_get_a_fresh_session() {
        let k = keyring(K1);
        let plain = batch::batch_of_values([b"x".to_vec()]).expect("batch");
        let mut s = Sealer::new(spec(&k, 0)).expect("sealer");
        let a = s.seal(&plain, 10).expect("a");
        let b = s.seal(&plain, 10).expect("b");
        assert_ne!(
            a[HEADER_BYTES..HEADER_BYTES + SALT_BYTES],
            b[HEADER_BYTES..HEADER_BYTES + SALT_BYTES]
        );
        assert!(k.open(&a, 7, 0).is_ok() && k.open(&b, 7, 0).is_ok());
        let already = s.seal(&a, 11);
        assert!(already.is_err(), "double encryption refused");
    }

    #[test]
    fn key_files_are_checked() {
        assert!(Keyring::parse(r#"{"active": 2, "keys": {"1": "00"}}"#).is_err());
        assert!(Keyring::parse(r#"{"active": 0, "keys": {"0": "0000000000000000000000000000000000000000000000000000000000000000"}}"#).is_err());
        assert!(Keyring::parse(K1).is_ok());
        let text = Keyring::generate_file_text(3).expect("generate");
        assert_eq!(Keyring::parse(&text).expect("parse").active_id(), 3);
    }
}
