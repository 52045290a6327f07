//! In-place reloads: what a replacement costs.
//!
//! - [`handovers`] (section `reload`, no systemd): a standalone `app` with
//!   1,000 idle keep-alive connections gets `kill -USR1`; the figures are the
//!   time from the signal to the new process serving, to the old one's
//!   `handover finished` and to its exit, whether every connection still
//!   answers on the same TCP connection (and from the new process), and the
//!   new process's RSS against the old one's.
//! - [`single_instance`] (section `systemd`): one instance under the deploy
//!   load, reloaded five times and restarted five times, alternately: the
//!   latency of requests due during each against steady state.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use super::{Window, local_addr, mib, ms, rss, verdict, window};
use support::load::{Load, Sample};
use support::systemd::SystemdBox;

pub const CONNECTIONS: usize = 1_000;
/// Handovers, each of a fresh process: the median is the figure.
const ROUNDS: usize = 3;
/// Connections being opened at once.
const OPENING_AT_ONCE: usize = 100;
/// How long any awaited event (a log line, an exit, a response) may take.
const EVENT_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- handovers

/// One `kill -USR1` of a standalone app holding `CONNECTIONS` idle
/// keep-alive connections.
pub struct Handover {
    /// USR1 to the new process's "serves; moving connections" line.
    pub serving: Duration,
    /// USR1 to the old process's `handover finished` line, and the
    /// handover's own `elapsed_ms` in it.
    pub finished: Duration,
    pub logged_elapsed_ms: u64,
    /// USR1 to the old process's exit, and its status.
    pub exited: Duration,
    pub status: ExitStatus,
    /// From `handover finished`: moved to the new process, ended in the old.
    pub moved: u64,
    pub closed: u64,
    /// From the new process's "took its connections" line.
    pub taken: u64,
    /// Connections that answered a request afterwards on the same TCP
    /// connection, from the new process's pid; and the failures by kind.
    pub answered_by_new: usize,
    pub failures: std::collections::BTreeMap<String, usize>,
    /// The old process, idle (no connections), then with them; the new one
    /// once the old has exited, then after every connection made a request.
    pub old_idle_rss_kib: u64,
    pub old_rss_kib: u64,
    pub new_rss_kib: u64,
    pub new_rss_after_requests_kib: u64,
}

impl Handover {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    fn show(&self) {
        println!(
            "USR1 -> new process serving {}, handover finished {} (its elapsed_ms {}), old exited {} ({})",
            ms(self.serving),
            ms(self.finished),
            self.logged_elapsed_ms,
            ms(self.exited),
            self.status
        );
        println!(
            "  moved {}, ended in the old process {}, taken by the new {}; afterwards {} of {CONNECTIONS} answered on the same connection from the new process, {} failed {:?}",
            self.moved,
            self.closed,
            self.taken,
            self.answered_by_new,
            self.failed(),
            self.failures
        );
        println!(
            "  RSS: old {} idle, {} with {CONNECTIONS} connections; new {} once the old exited ({:.1} KiB per connection over the old's idle), {} after one more request on each",
            mib(self.old_idle_rss_kib),
            mib(self.old_rss_kib),
            mib(self.new_rss_kib),
            per_connection(self.new_rss_kib, self.old_idle_rss_kib),
            mib(self.new_rss_after_requests_kib)
        );
    }
}

fn per_connection(with: u64, idle: u64) -> f64 {
    with.saturating_sub(idle) as f64 / CONNECTIONS as f64
}

/// The table's rows for `ROUNDS` handovers.
pub fn handover_rows(rounds: &[Handover]) -> Vec<String> {
    let range = |f: &dyn Fn(&Handover) -> Duration| {
        let all: Vec<Duration> = rounds.iter().map(f).collect();
        format!(
            "{} ({}–{})",
            ms(super::median(&all)),
            ms(*all.iter().min().unwrap()),
            ms(*all.iter().max().unwrap())
        )
    };
    let moved_all = rounds.iter().all(|h| h.moved == CONNECTIONS as u64);
    let answered: usize = rounds.iter().map(|h| h.answered_by_new).sum();
    let failed: usize = rounds.iter().map(Handover::failed).sum();
    let clean = moved_all && failed == 0 && rounds.iter().all(|h| h.status.success());
    let last = rounds.last().expect("a handover");
    vec![
        format!(
            "| in-place reload of a standalone app holding {CONNECTIONS} idle keep-alive connections (`kill -USR1`; median of {ROUNDS}, range) | USR1 → new process serving {}, → `handover finished` {}, → old process exited {}; moved {} | |",
            range(&|h| h.serving),
            range(&|h| h.finished),
            range(&|h| h.exited),
            rounds
                .iter()
                .map(|h| h.moved.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        format!(
            "| after it, one request on each of the same TCP connections | {answered} of {} answered by the new process, **{failed} failures** | all moved, 0 failures: {} |",
            CONNECTIONS * rounds.len(),
            verdict(clean)
        ),
        format!(
            "| RSS, old process with {CONNECTIONS} idle connections → new process once it holds them → after one request on each | {} → {} → {} (per connection over the old's idle {}: {:.1} KiB → {:.1} KiB → {:.1} KiB) | |",
            mib(last.old_rss_kib),
            mib(last.new_rss_kib),
            mib(last.new_rss_after_requests_kib),
            mib(last.old_idle_rss_kib),
            per_connection(last.old_rss_kib, last.old_idle_rss_kib),
            per_connection(last.new_rss_kib, last.old_idle_rss_kib),
            per_connection(last.new_rss_after_requests_kib, last.old_idle_rss_kib),
        ),
    ]
}

/// `ROUNDS` handovers, each of a fresh process.
pub fn handovers(app: &Path) -> Vec<Handover> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The new process is the old one's child: with the old gone it becomes
    // ours, so we can reap it.
    set_child_subreaper(true);
    let rounds = (0..ROUNDS)
        .map(|_| {
            let handover = runtime.block_on(handover(app));
            handover.show();
            handover
        })
        .collect();
    set_child_subreaper(false);
    rounds
}

fn set_child_subreaper(on: bool) {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, libc::c_ulong::from(on)) };
    assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// The app's stderr line by line, with when each line arrived, and its exit.
struct Logged {
    pid: u32,
    lines: mpsc::Receiver<(Instant, String)>,
    exit: mpsc::Receiver<(Instant, ExitStatus)>,
    seen: Vec<String>,
    /// Lines read while looking for another: both processes write, so the
    /// new one's lines may come before the old one's that precede them in
    /// the handover.
    unmatched: Vec<(Instant, String)>,
}

impl Logged {
    fn start(app: &Path, addr: SocketAddr) -> Self {
        let mut child = Command::new(app)
            .args(["--listen", &addr.to_string(), "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", app.display()));
        let pid = child.id();
        let (line_tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // Both processes write here: the new one inherits the old one's
        // stderr, so this ends when both have exited.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = line_tx.send((Instant::now(), line));
            }
        });
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait().expect("wait for the app");
            let _ = exit_tx.send((Instant::now(), status));
        });
        Self {
            pid,
            lines,
            exit,
            seen: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// The first line containing `part` not returned before, and when it
    /// came.
    fn line(&mut self, part: &str) -> (Instant, String) {
        if let Some(i) = self.unmatched.iter().position(|(_, l)| l.contains(part)) {
            return self.unmatched.remove(i);
        }
        let until = Instant::now() + EVENT_LIMIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    if line.contains(part) {
                        return (at, line);
                    }
                    self.unmatched.push((at, line));
                }
                Err(_) => panic!(
                    "no line with {part:?} from the app; its output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// `key=N` in a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

async fn handover(app: &Path) -> Handover {
    let addr = local_addr();
    let mut old = Logged::start(app, addr);
    old.line(" ready ");
    // One connection first, used and closed, so the runtime's lazily made
    // parts are not charged to the rest.
    let (warm, _) = open(addr).await;
    drop(warm);
    let old_idle_rss_kib = rss(old.pid).0;

    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut opened = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let opening = opening.clone();
        opened.spawn(async move {
            let _permit = opening.acquire_owned().await.unwrap();
            open(addr).await
        });
    }
    let mut connections = Vec::with_capacity(CONNECTIONS);
    while let Some(joined) = opened.join_next().await {
        let (sender, pid) = joined.expect("a connection task");
        assert_eq!(pid, old.pid, "a connection answered by another process");
        connections.push(sender);
    }
    let old_rss_kib = rss(old.pid).0;

    let signalled = Instant::now();
    // SAFETY: signalling our own child, which has not been reaped (it is
    // reaped only after the handover, by the thread in `Logged`).
    unsafe { libc::kill(old.pid as i32, libc::SIGUSR1) };
    let (serving_at, serving) = old.line("the new process serves");
    let new_pid = field(&serving, "pid") as u32;
    let (finished_at, finished) = old.line("handover finished");
    let (exited_at, status) = old
        .exit
        .recv_timeout(EVENT_LIMIT)
        .expect("the old process exits after the handover");
    let (_, took) = old.line("took its connections");
    let new_rss_kib = rss(new_pid).0;

    let answers: Vec<_> = connections.iter_mut().map(version).collect();
    let mut answered_by_new = 0;
    let mut failures = std::collections::BTreeMap::new();
    for answer in futures_util::future::join_all(answers).await {
        let failure = match answer {
            Ok(pid) if pid == new_pid => {
                answered_by_new += 1;
                continue;
            }
            Ok(pid) => format!("answered by pid {pid}"),
            Err(err) => err,
        };
        *failures.entry(failure).or_insert(0) += 1;
    }
    let new_rss_after_requests_kib = rss(new_pid).0;
    drop(connections);
    stop_orphan(new_pid);

    Handover {
        serving: serving_at - signalled,
        finished: finished_at - signalled,
        logged_elapsed_ms: field(&finished, "elapsed_ms"),
        exited: exited_at - signalled,
        status,
        moved: field(&finished, "moved"),
        closed: field(&finished, "closed"),
        taken: field(&took, "connections"),
        answered_by_new,
        failures,
        old_idle_rss_kib,
        old_rss_kib,
        new_rss_kib,
        new_rss_after_requests_kib,
    }
}

/// SIGTERM to the new process, now our child (we are its subreaper), and
/// its exit.
fn stop_orphan(pid: u32) {
    // SAFETY: the pid is our child's and not yet reaped: only waitpid below
    // reaps it.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    assert_eq!(rc, pid as i32, "the new process is our child");
}

type Sender = SendRequest<Empty<Bytes>>;

/// A keep-alive connection that has made one request, and the pid that
/// answered it.
async fn open(addr: SocketAddr) -> (Sender, u32) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("an HTTP/1 handshake");
    tokio::spawn(connection);
    let pid = version(&mut sender).await.expect("the first request");
    (sender, pid)
}

/// `GET /version` on this connection: the pid that answered. A sender is
/// bound to one TCP connection; once that ends, requests fail.
async fn version(sender: &mut Sender) -> Result<u32, String> {
    let request = hyper::Request::get("/version")
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(EVENT_LIMIT, async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .map_err(|_| "no answer within 15 s".to_owned())?
    .map_err(|err| format!("request: {err}"))?;
    let (status, body) = response;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    let body = String::from_utf8_lossy(&body);
    body.split("\"pid\":")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no pid in {body:?}"))
}

// ---------------------------------------------------------------- single instance

/// Reloads and restarts of one instance, alternately, each of them.
const SINGLE_OPERATIONS: usize = 5;
const SINGLE_STEADY: Duration = Duration::from_secs(4);
const SINGLE_WARM_UP: Duration = Duration::from_secs(1);
const SINGLE_APART: Duration = Duration::from_secs(1);
/// Requests due this long after `systemctl` returned still count to its
/// window: a reload moves the idle connections after it returned.
const SETTLE: Duration = Duration::from_millis(250);

/// One instance under the deploy load: steady, reloads, restarts.
pub struct SingleInstance {
    pub steady: Window,
    pub reloads: Window,
    pub restarts: Window,
    /// The worst request of each reload's and each restart's window.
    pub reload_max: Vec<Duration>,
    pub restart_max: Vec<Duration>,
    /// How long `systemctl reload` and `systemctl restart` took, median.
    pub reload_took: Duration,
    pub restart_took: Duration,
    /// Failed requests due in the windows, and over the whole run.
    pub reload_errors: usize,
    pub restart_errors: usize,
    pub errors: u64,
    pub error_kinds: String,
}

impl SingleInstance {
    fn show(&self) {
        println!("one instance, steady: {}", self.steady);
        for (what, w, each, took, errors) in [
            (
                "reloads",
                &self.reloads,
                &self.reload_max,
                self.reload_took,
                self.reload_errors,
            ),
            (
                "restarts",
                &self.restarts,
                &self.restart_max,
                self.restart_took,
                self.restart_errors,
            ),
        ] {
            println!(
                "one instance, {SINGLE_OPERATIONS} {what} (systemctl median {}): {w}; max of each [{}]; errors {errors}",
                ms(took),
                each.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
            );
        }
        println!(
            "one instance, errors over the whole run: {} {}",
            self.errors, self.error_kinds
        );
    }

    pub fn row(&self) -> String {
        let ratio = |w: &Window| w.p99.as_secs_f64() / self.steady.p99.as_secs_f64();
        format!(
            "| one instance, {SINGLE_OPERATIONS} `systemctl reload` vs {SINGLE_OPERATIONS} `systemctl restart`, alternately, under the same load (requests due from the command to {} ms after it returned) | reload: p99 {} (**{:.2}×** steady), max {}, {} errors; restart: p99 {} ({:.2}× steady), max {}, {} errors; steady p99 {} max {} | |",
            SETTLE.as_millis(),
            ms(self.reloads.p99),
            ratio(&self.reloads),
            ms(self.reloads.max),
            self.reload_errors,
            ms(self.restarts.p99),
            ratio(&self.restarts),
            ms(self.restarts.max),
            self.restart_errors,
            ms(self.steady.p99),
            ms(self.steady.max),
        )
    }
}

/// `app@1` alone behind the socket (app@2 stopped, then started again),
/// under the deploy load.
pub fn single_instance(sd: &Arc<SystemdBox>, addr: SocketAddr) -> SingleInstance {
    sd.systemctl_ok(&["stop", "app@2.service"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (t0, (reloads, restarts), mut counts) = runtime.block_on(async {
        let t0 = Instant::now();
        let load = Load::start(
            addr,
            "/",
            super::KEEP_ALIVE_CLIENTS,
            super::NEW_CONN_CLIENTS,
            super::PACE,
        );
        tokio::time::sleep(SINGLE_STEADY).await;
        let mut reloads = Vec::new();
        let mut restarts = Vec::new();
        for _ in 0..SINGLE_OPERATIONS {
            for (verb, spans) in [("reload", &mut reloads), ("restart", &mut restarts)] {
                let sd = sd.clone();
                let started = Instant::now();
                tokio::task::spawn_blocking(move || sd.systemctl_ok(&[verb, "app@1.service"]))
                    .await
                    .unwrap();
                spans.push((started, Instant::now()));
                tokio::time::sleep(SINGLE_APART).await;
            }
        }
        (t0, (reloads, restarts), load.stop().await)
    });
    sd.systemctl_ok(&["start", "app@2.service"]);
    let timeline = std::mem::take(&mut counts.timeline);
    let settled = |spans: &[(Instant, Instant)]| -> Vec<(Instant, Instant)> {
        spans
            .iter()
            .map(|(from, to)| (*from, *to + SETTLE))
            .collect()
    };
    let failed_in = |spans: &[(Instant, Instant)]| {
        timeline
            .iter()
            .filter(|s| !s.ok && spans.iter().any(|(from, to)| s.due >= *from && s.due < *to))
            .count()
    };
    let each_max = |spans: &[(Instant, Instant)]| -> Vec<Duration> {
        spans
            .iter()
            .map(|span| window(&timeline, &[*span]).max)
            .collect()
    };
    let took = |spans: &[(Instant, Instant)]| {
        super::median(
            &spans
                .iter()
                .map(|(from, to)| *to - *from)
                .collect::<Vec<_>>(),
        )
    };
    let (reload_spans, restart_spans) = (settled(&reloads), settled(&restarts));
    let single = SingleInstance {
        steady: window(&timeline, &[(t0 + SINGLE_WARM_UP, reloads[0].0)]),
        reloads: window(&timeline, &reload_spans),
        restarts: window(&timeline, &restart_spans),
        reload_max: each_max(&reload_spans),
        restart_max: each_max(&restart_spans),
        reload_took: took(&reloads),
        restart_took: took(&restarts),
        reload_errors: failed_in(&reload_spans),
        restart_errors: failed_in(&restart_spans),
        errors: timeline.iter().filter(|s: &&Sample| !s.ok).count() as u64,
        error_kinds: format!("{:?}", counts.errors),
    };
    single.show();
    single
}
