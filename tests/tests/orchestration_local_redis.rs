//! Results and orchestration conformance: local queue × Redis state
//! (`AGENTSCALE_REDIS_URL`).

use std::sync::Arc;
use std::time::Duration;

use agentscale_queue::LocalQueue;
use agentscale_tests::orchestration_suite::Backends;

#[path = "common/orchestration.rs"]
mod support;

async fn setup(name: String) -> Option<Backends> {
    let url = support::redis_url()?;
    let queue = |n: String| {
        Arc::new(
            LocalQueue::builder(n)
                .lease_timeout(Duration::from_secs(5))
                .build()
                .expect("queue"),
        )
    };
    let (results, joins, cleanup) = support::redis_state(&url, &name).await;
    Some(Backends {
        main: queue(format!("{name}-main")),
        specialists: queue(format!("{name}-spec")),
        results,
        joins,
        cleanup: Some(Box::pin(cleanup)),
    })
}

agentscale_tests::orchestration_conformance!(setup);
