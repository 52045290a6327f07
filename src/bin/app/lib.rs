//! The reference app's routes: what `app` serves, and an example of a service
//! built on the kit (it uses the drain watch for `/readyz` and `/events`, and
//! has a setting of its own, `slow_max`, in the settings file's `[app]`).
//!
//! | route | answer |
//! |---|---|
//! | `/` | a short greeting |
//! | `/healthz` | 200 while the process is alive |
//! | `/readyz` | 200 while serving; 503 once draining, or while the host is out of rotation (`app rotation out`) |
//! | `/version` | JSON: crate version, instance name, pid |
//! | `/slow?ms=N` | answers after N ms, capped at `[app] slow_max` |
//! | `/events` | server-sent events, one a second, ending when the drain starts |
//! | `POST /echo` | reads the body (up to `max_body_bytes`, else 413) and says how long it was |
//! | `/ws` | a WebSocket echoing every text and binary message; the kit closes it when the drain starts |

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{SinkExt, StreamExt};
use handover::{Context, Readiness, ServiceSettings};
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::future::Ready;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A response's body: a whole one without a box (every route but one, so
/// `/` allocates nothing for its body), or a stream (`/events`).
pub type AppBody = http_body_util::Either<Full<Bytes>, UnsyncBoxBody<Bytes, Infallible>>;

/// Longest delay /slow grants by default.
const DEFAULT_SLOW_MAX: Duration = Duration::from_secs(60);
/// Anything longer is a typo, not a delay.
const MAX_SLOW_MAX: Duration = Duration::from_secs(3600);

/// The app's own settings: the `[app]` table of its settings file. Every
/// key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct AppSettings {
    /// Longest delay /slow?ms=N grants; longer asks are capped.
    #[serde(with = "handover::settings::duration")]
    pub slow_max: Duration,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            slow_max: DEFAULT_SLOW_MAX,
        }
    }
}

impl ServiceSettings for AppSettings {
    fn validate(&self) -> Result<(), String> {
        if self.slow_max.is_zero() || self.slow_max > MAX_SLOW_MAX {
            return Err(format!(
                "slow_max = {:?}: must be more than zero and at most 1h",
                humantime::format_duration(self.slow_max).to_string()
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    instance: String,
    /// The answer to `/`, built once: it is the route load tests hit.
    greeting: Bytes,
    pid: u32,
    ctx: Context<AppSettings>,
}

impl App {
    pub fn new(ctx: Context<AppSettings>) -> Self {
        let instance = ctx.instance();
        Self {
            inner: Arc::new(Inner {
                greeting: Bytes::from(format!("hello from instance {instance}\n")),
                instance,
                pid: std::process::id(),
                ctx,
            }),
        }
    }

    /// Answers at once, or says which route must wait (`/slow`, `/echo`).
    fn route(&self, request: Request<Incoming>) -> Result<Response<AppBody>, Waits> {
        tracing::debug!(method = %request.method(), uri = %request.uri(), "request");
        if request.uri().path() == "/ws" {
            return Ok(match *request.method() {
                Method::GET => websocket(request),
                _ => not_allowed("GET"),
            });
        }
        if request.uri().path() == "/echo" {
            return match *request.method() {
                Method::POST => Err(Waits::Echo(request.into_body())),
                _ => Ok(not_allowed("POST")),
            };
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return Ok(not_allowed("GET, HEAD"));
        }
        let inner = &self.inner;
        Ok(match request.uri().path() {
            "/" => text(StatusCode::OK, inner.greeting.clone()),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match inner.ctx.readiness() {
                Readiness::Ready => text(StatusCode::OK, "ready\n"),
                Readiness::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                Readiness::OutOfRotation => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "out of rotation\n")
                }
            },
            "/version" => {
                let body = serde_json::json!({
                    "name": inner.ctx.name(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "instance": inner.instance,
                    "pid": inner.pid,
                });
                let mut response = text(StatusCode::OK, format!("{body}\n"));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            "/slow" => return Err(Waits::Slow(request.uri().query().map(str::to_owned))),
            "/events" => self.events(),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        })
    }

    async fn wait(self, waits: Waits) -> Response<AppBody> {
        match waits {
            Waits::Slow(query) => self.slow(query.as_deref()).await,
            Waits::Echo(body) => self.echo(body).await,
        }
    }

    async fn slow(&self, query: Option<&str>) -> Response<AppBody> {
        let max = self.inner.ctx.settings().slow_max;
        let asked = match parse_ms(query) {
            Ok(ms) => Duration::from_millis(ms),
            Err(reason) => return text(StatusCode::BAD_REQUEST, format!("{reason}\n")),
        };
        let delay = asked.min(max);
        tokio::time::sleep(delay).await;
        let capped = if asked > max { " (capped)" } else { "" };
        text(
            StatusCode::OK,
            format!("slept {} ms{capped}\n", delay.as_millis()),
        )
    }

    /// Reads the whole body, capped at `max_body_bytes`. The kit already
    /// answered 413 to a larger Content-Length; a chunked body has no length
    /// up front, so the cap applies as it arrives.
    async fn echo(&self, body: Incoming) -> Response<AppBody> {
        let max = self.inner.ctx.kit_settings().limits.max_body_bytes;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        match Limited::new(body, max).collect().await {
            Ok(body) => text(
                StatusCode::OK,
                format!("received {} bytes\n", body.to_bytes().len()),
            ),
            Err(err) if err.is::<LengthLimitError>() => {
                let mut response = text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {max} bytes\n"),
                );
                // The rest of the body is unread: the connection cannot carry
                // another request.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                response
            }
            // The client went away or sent a broken chunk; hyper has closed
            // the connection, and nobody reads this.
            Err(_) => text(StatusCode::BAD_REQUEST, "broken request body\n"),
        }
    }

    fn events(&self) -> Response<AppBody> {
        let drain = self.inner.ctx.drain().clone();
        let body = Events {
            ticks: tokio::time::interval(Duration::from_secs(1)),
            drained: Box::pin(async move {
                drain.draining().await;
            }),
            sent: 0,
            app: self.inner.clone(),
            ended: false,
        };
        let mut response = Response::new(http_body_util::Either::Right(body.boxed_unsync()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// `/ws`: accepts the WebSocket handshake and echoes every message on the
/// upgraded connection. It has no drain logic of its own: when the drain
/// starts, the kit sends the client a Close frame, the client answers, and
/// the loop below ends as the WebSocket does.
fn websocket(mut request: Request<Incoming>) -> Response<AppBody> {
    let upgrade = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "/ws is a WebSocket: send Upgrade: websocket\n",
        );
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => {
                // tungstenite's default read buffer is 128 KiB per socket,
                // zeroed on every read: most of an idle socket's memory.
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                echo(socket).await;
            }
            Err(err) => tracing::debug!(error = %err, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(http_body_util::Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Sends every text and binary message back; tungstenite answers pings
/// and the Close handshake itself.
async fn echo<S>(mut socket: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = socket.next().await {
        match message {
            Ok(message) if message.is_text() || message.is_binary() => {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "websocket ended");
                break;
            }
        }
    }
}

/// A tower service, as an axum `Router` is; always ready.
/// A route that answers later.
enum Waits {
    Slow(Option<String>),
    Echo(Incoming),
}

type Waiting = Pin<Box<dyn Future<Output = Result<Response<AppBody>, Infallible>> + Send>>;

impl tower::Service<Request<Incoming>> for App {
    type Response = Response<AppBody>;
    type Error = Infallible;
    /// Most routes answer at once, without a boxed future: the hot path.
    type Future = Either<Ready<Result<Response<AppBody>, Infallible>>, Waiting>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        match self.route(request) {
            Ok(response) => Either::Left(std::future::ready(Ok(response))),
            Err(waits) => {
                let app = self.clone();
                Either::Right(Box::pin(async move { Ok(app.wait(waits).await) }))
            }
        }
    }
}

fn not_allowed(allow: &'static str) -> Response<AppBody> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut response = Response::new(http_body_util::Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `ms` parameter of `/slow`.
fn parse_ms(query: Option<&str>) -> Result<u64, &'static str> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .ok_or("missing ms: ask for /slow?ms=N")?;
    value
        .parse()
        .map_err(|_| "ms must be a whole number of milliseconds")
}

/// The `/events` stream: one event a second until the drain starts, then a
/// last comment and the end of the body, so a stream never holds a drain open.
struct Events {
    ticks: tokio::time::Interval,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
    sent: u64,
    app: Arc<Inner>,
    ended: bool,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.drained.as_mut().poll(cx).is_ready() {
            self.ended = true;
            // A comment line: EventSource clients ignore it and reconnect
            // when the stream ends, reaching a sibling instance.
            let bye = Bytes::from_static(b": draining, reconnect\n\n");
            return Poll::Ready(Some(Ok(Frame::data(bye))));
        }
        match self.ticks.poll_tick(cx) {
            Poll::Ready(_) => {
                self.sent += 1;
                let event = format!(
                    "id: {}\ndata: {{\"instance\":{},\"pid\":{}}}\n\n",
                    self.sent,
                    serde_json::Value::from(self.app.instance.as_str()),
                    self.app.pid
                );
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_takes_its_delay_from_the_query() {
        assert_eq!(parse_ms(Some("ms=250")), Ok(250));
        assert_eq!(parse_ms(Some("x=1&ms=7")), Ok(7));
        assert!(parse_ms(None).is_err());
        assert!(parse_ms(Some("ms=-1")).is_err());
        assert!(parse_ms(Some("ms=soon")).is_err());
    }
}
