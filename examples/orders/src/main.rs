//! `orders`: an example service of someone else's, built on handover's
//! public API alone. An axum `Router`, a setting of its own, and the kit's
//! whole process around it.

use std::process::ExitCode;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use handover::{Context, Readiness, Service, ServiceSettings};
use serde::{Deserialize, Serialize};

/// The `[orders]` table of /etc/orders/orders.toml.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct OrdersSettings {
    /// The currency prices are quoted in.
    currency: String,
}

impl Default for OrdersSettings {
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
        }
    }
}

impl ServiceSettings for OrdersSettings {
    fn validate(&self) -> Result<(), String> {
        if self.currency.len() == 3 && self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            Ok(())
        } else {
            Err(format!(
                "currency {:?} is not an ISO 4217 code",
                self.currency
            ))
        }
    }
}

#[derive(Serialize)]
struct Order {
    id: u64,
    total: String,
    instance: String,
}

async fn order(Path(id): Path<u64>, State(ctx): State<Context<OrdersSettings>>) -> Json<Order> {
    Json(Order {
        id,
        total: format!("{}.00 {}", id % 100, ctx.settings().currency),
        instance: ctx.instance(),
    })
}

async fn ready(State(ctx): State<Context<OrdersSettings>>) -> StatusCode {
    match ctx.readiness() {
        Readiness::Ready => StatusCode::OK,
        Readiness::Draining | Readiness::OutOfRotation => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Order updates: echoes what the client sends. No drain logic: the kit
/// sends the Close frame when the drain starts.
async fn updates(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

fn routes(ctx: Context<OrdersSettings>) -> Router {
    Router::new()
        .route("/", get(|| async { "orders\n" }))
        .route("/updates", get(updates))
        .route("/orders/{id}", get(order))
        .route("/readyz", get(ready))
        .with_state(ctx)
}

fn main() -> ExitCode {
    Service::new("orders")
        .version(env!("CARGO_PKG_VERSION"))
        .settings::<OrdersSettings>()
        .run(routes)
}
