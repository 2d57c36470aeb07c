//! Settings the real `asyncgate-server` binary refuses before it binds a
//! port: it exits with code 64 (EX_USAGE) and says why on stderr.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Runs the binary with `args` and returns its exit code and stderr; a
/// binary that starts serving instead fails the test (it is killed when the
/// timeout drops it).
async fn refused(args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_asyncgate-server"))
        .args(args)
        .args(["--store", "memory"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not exit: it should have been refused"))
        .expect("wait for the binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn metrics_in_clear_off_loopback_exit_64() {
    let (code, stderr) =
        refused(&["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("refusing to serve metrics on 0.0.0.0:0 without TLS"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[tokio::test]
async fn keys_in_clear_off_loopback_exit_64() {
    // The keys file is never read: the settings are refused first.
    let (code, stderr) = refused(&["--listen", "0.0.0.0:0", "--keys", "keys.toml"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("refusing to serve 0.0.0.0:0 with API keys but no TLS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_size_with_an_unknown_unit_is_refused_naming_the_flag_and_the_forms() {
    let (code, stderr) = refused(&["--max-payload-bytes", "4XB"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--max-payload-bytes"), "{stderr}");
    assert!(stderr.contains("\"4XB\" is not a size"), "{stderr}");
    assert!(stderr.contains("KiB, MiB, GiB"), "{stderr}");
}

#[tokio::test]
async fn a_lenient_duration_is_refused_with_the_canonical_forms() {
    // humantime would read "1M" as a month; the gateway takes no guesses.
    let (code, stderr) = refused(&["--lease-ttl", "1M"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--lease-ttl"), "{stderr}");
    assert!(stderr.contains("\"1M\" is not a duration"), "{stderr}");
    assert!(stderr.contains("e.g. 500ms, 1.5s"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_cors_header_or_otlp_protocol_is_refused_naming_the_flag() {
    let (code, stderr) = refused(&["--grpc-web", "--cors-allow-header", "x-a: 1"]).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--cors-allow-header \"x-a: 1\""),
        "{stderr}"
    );
    let (code, stderr) = refused(&["--otlp-protocol", "carrier-pigeon"]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--otlp-protocol"), "{stderr}");
    assert!(stderr.contains("http/protobuf"), "{stderr}");
}
