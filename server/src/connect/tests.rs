//! Unit tests of `connect/mod.rs` and `connect/request.rs`.

use super::*;

#[test]
fn content_types_pick_the_shape() {
    let headers = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    };
    assert_eq!(
        classify(&Method::POST, &headers("application/json; charset=utf-8")),
        Some((Shape::Unary, Format::Json))
    );
    assert_eq!(
        classify(&Method::POST, &headers("application/connect+proto")),
        Some((Shape::Stream, Format::Proto))
    );
    assert_eq!(classify(&Method::POST, &headers("application/grpc")), None);
    assert_eq!(
        classify(&Method::POST, &headers("application/grpc-web+proto")),
        None
    );
    assert_eq!(classify(&Method::GET, &headers("application/json")), None);
}

#[test]
fn bad_headers_say_what_to_fix() {
    let shared = match ConnectLayer::new(1024) {
        Ok(layer) => layer.shared,
        Err(e) => panic!("{e}"),
    };
    let prepare = |path: &str, pairs: &[(&'static str, &'static str)], shape| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        shared.prepare(path, &headers, shape, Format::Json)
    };
    let submit = "/asyncgate.v1.Gateway/Submit";
    assert!(prepare(submit, &[("connect-protocol-version", "1")], Shape::Unary).is_ok());
    let error = |result: Result<Call, Failure>| match result {
        Ok(_) => panic!("accepted"),
        Err(failure) => (failure.code, failure.message),
    };
    let (code, message) = error(prepare(
        submit,
        &[("connect-protocol-version", "2")],
        Shape::Unary,
    ));
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, message) = error(prepare("/asyncgate.v1.Workers/Connect", &[], Shape::Stream));
    assert_eq!(code, Code::Unimplemented);
    assert!(message.contains("gRPC"), "{message}");
    let (code, _) = error(prepare("/asyncgate.v1.Gateway/Nope", &[], Shape::Unary));
    assert_eq!(code, Code::Unimplemented);
    let (code, message) = error(prepare(submit, &[("content-encoding", "br")], Shape::Unary));
    assert_eq!(code, Code::Unimplemented);
    assert!(message.contains("gzip, identity"), "{message}");
    let (code, _) = error(prepare(
        submit,
        &[("connect-timeout-ms", "12345678901")],
        Shape::Unary,
    ));
    assert_eq!(code, Code::InvalidArgument);
    let (code, message) = error(prepare(
        "/asyncgate.v1.Gateway/WatchTicket",
        &[],
        Shape::Unary,
    ));
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("application/connect+json"), "{message}");
    let call = prepare(submit, &[("connect-timeout-ms", "1500")], Shape::Unary);
    assert_eq!(
        call.ok().and_then(|c| c.timeout),
        Some(Duration::from_millis(1500))
    );
}
