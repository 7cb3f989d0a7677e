//! [`ChunkCache`]: the encrypted, size-bounded, persistent chunk store.
//!
//! # Guarantees
//! - **Bounded.** `used` counts every byte the cache directory occupies (chunk files in whole
//!   blocks, directory entries, key, index, tmp files being written). Room is made *before* a
//!   write starts (a reservation), so the directory never exceeds the limit, even transiently.
//! - **Pinned data is never evicted.** Only [`ChunkState::Clean`] chunks are in the eviction
//!   policy. When pinned bytes alone leave no room, a put fails with [`CacheError::NoRoom`].
//! - **Dirty data is durable.** A dirty put returns after the file and its directory entry are
//!   fsync'd. Clean puts are not fsync'd: after a power loss a torn clean chunk fails
//!   authentication and is fetched again (a crash of the process alone loses nothing renamed).
//! - **Never serves bad bytes.** Every get authenticates the whole chunk against its key.
//!
//! # Lock order
//! One mutex, `state`. Everything that changes a chunk's final file name (rename into place,
//! state change, eviction unlink) happens under it, so the index and the directory agree; reading
//! and writing chunk *contents* (and the tmp files) happen outside it. The health tracker's and
//! the single-flight map's mutexes are leaves: never held while taking `state`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::crypto::keys::{self, KeySource};
use crate::crypto::{ChunkCipher, DataKey, NameHasher, RecordCipher};
use crate::error::{CacheError, Result};
use crate::evict::{EvictionKind, EvictionPolicy};
use crate::format;
use crate::health::{Health, HealthTracker};
use crate::index;
use crate::key::{ChunkKey, ChunkName};
use crate::layout::{self, ChunkState};

/// Default largest chunk accepted (the drive's chunk size is configurable below this).
pub const DEFAULT_MAX_CHUNK_SIZE: usize = 16 << 20;
/// Bytes of one directory entry for a chunk name (ext4: 8 + 35-byte name, rounded to 4).
const DIRENT_BYTES: u64 = 44;

/// Bytes the chunks directory may occupy with `entries` entries, counted conservatively: ext4
/// turns a directory into an htree past one block (about 92 of our names) and splits leaves in
/// half, so leaves are counted half full, plus a root and an index block.
fn dir_bytes(entries: u64, block: u64) -> u64 {
    let leaves = (entries * DIRENT_BYTES * 2).div_ceil(block).max(1);
    (leaves + 2) * block
}

/// How big the cache may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimit {
    /// Total bytes on disk, every file and directory counted.
    pub max_bytes: u64,
    /// Keep at least this many bytes free on the cache's file system (0: no such floor).
    pub min_free_bytes: u64,
}

impl CacheLimit {
    pub fn bytes(max_bytes: u64) -> Self {
        CacheLimit {
            max_bytes,
            min_free_bytes: 0,
        }
    }
}

/// Configuration of a cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub limit: CacheLimit,
    pub max_chunk_size: usize,
    pub eviction: EvictionKind,
}

impl CacheConfig {
    pub fn new(dir: impl Into<PathBuf>, limit: CacheLimit) -> Self {
        CacheConfig {
            dir: dir.into(),
            limit,
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            eviction: EvictionKind::default(),
        }
    }
}

/// What a chunk being stored is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutKind {
    /// Fetched from the provider: optional, evictable, not fsync'd.
    Clean,
    /// Fetched to keep offline: as `Clean`, but pinned by the user.
    Pinned,
    /// Written locally and not on the provider yet: durable before `put` returns, pinned until
    /// [`ChunkCache::mark_clean`].
    Dirty,
    /// As `Dirty`, but not fsync'd: the caller keeps a durable copy elsewhere (the WAL carries
    /// small files inline) and restores the chunk from it after a crash.
    DirtyUnsynced,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// A clean put found newer dirty data under the key and left it alone.
    KeptDirty,
    /// The cache disk is failing; the optional (clean) write was skipped.
    SkippedUnhealthy,
}

/// Occupancy figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes counted against the limit now (files, directories, writes in progress).
    pub used_bytes: u64,
    /// The configured limit.
    pub limit_bytes: u64,
    /// Bytes of chunks that cannot be evicted (dirty or kept offline).
    pub pinned_bytes: u64,
    /// Bytes of dirty chunks.
    pub dirty_bytes: u64,
    pub chunks: u64,
    pub dirty_chunks: u64,
    pub pinned_chunks: u64,
}

/// Counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub integrity_failures: u64,
    pub evictions: u64,
    /// Files removed or fixed by the repair at open.
    pub repaired_at_open: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    state: ChunkState,
    charge: u64,
}

struct State {
    entries: HashMap<ChunkName, Entry>,
    policy: Box<dyn EvictionPolicy>,
    /// Everything counted against the limit, reservations included.
    used: u64,
    evictable: u64,
    pinned: u64,
    dirty: u64,
    dirty_count: u64,
    pinned_count: u64,
    /// Bytes counted for the chunks directory itself; only grows (directories do not shrink).
    dir_charge: u64,
    /// Chunks stored or being stored (drives `dir_charge`).
    slots: u64,
    index_charge: u64,
}

impl State {
    fn add(&mut self, name: ChunkName, e: Entry) {
        if e.state.is_evictable() {
            self.evictable += e.charge;
            self.policy.insert(name);
        } else {
            self.pinned += e.charge;
            self.pinned_count += 1;
        }
        if e.state.is_dirty() {
            self.dirty += e.charge;
            self.dirty_count += 1;
        }
        self.entries.insert(name, e);
    }

    /// Forgets an entry's accounting (not its bytes in `used`: the caller frees those once the
    /// file is gone).
    fn take(&mut self, name: &ChunkName) -> Option<Entry> {
        let e = self.entries.remove(name)?;
        if e.state.is_evictable() {
            self.evictable -= e.charge;
            self.policy.remove(name);
        } else {
            self.pinned -= e.charge;
            self.pinned_count -= 1;
        }
        if e.state.is_dirty() {
            self.dirty -= e.charge;
            self.dirty_count -= 1;
        }
        Some(e)
    }
}

/// The encrypted chunk cache. Methods block on disk I/O; from async code use the `*_async`
/// variants (on an `Arc<ChunkCache>`), which run on tokio's blocking pool.
pub struct ChunkCache {
    dir: PathBuf,
    chunks_dir: PathBuf,
    tmp_dir: PathBuf,
    cipher: ChunkCipher,
    data_key: DataKey,
    limit: CacheLimit,
    max_chunk_size: usize,
    block_size: u64,
    state: Mutex<State>,
    health: HealthTracker,
    tmp_seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    integrity_failures: AtomicU64,
    evictions: AtomicU64,
    repaired_at_open: u64,
    _lock: layout::DirLock,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// Opens (or creates) the cache in `config.dir`, unlocking its key with `keys`. Repairs what
    /// a crash left behind, and evicts clean chunks if the limit shrank.
    pub fn open(config: CacheConfig, keys: &dyn KeySource) -> Result<Self> {
        let dir = config.dir.clone();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .map_err(|e| CacheError::io("create directory", parent, e))?;
        }
        layout::private_dir(&dir)?;
        let lock = layout::lock_dir(&dir)?;
        layout::check_format(&dir)?;
        let data_key = keys::load_or_create(&dir, keys)?;
        let cipher = ChunkCipher::new(&data_key);
        let (chunks_dir, tmp_dir) = layout::paths(&dir);
        layout::private_dir(&chunks_dir)?;
        layout::private_dir(&tmp_dir)?;
        let block_size = layout::block_size(&dir)?;
        let scan = layout::scan(&dir, block_size)?;

        let index_path = dir.join(index::FILE_NAME);
        let snapshot = fs::read(&index_path)
            .ok()
            .and_then(|b| index::decode(&b))
            .unwrap_or_default();
        let index_charge = fs::metadata(&index_path)
            .map(|m| layout::charge(m.len(), 0, block_size))
            .unwrap_or(0);

        let mut st = State {
            entries: HashMap::with_capacity(scan.chunks.len()),
            policy: config.eviction.build(),
            used: scan.other_bytes + scan.chunks_dir_bytes,
            evictable: 0,
            pinned: 0,
            dirty: 0,
            dirty_count: 0,
            pinned_count: 0,
            dir_charge: scan.chunks_dir_bytes,
            slots: scan.chunks.len() as u64,
            index_charge,
        };
        let mut found = scan.chunks;
        // Clean chunks the snapshot knows, in its order; then the rest by modification time.
        for name in snapshot {
            if let Some(f) = found.remove(&name) {
                st.used += f.charge;
                st.add(
                    name,
                    Entry {
                        state: f.state,
                        charge: f.charge,
                    },
                );
            }
        }
        let mut rest: Vec<_> = found.into_iter().collect();
        rest.sort_by_key(|(_, f)| f.mtime);
        for (name, f) in rest {
            st.used += f.charge;
            st.add(
                name,
                Entry {
                    state: f.state,
                    charge: f.charge,
                },
            );
        }

        let cache = ChunkCache {
            dir,
            chunks_dir,
            tmp_dir,
            cipher,
            data_key,
            limit: config.limit,
            max_chunk_size: config.max_chunk_size,
            block_size,
            state: Mutex::new(st),
            health: HealthTracker::default(),
            tmp_seq: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            integrity_failures: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            repaired_at_open: scan.repaired as u64,
            _lock: lock,
        };
        {
            let mut st = cache.lock();
            let cap = cache.capacity(st.used);
            if st.used > cap {
                let over = st.used - cap;
                cache.evict(&mut st, over);
                if st.used > cap {
                    tracing::warn!(
                        used = st.used,
                        limit = cap,
                        "pinned chunks alone exceed the cache limit; new data waits for uploads"
                    );
                }
            }
        }
        tracing::info!(dir = %cache.dir.display(), usage = ?cache.usage(), repaired = scan.repaired, "cache opened");
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn chunk_path(&self, name: ChunkName, state: ChunkState) -> PathBuf {
        self.chunks_dir.join(layout::chunk_file_name(name, state))
    }

    /// Bytes the cache may occupy when it occupies `used` now.
    fn capacity(&self, used: u64) -> u64 {
        if self.limit.min_free_bytes == 0 {
            return self.limit.max_bytes;
        }
        match layout::available_bytes(&self.dir) {
            Ok(avail) => self
                .limit
                .max_bytes
                .min(used + avail.saturating_sub(self.limit.min_free_bytes)),
            Err(e) => {
                self.health.report_failure("statvfs", &e);
                self.limit.max_bytes
            }
        }
    }

    /// Evicts clean chunks until `need` bytes were freed or none is left. Unlinks under the lock
    /// so that no put can rename a new file in between.
    fn evict(&self, st: &mut State, need: u64) -> u64 {
        let mut freed = 0;
        while freed < need {
            let Some(victim) = st.policy.victim() else {
                break;
            };
            // The policy already forgot the name; `take` tolerates that.
            let Some(e) = st.take(&victim) else {
                continue;
            };
            match fs::remove_file(self.chunk_path(victim, e.state)) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    // The bytes are still on disk: keep counting them, as a phantom.
                    self.health.report_failure("evict", &err);
                    continue;
                }
            }
            st.used -= e.charge;
            st.slots -= 1;
            freed += e.charge;
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        freed
    }

    /// Reserves `bytes` (plus directory growth for `new_slots` entries), evicting clean chunks
    /// first if needed. Fails with `NoRoom` without evicting anything if pinned data leaves no
    /// room.
    fn reserve(&self, st: &mut State, bytes: u64, new_slots: u64) -> Result<u64> {
        let dir_need = dir_bytes(st.slots + new_slots, self.block_size);
        let dir_growth = dir_need.saturating_sub(st.dir_charge);
        let need = bytes + dir_growth;
        let cap = self.capacity(st.used);
        if st.used + need > cap {
            if st.used - st.evictable + need > cap {
                return Err(CacheError::NoRoom {
                    needed: need,
                    pinned: st.pinned,
                    capacity: cap,
                });
            }
            let over = st.used + need - cap;
            self.evict(st, over);
            if st.used + need > cap {
                return Err(CacheError::NoRoom {
                    needed: need,
                    pinned: st.pinned,
                    capacity: cap,
                });
            }
        }
        st.used += need;
        st.dir_charge += dir_growth;
        st.slots += new_slots;
        Ok(bytes)
    }

    fn release(&self, bytes: u64, slots: u64) {
        let mut st = self.lock();
        st.used -= bytes;
        st.slots -= slots;
    }

    /// Looks `key` up. `Ok(None)` is a miss (also when the cache disk fails reading a chunk that
    /// is not dirty: the caller goes to the provider). A chunk that fails authentication is
    /// reported as [`CacheError::Integrity`] (and dropped unless dirty); its bytes are never
    /// returned.
    pub fn get(&self, key: &ChunkKey) -> Result<Option<Bytes>> {
        self.read_chunk(key, None)
    }

    /// Bytes `[offset, offset + len)` of `key`'s chunk (clamped to its end), reading and
    /// authenticating only the 64 KiB blocks they fall in. Same answers as [`ChunkCache::get`].
    pub fn get_range(&self, key: &ChunkKey, offset: u64, len: u64) -> Result<Option<Bytes>> {
        self.read_chunk(key, Some((offset, len)))
    }

    fn read_range(
        &self,
        path: &Path,
        key: &ChunkKey,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Result<Bytes, &'static str>> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(path)?;
        let file_len = f.metadata()?.len();
        if file_len < format::PREFIX_LEN as u64 {
            return Ok(Err("file shorter than a chunk header"));
        }
        let mut prefix = [0u8; format::PREFIX_LEN];
        f.read_exact_at(&mut prefix, 0)?;
        let p = match format::parse_prefix(&prefix, file_len) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        let (b0, _, start, stop) = format::block_span(&p, offset, len);
        let mut region = vec![0u8; (stop - start) as usize];
        f.read_exact_at(&mut region, start)?;
        let plain = match format::open_blocks(&self.cipher, key, &p, b0, region) {
            Ok(b) => b,
            Err(r) => return Ok(Err(r)),
        };
        let first = b0 * format::BLOCK as u64;
        let from = (offset.min(p.len) - first) as usize;
        let to = (offset.saturating_add(len).min(p.len) - first) as usize;
        Ok(Ok(plain.slice(from.min(plain.len())..to.min(plain.len()))))
    }

    fn read_chunk(&self, key: &ChunkKey, range: Option<(u64, u64)>) -> Result<Option<Bytes>> {
        let name = self.cipher.name(key);
        for _ in 0..3 {
            let state = {
                let mut st = self.lock();
                match st.entries.get(&name) {
                    None => {
                        self.misses.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                    Some(e) => {
                        let s = e.state;
                        if s.is_evictable() {
                            st.policy.touch(&name);
                        }
                        s
                    }
                }
            };
            let path = self.chunk_path(name, state);
            let read = match range {
                None => layout::read_whole(&path).map(|file| format::open(&self.cipher, key, file)),
                Some((off, len)) => self.read_range(&path, key, off, len),
            };
            let opened = match read {
                Ok(r) => r,
                // Renamed by a concurrent state change, or removed: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.health.report_failure("read chunk", &e);
                    if state.is_dirty() {
                        return Err(CacheError::io("read chunk", path, e));
                    }
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
            };
            return match opened {
                Ok(plain) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(plain))
                }
                Err(reason) => {
                    self.integrity_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %path.display(), reason, "cached chunk failed authentication");
                    if !state.is_dirty() {
                        self.drop_entry_if(name, state);
                    }
                    Err(CacheError::Integrity { reason })
                }
            };
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    fn drop_entry_if(&self, name: ChunkName, state: ChunkState) {
        let mut st = self.lock();
        if st.entries.get(&name).map(|e| e.state) != Some(state) {
            return;
        }
        if let Some(e) = st.take(&name) {
            let _ = fs::remove_file(self.chunk_path(name, state));
            st.used -= e.charge;
            st.slots -= 1;
        }
    }

    /// Stores `data` as the content of `key`. See [`PutKind`]. A clean put never replaces dirty
    /// data (it returns [`PutOutcome::KeptDirty`]).
    pub fn put(&self, key: &ChunkKey, data: &[u8], kind: PutKind) -> Result<PutOutcome> {
        if data.len() > self.max_chunk_size {
            return Err(CacheError::ChunkTooLarge {
                len: data.len(),
                max: self.max_chunk_size,
            });
        }
        let name = self.cipher.name(key);
        let dirty = matches!(kind, PutKind::Dirty | PutKind::DirtyUnsynced);
        let durable = kind == PutKind::Dirty;
        if !dirty {
            if !self.health.allow_optional_write() {
                return Ok(PutOutcome::SkippedUnhealthy);
            }
            if self.state_of(name).is_some_and(ChunkState::is_dirty) {
                return self.keep_dirty(name, kind);
            }
        }
        let sealed = format::seal(&self.cipher, key, data);
        debug_assert_eq!(sealed.len() as u64, format::sealed_len(data.len() as u64));
        let charge = layout::charge(sealed.len() as u64, 0, self.block_size);
        let reserved = {
            let mut st = self.lock();
            self.reserve(&mut st, charge, 1)?
        };
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("{}.{seq}", name.to_hex()));
        if let Err(e) = self.write_tmp(&tmp, &sealed, durable) {
            let _ = fs::remove_file(&tmp);
            self.release(reserved, 1);
            self.health.report_failure("write chunk", &e);
            return Err(CacheError::io("write chunk", tmp, e));
        }
        let outcome = self.commit(name, kind, &tmp, reserved);
        if outcome.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let outcome = outcome?;
        if durable {
            if let Err(e) = layout::fsync_dir(&self.chunks_dir) {
                self.health.report_failure("fsync chunk directory", &e);
                return Err(CacheError::io("fsync", &self.chunks_dir, e));
            }
        }
        if outcome == PutOutcome::Stored {
            self.health.report_success();
        }
        Ok(outcome)
    }

    fn write_tmp(&self, tmp: &Path, sealed: &[u8], durable: bool) -> std::io::Result<()> {
        let mut f = layout::create_private(tmp)?;
        f.write_all(sealed)?;
        if durable {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Renames the written tmp file into place under the lock, deciding the final state from the
    /// entry as it is *now*.
    fn commit(
        &self,
        name: ChunkName,
        kind: PutKind,
        tmp: &Path,
        reserved: u64,
    ) -> Result<PutOutcome> {
        let mut st = self.lock();
        let old = st.entries.get(&name).copied();
        let old_state = old.map(|e| e.state);
        let dirty = matches!(kind, PutKind::Dirty | PutKind::DirtyUnsynced);
        if !dirty && old_state.is_some_and(ChunkState::is_dirty) {
            drop(st);
            self.release(reserved, 1);
            return self.keep_dirty(name, kind);
        }
        let user_pinned =
            kind == PutKind::Pinned || old_state.is_some_and(ChunkState::is_user_pinned);
        let new_state = ChunkState::from_flags(dirty, user_pinned);
        let target = self.chunk_path(name, new_state);
        // Replacing a file by rename makes ext4 flush the new data at once (auto_da_alloc),
        // which cost 3x here. An evictable (`Clean`) chunk may vanish on a crash, so its older
        // file is unlinked first instead. A kept-offline (`Pinned`) one must not: a crash
        // between the unlink and the rename would lose it, so it is replaced by the rename alone.
        let unlinked_first = new_state.is_evictable()
            && old.is_some_and(|o| o.state == new_state)
            && fs::remove_file(&target).is_ok();
        crash_point("commit: before the rename into place");
        if let Err(e) = fs::rename(tmp, &target) {
            st.used -= reserved;
            st.slots -= 1;
            if unlinked_first {
                // The older file is gone: so is the entry.
                if let Some(o) = st.take(&name) {
                    st.used -= o.charge;
                    st.slots -= 1;
                }
            }
            self.health.report_failure("rename chunk", &e);
            return Err(CacheError::io("rename chunk", target, e));
        }
        if let Some(old) = old {
            st.take(&name);
            if old.state != new_state {
                // The older file has another name; it is superseded.
                let _ = fs::remove_file(self.chunk_path(name, old.state));
            }
            st.used -= old.charge;
            st.slots -= 1;
        }
        st.add(
            name,
            Entry {
                state: new_state,
                charge: reserved,
            },
        );
        Ok(PutOutcome::Stored)
    }

    /// A clean put met dirty data: keep the data, but honour a user pin request.
    fn keep_dirty(&self, name: ChunkName, kind: PutKind) -> Result<PutOutcome> {
        if kind == PutKind::Pinned {
            self.set_state(name, |s| ChunkState::from_flags(s.is_dirty(), true), true)?;
        }
        Ok(PutOutcome::KeptDirty)
    }

    fn state_of(&self, name: ChunkName) -> Option<ChunkState> {
        self.lock().entries.get(&name).map(|e| e.state)
    }

    /// Moves an entry to the state `f` gives, by one rename. `durable`: fsync the directory.
    fn set_state(
        &self,
        name: ChunkName,
        f: impl FnOnce(ChunkState) -> ChunkState,
        durable: bool,
    ) -> Result<()> {
        {
            let mut st = self.lock();
            let Some(e) = st.entries.get(&name).copied() else {
                return Err(CacheError::NotCached);
            };
            let new_state = f(e.state);
            if new_state == e.state {
                return Ok(());
            }
            let from = self.chunk_path(name, e.state);
            let to = self.chunk_path(name, new_state);
            fs::rename(&from, &to).map_err(|err| {
                self.health.report_failure("rename chunk", &err);
                CacheError::io("rename chunk", &from, err)
            })?;
            st.take(&name);
            st.add(
                name,
                Entry {
                    state: new_state,
                    charge: e.charge,
                },
            );
        }
        if durable {
            layout::fsync_dir(&self.chunks_dir)
                .map_err(|e| CacheError::io("fsync", &self.chunks_dir, e))?;
        }
        Ok(())
    }

    /// The upload of this chunk committed: it is clean now (still kept offline if pinned).
    pub fn mark_clean(&self, key: &ChunkKey) -> Result<()> {
        let name = self.cipher.name(key);
        self.set_state(
            name,
            |s| ChunkState::from_flags(false, s.is_user_pinned()),
            false,
        )
    }

    /// Keeps this chunk offline until [`ChunkCache::unpin`]. Fails with `NotCached` if absent.
    pub fn pin(&self, key: &ChunkKey) -> Result<()> {
        let name = self.cipher.name(key);
        self.set_state(name, |s| ChunkState::from_flags(s.is_dirty(), true), true)
    }

    /// Lets this chunk be evicted again (once it is clean).
    pub fn unpin(&self, key: &ChunkKey) -> Result<()> {
        let name = self.cipher.name(key);
        self.set_state(name, |s| ChunkState::from_flags(s.is_dirty(), false), true)
    }

    /// Removes the chunk, whatever its state (the caller decided its data is not needed: the
    /// object was deleted, truncated or superseded). Absent is fine.
    pub fn remove(&self, key: &ChunkKey) -> Result<()> {
        let name = self.cipher.name(key);
        let mut st = self.lock();
        let Some(e) = st.entries.get(&name).copied() else {
            return Ok(());
        };
        let path = self.chunk_path(name, e.state);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                self.health.report_failure("remove chunk", &err);
                return Err(CacheError::io("remove chunk", path, err));
            }
        }
        st.take(&name);
        st.used -= e.charge;
        st.slots -= 1;
        Ok(())
    }

    /// The state of `key`'s chunk, if cached.
    pub fn state(&self, key: &ChunkKey) -> Option<ChunkState> {
        self.state_of(self.cipher.name(key))
    }

    /// Whether `key` is cached (without touching its recency).
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.state(key).is_some()
    }

    pub fn usage(&self) -> Usage {
        let st = self.lock();
        Usage {
            used_bytes: st.used,
            limit_bytes: self.limit.max_bytes,
            pinned_bytes: st.pinned,
            dirty_bytes: st.dirty,
            chunks: st.entries.len() as u64,
            dirty_chunks: st.dirty_count,
            pinned_chunks: st.pinned_count,
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            integrity_failures: self.integrity_failures.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            repaired_at_open: self.repaired_at_open,
        }
    }

    pub fn health(&self) -> Health {
        self.health.get()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A cipher for records stored beside the cache (WAL, namespace), under a subkey of this
    /// cache's data key that is distinct per `purpose`.
    pub fn record_cipher(&self, purpose: &str) -> RecordCipher {
        RecordCipher::new(&self.data_key, purpose)
    }

    /// A keyed hash for names stored beside the cache, distinct per `purpose`.
    pub fn name_hasher(&self, purpose: &str) -> NameHasher {
        NameHasher::new(&self.data_key, purpose)
    }

    /// Makes dirty chunks written with [`PutKind::DirtyUnsynced`] durable: their files and the
    /// chunks directory are fsync'd (many at once: one `syncfs` of the cache's file system,
    /// which costs one journal commit instead of one per file).
    pub fn sync_chunks(&self, keys: &[ChunkKey]) -> Result<()> {
        const SYNCFS_ABOVE: usize = 8;
        if keys.is_empty() {
            return Ok(());
        }
        if keys.len() > SYNCFS_ABOVE {
            let dir = fs::File::open(&self.chunks_dir)
                .map_err(|e| CacheError::io("open", &self.chunks_dir, e))?;
            return rustix::fs::syncfs(&dir).map_err(|e| {
                let e = std::io::Error::from(e);
                self.health.report_failure("syncfs", &e);
                CacheError::io("syncfs", &self.chunks_dir, e)
            });
        }
        for key in keys {
            let name = self.cipher.name(key);
            let Some(state) = self.state_of(name) else {
                continue;
            };
            let path = self.chunk_path(name, state);
            match fs::File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => {}
                // Replaced or removed meanwhile: whoever did that made it durable or dropped it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.health.report_failure("fsync chunk", &e);
                    return Err(CacheError::io("fsync", path, e));
                }
            }
        }
        layout::fsync_dir(&self.chunks_dir)
            .map_err(|e| CacheError::io("fsync", &self.chunks_dir, e))
    }

    /// Counts `bytes` of a file kept in the cache directory by someone else (the WAL, the
    /// namespace snapshot) against the limit, evicting clean chunks to make room, *before* the
    /// caller writes them. `NoRoom` when pinned data leaves no room.
    pub fn charge_external(&self, bytes: u64) -> Result<()> {
        let mut st = self.lock();
        self.reserve(&mut st, bytes, 0).map(|_| ())
    }

    /// Stops counting `bytes` charged with [`ChunkCache::charge_external`] (the file shrank or
    /// was removed).
    pub fn release_external(&self, bytes: u64) {
        let mut st = self.lock();
        st.used = st.used.saturating_sub(bytes);
    }

    /// The block size the cache counts in (file sizes are rounded up to it).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The on-disk name of `key`'s chunk.
    pub fn name_of(&self, key: &ChunkKey) -> ChunkName {
        self.cipher.name(key)
    }

    /// Removes every dirty chunk whose name `keep` rejects. After a crash, the owner of the
    /// dirty data (the write-ahead log) knows which dirty chunks a committed record references;
    /// the others were written but never committed (never fsync'd or closed) and are garbage.
    /// Returns how many were removed.
    pub fn retain_dirty(&self, mut keep: impl FnMut(&ChunkName) -> bool) -> Result<usize> {
        let mut st = self.lock();
        let doomed: Vec<(ChunkName, Entry)> = st
            .entries
            .iter()
            .filter(|(n, e)| e.state.is_dirty() && !keep(n))
            .map(|(n, e)| (*n, *e))
            .collect();
        for (name, e) in &doomed {
            let path = self.chunk_path(*name, e.state);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(CacheError::io("remove chunk", path, err)),
            }
            st.take(name);
            st.used -= e.charge;
            st.slots -= 1;
        }
        Ok(doomed.len())
    }

    /// Persists the eviction order (done on drop too). Skipped, not failed, when the cache is
    /// full of pinned data: the order is only an optimisation.
    pub fn flush_index(&self) -> Result<()> {
        let (bytes, reserved, old_charge) = {
            let mut st = self.lock();
            let bytes = index::encode(&st.policy.order());
            let charge = layout::charge(bytes.len() as u64, 0, self.block_size);
            match self.reserve(&mut st, charge, 0) {
                Ok(r) => (bytes, r, st.index_charge),
                Err(CacheError::NoRoom { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        let tmp = self.dir.join("index.tmp");
        let path = self.dir.join(index::FILE_NAME);
        let _ = fs::remove_file(&tmp);
        let written = layout::create_private(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        let mut st = self.lock();
        match written {
            Ok(()) => {
                st.used -= old_charge;
                st.index_charge = reserved;
                Ok(())
            }
            Err(e) => {
                st.used -= reserved;
                let _ = fs::remove_file(&tmp);
                Err(CacheError::io("write index", path, e))
            }
        }
    }

    /// Re-wraps the data key of the cache in `dir` under a new key source; chunks stay valid.
    /// Refused while a process has the cache open.
    pub fn change_key(dir: &Path, old: &dyn KeySource, new: &dyn KeySource) -> Result<()> {
        let _lock = layout::lock_dir(dir)?;
        keys::change_key(dir, old, new)
    }

    /// Destroys the cache in `dir`: the wrapped key first (crypto-erase: without it nothing left
    /// on disk can be decrypted), then every file. Refused while a process has it open. Dirty
    /// chunks are destroyed too: the caller must have flushed or decided to drop them.
    pub fn wipe(dir: &Path) -> Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        if !layout::is_cache_dir(dir) {
            return Err(CacheError::NotACache {
                path: dir.to_path_buf(),
            });
        }
        let lock = layout::lock_dir(dir)?;
        keys::destroy_key_file(dir)?;
        fs::remove_dir_all(dir).map_err(|e| CacheError::io("remove", dir, e))?;
        drop(lock);
        Ok(())
    }

    /// [`ChunkCache::get`] on the blocking pool.
    pub async fn get_async(self: &Arc<Self>, key: ChunkKey) -> Result<Option<Bytes>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.get(&key))
            .await
            .map_err(|e| CacheError::Worker(e.to_string()))?
    }

    /// [`ChunkCache::put`] on the blocking pool.
    pub async fn put_async(
        self: &Arc<Self>,
        key: ChunkKey,
        data: Bytes,
        kind: PutKind,
    ) -> Result<PutOutcome> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.put(&key, &data, kind))
            .await
            .map_err(|e| CacheError::Worker(e.to_string()))?
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        if let Err(e) = self.flush_index() {
            tracing::warn!(error = %e, "could not save the cache's eviction order");
        }
    }
}

/// A point where a crash (kill -9, power loss) may cut the store's work. A no-op, except in this
/// crate's unit tests, which arm one on their thread to simulate a kill there (see `tests`).
#[cfg(not(test))]
#[inline(always)]
fn crash_point(_at: &'static str) {}

#[cfg(test)]
fn crash_point(at: &'static str) {
    tests::hit_crash_point(at);
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::{KdfParams, Passphrase};

    thread_local! {
        static ARMED: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// Panics at the armed crash point (once): the store's work stops there, as under a kill,
    /// and whatever it had already done on disk stays done.
    pub(super) fn hit_crash_point(at: &'static str) {
        if ARMED.with(|a| a.get()) == Some(at) {
            ARMED.with(|a| a.set(None));
            panic!("simulated crash at {at:?}");
        }
    }

    fn open(dir: &Path) -> ChunkCache {
        ChunkCache::open(
            CacheConfig::new(dir, CacheLimit::bytes(8 << 20)),
            &Passphrase::new("crash point test", KdfParams::FAST_INSECURE),
        )
        .expect("open the cache")
    }

    /// Regression (`kill_9_during_puts` in tests/crash.rs failed intermittently): a put over a
    /// kept-offline chunk unlinked the older file before renaming the new one into place, as it
    /// may for a clean chunk; a kill in between lost the pinned chunk.
    #[test]
    fn crash_during_a_put_over_a_pinned_chunk_keeps_the_pinned_chunk() {
        for kind in [PutKind::Clean, PutKind::Pinned] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("cache");
            let key = ChunkKey::new("/obj", "v1", 0);
            let old = vec![0x11; 70_000];
            {
                let c = open(&dir);
                assert_eq!(
                    c.put(&key, &old, PutKind::Pinned).expect("pinned put"),
                    PutOutcome::Stored
                );
                ARMED.with(|a| a.set(Some("commit: before the rename into place")));
                let cut = catch_unwind(AssertUnwindSafe(|| c.put(&key, &[0x22; 5000], kind)));
                assert!(
                    cut.is_err(),
                    "{kind:?}: the put must stop at the crash point"
                );
                // Dropping releases the process lock, as the kernel does on a kill.
            }
            let c = open(&dir);
            assert_eq!(
                c.state(&key),
                Some(ChunkState::Pinned),
                "{kind:?} put over a pinned chunk, cut before its rename: the pinned chunk is lost"
            );
            assert_eq!(c.get(&key).expect("get").as_deref(), Some(&old[..]));
        }
    }
}
