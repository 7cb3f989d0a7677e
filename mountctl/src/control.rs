//! The control socket of a running mount: one JSON request line, one JSON response line, then
//! the server closes the connection.
//!
//! Requests: `{"op":"status"}`, `{"op":"conflicts"}` (answer: `"conflicts"`, a list of
//! [`conflict_json`]), `{"op":"flush"}` (optionally `"stall_ms": N`: give up once the
//! queue has made no progress for N ms, default 30 s), `{"op":"unmount"}` (checkpoint, unmount,
//! exit; flushing first is the client's job). Every response has `"ok"`; a failure has
//! `"error"` (a message for people) and, for a flush, `"queued"` (operations left in the
//! write-ahead log) and `"last_error"` (the provider's last error, or null). A status response has `"mount"` (`mountpoint`, `remote`, `cache_dir`,
//! `pid`) and `"status"` (see [`status_json`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fs_core::{ConflictRecord, ConflictWinner, Status, Vfs};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Notify};

/// Longest request line the server reads.
const MAX_LINE: u64 = 64 << 10;
/// Stall limit of a flush that does not name one.
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

/// A request to a running mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    /// The conflicts the mount resolved since it started.
    Conflicts,
    /// Pin (`pin: true`) or unpin files and directories, by paths relative to the mount's root.
    Pin {
        paths: Vec<String>,
        pin: bool,
    },
    /// The state of each path (relative to the mount's root).
    State {
        paths: Vec<String>,
    },
    Flush {
        stall: Duration,
    },
    Unmount,
}

impl Request {
    pub fn to_line(&self) -> String {
        let v = match self {
            Request::Status => json!({"op": "status"}),
            Request::Conflicts => json!({"op": "conflicts"}),
            Request::Pin { paths, pin } => {
                json!({"op": if *pin { "pin" } else { "unpin" }, "paths": paths})
            }
            Request::State { paths } => json!({"op": "state", "paths": paths}),
            Request::Flush { stall } => {
                json!({"op": "flush", "stall_ms": stall.as_millis() as u64})
            }
            Request::Unmount => json!({"op": "unmount"}),
        };
        format!("{v}\n")
    }

    pub fn parse(line: &str) -> Result<Request, String> {
        let v: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("request is not JSON: {e}"))?;
        match v.get("op").and_then(Value::as_str) {
            Some("status") => Ok(Request::Status),
            Some("conflicts") => Ok(Request::Conflicts),
            Some(op @ ("pin" | "unpin" | "state")) => {
                let paths: Vec<String> = v
                    .get("paths")
                    .and_then(Value::as_array)
                    .ok_or("pin, unpin and state need \"paths\", a list of strings")?
                    .iter()
                    .map(|p| p.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or("every entry of \"paths\" must be a string")?;
                Ok(match op {
                    "state" => Request::State { paths },
                    _ => Request::Pin {
                        paths,
                        pin: op == "pin",
                    },
                })
            }
            Some("flush") => {
                let stall = match v.get("stall_ms") {
                    None | Some(Value::Null) => DEFAULT_STALL,
                    Some(x) => Duration::from_millis(
                        x.as_u64()
                            .ok_or("stall_ms must be a whole number of milliseconds")?,
                    ),
                };
                Ok(Request::Flush { stall })
            }
            Some("unmount") => Ok(Request::Unmount),
            Some(op) => Err(format!(
                "unknown op {op:?}; expected status, conflicts, pin, unpin, state, flush or unmount"
            )),
            None => Err("request has no \"op\"".into()),
        }
    }
}

pub fn failure(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

/// The core's figures as JSON, byte counts in bytes, `offline_since` in Unix seconds or null.
pub fn status_json(s: &Status) -> Value {
    json!({
        "cache_used_bytes": s.cache_used,
        "cache_limit_bytes": s.cache_limit,
        "dirty_bytes": s.dirty_bytes,
        "pinned_bytes": s.pinned_bytes,
        "queued": s.queued,
        "in_flight": s.in_flight,
        "last_error": s.last_error,
        "fetches": s.fetches,
        "fetched_bytes": s.fetched_bytes,
        "uploads": s.uploads,
        "uploaded_bytes": s.uploaded_bytes,
        "conflicts": s.conflicts,
        "offline_since": s.offline_since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
    })
}

/// One conflict as JSON: `path`, `copy` (null when the loser was deleted), `winner` (`remote`
/// or `local`: which version is at `path`), `at` (Unix seconds).
pub fn conflict_json(c: &ConflictRecord) -> Value {
    json!({
        "path": c.path,
        "copy": c.copy,
        "winner": match c.winner {
            ConflictWinner::Remote => "remote",
            ConflictWinner::Local => "local",
        },
        "at": c.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// Nobody listens there: the mount's process is gone (or never registered).
    NotRunning(std::io::Error),
    /// The mount answered nonsense, or the connection broke mid-answer.
    Broken(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(e) => write!(f, "the mount's process does not answer ({e})"),
            CallError::Broken(e) => write!(f, "the mount's process answered badly: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends `req` and returns the response object (whose `"ok"` may be false). `timeout` bounds
/// the wait for the answer (None: wait as long as it takes).
pub fn call(socket: &Path, req: &Request, timeout: Option<Duration>) -> Result<Value, CallError> {
    let mut s = UnixStream::connect(socket).map_err(CallError::NotRunning)?;
    let broken = |e: std::io::Error| CallError::Broken(e.to_string());
    s.set_read_timeout(timeout).map_err(broken)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(broken)?;
    s.write_all(req.to_line().as_bytes()).map_err(broken)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(broken)?;
    if line.is_empty() {
        return Err(CallError::Broken(
            "connection closed without an answer".into(),
        ));
    }
    let v: Value = serde_json::from_str(&line).map_err(|e| CallError::Broken(e.to_string()))?;
    if !v.get("ok").is_some_and(Value::is_boolean) {
        return Err(CallError::Broken(format!("no \"ok\" in {line:?}")));
    }
    Ok(v)
}

/// The message of a failed response.
pub fn error_of(v: &Value) -> Option<&str> {
    if v["ok"] == Value::Bool(true) {
        None
    } else {
        Some(v["error"].as_str().unwrap_or("unknown error"))
    }
}

/// An unmount request handed to the mount's lifecycle, which answers it.
pub struct UnmountRequest {
    reply: oneshot::Sender<Value>,
    written: Arc<Notify>,
}

impl UnmountRequest {
    /// Sends the answer; the returned notifier fires once it has been written to the client.
    pub fn answer(self, v: Value) -> Arc<Notify> {
        let _ = self.reply.send(v);
        self.written
    }
}

struct Shared {
    vfs: Vfs,
    mount: Value,
    unmount: mpsc::Sender<UnmountRequest>,
}

/// Answers requests on `listener` until the task is dropped. `mount` describes the mount in
/// status answers; unmount requests are handed over on `unmount`.
pub async fn serve(
    listener: UnixListener,
    vfs: Vfs,
    mount: Value,
    unmount: mpsc::Sender<UnmountRequest>,
) {
    let shared = Arc::new(Shared {
        vfs,
        mount,
        unmount,
    });
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let (answer, written) = match tokio::io::BufReader::new(read.take(MAX_LINE))
                .read_line(&mut line)
                .await
            {
                Err(e) => (failure(format!("cannot read the request: {e}")), None),
                Ok(_) => match Request::parse(&line) {
                    Err(e) => (failure(e), None),
                    Ok(req) => answer(&shared, req).await,
                },
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
            let _ = write.shutdown().await;
            if let Some(w) = written {
                w.notify_one();
            }
        });
    }
}

async fn answer(shared: &Shared, req: Request) -> (Value, Option<Arc<Notify>>) {
    let vfs = &shared.vfs;
    match req {
        Request::Status => (
            json!({"ok": true, "mount": shared.mount, "status": status_json(&vfs.status())}),
            None,
        ),
        Request::Conflicts => {
            let list: Vec<Value> = vfs.conflicts().iter().map(conflict_json).collect();
            (json!({"ok": true, "conflicts": list}), None)
        }
        Request::Pin { paths, pin } => {
            let mut out = Vec::new();
            for p in &paths {
                let r = match vfs.resolve(p).await {
                    Ok(node) => vfs.pin(node, pin).await,
                    Err(e) => Err(e),
                };
                out.push(match r {
                    Ok(rep) => json!({"path": p, "ok": true, "files": rep.files, "bytes": rep.bytes}),
                    Err(fs_core::FsError::NoSpace) => {
                        let s = vfs.status();
                        json!({"path": p, "ok": false, "error": format!(
                            "does not fit in the cache: {} of {} bytes are already pinned or dirty; unpin something or mount with a larger --cache-size",
                            s.pinned_bytes + s.dirty_bytes, s.cache_limit)})
                    }
                    Err(e) => json!({"path": p, "ok": false, "error": e.to_string()}),
                });
            }
            (json!({"ok": true, "results": out}), None)
        }
        Request::State { paths } => {
            let mut out = Vec::new();
            for p in &paths {
                let r = match vfs.resolve(p).await {
                    Ok(node) => vfs.file_state(node),
                    Err(e) => Err(e),
                };
                out.push(match r {
                    Ok(st) => json!({"path": p, "ok": true, "state": st.name()}),
                    Err(e) => json!({"path": p, "ok": false, "error": e.to_string()}),
                });
            }
            (json!({"ok": true, "results": out}), None)
        }
        Request::Flush { stall } => match vfs.flush_all(stall).await {
            Ok(()) => (json!({"ok": true, "queued": 0}), None),
            Err(e) => {
                let s = vfs.status();
                let v = json!({
                    "ok": false,
                    "error": e.to_string(),
                    "queued": s.queued,
                    "last_error": s.last_error,
                });
                (v, None)
            }
        },
        Request::Unmount => {
            let (tx, rx) = oneshot::channel();
            let written = Arc::new(Notify::new());
            let req = UnmountRequest {
                reply: tx,
                written: written.clone(),
            };
            if shared.unmount.send(req).await.is_err() {
                return (failure("the mount is already shutting down"), None);
            }
            let v = rx
                .await
                .unwrap_or_else(|_| failure("the mount is already shutting down"));
            (v, Some(written))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Conflicts,
            Request::Pin {
                paths: vec!["a/b".into(), "".into()],
                pin: false,
            },
            Request::State {
                paths: vec!["x".into()],
            },
            Request::Unmount,
            Request::Flush {
                stall: Duration::from_millis(1500),
            },
        ] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r.clone()));
        }
        assert_eq!(
            Request::parse(r#"{"op":"flush"}"#),
            Ok(Request::Flush {
                stall: DEFAULT_STALL
            })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(Request::parse("status").unwrap_err().contains("not JSON"));
        assert!(Request::parse("{}").unwrap_err().contains("no \"op\""));
        assert!(Request::parse(r#"{"op":"format"}"#)
            .unwrap_err()
            .contains("unknown op"));
        assert!(Request::parse(r#"{"op":"flush","stall_ms":-1}"#)
            .unwrap_err()
            .contains("stall_ms"));
    }

    #[test]
    fn status_has_every_field() {
        let s = Status {
            cache_used: 5,
            cache_limit: 10,
            queued: 2,
            last_error: Some("boom".into()),
            offline_since: Some(UNIX_EPOCH + Duration::from_secs(7)),
            ..Status::default()
        };
        let v = status_json(&s);
        assert_eq!(v["cache_used_bytes"], 5);
        assert_eq!(v["cache_limit_bytes"], 10);
        assert_eq!(v["queued"], 2);
        assert_eq!(v["in_flight"], 0);
        assert_eq!(v["last_error"], "boom");
        assert_eq!(v["offline_since"], 7);
        assert_eq!(status_json(&Status::default())["last_error"], Value::Null);
    }

    #[test]
    fn conflicts_name_both_versions() {
        let c = ConflictRecord {
            path: "/docs/a.txt".into(),
            copy: Some("/docs/a.conflict-h-20261205-101010.txt".into()),
            winner: ConflictWinner::Local,
            at: UNIX_EPOCH + Duration::from_secs(9),
        };
        let v = conflict_json(&c);
        assert_eq!(v["path"], "/docs/a.txt");
        assert_eq!(v["copy"], "/docs/a.conflict-h-20261205-101010.txt");
        assert_eq!(v["winner"], "local");
        assert_eq!(v["at"], 9);
        let dropped = ConflictRecord {
            copy: None,
            winner: ConflictWinner::Remote,
            ..c
        };
        assert_eq!(conflict_json(&dropped)["copy"], Value::Null);
        assert_eq!(conflict_json(&dropped)["winner"], "remote");
    }

    #[test]
    fn a_dead_socket_is_not_running() {
        let d = tempfile::tempdir().unwrap();
        let e = call(&d.path().join("none.sock"), &Request::Status, None).unwrap_err();
        assert!(matches!(e, CallError::NotRunning(_)), "{e}");
    }

    #[test]
    fn a_server_answers_one_line() {
        // A minimal server speaking the protocol, to check the client's framing.
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("c.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(Request::parse(&line), Ok(Request::Unmount));
            (&s).write_all(b"{\"ok\":false,\"error\":\"busy\"}\n")
                .unwrap();
        });
        let v = call(&sock, &Request::Unmount, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(error_of(&v), Some("busy"));
        t.join().unwrap();
    }
}
