//! Handlers by task kind, with typed (JSON) payloads.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::{Handler, TaskContext};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::task::Task;

type Route<S> = Box<dyn Fn(S, &Task, &TaskContext) -> BoxFuture<'static, Result<Output>> + Send + Sync>;

/// A [`Handler`] that routes each task to the function registered for its
/// [`kind`](Task::kind), with the payload decoded from JSON into that
/// function's type, and a shared state `S` (cloned per task: use an `Arc` or
/// cheap handles) handed to every call.
///
/// A task whose kind has no route, or whose payload does not decode into the
/// route's type, fails with [`Error::InvalidInput`]: not retryable, so the
/// worker dead-letters it at once with the reason (the kind, the known kinds
/// or the decode error).
///
/// Each call receives the state, the decoded payload, and a clone of the task
/// and its [`TaskContext`] (for the id, session, attempt…), all owned, so the
/// function may return an `async move` block without lifetimes.
///
/// ```
/// use agentscale_core::worker::{KindRouter, TaskContext};
/// use agentscale_core::{Output, Task};
/// #[derive(serde::Deserialize)]
/// struct Refund { order: String, cents: u64 }
///
/// let router = KindRouter::new(())
///     .on("refund", |_state: (), r: Refund, _task: Task, _cx: TaskContext| async move {
///         Output::json(&format!("refunded {} cents on {}", r.cents, r.order))
///     })
///     .on("ping", |_: (), _: serde_json::Value, _: Task, _: TaskContext| async { Ok(Output::none()) });
/// assert_eq!(router.kinds().collect::<Vec<_>>(), ["ping", "refund"]);
/// ```
pub struct KindRouter<S = ()> {
    state: S,
    routes: BTreeMap<String, Route<S>>,
}

impl<S> fmt::Debug for KindRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindRouter")
            .field("kinds", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> KindRouter<S> {
    /// A router with no routes, handing `state` to every call.
    pub fn new(state: S) -> Self {
        KindRouter {
            state,
            routes: BTreeMap::new(),
        }
    }

    /// Routes tasks of `kind` to `f`, with the payload decoded as JSON into
    /// `T`. Registering a kind again replaces its route.
    pub fn on<T, F, Fut>(mut self, kind: impl Into<String>, f: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(S, T, Task, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Output>> + Send + 'static,
    {
        let kind = kind.into();
        let route: Route<S> = Box::new(move |state, task, cx| match task.payload_json::<T>() {
            Ok(payload) => Box::pin(f(state, payload, task.clone(), cx.clone())),
            Err(e) => Box::pin(futures::future::ready(Err(Error::InvalidInput(format!(
                "task kind {:?}: payload does not decode into {}: {e}",
                task.kind,
                std::any::type_name::<T>()
            ))))),
        });
        self.routes.insert(kind, route);
        self
    }

    /// Routes tasks of `kind` to an untyped [`Handler`] (raw payload).
    pub fn on_handler<H: Handler>(mut self, kind: impl Into<String>, handler: H) -> Self {
        let handler = Arc::new(handler);
        let route: Route<S> = Box::new(move |_state, task, cx| {
            let (handler, task, cx) = (handler.clone(), task.clone(), cx.clone());
            Box::pin(async move { handler.handle(&task, &cx).await })
        });
        self.routes.insert(kind.into(), route);
        self
    }

    /// The kinds with a route, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

#[async_trait]
impl<S: Clone + Send + Sync + 'static> Handler for KindRouter<S> {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output> {
        match self.routes.get(&task.kind) {
            Some(route) => route(self.state.clone(), task, cx).await,
            None => Err(Error::InvalidInput(format!(
                "no handler for task kind {:?} (routed kinds: {:?})",
                task.kind,
                self.routes.keys().collect::<Vec<_>>()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;

    #[derive(serde::Deserialize)]
    struct Add {
        n: u64,
    }

    fn cx() -> TaskContext {
        TaskContext::detached(1, 3, Duration::from_secs(5))
    }

    fn router() -> KindRouter<Arc<AtomicU64>> {
        KindRouter::new(Arc::new(AtomicU64::new(0)))
            .on(
                "add",
                |sum: Arc<AtomicU64>, a: Add, _t: Task, _cx: TaskContext| async move {
                    Output::json(&(sum.fetch_add(a.n, Ordering::SeqCst) + a.n))
                },
            )
            .on(
                "fail",
                |_: Arc<AtomicU64>, _: serde_json::Value, t: Task, cx: TaskContext| async move {
                    Err(Error::handler(format!(
                        "{} failed on attempt {}",
                        t.id,
                        cx.attempt()
                    )))
                },
            )
    }

    #[tokio::test]
    async fn routes_by_kind_with_typed_payloads() {
        let r = router();
        let t = Task::json("add", &serde_json::json!({"n": 5})).expect("task");
        let out = r.handle(&t, &cx()).await.expect("ok");
        assert_eq!(out.parse_json::<u64>().expect("json"), 5);
        let out = r.handle(&t, &cx()).await.expect("ok");
        assert_eq!(out.parse_json::<u64>().expect("json"), 10);
        // A handler's own error passes through unchanged (retryable here).
        let f = Task::new("fail", "{}");
        let e = r.handle(&f, &cx()).await.expect_err("fails");
        assert!(e.is_retryable() && e.to_string().contains("attempt 1"), "{e}");
    }

    #[tokio::test]
    async fn unknown_kind_and_bad_payload_are_invalid_input() {
        let r = router();
        let e = r
            .handle(&Task::new("refund", "{}"), &cx())
            .await
            .expect_err("unknown");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_retryable());
        assert!(
            e.to_string().contains("\"refund\"") && e.to_string().contains("\"add\""),
            "{e}"
        );
        let e = r
            .handle(&Task::new("add", r#"{"n":"five"}"#), &cx())
            .await
            .expect_err("bad payload");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("does not decode"), "{e}");
    }

    #[tokio::test]
    async fn raw_handlers_can_be_routed() {
        struct Echo;
        #[async_trait]
        impl Handler for Echo {
            async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output> {
                Ok(Output::bytes(task.payload.clone()))
            }
        }
        let r = KindRouter::new(()).on_handler("echo", Echo);
        let out = r.handle(&Task::new("echo", "raw!"), &cx()).await.expect("ok");
        assert_eq!(out.as_bytes().map(|b| &b[..]), Some(&b"raw!"[..]));
    }
}
