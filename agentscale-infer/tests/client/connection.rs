//! Deadlines, restarts, size limits, admin calls, GOAWAY, keepalive.

use super::*;

// ---------------------------------------------------------------------------
// 7. Deadlines and cancellation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expires_and_the_server_call_is_cancelled() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(Svc::new(Infer::Hang(tx)), Opts::default()).await;
    // tonic's server enforces grpc-timeout too, and answers CANCELLED
    // ("Timeout expired") when it expires; 100 ms of latency to the server
    // makes its clock start well after ours, so that our deadline is the
    // one that expires (see `dropping_a_call_resets_its_stream` for
    // cancellation without grpc-timeout).
    let proxy = Proxy::start_with(server.addr, None, Some(Duration::from_millis(100))).await;
    let client = client(&proxy.url());
    // Connected.
    echo_ok(&client, &[1.0]).await;

    let err = client
        .infer(&echo_request("hang", &[1.0]).deadline(Duration::from_millis(200)))
        .await
        .expect_err("deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Dropped).await;

    // The same client still works, on the same connection.
    echo_ok(&client, &[4.0, 5.0]).await;
    assert_eq!(server.accepted(), 1);

    // A default deadline works the same way.
    let with_default = TritonClient::builder(proxy.url())
        .default_deadline(Duration::from_millis(200))
        .build()
        .expect("client");
    let err = with_default
        .infer(&echo_request("hang", &[1.0]))
        .await
        .expect_err("default deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Dropped).await;
    // A call's own deadline overrides the default (the proxy's latency
    // alone is 200 ms a round trip).
    let r = with_default
        .infer(&echo_request("echo", &[6.0]).deadline(Duration::from_secs(60)))
        .await
        .expect("echo with its own deadline");
    assert_same(&output(&r), &[6.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_resets_its_stream() {
    // A deadline far away: only our RST_STREAM can end the server's
    // handler.
    let (tx, mut events) = mpsc::unbounded_channel();
    let svc = Svc::new(Infer::Hang(tx));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = TritonClient::builder(server.url())
        .default_deadline(Duration::from_secs(3600))
        .build()
        .expect("client");
    echo_ok(&client, &[1.0]).await;

    let c = client.clone();
    let call = tokio::spawn(async move { c.infer(&echo_request("hang", &[1.0])).await });
    next_event(&mut events, Event::Started).await;
    call.abort();
    assert!(call.await.expect_err("aborted").is_cancelled());
    next_event(&mut events, Event::Dropped).await;

    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1, "the stream was reset, not the connection");
}

// ---------------------------------------------------------------------------
// 8. Server restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts() {
    let server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let addr = server.addr;
    let client = client(&server.url());
    echo_ok(&client, &[1.0]).await;
    server.kill().await;

    let err = client
        .infer(&echo_request("echo", &[2.0]))
        .await
        .expect_err("server down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    let err = client.server_live().await.expect_err("still down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");

    let server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[3.0]).await;
    assert!(client.server_live().await.expect("live"));
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 9. Maximum message size
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_both_ways() {
    let svc = Svc::new(Infer::Big(4000));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = TritonClient::builder(server.url())
        .max_message_size(1000)
        .build()
        .expect("client");

    let data = vec![0.25f32; 1000];
    let err = client
        .infer(&echo_request("echo", &data))
        .await
        .expect_err("request too large");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
    assert!(svc.seen().is_empty(), "nothing was sent");
    assert_eq!(server.accepted(), 0, "not even a connection");

    match client.infer(&echo_request("big", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::OutOfRange, "{message}");
        }
        other => panic!("expected Rpc OutOfRange, got {other:?}"),
    }
    // Small calls still pass on the same connection.
    echo_ok(&client, &[1.0, 2.0]).await;
    assert_eq!(server.accepted(), 1);

    // The limit applies to the decompressed response.
    let server = TestServer::start(
        Svc::new(Infer::Big(4000)),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;
    let proxy = Proxy::start(server.addr).await;
    let gzip = TritonClient::builder(proxy.url())
        .gzip(true)
        .max_message_size(1000)
        .build()
        .expect("client");
    match gzip.infer(&echo_request("big", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::ResourceExhausted, "{message}");
        }
        other => panic!("expected Rpc ResourceExhausted, got {other:?}"),
    }
    assert!(
        proxy.down() < 1000,
        "the response came compressed: {} bytes",
        proxy.down()
    );
    echo_ok(&gzip, &[1.0, 2.0]).await;
}

// ---------------------------------------------------------------------------
// 10. Admin calls
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_calls() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = client(&server.url());

    assert!(client.server_live().await.expect("live"));
    assert!(client.server_ready().await.expect("ready"));
    assert!(client.model_ready("resnet", "3").await.expect("model ready"));
    let meta = client.server_metadata().await.expect("server metadata");
    assert_eq!(meta.name, "agentscale-noop");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert!(meta.extensions.is_empty());
    let model = client.model_metadata("resnet", "").await.expect("model metadata");
    assert_eq!(model.name, "resnet");
    assert!(model.inputs.is_empty() && model.outputs.is_empty() && model.versions.is_empty());
    let config = client.model_config("bert", "7").await.expect("model config");
    assert_eq!(config.name, "bert");
    assert!(client
        .model_statistics("", "")
        .await
        .expect("statistics")
        .is_empty());
    assert!(client
        .repository_index(true)
        .await
        .expect("repository index")
        .is_empty());
    client.load_model("gpt").await.expect("load");
    client.unload_model("gpt").await.expect("unload");

    assert_eq!(
        svc.methods(),
        [
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelConfig",
            "ModelStatistics",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        ]
    );
    let details: Vec<String> = svc.seen().into_iter().map(|s| s.detail).collect();
    assert_eq!(details[2], "resnet@3");
    assert_eq!(details[4], "resnet@");
    assert_eq!(details[5], "bert@7");
    assert_eq!(details[8], "gpt");
    assert_eq!(details[9], "gpt");
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 11. GOAWAY (graceful server shutdown)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_while_idle_reconnects() {
    let mut server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let addr = server.addr;
    let client = client(&server.url());
    echo_ok(&client, &[1.0]).await;

    // GOAWAY on the idle connection; a new server on the same port.
    server.begin_graceful_shutdown();
    server.stopped().await;
    let mut server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1);

    // GOAWAY and no server: the next call is Unavailable, and succeeds once
    // a server is back.
    server.begin_graceful_shutdown();
    server.stopped().await;
    let err = client
        .infer(&echo_request("echo", &[3.0]))
        .await
        .expect_err("no server");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    let server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[4.0]).await;
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_moves_new_calls_to_a_new_connection_while_open_calls_finish() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let mut old = TestServer::start(Svc::new(Infer::Gate(Arc::clone(&gate), tx)), Opts::default()).await;
    let addr = old.addr;
    // Through a proxy, to see when the GOAWAY has gone to the client.
    let proxy = Proxy::start(addr).await;
    let client = client(&proxy.url());
    echo_ok(&client, &[1.0]).await;

    let c = client.clone();
    let open = tokio::spawn(async move { c.infer(&echo_request("gated", &[7.0, 8.0])).await });
    next_event(&mut events, Event::Started).await;
    let before = proxy.down();
    old.begin_graceful_shutdown();
    // GOAWAY is a 17-byte frame; give the client a moment to read it.
    eventually("GOAWAY sent to the client", || proxy.down() >= before + 17).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The old server stopped listening at once; a new one takes the port
    // while the old connection drains. A new call must not go to the old
    // connection (the server ignores streams above its GOAWAY).
    let new_svc = Svc::new(Infer::Echo);
    let new = TestServer::start_on(addr, new_svc.clone(), Opts::default()).await;
    echo_ok(&client, &[3.0]).await;
    assert_eq!(
        new_svc.methods(),
        ["ModelInfer"],
        "the new call went to the new server"
    );
    assert_eq!(new.accepted(), 1);
    assert!(!open.is_finished(), "the open call waits for its handler");

    // The call open before the GOAWAY completes on the old connection.
    gate.add_permits(1);
    let r = tokio::time::timeout(PATIENCE, open)
        .await
        .expect("the open call finishes")
        .expect("task")
        .expect("the open call succeeds despite GOAWAY");
    assert_same(&output(&r), &[7.0, 8.0]);
    old.stopped().await;
    echo_ok(&client, &[9.0]).await;
    assert_eq!(new.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_the_server_retiring_connections() {
    // The server sends GOAWAY to each connection after 100 ms, while calls
    // keep coming: every call must succeed, on one connection or the next.
    let server = TestServer::start(
        Svc::new(Infer::Slow(Duration::from_millis(5))),
        Opts {
            max_connection_age: Some(Duration::from_millis(100)),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..60u32 {
                let data = [t as f32, c as f32];
                let r = client
                    .infer(&echo_request("slow", &data))
                    .await
                    .unwrap_or_else(|e| panic!("call {t}/{c}: {e}"));
                assert_same(&output(&r), &data);
            }
        }));
    }
    join_all(tasks).await;
    assert!(server.accepted() >= 2, "connections were retired and replaced");
}

// ---------------------------------------------------------------------------
// 12. Keepalive
// ---------------------------------------------------------------------------

/// Waits until `f` holds, polling; fails after [`PATIENCE`].
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_while_calls_are_open_and_detects_a_dead_peer() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(Svc::new(Infer::Hang(tx)), Opts::default()).await;
    let proxy = Proxy::start(server.addr).await;
    let client = TritonClient::builder(proxy.url())
        .keepalive(Some((Duration::from_millis(100), Duration::from_millis(500))))
        .build()
        .expect("client");
    assert!(client.server_live().await.expect("live"));

    // Idle: no pings (after a moment for frames queued with the response,
    // such as the SETTINGS ack, to be written).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = proxy.up();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(proxy.up(), idle, "the client sent frames while idle");

    // A call is open: pings (17-byte frames) go out and are answered.
    let c = client.clone();
    let call = tokio::spawn(async move { c.infer(&echo_request("hang", &[1.0])).await });
    next_event(&mut events, Event::Started).await;
    let open = proxy.up();
    eventually("three keepalive pings", || proxy.up() >= open + 3 * 17).await;
    assert!(!call.is_finished(), "answered pings keep the call open");

    // The peer goes silent: the call fails once a ping is not answered.
    proxy.freeze_existing();
    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("keepalive ends the call")
        .expect("task")
        .expect_err("dead connection");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");

    // A new connection is made for the next call.
    assert!(client.server_live().await.expect("live after reconnecting"));
}
