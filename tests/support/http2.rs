//! HTTP/2 over cleartext (prior knowledge) load: nghttp2's `h2load`, a
//! client we did not write, and hyper's HTTP/2 client connection, which
//! replaces each connection the server ends (GOAWAY) with a new one and
//! sorts every failed stream by what it means.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
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

/// `h2load -n requests -c clients -m streams --rps rps http://ADDR/PATH`:
/// h2c with prior knowledge, its default for an `http://` URI; `rps` is
/// each client's requests per second. Killed after `limit`.
pub fn h2load(
    addr: SocketAddr,
    path: &str,
    requests: u64,
    clients: u64,
    streams: u64,
    rps: u64,
    limit: Duration,
) -> H2loadRun {
    let started = Instant::now();
    let child = Command::new("h2load")
        .args(["-n", &requests.to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["--rps", &rps.to_string()])
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
    /// Responses by status, body read in full.
    pub by_status: BTreeMap<u16, u64>,
    /// Streams that failed, by error. Which of them the server processed
    /// only the server can say: see [`H2Counts::ok_by_tag`].
    pub failed: BTreeMap<String, u64>,
    /// Failed requests sent again, on the next connection: what a client
    /// does with a request a GOAWAY or REFUSED_STREAM says was not
    /// processed. Each one is counted in `failed` once per failure.
    pub retried: u64,
    /// Failed requests still not answered when the clients stopped.
    pub unanswered: u64,
    /// 2xx responses by connection (`CLIENT.CONNECTION`, the value of the
    /// tag in the query), to set against what the server logged.
    pub ok_by_tag: BTreeMap<String, u64>,
    /// Connections opened, and how they ended.
    pub connections: u64,
    pub ended: BTreeMap<String, u64>,
    /// Connections that could not be opened.
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
            (&mut self.ok_by_tag, other.ok_by_tag),
            (&mut self.ended, other.ended),
            (&mut self.connect_errors, other.connect_errors),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
        self.retried += other.retried;
        self.unanswered += other.unanswered;
        self.connections += other.connections;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} non-2xx {:?}, {} failed streams {:?}, {} sent again ({} still \
             unanswered at the end), {} connections (ended: {:?}; could not connect: {:?})",
            self.ok(),
            self.non_2xx(),
            self.by_status,
            self.failed_count(),
            self.failed,
            self.retried,
            self.unanswered,
            self.connections,
            self.ended,
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

/// `clients` hyper HTTP/2 clients (`hyper::client::conn::http2`), each on
/// its own connection, sending `streams` concurrent requests at a time,
/// then pausing `pace`. A connection the server ends (GOAWAY) is replaced
/// by a new one, and a request that failed is sent again on it.
///
/// Each request asks for `/?TAG=CLIENT.CONNECTION`, so the server's log of
/// the requests it processed can be set against the responses each
/// connection received ([`H2Counts::ok_by_tag`]). hyper does not export h2's
/// error type, and the text of an error does not say whether the server
/// processed the stream (after a GOAWAY, a stream cut by the connection's
/// end and one the client opened too late fail alike); the server's log does.
pub struct H2Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<H2Counts>>,
}

/// Bounds one request, so a stuck server is a failure, not a hang.
const STREAM_LIMIT: Duration = Duration::from_secs(20);

impl H2Load {
    pub fn start(
        addr: SocketAddr,
        tag: &str,
        clients: usize,
        streams: usize,
        pace: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..clients)
            .map(|n| {
                tokio::spawn(client(
                    addr,
                    tag.to_owned(),
                    n,
                    streams,
                    pace,
                    stopped.clone(),
                ))
            })
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) -> H2Counts {
        let _ = self.stop.send(true);
        let mut all = H2Counts::default();
        for task in self.tasks {
            all.merge(task.await.expect("an HTTP/2 client task"));
        }
        all
    }
}

/// Client `n`: its connections ask for `/?TAG=N.0`, `/?TAG=N.1`, ...
async fn client(
    addr: SocketAddr,
    tag: String,
    n: usize,
    streams: usize,
    pace: Duration,
    stopped: watch::Receiver<bool>,
) -> H2Counts {
    let mut counts = H2Counts::default();
    // Failed requests to send again before new ones.
    let mut owed: u64 = 0;
    // Once told to stop, one more connection at most, for what is owed.
    let mut last_chance = false;
    loop {
        if *stopped.borrow() {
            if owed == 0 || last_chance {
                break;
            }
            last_chance = true;
        }
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(err) => {
                *counts.connect_errors.entry(err.to_string()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let handshake = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        );
        let (mut sender, conn) = match tokio::time::timeout(STREAM_LIMIT, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => {
                let key = format!("handshake: {}", chain(&err));
                *counts.connect_errors.entry(key).or_default() += 1;
                continue;
            }
            Err(_) => {
                *counts
                    .connect_errors
                    .entry("handshake: timed out".into())
                    .or_default() += 1;
                continue;
            }
        };
        let connection = format!("{n}.{}", counts.connections);
        let uri: hyper::Uri = format!("http://{addr}/?{tag}={connection}")
            .parse()
            .unwrap();
        counts.connections += 1;
        let conn = tokio::spawn(conn);
        // Batches of concurrent streams on this connection until it ends.
        loop {
            let stopping = *stopped.borrow();
            if (stopping && owed == 0) || sender.ready().await.is_err() {
                break;
            }
            let size = if stopping {
                owed
            } else {
                streams as u64 + owed
            };
            counts.retried += owed;
            owed = 0;
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..size {
                let mut sender = sender.clone();
                let request = hyper::Request::get(uri.clone()).body(Empty::new()).unwrap();
                batch.spawn(async move {
                    let exchange = async {
                        let response = sender.send_request(request).await?;
                        let status = response.status().as_u16();
                        response.into_body().collect().await?;
                        Ok::<u16, hyper::Error>(status)
                    };
                    tokio::time::timeout(STREAM_LIMIT, exchange).await
                });
            }
            let mut connection_over = false;
            while let Some(result) = batch.join_next().await {
                let kind = match result.expect("a stream task") {
                    Ok(Ok(status)) => {
                        *counts.by_status.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            *counts.ok_by_tag.entry(connection.clone()).or_default() += 1;
                        }
                        continue;
                    }
                    Ok(Err(err)) => chain(&err),
                    Err(_) => format!("no response within {STREAM_LIMIT:?}"),
                };
                connection_over = true;
                owed += 1;
                *counts.failed.entry(kind).or_default() += 1;
            }
            if connection_over || sender.is_closed() {
                break;
            }
            if !stopping {
                tokio::time::sleep(pace).await;
            }
        }
        drop(sender);
        let how = match tokio::time::timeout(STREAM_LIMIT, conn).await {
            Ok(Ok(Ok(()))) => "closed cleanly".to_owned(),
            Ok(Ok(Err(err))) => format!("error: {}", chain(&err)),
            Ok(Err(join)) => format!("task: {join}"),
            Err(_) => "still open after its last stream".to_owned(),
        };
        *counts.ended.entry(how).or_default() += 1;
    }
    counts.unanswered = owed;
    counts
}

/// The requests the reference app logged (`"request"`, at debug level for
/// its `app` target, the app crate's library) whose URI's query is `KEY=VALUE`, counted by
/// VALUE: what the server processed, for each tagged run or connection of
/// a client. The box's journald must not rate-limit (see
/// [`JOURNALD_UNLIMITED`]).
pub fn requests_served_by_tag(sd: &super::systemd::SystemdBox, key: &str) -> BTreeMap<String, u64> {
    let mut served = BTreeMap::new();
    let prefix = format!("?{key}=");
    for entry in sd.journal_entries(&["-t", "app", "MESSAGE=request"]) {
        let uri = entry["F_URI"].as_str().or(entry["URI"].as_str());
        let Some(uri) = uri else {
            panic!("a request line without its URI: {entry}")
        };
        if let Some((_, value)) = uri.split_once(&prefix) {
            *served.entry(value.to_owned()).or_default() += 1;
        }
    }
    served
}

/// A journald drop-in for a box whose journal must keep every line (its
/// default keeps 10,000 lines per service per 30 s).
pub const JOURNALD_UNLIMITED: (&str, &str) = (
    "/etc/systemd/journald.conf.d/unlimited.conf",
    "[Journal]\nRateLimitIntervalSec=0\nRateLimitBurst=0\n",
);

/// Settings that log each request the reference app serves, and nothing
/// else beyond the default.
pub const LOG_REQUESTS: &str = "log_level = \"info,app=debug\"\n";
