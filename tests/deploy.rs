//! Acceptance tests under a real systemd booted by the harness, with the real
//! unit files, the freshly built binary and real load over loopback.

use std::time::{Duration, Instant};

use support::load::Load;
use support::process::http_get;
use support::service::{assert_no_loss, blocking, versions};
use support::systemd::{
    APP_ONE, APP_TARGET, Install, SystemdBox, booted, booted_now, can_boot, unit_duration,
};

/// Each client starts a request at most this often.
const PACE: Duration = Duration::from_millis(50);
/// 200 concurrent clients, half keep-alive, half a new connection per request.
const KEEP_ALIVE_CLIENTS: usize = 100;
const NEW_CONN_CLIENTS: usize = 100;

/// `app rollout` inside the box: (success, output).
fn rollout(sd: &SystemdBox, binary: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["rollout"];
    all.extend_from_slice(args);
    let out = sd.run(binary, &all);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn main_pid(sd: &SystemdBox, unit: &str) -> String {
    sd.property(unit, "MainPID")
}

/// The main pids of the two default instances.
fn pids(sd: &SystemdBox) -> [String; 2] {
    [main_pid(sd, "app@1.service"), main_pid(sd, "app@2.service")]
}

#[test]
fn the_stop_timeout_is_above_the_drain_deadline() {
    let stop_timeout = unit_duration("app@.service", "TimeoutStopSec");
    let drain = handover::settings::DEFAULT_DRAIN_DEADLINE;
    // The app's deadline must fire first, with margin for the exit itself:
    // the trap was a supervisor's 1.6 s kill timeout silently beating the
    // app's own 10 s timer.
    assert!(
        stop_timeout >= drain + Duration::from_secs(5),
        "TimeoutStopSec={stop_timeout:?} does not leave room for drain_deadline={drain:?}"
    );
}

#[test]
fn the_service_unit_is_hardened() {
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/app@.service"))
        .output();
    let Ok(out) = out else {
        support::cannot_run("the_service_unit_is_hardened", "systemd-analyze is missing");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for app@").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 1.0, "exposure {score} > 1.0:\n{text}");
}

#[test]
fn units_verify_cleanly_and_two_instances_serve() {
    let Some((sd, addr)) = booted_now(|| Install::project(""), &[]) else {
        return;
    };
    let out = sd.run(
        "systemd-analyze",
        &[
            "verify",
            "--man=no",
            "/etc/systemd/system/app.socket",
            "/etc/systemd/system/app@.service",
            "/etc/systemd/system/app.target",
        ],
    );
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    sd.systemctl_ok(&["start", "app.target"]);
    for unit in ["app@1.service", "app@2.service"] {
        assert_eq!(sd.property(unit, "ActiveState"), "active");
    }
    let seen = versions(&sd, addr, 2);
    let instances: Vec<&str> = seen.iter().map(|v| v.instance.as_str()).collect();
    assert_eq!(instances, ["1", "2"]);
}

/// Acceptance 1: ten rollouts under 200 clients lose nothing, and every
/// instance ends on a new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rollouts_under_load_lose_nothing() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let before = blocking(&sd, pids).await;

    let load = Load::start(addr, "/", KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    // A measurement window, not a synchronisation: steady state to compare with.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut steady = load.stop().await;

    let load = Load::start(addr, "/", KEEP_ALIVE_CLIENTS, NEW_CONN_CLIENTS, PACE);
    let started = Instant::now();
    for round in 1..=10 {
        let (ok, output) = blocking(&sd, |sd| rollout(sd, "/usr/bin/app", &[])).await;
        assert!(ok, "rollout {round} failed:\n{output}");
        if round == 1 {
            print!("{output}");
        }
    }
    let rollouts_took = started.elapsed();
    let mut during = load.stop().await;
    println!("10 rollouts took {rollouts_took:?}");
    assert_no_loss("steady", &mut steady);
    assert_no_loss("during 10 rollouts", &mut during);

    let after = blocking(&sd, pids).await;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new, "an instance was not restarted");
    }
    let seen = blocking(&sd, move |sd| versions(sd, addr, 2)).await;
    let seen: Vec<(String, String)> = seen.into_iter().map(|v| (v.instance, v.pid)).collect();
    let expected = vec![
        ("1".to_owned(), after[0].clone()),
        ("2".to_owned(), after[1].clone()),
    ];
    assert_eq!(seen, expected, "/version shows the new processes");
}

/// Acceptance 2: a 5 s request in flight on the instance being restarted completes.
#[test]
fn a_long_request_in_flight_survives_its_instance_restart() {
    let Some((sd, addr)) = booted_now(|| Install::project("log_level = \"debug\"\n"), APP_ONE)
    else {
        return;
    };
    let mut journal = sd.follow_journal("app@1.service");
    let request = std::thread::spawn(move || http_get(addr, "/slow?ms=5000"));
    journal.wait_for_line(&["\"MESSAGE\":\"request\"", "/slow?ms=5000"]);
    let old = main_pid(&sd, "app@1.service");
    let started = Instant::now();
    sd.systemctl_ok(&["restart", "app@1.service"]);
    let restart_took = started.elapsed();
    let (status, body) = request.join().unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "slept 5000 ms\n"));
    assert_ne!(main_pid(&sd, "app@1.service"), old);
    println!("restart waited {restart_took:?} for the in-flight request");
    assert!(
        restart_took > Duration::from_secs(3),
        "the restart did not wait"
    );
}

/// Acceptance 3: a new binary that cannot start stops a restart-based
/// rollout (`--restart`) at the first instance; the other keeps serving the
/// old version without errors. (A reload-based rollout keeps even the first
/// instance's old process serving: tests/reload.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_stops_the_rollout_and_the_sibling_serves() {
    if !can_boot("a_broken_release_stops_the_rollout_and_the_sibling_serves") {
        return;
    }
    let fast_start_timeout = (
        "/etc/systemd/system/app@.service.d/test-start-timeout.conf",
        "[Service]\nTimeoutStartSec=3s\n",
    );
    let Some((sd, addr)) = booted(
        || Install::project("").file(fast_start_timeout.0, fast_start_timeout.1),
        APP_TARGET,
    )
    .await
    else {
        return;
    };
    // The rollout tool itself stays the good build.
    blocking(&sd, |sd| {
        sd.copy_in(
            std::path::Path::new(support::process::app_binary()),
            "/usr/local/bin/app-good",
        )
    })
    .await;
    let sibling = blocking(&sd, |sd| main_pid(sd, "app@2.service")).await;

    let broken = [
        (
            "exits 1 at start",
            "#!/bin/sh\necho broken release >&2\nexit 1\n",
            "exit-code",
        ),
        (
            "never sends READY",
            "#!/bin/sh\nexec sleep 600\n",
            "timeout",
        ),
    ];
    for (what, script, result) in broken {
        blocking(&sd, move |sd| {
            sd.systemctl_ok(&["reset-failed"]);
            sd.write("/usr/bin/app.broken", script);
            sd.run("chmod", &["755", "/usr/bin/app.broken"]);
            sd.run("mv", &["/usr/bin/app.broken", "/usr/bin/app"]);
        })
        .await;
        let load = Load::start(addr, "/", 20, 20, PACE);
        let (ok, output) = blocking(&sd, |sd| {
            rollout(sd, "/usr/local/bin/app-good", &["--restart"])
        })
        .await;
        // Let the sibling alone serve for a moment with the broken one retrying.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut counts = load.stop().await;
        println!("{what}:\n{output}");
        assert!(!ok, "{what}: the rollout reported success:\n{output}");
        assert!(
            output.contains("app@1.service did not become ready")
                && output.contains(&format!("result {result}"))
                && output.contains("app@2.service left on the old version"),
            "{what}: {output}"
        );
        assert_no_loss(&format!("sibling while the release {what}"), &mut counts);
        let still = blocking(&sd, |sd| main_pid(sd, "app@2.service")).await;
        assert_eq!(still, sibling, "{what}: the sibling was touched");
    }

    // Fixing the release and rolling out again repairs app@1.
    blocking(&sd, |sd| {
        sd.copy_in(
            std::path::Path::new(support::process::app_binary()),
            "/usr/bin/app",
        );
        sd.systemctl_ok(&["reset-failed"]);
    })
    .await;
    let (ok, output) = blocking(&sd, |sd| rollout(sd, "/usr/bin/app", &[])).await;
    assert!(ok, "{output}");
}

/// Acceptance 4: with both instances stopped, connections wait in the
/// socket's queue and are answered once an instance starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_wait_while_every_instance_is_down() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let before = blocking(&sd, pids).await;
    let load = Load::start(addr, "/", 20, 20, PACE);
    let started = Instant::now();
    let stop = blocking(&sd, |sd| {
        let stop = sd.systemctl(&["stop", "app@1.service", "app@2.service"]);
        sd.systemctl_ok(&["start", "app.target"]);
        stop
    })
    .await;
    let outage = started.elapsed();
    // Traffic keeps arriving, so the socket may start app@1 on demand before
    // our stop job finishes, which cancels that job: the socket doing its work.
    let stderr = String::from_utf8_lossy(&stop.stderr);
    assert!(
        stop.status.success() || stderr.contains("Job for app@1.service canceled"),
        "stop failed: {stderr}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut counts = load.stop().await;
    let after = blocking(&sd, pids).await;
    println!(
        "both instances stopped and started again in {outage:?} (stop: {})",
        if stop.status.success() {
            "done"
        } else {
            "app@1 restarted on demand by the socket"
        }
    );
    assert_ne!(before[0], after[0], "app@1 went down and came back");
    assert_ne!(before[1], after[1], "app@2 went down and came back");
    assert_no_loss("through a full stop and start", &mut counts);
}

/// Acceptance 5: `rollout --config-only` (SIGHUP to each instance) applies a
/// changed settings file without dropping a request; a broken file keeps the
/// old settings, whether re-read in place (SIGHUP) or by a reload's new
/// process, which refuses it: `systemctl reload` fails and the old process
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_settings_without_dropping_requests() {
    let Some((sd, addr)) = booted(
        || Install::project("[app]\nslow_max = \"60s\"\n"),
        APP_TARGET,
    )
    .await
    else {
        return;
    };
    let load = Load::start(addr, "/", 50, 50, PACE);

    let mut journals = blocking(&sd, |sd| {
        sd.write("/etc/app/app.toml", "[app]\nslow_max = \"200ms\"\n");
        let journals = [
            sd.follow_journal("app@1.service"),
            sd.follow_journal("app@2.service"),
        ];
        let (ok, output) = rollout(sd, "/usr/bin/app", &["--config-only"]);
        assert!(ok, "{output}\n{}", sd.journal(&["app@1.service"]));
        journals
    })
    .await;
    for journal in &mut journals {
        journal.wait_for_line(&["settings reloaded"]);
    }
    for _ in 0..4 {
        let (status, body) = http_get(addr, "/slow?ms=3000").unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 200 ms (capped)\n"));
    }

    let (before, after, reload) = blocking(&sd, |sd| {
        sd.write("/etc/app/app.toml", "[app]\nslow_max = [broken\n");
        let (ok, _) = rollout(sd, "/usr/bin/app", &["--config-only"]);
        assert!(
            ok,
            "a settings file that does not parse is logged, not fatal"
        );
        let before = pids(sd);
        let reload = sd.systemctl(&["reload", "app@1.service", "app@2.service"]);
        (before, pids(sd), reload)
    })
    .await;
    for journal in &mut journals {
        journal.wait_for_line(&["settings not reloaded"]);
        journal.wait_for_line(&["reload failed: this process goes on serving"]);
    }
    assert!(
        !reload.status.success(),
        "a reload whose new process cannot read its settings fails"
    );
    assert_eq!(before, after, "the old processes serve on");
    for _ in 0..4 {
        let (status, body) = http_get(addr, "/slow?ms=3000").unwrap();
        assert_eq!((status, body.as_str()), (200, "slept 200 ms (capped)\n"));
    }
    let mut counts = load.stop().await;
    assert_no_loss("through two reloads", &mut counts);
    let active = blocking(&sd, |sd| sd.property("app@1.service", "ActiveState")).await;
    assert_eq!(active, "active");
}

/// Acceptance 6: SIGKILL of one instance under load: the socket stays, the
/// sibling serves, systemd restarts the killed one; only connections the
/// killed process held can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_only_its_own_connections() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let keep_alive = 50;
    let new_conn = 50;
    let load = Load::start(addr, "/", keep_alive, new_conn, PACE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (old, restarted) = blocking(&sd, |sd| {
        let old = main_pid(sd, "app@1.service");
        sd.systemctl_ok(&["kill", "--signal=SIGKILL", "app@1.service"]);
        // Restart=on-failure with RestartSec=1s brings it back; `start`
        // waits for that queued job to finish, READY included.
        let started = Instant::now();
        loop {
            let state = sd.property("app@1.service", "ActiveState");
            let pid = main_pid(sd, "app@1.service");
            if state == "active" && pid != old && pid != "0" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "not restarted");
            // systemd restarts it after RestartSec; there is no job to wait
            // on until then.
            std::thread::sleep(Duration::from_millis(100));
        }
        (old, main_pid(sd, "app@1.service"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut counts = load.stop().await;
    println!(
        "SIGKILL of app@1 (pid {old} -> {restarted}): {}",
        counts.summary()
    );
    assert_eq!(counts.non_2xx(), 0, "{:?}", counts.by_status);
    // Each client holds at most one connection, and only those on the killed
    // process can fail; the rest of the traffic is served by the sibling.
    assert!(
        counts.error_count() <= (keep_alive + new_conn) as u64,
        "more errors than connections the killed process could hold: {:?}",
        counts.errors
    );
    let socket = blocking(&sd, |sd| sd.property("app.socket", "ActiveState")).await;
    assert_eq!(socket, "active");
}

/// The one-instance case: a restart leaves nobody to accept, so connections
/// wait in the socket's queue. Nothing is lost; the figure is the added latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_restart_makes_connections_wait_not_fail() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_ONE).await else {
        return;
    };
    let load = Load::start(addr, "/", 25, 25, PACE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut steady = load.stop().await;

    let load = Load::start(addr, "/", 25, 25, PACE);
    let mut restarts = Vec::new();
    for _ in 0..5 {
        let took = blocking(&sd, |sd| {
            let started = Instant::now();
            let (ok, output) = rollout(sd, "/usr/bin/app", &[]);
            assert!(ok, "{output}");
            started.elapsed()
        })
        .await;
        restarts.push(took);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut during = load.stop().await;
    println!("one instance, 5 restarts taking {restarts:?}");
    assert_no_loss("one instance, steady", &mut steady);
    assert_no_loss("one instance, through 5 restarts", &mut during);
    println!(
        "one instance: added latency at the worst moment of a restart: {:?} (max {:?} vs steady p50 {:?})",
        during.quantile(1.0).saturating_sub(steady.quantile(0.5)),
        during.quantile(1.0),
        steady.quantile(0.5)
    );
}

/// Acceptance 7: with only the socket started, the first request starts
/// app@1 and is answered.
#[test]
fn the_first_request_starts_an_instance_on_demand() {
    let Some((sd, addr)) = booted_now(|| Install::project(""), &["app.socket"]) else {
        return;
    };
    assert_eq!(sd.property("app@1.service", "ActiveState"), "inactive");
    let (status, body) = http_get(addr, "/version").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"instance\":\"1\""), "{body}");
    assert_eq!(sd.property("app@1.service", "ActiveState"), "active");
    assert_eq!(sd.property("app@2.service", "ActiveState"), "inactive");
}

/// With nothing running, a rollout fails and says so, unless asked to accept
/// that (`--if-running`, what package upgrades use: they start nothing the
/// administrator stopped).
#[test]
fn a_rollout_with_nothing_running_fails_unless_told_it_may() {
    let Some((sd, _addr)) = booted_now(|| Install::project(""), &[]) else {
        return;
    };
    let (ok, output) = rollout(&sd, "/usr/bin/app", &[]);
    assert!(!ok, "{output}");
    assert!(
        output.contains("app: error: no running instance of app@.service to roll out"),
        "{output}"
    );
    let (ok, output) = rollout(&sd, "/usr/bin/app", &["--if-running"]);
    assert!(ok, "{output}");
    assert_eq!(
        output.trim(),
        "rollout: no app@ instance is running; nothing to do"
    );
    assert_eq!(sd.property("app@1.service", "ActiveState"), "inactive");
}

/// What the unit's hardening means for the running process: a dynamic user
/// (not root), no capabilities at all, no new privileges, and a network
/// namespace with loopback only, so it has no network of its own and
/// serves only the socket systemd passes. The watchdog is on.
#[test]
fn an_instance_runs_unprivileged_with_no_network_but_its_socket() {
    let Some((sd, addr)) = booted_now(|| Install::project(""), APP_ONE) else {
        return;
    };
    let pid = main_pid(&sd, "app@1.service");
    let read = |path: &str| {
        let out = sd.run("cat", &[&format!("/proc/{pid}/{path}")]);
        assert!(out.status.success(), "cat /proc/{pid}/{path}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = read("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let uid: u32 = field("Uid")[0].parse().unwrap();
    // systemd allocates dynamic users from 61184 to 65519.
    assert!(
        (61184..=65519).contains(&uid),
        "uid {uid} is not a dynamic user"
    );
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"]);
    let interfaces: Vec<String> = read("net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|name| name.trim().to_owned())
        .collect();
    assert_eq!(interfaces, ["lo"], "the instance sees network interfaces");
    let own_ns = sd.run("readlink", &[&format!("/proc/{pid}/ns/net")]);
    let box_ns = sd.run("readlink", &["/proc/1/ns/net"]);
    assert_ne!(
        own_ns.stdout, box_ns.stdout,
        "the instance shares the host's network"
    );
    // And yet it serves, through the socket systemd passed.
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    assert_eq!(sd.property("app@1.service", "WatchdogUSec"), "10s");
    println!(
        "app@1: uid {uid} (dynamic), no capabilities, no new privileges, interfaces {interfaces:?}, watchdog 10s"
    );
}
