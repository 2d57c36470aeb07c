//! A real browser: headless Chromium (driven over the DevTools protocol)
//! loads `examples/browser/index.html` from a loopback HTTP server on its own
//! port, so every call is cross-origin and CORS is exercised for real. The
//! page submits a ticket and watches it over the Connect protocol with its
//! hand-written `fetch` client; a worker reports progress and a result; the
//! test waits on DOM conditions (no sleeps) and checks what the page shows.
//! The same page loaded from an origin the gateway does not allow
//! (`localhost` instead of `127.0.0.1`) is refused by the browser.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it when missing).

use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_tests::{Gate, TestGateway, fast_config};

/// The page under test, as shipped.
const PAGE: &str = include_str!("../../../examples/browser/index.html");

/// Where Debian's package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The longest a page condition may take: far above what the test needs,
/// so that only a real failure reaches it.
const PAGE_BUDGET: Duration = Duration::from_secs(30);

/// Serves the page (any path but /favicon.ico) over HTTP/1.1, one response
/// per connection, until dropped.
struct PageServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let found = !head.starts_with(b"GET /favicon.ico");
                    let (status, body) = if found {
                        ("200 OK", PAGE)
                    } else {
                        ("404 Not Found", "")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A headless Chromium with its DevTools connection driven by a task
/// (also used by the `dashboard` test).
pub(crate) struct Chromium {
    pub(crate) browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    pub(crate) async fn launch() -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium (apt-get install chromium)"
        );
        let profile = tempfile::tempdir().unwrap();
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .user_data_dir(profile.path())
            .no_sandbox()
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .request_timeout(PAGE_BUDGET + Duration::from_secs(10))
            .build()
            .unwrap();
        let (browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Self {
            browser,
            handler,
            _profile: profile,
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// Evaluates `expression` in the page (awaiting it if it is a promise) and
/// returns its JSON value.
pub(crate) async fn eval(page: &chromiumoxide::Page, expression: &str) -> serde_json::Value {
    let params = EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .unwrap();
    let result = page.evaluate(params).await.expect("the page evaluates");
    result.value().cloned().unwrap_or(serde_json::Value::Null)
}

/// Resolves once `condition` (a JS expression) is true in the page, checked
/// on every DOM change: a signal from the page, not a sleep.
pub(crate) async fn wait_for(page: &chromiumoxide::Page, condition: &str) {
    let script = format!(
        r#"new Promise((resolve) => {{
            const check = () => {{ try {{ if ({condition}) {{ resolve(true); return true; }} }} catch (e) {{}} return false; }};
            if (check()) return;
            const observer = new MutationObserver(() => {{ if (check()) observer.disconnect(); }});
            observer.observe(document.body, {{ subtree: true, childList: true, characterData: true, attributes: true }});
        }})"#
    );
    let outcome = tokio::time::timeout(PAGE_BUDGET, eval(page, &script)).await;
    if outcome.is_err() {
        let body = eval(page, "document.body.innerText").await;
        panic!(
            "the page never showed `{condition}`; it shows:\n{}",
            body.as_str().unwrap_or_default()
        );
    }
}

/// Fills the form and presses Submit.
async fn submit(page: &chromiumoxide::Page, queue: &str, payload: &serde_json::Value) {
    let script = format!(
        r#"(() => {{
            document.getElementById("queue").value = {queue};
            document.getElementById("payload").value = {payload};
            document.getElementById("submit").click();
            return true;
        }})()"#,
        queue = serde_json::to_string(queue).unwrap(),
        payload = serde_json::to_string(&payload.to_string()).unwrap(),
    );
    eval(page, &script).await;
}

async fn text(page: &chromiumoxide::Page, id: &str) -> String {
    let value = eval(
        page,
        &format!("document.getElementById({id:?}).textContent"),
    )
    .await;
    value.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_example_page_submits_and_watches_in_chromium() {
    let pages = PageServer::start().await;
    let origin = format!("http://127.0.0.1:{}", pages.port);
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        grpc_web: true,
        cors_allow_origins: vec![origin.clone()],
        ..fast_config()
    })
    .await;
    let gate = Gate::default();
    let worker = gateway.spawn_worker(
        "browser",
        handler_fn({
            let gate = gate.clone();
            move |task: TaskContext| {
                let gate = gate.clone();
                async move {
                    gate.enter().await;
                    task.progress(30, "reading").await;
                    task.progress(80, "writing").await;
                    let text = task.json().unwrap()["text"]
                        .as_str()
                        .unwrap()
                        .to_uppercase();
                    Ok(asyncgate_tests::json(json!({"upper": text})))
                }
            }
        }),
    );
    let chromium = Chromium::launch().await;
    let url = format!("{origin}/index.html?gateway={}", gateway.url());
    let page = chromium.browser.new_page(url.as_str()).await.unwrap();
    wait_for(&page, "document.getElementById('submit') !== null").await;
    submit(&page, "browser", &json!({"text": "hello from chromium"})).await;

    // The task is held until the page's watch is open and shows it running,
    // so the progress events travel over the live stream.
    gate.started().await;
    wait_for(
        &page,
        "document.getElementById('state').textContent === 'RUNNING'",
    )
    .await;
    gate.open();
    wait_for(
        &page,
        "document.getElementById('stream-status').textContent === 'ended'",
    )
    .await;

    assert_eq!(text(&page, "state").await, "SUCCEEDED");
    assert_eq!(
        text(&page, "result").await,
        r#"{"upper":"HELLO FROM CHROMIUM"}"#
    );
    assert_eq!(text(&page, "error").await, "");
    let events = eval(
        &page,
        "[...document.querySelectorAll('#events li')].map((li) => li.textContent)",
    )
    .await;
    let events: Vec<String> = serde_json::from_value(events).unwrap();
    assert!(events[0].contains("SNAPSHOT"), "{events:?}");
    for progress in [
        "PROGRESS RUNNING 30% reading",
        "PROGRESS RUNNING 80% writing",
    ] {
        assert!(
            events.iter().any(|e| e.ends_with(progress)),
            "{progress}: {events:?}"
        );
    }
    assert!(
        events.last().unwrap().ends_with("STATE SUCCEEDED"),
        "{events:?}"
    );
    let id = text(&page, "ticket-id").await;
    let ticket = gateway.client().await.get(&id, None).await.unwrap();
    assert_eq!(ticket.queue, "browser");

    // The same page from another origin (localhost is not 127.0.0.1 to a
    // browser): the gateway sends no CORS headers, the browser refuses.
    let elsewhere = format!(
        "http://localhost:{}/index.html?gateway={}",
        pages.port,
        gateway.url()
    );
    let refused = chromium.browser.new_page(elsewhere.as_str()).await.unwrap();
    wait_for(&refused, "document.getElementById('submit') !== null").await;
    submit(&refused, "browser", &json!({"text": "refused"})).await;
    wait_for(
        &refused,
        "document.getElementById('stream-status').textContent === 'failed'",
    )
    .await;
    let error = text(&refused, "error").await;
    assert!(error.contains("Failed to fetch"), "{error}");
    assert_eq!(
        text(&refused, "ticket-id").await,
        "–",
        "nothing was submitted"
    );

    chromium.close().await;
    worker.shutdown();
}

#[tokio::test]
async fn a_refused_origin_gets_no_cors_headers() {
    use http_body_util::{BodyExt as _, Full};
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        grpc_web: true,
        cors_allow_origins: vec!["http://127.0.0.1:8080".into()],
        ..fast_config()
    })
    .await;
    for (origin, allowed) in [
        ("http://127.0.0.1:8080", true),
        ("http://localhost:8080", false),
    ] {
        for method in ["OPTIONS", "POST"] {
            let tcp = tokio::net::TcpStream::connect(gateway.addr())
                .await
                .unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = hyper::Request::builder()
                .method(method)
                .uri(format!("{}/asyncgate.v1.Gateway/Submit", gateway.url()))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,connect-protocol-version,connect-timeout-ms",
                )
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from_static(b"{\"queue\":\"q\"}")))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let headers = response.headers().clone();
            let _ = response.into_body().collect().await;
            // What makes a browser refuse: no allow-origin. tower-http still
            // lists the methods, headers and exposed headers, which grant
            // nothing without it.
            let cors: Vec<_> = headers
                .keys()
                .filter(|name| {
                    [
                        "access-control-allow-origin",
                        "access-control-allow-credentials",
                    ]
                    .contains(&name.as_str())
                })
                .collect();
            if allowed {
                assert_eq!(headers["access-control-allow-origin"], origin, "{method}");
                if method == "OPTIONS" {
                    let allow = headers["access-control-allow-headers"].to_str().unwrap();
                    for name in [
                        "connect-protocol-version",
                        "connect-timeout-ms",
                        "x-grpc-web",
                    ] {
                        assert!(allow.contains(name), "{allow}");
                    }
                } else {
                    let expose = headers["access-control-expose-headers"].to_str().unwrap();
                    assert!(expose.contains("grpc-status"), "{expose}");
                }
            } else {
                assert!(cors.is_empty(), "{method} from {origin}: {cors:?}");
            }
        }
    }
}
