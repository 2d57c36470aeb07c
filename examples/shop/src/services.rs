//! `Catalog`, `Inventory` and `Orders`: three plain tonic services, written
//! as anyone would write them. None of them knows of Asyncgate: the gateway
//! calls `Inventory.Check` and `Orders.PlaceOrder` like any other client
//! would, and the services answer with ordinary statuses (`UNAVAILABLE` to
//! be asked again later, `INVALID_ARGUMENT` for a request that will never
//! work). Each call is logged as one line on stdout, so that a reader of the
//! services' terminal sees what the gateway does.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::dollars;
use crate::pb;

/// The products on sale: sku, name, price in cents, units in stock.
pub const PRODUCTS: [(&str, &str, i64, u32); 4] = [
    ("espresso-beans", "Espresso beans, 1 kg", 2450, 40),
    ("burr-grinder", "Burr grinder", 12900, 3),
    ("stoneware-mug", "Stoneware mug", 1200, 120),
    ("paper-filters", "Paper filters, 100", 450, 0),
];

fn product(sku: &str) -> Option<pb::Product> {
    PRODUCTS
        .iter()
        .find(|(s, ..)| *s == sku)
        .map(|(sku, name, price_cents, _)| pb::Product {
            sku: (*sku).to_owned(),
            name: (*name).to_owned(),
            price_cents: *price_cents,
        })
}

fn stock(sku: &str) -> u32 {
    PRODUCTS
        .iter()
        .find(|(s, ..)| *s == sku)
        .map_or(0, |(.., stock)| *stock)
}

/// `2 × espresso-beans, 1 × burr-grinder`.
fn describe(items: &[pb::CartItem]) -> String {
    if items.is_empty() {
        return "an empty cart".to_owned();
    }
    items
        .iter()
        .map(|item| format!("{} × {}", item.quantity, item.sku))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Products and prices, answered at once.
#[derive(Debug, Default)]
pub struct Catalog;

#[tonic::async_trait]
impl pb::catalog_server::Catalog for Catalog {
    async fn list_products(
        &self,
        _request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        println!("catalog: ListProducts");
        let products = PRODUCTS
            .iter()
            .filter_map(|(sku, ..)| product(sku))
            .collect();
        Ok(Response::new(pb::ListProductsResponse { products }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let sku = request.into_inner().sku;
        println!("catalog: GetProduct {sku}");
        product(&sku)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no product {sku:?}")))
    }
}

/// Stock levels; each check takes `delay` (a warehouse lookup).
#[derive(Debug)]
pub struct Inventory {
    /// How long a check takes.
    delay: Duration,
    /// Flaky mode: the first check of each distinct cart answers
    /// `UNAVAILABLE` (a cold cache), the next one succeeds. Deterministic,
    /// so that the example's retry shows every time.
    flaky: bool,
    /// The carts checked at least once (flaky mode).
    seen: Mutex<HashSet<String>>,
}

impl Inventory {
    /// An inventory whose checks take `delay`; see [`Inventory::flaky`].
    pub fn new(delay: Duration, flaky: bool) -> Self {
        Self {
            delay,
            flaky,
            seen: Mutex::default(),
        }
    }
}

#[tonic::async_trait]
impl pb::inventory_server::Inventory for Inventory {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let items = request.into_inner().items;
        let cart = describe(&items);
        // The lock is held for the insert only (never across an await).
        if self.flaky && self.seen.lock().expect("not poisoned").insert(cart.clone()) {
            println!("inventory: Check {cart} -> UNAVAILABLE (flaky: cold cache)");
            return Err(Status::unavailable(
                "the stock cache is warming up; try again in a moment",
            ));
        }
        tokio::time::sleep(self.delay).await;
        let lines: Vec<_> = items
            .iter()
            .map(|item| pb::StockLine {
                sku: item.sku.clone(),
                requested: item.quantity,
                in_stock: stock(&item.sku),
            })
            .collect();
        let all_available = lines.iter().all(|line| line.in_stock >= line.requested);
        println!(
            "inventory: Check {cart} -> {}",
            if all_available {
                "all in stock"
            } else {
                "some items short"
            }
        );
        Ok(Response::new(pb::CheckResponse {
            lines,
            all_available,
        }))
    }
}

/// Order placement; each order takes `delay` (payment, reservation,
/// invoice).
#[derive(Debug)]
pub struct Orders {
    /// How long placing an order takes.
    delay: Duration,
    /// The last order number given.
    last_order: AtomicU64,
}

impl Orders {
    /// An order service whose placements take `delay`.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            last_order: AtomicU64::new(0),
        }
    }
}

#[tonic::async_trait]
impl pb::orders_server::Orders for Orders {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let request = request.into_inner();
        let customer = if request.customer.is_empty() {
            "guest"
        } else {
            &request.customer
        };
        let cart = describe(&request.items);
        // Validation first: a request that can never succeed is refused at
        // once, and the gateway records the refusal without retrying it.
        let lines = match order_lines(&request.items) {
            Ok(lines) => lines,
            Err(status) => {
                println!(
                    "orders: PlaceOrder for {customer}, {cart} -> {:?}: {}",
                    status.code(),
                    status.message()
                );
                return Err(status);
            }
        };
        println!("orders: PlaceOrder for {customer}, {cart}: processing...");
        tokio::time::sleep(self.delay).await;
        let number = self.last_order.fetch_add(1, Ordering::Relaxed) + 1;
        let order_id = format!("ord-{number:06}");
        let total_cents = lines.iter().map(|line| line.line_total_cents).sum();
        println!(
            "orders: PlaceOrder for {customer} -> {order_id}, total {}",
            dollars(total_cents)
        );
        Ok(Response::new(pb::PlaceOrderResponse {
            order_id,
            lines,
            total_cents,
        }))
    }
}

/// The priced lines of a cart, or why it cannot be ordered:
/// `INVALID_ARGUMENT` for a malformed cart, `FAILED_PRECONDITION` for an
/// item short of stock.
fn order_lines(items: &[pb::CartItem]) -> Result<Vec<pb::OrderLine>, Status> {
    if items.is_empty() {
        return Err(Status::invalid_argument(
            "the cart is empty: add at least one item",
        ));
    }
    items
        .iter()
        .map(|item| {
            let product = product(&item.sku).ok_or_else(|| {
                Status::invalid_argument(format!("no product {:?} in the catalog", item.sku))
            })?;
            if item.quantity == 0 {
                return Err(Status::invalid_argument(format!(
                    "{}: the quantity must be at least 1",
                    item.sku
                )));
            }
            let in_stock = stock(&item.sku);
            if item.quantity > in_stock {
                return Err(Status::failed_precondition(format!(
                    "{}: {} ordered, {in_stock} in stock",
                    item.sku, item.quantity
                )));
            }
            Ok(pb::OrderLine {
                line_total_cents: product.price_cents * i64::from(item.quantity),
                sku: product.sku,
                name: product.name,
                quantity: item.quantity,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn item(sku: &str, quantity: u32) -> pb::CartItem {
        pb::CartItem {
            sku: sku.to_owned(),
            quantity,
        }
    }

    #[test]
    fn order_lines_price_the_cart_and_refuse_what_cannot_be_ordered() {
        let lines = order_lines(&[item("espresso-beans", 2), item("burr-grinder", 1)]).unwrap();
        let total: i64 = lines.iter().map(|l| l.line_total_cents).sum();
        assert_eq!(total, 2 * 2450 + 12900);
        assert_eq!(lines[0].name, "Espresso beans, 1 kg");
        for (items, code, message) in [
            (vec![], Code::InvalidArgument, "the cart is empty"),
            (
                vec![item("caviar", 1)],
                Code::InvalidArgument,
                "no product \"caviar\"",
            ),
            (
                vec![item("stoneware-mug", 0)],
                Code::InvalidArgument,
                "at least 1",
            ),
            (
                vec![item("paper-filters", 1)],
                Code::FailedPrecondition,
                "1 ordered, 0 in stock",
            ),
            (
                vec![item("burr-grinder", 4)],
                Code::FailedPrecondition,
                "4 ordered, 3 in stock",
            ),
        ] {
            let status = order_lines(&items).unwrap_err();
            assert_eq!(status.code(), code, "{items:?}");
            assert!(status.message().contains(message), "{}", status.message());
        }
    }
}
