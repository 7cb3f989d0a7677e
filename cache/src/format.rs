//! The chunk file format, version 2: a chunk is sealed in blocks of 64 KiB, each with its own
//! AES-256-GCM tag, so that a small read authenticates and decrypts only the blocks it touches
//! (a 4 KiB random read decrypts 64 KiB, not the whole chunk). Every byte is authenticated.
//!
//! ```text
//! offset            size   field
//!      0               4   magic "SOXC"
//!      4               2   format version (u16 LE) = 2
//!      6               2   flags (u16 LE) = 0; reserved
//!      8               8   plaintext length n (u64 LE)
//!     16              12   nonce base (random per write)
//!     28                   blocks b = 0 .. max(1, ceil(n / 65536)) - 1, each:
//!                   ≤64Ki    ciphertext of plaintext bytes [b * 65536, min(n, (b + 1) * 65536))
//!                     16     GCM tag
//! ```
//!
//! Block `b` uses the nonce base with its last four bytes XORed with `b` (LE), and the associated
//! data `header (16 bytes) | encode(key) | u32 b`. The header binds the format version and the
//! length (so truncation, extension and a stale length fail), the key binds the object id,
//! version and chunk index (so a chunk swapped with another, moved to another key or replayed
//! from an older version fails), the block number binds the position (blocks cannot be
//! reordered). An empty chunk has one empty block: its tag still authenticates the header.
//! `docs/CACHE_FORMAT.md` documents this; `tests/format_golden.rs` pins the bytes.

use bytes::Bytes;

use crate::crypto::cipher::{random_nonce, ChunkCipher, NONCE_LEN, TAG_LEN};
use crate::key::ChunkKey;

/// First bytes of every chunk file.
pub const MAGIC: [u8; 4] = *b"SOXC";
/// Version of the chunk file format; bump it on any change of the bytes written.
pub const FORMAT_VERSION: u16 = 2;
/// Bytes of the clear header.
pub const HEADER_LEN: usize = 16;
/// Bytes before the first block.
pub const PREFIX_LEN: usize = HEADER_LEN + NONCE_LEN;
/// Plaintext bytes per authenticated block.
pub const BLOCK: usize = 64 << 10;
/// Bytes of the smallest chunk file (an empty chunk: prefix and one tag).
pub const OVERHEAD: usize = PREFIX_LEN + TAG_LEN;

/// Blocks of a chunk of `len` plaintext bytes.
pub fn block_count(len: u64) -> u64 {
    len.div_ceil(BLOCK as u64).max(1)
}

/// Bytes of the chunk file of a chunk of `len` plaintext bytes.
pub fn sealed_len(len: u64) -> u64 {
    PREFIX_LEN as u64 + len + block_count(len) * TAG_LEN as u64
}

fn header(plaintext_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..16].copy_from_slice(&plaintext_len.to_le_bytes());
    h
}

fn aad_prefix(header: &[u8], key: &ChunkKey) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + 28 + key.object_id.as_bytes().len());
    a.extend_from_slice(header);
    key.encode_into(&mut a);
    a
}

fn block_nonce(base: &[u8; NONCE_LEN], b: u64) -> [u8; NONCE_LEN] {
    let mut n = *base;
    let x = (b as u32).to_le_bytes();
    for i in 0..4 {
        n[8 + i] ^= x[i];
    }
    n
}

/// Encrypts `plaintext` stored under `key` into the bytes of a chunk file.
pub fn seal(cipher: &ChunkCipher, key: &ChunkKey, plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(cipher, key, plaintext, random_nonce())
}

/// [`seal`] with a given nonce base; only for golden tests, a nonce must never be reused.
#[doc(hidden)]
pub fn seal_with_nonce(
    cipher: &ChunkCipher,
    key: &ChunkKey,
    plaintext: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let len = plaintext.len() as u64;
    let h = header(len);
    let mut aad = aad_prefix(&h, key);
    let aad_len = aad.len();
    // Zeroed, then overwritten once (a fresh allocation this large is zero pages anyway).
    let mut out = vec![0u8; sealed_len(len) as usize];
    out[..HEADER_LEN].copy_from_slice(&h);
    out[HEADER_LEN..PREFIX_LEN].copy_from_slice(&nonce);
    let mut at = PREFIX_LEN;
    for b in 0..block_count(len) {
        let from = (b as usize * BLOCK).min(plaintext.len());
        let to = (from + BLOCK).min(plaintext.len());
        aad.truncate(aad_len);
        aad.extend_from_slice(&(b as u32).to_le_bytes());
        let n = to - from;
        let tag = cipher.seal_into(
            block_nonce(&nonce, b),
            &aad,
            &plaintext[from..to],
            &mut out[at..at + n],
        );
        out[at + n..at + n + TAG_LEN].copy_from_slice(&tag);
        at += n + TAG_LEN;
    }
    debug_assert_eq!(at, out.len());
    out
}

/// The clear start of a chunk file, checked against the file's size.
#[derive(Clone, Copy, Debug)]
pub struct Prefix {
    header: [u8; HEADER_LEN],
    nonce: [u8; NONCE_LEN],
    /// Plaintext bytes of the chunk.
    pub len: u64,
}

/// Parses the first [`PREFIX_LEN`] bytes of a chunk file of `file_len` bytes.
pub fn parse_prefix(b: &[u8], file_len: u64) -> Result<Prefix, &'static str> {
    if b.len() < PREFIX_LEN || file_len < OVERHEAD as u64 {
        return Err("file shorter than a chunk header");
    }
    if b[0..4] != MAGIC {
        return Err("bad magic");
    }
    if u16::from_le_bytes([b[4], b[5]]) != FORMAT_VERSION {
        return Err("unknown chunk format version");
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[8..16]);
    let len = u64::from_le_bytes(l);
    if len > file_len || sealed_len(len) != file_len {
        return Err("length does not match the header (truncated or extended)");
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&b[..HEADER_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[HEADER_LEN..PREFIX_LEN]);
    Ok(Prefix { header, nonce, len })
}

/// The blocks covering plaintext bytes `[offset, offset + len)` (clamped to the chunk), and the
/// byte range of the file that holds them.
pub fn block_span(p: &Prefix, offset: u64, len: u64) -> (u64, u64, u64, u64) {
    let end = offset.saturating_add(len).min(p.len);
    let offset = offset.min(end);
    let b0 = offset / BLOCK as u64;
    let b1 = if end > offset {
        (end - 1) / BLOCK as u64
    } else {
        b0
    }
    .min(block_count(p.len) - 1);
    let sealed = (BLOCK + TAG_LEN) as u64;
    let start = PREFIX_LEN as u64 + b0 * sealed;
    let stop = (PREFIX_LEN as u64 + (b1 + 1) * sealed).min(sealed_len(p.len));
    (b0, b1, start, stop)
}

/// Verifies and decrypts blocks `b0..` held in `region` (the file bytes of [`block_span`]),
/// returning their plaintext contiguously.
pub fn open_blocks(
    cipher: &ChunkCipher,
    key: &ChunkKey,
    p: &Prefix,
    b0: u64,
    region: Vec<u8>,
) -> Result<Bytes, &'static str> {
    open_blocks_at(cipher, key, p, b0, region, 0)
}

/// [`open_blocks`] over `buf[start..]`, decrypting in place and closing the gaps of the tags
/// (no other copy).
fn open_blocks_at(
    cipher: &ChunkCipher,
    key: &ChunkKey,
    p: &Prefix,
    b0: u64,
    mut buf: Vec<u8>,
    start: usize,
) -> Result<Bytes, &'static str> {
    let mut aad = aad_prefix(&p.header, key);
    let aad_len = aad.len();
    let mut read = start;
    let mut written = start;
    let mut b = b0;
    while read < buf.len() {
        let plain_len = (p.len - (b * BLOCK as u64).min(p.len)).min(BLOCK as u64) as usize;
        let this = plain_len + TAG_LEN;
        if buf.len() - read < this {
            return Err("block cut short");
        }
        aad.truncate(aad_len);
        aad.extend_from_slice(&(b as u32).to_le_bytes());
        let n = cipher
            .open_in_place(block_nonce(&p.nonce, b), &aad, &mut buf[read..read + this])
            .ok_or("authentication failed (edited, swapped, moved or stale chunk)")?;
        if written != read {
            buf.copy_within(read..read + n, written);
        }
        written += n;
        read += this;
        b += 1;
    }
    Ok(Bytes::from(buf).slice(start..written))
}

/// Verifies and decrypts a whole chunk file read for `key`. The error names what failed; bad
/// bytes are never returned.
pub fn open(cipher: &ChunkCipher, key: &ChunkKey, file: Vec<u8>) -> Result<Bytes, &'static str> {
    let p = parse_prefix(&file, file.len() as u64)?;
    open_blocks_at(cipher, key, &p, 0, file, PREFIX_LEN)
}
