//! The shop example, run for real: `shop-services` and `shop-client` as
//! child processes (the binaries the README runs) and a real gateway in this
//! process, configured by `gateway.toml` itself (parsed as the server's
//! `--config` is), its target addresses switched to the services' ephemeral
//! ports. The client's tickets come back at once; the order reaches
//! SUCCEEDED with a decodable `PlaceOrderResponse`; an empty cart's order
//! FAILS with the service's INVALID_ARGUMENT message, not retried; a
//! flaky inventory's UNAVAILABLE is retried to success; and the order's
//! outcome reaches the notifications endpoint as a signed callback.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use asyncgate_client::{Client, is_terminal, pb as gate};
use asyncgate_example_shop::pb;
use asyncgate_server::config::{Config, parse_args};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Bound on any one wait: a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// `shop-services` on ephemeral ports, its output lines after the
/// addresses forwarded to a channel.
struct Services {
    _child: Child,
    catalog: SocketAddr,
    inventory: SocketAddr,
    orders: SocketAddr,
    /// The notifications endpoint's URL (completion callbacks).
    notifications: String,
    lines: mpsc::UnboundedReceiver<String>,
}

/// The secret `gateway.toml` signs callbacks with.
const DEMO_SECRET: &str = "whsec_c2hvcC1kZW1vLXNlY3JldC1ub3QtZm9yLXByb2R1Y3Rpb24=";

impl Services {
    async fn start(flaky: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shop-services"));
        command
            .args(["--catalog", "127.0.0.1:0"])
            .args(["--inventory", "127.0.0.1:0"])
            .args(["--orders", "127.0.0.1:0"])
            .args(["--notifications", "127.0.0.1:0"])
            .args(["--webhook-secret", DEMO_SECRET])
            .env_remove("SHOP_WEBHOOK_SECRET")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if flaky {
            command.arg("--flaky");
        }
        let mut child = command.spawn().expect("shop-services starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut address = async |name: &str| -> SocketAddr {
            let line = timeout(PATIENCE, out.next_line())
                .await
                .expect("shop-services prints its addresses")
                .expect("stdout readable")
                .expect("shop-services is running");
            let prefix = format!("{name} listening on ");
            line.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
                .parse()
                .expect("an address")
        };
        let catalog = address("catalog").await;
        let inventory = address("inventory").await;
        let orders = address("orders").await;
        let line = timeout(PATIENCE, out.next_line())
            .await
            .expect("shop-services prints its notifications endpoint")
            .expect("stdout readable")
            .expect("shop-services is running");
        let notifications = line
            .strip_prefix("notifications listening on ")
            .unwrap_or_else(|| panic!("{line:?} names no notifications endpoint"))
            .to_owned();
        Self {
            _child: child,
            catalog,
            inventory,
            orders,
            notifications,
            lines: forward(out),
        }
    }

    /// Waits for an output line containing `text`.
    async fn expect_line(&mut self, text: &str) -> String {
        timeout(PATIENCE, async {
            loop {
                let line = self.lines.recv().await.expect("shop-services is running");
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("shop-services printed no line with {text:?}"))
    }
}

/// Sends each line of `out` to the returned channel until it ends.
fn forward(mut out: Lines<BufReader<ChildStdout>>) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Ends with the child's stdout.
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A gateway in this process, set up by `gateway.toml` with the targets
/// pointed at `services`.
struct Gateway {
    running: asyncgate_server::Running,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(services: &Services) -> Self {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"))
            .expect("gateway.toml readable");
        let adapted = text
            .replace("127.0.0.1:50062", &services.inventory.to_string())
            .replace("127.0.0.1:50063", &services.orders.to_string());
        for addr in [services.inventory, services.orders] {
            let url = format!("grpc://{addr}/shop.v1.");
            assert!(adapted.contains(&url), "gateway.toml has a target at {url}");
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, adapted).expect("config written");
        let args = ["asyncgate-server".into(), "--config".into(), path.into()];
        let parsed = parse_args(args.to_vec()).expect("gateway.toml parses");
        let config = Config::try_from(parsed.cli).expect("gateway.toml is valid");
        assert_eq!(config.targets.len(), 2, "two target queues");
        // The config's listen address is replaced by an ephemeral port.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let running = asyncgate_server::start_on(config, listener)
            .await
            .expect("gateway starts");
        Self {
            running,
            addr,
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.addr))
            .await
            .expect("gateway reachable")
    }
}

/// What one `shop-client` run printed, and the tickets it named.
struct ClientRun {
    status: ExitStatus,
    /// The order ticket's state when the client printed its id.
    order_when_printed: gate::TicketState,
    stdout: String,
    inventory: gate::Ticket,
    order: gate::Ticket,
}

/// Runs `shop-client` against the gateway. When it prints the order's
/// ticket, the ticket is read from the gateway at once: for an order that
/// takes 2 s, it is not finished yet, which shows the ticket came back
/// before the result.
async fn run_client(gateway: &Gateway, services: &Services, args: &[&str]) -> ClientRun {
    let gate = gateway.client().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop-client"))
        .arg("--gateway")
        .arg(format!("http://{}", gateway.addr))
        .arg("--catalog")
        .arg(format!("http://{}", services.catalog))
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("shop-client starts");
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stdout = String::new();
    let mut ids = (None, None);
    let mut order_when_printed = None;
    let read_all = async {
        while let Some(line) = out.next_line().await.expect("stdout readable") {
            stdout.push_str(&line);
            stdout.push('\n');
            if let Some(id) = ticket_id(&line, "inventory") {
                ids.0 = Some(id);
            } else if let Some(id) = ticket_id(&line, "order") {
                let ticket = gate
                    .get(&id, None)
                    .await
                    .expect("the order's ticket exists");
                order_when_printed = Some(ticket.state());
                ids.1 = Some(id);
            }
        }
    };
    timeout(PATIENCE, read_all)
        .await
        .expect("shop-client finishes");
    let status = child.wait().await.expect("shop-client exits");
    let (Some(inventory), Some(order)) = ids else {
        panic!("shop-client printed no ticket ids:\n{stdout}");
    };
    ClientRun {
        status,
        order_when_printed: order_when_printed.expect("read with the id"),
        inventory: gate.get(&inventory, None).await.expect("inventory ticket"),
        order: gate.get(&order, None).await.expect("order ticket"),
        stdout,
    }
}

/// The id on a `  LABEL ticket: ID (PENDING, ...)` line.
fn ticket_id(line: &str, label: &str) -> Option<String> {
    let rest = line.trim().strip_prefix(&format!("{label} ticket: "))?;
    Some(rest.split_whitespace().next()?.to_owned())
}

fn decode<M: prost::Message + Default>(ticket: &gate::Ticket) -> M {
    let payload = ticket.result.as_ref().expect("a result");
    let bytes = asyncgate_client::payload::as_binary(payload).expect("a binary result");
    M::decode(bytes.as_ref()).expect("the result decodes as the service's reply")
}

#[tokio::test]
async fn an_order_placed_through_the_gateway_reaches_its_decodable_result() {
    let mut services = Services::start(false).await;
    let gateway = Gateway::start(&services).await;
    let notify = services.notifications.clone();
    let run = run_client(&gateway, &services, &["--notify", &notify]).await;
    assert!(run.status.success(), "{}\n{:?}", run.stdout, run.status);
    assert!(
        !is_terminal(run.order_when_printed),
        "the order's ticket was printed before its result, not {:?}",
        run.order_when_printed
    );

    assert_eq!(
        run.order.state(),
        gate::TicketState::Succeeded,
        "{}",
        run.stdout
    );
    assert_eq!(run.order.queue, "orders");
    let order: pb::PlaceOrderResponse = decode(&run.order);
    assert!(order.order_id.starts_with("ord-"), "{order:?}");
    assert_eq!(order.total_cents, 2 * 2450 + 12900, "{order:?}");
    assert_eq!(order.lines.len(), 2);
    assert!(
        run.stdout
            .contains(&format!("Order {} placed:", order.order_id)),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("$178.00"), "{}", run.stdout);

    assert_eq!(run.inventory.state(), gate::TicketState::Succeeded);
    assert_eq!(run.inventory.attempt, 1, "no retry without --flaky");
    let check: pb::CheckResponse = decode(&run.inventory);
    assert!(check.all_available, "{check:?}");
    assert!(
        run.stdout.contains("Inventory: all in stock"),
        "{}",
        run.stdout
    );
    // The order's outcome reached the notifications endpoint as a signed
    // callback (the endpoint refuses any other).
    let notified = services
        .expect_line(&format!("ticket {}", run.order.id))
        .await;
    assert!(notified.contains("SUCCEEDED"), "{notified}");
    assert!(
        notified.contains(&format!("webhook-id {}.{}", run.order.id, run.order.seq)),
        "{notified}"
    );
    gateway.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_empty_cart_fails_the_order_with_the_services_message_and_no_retry() {
    let mut services = Services::start(false).await;
    let gateway = Gateway::start(&services).await;
    let run = run_client(&gateway, &services, &["--empty-cart"]).await;
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);

    assert_eq!(
        run.order.state(),
        gate::TicketState::Failed,
        "{}",
        run.stdout
    );
    let error = run.order.error.as_ref().expect("an error");
    assert_eq!(error.code, tonic::Code::InvalidArgument as i32, "{error:?}");
    assert!(
        error.message.contains("the cart is empty"),
        "{}",
        error.message
    );
    assert_eq!(run.order.attempt, 1, "INVALID_ARGUMENT is not retried");
    assert!(run.order.result.is_none());
    assert!(
        run.stdout.contains("Order FAILED after 1 attempt")
            && run.stdout.contains("the cart is empty"),
        "{}",
        run.stdout
    );
    services
        .expect_line("orders: PlaceOrder for alice, an empty cart -> InvalidArgument")
        .await;
    gateway.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_flaky_inventory_check_is_retried_and_succeeds() {
    let mut services = Services::start(true).await;
    let gateway = Gateway::start(&services).await;
    let run = run_client(&gateway, &services, &["--item", "stoneware-mug=3"]).await;
    assert!(run.status.success(), "{}\n{:?}", run.stdout, run.status);
    assert!(!is_terminal(run.order_when_printed));

    let inventory = &run.inventory;
    assert_eq!(
        inventory.state(),
        gate::TicketState::Succeeded,
        "{}",
        run.stdout
    );
    assert_eq!(inventory.attempt, 2, "{inventory:?}");
    let first = inventory.attempts.first().expect("the attempts are listed");
    let first_error = first.error.as_ref().expect("the first attempt failed");
    assert_eq!(first_error.code, tonic::Code::Unavailable as i32);
    assert!(
        first_error.message.contains("warming up"),
        "{}",
        first_error.message
    );
    let check: pb::CheckResponse = decode(inventory);
    assert_eq!(check.lines[0].requested, 3);
    assert!(
        run.stdout
            .contains("inventory SUCCEEDED (after 2 attempts)"),
        "{}",
        run.stdout
    );
    services
        .expect_line("inventory: Check 3 × stoneware-mug -> UNAVAILABLE")
        .await;
    services
        .expect_line("inventory: Check 3 × stoneware-mug -> all in stock")
        .await;

    assert_eq!(run.order.state(), gate::TicketState::Succeeded);
    let order: pb::PlaceOrderResponse = decode(&run.order);
    assert_eq!(order.total_cents, 3 * 1200);
    gateway.running.shutdown().await.expect("clean shutdown");
}
