//! Flow control, demultiplexing, stream limits, headers, gzip, statuses.

use super::*;

// ---------------------------------------------------------------------------
// 1. Large messages and flow control
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_default_server_windows() {
    large_round_trip(Opts::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_small_server_windows() {
    large_round_trip(Opts {
        stream_window: Some(65_535),
        connection_window: Some(65_535),
        ..Opts::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_large_server_frames() {
    // The server accepts frames up to 16 MiB - 1, so our DATA frames may be
    // larger than the 16 KiB default; responses still come in 16 KiB frames.
    large_round_trip(Opts {
        max_frame_size: Some(16_777_215),
        ..Opts::default()
    })
    .await;
}

async fn rejected_early(opts: Opts) {
    // The server refuses requests over 1 MiB as soon as it reads the length
    // prefix, while ours is still being sent (or waiting for window).
    let server = TestServer::start(
        Svc::new(Infer::Echo),
        Opts {
            max_request: Some(1 << 20),
            ..opts
        },
    )
    .await;
    let client = client(&server.url());
    let too_large = vec![0.5f32; 2 * 1024 * 1024];
    for _ in 0..4 {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            client.infer(&echo_request("echo", &too_large)),
        )
        .await
        .expect("the rejected call finishes");
        match r {
            Err(Error::Rpc { code, message }) => {
                assert_eq!(code, RpcCode::OutOfRange, "{message}");
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!("expected the server's OutOfRange, got {other:?}"),
        }
    }
    // No flow-control window was lost with the unsent request bytes.
    let fits: Vec<f32> = (0..200_000).map(|i| i as f32).collect();
    for _ in 0..4 {
        echo_ok(&client, &fits).await;
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rejected_while_sending_leaves_the_connection_usable() {
    rejected_early(Opts::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rejected_while_waiting_for_window_leaves_the_connection_usable() {
    rejected_early(Opts {
        stream_window: Some(65_535),
        connection_window: Some(65_535),
        ..Opts::default()
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Demultiplexing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_get_their_own_responses() {
    let server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let client = client(&server.url());
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..40u32 {
                // Mostly small messages, every eighth one of 80 KB or more, so
                // that DATA frames of different streams interleave.
                let len = if c % 8 == 0 {
                    20_000 + t as usize
                } else {
                    2 + ((t * 7 + c) % 300) as usize
                };
                let mut data: Vec<f32> = (0..len)
                    .map(|k| (((t * 40 + c) * 31 + k as u32) % 65_536) as f32)
                    .collect();
                data[0] = t as f32;
                data[1] = c as f32;
                let id = format!("{t}/{c}");
                let req = echo_request("echo", &data).id(id.clone());
                let r = client
                    .infer(&req)
                    .await
                    .unwrap_or_else(|e| panic!("call {id}: {e}"));
                assert_eq!(r.id, id, "response id");
                assert_same(&output(&r), &data);
            }
        }));
    }
    join_all(tasks).await;
    assert_eq!(server.accepted(), 1, "every call on one connection");
}

// ---------------------------------------------------------------------------
// 3. The peer's stream limit
// ---------------------------------------------------------------------------

async fn sixty_four_at_once(client: &TritonClient) {
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = [i as f32, 0.5];
            let r = client
                .infer(&echo_request("slow", &data))
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_same(&output(&r), &data);
        }));
    }
    join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queue_for_the_peers_stream_limit() {
    let svc = Svc::new(Infer::Slow(Duration::from_millis(20)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_concurrent_streams: Some(4),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    // Cold: the calls may be written before the server's SETTINGS arrive
    // (refused streams are retried once).
    sixty_four_at_once(&client).await;
    // Warm: the limit is known; a client ignoring it would have streams
    // refused twice and fail.
    svc.peak.store(0, Ordering::SeqCst);
    sixty_four_at_once(&client).await;
    assert!(svc.peak.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        svc.peak.load(Ordering::SeqCst),
        4,
        "the client uses every stream slot the server allows"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_before_the_peers_settings_are_retried() {
    // The server's SETTINGS (its limit of 4 streams) reach the client only
    // after it has sent all 64 calls: the server refuses 60 of them
    // (REFUSED_STREAM, nothing processed) and the client sends them again,
    // now within the limit.
    let svc = Svc::new(Infer::Slow(Duration::from_millis(20)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_concurrent_streams: Some(4),
            ..Opts::default()
        },
    )
    .await;
    let proxy = Proxy::start_with(server.addr, Some(Duration::from_millis(300)), None).await;
    let client = client(&proxy.url());
    sixty_four_at_once(&client).await;
    assert!(svc.peak.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        svc.methods().len(),
        64,
        "each call was processed once (refused streams never reach the service)"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_free_their_stream_slots() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(
        Svc::new(Infer::Hang(tx)),
        Opts {
            max_concurrent_streams: Some(2),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    // Learn the limit first.
    echo_ok(&client, &[1.0]).await;
    // Two calls take both slots; four more wait for one.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _ = client.infer(&echo_request("hang", &[0.0])).await;
        }));
    }
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Started).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.expect_err("aborted").is_cancelled());
    }
    // The server saw every call it started cancelled (RST_STREAM). A
    // waiting call may have taken a freed slot before its own abort.
    let (mut started, mut dropped) = (2, 0);
    while dropped < started {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{dropped} of {started} handlers dropped"))
            .expect("event channel open");
        match event {
            Event::Started => started += 1,
            Event::Dropped => dropped += 1,
        }
    }
    // Every slot is free again: more calls than slots complete.
    for i in 0..8 {
        let data = [i as f32];
        let r = client
            .infer(&echo_request("echo", &data).deadline(PATIENCE))
            .await
            .unwrap_or_else(|e| panic!("call {i} after cancellations: {e}"));
        assert_same(&output(&r), &data);
    }
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 4. Request headers
// ---------------------------------------------------------------------------

/// Parses a `grpc-timeout` value (at most 8 digits and a unit).
fn parse_grpc_timeout(v: &str) -> Duration {
    assert!(v.len() >= 2 && v.len() <= 9, "grpc-timeout '{v}'");
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("grpc-timeout '{v}'"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("grpc-timeout '{v}': unit"),
    }
}

fn assert_grpc_headers(s: &Seen) {
    assert_eq!(s.header("content-type"), Some("application/grpc"), "{s:?}");
    assert_eq!(s.header("te"), Some("trailers"), "{s:?}");
    let ua = s.header("user-agent").expect("user-agent");
    assert!(ua.starts_with("agentscale-infer/"), "user-agent '{ua}'");
}

#[tokio::test]
async fn request_headers() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(
        svc.clone(),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;

    let builder = TritonClient::builder(server.url())
        .bearer_token("s3cret-token")
        .header("x-agentscale-test", "1")
        .header("X-Agentscale-Tenant", "team-a");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("authorization"),
        "{shown}"
    );
    let plain = builder.build().expect("client");
    let shown = format!("{plain:?}");
    assert!(!shown.contains("s3cret") && !shown.contains("team-a"), "{shown}");
    assert!(shown.contains("authorization"), "{shown}");
    echo_ok(&plain, &[1.0]).await;
    let r = plain
        .infer(&echo_request("echo", &[2.0]).deadline(Duration::from_secs(2)))
        .await
        .expect("call with a deadline");
    assert_same(&output(&r), &[2.0]);
    assert!(plain.server_live().await.expect("live"));

    let seen = svc.seen();
    assert_eq!(
        seen.iter().map(|s| s.method).collect::<Vec<_>>(),
        ["ModelInfer", "ModelInfer", "ServerLive"]
    );
    for s in &seen {
        assert_grpc_headers(s);
        assert_eq!(s.header("authorization"), Some("Bearer s3cret-token"), "{s:?}");
        assert_eq!(s.header("x-agentscale-test"), Some("1"), "{s:?}");
        assert_eq!(s.header("x-agentscale-tenant"), Some("team-a"), "{s:?}");
        assert_eq!(s.header("grpc-encoding"), None, "not compressed: {s:?}");
    }
    // Calls without a deadline of their own carry the client's default.
    for i in [0, 2] {
        let t = parse_grpc_timeout(seen[i].header("grpc-timeout").expect("default deadline"));
        assert_eq!(t, agentscale_infer::DEFAULT_DEADLINE, "{:?}", seen[i]);
    }
    let t = parse_grpc_timeout(
        seen[1]
            .header("grpc-timeout")
            .expect("grpc-timeout with a deadline"),
    );
    assert!(
        t > Duration::from_secs(1) && t <= Duration::from_secs(2),
        "grpc-timeout {t:?} for a 2 s deadline"
    );

    svc.clear();
    let gzip = TritonClient::builder(server.url())
        .gzip(true)
        .default_deadline(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(gzip.server_ready().await.expect("ready"));
    echo_ok(&gzip, &[3.0]).await;
    let seen = svc.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_grpc_headers(s);
        assert_eq!(s.header("grpc-encoding"), Some("gzip"), "{s:?}");
        let accept = s.header("grpc-accept-encoding").expect("grpc-accept-encoding");
        assert!(accept.split(',').any(|e| e.trim() == "gzip"), "{s:?}");
        assert_eq!(s.header("authorization"), None, "{s:?}");
        let t = parse_grpc_timeout(s.header("grpc-timeout").expect("default deadline sent"));
        assert!(
            t > Duration::from_secs(2) && t <= Duration::from_secs(3),
            "grpc-timeout {t:?} for a 3 s default deadline"
        );
    }
}

#[tokio::test]
async fn header_blocks_larger_than_a_frame() {
    // Over 16 KiB: our HEADERS are followed by CONTINUATION frames, and so
    // are the server's trailers carrying a long grpc-message.
    let svc = Svc::new(Infer::Fail(Code::FailedPrecondition, "why? ".repeat(8_000)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_header_list: Some(1 << 20),
            ..Opts::default()
        },
    )
    .await;
    let token: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let client = TritonClient::builder(server.url())
        .bearer_token(&token)
        .max_header_list_size(1 << 20)
        .build()
        .expect("client");
    assert!(client.server_live().await.expect("live"));
    match client.infer(&echo_request("m", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::FailedPrecondition);
            // Server-controlled text is clipped in errors.
            assert!(message.starts_with("why? why? "), "{message}");
            assert!(message.len() < 5_000, "{} bytes", message.len());
        }
        other => panic!("expected Rpc FailedPrecondition, got {other:?}"),
    }
    echo_ok(&client, &[1.0]).await;
    let seen = svc.seen();
    assert_eq!(seen.len(), 3);
    let want = format!("Bearer {token}");
    for s in &seen {
        assert_eq!(s.header("authorization"), Some(want.as_str()), "{}", s.method);
    }
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 5. gzip both ways
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_both_ways() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(
        svc.clone(),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;
    // 1 MiB of very compressible floats.
    let data: Vec<f32> = (0..256 * 1024).map(|i| (i % 64) as f32).collect();
    const MIB: u64 = 1024 * 1024;

    let proxy = Proxy::start(server.addr).await;
    let client = TritonClient::builder(proxy.url())
        .gzip(true)
        .build()
        .expect("client");
    echo_ok(&client, &data).await;
    assert!(
        proxy.up() < MIB / 4,
        "request compressed: {} bytes sent",
        proxy.up()
    );
    assert!(
        proxy.down() < MIB / 4,
        "response compressed: {} bytes received",
        proxy.down()
    );
    assert_eq!(svc.seen()[0].header("grpc-encoding"), Some("gzip"));
    // Again on the same connection.
    echo_ok(&client, &data).await;
    echo_ok(&client, &[0.5]).await;

    // Control: the same call uncompressed moves the whole megabyte each way.
    let proxy = Proxy::start(server.addr).await;
    let plain = TritonClient::new(proxy.url()).expect("client");
    echo_ok(&plain, &data).await;
    assert!(proxy.up() > MIB, "{} bytes sent", proxy.up());
    assert!(proxy.down() > MIB, "{} bytes received", proxy.down());
}

// ---------------------------------------------------------------------------
// 6. Status errors
// ---------------------------------------------------------------------------

async fn infer_error(infer: Infer) -> Error {
    let server = TestServer::start(Svc::new(infer), Opts::default()).await;
    let client = client(&server.url());
    let err = client
        .infer(&echo_request("m", &[1.0]))
        .await
        .expect_err("the handler fails");
    // The connection survives a failed call.
    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1);
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_become_rpc_errors() {
    let message = "model 'x' is unknown: 100% sure\n";
    match infer_error(Infer::Fail(Code::NotFound, message.into())).await {
        Error::Rpc { code, message: m } => {
            assert_eq!(code, RpcCode::NotFound);
            assert_eq!(m, message);
        }
        other => panic!("expected Rpc NotFound, got {other:?}"),
    }

    let message = "r\u{e9}sum\u{e9} \u{2713} {a} <b> #c ?d `e` \"f\" %41 \t end";
    match infer_error(Infer::Fail(Code::Unavailable, message.into())).await {
        Error::Rpc { code, message: m } => {
            assert_eq!(code, RpcCode::Unavailable);
            assert_eq!(m, message);
        }
        other => panic!("expected Rpc Unavailable, got {other:?}"),
    }

    match infer_error(Infer::Fail(Code::Internal, String::new())).await {
        Error::Rpc { code, message } => {
            assert_eq!(code, RpcCode::Internal);
            assert_eq!(message, "");
        }
        other => panic!("expected Rpc Internal, got {other:?}"),
    }

    let err = infer_error(Infer::Fail(Code::DeadlineExceeded, "too slow".into())).await;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.to_string().contains("too slow"), "{err}");

    let mut svc = Svc::new(Infer::Echo);
    svc.ready_error = Some((Code::InvalidArgument, "version 'abc' is not a number".into()));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = client(&server.url());
    match client.model_ready("m", "abc").await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::InvalidArgument);
            assert_eq!(message, "version 'abc' is not a number");
        }
        other => panic!("expected Rpc InvalidArgument, got {other:?}"),
    }
    assert_eq!(svc.seen()[0].detail, "m@abc");
    assert!(client.server_live().await.expect("live"));
}
