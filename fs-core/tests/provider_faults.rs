//! `FaultyProvider` over `MemoryProvider`: faults fire exactly where the plan says, failed calls
//! never reach the inner provider (its counters prove it), `AfterEffect` writes do, read streams
//! are cut after N bytes, the switch turns everything off, the same seed gives the same faults,
//! and hung calls can be bounded with `tokio::time::timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fs_core::provider::faulty::{
    FaultKind, FaultPlan, FaultyProvider, Injected, InjectedFault, Op,
};
use fs_core::provider::memory::MemoryProvider;
use fs_core::provider::{
    collect, once, ObjectAttrs, Precondition, Provider, ProviderError, RemotePath,
};
use futures::StreamExt;

fn rp(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

fn faulty(plan: FaultPlan) -> FaultyProvider<MemoryProvider> {
    let inner = Arc::new(MemoryProvider::new());
    inner.put_file("f", b"file contents");
    FaultyProvider::new(inner, plan)
}

async fn write(p: &dyn Provider, path: &str, data: &'static [u8]) -> Result<(), ProviderError> {
    p.write(
        &rp(path),
        once(Bytes::from_static(data)),
        data.len() as u64,
        Precondition::None,
        ObjectAttrs::default(),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn fail_nth_fires_exactly_on_the_nth_call() {
    let p = faulty(FaultPlan::new(1).fail_nth(Op::Stat, 3, FaultKind::Unreachable));
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(p.stat(&rp("f")).await.is_ok());
    }
    assert_eq!(results, [true, true, false, true, true]);
    assert_eq!(
        p.inner().counters().stat,
        4,
        "the failed call did not reach the provider"
    );
    assert_eq!(p.calls(Op::Stat), 5);
    assert_eq!(
        p.injected(),
        [InjectedFault {
            op: Op::Stat,
            call: 3,
            what: Injected::Fail(FaultKind::Unreachable)
        }]
    );
    // Other operations are counted separately and untouched.
    assert!(p.list(&RemotePath::root(), None).await.is_ok());
}

#[tokio::test]
async fn fault_kinds_become_the_right_errors() {
    let p = faulty(
        FaultPlan::new(1)
            .fail_nth(Op::Read, 1, FaultKind::PreconditionFailed)
            .fail_nth(Op::Read, 2, FaultKind::TimedOut)
            .fail_nth(Op::Read, 3, FaultKind::Other { retryable: true })
            .fail_nth(Op::Read, 4, FaultKind::Unreachable),
    );
    let v = p.stat(&rp("f")).await.unwrap().version;
    let mut errs = Vec::new();
    for _ in 0..4 {
        errs.push(p.read(&rp("f"), &v, 0, 100).await.err().unwrap());
    }
    assert_eq!(errs[0], ProviderError::PreconditionFailed { path: rp("f") });
    assert_eq!(errs[1], ProviderError::TimedOut);
    assert!(matches!(
        errs[2],
        ProviderError::Other {
            retryable: true,
            ..
        }
    ));
    assert!(errs[2].is_retryable());
    assert!(errs[3].is_unreachable());
    assert_eq!(p.inner().counters().read, 0);
    assert_eq!(
        collect(p.read(&rp("f"), &v, 0, 100).await.unwrap())
            .await
            .unwrap(),
        b"file contents"
    );
}

#[tokio::test]
async fn a_failed_write_did_not_happen() {
    let p = faulty(FaultPlan::new(2).fail_always(Op::Write, FaultKind::Unreachable));
    let err = write(&p, "new", b"data").await.unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable(_)));
    assert_eq!(p.inner().counters().write, 0);
    assert_eq!(p.inner().counters().write_bytes, 0);
    assert!(p.inner().file("new").is_none());
    // Every other mutating operation too.
    let p = faulty(Op::ALL.iter().fold(FaultPlan::new(3), |plan, op| {
        plan.fail_always(*op, FaultKind::TimedOut)
    }));
    let before = p.inner().snapshot();
    assert!(p.delete(&rp("f"), Precondition::None).await.is_err());
    assert!(p.mkdir(&rp("d")).await.is_err());
    assert!(p.rename(&rp("f"), &rp("g"), true).await.is_err());
    assert!(p.symlink(&rp("l"), "f").await.is_err());
    assert!(p
        .set_attrs(
            &rp("f"),
            ObjectAttrs {
                mode: Some(0o600),
                mtime: None
            }
        )
        .await
        .is_err());
    assert!(p.rmdir(&rp("f")).await.is_err());
    assert_eq!(p.inner().snapshot(), before);
    assert_eq!(p.inner().counters(), Default::default());
}

#[tokio::test]
async fn after_effect_write_happened_but_reports_a_timeout() {
    let p = faulty(FaultPlan::new(4).fail_nth(Op::Write, 1, FaultKind::AfterEffect));
    let err = write(&p, "up", b"uploaded").await.unwrap_err();
    assert_eq!(err, ProviderError::TimedOut);
    assert_eq!(p.inner().counters().write, 1);
    assert_eq!(
        p.inner().file("up").unwrap(),
        b"uploaded",
        "the write did happen"
    );
    // The retry (second call) goes through normally.
    write(&p, "up", b"again").await.unwrap();
    assert_eq!(p.inner().file("up").unwrap(), b"again");
}

#[tokio::test]
async fn cut_streams_after_ends_reads_with_an_error_after_n_bytes() {
    let p = faulty(FaultPlan::new(5).cut_streams_after(100_000));
    let data: Vec<u8> = (0..250_000u32).map(|i| (i % 251) as u8).collect();
    p.inner().put_file("big", &data);
    let v = p.stat(&rp("big")).await.unwrap().version;
    let mut s = p.read(&rp("big"), &v, 0, u64::MAX).await.unwrap();
    let mut got = Vec::new();
    let mut err = None;
    while let Some(item) = s.next().await {
        assert!(err.is_none(), "nothing after the error");
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(got.len(), 100_000);
    assert_eq!(got, &data[..100_000]);
    assert!(
        matches!(err, Some(ProviderError::Unreachable(_))),
        "{err:?}"
    );
    assert!(p.injected().contains(&InjectedFault {
        op: Op::Read,
        call: 1,
        what: Injected::Cut(100_000)
    }));

    // A read of at most N bytes ends normally; so does a range read past the cut point.
    let s = p.read(&rp("big"), &v, 0, 100_000).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &data[..100_000]);
    let s = p.read(&rp("big"), &v, 200_000, 10).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &data[200_000..200_010]);

    // With another error kind, at a chunk boundary (64 KiB pieces).
    let p = faulty(FaultPlan::new(5).cut_streams_after_with(65_536, FaultKind::TimedOut));
    p.inner().put_file("big", &data);
    let v = p.stat(&rp("big")).await.unwrap().version;
    let s = p.read(&rp("big"), &v, 0, u64::MAX).await.unwrap();
    let items: Vec<_> = s.collect().await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap().len(), 65_536);
    assert_eq!(items[1], Err(ProviderError::TimedOut));
}

#[tokio::test]
async fn the_switch_turns_faults_off_and_on() {
    let plan = FaultPlan::new(6)
        .fail_always(Op::Stat, FaultKind::Unreachable)
        .cut_streams_after(3);
    let plan_switch = plan.switch();
    let p = faulty(plan);
    assert!(p.stat(&rp("f")).await.is_err());
    let switch = p.switch();
    switch.set_enabled(false);
    assert!(
        !plan_switch.is_enabled(),
        "the plan and the provider share the switch"
    );
    let e = p.stat(&rp("f")).await.unwrap();
    let s = p.read(&rp("f"), &e.version, 0, 100).await.unwrap();
    assert_eq!(
        collect(s).await.unwrap(),
        b"file contents",
        "streams are not cut while off"
    );
    assert_eq!(p.calls(Op::Stat), 1, "calls while off are not counted");
    plan_switch.set_enabled(true);
    assert!(p.stat(&rp("f")).await.is_err());
    p.set_enabled(false);
    assert!(p.stat(&rp("f")).await.is_ok());
}

/// Which of `n` stats fail under a 50 % fault rate with `seed`.
async fn pattern(seed: u64, n: usize) -> Vec<bool> {
    let p = faulty(
        FaultPlan::new(seed)
            .fail_rate(Op::Stat, 0.5, FaultKind::Unreachable)
            .fail_rate(Op::List, 0.5, FaultKind::TimedOut),
    );
    let mut out = Vec::new();
    for i in 0..n {
        out.push(p.stat(&rp("f")).await.is_ok());
        if i % 3 == 0 {
            out.push(p.list(&RemotePath::root(), None).await.is_ok());
        }
    }
    out
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let a = pattern(42, 200).await;
    let b = pattern(42, 200).await;
    assert_eq!(a, b);
    let fails = a.iter().filter(|ok| !**ok).count();
    assert!(
        (60..=210).contains(&fails),
        "about half fail: {fails} of {}",
        a.len()
    );
    assert_ne!(a, pattern(43, 200).await, "another seed, other faults");
    // Rate 0 never fires, rate 1 always.
    let p = faulty(FaultPlan::new(1).fail_rate(Op::Stat, 0.0, FaultKind::Unreachable));
    for _ in 0..50 {
        assert!(p.stat(&rp("f")).await.is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn hung_calls_can_be_bounded_with_a_timeout() {
    let p = faulty(
        FaultPlan::new(7)
            .hang_rate(Op::List, 1.0)
            .hang_nth(Op::Write, 2),
    );
    let r = tokio::time::timeout(Duration::from_secs(30), p.list(&RemotePath::root(), None)).await;
    assert!(r.is_err(), "the list hangs");
    assert_eq!(p.inner().counters().list, 0);
    assert_eq!(p.injected()[0].what, Injected::Hang);
    // Only the second write hangs.
    write(&p, "a", b"1").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), write(&p, "b", b"2")).await;
    assert!(r.is_err());
    assert!(p.inner().file("b").is_none());
    write(&p, "c", b"3").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn delays_slow_calls_down() {
    let p = faulty(FaultPlan::new(8).delay(Op::Stat, Duration::from_millis(250)));
    let start = tokio::time::Instant::now();
    p.stat(&rp("f")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    let start = tokio::time::Instant::now();
    p.list(&RemotePath::root(), None).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(250));
}

#[tokio::test]
async fn wraps_a_dyn_provider() {
    let inner: Arc<dyn Provider> = Arc::new(MemoryProvider::new());
    let p: FaultyProvider = FaultyProvider::new(inner, FaultPlan::new(9));
    assert_eq!(p.describe(), "faulty(memory)");
    assert_eq!(p.capabilities(), MemoryProvider::new().capabilities());
    p.mkdir(&rp("d")).await.unwrap();
    assert_eq!(p.inner().stat(&rp("d")).await.unwrap().name, "d");
    // And is itself a provider.
    let _: Arc<dyn Provider> = Arc::new(p);
}
