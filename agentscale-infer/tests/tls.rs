//! TLS and mutual TLS of the client's own HTTP/2 transport, against the
//! no-op `GRPCInferenceService` served by tonic over rustls on loopback,
//! with certificates made for the test (rcgen).

use agentscale_core::ErrorKind;
use agentscale_infer::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use agentscale_infer::testing::NoopInferenceService;
use agentscale_infer::{InferRequest, Tensor, TlsConfig, TritonClient};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

struct Pem {
    cert: String,
    key: String,
}

fn self_signed(name: &str) -> Pem {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("certificate");
    Pem {
        cert: ck.cert.pem(),
        key: ck.signing_key.serialize_pem(),
    }
}

/// Serves the no-op service over TLS with `server`'s identity; with
/// `client_ca`, clients must present a certificate it signed.
async fn serve(server: &Pem, client_ca: Option<&Pem>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&server.cert, &server.key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(&ca.cert));
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .tls_config(tls)
            .expect("server tls")
            .add_service(GrpcInferenceServiceServer::new(NoopInferenceService))
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, task)
}

fn request() -> InferRequest {
    InferRequest::new("identity_fp32")
        .input(Tensor::from_slice("INPUT0", &[1.0f32, 2.0, 3.0]))
        .output("OUTPUT0")
}

async fn infer_ok(client: &TritonClient) {
    let r = client.infer(&request()).await.expect("inference over TLS");
    assert_eq!(
        r.output("OUTPUT0")
            .expect("output")
            .to_vec::<f32>()
            .expect("fp32"),
        vec![1.0, 2.0, 3.0]
    );
}

#[tokio::test]
async fn tls_verifies_the_server() {
    let server = self_signed("localhost");
    let (addr, _task) = serve(&server, None).await;
    let url = format!("https://localhost:{}", addr.port());
    let client = TritonClient::builder(&url)
        .tls(TlsConfig {
            ca_pem: server.cert.clone().into_bytes(),
            ..TlsConfig::default()
        })
        .build()
        .expect("client");
    assert!(client.server_ready().await.expect("ready"));
    infer_ok(&client).await;

    // The same server by IP, verified under the name its certificate has.
    let by_ip = TritonClient::builder(format!("https://{addr}"))
        .tls(TlsConfig {
            ca_pem: server.cert.clone().into_bytes(),
            domain: Some("localhost".into()),
            ..TlsConfig::default()
        })
        .build()
        .expect("client");
    infer_ok(&by_ip).await;
}

#[tokio::test]
async fn tls_rejects_an_untrusted_server() {
    let server = self_signed("localhost");
    let other = self_signed("localhost");
    let (addr, _task) = serve(&server, None).await;
    let client = TritonClient::builder(format!("https://localhost:{}", addr.port()))
        .tls(TlsConfig {
            ca_pem: other.cert.into_bytes(),
            ..TlsConfig::default()
        })
        .build()
        .expect("client");
    let err = client.infer(&request()).await.expect_err("untrusted certificate");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("tls handshake"), "{err}");

    // A name the certificate does not carry.
    let wrong_name = TritonClient::builder(format!("https://{addr}"))
        .tls(TlsConfig {
            ca_pem: server.cert.clone().into_bytes(),
            domain: Some("triton.example".into()),
            ..TlsConfig::default()
        })
        .build()
        .expect("client");
    let err = wrong_name.server_ready().await.expect_err("wrong server name");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn mutual_tls() {
    let server = self_signed("localhost");
    let client_id = self_signed("agent-worker");
    let (addr, _task) = serve(&server, Some(&client_id)).await;
    let url = format!("https://localhost:{}", addr.port());
    let with_identity = TritonClient::builder(&url)
        .tls(TlsConfig {
            ca_pem: server.cert.clone().into_bytes(),
            domain: None,
            client_identity: Some((
                client_id.cert.clone().into_bytes(),
                client_id.key.clone().into_bytes(),
            )),
        })
        .build()
        .expect("client");
    infer_ok(&with_identity).await;

    let without = TritonClient::builder(&url)
        .tls(TlsConfig {
            ca_pem: server.cert.clone().into_bytes(),
            ..TlsConfig::default()
        })
        .build()
        .expect("client");
    let err = without
        .infer(&request())
        .await
        .expect_err("no client certificate");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[test]
fn bad_tls_settings_are_config_errors() {
    let no_ca = TritonClient::builder("https://localhost:8001")
        .tls(TlsConfig::default())
        .build()
        .expect_err("no CA");
    assert_eq!(no_ca.kind(), ErrorKind::InvalidConfig);
    let not_pem = TritonClient::builder("https://localhost:8001")
        .tls(TlsConfig {
            ca_pem: b"not a certificate".to_vec(),
            ..TlsConfig::default()
        })
        .build()
        .expect_err("not PEM");
    assert_eq!(not_pem.kind(), ErrorKind::InvalidConfig, "{not_pem}");
    let bad_key = TritonClient::builder("https://localhost:8001")
        .tls(TlsConfig {
            ca_pem: self_signed("localhost").cert.into_bytes(),
            domain: None,
            client_identity: Some((self_signed("c").cert.into_bytes(), b"no key here".to_vec())),
        })
        .build()
        .expect_err("bad key");
    assert_eq!(bad_key.kind(), ErrorKind::InvalidConfig, "{bad_key}");
}
