//! The write-ahead log (WAL): every change the drive makes — namespace changes, file commits — is
//! made durable here first and applied to the cloud provider in the background. After a crash
//! (`kill -9`, power loss) the next [`Wal::open`] hands back every record that was made durable,
//! in order, so nothing acknowledged to an application is ever lost.
//!
//! Guarantees:
//! - **Durability point.** A record is durable once [`Wal::sync`] (or [`Wal::append_durable`])
//!   covering its LSN has returned `Ok`: its bytes were written and `fdatasync`ed, and the segment
//!   holding it was created with a synced header and a synced directory entry. [`Wal::append`]
//!   alone only buffers the record in memory.
//! - **Order.** LSNs start at 1 (or at the `from` given to [`Wal::open`], if the log does not
//!   reach it) and
//!   increase by exactly one per record; replay returns records in
//!   LSN order with no gaps. An LSN is never handed out twice for durable records (an LSN whose
//!   record was appended but never made durable may be handed out again after a crash).
//! - **Torn tail.** A crash can leave the end of the *last* segment half written. At open, the
//!   last segment is cut at its first incomplete or checksum-failing frame. Any other damage — in
//!   an earlier segment, a bad header, a record whose checksum is right but whose LSN is wrong or
//!   whose authentication fails, a missing segment — is [`WalError::Corrupt`] naming the segment
//!   and offset, never skipped.
//! - **Confidentiality and integrity.** Payloads are sealed with AES-256-GCM
//!   ([`RecordCipher`]) under an associated data that binds the LSN, so the cache directory
//!   reveals neither file names nor contents, and records cannot be altered, reordered or moved.
//! - **Space.** Every byte the log's files occupy is charged to a [`SpaceAccountant`] before the
//!   files grow, and released when segments are removed (or the `Wal` is dropped).
//!
//! The on-disk format is specified byte by byte in `docs/WAL_FORMAT.md`.
//!
//! # Locks
//! Three mutexes; the order is `writer` → `state` and `discard` → `state`. `writer` and `discard`
//! are never held together, and nothing is locked while `state` is held (except the accountant's
//! own locks, which it must not use to call back into the log). The `syncing` flag in `state`
//! grants the right to take `writer` for a batch, so `writer` is never contended by syncers.
//!
//! The accountant is called with `state` held (so a charge and the reservation it pays for are
//! one step); an accountant that evicts to make room delays appends meanwhile.
//!
//! # Group commit
//! One thread at a time (the leader) writes the buffered frames and `fdatasync`s; callers whose
//! LSN it covered return when it finishes. A new leader first waits briefly for threads that are
//! inside a call but have no record buffered yet (see `Wal::gather`), which roughly halves the
//! number of syncs under concurrency.
//!
//! All file I/O blocks; async callers run it on the blocking pool.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cache::crypto::RecordCipher;

/// Log sequence number: starts at 1, increases by one per record, never reused for a durable
/// record.
pub type Lsn = u64;

/// The records [`Wal::open`] replays: `(lsn, payload)` in LSN order.
pub type Replayed = Vec<(Lsn, Vec<u8>)>;

/// The format version this build writes and reads (header bytes 4..6).
pub const FORMAT_VERSION: u16 = 1;
/// Magic at the start of every segment.
pub const MAGIC: [u8; 4] = *b"SOXW";
/// Bytes of a segment header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a record frame before the sealed payload: `u32 len | u32 crc | u64 lsn`.
pub const FRAME_HEADER_LEN: usize = 16;
/// A segment is closed and a new one started before a record would take it past this size (a
/// record larger than this gets a segment to itself). Large enough that the two extra syncs of a
/// rollover are rare; small enough that `discard_before` frees space in useful steps and replay
/// reads one segment into memory at a time.
pub const SEGMENT_MAX_BYTES: u64 = 16 << 20;
/// Largest payload [`Wal::append`] accepts.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest sealed payload a frame may announce.
const MAX_SEALED: usize = MAX_PAYLOAD + RecordCipher::OVERHEAD;
/// Space is reserved (charged, and on Linux preallocated) ahead of the write position in steps of
/// this size, so the accountant is asked once per MiB rather than once per record.
const RESERVE_STEP: u64 = 1 << 20;
/// Charged on top of each segment's preallocation for file-system metadata the kernel may count
/// in `st_blocks` (e.g. an ext4 extent index block).
const METADATA_SLACK: u64 = 64 << 10;
/// Files are charged in whole blocks of this size.
const BLOCK: u64 = 4096;
/// Prefix of every record's associated data (followed by the LSN, little endian).
const AAD_PREFIX: &[u8; 16] = b"syncoxide wal v1";
const LOCK_FILE: &str = "lock";
/// How long `open` retries a busy lock (see `lock_exclusive`).
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// The longest a sync leader waits for other callers' records (see `Wal::gather`).
const MAX_GATHER: Duration = Duration::from_millis(2);

/// Counts every byte of the cache directory. The log charges before a file grows and releases
/// after a file shrinks or is removed.
pub trait SpaceAccountant: Send + Sync {
    /// Reserves `bytes` more; fails (normally with [`WalError::NoRoom`]) when they do not fit.
    fn charge(&self, bytes: u64) -> Result<(), WalError>;
    /// Returns `bytes` reserved earlier.
    fn release(&self, bytes: u64);
}

/// An accountant that counts nothing (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unaccounted;

impl SpaceAccountant for Unaccounted {
    fn charge(&self, _bytes: u64) -> Result<(), WalError> {
        Ok(())
    }
    fn release(&self, _bytes: u64) {}
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write-ahead log segment {} is corrupt at offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error(
        "write-ahead log segment {} has format version {version}; this build reads version {supported}",
        segment.display()
    )]
    UnsupportedVersion {
        segment: PathBuf,
        version: u16,
        supported: u16,
    },
    #[error("no room for the write-ahead log: {reason}")]
    NoRoom { reason: String },
    #[error("a write-ahead log record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
}

type Result<T, E = WalError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(segment: &Path, offset: u64, reason: &'static str) -> WalError {
    WalError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        reason,
    }
}

/// The associated data of the record with `lsn`.
fn aad(lsn: Lsn) -> [u8; 24] {
    let mut a = [0u8; 24];
    a[..16].copy_from_slice(AAD_PREFIX);
    a[16..].copy_from_slice(&lsn.to_le_bytes());
    a
}

fn frame_crc(lsn: Lsn, sealed: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), sealed)
}

fn segment_name(first: Lsn) -> String {
    format!("wal-{first:020}.log")
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header(first: Lsn) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 6..8 reserved, zero.
    h[8..16].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn round_up(n: u64, step: u64) -> u64 {
    n.div_ceil(step).saturating_mul(step)
}

/// What a file occupies for accounting: its size in whole blocks, never less than what the file
/// system reports as allocated.
fn usage(md: &fs::Metadata) -> u64 {
    let by_size = round_up(md.len(), BLOCK);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        by_size.max(md.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    {
        by_size
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the directory", dir))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// One segment as the log's state knows it.
#[derive(Debug)]
struct Seg {
    first: Lsn,
    /// Bytes including the header and every record appended to it (written or still pending).
    len: u64,
    /// Bytes charged to the accountant for this segment's file.
    charged: u64,
    /// Bytes the writer may preallocate (always <= `charged - METADATA_SLACK` once set by an
    /// append).
    alloc: u64,
    /// The file exists under its final name, its header is durable and the previous segment is
    /// complete and synced.
    created: bool,
}

/// Frames waiting to be written; `start` is set when they open a new segment.
#[derive(Debug)]
struct Piece {
    start: Option<Lsn>,
    bytes: Vec<u8>,
    alloc: u64,
}

#[derive(Debug)]
struct State {
    next_lsn: Lsn,
    durable_lsn: Lsn,
    /// A thread is writing and syncing a batch (and holds `writer`).
    syncing: bool,
    /// Set by a failed write or sync; the log refuses further work until reopened (after a failed
    /// fsync nothing written since the last good one can be trusted).
    broken: Option<(io::ErrorKind, String)>,
    /// Oldest first; the last is the one appends go to.
    segments: VecDeque<Seg>,
    pending: Vec<Piece>,
    /// Threads inside `append_durable` or `sync`.
    in_call: usize,
    /// Of those, the ones whose record is not yet durable (waiting, or leading a sync).
    waiting: usize,
    /// The LSNs those `waiting` threads need durable, with their counts.
    targets: BTreeMap<Lsn, usize>,
    /// A new leader is waiting on `Wal::gather` for more records.
    gathering: bool,
    /// How long the last batch took to write and sync.
    last_sync: Duration,
    /// Total charged to the accountant (the segments; the directory's own inode is counted by
    /// the cache's scan of its directory, which holds this one).
    charged: u64,
}

impl State {
    /// Takes a caller waiting for `target` off `waiting` (it leaves with an error).
    fn forget_waiter(&mut self, target: Lsn) {
        self.waiting -= 1;
        if let Some(n) = self.targets.get_mut(&target) {
            *n -= 1;
            if *n == 0 {
                self.targets.remove(&target);
            }
        }
    }

    fn check(&self, dir: &Path) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some((kind, msg)) => Err(WalError::Io {
                op: "use the log after an earlier write failure (reopen it)",
                path: dir.to_path_buf(),
                source: io::Error::new(*kind, msg.clone()),
            }),
        }
    }
}

/// The file being appended to; only touched by the thread that set `State::syncing`.
#[derive(Debug)]
struct Writer {
    file: Option<File>,
    first: Lsn,
    /// Bytes written to `file`.
    len: u64,
    /// Bytes of `file` preallocated (>= `len`).
    allocated: u64,
    can_preallocate: bool,
}

/// The write-ahead log of one cache directory. `Send + Sync`; all methods take `&self`.
pub struct Wal {
    dir: PathBuf,
    cipher: RecordCipher,
    accountant: Arc<dyn SpaceAccountant>,
    state: Mutex<State>,
    /// Signalled when a sync finishes.
    cond: Condvar,
    /// Signalled, while a leader gathers, when a thread starts waiting or leaves a call.
    gather: Condvar,
    writer: Mutex<Writer>,
    discard: Mutex<()>,
    syncs: AtomicU64,
    /// Holds `flock(LOCK_EX)` on `<dir>/lock` while the log is open.
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("next_lsn", &st.next_lsn)
            .field("durable_lsn", &st.durable_lsn)
            .field("segments", &st.segments.len())
            .field("charged", &st.charged)
            .finish_non_exhaustive()
    }
}

/// Why a frame at some offset is not a complete, checksum-valid record.
fn check_frame(data: &[u8], pos: usize) -> std::result::Result<(usize, Lsn), &'static str> {
    let rest = &data[pos..];
    if rest.len() < FRAME_HEADER_LEN {
        return Err("truncated record header");
    }
    let slen = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&rest[8..16]);
    let lsn = u64::from_le_bytes(lsn);
    if !(RecordCipher::OVERHEAD..=MAX_SEALED).contains(&slen) {
        return Err("impossible record length");
    }
    if rest.len() - FRAME_HEADER_LEN < slen {
        return Err("record runs past the end of the segment");
    }
    if frame_crc(lsn, &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + slen]) != crc {
        return Err("record checksum mismatch");
    }
    Ok((slen, lsn))
}

/// Counts checksum-valid frames with a plausible later LSN anywhere after a torn point (a hint
/// that the damage may not be a torn write).
fn valid_frames_after(data: &[u8], from: usize, lsn_after: Lsn) -> usize {
    let mut n = 0;
    let mut pos = from + 1;
    while pos + FRAME_HEADER_LEN <= data.len() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&data[pos + 8..pos + 16]);
        let lsn = u64::from_le_bytes(l);
        if lsn > lsn_after && lsn - lsn_after < 1 << 24 {
            if let Ok((slen, _)) = check_frame(data, pos) {
                n += 1;
                pos += FRAME_HEADER_LEN + slen;
                continue;
            }
        }
        pos += 1;
    }
    n
}

impl Wal {
    /// Opens (creating if needed, directory mode 0700, files 0600) the log in `dir` and returns it
    /// with every valid record, in LSN order, whose LSN >= `from` (records before are skipped
    /// unopened, but their frames are still checked). A torn tail of the last segment is truncated
    /// away; damage anywhere else is [`WalError::Corrupt`]. It is also `Corrupt` when the log no
    /// longer reaches back to `from` (records the caller still needs were discarded). `from` is
    /// the first LSN the caller has not yet consumed (0 counts as 1): a log that is empty or
    /// ends before it (its tail was appended, consumed, then lost before it was durable)
    /// continues its LSNs at `from`, so no LSN the caller has seen is handed out again; the
    /// segments of such a log, all below `from`, are removed.
    ///
    /// Takes an exclusive `flock` on `<dir>/lock`: one process, one `Wal` per directory.
    pub fn open(
        dir: &Path,
        cipher: RecordCipher,
        accountant: Arc<dyn SpaceAccountant>,
        from: Lsn,
    ) -> Result<(Wal, Replayed)> {
        create_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = open_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("create", &lock_path))?;
        #[cfg(unix)]
        lock_exclusive(&lock_file, &lock_path)?;

        let mut firsts = Vec::new();
        for ent in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let ent = ent.map_err(io_err("list", dir))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = parse_segment_name(name) {
                firsts.push(first);
            } else if name
                .strip_suffix(".tmp")
                .and_then(parse_segment_name)
                .is_some()
            {
                // A segment whose creation did not finish: it never held a record.
                let p = ent.path();
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
        firsts.sort_unstable();

        let from = from.max(1);
        let mut records = Vec::new();
        let mut segments = VecDeque::new();
        let mut expected: Option<Lsn> = None;
        let mut last_file = None;
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(first));
            let is_last = i + 1 == firsts.len();
            let data = fs::read(&path).map_err(io_err("read", &path))?;
            check_header(&path, &data, first)?;
            match expected {
                Some(e) if e != first => {
                    return Err(corrupt(
                        &path,
                        0,
                        "segment does not continue the previous one (LSN gap or overlap)",
                    ))
                }
                None if first > from => {
                    return Err(corrupt(
                        &path,
                        0,
                        "the log starts after the requested LSN (records were discarded)",
                    ))
                }
                _ => {}
            }
            let mut pos = HEADER_LEN;
            let mut lsn = first;
            let mut torn = None;
            while pos < data.len() {
                let (slen, got) = match check_frame(&data, pos) {
                    Ok(f) => f,
                    Err(reason) if is_last => {
                        torn = Some(reason);
                        break;
                    }
                    Err(reason) => return Err(corrupt(&path, pos as u64, reason)),
                };
                if got != lsn {
                    return Err(corrupt(
                        &path,
                        pos as u64,
                        "record has a valid checksum but an unexpected LSN",
                    ));
                }
                if lsn >= from {
                    let sealed = &data[pos + FRAME_HEADER_LEN..pos + FRAME_HEADER_LEN + slen];
                    let Some(payload) = cipher.open(&aad(lsn), sealed) else {
                        return Err(corrupt(
                            &path,
                            pos as u64,
                            "record fails authentication (tampered, or the wrong key)",
                        ));
                    };
                    records.push((lsn, payload));
                }
                pos += FRAME_HEADER_LEN + slen;
                lsn += 1;
            }
            if let Some(reason) = torn {
                let later = valid_frames_after(&data, pos, lsn - 1);
                if later > 0 {
                    tracing::warn!(
                        segment = %path.display(), offset = pos, reason, later,
                        "truncating the log's tail although valid records follow the damage: \
                         expected after a power loss mid-write, otherwise a sign of media damage"
                    );
                } else {
                    tracing::warn!(
                        segment = %path.display(), offset = pos, reason,
                        bytes = data.len() - pos, "truncating a torn tail of the log"
                    );
                }
            }
            if is_last {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                // Cut a torn tail and any preallocation past the end, then make everything that
                // was replayed durable (it may have been only in the page cache of a killed
                // process).
                f.set_len(pos as u64).map_err(io_err("truncate", &path))?;
                f.sync_all().map_err(io_err("sync", &path))?;
                last_file = Some(f);
            }
            segments.push_back(Seg {
                first,
                len: pos as u64,
                charged: 0,
                alloc: 0,
                created: true,
            });
            expected = Some(lsn);
        }
        let next_lsn = match expected {
            // An empty log continues the caller's sequence: LSNs below `from` are taken.
            None => from,
            Some(next) if next < from => {
                // The caller has consumed LSNs the log no longer holds (records appended after
                // its last durable one, lost in the crash). Every record here is below `from`,
                // so none is needed; remove the segments, oldest first with a directory sync
                // after each (a crash leaves a shorter contiguous log, or none), and continue at
                // `from` so that no LSN the caller has seen is handed out again.
                tracing::warn!(
                    dir = %dir.display(), log_end = next, from,
                    "the log ends before the requested LSN; continuing the sequence at it"
                );
                drop(last_file.take());
                for seg in segments.drain(..) {
                    let path = dir.join(segment_name(seg.first));
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    sync_dir(dir)?;
                }
                from
            }
            Some(next) => next,
        };
        sync_dir(dir)?;

        let mut total = 0;
        for seg in &mut segments {
            let path = dir.join(segment_name(seg.first));
            let md = fs::metadata(&path).map_err(io_err("stat", &path))?;
            seg.charged = usage(&md);
            total += seg.charged;
        }
        accountant.charge(total)?;

        let writer = match (last_file, segments.back()) {
            (Some(mut f), Some(seg)) => {
                let path = dir.join(segment_name(seg.first));
                f.seek(SeekFrom::End(0)).map_err(io_err("seek", &path))?;
                Writer {
                    file: Some(f),
                    first: seg.first,
                    len: seg.len,
                    allocated: seg.len,
                    can_preallocate: true,
                }
            }
            _ => Writer {
                file: None,
                first: 0,
                len: 0,
                allocated: 0,
                can_preallocate: true,
            },
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            cipher,
            accountant,
            state: Mutex::new(State {
                next_lsn,
                durable_lsn: next_lsn - 1,
                syncing: false,
                broken: None,
                segments,
                pending: Vec::new(),
                in_call: 0,
                waiting: 0,
                targets: BTreeMap::new(),
                gathering: false,
                last_sync: Duration::ZERO,
                charged: total,
            }),
            cond: Condvar::new(),
            gather: Condvar::new(),
            writer: Mutex::new(writer),
            discard: Mutex::new(()),
            syncs: AtomicU64::new(0),
            _lock: lock_file,
        };
        Ok((wal, records))
    }

    /// Appends a record (buffered in memory, NOT yet durable) and returns its LSN. Charges the
    /// accountant when the segment's reservation runs out.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let mut st = lock(&self.state);
        st.check(&self.dir)?;
        let lsn = st.next_lsn;
        let sealed = self.cipher.seal(&aad(lsn), payload);
        let frame_len = (FRAME_HEADER_LEN + sealed.len()) as u64;
        let roll = match st.segments.back() {
            None => true,
            Some(s) => s.len > HEADER_LEN as u64 && s.len + frame_len > SEGMENT_MAX_BYTES,
        };
        let (cur_len, cur_charged) = match st.segments.back() {
            Some(s) if !roll => (s.len, s.charged),
            _ => (HEADER_LEN as u64, 0),
        };
        let new_len = cur_len + frame_len;
        let alloc = round_up(new_len, RESERVE_STEP);
        let extra = (alloc + METADATA_SLACK).saturating_sub(cur_charged);
        if extra > 0 {
            self.accountant.charge(extra)?;
            st.charged += extra;
        }
        // Nothing below fails.
        if roll {
            st.segments.push_back(Seg {
                first: lsn,
                len: new_len,
                charged: extra,
                alloc,
                created: false,
            });
            st.pending.push(Piece {
                start: Some(lsn),
                bytes: Vec::new(),
                alloc,
            });
        } else {
            if let Some(s) = st.segments.back_mut() {
                s.len = new_len;
                s.charged += extra;
                s.alloc = s.alloc.max(alloc);
            }
            if st.pending.is_empty() {
                st.pending.push(Piece {
                    start: None,
                    bytes: Vec::new(),
                    alloc,
                });
            }
        }
        if let Some(p) = st.pending.last_mut() {
            p.alloc = p.alloc.max(alloc);
            p.bytes.reserve(frame_len as usize);
            p.bytes
                .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            p.bytes
                .extend_from_slice(&frame_crc(lsn, &sealed).to_le_bytes());
            p.bytes.extend_from_slice(&lsn.to_le_bytes());
            p.bytes.extend_from_slice(&sealed);
        }
        st.next_lsn += 1;
        Ok(lsn)
    }

    /// Makes every record appended so far durable (write + `fdatasync`). Group commit: a caller
    /// whose records are already durable returns at once; while one thread (the leader) writes
    /// and syncs, the others wait on a condvar and return if their records were in its batch;
    /// otherwise one of them leads the next batch.
    pub fn sync(&self) -> Result<()> {
        let _call = self.enter();
        let target = lock(&self.state).next_lsn - 1;
        self.sync_to(target)
    }

    /// [`Wal::append`] then make that record (and all before it) durable.
    pub fn append_durable(&self, payload: &[u8]) -> Result<Lsn> {
        let _call = self.enter();
        let lsn = self.append(payload)?;
        self.sync_to(lsn)?;
        Ok(lsn)
    }

    fn enter(&self) -> InCall<'_> {
        lock(&self.state).in_call += 1;
        InCall(self)
    }

    fn sync_to(&self, target: Lsn) -> Result<()> {
        let mut st = lock(&self.state);
        if st.durable_lsn >= target {
            return Ok(());
        }
        st.waiting += 1;
        *st.targets.entry(target).or_default() += 1;
        if st.gathering {
            self.gather.notify_one();
        }
        loop {
            if st.durable_lsn >= target {
                // The leader that made it durable took this caller off `waiting`.
                return Ok(());
            }
            if let Err(e) = st.check(&self.dir) {
                st.forget_waiter(target);
                return Err(e);
            }
            if st.syncing {
                st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.syncing = true;
            st = self.gather(st);
            drop(st);
            let started = Instant::now();
            // Whoever takes pending bytes holds the writer lock, so batches reach the file in
            // LSN order (see `write_through`).
            let res = {
                let mut w = lock(&self.writer);
                let (batch, last) = {
                    let mut st = lock(&self.state);
                    (std::mem::take(&mut st.pending), st.next_lsn - 1)
                };
                self.write_batch(&mut w, batch, true).map(|()| last)
            };
            st = lock(&self.state);
            st.last_sync = started.elapsed();
            st.syncing = false;
            self.cond.notify_all();
            match res {
                Ok(last) => {
                    st.durable_lsn = st.durable_lsn.max(last);
                    // Everyone whose record is now durable stops counting as waiting.
                    let first_not_durable = st.durable_lsn + 1;
                    let still = st.targets.split_off(&first_not_durable);
                    let covered: usize = std::mem::replace(&mut st.targets, still).values().sum();
                    st.waiting -= covered;
                }
                Err(e) => {
                    st.broken = Some((io_kind(&e), e.to_string()));
                    st.forget_waiter(target);
                    return Err(e);
                }
            }
        }
    }

    /// Called by a new leader before it takes the batch. Threads that are inside
    /// `append_durable`/`sync` but have no record waiting yet — mid-append, or just released by
    /// the previous sync and about to append again — would otherwise each need the *next* sync,
    /// so batches would alternate between one record and the rest. Wait for them, at most as long
    /// as the last sync took (and never more than [`MAX_GATHER`]), so the wait costs at most about
    /// one sync's latency and a lone caller never waits.
    fn gather<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.in_call <= st.waiting {
            return st;
        }
        let deadline = Instant::now() + st.last_sync.min(MAX_GATHER);
        st.gathering = true;
        while st.in_call > st.waiting {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .gather
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.gathering = false;
        st
    }

    /// Writes `batch` (rolling segments over where it says so) and syncs it. Called only by the
    /// thread that set `syncing`.
    /// Hands every record appended so far to the operating system (`write(2)`, no
    /// `fdatasync`): they survive a crash of this process, not a power loss. Cheap; [`Wal::sync`]
    /// makes them durable. Lock order: writer, then state.
    pub fn write_through(&self) -> Result<()> {
        let mut w = lock(&self.writer);
        let batch = {
            let mut st = lock(&self.state);
            st.check(&self.dir)?;
            std::mem::take(&mut st.pending)
        };
        let res = self.write_batch(&mut w, batch, false);
        if let Err(e) = &res {
            lock(&self.state).broken = Some((io_kind(e), e.to_string()));
        }
        res
    }

    fn write_batch(&self, w: &mut Writer, batch: Vec<Piece>, sync: bool) -> Result<()> {
        if batch.is_empty() && !sync {
            return Ok(());
        }
        for piece in batch {
            if let Some(first) = piece.start {
                self.roll(w, first, piece.alloc)?;
            }
            if piece.bytes.is_empty() {
                continue;
            }
            let path = self.dir.join(segment_name(w.first));
            let end = w.len + piece.bytes.len() as u64;
            let Some(mut file) = w.file.take() else {
                return Err(WalError::Io {
                    op: "append to",
                    path,
                    source: io::Error::other("no open segment"),
                });
            };
            let res = preallocate(&file, w, &path, piece.alloc.max(end))
                .and_then(|()| file.write_all(&piece.bytes).map_err(io_err("write", &path)));
            w.file = Some(file);
            res?;
            w.len = end;
        }
        if !sync {
            return Ok(());
        }
        if let Some(file) = &w.file {
            file.sync_data()
                .map_err(io_err("sync", &self.dir.join(segment_name(w.first))))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Closes the current segment (synced, preallocation trimmed, charge lowered to its real
    /// size) and creates the one starting at `first`: header written and synced under a temporary
    /// name, renamed, directory synced.
    fn roll(&self, w: &mut Writer, first: Lsn, alloc: u64) -> Result<()> {
        if let Some(old) = w.file.take() {
            let path = self.dir.join(segment_name(w.first));
            old.sync_data().map_err(io_err("sync", &path))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            old.set_len(w.len).map_err(io_err("truncate", &path))?;
            let md = old.metadata().map_err(io_err("stat", &path))?;
            let real = usage(&md);
            let mut st = lock(&self.state);
            let st = &mut *st;
            if let Some(seg) = st.segments.iter_mut().find(|s| s.first == w.first) {
                if real < seg.charged {
                    let freed = seg.charged - real;
                    seg.charged = real;
                    st.charged -= freed;
                    self.accountant.release(freed);
                } else if real > seg.charged {
                    // Not expected (the reservation includes slack for metadata); count it anyway.
                    let more = real - seg.charged;
                    match self.accountant.charge(more) {
                        Ok(()) => {
                            seg.charged = real;
                            st.charged += more;
                        }
                        Err(e) => tracing::warn!(segment = %path.display(), real,
                            charged = seg.charged, error = %e,
                            "a closed log segment occupies more than was charged"),
                    }
                }
            }
        }
        let name = segment_name(first);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = open_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        w.first = first;
        w.len = 0;
        w.allocated = 0;
        preallocate(&f, w, &tmp, alloc)?;
        f.write_all(&header(first)).map_err(io_err("write", &tmp))?;
        f.sync_data().map_err(io_err("sync", &tmp))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        sync_dir(&self.dir)?;
        w.len = HEADER_LEN as u64;
        w.allocated = w.allocated.max(w.len);
        w.file = Some(f);
        let mut st = lock(&self.state);
        if let Some(seg) = st.segments.iter_mut().find(|s| s.first == first) {
            seg.created = true;
        }
        Ok(())
    }

    /// Records with LSN < `lsn` are no longer needed (applied and checkpointed): deletes, oldest
    /// first, every segment whose records are all below `lsn` — never the last created segment,
    /// which carries the LSN sequence — and releases their bytes.
    pub fn discard_before(&self, lsn: Lsn) -> Result<()> {
        let _g = lock(&self.discard);
        loop {
            let victim = {
                let st = lock(&self.state);
                match (st.segments.front(), st.segments.get(1)) {
                    (Some(a), Some(b)) if b.created && b.first <= lsn => a.first,
                    _ => return Ok(()),
                }
            };
            let path = self.dir.join(segment_name(victim));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
            // One directory sync per removal keeps removals in order on disk: a crash can never
            // leave a gap in the LSN sequence.
            sync_dir(&self.dir)?;
            let mut st = lock(&self.state);
            if st.segments.front().map(|s| s.first) == Some(victim) {
                if let Some(seg) = st.segments.pop_front() {
                    st.charged -= seg.charged;
                    self.accountant.release(seg.charged);
                }
            }
        }
    }

    /// The LSN the next [`Wal::append`] returns.
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.state).next_lsn
    }

    /// The highest LSN known durable (`next_lsn() - 1` right after open: everything replayed is
    /// durable).
    pub fn durable_lsn(&self) -> Lsn {
        lock(&self.state).durable_lsn
    }

    /// Bytes charged to the accountant for the log right now (the segments, including
    /// reservations ahead of the write position).
    pub fn disk_bytes(&self) -> u64 {
        lock(&self.state).charged
    }

    /// `fdatasync` calls made since open (group-commit statistics; rollovers add two).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Wal {
    /// Returns every charge; the next open charges the files again. Records appended but not
    /// synced are lost.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let charged = std::mem::take(&mut st.charged);
        self.accountant.release(charged);
    }
}

/// Reserves disk blocks of `file` up to `target` bytes from its start, beyond its end
/// (`FALLOC_FL_KEEP_SIZE`), so the file system allocates what was charged and no speculative
/// preallocation of its own. Where that is not supported, nothing happens.
#[allow(unused_variables)]
fn preallocate(file: &File, w: &mut Writer, path: &Path, target: u64) -> Result<()> {
    if target <= w.allocated {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if w.can_preallocate {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        match fallocate(
            file,
            FallocateFlags::KEEP_SIZE,
            w.allocated,
            target - w.allocated,
        ) {
            Ok(()) => {}
            Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => w.can_preallocate = false,
            Err(e) => {
                return Err(WalError::Io {
                    op: "preallocate",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
    w.allocated = target;
    Ok(())
}

/// Counts a thread inside `append_durable` or `sync` (see `Wal::gather`).
struct InCall<'a>(&'a Wal);

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.in_call -= 1;
        if st.gathering {
            self.0.gather.notify_one();
        }
    }
}

fn io_kind(e: &WalError) -> io::ErrorKind {
    match e {
        WalError::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    }
}

fn check_header(path: &Path, data: &[u8], first: Lsn) -> Result<()> {
    if data.len() < HEADER_LEN {
        return Err(corrupt(path, 0, "segment shorter than its header"));
    }
    if data[0..4] != MAGIC {
        return Err(corrupt(path, 0, "bad segment magic"));
    }
    let version = u16::from_le_bytes([data[4], data[5]]);
    if version != FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            segment: path.to_path_buf(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    let crc = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
    if crc32c::crc32c(&data[..16]) != crc {
        return Err(corrupt(path, 0, "segment header checksum mismatch"));
    }
    if data[6..8] != [0, 0] || data[20..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(corrupt(
            path,
            0,
            "segment header reserved bytes are not zero",
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&data[8..16]);
    if u64::from_le_bytes(l) != first {
        return Err(corrupt(
            path,
            8,
            "segment header's first LSN does not match its file name",
        ));
    }
    Ok(())
}

/// Takes `flock(LOCK_EX)` on the lock file. A forked child briefly shares the descriptor (and so
/// the lock) until it execs, so a lock that is busy is retried for a while before giving up.
#[cfg(unix)]
fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    use rustix::fs::{flock, FlockOperation};
    let deadline = Instant::now() + LOCK_PATIENCE;
    let mut pause = Duration::from_millis(1);
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(WalError::Io {
                    op: "lock (is another process using this log?)",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

fn open_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

fn create_dir(dir: &Path) -> Result<()> {
    #[allow(unused_mut)]
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err("create", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000000x.log"), None);
    }

    #[test]
    fn header_is_stable() {
        let h = header(0x0102_0304_0506_0708);
        assert_eq!(&h[..8], b"SOXW\x01\x00\x00\x00");
        assert_eq!(&h[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert!(h[20..].iter().all(|&b| b == 0));
        assert!(check_header(Path::new("x"), &h, 0x0102_0304_0506_0708).is_ok());
    }
}
