//! `shop-services`: runs the shop's `Catalog`, `Inventory` and `Orders`
//! gRPC services (each on its own port, as separate microservices would be)
//! and, given a webhook secret, the HTTP notifications endpoint. Prints one
//! `NAME listening on ADDR` line per server once all are bound, then one
//! line per call, until Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use asyncgate_example_shop::notifications::Endpoint;
use asyncgate_example_shop::pb;
use asyncgate_example_shop::services::{Catalog, Inventory, Orders};
use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};

/// The shop's services: Catalog, Inventory and Orders (gRPC), and the
/// notifications endpoint (HTTP).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address of the Catalog service (`127.0.0.1:0`: any free port).
    #[arg(long, default_value = "127.0.0.1:50061")]
    catalog: SocketAddr,
    /// Address of the Inventory service.
    #[arg(long, default_value = "127.0.0.1:50062")]
    inventory: SocketAddr,
    /// Address of the Orders service.
    #[arg(long, default_value = "127.0.0.1:50063")]
    orders: SocketAddr,
    /// Address of the notifications endpoint (served only with
    /// --webhook-secret).
    #[arg(long, default_value = "127.0.0.1:50064")]
    notifications: SocketAddr,
    /// A secret (`whsec_<base64>`) that notifications are signed with;
    /// repeat for several (rotation; spaces between them in the variable).
    #[arg(
        long = "webhook-secret",
        env = "SHOP_WEBHOOK_SECRET",
        value_delimiter = ' ',
        hide_env_values = true
    )]
    webhook_secrets: Vec<String>,
    /// How long an inventory check takes.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    inventory_delay: Duration,
    /// How long placing an order takes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    orders_delay: Duration,
    /// Make the inventory flaky: the first check of each distinct cart
    /// answers UNAVAILABLE (the next one succeeds).
    #[arg(long)]
    flaky: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Bind everything first, so that the printed addresses are all in use
    // by the time anyone reads them.
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let catalog = bind(args.catalog).await?;
    let inventory = bind(args.inventory).await?;
    let orders = bind(args.orders).await?;
    let endpoint = if args.webhook_secrets.is_empty() {
        None
    } else {
        let endpoint = Endpoint::new(&args.webhook_secrets, |n| println!("notifications: {n}"))
            .map_err(anyhow::Error::msg)?;
        Some((Arc::new(endpoint), bind(args.notifications).await?))
    };
    println!("catalog listening on {}", catalog.local_addr()?);
    println!("inventory listening on {}", inventory.local_addr()?);
    println!("orders listening on {}", orders.local_addr()?);
    let mut servers = tokio::task::JoinSet::new();
    if let Some((endpoint, listener)) = endpoint {
        println!(
            "notifications listening on http://{}/notifications",
            listener.local_addr()?
        );
        servers.spawn(async move { endpoint.serve(listener).await.map_err(anyhow::Error::from) });
    } else {
        println!("notifications off (give --webhook-secret whsec_... to receive callbacks)");
    }
    if args.flaky {
        println!("inventory is flaky: each cart's first check answers UNAVAILABLE");
    }
    let inventory_service = Inventory::new(args.inventory_delay, args.flaky);
    let orders_service = Orders::new(args.orders_delay);
    servers.spawn(serve(
        catalog,
        Server::builder().add_service(pb::catalog_server::CatalogServer::new(Catalog)),
    ));
    servers.spawn(serve(
        inventory,
        Server::builder().add_service(pb::inventory_server::InventoryServer::new(
            inventory_service,
        )),
    ));
    servers.spawn(serve(
        orders,
        Server::builder().add_service(pb::orders_server::OrdersServer::new(orders_service)),
    ));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        Some(ended) = servers.join_next() => ended?.context("a server stopped"),
    }
}

/// Serves one service's router on `listener`.
async fn serve(listener: TcpListener, router: Router) -> anyhow::Result<()> {
    router
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(Into::into)
}
