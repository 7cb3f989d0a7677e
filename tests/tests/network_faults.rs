//! A flaky network between the drive and its server, through a real mount: a TCP proxy that
//! delays, refuses, swallows (accepts and never answers) and resets connections at random while a
//! random workload runs on the mount. No call may hang: each is timed against a deadline far
//! above the drive's own (`--request-timeout 5s`, `--offline-timeout 5s`) but far below "stuck".
//! The uploads then run for a while with the faults still on (flushes may fail, never hang).
//! Once the faults stop and the queue is flushed, the remote holds exactly what the same
//! workload made in a folder on the normal disk: nothing lost, nothing twice.
//!
//! `SYNCOXIDE_FAULT_SEED` picks the workload and fault schedule (printed on failure).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::proxy::{Fault, Proxy};
use harness::remotes::TestRemote;
use harness::{tempdir, wait_until, Rng};

/// The longest any single call on the mount may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
const STEPS: usize = 160;
/// How long the uploads run with the faults still on, after the workload.
const FLUSH_UNDER_FAULTS: Duration = Duration::from_secs(20);

#[test]
fn s3_through_a_flaky_network() {
    flaky_network(&TestRemote::s3("flaky"));
}

#[test]
fn webdav_through_a_flaky_network() {
    flaky_network(&TestRemote::webdav("flaky"));
}

#[test]
fn sftp_through_a_flaky_network() {
    flaky_network(&TestRemote::sftp("flaky"));
}

/// Runs `f`, failing the test if it takes longer than [`CALL_DEADLINE`].
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    let took = t0.elapsed();
    assert!(
        took < CALL_DEADLINE,
        "{what} took {took:?} (deadline {CALL_DEADLINE:?})"
    );
    r
}

fn flaky_network(remote: &TestRemote) {
    let seed = Rng::seed_from_env("SYNCOXIDE_FAULT_SEED", 11);
    eprintln!("SYNCOXIDE_FAULT_SEED={seed}");
    let mut rng = Rng::new(seed);
    // Files the remote has before the mount, read (uncached) while the faults run.
    let before: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("before/f{i}.bin"), rng.bytes(50_000 + i * 7_000)))
        .collect();
    for (name, data) in &before {
        remote.put(name, data);
    }
    let proxy = Proxy::start(remote.server_port().expect("a network remote"));
    let drive = remote
        .builder_via(proxy.port)
        .arg("--offline-timeout")
        .arg("5s")
        .arg("--poll-interval")
        .arg("0")
        .mount();
    let m = drive.path().to_path_buf();
    let reference = tempdir("flaky-reference");
    let r = reference.path().join("w");
    fs::create_dir(&r).unwrap();
    fs::create_dir(m.join("w")).unwrap();

    // The faults, on their own schedule.
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = Arc::new(proxy);
    let chaos = {
        let (stop, proxy) = (stop.clone(), proxy.clone());
        let mut frng = Rng::new(seed ^ 0x5eed);
        std::thread::spawn(move || {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let f = match frng.range(0, 5) {
                    0 | 1 => Fault::None,
                    2 => Fault::Delay(Duration::from_millis(frng.range(50, 400))),
                    3 => Fault::Refuse,
                    4 => Fault::Blackhole,
                    _ => {
                        proxy.reset_all();
                        Fault::None
                    }
                };
                proxy.set(f);
                log.push(f);
                std::thread::sleep(Duration::from_millis(frng.range(200, 1500)));
            }
            proxy.set(Fault::None);
            log
        })
    };

    let mut files: Vec<String> = Vec::new();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut n = 0;
    for step in 0..STEPS {
        let both = |rel: &str| (m.join("w").join(rel), r.join(rel));
        match rng.range(0, 9) {
            0..=2 => {
                let dir = &dirs[rng.range(0, dirs.len() as u64 - 1) as usize];
                n += 1;
                let rel = format!("{dir}f{n}.dat").trim_start_matches('/').to_string();
                let len = rng.range(0, 200_000) as usize;
                let data = rng.bytes(len);
                let (a, b) = both(&rel);
                timed(&format!("step {step}: write {rel}"), || {
                    fs::write(&a, &data)
                })
                .unwrap_or_else(|e| panic!("step {step}: write {rel}: {e}"));
                fs::write(&b, &data).unwrap();
                files.push(rel);
            }
            3 if !files.is_empty() => {
                let rel = files[rng.range(0, files.len() as u64 - 1) as usize].clone();
                let len = rng.range(1, 30_000) as usize;
                let more = rng.bytes(len);
                let (a, b) = both(&rel);
                for p in [&a, &b] {
                    let mut f = timed(&format!("step {step}: open {rel}"), || {
                        fs::OpenOptions::new().append(true).open(p)
                    })
                    .unwrap_or_else(|e| panic!("step {step}: open {rel}: {e}"));
                    std::io::Write::write_all(&mut f, &more).unwrap();
                }
            }
            4 if !files.is_empty() => {
                let i = rng.range(0, files.len() as u64 - 1) as usize;
                let rel = files.remove(i);
                let (a, b) = both(&rel);
                timed(&format!("step {step}: unlink {rel}"), || {
                    fs::remove_file(&a)
                })
                .unwrap_or_else(|e| panic!("step {step}: unlink {rel}: {e}"));
                fs::remove_file(&b).unwrap();
            }
            5 if !files.is_empty() => {
                let i = rng.range(0, files.len() as u64 - 1) as usize;
                let from = files.remove(i);
                n += 1;
                let dir = &dirs[rng.range(0, dirs.len() as u64 - 1) as usize];
                let to = format!("{dir}r{n}.dat").trim_start_matches('/').to_string();
                let (a1, b1) = both(&from);
                let (a2, b2) = both(&to);
                timed(&format!("step {step}: rename {from} {to}"), || {
                    fs::rename(&a1, &a2)
                })
                .unwrap_or_else(|e| panic!("step {step}: rename {from} {to}: {e}"));
                fs::rename(&b1, &b2).unwrap();
                files.push(to);
            }
            6 => {
                n += 1;
                let parent = &dirs[rng.range(0, dirs.len() as u64 - 1) as usize];
                let rel = format!("{parent}d{n}/");
                let (a, b) = both(&rel);
                timed(&format!("step {step}: mkdir {rel}"), || fs::create_dir(&a))
                    .unwrap_or_else(|e| panic!("step {step}: mkdir {rel}: {e}"));
                fs::create_dir(&b).unwrap();
                dirs.push(rel);
            }
            7 => {
                // An uncached file of the remote: its bytes, or an error, soon; never others.
                let (name, data) = &before[rng.range(0, before.len() as u64 - 1) as usize];
                if let Ok(got) = timed(&format!("step {step}: read {name}"), || {
                    fs::read(m.join(name))
                }) {
                    assert!(&got == data, "step {step}: {name} read back wrong");
                }
            }
            8 => {
                timed(&format!("step {step}: list"), || {
                    let _ = fs::read_dir(m.join("w")).map(|d| d.count());
                });
            }
            _ => {
                timed(&format!("step {step}: statfs"), || {
                    let _ = harness::run("df", ["-k".as_ref(), m.as_os_str()], Path::new("/"));
                });
            }
        }
        if step % 20 == 0 {
            std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
        }
    }

    // The uploads, with the faults still on: a flush may fail, but must not hang.
    let t0 = Instant::now();
    while t0.elapsed() < FLUSH_UNDER_FAULTS {
        timed("a flush under faults", || {
            drive.mountctl([
                "flush".as_ref(),
                "--timeout".as_ref(),
                "5s".as_ref(),
                drive.path().as_os_str(),
            ])
        });
    }
    stop.store(true, Ordering::Relaxed);
    let faults = chaos.join().unwrap();
    eprintln!("faults: {faults:?}");
    // Once the network is back, everything reaches the remote.
    wait_until(Duration::from_secs(180), "a successful flush", || {
        drive
            .mountctl([
                "flush".as_ref(),
                "--timeout".as_ref(),
                "60s".as_ref(),
                drive.path().as_os_str(),
            ])
            .success()
    });
    let mut drive = drive;
    drive.unmount();
    remote.assert_holds(&r, "w");
    for (name, data) in &before {
        assert!(
            &fs::read(remote.view().join(name)).unwrap() == data,
            "{name} changed on the remote"
        );
    }
}
