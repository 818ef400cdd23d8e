//! The client's TLS against a real Triton: a pytriton server started by the
//! test with gRPC over TLS (certificate made here with rcgen), unary and
//! streaming calls over it, and the typed failures of an untrusted server
//! and of plaintext against a TLS port.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agentscale_core::ErrorKind;
use agentscale_infer::{InferRequest, LlmClient, Tensor, TlsConfig, TritonClient};
use agentscale_tests::triton_replica::{ServerTls, TritonReplica};

fn tls_files(name: &str) -> ServerTls {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    ServerTls {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    }
}

fn trusting(server: &ServerTls) -> TlsConfig {
    TlsConfig {
        ca_pem: server.cert_pem.clone().into_bytes(),
        ..TlsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_against_triton() {
    let Some(python) = agentscale_tests::service_env("AGENTSCALE_TRITON_PYTHON") else {
        return;
    };
    let server = tls_files("localhost");
    let replica = TritonReplica::start(
        &python,
        "identity_fp32,llm_stream",
        Some((&server, trusting(&server))),
    )
    .await;
    let client = replica.client();

    let data: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
    let r = client
        .infer(
            &InferRequest::new("identity_fp32")
                .input(Tensor::from_slice("INPUT0", &data))
                .output("OUTPUT0"),
        )
        .await
        .unwrap();
    assert_eq!(r.output("OUTPUT0").unwrap().to_vec::<f32>().unwrap(), data);

    // Streaming (ModelStreamInfer) over the same TLS connection setup.
    let llm = LlmClient::new(client.clone(), "llm_stream")
        .max_tokens(3)
        .deadline(Duration::from_secs(60));
    assert_eq!(llm.generate("alpha beta").await.unwrap(), "alpha beta alpha ");

    // A client that does not trust the server's certificate.
    let other = tls_files("localhost");
    let untrusted = TritonClient::builder(replica.url())
        .tls(trusting(&other))
        .build()
        .unwrap();
    let err = untrusted.server_ready().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("tls handshake"), "{err}");

    // Plaintext HTTP/2 against the TLS port.
    let port = replica.url().rsplit(':').next().unwrap();
    let plaintext = TritonClient::builder(format!("http://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), plaintext.server_ready())
        .await
        .expect("plaintext against TLS fails instead of hanging")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}
