//! Tests of the config loader.
use super::tree::redact_quoted;
use super::*;

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    assert_eq!(serde_json::to_string(&s).expect("json"), "\"[redacted]\"");
    assert_eq!(s.expose(), "hunter2");
}

#[test]
fn urls_are_redacted() {
    assert_eq!(redact_url("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
    assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
    assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
}

use std::io::Write;

#[derive(Debug, Deserialize, PartialEq)]
struct Settings {
    worker: WorkerSection,
    #[serde(default)]
    redis: Option<RedisSection>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    brokers: Vec<String>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Deserialize, PartialEq)]
struct WorkerSection {
    concurrency: u32,
    #[serde(default)]
    grace_period_ms: u64,
    #[serde(default)]
    verbose: bool,
}

#[derive(Debug, Deserialize, PartialEq)]
struct RedisSection {
    url: Secret,
    #[serde(default)]
    pool_size: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Worker,
    Producer,
}

fn file(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(body.as_bytes()).expect("write");
    path
}

fn env(vars: &[(&str, &str)]) -> ConfigLoader {
    ConfigLoader::new()
        .env_prefix("AGENTSCALE")
        .env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn env_nesting_and_scalars() {
    let s: Settings = env(&[
        ("AGENTSCALE_WORKER__CONCURRENCY", "32"),
        ("AGENTSCALE_WORKER__GRACE_PERIOD_MS", "25000"),
        ("AGENTSCALE_WORKER__VERBOSE", "true"),
        ("AGENTSCALE_TENANT", "007"),
        ("AGENTSCALE_BROKERS", "k1:9092, k2:9092"),
        ("AGENTSCALE_MODE", "producer"),
        ("OTHER_WORKER__CONCURRENCY", "1"),
    ])
    .load()
    .expect("load");
    assert_eq!(
        s.worker,
        WorkerSection {
            concurrency: 32,
            grace_period_ms: 25000,
            verbose: true
        }
    );
    assert_eq!(
        s.tenant.as_deref(),
        Some("007"),
        "a string field keeps the text as written"
    );
    assert_eq!(s.brokers, ["k1:9092", "k2:9092"]);
    assert_eq!(s.mode, Mode::Producer);
    assert!(s.redis.is_none());
}

#[test]
fn numeric_looking_secret_stays_a_string() {
    let s: Settings = env(&[
        ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
        ("AGENTSCALE_REDIS__URL", "123456"),
    ])
    .load()
    .expect("load");
    assert_eq!(s.redis.expect("redis").url.expose(), "123456");
}

#[test]
fn json_arrays_and_null() {
    let s: Settings = env(&[
        ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
        ("AGENTSCALE_BROKERS", r#"["a:1","b:2"]"#),
        ("AGENTSCALE_TENANT", "null"),
    ])
    .load()
    .expect("load");
    assert_eq!(s.brokers, ["a:1", "b:2"]);
    assert_eq!(s.tenant, None);
}

#[test]
fn toml_file_then_env_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        &dir,
        "config.toml",
        "tenant = \"acme\"\n[worker]\nconcurrency = 8\ngrace_period_ms = 1000\n[redis]\nurl = \"redis://file\"\npool_size = 4\n",
    );
    let s: Settings = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "64")])
        .file(&path)
        .load()
        .expect("load");
    assert_eq!(s.worker.concurrency, 64, "env overrides the file");
    assert_eq!(
        s.worker.grace_period_ms, 1000,
        "keys the env does not set come from the file"
    );
    let redis = s.redis.expect("redis");
    assert_eq!(redis.url.expose(), "redis://file");
    assert_eq!(redis.pool_size, Some(4));
    assert_eq!(s.tenant.as_deref(), Some("acme"));
}

#[test]
fn json_file_and_optional_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        &dir,
        "config.json",
        r#"{"worker":{"concurrency":3},"brokers":["x:1"]}"#,
    );
    let s: Settings = ConfigLoader::new()
        .optional_file(dir.path().join("missing.toml"))
        .file(&path)
        .load()
        .expect("load");
    assert_eq!(s.worker.concurrency, 3);
    assert_eq!(s.brokers, ["x:1"]);

    let err = ConfigLoader::new()
        .file(dir.path().join("missing.toml"))
        .load::<Settings>()
        .expect_err("missing");
    assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn file_named_by_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(&dir, "c.toml", "[worker]\nconcurrency = 5\n");
    let s: Settings = ConfigLoader::new()
        .file_from_env("AGENTSCALE_CONFIG")
        .env_prefix("AGENTSCALE")
        .env_vars([("AGENTSCALE_CONFIG", path.display().to_string())])
        .load()
        .expect("load");
    assert_eq!(s.worker.concurrency, 5);
}

#[test]
fn file_convention_reads_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = file(&dir, "redis-url", "  redis://:hunter2@redis:6379/0\n");
    let s: Settings = env(&[
        ("AGENTSCALE_WORKER__CONCURRENCY", "2"),
        ("AGENTSCALE_REDIS__URL_FILE", &secret.display().to_string()),
    ])
    .load()
    .expect("load");
    let url = s.redis.expect("redis").url;
    assert_eq!(url.expose(), "redis://:hunter2@redis:6379/0");
    assert_eq!(format!("{url:?}"), "[redacted]");

    let err = env(&[
        ("AGENTSCALE_WORKER__CONCURRENCY", "2"),
        ("AGENTSCALE_REDIS__URL_FILE", "/nonexistent/agentscale/secret"),
    ])
    .load::<Settings>()
    .expect_err("missing secret file");
    assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
    let msg = err.to_string();
    assert!(
        msg.contains("AGENTSCALE_REDIS__URL_FILE") && msg.contains("/nonexistent/agentscale/secret"),
        "{msg}"
    );
}

#[test]
fn errors_name_the_key_and_hide_the_value() {
    let err = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "hunter2-secret")])
        .load::<Settings>()
        .expect_err("bad");
    assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
    let msg = err.to_string();
    assert!(msg.contains("worker.concurrency"), "{msg}");
    assert!(msg.contains("AGENTSCALE_WORKER__CONCURRENCY"), "{msg}");
    assert!(!msg.contains("hunter2"), "value leaked: {msg}");

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = file(&dir, "n", "s3cr3t-value\n");
    let err = env(&[(
        "AGENTSCALE_WORKER__CONCURRENCY_FILE",
        &secret.display().to_string(),
    )])
    .load::<Settings>()
    .expect_err("bad");
    assert!(!err.to_string().contains("s3cr3t"), "value leaked: {err}");

    let err = env(&[]).load::<Settings>().expect_err("missing");
    assert!(err.to_string().contains("missing field `worker`"), "{err}");
    let err = env(&[("AGENTSCALE_WORKER__VERBOSE", "true")])
        .load::<Settings>()
        .expect_err("missing");
    assert!(
        err.to_string().contains("`worker`: missing field `concurrency`"),
        "{err}"
    );

    let path = file(&dir, "bad.toml", "[worker]\nconcurrency = \"many-secret\"\n");
    let err = ConfigLoader::new()
        .file(&path)
        .load::<Settings>()
        .expect_err("bad");
    let msg = err.to_string();
    assert!(
        msg.contains("worker.concurrency") && msg.contains("bad.toml"),
        "{msg}"
    );
    assert!(!msg.contains("many-secret"), "value leaked: {msg}");
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, body) in [
        ("a.toml", "[worker\nconcurrency = "),
        ("b.json", "{\"worker\": "),
        ("c.json", "[1, 2]"),
        ("d.yaml", "worker: {}"),
    ] {
        let path = file(&dir, name, body);
        let err = ConfigLoader::new()
            .file(&path)
            .load::<Settings>()
            .expect_err(name);
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    for bad in [
        "AGENTSCALE_WORKER____CONCURRENCY",
        "AGENTSCALE_WORKER__",
        "AGENTSCALE___X",
    ] {
        let err = env(&[(bad, "1")]).load::<Settings>().expect_err(bad);
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad}: {err}");
    }
    let err = env(&[
        ("AGENTSCALE_WORKER", "1"),
        ("AGENTSCALE_WORKER__CONCURRENCY", "1"),
    ])
    .load::<Settings>()
    .expect_err("conflict");
    assert!(
        err.to_string().contains("AGENTSCALE_WORKER__CONCURRENCY"),
        "{err}"
    );
    let err = env(&[("AGENTSCALE_WORKER__CONCURRENCY", "-1")])
        .load::<Settings>()
        .expect_err("negative");
    assert!(err.to_string().contains("worker.concurrency"), "{err}");
}

#[test]
fn redacts_quoted_fragments() {
    assert_eq!(
        redact_quoted(r#"invalid type: string "pw\"x", expected u32"#),
        r#"invalid type: string "***", expected u32"#
    );
    assert_eq!(redact_quoted("no quotes"), "no quotes");
}

#[test]
fn loads_into_any_deserialize_type() {
    let v: serde_json::Value = env(&[("AGENTSCALE_A__B", "1"), ("AGENTSCALE_A__C", "x")])
        .load()
        .expect("load");
    assert_eq!(v, serde_json::json!({"a": {"b": 1, "c": "x"}}));
    let m: BTreeMap<String, BTreeMap<String, u8>> =
        env(&[("AGENTSCALE_Q__DEPTH", "7")]).load().expect("load");
    assert_eq!(m["q"]["depth"], 7);
}
