//! The cache stays within `--cache-size` while files three times its size go through the mount:
//! a 192 MiB file put in the remote folder is read through a mount with a 64 MiB cache, and a
//! 192 MiB file is written through it (`dd`, then `mountctl flush`). A sampler measures the cache
//! directory with `du` (disk usage and apparent size) every 100 ms during the whole run; neither
//! may ever exceed 64 MiB, and both files must be intact.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{run, sha256, tempdir, Cmd, Drive};

const LIMIT: u64 = 64 << 20;
const FILE_MIB: u64 = 192;

/// `du -s --block-size=1 [--apparent-size] DIR` in bytes (`None` if du printed nothing: files
/// vanish while it walks, which makes it fail but still print the total).
fn du(dir: &Path, apparent: bool) -> Option<u64> {
    let mut c = Cmd::new("du").args(["-s", "--block-size=1"]);
    if apparent {
        c = c.arg("--apparent-size");
    }
    let o = c.arg(dir).timeout(Duration::from_secs(30)).output();
    o.text().split_whitespace().next()?.parse().ok()
}

#[derive(Default, Debug)]
struct Samples {
    count: u64,
    max_disk: u64,
    max_apparent: u64,
    /// (seconds since start, disk, apparent) at the maximum of disk usage.
    at_max: (f64, u64, u64),
}

#[test]
fn cache_stays_within_its_limit_for_files_three_times_larger() {
    let started = Instant::now();
    let remote = tempdir("remote");
    let work = tempdir("bounded");
    let count = format!("count={FILE_MIB}");
    let src_in = remote.path().join("in.bin");
    let src_out = work.path().join("out-src.bin");
    for f in [&src_in, &src_out] {
        let of = format!("of={}", f.display());
        run(
            "dd",
            [
                "if=/dev/urandom",
                of.as_str(),
                "bs=1M",
                count.as_str(),
                "status=none",
            ],
            work.path(),
        );
    }
    let want_in = sha256(&src_in);
    let want_out = sha256(&src_out);

    let cache = work.path().join("cache");
    let mut drive = Drive::builder(remote.path())
        .cache_dir(&cache)
        .cache_size("64MiB")
        .mount();

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler = {
        let (stop, samples, cache) = (stop.clone(), samples.clone(), cache.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let (Some(disk), Some(apparent)) = (du(&cache, false), du(&cache, true)) {
                    let mut s = samples.lock().unwrap();
                    s.count += 1;
                    if disk > s.max_disk {
                        s.max_disk = disk;
                        s.at_max = (started.elapsed().as_secs_f64(), disk, apparent);
                    }
                    s.max_apparent = s.max_apparent.max(apparent);
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        })
    };

    let read_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sha256(&drive.path().join("in.bin"))
    }));
    let t_read = started.elapsed();
    let of = format!("of={}", drive.path().join("out.bin").display());
    let iff = format!("if={}", src_out.display());
    let write_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(
            "dd",
            [iff.as_str(), of.as_str(), "bs=1M", "status=none"],
            work.path(),
        );
        drive.flush();
    }));
    let t_write = started.elapsed();
    let status = drive.status_json();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let s = samples.lock().unwrap();
    eprintln!(
        "read {t_read:?}, write+flush {:?}; {} samples, max du {} B, max apparent {} B \
         (limit {LIMIT}); at max: {:?}; status: {status}",
        t_write - t_read,
        s.count,
        s.max_disk,
        s.max_apparent,
        s.at_max
    );
    let got_in = read_result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(got_in, want_in, "in.bin read through the mount differs");
    write_result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(s.count >= 10, "too few samples: {}", s.count);
    assert!(
        s.max_disk <= LIMIT,
        "the cache used {} bytes on disk (du), more than its limit of {LIMIT}",
        s.max_disk
    );
    assert!(
        s.max_apparent <= LIMIT,
        "the cache's apparent size reached {} bytes, more than its limit of {LIMIT}",
        s.max_apparent
    );
    drive.unmount();
    assert_eq!(
        sha256(&remote.path().join("out.bin")),
        want_out,
        "out.bin on the remote differs from what was written"
    );
}
