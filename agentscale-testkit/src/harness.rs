//! The libtest-mimic harness: [`Suites`] collects backends and tests, turns
//! every check into a trial, and runs each trial guarded (fresh namespace,
//! timeout, cleanup whatever happens).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::Capabilities;
use futures::future::BoxFuture;
use futures::FutureExt;
use libtest_mimic::{Arguments, Completion, Conclusion, Failed, Trial};
use tokio::runtime::Runtime;

use crate::setup::{
    is_ci, Cleanup, MemoryFixture, MemoryParams, QueueFixture, QueueOptions, SessionFixture, SessionParams,
    SetupError, SetupResult, ToolCacheFixture, ToolCacheParams,
};
use crate::{memory, queue, session, tool_cache};

/// A check that runs longer than this fails (unless the backend's test file
/// sets another limit with [`Suites::check_timeout`]).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a `setup` may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a cleanup may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a finished trial's runtime waits for stray tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

type Setup<P, F> = Arc<dyn Fn(P) -> BoxFuture<'static, SetupResult<F>> + Send + Sync>;
type TestFn = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// Whether a state store declares what a check needs: `Err(what it declares
/// instead)` when it does not.
pub(crate) type Declares<S> = fn(&S) -> Result<(), String>;

/// One check of a state suite: how it adjusts the parameters, what the store
/// built with them must declare, and its body (given the store and a fresh
/// tenant).
pub(crate) struct StateCheck<P, S: ?Sized> {
    pub(crate) name: &'static str,
    pub(crate) configure: fn(&mut P),
    /// `None` for a check every store must pass; otherwise `Err(what the
    /// store declares instead)` when the store built with the check's
    /// parameters cannot do what the check needs (say, it declares another
    /// expiry mode than the one asked for): the check is then ignored.
    pub(crate) requires: Option<Declares<S>>,
    pub(crate) run: fn(Arc<S>, String) -> BoxFuture<'static, ()>,
}

/// One check of the queue suite: what it needs of the backend's
/// [`Capabilities`], and its body.
pub(crate) struct QueueCheck {
    pub(crate) name: &'static str,
    /// `Err(what is missing)` when the capabilities rule the check out.
    pub(crate) requires: fn(&Capabilities) -> Result<(), &'static str>,
    pub(crate) run: for<'a> fn(&'a QueueFixture) -> BoxFuture<'a, ()>,
}

pub(crate) fn always(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}

pub(crate) fn unchanged<P>(_: &mut P) {}

enum Entry {
    Queue(String, Setup<QueueOptions, QueueFixture>),
    Session(String, Setup<SessionParams, SessionFixture>),
    Memory(String, Setup<MemoryParams, MemoryFixture>),
    ToolCache(String, Setup<ToolCacheParams, ToolCacheFixture>),
    Test {
        name: String,
        service: Option<String>,
        run: TestFn,
    },
}

/// The backends and tests of one test target. Register each backend with
/// one line, then hand the whole set to [`run`](crate::run).
///
/// Trials are named `<suite>::<backend>::<check>` (`queue::redis::ack_removes`,
/// `session::local::cas_single_winner`); tests added with [`Suites::test`]
/// keep their own name.
pub struct Suites {
    check_timeout: Duration,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Suites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suites")
            .field("check_timeout", &self.check_timeout)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Default for Suites {
    fn default() -> Self {
        Suites::new()
    }
}

fn boxed_setup<P, F, S, Fut>(setup: S) -> Setup<P, F>
where
    S: Fn(P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = SetupResult<F>> + Send + 'static,
{
    Arc::new(move |p| setup(p).boxed())
}

impl Suites {
    /// Nothing registered yet; checks time out after [`DEFAULT_CHECK_TIMEOUT`].
    pub fn new() -> Self {
        Suites {
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            entries: Vec::new(),
        }
    }

    /// Fails any check or test that runs longer than `limit` (default 90 s).
    pub fn check_timeout(mut self, limit: Duration) -> Self {
        self.check_timeout = limit;
        self
    }

    /// Runs the task-queue suite against `backend`: `setup` builds a queue
    /// from [`QueueOptions`] (a fresh name per check).
    pub fn queue<S, Fut>(mut self, backend: impl Into<String>, setup: S) -> Self
    where
        S: Fn(QueueOptions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SetupResult<QueueFixture>> + Send + 'static,
    {
        self.entries
            .push(Entry::Queue(backend.into(), boxed_setup(setup)));
        self
    }

    /// Runs the session-store suite against `backend`.
    pub fn session<S, Fut>(mut self, backend: impl Into<String>, setup: S) -> Self
    where
        S: Fn(SessionParams) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SetupResult<SessionFixture>> + Send + 'static,
    {
        self.entries
            .push(Entry::Session(backend.into(), boxed_setup(setup)));
        self
    }

    /// Runs the long-term memory store suite against `backend`.
    pub fn memory<S, Fut>(mut self, backend: impl Into<String>, setup: S) -> Self
    where
        S: Fn(MemoryParams) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SetupResult<MemoryFixture>> + Send + 'static,
    {
        self.entries
            .push(Entry::Memory(backend.into(), boxed_setup(setup)));
        self
    }

    /// Runs the tool-cache suite against `backend`.
    pub fn tool_cache<S, Fut>(mut self, backend: impl Into<String>, setup: S) -> Self
    where
        S: Fn(ToolCacheParams) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = SetupResult<ToolCacheFixture>> + Send + 'static,
    {
        self.entries
            .push(Entry::ToolCache(backend.into(), boxed_setup(setup)));
        self
    }

    /// Adds a backend-specific test that needs no service. It runs on its
    /// own tokio runtime, under the same timeout as the checks.
    pub fn test<F, Fut>(mut self, name: impl Into<String>, test: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.entries.push(Entry::Test {
            name: name.into(),
            service: None,
            run: Arc::new(move |_| test().boxed()),
        });
        self
    }

    /// Adds a backend-specific test that needs the service named by the
    /// environment variable `var`; it receives the variable's value. When
    /// `var` is unset the test is ignored, or fails under `CI=true`.
    pub fn service_test<F, Fut>(mut self, var: impl Into<String>, name: impl Into<String>, test: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.entries.push(Entry::Test {
            name: name.into(),
            service: Some(var.into()),
            run: Arc::new(move |v| test(v).boxed()),
        });
        self
    }

    /// Runs the registered checks and tests with `args` and returns the
    /// conclusion (what [`run`](crate::run) does before exiting).
    pub fn run_with(self, args: &Arguments) -> Conclusion {
        let ci = is_ci();
        let trials = self.trials(ci);
        let mut tests = Vec::with_capacity(trials.len());
        for (trial, ignored_because) in trials {
            if let Some(why) = ignored_because {
                if !args.list && !args.is_filtered_out(&trial) {
                    eprintln!("ignored {}: {why}", trial.name());
                }
            }
            tests.push(trial);
        }
        libtest_mimic::run(args, tests)
    }

    fn trials(self, ci: bool) -> Vec<(Trial, Option<String>)> {
        let timeout = self.check_timeout;
        let needs_probe = self.entries.iter().any(|e| !matches!(e, Entry::Test { .. }));
        let probe_rt = needs_probe.then(new_runtime).transpose();
        let probe_rt = match probe_rt {
            Ok(rt) => rt,
            Err(e) => {
                // Without a runtime nothing can run: one failing trial says why.
                let msg = format!("cannot start a tokio runtime: {e}");
                return vec![(Trial::test("harness", move || Err(Failed::from(msg))), None)];
            }
        };
        let mut out = Vec::new();
        for entry in self.entries {
            match entry {
                Entry::Queue(backend, setup) => {
                    let rt = probe_rt
                        .as_ref()
                        .expect("probe runtime exists when a suite is registered");
                    let probed = probe(
                        rt,
                        &setup,
                        QueueOptions::fresh("probe"),
                        |fx: &mut QueueFixture| (Some(fx.queue.capabilities()), fx.cleanup.take()),
                    );
                    report_broken("queue", &backend, &probed);
                    for check in queue::checks() {
                        let ignore = ignore_reason(&probed, ci, |caps| (check.requires)(caps));
                        let setup = setup.clone();
                        let (name, requires, run) = (check.name, check.requires, check.run);
                        let trial = guarded_trial(
                            format!("queue::{backend}::{name}"),
                            ignore.clone(),
                            timeout,
                            move || {
                                let opts = QueueOptions::fresh(name);
                                async move {
                                    let mut fx = setup(opts).await?;
                                    let cleanup = fx.cleanup.take();
                                    Ok((fx, cleanup))
                                }
                                .boxed()
                            },
                            move |fx: Arc<QueueFixture>| {
                                async move {
                                    // Reached only when the probe could not read the
                                    // capabilities: a check that does not apply fails.
                                    if let Err(what) = requires(&fx.queue.capabilities()) {
                                        panic!("the backend declares {what}: this check does not apply");
                                    }
                                    run(&fx).await
                                }
                                .boxed()
                            },
                        );
                        out.push((trial, ignore));
                    }
                }
                Entry::Session(backend, setup) => {
                    let rt = probe_rt
                        .as_ref()
                        .expect("probe runtime exists when a suite is registered");
                    state_trials(
                        rt,
                        "session",
                        &backend,
                        setup,
                        session::checks(),
                        SessionParams::fresh,
                        ci,
                        timeout,
                        &mut out,
                    );
                }
                Entry::Memory(backend, setup) => {
                    let rt = probe_rt
                        .as_ref()
                        .expect("probe runtime exists when a suite is registered");
                    state_trials(
                        rt,
                        "memory",
                        &backend,
                        setup,
                        memory::checks(),
                        MemoryParams::fresh,
                        ci,
                        timeout,
                        &mut out,
                    );
                }
                Entry::ToolCache(backend, setup) => {
                    let rt = probe_rt
                        .as_ref()
                        .expect("probe runtime exists when a suite is registered");
                    state_trials(
                        rt,
                        "tool_cache",
                        &backend,
                        setup,
                        tool_cache::checks(),
                        ToolCacheParams::fresh,
                        ci,
                        timeout,
                        &mut out,
                    );
                }
                Entry::Test { name, service, run } => {
                    let (value, ignore) = match service.as_deref().map(crate::setup::service_env) {
                        None => (Ok(String::new()), None),
                        Some(Ok(v)) => (Ok(v), None),
                        Some(Err(e)) if !ci => (Err(e.clone()), Some(e.to_string())),
                        Some(Err(e)) => (Err(e), None),
                    };
                    let trial = guarded_trial(
                        name,
                        ignore.clone(),
                        timeout,
                        move || async move { value.map(|v| (v, None)) }.boxed(),
                        move |v: Arc<String>| run(v.as_ref().clone()),
                    );
                    out.push((trial, ignore));
                }
            }
        }
        if let Some(rt) = probe_rt {
            rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
        out
    }
}

trait StateFixture<S: ?Sized>: Send + Sync + 'static {
    fn store(&self) -> &Arc<S>;
    fn take_cleanup(&mut self) -> Option<Cleanup>;
    fn split(self) -> (Arc<S>, Option<Cleanup>);
}

impl<S: ?Sized + Send + Sync + 'static> StateFixture<S> for crate::setup::Fixture<S> {
    fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn take_cleanup(&mut self) -> Option<Cleanup> {
        self.cleanup.take()
    }

    fn split(mut self) -> (Arc<S>, Option<Cleanup>) {
        let cleanup = self.cleanup.take();
        (self.store, cleanup)
    }
}

#[allow(clippy::too_many_arguments)]
fn state_trials<P, S, F>(
    rt: &Runtime,
    suite: &str,
    backend: &str,
    setup: Setup<P, F>,
    checks: Vec<StateCheck<P, S>>,
    fresh: fn(&str) -> P,
    ci: bool,
    timeout: Duration,
    out: &mut Vec<(Trial, Option<String>)>,
) where
    P: Send + 'static,
    S: ?Sized + Send + Sync + 'static,
    F: StateFixture<S>,
{
    let probed = probe(rt, &setup, fresh("probe"), |fx: &mut F| {
        // State stores declare no capabilities; the probe only finds out
        // whether the service is there.
        let _ = fx;
        (None, None)
    });
    report_broken(suite, backend, &probed);
    for check in checks {
        let (name, configure, requires, run) = (check.name, check.configure, check.requires, check.run);
        let mut ignore = ignore_reason(&probed, ci, |_| Ok(()));
        if let (Some(requires), Probe::Ready(_)) = (requires, &probed) {
            // What the store declares depends on the check's parameters: build
            // one with them (in a throwaway namespace) and ask it.
            let mut params = fresh(&format!("probe_{name}"));
            configure(&mut params);
            let declared = probe(rt, &setup, params, move |fx: &mut F| {
                (requires(fx.store()), fx.take_cleanup())
            });
            match declared {
                Probe::Ready(Ok(())) => {}
                Probe::Ready(Err(what)) => ignore = Some(format!("backend declares {what}")),
                Probe::Missing(e) => ignore = (!ci).then(|| e.to_string()),
                Probe::Broken(why) => eprintln!("{suite}::{backend}::{name}: {why} (the check will fail)"),
            }
        }
        let setup = setup.clone();
        let trial = guarded_trial(
            format!("{suite}::{backend}::{name}"),
            ignore.clone(),
            timeout,
            move || {
                let mut params = fresh(name);
                configure(&mut params);
                async move {
                    let (store, cleanup) = setup(params).await?.split();
                    Ok((store, cleanup))
                }
                .boxed()
            },
            move |store: Arc<Arc<S>>| {
                let store = Arc::clone(&*store);
                // Reached only when the probe could not ask the store: a check
                // that does not apply fails.
                if let Some(Err(what)) = requires.map(|r| r(&store)) {
                    return async move { panic!("the backend declares {what}: this check does not apply") }
                        .boxed();
                }
                run(store, crate::setup::unique_name("tenant"))
            },
        );
        out.push((trial, ignore));
    }
}

/// What a setup call made while building the trial list found.
enum Probe<T = Option<Capabilities>> {
    /// The backend was built; what it declares (its capabilities, if any).
    Ready(T),
    /// The service is not configured.
    Missing(SetupError),
    /// Setup failed; the checks run (and fail) anyway.
    Broken(String),
}

/// Builds one fixture (in a throwaway namespace) to learn whether the service
/// is there and what the backend declares, then cleans it up.
fn probe<P, F, T>(
    rt: &Runtime,
    setup: &Setup<P, F>,
    params: P,
    inspect: impl FnOnce(&mut F) -> (T, Option<Cleanup>) + Send + 'static,
) -> Probe<T>
where
    P: Send + 'static,
    F: Send + 'static,
    T: Send + 'static,
{
    let setup = setup.clone();
    rt.block_on(async move {
        let built = tokio::time::timeout(SETUP_TIMEOUT, AssertUnwindSafe(setup(params)).catch_unwind()).await;
        match built {
            Err(_) => Probe::Broken(format!("setup did not finish within {SETUP_TIMEOUT:?}")),
            Ok(Err(panic)) => Probe::Broken(format!("setup panicked: {}", panic_message(&*panic))),
            Ok(Ok(Err(e @ SetupError::ServiceMissing { .. }))) => Probe::Missing(e),
            Ok(Ok(Err(e))) => Probe::Broken(e.to_string()),
            Ok(Ok(Ok(mut fx))) => {
                let (caps, cleanup) = inspect(&mut fx);
                drop(fx);
                match cleanup {
                    Some(c) => match run_cleanup(c).await {
                        Ok(()) => Probe::Ready(caps),
                        Err(e) => Probe::Broken(format!("probe {e}")),
                    },
                    None => Probe::Ready(caps),
                }
            }
        }
    })
}

fn report_broken(suite: &str, backend: &str, probed: &Probe) {
    if let Probe::Broken(why) = probed {
        eprintln!("{suite}::{backend}: {why} (its checks will fail)");
    }
}

/// Why a check is ignored: the service is missing (outside CI), or the
/// backend's capabilities rule it out.
fn ignore_reason(
    probed: &Probe,
    ci: bool,
    requires: impl FnOnce(&Capabilities) -> Result<(), &'static str>,
) -> Option<String> {
    match probed {
        Probe::Missing(e) if !ci => Some(e.to_string()),
        Probe::Ready(Some(caps)) => requires(caps)
            .err()
            .map(|what| format!("backend declares {what}")),
        _ => None,
    }
}

fn new_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// A trial that builds its fixture, runs the check as a task under
/// `timeout`, and then runs the cleanup whether the check passed, failed,
/// panicked or timed out.
fn guarded_trial<Fx, S, C>(
    name: String,
    ignore: Option<String>,
    timeout: Duration,
    setup: S,
    check: C,
) -> Trial
where
    Fx: Send + Sync + 'static,
    S: FnOnce() -> BoxFuture<'static, SetupResult<(Fx, Option<Cleanup>)>> + Send + 'static,
    C: FnOnce(Arc<Fx>) -> BoxFuture<'static, ()> + Send + 'static,
{
    let ignored = ignore.is_some();
    Trial::ignorable_test(name, move || match ignore {
        // Only reached with `--ignored`/`--include-ignored`: still not run.
        Some(why) => Ok(Completion::ignored_with(why)),
        None => run_guarded(timeout, setup, check),
    })
    .with_ignored_flag(ignored)
}

fn run_guarded<Fx, S, C>(timeout: Duration, setup: S, check: C) -> Result<Completion, Failed>
where
    Fx: Send + Sync + 'static,
    S: FnOnce() -> BoxFuture<'static, SetupResult<(Fx, Option<Cleanup>)>> + Send + 'static,
    C: FnOnce(Arc<Fx>) -> BoxFuture<'static, ()> + Send + 'static,
{
    let rt = new_runtime().map_err(|e| Failed::from(format!("cannot start a tokio runtime: {e}")))?;
    let result = rt.block_on(async move {
        let built = tokio::time::timeout(SETUP_TIMEOUT, AssertUnwindSafe(setup()).catch_unwind()).await;
        let (fx, cleanup) = match built {
            Err(_) => return Err(format!("setup did not finish within {SETUP_TIMEOUT:?}")),
            Ok(Err(panic)) => return Err(format!("setup panicked: {}", panic_message(&*panic))),
            Ok(Ok(Err(e @ SetupError::ServiceMissing { .. }))) => {
                return Err(format!("{e}; under CI=true a missing service is a failure"))
            }
            Ok(Ok(Err(e))) => return Err(e.to_string()),
            Ok(Ok(Ok(built))) => built,
        };
        let fx = Arc::new(fx);
        let mut task = tokio::spawn(check(Arc::clone(&fx)));
        let outcome = match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.is_panic() => Err(format!("check panicked: {}", panic_message(&*e.into_panic()))),
            Ok(Err(e)) => Err(format!("check was cancelled: {e}")),
            Err(_) => {
                task.abort();
                Err(format!(
                    "check did not finish within {timeout:?}: a hang is a failure (its fixture was cleaned up)"
                ))
            }
        };
        let cleaned = match cleanup {
            Some(c) => run_cleanup(c).await,
            None => Ok(()),
        };
        drop(fx);
        match (outcome, cleaned) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(e), Err(c)) => Err(format!("{e}\n{c}")),
        }
    });
    rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
    result.map(|()| Completion::Completed).map_err(Failed::from)
}

async fn run_cleanup(cleanup: Cleanup) -> Result<(), String> {
    let task = tokio::spawn(cleanup());
    match tokio::time::timeout(CLEANUP_TIMEOUT, task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_panic() => Err(format!("cleanup panicked: {}", panic_message(&*e.into_panic()))),
        Ok(Err(e)) => Err(format!("cleanup was cancelled: {e}")),
        Err(_) => Err(format!("cleanup did not finish within {CLEANUP_TIMEOUT:?}")),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}
