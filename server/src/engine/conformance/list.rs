//! Conformance cases of listing tickets and of tenants: filters (queue,
//! state, metadata, creation time), pages in either order, and the scoping
//! of lists and idempotency keys per tenant.

use super::*;

pub(crate) async fn list_filters_and_pages(factory: Factory) {
    let h = harness(factory).await;
    // An empty store lists nothing, and its timer pass has nothing to do.
    let empty = h
        .engine
        .list(ListFilter {
            queue: None,
            states: Vec::new(),
            page_size: 10,
            after: None,
            tenant: None,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(empty.tickets.is_empty() && empty.next.is_none());
    h.engine.run_timers(SystemTime::now()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let q = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(h.engine.submit(new_ticket(q)).await.unwrap().ticket.id);
    }
    h.engine.cancel(ids[2], "").await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = h
            .engine
            .list(ListFilter {
                queue: Some(queue("even")),
                states: vec![TicketState::Pending],
                page_size: 2,
                after,
                tenant: None,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        seen.extend(page.tickets.iter().map(|t| t.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, vec![ids[0], ids[4], ids[6]]);
    let cancelled = h
        .engine
        .list(ListFilter {
            queue: None,
            states: vec![TicketState::Cancelled],
            page_size: 10,
            after: None,
            tenant: None,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.tickets.len(), 1);
    assert!(cancelled.next.is_none());
}

/// Every page of `filter`'s listing, `page_size` tickets at a time: the
/// ids in the order listed. Each page is full except the last, and the
/// last says there is no next one.
async fn every_page(engine: &Arc<dyn Engine>, filter: ListFilter) -> Vec<TicketId> {
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..50 {
        let page = engine
            .list(ListFilter {
                after,
                ..filter.clone()
            })
            .await
            .unwrap();
        seen.extend(page.tickets.iter().map(|t| t.id));
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.tickets.len(),
                    filter.page_size,
                    "only the last page is short"
                );
                assert_eq!(page.tickets.last().map(|t| t.id), Some(next));
                after = Some(next);
            }
            None => return seen,
        }
    }
    panic!("the listing never ended: {seen:?}");
}

/// Nine tickets, submitted one after another over two queues, read back:
/// (tenant, metadata) as the table in the body says.
async fn labelled_tickets(engine: &Arc<dyn Engine>) -> Vec<Ticket> {
    let specs: [(&str, &[(&str, &str)]); 9] = [
        ("a", &[("team", "x"), ("env", "prod")]),
        ("a", &[("team", "x")]),
        ("b", &[("team", "x"), ("env", "prod")]),
        ("a", &[("team", "y"), ("env", "prod")]),
        ("a", &[("team", "x"), ("env", "prod")]),
        ("a", &[]),
        ("a", &[("team", "x"), ("env", "prod"), ("extra", "1")]),
        ("a", &[("team", "x"), ("env", "dev")]),
        ("a", &[("team", "x"), ("env", "prod")]),
    ];
    let mut tickets: Vec<Ticket> = Vec::new();
    for (i, (tenant, labels)) in specs.into_iter().enumerate() {
        let new = NewTicket {
            metadata: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tenant: Some(tenant.into()),
            ..new_ticket(if i % 2 == 0 { "left" } else { "right" })
        };
        let id = engine.submit(new).await.unwrap().ticket.id;
        tickets.push(engine.get(id).await.unwrap());
    }
    assert!(
        tickets
            .windows(2)
            .all(|w| w[0].created_at < w[1].created_at),
        "tickets submitted one after another are created in that order"
    );
    tickets
}

pub(crate) async fn list_metadata_time_and_newest_first(factory: Factory) {
    let h = harness(factory).await;
    let t = labelled_tickets(&h.engine).await;
    let ids = |indexes: &[usize]| -> Vec<TicketId> { indexes.iter().map(|&i| t[i].id).collect() };
    let prod_x = vec![
        ("env".to_owned(), "prod".to_owned()),
        ("team".to_owned(), "x".to_owned()),
    ];
    let filter = ListFilter {
        page_size: 2,
        ..ListFilter::default()
    };

    // Every metadata entry must match; extra entries do not matter; the
    // tenant filter still applies (ticket 2 is tenant b's).
    let tenant_a = ListFilter {
        tenant: Some("a".into()),
        metadata: prod_x.clone(),
        ..filter.clone()
    };
    assert_eq!(
        every_page(&h.engine, tenant_a.clone()).await,
        ids(&[0, 4, 6, 8])
    );
    let newest = ListFilter {
        newest_first: true,
        ..tenant_a
    };
    assert_eq!(every_page(&h.engine, newest).await, ids(&[8, 6, 4, 0]));
    let everyone = ListFilter {
        metadata: prod_x,
        newest_first: true,
        ..filter.clone()
    };
    assert_eq!(every_page(&h.engine, everyone).await, ids(&[8, 6, 4, 2, 0]));
    let dev = ListFilter {
        metadata: vec![("env".into(), "dev".into())],
        ..filter.clone()
    };
    assert_eq!(every_page(&h.engine, dev).await, ids(&[7]));

    // created_after is inclusive, created_before exclusive.
    let window = ListFilter {
        created_after: Some(t[2].created_at),
        created_before: Some(t[7].created_at),
        ..filter.clone()
    };
    assert_eq!(
        every_page(&h.engine, window.clone()).await,
        ids(&[2, 3, 4, 5, 6])
    );
    let window_newest = ListFilter {
        newest_first: true,
        ..window
    };
    assert_eq!(
        every_page(&h.engine, window_newest).await,
        ids(&[6, 5, 4, 3, 2])
    );
    let since = ListFilter {
        created_after: Some(t[8].created_at),
        ..filter.clone()
    };
    assert_eq!(every_page(&h.engine, since).await, ids(&[8]));
    let before_all = ListFilter {
        created_before: Some(t[0].created_at),
        newest_first: true,
        ..filter.clone()
    };
    assert!(every_page(&h.engine, before_all).await.is_empty());

    // All filters together, newest first, on one queue.
    let combined = ListFilter {
        queue: Some(queue("left")),
        tenant: Some("a".into()),
        metadata: vec![("team".into(), "x".into())],
        created_after: Some(t[1].created_at),
        newest_first: true,
        ..filter.clone()
    };
    assert_eq!(every_page(&h.engine, combined).await, ids(&[8, 6, 4]));

    // Newest first through the whole store, two at a time: no ticket
    // repeated or skipped across pages and queues.
    let all = ListFilter {
        newest_first: true,
        ..filter
    };
    assert_eq!(
        every_page(&h.engine, all).await,
        ids(&[8, 7, 6, 5, 4, 3, 2, 1, 0])
    );
}

pub(crate) async fn tenants_scope_idempotency_and_lists(factory: Factory) {
    let h = harness(factory).await;
    let keyed = |tenant: &str| NewTicket {
        idempotency_key: Some("same-key".into()),
        tenant: Some(tenant.into()),
        ..new_ticket("q")
    };
    let a = h.engine.submit(keyed("a")).await.unwrap();
    let b = h.engine.submit(keyed("b")).await.unwrap();
    assert!(a.created && b.created, "one key, two tenants, two tickets");
    assert_ne!(a.ticket.id, b.ticket.id);
    let again = h.engine.submit(keyed("a")).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.ticket.id, a.ticket.id);
    assert_eq!(
        h.engine.get(a.ticket.id).await.unwrap().tenant.as_deref(),
        Some("a")
    );
    let page = h
        .engine
        .list(ListFilter {
            queue: None,
            states: Vec::new(),
            page_size: 10,
            after: None,
            tenant: Some("b".into()),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<TicketId> = page.tickets.iter().map(|t| t.id).collect();
    assert_eq!(ids, [b.ticket.id]);
}

/// An admin's key (no tenant) that spells out a tenant's scope and
/// separator stays its own key: scoping must be injective, or an admin's
/// submit could return (or be swallowed by) a tenant's ticket.
pub(crate) async fn idempotency_scopes_do_not_collide(factory: Factory) {
    let h = harness(factory).await;
    let admin = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("t1\u{1f}k".into()),
            tenant: None,
            ..new_ticket("q")
        })
        .await
        .unwrap();
    let tenant = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("k".into()),
            tenant: Some("t1".into()),
            ..new_ticket("q")
        })
        .await
        .unwrap();
    assert!(admin.created && tenant.created, "two scopes, two tickets");
    assert_ne!(admin.ticket.id, tenant.ticket.id);
    // The same shape through the new encoding's own separator.
    let colon = h
        .engine
        .submit(NewTicket {
            idempotency_key: Some("2:t1:k".into()),
            tenant: None,
            ..new_ticket("q")
        })
        .await
        .unwrap();
    assert!(colon.created, "an admin key shaped like a tenant's scope");
    assert_ne!(colon.ticket.id, tenant.ticket.id);
    assert_ne!(colon.ticket.id, admin.ticket.id);
}
