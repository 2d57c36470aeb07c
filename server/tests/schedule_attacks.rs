//! A hostile tenant against schedules, on the real binary: it cannot keep
//! more schedules than `--max-schedules-per-tenant` (RESOURCE_EXHAUSTED,
//! naming the flag), nor a template over the payload limit; the other
//! tenant still creates its own, and the gateway's memory stays bounded.

use asyncgate_client::{Client, Submit, pb};
use tonic::Code;

mod common;
use common::{every_second, free_port, rss, start_server, tenant_keys, wait_until_serving};

fn daily(id: &str) -> pb::Schedule {
    pb::Schedule {
        spec: Some(pb::ScheduleSpec {
            every: Some(pb::schedule_spec::Every::Cron("0 3 * * *".into())),
            ..Default::default()
        }),
        ..every_second(id, "emails")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_keep_more_schedules_than_its_cap() {
    const CAP: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let keys = tenant_keys(dir.path());
    let port = free_port();
    let cap = CAP.to_string();
    let server = start_server(
        "memory",
        port,
        &[
            "--keys",
            keys.to_str().unwrap(),
            "--max-schedules-per-tenant",
            &cap,
            "--max-payload-bytes",
            "4096",
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let attacker = Client::connect_lazy(url.clone())
        .unwrap()
        .with_api_key("t1-app-secret")
        .unwrap();
    let other = Client::connect_lazy(url)
        .unwrap()
        .with_api_key("t2-app-secret")
        .unwrap();
    wait_until_serving(&attacker).await;
    let pid = server.id().expect("the server runs");
    let before = rss(pid);
    for i in 0..CAP {
        attacker
            .schedules()
            .create(daily(&format!("s{i}")))
            .await
            .unwrap();
    }
    // Past the cap, and again: refused every time, naming the flag.
    for i in 0..20 {
        let error = attacker
            .schedules()
            .create(daily(&format!("over{i}")))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
        assert!(
            error.to_string().contains("--max-schedules-per-tenant"),
            "{error}"
        );
    }
    // A template over the payload limit is refused before it is stored.
    let mut huge = daily("huge");
    huge.ticket = Some(
        Submit::new("emails")
            .binary(vec![7u8; 64 * 1024], "application/octet-stream")
            .build(),
    );
    let error = other.schedules().create(huge).await.unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error}");
    assert!(
        error.to_string().contains("schedule.ticket.payload"),
        "{error}"
    );
    // The other tenant is not held back by the first one's cap.
    other.schedules().create(daily("mine")).await.unwrap();
    assert_eq!(other.schedules().list().await.unwrap().len(), 1);
    assert_eq!(attacker.schedules().list().await.unwrap().len(), CAP);
    let grown = rss(pid).saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "the gateway grew {grown} bytes");
}
