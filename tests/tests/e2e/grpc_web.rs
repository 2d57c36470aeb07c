//! grpc-web (`--grpc-web`): a browser-style client over HTTP/1.1 submits a
//! ticket and follows a server-streamed watch to its result; CORS lets only
//! the configured origins in.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use prost::Message as _;

use asyncgate_client::pb;
use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_tests::{TestGateway, fast_config, json};

const APP: &str = "https://app.example.com";

fn config() -> asyncgate_server::Config {
    asyncgate_server::Config {
        grpc_web: true,
        cors_allow_origins: vec![APP.to_owned()],
        ..fast_config()
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
async fn http1(
    gateway: &TestGateway,
    request: Request<Full<Bytes>>,
) -> (hyper::http::response::Parts, Bytes) {
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// A grpc-web call: `message` framed, the response split into messages and
/// the trailers (from the trailers frame, or the headers of a trailers-only
/// answer).
async fn grpc_web(
    gateway: &TestGateway,
    method: &str,
    message: impl prost::Message,
) -> (Vec<Bytes>, String) {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    let request = Request::post(format!("http://{}/{method}", gateway.addr()))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", APP)
        .body(Full::new(frame.freeze()))
        .unwrap();
    let (parts, mut body) = http1(gateway, request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts.headers.get("access-control-allow-origin").unwrap(),
        APP
    );
    let mut messages = Vec::new();
    // A call that fails at once answers trailers-only: status in the headers.
    let mut trailers = match parts.headers.get("grpc-status") {
        Some(status) => format!("grpc-status:{}", status.to_str().unwrap()),
        None => String::new(),
    };
    while body.has_remaining() {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        let data = body.split_to(len);
        if flags & 0x80 != 0 {
            trailers = String::from_utf8(data.to_vec()).unwrap();
        } else {
            messages.push(data);
        }
    }
    (messages, trailers)
}

#[tokio::test]
async fn a_browser_submits_and_watches_over_grpc_web() {
    let gateway = TestGateway::start_with(config()).await;
    let (messages, trailers) = grpc_web(
        &gateway,
        "asyncgate.v1.Gateway/Submit",
        pb::SubmitRequest {
            queue: "browser".into(),
            payload: Some(json("from a web page".into())),
            ..Default::default()
        },
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let id = pb::Ticket::decode(messages[0].clone()).unwrap().id;

    let worker = gateway.spawn_worker(
        "browser",
        handler_fn(|task: TaskContext| async move { Ok(task.payload().clone()) }),
    );
    let (messages, trailers) = grpc_web(
        &gateway,
        "asyncgate.v1.Gateway/WatchTicket",
        pb::WatchTicketRequest {
            id: id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let events: Vec<pb::TicketEvent> = messages
        .into_iter()
        .map(|m| pb::TicketEvent::decode(m).unwrap())
        .collect();
    assert_eq!(events[0].kind, pb::TicketEventKind::Snapshot as i32);
    let last = events.iter().rev().find_map(|e| e.ticket.clone()).unwrap();
    assert_eq!(last.id, id);
    assert_eq!(last.state, pb::TicketState::Succeeded as i32);
    assert_eq!(last.result, Some(json("from a web page".into())));
    worker.shutdown();

    // Errors arrive as grpc-web trailers, with the message that says why.
    let (_, trailers) = grpc_web(
        &gateway,
        "asyncgate.v1.Gateway/GetTicket",
        pb::GetTicketRequest {
            id: "not-a-ticket".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(trailers.contains("grpc-status:3"), "{trailers}");
}

#[tokio::test]
async fn cors_preflight_admits_only_configured_origins() {
    let gateway = TestGateway::start_with(config()).await;
    let preflight = |origin: &str| {
        Request::options(format!(
            "http://{}/asyncgate.v1.Gateway/Submit",
            gateway.addr()
        ))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .body(Full::new(Bytes::new()))
        .unwrap()
    };
    let (allowed, _) = http1(&gateway, preflight(APP)).await;
    assert!(allowed.status.is_success(), "{:?}", allowed.status);
    assert_eq!(
        allowed.headers.get("access-control-allow-origin").unwrap(),
        APP
    );
    let allowed_headers = allowed
        .headers
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let (other, _) = http1(&gateway, preflight("https://evil.example.net")).await;
    assert!(
        other.headers.get("access-control-allow-origin").is_none(),
        "{other:?}"
    );
}

#[tokio::test]
async fn without_the_flag_http1_is_answered_with_505_naming_the_flag() {
    let gateway = TestGateway::start().await;
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!(
        "http://{}/asyncgate.v1.Gateway/Submit",
        gateway.addr()
    ))
    .header("content-type", "application/grpc-web+proto")
    .body(Full::new(Bytes::new()))
    .unwrap();
    // Answered, not just closed: the status and a text naming the flag.
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 505);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("--grpc-web"), "{text}");
    // HTTP/2 gRPC still works on the same port.
    gateway
        .client()
        .await
        .submit(asyncgate_client::Submit::new("h2").json(serde_json::json!(1)))
        .await
        .unwrap();
}
