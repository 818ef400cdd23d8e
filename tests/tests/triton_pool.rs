//! TritonPool against real Triton replicas: a second pytriton server is
//! started by the test and killed mid-load; requests move to the healthy one.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::ErrorKind;
use agentscale_infer::testing::NoopServer;
use agentscale_infer::{InferRequest, Tensor, TritonPool};
use agentscale_tests::triton_replica::{free_port, TritonReplica};

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
    let b = TritonReplica::start(&python, "identity_fp32", None).await;
    let pool = TritonPool::builder()
        .endpoint(&url, 1)
        .endpoint(b.url(), 1)
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
