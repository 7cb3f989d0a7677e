//! Property test: random puts, gets, pins, unpins, uploads, removals and restarts, checked after
//! every step against a model: usage never exceeds the limit (counted and measured on disk), no
//! pinned or dirty chunk is ever lost or changed, and a clean chunk is either the right bytes or a
//! miss.

mod common;

use std::collections::HashMap;

use cache::{CacheError, ChunkKey, ChunkState, PutKind, PutOutcome};
use common::*;
use proptest::prelude::*;

const LIMIT: u64 = 1 << 20;
const KEYS: u64 = 12;

#[derive(Clone, Debug)]
enum Op {
    Put { k: u64, len: usize, kind: PutKind },
    Get { k: u64 },
    Pin { k: u64 },
    Unpin { k: u64 },
    MarkClean { k: u64 },
    Remove { k: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(PutKind::Clean),
        Just(PutKind::Pinned),
        Just(PutKind::Dirty)
    ];
    prop_oneof![
        6 => (0..KEYS, 0usize..150_000, kind).prop_map(|(k, len, kind)| Op::Put { k, len, kind }),
        4 => (0..KEYS).prop_map(|k| Op::Get { k }),
        1 => (0..KEYS).prop_map(|k| Op::Pin { k }),
        1 => (0..KEYS).prop_map(|k| Op::Unpin { k }),
        2 => (0..KEYS).prop_map(|k| Op::MarkClean { k }),
        1 => (0..KEYS).prop_map(|k| Op::Remove { k }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Model {
    seed: u64,
    len: usize,
    dirty: bool,
    pinned: bool,
}

fn key(k: u64) -> ChunkKey {
    ChunkKey::new(format!("object-{k}"), "v1", k)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    let mut c = Some(open(d.path(), LIMIT));
    // Bytes of an empty cache (format, key, lock, directories), plus block rounding slack.
    let empty = c.as_ref().unwrap().usage().used_bytes + 16 * 1024;
    let mut model: HashMap<u64, Model> = HashMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let cache = c.as_ref().unwrap();
        match op {
            Op::Put { k, len, kind } => {
                let seed = step as u64 * 1000 + k;
                let before = cache.usage();
                match cache.put(&key(k), &data(seed, len), kind) {
                    Ok(PutOutcome::Stored) => {
                        let pinned =
                            kind == PutKind::Pinned || model.get(&k).is_some_and(|m| m.pinned);
                        prop_assert!(
                            kind == PutKind::Dirty || !model.get(&k).is_some_and(|m| m.dirty)
                        );
                        model.insert(
                            k,
                            Model {
                                seed,
                                len,
                                dirty: kind == PutKind::Dirty,
                                pinned,
                            },
                        );
                    }
                    Ok(PutOutcome::KeptDirty) => {
                        let m = model.get_mut(&k);
                        prop_assert!(
                            m.as_ref().is_some_and(|m| m.dirty),
                            "KeptDirty without dirty data"
                        );
                        if kind == PutKind::Pinned {
                            if let Some(m) = m {
                                m.pinned = true;
                            }
                        }
                    }
                    Ok(PutOutcome::SkippedUnhealthy) => {
                        prop_assert!(false, "healthy disk skipped a write")
                    }
                    Err(CacheError::NoRoom { .. }) => {
                        // Only when pinned bytes alone leave no room.
                        prop_assert!(
                            before.pinned_bytes + len as u64 + 4096 + 44 + empty > LIMIT,
                            "NoRoom with pinned {} + {len} well under {LIMIT}",
                            before.pinned_bytes
                        );
                    }
                    Err(e) => prop_assert!(false, "put failed: {e}"),
                }
            }
            Op::Get { k } => {
                let _ = cache.get(&key(k)).unwrap();
            }
            Op::Pin { k } => match cache.pin(&key(k)) {
                Ok(()) => {
                    if let Some(m) = model.get_mut(&k) {
                        m.pinned = true;
                    }
                }
                Err(CacheError::NotCached) => {
                    prop_assert!(!model.get(&k).is_some_and(|m| m.dirty || m.pinned));
                    model.remove(&k);
                }
                Err(e) => prop_assert!(false, "pin failed: {e}"),
            },
            Op::Unpin { k } => match cache.unpin(&key(k)) {
                Ok(()) => {
                    if let Some(m) = model.get_mut(&k) {
                        m.pinned = false;
                    }
                }
                Err(CacheError::NotCached) => {
                    prop_assert!(!model.get(&k).is_some_and(|m| m.dirty || m.pinned));
                    model.remove(&k);
                }
                Err(e) => prop_assert!(false, "unpin failed: {e}"),
            },
            Op::MarkClean { k } => match cache.mark_clean(&key(k)) {
                Ok(()) => {
                    if let Some(m) = model.get_mut(&k) {
                        m.dirty = false;
                    }
                }
                Err(CacheError::NotCached) => {
                    prop_assert!(!model.get(&k).is_some_and(|m| m.dirty || m.pinned));
                    model.remove(&k);
                }
                Err(e) => prop_assert!(false, "mark_clean failed: {e}"),
            },
            Op::Remove { k } => {
                cache.remove(&key(k)).unwrap();
                model.remove(&k);
            }
            Op::Reopen => {
                drop(c.take());
                c = Some(open(d.path(), LIMIT));
            }
        }
        let cache = c.as_ref().unwrap();
        let used = cache.usage().used_bytes;
        prop_assert!(used <= LIMIT, "step {step}: counted {used} > limit");
        let du = disk_usage(d.path());
        prop_assert!(du <= used, "step {step}: on disk {du} > counted {used}");
        let mut gone = Vec::new();
        for (&k, m) in &model {
            let want = ChunkState::from_flags(m.dirty, m.pinned);
            match cache.state(&key(k)) {
                Some(s) => prop_assert_eq!(s, want, "step {}: state of {}", step, k),
                None => {
                    prop_assert!(
                        !(m.dirty || m.pinned),
                        "step {step}: pinned/dirty chunk {k} lost"
                    );
                    gone.push(k);
                    continue;
                }
            }
            let got = cache.get(&key(k)).unwrap();
            prop_assert_eq!(
                got.as_deref(),
                Some(&data(m.seed, m.len)[..]),
                "step {}: bytes of {}",
                step,
                k
            );
        }
        for k in gone {
            model.remove(&k);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn usage_stays_bounded_and_pinned_chunks_survive(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn filling_with_dirty_data_then_reopening_and_uploading() {
    let mut ops = Vec::new();
    for k in 0..KEYS {
        ops.push(Op::Put {
            k,
            len: 140_000,
            kind: PutKind::Dirty,
        });
    }
    ops.push(Op::Reopen);
    for k in 0..KEYS {
        ops.push(Op::MarkClean { k });
        ops.push(Op::Put {
            k: (k + 1) % KEYS,
            len: 100_000,
            kind: PutKind::Clean,
        });
    }
    run(ops).unwrap();
}
