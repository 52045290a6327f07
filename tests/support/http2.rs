//! HTTP/2 over cleartext (prior knowledge) load: nghttp2's `h2load`, a
//! client we did not write, and hyper-util's pooled client, which sends a
//! request the server never saw again on a new connection; and what the
//! server's journal says it processed, to set against both.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// `h2load --version`'s line, or `None` when it is not installed.
pub fn h2load_version() -> Option<String> {
    let out = Command::new("h2load").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One h2load run, from its report.
#[derive(Debug, Clone, Default)]
pub struct H2loadRun {
    /// "Application protocol:" (h2c: HTTP/2 over cleartext).
    pub protocol: String,
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// "status codes: N 2xx, ..."
    pub status_2xx: u64,
    pub took: Duration,
    pub output: String,
}

impl H2loadRun {
    /// Parses h2load's report:
    /// `requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout`.
    pub fn parse(output: &str) -> Option<Self> {
        let line = |prefix: &str| {
            output
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(str::trim)
        };
        let requests = line("requests:")?;
        let count = |what: &str| -> Option<u64> {
            requests.split(',').find_map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next()?.parse().ok()?;
                (words.next()? == what).then_some(n)
            })
        };
        let status_2xx = line("status codes:")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())?;
        Some(Self {
            protocol: line("Application protocol:").unwrap_or("").to_owned(),
            total: count("total")?,
            started: count("started")?,
            done: count("done")?,
            succeeded: count("succeeded")?,
            failed: count("failed")?,
            errored: count("errored")?,
            timeout: count("timeout")?,
            status_2xx,
            took: Duration::ZERO,
            output: output.to_owned(),
        })
    }
}

/// `h2load -c connections -m streams -n connections×streams http://ADDR/PATH`:
/// h2c with prior knowledge (its default for an `http://` URI), and every
/// connection's requests go out at once, as it opens.
///
/// That shape is what makes h2load's "failed" mean the server's failure.
/// h2load (1.52) submits `min(requests left, -m)` streams when a connection
/// is made, before it reads a byte from the server, and with no `--rps`
/// submits no more until one closes: here none is left to submit. So no
/// GOAWAY can come before a request is on the wire, and a drain that honours
/// its GOAWAY's promise answers every one. h2load opens no new connection
/// after a GOAWAY and nghttp2 opens no stream once one came: with requests
/// still to send, h2load would count those it never sent as failed, which
/// says nothing of the server. Killed after `limit`.
pub fn h2load(
    addr: SocketAddr,
    path: &str,
    connections: u64,
    streams: u64,
    limit: Duration,
) -> H2loadRun {
    let started = Instant::now();
    let child = Command::new("h2load")
        .args(["-n", &(connections * streams).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run h2load");
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // SAFETY: kill has no memory effects; the child is not reaped
            // until wait_with_output below returns, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("h2load's output");
    let _ = done_tx.send(());
    killer.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = H2loadRun::parse(&text).unwrap_or_else(|| {
        panic!(
            "h2load ({}, after {:?}) gave no report:\n{text}",
            out.status,
            started.elapsed()
        )
    });
    run.took = started.elapsed();
    run
}

/// What hyper's HTTP/2 clients saw.
#[derive(Debug, Clone, Default)]
pub struct H2Counts {
    /// Requests the clients made: each ends as a response (by status) or
    /// a failure.
    pub requests: u64,
    /// Responses by status, body read in full.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that failed, by error: what hyper-util gave up on (it sends
    /// a request again by itself only when it knows it was never sent), and
    /// [`unprocessed_by_server`] did not let the loop send again.
    pub failed: BTreeMap<String, u64>,
    /// Sends that failed with the server's word that it had not processed
    /// them ([`unprocessed_by_server`]), by error; each was sent again. The
    /// server's log says whether that word was true: a request processed
    /// twice is one more in its count than the client's 2xx.
    pub sent_again: BTreeMap<String, u64>,
    /// 2xx responses by client (the value of the tag in the query), to set
    /// against what the server logged.
    pub ok_by_tag: BTreeMap<String, u64>,
    /// Connections the clients' connector opened.
    pub connections: u64,
    /// Connections that could not be opened, by error.
    pub connect_errors: BTreeMap<String, u64>,
}

impl H2Counts {
    pub fn ok(&self) -> u64 {
        super::load::with_status(&self.by_status, true)
    }

    pub fn non_2xx(&self) -> u64 {
        super::load::with_status(&self.by_status, false)
    }

    pub fn failed_count(&self) -> u64 {
        self.failed.values().sum()
    }

    fn merge(&mut self, other: H2Counts) {
        for (k, n) in other.by_status {
            *self.by_status.entry(k).or_default() += n;
        }
        for (mine, theirs) in [
            (&mut self.failed, other.failed),
            (&mut self.sent_again, other.sent_again),
            (&mut self.ok_by_tag, other.ok_by_tag),
            (&mut self.connect_errors, other.connect_errors),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
        self.requests += other.requests;
        self.connections += other.connections;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests: {} ok, {} non-2xx {:?}, {} failed {:?}; {} sent again after the \
             server said it had not processed them {:?}; {} connections (could not connect: \
             {:?})",
            self.requests,
            self.ok(),
            self.non_2xx(),
            self.by_status,
            self.failed_count(),
            self.failed,
            self.sent_again.values().sum::<u64>(),
            self.sent_again,
            self.connections,
            self.connect_errors,
        )
    }
}

/// An error and its sources, one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections opened, and those that could not be.
#[derive(Debug, Default)]
struct ConnectTally {
    opened: u64,
    errors: BTreeMap<String, u64>,
}

/// hyper-util's TCP connector, counting what it does: the pool opens a new
/// connection when the server sent the last one away.
#[derive(Clone)]
struct CountingConnector {
    inner: HttpConnector,
    tally: Arc<Mutex<ConnectTally>>,
}

impl tower::Service<Uri> for CountingConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let tally = self.tally.clone();
        Box::pin(async move {
            let result = connecting.await;
            let mut tally = tally.lock().unwrap();
            match &result {
                Ok(_) => tally.opened += 1,
                Err(err) => *tally.errors.entry(chain(err)).or_default() += 1,
            }
            result.map_err(Into::into)
        })
    }
}

/// `clients` hyper-util clients (`client::legacy::Client`, HTTP/2 only:
/// h2c with prior knowledge), each its own pool and so its own connection,
/// each with `loops` request loops: a request, its response read whole,
/// `pace`, the next. Half the loops ask for `/`, the others for
/// `/slow?ms=SLOW`, so a drain finds streams in flight.
///
/// When the server sends a connection away (GOAWAY), the pool opens a new
/// one; a request hyper had not yet handed to h2 it sends again on the new
/// one (`retry_canceled_requests`, on by default). One it had handed over
/// but that h2 then failed with the GOAWAY (h2 opens no stream once one
/// came, and fails a stream above the GOAWAY's last stream id) hyper-util
/// does not: hyper no longer holds the request to give back. Those, and
/// only those, the loop sends again itself ([`unprocessed_by_server`]);
/// any other failure is a failure.
///
/// Each request carries `TAG=N` for its client N, so the server's log of
/// the requests it processed can be set against the responses each client
/// received ([`H2Counts::ok_by_tag`]).
pub struct H2Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<H2Counts>>,
    tallies: Vec<Arc<Mutex<ConnectTally>>>,
}

/// Bounds one request, so a stuck server is a failure, not a hang.
const STREAM_LIMIT: Duration = Duration::from_secs(20);

impl H2Load {
    pub fn start(
        addr: SocketAddr,
        tag: &str,
        clients: usize,
        loops: usize,
        pace: Duration,
        slow: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut tallies = Vec::new();
        for n in 0..clients {
            let tally = Arc::new(Mutex::new(ConnectTally::default()));
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            let connector = CountingConnector {
                inner: http,
                tally: tally.clone(),
            };
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector);
            let fast: Uri = format!("http://{addr}/?{tag}={n}").parse().unwrap();
            let slow: Uri = format!("http://{addr}/slow?{tag}={n}&ms={}", slow.as_millis())
                .parse()
                .unwrap();
            for l in 0..loops {
                let uri = if l % 2 == 0 {
                    fast.clone()
                } else {
                    slow.clone()
                };
                tasks.push(tokio::spawn(request_loop(
                    client.clone(),
                    uri,
                    n.to_string(),
                    pace,
                    stopped.clone(),
                )));
            }
            tallies.push(tally);
        }
        Self {
            stop,
            tasks,
            tallies,
        }
    }

    /// Stops the loops once their requests in flight are answered (or
    /// failed): none is abandoned.
    pub async fn stop(self) -> H2Counts {
        let _ = self.stop.send(true);
        let mut all = H2Counts::default();
        for task in self.tasks {
            all.merge(task.await.expect("an HTTP/2 request loop"));
        }
        for tally in self.tallies {
            let tally = std::mem::take(&mut *tally.lock().unwrap());
            all.connections += tally.opened;
            for (err, n) in tally.errors {
                *all.connect_errors.entry(err).or_default() += n;
            }
        }
        all
    }
}

/// Whether h2 failed a request because the server said it did not
/// process it: a graceful GOAWAY (NO_ERROR) that the stream was above, or
/// that came before h2 could open it, or a REFUSED_STREAM reset. RFC 9113
/// (sections 6.8 and 8.7) lets a client send such a request again.
fn unprocessed_by_server(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            return h2.is_remote()
                && ((h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = err.source();
    }
    false
}

/// Sends of one request, at most: the first and two more after the server
/// said it did not process it.
const SENDS: u64 = 3;

async fn request_loop(
    client: Client<CountingConnector, Empty<Bytes>>,
    uri: Uri,
    tag: String,
    pace: Duration,
    stopped: watch::Receiver<bool>,
) -> H2Counts {
    let mut counts = H2Counts::default();
    while !*stopped.borrow() {
        counts.requests += 1;
        let exchange = async {
            let mut sends = 0;
            let response = loop {
                sends += 1;
                match client.get(uri.clone()).await {
                    Ok(response) => break response,
                    Err(err) if sends < SENDS && unprocessed_by_server(&err) => {
                        *counts.sent_again.entry(chain(&err)).or_default() += 1;
                    }
                    Err(err) => return Err(chain(&err)),
                }
            };
            let status = response.status().as_u16();
            // A body cut short is never sent again: the server processed it.
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {}", chain(&e)))?;
            Ok::<u16, String>(status)
        };
        match tokio::time::timeout(STREAM_LIMIT, exchange).await {
            Ok(Ok(status)) => {
                *counts.by_status.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    *counts.ok_by_tag.entry(tag.clone()).or_default() += 1;
                }
            }
            Ok(Err(err)) => *counts.failed.entry(err).or_default() += 1,
            Err(_) => {
                let err = format!("no response within {STREAM_LIMIT:?}");
                *counts.failed.entry(err).or_default() += 1;
            }
        }
        tokio::time::sleep(pace).await;
    }
    counts
}

/// The value of `key` in a logged request's URI (`/path?a=1&KEY=VALUE`).
fn tag_of<'a>(uri: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = uri.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// The app's journal lines, in the journal's order (per process, the order
/// it logged them).
fn app_journal(sd: &super::systemd::SystemdBox) -> Vec<serde_json::Value> {
    sd.journal_entries(&["-t", "app"])
}

/// A logged request's URI (tracing-journald's `F_URI`).
fn logged_uri(entry: &serde_json::Value) -> Option<&str> {
    if entry["MESSAGE"].as_str() != Some("request") {
        return None;
    }
    let uri = entry["F_URI"].as_str().or(entry["URI"].as_str());
    Some(uri.unwrap_or_else(|| panic!("a request line without its URI: {entry}")))
}

/// The requests the reference app logged (`"request"`, at debug level for
/// its `app::routes` target) whose URI's query has `KEY=VALUE`, counted by
/// VALUE: what the server processed, for each tagged run or client. The
/// box's journald must not rate-limit (see [`JOURNALD_UNLIMITED`]).
pub fn requests_served_by_tag(sd: &super::systemd::SystemdBox, key: &str) -> BTreeMap<String, u64> {
    let mut served = BTreeMap::new();
    for entry in app_journal(sd) {
        if let Some(value) = logged_uri(&entry).and_then(|uri| tag_of(uri, key)) {
            *served.entry(value.to_owned()).or_default() += 1;
        }
    }
    served
}

/// Whether a logged URI asks for `/slow`.
fn is_slow(uri: &str) -> bool {
    let path = uri.split_once('?').map_or(uri, |(path, _)| path);
    path.ends_with("/slow")
}

/// For each drain ("drain started", in the journal's order): the `/slow`
/// requests tagged `KEY=VALUE` that its process had begun (logged) less
/// than `within` before the drain started, counted by VALUE.
///
/// A request to `/slow?ms=D` is answered D after the app logs it, so with
/// `within` under D each one counted was in flight as the drain started:
/// its connection got the drain's GOAWAY with the stream open, and the
/// drain had to finish it. Journal times are journald's, when it read each
/// line; `within` well under D leaves room for that.
pub fn tagged_in_flight_at_drains(
    sd: &super::systemd::SystemdBox,
    key: &str,
    within: Duration,
) -> Vec<BTreeMap<String, u64>> {
    let micros = |entry: &serde_json::Value| -> u64 {
        let at = entry["__REALTIME_TIMESTAMP"].as_str();
        at.and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a journal entry without its time: {entry}"))
    };
    let within = within.as_micros() as u64;
    // Per process, its tagged requests of the last `within`: (time, VALUE).
    let mut recent: BTreeMap<String, VecDeque<(u64, String)>> = BTreeMap::new();
    let mut at_drains = Vec::new();
    for entry in app_journal(sd) {
        let pid = entry["_PID"].as_str().unwrap_or("?").to_owned();
        let at = micros(&entry);
        let begun = recent.entry(pid).or_default();
        while begun
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) >= within)
        {
            begun.pop_front();
        }
        if entry["MESSAGE"].as_str() == Some("drain started") {
            let mut in_flight = BTreeMap::new();
            for (_, value) in begun.iter() {
                *in_flight.entry(value.clone()).or_default() += 1;
            }
            at_drains.push(in_flight);
        } else if let Some(uri) = logged_uri(&entry)
            && is_slow(uri)
            && let Some(value) = tag_of(uri, key)
        {
            begun.push_back((at, value.to_owned()));
        }
    }
    at_drains
}

/// A journald drop-in for a box whose journal must keep every line (its
/// default keeps 10,000 lines per service per 30 s).
pub const JOURNALD_UNLIMITED: (&str, &str) = (
    "/etc/systemd/journald.conf.d/unlimited.conf",
    "[Journal]\nRateLimitIntervalSec=0\nRateLimitBurst=0\n",
);

/// Settings that log each request the reference app serves, and nothing
/// else beyond the default.
pub const LOG_REQUESTS: &str = "log_level = \"info,app::routes=debug\"\n";
