//! Mounting in the background: the parent re-executes `mountctl mount ... --foreground
//! --daemon-child` and returns only once the child says the mount is live, or fails with the
//! child's own error message.
//!
//! The child's stdin is a pipe carrying the passphrase (never argv, never the child's
//! environment); its stdout is the "ready pipe", on which it writes one JSON line,
//! `{"ready":true}` or `{"error":"..."}`; its stderr is the log file `CACHE_DIR.log` (0600). The
//! child starts a new session (setsid), and once ready points stdin at /dev/null and stdout at
//! the log, so it holds nothing of the terminal or of whoever started it.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::plan::MountPlan;
use crate::secrets;

/// How long the parent waits for the child to report (key derivation, opening the cache,
/// replaying the log, mounting).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the mount of `plan` in a background process; returns its pid once the mount is live.
pub fn spawn(plan: &MountPlan, passphrase: String) -> Result<u32> {
    let log_path = plan.log_file();
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make the log file {} private", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the mountctl program to start")?;
    let mut child = Command::new(exe)
        .args(plan.child_args())
        .env_remove(secrets::ENV)
        .env_remove(secrets::ENV_NEW)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start the mount process")?;
    if let Some(mut stdin) = child.stdin.take() {
        // An error here means the child already died; its exit is reported below.
        let _ = stdin.write_all(passphrase.as_bytes());
    }
    drop(passphrase);
    let stdout = child
        .stdout
        .take()
        .context("the mount process has no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let see_log = format!("see its log {}", log_path.display());
    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the mount did not become ready within {} s and was stopped; {see_log}",
                READY_TIMEOUT.as_secs()
            );
        }
    };
    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    if v["ready"] == Value::Bool(true) {
        return Ok(child.id());
    }
    let status = child.wait().context("cannot wait for the mount process")?;
    match v["error"].as_str() {
        Some(msg) => bail!("{msg}"),
        None => bail!("the mount process ended ({status}) before the mount was ready; {see_log}"),
    }
}

/// Child side: leaves the starting terminal's session.
pub fn detach() -> Result<()> {
    rustix::process::setsid().context("setsid failed")?;
    Ok(())
}

/// Child side: the passphrase the parent wrote on stdin; stdin then reads /dev/null.
pub fn passphrase_from_stdin() -> Result<String> {
    let mut buf = String::new();
    std::io::stdin()
        .take(64 << 10)
        .read_to_string(&mut buf)
        .context("cannot read the passphrase from the parent")?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(null.as_fd()).context("cannot redirect stdin")?;
    if buf.is_empty() {
        bail!("the mount process received no passphrase");
    }
    Ok(buf)
}

/// Tells whoever waits that the mount is live, or why it is not.
pub struct Ready {
    pipe: bool,
    done: bool,
}

impl Ready {
    /// Started by [`spawn`]: report on the ready pipe (stdout).
    pub fn pipe() -> Ready {
        Ready {
            pipe: true,
            done: false,
        }
    }

    /// Run in the foreground by a person: say it on stdout.
    pub fn terminal() -> Ready {
        Ready {
            pipe: false,
            done: false,
        }
    }

    pub fn ready(&mut self, message: &str) {
        if self.done {
            return;
        }
        self.done = true;
        if self.pipe {
            tracing::info!("{message}");
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", json!({"ready": true}));
            let _ = out.flush();
            // The pipe's end closes here: the parent sees end-of-file and returns.
            let _ = rustix::stdio::dup2_stdout(std::io::stderr().as_fd());
        } else {
            let how = if std::io::stdin().is_terminal() {
                "press Ctrl-C or run `mountctl unmount` to unmount"
            } else {
                "send SIGTERM or run `mountctl unmount` to unmount"
            };
            println!("{message}; {how}");
        }
    }

    /// Reports `error` unless readiness was already reported (then it only goes to the log).
    pub fn failed(&mut self, error: &str) {
        if self.done || !self.pipe {
            return;
        }
        self.done = true;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", json!({"error": error}));
        let _ = out.flush();
    }
}
