//! Redis over TLS with mutual TLS and an ACL user, against a test-owned
//! `redis-server` that speaks only TLS (`--port 0 --tls-port …
//! --tls-auth-clients yes`, `default` user off). The CA and certificates are
//! made here (rcgen); nothing is committed.
//!
//! The queue, session-store and tool-cache conformance suites run over the
//! one TLS connection; then each misconfiguration fails fast with a typed
//! error: an untrusted CA, a host name the certificate does not cover, no
//! client certificate, plaintext against the TLS port, TLS against a
//! plaintext port, a wrong password. The password and the PEMs also load
//! through the config loader's `_FILE` convention.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentscale_core::config::ConfigLoader;
use agentscale_core::{Error, ErrorKind};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_redis::{Redis, RedisConfig};
use agentscale_state::redis::{RedisSessionStore, RedisStateConfig, RedisToolCache};
use agentscale_testkit::{
    QueueFixture, QueueOptions, SessionFixture, SessionParams, SetupError, SetupResult, Suites,
    ToolCacheFixture, ToolCacheParams,
};
use agentscale_tests::pki::TestPki;
use agentscale_tests::redis_fixture::queue_fixture;
use agentscale_tests::redis_server::TestRedis;

const USER: &str = "agentscale-worker";

/// What every check connects with: the server's port and the PKI.
struct Env {
    port: u16,
    pki: TestPki,
    password: String,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> SetupResult<&'static Env> {
    ENV.get().ok_or_else(|| SetupError::ServiceMissing {
        var: "AGENTSCALE_REDIS_URL".into(),
    })
}

/// The secure configuration: `rediss://`, the CA, the client certificate,
/// the ACL user and its password.
fn good(env: &Env) -> agentscale_redis::RedisConfigBuilder {
    RedisConfig::builder()
        .url(format!("rediss://127.0.0.1:{}", env.port))
        .username(USER)
        .password(env.password.clone())
        .ca_pem(env.pki.ca_pem.clone())
        .client_identity(env.pki.client.cert_pem.clone(), env.pki.client.key_pem.clone())
        .connect_timeout(Duration::from_secs(5))
}

async fn connect(b: agentscale_redis::RedisConfigBuilder) -> Result<Redis, Error> {
    Redis::connect(b.build()?).await
}

async fn queue_setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let redis = connect(good(env()?)).await?;
    let config = RedisQueueConfig::new("rediss://unused.invalid:1", opts.name.clone())
        .with_key_prefix("astls")
        .with_lease_timeout(opts.lease_timeout)
        .with_max_envelope_bytes(opts.max_envelope_bytes);
    let queue = RedisQueue::new(redis.clone(), config).await?;
    Ok(queue_fixture(redis, queue))
}

async fn flush_prefix(redis: Redis, prefix: String) {
    let mut c = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .expect("keys");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .expect("del");
    }
}

async fn session_setup(p: SessionParams) -> SetupResult<SessionFixture> {
    let redis = connect(good(env()?)).await?;
    let cfg = RedisStateConfig::new("rediss://unused.invalid:1")
        .with_key_prefix(p.namespace.clone())
        .with_ttl(p.ttl)
        .with_history_cap(p.history_cap);
    let store = RedisSessionStore::new(redis.clone(), cfg).await?;
    let prefix = p.namespace;
    Ok(SessionFixture::new(Arc::new(store)).with_cleanup(move || flush_prefix(redis, prefix)))
}

async fn tool_setup(p: ToolCacheParams) -> SetupResult<ToolCacheFixture> {
    let redis = connect(good(env()?)).await?;
    let mut cfg = RedisStateConfig::new("rediss://unused.invalid:1").with_key_prefix(p.namespace.clone());
    cfg.tool_negative_ttl = p.negative_ttl;
    cfg.tool_max_value_bytes = p.max_value_bytes;
    let cache = RedisToolCache::new(redis.clone(), cfg).await?;
    let prefix = p.namespace;
    Ok(ToolCacheFixture::new(Arc::new(cache)).with_cleanup(move || flush_prefix(redis, prefix)))
}

/// Connects with `b` and expects an error of `kind` whose message contains
/// `says`. The connect is bounded (a hang is a failure, not a pass).
async fn refused(b: agentscale_redis::RedisConfigBuilder, kind: ErrorKind, says: &str) {
    let r = tokio::time::timeout(Duration::from_secs(60), connect(b))
        .await
        .expect("connect did not give up");
    let e = r.map(|_| ()).expect_err("must be refused");
    eprintln!("refused as expected: {e}");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(says), "{e:?} should say {says:?}");
}

async fn tls_untrusted_ca_is_refused() {
    let env = ENV.get().expect("env");
    let stranger = TestPki::new("some other CA");
    refused(
        good(env).ca_pem(stranger.ca_pem),
        ErrorKind::InvalidConfig,
        "not trusted",
    )
    .await;
}

async fn tls_host_name_is_checked() {
    let env = ENV.get().expect("env");
    // The server's certificate names localhost and 127.0.0.1; 127.0.0.2
    // reaches the same server (it binds both) but is not in the certificate.
    refused(
        good(env).url(format!("rediss://127.0.0.2:{}", env.port)),
        ErrorKind::InvalidConfig,
        "not trusted",
    )
    .await;
}

async fn tls_missing_client_certificate_is_refused() {
    let env = ENV.get().expect("env");
    let b = RedisConfig::builder()
        .url(format!("rediss://127.0.0.1:{}", env.port))
        .username(USER)
        .password(env.password.clone())
        .ca_pem(env.pki.ca_pem.clone());
    refused(b, ErrorKind::InvalidConfig, "client certificate").await;
}

async fn tls_plaintext_against_tls_port_fails_with_a_hint() {
    let env = ENV.get().expect("env");
    let b = RedisConfig::builder()
        .url(format!("redis://127.0.0.1:{}", env.port))
        .username(USER)
        .password(env.password.clone())
        .connect_timeout(Duration::from_secs(2))
        .reconnect_retries(0);
    refused(b, ErrorKind::Unavailable, "use rediss://").await;
}

async fn tls_against_plaintext_port_is_refused() {
    // A plaintext test-owned server (no TLS port).
    let plain = TestRedis::start();
    let env = ENV.get().expect("env");
    let b = RedisConfig::builder()
        .url(plain.url().replace("redis://", "rediss://"))
        .ca_pem(env.pki.ca_pem.clone())
        .connect_timeout(Duration::from_secs(2))
        .reconnect_retries(0);
    // redis-server reads the ClientHello as an unfinished inline command and
    // waits for more: the handshake can only time out.
    refused(b, ErrorKind::Unavailable, "speaks TLS").await;
}

async fn auth_wrong_password_is_refused() {
    let env = ENV.get().expect("env");
    refused(
        good(env).password("not-the-password"),
        ErrorKind::InvalidConfig,
        "authentication failed",
    )
    .await;
}

async fn auth_unknown_user_is_refused() {
    let env = ENV.get().expect("env");
    refused(
        good(env).username("nobody"),
        ErrorKind::InvalidConfig,
        "authentication failed",
    )
    .await;
}

/// The deployment path: URL and user from plain variables, the password
/// and the PEMs from mounted files through `_FILE` variables.
async fn tls_auth_from_file_secrets_through_the_loader() {
    let env = ENV.get().expect("env");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{text}\n")).expect("write secret");
        p.display().to_string()
    };
    let (pw, ca, cert, key) = (
        file("password", &env.password),
        file("ca.pem", &env.pki.ca_pem),
        file("tls.crt", &env.pki.client.cert_pem),
        file("tls.key", &env.pki.client.key_pem),
    );
    let url = format!("rediss://localhost:{}", env.port);
    let cfg: RedisConfig = ConfigLoader::new()
        .env_prefix("T")
        .env_vars([
            ("T_URL", url.as_str()),
            ("T_USERNAME", USER),
            ("T_PASSWORD_FILE", pw.as_str()),
            ("T_TLS__CA_PEM_FILE", ca.as_str()),
            ("T_TLS__CLIENT_CERT_PEM_FILE", cert.as_str()),
            ("T_TLS__CLIENT_KEY_PEM_FILE", key.as_str()),
        ])
        .load()
        .expect("load");
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains(&env.password) && !shown.contains("PRIVATE KEY"),
        "{shown}"
    );
    let redis = Redis::connect(cfg).await.expect("connect with file secrets");
    let mut c = redis.connection();
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut c)
        .await
        .expect("whoami");
    assert_eq!(who, USER);
}

/// A config that asks for TLS settings without `rediss://`, or for the
/// `#insecure` switch, or half a client identity, is refused at build().
async fn tls_invalid_settings_refused_at_build() {
    let env = ENV.get().expect("env");
    for (b, says) in [
        (
            RedisConfig::builder()
                .url("redis://h:1")
                .ca_pem(env.pki.ca_pem.clone()),
            "rediss://",
        ),
        (RedisConfig::builder().url("rediss://h:1/#insecure"), "fragment"),
        (
            RedisConfig::builder().url("rediss://h:1").ca_pem("not a pem"),
            "ca_pem",
        ),
        (
            RedisConfig::builder()
                .url("rediss://h:1")
                .client_identity(env.pki.client.cert_pem.clone(), "garbage"),
            "client_key_pem",
        ),
    ] {
        let e = b.build().map(|_| ()).expect_err(says);
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.to_string().contains(says), "{e} should say {says}");
    }
}

fn main() {
    let args = agentscale_testkit::libtest_mimic::Arguments::from_args();
    // The test-owned server needs the machine's redis-server, which the
    // Redis service install provides; that service's variable gates it.
    let server = agentscale_tests::service_env("AGENTSCALE_REDIS_URL").map(|_| {
        let pki = TestPki::new("agentscale redis test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pki.write_server_files(dir.path());
        let password = agentscale_tests::unique_name("pw");
        let server = TestRedis::start_tls(files, USER, &password);
        let _ = ENV.set(Env {
            port: server.port(),
            pki,
            password,
        });
        (server, dir)
    });
    let t = |name: &str| name.to_string();
    let conclusion = Suites::new()
        .queue("redis_tls", queue_setup)
        .session("redis_tls", session_setup)
        .tool_cache("redis_tls", tool_setup)
        .service_test("AGENTSCALE_REDIS_URL", t("tls_untrusted_ca_is_refused"), |_| {
            tls_untrusted_ca_is_refused()
        })
        .service_test("AGENTSCALE_REDIS_URL", t("tls_host_name_is_checked"), |_| {
            tls_host_name_is_checked()
        })
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("tls_missing_client_certificate_is_refused"),
            |_| tls_missing_client_certificate_is_refused(),
        )
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("tls_plaintext_against_tls_port_fails_with_a_hint"),
            |_| tls_plaintext_against_tls_port_fails_with_a_hint(),
        )
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("tls_against_plaintext_port_is_refused"),
            |_| tls_against_plaintext_port_is_refused(),
        )
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("auth_wrong_password_is_refused"),
            |_| auth_wrong_password_is_refused(),
        )
        .service_test("AGENTSCALE_REDIS_URL", t("auth_unknown_user_is_refused"), |_| {
            auth_unknown_user_is_refused()
        })
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("tls_auth_from_file_secrets_through_the_loader"),
            |_| tls_auth_from_file_secrets_through_the_loader(),
        )
        .service_test(
            "AGENTSCALE_REDIS_URL",
            t("tls_invalid_settings_refused_at_build"),
            |_| tls_invalid_settings_refused_at_build(),
        )
        .run_with(&args);
    // Stop the server before exiting (exit skips destructors).
    drop(server);
    conclusion.exit()
}
