//! `ModelStreamInfer`: many requests on one bidirectional gRPC stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use agentscale_core::{Error, Result, RpcCode};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{status_to_call_error, TritonClient};
use crate::pb;
use crate::request::{InferRequest, InferResponse};

type Pending = HashMap<String, mpsc::UnboundedSender<Result<InferResponse>>>;

struct Inner {
    tx: mpsc::Sender<pb::ModelInferRequest>,
    pending: Arc<Mutex<Pending>>,
    closed: Arc<Mutex<Option<String>>>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the response stream cancels the RPC (RST_STREAM); the server
        // cancels the requests still running on it.
        self.reader.abort();
    }
}

/// A `ModelStreamInfer` session: send many requests, each gets its own
/// [`ResponseStream`]. Requests are told apart by id (one is assigned when
/// the request has none). Every request is sent with
/// `triton_enable_empty_final_response`, so each response stream ends on the
/// response flagged `triton_final_response`.
///
/// The session lives while this handle or any of its response streams is
/// alive; when the last one is dropped the gRPC stream is cancelled.
#[derive(Clone)]
pub struct InferStream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InferStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferStream")
            .field("pending", &self.inner.pending.lock().len())
            .finish()
    }
}

fn fail_all(pending: &Mutex<Pending>, closed: &Mutex<Option<String>>, why: &Error) {
    *closed.lock() = Some(why.to_string());
    for (_, tx) in pending.lock().drain() {
        let _ = tx.send(Err(clone_error(why)));
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Rpc { code, message } => Error::Rpc {
            code: *code,
            message: message.clone(),
        },
        other => Error::from_kind(other.kind(), other.to_string()),
    }
}

impl InferStream {
    pub(crate) fn open(client: TritonClient) -> InferStream {
        let (tx, rx) = mpsc::channel::<pb::ModelInferRequest>(256);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let (p, c) = (Arc::clone(&pending), Arc::clone(&closed));
        let reader = tokio::spawn(async move {
            let mut grpc = client.raw_grpc();
            let req = client.request(ReceiverStream::new(rx), None);
            let mut inbound = match grpc.model_stream_infer(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    fail_all(&p, &c, &status_to_call_error(s, "ModelStreamInfer").error);
                    return;
                }
            };
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => dispatch(&p, msg),
                    Ok(None) => {
                        fail_all(
                            &p,
                            &c,
                            &Error::Closed("ModelStreamInfer: the server ended the stream".into()),
                        );
                        return;
                    }
                    Err(s) => {
                        fail_all(&p, &c, &status_to_call_error(s, "ModelStreamInfer").error);
                        return;
                    }
                }
            }
        });
        InferStream {
            inner: Arc::new(Inner {
                tx,
                pending,
                closed,
                next_id: AtomicU64::new(1),
                reader,
            }),
        }
    }

    /// Sends a request; its responses arrive on the returned stream.
    /// A request deadline bounds the whole response stream.
    pub async fn send(&self, req: InferRequest) -> Result<ResponseStream> {
        let mut req = req;
        if req.id.is_empty() {
            req.id = format!("as-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        }
        let msg = req.to_pb(true)?;
        let (rtx, rrx) = mpsc::unbounded_channel();
        {
            if let Some(why) = self.inner.closed.lock().clone() {
                return Err(Error::Closed(why));
            }
            let mut pending = self.inner.pending.lock();
            if pending.contains_key(&req.id) {
                return Err(Error::InvalidInput(format!(
                    "request id '{}' is already in flight on this stream",
                    req.id
                )));
            }
            pending.insert(req.id.clone(), rtx);
        }
        let id = req.id.clone();
        if self.inner.tx.send(msg).await.is_err() {
            self.inner.pending.lock().remove(&id);
            let why = self
                .inner
                .closed
                .lock()
                .clone()
                .unwrap_or_else(|| "stream closed".into());
            return Err(Error::Closed(why));
        }
        let sleep = req.deadline.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Ok(ResponseStream {
            id,
            rx: rrx,
            session: Some(Arc::clone(&self.inner)),
            done: false,
            sleep,
            first: None,
        })
    }

    /// Requests sent whose final response has not arrived yet.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.lock().len()
    }
}

fn dispatch(pending: &Mutex<Pending>, msg: pb::ModelStreamInferResponse) {
    let resp = msg.infer_response.unwrap_or_default();
    let id = resp.id.clone();
    let mut map = pending.lock();
    if !msg.error_message.is_empty() {
        let err = Error::Rpc {
            code: RpcCode::Internal,
            message: msg.error_message,
        };
        // Triton names the failed request by id; without one the error can
        // only be attributed when a single request is in flight.
        let key = if map.contains_key(&id) {
            Some(id)
        } else if map.len() == 1 {
            map.keys().next().cloned()
        } else {
            None
        };
        match key.and_then(|k| map.remove(&k)) {
            Some(tx) => {
                let _ = tx.send(Err(err));
            }
            None => tracing::warn!(error = %err, "ModelStreamInfer error for an unknown request"),
        }
        return;
    }
    let parsed = InferResponse::from_pb(resp);
    let Some(tx) = map.get(&id) else {
        tracing::debug!(id = %id, "response for a request no longer awaited");
        return;
    };
    match parsed {
        Ok(r) => {
            let last = r.is_final();
            if !(last && r.outputs.is_empty()) {
                let _ = tx.send(Ok(r));
            }
            if last {
                map.remove(&id);
            }
        }
        Err(e) => {
            let _ = tx.send(Err(e));
            map.remove(&id);
        }
    }
}

/// The responses of one streamed request, ending after the final one.
/// Yields `Err` once (and ends) on a stream error or deadline expiry.
/// Dropping it stops delivery; if it was the last handle of its session, the
/// gRPC call is cancelled.
pub struct ResponseStream {
    id: String,
    rx: mpsc::UnboundedReceiver<Result<InferResponse>>,
    session: Option<Arc<Inner>>,
    done: bool,
    sleep: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
    first: Option<Option<Result<InferResponse>>>,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl ResponseStream {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Puts an already-taken first item back in front.
    pub(crate) fn with_first(mut self, first: Option<Result<InferResponse>>) -> Self {
        self.done = false;
        self.first = Some(first);
        self
    }
}

impl Stream for ResponseStream {
    type Item = Result<InferResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            match first {
                Some(Ok(r)) => return Poll::Ready(Some(Ok(r))),
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(None);
                }
            }
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if item.is_err() {
                    self.done = true;
                }
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((d, sleep)) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let d = *d;
                self.done = true;
                if let Some(s) = &self.session {
                    s.pending.lock().remove(&self.id);
                }
                return Poll::Ready(Some(Err(Error::Timeout(format!(
                    "stream request '{}': deadline of {d:?} expired",
                    self.id
                )))));
            }
        }
        Poll::Pending
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            s.pending.lock().remove(&self.id);
        }
    }
}

use std::future::Future as _;
