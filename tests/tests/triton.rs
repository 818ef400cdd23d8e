//! agentscale-infer against a real Triton Inference Server (pytriton, CPU)
//! started by `scripts/dev-services up` (AGENTSCALE_TRITON_URL), serving the
//! models of scripts/triton/serve.py.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use agentscale_core::{Error, ErrorKind, RpcCode};
use agentscale_infer::{DataType, InferRequest, LlmClient, Param, Tensor, TritonClient};
use bytes::Bytes;
use futures::StreamExt;

fn url() -> Option<String> {
    agentscale_tests::service_env("AGENTSCALE_TRITON_URL")
}

fn client(url: &str) -> TritonClient {
    TritonClient::builder(url)
        .default_deadline(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_metadata_config_statistics_repository() {
    let Some(url) = url() else { return };
    let c = client(&url);
    assert!(c.server_live().await.unwrap());
    assert!(c.server_ready().await.unwrap());
    assert!(c.model_ready("identity_fp32", "").await.unwrap());
    let meta = c.server_metadata().await.unwrap();
    assert_eq!(meta.name, "triton");
    assert!(
        meta.extensions.iter().any(|e| e == "model_configuration"),
        "{meta:?}"
    );
    let mm = c.model_metadata("echo", "").await.unwrap();
    assert_eq!(mm.name, "echo");
    assert_eq!(mm.inputs[0].name, "INPUT0");
    assert_eq!(mm.inputs[0].datatype, "BYTES");
    assert_eq!(mm.outputs.len(), 2);
    let cfg = c.model_config("llm_stream", "").await.unwrap();
    assert_eq!(cfg.name, "llm_stream");
    assert!(cfg.model_transaction_policy.unwrap().decoupled);
    assert_eq!(cfg.input.len(), 3);
    assert_eq!(cfg.backend, "python");
    let cfg = c.model_config("identity_fp32", "").await.unwrap();
    assert_eq!(cfg.max_batch_size, 0);
    assert_eq!(
        cfg.input[0].data_type,
        agentscale_infer::pb::DataType::TypeFp32 as i32
    );

    c.infer(&InferRequest::new("identity_int8").input(Tensor::from_slice("INPUT0", &[1i8])))
        .await
        .unwrap();
    // pytriton restricts statistics and the model repository to callers
    // sending an access-token header (serve.py fixes the token).
    let e = c.model_statistics("identity_int8", "").await.unwrap_err();
    match &e {
        Error::Rpc { code, message } => {
            assert_eq!(*code, RpcCode::Unavailable);
            assert!(message.contains("triton-access-token"), "{message}");
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    let c = TritonClient::builder(&url)
        .header(
            "triton-grpc-protocol-triton-access-token",
            "agentscale-test-token",
        )
        .build()
        .unwrap();
    // The backend reports an inference's statistics after it sent the
    // response, so the count can lag the reply: look again for a while.
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = c.model_statistics("identity_int8", "").await.unwrap();
        assert_eq!(stats.len(), 1);
        if stats[0].inference_count >= 1 || std::time::Instant::now() >= give_up {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stats[0].inference_count >= 1, "{:?}", stats[0]);
    // pytriton serves from a model store outside the repository index, so
    // the index may be empty; the call itself must succeed with the token.
    let index = c.repository_index(false).await.unwrap();
    assert!(index.iter().all(|e| !e.name.is_empty()), "{index:?}");
    // pytriton runs Triton in explicit model control mode, so unloading an
    // unknown model is refused by the server with a typed error.
    let err = c.unload_model("no_such_model_x").await;
    if let Err(e) = err {
        assert_eq!(e.kind(), ErrorKind::Rpc, "{e}");
    }
}

async fn round_trip(c: &TritonClient, model: &str, t: Tensor) -> Tensor {
    let name = t.name().to_string();
    let r = c
        .infer(&InferRequest::new(model).input(t).output("OUTPUT0"))
        .await
        .unwrap();
    assert_eq!(r.model_name, model);
    let _ = name;
    r.output("OUTPUT0").unwrap().clone()
}

#[tokio::test]
async fn every_datatype_round_trips() {
    let Some(url) = url() else { return };
    let c = client(&url);
    macro_rules! check {
        ($model:expr, $t:ty, $vals:expr) => {{
            let vals: Vec<$t> = $vals;
            let out = round_trip(&c, $model, Tensor::from_slice("INPUT0", &vals)).await;
            assert_eq!(out.shape(), &[vals.len() as i64]);
            assert_eq!(out.to_vec::<$t>().unwrap(), vals, "{}", $model);
        }};
    }
    check!("identity_bool", bool, vec![true, false, true]);
    check!("identity_uint8", u8, vec![0, 1, 255]);
    check!("identity_uint16", u16, vec![0, 65535, 7]);
    check!("identity_uint32", u32, vec![0, u32::MAX, 9]);
    check!("identity_uint64", u64, vec![0, u64::MAX, 11]);
    check!("identity_int8", i8, vec![i8::MIN, -1, i8::MAX]);
    check!("identity_int16", i16, vec![i16::MIN, 0, i16::MAX]);
    check!("identity_int32", i32, vec![i32::MIN, 0, i32::MAX]);
    check!("identity_int64", i64, vec![i64::MIN, 0, i64::MAX]);
    check!("identity_fp32", f32, vec![1.5, -0.0, f32::MAX, f32::MIN_POSITIVE]);
    check!("identity_fp64", f64, vec![1.5e300, -2.25, 0.1]);
    // FP16 as raw bytes: 1.0, -2.0, 65504 (max), smallest subnormal.
    let half = Bytes::from_static(&[0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00]);
    let out = round_trip(
        &c,
        "identity_fp16",
        Tensor::from_raw("INPUT0", DataType::Fp16, vec![4], half.clone()),
    )
    .await;
    assert_eq!(out.datatype(), DataType::Fp16);
    assert_eq!(out.raw(), &half);
    // BYTES, including empty and non-UTF-8 elements, through identity and echo.
    let elems: Vec<&[u8]> = vec![b"hello", b"", &[0, 255, 1], "ünïcode".as_bytes()];
    let out = round_trip(
        &c,
        "identity_bytes",
        Tensor::from_bytes("INPUT0", vec![4], elems.clone()),
    )
    .await;
    let got: Vec<Vec<u8>> = out
        .to_bytes_elements()
        .unwrap()
        .iter()
        .map(|b| b.to_vec())
        .collect();
    assert_eq!(got, elems.iter().map(|e| e.to_vec()).collect::<Vec<_>>());
    let r = c
        .infer(&InferRequest::new("echo").input(Tensor::from_bytes("INPUT0", vec![4], elems.clone())))
        .await
        .unwrap();
    assert_eq!(
        r.output("LENGTHS").unwrap().to_vec::<i64>().unwrap(),
        vec![5, 0, 3, 9]
    );
    assert_eq!(r.output("OUTPUT0").unwrap().to_bytes_elements().unwrap().len(), 4);
    // 2-D and a large tensor (beyond tonic's 4 MiB default message limit).
    let vals: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let out = round_trip(&c, "identity_fp32_2d", Tensor::new("INPUT0", vec![2, 3], &vals)).await;
    assert_eq!(out.shape(), &[2, 3]);
    assert_eq!(out.to_vec::<f32>().unwrap(), vals);
    let big: Vec<f32> = (0..2_000_000).map(|i| i as f32).collect();
    let out = round_trip(&c, "identity_fp32", Tensor::from_slice("INPUT0", &big)).await;
    assert_eq!(out.to_vec::<f32>().unwrap(), big);
    // BF16 cannot be served by the numpy-based test models; its encoding is
    // covered by the unit tests (raw bytes, validated length).
}

#[tokio::test]
async fn gzip_and_headers_and_parameters() {
    let Some(url) = url() else { return };
    let c = TritonClient::builder(&url)
        .gzip(true)
        .bearer_token("secret-token")
        .header("x-agentscale-test", "1")
        .build()
        .unwrap();
    let vals: Vec<f32> = vec![0.5; 10_000];
    let r = c
        .infer(
            &InferRequest::new("identity_fp32")
                .id("req-42")
                .input(Tensor::from_slice("INPUT0", &vals))
                .priority(1)
                .server_timeout(Duration::from_secs(10))
                .param("custom_key", Param::String("v".into())),
        )
        .await
        .unwrap();
    assert_eq!(r.id, "req-42");
    assert_eq!(r.output("OUTPUT0").unwrap().to_vec::<f32>().unwrap(), vals);
    let bad = c
        .infer(&InferRequest::new("identity_fp32").param("priority", Param::Uint64(1)))
        .await;
    assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(
        TritonClient::builder(&url)
            .header("bad header", "x")
            .build()
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
}

#[tokio::test]
async fn bad_input_and_server_errors_are_typed() {
    let Some(url) = url() else { return };
    let c = client(&url);
    // Detected before sending.
    let e = c
        .infer(&InferRequest::new("identity_fp32").input(Tensor::new("INPUT0", vec![3], &[1.0f32])))
        .await;
    let e = e.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("needs 12 bytes"), "{e}");
    let e = c
        .infer(&InferRequest::new("identity_bytes").input(Tensor::from_bytes(
            "INPUT0",
            vec![2],
            ["only one"],
        )))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Refused by the server: wrong datatype for the model.
    let e = c
        .infer(&InferRequest::new("identity_fp32").input(Tensor::from_slice("INPUT0", &[1i32])))
        .await
        .unwrap_err();
    match &e {
        Error::Rpc { code, message } => {
            assert_eq!(*code, RpcCode::InvalidArgument, "{message}");
            assert!(message.contains("INT32") || message.contains("FP32"), "{message}");
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    // Unknown model and unknown version.
    let e = c
        .infer(&InferRequest::new("no_such_model").input(Tensor::from_slice("INPUT0", &[1.0f32])))
        .await
        .unwrap_err();
    match &e {
        Error::Rpc { code, message } => {
            assert!(
                matches!(
                    code,
                    RpcCode::NotFound | RpcCode::InvalidArgument | RpcCode::Unavailable
                ),
                "{code:?}"
            );
            assert!(message.contains("no_such_model"), "{message}");
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    let e = c
        .infer(
            &InferRequest::new("identity_fp32")
                .version("77")
                .input(Tensor::from_slice("INPUT0", &[1.0f32])),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rpc, "{e}");
    assert!(!c.model_ready("no_such_model", "").await.unwrap_or(false));
    // The model raises.
    let e = c
        .infer(&InferRequest::new("always_error").input(Tensor::from_slice("INPUT0", &[1.0f32])))
        .await
        .unwrap_err();
    match &e {
        Error::Rpc { message, .. } => assert!(message.contains("always fails"), "{message}"),
        other => panic!("expected Rpc, got {other:?}"),
    }
}

#[tokio::test]
async fn deadline_expiry_is_a_timeout() {
    let Some(url) = url() else { return };
    let c = TritonClient::new(&url).unwrap();
    let req = InferRequest::new("slow")
        .input(Tensor::from_slice("INPUT0", &[1.0f32]))
        .input(Tensor::from_slice("DELAY_MS", &[3000i32]))
        .deadline(Duration::from_millis(200));
    let e = c.infer(&req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // Within the deadline it succeeds. (Triton may close the HTTP/2
    // connection of an expired call; a fresh client avoids racing that.)
    let c = TritonClient::new(&url).unwrap();
    let ok = InferRequest::new("slow")
        .input(Tensor::from_slice("INPUT0", &[2.0f32]))
        .input(Tensor::from_slice("DELAY_MS", &[1i32]))
        .deadline(Duration::from_secs(30));
    assert_eq!(
        c.infer(&ok)
            .await
            .unwrap()
            .output("OUTPUT0")
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![2.0]
    );
}

fn expected_tokens(prompt: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    (0..n).map(|i| format!("{} ", words[i % words.len()])).collect()
}

fn llm_request(id: &str, prompt: &str, n: i32) -> InferRequest {
    InferRequest::new("llm_stream")
        .id(id)
        .input(Tensor::from_bytes("text_input", vec![1, 1], [prompt]))
        .input(Tensor::new("max_tokens", vec![1, 1], &[n]))
        .input(Tensor::new("stream", vec![1, 1], &[true]))
        .deadline(Duration::from_secs(60))
}

#[tokio::test]
async fn many_concurrent_streams_split_per_id() {
    let Some(url) = url() else { return };
    let c = client(&url);
    let session = c.stream();
    let mut streams = Vec::new();
    for i in 0..24 {
        let prompt = format!("w{i} alpha beta");
        let n = 3 + (i % 5);
        let s = session
            .send(llm_request(&format!("r{i}"), &prompt, n as i32))
            .await
            .unwrap();
        streams.push((s, prompt, n));
    }
    assert!(session.in_flight() > 0);
    let results = futures::future::join_all(streams.into_iter().map(|(mut s, prompt, n)| async move {
        let mut tokens = Vec::new();
        while let Some(r) = s.next().await {
            let r = r.unwrap();
            assert_eq!(r.id, s.id());
            tokens.push(r.output("text_output").unwrap().to_strings().unwrap().concat());
        }
        (tokens, expected_tokens(&prompt, n))
    }))
    .await;
    for (got, want) in results {
        assert_eq!(got, want);
    }
    assert_eq!(session.in_flight(), 0);
    // Duplicate ids on one session are refused.
    let _a = session.send(llm_request("dup", "x", 50)).await.unwrap();
    assert_eq!(
        session.send(llm_request("dup", "x", 1)).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn stream_errors_are_typed_and_drop_cancels() {
    let Some(url) = url() else { return };
    let c = client(&url);
    let mut s = c
        .infer_stream(llm_request("bad", "please FAIL now", 4))
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    match first {
        Err(Error::Rpc { message, .. }) => assert!(message.contains("asked to fail"), "{message}"),
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert!(s.next().await.is_none());
    // Streaming on an unknown model.
    let mut s = c
        .infer_stream(InferRequest::new("no_such_model").input(Tensor::from_slice("x", &[1u8])))
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().unwrap_err().kind(), ErrorKind::Rpc);
    // Drop mid-stream: the call is cancelled and the client keeps working.
    // (pytriton's model keeps generating after the cancel and holds one of
    // its four instances meanwhile: 2,000 tokens keep that short, where
    // 100,000 left every instance busy after a few runs on one server.)
    let mut s = c.infer_stream(llm_request("long", "a b", 2_000)).await.unwrap();
    let _ = s.next().await.unwrap().unwrap();
    drop(s);
    let mut s = c.infer_stream(llm_request("after", "x y", 2)).await.unwrap();
    let mut n = 0;
    while let Some(r) = s.next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
}

#[tokio::test]
async fn llm_helper_generates_text_and_token_streams() {
    let Some(url) = url() else { return };
    let llm = LlmClient::new(client(&url), "llm_stream")
        .max_tokens(5)
        .deadline(Duration::from_secs(60));
    let text = llm.generate("the quick fox").await.unwrap();
    assert_eq!(text, expected_tokens("the quick fox", 5).concat());
    let tokens: Vec<String> = llm
        .generate_stream("one two")
        .await
        .unwrap()
        .map(|t| t.unwrap())
        .collect::<Vec<_>>()
        .await;
    assert_eq!(tokens, expected_tokens("one two", 5));
}

/// Cross-check with NVIDIA's Python `tritonclient` against the same server:
/// the script prints JSON of outputs for fixed inputs; ours must agree.
#[tokio::test]
async fn outputs_match_python_tritonclient() {
    let Some(url) = url() else { return };
    let Some(py) = agentscale_tests::service_env("AGENTSCALE_TRITON_PYTHON") else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/triton/crosscheck.py");
    // Bounded: a hung Python client must fail the test, not stall CI.
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&py)
            .arg(script)
            .arg(&url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("crosscheck.py did not finish within 180 s")
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: HashMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let c = client(&url);
    let r = c
        .infer(
            &InferRequest::new("identity_fp32").input(Tensor::from_slice("INPUT0", &[1.25f32, -3.5, 1e-7])),
        )
        .await
        .unwrap();
    let ours: Vec<f64> = r
        .output("OUTPUT0")
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| *v as f64)
        .collect();
    assert_eq!(serde_json::json!(ours), py["identity_fp32"]);
    let r = c
        .infer(&InferRequest::new("echo").input(Tensor::from_strings("INPUT0", &["héllo", "", "world"])))
        .await
        .unwrap();
    assert_eq!(
        serde_json::json!(r.output("OUTPUT0").unwrap().to_strings().unwrap()),
        py["echo"]
    );
    assert_eq!(
        serde_json::json!(r.output("LENGTHS").unwrap().to_vec::<i64>().unwrap()),
        py["echo_lengths"]
    );
    let mut s = c
        .infer_stream(llm_request("x", "cross check words", 4))
        .await
        .unwrap();
    let mut tokens = Vec::new();
    while let Some(t) = s.next().await {
        tokens.push(
            t.unwrap()
                .output("text_output")
                .unwrap()
                .to_strings()
                .unwrap()
                .concat(),
        );
    }
    assert_eq!(serde_json::json!(tokens), py["llm_stream"]);
    let e = c
        .infer(&InferRequest::new("always_error").input(Tensor::from_slice("INPUT0", &[1.0f32])))
        .await
        .unwrap_err();
    let Error::Rpc { message, .. } = e else {
        panic!("expected Rpc")
    };
    assert_eq!(serde_json::json!(message), py["always_error"]);
}
