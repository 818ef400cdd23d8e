use std::path::Path;

use serde::Deserialize;

use super::*;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    concurrency: usize,
    log_level: String,
    redis_url: String,
}

impl Reloadable for Settings {
    fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::InvalidConfig("concurrency must be at least 1".into()));
        }
        Ok(())
    }

    fn merge_live(&self, next: Self) -> (Self, Vec<String>) {
        let mut restart = Vec::new();
        if next.redis_url != self.redis_url {
            restart.push("redis_url".to_string());
        }
        let merged = Settings {
            concurrency: next.concurrency,
            log_level: next.log_level,
            redis_url: self.redis_url.clone(),
        };
        (merged, restart)
    }
}

/// Replaces the file the way a ConfigMap update does: write a new file and
/// rename it over the old one (atomic for readers).
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

const BASE: &str = r#"{"concurrency": 4, "log_level": "info", "redis_url": "redis://a:6379"}"#;

fn setup(dir: &tempfile::TempDir) -> (PathBuf, Reloader<Settings>) {
    let path = dir.path().join("config.json");
    write(&path, BASE);
    let r = Reloader::new(ConfigLoader::new().file(&path), [&path]).expect("initial config");
    (path, r)
}

#[test]
fn unchanged_file_is_not_reloaded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, mut r) = setup(&dir);
    assert_eq!(r.check(), ReloadOutcome::Unchanged);
    // Same content rewritten: same hash, nothing to do.
    write(&path, BASE);
    assert_eq!(r.check(), ReloadOutcome::Unchanged);
    assert_eq!(r.current().concurrency, 4);
}

#[test]
fn a_live_setting_is_applied() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, mut r) = setup(&dir);
    let mut rx = r.subscribe();
    write(
        &path,
        r#"{"concurrency": 16, "log_level": "debug", "redis_url": "redis://a:6379"}"#,
    );
    assert_eq!(
        r.check(),
        ReloadOutcome::Applied {
            restart_required: vec![]
        }
    );
    assert!(rx.has_changed().expect("open"));
    let now = rx.borrow_and_update().clone();
    assert_eq!((now.concurrency, now.log_level.as_str()), (16, "debug"));
}

#[test]
fn a_restart_only_setting_is_reported_and_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, mut r) = setup(&dir);
    write(
        &path,
        r#"{"concurrency": 8, "log_level": "info", "redis_url": "redis://b:6379"}"#,
    );
    assert_eq!(
        r.check(),
        ReloadOutcome::Applied {
            restart_required: vec!["redis_url".into()]
        }
    );
    let now = r.current();
    assert_eq!(now.concurrency, 8);
    assert_eq!(now.redis_url, "redis://a:6379", "kept until a restart");
    assert_eq!(
        *r.status().borrow(),
        ReloadOutcome::Applied {
            restart_required: vec!["redis_url".into()]
        }
    );
}

#[test]
fn invalid_files_are_rejected_with_the_reason_and_the_config_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, mut r) = setup(&dir);
    let rx = r.subscribe();
    let cases = [
        (r#"{"concurrency": 4, "#, "not valid JSON"),
        (
            r#"{"concurrency": 0, "log_level": "info", "redis_url": "redis://a:6379"}"#,
            "concurrency must be at least 1",
        ),
        (
            r#"{"concurency": 9, "log_level": "info", "redis_url": "redis://a:6379"}"#,
            "concurency",
        ),
    ];
    for (text, why) in cases {
        write(&path, text);
        match r.check() {
            ReloadOutcome::Rejected { reason } => assert!(reason.contains(why), "{reason:?} lacks {why:?}"),
            other => panic!("{text}: expected a rejection, got {other:?}"),
        }
        assert_eq!(r.current(), *rx.borrow(), "running config kept");
        assert_eq!(r.current().concurrency, 4);
        // Rejected once; not again at every poll while the file stays bad.
        assert_eq!(r.check(), ReloadOutcome::Unchanged);
    }
    assert!(!rx.has_changed().expect("open"));
    // A fixed file applies.
    write(
        &path,
        r#"{"concurrency": 6, "log_level": "info", "redis_url": "redis://a:6379"}"#,
    );
    assert!(matches!(r.check(), ReloadOutcome::Applied { .. }));
    assert_eq!(r.current().concurrency, 6);
}

#[test]
fn a_missing_file_is_rejected_and_its_return_noticed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, mut r) = setup(&dir);
    std::fs::remove_file(&path).expect("rm");
    assert!(matches!(r.check(), ReloadOutcome::Rejected { .. }));
    write(
        &path,
        r#"{"concurrency": 5, "log_level": "info", "redis_url": "redis://a:6379"}"#,
    );
    assert!(matches!(r.check(), ReloadOutcome::Applied { .. }));
    assert_eq!(r.current().concurrency, 5);
}

#[test]
fn an_invalid_file_at_start_is_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config.json");
    write(
        &path,
        r#"{"concurrency": 0, "log_level": "info", "redis_url": "redis://a:6379"}"#,
    );
    let err = Reloader::<Settings>::new(ConfigLoader::new().file(&path), [&path]).expect_err("invalid");
    assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
}

#[tokio::test(start_paused = true)]
async fn the_poll_loop_publishes_changes_on_its_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let (path, r) = setup(&dir);
    let r = r.interval(Duration::from_secs(10));
    let mut rx = r.subscribe();
    let status = r.status();
    let task = tokio::spawn(r.run());
    write(
        &path,
        r#"{"concurrency": 12, "log_level": "warn", "redis_url": "redis://a:6379"}"#,
    );
    let start = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), rx.changed())
        .await
        .expect("applied within a minute of virtual time")
        .expect("open");
    // Picked up at the first poll after the write, not before.
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(rx.borrow_and_update().concurrency, 12);
    assert_eq!(
        *status.borrow(),
        ReloadOutcome::Applied {
            restart_required: vec![]
        }
    );
    task.abort();
}
