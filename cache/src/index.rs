//! The index snapshot: the eviction order of clean chunks, persisted so that least-recently-used
//! survives a restart. It is an optimisation, never the truth: at open the directory is scanned
//! and the snapshot is checked against it (names without a file are dropped, files the snapshot
//! does not know are added as the most recent, in modification-time order). It holds only keyed
//! chunk names, never an object id or a path.
//!
//! Format v1: `"SOXI" | u16 version | u16 reserved (0) | u64 count | count × 16-byte name |
//! u32 CRC32C of everything before`, little endian.

use crate::key::ChunkName;

pub const FILE_NAME: &str = "index";
const MAGIC: [u8; 4] = *b"SOXI";
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 16;

/// Bytes of a snapshot holding `count` names.
pub fn encoded_len(count: usize) -> usize {
    HEADER_LEN + count * 16 + 4
}

pub fn encode(order: &[ChunkName]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(order.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(order.len() as u64).to_le_bytes());
    for n in order {
        out.extend_from_slice(&n.0);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot; `None` when it is damaged or of another version (it is then ignored and
/// rebuilt: the order falls back to modification times).
pub fn decode(b: &[u8]) -> Option<Vec<ChunkName>> {
    if b.len() < HEADER_LEN + 4 || b[0..4] != MAGIC {
        return None;
    }
    if u16::from_le_bytes([b[4], b[5]]) != FORMAT_VERSION {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let mut cnt = [0u8; 8];
    cnt.copy_from_slice(&b[8..16]);
    let count = usize::try_from(u64::from_le_bytes(cnt)).ok()?;
    if encoded_len(count) != b.len() {
        return None;
    }
    Some(
        body[HEADER_LEN..]
            .chunks_exact(16)
            .map(|c| {
                let mut n = [0u8; 16];
                n.copy_from_slice(c);
                ChunkName(n)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let names: Vec<_> = (0..5u8).map(|i| ChunkName([i; 16])).collect();
        let b = encode(&names);
        assert_eq!(b.len(), encoded_len(5));
        assert_eq!(decode(&b), Some(names));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert_eq!(decode(&c), None, "flip at {i} must be detected");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
    }
}
