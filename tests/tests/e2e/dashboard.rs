//! The web dashboard (`--dashboard`) in a real browser: headless Chromium
//! loads `/dashboard/` from the gateway's own port, logs in by typing an
//! API key, sees a queue fill without a reload, follows a ticket live to
//! SUCCEEDED with its output and result, and shows a viewer key no button.
//! Every wait is on a DOM condition (no sleeps). Screenshots at 1280 and
//! 390 px wide go to `target/dashboard-screenshots/`.
//!
//! Needs Debian's `chromium` (`scripts/test.sh` installs it when missing).

use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::page::ScreenshotParams;
use serde_json::json;

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Submit, pb};
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{Gate, TestGateway, fast_config};

use crate::browser::{Chromium, eval, wait_for};

const ADMIN: &str = "dashboard-admin-key";
const VIEWER: &str = "dashboard-viewer-key";

/// Where the screenshots go: beside the build's other output.
pub(crate) fn screenshots() -> std::path::PathBuf {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("dashboard-screenshots")
}

/// Types `key` into the login form, as a person would, and submits it.
pub(crate) async fn log_in(page: &Page, key: &str) {
    wait_for(page, "document.getElementById('key') !== null").await;
    let field = page.find_element("#key").await.unwrap();
    field.click().await.unwrap();
    field.type_str(key).await.unwrap();
    field.press_key("Enter").await.unwrap();
    wait_for(page, "document.querySelector('header .logout') !== null").await;
}

/// Opens a ticket through the header's form.
pub(crate) async fn open_ticket(page: &Page, id: &str) {
    let field = page
        .find_element("input[aria-label='Ticket id']")
        .await
        .unwrap();
    field.click().await.unwrap();
    field.type_str(id).await.unwrap();
    field.press_key("Enter").await.unwrap();
    wait_for(page, &format!("location.hash === '#/tickets/{id}'")).await;
}

/// Saves a screenshot `name` at `width` px wide.
pub(crate) async fn screenshot(page: &Page, name: &str, width: i64) {
    page.execute(SetDeviceMetricsOverrideParams::new(
        width,
        900,
        1.0,
        width < 600,
    ))
    .await
    .unwrap();
    let dir = screenshots();
    std::fs::create_dir_all(&dir).unwrap();
    page.save_screenshot(
        ScreenshotParams::builder().full_page(true).build(),
        dir.join(format!("{name}-{width}.png")),
    )
    .await
    .unwrap();
}

/// A gateway serving the dashboard, with an admin key (`ops`) and a viewer
/// key (`watcher`).
pub(crate) async fn dashboard_gateway(
    dir: &tempfile::TempDir,
    admin: &str,
    viewer: &str,
) -> TestGateway {
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n\n\
             [[keys]]\nname = \"watcher\"\nsha256 = \"{}\"\nrole = \"viewer\"\n",
            digest_hex(admin),
            digest_hex(viewer)
        ),
    )
    .unwrap();
    let mut config = asyncgate_server::Config {
        dashboard: true,
        keys: Some(keys),
        ..fast_config()
    };
    // Loopback destinations may be targets (the Queues view shows them).
    config.callbacks.allow = vec![asyncgate_server::callbacks::parse_allowed("127.0.0.1").unwrap()];
    TestGateway::start_with(config).await
}

/// `document.querySelector(selector)?.textContent`, as a JS expression.
pub(crate) fn text_of(selector: &str) -> String {
    format!("document.querySelector({selector:?})?.textContent")
}

#[tokio::test]
async fn the_dashboard_logs_in_lists_queues_and_follows_a_ticket_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = dashboard_gateway(&dir, ADMIN, VIEWER).await;
    let gate = Gate::default();
    let worker = gateway
        .worker("dash")
        .api_key(ADMIN)
        .unwrap()
        .handler(handler_fn({
            let gate = gate.clone();
            move |task: TaskContext| {
                let gate = gate.clone();
                async move {
                    task.progress(40, "halfway").await;
                    task.output(pb::Payload {
                        kind: Some(pb::payload::Kind::Binary(b"first line\n".to_vec().into())),
                        content_type: "text/plain; charset=utf-8".into(),
                    })
                    .await;
                    gate.enter().await;
                    let name = task.json().unwrap()["name"].as_str().unwrap().to_owned();
                    Ok(asyncgate_tests::json(
                        json!({"greeting": format!("hello {name}")}),
                    ))
                }
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let client = gateway.client().await.with_api_key(ADMIN).unwrap();

    let chromium = Chromium::launch().await;
    let page = chromium
        .browser
        .new_page(format!("{}/dashboard/", gateway.url()).as_str())
        .await
        .unwrap();
    log_in(&page, ADMIN).await;
    // The overview is the first view; its charts come with the first queue.
    screenshot(&page, "overview-empty", 1280).await;
    eval(&page, "location.hash = '#/queues'").await;
    // The Queues view has loaded before anything is submitted.
    wait_for(
        &page,
        "document.querySelector('table.queues, .notice') !== null",
    )
    .await;
    let running = text_of("tr[data-queue='dash'] [data-count='running']");

    let ticket = client
        .submit(Submit::new("dash").json(json!({"name": "chromium"})))
        .await
        .unwrap();
    gate.started().await;
    // Refreshed without a reload: the held ticket shows as running.
    wait_for(&page, &format!("{running} === '1'")).await;
    assert_eq!(
        eval(
            &page,
            "document.querySelector(\"tr[data-queue='dash'] button.pause\") !== null"
        )
        .await,
        json!(true),
        "an admin key may pause"
    );
    screenshot(&page, "queues", 1280).await;

    open_ticket(&page, &ticket.id).await;
    let state = text_of("[data-testid='state']");
    wait_for(&page, &format!("{state} === 'RUNNING'")).await;
    wait_for(
        &page,
        &format!(
            "{}?.includes('first line')",
            text_of("[data-testid='output']")
        ),
    )
    .await;
    assert_eq!(
        eval(&page, "document.querySelector('progress').value").await,
        json!(40)
    );
    assert_eq!(
        eval(&page, "document.querySelector('button.cancel') !== null").await,
        json!(true),
        "an admin key may cancel a running ticket"
    );
    gate.open();
    wait_for(&page, &format!("{state} === 'SUCCEEDED'")).await;
    let result = eval(&page, &text_of("[data-testid='result']")).await;
    let result: serde_json::Value = serde_json::from_str(result.as_str().unwrap()).unwrap();
    assert_eq!(result, json!({"greeting": "hello chromium"}));
    screenshot(&page, "ticket", 1280).await;
    screenshot(&page, "ticket", 390).await;

    // Pause and resume from the Queues view.
    eval(&page, "location.hash = '#/queues'").await;
    let pause = "tr[data-queue='dash'] button.pause";
    wait_for(
        &page,
        &format!("document.querySelector({pause:?}) !== null"),
    )
    .await;
    page.find_element(pause)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = text_of("tr[data-queue='dash'] .badge");
    wait_for(&page, &format!("{status} === 'paused by ops'")).await;
    let queue = client.admin().get_queue("dash").await.unwrap();
    assert_eq!(queue.pause.unwrap().paused_by, "ops");
    let resume = "tr[data-queue='dash'] button.resume";
    page.find_element(resume)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&page, &format!("{status} === 'active'")).await;

    // A viewer: the same views, no button that changes anything.
    let idle = client
        .submit(Submit::new("idle").json(json!({})))
        .await
        .unwrap();
    eval(&page, "document.querySelector('header .logout').click()").await;
    log_in(&page, VIEWER).await;
    eval(&page, "location.hash = '#/queues'").await;
    wait_for(
        &page,
        "document.querySelector(\"tr[data-queue='idle']\") !== null",
    )
    .await;
    assert_eq!(
        eval(&page, "document.querySelectorAll('main button').length").await,
        json!(0),
        "a viewer sees no pause or resume"
    );
    open_ticket(&page, &idle.id).await;
    wait_for(&page, &format!("{state} === 'PENDING'")).await;
    wait_for(
        &page,
        "document.querySelector(\"[data-testid='waiting']\") !== null",
    )
    .await;
    assert_eq!(
        eval(&page, "document.querySelectorAll('main button').length").await,
        json!(0),
        "a viewer sees no cancel"
    );
    assert_eq!(
        eval(&page, &format!("location.href.includes({VIEWER:?})")).await,
        json!(false),
        "the key is never in a URL"
    );
    screenshot(&page, "viewer-ticket", 390).await;

    chromium.close().await;
    worker.shutdown();
}
