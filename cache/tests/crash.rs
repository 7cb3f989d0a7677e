//! Crash safety of the chunk cache: a child process doing puts, state changes and removals is
//! killed with SIGKILL at a random moment, again and again on the same directory. After each kill
//! the cache must reopen (the lock died with the process), hold every acknowledged dirty and
//! pinned chunk with exactly its acknowledged bytes, serve no wrong bytes and no integrity error,
//! leave `tmp/` empty and count exactly what is on disk.
//!
//! The child is this test binary run again (`--exact crash_child`) with `SYNCOXIDE_CRASH_CHILD_DIR`
//! set. It prints `@@ B <seq> <op> <key> <gen>` before each operation and `@@ A <seq> <result>`
//! once the operation returned, so the parent knows every acknowledged operation and the one that
//! may have been in flight when the child died. The data of a put is a pure function of
//! (key, generation), and every generation is unique (round in the high bits, sequence number in
//! the low bits), so the parent can tell exactly which write a chunk holds.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use cache::{
    CacheConfig, CacheError, CacheLimit, ChunkCache, ChunkKey, ChunkState, KdfParams, Passphrase,
    PutKind, PutOutcome,
};

const ENV_DIR: &str = "SYNCOXIDE_CRASH_CHILD_DIR";
const ENV_ROUND: &str = "SYNCOXIDE_CRASH_CHILD_ROUND";
const PASSPHRASE: &str = "crash test passphrase";
/// Small enough that the clean puts of one round overflow it many times.
const LIMIT: u64 = 4 << 20;
/// Keys the child writes: few enough that the same key is written many times.
const KEYS: usize = 96;
const MAX_LEN: u64 = 300 << 10;
/// The child mark_clean's its oldest dirty key above this many dirty bytes...
const DIRTY_MAX: u64 = 1 << 20;
/// ...and unpins its oldest pinned key above this many pinned (dirty or kept offline) bytes.
const PINNED_MAX: u64 = 3 << 19;
const ROUNDS: u64 = 40;
const MARKER: &str = "@@ ";

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xorshift64*, seeded through splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(splitmix(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(i: usize) -> ChunkKey {
    ChunkKey::new(
        format!("/crash/object-{}", i / 4),
        format!("etag-{}", i % 3),
        (i % 4) as u64,
    )
}

/// Length of the data of generation `gen` of key `i`: 1 B .. 300 KiB, skewed so that tiny,
/// medium and large chunks all occur.
fn len_of(i: usize, gen: u64) -> usize {
    let h = splitmix(gen ^ ((i as u64) << 48) ^ 0x1e57);
    let r = h >> 8;
    let len = match h % 10 {
        0 => 1 + r % 16,
        1 | 2 => 17 + r % 4080,
        3..=6 => 4096 + r % 61440,
        _ => 65536 + r % (MAX_LEN - 65536 + 1),
    };
    len as usize
}

fn data_of(i: usize, gen: u64) -> Vec<u8> {
    let len = len_of(i, gen);
    let mut rng = Rng::new(gen.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn config(dir: &Path) -> CacheConfig {
    CacheConfig::new(dir, CacheLimit::bytes(LIMIT))
}

fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE, KdfParams::FAST_INSECURE)
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// Not a test on its own: returns at once unless run as the child of `kill_9_during_puts`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else {
        return;
    };
    let round: u64 = std::env::var(ENV_ROUND)
        .expect("round")
        .parse()
        .expect("round number");
    run_child(Path::new(&dir), round);
}

fn say(out: &mut impl Write, msg: &str) {
    writeln!(out, "{MARKER}{msg}")
        .and_then(|()| out.flush())
        .expect("write to the parent");
}

fn run_child(dir: &Path, round: u64) -> ! {
    let mut out = std::io::stdout().lock();
    let cache = match ChunkCache::open(config(dir), &passphrase()) {
        Ok(c) => c,
        Err(e) => {
            say(&mut out, &format!("FATAL open: {e}"));
            std::process::exit(3);
        }
    };
    let mut dirty: VecDeque<usize> = VecDeque::new();
    let mut pinned: VecDeque<usize> = VecDeque::new();
    for i in 0..KEYS {
        if let Some(s) = cache.state(&key(i)) {
            if s.is_dirty() {
                dirty.push_back(i);
            }
            if s.is_user_pinned() {
                pinned.push_back(i);
            }
        }
    }
    say(&mut out, "READY");
    let mut rng = Rng::new(round.wrapping_mul(0xC0FF_EE00_D15E_A5E5));
    let mut seq: u64 = 0;
    loop {
        seq += 1;
        let gen = (round << 32) | seq;
        let usage = cache.usage();
        let (op, i) = if usage.dirty_bytes > DIRTY_MAX && !dirty.is_empty() {
            ('M', dirty[0])
        } else if usage.pinned_bytes > PINNED_MAX && !pinned.is_empty() {
            ('U', pinned[0])
        } else {
            let r = rng.below(100);
            let any = rng.below(KEYS as u64) as usize;
            let pick = |q: &VecDeque<usize>, n: u64| {
                if q.is_empty() {
                    any
                } else {
                    q[(n % q.len() as u64) as usize]
                }
            };
            let n = rng.next();
            match r {
                0..=55 => ('C', any),
                56..=83 => ('D', any),
                84..=87 => ('P', any),
                88..=91 => ('M', pick(&dirty, n)),
                92..=94 => ('I', any),
                95..=97 => ('U', pick(&pinned, n)),
                98 => ('R', any),
                _ => ('F', any),
            }
        };
        say(&mut out, &format!("B {seq} {op} {i} {gen}"));
        let k = key(i);
        let unit = |r: cache::Result<()>| match r {
            Ok(()) => "ok".to_string(),
            Err(CacheError::NotCached) => "notcached".to_string(),
            Err(e) => format!("FATAL {e}"),
        };
        let result = match op {
            'C' | 'D' | 'P' => {
                let kind = match op {
                    'C' => PutKind::Clean,
                    'D' => PutKind::Dirty,
                    _ => PutKind::Pinned,
                };
                match cache.put(&k, &data_of(i, gen), kind) {
                    Ok(PutOutcome::Stored) => "stored".to_string(),
                    Ok(PutOutcome::KeptDirty) => "kept".to_string(),
                    Ok(PutOutcome::SkippedUnhealthy) => "FATAL skipped: unhealthy".to_string(),
                    Err(CacheError::NoRoom { .. }) => "noroom".to_string(),
                    Err(e) => format!("FATAL {e}"),
                }
            }
            'M' => unit(cache.mark_clean(&k)),
            'I' => unit(cache.pin(&k)),
            'U' => unit(cache.unpin(&k)),
            'R' => unit(cache.remove(&k)),
            _ => unit(cache.flush_index()),
        };
        if result.starts_with("FATAL") {
            say(&mut out, &format!("A {seq} {result}"));
            std::process::exit(3);
        }
        // The child's own view of what to mark clean or unpin later.
        let st = cache.state(&k);
        dirty.retain(|&j| j != i);
        pinned.retain(|&j| j != i);
        if st.is_some_and(ChunkState::is_dirty) {
            dirty.push_back(i);
        }
        if st.is_some_and(ChunkState::is_user_pinned) {
            pinned.push_back(i);
        }
        say(&mut out, &format!("A {seq} {result}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// Kills the child if the parent panics before killing it.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one child on `dir`, kills it `delay` after it opened the cache, and returns the lines it
/// printed (complete lines only, marker stripped).
fn run_round(dir: &Path, round: u64, delay: Duration) -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV_DIR, dir)
        .env(ENV_ROUND, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                // A line cut by the kill was never acknowledged: ignore it.
                Ok(_) if buf.last() != Some(&b'\n') => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    // libtest may print on the same line before the child's first output.
                    if let Some(p) = line.find(MARKER) {
                        let msg = line[p + MARKER.len()..].trim_end().to_string();
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });

    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let ready = l == "READY";
                lines.push(l);
                if ready {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("round {round}: child not ready in 60 s"),
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.0.wait().expect("wait");
                panic!("round {round}: child exited ({status}) before it was ready: {lines:?}");
            }
        }
    }
    // Not a timing assertion: only where in its work the child gets killed.
    std::thread::sleep(delay);
    guard.0.kill().expect("kill the child");
    let status = guard.0.wait().expect("wait for the child");
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the child must die of SIGKILL, not on its own ({status}); last lines: {:?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    lines
}

/// What the parent knows of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Model {
    /// The generation the key's data must be if present; `None`: the key must be absent.
    gen: Option<u64>,
    dirty: bool,
    pinned: bool,
}

impl Model {
    /// Dirty and kept-offline chunks are never evicted: they must be present.
    fn must_be_present(&self) -> bool {
        self.dirty || self.pinned
    }

    fn apply(&mut self, op: char, gen: u64, result: &str, ctx: &str) {
        let known = |m: &Model| {
            assert!(
                m.gen.is_some(),
                "{ctx}: {op} succeeded on a key the parent knows to be absent ({m:?})"
            )
        };
        let not_cached = |m: &mut Model| {
            assert!(
                !m.must_be_present(),
                "{ctx}: a dirty or pinned chunk was reported not cached ({m:?})"
            );
            *m = Model::default();
        };
        match (op, result) {
            ('C' | 'D' | 'P', "stored") => {
                self.gen = Some(gen);
                self.dirty = op == 'D';
                self.pinned = self.pinned || op == 'P';
            }
            ('C' | 'P', "kept") => {
                assert!(
                    self.dirty,
                    "{ctx}: a clean put was refused as if the chunk were dirty ({self:?})"
                );
                self.pinned = self.pinned || op == 'P';
            }
            ('C' | 'D' | 'P', "noroom") => {}
            ('M' | 'I' | 'U' | 'R', "notcached") => not_cached(self),
            ('M', "ok") => {
                known(self);
                self.dirty = false;
            }
            ('I', "ok") => {
                known(self);
                self.pinned = true;
            }
            ('U', "ok") => {
                known(self);
                self.pinned = false;
            }
            ('R', "ok") => *self = Model::default(),
            ('F', "ok") => {}
            _ => panic!("{ctx}: unexpected result {result:?} of {op}"),
        }
    }

    /// What the key may look like if the in-flight operation `op` did (part of) its work.
    fn outcomes_of(&self, op: char, gen: u64) -> Vec<Model> {
        let mut out = vec![*self];
        let mut push = |result: &str| {
            let mut m = *self;
            m.apply(op, gen, result, "in flight");
            out.push(m);
        };
        match op {
            'C' | 'D' | 'P' => {
                push("stored");
                if self.dirty && op != 'D' {
                    push("kept");
                }
            }
            'M' | 'I' | 'U' if self.gen.is_some() => push("ok"),
            'R' => push("ok"),
            _ => {}
        }
        out
    }
}

/// One operation parsed from the child's lines.
struct Op {
    seq: u64,
    op: char,
    key: usize,
    gen: u64,
}

fn parse_begin(l: &str) -> Op {
    let f: Vec<&str> = l.split_whitespace().collect();
    assert_eq!(f.len(), 5, "bad line {l:?}");
    Op {
        seq: f[1].parse().expect("seq"),
        op: f[2].chars().next().expect("op"),
        key: f[3].parse().expect("key"),
        gen: f[4].parse().expect("gen"),
    }
}

/// Every file and directory under `root` (itself included).
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).expect("stat");
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("list") {
                todo.push(e.expect("entry").path());
            }
        }
        out.push((p, md));
    }
    out
}

/// The file system's fragment size, which the store counts in (`stat -f %S`); `None` if `stat`
/// cannot tell.
fn fragment_size(dir: &Path) -> Option<u64> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S"])
        .arg(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// What the store counts for a file: whole blocks, never less than `du`.
fn charge(len: u64, blocks: u64, bs: u64) -> u64 {
    len.div_ceil(bs).saturating_mul(bs).max(blocks * 512)
}

#[derive(Default, Debug)]
struct Summary {
    ops_acked: u64,
    dirty_acked: u64,
    in_flight: u64,
    in_flight_landed: u64,
    tmp_leftovers: u64,
    twin_files: u64,
    repaired_at_open: u64,
    evicted_seen: u64,
    max_du_at_kill: u64,
    max_used: u64,
    max_chunks: u64,
}

#[test]
fn kill_9_during_puts() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let bs = fragment_size(tmp.path());
    // Create the cache (and its key) before the first child, so that a kill cannot land in the
    // key file's creation.
    drop(ChunkCache::open(config(&dir), &passphrase()).expect("create the cache"));

    let mut rng = Rng::new(0x05EE_D0FC_0A55);
    let mut model = [Model::default(); KEYS];
    let mut sum = Summary::default();
    for round in 1..=ROUNDS {
        let delay = Duration::from_millis(20 + rng.below(281));
        let lines = run_round(&dir, round, delay);
        let ctx = format!("round {round} (killed {delay:?} after ready)");

        // Replay what the child acknowledged; at most one operation was in flight.
        let mut in_flight: Option<Op> = None;
        for l in &lines {
            if l == "READY" {
                continue;
            }
            assert!(!l.contains("FATAL"), "{ctx}: the child failed: {l}");
            if l.starts_with("B ") {
                assert!(in_flight.is_none(), "{ctx}: two operations begun: {l}");
                in_flight = Some(parse_begin(l));
            } else if let Some(rest) = l.strip_prefix("A ") {
                let (seq, result) = rest.split_once(' ').expect("ack line");
                let op = in_flight.take().expect("ack without begin");
                assert_eq!(seq.parse::<u64>().expect("seq"), op.seq, "{ctx}: ack order");
                let at = format!("{ctx}, op {} {} on key {}", op.seq, op.op, op.key);
                model[op.key].apply(op.op, op.gen, result, &at);
                sum.ops_acked += 1;
                if op.op == 'D' && result == "stored" {
                    sum.dirty_acked += 1;
                }
            } else {
                panic!("{ctx}: unexpected line {l:?}");
            }
        }

        // On disk as the kill left it: the directory must never have exceeded the limit.
        let before = walk(&dir);
        let du: u64 = before.iter().map(|(_, m)| m.blocks() * 512).sum();
        assert!(
            du <= LIMIT,
            "{ctx}: the directory occupied {du} bytes at the kill, over the limit {LIMIT}"
        );
        sum.max_du_at_kill = sum.max_du_at_kill.max(du);
        sum.tmp_leftovers += fs::read_dir(dir.join("tmp")).expect("list tmp").count() as u64;
        let mut names: Vec<String> = fs::read_dir(dir.join("chunks"))
            .expect("list chunks")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.split_once('.').map(|(h, _)| h.to_string()))
            .collect();
        let files = names.len();
        names.sort();
        names.dedup();
        sum.twin_files += (files - names.len()) as u64;

        // Reopen: the dead child's lock is gone.
        let cache = match ChunkCache::open(config(&dir), &passphrase()) {
            Ok(c) => c,
            Err(e) => panic!("{ctx}: reopen failed: {e:?}"),
        };
        assert_eq!(
            fs::read_dir(dir.join("tmp")).expect("list tmp").count(),
            0,
            "{ctx}: tmp/ must be empty after open"
        );

        // Accounting against the files.
        let usage = cache.usage();
        let entries = walk(&dir);
        let blocks: u64 = entries.iter().map(|(_, m)| m.blocks() * 512).sum();
        let sizes: u64 = entries
            .iter()
            .filter(|(_, m)| m.is_file())
            .map(|(_, m)| m.len())
            .sum();
        let floor: u64 = entries
            .iter()
            .map(|(_, m)| m.len().max(m.blocks() * 512))
            .sum();
        assert!(
            usage.used_bytes <= LIMIT,
            "{ctx}: used {} > limit {LIMIT}",
            usage.used_bytes
        );
        assert!(
            usage.used_bytes >= blocks && usage.used_bytes >= sizes && usage.used_bytes >= floor,
            "{ctx}: used {} counts less than the files: {blocks} in blocks, {sizes} in sizes",
            usage.used_bytes
        );
        if let Some(bs) = bs {
            let exact: u64 = entries
                .iter()
                .map(|(_, m)| charge(m.len(), m.blocks(), bs))
                .sum();
            assert_eq!(
                usage.used_bytes, exact,
                "{ctx}: used must be exactly what the files and directories occupy"
            );
        }
        let chunk_files: Vec<String> = fs::read_dir(dir.join("chunks"))
            .expect("list chunks")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let suffix_count = |f: &dyn Fn(&str) -> bool| {
            chunk_files
                .iter()
                .filter(|n| n.split_once('.').is_some_and(|(_, s)| f(s)))
                .count() as u64
        };
        assert_eq!(usage.chunks, chunk_files.len() as u64, "{ctx}: chunk count");
        assert_eq!(
            usage.dirty_chunks,
            suffix_count(&|s| s.starts_with('d')),
            "{ctx}: dirty chunk count"
        );
        assert_eq!(
            usage.pinned_chunks,
            suffix_count(&|s| s != "c"),
            "{ctx}: pinned chunk count"
        );

        // Every key against the model (and the in-flight operation, if any).
        let mut present = 0;
        for (i, m) in model.iter_mut().enumerate() {
            let k = key(i);
            let flight = in_flight
                .as_ref()
                .filter(|o| o.key == i && o.op != 'F')
                .map(|o| (o.op, o.gen));
            let candidates = match flight {
                Some((op, gen)) => m.outcomes_of(op, gen),
                None => vec![*m],
            };
            let state = cache.state(&k);
            let got = match cache.get(&k) {
                Ok(g) => g,
                Err(e) => panic!("{ctx}: get of key {i} failed: {e:?} (model {m:?})"),
            };
            let observed = match (&got, state) {
                (None, None) => Model::default(),
                (Some(bytes), Some(s)) => {
                    let gen = candidates
                        .iter()
                        .filter_map(|c| c.gen)
                        .find(|&g| len_of(i, g) == bytes.len() && data_of(i, g) == bytes[..]);
                    let Some(gen) = gen else {
                        panic!(
                            "{ctx}: key {i} holds {} bytes that are none of the generations \
                             it may hold ({candidates:?})",
                            bytes.len()
                        );
                    };
                    present += 1;
                    Model {
                        gen: Some(gen),
                        dirty: s.is_dirty(),
                        pinned: s.is_user_pinned(),
                    }
                }
                (g, s) => panic!(
                    "{ctx}: key {i}: state {s:?} disagrees with get ({:?} bytes)",
                    g.as_ref().map(|b| b.len())
                ),
            };
            let ok = candidates.iter().any(|c| {
                if observed.gen.is_none() {
                    !c.must_be_present()
                } else {
                    *c == observed
                }
            });
            assert!(
                ok,
                "{ctx}: key {i} is {observed:?} ({state:?}); it may only be one of \
                 {candidates:?} (absent only if neither dirty nor pinned)"
            );
            if observed.gen.is_none() && m.gen.is_some() && flight.is_none() {
                sum.evicted_seen += 1;
            }
            if flight.is_some() {
                sum.in_flight += 1;
                if observed != *m {
                    sum.in_flight_landed += 1;
                }
            }
            *m = observed;
        }
        assert_eq!(
            present, usage.chunks,
            "{ctx}: every chunk file must belong to a key (no twin or orphan survives open)"
        );
        let stats = cache.stats();
        assert_eq!(stats.integrity_failures, 0, "{ctx}: integrity failures");
        sum.repaired_at_open += stats.repaired_at_open;
        sum.max_used = sum.max_used.max(usage.used_bytes);
        sum.max_chunks = sum.max_chunks.max(usage.chunks);
        drop(cache);
    }
    eprintln!(
        "kill_9_during_puts: {ROUNDS} rounds in {:?}: {sum:?}",
        started.elapsed()
    );
    assert!(
        sum.dirty_acked > 0,
        "no dirty put was acknowledged: {sum:?}"
    );
    assert!(
        sum.evicted_seen > 0,
        "the limit must be small enough for eviction: {sum:?}"
    );
}

/// Bytes `dir` occupies, counted as the store counts them.
fn exact_usage(dir: &Path) -> u64 {
    let bs = fragment_size(dir).expect("stat -f");
    walk(dir)
        .iter()
        .map(|(_, m)| charge(m.len(), m.blocks(), bs))
        .sum()
}

fn du(dir: &Path) -> u64 {
    walk(dir).iter().map(|(_, m)| m.blocks() * 512).sum()
}

/// A crash in the middle of `flush_index` leaves `index.tmp` next to `index`. The next open
/// counts it; the next flush removes it and must stop counting it.
#[test]
fn index_flush_cut_by_a_crash_is_recovered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    {
        let c = ChunkCache::open(config(&dir), &passphrase()).expect("create");
        for i in 0..8 {
            c.put(&key(i), &data_of(i, 1), PutKind::Clean).expect("put");
        }
    }
    // What a kill during the write of the next snapshot leaves behind.
    fs::write(dir.join("index.tmp"), vec![0x5a; 10_000]).expect("write index.tmp");

    let c = ChunkCache::open(config(&dir), &passphrase()).expect("reopen");
    assert_eq!(
        c.usage().used_bytes,
        exact_usage(&dir),
        "open counts every file"
    );
    c.flush_index().expect("flush_index");
    assert!(
        !dir.join("index.tmp").exists(),
        "the stale index.tmp is replaced"
    );
    // The store may count the chunks directory ahead of its growth (a conservative model), but
    // never the stale index.tmp (12288 bytes here) once it is gone.
    let (used, exact) = (c.usage().used_bytes, exact_usage(&dir));
    assert!(
        used >= exact && used - exact < 12_288,
        "after flush_index, used ({used}) must be what the files occupy ({exact}) plus at most \
         the directory allowance; the stale index.tmp must not be counted any more"
    );
    for i in 0..8 {
        assert_eq!(
            c.get(&key(i)).expect("get").as_deref(),
            Some(&data_of(i, 1)[..])
        );
    }
}

/// A crash can come at any moment, so what is on disk must fit the limit at every moment, the
/// chunks directory included. ext4 turns a directory into an htree (one block becomes three)
/// when its 93rd entry is added; the store must count that growth before it happens.
#[test]
fn disk_usage_never_exceeds_the_limit_as_the_chunks_directory_grows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let limit = 120 * 4096;
    let c = ChunkCache::open(
        CacheConfig::new(&dir, CacheLimit::bytes(limit)),
        &passphrase(),
    )
    .expect("open");
    let mut max_chunks = 0;
    let mut over_limit = None;
    let mut under_counted = None;
    for i in 0..200 {
        c.put(&key(i), &data_of(i, 7)[..1], PutKind::Clean)
            .expect("put");
        let u = c.usage();
        max_chunks = max_chunks.max(u.chunks);
        let on_disk = du(&dir);
        let what = format!(
            "after put {i}: {} chunks occupy {on_disk} bytes on disk; the store counts {} \
             and the limit is {limit}",
            u.chunks, u.used_bytes
        );
        if on_disk > limit && over_limit.is_none() {
            over_limit = Some(what.clone());
        }
        if on_disk > u.used_bytes && under_counted.is_none() {
            under_counted = Some(what);
        }
    }
    assert!(
        max_chunks > 93,
        "the test must grow the directory past one block"
    );
    assert_eq!(over_limit, None, "the cache directory exceeded the limit");
    assert_eq!(
        under_counted, None,
        "the store counted less than the disk holds"
    );
}
