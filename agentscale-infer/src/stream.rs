//! `ModelStreamInfer`: many requests on one bidirectional gRPC stream.
//!
//! Responses are buffered per request in a bounded channel
//! ([`TritonClientBuilder::stream_buffer`](crate::TritonClientBuilder::stream_buffer)).
//! When a request's buffer is full the session stops reading from the
//! server until that request's consumer takes a response (or drops its
//! stream, or its deadline expires); h2 then stops returning flow-control
//! window, so a fast server is slowed to the pace of the slowest consumer
//! on the session, and memory stays bounded by the buffers and the HTTP/2
//! windows.

use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agentscale_core::{Error, Result, RpcCode};
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::TritonClient;
use crate::errors::{clip, status_to_call_error, MAX_SERVER_TEXT};
use crate::pb;
use crate::request::{InferRequest, InferResponse};

type Pending = HashMap<String, mpsc::Sender<Result<InferResponse>>>;

/// Requests queued for sending on one session before `send` waits.
const REQUEST_QUEUE: usize = 256;

struct Inner {
    client: TritonClient,
    tx: mpsc::Sender<pb::ModelInferRequest>,
    pending: Arc<Mutex<Pending>>,
    /// Why the session ended, once it has.
    closed: Arc<Mutex<Option<Error>>>,
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

/// Ends the session: every response stream still open ends with `why`
/// after the responses already buffered for it.
fn fail_all(pending: &Mutex<Pending>, closed: &Mutex<Option<Error>>, why: Error) {
    closed.lock().get_or_insert(why);
    pending.lock().clear();
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Rpc { code, message } => Error::Rpc {
            code: *code,
            message: message.clone(),
        },
        Error::Unavailable { message, .. } => Error::Unavailable {
            message: message.clone(),
            source: None,
        },
        Error::Timeout(m) => Error::Timeout(m.clone()),
        Error::Closed(m) => Error::Closed(m.clone()),
        other => Error::from_kind(other.kind(), other.to_string()),
    }
}

impl InferStream {
    pub(crate) fn open(client: TritonClient) -> InferStream {
        let (tx, rx) = mpsc::channel::<pb::ModelInferRequest>(REQUEST_QUEUE);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let closed: Arc<Mutex<Option<Error>>> = Arc::default();
        let (p, c) = (Arc::clone(&pending), Arc::clone(&closed));
        let session = client.clone();
        let reader = tokio::spawn(async move {
            let mut inbound = match session.open_stream(ReceiverStream::new(rx)).await {
                Ok(s) => s,
                Err(s) => {
                    fail_all(&p, &c, status_to_call_error(s, "ModelStreamInfer").error);
                    return;
                }
            };
            loop {
                // The next message is read only after the previous one was
                // handed over: this is where backpressure comes from.
                match inbound.message().await {
                    Ok(Some(msg)) => dispatch(&p, msg).await,
                    Ok(None) => {
                        fail_all(
                            &p,
                            &c,
                            Error::Closed("ModelStreamInfer: the server ended the stream".into()),
                        );
                        return;
                    }
                    Err(s) => {
                        fail_all(&p, &c, status_to_call_error(s, "ModelStreamInfer").error);
                        return;
                    }
                }
            }
        });
        InferStream {
            inner: Arc::new(Inner {
                client,
                tx,
                pending,
                closed,
                next_id: AtomicU64::new(1),
                reader,
            }),
        }
    }

    fn closed_error(&self) -> Option<Error> {
        self.inner.closed.lock().as_ref().map(clone_error)
    }

    /// Sends a request; its responses arrive on the returned stream. The
    /// request's deadline (else the client's stream deadline) bounds the
    /// send and the whole response stream.
    pub async fn send(&self, req: InferRequest) -> Result<ResponseStream> {
        let mut req = req;
        if req.id.is_empty() {
            req.id = format!("as-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        }
        let deadline = self.inner.client.stream_deadline(req.deadline);
        let msg = req.to_pb(true)?;
        self.inner.client.check_size(&msg, "ModelStreamInfer")?;
        let (rtx, rrx) = mpsc::channel(self.inner.client.stream_buffer);
        {
            if let Some(why) = self.closed_error() {
                return Err(why);
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
        let sleep = Box::pin(tokio::time::sleep(deadline));
        let sent = tokio::time::timeout(deadline, self.inner.tx.send(msg)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.inner.pending.lock().remove(&id);
            return Err(match sent {
                Err(_) => Error::Timeout(format!(
                    "stream request '{id}': deadline of {deadline:?} expired while sending"
                )),
                _ => self
                    .closed_error()
                    .unwrap_or_else(|| Error::Closed("stream closed".into())),
            });
        }
        Ok(ResponseStream {
            id,
            rx: rrx,
            session: Some(Arc::clone(&self.inner)),
            done: false,
            deadline,
            sleep,
            first: None,
        })
    }

    /// Requests sent whose final response has not arrived yet.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.lock().len()
    }
}

/// Hands one message to the request it answers, waiting while that
/// request's buffer is full.
async fn dispatch(pending: &Mutex<Pending>, msg: pb::ModelStreamInferResponse) {
    let resp = msg.infer_response.unwrap_or_default();
    let id = resp.id.clone();
    if !msg.error_message.is_empty() {
        let err = Error::Rpc {
            code: RpcCode::Internal,
            message: clip(&msg.error_message, MAX_SERVER_TEXT),
        };
        // Triton names the failed request by id; without one the error can
        // only be attributed when a single request is in flight.
        let tx = {
            let mut map = pending.lock();
            let key = if map.contains_key(&id) {
                Some(id)
            } else if map.len() == 1 {
                map.keys().next().cloned()
            } else {
                None
            };
            key.and_then(|k| map.remove(&k))
        };
        match tx {
            Some(tx) => {
                let _ = tx.send(Err(err)).await;
            }
            None => tracing::warn!(error = %err, "ModelStreamInfer error for an unknown request"),
        }
        return;
    }
    let parsed = InferResponse::from_pb(resp);
    let tx = {
        let mut map = pending.lock();
        let last = !matches!(&parsed, Ok(r) if !r.is_final());
        if last {
            map.remove(&id)
        } else {
            map.get(&id).cloned()
        }
    };
    let Some(tx) = tx else {
        tracing::debug!(id = %clip(&id, 64), "response for a request no longer awaited");
        return;
    };
    // Fails only when the consumer is gone; then the response is not wanted.
    let _ = tx.send(parsed).await;
}

/// The responses of one streamed request, ending after the final one.
/// Yields `Err` once (and ends) on a stream error or deadline expiry.
/// Dropping it stops delivery; if it was the last handle of its session, the
/// gRPC call is cancelled.
pub struct ResponseStream {
    id: String,
    rx: mpsc::Receiver<Result<InferResponse>>,
    session: Option<Arc<Inner>>,
    done: bool,
    deadline: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
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

    /// Stops delivery: nothing more is buffered for this request.
    fn finish(&mut self) {
        self.done = true;
        self.rx.close();
        if let Some(s) = &self.session {
            s.pending.lock().remove(&self.id);
        }
    }
}

impl Stream for ResponseStream {
    type Item = Result<InferResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            match first {
                Some(Ok(r)) => return Poll::Ready(Some(Ok(r))),
                Some(Err(e)) => {
                    self.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    self.finish();
                    return Poll::Ready(None);
                }
            }
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(r))) => {
                if r.is_final() {
                    self.finish();
                    // The empty final response only marks the end.
                    if r.outputs.is_empty() {
                        return Poll::Ready(None);
                    }
                }
                return Poll::Ready(Some(Ok(r)));
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish();
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                // The session ended before this request's final response.
                let why = self
                    .session
                    .as_ref()
                    .and_then(|s| s.closed.lock().as_ref().map(clone_error));
                self.finish();
                return Poll::Ready(Some(Err(why.unwrap_or_else(|| {
                    Error::Closed("ModelStreamInfer: the stream ended before the final response".into())
                }))));
            }
            Poll::Pending => {}
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let d = self.deadline;
            self.finish();
            return Poll::Ready(Some(Err(Error::Timeout(format!(
                "stream request '{}': deadline of {d:?} expired",
                self.id
            )))));
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
