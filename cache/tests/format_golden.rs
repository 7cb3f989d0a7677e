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
fn a_multi_block_chunk_has_a_tag_per_block_and_a_distinct_nonce_per_block() {
    let key = ChunkKey::new("object-1", "etag-1", 2);
    let plain = vec![0u8; 2 * cache::format::BLOCK + 10];
    let file = cache::format::seal_with_nonce(&cipher(), &key, &plain, [0; 12]);
    assert_eq!(
        file.len() as u64,
        cache::format::sealed_len(plain.len() as u64)
    );
    assert_eq!(file.len(), 28 + plain.len() + 3 * 16);
    // Same plaintext in blocks 0 and 1: different ciphertext (per-block nonces).
    let b = cache::format::BLOCK;
    assert_ne!(file[28..28 + 32], file[28 + b + 16..28 + b + 16 + 32]);
    assert_eq!(
        &cache::format::open(&cipher(), &key, file).unwrap()[..],
        &plain[..]
    );
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

/// "SOXC" | v2 | flags 0 | len 16 | nonce base 01..0c | block 0: ciphertext (16) | tag (16).
const GOLDEN_CHUNK: &str = "534f58430200000010000000000000000102030405060708090a0b0ced5caa4063f1f5b5e98782402e68fefbdcebcd00ba5e8042919f2a8a70be9c12";
const GOLDEN_NAME: &str = "ChunkName(78fc5218d13e413fb02a357f3c363891)";
/// "SOXI" | v1 | reserved | count 2 | two names | CRC32C.
const GOLDEN_INDEX: &str = "534f5849010000000200000000000000f9da5de72a8cfd75322c0efd6f11c4745c023844af8f54f39d065cc6d33dadf1903b7eeb";
