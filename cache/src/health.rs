//! Health of the cache disk. When the disk fails (EIO, ENOSPC, EROFS, EDQUOT...), the cache keeps
//! working in a degraded mode: reads of clean chunks degrade to misses (the caller goes to the
//! provider), clean writes are skipped until a probe succeeds, and writes of dirty data report the
//! error to the caller, who must not acknowledge them.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long a degraded cache waits before trying a clean write again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// What the cache reports about its disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded {
        since: SystemTime,
        last_error: String,
    },
}

#[derive(Default)]
pub(crate) struct HealthTracker {
    inner: Mutex<Option<Degraded>>,
}

struct Degraded {
    since: SystemTime,
    last_error: String,
    next_probe: Instant,
}

impl HealthTracker {
    pub(crate) fn report_failure(&self, what: &str, err: &std::io::Error) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let msg = format!("{what}: {err}");
        match g.as_mut() {
            Some(d) => {
                d.last_error = msg;
                d.next_probe = Instant::now() + PROBE_INTERVAL;
            }
            None => {
                tracing::error!(error = %msg, "cache disk failing; reads fall back to the provider");
                *g = Some(Degraded {
                    since: SystemTime::now(),
                    last_error: msg,
                    next_probe: Instant::now() + PROBE_INTERVAL,
                });
            }
        }
    }

    pub(crate) fn report_success(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.take().is_some() {
            tracing::info!("cache disk healthy again");
        }
    }

    /// Whether a clean (optional) write should be attempted now.
    pub(crate) fn allow_optional_write(&self) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            None => true,
            Some(d) => Instant::now() >= d.next_probe,
        }
    }

    pub(crate) fn get(&self) -> Health {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            None => Health::Healthy,
            Some(d) => Health::Degraded {
                since: d.since,
                last_error: d.last_error.clone(),
            },
        }
    }
}
