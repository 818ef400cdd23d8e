//! The client against servers that misbehave on purpose: every call ends by
//! its deadline or with a typed error, and what a server can make the
//! client hold stays bounded.
#![allow(clippy::unwrap_used)]

mod raw;
mod streaming;

use std::io::Write as _;
use std::time::Duration;

use agentscale_core::{Error, ErrorKind, RpcCode};
use agentscale_infer::{InferRequest, Tensor, TritonClient};
use raw::{frame, grpc_message, indexed, literal, response_headers, settings, Conn, RawServer};

const MIB: u64 = 1024 * 1024;

fn request() -> InferRequest {
    InferRequest::new("m").input(Tensor::from_slice("INPUT0", &[1.0f32, 2.0]))
}

fn client(url: &str, deadline: Duration) -> TritonClient {
    TritonClient::builder(url)
        .default_deadline(deadline)
        .build()
        .expect("client")
}

/// Answers the first call's HEADERS with `then` (written after SETTINGS
/// and the response HEADERS, unless `then` writes its own).
async fn on_first_stream(mut c: Conn, then: impl FnOnce(u32) -> Vec<Vec<u8>>) -> Conn {
    let Some(id) = c.next_stream().await else { return c };
    c.send(&settings(&[])).await;
    for f in then(id) {
        if !c.send(&f).await {
            break;
        }
    }
    c
}

#[tokio::test]
async fn ping_flood_while_not_reading_stays_bounded_and_ends_by_the_deadline() {
    // The server floods PINGs and never reads: every PING wants an ACK the
    // client cannot write. A client that kept reading and queueing ACKs
    // would take in everything; h2 stops reading while an ACK is pending.
    const BUDGET: u64 = 512 * MIB;
    let server = RawServer::start(false, |mut c: Conn| async move {
        c.send(&settings(&[])).await;
        let ping = frame(raw::PING, 0, 0, &[7; 8]);
        let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 4096).collect();
        let mut sent = 0;
        while sent < BUDGET && c.send(&burst).await {
            sent += burst.len() as u64;
        }
    })
    .await;
    let client = client(&server.url(), Duration::from_secs(2));
    let err = client.infer(&request()).await.expect_err("never answered");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    let written = server.written();
    assert!(
        written < 64 * MIB,
        "the client took in {written} bytes of PINGs (socket buffers hold a few MiB)"
    );
}

#[tokio::test]
async fn header_list_that_decodes_past_the_limit_is_refused() {
    // 7 KiB of HPACK that decodes to ~12 MiB: one 4000-byte header put in
    // the dynamic table, then referenced 3000 times by a 1-byte index.
    let server = RawServer::start(true, |c: Conn| async move {
        on_first_stream(c, |id| {
            let mut block = response_headers(&[]);
            literal(&mut block, "x-big", &[b'a'; 4000], true);
            for _ in 0..3000 {
                indexed(&mut block, 62);
            }
            vec![frame(raw::HEADERS, raw::END_HEADERS, id, &block)]
        })
        .await;
        std::future::pending::<()>().await;
    })
    .await;
    let client = client(&server.url(), Duration::from_secs(30));
    let err = client.infer(&request()).await.expect_err("header bomb");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().len() < 9000, "{} bytes", err.to_string().len());
}

#[tokio::test]
async fn oversize_length_prefix_is_refused_before_buffering() {
    // A 2 GiB length prefix, then a trickle: the call fails at the prefix,
    // long before its deadline, without waiting for (or reserving) 2 GiB.
    let server = RawServer::start(true, |c: Conn| async move {
        on_first_stream(c, |id| {
            let mut data = vec![0u8, 0x7f, 0xff, 0xff, 0xff];
            data.extend_from_slice(&[0; 64]);
            vec![
                frame(raw::HEADERS, raw::END_HEADERS, id, &response_headers(&[])),
                frame(raw::DATA, 0, id, &data),
            ]
        })
        .await;
        std::future::pending::<()>().await;
    })
    .await;
    let client = client(&server.url(), Duration::from_secs(30));
    match client.infer(&request()).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::OutOfRange, "{message}");
            assert!(
                message.contains("67108864"),
                "the 64 MiB default limit: {message}"
            );
        }
        other => panic!("expected Rpc OutOfRange, got {other:?}"),
    }
}

#[tokio::test]
async fn gzip_bomb_is_capped_at_the_message_limit() {
    // 16 KiB of gzip that inflates to 64 MiB, against a 1 MiB limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 256 * 1024, "{}", bomb.len());
    let server = RawServer::start(true, move |c: Conn| {
        let bomb = bomb.clone();
        async move {
            on_first_stream(c, |id| {
                let msg = grpc_message(true, &bomb);
                let mut frames = vec![frame(
                    raw::HEADERS,
                    raw::END_HEADERS,
                    id,
                    &response_headers(&[("grpc-encoding", "gzip")]),
                )];
                frames.extend(msg.chunks(16_384).map(|c| frame(raw::DATA, 0, id, c)));
                frames
            })
            .await;
            std::future::pending::<()>().await;
        }
    })
    .await;
    let client = TritonClient::builder(server.url())
        .gzip(true)
        .max_message_size(MIB as usize)
        .default_deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    match client.infer(&request()).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::ResourceExhausted, "{message}");
            assert!(message.contains("decompressing"), "{message}");
        }
        other => panic!("expected Rpc ResourceExhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn max_concurrent_streams_zero_waits_for_a_slot_only_until_the_deadline() {
    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let server = RawServer::start(true, move |mut c: Conn| {
        let opened_tx = opened_tx.clone();
        async move {
            // The first call is answered; then no stream may be opened.
            let Some(id) = c.next_stream().await else { return };
            c.send(&settings(&[])).await;
            let mut trailers = Vec::new();
            literal(&mut trailers, "grpc-status", b"0", false);
            c.send(&frame(raw::HEADERS, raw::END_HEADERS, id, &response_headers(&[])))
                .await;
            c.send(&frame(raw::DATA, 0, id, &grpc_message(false, &[0x08, 0x01])))
                .await;
            c.send(&frame(
                raw::HEADERS,
                raw::END_HEADERS | raw::END_STREAM,
                id,
                &trailers,
            ))
            .await;
            c.send(&settings(&[(0x3, 0)])).await;
            c.settings_acked().await; // the empty SETTINGS
            c.settings_acked().await; // MAX_CONCURRENT_STREAMS = 0
            let _ = opened_tx.send(None);
            let next = c.next_stream().await;
            let _ = opened_tx.send(next);
            std::future::pending::<()>().await;
        }
    })
    .await;
    let client = client(&server.url(), Duration::from_secs(1));
    assert!(client.server_live().await.expect("first call"));
    assert_eq!(opened.recv().await, Some(None), "the limit was acknowledged");
    let err = client.server_live().await.expect_err("no stream slot");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(opened.try_recv().is_err(), "no stream was opened past the limit");
}

#[tokio::test]
async fn a_server_that_never_answers_is_left_at_the_deadline() {
    // Accepts and reads, never writes a byte (not even SETTINGS).
    let silent = RawServer::start(true, |c: Conn| async move {
        let _open = c;
        std::future::pending::<()>().await;
    })
    .await;
    let err = client(&silent.url(), Duration::from_secs(1))
        .infer(&request())
        .await
        .expect_err("silent server");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");

    // Never accepts: the kernel completes the TCP handshake, then nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let err = client(&url, Duration::from_secs(1))
        .server_ready()
        .await
        .expect_err("never accepted");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    drop(listener);
}

#[tokio::test]
async fn rst_stream_mid_call_is_an_error_not_a_hang() {
    let server = RawServer::start(true, |c: Conn| async move {
        on_first_stream(c, |id| {
            let mut part = vec![0u8, 0, 0, 0, 100];
            part.extend_from_slice(&[0; 10]);
            vec![
                frame(raw::HEADERS, raw::END_HEADERS, id, &response_headers(&[])),
                frame(raw::DATA, 0, id, &part),
                frame(raw::RST_STREAM, 0, id, &2u32.to_be_bytes()),
            ]
        })
        .await;
        std::future::pending::<()>().await;
    })
    .await;
    let err = client(&server.url(), Duration::from_secs(30))
        .infer(&request())
        .await
        .expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
}

#[tokio::test]
async fn goaway_mid_call_is_an_error_with_the_debug_data_clipped() {
    let server = RawServer::start(true, |c: Conn| async move {
        let mut c = on_first_stream(c, |id| {
            let mut goaway = id.to_be_bytes().to_vec();
            goaway.extend_from_slice(&2u32.to_be_bytes());
            goaway.extend_from_slice(&[b'x'; 16_000]);
            vec![
                frame(raw::HEADERS, raw::END_HEADERS, id, &response_headers(&[])),
                frame(raw::DATA, 0, id, &[0u8, 0, 0, 0, 100, 1, 2, 3]),
                frame(raw::GOAWAY, 0, 0, &goaway),
            ]
        })
        .await;
        let _ = c.write.shutdown().await;
    })
    .await;
    let err = client(&server.url(), Duration::from_secs(30))
        .infer(&request())
        .await
        .expect_err("goaway");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    let shown = err.to_string();
    assert!(shown.len() < 9000, "{} bytes: {shown}", shown.len());
}

use tokio::io::AsyncWriteExt as _;
