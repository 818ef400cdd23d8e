//! TritonPool against real Triton replicas: a second pytriton server is
//! started by the test and killed mid-load; requests move to the healthy one.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::ErrorKind;
use agentscale_infer::testing::NoopServer;
use agentscale_infer::{InferRequest, Tensor, TritonClient, TritonPool};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    pgid: u32,
    url: String,
    _child: tokio::process::Child,
}

/// This process's process group id (field 5 of /proc/self/stat).
fn own_pgid() -> u32 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// SIGKILLs every process of group `pgid` by its own (positive) pid: the
/// procps-ng 4.0 `kill` binary misreads negative pids, so never pass one.
fn kill_group(pgid: u32) {
    assert_ne!(pgid, own_pgid(), "refusing to kill the test's own process group");
    let out = std::process::Command::new("pgrep")
        .arg("-g")
        .arg(pgid.to_string())
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let pid: u32 = pid.parse().unwrap();
        assert!(pid > 1);
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

impl Replica {
    fn kill(&self) {
        // serve.py leads its own process group: kill it with tritonserver.
        kill_group(self.pgid);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

async fn start_replica(python: &str) -> Replica {
    let (g, h, m) = (free_port(), free_port(), free_port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/triton/serve.py");
    let log = std::fs::File::create(std::env::temp_dir().join(format!("triton-replica-{g}.log"))).unwrap();
    let child = tokio::process::Command::new(python)
        .arg(script)
        .args([
            "--grpc-port",
            &g.to_string(),
            "--http-port",
            &h.to_string(),
            "--metrics-port",
            &m.to_string(),
            "--models",
            "identity_fp32",
        ])
        .process_group(0)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pgid = child.id().unwrap();
    let url = format!("http://127.0.0.1:{g}");
    let c = TritonClient::new(&url).unwrap();
    // Await readiness (start-up takes 10–40 s on this machine).
    let mut ready = false;
    for _ in 0..1800 {
        if c.server_ready().await.unwrap_or(false)
            && c.model_ready("identity_fp32", "").await.unwrap_or(false)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "second Triton replica did not become ready");
    Replica {
        pgid,
        url,
        _child: child,
    }
}

fn request(i: u64) -> InferRequest {
    InferRequest::new("identity_fp32")
        .input(Tensor::from_slice("INPUT0", &[i as f32]))
        .deadline(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_load_traffic_moves_to_the_healthy_one() {
    let Some(url) = agentscale_tests::service_env("AGENTSCALE_TRITON_URL") else {
        return;
    };
    let Some(python) = agentscale_tests::service_env("AGENTSCALE_TRITON_PYTHON") else {
        return;
    };
    let b = start_replica(&python).await;
    let pool = TritonPool::builder()
        .endpoint(&url, 1)
        .endpoint(&b.url, 1)
        .health_check(Duration::from_millis(200), Duration::from_secs(2))
        .build()
        .unwrap();

    const WORKERS: u64 = 8;
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (pool, issued, stopping) = (pool.clone(), issued.clone(), stopping.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                let before_ejection = pool.stats().ejections == 0;
                match pool.infer(&request(i)).await {
                    Ok(r) => assert_eq!(
                        r.output("OUTPUT0").unwrap().to_vec::<f32>().unwrap(),
                        vec![i as f32]
                    ),
                    Err(e) => failures.push((before_ejection, e.kind(), e.to_string())),
                }
            }
            failures
        }));
    }
    // Both replicas serve before the kill.
    while pool
        .router()
        .endpoints()
        .iter()
        .filter(|e| e.ewma_latency > Duration::ZERO)
        .count()
        < 2
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.kill();
    // The health check (or in-band failures) ejects the dead replica.
    while pool.stats().ejections == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ejected_at = pool.stats();
    // Keep the load running well past the ejection.
    while pool.stats().requests < ejected_at.requests + 400 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stopping.store(true, Ordering::Relaxed);
    stop.notify_waiters();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    let stats = pool.stats();
    eprintln!("pool stats {stats:?}; failures {failures:?}");
    // Only requests already started when the replica died may fail: those in
    // flight on it (at most one per worker; a request that reached a server
    // is never retried). Requests started after the ejection never fail.
    assert!(
        failures.iter().all(|(before, _, _)| *before),
        "a request started after the ejection failed: {failures:?}"
    );
    assert!(failures.len() as u64 <= WORKERS, "{failures:?}");
    for (_, kind, msg) in &failures {
        assert!(
            matches!(kind, ErrorKind::Unavailable | ErrorKind::Rpc),
            "{kind:?} {msg}"
        );
    }
    assert_eq!(stats.failed, failures.len() as u64);
    assert_eq!(stats.succeeded + stats.failed, stats.requests);
    let eps = pool.router().endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(eps[0].id.ends_with(&url), "{eps:?}");
}

#[tokio::test]
async fn dead_endpoint_is_ejected_then_readmitted_and_connect_failures_retry() {
    let Some(url) = agentscale_tests::service_env("AGENTSCALE_TRITON_URL") else {
        return;
    };
    let port = free_port();
    let dead = format!("http://127.0.0.1:{port}");
    let pool = TritonPool::builder()
        .endpoint(&url, 1)
        .endpoint(&dead, 3)
        .health_check(Duration::from_secs(3600), Duration::from_secs(10))
        .unhealthy_after(1)
        .max_attempts(3)
        .build()
        .unwrap();
    // Before any health check: requests picking the dead endpoint fail to
    // connect and are retried (safe: nothing was sent).
    for i in 0..20 {
        let r = pool.infer(&request(i)).await.unwrap();
        assert_eq!(
            r.output("OUTPUT0").unwrap().to_vec::<f32>().unwrap(),
            vec![i as f32]
        );
    }
    assert!(pool.stats().retries >= 1, "{:?}", pool.stats());
    pool.check_health().await;
    assert_eq!(pool.stats().ejections, 1);
    assert_eq!(pool.router().len(), 1);
    // A server appears on that port: the next check re-admits it.
    let _server = NoopServer::start(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    pool.check_health().await;
    assert_eq!(pool.stats().readmissions, 1);
    assert_eq!(pool.router().len(), 2);
    // Invalid input is never retried and never reaches a replica.
    let e = pool
        .infer(&InferRequest::new("identity_fp32").input(Tensor::new("INPUT0", vec![2], &[1.0f32])))
        .await;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert!(TritonPool::builder().build().is_err());
}
