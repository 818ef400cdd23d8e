//! Results and orchestration conformance: Kafka queue
//! (`AGENTSCALE_KAFKA_BROKERS`) × local state.

use agentscale_tests::orchestration_suite::Backends;

#[path = "common/orchestration.rs"]
mod support;

async fn setup(name: String) -> Option<Backends> {
    let brokers = support::kafka_brokers()?;
    let (main, c1) = support::kafka_queue(&brokers, &format!("{name}-main")).await;
    let (specialists, c2) = support::kafka_queue(&brokers, &format!("{name}-spec")).await;
    let (results, joins) = support::local_state();
    Some(Backends {
        main,
        specialists,
        results,
        joins,
        cleanup: Some(Box::pin(async move {
            c1.await;
            c2.await;
        })),
    })
}

agentscale_tests::orchestration_conformance!(setup);
