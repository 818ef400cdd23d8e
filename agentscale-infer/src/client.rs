//! The Triton gRPC client.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use agentscale_core::{Error, Result, RpcCode};
use http::uri::PathAndQuery;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use crate::errors::{status_to_call_error, CallError};
use crate::pb;
use crate::request::{InferRequest, InferResponse};
use crate::stream::{InferStream, ResponseStream};
use crate::tls::{tls_connector, TlsConfig};
use crate::transport::{Channel, ChannelConfig};

/// A unary method of `GRPCInferenceService`: request, response and path.
trait UnaryMethod: prost::Message + Send + Sync + 'static {
    type Response: prost::Message + Default + Send + Sync + 'static;
    const PATH: &'static str;
}

macro_rules! unary_methods {
    ($($name:ident: $req:ident => $resp:ident;)*) => {
        $(impl UnaryMethod for pb::$req {
            type Response = pb::$resp;
            const PATH: &'static str = concat!("/inference.GRPCInferenceService/", stringify!($name));
        })*
    };
}

unary_methods! {
    ServerLive: ServerLiveRequest => ServerLiveResponse;
    ServerReady: ServerReadyRequest => ServerReadyResponse;
    ModelReady: ModelReadyRequest => ModelReadyResponse;
    ServerMetadata: ServerMetadataRequest => ServerMetadataResponse;
    ModelMetadata: ModelMetadataRequest => ModelMetadataResponse;
    ModelConfig: ModelConfigRequest => ModelConfigResponse;
    ModelStatistics: ModelStatisticsRequest => ModelStatisticsResponse;
    RepositoryIndex: RepositoryIndexRequest => RepositoryIndexResponse;
    RepositoryModelLoad: RepositoryModelLoadRequest => RepositoryModelLoadResponse;
    RepositoryModelUnload: RepositoryModelUnloadRequest => RepositoryModelUnloadResponse;
    ModelInfer: ModelInferRequest => ModelInferResponse;
}

const STREAM_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// Builds a [`TritonClient`]; see [`TritonClient::builder`].
#[derive(Clone)]
pub struct TritonClientBuilder {
    url: String,
    tls: Option<TlsConfig>,
    headers: Vec<(String, String)>,
    gzip: bool,
    connect_timeout: Duration,
    default_deadline: Duration,
    stream_deadline: Duration,
    keepalive: Option<(Duration, Duration)>,
    max_message_size: usize,
    max_header_list_size: u32,
    stream_buffer: usize,
}

/// Header names shown in `Debug` output; every value is redacted (header
/// values carry credentials such as `authorization: Bearer …`).
struct RedactedHeaders<'a>(&'a [(AsciiMetadataKey, Redact)]);

/// A header value that `Debug` never prints.
#[derive(Clone)]
pub(crate) struct Redact(pub(crate) AsciiMetadataValue);

impl std::fmt::Debug for Redact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k.as_str(), v)))
            .finish()
    }
}

impl std::fmt::Debug for TritonClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TritonClientBuilder")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .field("header_names (values redacted)", &names)
            .field("gzip", &self.gzip)
            .field("connect_timeout", &self.connect_timeout)
            .field("default_deadline", &self.default_deadline)
            .field("stream_deadline", &self.stream_deadline)
            .field("keepalive", &self.keepalive)
            .field("max_message_size", &self.max_message_size)
            .field("max_header_list_size", &self.max_header_list_size)
            .field("stream_buffer", &self.stream_buffer)
            .finish()
    }
}

/// Default maximum gRPC message size in both directions (64 MiB). Raise it
/// with [`TritonClientBuilder::max_message_size`] for larger tensors.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Default limit on a response's decoded header list (16 KiB), enforced by
/// h2 while decoding HPACK, so a small header block cannot expand past it.
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Default deadline of a unary call that sets none (30 s), covering the
/// wait for a connection and a stream slot as well as the answer.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Default deadline of a streamed request that sets none (10 min, for long
/// generations): it bounds the whole response stream.
pub const DEFAULT_STREAM_DEADLINE: Duration = Duration::from_secs(600);

/// Default number of responses buffered per streamed request before the
/// stream stops reading from the server (HTTP/2 flow control then slows the
/// server down).
pub const DEFAULT_STREAM_BUFFER: usize = 16;

/// Default HTTP/2 keepalive: a ping every 5 min 10 s, only while calls are
/// open. Triton's defaults punish pings more often than every 5 min without
/// data (`GOAWAY too_many_pings`), so this stays above that.
pub const DEFAULT_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(310), Duration::from_secs(20));

impl TritonClientBuilder {
    /// Adds a header sent with every call (for example `authorization`).
    /// Values never appear in `Debug` output and are sent HPACK
    /// never-indexed.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(self, token: impl AsRef<str>) -> Self {
        let v = format!("Bearer {}", token.as_ref());
        self.header("authorization", v)
    }

    /// Enables TLS (use an `https://` URL).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Gzip-compresses requests and accepts gzip responses (inflated output
    /// is capped at the message size limit).
    pub fn gzip(mut self, enabled: bool) -> Self {
        self.gzip = enabled;
        self
    }

    /// Connection timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for unary calls that set none (default [`DEFAULT_DEADLINE`]).
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.default_deadline = deadline;
        self
    }

    /// Deadline for streamed requests that set none (default
    /// [`DEFAULT_STREAM_DEADLINE`]).
    pub fn stream_deadline(mut self, deadline: Duration) -> Self {
        self.stream_deadline = deadline;
        self
    }

    /// HTTP/2 keepalive ping interval and ack timeout; `None` disables.
    /// See [`DEFAULT_KEEPALIVE`] before lowering the interval.
    pub fn keepalive(mut self, keepalive: Option<(Duration, Duration)>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Maximum message size in both directions (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]). A response whose length prefix is
    /// larger is refused before it is buffered.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Maximum decoded size of a response's header list (default
    /// [`DEFAULT_MAX_HEADER_LIST_SIZE`]).
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.max_header_list_size = bytes;
        self
    }

    /// Responses buffered per streamed request (default
    /// [`DEFAULT_STREAM_BUFFER`]); when full, the stream stops reading.
    pub fn stream_buffer(mut self, responses: usize) -> Self {
        self.stream_buffer = responses;
        self
    }

    /// Validates the settings and builds the client. Connects lazily: the
    /// first call connects, and a broken connection is re-established.
    pub fn build(self) -> Result<TritonClient> {
        let mut url = self.url.clone();
        if !url.contains("://") {
            url = format!("http://{url}");
        }
        let is_https = url.starts_with("https://");
        if !(url.starts_with("http://") || is_https) {
            return Err(Error::InvalidConfig(format!(
                "triton url '{url}': scheme must be http or https"
            )));
        }
        if is_https != self.tls.is_some() {
            return Err(Error::InvalidConfig(format!(
                "triton url '{url}': use https:// together with .tls(...), http:// without"
            )));
        }
        if self.max_message_size == 0 || self.max_header_list_size == 0 || self.stream_buffer == 0 {
            return Err(Error::InvalidConfig(
                "max_message_size, max_header_list_size and stream_buffer must be positive".into(),
            ));
        }
        if self.default_deadline.is_zero() || self.stream_deadline.is_zero() || self.connect_timeout.is_zero()
        {
            return Err(Error::InvalidConfig(
                "default_deadline, stream_deadline and connect_timeout must be positive".into(),
            ));
        }
        let origin: http::Uri = url
            .parse()
            .map_err(|e| Error::InvalidConfig(format!("triton url '{url}': {e}")))?;
        let Some(host) = origin.host().filter(|h| !h.is_empty()) else {
            return Err(Error::InvalidConfig(format!("triton url '{url}': no host")));
        };
        if let Some((interval, timeout)) = self.keepalive {
            if interval.is_zero() || timeout.is_zero() {
                return Err(Error::InvalidConfig(
                    "keepalive interval and timeout must be positive".into(),
                ));
            }
        }
        let tls = match &self.tls {
            None => None,
            Some(tls) => Some(tls_connector(tls, host)?),
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let key = AsciiMetadataKey::from_str(k).map_err(|_| {
                Error::InvalidConfig(format!("header name '{k}' is not a valid gRPC metadata key"))
            })?;
            let mut val = AsciiMetadataValue::from_str(v)
                .map_err(|_| Error::InvalidConfig(format!("header '{k}': value is not printable ASCII")))?;
            val.set_sensitive(true);
            headers.push((key, Redact(val)));
        }
        let channel = Channel::new(ChannelConfig {
            origin,
            tls,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            max_header_list_size: self.max_header_list_size,
        });
        let mut grpc = tonic::client::Grpc::new(channel.clone())
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        if self.gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(TritonClient {
            grpc,
            channel,
            headers,
            default_deadline: self.default_deadline,
            stream_deadline: self.stream_deadline,
            max_message_size: self.max_message_size,
            stream_buffer: self.stream_buffer,
            gzip: self.gzip,
            url,
        })
    }
}

/// A client for one Triton server (KServe v2 gRPC protocol).
///
/// Cheap to clone (all clones share one HTTP/2 connection); use it from
/// many tasks at once. Every call has a deadline (its own, else the
/// client's default). Errors: a gRPC status becomes [`Error::Rpc`] with the
/// code and Triton's message (an unknown model is `Rpc { code: NotFound |
/// InvalidArgument | Unavailable, .. }` depending on the Triton version), an
/// expired deadline [`Error::Timeout`], a failed or broken connection
/// [`Error::Unavailable`], a response over the size limit `Rpc {
/// code: ResourceExhausted, .. }`, and a tensor that does not match its
/// shape or datatype (or a request over the size limit)
/// [`Error::InvalidInput`] before anything is sent.
#[derive(Clone)]
pub struct TritonClient {
    grpc: tonic::client::Grpc<Channel>,
    #[cfg_attr(not(feature = "raw"), allow(dead_code))]
    channel: Channel,
    headers: Vec<(AsciiMetadataKey, Redact)>,
    default_deadline: Duration,
    stream_deadline: Duration,
    max_message_size: usize,
    pub(crate) stream_buffer: usize,
    gzip: bool,
    url: String,
}

impl std::fmt::Debug for TritonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TritonClient")
            .field("url", &self.url)
            .field("headers", &RedactedHeaders(&self.headers))
            .field("default_deadline", &self.default_deadline)
            .field("stream_deadline", &self.stream_deadline)
            .field("max_message_size", &self.max_message_size)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

impl TritonClient {
    /// A builder for a client of the server at `url` (`http://host:8001`;
    /// `host:port` means `http://`).
    pub fn builder(url: impl Into<String>) -> TritonClientBuilder {
        TritonClientBuilder {
            url: url.into(),
            tls: None,
            headers: Vec::new(),
            gzip: false,
            connect_timeout: Duration::from_secs(5),
            default_deadline: DEFAULT_DEADLINE,
            stream_deadline: DEFAULT_STREAM_DEADLINE,
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            stream_buffer: DEFAULT_STREAM_BUFFER,
        }
    }

    /// A client with default settings.
    pub fn new(url: impl Into<String>) -> Result<TritonClient> {
        TritonClient::builder(url).build()
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The generated tonic client on this client's connection, with the
    /// same message size limits and compression (an escape hatch for calls
    /// this type does not wrap). Headers and deadlines are not added: set
    /// them on each `tonic::Request`.
    #[cfg(feature = "raw")]
    #[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
    pub fn raw_grpc(&self) -> pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel> {
        let mut c = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        if self.gzip {
            c = c
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        c
    }

    /// A request carrying the client's headers and the deadline as
    /// `grpc-timeout`.
    fn request<T>(&self, msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.0.clone());
        }
        req.set_timeout(deadline);
        req
    }

    /// The deadline of a unary call.
    pub(crate) fn deadline(&self, d: Option<Duration>) -> Duration {
        d.unwrap_or(self.default_deadline)
    }

    /// The deadline of a streamed request.
    pub(crate) fn stream_deadline(&self, d: Option<Duration>) -> Duration {
        d.unwrap_or(self.stream_deadline)
    }

    /// Refuses a message over the size limit before anything is sent.
    pub(crate) fn check_size(&self, msg: &impl prost::Message, what: &str) -> Result<()> {
        let len = msg.encoded_len();
        if len > self.max_message_size {
            return Err(Error::InvalidInput(format!(
                "{what}: request of {len} bytes exceeds max_message_size {}",
                self.max_message_size
            )));
        }
        Ok(())
    }

    /// Opens `ModelStreamInfer` with `requests` as the request stream.
    pub(crate) async fn open_stream<S>(
        &self,
        requests: S,
    ) -> std::result::Result<tonic::Streaming<pb::ModelStreamInferResponse>, tonic::Status>
    where
        S: futures::Stream<Item = pb::ModelInferRequest> + Send + 'static,
    {
        let mut req = tonic::Request::new(requests);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.0.clone());
        }
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("ModelStreamInfer: {e}")))?;
        let codec = tonic_prost::ProstCodec::<pb::ModelInferRequest, pb::ModelStreamInferResponse>::default();
        grpc.streaming(req, PathAndQuery::from_static(STREAM_PATH), codec)
            .await
            .map(tonic::Response::into_inner)
    }

    /// One unary call of `GRPCInferenceService/<method>`, bounded by the
    /// call's deadline (connecting and waiting for a stream slot included).
    async fn unary<Req: UnaryMethod>(
        &self,
        msg: Req,
        deadline: Option<Duration>,
    ) -> std::result::Result<Req::Response, CallError> {
        let method = Req::PATH.rsplit('/').next().unwrap_or(Req::PATH);
        self.check_size(&msg, method)?;
        let d = self.deadline(deadline);
        let req = self.request(msg, d);
        let mut grpc = self.grpc.clone();
        let fut = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("{method}: {e}")))?;
            let codec = tonic_prost::ProstCodec::<Req, Req::Response>::default();
            grpc.unary(req, PathAndQuery::from_static(Req::PATH), codec).await
        };
        let start = tokio::time::Instant::now();
        let expired = || CallError {
            error: Error::Timeout(format!("{method}: deadline of {d:?} expired")),
            retry_safe: false,
        };
        match tokio::time::timeout(d, fut).await {
            Err(_) => Err(expired()),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => {
                let e = status_to_call_error(s, method);
                // The server enforces `grpc-timeout` too, and a server that
                // answers CANCELLED (tonic does) may beat our own timer.
                if start.elapsed() >= d
                    && matches!(
                        e.error,
                        Error::Rpc {
                            code: RpcCode::Cancelled,
                            ..
                        }
                    )
                {
                    return Err(expired());
                }
                Err(e)
            }
        }
    }

    /// Whether the server is live.
    pub async fn server_live(&self) -> Result<bool> {
        self.unary(pb::ServerLiveRequest {}, None)
            .await
            .map(|r| r.live)
            .map_err(|e| e.error)
    }

    pub(crate) async fn server_ready_within(
        &self,
        deadline: Option<Duration>,
    ) -> std::result::Result<bool, CallError> {
        self.unary(pb::ServerReadyRequest {}, deadline)
            .await
            .map(|r| r.ready)
    }

    /// Whether the server is ready.
    pub async fn server_ready(&self) -> Result<bool> {
        self.server_ready_within(None).await.map_err(|e| e.error)
    }

    /// Whether a model (version; `""` for the server's choice) is ready.
    pub async fn model_ready(&self, model: &str, version: &str) -> Result<bool> {
        let msg = pb::ModelReadyRequest {
            name: model.into(),
            version: version.into(),
        };
        self.unary(msg, None).await.map(|r| r.ready).map_err(|e| e.error)
    }

    /// Server name, version and protocol extensions.
    pub async fn server_metadata(&self) -> Result<ServerMetadata> {
        self.unary(pb::ServerMetadataRequest {}, None)
            .await
            .map(|r| ServerMetadata {
                name: r.name,
                version: r.version,
                extensions: r.extensions,
            })
            .map_err(|e| e.error)
    }

    /// A model's inputs, outputs, versions and platform.
    pub async fn model_metadata(&self, model: &str, version: &str) -> Result<ModelMetadata> {
        let msg = pb::ModelMetadataRequest {
            name: model.into(),
            version: version.into(),
        };
        let r = self.unary(msg, None).await.map_err(|e| e.error)?;
        let conv = |t: pb::model_metadata_response::TensorMetadata| TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        };
        Ok(ModelMetadata {
            name: r.name,
            versions: r.versions,
            platform: r.platform,
            inputs: r.inputs.into_iter().map(conv).collect(),
            outputs: r.outputs.into_iter().map(conv).collect(),
        })
    }

    /// A model's configuration (the protocol message; see [`pb::ModelConfig`]).
    #[cfg(feature = "raw")]
    #[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
    pub async fn model_config(&self, model: &str, version: &str) -> Result<pb::ModelConfig> {
        let msg = pb::ModelConfigRequest {
            name: model.into(),
            version: version.into(),
        };
        self.unary(msg, None)
            .await
            .map_err(|e| e.error)?
            .config
            .ok_or_else(|| Error::Backend {
                message: "ModelConfig: empty response".into(),
                source: None,
            })
    }

    /// Inference statistics of one model (`model` empty: all models).
    #[cfg(feature = "raw")]
    #[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
    pub async fn model_statistics(&self, model: &str, version: &str) -> Result<Vec<pb::ModelStatistics>> {
        let msg = pb::ModelStatisticsRequest {
            name: model.into(),
            version: version.into(),
        };
        self.unary(msg, None)
            .await
            .map(|r| r.model_stats)
            .map_err(|e| e.error)
    }

    /// The models in the repository (`ready_only`: only ready ones).
    pub async fn repository_index(&self, ready_only: bool) -> Result<Vec<RepositoryModel>> {
        let msg = pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: ready_only,
        };
        self.unary(msg, None)
            .await
            .map(|r| {
                r.models
                    .into_iter()
                    .map(|m| RepositoryModel {
                        name: m.name,
                        version: m.version,
                        state: m.state,
                        reason: m.reason,
                    })
                    .collect()
            })
            .map_err(|e| e.error)
    }

    /// Loads (or reloads) a model (needs Triton's explicit model control mode).
    pub async fn load_model(&self, model: &str) -> Result<()> {
        let msg = pb::RepositoryModelLoadRequest {
            repository_name: String::new(),
            model_name: model.into(),
            parameters: HashMap::new(),
        };
        self.unary(msg, None).await.map(|_| ()).map_err(|e| e.error)
    }

    /// Unloads a model (needs Triton's explicit model control mode).
    pub async fn unload_model(&self, model: &str) -> Result<()> {
        let msg = pb::RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: model.into(),
            parameters: HashMap::new(),
        };
        self.unary(msg, None).await.map(|_| ()).map_err(|e| e.error)
    }

    pub(crate) async fn infer_inner(
        &self,
        req: &InferRequest,
    ) -> std::result::Result<InferResponse, CallError> {
        let msg = req.to_pb(false)?;
        let r = self.unary(msg, req.deadline).await?;
        Ok(InferResponse::from_pb(r)?)
    }

    /// Runs one inference. Inputs are validated first ([`Error::InvalidInput`]).
    pub async fn infer(&self, req: &InferRequest) -> Result<InferResponse> {
        self.infer_inner(req).await.map_err(|e| e.error)
    }

    /// Opens a `ModelStreamInfer` stream on which many requests (to decoupled
    /// models) can be in flight at once; responses are split per request id.
    pub fn stream(&self) -> InferStream {
        InferStream::open(self.clone())
    }

    /// Streams the responses of one request on its own gRPC stream; dropping
    /// the returned stream cancels the call on the server.
    pub async fn infer_stream(&self, req: InferRequest) -> Result<ResponseStream> {
        self.stream().send(req).await
    }
}

/// Server metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMetadata {
    /// Server name (`triton`).
    pub name: String,
    /// Server version.
    pub version: String,
    /// Supported protocol extensions.
    pub extensions: Vec<String>,
}

/// One tensor of [`ModelMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMetadata {
    /// Name.
    pub name: String,
    /// Datatype name (`FP32`, ...).
    pub datatype: String,
    /// Shape; `-1` for a variable dimension.
    pub shape: Vec<i64>,
}

/// Model metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Available versions.
    pub versions: Vec<String>,
    /// Platform or backend.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// One entry of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryModel {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// State (`READY`, `UNAVAILABLE`, ...).
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
}
