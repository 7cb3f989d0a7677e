//! AES-256-GCM seal-in-place and open-in-place throughput of the three candidate implementations
//! for the chunk cache: aws-lc-rs 1.x, ring 0.17 and RustCrypto's aes-gcm 0.10.
//!
//! Buffers of 64 KiB and 1 MiB (the cache's chunk sizes) are sealed and opened with ~60 bytes of
//! associated data, like the cache's chunk header. Every implementation runs with the CPU features
//! it detects at run time; nothing here assumes `target-cpu=native`, so the figures hold for a
//! portable build. Results and the decision: `benches/AEAD_RESULTS.md`.
//!
//! Run with `cargo bench -j1 -p syncoxide-benches --bench aead`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};

const KEY: [u8; 32] = [0x42; 32];
/// A fixed nonce: reusing it is fine here, since nothing sealed is ever kept.
const NONCE: [u8; 12] = [0x24; 12];
/// Associated data of the size the cache's typically is: the 16-byte chunk header and the encoded
/// chunk key (32 bytes plus the object id and version), see `cache/src/format.rs`.
const AAD: [u8; 60] = [0x5a; 60];
const TAG_LEN: usize = 16;
const SIZES: [(usize, &str); 2] = [(64 * 1024, "64KiB"), (1024 * 1024, "1MiB")];

/// One AES-256-GCM implementation under test, behind a common in-place interface.
trait Aead {
    const NAME: &'static str;
    fn new(key: &[u8; 32]) -> Self;
    /// Encrypts `buf` in place and returns the detached tag.
    fn seal(&self, buf: &mut [u8]) -> [u8; TAG_LEN];
    /// Decrypts `ct_and_tag` (ciphertext followed by the tag) in place; the plaintext length, or
    /// `None` if authentication fails.
    fn open(&self, ct_and_tag: &mut [u8]) -> Option<usize>;
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Aead for AwsLc {
    const NAME: &'static str = "aws-lc-rs";

    fn new(key: &[u8; 32]) -> Self {
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
        AwsLc(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256-GCM key"),
        ))
    }

    fn seal(&self, buf: &mut [u8]) -> [u8; TAG_LEN] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(NONCE), Aad::from(&AAD), buf)
            .expect("seal");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(&self, ct_and_tag: &mut [u8]) -> Option<usize> {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(NONCE),
                Aad::from(&AAD),
                ct_and_tag,
            )
            .ok()
            .map(|p| p.len())
    }
}

struct Ring(ring::aead::LessSafeKey);

impl Aead for Ring {
    const NAME: &'static str = "ring";

    fn new(key: &[u8; 32]) -> Self {
        use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
        Ring(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256-GCM key"),
        ))
    }

    fn seal(&self, buf: &mut [u8]) -> [u8; TAG_LEN] {
        use ring::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(NONCE), Aad::from(&AAD), buf)
            .expect("seal");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(&self, ct_and_tag: &mut [u8]) -> Option<usize> {
        use ring::aead::{Aad, Nonce};
        self.0
            .open_in_place(
                Nonce::assume_unique_for_key(NONCE),
                Aad::from(&AAD),
                ct_and_tag,
            )
            .ok()
            .map(|p| p.len())
    }
}

struct RustCrypto(aes_gcm::Aes256Gcm);

impl Aead for RustCrypto {
    const NAME: &'static str = "aes-gcm";

    fn new(key: &[u8; 32]) -> Self {
        use aes_gcm::KeyInit;
        RustCrypto(aes_gcm::Aes256Gcm::new(key.into()))
    }

    fn seal(&self, buf: &mut [u8]) -> [u8; TAG_LEN] {
        use aes_gcm::AeadInPlace;
        self.0
            .encrypt_in_place_detached(&NONCE.into(), &AAD, buf)
            .expect("seal")
            .into()
    }

    fn open(&self, ct_and_tag: &mut [u8]) -> Option<usize> {
        use aes_gcm::AeadInPlace;
        let split = ct_and_tag.len().checked_sub(TAG_LEN)?;
        let (ct, tag) = ct_and_tag.split_at_mut(split);
        let tag = aes_gcm::Tag::clone_from_slice(tag);
        self.0
            .decrypt_in_place_detached(&NONCE.into(), &AAD, ct, &tag)
            .ok()
            .map(|()| split)
    }
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

/// Ciphertext followed by the tag, as the cache stores a chunk.
fn sealed<A: Aead>(aead: &A, len: usize) -> Vec<u8> {
    let mut buf = plaintext(len);
    let tag = aead.seal(&mut buf);
    buf.extend_from_slice(&tag);
    buf
}

/// Opens `reference` with `aead`, and a forgery of it.
fn check_open<A: Aead>(aead: &A, reference: &[u8], len: usize) {
    let mut buf = reference.to_vec();
    assert_eq!(aead.open(&mut buf), Some(len), "{} failed to open", A::NAME);
    assert_eq!(
        &buf[..len],
        &plaintext(len)[..],
        "{} opened wrongly",
        A::NAME
    );
    let mut forged = reference.to_vec();
    forged[len / 2] ^= 1;
    assert_eq!(aead.open(&mut forged), None, "{} opened a forgery", A::NAME);
}

/// The three implementations must agree byte for byte, or the comparison is meaningless.
fn check_interop() {
    let (aws, ring, rc) = (AwsLc::new(&KEY), Ring::new(&KEY), RustCrypto::new(&KEY));
    for (len, _) in SIZES {
        let reference = sealed(&aws, len);
        assert_eq!(sealed(&ring, len), reference, "ring differs from aws-lc-rs");
        assert_eq!(
            sealed(&rc, len),
            reference,
            "aes-gcm differs from aws-lc-rs"
        );
        check_open(&aws, &reference, len);
        check_open(&ring, &reference, len);
        check_open(&rc, &reference, len);
    }
}

fn bench_seal<A: Aead>(group: &mut BenchmarkGroup<'_, WallTime>, len: usize) {
    let aead = A::new(&KEY);
    let mut buf = plaintext(len);
    group.bench_function(format!("seal/{}", A::NAME), |b| {
        b.iter(|| black_box(aead.seal(black_box(&mut buf))))
    });
}

fn bench_open<A: Aead>(group: &mut BenchmarkGroup<'_, WallTime>, len: usize) {
    let aead = A::new(&KEY);
    let ct = sealed(&aead, len);
    // Opening destroys the ciphertext, so each iteration gets a fresh copy; the copy is made
    // outside the timed section (and leaves the buffer in cache, as a just-read chunk is).
    group.bench_function(format!("open/{}", A::NAME), |b| {
        b.iter_batched_ref(
            || ct.clone(),
            |buf| {
                let n = aead.open(black_box(&mut buf[..]));
                assert_eq!(n, Some(len));
            },
            BatchSize::LargeInput,
        )
    });
}

fn aead(c: &mut Criterion) {
    check_interop();
    for (len, size) in SIZES {
        let mut group = c.benchmark_group(format!("aes256gcm/{size}"));
        group
            .throughput(Throughput::Bytes(len as u64))
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        bench_seal::<AwsLc>(&mut group, len);
        bench_seal::<Ring>(&mut group, len);
        bench_seal::<RustCrypto>(&mut group, len);
        bench_open::<AwsLc>(&mut group, len);
        bench_open::<Ring>(&mut group, len);
        bench_open::<RustCrypto>(&mut group, len);
        group.finish();
    }
}

criterion_group!(benches, aead);
criterion_main!(benches);
