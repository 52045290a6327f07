//! HTTP/1.0 keep-alive clients, raw over TCP: each sends
//! `GET PATH HTTP/1.0` with `Connection: keep-alive`, reads the response
//! (Content-Length delimited), reuses the connection while the server says
//! `keep-alive` and opens a new one when it says `close` (after checking the
//! server then ends the connection with a FIN). A lost response, a reset or
//! any other error is a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use super::raw::{End, RawConn};

#[derive(Debug, Clone, Default)]
pub struct Http10Counts {
    pub by_status: BTreeMap<u16, u64>,
    /// Responses that said `Connection: keep-alive` (and only that).
    pub keep_alive: u64,
    /// Responses that said `Connection: close` (and only that).
    pub close: u64,
    /// Responses whose `Connection` header was anything else, by value.
    pub other_connection: BTreeMap<String, u64>,
    /// Connections opened.
    pub connections: u64,
    /// Failures by kind: nothing here is expected.
    pub failures: BTreeMap<String, u64>,
}

impl Http10Counts {
    pub fn ok(&self) -> u64 {
        super::load::with_status(&self.by_status, true)
    }

    pub fn non_2xx(&self) -> u64 {
        super::load::with_status(&self.by_status, false)
    }

    pub fn failure_count(&self) -> u64 {
        self.failures.values().sum()
    }

    fn fail(&mut self, kind: impl Into<String>) {
        *self.failures.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Http10Counts) {
        for (k, n) in other.by_status {
            *self.by_status.entry(k).or_default() += n;
        }
        for (mine, theirs) in [
            (&mut self.other_connection, other.other_connection),
            (&mut self.failures, other.failures),
        ] {
            for (k, n) in theirs {
                *mine.entry(k).or_default() += n;
            }
        }
        self.keep_alive += other.keep_alive;
        self.close += other.close;
        self.connections += other.connections;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ok, {} non-2xx {:?}, {} keep-alive, {} close, other Connection values {:?}, \
             {} connections, {} failures {:?}",
            self.ok(),
            self.non_2xx(),
            self.by_status,
            self.keep_alive,
            self.close,
            self.other_connection,
            self.connections,
            self.failure_count(),
            self.failures,
        )
    }
}

/// `clients` HTTP/1.0 keep-alive clients, each sending a request at most
/// every `pace`, until [`Http10Load::stop`].
pub struct Http10Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Http10Counts>>,
}

impl Http10Load {
    pub fn start(addr: SocketAddr, path: &str, clients: usize, pace: Duration) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..clients)
            .map(|_| tokio::spawn(client(addr, path.to_owned(), pace, stopped.clone())))
            .collect();
        Self { stop, tasks }
    }

    pub async fn stop(self) -> Http10Counts {
        let _ = self.stop.send(true);
        let mut all = Http10Counts::default();
        for task in self.tasks {
            all.merge(task.await.expect("an HTTP/1.0 client task"));
        }
        all
    }
}

async fn client(
    addr: SocketAddr,
    path: String,
    pace: Duration,
    stopped: watch::Receiver<bool>,
) -> Http10Counts {
    let mut counts = Http10Counts::default();
    let request = format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let mut conn: Option<RawConn<tokio::net::TcpStream>> = None;
    while !*stopped.borrow() {
        let mut open = match conn.take() {
            Some(open) => open,
            None => match RawConn::connect(addr).await {
                Ok(open) => {
                    counts.connections += 1;
                    open
                }
                Err(err) => {
                    counts.fail(format!("connect: {err}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(err) = open.send(request.as_bytes()).await {
            counts.fail(format!("send: {err}"));
            continue;
        }
        let response = match open.response().await {
            Ok(response) => response,
            Err(err) => {
                counts.fail(format!("response: {err}"));
                continue;
            }
        };
        *counts.by_status.entry(response.status).or_default() += 1;
        let values: Vec<String> = response
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .map(|(_, value)| value.to_ascii_lowercase())
            .collect();
        match values.join(", ").as_str() {
            "keep-alive" => {
                counts.keep_alive += 1;
                conn = Some(open);
            }
            other => {
                if other == "close" {
                    counts.close += 1;
                } else {
                    *counts.other_connection.entry(other.to_owned()).or_default() += 1;
                }
                // HTTP/1.0 without keep-alive: the server ends the
                // connection after the response, cleanly.
                match open.end().await {
                    Ok(End::Eof) => {}
                    Ok(End::Reset) => counts.fail("reset after a response that closes"),
                    Ok(End::Data(data)) => {
                        counts.fail(format!("{} bytes after a closing response", data.len()))
                    }
                    Err(err) => counts.fail(format!("after a closing response: {err}")),
                }
            }
        }
        tokio::time::sleep(pace).await;
    }
    counts
}

/// `ab -V`'s first line (ApacheBench, Debian's apache2-utils), or `None`
/// when it is not installed.
pub fn ab_version() -> Option<String> {
    let out = std::process::Command::new("ab").arg("-V").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// One `ab -k` run, from its report.
#[derive(Debug, Clone, Default)]
pub struct AbRun {
    pub complete: u64,
    pub failed: u64,
    /// "Non-2xx responses" (the line is there only when some were).
    pub non_2xx: u64,
    /// Responses that kept the connection alive.
    pub keep_alive: u64,
    pub took: Duration,
    pub output: String,
}

/// `ab -k -c concurrency -n requests http://ADDR/PATH`: ApacheBench speaks
/// HTTP/1.0, and with `-k` asks for keep-alive; it reconnects when a
/// response does not keep the connection, and gives up (exits non-zero,
/// with no report) on a connection reset. Killed after `limit`. An error,
/// with its output, when it failed or gave no report.
pub fn ab_keep_alive(
    addr: SocketAddr,
    path: &str,
    requests: u64,
    concurrency: u64,
    limit: Duration,
) -> Result<AbRun, String> {
    let started = std::time::Instant::now();
    let child = std::process::Command::new("ab")
        .args(["-k", "-q", "-s", "20"])
        .args(["-c", &concurrency.to_string()])
        .args(["-n", &requests.to_string()])
        .arg(format!("http://{addr}{path}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ab");
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // SAFETY: kill has no memory effects; the child is not reaped
            // until wait_with_output below returns, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("ab's output");
    let _ = done_tx.send(());
    killer.join().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Option<u64> {
        output
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let report = || -> Option<AbRun> {
        Some(AbRun {
            complete: field("Complete requests:")?,
            failed: field("Failed requests:")?,
            non_2xx: field("Non-2xx responses:").unwrap_or(0),
            keep_alive: field("Keep-Alive requests:")?,
            took: started.elapsed(),
            output: output.clone(),
        })
    };
    match report() {
        Some(run) if out.status.success() => Ok(run),
        _ => Err(format!(
            "ab: {} after {:?}:\n{output}",
            out.status,
            started.elapsed()
        )),
    }
}
