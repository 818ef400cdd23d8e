//! Secrets never leak: every backend is configured with credentials that
//! carry one unique marker, real traffic and real failures run (a Redis ACL
//! user over mutual TLS, a wrong password, refused connections to Redis,
//! PostgreSQL, Kafka with SASL and Triton with a bearer token and a client
//! key), and the marker must appear in no `Debug`/`Display` of any config,
//! client or error, and nowhere in the `tracing` output captured at `trace`
//! level (including `log` records of redis-rs, rustls and rdkafka).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentscale_core::TaskQueue;
use agentscale_queue::kafka::{KafkaProtocol, KafkaQueue, KafkaQueueConfig, KafkaSecurityConfig};
use agentscale_redis::{Redis, RedisConfig};
use agentscale_state::pgvector::{PgVectorConfig, PgVectorMemoryStore};
use agentscale_tests::pki::TestPki;
use agentscale_tests::redis_server::TestRedis;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn refused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[test]
fn auth_secrets_never_leak_into_debug_errors_or_trace_logs() {
    if agentscale_tests::service_env("AGENTSCALE_REDIS_URL").is_none() {
        return;
    }
    let captured = Captured::default();
    let sink = captured.clone();
    // try_init also routes `log` records (redis-rs, rustls, rdkafka) here.
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish()
        .try_init()
        .expect("subscriber");

    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let mut shown: Vec<String> = Vec::new();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Redis: an ACL user whose password is the marker, over mutual TLS.
        let pki = TestPki::new("leak test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestRedis::start_tls(pki.write_server_files(dir.path()), "leaky", &marker);
        let url = format!("rediss://leaky:{marker}@127.0.0.1:{}", server.port());
        let good = RedisConfig::builder()
            .url(url.clone())
            .ca_pem(pki.ca_pem.clone())
            .client_identity(pki.client.cert_pem.clone(), pki.client.key_pem.clone())
            .build()
            .expect("config");
        shown.push(format!("{good:?}"));
        let redis = Redis::connect(good.clone()).await.expect("connect");
        shown.push(format!("{redis:?}"));
        let mut c = redis.connection();
        let _: () = redis::cmd("SET")
            .arg("leak-test")
            .arg("v")
            .query_async(&mut c)
            .await
            .expect("set");
        let mut blocking = redis.blocking_connection().await.expect("blocking");
        let _: Option<String> = redis::cmd("GET")
            .arg("leak-test")
            .query_async(&mut *blocking)
            .await
            .expect("get");
        drop(blocking);
        // A wrong password that carries the marker too (the server's
        // reply must not echo it), and a refused connection.
        let wrong = RedisConfig::builder()
            .url(url.clone())
            .username("leaky")
            .password(format!("{marker}-wrong"))
            .ca_pem(pki.ca_pem.clone())
            .client_identity(pki.client.cert_pem.clone(), pki.client.key_pem.clone())
            .build()
            .expect("config");
        shown.push(format!("{wrong:?}"));
        let e = Redis::connect(wrong)
            .await
            .map(|_| ())
            .expect_err("wrong password");
        shown.push(format!("{e} {e:?}"));
        let refused = RedisConfig::builder()
            .url(format!("rediss://leaky:{marker}@127.0.0.1:{}", refused_port()))
            .connect_timeout(Duration::from_secs(2))
            .reconnect_retries(0)
            .build()
            .expect("config");
        let e = Redis::connect(refused).await.map(|_| ()).expect_err("refused");
        shown.push(format!("{e} {e:?}"));
        drop(redis);
        drop(server);

        // PostgreSQL: a password in the URL, a refused connection.
        let pg = PgVectorConfig::builder()
            .url(format!("postgres://app:{marker}@127.0.0.1:{}/db", refused_port()))
            .dimensions(3)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("pg config");
        shown.push(format!("{pg:?}"));
        let e = PgVectorMemoryStore::connect(pg)
            .await
            .map(|_| ())
            .expect_err("pg refused");
        shown.push(format!("{e} {e:?}"));

        // PostgreSQL over verify-full with the marker as the password: a
        // login, then a wrong password.
        if let Some(bin) = agentscale_tests::pg_server::pg_bin() {
            let pg_server =
                agentscale_tests::pg_server::TestPostgresTls::start(&bin, &pki.ca_pem, &pki.server, &marker);
            for password in [marker.clone(), format!("{marker}-wrong")] {
                let cfg = PgVectorConfig::builder()
                    .url(format!(
                        "postgres://postgres:{password}@localhost:{}/postgres?sslmode=verify-full",
                        pg_server.port()
                    ))
                    .ssl_root_cert_pem(pki.ca_pem.clone())
                    .dimensions(3)
                    .build()
                    .expect("pg tls config");
                shown.push(format!("{cfg:?}"));
                // No pgvector on this server: a login ends at CREATE EXTENSION.
                if let Err(e) = PgVectorMemoryStore::connect(cfg).await {
                    shown.push(format!("{e} {e:?}"));
                }
            }
        }

        // Kafka: SASL PLAIN (typed security settings) with the marker as
        // password, a refused broker.
        let mut kafka = KafkaQueueConfig::builder()
            .brokers(format!("127.0.0.1:{}", refused_port()))
            .topic("leak-test")
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("kafka config");
        let mut security = KafkaSecurityConfig::default();
        security.protocol = KafkaProtocol::SaslPlaintext;
        security.sasl_username = Some("leaky".into());
        security.sasl_password = Some(marker.clone().into());
        kafka.security = security;
        kafka.validate().expect("valid kafka security");
        shown.push(format!("{kafka:?}"));
        let e = KafkaQueue::connect(kafka)
            .await
            .map(|q| q.capabilities())
            .expect_err("kafka refused");
        shown.push(format!("{e} {e:?}"));

        // Triton: a bearer token and a client key, a refused endpoint.
        let tls = agentscale_infer::TlsConfig {
            ca_pem: pki.ca_pem.clone().into_bytes(),
            domain: None,
            client_identity: Some((
                pki.client.cert_pem.clone().into_bytes(),
                pki.client.key_pem.clone().into_bytes(),
            )),
        };
        let builder =
            agentscale_infer::TritonClient::builder(format!("https://127.0.0.1:{}", refused_port()))
                .bearer_token(&marker)
                .tls(tls)
                .connect_timeout(Duration::from_secs(2));
        shown.push(format!("{builder:?}"));
        match builder.build() {
            Ok(client) => {
                shown.push(format!("{client:?}"));
                let e = client
                    .server_live()
                    .await
                    .map(|_| ())
                    .expect_err("triton refused");
                shown.push(format!("{e} {e:?}"));
            }
            Err(e) => shown.push(format!("{e} {e:?}")),
        }
        // OpenAI-compatible endpoint (NIM, vLLM): the marker as the API key,
        // a private CA, a refused endpoint.
        let config = agentscale_infer::openai::OpenAiConfig::builder()
            .base_url(format!("https://127.0.0.1:{}/v1", refused_port()))
            .api_key(marker.clone())
            .ca_pem(pki.ca_pem.clone())
            .chat_model("m")
            .max_attempts(2)
            .retry_backoff(Duration::from_millis(10))
            .build()
            .expect("openai config");
        shown.push(format!("{config:?}"));
        let client = agentscale_infer::openai::OpenAiClient::new(config).expect("openai client");
        shown.push(format!("{client:?}"));
        let e = agentscale_core::ChatModel::chat(
            &client,
            &agentscale_core::ChatRequest::new(vec![agentscale_core::ChatMessage::user("hi")]),
        )
        .await
        .expect_err("openai refused");
        shown.push(format!("{e} {e:?}"));

        // The client key itself must not show either.
        let key_line = pki.client.key_pem.lines().nth(1).expect("key body").to_string();
        for s in &shown {
            assert!(!s.contains(&key_line), "client key shown: {s}");
        }
    });
    drop(rt);

    for s in &shown {
        assert!(!s.contains(&marker), "marker in Debug/Display: {s}");
    }
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).into_owned();
    // The capture is live for the libraries that see the secrets.
    for target in ["rustls::", "rdkafka::"] {
        assert!(logs.contains(target), "no trace output from {target} captured");
    }
    let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(&marker)).collect();
    assert!(leaked.is_empty(), "marker in trace output: {leaked:#?}");
}
