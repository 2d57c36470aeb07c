//! Unit tests of `setting.rs`: every option, printed back as it parses,
//! and every bad form answered with what to fix.

use super::*;
use crate::targets::DEFAULT_TARGET_CONCURRENCY;

/// An environment variable cargo sets for every test run (tests cannot set
/// one: `unsafe` is forbidden).
const SET_VAR: &str = "CARGO_PKG_NAME";

/// A CA certificate and a key, written to `dir`.
fn pem_files(dir: &std::path::Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[test]
fn targets_parse_and_bad_ones_say_what_to_fix() {
    let t = parse_target("orders=grpc://127.0.0.1:50052/shop.v1.Orders/Place").unwrap();
    assert_eq!(
        (t.queue.as_str(), t.origin.as_str(), t.path.as_str()),
        ("orders", "http://127.0.0.1:50052", "/shop.v1.Orders/Place")
    );
    assert_eq!(t.protocol, Protocol::Grpc);
    assert_eq!(t.options, TargetOptions::default());
    assert_eq!(t.options.max_concurrent, DEFAULT_TARGET_CONCURRENCY);
    assert_eq!(t.url(), "grpc://127.0.0.1:50052/shop.v1.Orders/Place");
    let t = parse_target("a/q=grpcs://svc.internal:443/x.Y/Z?max_concurrent=8").unwrap();
    assert_eq!(
        (t.origin.as_str(), t.options.max_concurrent),
        ("https://svc.internal:443", 8)
    );
    assert_eq!(
        parse_target(&t.to_string()).unwrap(),
        t,
        "prints as it parses"
    );
    for (bad, needle) in [
        ("no-equals", "has no '='"),
        (
            "q=ftp://h:1/a.B/C",
            "starts with grpc://, grpcs://, http://",
        ),
        ("q=grpc://h:1", "names no method"),
        ("q=grpc://h:1/Method", "package.Service/Method"),
        ("q=grpc:///a.B/C", "give HOST:PORT"),
        ("q=http://user:pw@h:1/x", "header_env=authorization"),
        ("q=http://h:bad/x", "not a valid URL"),
        ("q=grpc://h:1/a.B/C?max_concurrent=0", "use 1 to"),
        ("q=grpc://h:1/a.B/C?max_concurrent", "has no '='"),
        ("q=grpc://h:1/a.B/C?retries=3", "unknown option"),
        ("bad queue=grpc://h:1/a.B/C", "queue:"),
    ] {
        let error = parse_target(bad).unwrap_err();
        assert!(error.contains(needle), "{bad}: {error}");
    }
}

#[test]
fn http_targets_parse_with_their_path() {
    let t = parse_target("hooks=http://127.0.0.1:8080/v1/orders").unwrap();
    assert_eq!(t.protocol, Protocol::Http);
    assert_eq!(
        (t.origin.as_str(), t.path.as_str()),
        ("http://127.0.0.1:8080", "/v1/orders")
    );
    assert_eq!(t.url(), "http://127.0.0.1:8080/v1/orders");
    let t = parse_target("hooks=https://api.example:443").unwrap();
    assert_eq!(
        (t.origin.as_str(), t.path.as_str()),
        ("https://api.example:443", "/")
    );
    assert_eq!(t.url(), "https://api.example:443/");
    assert_eq!(parse_target(&t.to_string()).unwrap(), t);
}

#[test]
fn every_option_parses_and_prints_back() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(dir.path());
    let text = format!(
        "q=https://h:1/p?max_concurrent=3&max_per_second=5&retry_on=429,503,5xx\
         &header_env=Authorization:{SET_VAR}&header_env=x-team:{SET_VAR}\
         &ca_file={cert}&cert_file={cert}&key_file={key}"
    );
    let t = parse_target(&text).unwrap();
    let o = &t.options;
    assert_eq!((o.max_concurrent, o.max_per_second), (3, Some(5)));
    assert_eq!(
        o.retry_on,
        Some(RetryOn::Statuses(vec![429..=429, 503..=503, 500..=599]))
    );
    assert_eq!(o.headers.len(), 2);
    assert_eq!(o.headers[0].name, "authorization", "names are lowercased");
    assert_eq!(o.headers[0].value.0, std::env::var(SET_VAR).unwrap());
    assert_eq!(o.ca_file.as_ref().unwrap().path, cert);
    assert_eq!(o.identity.as_ref().unwrap().1.path, key);
    assert_eq!(parse_target(&t.to_string()).unwrap(), t, "{t}");

    let g = parse_target("q=grpc://h:1/a.B/C?retry_on=unavailable,INTERNAL").unwrap();
    assert_eq!(
        g.options.retry_on,
        Some(RetryOn::Codes(vec![Code::Unavailable, Code::Internal]))
    );
    assert!(
        g.to_string().contains("retry_on=UNAVAILABLE,INTERNAL"),
        "{g}"
    );
    assert_eq!(parse_target(&g.to_string()).unwrap(), g);
}

#[test]
fn header_values_and_keys_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(dir.path());
    let t = parse_target(&format!(
        "q=https://h:1/p?header_env=authorization:{SET_VAR}&cert_file={cert}&key_file={key}"
    ))
    .unwrap();
    let secret = std::env::var(SET_VAR).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    for shown in [format!("{t}"), format!("{t:?}"), format!("{t:#?}")] {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains(key_line), "{shown}");
    }
    assert!(format!("{t:?}").contains("<redacted>"));
    assert!(
        t.to_string()
            .contains(&format!("header_env=authorization:{SET_VAR}"))
    );
}

#[test]
fn bad_options_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(dir.path());
    let missing = dir.path().join("missing.pem").display().to_string();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.display().to_string();
    let unset = "ASYNCGATE_TEST_SURELY_UNSET_VARIABLE";
    for (bad, needle) in [
        (
            "max_per_second=0".to_owned(),
            "max_per_second=\"0\": use 1 to",
        ),
        ("max_per_second=x".to_owned(), "calls started per second"),
        ("retry_on=UNAVAILABLE".to_owned(), "not an HTTP status"),
        ("retry_on=600".to_owned(), "not an HTTP status"),
        ("retry_on=9xx".to_owned(), "not an HTTP status"),
        (
            "header_env=authorization".to_owned(),
            "use header_env=NAME:ENVVAR",
        ),
        ("header_env=:X".to_owned(), "use header_env=NAME:ENVVAR"),
        (
            format!("header_env=bad name:{SET_VAR}"),
            "not a valid header name",
        ),
        (
            format!("header_env=authorization:{unset}"),
            "the environment variable ASYNCGATE_TEST_SURELY_UNSET_VARIABLE is not set",
        ),
        (format!("ca_file={missing}"), "ca_file="),
        (format!("ca_file={missing}"), "cannot read it"),
        (format!("ca_file={not_pem}"), "holds no PEM certificates"),
        (
            format!("cert_file={cert}&key_file={cert}"),
            "holds no PEM private key",
        ),
        (
            format!("cert_file={cert}"),
            "cert_file and key_file go together",
        ),
        (
            format!("key_file={key}"),
            "cert_file and key_file go together",
        ),
    ] {
        let error = parse_target(&format!("q=https://h:1/p?{bad}")).unwrap_err();
        assert!(error.contains(needle), "{bad}: {error}");
    }
    for (bad, needle) in [
        ("q=grpc://h:1/a.B/C?retry_on=503", "not a gRPC code name"),
        (
            "q=grpc://h:1/a.B/C?retry_on=UNAVAILABLE,NOPE",
            "\"NOPE\" is not a gRPC code",
        ),
        (
            "q=grpc://h:1/a.B/C?header_env=grpc-timeout:PATH",
            "not a valid header name",
        ),
        ("q=grpc://h:1/a.B/C?ca_file=/x", "use grpcs:// or https://"),
        ("q=http://h:1/p?cert_file=/x", "use grpcs:// or https://"),
    ] {
        let error = parse_target(bad).unwrap_err();
        assert!(error.contains(needle), "{bad}: {error}");
    }
}

#[test]
fn targets_come_from_a_config_file_with_their_options() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncgate.toml");
    std::fs::write(
        &file,
        format!(
            "store = \"memory\"\ntarget = [\n  \"orders=grpc://127.0.0.1:50052/shop.v1.Orders/Place?max_concurrent=4&retry_on=UNAVAILABLE\",\n  \"hooks=http://127.0.0.1:8080/v1/hooks?max_per_second=5&retry_on=429,5xx&header_env=authorization:{SET_VAR}\",\n]\n"
        ),
    )
    .unwrap();
    let args = vec!["asyncgate-server".into(), "--config".into(), file.into()];
    let parsed = crate::config::parse_args(args).unwrap();
    assert!(
        parsed
            .effective
            .contains("header_env=authorization:CARGO_PKG_NAME"),
        "{}",
        parsed.effective
    );
    let config = crate::config::Config::try_from(parsed.cli).unwrap();
    let [orders, hooks] = &config.targets[..] else {
        panic!("{:?}", config.targets)
    };
    assert_eq!(
        (orders.protocol, orders.options.max_concurrent),
        (Protocol::Grpc, 4)
    );
    assert_eq!(
        (hooks.protocol, hooks.options.max_per_second),
        (Protocol::Http, Some(5))
    );
    assert_eq!(hooks.options.headers[0].env, SET_VAR);
}
