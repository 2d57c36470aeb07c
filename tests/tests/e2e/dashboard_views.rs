//! The dashboard's views in headless Chromium against a real gateway and
//! real workers, clicked as a person would: tickets appear in the list
//! without a reload and eight of them are followed live to their end on
//! the page's one stream (HTTP/1.1: six streams would exhaust the origin's
//! connections); a failed ticket shows in the dead-letter view and Retry
//! brings it back to SUCCEEDED; Pause holds a ticket whose reason says so;
//! a viewer key sees no action anywhere and a call forged from its page is
//! refused; over TLS the page speaks HTTP/2 to the gateway; a callback
//! given up is listed by its state and sent again from its page. Every wait is
//! on a DOM condition. Screenshots go to
//! `target/dashboard-screenshots/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::emulation::{MediaFeature, SetEmulatedMediaParams};
use chromiumoxide::cdp::browser_protocol::security::SetIgnoreCertificateErrorsParams;
use serde_json::json;

use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Client, Submit, pb};
use asyncgate_tests::{Gate, TestGateway, TestPki, fast_config, finished};

use crate::browser::{Chromium, eval, wait_for};
use crate::dashboard::{dashboard_gateway, log_in, open_ticket, screenshot, text_of};

const ADMIN: &str = "views-admin-key";
const VIEWER: &str = "views-viewer-key";

/// A gateway serving the dashboard, with an admin and a viewer key.
async fn gateway(dir: &tempfile::TempDir) -> TestGateway {
    dashboard_gateway(dir, ADMIN, VIEWER).await
}

async fn admin_client(gateway: &TestGateway) -> Client {
    gateway.client().await.with_api_key(ADMIN).unwrap()
}

async fn open(chromium: &Chromium, gateway: &TestGateway, key: &str) -> Page {
    let page = chromium
        .browser
        .new_page(format!("{}/dashboard/", gateway.url()).as_str())
        .await
        .unwrap();
    log_in(&page, key).await;
    page
}

async fn go(page: &Page, hash: &str) {
    eval(page, &format!("location.hash = {hash:?}")).await;
}

async fn click(page: &Page, selector: &str) {
    wait_for(
        page,
        &format!("document.querySelector({selector:?}) !== null"),
    )
    .await;
    page.find_element(selector)
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Rows of the ticket list in `state`, as a JS expression; `live` counts
/// only rows the stream updated.
fn rows(state: &str, live: bool) -> String {
    let live = if live { "[data-live='true']" } else { "" };
    format!("document.querySelectorAll(\"tr[data-state='{state}']{live}\").length")
}

#[tokio::test]
async fn tickets_appear_without_a_reload_and_eight_are_followed_live_on_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let gate = Gate::default();
    let worker = gateway
        .worker("many")
        .api_key(ADMIN)
        .unwrap()
        .max_in_flight(8)
        .handler(gate.echo_handler())
        .build()
        .unwrap()
        .spawn();
    let client = admin_client(&gateway).await;
    let chromium = Chromium::launch().await;
    let page = open(&chromium, &gateway, ADMIN).await;
    go(&page, "#/tickets?queue=many").await;
    wait_for(&page, "document.querySelector('table.tickets') !== null").await;

    let mut ids = Vec::new();
    for n in 0..8 {
        let ticket = client
            .submit(Submit::new("many").json(json!({ "n": n })))
            .await
            .unwrap();
        ids.push(ticket.id);
    }
    for _ in 0..8 {
        gate.started().await;
    }
    // All eight in the list, running, without a reload.
    wait_for(&page, &format!("{} === 8", rows("RUNNING", false))).await;
    screenshot(&page, "tickets-running", 1280).await;
    gate.open();
    // Each reaches SUCCEEDED through the page's one WatchTickets stream.
    wait_for(&page, &format!("{} === 8", rows("SUCCEEDED", true))).await;
    for id in &ids {
        assert_eq!(
            finished(&client, id).await.state,
            pb::TicketState::Succeeded as i32
        );
    }
    screenshot(&page, "tickets-done", 1280).await;
    screenshot(&page, "tickets-done", 390).await;

    // A filter by state is a URL that can be shared.
    go(&page, "#/tickets?queue=many&state=FAILED").await;
    wait_for(
        &page,
        "document.querySelector('.notice')?.textContent === 'No ticket matches.'",
    )
    .await;

    // The worker shows in the Workers view, and Drain reaches it: an idle
    // worker told to drain leaves.
    go(&page, "#/workers").await;
    wait_for(&page, "document.querySelector('table.workers') !== null").await;
    screenshot(&page, "workers", 1280).await;
    click(&page, "button.drain").await;
    wait_for(
        &page,
        "document.querySelector('tbody .badge')?.textContent === 'draining'          || document.querySelector('.notice')?.textContent === 'No worker is connected.'",
    )
    .await;
    let listed = client.admin().list_workers(None).await.unwrap();
    assert!(listed.iter().all(|w| w.draining), "{listed:?}");

    // The overview charts the queue.
    go(&page, "#/overview").await;
    wait_for(
        &page,
        "document.querySelectorAll(\"article[data-queue='many'] .uplot\").length === 2",
    )
    .await;
    screenshot(&page, "overview", 1280).await;
    // Dark, when the system asks for it.
    page.execute(
        SetEmulatedMediaParams::builder()
            .features(vec![MediaFeature::new("prefers-color-scheme", "dark")])
            .build(),
    )
    .await
    .unwrap();
    wait_for(
        &page,
        "getComputedStyle(document.documentElement).backgroundColor === 'rgb(21, 23, 27)'",
    )
    .await;
    screenshot(&page, "overview-dark", 1280).await;
    chromium.close().await;
    worker.shutdown();
}

#[tokio::test]
async fn a_failed_ticket_shows_in_the_dead_letter_view_and_retry_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let worker = gateway
        .worker("payments")
        .api_key(ADMIN)
        .unwrap()
        .handler(handler_fn({
            let healthy = healthy.clone();
            move |task: TaskContext| {
                let healthy = healthy.load(Ordering::SeqCst);
                async move {
                    if healthy {
                        Ok(task.payload().clone())
                    } else {
                        Err(TaskError::fatal("card processor answered 503"))
                    }
                }
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let client = admin_client(&gateway).await;
    let ticket = client
        .submit(Submit::new("payments").json(json!({"amount": 5})))
        .await
        .unwrap();
    assert_eq!(
        finished(&client, &ticket.id).await.state,
        pb::TicketState::Failed as i32
    );

    let chromium = Chromium::launch().await;
    let page = open(&chromium, &gateway, ADMIN).await;
    go(&page, "#/dead-letter?queue=payments").await;
    wait_for(
        &page,
        "document.querySelector(\".group[data-count='1'] .error\")?.textContent.includes('503')",
    )
    .await;
    screenshot(&page, "dead-letter", 1280).await;
    healthy.store(true, Ordering::SeqCst);
    click(&page, "button.retry-group").await;
    wait_for(
        &page,
        "document.querySelector('[role=status]')?.textContent === '1 retried'",
    )
    .await;
    assert_eq!(
        finished(&client, &ticket.id).await.state,
        pb::TicketState::Succeeded as i32
    );
    // Its detail shows both runs: the failed attempt and the one that
    // succeeded, each with its worker.
    open_ticket(&page, &ticket.id).await;
    wait_for(
        &page,
        &format!("{} === 'SUCCEEDED'", text_of("[data-testid='state']")),
    )
    .await;
    wait_for(
        &page,
        "document.querySelectorAll('.timeline li[data-attempt]').length === 2",
    )
    .await;
    let first = eval(&page, &text_of(".timeline li[data-attempt].bad")).await;
    assert!(
        first.as_str().unwrap().contains("503"),
        "the failed attempt says why: {first}"
    );
    screenshot(&page, "ticket-retried", 1280).await;
    chromium.close().await;
    worker.shutdown();
}

#[tokio::test]
async fn pause_holds_a_ticket_whose_waiting_reason_says_paused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let worker = gateway
        .worker("held")
        .api_key(ADMIN)
        .unwrap()
        .handler(handler_fn(|task: TaskContext| async move {
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    let client = admin_client(&gateway).await;
    let first = client
        .submit(Submit::new("held").json(json!(1)))
        .await
        .unwrap();
    finished(&client, &first.id).await;

    let chromium = Chromium::launch().await;
    let page = open(&chromium, &gateway, ADMIN).await;
    go(&page, "#/queues").await;
    click(&page, "tr[data-queue='held'] button.pause").await;
    let status = text_of("tr[data-queue='held'] .badge");
    wait_for(&page, &format!("{status} === 'paused by ops'")).await;

    let ticket = client
        .submit(Submit::new("held").json(json!(2)))
        .await
        .unwrap();
    open_ticket(&page, &ticket.id).await;
    wait_for(
        &page,
        &format!("{}?.includes('paused')", text_of("[data-testid='waiting']")),
    )
    .await;
    let held = client.get(&ticket.id, None).await.unwrap();
    assert_eq!(
        (held.state, held.attempt),
        (pb::TicketState::Pending as i32, 0),
        "dispatch stopped"
    );
    screenshot(&page, "paused-ticket", 1280).await;

    // Two more held tickets, cancelled together from the list.
    let mut extra = Vec::new();
    for n in 0..2 {
        let t = client
            .submit(
                Submit::new("held")
                    .json(json!({ "extra": n }))
                    .metadata("batch", "b7"),
            )
            .await
            .unwrap();
        extra.push(t.id);
    }
    go(&page, "#/tickets?queue=held&meta=batch%3Db7").await;
    wait_for(&page, &format!("{} === 2", rows("PENDING", false))).await;
    for id in &extra {
        click(&page, &format!("input[aria-label='Select ticket {id}']")).await;
    }
    click(&page, "button.bulk-cancel").await;
    wait_for(
        &page,
        "document.querySelector('[role=status]')?.textContent === '2 cancelled'",
    )
    .await;
    for id in &extra {
        let t = client.get(id, None).await.unwrap();
        assert_eq!(t.state, pb::TicketState::Cancelled as i32);
        assert!(t.error.unwrap().message.contains("by ops"), "who cancelled");
    }

    // Limits, edited in the Queues view.
    go(&page, "#/queues").await;
    click(&page, "tr[data-queue='held'] button.edit-limits").await;
    let field = "form.limits input[type=number]:nth-of-type(1)";
    wait_for(
        &page,
        &format!("document.querySelector({field:?}) !== null"),
    )
    .await;
    let running = page
        .find_elements("form.limits input[type=number]")
        .await
        .unwrap()
        .remove(2);
    eval(
        &page,
        "document.querySelectorAll('form.limits input')[2].value = ''",
    )
    .await;
    running.click().await.unwrap();
    running.type_str("4").await.unwrap();
    click(&page, "form.limits button[type=submit]").await;
    wait_for(
        &page,
        &format!(
            "{}?.includes('≤ 4 running')",
            text_of("tr[data-queue='held']")
        ),
    )
    .await;
    let limits = client
        .admin()
        .get_queue("held")
        .await
        .unwrap()
        .limits
        .unwrap();
    assert_eq!(limits.max_concurrent, 4);

    // A queue worked by a target shows it, and who set it.
    let target = "grpc://127.0.0.1:9/shop.v1.Orders/Place";
    client
        .admin()
        .set_queue_target("aimed", target)
        .await
        .unwrap();
    wait_for(
        &page,
        &format!(
            "{}?.includes('→ {target} (set by ops)')",
            text_of("tr[data-queue='aimed'] .target")
        ),
    )
    .await;
    // Changed from the page, then taken off.
    click(&page, "tr[data-queue='aimed'] button.edit-target").await;
    let moved = "grpc://127.0.0.1:10/shop.v1.Orders/Place?max_concurrent=2";
    eval(
        &page,
        &format!(
            "(() => {{ const i = document.querySelector('form.target input'); i.value = {moved:?}; i.dispatchEvent(new Event('input', {{ bubbles: true }})); }})()"
        ),
    )
    .await;
    click(&page, "form.target button[type=submit]").await;
    wait_for(
        &page,
        &format!(
            "{}?.includes('→ grpc://127.0.0.1:10/shop.v1.Orders/Place')",
            text_of("tr[data-queue='aimed'] .target")
        ),
    )
    .await;
    let shown = client
        .admin()
        .get_queue("aimed")
        .await
        .unwrap()
        .target
        .unwrap();
    assert_eq!((shown.max_concurrent, shown.set_by.as_str()), (2, "ops"));
    click(&page, "tr[data-queue='aimed'] button.edit-target").await;
    click(&page, "form.target button.take-off").await;
    wait_for(
        &page,
        "document.querySelector(\"tr[data-queue='aimed']\") !== null && document.querySelector(\"tr[data-queue='aimed'] .target\") === null",
    )
    .await;
    assert!(
        client
            .admin()
            .get_queue("aimed")
            .await
            .unwrap()
            .target
            .is_none()
    );

    click(&page, "tr[data-queue='held'] button.resume").await;
    wait_for(&page, &format!("{status} === 'active'")).await;
    assert_eq!(
        finished(&client, &ticket.id).await.state,
        pb::TicketState::Succeeded as i32
    );
    chromium.close().await;
    worker.shutdown();
}

/// Every control that changes something, in any view.
const ACTIONS: &str = "button.pause, button.resume, button.purge, button.edit-limits, \
     .bulk button, input[type=checkbox], button.cancel, button.retry, button.delete, \
     button.drain, button.retry-group, button.retry-callback";

#[tokio::test]
async fn a_viewer_sees_no_action_anywhere_and_a_forged_call_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&dir).await;
    let worker = gateway
        .worker("jobs")
        .api_key(ADMIN)
        .unwrap()
        .handler(handler_fn(|task: TaskContext| async move {
            if task.json().is_some_and(|v| v == json!("fail")) {
                Err(TaskError::fatal("no such customer"))
            } else {
                Ok(asyncgate_tests::json(json!({"secret": "s3cr3t"})))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let client = admin_client(&gateway).await;
    let ok = client
        .submit(Submit::new("jobs").json(json!("ok")))
        .await
        .unwrap();
    let failed = client
        .submit(Submit::new("jobs").json(json!("fail")))
        .await
        .unwrap();
    finished(&client, &ok.id).await;
    finished(&client, &failed.id).await;
    // A pending ticket a viewer might want to cancel.
    let pending = client
        .submit(Submit::new("no-workers").json(json!({})))
        .await
        .unwrap();

    let chromium = Chromium::launch().await;
    let page = open(&chromium, &gateway, VIEWER).await;
    for (hash, loaded) in [
        ("#/overview", "document.querySelector('.card') !== null"),
        (
            "#/queues",
            "document.querySelector('table.queues') !== null",
        ),
        (
            "#/tickets",
            "document.querySelectorAll('table.tickets tbody tr').length === 3",
        ),
        (
            "#/workers",
            "document.querySelector('table.workers') !== null",
        ),
        ("#/dead-letter", "document.querySelector('.group') !== null"),
    ] {
        go(&page, hash).await;
        wait_for(&page, loaded).await;
        assert_eq!(
            eval(
                &page,
                &format!("document.querySelectorAll({ACTIONS:?}).length")
            )
            .await,
            json!(0),
            "{hash}: a viewer sees no action"
        );
    }
    for id in [&pending.id, &failed.id, &ok.id] {
        open_ticket(&page, id).await;
        wait_for(&page, "document.querySelector('.timeline') !== null").await;
        assert_eq!(
            eval(
                &page,
                &format!("document.querySelectorAll({ACTIONS:?}).length")
            )
            .await,
            json!(0),
            "ticket {id}: a viewer sees no cancel, retry or delete"
        );
    }
    // The succeeded ticket's result is not shown to this key.
    wait_for(
        &page,
        "document.body.innerText.includes('may not see payloads')",
    )
    .await;
    assert_eq!(
        eval(&page, "document.body.innerText.includes('s3cr3t')").await,
        json!(false)
    );
    screenshot(&page, "viewer-ticket-hidden", 390).await;

    // A forged PauseQueue from the viewer's page, with the viewer's key, as
    // gRPC-Web: refused with PERMISSION_DENIED (7); the queue runs on.
    let status = eval(
        &page,
        r#"(async () => {
            const body = new Uint8Array([0, 0, 0, 0, 6, 0x0a, 0x04, 0x6a, 0x6f, 0x62, 0x73]);
            const r = await fetch("/asyncgate.v1.Admin/PauseQueue", {
                method: "POST",
                headers: {
                    "content-type": "application/grpc-web+proto",
                    "x-grpc-web": "1",
                    authorization: "Bearer " + sessionStorage.getItem("asyncgate.apiKey"),
                },
                body,
            });
            return r.headers.get("grpc-status") ?? new TextDecoder().decode(await r.arrayBuffer());
        })()"#,
    )
    .await;
    assert!(
        status.as_str().unwrap().contains('7'),
        "PERMISSION_DENIED: {status}"
    );
    let queue = client.admin().get_queue("jobs").await.unwrap();
    assert!(queue.pause.is_none(), "the forged pause did nothing");
    chromium.close().await;
    worker.shutdown();
}

#[tokio::test]
async fn over_tls_the_page_speaks_http2_and_follows_tickets() {
    let pki = TestPki::generate();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        dashboard: true,
        tls: Some(pki.server_files(false)),
        ..fast_config()
    })
    .await;
    assert!(gateway.url().starts_with("https://"));
    let worker = gateway
        .worker("secure")
        .tls(pki.client_tls(false))
        .handler(handler_fn(|task: TaskContext| async move {
            Ok(task.payload().clone())
        }))
        .build()
        .unwrap()
        .spawn();
    let client = Client::connect_with_tls(gateway.url(), &pki.client_tls(false))
        .await
        .unwrap();
    // The test's CA is not in the browser's store: certificate errors are
    // waved through for this browser only (DevTools' Security domain).
    let chromium = Chromium::launch().await;
    let page = chromium.browser.new_page("about:blank").await.unwrap();
    page.execute(SetIgnoreCertificateErrorsParams::new(true))
        .await
        .unwrap();
    page.goto(format!("{}/dashboard/", gateway.url()))
        .await
        .unwrap();
    // No keys file: the empty key logs in as the anonymous admin.
    log_in(&page, "").await;
    assert_eq!(
        eval(
            &page,
            "performance.getEntriesByType('navigation')[0].nextHopProtocol"
        )
        .await,
        json!("h2")
    );
    go(&page, "#/tickets?queue=secure").await;
    wait_for(&page, "document.querySelector('table.tickets') !== null").await;
    let ticket = client
        .submit(Submit::new("secure").json(json!({"tls": true})))
        .await
        .unwrap();
    finished(&client, &ticket.id).await;
    wait_for(&page, &format!("{} === 1", rows("SUCCEEDED", false))).await;
    // The API calls went over HTTP/2 too.
    let protocols = eval(
        &page,
        "[...new Set(performance.getEntriesByType('resource')\
            .filter((e) => e.name.includes('/asyncgate.v1.'))\
            .map((e) => e.nextHopProtocol))]",
    )
    .await;
    assert_eq!(protocols, json!(["h2"]));
    screenshot(&page, "tls-tickets", 1280).await;
    chromium.close().await;
    worker.shutdown();
}

#[tokio::test]
async fn a_given_up_callback_is_listed_and_sent_again_from_the_page() {
    use asyncgate_server::callbacks::{CallbackSettings, parse_allowed, parse_secret};
    use asyncgate_tests::webhooks::WebhookReceiver;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = WebhookReceiver::start(&[SECRET]).await;
    receiver.answer_next(1, 410);
    let mut config = fast_config();
    config.dashboard = true;
    config.callbacks = CallbackSettings {
        allow: vec![parse_allowed("127.0.0.1").unwrap()],
        allow_http: true,
        secrets: vec![parse_secret(SECRET).unwrap()],
        ..CallbackSettings::default()
    };
    let gateway = TestGateway::start_with(config).await;
    let client = gateway.client().await;
    let ticket = client
        .submit(Submit::new("hooks").callback(receiver.url("/done")))
        .await
        .unwrap();
    client.cancel(&ticket.id, "").await.unwrap();
    receiver.wait_until(|d| d.len() == 1).await;

    let chromium = Chromium::launch().await;
    let page = open(&chromium, &gateway, "").await;
    // Listed by its callback's state (the record follows the 410 closely).
    go(&page, "#/tickets?callback=GAVE_UP").await;
    wait_for(
        &page,
        &format!(
            "document.querySelector(\"tr[data-ticket='{}']\") !== null",
            ticket.id
        ),
    )
    .await;
    open_ticket(&page, &ticket.id).await;
    wait_for(
        &page,
        "document.querySelector(\"[data-callback='GAVE_UP']\") !== null",
    )
    .await;
    assert!(
        eval(&page, &text_of("[data-callback='GAVE_UP']"))
            .await
            .as_str()
            .unwrap()
            .contains("410")
    );
    screenshot(&page, "callback-gave-up", 1280).await;
    click(&page, "button.retry-callback").await;
    wait_for(
        &page,
        "document.querySelector(\"[data-callback='PENDING']\") !== null",
    )
    .await;
    let seen = receiver
        .wait_until(|d| d.iter().any(|d| d.status == 200))
        .await;
    assert_eq!(seen[0].webhook_id, seen[1].webhook_id, "the same delivery");
    chromium.close().await;
}
