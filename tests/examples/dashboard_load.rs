//! Holds the dashboard open in headless Chromium for a while — one tab on
//! the overview, one on the ticket list (every queue, newest first) — and
//! reports how often each tab rendered and how long the main thread was
//! blocked (long tasks). For BENCHMARKS.md: run `asyncgate bench` against
//! the same gateway with and without it.
//!
//! ```text
//! cargo run -p asyncgate-tests --example dashboard_load -- http://127.0.0.1:50051 30 [API_KEY]
//! ```
//!
//! Needs Debian's `chromium` at /usr/bin/chromium.

use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use futures::StreamExt;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Counts renders (one MutationObserver callback per committed render
/// batch under `main`) and long tasks from now on.
const PROBE: &str = r#"(() => {
    window.__renders = 0; window.__longMs = 0; window.__long = 0;
    new MutationObserver(() => { window.__renders++; })
        .observe(document.querySelector('main'), { subtree: true, childList: true, characterData: true, attributes: true });
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) { window.__long++; window.__longMs += e.duration; }
    }).observe({ type: 'longtask', buffered: false });
    return true;
})()"#;

/// Evaluates `expression`; `Null` while the page is between documents.
async fn eval(page: &chromiumoxide::Page, expression: &str) -> serde_json::Value {
    let params = EvaluateParams::builder()
        .expression(expression)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .expect("valid params");
    match page.evaluate(params).await {
        Ok(result) => result.value().cloned().unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// Polls `condition` in the page until it holds (or 20 s pass).
async fn until(page: &chromiumoxide::Page, condition: &str) {
    for _ in 0..200 {
        if eval(page, condition).await == serde_json::Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {condition}");
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: dashboard_load URL SECONDS [API_KEY]");
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let key = args.next().unwrap_or_default();
    // One browser per view: a background tab is hidden, and the dashboard
    // stops reading while hidden.
    let mut browsers = Vec::new();
    let mut pages = Vec::new();
    for view in ["#/overview", "#/tickets"] {
        let profile = tempfile::tempdir().expect("temp dir");
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .user_data_dir(profile.path())
            .no_sandbox()
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .build()
            .expect("browser config");
        let (browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        let page = browser
            .new_page(format!("{url}/dashboard/").as_str())
            .await
            .expect("page opens");
        eval(
            &page,
            &format!("sessionStorage.setItem('asyncgate.apiKey', {key:?}); location.hash = {view:?}; location.reload(); true"),
        )
        .await;
        until(&page, "document.querySelector('header .logout') !== null").await;
        until(
            &page,
            "document.querySelector('.card, table.tickets, .notice') !== null",
        )
        .await;
        eval(&page, PROBE).await;
        pages.push((view, page));
        browsers.push((browser, events, profile));
    }
    eprintln!("dashboard open on {url} (overview and ticket list) for {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for (view, page) in &pages {
        let stats = eval(
            page,
            "({renders: window.__renders, longTasks: window.__long, longTaskMs: Math.round(window.__longMs), rows: document.querySelectorAll('tbody tr').length})",
        )
        .await;
        let renders = stats["renders"].as_f64().unwrap_or(0.0);
        println!(
            "{view}: {:.1} renders/s, {} long tasks ({} ms), {} rows shown",
            renders / seconds as f64,
            stats["longTasks"],
            stats["longTaskMs"],
            stats["rows"]
        );
    }
    for (mut browser, events, _profile) in browsers {
        let _ = browser.close().await;
        let _ = browser.wait().await;
        events.abort();
    }
}
