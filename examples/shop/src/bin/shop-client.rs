//! `shop-client`: the shop's front end. Lists the products (calling
//! `Catalog` directly: it is fast), builds a cart, then submits the
//! inventory check and the order to Asyncgate, which answers each with a
//! ticket at once while the slow services work. It follows both tickets to
//! their end, printing each change, and decodes the results: the bytes of a
//! `CheckResponse` and of a `PlaceOrderResponse`, as the services replied.
//! Exits with 1 when the order was not placed.

use std::process::ExitCode;

use anyhow::Context as _;
use asyncgate_client::{Client, Submit, is_terminal, pb as gate};
use asyncgate_example_shop::{dollars, pb};
use clap::Parser;
use futures::StreamExt as _;
use tokio::time::Instant;

/// Places an order through Asyncgate and follows it to its result.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The gateway's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    gateway: String,
    /// The Catalog service's URL (called directly).
    #[arg(long, default_value = "http://127.0.0.1:50061")]
    catalog: String,
    /// Who orders.
    #[arg(long, default_value = "alice")]
    customer: String,
    /// A cart item, `SKU=QUANTITY`; repeat for several (default: 2 ×
    /// espresso-beans and 1 × burr-grinder).
    #[arg(long = "item", value_name = "SKU=QUANTITY", value_parser = parse_item)]
    items: Vec<pb::CartItem>,
    /// Order an empty cart (the order service refuses it).
    #[arg(long, conflicts_with = "items")]
    empty_cart: bool,
    /// Have the gateway deliver the order's outcome here when it ends (a
    /// completion callback), e.g. the notifications endpoint of
    /// `shop-services`: http://127.0.0.1:50064/notifications.
    #[arg(long, value_name = "URL")]
    notify: Option<String>,
}

fn parse_item(text: &str) -> Result<pb::CartItem, String> {
    let (sku, quantity) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give SKU=QUANTITY, e.g. stoneware-mug=2"))?;
    Ok(pb::CartItem {
        sku: sku.to_owned(),
        quantity: quantity
            .parse()
            .map_err(|_| format!("{text:?}: the quantity is a whole number"))?,
    })
}

/// The queue names of `gateway.toml`'s targets.
const INVENTORY_QUEUE: &str = "inventory";
const ORDERS_QUEUE: &str = "orders";

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let items = if args.empty_cart {
        Vec::new()
    } else if args.items.is_empty() {
        vec![item("espresso-beans", 2), item("burr-grinder", 1)]
    } else {
        args.items.clone()
    };

    list_products(&args.catalog).await?;
    println!(
        "\nCart for {}: {}",
        args.customer,
        if items.is_empty() {
            "(empty)".to_owned()
        } else {
            items
                .iter()
                .map(|i| format!("{} × {}", i.quantity, i.sku))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );

    let client = Client::connect(args.gateway.clone())
        .await
        .with_context(|| format!("cannot reach the gateway at {}", args.gateway))?;
    println!("\nSubmitted to the gateway (each answered at once):");
    let check = pb::CheckRequest {
        items: items.clone(),
    };
    let inventory = submit(&client, "inventory", INVENTORY_QUEUE, &check, None).await?;
    let order = pb::PlaceOrderRequest {
        customer: args.customer.clone(),
        items,
    };
    let order = submit(
        &client,
        "order",
        ORDERS_QUEUE,
        &order,
        args.notify.as_deref(),
    )
    .await?;

    println!("\nFollowing both tickets:");
    let (inventory, order) = follow(&client, &inventory, &order).await?;

    println!();
    print_inventory(&inventory)?;
    print_order(&order)
}

fn item(sku: &str, quantity: u32) -> pb::CartItem {
    pb::CartItem {
        sku: sku.to_owned(),
        quantity,
    }
}

/// Prints the catalog, asked directly (no gateway: it answers at once).
async fn list_products(url: &str) -> anyhow::Result<()> {
    let mut catalog = pb::catalog_client::CatalogClient::connect(url.to_owned())
        .await
        .with_context(|| format!("cannot reach the catalog at {url}"))?;
    let products = catalog
        .list_products(pb::ListProductsRequest {})
        .await?
        .into_inner()
        .products;
    println!("Products (from Catalog, called directly):");
    for product in products {
        println!(
            "  {:<16} {:<22} {:>8}",
            product.sku,
            product.name,
            dollars(product.price_cents)
        );
    }
    Ok(())
}

/// Submits `request`'s bytes to `queue` (with a completion callback to
/// `notify`, if given) and prints the ticket at once.
async fn submit(
    client: &Client,
    label: &str,
    queue: &str,
    request: &impl prost::Message,
    notify: Option<&str>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut submit = Submit::new(queue).binary(request.encode_to_vec(), "application/x-protobuf");
    if let Some(url) = notify {
        submit = submit.callback(url);
    }
    let ticket = client
        .submit(submit)
        .await
        .with_context(|| format!("submitting the {label} to queue {queue:?}"))?;
    println!(
        "  {label} ticket: {} ({}, answered in {} ms)",
        ticket.id,
        state_name(ticket.state()),
        started.elapsed().as_millis()
    );
    Ok(ticket.id)
}

/// Watches both tickets at once, printing each change, until both are
/// finished; returns their final states (inventory, order).
async fn follow(
    client: &Client,
    inventory: &str,
    order: &str,
) -> anyhow::Result<(gate::Ticket, gate::Ticket)> {
    let started = Instant::now();
    let inventory_events = client.watch(inventory, None).await?.map(|e| (0, e));
    let order_events = client.watch(order, None).await?.map(|e| (1, e));
    let mut events = futures::stream::select(inventory_events, order_events);
    let mut last: [Option<String>; 2] = [None, None];
    let mut finished: [Option<gate::Ticket>; 2] = [None, None];
    while let Some((which, event)) = events.next().await {
        let Some(ticket) = event?.ticket else {
            continue;
        };
        let line = describe(&ticket);
        if last[which].as_ref() != Some(&line) {
            let label = ["inventory", "order"][which];
            let secs = started.elapsed().as_secs_f64();
            println!("  [{secs:5.2}s] {label:<9} {line}");
            last[which] = Some(line);
        }
        if is_terminal(ticket.state()) {
            finished[which] = Some(ticket);
        }
        if finished.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(inventory), Some(order)] = finished else {
        anyhow::bail!("a watch ended before its ticket finished");
    };
    Ok((inventory, order))
}

/// One line for a ticket's state: `RUNNING (attempt 1 of 3)`, ...
fn describe(ticket: &gate::Ticket) -> String {
    let state = state_name(ticket.state());
    match ticket.state() {
        gate::TicketState::Running => {
            format!(
                "{state} (attempt {} of {})",
                ticket.attempt, ticket.max_attempts
            )
        }
        gate::TicketState::Pending => match &ticket.waiting_reason {
            Some(reason) if !reason.description.is_empty() => {
                format!("{state}: {}", reason.description)
            }
            _ => state,
        },
        gate::TicketState::Succeeded => format!("{state} (after {})", attempts(ticket.attempt)),
        _ => format!(
            "{state}: {} (after {})",
            error_text(ticket.error.as_ref()),
            attempts(ticket.attempt)
        ),
    }
}

fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{n} attempts")
    }
}

/// `PENDING` for `TICKET_STATE_PENDING`.
fn state_name(state: gate::TicketState) -> String {
    let name = state.as_str_name();
    name.strip_prefix("TICKET_STATE_")
        .unwrap_or(name)
        .to_owned()
}

/// `INVALID_ARGUMENT: the cart is empty` (a target's error code is the
/// upstream's gRPC code).
fn error_text(error: Option<&gate::TicketError>) -> String {
    let Some(error) = error else {
        return "no error recorded".to_owned();
    };
    let code = format!("{:?}", tonic::Code::from_i32(error.code));
    let mut name = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    // A target's error message already names the upstream's code.
    if error.message.contains(&name) {
        error.message.clone()
    } else {
        format!("{name}: {}", error.message)
    }
}

/// The result's bytes, decoded as the message the target replied with.
fn decode<M: prost::Message + Default>(ticket: &gate::Ticket) -> anyhow::Result<M> {
    let bytes = ticket
        .result
        .as_ref()
        .and_then(asyncgate_client::payload::as_binary)
        .context("the ticket has no binary result")?;
    M::decode(bytes.as_ref()).context("the result is not the expected message")
}

fn print_inventory(ticket: &gate::Ticket) -> anyhow::Result<()> {
    if ticket.state() != gate::TicketState::Succeeded {
        println!(
            "Inventory check {}: {}",
            state_name(ticket.state()),
            error_text(ticket.error.as_ref())
        );
        return Ok(());
    }
    let check: pb::CheckResponse = decode(ticket)?;
    if check.lines.is_empty() {
        println!("Inventory: nothing to check");
        return Ok(());
    }
    let lines = check
        .lines
        .iter()
        .map(|l| format!("{} {} of {}", l.sku, l.requested, l.in_stock))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "Inventory: {} ({lines})",
        if check.all_available {
            "all in stock"
        } else {
            "some items are short"
        }
    );
    Ok(())
}

fn print_order(ticket: &gate::Ticket) -> anyhow::Result<ExitCode> {
    if ticket.state() != gate::TicketState::Succeeded {
        println!(
            "Order {} after {}: {}",
            state_name(ticket.state()),
            attempts(ticket.attempt),
            error_text(ticket.error.as_ref())
        );
        return Ok(ExitCode::FAILURE);
    }
    let order: pb::PlaceOrderResponse = decode(ticket)?;
    println!("Order {} placed:", order.order_id);
    for line in &order.lines {
        println!(
            "  {} × {:<22} {:>9}",
            line.quantity,
            line.name,
            dollars(line.line_total_cents)
        );
    }
    println!("  {:<26} {:>9}", "total", dollars(order.total_cents));
    Ok(ExitCode::SUCCESS)
}
