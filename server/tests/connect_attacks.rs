//! Hostile Connect (HTTP/1.1, JSON) input against the real binary started
//! with `--grpc-web`: bodies far past the message limit, streamed without
//! end; JSON nested far deeper than any parser should recurse; garbage. Each
//! gets a Connect error with its HTTP status, the gateway's memory stays
//! bounded, and gRPC callers are served throughout.

use std::time::Duration;

use asyncgate_client::{Client, pb};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

mod common;
use common::{rss, start_server, wait_until_serving};

/// Sends a POST of `chunks` × `chunk` to `path` (one sized body, as a
/// browser or curl sends it, or a chunked stream that would go on for
/// `chunks` chunks) and returns the answer's status and body. The stream
/// stops as soon as the gateway answers or closes (a hostile client would
/// not, but a test must end).
async fn post(port: u16, path: &str, chunk: &[u8], chunks: usize) -> (u16, String) {
    let chunk_len = chunk.len();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let writer = if chunks == 1 {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            chunk.len()
        );
        stream
            .write_all(&[head.as_bytes(), chunk].concat())
            .await
            .unwrap();
        None
    } else {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Some(chunk.to_vec())
    };
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // The write half stays open until the answer is read: closing it
        // would be a half-close, which the gateway (as most HTTP/1.1
        // servers) takes for the client going away.
        let Some(chunk) = writer else {
            let _open = write;
            return std::future::pending().await;
        };
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        for _ in 0..chunks {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read_answer = async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_answer)
        .await
        .expect("the gateway answers within 30 s");
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "an HTTP answer to {path} ({chunks} x {} bytes), got {text:?}",
                chunk_len
            )
        });
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connect_bodies_are_refused_with_bounded_memory() {
    let port = common::free_port();
    let gateway = start_server(
        "memory",
        port,
        &["--grpc-web", "--insecure", "--max-payload-bytes", "1MiB"],
    );
    let client = Client::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
    wait_until_serving(&client).await;
    let pid = gateway.id().expect("running");
    let before = rss(pid);

    // 1. Eight bodies at once, each streaming 64 MiB of JSON whitespace:
    //    refused once past the limit, not buffered.
    let floods = (0..8).map(|_| {
        post(
            port,
            "/asyncgate.v1.Gateway/Submit",
            &[b' '; 64 * 1024],
            1024,
        )
    });
    for (status, body) in futures::future::join_all(floods).await {
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("resource_exhausted"), "{body}");
    }

    // 2. 100,000 nested arrays in the payload: refused as invalid, no
    //    recursion into it (the process would die of a stack overflow).
    let deep = format!(
        "{{\"queue\":\"q\",\"payload\":{{\"json\":{}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (status, body) = post(port, "/asyncgate.v1.Gateway/Submit", deep.as_bytes(), 1).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_argument"), "{body}");

    // 3. Not JSON at all.
    let (status, body) = post(port, "/asyncgate.v1.Gateway/Submit", b"\xff\xfe{{{", 1).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_argument"), "{body}");

    // Everyone else is still served, and the floods left no memory behind.
    let listed = client
        .list(pb::ListTicketsRequest::default())
        .await
        .expect("gRPC callers are served");
    assert!(listed.tickets.is_empty(), "nothing was stored");
    let after = rss(pid);
    assert!(
        after < before + 96 * 1024 * 1024,
        "RSS grew from {} MiB to {} MiB over eight streams offering 64 MiB each",
        before >> 20,
        after >> 20
    );
}
