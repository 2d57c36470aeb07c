//! Conformance cases of listing tickets and of tenants: filters, pages,
//! and the scoping of lists and idempotency keys per tenant.

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
        })
        .await
        .unwrap();
    assert_eq!(cancelled.tickets.len(), 1);
    assert!(cancelled.next.is_none());
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
