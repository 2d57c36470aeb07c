//! `google.longrunning.Operations` over tickets: the operation of each state,
//! paging and filters, cancel and wait, bad names, and tenant isolation.

use std::time::Duration;

use asyncgate_client::worker::{TaskContext, TaskError, handler_fn};
use asyncgate_client::{Client, Credentials, Submit, Transport, pb};
use asyncgate_proto::longrunning as lro;
use asyncgate_server::auth::digest_hex;
use asyncgate_tests::{Gate, TestGateway, as_json, fast_config};
use lro::operations_client::OperationsClient;
use tokio::time::Instant;

type Operations = OperationsClient<Transport>;

/// An Operations client of `gateway`, presenting `key` when given.
async fn operations(gateway: &TestGateway, key: Option<&str>) -> Operations {
    let channel = asyncgate_client::endpoint(gateway.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let credentials = key
        .map(|key| Credentials::api_key(key).unwrap())
        .unwrap_or_default();
    OperationsClient::with_interceptor(channel, credentials)
}

fn name(ticket: &pb::Ticket) -> String {
    format!("operations/{}", ticket.id)
}

async fn get(client: &mut Operations, name: &str) -> Result<lro::Operation, tonic::Status> {
    client
        .get_operation(lro::GetOperationRequest { name: name.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn wait(
    client: &mut Operations,
    name: &str,
    timeout: Duration,
) -> Result<lro::Operation, tonic::Status> {
    client
        .wait_operation(lro::WaitOperationRequest {
            name: name.into(),
            timeout: Some(timeout.try_into().unwrap()),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn cancel(client: &mut Operations, name: &str) -> Result<(), tonic::Status> {
    client
        .cancel_operation(lro::CancelOperationRequest { name: name.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn list(
    client: &mut Operations,
    filter: &str,
    page_size: i32,
    page_token: &str,
) -> Result<lro::ListOperationsResponse, tonic::Status> {
    client
        .list_operations(lro::ListOperationsRequest {
            name: "operations".into(),
            filter: filter.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The ticket snapshot an operation carries as metadata.
fn snapshot(operation: &lro::Operation) -> pb::Ticket {
    let metadata = operation.metadata.as_ref().expect("metadata is set");
    assert_eq!(metadata.type_url, "type.googleapis.com/asyncgate.v1.Ticket");
    metadata.to_msg().expect("metadata is a Ticket")
}

fn ticket_state(operation: &lro::Operation) -> pb::TicketState {
    pb::TicketState::try_from(snapshot(operation).state).unwrap()
}

/// The (code, message) of a done operation's error.
fn error(operation: &lro::Operation) -> (tonic::Code, String) {
    assert!(operation.done);
    match &operation.result {
        Some(lro::operation::Result::Error(status)) => {
            (tonic::Code::from_i32(status.code), status.message.clone())
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_operation_follows_its_ticket_to_the_result() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ops = operations(&gateway, None).await;
    let gate = Gate::default();
    let held = gate.clone();
    let worker = gateway.spawn_worker(
        "lro-upper",
        handler_fn(move |task: TaskContext| {
            let gate = held.clone();
            async move {
                gate.enter().await;
                let text = task.json().and_then(|v| v.as_str().map(str::to_uppercase));
                Ok(asyncgate_client::payload::json(
                    text.unwrap_or_default().into(),
                ))
            }
        }),
    );
    let ticket = client
        .submit(Submit::new("lro-upper").json("hello".into()).build())
        .await
        .unwrap();
    gate.started().await;

    let running = get(&mut ops, &name(&ticket)).await.unwrap();
    assert_eq!(running.name, name(&ticket));
    assert!(!running.done);
    assert!(running.result.is_none());
    assert_eq!(ticket_state(&running), pb::TicketState::Running);
    assert_eq!(snapshot(&running).attempt, 1);

    // Not done within its timeout: the wait ends then, not done, and no error.
    let started = Instant::now();
    let waited = wait(&mut ops, &name(&ticket), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(!waited.done);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // No timeout, but a 2 s call deadline: the wait ends just before it, with
    // the operation rather than DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(lro::WaitOperationRequest {
        name: name(&ticket),
        timeout: None,
    });
    request.set_timeout(Duration::from_secs(2));
    let capped = ops.wait_operation(request).await.unwrap().into_inner();
    assert!(!capped.done);

    // A wait in progress returns as soon as the result lands.
    let mut waiter = ops.clone();
    let waiting = {
        let name = name(&ticket);
        tokio::spawn(async move { wait(&mut waiter, &name, Duration::from_secs(30)).await })
    };
    let started = Instant::now();
    gate.open();
    let done = waiting.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(done.done);
    let Some(lro::operation::Result::Response(response)) = &done.result else {
        panic!("expected a response, got {:?}", done.result);
    };
    assert_eq!(
        response.type_url,
        "type.googleapis.com/asyncgate.v1.Payload"
    );
    let payload: pb::Payload = response.to_msg().unwrap();
    assert_eq!(as_json(Some(&payload)), serde_json::json!("HELLO"));
    // The snapshot shows the state; the result travels once, in `response`.
    let after = snapshot(&done);
    assert_eq!(
        pb::TicketState::try_from(after.state).unwrap(),
        pb::TicketState::Succeeded
    );
    assert_eq!(after.result, None);
    assert_eq!(get(&mut ops, &name(&ticket)).await.unwrap(), done);

    // A succeeded operation cannot be cancelled.
    let refused = cancel(&mut ops, &name(&ticket)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    worker.shutdown();
    worker.join().await;
}

#[tokio::test]
async fn failed_cancelled_and_expired_tickets_are_errors() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ops = operations(&gateway, None).await;
    let worker = gateway.spawn_worker(
        "lro-fail",
        handler_fn(|_task: TaskContext| async move {
            Err::<pb::Payload, _>(
                TaskError::fatal("the input is not a number")
                    .with_code(tonic::Code::InvalidArgument),
            )
        }),
    );
    let failing = client
        .submit(Submit::new("lro-fail").build())
        .await
        .unwrap();
    let failed = wait(&mut ops, &name(&failing), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        error(&failed),
        (
            tonic::Code::InvalidArgument,
            "the input is not a number".into()
        )
    );
    assert_eq!(ticket_state(&failed), pb::TicketState::Failed);

    // Cancel reaches a pending ticket (no worker serves its queue).
    let pending = client
        .submit(Submit::new("lro-nobody").build())
        .await
        .unwrap();
    assert!(!get(&mut ops, &name(&pending)).await.unwrap().done);
    cancel(&mut ops, &name(&pending)).await.unwrap();
    let cancelled = get(&mut ops, &name(&pending)).await.unwrap();
    let (code, message) = error(&cancelled);
    assert_eq!(code, tonic::Code::Cancelled);
    assert!(message.contains("CancelOperation"), "{message}");
    assert_eq!(ticket_state(&cancelled), pb::TicketState::Cancelled);
    // Cancelling again is not an error.
    cancel(&mut ops, &name(&pending)).await.unwrap();
    assert_eq!(
        client.get(&pending.id, None).await.unwrap().state,
        pb::TicketState::Cancelled as i32
    );

    let expiring = client
        .submit(
            Submit::new("lro-nobody")
                .timeout(Duration::from_millis(100))
                .build(),
        )
        .await
        .unwrap();
    let expired = wait(&mut ops, &name(&expiring), Duration::from_secs(10))
        .await
        .unwrap();
    let (code, message) = error(&expired);
    assert_eq!(code, tonic::Code::DeadlineExceeded);
    assert!(message.contains("timed out"), "{message}");
    worker.shutdown();
    worker.join().await;
}

#[tokio::test]
async fn list_pages_and_filters() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ops = operations(&gateway, None).await;
    let mut submitted = Vec::new();
    for _ in 0..5 {
        let ticket = client
            .submit(Submit::new("lro-list").build())
            .await
            .unwrap();
        submitted.push(name(&ticket));
    }
    let other = client
        .submit(Submit::new("lro-other").build())
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&mut ops, "queue = \"lro-list\"", 2, &token)
            .await
            .unwrap();
        assert!(page.operations.len() <= 2);
        seen.extend(page.operations.iter().map(|op| op.name.clone()));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, submitted, "every operation once, in creation order");
    assert!(pages >= 3);

    // An empty name is the collection too, and no filter lists every queue.
    let everything = ops
        .list_operations(lro::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.operations.len(), 6);
    assert!(
        everything
            .operations
            .iter()
            .any(|op| op.name == name(&other))
    );

    cancel(&mut ops, &submitted[1]).await.unwrap();
    let done = list(&mut ops, "done = true AND queue = \"lro-list\"", 0, "")
        .await
        .unwrap();
    assert_eq!(
        done.operations
            .iter()
            .map(|op| op.name.as_str())
            .collect::<Vec<_>>(),
        [submitted[1].as_str()]
    );
    let open = list(&mut ops, "done = false", 0, "").await.unwrap();
    assert_eq!(open.operations.len(), 5);
    let cancelled = list(&mut ops, "state = CANCELLED", 0, "").await.unwrap();
    assert_eq!(cancelled.operations.len(), 1);
    let contradiction = list(&mut ops, "done = true AND state = PENDING", 0, "")
        .await
        .unwrap();
    assert!(contradiction.operations.is_empty());

    for (filter, page_size, token) in [
        ("metadata.queue = \"x\"", 0, ""),
        ("done = maybe", 0, ""),
        ("", -1, ""),
        ("", 5000, ""),
        ("", 0, "not-a-token"),
    ] {
        let refused = list(&mut ops, filter, page_size, token).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{filter}");
    }
    let refused = list(&mut ops, "done = maybe", 0, "").await.unwrap_err();
    assert!(
        refused.message().contains("supported syntax")
            && refused.message().contains("done = true|false"),
        "{}",
        refused.message()
    );
    let refused = ops
        .list_operations(lro::ListOperationsRequest {
            name: "projects/p/operations".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("\"operations\""),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn bad_names_unknown_operations_and_delete() {
    let gateway = TestGateway::start().await;
    let client = gateway.client().await;
    let mut ops = operations(&gateway, None).await;
    let ticket = client
        .submit(Submit::new("lro-names").build())
        .await
        .unwrap();
    for bad in ["", "tickets/abc", ticket.id.as_str(), "operations/abc"] {
        for refused in [
            get(&mut ops, bad).await.unwrap_err(),
            wait(&mut ops, bad, Duration::ZERO).await.unwrap_err(),
            cancel(&mut ops, bad).await.unwrap_err(),
        ] {
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(
                refused.message().contains("operations/{ticket id}"),
                "{bad:?}: {}",
                refused.message()
            );
        }
    }
    let unknown = format!("operations/{}", uuid::Uuid::now_v7());
    assert_eq!(
        get(&mut ops, &unknown).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        cancel(&mut ops, &unknown).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let negative = ops
        .wait_operation(lro::WaitOperationRequest {
            name: name(&ticket),
            timeout: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), tonic::Code::InvalidArgument);

    let deleted = ops
        .delete_operation(lro::DeleteOperationRequest {
            name: name(&ticket),
        })
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), tonic::Code::Unimplemented);
    assert!(
        deleted.message().contains("CancelOperation"),
        "{}",
        deleted.message()
    );
    // Delete changed nothing.
    assert!(!get(&mut ops, &name(&ticket)).await.unwrap().done);
}

const ALICE: &str = "alice-operations-key";
const BOB: &str = "bob-operations-key";
const WORKER: &str = "worker-operations-key";

#[tokio::test]
async fn tenants_see_only_their_own_operations() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"alice\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"a\"\n\n\
             [[keys]]\nname = \"bob\"\nsha256 = \"{}\"\nrole = \"client\"\ntenant = \"b\"\n\n\
             [[keys]]\nname = \"w\"\nsha256 = \"{}\"\nrole = \"worker\"\nqueues = [\"jobs\"]\n",
            digest_hex(ALICE),
            digest_hex(BOB),
            digest_hex(WORKER),
        ),
    )
    .unwrap();
    let gateway = TestGateway::start_with(asyncgate_server::Config {
        keys: Some(keys),
        ..fast_config()
    })
    .await;
    let alice: Client = gateway.client().await.with_api_key(ALICE).unwrap();
    let mine = alice.submit(Submit::new("jobs").build()).await.unwrap();
    let (mut as_alice, mut as_bob) = (
        operations(&gateway, Some(ALICE)).await,
        operations(&gateway, Some(BOB)).await,
    );
    assert!(!get(&mut as_alice, &name(&mine)).await.unwrap().done);

    let absent = format!("operations/{}", uuid::Uuid::now_v7());
    let not_found = get(&mut as_bob, &absent).await.unwrap_err();
    for refused in [
        get(&mut as_bob, &name(&mine)).await.unwrap_err(),
        wait(&mut as_bob, &name(&mine), Duration::from_millis(100))
            .await
            .unwrap_err(),
        cancel(&mut as_bob, &name(&mine)).await.unwrap_err(),
    ] {
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert_eq!(
            refused.message().replace(&mine.id, "ID"),
            not_found
                .message()
                .replace(absent.trim_start_matches("operations/"), "ID"),
            "indistinguishable from an operation that does not exist"
        );
    }
    assert!(
        list(&mut as_bob, "", 0, "")
            .await
            .unwrap()
            .operations
            .is_empty()
    );
    assert_eq!(
        list(&mut as_alice, "", 0, "")
            .await
            .unwrap()
            .operations
            .len(),
        1
    );
    // Bob's cancel did not reach it.
    assert!(!get(&mut as_alice, &name(&mine)).await.unwrap().done);

    // A client key is needed, as for the Gateway service.
    let mut as_worker = operations(&gateway, Some(WORKER)).await;
    assert_eq!(
        get(&mut as_worker, &name(&mine)).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let mut anonymous = operations(&gateway, None).await;
    assert_eq!(
        get(&mut anonymous, &name(&mine)).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}
