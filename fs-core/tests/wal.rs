//! Tests of the write-ahead log (`fs_core::wal`): round trips, segment rollover and discard, the
//! torn-tail rule, corruption and tampering, encryption at rest, crash safety under SIGKILL, group
//! commit and space accounting.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache::crypto::RecordCipher;
use cache::DataKey;
use fs_core::wal::{
    Lsn, Replayed, SpaceAccountant, Unaccounted, Wal, WalError, FRAME_HEADER_LEN, HEADER_LEN,
    MAX_PAYLOAD, SEGMENT_MAX_BYTES,
};

fn cipher() -> RecordCipher {
    RecordCipher::for_tests(&DataKey::from_bytes([7; 32]), "wal")
}

fn open(dir: &Path, from: Lsn) -> Result<(Wal, Replayed), WalError> {
    Wal::open(dir, cipher(), Arc::new(Unaccounted), from)
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    let mut p = format!("record {i}:").into_bytes();
    p.extend((0..len).map(|k| (k as u64 * 31 + i) as u8));
    p
}

/// Segment files of `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("wal-") && n.ends_with(".log")
        })
        .collect();
    v.sort();
    v
}

/// Offsets of the frames of a segment file.
fn frame_offsets(data: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < data.len() {
        v.push(pos);
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        pos += FRAME_HEADER_LEN + len;
    }
    assert_eq!(pos, data.len());
    v
}

fn assert_records(got: &[(Lsn, Vec<u8>)], lsns: std::ops::RangeInclusive<u64>) {
    let want: Vec<(Lsn, Vec<u8>)> = lsns.map(|l| (l, payload(l))).collect();
    assert_eq!(got.len(), want.len(), "record count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

fn fill(wal: &Wal, n: u64) {
    for _ in 0..n {
        let l = wal.next_lsn();
        assert_eq!(wal.append(&payload(l)).unwrap(), l);
    }
    wal.sync().unwrap();
}

/// What the files of `dir` occupy: size in 4 KiB blocks, never less than st_blocks × 512.
fn disk_usage(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let md = e.unwrap().metadata().unwrap();
            (md.len().div_ceil(4096) * 4096).max(md.blocks() * 512)
        })
        .sum()
}

#[derive(Default)]
struct Counter {
    charged: AtomicU64,
    limit: Option<u64>,
}

impl SpaceAccountant for Counter {
    fn charge(&self, bytes: u64) -> Result<(), WalError> {
        let now = self.charged.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if let Some(limit) = self.limit {
            if now > limit {
                self.charged.fetch_sub(bytes, Ordering::SeqCst);
                return Err(WalError::NoRoom {
                    reason: format!("{now} > {limit}"),
                });
            }
        }
        Ok(())
    }
    fn release(&self, bytes: u64) {
        let before = self.charged.fetch_sub(bytes, Ordering::SeqCst);
        assert!(before >= bytes, "released more than charged");
    }
}

impl Counter {
    fn get(&self) -> u64 {
        self.charged.load(Ordering::SeqCst)
    }
}

#[test]
fn round_trip_across_reopen_and_from_filter() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    {
        let (wal, recs) = open(&dir, 1).unwrap();
        assert!(recs.is_empty());
        assert_eq!((wal.next_lsn(), wal.durable_lsn()), (1, 0));
        for l in 1..=10 {
            assert_eq!(wal.append_durable(&payload(l)).unwrap(), l);
            assert_eq!(wal.durable_lsn(), l);
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for s in segments(&dir) {
            assert_eq!(fs::metadata(s).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
    {
        let (wal, recs) = open(&dir, 1).unwrap();
        assert_records(&recs, 1..=10);
        assert_eq!((wal.next_lsn(), wal.durable_lsn()), (11, 10));
        // Buffered appends are not durable until sync.
        for l in 11..=15 {
            assert_eq!(wal.append(&payload(l)).unwrap(), l);
        }
        assert_eq!(wal.durable_lsn(), 10);
        wal.sync().unwrap();
        assert_eq!(wal.durable_lsn(), 15);
        // An empty payload is a record too.
        assert_eq!(wal.append_durable(b"").unwrap(), 16);
    }
    let (wal, recs) = open(&dir, 12).unwrap();
    assert_eq!(recs.len(), 5);
    assert_records(&recs[..4], 12..=15);
    assert_eq!(recs[4], (16, Vec::new()));
    assert_eq!(wal.next_lsn(), 17);
    drop(wal);
    let (wal, recs) = open(&dir, 17).unwrap();
    assert!(recs.is_empty(), "`from` at the end returns nothing");
    drop(wal);
    // `from` past the end: the caller consumed LSNs the log lost (appended, never durable). The
    // sequence continues at `from`, so none of them is handed out again.
    {
        let (wal, recs) = open(&dir, 20).unwrap();
        assert!(recs.is_empty());
        assert_eq!(wal.next_lsn(), 20);
        assert_eq!(wal.append_durable(b"twenty").unwrap(), 20);
    }
    let (_wal, recs) = open(&dir, 20).unwrap();
    assert_eq!(recs, vec![(20, b"twenty".to_vec())]);
    assert_eq!(segments(&dir).len(), 1);
}

#[test]
fn an_empty_log_starts_at_from() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, recs) = open(tmp.path(), 40).unwrap();
        assert!(recs.is_empty());
        assert_eq!(wal.next_lsn(), 40);
        assert_eq!(wal.append_durable(b"a").unwrap(), 40);
    }
    let (_wal, recs) = open(tmp.path(), 40).unwrap();
    assert_eq!(recs, vec![(40, b"a".to_vec())]);
}

#[test]
fn record_too_large_is_refused_without_using_an_lsn() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path(), 1).unwrap();
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        wal.append(&big),
        Err(WalError::RecordTooLarge { len, max }) if len == MAX_PAYLOAD + 1 && max == MAX_PAYLOAD
    ));
    assert_eq!(wal.append_durable(b"x").unwrap(), 1);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_wal, _) = open(tmp.path(), 1).unwrap();
    assert!(matches!(open(tmp.path(), 1), Err(WalError::Io { .. })));
}

#[test]
fn rollover_and_discard_before() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let big = |l: u64| {
        let mut p = payload(l);
        p.resize(200 << 10, l as u8);
        p
    };
    let n = 250; // ~50 MB: at least three segments
    let firsts: Vec<Lsn>;
    {
        let (wal, _) = open(dir, 1).unwrap();
        for l in 1..=n {
            assert_eq!(wal.append(&big(l)).unwrap(), l);
            if l % 20 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        let segs = segments(dir);
        assert!(segs.len() >= 3, "{} segments", segs.len());
        for s in &segs {
            let len = fs::metadata(s).unwrap().len();
            assert!(len <= SEGMENT_MAX_BYTES, "{} is {len} bytes", s.display());
        }
        firsts = segs
            .iter()
            .map(|p| {
                p.file_name().unwrap().to_str().unwrap()[4..24]
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(firsts[0], 1);
        assert!(firsts.windows(2).all(|w| w[0] < w[1]));
    }
    let (wal, recs) = open(dir, 1).unwrap();
    assert_eq!(recs.len() as u64, n);
    for (l, p) in &recs {
        assert_eq!(p, &big(*l));
    }
    drop(recs);
    // Discarding below the third segment's first LSN removes the first two, and only them.
    let cut = firsts[2];
    wal.discard_before(cut - 1).unwrap();
    assert_eq!(
        segments(dir).len(),
        firsts.len() - 1,
        "only whole segments go"
    );
    wal.discard_before(cut).unwrap();
    assert_eq!(segments(dir).len(), firsts.len() - 2);
    // The rest stays replayable, and the LSN sequence continues across the discard.
    assert_eq!(wal.append_durable(&big(n + 1)).unwrap(), n + 1);
    drop(wal);
    let (wal, recs) = open(dir, cut).unwrap();
    assert_eq!(recs.first().map(|r| r.0), Some(cut));
    assert_eq!(recs.last().map(|r| r.0), Some(n + 1));
    assert_eq!(recs.len() as u64, n + 2 - cut);
    drop(recs);
    // Asking for discarded records is an error, not a silent gap.
    drop(wal);
    assert!(matches!(open(dir, 1), Err(WalError::Corrupt { .. })));
    // Discarding everything keeps the last segment, which carries the LSN sequence.
    let (wal, _) = open(dir, cut).unwrap();
    wal.discard_before(u64::MAX).unwrap();
    assert_eq!(segments(dir).len(), 1);
    drop(wal);
    let (wal, _) = open(dir, n + 2).unwrap();
    assert_eq!(wal.append_durable(b"after").unwrap(), n + 2);
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    {
        let (wal, _) = open(&src, 1).unwrap();
        fill(&wal, 6);
    }
    let segs = segments(&src);
    assert_eq!(segs.len(), 1);
    let name = segs[0].file_name().unwrap().to_owned();
    let data = fs::read(&segs[0]).unwrap();
    let last = *frame_offsets(&data).last().unwrap();
    for cut in last..data.len() {
        let dir = tmp.path().join(format!("cut{cut}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(&name), &data[..cut]).unwrap();
        {
            let (wal, recs) = open(&dir, 1).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_records(&recs, 1..=5);
            assert_eq!(fs::metadata(dir.join(&name)).unwrap().len(), last as u64);
            assert_eq!(wal.append_durable(b"after the tear").unwrap(), 6);
        }
        let (wal, recs) = open(&dir, 1).unwrap();
        assert_records(&recs[..5], 1..=5);
        assert_eq!(recs[5], (6, b"after the tear".to_vec()));
        assert_eq!(wal.next_lsn(), 7);
        drop(wal);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        fill(&wal, 3);
    }
    let seg = &segments(tmp.path())[0];
    let mut data = fs::read(seg).unwrap();
    data.extend(std::iter::repeat_n(0u8, 5000));
    fs::write(seg, &data).unwrap();
    let (wal, recs) = open(tmp.path(), 1).unwrap();
    assert_records(&recs, 1..=3);
    assert_eq!(wal.append_durable(&payload(4)).unwrap(), 4);
}

/// Two segments: 17 records of 1 MiB roll over once.
fn two_segments(dir: &Path) {
    let (wal, _) = open(dir, 1).unwrap();
    for l in 1..=17 {
        let mut p = payload(l);
        p.resize(1 << 20, 0xAB);
        wal.append(&p).unwrap();
    }
    wal.sync().unwrap();
    assert_eq!(segments(dir).len(), 2);
}

#[test]
fn damage_in_a_non_last_segment_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    two_segments(tmp.path());
    let first = segments(tmp.path())[0].clone();
    let pristine = fs::read(&first).unwrap();
    // The middle of a record, a length field, and the header.
    let mid = pristine.len() / 2;
    let len_field = frame_offsets(&pristine)[3];
    for at in [mid, len_field, 1, 10, pristine.len() - 1] {
        let mut d = pristine.clone();
        d[at] ^= 0x20;
        fs::write(&first, &d).unwrap();
        match open(tmp.path(), 1) {
            Err(WalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!(segment, first, "flip at {at}");
                assert!(offset <= at as u64, "flip at {at} reported at {offset}");
            }
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    // Truncating a non-last segment is corruption too, not a torn tail.
    fs::write(&first, &pristine[..pristine.len() - 10]).unwrap();
    assert!(matches!(
        open(tmp.path(), 1),
        Err(WalError::Corrupt { segment, .. }) if segment == first
    ));
    // A missing segment is an error when its records are asked for.
    fs::remove_file(&first).unwrap();
    assert!(matches!(open(tmp.path(), 1), Err(WalError::Corrupt { .. })));
    fs::write(&first, &pristine).unwrap();
    assert_eq!(open(tmp.path(), 1).unwrap().1.len(), 17);
}

#[test]
fn unsupported_version_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        fill(&wal, 2);
    }
    let seg = &segments(tmp.path())[0];
    let mut d = fs::read(seg).unwrap();
    d[4] = 2;
    let crc = crc32c::crc32c(&d[..16]);
    d[16..20].copy_from_slice(&crc.to_le_bytes());
    fs::write(seg, &d).unwrap();
    assert!(matches!(
        open(tmp.path(), 1),
        Err(WalError::UnsupportedVersion { version: 2, .. })
    ));
}

fn recrc(d: &mut [u8], off: usize) {
    let len = u32::from_le_bytes(d[off..off + 4].try_into().unwrap()) as usize;
    let body = off + FRAME_HEADER_LEN;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&d[off + 8..off + 16]), &d[body..body + len]);
    d[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn tampering_with_a_valid_checksum_is_corrupt_even_in_the_last_segment() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        fill(&wal, 4);
    }
    let seg = segments(tmp.path())[0].clone();
    let pristine = fs::read(&seg).unwrap();
    let offs = frame_offsets(&pristine);

    // A flipped ciphertext byte with the CRC recomputed: AEAD failure.
    let mut d = pristine.clone();
    d[offs[1] + FRAME_HEADER_LEN + 20] ^= 1;
    recrc(&mut d, offs[1]);
    fs::write(&seg, &d).unwrap();
    match open(tmp.path(), 1) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, offs[1] as u64),
        other => panic!("{other:?}"),
    }

    // Record 1's sealed bytes moved into record 2's place (LSN 2, CRC recomputed): the AAD binds
    // the position, so authentication fails.
    let r1 = pristine[offs[0]..offs[1]].to_vec();
    let mut d = pristine[..offs[1]].to_vec();
    let at = d.len();
    d.extend_from_slice(&r1);
    d[at + 8..at + 16].copy_from_slice(&2u64.to_le_bytes());
    recrc(&mut d, at);
    d.extend_from_slice(&pristine[offs[2]..]);
    fs::write(&seg, &d).unwrap();
    match open(tmp.path(), 1) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, offs[1] as u64),
        other => panic!("{other:?}"),
    }

    // Records swapped (each keeping its own LSN and CRC): the LSN sequence breaks.
    let mut d = pristine[..offs[1]].to_vec();
    d.extend_from_slice(&pristine[offs[2]..offs[3]]);
    d.extend_from_slice(&pristine[offs[1]..offs[2]]);
    d.extend_from_slice(&pristine[offs[3]..]);
    fs::write(&seg, &d).unwrap();
    assert!(matches!(
        open(tmp.path(), 1),
        Err(WalError::Corrupt { offset, .. }) if offset == offs[1] as u64
    ));

    // A different key cannot read the log.
    fs::write(&seg, &pristine).unwrap();
    let other = RecordCipher::for_tests(&DataKey::from_bytes([8; 32]), "wal");
    assert!(matches!(
        Wal::open(tmp.path(), other, Arc::new(Unaccounted), 1),
        Err(WalError::Corrupt { .. })
    ));
    assert_records(&open(tmp.path(), 1).unwrap().1, 1..=4);
}

#[test]
fn payloads_do_not_appear_in_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = b"Quarterly-Report-SECRET-7f3a9c.docx";
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        for i in 0..50u8 {
            let mut p = marker.to_vec();
            p.push(i);
            wal.append(&p).unwrap();
        }
        wal.append_durable(marker).unwrap();
    }
    let mut files = 0;
    for e in fs::read_dir(tmp.path()).unwrap() {
        let data = fs::read(e.unwrap().path()).unwrap();
        files += 1;
        assert!(
            !data.windows(marker.len()).any(|w| w == marker),
            "the marker is readable on disk"
        );
        assert!(!data.windows(10).any(|w| w == &marker[..10]));
    }
    assert!(files >= 1);
    let (_wal, recs) = open(tmp.path(), 1).unwrap();
    assert_eq!(recs.last().unwrap().1, marker);
}

#[test]
fn group_commit_shares_fdatasyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path(), 1).unwrap();
    let (threads, each) = (8u64, 50u64);
    let acked = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (wal, acked) = (&wal, &acked);
            s.spawn(move || {
                for i in 0..each {
                    let p = format!("thread {t} record {i}");
                    let lsn = wal.append_durable(p.as_bytes()).unwrap();
                    assert!(wal.durable_lsn() >= lsn);
                    acked.lock().unwrap().push((lsn, p));
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    let syncs = wal.syncs();
    eprintln!(
        "group commit: {} durable appends from {threads} threads, {syncs} fdatasyncs, {elapsed:?}",
        threads * each
    );
    assert!(
        syncs < threads * each / 4,
        "{syncs} fdatasyncs for {} appends",
        threads * each
    );
    drop(wal);
    let (_wal, recs) = open(tmp.path(), 1).unwrap();
    assert_eq!(recs.len() as u64, threads * each);
    let mut acked = acked.into_inner().unwrap();
    acked.sort();
    for ((l, p), (al, ap)) in recs.iter().zip(&acked) {
        assert_eq!(l, al);
        assert_eq!(p, ap.as_bytes());
    }
    let distinct: HashSet<_> = acked.iter().map(|a| &a.1).collect();
    assert_eq!(distinct.len() as u64, threads * each);
}

#[test]
fn charges_cover_the_disk_and_drop_on_discard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let acct = Arc::new(Counter::default());
    let (wal, _) = Wal::open(dir, cipher(), acct.clone(), 1).unwrap();
    assert_eq!(wal.disk_bytes(), acct.get());
    let check = |wal: &Wal| {
        let used = disk_usage(dir);
        assert!(
            acct.get() >= used,
            "charged {} < on disk {used}",
            acct.get()
        );
        assert_eq!(wal.disk_bytes(), acct.get());
    };
    let mut l = 1;
    for round in 0..40 {
        for _ in 0..(1 + round % 7) {
            let mut p = payload(l);
            p.resize(150_000 + (l as usize * 7919) % 300_000, 1);
            wal.append(&p).unwrap();
            l += 1;
            check(&wal);
        }
        wal.sync().unwrap();
        check(&wal);
    }
    let segs = segments(dir).len();
    assert!(segs >= 2);
    let before = acct.get();
    let next = wal.next_lsn();
    wal.discard_before(next).unwrap();
    assert_eq!(segments(dir).len(), 1);
    check(&wal);
    assert!(acct.get() < before, "discard released nothing");
    drop(wal);
    assert_eq!(acct.get(), 0, "dropping the log returns its charges");
    let (wal, _) = Wal::open(dir, cipher(), acct.clone(), next).unwrap();
    check(&wal);
}

#[test]
fn no_room_refuses_the_append_and_keeps_the_lsn() {
    let tmp = tempfile::tempdir().unwrap();
    let acct = Arc::new(Counter {
        charged: AtomicU64::new(0),
        limit: Some(3 << 20),
    });
    let (wal, _) = Wal::open(tmp.path(), cipher(), acct.clone(), 1).unwrap();
    let p = vec![5u8; 300_000];
    let mut ok = 0;
    let err = loop {
        match wal.append_durable(&p) {
            Ok(l) => {
                ok += 1;
                assert_eq!(l, ok);
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WalError::NoRoom { .. }), "{err}");
    assert!(ok >= 6, "only {ok} fit");
    assert_eq!(wal.next_lsn(), ok + 1);
    // Still usable for what fits.
    assert_eq!(wal.append_durable(b"small").unwrap(), ok + 1);
}

/// Not a test on its own: the child process of `crash_kill_rounds`, which appends durable records
/// from three threads until it is killed, printing each acknowledged LSN.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("WAL_CRASH_CHILD_DIR") else {
        return;
    };
    let round: u64 = std::env::var("WAL_CRASH_ROUND").unwrap().parse().unwrap();
    let (wal, _) = open(Path::new(&dir), 1).unwrap();
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let p = crash_payload(round, t, i);
                    let lsn = wal.append_durable(&p).unwrap();
                    println!("ACK {lsn} {round} {t} {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn crash_payload(round: u64, t: u64, i: u64) -> Vec<u8> {
    let mut p = format!("crash {round} {t} {i} ").into_bytes();
    let n = ((round * 7 + t * 13 + i * 101) % 20_000) as usize;
    p.extend((0..n).map(|k| (k as u64 ^ i) as u8));
    p
}

#[test]
fn crash_kill_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let exe = std::env::current_exe().unwrap();
    let mut seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut acked: BTreeMap<Lsn, (u64, u64, u64)> = BTreeMap::new();
    for round in 0..15u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("WAL_CRASH_CHILD_DIR", &dir)
            .env("WAL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut line = Vec::new();
            let mut first = true;
            while r.read_until(b'\n', &mut line).unwrap() > 0 {
                // A line cut by the kill has no newline and was not acknowledged to us.
                if line.ends_with(b"\n") && line.starts_with(b"ACK ") {
                    if first {
                        let _ = tx.send(());
                        first = false;
                    }
                    lines.push(String::from_utf8(line.clone()).unwrap());
                }
                line.clear();
            }
            lines
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rand() % 150));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut this_round = 0;
        for line in lines {
            let v: Vec<u64> = line[4..]
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert!(acked.insert(v[0], (v[1], v[2], v[3])).is_none());
            this_round += 1;
        }
        let (wal, recs) = open(&dir, 1).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let by_lsn: BTreeMap<Lsn, &Vec<u8>> = recs.iter().map(|(l, p)| (*l, p)).collect();
        for (lsn, &(r, t, i)) in &acked {
            let got = by_lsn
                .get(lsn)
                .unwrap_or_else(|| panic!("round {round}: acknowledged LSN {lsn} lost"));
            assert_eq!(**got, crash_payload(r, t, i), "LSN {lsn}");
        }
        // Every replayed record is intact, whether or not its ack got printed.
        for (_, p) in &recs {
            let s = String::from_utf8_lossy(&p[..p.len().min(40)]).to_string();
            let f: Vec<u64> = s
                .split(' ')
                .skip(1)
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect();
            assert_eq!(*p, crash_payload(f[0], f[1], f[2]));
        }
        eprintln!(
            "round {round}: {this_round} acknowledged, {} replayed, next LSN {}",
            recs.len(),
            wal.next_lsn()
        );
    }
    assert!(acked.len() > 15);
}

/// Measurements for the report (`cargo test -p syncoxide-fs-core --test wal -- --ignored
/// --nocapture measure`).
#[test]
#[ignore]
fn measure() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path(), 1).unwrap();
    let n = 500;
    let p = vec![9u8; 200];
    let t0 = Instant::now();
    for _ in 0..n {
        wal.append_durable(&p).unwrap();
    }
    let el = t0.elapsed();
    eprintln!(
        "single-threaded append_durable, 200-byte payloads: {:.0} records/s ({:?} each)",
        n as f64 / el.as_secs_f64(),
        el / n
    );
    let base = wal.syncs();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..13 {
                    wal.append_durable(&p).unwrap();
                }
            });
        }
    });
    eprintln!(
        "8 threads x 13 append_durable: {} fdatasyncs for 104 records in {:?}",
        wal.syncs() - base,
        t0.elapsed()
    );
    let m = 200_000u64;
    let t0 = Instant::now();
    for i in 0..m {
        wal.append(&payload(i)).unwrap();
    }
    wal.sync().unwrap();
    let el = t0.elapsed();
    let bytes = wal.disk_bytes();
    eprintln!(
        "buffered append + one sync: {:.0} records/s",
        m as f64 / el.as_secs_f64()
    );
    drop(wal);
    let t0 = Instant::now();
    let (_wal, recs) = open(tmp.path(), 1).unwrap();
    let el = t0.elapsed();
    let total: usize = recs.iter().map(|r| r.1.len()).sum();
    eprintln!(
        "replay: {} records ({} payload bytes, ~{} on disk) in {el:?}: {:.0} records/s, {:.0} MB/s",
        recs.len(),
        total,
        bytes,
        recs.len() as f64 / el.as_secs_f64(),
        total as f64 / el.as_secs_f64() / 1e6
    );
}

#[test]
fn leftovers_of_an_unfinished_rollover_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        fill(&wal, 3);
    }
    let tmpfile = tmp.path().join("wal-00000000000000000004.log.tmp");
    fs::write(&tmpfile, b"SOXW").unwrap();
    let (wal, recs) = open(tmp.path(), 1).unwrap();
    assert_records(&recs, 1..=3);
    assert!(!tmpfile.exists());
    assert_eq!(wal.append_durable(&payload(4)).unwrap(), 4);
}

#[test]
fn last_segment_cut_to_its_header_keeps_the_lsn_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    two_segments(tmp.path());
    let last = segments(tmp.path())[1].clone();
    let first: Lsn = last.file_name().unwrap().to_str().unwrap()[4..24]
        .parse()
        .unwrap();
    let d = fs::read(&last).unwrap();
    fs::write(&last, &d[..HEADER_LEN + 3]).unwrap();
    let (wal, recs) = open(tmp.path(), 1).unwrap();
    assert_eq!(recs.len() as u64, first - 1);
    assert_eq!(wal.append_durable(b"x").unwrap(), first);
    drop(wal);
    // A damaged header is corruption even in the last segment (headers are synced before the
    // segment gets its name).
    let mut d = fs::read(&last).unwrap();
    d[9] ^= 1;
    fs::write(&last, &d).unwrap();
    assert!(matches!(
        open(tmp.path(), 1),
        Err(WalError::Corrupt { segment, offset: 0, .. }) if segment == last
    ));
}

#[test]
fn discard_concurrent_with_rollover() {
    let tmp = tempfile::tempdir().unwrap();
    let acct = Arc::new(Counter::default());
    let (wal, _) = Wal::open(tmp.path(), cipher(), acct.clone(), 1).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let discarded = AtomicU64::new(1);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let wal = &wal;
            let done = &done;
            s.spawn(move || {
                for i in 0..120u64 {
                    let mut p = format!("t{t} {i}").into_bytes();
                    p.resize(150_000, i as u8);
                    wal.append_durable(&p).unwrap();
                }
                if t == 0 {
                    done.store(true, Ordering::SeqCst);
                }
            });
        }
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let upto = wal.durable_lsn() + 1;
                wal.discard_before(upto).unwrap();
                discarded.store(upto, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(3));
            }
        });
    });
    let used = disk_usage(tmp.path());
    assert!(acct.get() >= used, "charged {} < {used}", acct.get());
    let next = wal.next_lsn();
    drop(wal);
    assert_eq!(acct.get(), 0);
    let from = discarded.load(Ordering::SeqCst);
    let (wal, recs) = open(tmp.path(), from).unwrap();
    assert_eq!(wal.next_lsn(), next);
    assert_eq!(recs.first().map(|r| r.0), Some(from));
    assert_eq!(recs.len() as u64, next - from);
}

/// Pins the bytes of docs/WAL_FORMAT.md: a change of the format without a version bump fails
/// here.
#[test]
fn format_matches_the_documentation() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (wal, _) = open(tmp.path(), 1).unwrap();
        wal.append_durable(b"hello").unwrap();
        wal.append_durable(b"").unwrap();
    }
    let segs = segments(tmp.path());
    assert_eq!(
        segs[0].file_name().unwrap().to_str(),
        Some("wal-00000000000000000001.log")
    );
    let d = fs::read(&segs[0]).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(b"SOXW");
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.extend_from_slice(&[0; 12]);
    assert_eq!(&d[..HEADER_LEN], &header[..]);
    let c = cipher();
    let mut pos = HEADER_LEN;
    for (lsn, want) in [(1u64, &b"hello"[..]), (2, &b""[..])] {
        let len = u32::from_le_bytes(d[pos..pos + 4].try_into().unwrap()) as usize;
        assert_eq!(len, want.len() + RecordCipher::OVERHEAD);
        assert_eq!(&d[pos + 8..pos + 16], &lsn.to_le_bytes());
        let sealed = &d[pos + 16..pos + 16 + len];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), sealed);
        assert_eq!(&d[pos + 4..pos + 8], &crc.to_le_bytes());
        let mut aad = b"syncoxide wal v1".to_vec();
        aad.extend_from_slice(&lsn.to_le_bytes());
        assert_eq!(c.open(&aad, sealed).as_deref(), Some(want));
        pos += 16 + len;
    }
    assert_eq!(pos, d.len());
}

/// `write_through` hands records to the OS without fdatasync: they are in the segment file at
/// once (so a crash of the process keeps them) and a later sync covers them.
#[test]
fn write_through_puts_records_in_the_file_without_a_sync() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(tmp.path(), 1).expect("open");
    wal.append_durable(b"first").expect("append");
    let syncs = wal.syncs();
    let before: u64 = segments(tmp.path())
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    wal.append(b"second, handed to the OS").expect("append");
    wal.write_through().expect("write through");
    let after: u64 = segments(tmp.path())
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(
        after > before,
        "the record is in the file: {before} -> {after}"
    );
    assert_eq!(wal.syncs(), syncs, "no fdatasync");
    wal.sync().expect("sync");
    assert_eq!(
        wal.syncs(),
        syncs + 1,
        "the sync covers what was written through"
    );
    assert_eq!(wal.durable_lsn(), 2);
    drop(wal);
    let (_, records) = open(tmp.path(), 1).expect("reopen");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].1, b"second, handed to the OS");
}
