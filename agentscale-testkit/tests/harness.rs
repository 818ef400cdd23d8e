//! Tests of the harness itself: capabilities, what a memory store declares
//! and missing services give ignored trials (failed ones under `CI=true`), a hanging check times out,
//! and cleanup runs after a failing or hanging check.
//!
//! Each test runs the harness on a small set of trials and checks the
//! counts of its conclusion. They change the `CI` variable of this process,
//! so they run one at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Capabilities, Depth, Enqueued, ExpiryMode, Lease, Metric, Nack, Task, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_state::local::LocalMemoryStore;
use agentscale_testkit::libtest_mimic::{self, Arguments, Conclusion, Failed, Trial};
use agentscale_testkit::{
    service_env, MemoryFixture, MemoryParams, QueueFixture, QueueOptions, SessionFixture, SetupResult, Suites,
};
use async_trait::async_trait;

/// How a [`Faulty`] queue departs from the local queue it wraps.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Declares no fencing (and behaves correctly otherwise).
    NoFencing,
    /// `depth()` reports one ready task too many.
    WrongDepth,
    /// `lease()` never returns.
    LeaseHangs,
}

/// A local queue with one deliberate fault, to see the harness react.
#[derive(Debug)]
struct Faulty {
    inner: LocalQueue,
    fault: Fault,
}

#[async_trait]
impl TaskQueue for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        if let Fault::NoFencing = self.fault {
            c.fencing = false;
        }
        c
    }
    async fn enqueue(&self, task: Task) -> agentscale_core::Result<Enqueued> {
        self.inner.enqueue(task).await
    }
    async fn lease(&self, max: usize, wait: Duration) -> agentscale_core::Result<Vec<Lease>> {
        if let Fault::LeaseHangs = self.fault {
            futures::future::pending::<()>().await;
        }
        self.inner.lease(max, wait).await
    }
    async fn ack(&self, lease: &Lease) -> agentscale_core::Result<()> {
        self.inner.ack(lease).await
    }
    async fn nack(&self, lease: &Lease, nack: Nack) -> agentscale_core::Result<()> {
        self.inner.nack(lease, nack).await
    }
    async fn extend(&self, lease: &Lease, by: Duration) -> agentscale_core::Result<()> {
        self.inner.extend(lease, by).await
    }
    async fn depth(&self) -> agentscale_core::Result<Depth> {
        let mut d = self.inner.depth().await?;
        if let Fault::WrongDepth = self.fault {
            d.ready += 1;
        }
        Ok(d)
    }
}

/// Counts setups and cleanups of the fixtures a backend made.
#[derive(Default)]
struct Ledger {
    setups: AtomicUsize,
    cleanups: AtomicUsize,
}

fn faulty(fault: Fault, ledger: Arc<Ledger>) -> Suites {
    Suites::new()
        .check_timeout(Duration::from_secs(2))
        .queue("faulty", move |opts: QueueOptions| {
            let ledger = ledger.clone();
            async move {
                let inner = LocalQueue::builder(opts.name)
                    .lease_timeout(opts.lease_timeout)
                    .max_envelope_bytes(opts.max_envelope_bytes)
                    .build()?;
                ledger.setups.fetch_add(1, Ordering::SeqCst);
                let done = ledger.clone();
                Ok(
                    QueueFixture::new(Faulty { inner, fault }).with_cleanup(move || async move {
                        done.cleanups.fetch_add(1, Ordering::SeqCst);
                    }),
                )
            }
        })
}

async fn missing_sessions(_: agentscale_testkit::SessionParams) -> SetupResult<SessionFixture> {
    service_env("AGENTSCALE_TESTKIT_NO_SUCH_SERVICE")?;
    unreachable!("the variable is never set")
}

fn missing_service() -> Suites {
    Suites::new().session("nowhere", missing_sessions).service_test(
        "AGENTSCALE_TESTKIT_NO_SUCH_SERVICE",
        "needs_nowhere",
        |_| async {},
    )
}

/// A local memory store that only hides expired records and has no L2: it
/// is built with cosine when asked for L2 and with hide when asked for delete.
async fn hide_only_no_l2(p: MemoryParams) -> SetupResult<MemoryFixture> {
    let metric = if p.metric == Metric::L2 {
        Metric::Cosine
    } else {
        p.metric
    };
    let store = LocalMemoryStore::builder()
        .dimensions(p.dimensions)
        .metric(metric)
        .expiry_mode(ExpiryMode::Hide)
        .build()?;
    Ok(MemoryFixture::new(Arc::new(store)))
}

fn args(filter: &str) -> Arguments {
    Arguments {
        filter: Some(filter.to_string()),
        test_threads: Some(2),
        quiet: true,
        ..Arguments::default()
    }
}

fn counts(c: &Conclusion) -> (u64, u64, u64) {
    (c.num_passed, c.num_failed, c.num_ignored)
}

fn expect(what: &str, got: (u64, u64, u64), want: (u64, u64, u64)) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: (passed, failed, ignored) = {got:?}, expected {want:?}").into())
    }
}

fn with_ci<T>(value: Option<&str>, f: impl FnOnce() -> T) -> T {
    let before = std::env::var("CI").ok();
    match value {
        Some(v) => std::env::set_var("CI", v),
        None => std::env::remove_var("CI"),
    }
    let out = f();
    match before {
        Some(v) => std::env::set_var("CI", v),
        None => std::env::remove_var("CI"),
    }
    out
}

/// A check the capabilities rule out is ignored; the others run and pass.
fn capabilities_rule_out_checks() -> Result<(), Failed> {
    let ledger = Arc::new(Ledger::default());
    // `_refused` selects stale_lease_refused (needs fencing),
    // oversize_envelope_refused and invalid_task_refused.
    let c = faulty(Fault::NoFencing, ledger.clone()).run_with(&args("_refused"));
    expect("no fencing", counts(&c), (2, 0, 1))?;
    let setups = ledger.setups.load(Ordering::SeqCst);
    let cleanups = ledger.cleanups.load(Ordering::SeqCst);
    if (setups, cleanups) != (3, 3) {
        return Err(
            format!("{setups} setups (1 probe, 2 checks), {cleanups} cleanups: expected 3 and 3").into(),
        );
    }
    Ok(())
}

/// A memory check needing a metric or expiry mode the store does not declare
/// is ignored; the rest of the suite runs and passes.
fn declarations_rule_out_memory_checks() -> Result<(), Failed> {
    let c = Suites::new()
        .memory("hide_only", hide_only_no_l2)
        .run_with(&args("memory::"));
    // 15 checks: l2_matches_brute_force and expiry_deletes do not apply.
    expect("hide only, no L2", counts(&c), (13, 0, 2))
}

/// A failing check and a hanging check both fail, and both fixtures are
/// cleaned up (as is the probe's).
fn failures_and_hangs_are_cleaned_up() -> Result<(), Failed> {
    let ledger = Arc::new(Ledger::default());
    let c = faulty(Fault::WrongDepth, ledger.clone()).run_with(&args("invalid_task_refused"));
    expect("wrong depth", counts(&c), (0, 1, 0))?;
    let c = faulty(Fault::LeaseHangs, ledger.clone()).run_with(&args("lease_wakes_on_enqueue"));
    expect("lease hangs", counts(&c), (0, 1, 0))?;
    let setups = ledger.setups.load(Ordering::SeqCst);
    let cleanups = ledger.cleanups.load(Ordering::SeqCst);
    if setups != 4 || cleanups != 4 {
        return Err(
            format!("{setups} setups (2 probes, 2 checks), {cleanups} cleanups: expected 4 and 4").into(),
        );
    }
    Ok(())
}

/// Outside CI a missing service is ignored, never passed.
fn missing_service_ignored_outside_ci() -> Result<(), Failed> {
    let c = with_ci(None, || missing_service().run_with(&args("")));
    expect("outside CI", counts(&c), (0, 0, 11))
}

/// Under `CI=true` a missing service fails every check that needs it.
fn missing_service_fails_under_ci() -> Result<(), Failed> {
    let c = with_ci(Some("true"), || missing_service().run_with(&args("")));
    expect("under CI", counts(&c), (0, 11, 0))
}

/// Plain tests: a panic is a failure, a hang is a failure, the rest pass.
fn plain_tests() -> Result<(), Failed> {
    let suites = Suites::new()
        .check_timeout(Duration::from_millis(500))
        .test("passes", || async {})
        .test("panics", || async { panic!("deliberate") })
        .test("hangs", futures::future::pending::<()>);
    let c = suites.run_with(&args(""));
    expect("plain tests", counts(&c), (1, 2, 0))
}

fn main() {
    let mut args = Arguments::from_args();
    // The tests change this process's `CI` variable: one at a time.
    args.test_threads = Some(1);
    let trials = vec![
        Trial::test("capabilities_rule_out_checks", capabilities_rule_out_checks),
        Trial::test(
            "declarations_rule_out_memory_checks",
            declarations_rule_out_memory_checks,
        ),
        Trial::test(
            "failures_and_hangs_are_cleaned_up",
            failures_and_hangs_are_cleaned_up,
        ),
        Trial::test(
            "missing_service_ignored_outside_ci",
            missing_service_ignored_outside_ci,
        ),
        Trial::test("missing_service_fails_under_ci", missing_service_fails_under_ci),
        Trial::test("plain_tests", plain_tests),
    ];
    libtest_mimic::run(&args, trials).exit()
}
