//! The pgvector store's connection over TLS (`sslmode=verify-full`)
//! against a test-owned PostgreSQL that accepts only `hostssl` logins with
//! a SCRAM password (CA and certificates made here). The machine's
//! PostgreSQL has SSL but no pgvector and the pgvector build has no SSL, so
//! the good configuration is shown to get through TLS and the login to the
//! server's answer that `vector` is not installed; an untrusted CA, a host
//! name the certificate does not cover, plaintext and a wrong password each
//! fail with a typed error.

use std::sync::OnceLock;
use std::time::Duration;

use agentscale_core::config::ConfigLoader;
use agentscale_core::ErrorKind;
use agentscale_state::pgvector::{PgSslMode, PgVectorConfig, PgVectorMemoryStore};
use agentscale_testkit::{unique_name, Suites};
use agentscale_tests::pg_server::{pg_bin, TestPostgresTls};
use agentscale_tests::pki::TestPki;

/// Set by `main` to the PostgreSQL bin directory when one is installed.
const BIN_VAR: &str = "AGENTSCALE_PG_BIN";

struct Env {
    port: u16,
    pki: TestPki,
    password: String,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The secure configuration: verify-full in the URL, the CA, the password
/// apart from the URL.
fn secure(env: &Env, table: &str, dimensions: usize) -> agentscale_state::pgvector::PgVectorConfigBuilder {
    PgVectorConfig::builder()
        .url(format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
            env.port
        ))
        .password(env.password.clone())
        .ssl_root_cert_pem(env.pki.ca_pem.clone())
        .table(table)
        .dimensions(dimensions)
        .connect_timeout(Duration::from_secs(5))
}

/// The good configuration gets through the handshake (the certificate
/// and host name checked) and the SCRAM login: the first thing that can
/// stop it is the server itself lacking pgvector.
async fn tls_verify_full_handshake_and_login_succeed() {
    let env = ENV.get().expect("env");
    match PgVectorMemoryStore::connect(secure(env, &table(), 3).build().expect("config")).await {
        Ok(_) => {}
        Err(e) => assert!(
            e.to_string().contains("pgvector extension is not available"),
            "only the missing extension may stop it: {e:?}"
        ),
    }
}

async fn refused(cfg: agentscale_core::Result<PgVectorConfig>, kind: ErrorKind, says: &str) {
    let r = match cfg {
        Ok(cfg) => tokio::time::timeout(Duration::from_secs(60), PgVectorMemoryStore::connect(cfg))
            .await
            .expect("connect did not give up")
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let e = r.expect_err("must be refused");
    eprintln!("refused as expected: {e}");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(says), "{e:?} should say {says:?}");
}

fn table() -> String {
    unique_name("t").replace('-', "_")
}

async fn tls_untrusted_ca_is_refused() {
    let env = ENV.get().expect("env");
    let other = TestPki::new("another CA");
    refused(
        secure(env, &table(), 3).ssl_root_cert_pem(other.ca_pem).build(),
        ErrorKind::InvalidConfig,
        "TLS handshake failed",
    )
    .await;
}

async fn tls_host_name_is_checked() {
    let env = ENV.get().expect("env");
    // The certificate names localhost and 127.0.0.1; the server listens on
    // 127.0.0.1 only, so reach it by a name the certificate lacks through
    // an address it covers: the IP given as `hostaddr`, `host` mismatching.
    let url = format!(
        "postgres://postgres@db.example:{}/postgres?sslmode=verify-full&hostaddr=127.0.0.1",
        env.port
    );
    refused(
        secure(env, &table(), 3).url(url).build(),
        ErrorKind::InvalidConfig,
        "TLS handshake failed",
    )
    .await;
}

async fn tls_plaintext_is_refused_by_the_server() {
    let env = ENV.get().expect("env");
    let cfg = secure(env, &table(), 3)
        .url(format!("postgres://postgres@127.0.0.1:{}/postgres", env.port))
        .ssl_mode(PgSslMode::Disable)
        .build();
    refused(cfg, ErrorKind::InvalidConfig, "refused the login").await;
}

async fn tls_weaker_sslmodes_are_refused_at_build() {
    let env = ENV.get().expect("env");
    for mode in ["require", "prefer", "verify-ca"] {
        let url = format!(
            "postgres://postgres@localhost:{}/postgres?sslmode={mode}",
            env.port
        );
        refused(
            secure(env, &table(), 3).url(url).build(),
            ErrorKind::InvalidConfig,
            "not supported",
        )
        .await;
    }
    let cfg = PgVectorConfig::builder()
        .url("postgres://u@h/db")
        .ssl_mode(PgSslMode::VerifyFull)
        .dimensions(3)
        .build();
    refused(cfg, ErrorKind::InvalidConfig, "ssl_root_cert_pem").await;
}

async fn auth_wrong_password_is_refused() {
    let env = ENV.get().expect("env");
    refused(
        secure(env, &table(), 3).password("not-the-password").build(),
        ErrorKind::InvalidConfig,
        "refused the login",
    )
    .await;
}

/// The deployment path: URL from a plain variable, password and CA from
/// mounted files through `_FILE` variables.
async fn tls_auth_from_file_secrets_through_the_loader() {
    let env = ENV.get().expect("env");
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("password");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&pw, format!("{}\n", env.password)).expect("pw");
    std::fs::write(&ca, &env.pki.ca_pem).expect("ca");
    let url = format!("postgres://postgres@localhost:{}/postgres", env.port);
    let table = table();
    let (pw, ca) = (pw.display().to_string(), ca.display().to_string());
    let cfg: PgVectorConfig = ConfigLoader::new()
        .env_prefix("T")
        .env_vars([
            ("T_URL", url.as_str()),
            ("T_SSL_MODE", "verify-full"),
            ("T_PASSWORD_FILE", pw.as_str()),
            ("T_SSL_ROOT_CERT_PEM_FILE", ca.as_str()),
            ("T_TABLE", table.as_str()),
            ("T_DIMENSIONS", "3"),
        ])
        .load()
        .expect("load");
    assert!(!format!("{cfg:?}").contains(&env.password));
    match PgVectorMemoryStore::connect(cfg).await {
        Ok(_) => {}
        Err(e) => assert!(
            e.to_string().contains("pgvector extension is not available"),
            "only the missing extension may stop it: {e:?}"
        ),
    }
}

fn main() {
    let args = agentscale_testkit::libtest_mimic::Arguments::from_args();
    if let Some(bin) = pg_bin() {
        // Under CI a missing PostgreSQL fails the tests below, never skips them.
        std::env::set_var(BIN_VAR, bin);
    }
    let server = agentscale_tests::service_env(BIN_VAR).map(|bin| {
        let pki = TestPki::new("agentscale pg test CA");
        let password = unique_name("pw");
        let server = TestPostgresTls::start(std::path::Path::new(&bin), &pki.ca_pem, &pki.server, &password);
        let _ = ENV.set(Env {
            port: server.port(),
            pki,
            password,
        });
        server
    });
    let conclusion = Suites::new()
        .service_test(BIN_VAR, "tls_verify_full_handshake_and_login_succeed", |_| {
            tls_verify_full_handshake_and_login_succeed()
        })
        .service_test(BIN_VAR, "tls_untrusted_ca_is_refused", |_| {
            tls_untrusted_ca_is_refused()
        })
        .service_test(BIN_VAR, "tls_host_name_is_checked", |_| {
            tls_host_name_is_checked()
        })
        .service_test(BIN_VAR, "tls_plaintext_is_refused_by_the_server", |_| {
            tls_plaintext_is_refused_by_the_server()
        })
        .service_test(BIN_VAR, "tls_weaker_sslmodes_are_refused_at_build", |_| {
            tls_weaker_sslmodes_are_refused_at_build()
        })
        .service_test(BIN_VAR, "auth_wrong_password_is_refused", |_| {
            auth_wrong_password_is_refused()
        })
        .service_test(BIN_VAR, "tls_auth_from_file_secrets_through_the_loader", |_| {
            tls_auth_from_file_secrets_through_the_loader()
        })
        .run_with(&args);
    drop(server);
    conclusion.exit()
}
