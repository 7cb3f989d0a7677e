//! Get and put of 64 KiB and 1 MiB chunks through the whole cache (keyed name, file I/O, AEAD,
//! accounting). The cache lives under /var/tmp (a real disk, like a user's cache); a warm get reads
//! from the page cache, so it measures what a warm FUSE read costs on top of the kernel.
//! Goal (issue 2): a cached 1 MiB chunk read and decrypted at >= 2 GB/s on one core.

use std::time::Duration;

use cache::{CacheConfig, CacheLimit, ChunkCache, ChunkKey, KdfParams, Passphrase, PutKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [(usize, &str); 2] = [(64 << 10, "64KiB"), (1 << 20, "1MiB")];
const KEYS: u64 = 32;

fn open() -> (tempfile::TempDir, ChunkCache) {
    let d = tempfile::Builder::new()
        .prefix("syncoxide-bench-")
        .tempdir_in("/var/tmp")
        .expect("a temporary directory under /var/tmp");
    let c = ChunkCache::open(
        CacheConfig::new(d.path().join("cache"), CacheLimit::bytes(256 << 20)),
        &Passphrase::new("bench", KdfParams::FAST_INSECURE),
    )
    .expect("open the cache");
    (d, c)
}

fn key(i: u64) -> ChunkKey {
    ChunkKey::new("/bench/some/file.bin", "etag-0123456789abcdef", i)
}

fn bench(c: &mut Criterion) {
    let (_d, cache) = open();
    let mut g = c.benchmark_group("cache");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for (size, label) in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        for i in 0..KEYS {
            cache.put(&key(i), &data, PutKind::Clean).expect("put");
        }
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("get_warm", label), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let got = cache.get(&key(i)).expect("get").expect("hit");
                assert_eq!(got.len(), size);
                got
            })
        });
        // New keys, as after a miss; the cache fills and evicts in steady state (limit 256 MiB).
        let mut n = 1u64 << 32;
        g.bench_function(BenchmarkId::new("put_clean_new", label), |b| {
            b.iter(|| {
                n += 1;
                cache.put(&key(n), &data, PutKind::Clean).expect("put")
            })
        });
        g.bench_function(BenchmarkId::new("put_clean_replace", label), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                cache.put(&key(i), &data, PutKind::Clean).expect("put")
            })
        });
        g.bench_function(BenchmarkId::new("put_dirty_fsync", label), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                cache
                    .put(&key(1000 + i), &data, PutKind::Dirty)
                    .expect("put")
            })
        });
        for i in 0..KEYS {
            cache.remove(&key(1000 + i)).expect("remove");
        }
        let cipher = cache::crypto::ChunkCipher::new(&cache::DataKey::from_bytes([9; 32]));
        let sealed = cache::format::seal(&cipher, &key(0), &data);
        g.bench_function(BenchmarkId::new("open_only", label), |b| {
            b.iter(|| cache::format::open(&cipher, &key(0), sealed.clone()).expect("open"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
