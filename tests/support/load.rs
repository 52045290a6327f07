//! A load client: keep-alive connections (hyper's HTTP/1 client connection)
//! or a new connection per request, counting every response by status and
//! every error by kind, and recording latency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// Bounds one request, so a stuck server shows up as an error, not a hang.
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    NewConnection,
}

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub by_status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Responses that carried `Connection: close`.
    pub closes: u64,
    pub latencies: Vec<Duration>,
    /// Every request in order of its intended start, for latency over time.
    pub timeline: Vec<Sample>,
}

/// One request: when it started (its due time, if the server held it up
/// past that), how long after that its response arrived (or it failed), and
/// whether it succeeded with a 2xx.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The first request on its connection (a new-connection client's, or a
    /// keep-alive client's after a reconnect).
    pub fresh: bool,
    pub due: Instant,
    pub latency: Duration,
    pub ok: bool,
}

/// Responses counted by status: the 2xx ones (`true`) or the others.
pub fn with_status(by_status: &BTreeMap<u16, u64>, success: bool) -> u64 {
    by_status
        .iter()
        .filter(|(status, _)| (200..300).contains(*status) == success)
        .map(|(_, n)| n)
        .sum()
}

impl Counts {
    pub fn ok(&self) -> u64 {
        super::load::with_status(&self.by_status, true)
    }

    pub fn non_2xx(&self) -> u64 {
        super::load::with_status(&self.by_status, false)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    fn failed(&mut self, due: Instant, at: Instant) {
        self.timeline.push(Sample {
            fresh: true,
            due,
            latency: at.saturating_duration_since(due),
            ok: false,
        });
    }

    pub fn merge(&mut self, other: Counts) {
        for (s, n) in other.by_status {
            *self.by_status.entry(s).or_default() += n;
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.closes += other.closes;
        self.latencies.extend(other.latencies);
        self.timeline.extend(other.timeline);
    }

    /// One line: requests by outcome and latency quantiles.
    pub fn summary(&mut self) -> String {
        let (p50, p99, max) = (self.quantile(0.5), self.quantile(0.99), self.quantile(1.0));
        format!(
            "{} ok, {} non-2xx {:?}, {} errors {:?}, {} closes, p50 {p50:?} p99 {p99:?} max {max:?}",
            self.ok(),
            self.non_2xx(),
            self.by_status,
            self.error_count(),
            self.errors,
            self.closes,
        )
    }

    /// The latency at quantile `q` (0.0 to 1.0).
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let idx = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[idx]
    }
}

/// The body of a load client's POST.
pub const POST_BODY: Bytes = Bytes::from_static(b"a request a balancer must not lose");

/// Sends `GET path` (`POST path`, with [`POST_BODY`], when `path` is
/// `"POST /path"`) from one client until `stop` turns true or `max_requests` is reached.
pub async fn client(
    addr: SocketAddr,
    path: &'static str,
    mode: Mode,
    stop: watch::Receiver<bool>,
    max_requests: u64,
) -> Counts {
    paced_client(addr, path, mode, stop, max_requests, None, Duration::ZERO).await
}

/// As [`client`], at a fixed rate: one request due every `pace`, the first
/// after `offset` (clients started together spread their requests over the
/// period this way, instead of all sending at once).
///
/// The rate does not bend to the server. A request that could not start on
/// time because the server was still answering the previous one starts as
/// soon as it can, and its latency counts from when it was due: a stall
/// shows in full instead of hiding behind the requests never sent during it
/// (coordinated omission). Lateness that is only the client's own timer
/// (tokio's is 1 ms coarse) does not count. A new-connection client opens
/// its connection when the request is due, so connecting counts too. Pacing
/// also bounds how many loopback ports new connections use.
pub async fn paced_client(
    addr: SocketAddr,
    path: &'static str,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
    max_requests: u64,
    pace: Option<Duration>,
    offset: Duration,
) -> Counts {
    let mut counts = Counts::default();
    let mut sent = 0;
    let mut ticks = pace.map(|pace| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, pace);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticks
    });
    // When the last response arrived: a request due before then was held
    // up by the server.
    let mut last_done = Instant::now();
    let next_start = async |ticks: &mut Option<tokio::time::Interval>, last_done: Instant| {
        match ticks.as_mut() {
            Some(ticks) => {
                let due = ticks.tick().await.into_std();
                if last_done > due { due } else { Instant::now() }
            }
            None => Instant::now(),
        }
    };
    'connections: while !*stop.borrow() && sent < max_requests {
        // A new-connection client's request is due before it connects.
        let mut first = match mode {
            Mode::NewConnection => Some(next_start(&mut ticks, last_done).await),
            Mode::KeepAlive => None,
        };
        if *stop.borrow() {
            break;
        }
        let connect_start = first.unwrap_or_else(Instant::now);
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(err) => {
                counts.error(format!("connect: {:?}", err.kind()));
                counts.failed(connect_start, Instant::now());
                last_done = Instant::now();
                continue;
            }
        };
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(err) => {
                    counts.error(format!("handshake: {err}"));
                    counts.failed(connect_start, Instant::now());
                    last_done = Instant::now();
                    continue;
                }
            };
        let conn = tokio::spawn(conn);
        let mut fresh = true;
        loop {
            let start = match first.take() {
                Some(start) => start,
                None => next_start(&mut ticks, last_done).await,
            };
            if *stop.borrow() || sent >= max_requests {
                break;
            }
            let request = match path.strip_prefix("POST ") {
                Some(path) => Request::post(path).body(Either::Right(Full::new(POST_BODY))),
                None => Request::get(path).body(Either::Left(Empty::<Bytes>::new())),
            };
            let mut request = request.expect("a valid request");
            request
                .headers_mut()
                .insert("host", http::HeaderValue::from_static("test"));
            sent += 1;
            let response = tokio::time::timeout(REQUEST_LIMIT, async {
                let response = sender.send_request(request).await?;
                let (parts, body) = response.into_parts();
                body.collect().await?;
                Ok::<_, hyper::Error>(parts)
            })
            .await;
            last_done = Instant::now();
            match response {
                Ok(Ok(parts)) => {
                    let latency = last_done - start;
                    counts.latencies.push(latency);
                    counts.timeline.push(Sample {
                        fresh: std::mem::take(&mut fresh),
                        due: start,
                        latency,
                        ok: parts.status.is_success(),
                    });
                    *counts.by_status.entry(parts.status.as_u16()).or_default() += 1;
                    let closes = parts
                        .headers
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    if closes {
                        counts.closes += 1;
                    }
                    if closes || mode == Mode::NewConnection {
                        break;
                    }
                }
                Ok(Err(err)) => {
                    counts.error(format!("request: {err}"));
                    counts.failed(start, last_done);
                    continue 'connections;
                }
                Err(_) => {
                    counts.error("request: timed out");
                    counts.failed(start, last_done);
                    continue 'connections;
                }
            }
            // Between requests, give `stop` a chance without delaying the next one.
            if stop.has_changed().unwrap_or(true) && *stop.borrow_and_update() {
                break;
            }
        }
        drop(sender);
        // The connection must end cleanly after its last response; an error
        // here is a reset or a truncated close.
        match tokio::time::timeout(REQUEST_LIMIT, conn).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => counts.error(format!("connection: {err}")),
            Ok(Err(join)) => counts.error(format!("connection task: {join}")),
            Err(_) => counts.error("connection: did not end"),
        }
    }
    counts
}

/// Runs `keep_alive` keep-alive clients and `new_conn` new-connection clients
/// until `stop` turns true; [`collect`] merges their counts.
pub fn spawn_clients(
    addr: SocketAddr,
    path: &'static str,
    keep_alive: usize,
    new_conn: usize,
    stop: &watch::Receiver<bool>,
    max_requests_each: u64,
    pace: Option<Duration>,
) -> tokio::task::JoinSet<Counts> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..keep_alive + new_conn {
        let mode = if i < keep_alive {
            Mode::KeepAlive
        } else {
            Mode::NewConnection
        };
        let stop = stop.clone();
        // Scatter the clients' phases over one period (golden-ratio steps),
        // so the offered load is smooth, not a burst every period.
        let offset = pace.map_or(Duration::ZERO, |pace| {
            pace.mul_f64((i as f64 * 0.618_033_988_75).fract())
        });
        set.spawn(paced_client(
            addr,
            path,
            mode,
            stop,
            max_requests_each,
            pace,
            offset,
        ));
    }
    set
}

pub async fn collect(mut set: tokio::task::JoinSet<Counts>) -> Counts {
    let mut total = Counts::default();
    while let Some(counts) = set.join_next().await {
        total.merge(counts.expect("a load client panicked"));
    }
    total
}

/// Load running in the background: paced keep-alive and new-connection clients.
pub struct Load {
    stop: watch::Sender<bool>,
    clients: tokio::task::JoinSet<Counts>,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        path: &'static str,
        keep_alive: usize,
        new_conn: usize,
        pace: Duration,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let clients = spawn_clients(
            addr,
            path,
            keep_alive,
            new_conn,
            &stop_rx,
            u64::MAX,
            Some(pace),
        );
        Self { stop, clients }
    }

    pub async fn stop(self) -> Counts {
        let _ = self.stop.send(true);
        collect(self.clients).await
    }
}
