//! The Triton gRPC client.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, Result, RpcCode};
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use crate::pb;
use crate::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::request::{InferRequest, InferResponse};
use crate::stream::{InferStream, ResponseStream};
use crate::transport::{Channel, ChannelConfig, Tls};
use crate::unary::{UnaryChannel, UnaryConfig};

type Grpc = GrpcInferenceServiceClient<Channel>;

/// A unary method of `GRPCInferenceService`: request, response and name.
trait UnaryMethod: prost::Message {
    type Response: prost::Message + Default;
    const NAME: &'static str;
}

macro_rules! unary_methods {
    ($($name:ident: $req:ident => $resp:ident;)*) => {
        $(impl UnaryMethod for pb::$req {
            type Response = pb::$resp;
            const NAME: &'static str = stringify!($name);
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

/// TLS settings (PEM). Without a CA, `https://` URLs cannot be verified, so
/// `ca_pem` is required for TLS.
#[derive(Clone, Default)]
pub struct TlsConfig {
    /// CA certificate(s) that sign the server's certificate.
    pub ca_pem: Vec<u8>,
    /// Server name to verify (default: the URL's host).
    pub domain: Option<String>,
    /// Client certificate and key for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("domain", &self.domain)
            .field(
                "client_identity",
                &self.client_identity.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A rustls connector (ALPN `h2`) trusting `tls.ca_pem`, with the client
/// identity for mutual TLS if given.
fn tls_connector(tls: &TlsConfig, host: &str) -> Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::InvalidConfig(format!("tls: {what}: {e}"));
    if tls.ca_pem.is_empty() {
        return Err(Error::InvalidConfig("tls: ca_pem is required".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        let cert = cert.map_err(|e| bad("ca_pem", &e))?;
        roots.add(cert).map_err(|e| bad("ca_pem", &e))?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::InvalidConfig(
            "tls: ca_pem holds no PEM certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", &e))?;
            if chain.is_empty() {
                return Err(Error::InvalidConfig(
                    "tls: client certificate holds no PEM certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client identity", &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = tls.domain.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| bad("server name", &e))?;
    Ok(Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

/// Builds a [`TritonClient`]; see [`TritonClient::builder`].
#[derive(Debug, Clone)]
pub struct TritonClientBuilder {
    url: String,
    tls: Option<TlsConfig>,
    headers: Vec<(String, String)>,
    gzip: bool,
    connect_timeout: Duration,
    default_deadline: Option<Duration>,
    keepalive: Option<(Duration, Duration)>,
    max_message_size: usize,
}

/// Triton's default maximum gRPC message size (`INT32_MAX`), used instead of
/// tonic's 4 MiB so large tensors pass.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

/// Default HTTP/2 keepalive: a ping every 5 min 10 s, only while calls are
/// open. Triton's defaults punish pings more often than every 5 min without
/// data (`GOAWAY too_many_pings`), so this stays above that.
pub const DEFAULT_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(310), Duration::from_secs(20));

impl TritonClientBuilder {
    /// Adds a header sent with every call (for example `authorization`).
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

    /// Gzip-compresses requests and accepts gzip responses.
    pub fn gzip(mut self, enabled: bool) -> Self {
        self.gzip = enabled;
        self
    }

    /// Connection timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for calls that set none (default: none).
    pub fn default_deadline(mut self, deadline: Duration) -> Self {
        self.default_deadline = Some(deadline);
        self
    }

    /// HTTP/2 keepalive ping interval and ack timeout; `None` disables.
    /// See [`DEFAULT_KEEPALIVE`] before lowering the interval.
    pub fn keepalive(mut self, keepalive: Option<(Duration, Duration)>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Maximum message size in both directions (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
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
        if self.max_message_size == 0 {
            return Err(Error::InvalidConfig("max_message_size must be positive".into()));
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
            let val = AsciiMetadataValue::from_str(v)
                .map_err(|_| Error::InvalidConfig(format!("header '{k}': value is not printable ASCII")))?;
            headers.push((key, val));
        }
        let config = ChannelConfig {
            origin,
            tls,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
        };
        let unary = UnaryChannel::new(UnaryConfig {
            channel: config.clone(),
            headers: self.headers.clone(),
            gzip: self.gzip,
            max_message_size: self.max_message_size,
        });
        let channel = Channel::new(config);
        let mut grpc = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        if self.gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(TritonClient {
            grpc,
            unary,
            headers,
            default_deadline: self.default_deadline,
            url,
        })
    }
}

/// A client for one Triton server (KServe v2 gRPC protocol).
///
/// Cheap to clone (all clones share one HTTP/2 connection for unary calls,
/// and one more opened when a stream is first used); use it from many
/// tasks at once. Errors: a gRPC status becomes [`Error::Rpc`] with the code
/// and Triton's message (an unknown model is `Rpc { code: NotFound | InvalidArgument | Unavailable, .. }`
/// depending on the Triton version), an expired deadline [`Error::Timeout`],
/// a failed connection [`Error::Unavailable`], and a tensor that does not
/// match its shape or datatype [`Error::InvalidInput`] before anything is sent.
#[derive(Debug, Clone)]
pub struct TritonClient {
    /// Streaming calls and [`TritonClient::raw_grpc`] (h2; connects on first use).
    grpc: Grpc,
    /// Every unary call.
    unary: UnaryChannel,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    default_deadline: Option<Duration>,
    url: String,
}

/// An error with whether repeating the call elsewhere is safe (the request
/// never reached a server).
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) error: Error,
    pub(crate) retry_safe: bool,
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError {
            error,
            retry_safe: false,
        }
    }
}

/// Whether a transport error happened while connecting (nothing was sent).
fn is_connect_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        let s = e.to_string();
        if s.contains("tcp connect error") || s.contains("dns error") || s.contains("Connection refused") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// An error and its sources, joined by `": "`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        cur = e.source();
    }
    chain
}

pub(crate) fn status_to_call_error(s: tonic::Status, what: &str) -> CallError {
    if let Some(src) = std::error::Error::source(&s) {
        let connect = is_connect_failure(src);
        return CallError {
            error: Error::Unavailable {
                message: format!("{what}: {}: {}", s.message(), error_chain(src)),
                source: None,
            },
            retry_safe: connect,
        };
    }
    let code = RpcCode::from_i32(s.code() as i32);
    let error = match code {
        RpcCode::DeadlineExceeded => Error::Timeout(format!("{what}: {}", s.message())),
        _ => Error::Rpc {
            code,
            message: s.message().to_string(),
        },
    };
    CallError {
        error,
        retry_safe: false,
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
            default_deadline: None,
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
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

    /// The generated tonic client (escape hatch for calls this type does not wrap).
    pub fn raw_grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        self.grpc.clone()
    }

    pub(crate) fn request<T>(&self, msg: T, deadline: Option<Duration>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        if let Some(d) = deadline.or(self.default_deadline) {
            req.set_timeout(d);
        }
        req
    }

    pub(crate) fn deadline(&self, d: Option<Duration>) -> Option<Duration> {
        d.or(self.default_deadline)
    }

    /// One unary call of `GRPCInferenceService/<method>` on the lean
    /// transport ([`crate::unary`]), bounded by the call's deadline.
    async fn unary<Req: UnaryMethod>(
        &self,
        msg: Req,
        deadline: Option<Duration>,
    ) -> std::result::Result<Req::Response, CallError> {
        let method = Req::NAME;
        let deadline = self.deadline(deadline);
        let fut = self.unary.call(method, &msg, deadline);
        let Some(d) = deadline else { return fut.await };
        let start = tokio::time::Instant::now();
        let expired = || CallError {
            error: Error::Timeout(format!("{method}: deadline of {d:?} expired")),
            retry_safe: false,
        };
        match tokio::time::timeout(d, fut).await {
            // The server enforces `grpc-timeout` too, and a server that
            // answers CANCELLED (tonic does) may beat our own timer.
            Err(_) => Err(expired()),
            Ok(Err(e))
                if start.elapsed() >= d
                    && matches!(
                        e.error,
                        Error::Rpc {
                            code: RpcCode::Cancelled,
                            ..
                        }
                    ) =>
            {
                Err(expired())
            }
            Ok(r) => r,
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
