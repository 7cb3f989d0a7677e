//! A large file on S3 through a real mount: uploaded in parts (multipart upload, the default
//! threshold and part size), the mount killed with `kill -9` in the middle of the upload, then
//! mounted again: the upload resumes, and moto's request log shows that no part the server had
//! acknowledged before the crash is sent again. The object on the server is then compared with
//! what was written, range by range (the file is never held in memory whole).
//!
//! `SYNCOXIDE_MP_MIB` sets the file's size in MiB (default 2048).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::servers::{self, S3_ACCESS_KEY, S3_REGION};
use harness::{wait_until, Drive, Rng};

const SEED: u64 = 0x0005_eed0_fb16;

/// One `PUT` of a part, from moto's request log.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartPut {
    part: u32,
    upload: String,
    status: u16,
}

/// The part `PUT`s to `bucket/key` in moto's log, in the order they were answered.
fn part_puts(bucket: &str, key: &str) -> Vec<PartPut> {
    let log = std::fs::read_to_string(&servers::s3().log).unwrap_or_default();
    let needle = format!("\"PUT /{bucket}/{key}?partNumber=");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            let (query, after) = rest.split_once(" HTTP/1.1\" ")?;
            let (part, upload) = query.split_once("&uploadId=")?;
            Some(PartPut {
                part: part.parse().ok()?,
                upload: upload.to_string(),
                status: after.split(' ').next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Bytes `start..end` of `bucket/key`, with the harness's own request (never the drive's client).
fn get_range(bucket: &str, key: &str, start: u64, end: u64) -> Vec<u8> {
    let server = servers::s3();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect to the S3 server");
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let head = format!(
        "GET /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/20260101/{S3_REGION}/s3/aws4_request, SignedHeaders=host, Signature=0\r\nRange: bytes={start}-{}\r\nConnection: close\r\n\r\n",
        server.port,
        end - 1
    );
    s.write_all(head.as_bytes()).expect("send to the S3 server");
    let mut raw = Vec::with_capacity((end - start) as usize + 4096);
    s.read_to_end(&mut raw).expect("read from the S3 server");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status = String::from_utf8_lossy(&raw[..split]);
    assert!(
        status.starts_with("HTTP/1.1 206") || status.starts_with("HTTP/1.0 206"),
        "ranged GET {key} {start}-{end}: {status}"
    );
    raw.drain(..split + 4);
    raw
}

#[test]
fn large_file_upload_resumes_after_kill9_without_resending_parts() {
    let mib: u64 = std::env::var("SYNCOXIDE_MP_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2048);
    let len = mib << 20;
    let server = servers::s3();
    let b = server.bucket("multipart-kill9");
    server.create_bucket(&b);
    let mut drive = Drive::builder_s3(&b)
        .env("SYNCOXIDE_LOG", "info,fs_core::provider::s3=debug")
        .foreground();
    let path = drive.path().join("big.bin");

    let t0 = Instant::now();
    // The same generator regenerates the data for the comparison at the end.
    harness::write_random_file(&path, len, &mut Rng::new(SEED));
    let wrote = t0.elapsed();
    eprintln!("wrote {mib} MiB into the mount in {wrote:?}");

    // The default part size (8 MiB up to 78 GiB): crash once a third of the parts are in.
    let parts = len.div_ceil(8 << 20) as usize;
    let t1 = Instant::now();
    wait_until(
        Duration::from_secs(600),
        "a third of the parts to be uploaded",
        || {
            part_puts(&b, "big.bin")
                .iter()
                .filter(|p| p.status == 200)
                .count()
                >= parts / 3
        },
    );
    drive.kill9();
    // Let moto finish (or drop) what was in flight.
    std::thread::sleep(Duration::from_secs(2));
    let before = part_puts(&b, "big.bin");
    let crash_at = t1.elapsed();
    let uploads: BTreeSet<&str> = before.iter().map(|p| p.upload.as_str()).collect();
    assert_eq!(uploads.len(), 1, "one upload before the crash: {uploads:?}");
    let upload = before[0].upload.clone();
    let finished: BTreeSet<u32> = before
        .iter()
        .filter(|p| p.status == 200)
        .map(|p| p.part)
        .collect();
    eprintln!(
        "killed after {crash_at:?}: {} of {parts} parts finished",
        finished.len()
    );
    assert!(
        finished.len() < parts,
        "the upload finished before the crash"
    );
    assert!(
        server.get(&b, "big.bin").is_none(),
        "no object before the upload completes"
    );

    let t2 = Instant::now();
    drive.remount();
    // `mountctl flush` gives up after 30 s without the queue shrinking: one upload of gigabytes
    // takes longer.
    let o = harness::Cmd::new(harness::mountctl())
        .args(["flush", "--timeout", "10m"])
        .arg(drive.path())
        .env("SYNCOXIDE_PASSPHRASE", harness::PASSPHRASE)
        .timeout(Duration::from_secs(900))
        .output();
    assert!(o.success(), "{}\n{}", o.describe(), drive.log());
    let resumed = t2.elapsed();
    eprintln!("remount and flush took {resumed:?}");

    let after = part_puts(&b, "big.bin")[before.len()..].to_vec();
    let again: Vec<u32> = after
        .iter()
        .filter(|p| finished.contains(&p.part))
        .map(|p| p.part)
        .collect();
    assert!(
        again.is_empty(),
        "parts finished before the crash were sent again: {again:?}"
    );
    assert!(
        after.iter().all(|p| p.upload == upload),
        "the upload was resumed, not started again: {:?}",
        after.iter().map(|p| &p.upload).collect::<BTreeSet<_>>()
    );
    let sent_after: BTreeSet<u32> = after
        .iter()
        .filter(|p| p.status == 200)
        .map(|p| p.part)
        .collect();
    assert_eq!(
        finished.union(&sent_after).count(),
        parts,
        "every part is on the server, from before the crash or after it"
    );
    eprintln!(
        "after the crash {} part PUTs ({} parts)",
        after.len(),
        sent_after.len()
    );

    // The object equals the file, 64 MiB at a time.
    let t3 = Instant::now();
    let mut rng = Rng::new(SEED);
    let window = 64u64 << 20;
    let mut expected = vec![0u8; window as usize];
    let mut off = 0;
    while off < len {
        let end = (off + window).min(len);
        // `write_random_file` draws 1 MiB at a time.
        let n = (end - off) as usize;
        for chunk in expected[..n].chunks_mut(1 << 20) {
            rng.fill(chunk);
        }
        let got = get_range(&b, "big.bin", off, end);
        assert!(
            got == expected[..n],
            "the object differs from the file in bytes {off}..{end}"
        );
        off = end;
    }
    eprintln!("compared in {:?}", t3.elapsed());
    // And through the mount, which now reads it as clean data.
    let mut f = File::open(&path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    let mut tail = vec![0u8; 4096];
    f.seek(SeekFrom::Start(len - 4096)).unwrap();
    f.read_exact(&mut tail).unwrap();
    assert_eq!(tail, get_range(&b, "big.bin", len - 4096, len));
    drop(f);
    drive.unmount();
    eprintln!("total {:?}", t0.elapsed());
}
