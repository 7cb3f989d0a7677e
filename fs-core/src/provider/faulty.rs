//! [`FaultyProvider`]: wraps another provider and injects faults according to a [`FaultPlan`],
//! so that the core's retry, offline, deadline and conflict handling can be tested
//! deterministically (failed calls, slow calls, calls that never return, cut downloads, and
//! uploads that happened although the caller was told they timed out).
//!
//! # What it guarantees
//!
//! * **Deterministic.** Each call (while enabled) is numbered per [`Op`], and random decisions
//!   come from a xorshift64* generator seeded by [`FaultPlan::new`]; for a given seed and the
//!   same order of calls, the same faults are injected. Rules of the plan are evaluated in the
//!   order they were added; delays add up; the first fault that fires decides the call, and the
//!   rules after it draw no random number.
//! * **Faults come before the inner call**: a call failed with a [`FaultKind`] (other than
//!   [`FaultKind::AfterEffect`]) or hung never reached the inner provider — a failed write did
//!   not happen. Two exceptions, on purpose: [`FaultKind::AfterEffect`] performs the inner call
//!   and *then* reports [`ProviderError::TimedOut`] (the "did my upload happen?" ambiguity), and
//!   [`FaultPlan::cut_streams_after`] cuts real read streams after a number of bytes.
//! * **Switchable.** [`FaultSwitch`] turns all injection off and on at runtime (e.g. to let a
//!   test flush everything at the end). While off, calls pass straight through, are not counted
//!   and draw no random numbers; streams opened while off are not cut.
//! * A "hang" sleeps (tokio time) for about a century and then fails with `TimedOut`; bound it
//!   with `tokio::time::timeout` (works with a paused clock).
//!
//! `describe` and `capabilities` are passed through; they cannot fail.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{
    ByteStream, Capabilities, ListPage, ObjectAttrs, Precondition, Provider, ProviderError,
    RemoteEntry, RemotePath, Result, Version,
};

/// How long a hung call sleeps before it gives up with `TimedOut`.
pub const HANG: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// One method of [`Provider`] that can be faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Stat,
    List,
    Read,
    Write,
    Delete,
    Mkdir,
    Rmdir,
    Rename,
    Symlink,
    SetAttrs,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 10] = [
        Op::Stat,
        Op::List,
        Op::Read,
        Op::Write,
        Op::Delete,
        Op::Mkdir,
        Op::Rmdir,
        Op::Rename,
        Op::Symlink,
        Op::SetAttrs,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an injected fault looks like to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// [`ProviderError::Unreachable`].
    Unreachable,
    /// [`ProviderError::TimedOut`].
    TimedOut,
    /// [`ProviderError::PreconditionFailed`] for the call's path.
    PreconditionFailed,
    /// [`ProviderError::Other`].
    Other { retryable: bool },
    /// The inner call is performed, then [`ProviderError::TimedOut`] is returned (its result is
    /// dropped). Meant for `Write` (the upload happened, the caller cannot know), but works for
    /// any operation. As a stream cut, the same as `TimedOut`.
    AfterEffect,
}

impl FaultKind {
    /// The error the caller sees.
    pub fn error(&self, op: Op, path: &RemotePath) -> ProviderError {
        match self {
            FaultKind::Unreachable => {
                ProviderError::Unreachable(format!("injected fault ({op} {path})"))
            }
            FaultKind::TimedOut | FaultKind::AfterEffect => ProviderError::TimedOut,
            FaultKind::PreconditionFailed => {
                ProviderError::PreconditionFailed { path: path.clone() }
            }
            FaultKind::Other { retryable } => ProviderError::Other {
                message: format!("injected fault ({op} {path})"),
                retryable: *retryable,
            },
        }
    }
}

#[derive(Clone, Debug)]
enum Rule {
    FailRate { op: Op, p: f64, kind: FaultKind },
    FailNth { op: Op, n: u64, kind: FaultKind },
    Delay { op: Op, d: Duration },
    HangRate { op: Op, p: f64 },
    HangNth { op: Op, n: u64 },
}

impl Rule {
    fn op(&self) -> Op {
        match self {
            Rule::FailRate { op, .. }
            | Rule::FailNth { op, .. }
            | Rule::Delay { op, .. }
            | Rule::HangRate { op, .. }
            | Rule::HangNth { op, .. } => *op,
        }
    }
}

/// Turns fault injection on and off at runtime; clones share the switch.
#[derive(Clone, Debug)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    pub fn set_enabled(&self, enabled: bool) {
        self.0.store(enabled, Ordering::SeqCst);
    }

    pub fn is_enabled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which faults to inject. Built with a seed and rules:
///
/// ```
/// # use std::time::Duration;
/// # use fs_core::provider::faulty::{FaultKind, FaultPlan, Op};
/// let plan = FaultPlan::new(7)
///     .fail_rate(Op::Write, 0.2, FaultKind::Unreachable)
///     .fail_nth(Op::Read, 3, FaultKind::PreconditionFailed)
///     .delay(Op::List, Duration::from_millis(50))
///     .cut_streams_after(4096);
/// ```
#[derive(Clone, Debug)]
pub struct FaultPlan {
    seed: u64,
    rules: Vec<Rule>,
    cut: Option<(u64, FaultKind)>,
    enabled: Arc<AtomicBool>,
}

impl FaultPlan {
    /// No rules yet, enabled.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            rules: Vec::new(),
            cut: None,
            enabled: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Fails each call of `op` with probability `p` (0..=1).
    pub fn fail_rate(mut self, op: Op, p: f64, kind: FaultKind) -> Self {
        self.rules.push(Rule::FailRate {
            op,
            p: p.clamp(0.0, 1.0),
            kind,
        });
        self
    }

    /// Fails every call of `op`.
    pub fn fail_always(self, op: Op, kind: FaultKind) -> Self {
        self.fail_rate(op, 1.0, kind)
    }

    /// Fails exactly the `n`th call of `op` (1-based, counting calls made while enabled).
    pub fn fail_nth(mut self, op: Op, n: u64, kind: FaultKind) -> Self {
        self.rules.push(Rule::FailNth { op, n, kind });
        self
    }

    /// Delays every call of `op` by `d` before it is made.
    pub fn delay(mut self, op: Op, d: Duration) -> Self {
        self.rules.push(Rule::Delay { op, d });
        self
    }

    /// Makes each call of `op` hang (never return, see [`HANG`]) with probability `p`.
    pub fn hang_rate(mut self, op: Op, p: f64) -> Self {
        self.rules.push(Rule::HangRate {
            op,
            p: p.clamp(0.0, 1.0),
        });
        self
    }

    /// Makes exactly the `n`th call of `op` hang.
    pub fn hang_nth(mut self, op: Op, n: u64) -> Self {
        self.rules.push(Rule::HangNth { op, n });
        self
    }

    /// Every read stream ends with an `Unreachable` error after `bytes` bytes (streams with at
    /// most `bytes` bytes end normally).
    pub fn cut_streams_after(self, bytes: u64) -> Self {
        self.cut_streams_after_with(bytes, FaultKind::Unreachable)
    }

    /// Like [`cut_streams_after`](Self::cut_streams_after), with the error of `kind`.
    pub fn cut_streams_after_with(mut self, bytes: u64, kind: FaultKind) -> Self {
        self.cut = Some((bytes, kind));
        self
    }

    /// The switch of this plan (shared with the provider it is given to).
    pub fn switch(&self) -> FaultSwitch {
        FaultSwitch(Arc::clone(&self.enabled))
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }
}

/// What was injected (for tests and their failure messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injected {
    Fail(FaultKind),
    Hang,
    /// A read stream was cut after this many bytes.
    Cut(u64),
}

/// One injected fault: the operation, its call number (1-based, per operation) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedFault {
    pub op: Op,
    pub call: u64,
    pub what: Injected,
}

struct FaultState {
    rng: u64,
    calls: [u64; Op::ALL.len()],
    log: Vec<InjectedFault>,
}

impl FaultState {
    /// xorshift64*, as a float in [0, 1).
    fn draw(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A nonzero generator state from any seed (splitmix64).
fn seed_state(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 {
        0x2545_F491_4F6C_DD1D
    } else {
        z
    }
}

enum Decision {
    Pass,
    Fail(FaultKind),
    Hang,
}

/// A provider that injects faults into calls to `inner`. See the module documentation.
pub struct FaultyProvider<P: ?Sized = dyn Provider> {
    inner: Arc<P>,
    plan: FaultPlan,
    state: Arc<Mutex<FaultState>>,
}

impl<P: ?Sized> fmt::Debug for FaultyProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyProvider")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<FaultState>) -> MutexGuard<'_, FaultState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Provider + ?Sized> FaultyProvider<P> {
    pub fn new(inner: Arc<P>, plan: FaultPlan) -> Self {
        let state = FaultState {
            rng: seed_state(plan.seed),
            calls: [0; Op::ALL.len()],
            log: Vec::new(),
        };
        FaultyProvider {
            inner,
            plan,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The wrapped provider (calls through it are not faulted).
    pub fn inner(&self) -> &Arc<P> {
        &self.inner
    }

    /// The switch of the plan.
    pub fn switch(&self) -> FaultSwitch {
        self.plan.switch()
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.plan.set_enabled(enabled);
    }

    /// Faults injected so far, in order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        lock(&self.state).log.clone()
    }

    /// Calls of `op` counted so far (made while enabled).
    pub fn calls(&self, op: Op) -> u64 {
        lock(&self.state).calls[op.index()]
    }

    fn enabled(&self) -> bool {
        self.plan.enabled.load(Ordering::SeqCst)
    }

    /// The delay and fault for the next call of `op`, and its call number (0 while disabled).
    fn decide(&self, op: Op) -> (Duration, Decision, u64) {
        if !self.enabled() {
            return (Duration::ZERO, Decision::Pass, 0);
        }
        let mut st = lock(&self.state);
        st.calls[op.index()] += 1;
        let call = st.calls[op.index()];
        let mut delay = Duration::ZERO;
        let mut decision = Decision::Pass;
        for rule in self.plan.rules.iter().filter(|r| r.op() == op) {
            match rule {
                Rule::Delay { d, .. } => delay += *d,
                Rule::FailNth { n, kind, .. } if *n == call => {
                    decision = Decision::Fail(kind.clone())
                }
                Rule::FailRate { p, kind, .. } if st.draw() < *p => {
                    decision = Decision::Fail(kind.clone())
                }
                Rule::HangNth { n, .. } if *n == call => decision = Decision::Hang,
                Rule::HangRate { p, .. } if st.draw() < *p => decision = Decision::Hang,
                _ => {}
            }
            if !matches!(decision, Decision::Pass) {
                break;
            }
        }
        let what = match &decision {
            Decision::Pass => None,
            Decision::Fail(kind) => Some(Injected::Fail(kind.clone())),
            Decision::Hang => Some(Injected::Hang),
        };
        if let Some(what) = what {
            tracing::debug!(%op, call, ?what, "injecting fault");
            st.log.push(InjectedFault { op, call, what });
        }
        (delay, decision, call)
    }

    /// Applies the plan before a call: `Err` to fail it now, `Ok(true)` when the call is to be
    /// made and then reported as timed out (`AfterEffect`).
    async fn inject(&self, op: Op, path: &RemotePath) -> Result<bool> {
        self.inject_numbered(op, path).await.map(|(after, _)| after)
    }

    /// [`inject`](Self::inject), also returning the call number (0 while disabled).
    async fn inject_numbered(&self, op: Op, path: &RemotePath) -> Result<(bool, u64)> {
        let (delay, decision, call) = self.decide(op);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match decision {
            Decision::Pass => Ok((false, call)),
            Decision::Fail(FaultKind::AfterEffect) => Ok((true, call)),
            Decision::Fail(kind) => Err(kind.error(op, path)),
            Decision::Hang => {
                tokio::time::sleep(HANG).await;
                Err(ProviderError::TimedOut)
            }
        }
    }

    fn finish<T>(after_effect: bool, op: Op, r: Result<T>) -> Result<T> {
        if after_effect {
            tracing::debug!(%op, ok = r.is_ok(), "call made; reporting a timeout instead");
            Err(ProviderError::TimedOut)
        } else {
            r
        }
    }

    fn cut(&self, stream: ByteStream, path: &RemotePath, call: u64) -> ByteStream {
        let Some((limit, kind)) = self.plan.cut.clone() else {
            return stream;
        };
        if call == 0 {
            // Opened while injection was off.
            return stream;
        }
        let state = CutState {
            inner: stream,
            sent: 0,
            limit,
            error: Some(kind.error(Op::Read, path)),
            call,
            log: Arc::clone(&self.state),
            cut_now: false,
        };
        Box::pin(futures::stream::unfold(state, CutState::next))
    }
}

/// A read stream that ends with an error once more than `limit` bytes would pass.
struct CutState {
    inner: ByteStream,
    sent: u64,
    limit: u64,
    /// `None` once the stream has ended (normally or with an error).
    error: Option<ProviderError>,
    call: u64,
    log: Arc<Mutex<FaultState>>,
    /// The bytes up to the limit were yielded; the error comes next.
    cut_now: bool,
}

impl CutState {
    fn fail(mut self) -> Option<(Result<Bytes>, CutState)> {
        let err = self.error.take()?;
        tracing::debug!(after = self.sent, "cutting a read stream");
        lock(&self.log).log.push(InjectedFault {
            op: Op::Read,
            call: self.call,
            what: Injected::Cut(self.sent),
        });
        Some((Err(err), self))
    }

    async fn next(mut self) -> Option<(Result<Bytes>, CutState)> {
        self.error.as_ref()?;
        if self.cut_now {
            return self.fail();
        }
        match self.inner.next().await {
            None => {
                self.error = None;
                None
            }
            Some(Err(e)) => {
                self.error = None;
                Some((Err(e), self))
            }
            Some(Ok(b)) => {
                let room = self.limit - self.sent;
                if (b.len() as u64) <= room {
                    self.sent += b.len() as u64;
                    Some((Ok(b), self))
                } else if room == 0 {
                    self.fail()
                } else {
                    self.sent += room;
                    self.cut_now = true;
                    Some((Ok(b.slice(..room as usize)), self))
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl<P: Provider + ?Sized> Provider for FaultyProvider<P> {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn stat(&self, path: &RemotePath) -> Result<RemoteEntry> {
        let after = self.inject(Op::Stat, path).await?;
        Self::finish(after, Op::Stat, self.inner.stat(path).await)
    }

    async fn list(&self, dir: &RemotePath, page: Option<String>) -> Result<ListPage> {
        let after = self.inject(Op::List, dir).await?;
        Self::finish(after, Op::List, self.inner.list(dir, page).await)
    }

    async fn read(
        &self,
        path: &RemotePath,
        version: &Version,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream> {
        let (after, call) = self.inject_numbered(Op::Read, path).await?;
        let stream = Self::finish(
            after,
            Op::Read,
            self.inner.read(path, version, offset, len).await,
        )?;
        Ok(self.cut(stream, path, call))
    }

    async fn write(
        &self,
        path: &RemotePath,
        body: ByteStream,
        len: u64,
        pre: Precondition,
        attrs: ObjectAttrs,
    ) -> Result<RemoteEntry> {
        let after = self.inject(Op::Write, path).await?;
        Self::finish(
            after,
            Op::Write,
            self.inner.write(path, body, len, pre, attrs).await,
        )
    }

    async fn delete(&self, path: &RemotePath, pre: Precondition) -> Result<()> {
        let after = self.inject(Op::Delete, path).await?;
        Self::finish(after, Op::Delete, self.inner.delete(path, pre).await)
    }

    async fn mkdir(&self, path: &RemotePath) -> Result<RemoteEntry> {
        let after = self.inject(Op::Mkdir, path).await?;
        Self::finish(after, Op::Mkdir, self.inner.mkdir(path).await)
    }

    async fn rmdir(&self, path: &RemotePath) -> Result<()> {
        let after = self.inject(Op::Rmdir, path).await?;
        Self::finish(after, Op::Rmdir, self.inner.rmdir(path).await)
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<RemoteEntry> {
        let after = self.inject(Op::Rename, from).await?;
        Self::finish(
            after,
            Op::Rename,
            self.inner.rename(from, to, replace).await,
        )
    }

    async fn symlink(&self, path: &RemotePath, target: &str) -> Result<RemoteEntry> {
        let after = self.inject(Op::Symlink, path).await?;
        Self::finish(after, Op::Symlink, self.inner.symlink(path, target).await)
    }

    async fn set_attrs(&self, path: &RemotePath, attrs: ObjectAttrs) -> Result<RemoteEntry> {
        let after = self.inject(Op::SetAttrs, path).await?;
        Self::finish(after, Op::SetAttrs, self.inner.set_attrs(path, attrs).await)
    }

    async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
}
