//! What a chunk is stored under: [`ChunkKey`], and the keyed file name derived from it.
//!
//! The cache never interprets an object id or a version: both are opaque bytes given by the
//! caller (an inode-independent object id, an ETag or revision). A lookup must present the same
//! version the chunk was stored under, so a newer version can never be answered with older bytes.

use std::fmt;
use std::sync::Arc;

/// Opaque identity of a remote object (stable across renames where the caller can make it so).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(Arc<[u8]>);

/// Opaque version of a remote object as the provider reports it (ETag, revision, size + mtime).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Arc<[u8]>);

macro_rules! opaque_bytes {
    ($t:ident) => {
        impl $t {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }
        impl From<&[u8]> for $t {
            fn from(b: &[u8]) -> Self {
                $t(Arc::from(b))
            }
        }
        impl From<Vec<u8>> for $t {
            fn from(b: Vec<u8>) -> Self {
                $t(Arc::from(b))
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(Arc::from(s.as_bytes()))
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                $t(Arc::from(s.into_bytes()))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match std::str::from_utf8(&self.0) {
                    Ok(s) => write!(f, "{}({s:?})", stringify!($t)),
                    Err(_) => write!(f, "{}({:02x?})", stringify!($t), &self.0[..]),
                }
            }
        }
    };
}
opaque_bytes!(ObjectId);
opaque_bytes!(Version);

/// The key of one cached chunk: chunk number `index` of version `version` of object `object_id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub object_id: ObjectId,
    pub version: Version,
    pub index: u64,
}

impl ChunkKey {
    pub fn new(object_id: impl Into<ObjectId>, version: impl Into<Version>, index: u64) -> Self {
        ChunkKey {
            object_id: object_id.into(),
            version: version.into(),
            index,
        }
    }

    /// Unambiguous encoding of the key, used as keyed-hash input and in the AEAD associated data:
    /// `u32 len | object id | u32 len | version | u64 index`, little endian.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let oid = self.object_id.as_bytes();
        let ver = self.version.as_bytes();
        out.extend_from_slice(&(oid.len() as u32).to_le_bytes());
        out.extend_from_slice(oid);
        out.extend_from_slice(&(ver.len() as u32).to_le_bytes());
        out.extend_from_slice(ver);
        out.extend_from_slice(&self.index.to_le_bytes());
    }
}

/// The on-disk name of a chunk: 128 bits of a keyed hash of its [`ChunkKey`]. Reveals nothing of
/// the object id, version or index without the cache's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkName(pub(crate) [u8; 16]);

impl ChunkName {
    pub(crate) const HEX_LEN: usize = 32;

    /// A name from raw bytes (for simulations of eviction policies and tools).
    pub fn from_bytes(b: [u8; 16]) -> Self {
        ChunkName(b)
    }

    pub(crate) fn to_hex(self) -> String {
        let mut s = String::with_capacity(Self::HEX_LEN);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 0xf) as usize]));
        }
        s
    }

    pub(crate) fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != Self::HEX_LEN {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
        }
        Some(ChunkName(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Debug for ChunkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkName({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let n = ChunkName([0xab; 16]);
        assert_eq!(ChunkName::from_hex(&n.to_hex()), Some(n));
        assert_eq!(ChunkName::from_hex("zz"), None);
        assert_eq!(
            ChunkName::from_hex(&"A".repeat(32)),
            None,
            "upper case is not ours"
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        let mut a = Vec::new();
        ChunkKey::new("ab", "c", 1).encode_into(&mut a);
        let mut b = Vec::new();
        ChunkKey::new("a", "bc", 1).encode_into(&mut b);
        assert_ne!(a, b);
    }
}
