//! Conflicts and faults against a ledger of versions, without FUSE.
//!
//! `model.rs` changes the provider only after a flush, so that the drive must equal an exact
//! model. Here the provider is changed behind the drive's back *while local changes are
//! queued*, interleaved with local writes, overwrites, renames, unlinks, mkdir/rmdir, crashes,
//! clean restarts, flushes under random provider faults (refused connections, timeouts, hung
//! and very slow calls, spurious precondition failures, uploads that happen although they report
//! a timeout, read streams cut in the middle) and cold reads under the same faults. Which side
//! wins a conflict depends on the policy (every one is drawn, the loser kept) and on timing, so
//! the check is what the issue promises, not one exact tree:
//!
//! - **Nothing a user wrote is lost.** A ledger owes every version: each acknowledged local
//!   write (a close that returned Ok) and each version put on the remote. A version is excused
//!   only when it was replaced on purpose: locally, by a write, unlink or rename over it while
//!   the drive showed that version at the name (read through the drive just before); remotely,
//!   by a remote put or remove over it while the provider held it (the memory provider tells,
//!   in the same step, what a change replaced, so no upload slips in between). After every flush
//!   (faults off) each owed version must be on the provider, at a name or in a conflict copy.
//! - **Nothing is made up.** Every file on the provider holds a version that was written (never
//!   a mix), under one of the names of the workload or a conflict copy of one.
//! - **The drive converges.** After the flush, walking the drive shows exactly the provider.
//! - **No call exceeds its deadline**, faults or not: each call of a faulty read, and each step.
//!
//! `PROPTEST_CASES`, `MODEL_STEPS` and `MODEL_PRINT` work as in `model.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_core::provider::faulty::{FaultKind, FaultPlan, FaultSwitch, FaultyProvider, Op};
use fs_core::provider::memory::MemoryProvider;
use fs_core::provider::Provider;
use fs_core::{ConflictLoser, ConflictPolicy, FsError, OpenFlags, RenameFlags, Vfs, VfsConfig};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

mod common;
use common::*;

#[derive(Clone, Debug)]
enum Step {
    /// create with O_TRUNC, write, close.
    Write {
        path: &'static str,
        data: Data,
    },
    /// Open an existing file, write at `offset`, close.
    Overwrite {
        path: &'static str,
        offset: u64,
        data: Data,
    },
    Unlink(&'static str),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Rename {
        from: &'static str,
        to: &'static str,
    },
    /// A change on the provider now, whatever is queued.
    Remote(Change),
    /// A read of the whole file with faults on: the right bytes or an error, in time.
    FaultyRead(&'static str),
    /// A flush with faults on for a while, then faults off and a flush and the checks.
    FaultyFlush,
    /// Faults off, flush and the checks.
    Flush,
    Crash,
    CleanRestart,
}

use Step::*;

/// A multiset of contents.
#[derive(Default, Debug)]
struct Owed(BTreeMap<Vec<u8>, usize>);

impl Owed {
    fn add(&mut self, c: Vec<u8>) {
        *self.0.entry(c).or_default() += 1;
    }

    fn excuse(&mut self, c: &[u8]) {
        if let Some(n) = self.0.get_mut(c) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(c);
            }
        }
    }
}

const FILES: &[&str] = &["f", "g", "a/f", "a/g", "b/f", "a/c/f"];
const DIRS: &[&str] = &["a", "b", "a/c"];

struct Harness {
    dir: tempfile::TempDir,
    cfg: VfsConfig,
    mem: Arc<MemoryProvider>,
    provider: Arc<dyn Provider>,
    switch: FaultSwitch,
    faulty: Arc<FaultyProvider<MemoryProvider>>,
    rt: Option<tokio::runtime::Runtime>,
    vfs: Option<Vfs>,
    owed: Owed,
    /// Every version ever written by either side, with who wrote it (for messages).
    ever: BTreeMap<Vec<u8>, String>,
    /// Each call of a faulty read must return within this.
    call_bound: Duration,
}

/// A step (with faults off) that takes longer than this is a hang.
const STEP_BOUND: Duration = Duration::from_secs(30);
const FLUSH_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Setup {
    policy: ConflictPolicy,
    seed: u64,
    /// Every stat and listing takes this long while faults are on.
    slow: Duration,
    /// Read streams end with an error after this many bytes while faults are on.
    cut_after: u64,
}

fn plan(s: &Setup) -> FaultPlan {
    let mut p = FaultPlan::new(s.seed)
        .fail_rate(Op::Write, 0.15, FaultKind::Unreachable)
        .fail_rate(Op::Write, 0.1, FaultKind::AfterEffect)
        .fail_rate(Op::Write, 0.05, FaultKind::PreconditionFailed)
        .fail_rate(Op::Write, 0.05, FaultKind::TimedOut)
        .hang_rate(Op::Write, 0.02)
        .fail_rate(Op::Rename, 0.15, FaultKind::Unreachable)
        .fail_rate(Op::Rename, 0.1, FaultKind::AfterEffect)
        .fail_rate(Op::Mkdir, 0.15, FaultKind::Unreachable)
        .fail_rate(Op::Rmdir, 0.1, FaultKind::Unreachable)
        .fail_rate(Op::Delete, 0.1, FaultKind::Unreachable)
        .fail_rate(Op::Delete, 0.05, FaultKind::AfterEffect)
        .fail_rate(Op::Stat, 0.1, FaultKind::Unreachable)
        .hang_rate(Op::Stat, 0.02)
        .fail_rate(Op::List, 0.1, FaultKind::TimedOut)
        .hang_rate(Op::List, 0.02)
        .fail_rate(Op::Read, 0.1, FaultKind::Unreachable)
        .hang_rate(Op::Read, 0.05)
        .cut_streams_after(s.cut_after);
    if !s.slow.is_zero() {
        p = p.delay(Op::Stat, s.slow).delay(Op::List, s.slow);
    }
    p.set_enabled(false);
    p
}

impl Harness {
    fn new(setup: &Setup) -> Result<Harness, String> {
        let mem = Arc::new(MemoryProvider::new());
        let plan = plan(setup);
        let switch = plan.switch();
        let faulty = Arc::new(FaultyProvider::new(mem.clone(), plan));
        let cfg = VfsConfig {
            chunk_size: 64 << 10,
            // Commits wait for a flush (renames, unlinks and mkdirs go at once): remote changes
            // land while local ones are queued.
            write_back_delay: Duration::from_secs(3600),
            dir_cache_time: Duration::ZERO,
            attr_timeout: Duration::ZERO,
            poll_interval: Duration::ZERO,
            provider_timeout: Duration::from_secs(1),
            offline_timeout: Duration::from_millis(500),
            conflict: setup.policy,
            conflict_loser: ConflictLoser::Keep,
            ..VfsConfig::default()
        };
        let mut h = Harness {
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            call_bound: cfg.provider_timeout * 2 + Duration::from_secs(2),
            cfg,
            mem,
            provider: faulty.clone(),
            switch,
            faulty,
            rt: None,
            vfs: None,
            owed: Owed::default(),
            ever: BTreeMap::new(),
        };
        h.start()?;
        Ok(h)
    }

    fn start(&mut self) -> Result<(), String> {
        let (rt, vfs) = start_drive(self.dir.path(), &self.cfg, self.provider.clone())?;
        self.rt = Some(rt);
        self.vfs = Some(vfs);
        Ok(())
    }

    fn vfs(&self) -> Vfs {
        self.vfs.clone().expect("running")
    }

    /// Runs `f` on the drive's runtime; a call that does not return within [`STEP_BOUND`] is
    /// a hang, and fails the case.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let rt = self.rt.as_ref().expect("running");
        match rt.block_on(async { tokio::time::timeout(STEP_BOUND, f).await }) {
            Ok(r) => r,
            Err(_) => panic!("a call did not return within {STEP_BOUND:?}"),
        }
    }

    fn wrote(&mut self, c: Vec<u8>, who: String) {
        self.ever.entry(c.clone()).or_insert(who);
        self.owed.add(c);
    }

    /// What the drive shows at `path`, if a file.
    fn view(&self, path: &str) -> Option<Vec<u8>> {
        let vfs = self.vfs();
        self.block_on(async {
            let ino = resolve(&vfs, path).await.ok()?;
            read_all(&vfs, ino).await.ok()
        })
    }

    fn step(&mut self, i: usize, step: &Step) -> Result<(), String> {
        let t0 = Instant::now();
        let r = self.step_now(i, step);
        let took = t0.elapsed();
        if r.is_ok() && took > STEP_BOUND && !matches!(step, Flush | FaultyFlush) {
            return Err(format!("took {took:?}"));
        }
        r
    }

    fn step_now(&mut self, i: usize, step: &Step) -> Result<(), String> {
        match step {
            Crash => return self.crash(),
            CleanRestart => return self.clean_restart(),
            _ => {}
        }
        let vfs = self.vfs();
        match step {
            Write { path, data } => {
                let before = self.view(path);
                let b = data.bytes();
                let r = self.block_on(async {
                    let (parent, name) = resolve_parent(&vfs, path).await?;
                    let flags = OpenFlags {
                        truncate: true,
                        ..W
                    };
                    let (_, o) = vfs.create(parent, name, 0o644, flags).await?;
                    write_and_close(&vfs, o.fh, 0, &b, 1, false).await
                });
                self.after_local(i, path, before, r.map(|()| b))
            }
            Overwrite { path, offset, data } => {
                let before = self.view(path);
                let b = data.bytes();
                let r = self.block_on(async {
                    let ino = resolve(&vfs, path).await?;
                    let o = vfs.open(ino, W).await?;
                    write_and_close(&vfs, o.fh, *offset, &b, 1, false).await
                });
                let want = before.clone().map(|mut x| {
                    let end = *offset as usize + b.len();
                    if x.len() < end {
                        x.resize(end, 0);
                    }
                    x[*offset as usize..end].copy_from_slice(&b);
                    x
                });
                match (r, want) {
                    (Ok(()), Some(w)) => self.after_local(i, path, before, Ok(w)),
                    (Ok(()), None) => Err("an overwrite of no file succeeded".into()),
                    (Err(e), _) => self.after_local(i, path, before, Err(e)),
                }
            }
            Unlink(path) => {
                let before = self.view(path);
                let r = self.block_on(async {
                    let (parent, name) = resolve_parent(&vfs, path).await?;
                    vfs.unlink(parent, name).await
                });
                if r.is_ok() {
                    if let Some(x) = &before {
                        self.owed.excuse(x);
                    }
                }
                self.unchanged_unless(path, before, r.is_ok(), None)
            }
            Mkdir(path) => {
                self.block_on(async {
                    let (parent, name) = resolve_parent(&vfs, path).await?;
                    vfs.mkdir(parent, name, 0o755).await.map(drop)
                })
                .ok();
                Ok(())
            }
            Rmdir(path) => {
                self.block_on(async {
                    let (parent, name) = resolve_parent(&vfs, path).await?;
                    vfs.rmdir(parent, name).await
                })
                .ok();
                Ok(())
            }
            Rename { from, to } => {
                let (moved, replaced) = (self.view(from), self.view(to));
                let r = self.block_on(async {
                    let (p1, n1) = resolve_parent(&vfs, from).await?;
                    let (p2, n2) = resolve_parent(&vfs, to).await?;
                    vfs.rename(p1, n1, p2, n2, RenameFlags::default()).await
                });
                if r.is_ok() {
                    if let (Some(x), true) = (&replaced, from != to) {
                        self.owed.excuse(x);
                    }
                    if moved.is_some() && self.view(to) != moved {
                        return Err(format!(
                            "after renaming {from} to {to} it shows other bytes"
                        ));
                    }
                }
                Ok(())
            }
            Remote(c) => {
                match c {
                    Change::Put { path, data } => {
                        let b = data.bytes();
                        for old in self.mem.put_file_replacing(path, &b) {
                            self.owed.excuse(&old);
                        }
                        self.wrote(b, format!("step {i}: remote put {path}"));
                    }
                    Change::Remove { path } => {
                        for old in self.mem.remove_returning(path) {
                            self.owed.excuse(&old);
                        }
                    }
                    Change::Mkdir { path } => {
                        if !self.mem.snapshot().iter().any(|(k, e)| {
                            (k == path || path.starts_with(&format!("{k}/")))
                                && *e != ModelEntry::Dir
                        }) {
                            self.mem.mkdir_all(path);
                        }
                    }
                }
                Ok(())
            }
            FaultyRead(path) => self.faulty_read(path),
            FaultyFlush => {
                self.switch.set_enabled(true);
                let r = self.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(3),
                        vfs.flush_all(Duration::from_secs(2)),
                    )
                    .await
                });
                drop(r);
                self.flush_and_check()
            }
            Flush => self.flush_and_check(),
            Crash | CleanRestart => unreachable!("handled above"),
        }
    }

    /// kill -9 and start again.
    fn crash(&mut self) -> Result<(), String> {
        drop(self.vfs.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.start()?;
        // Replayed uploads would race with what the next steps read as the base.
        self.flush_and_check()
    }

    fn clean_restart(&mut self) -> Result<(), String> {
        let vfs = self.vfs.take().expect("running");
        let rt = self.rt.take().expect("running");
        let r = rt.block_on(async {
            tokio::time::timeout(FLUSH_DEADLINE, vfs.close(Duration::from_secs(5))).await
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("close failed: {e:?}")),
            Err(_) => return Err("close did not return".into()),
        }
        self.start()?;
        self.flush_and_check()
    }

    /// After a local write to `path` that the drive showed as `before`: on success the old
    /// version was replaced on purpose and the new one is owed; either way the drive must show
    /// what the write made of it (or, on failure, what it showed before).
    fn after_local(
        &mut self,
        i: usize,
        path: &str,
        before: Option<Vec<u8>>,
        r: Result<Vec<u8>, FsError>,
    ) -> Result<(), String> {
        match r {
            Ok(new) => {
                if let Some(x) = &before {
                    self.owed.excuse(x);
                }
                self.wrote(new.clone(), format!("step {i}: local write {path}"));
                self.unchanged_unless(path, before, true, Some(new))
            }
            Err(_) => self.unchanged_unless(path, before, false, None),
        }
    }

    /// The drive shows `want` at `path` if `changed`, else still `before`.
    fn unchanged_unless(
        &self,
        path: &str,
        before: Option<Vec<u8>>,
        changed: bool,
        want: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let now = self.view(path);
        let want = if changed { want } else { before };
        if now != want {
            return Err(format!(
                "{path} shows {} afterwards, want {}",
                describe(now.as_deref(), &self.ever),
                describe(want.as_deref(), &self.ever)
            ));
        }
        Ok(())
    }

    /// A whole-file read with faults on: every call returns within its bound, and what it
    /// returns is an error, the file's bytes (compared with a read with faults off) or, when
    /// the drive could not ask the provider, a whole version it knew.
    fn faulty_read(&mut self, path: &str) -> Result<(), String> {
        let vfs = self.vfs();
        let bound = self.call_bound;
        self.switch.set_enabled(true);
        let got = self.block_on(async {
            let timed = |what: &'static str, d: Duration| {
                move |r: Result<_, tokio::time::error::Elapsed>| {
                    r.map_err(|_| format!("{what} did not return within {d:?}"))
                }
            };
            // One listing per level of the path.
            let lookups = bound * 3;
            let ino = match tokio::time::timeout(lookups, resolve(&vfs, path))
                .await
                .map_err(|_| format!("lookup of {path} did not return within {lookups:?}"))?
            {
                Ok(ino) => ino,
                Err(_) => return Ok(None),
            };
            let o = match timed("open", bound)(tokio::time::timeout(bound, vfs.open(ino, R)).await)?
            {
                Ok(o) => o,
                Err(_) => return Ok(None),
            };
            let mut out = Vec::new();
            let ok = loop {
                let t0 = Instant::now();
                let r = tokio::time::timeout(bound, vfs.read(o.fh, out.len() as u64, 50_000))
                    .await
                    .map_err(|_| format!("a read did not return within {bound:?}"))?;
                if t0.elapsed() > bound {
                    return Err(format!("a read took {:?}", t0.elapsed()));
                }
                match r {
                    Ok(b) if b.is_empty() => break true,
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => break false,
                }
            };
            drop(vfs.release(o.fh).await);
            Ok::<_, String>(ok.then_some(out))
        });
        self.switch.set_enabled(false);
        let got = got?;
        if let Some(g) = got {
            let want = self.view(path);
            // Unreachable, the drive serves the version it knew, which may since have changed
            // remotely: a whole version, never a mix.
            if want.as_ref() != Some(&g) && !self.ever.contains_key(&g) {
                return Err(format!(
                    "a read under faults returned {}, the file is {}",
                    describe(Some(&g), &self.ever),
                    describe(want.as_deref(), &self.ever)
                ));
            }
        }
        Ok(())
    }

    /// Faults off, flush, then: every owed version on the provider, nothing made up, the drive
    /// equal to the provider.
    fn flush_and_check(&mut self) -> Result<(), String> {
        self.switch.set_enabled(false);
        let vfs = self.vfs();
        let r = self.block_on(async {
            tokio::time::timeout(FLUSH_DEADLINE, vfs.flush_all(Duration::from_secs(10))).await
        });
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("flush_all failed: {e:?}{}", self.injected())),
            Err(_) => return Err(format!("flush_all did not return{}", self.injected())),
        }
        let snap = self.mem.snapshot();
        let mut present: BTreeMap<&[u8], usize> = BTreeMap::new();
        for (path, e) in &snap {
            let name = path.rsplit('/').next().unwrap_or(path);
            let base = name.split(".conflict-").next().unwrap_or(name);
            let known_name = FILES
                .iter()
                .chain(DIRS)
                .any(|p| p.rsplit('/').next() == Some(base));
            if !known_name {
                return Err(format!("the provider has {path:?}, a name nobody made"));
            }
            if let ModelEntry::File(b) = e {
                if !self.ever.contains_key(b) {
                    return Err(format!(
                        "the provider has at {path:?} {} bytes that nobody wrote{}",
                        b.len(),
                        self.injected()
                    ));
                }
                *present.entry(b).or_default() += 1;
            }
        }
        for (c, n) in &self.owed.0 {
            let have = present.get(c.as_slice()).copied().unwrap_or(0);
            if have < *n {
                return Err(format!(
                    "lost: {} (owed {n}, on the provider {have}); provider: {}{}",
                    describe(Some(c), &self.ever),
                    show_tree(&snap, &self.ever),
                    self.injected()
                ));
            }
        }
        // The drive shows what the provider has (conflict copies show on the next listing).
        let mut last = String::new();
        for _ in 0..50 {
            let got = self.block_on(async { tokio::time::timeout(STEP_BOUND, walk(&vfs)).await });
            match got {
                Ok(Ok(t)) => match diff(&snap, &t) {
                    None => return Ok(()),
                    Some(d) => last = d,
                },
                Ok(Err(e)) => last = e,
                Err(_) => last = "the walk did not return".into(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "after a flush the drive differs from the provider:\n{last}"
        ))
    }

    fn injected(&self) -> String {
        let f = self.faulty.injected();
        if f.is_empty() {
            String::new()
        } else {
            format!("\nfaults injected: {f:?}")
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        drop(self.vfs.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn describe(c: Option<&[u8]>, ever: &BTreeMap<Vec<u8>, String>) -> String {
    match c {
        None => "nothing".into(),
        Some(b) => match ever.get(b) {
            Some(who) => format!("{} bytes from {who}", b.len()),
            None => format!("{} bytes nobody wrote", b.len()),
        },
    }
}

fn show_tree(t: &Tree, ever: &BTreeMap<Vec<u8>, String>) -> String {
    t.iter()
        .map(|(k, e)| match e {
            ModelEntry::File(b) => format!("\n  {k}: {}", describe(Some(b), ever)),
            other => format!("\n  {k}: {}", show(Some(other))),
        })
        .collect()
}

fn run(setup: &Setup, steps: &[Step]) -> Result<(), String> {
    trace_if_asked();
    let print = std::env::var_os("MODEL_PRINT").is_some();
    if print {
        eprintln!("case: {setup:?}\n{steps:?}");
    }
    let mut h = Harness::new(setup)?;
    // Distinct versions: a seed per step.
    for (i, s) in steps.iter().enumerate() {
        if print {
            eprintln!("step {i}: {s:?}");
        }
        h.step(i, s).map_err(|e| format!("step {i} {s:?}: {e}"))?;
    }
    h.flush_and_check().map_err(|e| format!("at the end: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Strategies

fn file() -> impl Strategy<Value = &'static str> {
    prop_oneof![5 => prop::sample::select(FILES), 1 => prop::sample::select(DIRS)]
}

fn dir() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => prop::sample::select(DIRS), 1 => prop::sample::select(FILES)]
}

fn data() -> impl Strategy<Value = Data> {
    let len = prop_oneof![4 => 1..3000usize, 1 => 60_000..140_000usize];
    (len, any::<u8>()).prop_map(|(len, seed)| Data { len, seed })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (file(), data()).prop_map(|(path, data)| Write { path, data }),
        2 => (file(), 0..70_000u64, data()).prop_map(|(path, offset, data)| Overwrite {
            path,
            offset,
            data: Data { len: data.len.min(5000), ..data },
        }),
        2 => file().prop_map(Unlink),
        2 => dir().prop_map(Mkdir),
        1 => dir().prop_map(Rmdir),
        3 => (file(), file()).prop_map(|(from, to)| Rename { from, to }),
        6 => prop_oneof![
            4 => (file(), data()).prop_map(|(path, data)| Change::Put { path, data }),
            2 => file().prop_map(|path| Change::Remove { path }),
            1 => dir().prop_map(|path| Change::Mkdir { path }),
        ]
        .prop_map(Remote),
        2 => file().prop_map(FaultyRead),
        2 => Just(FaultyFlush),
        2 => Just(Flush),
        1 => Just(Crash),
        1 => Just(CleanRestart),
    ]
}

/// Versions must be told apart: no two writes of the same length and seed.
fn distinct(mut steps: Vec<Step>) -> Vec<Step> {
    let mut used = BTreeSet::new();
    for s in &mut steps {
        let d = match s {
            Write { data, .. } | Overwrite { data, .. } => data,
            Remote(Change::Put { data, .. }) => data,
            _ => continue,
        };
        while !used.insert((d.len, d.seed)) {
            d.len += 1;
        }
    }
    steps
}

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn setup() -> impl Strategy<Value = Setup> {
    let policy = prop::sample::select(vec![
        ConflictPolicy::KeepBoth,
        ConflictPolicy::Newer,
        ConflictPolicy::Older,
        ConflictPolicy::Larger,
        ConflictPolicy::Smaller,
        ConflictPolicy::Local,
        ConflictPolicy::Remote,
    ]);
    let slow = prop_oneof![
        3 => Just(Duration::ZERO),
        1 => Just(Duration::from_millis(300)),
        // Longer than the provider deadline: every stat and listing times out.
        1 => Just(Duration::from_secs(3)),
    ];
    (policy, any::<u64>(), slow, 1000..200_000u64).prop_map(|(policy, seed, slow, cut_after)| {
        Setup {
            policy,
            seed,
            slow,
            cut_after,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: env_num("PROPTEST_CASES", 24),
        failure_persistence: None,
        max_shrink_iters: 1000,
        // Shrinking a slow case can take longer than finding it: bounded, so a sweep of seeds
        // reports a failure rather than a timeout.
        max_shrink_time: env_num("PROPTEST_MAX_SHRINK_MS", 180_000),
        rng_seed: match std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()) {
            Some(n) => proptest::test_runner::RngSeed::Fixed(n),
            None => proptest::test_runner::RngSeed::Fixed(0xc0f1_1c75),
        },
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_version_is_lost_whatever_the_interleaving_and_faults(
        setup in setup(),
        steps in prop::collection::vec(step(), 1..=env_num("MODEL_STEPS", 30) as usize)
            .prop_map(distinct),
    ) {
        run(&setup, &steps).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed sequences: the rows of docs/CONFLICTS.md the ledger must hold for every policy.

fn every_policy(steps: &[Step]) {
    for policy in [
        ConflictPolicy::KeepBoth,
        ConflictPolicy::Newer,
        ConflictPolicy::Older,
        ConflictPolicy::Larger,
        ConflictPolicy::Smaller,
        ConflictPolicy::Local,
        ConflictPolicy::Remote,
    ] {
        let setup = Setup {
            policy,
            seed: 1,
            slow: Duration::ZERO,
            cut_after: 1 << 30,
        };
        if let Err(e) = run(&setup, steps) {
            panic!("{policy:?}: {e}");
        }
    }
}

/// Keep-both, no faults: what the regression cases run with.
fn no_faults() -> Setup {
    Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 0,
        slow: Duration::ZERO,
        cut_after: 1000,
    }
}

fn put(path: &'static str, len: usize, seed: u8) -> Step {
    Remote(Change::Put {
        path,
        data: d(len, seed),
    })
}

fn write(path: &'static str, len: usize, seed: u8) -> Step {
    Write {
        path,
        data: d(len, seed),
    }
}

#[test]
fn modify_vs_modify_keeps_both_versions() {
    every_policy(&[
        write("f", 10, 1),
        Flush,
        write("f", 20, 2),
        put("f", 30, 3),
        Flush,
    ]);
}

#[test]
fn local_modify_vs_remote_delete_keeps_the_local_data() {
    every_policy(&[
        write("a/f", 10, 1),
        Flush,
        write("a/f", 20, 2),
        Remote(Change::Remove { path: "a" }),
        Flush,
    ]);
}

#[test]
fn a_crash_between_the_remote_change_and_the_upload_loses_nothing() {
    every_policy(&[
        write("f", 10, 1),
        Flush,
        write("f", 20, 2),
        put("f", 30, 3),
        Crash,
    ]);
}

#[test]
fn uploads_under_faults_lose_nothing() {
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 7,
        slow: Duration::from_millis(300),
        cut_after: 5000,
    };
    let mut steps = Vec::new();
    for k in 0..6u8 {
        steps.push(write(
            FILES[usize::from(k) % FILES.len()],
            2000 + usize::from(k),
            k,
        ));
        steps.push(put(FILES[usize::from(k + 1) % FILES.len()], 3000, k + 100));
        steps.push(FaultyFlush);
        steps.push(FaultyRead(FILES[usize::from(k + 1) % FILES.len()]));
    }
    run(&setup, &steps).unwrap();
}

#[test]
fn the_ledger_sees_a_lost_version() {
    // The check itself: a version dropped behind the drive's back is reported.
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 1,
        slow: Duration::ZERO,
        cut_after: 1 << 30,
    };
    let mut h = Harness::new(&setup).unwrap();
    h.step(0, &write("f", 10, 1)).unwrap();
    h.step(1, &Flush).unwrap();
    h.mem.remove("f");
    let e = h.step(2, &Flush).expect_err("a version vanished");
    assert!(e.contains("lost"), "{e}");
}

#[test]
fn regression_rmdir_in_a_directory_replaced_remotely_by_a_file() {
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 1,
        slow: Duration::ZERO,
        cut_after: 1 << 30,
    };
    run(
        &setup,
        &[
            Mkdir("a"),
            Mkdir("a/c"),
            write("a/c/f", 10, 1),
            put("a", 20, 2),
            Rmdir("a/c"),
        ],
    )
    .unwrap();
}

#[test]
fn an_offline_read_serves_the_version_the_drive_knew() {
    // Found with PROPTEST_RNG_SEED=11 (the check was too strict): unreachable, the drive
    // serves the file it knew, which the remote has since replaced by a directory.
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 0,
        slow: Duration::from_secs(3),
        cut_after: 1000,
    };
    run(
        &setup,
        &[
            put("a/c", 1, 0),
            FaultyFlush,
            put("a/c/f", 2, 0),
            FaultyRead("a/c"),
        ],
    )
    .unwrap();
}

#[test]
fn regression_removing_a_directory_the_remote_replaced_by_a_file_under_faults() {
    // Found with the default seed under load: the queued rmdir of `a` met the file the remote
    // had put there and retried forever (NotADirectory). Timing decides whether the rmdir is
    // still queued when the remote change lands: before the fix, about 1 run in 4 failed.
    use Change::{Mkdir as RMkdir, Put, Remove};
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 17468725010852006626,
        slow: Duration::from_secs(3),
        cut_after: 20632,
    };
    run(
        &setup,
        &[
            Rename {
                from: "b/f",
                to: "a/g",
            },
            FaultyRead("a/c/f"),
            Remote(Put {
                path: "a/c",
                data: d(2231, 27),
            }),
            Rename {
                from: "f",
                to: "a/f",
            },
            Write {
                path: "b/f",
                data: d(539, 116),
            },
            FaultyRead("b/f"),
            Remote(RMkdir { path: "a" }),
            Flush,
            FaultyRead("f"),
            Write {
                path: "a/c/f",
                data: d(774, 251),
            },
            Remote(Remove { path: "a/c" }),
            Write {
                path: "f",
                data: d(1094, 157),
            },
            FaultyRead("a/c/f"),
            Remote(Put {
                path: "b",
                data: d(565, 193),
            }),
            Mkdir("b"),
            Rmdir("a"),
            Overwrite {
                path: "a/c/f",
                offset: 52755,
                data: d(2680, 33),
            },
            Remote(RMkdir { path: "a/c" }),
            Write {
                path: "b/f",
                data: d(352, 82),
            },
            Rename { from: "a", to: "g" },
            Remote(Put {
                path: "a",
                data: d(2213, 231),
            }),
            FaultyFlush,
            Write {
                path: "f",
                data: d(2810, 54),
            },
        ],
    )
    .unwrap();
}

#[test]
fn regression_unlink_of_a_file_never_uploaded_leaves_the_remote_file_at_its_name() {
    // Found with PROPTEST_RNG_SEED=16: the queued delete of a file made and removed here, never
    // uploaded, ran unconditionally and removed the file another machine had put at the name.
    run(
        &no_faults(),
        &[
            Mkdir("b"),
            write("b/f", 1, 0),
            Unlink("b/f"),
            put("b/f", 2, 0),
        ],
    )
    .unwrap();
}

#[test]
fn regression_a_rename_over_a_file_leaves_what_the_remote_put_there_since() {
    // Found with PROPTEST_RNG_SEED=2: `b/f` renamed over the local `f`, whose upload then met a
    // remote `f` and kept both; the queued rename took that remote version for the one it
    // replaced and overwrote it.
    run(
        &no_faults(),
        &[
            write("f", 1, 0),
            put("b/f", 2, 0),
            Rename {
                from: "b/f",
                to: "f",
            },
            put("f", 3, 0),
        ],
    )
    .unwrap();
}

#[test]
fn regression_a_rename_to_a_free_name_leaves_what_the_remote_put_there_since() {
    // The same with nothing at the target here: the remote's new file there is not replaced.
    run(
        &no_faults(),
        &[
            write("a", 1, 0),
            Flush,
            write("g", 1, 0),
            Rename { from: "a", to: "b" },
            put("b", 3, 0),
        ],
    )
    .unwrap();
}

#[test]
fn regression_a_renamed_file_whose_upload_met_a_remote_file_takes_the_remote_one_along() {
    // Found with PROPTEST_RNG_SEED=23: `g`'s upload failed, `g` was renamed over `a/c/f` (a file
    // the remote put there, unseen here), then the remote put a `g` of its own. The upload of
    // `g` kept both and the queued rename moved the remote's `g` along (the table's "local
    // rename vs remote modify"); the drive must then show that file at `a/c/f`, not its own.
    run(
        &no_faults(),
        &[
            write("g", 1, 0),
            FaultyFlush,
            put("a/c/f", 2, 0),
            write("b/f", 2491, 125),
            Rename {
                from: "g",
                to: "a/c/f",
            },
            put("g", 2662, 26),
        ],
    )
    .unwrap();
}

#[test]
fn regression_a_local_file_over_a_directory_the_remote_made_again() {
    // Found with PROPTEST_RNG_SEED=2: the flush after a rename into `a` stayed stuck on "is a
    // directory: /a".
    use Change::{Mkdir as RMkdir, Put};
    let setup = Setup {
        policy: ConflictPolicy::KeepBoth,
        seed: 176641174974016893,
        slow: Duration::from_secs(3),
        cut_after: 93099,
    };
    run(
        &setup,
        &[
            FaultyRead("a/g"),
            CleanRestart,
            Remote(RMkdir { path: "a/c" }),
            write("b/f", 1865, 2),
            Mkdir("a/c"),
            Remote(Put {
                path: "a/c",
                data: d(77828, 192),
            }),
            Remote(Put {
                path: "a",
                data: d(1002, 62),
            }),
            write("a", 1047, 246),
            Remote(Put {
                path: "a/c/f",
                data: d(2812, 182),
            }),
            FaultyRead("a/g"),
            FaultyFlush,
            Rename {
                from: "b/f",
                to: "a/g",
            },
            FaultyFlush,
            FaultyFlush,
            Remote(RMkdir { path: "a" }),
        ],
    )
    .unwrap();
}

/// Short cases of what a queued namespace change meets at its name when the remote put
/// something else there meanwhile (found as parts of longer cases with seeds 18, 19 and 22,
/// whose flushes stayed stuck): both are kept. The write to `g`, held back by the write-back
/// delay, keeps the namespace change after it queued until the flush.
fn keep_both(steps: &[Step]) {
    run(&no_faults(), steps).unwrap();
}

#[test]
fn regression_a_mkdir_meets_a_remote_file_at_its_name() {
    keep_both(&[write("g", 1, 0), Mkdir("a"), put("a", 3, 0), Flush]);
}

#[test]
fn regression_a_directory_rename_meets_a_remote_file_at_its_target() {
    keep_both(&[
        Mkdir("a"),
        Flush,
        write("g", 1, 0),
        Rename { from: "a", to: "b" },
        put("b", 3, 0),
    ]);
}

#[test]
fn a_file_rename_meets_a_remote_directory_at_its_target() {
    use Change::Mkdir as RMkdir;
    keep_both(&[
        write("a", 1, 0),
        Flush,
        write("g", 1, 0),
        Rename { from: "a", to: "b" },
        Remote(RMkdir { path: "b" }),
    ]);
}

#[test]
fn a_directory_renamed_over_one_the_remote_filled() {
    keep_both(&[
        Mkdir("a"),
        Mkdir("b"),
        Flush,
        write("g", 1, 0),
        Rename { from: "a", to: "b" },
        put("b/f", 3, 0),
    ]);
}

#[test]
fn regression_a_commit_meets_a_directory_the_remote_made_in_its_place() {
    use Change::{Mkdir as RMkdir, Remove};
    keep_both(&[
        write("a", 1, 0),
        Flush,
        write("a", 2, 1),
        Remote(Remove { path: "a" }),
        Remote(RMkdir { path: "a" }),
    ]);
}
