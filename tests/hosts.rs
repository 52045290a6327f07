//! Several hosts behind a load balancer. Two booted systemds are two hosts,
//! each installed from the .deb with app.socket on a port of its own;
//! Debian's nginx runs in front with packaging/examples/nginx.conf, and the
//! load goes through nginx. A release is rolled out host by host (each
//! host's package upgrade is its own two-instance rollout); then one host is
//! taken out of rotation and stopped entirely. The clients must see nothing
//! of either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::balancer::{Haproxy, Nginx, Routing, available, example};
use support::load::Load;
use support::packages::{boot_with_packages, packages};
use support::process::{EVENT_LIMIT, http_get};
use support::service::{assert_no_loss, assert_serving, blocking};
use support::systemd::{Install, SystemdBox, can_boot, unit_duration};

/// Each client starts a request at most this often: 80 clients, 1,600 req/s.
const PACE: Duration = Duration::from_millis(50);
const KEEP_ALIVE_CLIENTS: usize = 40;
const NEW_CONN_CLIENTS: usize = 40;
/// Requests nginx must carry after a host stopped: several of nginx's
/// `fail_timeout` periods (5 s) at the load's rate, so nginx tries the
/// stopped host again, and fails over again, more than once.
const AFTER_STOP: usize = 16_000;

struct Host {
    name: &'static str,
    sd: Arc<SystemdBox>,
    addr: SocketAddr,
    /// The current and next release's .deb, inside the box.
    debs: [String; 2],
}

/// `dpkg -i` inside the host: (success, stdout and stderr).
fn dpkg_install(sd: &SystemdBox, deb: &str) -> (bool, String) {
    let out = sd.run("dpkg", &["-i", deb]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits until nginx has logged `count` requests: traffic went through.
async fn wait_logged(nginx: &Nginx, count: usize) {
    let started = Instant::now();
    while nginx.access_log().len() < count {
        assert!(
            started.elapsed() < EVENT_LIMIT * 2,
            "nginx logged {} of {count} requests",
            nginx.access_log().len()
        );
        // The log is a file: nothing to wait on but its growth.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_balancer_examples_agree_with_the_kit() {
    use handover::settings::{DEFAULT_DRAIN_DEADLINE, DEFAULT_IDLE_TIMEOUT, parse_duration};
    let start_timeout = unit_duration("app@.service", "TimeoutStartSec");
    // The value of the first `key …` line of a file, its `;` dropped.
    let value = |file: &str, key: &str| -> String {
        let text = std::fs::read_to_string(example(file)).unwrap();
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{file} has no {key}"))
            .trim_end_matches(';')
            .trim()
            .to_owned()
    };
    let duration = |file: &str, key: &str| parse_duration(&value(file, key)).unwrap();
    // Waiting for an answer: longer than a drain may take to finish a
    // request in flight, and than an instance may take to start while a
    // request waits in the socket's queue.
    for (file, key) in [
        ("nginx.conf", "proxy_read_timeout"),
        ("haproxy.cfg", "timeout server"),
    ] {
        let timeout = duration(file, key);
        assert!(
            timeout > DEFAULT_DRAIN_DEADLINE && timeout > start_timeout,
            "{file}: {key} {timeout:?} must exceed drain_deadline {DEFAULT_DRAIN_DEADLINE:?} \
             and TimeoutStartSec {start_timeout:?}"
        );
    }
    // Idle connections: the balancer closes them before app does.
    let keepalive = duration("nginx.conf", "keepalive_timeout");
    assert!(
        keepalive < DEFAULT_IDLE_TIMEOUT,
        "nginx keepalive_timeout {keepalive:?}"
    );
    // Passive failover on what a stopping host can answer.
    let next = value("nginx.conf", "proxy_next_upstream");
    for condition in ["error", "timeout", "http_502", "http_503"] {
        assert!(
            next.split_whitespace().any(|c| c == condition),
            "proxy_next_upstream {next}"
        );
    }
    assert!(
        !next.contains("non_idempotent"),
        "the example must not retry POSTs by default"
    );
    assert_eq!(value("haproxy.cfg", "option httpchk"), "GET /readyz");
}

/// The examples are valid for the balancers Debian ships.
#[test]
fn the_balancer_examples_are_valid() {
    let test = "the_balancer_examples_are_valid";
    if !available(test, "nginx", "-v") || !available(test, "haproxy", "-v") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\ninclude {1};\n}}\n",
            dir.path().display(),
            example("nginx.conf").display()
        ),
    )
    .unwrap();
    let checks = [
        std::process::Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&main)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .output()
            .unwrap(),
        std::process::Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(example("haproxy.cfg"))
            .output()
            .unwrap(),
    ];
    for out in checks {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{said}");
        assert!(out.status.success(), "{said}");
        // HAProxy accepts a doubtful file with warnings; we want none.
        assert!(!said.contains("[WARNING]"), "{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_host_by_host_rollout_and_a_host_stop_lose_nothing() {
    let test = "behind_nginx_a_host_by_host_rollout_and_a_host_stop_lose_nothing";
    if !can_boot(test) || !available(test, "nginx", "-v") {
        return;
    }
    let Some(packages) = packages(test) else {
        return;
    };
    let (current, next) = (&packages.current.version, &packages.next.version);

    // Two hosts, each installed from the package as a user would.
    let mut hosts = Vec::new();
    for name in ["A", "B"] {
        let (sd, addr, files) = boot_with_packages(&[&packages.current.deb, &packages.next.deb]);
        let debs = [files[0].clone(), files[1].clone()];
        let deb = debs[0].clone();
        let (ok, said) = blocking(&sd, move |sd| dpkg_install(sd, &deb)).await;
        assert!(ok, "host {name}: install failed:\n{said}");
        hosts.push(Host {
            name,
            sd,
            addr,
            debs,
        });
    }
    let mut before = Vec::new();
    for host in &hosts {
        let (addr, current) = (host.addr, current.clone());
        before.push(blocking(&host.sd, move |sd| assert_serving(sd, addr, &current)).await);
    }
    let nginx = Nginx::start(&[hosts[0].addr, hosts[1].addr]);
    println!(
        "hosts A {} and B {} behind nginx on {}",
        hosts[0].addr, hosts[1].addr, nginx.addr
    );

    // 1. The next release, host by host, under load through nginx.
    let load = Load::start(nginx.addr, "/", KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    wait_logged(&nginx, 1_000).await;
    let started = Instant::now();
    for host in &hosts {
        let deb = host.debs[1].clone();
        let step = Instant::now();
        let (ok, said) = blocking(&host.sd, move |sd| dpkg_install(sd, &deb)).await;
        assert!(ok, "host {}: upgrade failed:\n{said}", host.name);
        assert!(
            said.contains("rollout: done, 2 instances"),
            "host {}: the upgrade did not roll its instances:\n{said}",
            host.name
        );
        let (addr, version) = (host.addr, next.clone());
        blocking(&host.sd, move |sd| assert_serving(sd, addr, &version)).await;
        println!(
            "host {}: upgraded {current} -> {next} in {:?}; both instances answer {next}",
            host.name,
            step.elapsed()
        );
    }
    let rollout_took = started.elapsed();
    let mut during = load.stop().await;
    let log = nginx.access_log();
    let routing = Routing::of(&log);
    println!("host-by-host rollout took {rollout_took:?}; nginx: {routing:?}");
    assert_no_loss("through nginx, host-by-host rollout", &mut during);
    assert_eq!(routing.failed, 0, "nginx answered non-2xx: {routing:?}");
    for host in &hosts {
        let answered = routing
            .answered_by
            .get(&host.addr.to_string())
            .copied()
            .unwrap_or(0);
        assert!(
            answered > 0,
            "host {} took no traffic: {routing:?}",
            host.name
        );
    }

    // Every instance of every host runs the new release in a new process.
    for (host, old) in hosts.iter().zip(&before) {
        let (addr, next) = (host.addr, next.clone());
        let now = blocking(&host.sd, move |sd| assert_serving(sd, addr, &next)).await;
        for (old, new) in old.iter().zip(&now) {
            assert_ne!(
                old.pid, new.pid,
                "host {}: {old:?} not restarted",
                host.name
            );
        }
    }
    let through = tokio::task::spawn_blocking({
        let addr = nginx.addr;
        move || {
            (0..50)
                .map(|_| {
                    let (status, body) = http_get(addr, "/version").unwrap();
                    assert_eq!(status, 200, "{body}");
                    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
                    v["version"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert!(through.iter().all(|v| v == next), "{through:?}");

    // 2. Take host B out, then stop it entirely, under load through nginx.
    let [a, b] = [&hosts[0], &hosts[1]];
    let load = Load::start(nginx.addr, "/", KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    let logged = nginx.access_log().len();
    wait_logged(&nginx, logged + 1_000).await;
    let out = blocking(&b.sd, |sd| sd.run("app", &["rotation", "out"])).await;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "app rotation out: {out:?}");
    println!("host B: {}", said.trim());
    let (addr_a, addr_b) = (a.addr, b.addr);
    tokio::task::spawn_blocking(move || {
        // Each check on a new connection, so both of B's instances answer.
        for _ in 0..20 {
            assert_eq!(
                http_get(addr_b, "/readyz").unwrap(),
                (503, "out of rotation\n".to_owned())
            );
            assert_eq!(http_get(addr_b, "/").unwrap().0, 200, "B still serves");
        }
        assert_eq!(http_get(addr_a, "/readyz").unwrap().0, 200);
    })
    .await
    .unwrap();
    let status = blocking(&b.sd, |sd| sd.run("app", &["rotation", "status"])).await;
    assert_eq!(status.status.code(), Some(3), "{status:?}");

    // The README's sequence: the socket first, so nothing new can start an
    // instance; then the instances, each draining.
    let stop_started = Instant::now();
    let logged = nginx.access_log().len();
    blocking(&b.sd, |sd| {
        sd.systemctl_ok(&["stop", "app.socket"]);
        sd.systemctl_ok(&["stop", "app.target", "app@*.service"]);
    })
    .await;
    let stop_took = stop_started.elapsed();
    wait_logged(&nginx, logged + AFTER_STOP).await;
    let mut counts = load.stop().await;
    let log = nginx.access_log();
    let after_stop = Routing::of(&log[logged..]);
    println!(
        "host B stopped in {stop_took:?}; nginx after the stop: {after_stop:?}\nnginx errors:\n{}",
        summarize_errors(&nginx.error_log())
    );
    assert_no_loss("through nginx, host B taken out and stopped", &mut counts);
    assert_eq!(after_stop.failed, 0, "{after_stop:?}");
    assert!(
        std::net::TcpStream::connect(addr_b).is_err(),
        "host B still accepts connections"
    );
    let journal = b.sd.journal(&["app@1.service", "app@2.service"]);
    assert!(
        !journal.contains("drain deadline passed"),
        "host B's instances were cut:\n{journal}"
    );
    // Per instance: the upgrade's in-place reload (its old process hands
    // over) and the stop's drain.
    assert_eq!(
        (
            journal.matches("reload: handover finished").count(),
            journal.matches("drain finished").count()
        ),
        (2, 2),
        "host B's instances handed over and drained cleanly:\n{journal}"
    );
    // The last requests went to A alone.
    let tail = Routing::of(&log[log.len() - 1_000..]);
    assert_eq!(
        tail.answered_by.keys().collect::<Vec<_>>(),
        [&addr_a.to_string()],
        "{tail:?}"
    );
}

/// nginx's error log, one line per kind of message with its count.
fn summarize_errors(log: &str) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for line in log.lines() {
        // "2026/11/21 08:00:00 [error] 12#12: *34 connect() failed (111: ...) while ..., client: ..."
        let message = line
            .split_once("] ")
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.split_once(": ").map(|(_, m)| m))
            .unwrap_or(line);
        let message = message.trim_start_matches(|c: char| c == '*' || c.is_ascii_digit());
        let kind = message.split(", client").next().unwrap_or(message).trim();
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(kind, n)| format!("  {n} x {kind}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole-host drain with an active health checker: by the time
/// `app rotation out --wait 3s` (the README's wait for the example's checks)
/// returns, HAProxy has marked the host DOWN, so the stop that follows meets
/// no request at all, POSTs included. Starting it and `app rotation in` put
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_host_taken_out_gets_no_request_before_it_stops() {
    let test = "behind_haproxy_a_host_taken_out_gets_no_request_before_it_stops";
    if !can_boot(test) || !available(test, "haproxy", "-v") {
        return;
    }
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let (sd, addr) = SystemdBox::boot_on_free_port(Install::project(""));
        blocking(&sd, |sd| sd.systemctl_ok(&["start", "app.target"])).await;
        hosts.push((sd, addr));
    }
    let [(_, addr_a), (b, addr_b)] = [&hosts[0], &hosts[1]];
    let haproxy = Arc::new(Haproxy::start(&[*addr_a, *addr_b]));
    println!(
        "hosts A {addr_a} and B {addr_b} behind HAProxy on {}",
        haproxy.addr
    );
    let status = |server: &'static str, status: &'static str| {
        let haproxy = haproxy.clone();
        tokio::task::spawn_blocking(move || haproxy.wait_status(server, status))
    };
    status("host1", "UP").await.unwrap();
    status("host2", "UP").await.unwrap();

    let gets = Load::start(haproxy.addr, "/", 30, 30, PACE);
    let posts = Load::start(haproxy.addr, "POST /echo", 10, 10, PACE);
    wait_requests(&haproxy, "host2", 1_000).await;

    let out = blocking(b, |sd| sd.run("app", &["rotation", "out", "--wait", "3s"])).await;
    assert!(out.status.success(), "app rotation out: {out:?}");
    print!("host B: {}", String::from_utf8_lossy(&out.stdout));
    let down = haproxy.servers()["host2"].clone();
    assert_eq!(
        down.status, "DOWN",
        "HAProxy still sends to B after the wait"
    );
    let journal = blocking(b, |sd| sd.journal(&["app@1.service", "app@2.service"])).await;
    assert!(
        journal.contains("taken out of rotation"),
        "B's instances did not log it:\n{journal}"
    );

    blocking(b, |sd| {
        sd.systemctl_ok(&["stop", "app.socket"]);
        sd.systemctl_ok(&["stop", "app.target", "app@*.service"]);
    })
    .await;
    let host1 = haproxy.servers()["host1"].requests;
    wait_requests(&haproxy, "host1", host1 + 5_000).await;
    let mut gets = gets.stop().await;
    let mut posts = posts.stop().await;
    assert_no_loss(
        "GET through HAProxy, host B taken out and stopped",
        &mut gets,
    );
    assert_no_loss(
        "POST through HAProxy, host B taken out and stopped",
        &mut posts,
    );
    let after = haproxy.servers()["host2"].clone();
    println!(
        "HAProxy sent B {} requests before it was DOWN and {} after",
        down.requests,
        after.requests - down.requests
    );
    assert_eq!(after.requests, down.requests, "B got requests once DOWN");

    // Back: the instances first (still out, so still DOWN), then in.
    blocking(b, |sd| sd.systemctl_ok(&["start", "app.target"])).await;
    assert_eq!(haproxy.servers()["host2"].status, "DOWN", "B is still out");
    let back = Instant::now();
    let out = blocking(b, |sd| sd.run("app", &["rotation", "in"])).await;
    assert!(out.status.success(), "app rotation in: {out:?}");
    let up = status("host2", "UP").await.unwrap();
    println!(
        "host B back in rotation: HAProxy saw it UP {:?} after app rotation in",
        back.elapsed()
    );
    assert_eq!(up.requests, down.requests);
}

/// Waits until HAProxy has sent `server` at least `count` requests.
async fn wait_requests(haproxy: &Arc<Haproxy>, server: &'static str, count: u64) {
    let started = Instant::now();
    loop {
        let seen = haproxy.servers()[server].requests;
        if seen >= count {
            return;
        }
        assert!(
            started.elapsed() < EVENT_LIMIT * 2,
            "{server} got {seen} of {count} requests"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
