//! Golden bytes of the on-disk formats. If one of these fails, the bytes written changed: bump the
//! format version (format.rs / index.rs / layout.rs), keep reading the old one or document the
//! migration in docs/CACHE_FORMAT.md, then update the expected bytes here.

use cache::crypto::ChunkCipher;
use cache::{ChunkKey, DataKey};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cipher() -> ChunkCipher {
    ChunkCipher::new(&DataKey::from_bytes([7u8; 32]))
}

#[test]
fn chunk_file_bytes_are_stable() {
    let key = ChunkKey::new("object-1", "etag-1", 2);
    let nonce = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let file = cache::format::seal_with_nonce(&cipher(), &key, b"golden plaintext", nonce);
    assert_eq!(hex(&file), GOLDEN_CHUNK);
    let plain = cache::format::open(&cipher(), &key, file).unwrap();
    assert_eq!(&plain[..], b"golden plaintext");
}

#[test]
fn chunk_names_are_stable() {
    let n = cipher().name(&ChunkKey::new("object-1", "etag-1", 2));
    assert_eq!(format!("{n:?}"), GOLDEN_NAME);
}

#[test]
fn index_snapshot_bytes_are_stable() {
    let names = [
        cipher().name(&ChunkKey::new("a", "1", 0)),
        cipher().name(&ChunkKey::new("b", "1", 0)),
    ];
    assert_eq!(hex(&cache::index::encode(&names)), GOLDEN_INDEX);
}

/// "SOXC" | v1 | flags 0 | len 16 | nonce 01..0c | ciphertext (16) | tag (16).
const GOLDEN_CHUNK: &str = "534f58430100000010000000000000000102030405060708090a0b0ced5caa4063f1f5b5e98782402e68fefbacd17fa255e635982e686f2464df8fd6";
const GOLDEN_NAME: &str = "ChunkName(78fc5218d13e413fb02a357f3c363891)";
/// "SOXI" | v1 | reserved | count 2 | two names | CRC32C.
const GOLDEN_INDEX: &str = "534f5849010000000200000000000000f9da5de72a8cfd75322c0efd6f11c4745c023844af8f54f39d065cc6d33dadf1903b7eeb";
