//! Results and orchestration conformance: local queue × local state.

use std::sync::Arc;
use std::time::Duration;

use agentscale_queue::LocalQueue;
use agentscale_state::local::{LocalJoinStore, LocalResultStore};
use agentscale_tests::orchestration_suite::{Backends, SUITE_MAX_OUTPUT_BYTES};

async fn setup(name: String) -> Option<Backends> {
    let queue = |n: String| {
        Arc::new(
            LocalQueue::builder(n)
                .lease_timeout(Duration::from_secs(5))
                .build()
                .expect("queue"),
        )
    };
    Some(Backends {
        main: queue(format!("{name}-main")),
        specialists: queue(format!("{name}-spec")),
        results: Arc::new(
            LocalResultStore::builder()
                .max_output_bytes(SUITE_MAX_OUTPUT_BYTES)
                .build()
                .expect("results"),
        ),
        joins: Arc::new(LocalJoinStore::builder().build().expect("joins")),
        cleanup: None,
    })
}

agentscale_tests::orchestration_conformance!(setup);
