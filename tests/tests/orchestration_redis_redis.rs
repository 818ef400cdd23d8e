//! Results and orchestration conformance: Redis queue × Redis state
//! (`AGENTSCALE_REDIS_URL`).

use agentscale_tests::orchestration_suite::Backends;

#[path = "common/orchestration.rs"]
mod support;

async fn setup(name: String) -> Option<Backends> {
    let url = support::redis_url()?;
    let (main, c1) = support::redis_queue(&url, &format!("{name}-main")).await;
    let (specialists, c2) = support::redis_queue(&url, &format!("{name}-spec")).await;
    let (results, joins, c3) = support::redis_state(&url, &name).await;
    Some(Backends {
        main,
        specialists,
        results,
        joins,
        cleanup: Some(Box::pin(async move {
            c1.await;
            c2.await;
            c3.await;
        })),
    })
}

agentscale_tests::orchestration_conformance!(setup);
