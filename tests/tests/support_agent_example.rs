//! The `support_agent` example (examples/support_agent.rs) runs against the
//! real Redis from `AGENTSCALE_REDIS_URL`: 2,000 tasks, two workers, typed
//! handlers by kind, sessions applied once per task, the tool cache; its own
//! check (every customer's count exact, queue empty, no dead letters) must
//! find no mismatch. The example's file is compiled into this test as is, so
//! the test runs exactly the code users copy.

#[allow(dead_code)]
#[path = "../../examples/support_agent.rs"]
mod support_agent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_agent_example_counts_every_customer_exactly() {
    let Some(url) = agentscale_tests::service_env("AGENTSCALE_REDIS_URL") else {
        return;
    };
    let mismatches = support_agent::run(&url, 40, 2000)
        .await
        .expect("the example runs");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
