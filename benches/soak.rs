//! The soak: steady load on the real units under a booted systemd for 30
//! minutes, with a rollout every 30 s, printing each instance's RSS and open
//! file descriptors over time, and the manager's own RSS (it lives through
//! every restart, so a leak of ours in how we use it would build up there).
//!
//!     cargo bench --bench soak                       # 30 min, as root
//!     SOAK_SECONDS=120 cargo bench --bench soak      # a short look
//!
//! Not part of `cargo test` or CI (it takes half an hour). It writes
//! `benches/results/SOAK.md` after a full-length run.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::load::Load;
use support::process::rss_from_status;
use support::systemd::{Install, SystemdBox};

const INSTANCES: [&str; 2] = ["app@1.service", "app@2.service"];
/// 40 clients, a request each every 50 ms: 800 requests/s, a quarter of
/// them on a new connection.
const KEEP_ALIVE_CLIENTS: usize = 30;
const NEW_CONN_CLIENTS: usize = 10;
const PACE: Duration = Duration::from_millis(50);
const FULL_LENGTH: u64 = 1800;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds"))
        })
        .unwrap_or(default)
}

struct Stats {
    pid: String,
    rss_kib: u64,
    fds: usize,
}

fn stats(sd: &SystemdBox, pid: &str) -> Stats {
    let status = sd.run("cat", &[&format!("/proc/{pid}/status")]);
    let (rss_kib, _) = rss_from_status(&String::from_utf8_lossy(&status.stdout));
    let fds = sd.run("ls", &[&format!("/proc/{pid}/fd")]);
    let fds = String::from_utf8_lossy(&fds.stdout).lines().count();
    Stats {
        pid: pid.to_owned(),
        rss_kib,
        fds,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED soak: it boots systemd, which needs root");
        std::process::exit(1);
    }
    let total = Duration::from_secs(setting("SOAK_SECONDS", FULL_LENGTH));
    let every = Duration::from_secs(setting("SOAK_ROLLOUT_EVERY", 30));
    let sample = Duration::from_secs(setting("SOAK_SAMPLE_EVERY", 10));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let addr: SocketAddr = format!("127.0.0.1:{}", support::process::free_port())
        .parse()
        .unwrap();
    let install = Install::project("").file(
        "/etc/systemd/system/app.socket.d/listen.conf",
        &format!("[Socket]\nListenStream=\nListenStream={addr}\n"),
    );
    let sd = SystemdBox::boot(install);
    sd.systemctl_ok(&["start", "app.target"]);
    let _guard = runtime.enter();
    let load = Load::start(addr, "/", KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);

    println!(
        "soak: {total:?}, a rollout every {every:?}, {} clients at {:?} pace, on {addr}",
        KEEP_ALIVE_CLIENTS + NEW_CONN_CLIENTS,
        PACE
    );
    let mut table = String::from(
        "| t (s) | app@1 pid | app@1 RSS (KiB) | app@1 fds | app@2 pid | app@2 RSS (KiB) | app@2 fds | PID 1 RSS (KiB) |\n|---|---|---|---|---|---|---|---|\n",
    );
    let header = [
        "t (s)",
        "app@1 pid",
        "RSS KiB",
        "fds",
        "app@2 pid",
        "RSS KiB",
        "fds",
        "PID 1 KiB",
    ];
    let padded: Vec<String> = header.iter().map(|c| format!("{c:>9}")).collect();
    println!("{}", padded.join(" "));
    let started = Instant::now();
    let mut next_rollout = started + every;
    let mut next_sample = started;
    let mut rollouts = Vec::new();
    let (mut rss_seen, mut fds_seen) = (Vec::new(), Vec::new());
    while started.elapsed() < total {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += sample;
            let t = started.elapsed().as_secs();
            let rows: Vec<Stats> = INSTANCES
                .iter()
                .map(|unit| stats(&sd, &sd.property(unit, "MainPID")))
                .collect();
            let manager = stats(&sd, "1");
            for row in &rows {
                rss_seen.push(row.rss_kib);
                fds_seen.push(row.fds);
            }
            let mut cells = vec![t.to_string()];
            for row in &rows {
                cells.extend([
                    row.pid.clone(),
                    row.rss_kib.to_string(),
                    row.fds.to_string(),
                ]);
            }
            cells.push(manager.rss_kib.to_string());
            let padded: Vec<String> = cells.iter().map(|c| format!("{c:>9}")).collect();
            println!("{}", padded.join(" "));
            writeln!(table, "| {} |", cells.join(" | ")).unwrap();
        }
        if now >= next_rollout {
            next_rollout += every;
            let began = Instant::now();
            let out = sd.run("/usr/bin/app", &["rollout"]);
            assert!(
                out.status.success(),
                "rollout {} failed: {}{}",
                rollouts.len() + 1,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            rollouts.push(began.elapsed());
        }
        std::thread::sleep(
            next_sample
                .min(next_rollout)
                .saturating_duration_since(Instant::now()),
        );
    }
    let mut counts = runtime.block_on(load.stop());
    let errors = counts.error_count() + counts.non_2xx();
    let summary = counts.summary();
    let slowest = rollouts.iter().max().copied().unwrap_or_default();
    let range = |v: &[u64]| {
        (
            v.iter().min().copied().unwrap_or(0),
            v.iter().max().copied().unwrap_or(0),
        )
    };
    let (rss_min, rss_max) = range(&rss_seen);
    let fds: Vec<u64> = fds_seen.iter().map(|&f| f as u64).collect();
    let (fds_min, fds_max) = range(&fds);
    let verdict = format!(
        "{} rollouts in {:?}, the slowest {slowest:?}; requests: {summary}\n\
         instance RSS {rss_min}..{rss_max} KiB, open fds {fds_min}..{fds_max}, over {} samples",
        rollouts.len(),
        started.elapsed(),
        rss_seen.len()
    );
    println!("{verdict}");
    if total.as_secs() >= FULL_LENGTH {
        let results =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/SOAK.md");
        let text = format!(
            "# Soak: {} min, a rollout every {} s\n\n`cargo bench --bench soak`, {} clients at one request per {:?} each ({} keep-alive, {} new connection per request).\n\n{verdict}\n\n{table}",
            total.as_secs() / 60,
            every.as_secs(),
            KEEP_ALIVE_CLIENTS + NEW_CONN_CLIENTS,
            PACE,
            KEEP_ALIVE_CLIENTS,
            NEW_CONN_CLIENTS
        );
        std::fs::write(&results, text).unwrap();
        println!("wrote {}", results.display());
    }
    assert_eq!(
        errors, 0,
        "requests failed during the soak: {:?} {:?}",
        counts.errors, counts.by_status
    );
}
