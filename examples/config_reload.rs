//! Applying a changed ConfigMap without a restart: worker concurrency, the
//! log level and the rate limits change live; a changed queue name is reported as needing a
//! restart; an invalid file is rejected and the running config kept.
//!
//! ```text
//! cargo run --example config_reload                      # a scripted demo
//! cargo run --example config_reload -- /etc/agentscale/config.toml
//! ```
//!
//! With a path, the example runs until Ctrl-C; edit the file (TOML:
//! `concurrency = 8`, `log_level = "debug"`, `queue = "agents"`, and a
//! `[limits.tenant_demo]` table with `rate_per_second` / `max_in_flight`)
//! and watch.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentscale::config::reload::{ReloadOutcome, Reloadable, Reloader};
use agentscale::config::ConfigLoader;
use agentscale::flow::limit::{check_definition, sync_limits, Limit, Limiter, LocalLimiter};
use agentscale::{async_trait, Error, Handler, LocalQueue, Output, Task, TaskContext, TaskQueue, Worker};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Live: the worker's handler slots.
    concurrency: usize,
    /// Live: a `RUST_LOG`-style filter.
    log_level: String,
    /// Restart only: the queue the worker consumes.
    queue: String,
    /// Live: limits by key (the worker counts every task against
    /// `tenant_<tenant>`).
    #[serde(default)]
    limits: BTreeMap<String, Limit>,
}

impl Reloadable for Settings {
    fn validate(&self) -> agentscale::Result<()> {
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Err(Error::InvalidConfig("concurrency must be in 1..=4096".into()));
        }
        EnvFilter::try_new(&self.log_level)
            .map_err(|e| Error::InvalidConfig(format!("log_level {:?}: {e}", self.log_level)))?;
        for (key, limit) in &self.limits {
            check_definition(key, limit)?;
        }
        Ok(())
    }

    fn merge_live(&self, next: Self) -> (Self, Vec<String>) {
        let mut restart = Vec::new();
        if next.queue != self.queue {
            restart.push("queue".to_string());
        }
        let merged = Settings {
            concurrency: next.concurrency,
            log_level: next.log_level,
            queue: self.queue.clone(),
            limits: next.limits,
        };
        (merged, restart)
    }
}

struct Slow;

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, _task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tracing::debug!("task done");
        Ok(Output::none())
    }
}

#[tokio::main]
async fn main() -> agentscale::Result<()> {
    let given = std::env::args().nth(1).map(PathBuf::from);
    let demo_dir = std::env::temp_dir().join(format!("agentscale-reload-{}", std::process::id()));
    let path = match &given {
        Some(p) => p.clone(),
        None => {
            std::fs::create_dir_all(&demo_dir).map_err(|e| Error::InvalidConfig(e.to_string()))?;
            let p = demo_dir.join("config.toml");
            write(&p, "concurrency = 2\nlog_level = \"info\"\nqueue = \"agents\"\n")?;
            p
        }
    };
    let reloader: Reloader<Settings> =
        Reloader::new(ConfigLoader::new().file(&path), [&path])?.interval(Duration::from_millis(200));
    let start = reloader.current();

    // The log level lives in a reloadable layer; core never installs a subscriber.
    let (filter, log_level) = reload::Layer::new(EnvFilter::new(&start.log_level));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer())
        .init();

    let queue = Arc::new(LocalQueue::new(start.queue.clone()));
    for i in 0..400 {
        queue.enqueue(Task::new("work", format!("{i}"))).await?;
    }
    let limiter = Arc::new(LocalLimiter::new());
    sync_limits(&*limiter, &start.limits).await?;
    let worker = Worker::builder(queue.clone(), Slow)
        .concurrency(start.concurrency)
        .limiter(limiter.clone(), |t: &Task| {
            vec![format!("tenant_{}", t.tenant.as_deref().unwrap_or("demo"))]
        })
        .build()?;
    let concurrency = worker.concurrency_handle();

    // Apply every new snapshot: concurrency and log level in place.
    let mut settings = reloader.subscribe();
    let mut status = reloader.status();
    tokio::spawn(async move {
        while settings.changed().await.is_ok() {
            let s = settings.borrow_and_update().clone();
            if let Err(e) = concurrency.set(s.concurrency) {
                tracing::warn!(error = %e, "concurrency not changed");
            }
            if let Err(e) = log_level.reload(EnvFilter::new(&s.log_level)) {
                tracing::warn!(error = %e, "log level not changed");
            }
            if let Err(e) = sync_limits(&*limiter, &s.limits).await {
                tracing::warn!(error = %e, "limits not changed");
            }
            let limits = limiter.limits().await.map(|l| l.len()).unwrap_or(0);
            println!(
                "applied: concurrency {} log_level {} limits {limits}",
                s.concurrency, s.log_level
            );
        }
    });
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            match status.borrow_and_update().clone() {
                ReloadOutcome::Rejected { reason } => println!("rejected: {reason}"),
                ReloadOutcome::Applied { restart_required } if !restart_required.is_empty() => {
                    println!("needs a restart: {restart_required:?}")
                }
                _ => {}
            }
        }
    });
    tokio::spawn(reloader.run());

    let stats = worker.stats();
    let shutdown = async move {
        if given.is_some() {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
        // The scripted demo: three ConfigMap updates, then stop.
        let steps = [
            "concurrency = 8\nlog_level = \"debug\"\nqueue = \"agents\"\n\n[limits.tenant_demo]\nrate_per_second = 200.0\nmax_in_flight = 4\n",
            "concurrency = 0\nlog_level = \"info\"\nqueue = \"agents\"\n",
            "concurrency = 4\nlog_level = \"info\"\nqueue = \"other\"\n",
        ];
        for text in steps {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Err(e) = write(&path, text) {
                println!("{e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("completed so far: {}", stats.snapshot().completed);
    };
    let report = worker.run_until(shutdown).await?;
    println!("completed {} tasks", report.completed);
    let _ = std::fs::remove_dir_all(&demo_dir);
    Ok(())
}

/// Replaces the file atomically, as the kubelet's symlink swap does.
fn write(path: &std::path::Path, text: &str) -> agentscale::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::InvalidConfig(e.to_string()))
}
