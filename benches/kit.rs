//! What the kit costs and what a deploy costs, as figures, a results table
//! and a plot. Run it with `benches/run`, which installs wrk, valgrind and
//! h2load, builds the baseline server (`examples/baseline.rs`) and runs
//! `cargo bench --bench kit`. It is not part of `cargo test`.
//!
//! In order, each section named as `cargo bench --bench kit -- NAME` runs it
//! alone:
//! 1. `start`, start and size: exec → `READY=1`, RSS once ready (local
//!    processes);
//! 2. `steady`: app's `/` against the bare hyper baseline, with wrk at 64
//!    connections, alternating (ABBA), six rounds;
//! 3. `callgrind`: instructions per HTTP/1.1 request, app and baseline, each
//!    under callgrind ([`callgrind`]);
//! 4. `h2`: `/` over HTTP/2 (h2c), app against the bare hyper h2c server,
//!    loaded by h2load ([`h2`]);
//! 5. `connections`: scaling with concurrent connections, 64 to 4,096
//!    (wrk), both servers;
//! 6. `websockets`: a drain with 1,000 open WebSockets: RSS per idle
//!    WebSocket, SIGTERM to the last Close and to exit ([`websockets`]);
//! 7. `reload`: an in-place reload (`kill -USR1`) of a standalone app
//!    holding 1,000 idle keep-alive connections: time to hand them over,
//!    whether each still answers on its TCP connection, the new process's
//!    RSS ([`reload`]);
//! 8. `systemd`, under a booted systemd with the real units: RSS per
//!    instance idle and under load, the time one rollout of two instances
//!    takes with no traffic (by reload and by restart), and scaling with the
//!    number of instances (1, 2, 4); one instance reloaded and restarted
//!    under load ([`reload`]); then deploys: a fixed-rate load across 10
//!    rollouts by reload (`app rollout`), 10 by restart (`app rollout
//!    --restart`) and 10 control restarts, interleaved: errors, latency
//!    during each against steady state and the control, the throughput dip,
//!    and a plot of latency over time with each rollout marked.
//!
//! It writes `benches/results/RESULTS.md` and `benches/results/rollouts.svg`,
//! and puts the same table into docs/figures.md between its `bench-results`
//! markers. The machine is shared and noisy: compare the ratios of one run.

// The newer sections, a file each; under benches/kit/ so cargo does not take
// them for bench targets of their own.
#[path = "kit/callgrind.rs"]
mod callgrind;
#[path = "kit/h2.rs"]
mod h2;
#[path = "kit/reload.rs"]
mod reload;
#[path = "kit/websockets.rs"]
mod websockets;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::load::{Load, Sample};
use support::process::{free_port, rss_from_status};
use support::systemd::{Install, SystemdBox};

const STARTS: usize = 20;
/// wrk's connections for the steady-state comparison.
const STEADY_CONNECTIONS: u32 = 64;
const STEADY_SECONDS: u32 = 4;
/// Pairs of runs, in ABBA order (baseline, app, app, baseline, ...), so a
/// drift in the machine's speed weighs on both servers alike.
const STEADY_ROUNDS: usize = 6;
const CONNECTION_STEPS: [u32; 4] = [64, 256, 1024, 4096];
const SCALING_SECONDS: u32 = 4;
/// ABBA rounds at each step: one back-to-back pair is at the mercy of what
/// else the two cores do in those seconds (wrk shares them).
const SCALING_ROUNDS: usize = 4;
const INSTANCE_STEPS: [u32; 3] = [1, 2, 4];
const INSTANCE_CONNECTIONS: u32 = 256;
/// The deploy run's fixed-rate load: clients, each due to send every PACE.
const KEEP_ALIVE_CLIENTS: usize = 80;
const NEW_CONN_CLIENTS: usize = 20;
const PACE: Duration = Duration::from_millis(50);
const ROLLOUTS: usize = 10;
/// Between rollouts, so each shows on its own in the plot and the figures.
const BETWEEN_ROLLOUTS: Duration = Duration::from_secs(1);
const STEADY_WINDOW: Duration = Duration::from_secs(10);
/// Left out of the steady window: connections being opened.
const WARM_UP: Duration = Duration::from_secs(2);
const TAIL: Duration = Duration::from_secs(3);
const BUCKET: Duration = Duration::from_millis(100);

/// The sections, by the names `cargo bench --bench kit -- NAME...` takes to
/// run only some of them (then the results, docs/figures.md and the committed
/// plot are left alone; the plot goes under the target directory).
const SECTIONS: [&str; 8] = [
    "start",
    "steady",
    "callgrind",
    "h2",
    "connections",
    "websockets",
    "reload",
    "systemd",
];

fn main() {
    // cargo bench passes --bench; other arguments name sections to run.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for name in &only {
        assert!(
            SECTIONS.contains(&name.as_str()),
            "unknown section {name:?}; the sections are {SECTIONS:?}"
        );
    }
    let runs = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    // 4,096 connections need more descriptors than the usual soft limit;
    // children (wrk, the servers) inherit the raised one.
    if let Err(err) = handover::internals::raise_soft_limit() {
        eprintln!("cannot raise the file descriptor limit: {err}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = PathBuf::from(support::process::app_binary());
    let baseline = baseline_binary();
    for (section, program, package) in [
        ("steady", "wrk", "wrk"),
        ("connections", "wrk", "wrk"),
        ("systemd", "wrk", "wrk"),
        ("callgrind", "valgrind", "valgrind"),
        ("callgrind", "h2load", "nghttp2-client"),
        ("h2", "h2load", "nghttp2-client"),
    ] {
        if runs(section) {
            require(program, package);
        }
    }

    let mut report = Report::default();
    if runs("start") {
        heading("start and size");
        startup(&app, &mut report);
    }
    if runs("steady") {
        heading(&format!(
            "steady state: app against the baseline, wrk -c{STEADY_CONNECTIONS}"
        ));
        steady(&app, &baseline, &mut report);
    }
    if runs("callgrind") {
        heading("instructions per request under callgrind, HTTP/1.1 keep-alive");
        report.instructions = callgrind::measure(&app, &baseline, callgrind::Protocol::Http1);
        heading("instructions per request under callgrind, HTTP/2 (h2c)");
        report.h2_instructions = callgrind::measure(&app, &baseline, callgrind::Protocol::H2c);
    }
    if runs("h2") {
        heading(&format!(
            "HTTP/2 (h2c): app against the baseline, h2load -c{} -m{}",
            h2::CONNECTIONS,
            h2::STREAMS
        ));
        report.h2 = Some(h2::measure(&app, &baseline));
    }
    if runs("connections") {
        heading("scaling with connections");
        connections(&app, &baseline, &mut report);
    }
    if runs("websockets") {
        heading(&format!(
            "a drain with {} open WebSockets",
            websockets::SOCKETS
        ));
        report.websocket_drains = websockets::measure(&app);
    }
    if runs("reload") {
        heading(&format!(
            "an in-place reload holding {} idle keep-alive connections",
            reload::CONNECTIONS
        ));
        report.handovers = reload::handovers(&app);
    }
    if runs("systemd") {
        match boot_blocker() {
            None => {
                heading("under systemd: instances, rollouts");
                under_systemd(&mut report, only.is_empty());
            }
            Some(why) => {
                println!("SKIPPED the systemd sections: {why}");
                report.skipped = Some(why);
            }
        }
    }
    if only.is_empty() {
        report.write(root);
    } else {
        println!("(a partial run: results and docs/figures.md left as they were)");
    }
}

/// A section's title, with the machine's load average as it starts: the
/// cores are shared, and a busy machine shows here before it shows in the
/// figures.
fn heading(title: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one_minute = load.split_whitespace().next().unwrap_or("?");
    println!("== {title} (load average {one_minute})");
}

/// The baseline server, built by `benches/run` next to this bench binary.
fn baseline_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    // target/<profile>/deps/kit-HASH -> target/<profile>/examples/baseline
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("examples/baseline"))
        .expect("a target directory");
    assert!(
        path.exists(),
        "{} is missing: run benches/run, or `cargo build --release --example baseline` first",
        path.display()
    );
    path
}

/// A load tool or profiler a section runs; `benches/run` installs them.
fn require(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty());
    assert!(
        found,
        "{program} is missing: run benches/run, which installs it (apt-get install {package})"
    );
}

fn boot_blocker() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root, cannot boot systemd".into());
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("unshare is missing".into());
    }
    None
}

// ---------------------------------------------------------------- figures

#[derive(Default)]
struct Report {
    ready_median: Duration,
    ready_min: Duration,
    ready_max: Duration,
    idle_rss_kib: u64,
    steady_app: Vec<Wrk>,
    steady_baseline: Vec<Wrk>,
    /// Each step's runs, in ABBA order, as many of each.
    connections_app: Vec<(u32, Vec<Wrk>)>,
    connections_baseline: Vec<(u32, Vec<Wrk>)>,
    peak_rss_kib: u64,
    unit_idle_rss_kib: Vec<u64>,
    unit_load_rss_kib: Vec<u64>,
    rollout_idle: Vec<Duration>,
    rollout_idle_restart: Vec<Duration>,
    instances: Vec<(u32, Wrk)>,
    single_instance: Option<reload::SingleInstance>,
    deploy: Option<Deploy>,
    instructions: Vec<callgrind::Figures>,
    h2_instructions: Vec<callgrind::Figures>,
    h2: Option<h2::Figures>,
    websocket_drains: Vec<websockets::Drain>,
    handovers: Vec<reload::Handover>,
    skipped: Option<String>,
}

/// What wrk measured in one run.
#[derive(Debug, Clone, Copy, Default)]
struct Wrk {
    requests_per_sec: f64,
    p50: Duration,
    p99: Duration,
    socket_errors: u64,
    non_2xx: u64,
}

struct Deploy {
    steady: Window,
    /// `app rollout` (each instance reloaded) and `app rollout --restart`.
    reload: Rollouts,
    restart: Rollouts,
    /// Failed requests over the whole run.
    errors: u64,
    error_kinds: String,
    offered_rps: f64,
    steady_rps: f64,
    /// Share of the machine's CPU in use: steady, and during the rollouts
    /// by reload.
    cpu_steady: f64,
    cpu_rollouts: f64,
    /// Requests due while two sandboxed units that serve nothing restarted.
    control: Window,
}

/// One kind of rollout, `ROLLOUTS` of them under the deploy load.
struct Rollouts {
    /// Requests due during the rollouts.
    window: Window,
    took: Duration,
    /// Failed requests due from each rollout's start to the next step.
    errors: usize,
    /// During the rollouts: first requests on a connection, and the rest.
    by_connection: (Window, Window),
    /// Connections the keep-alive clients opened from each rollout's start
    /// to the next step (a rollout that keeps them open opens none).
    reconnects: usize,
    min_bucket_rps: f64,
}

impl Rollouts {
    fn show(&self, what: &str) {
        println!(
            "{ROLLOUTS} rollouts by {what} ({:?}): {}; errors {}",
            self.took, self.window, self.errors
        );
        println!(
            "  first request on a connection: {} requests, p99 {}; later ones: {} requests, p99 {}; \
             keep-alive clients' new connections {}; lowest {BUCKET:?} bucket {:.0} req/s",
            self.by_connection.0.requests,
            ms(self.by_connection.0.p99),
            self.by_connection.1.requests,
            ms(self.by_connection.1.p99),
            self.reconnects,
            self.min_bucket_rps
        );
    }
}

struct Window {
    requests: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, p50 {} p99 {} max {}",
            self.requests,
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    sorted[sorted.len() / 2]
}

/// The median of back-to-back pairs' throughput ratios (app over baseline).
fn round_ratio(app: &[Wrk], baseline: &[Wrk]) -> f64 {
    median(
        &app.iter()
            .zip(baseline)
            .map(|(a, b)| a.requests_per_sec / b.requests_per_sec)
            .collect::<Vec<_>>(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------- local servers

/// A server process on loopback, stopped on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(program: &Path, args: &[&str], addr: SocketAddr) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        // The listening socket's state is the event: it accepts once bound.
        // Under valgrind, start-up takes seconds.
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not listen on {addr}",
                program.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, addr }
    }

    /// `app` on a free loopback port, with `extra` arguments.
    fn app(app: &Path, extra: &[&str]) -> Self {
        let addr = local_addr();
        let listen = addr.to_string();
        let mut args = vec!["--listen", &listen, "--log-level", "warn"];
        args.extend(extra);
        Self::start(app, &args, addr)
    }

    /// The baseline on a free loopback port, with `extra` arguments.
    fn baseline(baseline: &Path, extra: &[&str]) -> Self {
        let addr = local_addr();
        let listen = addr.to_string();
        let mut args = extra.to_vec();
        args.push(&listen);
        Self::start(baseline, &args, addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then its exit.
    fn stop(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Once reaped, its pid may be someone else's: signal only a live child.
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn local_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn rss(pid: u32) -> (u64, u64) {
    rss_from_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
}

// ---------------------------------------------------------------- 1. start

fn startup(app: &Path, report: &mut Report) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let notify_path = dir.path().join("notify");
    let notify =
        std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ready = Vec::with_capacity(STARTS);
    let mut idle = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let started = Instant::now();
        let mut child = Command::new(app)
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start app");
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
            if buf[..n].starts_with(b"READY=1") {
                break;
            }
        }
        ready.push(started.elapsed());
        idle.push(rss(child.id()).0);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("app exits");
    }
    report.ready_median = median(&ready);
    report.ready_min = *ready.iter().min().unwrap();
    report.ready_max = *ready.iter().max().unwrap();
    report.idle_rss_kib = median(&idle);
    println!(
        "exec -> READY=1 over {STARTS} starts: median {:?} (min {:?}, max {:?}); idle RSS {}",
        report.ready_median,
        report.ready_min,
        report.ready_max,
        mib(report.idle_rss_kib)
    );
}

// ---------------------------------------------------------------- 2, 3. wrk

fn wrk(addr: SocketAddr, connections: u32, seconds: u32) -> Wrk {
    let threads = 2.min(connections);
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "--latency",
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).unwrap_or_else(|e| panic!("cannot read wrk's output ({e}):\n{text}"))
}

fn parse_wrk(text: &str) -> Result<Wrk, String> {
    let after = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_sec = after("Requests/sec:")
        .ok_or("no Requests/sec")?
        .parse()
        .map_err(|e| format!("Requests/sec: {e}"))?;
    let p50 = wrk_duration(after("50%").ok_or("no 50% line")?)?;
    let p99 = wrk_duration(after("99%").ok_or("no 99% line")?)?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0", only when any.
    let socket_errors = after("Socket errors:")
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non_2xx = after("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Wrk {
        requests_per_sec,
        p50,
        p99,
        socket_errors,
        non_2xx,
    })
}

/// wrk's "620.00us", "4.21ms", "1.02s".
fn wrk_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("no unit in {text:?}"));
    };
    let value: f64 = number.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(Duration::from_secs_f64(value * scale))
}

fn show(name: &str, w: &Wrk) {
    println!(
        "{name:>10}: {:>9.0} req/s  p50 {:>9}  p99 {:>9}  socket errors {}  non-2xx {}",
        w.requests_per_sec,
        ms(w.p50),
        ms(w.p99),
        w.socket_errors,
        w.non_2xx
    );
}

/// Calls `run(name, round)` for "baseline" and "app", `rounds` times, in
/// ABBA order (baseline, app, app, baseline, ...): a drift in the machine's
/// speed over the section weighs on both alike.
fn abba(rounds: usize, mut run: impl FnMut(&str, usize)) {
    for round in 1..=rounds {
        let order = if round % 2 == 1 {
            ["baseline", "app"]
        } else {
            ["app", "baseline"]
        };
        for name in order {
            run(name, round);
        }
    }
}

fn steady(app: &Path, baseline: &Path, report: &mut Report) {
    let app = Server::app(app, &[]);
    let base = Server::baseline(baseline, &[]);
    // Warm both up (connections, allocator, caches) before measuring.
    wrk(base.addr, STEADY_CONNECTIONS, 2);
    wrk(app.addr, STEADY_CONNECTIONS, 2);
    abba(STEADY_ROUNDS, |name, round| {
        let (addr, runs) = match name {
            "app" => (app.addr, &mut report.steady_app),
            _ => (base.addr, &mut report.steady_baseline),
        };
        let w = wrk(addr, STEADY_CONNECTIONS, STEADY_SECONDS);
        show(&format!("{name} {round}"), &w);
        runs.push(w);
    });
    println!(
        "app / baseline, median of the rounds: {:.3}×",
        report.steady_ratio()
    );
}

fn connections(app_bin: &Path, baseline: &Path, report: &mut Report) {
    let app = Server::app(app_bin, &[]);
    let base = Server::baseline(baseline, &[]);
    for connections in CONNECTION_STEPS {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        abba(SCALING_ROUNDS, |name, round| {
            let (addr, runs) = match name {
                "app" => (app.addr, &mut a),
                _ => (base.addr, &mut b),
            };
            let w = wrk(addr, connections, SCALING_SECONDS);
            show(&format!("{name} c{connections} {round}"), &w);
            runs.push(w);
        });
        println!(
            "c{connections}: app / baseline, median of the rounds: {:.3}×",
            round_ratio(&a, &b)
        );
        report.connections_baseline.push((connections, b));
        report.connections_app.push((connections, a));
    }
    report.peak_rss_kib = rss(app.pid()).1;
    println!(
        "app peak RSS through up to {} connections: {}",
        CONNECTION_STEPS[CONNECTION_STEPS.len() - 1],
        mib(report.peak_rss_kib)
    );
}

// ---------------------------------------------------------------- 4, 5. systemd

fn unit_rss(sd: &SystemdBox, unit: &str) -> (u64, u64) {
    let pid = sd.property(unit, "MainPID");
    let out = sd.run("cat", &[&format!("/proc/{pid}/status")]);
    rss_from_status(&String::from_utf8_lossy(&out.stdout))
}

/// How `app rollout` replaces each instance.
#[derive(Clone, Copy)]
enum Rollout {
    /// `systemctl reload`: in place, connections moved (the default).
    Reload,
    /// `systemctl restart`: `--restart`.
    Restart,
}

fn rollout(sd: &SystemdBox, how: Rollout) -> Duration {
    let args: &[&str] = match how {
        Rollout::Reload => &["rollout"],
        Rollout::Restart => &["rollout", "--restart"],
    };
    let started = Instant::now();
    let out = sd.run("/usr/bin/app", args);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "app {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn under_systemd(report: &mut Report, full_run: bool) {
    let addr = local_addr();
    let install = Install::project("")
        .file(
            "/etc/systemd/system/app.socket.d/listen.conf",
            &format!("[Socket]\nListenStream=\nListenStream={addr}\n"),
        )
        .file("/etc/systemd/system/idle@.service", &idle_unit());
    let sd = Arc::new(SystemdBox::boot(install));
    sd.systemctl_ok(&["start", "app.target"]);
    // One request each way so both instances have served before measuring.
    wrk(addr, 4, 1);
    for unit in ["app@1.service", "app@2.service"] {
        report.unit_idle_rss_kib.push(unit_rss(&sd, unit).0);
    }
    println!(
        "idle RSS per instance: {}",
        report
            .unit_idle_rss_kib
            .iter()
            .map(|k| mib(*k))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for _ in 0..5 {
        report.rollout_idle.push(rollout(&sd, Rollout::Reload));
        report
            .rollout_idle_restart
            .push(rollout(&sd, Rollout::Restart));
    }
    println!(
        "one rollout of 2 instances, no traffic: median of 5 by reload {:?}, by restart {:?}",
        median(&report.rollout_idle),
        median(&report.rollout_idle_restart)
    );

    for instances in INSTANCE_STEPS {
        for n in 1..=4 {
            let unit = format!("app@{n}.service");
            let verb = if n <= instances { "start" } else { "stop" };
            sd.systemctl_ok(&[verb, &unit]);
        }
        let w = wrk(addr, INSTANCE_CONNECTIONS, SCALING_SECONDS);
        show(&format!("{instances} inst."), &w);
        report.instances.push((instances, w));
        if instances == 2 {
            for unit in ["app@1.service", "app@2.service"] {
                report.unit_load_rss_kib.push(unit_rss(&sd, unit).1);
            }
        }
    }
    for unit in ["app@3.service", "app@4.service"] {
        sd.systemctl_ok(&["stop", unit]);
    }
    println!(
        "peak RSS per instance under wrk -c{INSTANCE_CONNECTIONS}: {}",
        report
            .unit_load_rss_kib
            .iter()
            .map(|k| mib(*k))
            .collect::<Vec<_>>()
            .join(", ")
    );

    report.single_instance = Some(reload::single_instance(&sd, addr));
    report.deploy = Some(deploys(&sd, addr, full_run));
}

/// The control for the deploy figures: app@.service's sandbox around a
/// process that serves nothing (`sleep`), so restarting two of them costs
/// systemd what restarting two instances does, without any handover.
fn idle_unit() -> String {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/app@.service"))
            .expect("systemd/app@.service");
    let dropped = [
        "Sockets=",
        "NonBlocking=",
        "ExecReload=",
        "Wants=",
        "After=",
        "Also=",
        "WantedBy=",
    ];
    unit.lines()
        .filter(|l| !dropped.iter().any(|d| l.starts_with(d)))
        .map(|l| {
            if l.starts_with("Type=") {
                "Type=exec".to_owned()
            } else if l.starts_with("ExecStart=") {
                "ExecStart=/bin/sleep infinity".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Restarts two idle@ units one after the other, as a rollout restarts two
/// instances.
fn restart_idle(sd: &SystemdBox) {
    for unit in ["idle@1.service", "idle@2.service"] {
        sd.systemctl_ok(&["restart", unit]);
    }
}

fn deploys(sd: &Arc<SystemdBox>, addr: SocketAddr, full_run: bool) -> Deploy {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = KEEP_ALIVE_CLIENTS + NEW_CONN_CLIENTS;
    let offered_rps = clients as f64 / PACE.as_secs_f64();
    println!(
        "fixed rate: {clients} clients ({KEEP_ALIVE_CLIENTS} keep-alive, {NEW_CONN_CLIENTS} new \
         connection per request), {offered_rps:.0} req/s; after {STEADY_WINDOW:?}, {ROLLOUTS} \
         times: a rollout by reload, one by restart, a control"
    );
    let (t0, spans, cpu, mut keep_alive, new_conn) = runtime.block_on(async {
        let t0 = Instant::now();
        // Two loads, so the keep-alive clients' new connections can be
        // counted apart from the new-connection clients'.
        let keep_alive = Load::start(addr, "/", KEEP_ALIVE_CLIENTS, 0, PACE);
        let new_conn = Load::start(addr, "/", 0, NEW_CONN_CLIENTS, PACE);
        // Measurement windows, not synchronisation: steady state first.
        tokio::time::sleep(WARM_UP).await;
        let steady_cpu = CpuTimes::now();
        tokio::time::sleep(STEADY_WINDOW - WARM_UP).await;
        let steady_cpu = steady_cpu.busy_since();
        // Interleaved, so a drift in the machine's load weighs on the
        // three alike. The control: the same number of restarts of
        // sandboxed units that serve nothing, at the same spacing.
        let mut spans = [Vec::new(), Vec::new(), Vec::new()];
        let mut rollout_cpu = (0u64, 0u64);
        for i in 0..ROLLOUTS {
            for (step, spans) in spans.iter_mut().enumerate() {
                if i > 0 || step > 0 {
                    tokio::time::sleep(BETWEEN_ROLLOUTS).await;
                }
                let sd = sd.clone();
                let cpu = CpuTimes::now();
                let started = Instant::now();
                tokio::task::spawn_blocking(move || match step {
                    0 => _ = rollout(&sd, Rollout::Reload),
                    1 => _ = rollout(&sd, Rollout::Restart),
                    _ => restart_idle(&sd),
                })
                .await
                .unwrap();
                spans.push((started, Instant::now()));
                if step == 0 {
                    let (busy, total) = cpu.busy_and_total_since();
                    rollout_cpu = (rollout_cpu.0 + busy, rollout_cpu.1 + total);
                }
            }
        }
        tokio::time::sleep(TAIL).await;
        let rollout_cpu = rollout_cpu.0 as f64 / rollout_cpu.1.max(1) as f64;
        (
            t0,
            spans,
            (steady_cpu, rollout_cpu),
            keep_alive.stop().await,
            new_conn.stop().await,
        )
    });
    let [reloads, restarts, controls] = spans;
    println!(
        "errors by client: keep-alive {:?}; new connection per request {:?}",
        keep_alive.errors, new_conn.errors
    );
    let keep_alive_timeline = std::mem::take(&mut keep_alive.timeline);
    let mut counts = keep_alive;
    counts.merge(new_conn);
    let mut timeline = std::mem::take(&mut counts.timeline);
    timeline.extend(keep_alive_timeline.iter().copied());
    timeline.sort_by_key(|s| s.due);
    let first = reloads[0].0;
    let steady = window(&timeline, &[(t0 + WARM_UP, first)]);
    let control = window(&timeline, &controls);

    // Throughput: 2xx responses completed per bucket.
    let bucket_rps = |from: Instant, to: Instant| -> Vec<f64> {
        let n = (to.saturating_duration_since(from).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
        let mut buckets = vec![0u64; n.max(1)];
        for s in timeline.iter().filter(|s| s.ok) {
            let done = s.due + s.latency;
            if done >= from && done < to {
                let i = ((done - from).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
                if i < buckets.len() {
                    buckets[i] += 1;
                }
            }
        }
        buckets
            .into_iter()
            .map(|c| c as f64 / BUCKET.as_secs_f64())
            .collect()
    };
    let steady_buckets = bucket_rps(t0 + WARM_UP, first);
    let steady_rps = steady_buckets.iter().sum::<f64>() / steady_buckets.len() as f64;
    let rollouts = |spans: &[(Instant, Instant)]| {
        // A closed connection shows at the client's next request, after the
        // rollout: count up to the next step.
        let until_next: Vec<(Instant, Instant)> = spans
            .iter()
            .map(|(from, to)| (*from, *to + BETWEEN_ROLLOUTS))
            .collect();
        let within = |s: &Sample| {
            until_next
                .iter()
                .any(|(from, to)| s.due >= *from && s.due < *to)
        };
        let fresh: Vec<Sample> = timeline.iter().copied().filter(|s| s.fresh).collect();
        let reused: Vec<Sample> = timeline.iter().copied().filter(|s| !s.fresh).collect();
        Rollouts {
            window: window(&timeline, spans),
            took: spans.iter().map(|(from, to)| *to - *from).sum(),
            errors: timeline.iter().filter(|s| !s.ok && within(s)).count(),
            by_connection: (window(&fresh, spans), window(&reused, spans)),
            reconnects: keep_alive_timeline
                .iter()
                .filter(|s| s.fresh && s.ok && within(s))
                .count(),
            min_bucket_rps: spans
                .iter()
                .flat_map(|(from, to)| bucket_rps(*from, *to))
                .fold(f64::INFINITY, f64::min),
        }
    };
    let deploy = Deploy {
        steady,
        reload: rollouts(&reloads),
        restart: rollouts(&restarts),
        errors: timeline.iter().filter(|s| !s.ok).count() as u64,
        error_kinds: format!("{:?}", counts.errors),
        offered_rps,
        steady_rps,
        cpu_steady: cpu.0,
        cpu_rollouts: cpu.1,
        control,
    };
    println!("steady: {}", deploy.steady);
    deploy.reload.show("reload (app rollout)");
    deploy.restart.show("restart (app rollout --restart)");
    println!(
        "control, {ROLLOUTS} restarts of 2 sandboxed units serving nothing: {}",
        deploy.control
    );
    let control_p99 = deploy.control.p99.as_secs_f64();
    println!(
        "p99 against the control: reload {:.2}x, restart {:.2}x; errors over the whole run {} {}",
        deploy.reload.window.p99.as_secs_f64() / control_p99,
        deploy.restart.window.p99.as_secs_f64() / control_p99,
        deploy.errors,
        deploy.error_kinds
    );
    println!(
        "throughput: steady {:.0} req/s; CPU in use (whole machine): steady {:.0}%, during rollouts by reload {:.0}%",
        deploy.steady_rps,
        deploy.cpu_steady * 100.0,
        deploy.cpu_rollouts * 100.0
    );
    // Only a full run replaces the committed plot, so it always matches the
    // committed table.
    let plot = if full_run {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/rollouts.svg")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("rollouts.svg")
    };
    draw(&plot, &timeline, t0, &reloads, &restarts, &controls);
    println!("plot: {}", plot.display());
    deploy
}

/// Requests due within any of `spans`: count and latency quantiles.
fn window(timeline: &[Sample], spans: &[(Instant, Instant)]) -> Window {
    let mut latencies: Vec<Duration> = timeline
        .iter()
        .filter(|s| spans.iter().any(|(from, to)| s.due >= *from && s.due < *to))
        .map(|s| s.latency)
        .collect();
    latencies.sort_unstable();
    let q = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Window {
        requests: latencies.len(),
        p50: q(0.5),
        p99: q(0.99),
        max: q(1.0),
    }
}

/// The machine's CPU time counters (`/proc/stat`, all CPUs, in ticks).
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        Self {
            busy: total - idle,
            total,
        }
    }

    fn busy_and_total_since(&self) -> (u64, u64) {
        let now = Self::now();
        (now.busy - self.busy, now.total - self.total)
    }

    fn busy_since(&self) -> f64 {
        let (busy, total) = self.busy_and_total_since();
        busy as f64 / total.max(1) as f64
    }
}

// ---------------------------------------------------------------- the plot

fn draw(
    path: &Path,
    timeline: &[Sample],
    t0: Instant,
    reloads: &[(Instant, Instant)],
    restarts: &[(Instant, Instant)],
    controls: &[(Instant, Instant)],
) {
    use plotters::prelude::*;

    let secs = |at: Instant| at.saturating_duration_since(t0).as_secs_f64();
    let end = timeline.iter().map(|s| secs(s.due)).fold(0.0, f64::max);
    // p50, p99 and max of each bucket, by when the request was due.
    let n = (end / BUCKET.as_secs_f64()).ceil() as usize + 1;
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); n];
    for s in timeline {
        let i = (secs(s.due) / BUCKET.as_secs_f64()) as usize;
        buckets[i].push(s.latency.as_secs_f64() * 1000.0);
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut max = Vec::new();
    for (i, bucket) in buckets.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let x = (i as f64 + 0.5) * BUCKET.as_secs_f64();
        let at = |q: f64| bucket[((bucket.len() - 1) as f64 * q).round() as usize];
        p50.push((x, at(0.5).max(0.01)));
        p99.push((x, at(0.99).max(0.01)));
        max.push((x, at(1.0).max(0.01)));
    }
    let top = max.iter().map(|(_, y)| *y).fold(1.0, f64::max) * 2.0;

    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let area = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    area.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!(
                "Latency over {} rollouts of 2 instances by reload, {} by restart, {} control restarts (per {} ms)",
                reloads.len(),
                restarts.len(),
                controls.len(),
                BUCKET.as_millis()
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.05f64..top).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("latency (ms, log scale)")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .unwrap();
    for (spans, color, name) in [
        (
            reloads,
            RGBColor(120, 200, 255).mix(0.45),
            "a rollout by reload (app rollout)",
        ),
        (
            restarts,
            RGBColor(255, 200, 120).mix(0.45),
            "a rollout by restart (app rollout --restart)",
        ),
        (
            controls,
            RGBColor(150, 150, 150).mix(0.35),
            "control: restarting 2 sandboxed units that serve nothing",
        ),
    ] {
        chart
            .draw_series(spans.iter().map(|(from, to)| {
                Rectangle::new([(secs(*from), 0.05), (secs(*to), top)], color.filled())
            }))
            .unwrap()
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    for (series, color, name) in [
        (&max, RGBColor(200, 40, 40), "max"),
        (&p99, RGBColor(40, 80, 200), "p99"),
        (&p50, RGBColor(40, 150, 60), "p50"),
    ] {
        chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .unwrap()
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .unwrap();
    area.present().unwrap();
}

// ---------------------------------------------------------------- results

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    format!(
        "{} on {} cores of {cpu}, {memory}, {os}, Linux {}; load tool and servers share the cores",
        command_line("date", &["-u", "+%Y-%m-%d"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_line("uname", &["-r"]),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

impl Report {
    /// The median of the steady rounds' own ratios: each pair ran back to
    /// back.
    fn steady_ratio(&self) -> f64 {
        median(
            &self
                .steady_app
                .iter()
                .zip(&self.steady_baseline)
                .map(|(a, b)| a.requests_per_sec / b.requests_per_sec)
                .collect::<Vec<_>>(),
        )
    }

    fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Measured {}.", machine());
        let _ = writeln!(t);
        let _ = writeln!(t, "| what | figure | target |");
        let _ = writeln!(t, "|---|---|---|");
        let _ = writeln!(
            t,
            "| exec → `READY=1`, median of {STARTS} | {} (min {}, max {}) | ≤ 20 ms: {} |",
            ms(self.ready_median),
            ms(self.ready_min),
            ms(self.ready_max),
            verdict(self.ready_median <= Duration::from_millis(20))
        );
        let idle = self
            .unit_idle_rss_kib
            .iter()
            .copied()
            .max()
            .unwrap_or(self.idle_rss_kib);
        let _ = writeln!(
            t,
            "| RSS idle, per instance | {} (standalone: {}) | ≤ 16 MiB: {} |",
            mib(idle),
            mib(self.idle_rss_kib),
            verdict(idle <= 16 * 1024)
        );
        if let Some(load) = self.unit_load_rss_kib.iter().max() {
            let _ = writeln!(
                t,
                "| RSS under load, per instance (peak, wrk -c{INSTANCE_CONNECTIONS} on 2 instances) | {} | |",
                mib(*load)
            );
        }
        let _ = writeln!(
            t,
            "| RSS peak, standalone, through wrk -c{} | {} | |",
            CONNECTION_STEPS[CONNECTION_STEPS.len() - 1],
            mib(self.peak_rss_kib)
        );
        let rps = |v: &[Wrk]| median(&v.iter().map(|w| w.requests_per_sec).collect::<Vec<_>>());
        let p99 = |v: &[Wrk]| median(&v.iter().map(|w| w.p99).collect::<Vec<_>>());
        let p50 = |v: &[Wrk]| median(&v.iter().map(|w| w.p50).collect::<Vec<_>>());
        let (a_rps, b_rps) = (rps(&self.steady_app), rps(&self.steady_baseline));
        let (a_p99, b_p99) = (p99(&self.steady_app), p99(&self.steady_baseline));
        let throughput_ratio = self.steady_ratio();
        let p99_ratio = a_p99.as_secs_f64() / b_p99.as_secs_f64();
        let _ = writeln!(
            t,
            "| `/` throughput, wrk -c{STEADY_CONNECTIONS}, {STEADY_ROUNDS} rounds of back-to-back runs (ABBA order) | app {a_rps:.0} req/s, baseline {b_rps:.0} req/s (medians); median of the rounds' ratios **{throughput_ratio:.3}×** | ≥ 0.95×: {} |",
            verdict(throughput_ratio >= 0.95)
        );
        let _ = writeln!(
            t,
            "| `/` latency, same runs | app p50 {} p99 {}, baseline p50 {} p99 {}: p99 **{p99_ratio:.2}×** | p99 ≤ 1.2×: {} |",
            ms(p50(&self.steady_app)),
            ms(a_p99),
            ms(p50(&self.steady_baseline)),
            ms(b_p99),
            verdict(p99_ratio <= 1.2)
        );
        if !self.instructions.is_empty() {
            let _ = writeln!(t, "{}", callgrind::Figures::row(&self.instructions));
        }
        if !self.h2_instructions.is_empty() {
            let _ = writeln!(t, "{}", callgrind::Figures::row(&self.h2_instructions));
        }
        if let Some(h2) = &self.h2 {
            let _ = writeln!(t, "{}", h2.row());
        }
        if let Some(first) = self.websocket_drains.first() {
            let _ = writeln!(t, "{}", first.rss_row());
        }
        for drain in &self.websocket_drains {
            let _ = writeln!(t, "{}", drain.row());
        }
        if !self.handovers.is_empty() {
            for row in reload::handover_rows(&self.handovers) {
                let _ = writeln!(t, "{row}");
            }
        }
        if !self.rollout_idle.is_empty() {
            let _ = writeln!(
                t,
                "| one rollout of 2 instances, no traffic (median of {}) | by reload (`app rollout`) {}, by restart (`app rollout --restart`) {} | |",
                self.rollout_idle.len(),
                ms(median(&self.rollout_idle)),
                ms(median(&self.rollout_idle_restart))
            );
        }
        if let Some(single) = &self.single_instance {
            let _ = writeln!(t, "{}", single.row());
        }
        if let Some(d) = &self.deploy {
            self.deploy_rows(&mut t, d);
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "Scaling with concurrent connections (wrk, `/`, {SCALING_SECONDS} s each, {SCALING_ROUNDS} rounds of back-to-back runs at each step (ABBA order); medians, and the median of the rounds' ratios):"
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| connections | app req/s | app p99 | baseline req/s | baseline p99 | app / baseline | errors (app, baseline) |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|");
        for ((c, a), (_, b)) in self.connections_app.iter().zip(&self.connections_baseline) {
            let rps =
                |runs: &[Wrk]| median(&runs.iter().map(|w| w.requests_per_sec).collect::<Vec<_>>());
            let p99 = |runs: &[Wrk]| median(&runs.iter().map(|w| w.p99).collect::<Vec<_>>());
            let errors = |runs: &[Wrk]| {
                runs.iter()
                    .map(|w| w.socket_errors + w.non_2xx)
                    .sum::<u64>()
            };
            let _ = writeln!(
                t,
                "| {c} | {:.0} | {} | {:.0} | {} | {:.3}× | {}, {} |",
                rps(a),
                ms(p99(a)),
                rps(b),
                ms(p99(b)),
                round_ratio(a, b),
                errors(a),
                errors(b)
            );
        }
        if !self.instances.is_empty() {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "Scaling with instances sharing `app.socket` (booted systemd, real units, wrk -c{INSTANCE_CONNECTIONS}, {SCALING_SECONDS} s each):"
            );
            let _ = writeln!(t);
            let _ = writeln!(t, "| instances | req/s | p50 | p99 | errors |");
            let _ = writeln!(t, "|---|---|---|---|---|");
            for (n, w) in &self.instances {
                let _ = writeln!(
                    t,
                    "| {n} | {:.0} | {} | {} | {} |",
                    w.requests_per_sec,
                    ms(w.p50),
                    ms(w.p99),
                    w.socket_errors + w.non_2xx
                );
            }
        }
        if let Some(why) = &self.skipped {
            let _ = writeln!(t);
            let _ = writeln!(t, "The systemd sections did not run: {why}.");
        }
        t
    }

    fn deploy_rows(&self, t: &mut String, d: &Deploy) {
        let (reload, restart) = (&d.reload, &d.restart);
        let _ = writeln!(
            t,
            "| {ROLLOUTS} rollouts by reload and {ROLLOUTS} by restart, interleaved with {ROLLOUTS} control restarts, {BETWEEN_ROLLOUTS:?} apart, under {:.0} req/s fixed-rate load ({} clients) | {} and {} requests due during them ({:.1} s and {:.1} s in all); errors from a rollout's start to the next step: reload **{}**, restart **{}**; **{} errors** over the whole run | 0: {} |",
            d.offered_rps,
            KEEP_ALIVE_CLIENTS + NEW_CONN_CLIENTS,
            reload.window.requests,
            restart.window.requests,
            reload.took.as_secs_f64(),
            restart.took.as_secs_f64(),
            reload.errors,
            restart.errors,
            d.errors,
            verdict(d.errors == 0)
        );
        let control = d.control.p99.as_secs_f64();
        let (reload_ratio, restart_ratio) = (
            reload.window.p99.as_secs_f64() / control,
            restart.window.p99.as_secs_f64() / control,
        );
        let _ = writeln!(
            t,
            "| p99 during rollouts vs the control ({ROLLOUTS} restarts of 2 units with app@'s sandbox serving nothing, same load: p50 {} p99 {} max {}) | by reload p99 {} (**{reload_ratio:.2}×**), max {}; by restart p99 {} ({restart_ratio:.2}×), max {} | reload ≤ 1.2×: {} |",
            ms(d.control.p50),
            ms(d.control.p99),
            ms(d.control.max),
            ms(reload.window.p99),
            ms(reload.window.max),
            ms(restart.window.p99),
            ms(restart.window.max),
            verdict(reload_ratio <= 1.2)
        );
        let ratio = reload.window.p99.as_secs_f64() / d.steady.p99.as_secs_f64();
        let _ = writeln!(
            t,
            "| latency during rollouts by reload vs steady | p50 {} vs {}, p99 {} vs {} (**{ratio:.2}×**), max {} vs {} | p99 ≤ 1.5×: {}; max < 1 s: {} |",
            ms(reload.window.p50),
            ms(d.steady.p50),
            ms(reload.window.p99),
            ms(d.steady.p99),
            ms(reload.window.max),
            ms(d.steady.max),
            verdict(ratio <= 1.5),
            verdict(reload.window.max < Duration::from_secs(1))
        );
        let _ = writeln!(
            t,
            "| throughput dip during rollouts (lowest {} ms bucket, steady {:.0} req/s) | by reload {:.0} req/s (**{:.0}%** of steady), by restart {:.0} req/s ({:.0}%) | |",
            BUCKET.as_millis(),
            d.steady_rps,
            reload.min_bucket_rps,
            100.0 * reload.min_bucket_rps / d.steady_rps,
            restart.min_bucket_rps,
            100.0 * restart.min_bucket_rps / d.steady_rps
        );
        for (how, r) in [("reload", reload), ("restart", restart)] {
            let _ = writeln!(
                t,
                "| during rollouts by {how}: first request on a connection vs later ones; new connections the {KEEP_ALIVE_CLIENTS} keep-alive clients opened | p99 {} ({} requests) vs {} ({} requests); **{}** new keep-alive connections | |",
                ms(r.by_connection.0.p99),
                r.by_connection.0.requests,
                ms(r.by_connection.1.p99),
                r.by_connection.1.requests,
                r.reconnects
            );
        }
        let _ = writeln!(
            t,
            "| machine CPU in use, steady vs during rollouts by reload | {:.0}% vs {:.0}% | |",
            d.cpu_steady * 100.0,
            d.cpu_rollouts * 100.0
        );
    }

    fn write(&self, root: &Path) {
        let table = self.table();
        println!("\n{table}");
        let dir = root.join("benches/results");
        std::fs::create_dir_all(&dir).unwrap();
        let mut results = String::from(
            "# Benchmark results\n\nWritten by `benches/run` (`cargo bench --bench kit`); see \
             benches/kit.rs for what each figure is.\n\n",
        );
        results.push_str(&table);
        if self.deploy.is_some() {
            results.push_str("\n![Latency over time across the rollouts](rollouts.svg)\n");
        }
        std::fs::write(dir.join("RESULTS.md"), results).unwrap();

        // docs/figures.md shows the latest table, between its markers.
        let readme_path = root.join("docs/figures.md");
        let readme = std::fs::read_to_string(&readme_path).unwrap();
        let (start, end) = ("<!-- bench-results:start -->", "<!-- bench-results:end -->");
        match (readme.find(start), readme.find(end)) {
            (Some(a), Some(b)) if a < b => {
                let mut section = format!("{start}\n{table}");
                if self.deploy.is_some() {
                    section.push_str(
                        "\n![Latency over time across 10 rollouts](../benches/results/rollouts.svg)\n",
                    );
                }
                let updated = format!("{}{section}{}", &readme[..a], &readme[b..]);
                std::fs::write(&readme_path, updated).unwrap();
                println!("updated docs/figures.md and {}", dir.display());
            }
            _ => println!(
                "docs/figures.md has no bench-results markers; wrote {}",
                dir.display()
            ),
        }
    }
}
