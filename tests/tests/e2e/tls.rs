//! TLS and mutual TLS: certificates generated per test with rcgen.

use asyncgate_client::worker::{TaskContext, handler_fn};
use asyncgate_client::{Client, Submit, payload, pb};
use asyncgate_tests::{TestGateway, TestPki, fast_config, finished, json, state};

async fn gateway(pki: &TestPki, mutual: bool) -> TestGateway {
    TestGateway::start_with(asyncgate_server::Config {
        tls: Some(pki.server_files(mutual)),
        ..fast_config()
    })
    .await
}

#[tokio::test]
async fn clients_and_workers_speak_tls_with_a_private_ca() {
    let pki = TestPki::generate();
    let gateway = gateway(&pki, false).await;
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
        .expect("the CA makes the gateway trusted");
    let ticket = client
        .submit(
            Submit::new("secure")
                .payload(payload::json("sealed".into()))
                .build(),
        )
        .await
        .unwrap();
    let done = finished(&client, &ticket.id).await;
    assert_eq!(state(&done), pb::TicketState::Succeeded);
    assert_eq!(done.result, Some(json("sealed".into())));

    // The system roots do not know this CA, and plaintext is not served.
    assert!(Client::connect(gateway.url()).await.is_err());
    let plaintext = gateway.url().replace("https://", "http://");
    let refused = match Client::connect(plaintext).await {
        Ok(client) => client.get(&ticket.id, None).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plaintext client gets nothing");
    worker.shutdown();
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = TestPki::generate();
    let gateway = gateway(&pki, true).await;
    let anonymous = match Client::connect_with_tls(gateway.url(), &pki.client_tls(false)).await {
        Ok(client) => client
            .list(pb::ListTicketsRequest::default())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "no client certificate, no service");

    let client = Client::connect_with_tls(gateway.url(), &pki.client_tls(true))
        .await
        .expect("a certificate of the CA is accepted");
    let worker = gateway
        .worker("mutual")
        .tls(pki.client_tls(true))
        .handler(handler_fn(|_task: TaskContext| async move {
            Ok(payload::json("ok".into()))
        }))
        .build()
        .unwrap()
        .spawn();
    let ticket = client.submit(Submit::new("mutual").build()).await.unwrap();
    assert_eq!(
        state(&finished(&client, &ticket.id).await),
        pb::TicketState::Succeeded
    );
    worker.shutdown();
}
