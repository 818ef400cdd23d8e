//! Conformance suites for agentscale backends, on one test harness.
//!
//! A backend — one of ours or your own — proves it keeps the contract of
//! [`TaskQueue`](agentscale_core::TaskQueue),
//! [`SessionStore`](agentscale_core::SessionStore),
//! [`MemoryStore`](agentscale_core::MemoryStore) or
//! [`ToolCache`](agentscale_core::ToolCache) by running the matching suite
//! from a test target with `harness = false`:
//!
//! ```toml
//! [dev-dependencies]
//! agentscale-testkit = "0.1"
//!
//! [[test]]
//! name = "my_queue"
//! harness = false
//! ```
//!
//! ```no_run
//! // tests/my_queue.rs
//! use agentscale_queue::LocalQueue;
//! use agentscale_testkit::{QueueFixture, QueueOptions, SetupResult, Suites};
//!
//! async fn setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
//!     let queue = LocalQueue::builder(opts.name)
//!         .lease_timeout(opts.lease_timeout)
//!         .max_envelope_bytes(opts.max_envelope_bytes)
//!         .build()?;
//!     Ok(QueueFixture::new(queue))
//! }
//!
//! fn main() {
//!     agentscale_testkit::run(|| Suites::new().queue("local", setup))
//! }
//! ```
//!
//! `cargo test --test my_queue` then prints one line per check
//! (`test queue::local::ack_removes ... ok`) and libtest's closing line;
//! the usual arguments work: a name filter, `--exact`, `--skip`, `--list`,
//! `--test-threads`, `--ignored`.
//!
//! # What the harness guarantees
//!
//! * **A fresh namespace per check.** `setup` is called once per check with
//!   a new random queue name ([`QueueOptions::name`]) or key prefix
//!   (`namespace` in [`SessionParams`], [`MemoryParams`],
//!   [`ToolCacheParams`]): lowercase letters, digits and `_`, starting with a
//!   letter, at most 63 characters. Checks also use fresh random tenants.
//! * **Cleanup whatever happens.** The fixture's cleanup runs after the
//!   check whether it passed, failed, panicked or timed out; a cleanup that
//!   fails fails the check.
//! * **A hang is a failure.** A check that runs longer than the timeout
//!   (90 s, [`Suites::check_timeout`]) fails with a message saying so; the
//!   run goes on. Each check runs on its own two-thread tokio runtime.
//! * **Ignored means not run, never passed.** Before listing the checks, the
//!   harness builds one fixture per backend (in a throwaway namespace,
//!   cleaned up at once) to read its
//!   [`Capabilities`](agentscale_core::Capabilities): a queue check that
//!   needs something the backend does not declare is reported as ignored,
//!   and so is every check of a backend whose service is not configured
//!   (`setup` returned [`SetupError::ServiceMissing`], see
//!   [`service_env`]). The reason is printed on stderr
//!   (`ignored queue::kafka::extend_keeps_lease: backend declares no lease
//!   extension`) and counted in `N ignored`.
//! * **Under `CI=true` a missing service fails** each of its checks with the
//!   reason; it is never ignored there.
//!
//! The checks themselves are listed in the docs of the [`queue`],
//! [`session`], [`memory`] and [`tool_cache`] modules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod harness;
pub mod memory;
pub mod queue;
pub mod session;
mod setup;
mod support;
pub mod tool_cache;

pub use harness::{Suites, DEFAULT_CHECK_TIMEOUT};
pub use libtest_mimic;
pub use setup::{
    is_ci, service_env, unique_name, Cleanup, Fixture, MemoryFixture, MemoryParams, QueueFixture,
    QueueOptions, RawInjector, SessionFixture, SessionParams, SetupError, SetupResult, ToolCacheFixture,
    ToolCacheParams, QUEUE_LEASE_TIMEOUT, QUEUE_MAX_ENVELOPE_BYTES,
};

/// The `main` of a backend's test target: parses libtest's arguments, runs
/// the suites and tests `suites` registers, prints the usual report and exits
/// with libtest's exit code (101 when a check failed).
pub fn run(suites: impl FnOnce() -> Suites) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    suites().run_with(&args).exit()
}
