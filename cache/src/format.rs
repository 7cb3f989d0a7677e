//! The chunk file format, version 1. Every byte of a chunk file is authenticated.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SOXC"
//!      4     2  format version (u16 LE) = 1
//!      6     2  flags (u16 LE), 0; reserved
//!      8     8  plaintext length (u64 LE)
//!     16    12  nonce (random per write)
//!     28     n  ciphertext (AES-256-GCM), n = plaintext length
//!   28+n    16  GCM tag
//! ```
//!
//! Associated data: the 16 header bytes followed by the encoded [`ChunkKey`]
//! (`u32 len | object id | u32 len | version | u64 index`). A chunk edited, truncated, swapped
//! with another, moved to another key or replayed from an older version fails to open.
//! `docs/CACHE_FORMAT.md` documents this; `tests/format_golden.rs` pins the bytes.

use bytes::Bytes;

use crate::crypto::cipher::{random_nonce, ChunkCipher, NONCE_LEN, TAG_LEN};
use crate::key::ChunkKey;

/// First bytes of every chunk file.
pub const MAGIC: [u8; 4] = *b"SOXC";
/// Version of the chunk file format; bump it on any change of the bytes written.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the clear header.
pub const HEADER_LEN: usize = 16;
/// Bytes before the ciphertext.
pub const PREFIX_LEN: usize = HEADER_LEN + NONCE_LEN;
/// Bytes a chunk file has beyond its plaintext.
pub const OVERHEAD: usize = PREFIX_LEN + TAG_LEN;

fn header(plaintext_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..16].copy_from_slice(&(plaintext_len as u64).to_le_bytes());
    h
}

fn aad(header: &[u8], key: &ChunkKey) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + 24 + key.object_id.as_bytes().len());
    a.extend_from_slice(header);
    key.encode_into(&mut a);
    a
}

/// Encrypts `plaintext` stored under `key` into the bytes of a chunk file.
pub fn seal(cipher: &ChunkCipher, key: &ChunkKey, plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(cipher, key, plaintext, random_nonce())
}

/// [`seal`] with a given nonce; only for golden tests, a nonce must never be reused.
#[doc(hidden)]
pub fn seal_with_nonce(
    cipher: &ChunkCipher,
    key: &ChunkKey,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let h = header(plaintext.len());
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&h);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher.seal_in_place(nonce, &aad(&h, key), &mut out[PREFIX_LEN..]);
    out.extend_from_slice(&tag);
    out
}

/// Verifies and decrypts the bytes of a chunk file read for `key`. On success the plaintext is a
/// slice of the same buffer (no copy). The error names what failed; bad bytes are never returned.
pub fn open(cipher: &ChunkCipher, key: &ChunkKey, file: Vec<u8>) -> Result<Bytes, &'static str> {
    if file.len() < OVERHEAD {
        return Err("file shorter than a chunk header");
    }
    if file[0..4] != MAGIC {
        return Err("bad magic");
    }
    let version = u16::from_le_bytes([file[4], file[5]]);
    if version != FORMAT_VERSION {
        return Err("unknown chunk format version");
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&file[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len != (file.len() - OVERHEAD) as u64 {
        return Err("length does not match the header (truncated or extended)");
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&file[HEADER_LEN..PREFIX_LEN]);
    let aad = aad(&file[..HEADER_LEN], key);
    let mut file = file;
    match cipher.open_in_place(nonce, &aad, &mut file[PREFIX_LEN..]) {
        Some(n) => Ok(Bytes::from(file).slice(PREFIX_LEN..PREFIX_LEN + n)),
        None => Err("authentication failed (edited, swapped, moved or stale chunk)"),
    }
}
