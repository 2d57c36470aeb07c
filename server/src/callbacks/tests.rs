//! The destination policy: what a callback URL may be and where it may go.

use super::*;

fn settings(allow: &[&str]) -> CallbackSettings {
    CallbackSettings {
        allow: allow.iter().map(|a| parse_allowed(a).unwrap()).collect(),
        secrets: vec![parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()],
        ..CallbackSettings::default()
    }
}

fn refused(settings: &CallbackSettings, url: &str) -> Refused {
    settings.check(url).expect_err(url)
}

#[test]
fn allow_entries_parse_and_bad_ones_say_what_to_fix() {
    assert_eq!(
        parse_allowed("Hooks.Example.com"),
        Ok(Allowed::Host("hooks.example.com".into()))
    );
    assert_eq!(
        parse_allowed("*.example.com"),
        Ok(Allowed::Suffix(".example.com".into()))
    );
    assert_eq!(
        parse_allowed("10.0.0.0/8").unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        parse_allowed("127.0.0.1").unwrap().to_string(),
        "127.0.0.1/32"
    );
    for bad in ["", "*.", "a b", "http://x", "x/y"] {
        assert!(
            parse_allowed(bad).unwrap_err().contains("host name"),
            "{bad}"
        );
    }
    assert!(
        parse_secret("whsec_not-base64!not-base64!not-base64!")
            .unwrap_err()
            .contains("not base64")
    );
    assert!(
        parse_secret("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("too short")
    );
    assert!(parse_secret("whsec_").is_err(), "an empty key");
    assert_eq!(
        format!(
            "{:?}",
            parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
        ),
        "Secret(<redacted>)"
    );
}

#[test]
fn a_callback_goes_only_where_the_allowlist_says() {
    // No list: callbacks are off.
    let off = CallbackSettings::default();
    assert!(
        matches!(refused(&off, "https://hooks.example.com/x"), Refused::NotAllowed(m) if m.contains("--callback-allow"))
    );

    let s = settings(&["hooks.example.com", "*.internal.example", "10.1.0.0/16"]);
    assert_eq!(
        &*s.check("https://hooks.example.com/done?x=1").unwrap(),
        "https://hooks.example.com/done?x=1"
    );
    assert!(s.check("https://a.b.internal.example/x").is_ok());
    assert!(s.check("grpcs://10.1.2.3:8443").is_ok());
    for url in [
        "https://evil.example.com/x",
        "https://internal.example/x",
        "https://10.2.0.1/x",
        "https://169.254.169.254/latest",
    ] {
        assert!(
            matches!(refused(&s, url), Refused::NotAllowed(m) if m.contains("not in")),
            "{url}"
        );
    }
    // Plain http needs its own flag; HTTP needs a secret to sign with.
    assert!(
        matches!(refused(&s, "http://hooks.example.com/x"), Refused::NotAllowed(m) if m.contains("--callback-allow-http"))
    );
    let unsigned = CallbackSettings {
        secrets: Vec::new(),
        ..s.clone()
    };
    assert!(
        matches!(refused(&unsigned, "https://hooks.example.com/x"), Refused::NotAllowed(m) if m.contains("--callback-secret"))
    );
    assert!(
        unsigned.check("grpc://10.1.0.9:50051").is_ok(),
        "gRPC needs no secret"
    );
    // Malformed URLs are the caller's to fix.
    for (url, needle) in [
        ("hooks.example.com/x", "not a URL"),
        ("ftp://hooks.example.com/x", "scheme"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("grpc://10.1.0.9:50051/some/path", "HOST:PORT only"),
        ("grpc://10.1.0.9", "needs a port"),
    ] {
        assert!(
            matches!(refused(&s, url), Refused::Invalid(m) if m.contains(needle)),
            "{url}"
        );
    }
    let long = format!(
        "https://hooks.example.com/{}",
        "a".repeat(MAX_CALLBACK_URL_LEN)
    );
    assert!(matches!(refused(&s, &long), Refused::Invalid(m) if m.contains("limit")));
}

#[test]
fn private_addresses_are_reached_only_when_listed() {
    let s = settings(&["hooks.example.com", "127.0.0.1"]);
    assert!(s.may_connect("93.184.216.34".parse().unwrap()), "public");
    assert!(s.may_connect("127.0.0.1".parse().unwrap()), "listed");
    for ip in [
        "127.0.0.2",
        "10.0.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
    ] {
        assert!(!s.may_connect(ip.parse().unwrap()), "{ip}");
    }
}
