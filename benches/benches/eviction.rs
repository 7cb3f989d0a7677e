//! Hit ratios of the eviction policies on cache-like traces (simulation over the policy trait,
//! unit-size chunks; no I/O). Prints a table; run with
//! `cargo bench -p syncoxide-benches --bench eviction`.
//!
//! Traces: a Zipf-like skew (many programs re-reading a few files), a hot set interrupted by
//! large sequential scans (a backup or indexer reading everything once, USERS.md pain 14), and
//! a loop slightly larger than the cache (LRU's worst case).

use std::collections::HashSet;

use cache::evict::{EvictionPolicy, Lru, Sieve};
use cache::ChunkName;

fn name(i: u64) -> ChunkName {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_le_bytes());
    ChunkName::from_bytes(b)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Approximate Zipf(s) over n items by inverse transform of the continuous power law.
fn zipf(rng: &mut Rng, n: u64, s: f64) -> u64 {
    let u = rng.unit();
    let x = ((n as f64).powf(1.0 - s) * u + (1.0 - u)).powf(1.0 / (1.0 - s));
    (x as u64).saturating_sub(1).min(n - 1)
}

fn simulate(policy: &mut dyn EvictionPolicy, capacity: usize, trace: &[u64]) -> f64 {
    let mut present = HashSet::new();
    let mut hits = 0;
    for &i in trace {
        let n = name(i);
        if present.contains(&n) {
            hits += 1;
            policy.touch(&n);
        } else {
            if present.len() == capacity {
                let v = policy.victim().expect("a victim");
                present.remove(&v);
            }
            present.insert(n);
            policy.insert(n);
        }
    }
    hits as f64 / trace.len() as f64
}

fn main() {
    let cap = 1000;
    let mut rng = Rng(0x5eed);
    let zipf_trace: Vec<u64> = (0..200_000).map(|_| zipf(&mut rng, 20_000, 0.9)).collect();
    let mut scan_trace = Vec::new();
    let mut scan_next = 1_000_000u64;
    for round in 0..100 {
        for _ in 0..2000 {
            scan_trace.push(zipf(&mut rng, 800, 0.8));
        }
        if round % 5 == 0 {
            for _ in 0..3000 {
                scan_trace.push(scan_next);
                scan_next += 1;
            }
        }
    }
    let loop_trace: Vec<u64> = (0..100_000).map(|i| i % 1100).collect();
    println!("| trace (cache {cap} chunks) | LRU hit ratio | SIEVE hit ratio |");
    println!("|---|---|---|");
    for (label, trace) in [
        ("zipf 0.9 over 20k chunks", &zipf_trace),
        ("hot set + sequential scans", &scan_trace),
        ("loop over 1.1x the cache", &loop_trace),
    ] {
        let lru = simulate(&mut Lru::default(), cap, trace);
        let sieve = simulate(&mut Sieve::default(), cap, trace);
        println!("| {label} | {:.1}% | {:.1}% |", lru * 100.0, sieve * 100.0);
    }
}
