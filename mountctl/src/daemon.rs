//! Mounting in the background: the parent re-executes `mountctl mount ... --foreground
//! --daemon-child` and returns only once the child says the mount is live, or fails with the
//! child's own error message.
//!
//! The child's stdin is a pipe carrying the secrets, one JSON object: the cache's passphrase
//! and a WebDAV remote's password, resolved by the parent (from the environment or the named
//! remote), so that the child has them from neither argv nor its environment (the parent's
//! SYNCOXIDE_WEBDAV_PASSWORD is removed from it). Its stdout is the "ready pipe", on which it
//! writes one JSON line, `{"ready":true}` or `{"error":"..."}`; its stderr is the log file `CACHE_DIR.log` (0600). The
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

use crate::plan::{MountPlan, PlanRemote, WEBDAV_PASSWORD_ENV};
use crate::secrets::{self, Secret};

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
        .env_remove(WEBDAV_PASSWORD_ENV)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start the mount process")?;
    let webdav_password = match &plan.remote {
        PlanRemote::WebDav { password, .. } => password.as_ref().map(Secret::expose),
        _ => None,
    };
    let secrets = json!({"passphrase": passphrase, "webdav_password": webdav_password});
    drop(passphrase);
    if let Some(mut stdin) = child.stdin.take() {
        // An error here means the child already died; its exit is reported below.
        let _ = stdin.write_all(secrets.to_string().as_bytes());
    }
    drop(secrets);
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

/// What the parent hands the child on stdin.
pub struct ChildSecrets {
    pub passphrase: String,
    pub webdav_password: Option<Secret>,
}

/// Child side: the secrets the parent wrote on stdin; stdin then reads /dev/null.
pub fn secrets_from_stdin() -> Result<ChildSecrets> {
    let mut buf = String::new();
    std::io::stdin()
        .take(256 << 10)
        .read_to_string(&mut buf)
        .context("cannot read the passphrase from the parent")?;
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(null.as_fd()).context("cannot redirect stdin")?;
    parse_secrets(&buf)
}

fn parse_secrets(text: &str) -> Result<ChildSecrets> {
    // Not shown in an error: the text is secret.
    let v: Value = serde_json::from_str(text)
        .map_err(|_| anyhow::anyhow!("the mount process received no passphrase"))?;
    let passphrase = match v["passphrase"].as_str() {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => bail!("the mount process received no passphrase"),
    };
    Ok(ChildSecrets {
        passphrase,
        webdav_password: v["webdav_password"]
            .as_str()
            .map(|p| Secret::new(p.to_string())),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secrets_reach_the_child_whole() {
        let text = json!({"passphrase": "p\"w\n x", "webdav_password": "dav pw"}).to_string();
        let s = parse_secrets(&text).unwrap();
        assert_eq!(s.passphrase, "p\"w\n x");
        assert_eq!(s.webdav_password.unwrap().expose(), "dav pw");
        let s = parse_secrets(&json!({"passphrase": "p", "webdav_password": null}).to_string())
            .unwrap();
        assert!(s.webdav_password.is_none());
        for bad in ["", "not json", "{\"passphrase\": \"\"}"] {
            let e = parse_secrets(bad).err().unwrap().to_string();
            assert_eq!(e, "the mount process received no passphrase");
        }
    }
}
