//! Live reload of a mounted config file (a Kubernetes ConfigMap).
//!
//! A [`Reloader`] polls the files it watches every `interval` and compares
//! their *content* (a hash): Kubernetes updates a mounted ConfigMap by
//! swapping a symlink, so neither inotify on the file nor its mtime is a
//! reliable signal. When the content changed it loads the config again with
//! the same [`ConfigLoader`] (files, then environment overrides) and:
//!
//! * a file that does not parse, does not deserialise, or fails
//!   [`Reloadable::validate`] is **rejected**: the reason is logged and
//!   returned, and the running config is kept;
//! * otherwise [`Reloadable::merge_live`] takes the settings that can change
//!   while the process runs (concurrency, log level) and keeps the running
//!   values of the others, which are **reported as needing a restart**;
//!   the merged snapshot is published on a [`tokio::sync::watch`] channel
//!   for the parts of the process that apply it.
//!
//! ```no_run
//! use agentscale_core::config::reload::{Reloadable, Reloader};
//! use agentscale_core::config::ConfigLoader;
//! use std::time::Duration;
//!
//! #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
//! struct Settings { concurrency: usize, redis_url: String }
//!
//! impl Reloadable for Settings {
//!     fn validate(&self) -> agentscale_core::Result<()> {
//!         if self.concurrency == 0 {
//!             return Err(agentscale_core::Error::InvalidConfig("concurrency must be >= 1".into()));
//!         }
//!         Ok(())
//!     }
//!     fn merge_live(&self, next: Self) -> (Self, Vec<String>) {
//!         let mut restart = Vec::new();
//!         if next.redis_url != self.redis_url {
//!             restart.push("redis_url".to_string());
//!         }
//!         (Settings { concurrency: next.concurrency, redis_url: self.redis_url.clone() }, restart)
//!     }
//! }
//!
//! # async fn run() -> agentscale_core::Result<()> {
//! let path = "/etc/agentscale/config.toml";
//! let reloader: Reloader<Settings> = Reloader::new(ConfigLoader::new().file(path), [path])?
//!     .interval(Duration::from_secs(5));
//! let mut settings = reloader.subscribe();
//! tokio::spawn(reloader.run());
//! while settings.changed().await.is_ok() {
//!     let s = settings.borrow_and_update().clone();
//!     tracing::info!(concurrency = s.concurrency, "applying");
//! }
//! # Ok(()) }
//! ```

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{ConfigLoader, MAX_CONFIG_FILE_BYTES};
use crate::error::Result;

/// A config type that can be reloaded while the process runs.
pub trait Reloadable: Clone + PartialEq + Send + Sync + 'static {
    /// Checks values beyond their types (ranges, combinations). An error
    /// rejects the file and keeps the running config. Default: accept.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The config to run with after `next` was loaded while `self` runs:
    /// `next`'s values for the settings that can change live, `self`'s for
    /// the others; and the names of those others that differ in `next`
    /// (they take effect only after a restart).
    fn merge_live(&self, next: Self) -> (Self, Vec<String>);
}

/// What one check of the watched files found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// Nothing was checked yet, or the content did not change, or it
    /// changed to the same config.
    Unchanged,
    /// A new config was published. `restart_required` names the settings
    /// that changed but are kept at their running values until a restart.
    Applied {
        /// Settings that changed but need a restart to take effect.
        restart_required: Vec<String>,
    },
    /// The changed file was refused and the running config kept.
    Rejected {
        /// Why (parse error, unknown field, failed validation).
        reason: String,
    },
}

/// Watches config files and publishes validated snapshots; see the
/// [module docs](self).
#[derive(Debug)]
pub struct Reloader<T> {
    loader: ConfigLoader,
    paths: Vec<PathBuf>,
    interval: Duration,
    fingerprint: u64,
    current: watch::Sender<Arc<T>>,
    status: watch::Sender<ReloadOutcome>,
}

/// Default polling interval (5 s; the kubelet itself syncs ConfigMaps about
/// once a minute).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

impl<T: Reloadable + DeserializeOwned> Reloader<T> {
    /// Loads and validates the config now (an error here is a start-up
    /// error: there is no running config to keep) and watches `paths` —
    /// usually the files the `loader` reads.
    pub fn new<P: Into<PathBuf>>(loader: ConfigLoader, paths: impl IntoIterator<Item = P>) -> Result<Self> {
        let paths: Vec<PathBuf> = paths.into_iter().map(Into::into).collect();
        let fingerprint = fingerprint(&paths);
        let config: T = loader.load()?;
        config.validate()?;
        Ok(Reloader {
            loader,
            paths,
            interval: DEFAULT_RELOAD_INTERVAL,
            fingerprint,
            current: watch::Sender::new(Arc::new(config)),
            status: watch::Sender::new(ReloadOutcome::Unchanged),
        })
    }

    /// How often the files are polled (default [`DEFAULT_RELOAD_INTERVAL`];
    /// at least 10 ms).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(10));
        self
    }

    /// The config running now.
    pub fn current(&self) -> Arc<T> {
        self.current.borrow().clone()
    }

    /// Receives every newly applied config.
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.current.subscribe()
    }

    /// Receives the outcome of every check that found changed content.
    pub fn status(&self) -> watch::Receiver<ReloadOutcome> {
        self.status.subscribe()
    }

    /// Checks the files once: reloads when their content changed.
    pub fn check(&mut self) -> ReloadOutcome {
        let fp = fingerprint(&self.paths);
        if fp == self.fingerprint {
            return ReloadOutcome::Unchanged;
        }
        self.fingerprint = fp;
        let outcome = self.reload();
        match &outcome {
            ReloadOutcome::Rejected { reason } => {
                tracing::warn!(%reason, "config change rejected; keeping the running config");
            }
            ReloadOutcome::Applied { restart_required } if !restart_required.is_empty() => {
                tracing::warn!(
                    settings = ?restart_required,
                    "config change applied; these settings take effect only after a restart"
                );
            }
            ReloadOutcome::Applied { .. } => tracing::info!("config change applied"),
            ReloadOutcome::Unchanged => tracing::debug!("config file changed, settings did not"),
        }
        self.status.send_replace(outcome.clone());
        outcome
    }

    fn reload(&mut self) -> ReloadOutcome {
        let next: T = match self.loader.load() {
            Ok(c) => c,
            Err(e) => {
                return ReloadOutcome::Rejected {
                    reason: e.to_string(),
                }
            }
        };
        if let Err(e) = next.validate() {
            return ReloadOutcome::Rejected {
                reason: e.to_string(),
            };
        }
        let running = self.current();
        let (merged, restart_required) = running.merge_live(next);
        if merged == *running && restart_required.is_empty() {
            return ReloadOutcome::Unchanged;
        }
        if merged != *running {
            self.current.send_replace(Arc::new(merged));
        }
        ReloadOutcome::Applied { restart_required }
    }

    /// Polls forever (spawn it; dropping the future stops the watch).
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.check();
        }
    }
}

/// A hash of the watched files' content; a missing or unreadable file hashes
/// as such, so its return is noticed too.
fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.len() > MAX_CONFIG_FILE_BYTES => ("too large", m.len()).hash(&mut h),
            Ok(_) => match std::fs::read(p) {
                Ok(bytes) => bytes.hash(&mut h),
                Err(e) => ("unreadable", e.kind()).hash(&mut h),
            },
            Err(e) => ("missing", e.kind()).hash(&mut h),
        }
    }
    h.finish()
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
