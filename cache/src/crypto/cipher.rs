//! The chunk cipher: AES-256-GCM with a fresh random 96-bit nonce per write, and a keyed hash
//! (HMAC-SHA-256) for file names. Both subkeys are derived from the data key with HKDF-SHA-256
//! under distinct labels, so the name key and the encryption key are independent.
//!
//! The implementation is aws-lc-rs, chosen by measurement (`benches/benches/aead.rs`, figures in
//! `benches/AEAD_RESULTS.md`): on this machine kind it opens a 1 MiB chunk at ~15 GB/s on one
//! core, ~1.4x `ring` and ~10x RustCrypto's `aes-gcm` (portable build), and ~5.5 GB/s even with
//! VAES/AVX-512 masked off.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::{hkdf, hmac};

use super::keys::DataKey;
use crate::key::{ChunkKey, ChunkName};

/// Bytes of the GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag.
pub const TAG_LEN: usize = 16;

const LABEL_AEAD: &[u8] = b"syncoxide cache v1 chunk aead";
const LABEL_NAME: &[u8] = b"syncoxide cache v1 chunk name";

/// Seals and opens chunks, and names them.
pub struct ChunkCipher {
    aead: LessSafeKey,
    name_key: hmac::Key,
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCipher(<redacted>)")
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(data_key: &DataKey, label: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"").extract(data_key.expose());
    let labels = [label];
    // Expanding 32 bytes from SHA-256 HKDF cannot fail (the limit is 255 * 32 bytes).
    if let Ok(okm) = prk.expand(&labels, Len(32)) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

impl ChunkCipher {
    pub fn new(data_key: &DataKey) -> Self {
        let aead_key = derive(data_key, LABEL_AEAD);
        let name_key = derive(data_key, LABEL_NAME);
        // A 32-byte key is always the right length for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, &aead_key[..])
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        ChunkCipher {
            aead: LessSafeKey::new(unbound),
            name_key: hmac::Key::new(hmac::HMAC_SHA256, &name_key[..]),
        }
    }

    /// The on-disk name of `key`.
    pub fn name(&self, key: &ChunkKey) -> ChunkName {
        let mut buf = Vec::with_capacity(32 + key.object_id.as_bytes().len());
        key.encode_into(&mut buf);
        let tag = hmac::sign(&self.name_key, &buf);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        ChunkName(out)
    }

    /// Encrypts `plaintext` into `out` (of the same length) and returns the tag: one pass over
    /// the data, where copying it first and encrypting the copy in place took two.
    pub fn seal_into(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        self.aead
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                plaintext,
                out,
                &[],
                &mut tag,
            )
            .unwrap_or_else(|_| {
                unreachable!("GCM seals any input shorter than 64 GiB into a buffer of its length")
            });
        tag
    }

    /// Decrypts `ct_and_tag` in place; returns the plaintext length, or `None` if authentication
    /// fails (the buffer content is then unspecified and must not be used).
    pub fn open_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ct_and_tag: &mut [u8],
    ) -> Option<usize> {
        self.aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                ct_and_tag,
            )
            .ok()
            .map(|p| p.len())
    }
}

/// A fresh random nonce. GCM with random 96-bit nonces stays within the 2^-32 collision bound for
/// 2^32 writes under one key; a cache rewrites far fewer chunks than that in its life.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n);
    n
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    // The system RNG does not fail on Linux once booted; if it ever does, panicking is the only
    // safe answer (a predictable nonce or key must never be used).
    aws_lc_rs::rand::fill(buf).unwrap_or_else(|_| panic!("the system random generator failed"));
}

/// Seals small records (WAL entries, namespace records) with AES-256-GCM under a subkey of the
/// data key that is distinct per purpose, so nothing else at rest is readable either.
/// Output: `nonce (12) | ciphertext | tag (16)`.
pub struct RecordCipher {
    aead: LessSafeKey,
}

impl std::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordCipher(<redacted>)")
    }
}

impl RecordCipher {
    pub(crate) fn new(data_key: &DataKey, purpose: &str) -> Self {
        let label = format!("syncoxide v1 record {purpose}");
        let key = derive(data_key, label.as_bytes());
        let unbound = UnboundKey::new(&AES_256_GCM, &key[..])
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        RecordCipher {
            aead: LessSafeKey::new(unbound),
        }
    }

    /// For tests of formats built on records: a cipher from a given data key.
    #[doc(hidden)]
    pub fn for_tests(data_key: &DataKey, purpose: &str) -> Self {
        Self::new(data_key, purpose)
    }

    /// Bytes [`RecordCipher::seal`] adds to a plaintext.
    pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

    /// Encrypts `plaintext`, binding `aad` (e.g. the record's position, so records cannot be
    /// reordered or moved).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = random_nonce();
        let mut out = Vec::with_capacity(plaintext.len() + Self::OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .unwrap_or_else(|_| unreachable!("GCM seals any input shorter than 64 GiB"));
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Decrypts what [`RecordCipher::seal`] produced with the same `aad`; `None` if it fails
    /// authentication.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < Self::OVERHEAD {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let n = self
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

/// A keyed hash for names that must be looked up without being stored in clear
/// (HMAC-SHA-256 under a per-purpose subkey).
pub struct NameHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for NameHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameHasher(<redacted>)")
    }
}

impl NameHasher {
    pub(crate) fn new(data_key: &DataKey, purpose: &str) -> Self {
        let label = format!("syncoxide v1 name hash {purpose}");
        let key = derive(data_key, label.as_bytes());
        NameHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key[..]),
        }
    }

    /// 128 bits of HMAC-SHA-256 of `data`.
    pub fn hash(&self, data: &[u8]) -> [u8; 16] {
        let tag = hmac::sign(&self.key, data);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bind_their_aad() {
        let k = DataKey::from_bytes([3; 32]);
        let c = RecordCipher::new(&k, "wal");
        let s = c.seal(b"lsn 1", b"hello");
        assert_eq!(s.len(), 5 + RecordCipher::OVERHEAD);
        assert_eq!(c.open(b"lsn 1", &s).as_deref(), Some(&b"hello"[..]));
        assert_eq!(c.open(b"lsn 2", &s), None);
        assert_eq!(RecordCipher::new(&k, "other").open(b"lsn 1", &s), None);
        let mut t = s.clone();
        t[14] ^= 1;
        assert_eq!(c.open(b"lsn 1", &t), None);
        let h = NameHasher::new(&k, "ns");
        assert_eq!(h.hash(b"a"), h.hash(b"a"));
        assert_ne!(h.hash(b"a"), NameHasher::new(&k, "other").hash(b"a"));
    }
}
