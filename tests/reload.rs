//! Issue 15 acceptance: `systemctl reload` replaces an instance in place
//! and moves its keep-alive connections to the new process, under a real
//! systemd booted by the harness, with the real units and binary.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover::fault::{HANG_MESSAGE, START_MESSAGE};
use support::fault::fault_binary;
use support::load::Load;
use support::pool::{Pool, PoolCounts};
use support::release::next_release;
use support::service::{Version, assert_no_loss, blocking, versions};
use support::systemd::{APP_ONE, APP_TARGET, Install, SystemdBox, booted, can_boot};

const PACE: Duration = Duration::from_millis(50);

/// The Node-like pool's size, and the longest it idles a connection.
const POOL_CONNECTIONS: usize = 150;
const POOL_IDLE_MAX: Duration = Duration::from_millis(1500);

const DROP_IN: &str = "/etc/systemd/system/app@.service.d/test.conf";

/// The fault-switch build (tests/support/fault.rs), with `service` in a
/// drop-in for app@.service. No core dumps: a watchdog kill is SIGABRT.
fn boot_faulty(service: &str) -> (Arc<SystemdBox>, SocketAddr) {
    let install = Install::project_with_binary("", fault_binary())
        .file(DROP_IN, &format!("[Service]\nLimitCORE=0\n{service}"));
    SystemdBox::boot_on_free_port(install)
}

fn main_pid(sd: &SystemdBox, unit: &str) -> String {
    sd.property(unit, "MainPID")
}

fn pids(sd: &SystemdBox) -> [String; 2] {
    [main_pid(sd, "app@1.service"), main_pid(sd, "app@2.service")]
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `/version` of both instances, off the runtime.
async fn serving(sd: &Arc<SystemdBox>, addr: SocketAddr) -> Vec<Version> {
    blocking(sd, move |sd| versions(sd, addr, 2)).await
}

/// The pids `/version` reports, by instance: "1", "2".
fn pids_seen(seen: &[Version]) -> Vec<(String, String)> {
    seen.iter()
        .map(|v| (v.instance.clone(), v.pid.clone()))
        .collect()
}

fn expected_pids(pids: &[String; 2]) -> Vec<(String, String)> {
    vec![
        ("1".to_owned(), pids[0].clone()),
        ("2".to_owned(), pids[1].clone()),
    ]
}

/// The users' verb: `systemctl reload-or-restart app@1 app@2` under load
/// replaces both processes, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_or_restart_replaces_both_instances_without_an_error() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let load = Load::start(addr, "/", 50, 50, PACE);
    let (before, after) = blocking(&sd, |sd| {
        let before = pids(sd);
        for _ in 0..3 {
            sd.systemctl_ok(&["reload-or-restart", "app@1.service", "app@2.service"]);
        }
        (before, pids(sd))
    })
    .await;
    let mut counts = load.stop().await;
    assert_ne!(before[0], after[0], "app@1 kept its process");
    assert_ne!(before[1], after[1], "app@2 kept its process");
    let journal = blocking(&sd, |sd| sd.journal(&["app@1.service", "app@2.service"])).await;
    assert!(journal.contains("handover finished"), "{journal}");
    assert_no_loss("through three reloads", &mut counts);
    let active = blocking(&sd, |sd| sd.property("app@1.service", "ActiveState")).await;
    assert_eq!(active, "active");
}

/// A deploy: the next release copied over /usr/bin/app while the old one
/// serves, then the users' verb under load. Both instances end on the new
/// version, in new processes that are the units' main ones, and no request
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_or_restart_deploys_a_new_release_without_an_error() {
    if !can_boot("reload_or_restart_deploys_a_new_release_without_an_error") {
        return;
    }
    let next = tokio::task::spawn_blocking(next_release).await.unwrap();
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let before = blocking(&sd, pids).await;
    let old = serving(&sd, addr).await;
    assert_eq!(pids_seen(&old), expected_pids(&before));
    for v in &old {
        assert_eq!(v.version, env!("CARGO_PKG_VERSION"), "{old:?}");
    }
    assert_ne!(next.version, env!("CARGO_PKG_VERSION"));

    let load = Load::start(addr, "/", 50, 50, PACE);
    let binary = next.binary.clone();
    let took = blocking(&sd, move |sd| {
        sd.copy_in(&binary, "/usr/bin/app");
        let started = Instant::now();
        sd.systemctl_ok(&["reload-or-restart", "app@1.service", "app@2.service"]);
        started.elapsed()
    })
    .await;
    let seen = serving(&sd, addr).await;
    let mut counts = load.stop().await;
    let after = blocking(&sd, pids).await;
    println!(
        "reload-or-restart of both instances onto {} took {took:?}",
        next.version
    );
    assert_no_loss("deploying the next release", &mut counts);
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new, "an instance kept its process");
    }
    assert_eq!(
        pids_seen(&seen),
        expected_pids(&after),
        "/version is served by the units' main processes"
    );
    for v in &seen {
        assert_eq!(v.version, next.version, "{seen:?}");
    }
    let restarts = blocking(&sd, |sd| {
        [
            sd.property("app@1.service", "NRestarts"),
            sd.property("app@2.service", "NRestarts"),
        ]
    })
    .await;
    assert_eq!(restarts, ["0", "0"], "reloaded, not restarted");
}

/// `app rollout` inside the box: (success, output).
fn rollout(sd: &SystemdBox) -> (bool, String) {
    let out = sd.run("/usr/bin/app", &["rollout"]);
    (out.status.success(), text(&out))
}

/// What a pool of keep-alive clients saw through `rounds` rollouts.
struct PoolRun {
    counts: PoolCounts,
    rollouts: Vec<Duration>,
    /// Per handover: (connections moved, ended in the old process).
    handovers: Vec<(u64, u64)>,
}

/// Runs the Node-like pool through `rounds` rollouts of the instances
/// `units` (which must be every running one), each waiting for the handovers
/// it started to finish.
async fn pool_through_rollouts(
    sd: &Arc<SystemdBox>,
    addr: SocketAddr,
    units: &'static [&'static str],
    rounds: usize,
) -> PoolRun {
    let mut journals = blocking(sd, move |sd| {
        units
            .iter()
            .map(|u| sd.follow_journal(u))
            .collect::<Vec<_>>()
    })
    .await;
    let pool = Pool::start(addr, "/", POOL_CONNECTIONS, POOL_IDLE_MAX).await;
    let mut rollouts = Vec::new();
    let mut handovers = Vec::new();
    for round in 1..=rounds {
        let (took, output, lines, back) = blocking(sd, move |sd| {
            let started = Instant::now();
            let (ok, output) = rollout(sd);
            let took = started.elapsed();
            assert!(ok, "rollout {round} failed:\n{output}");
            // Each old process reports once its connections are moved.
            let lines: Vec<String> = journals
                .iter_mut()
                .map(|j| j.wait_for_line(&["handover finished"]))
                .collect();
            (took, output, lines, journals)
        })
        .await;
        journals = back;
        if round == 1 {
            print!("{output}");
        }
        rollouts.push(took);
        handovers.extend(lines.iter().map(|l| handover_figures(l)));
    }
    PoolRun {
        counts: pool.stop().await,
        rollouts,
        handovers,
    }
}

/// (moved, ended here) from a "handover finished" journal line.
fn handover_figures(line: &str) -> (u64, u64) {
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    let message = entry["MESSAGE"].as_str().unwrap_or_default();
    let number_after = |word: &str| -> u64 {
        message
            .split(word)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .unwrap_or_else(|| panic!("no number after {word:?} in {message:?}"))
    };
    (number_after("moved "), number_after("connections, "))
}

fn assert_pool_lost_nothing(what: &str, run: &PoolRun) {
    let counts = &run.counts;
    let moved: u64 = run.handovers.iter().map(|h| h.0).sum();
    let ended: u64 = run.handovers.iter().map(|h| h.1).sum();
    println!("{what}: {}", counts.summary());
    println!(
        "{what}: rollouts took {:?}; {} handovers moved {moved} connections, {ended} ended in the old process",
        run.rollouts,
        run.handovers.len()
    );
    assert_eq!(counts.error_count(), 0, "{what}: {:?}", counts.errors);
    assert_eq!(counts.non_2xx(), 0, "{what}: {:?}", counts.by_status);
    assert_eq!(
        (counts.opened, counts.closed_idle, counts.closes),
        (POOL_CONNECTIONS as u64, 0, 0),
        "{what}: the server closed pooled connections, which had to be opened again"
    );
    assert!(
        counts.responses() > POOL_CONNECTIONS as u64,
        "{what}: hardly any traffic"
    );
    assert!(moved > 0, "{what}: no connection was moved");
}

/// A Node-style keep-alive pool (no retry) through ten reload-based
/// rollouts of two instances: no error, and every pooled connection is the
/// one it opened at the start (none closed by the server, none reopened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_pool_keeps_its_connections_through_ten_rollouts() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let before = blocking(&sd, pids).await;
    let run = pool_through_rollouts(&sd, addr, &["app@1.service", "app@2.service"], 10).await;
    assert_pool_lost_nothing("pool, 10 rollouts of 2 instances", &run);
    assert_eq!(run.handovers.len(), 20);
    let after = blocking(&sd, pids).await;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new, "an instance kept its process");
    }
    assert_eq!(pids_seen(&serving(&sd, addr).await), expected_pids(&after));
}

/// The same with one instance: there is no sibling to take a closed
/// connection's next one, so only the handover can keep them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_pool_keeps_its_connections_through_ten_reloads_of_one_instance() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_ONE).await else {
        return;
    };
    let before = blocking(&sd, |sd| main_pid(sd, "app@1.service")).await;
    let run = pool_through_rollouts(&sd, addr, &["app@1.service"], 10).await;
    assert_pool_lost_nothing("pool, 10 reloads of 1 instance", &run);
    assert_eq!(run.handovers.len(), 10);
    let after = blocking(&sd, |sd| main_pid(sd, "app@1.service")).await;
    assert_ne!(before, after);
    let state = blocking(&sd, |sd| sd.property("app@2.service", "ActiveState")).await;
    assert_eq!(state, "inactive", "the pool was served by app@1 alone");
}

/// The control for the two tests above: the same pool through restarts
/// (`app rollout --restart`) sees its connections closed and opens new
/// ones, so the pool's figures can tell a reload from a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_pool_sees_a_restart_close_its_connections() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let pool = Pool::start(addr, "/", POOL_CONNECTIONS, POOL_IDLE_MAX).await;
    let output = blocking(&sd, |sd| {
        let out = sd.run("/usr/bin/app", &["rollout", "--restart"]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    })
    .await;
    let counts = pool.stop().await;
    print!("{output}");
    println!(
        "pool, 1 restart rollout of 2 instances: {}",
        counts.summary()
    );
    assert!(
        counts.opened > POOL_CONNECTIONS as u64 && counts.closed_idle + counts.closes > 0,
        "the pool did not see the restarts close its connections: {}",
        counts.summary()
    );
}

/// `systemctl reload 'app@*'`: every instance at once, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_instance_at_once_loses_nothing() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let before = blocking(&sd, pids).await;
    let load = Load::start(addr, "/", 50, 50, PACE);
    let mut took = Vec::new();
    let mut last = before.clone();
    for _ in 0..3 {
        let (elapsed, now) = blocking(&sd, |sd| {
            let started = Instant::now();
            sd.systemctl_ok(&["reload", "app@*"]);
            (started.elapsed(), pids(sd))
        })
        .await;
        for (old, new) in last.iter().zip(&now) {
            assert_ne!(old, new, "an instance kept its process");
        }
        took.push(elapsed);
        last = now;
    }
    let seen = serving(&sd, addr).await;
    let mut counts = load.stop().await;
    println!("systemctl reload 'app@*', three times, took {took:?}");
    assert_no_loss(
        "through three reloads of every instance at once",
        &mut counts,
    );
    assert_eq!(pids_seen(&seen), expected_pids(&last));
}

/// A broken release, as one case of the test below: how it is made, what
/// the journal must say of it, and how it is fixed.
struct Broken {
    what: &'static str,
    path: &'static str,
    contents: &'static str,
    fixed: &'static str,
    /// Each must be in app@1's journal once the reload failed.
    reasons: &'static [&'static str],
    /// What `systemctl reload`'s own process (`app replace`, ExecReload=)
    /// says: the old process's reason, sent back to it.
    told: &'static str,
}

static BROKEN: [Broken; 3] = [
    Broken {
        what: "exits at start",
        path: "/etc/app/fault-at-start",
        contents: "exit\n",
        fixed: "",
        reasons: &[START_MESSAGE, "the new process exited before it was ready"],
        told: "the new process exited before it was ready",
    },
    Broken {
        what: "never ready",
        path: "/etc/app/fault-at-start",
        contents: "hang\n",
        fixed: "",
        reasons: &["the new process was not ready within 10s; killed it"],
        told: "the new process was not ready within 10s",
    },
    Broken {
        what: "invalid settings",
        path: "/etc/app/app.toml",
        contents: "drain_deadline = \"2s\"\nidle_grace = \"5s\"\n",
        fixed: "",
        reasons: &["idle_grace", "must be shorter than drain_deadline"],
        told: "the new process exited before it was ready",
    },
];

/// For each way a release can be broken, `systemctl reload app@1` fails,
/// says why, and leaves the old process serving (same MainPID, no error
/// under load); once fixed, the same reload succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_fails_the_reload_and_the_old_process_serves_on() {
    if !can_boot("a_broken_release_fails_the_reload_and_the_old_process_serves_on") {
        return;
    }
    let (sd, addr) = tokio::task::spawn_blocking(|| boot_faulty(""))
        .await
        .unwrap();
    blocking(&sd, |sd| sd.systemctl_ok(&["start", "app.target"])).await;
    let mut journal = blocking(&sd, |sd| sd.follow_journal("app@1.service")).await;
    for case in &BROKEN {
        let [old, sibling] = blocking(&sd, pids).await;
        let load = Load::start(addr, "/", 50, 50, PACE);
        let (failed, took, still, state, back) = blocking(&sd, move |sd| {
            sd.write(case.path, case.contents);
            let started = Instant::now();
            let out = sd.systemctl(&["reload", "app@1.service"]);
            let took = started.elapsed();
            let line = journal.wait_for_line(&["reload failed: this process goes on serving"]);
            (
                (out, line),
                took,
                main_pid(sd, "app@1.service"),
                sd.property("app@1.service", "ActiveState"),
                journal,
            )
        })
        .await;
        journal = back;
        let ((out, line), what) = (failed, case.what);
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        println!(
            "{what}: systemctl reload failed after {took:?}: {} ({})",
            entry["MESSAGE"], entry["F_ERROR"]
        );
        assert!(!out.status.success(), "{what}: the reload succeeded");
        assert_eq!(
            (still.as_str(), state.as_str()),
            (old.as_str(), "active"),
            "{what}"
        );
        // Every field of every entry: the reason is a field of the failure's
        // entry, not its message.
        let log = blocking(&sd, |sd| {
            let entries = sd.journal_entries(&["-u", "app@1.service"]);
            entries
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await;
        for reason in case.reasons {
            assert!(log.contains(reason), "{what}: no {reason:?} in\n{log}");
        }
        let told = log
            .lines()
            .filter(|entry| entry.contains("the reload failed: PID"))
            .any(|entry| entry.contains(case.told));
        assert!(
            told,
            "{what}: `app replace` did not say {:?}:\n{log}",
            case.told
        );
        // The old process serves, as instance 1, and its sibling too.
        let seen = serving(&sd, addr).await;
        assert_eq!(
            pids_seen(&seen),
            expected_pids(&[old.clone(), sibling]),
            "{what}"
        );

        let (ok, new) = blocking(&sd, move |sd| {
            sd.write(case.path, case.fixed);
            let out = sd.systemctl(&["reload", "app@1.service"]);
            (out, main_pid(sd, "app@1.service"))
        })
        .await;
        let mut counts = load.stop().await;
        assert!(ok.status.success(), "{what}, fixed: {}", text(&ok));
        assert_ne!(new, old, "{what}, fixed: app@1 kept its process");
        assert_no_loss(
            &format!("{what}: the failed reload and its fix"),
            &mut counts,
        );
    }
    let restarts = blocking(&sd, |sd| sd.property("app@1.service", "NRestarts")).await;
    assert_eq!(restarts, "0");
}

/// SIGKILL of the process a reload started: systemd knows it as the main
/// one, so the instance is restarted; the sibling serves meanwhile, and only
/// connections the killed process held can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_process_killed_is_restarted_while_its_sibling_serves() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let mut journal = blocking(&sd, |sd| sd.follow_journal("app@1.service")).await;
    let (before, reloaded, back) = blocking(&sd, move |sd| {
        let before = pids(sd);
        sd.systemctl_ok(&["reload", "app@1.service"]);
        journal.wait_for_line(&["handover finished"]);
        (before, pids(sd), journal)
    })
    .await;
    journal = back;
    assert_ne!(before[0], reloaded[0]);
    assert_eq!(before[1], reloaded[1]);
    assert_eq!(
        pids_seen(&serving(&sd, addr).await),
        expected_pids(&reloaded)
    );

    let (keep_alive, new_conn) = (50, 50);
    let load = Load::start(addr, "/", keep_alive, new_conn, PACE);
    let (after, restarts, back) = blocking(&sd, move |sd| {
        sd.systemctl_ok(&[
            "kill",
            "--kill-whom=main",
            "--signal=SIGKILL",
            "app@1.service",
        ]);
        journal.wait_for_line(&["Main process exited", "status=9/KILL"]);
        // Restart=on-failure brings it back after RestartSec=.
        journal.wait_for_line(&["\"MESSAGE\":\"ready\""]);
        (pids(sd), sd.property("app@1.service", "NRestarts"), journal)
    })
    .await;
    drop(back);
    let seen = serving(&sd, addr).await;
    let mut counts = load.stop().await;
    println!(
        "SIGKILL of the reloaded app@1 (pid {} -> {}): {}",
        reloaded[0],
        after[0],
        counts.summary()
    );
    assert_ne!(after[0], reloaded[0], "app@1 was not restarted");
    assert_eq!(after[1], reloaded[1], "the sibling was touched");
    assert_eq!(restarts, "1");
    let state = blocking(&sd, |sd| sd.property("app@1.service", "ActiveState")).await;
    assert_eq!(state, "active");
    assert_eq!(pids_seen(&seen), expected_pids(&after));
    assert_eq!(counts.non_2xx(), 0, "{:?}", counts.by_status);
    assert!(
        counts.error_count() <= (keep_alive + new_conn) as u64,
        "more errors than connections the killed process could hold: {:?}",
        counts.errors
    );
    assert!(
        counts.ok() > counts.error_count() * 10,
        "{}",
        counts.summary()
    );
}

/// The watchdog follows the main process: after a reload the new process
/// pings (it outlives several intervals), and once its runtime wedges
/// systemd kills and restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_watches_the_reloaded_process() {
    if !can_boot("the_watchdog_watches_the_reloaded_process") {
        return;
    }
    let watchdog = Duration::from_secs(2);
    let (sd, addr) = tokio::task::spawn_blocking(move || {
        boot_faulty(&format!("WatchdogSec={}s\n", watchdog.as_secs()))
    })
    .await
    .unwrap();
    blocking(&sd, |sd| sd.systemctl_ok(&["start", "app.target"])).await;
    let mut journal = blocking(&sd, |sd| sd.follow_journal("app@1.service")).await;
    let (before, back) = blocking(&sd, move |sd| {
        let before = main_pid(sd, "app@1.service");
        sd.systemctl_ok(&["reload", "app@1.service"]);
        journal.wait_for_line(&["handover finished"]);
        (before, journal)
    })
    .await;
    journal = back;
    let reloaded = blocking(&sd, |sd| main_pid(sd, "app@1.service")).await;
    assert_ne!(before, reloaded);
    let interval = blocking(&sd, |sd| sd.property("app@1.service", "WatchdogUSec")).await;
    assert_eq!(interval, "2s");

    // A measurement window, not a synchronisation: a new process that did
    // not ping would be killed within one interval.
    tokio::time::sleep(watchdog * 3).await;
    let (still, restarts) = blocking(&sd, |sd| {
        (
            main_pid(sd, "app@1.service"),
            sd.property("app@1.service", "NRestarts"),
        )
    })
    .await;
    assert_eq!(
        (still.as_str(), restarts.as_str()),
        (reloaded.as_str(), "0")
    );

    let hung = reloaded.clone();
    let (hung_at, back) = blocking(&sd, move |sd| {
        let out = sd.run("kill", &["-USR2", &hung]);
        assert!(out.status.success(), "kill -USR2 {hung}: {out:?}");
        journal.wait_for_line(&[HANG_MESSAGE]);
        (Instant::now(), journal)
    })
    .await;
    journal = back;
    // From here on only app@2 accepts: a wedged runtime takes nothing from
    // the shared queue.
    let load = Load::start(addr, "/", 20, 20, PACE);
    let (killed, ready, back) = blocking(&sd, move |_| {
        journal.wait_for_line(&["Watchdog timeout"]);
        let killed = hung_at.elapsed();
        journal.wait_for_line(&["\"MESSAGE\":\"ready\""]);
        (killed, hung_at.elapsed(), journal)
    })
    .await;
    drop(back);
    let seen = serving(&sd, addr).await;
    let mut counts = load.stop().await;
    println!(
        "watchdog after a reload: app@1 (pid {reloaded}) hung; killed after {killed:?} (WatchdogSec=2s), ready again after {ready:?}"
    );
    assert_no_loss(
        "while the reloaded app@1 hung and was restarted",
        &mut counts,
    );
    let after = blocking(&sd, pids).await;
    assert_ne!(after[0], reloaded, "app@1 is a new process");
    assert_eq!(pids_seen(&seen), expected_pids(&after));
    let restarts = blocking(&sd, |sd| sd.property("app@1.service", "NRestarts")).await;
    assert_eq!(restarts, "1");
    assert!(
        killed >= watchdog / 2,
        "killed before the watchdog interval: {killed:?}"
    );
}

/// After a reload the main process is one systemd did not start ("not our
/// child"). A stop, and a restart, must still drain it: SIGTERM, every
/// request answered, "drain finished", a clean exit, not an immediate
/// SIGKILL (what KillMode=mixed does to such a main process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_process_drains_on_stop_and_restart() {
    let Some((sd, addr)) = booted(|| Install::project(""), APP_TARGET).await else {
        return;
    };
    let load = Load::start(addr, "/", 50, 50, PACE);
    let (reloaded, result) = blocking(&sd, |sd| {
        let mut journal = sd.follow_journal("app@1.service");
        sd.systemctl_ok(&["reload", "app@1.service", "app@2.service"]);
        let reloaded = main_pid(sd, "app@1.service");
        journal.wait_for_line(&["handover finished"]);
        sd.systemctl_ok(&["restart", "app@1.service"]);
        journal.wait_for_line(&["drain finished"]);
        sd.systemctl_ok(&["reload", "app@2.service"]);
        sd.systemctl_ok(&["stop", "app@2.service"]);
        (reloaded, sd.property("app@2.service", "Result"))
    })
    .await;
    let mut counts = load.stop().await;
    let journal = blocking(&sd, |sd| sd.journal(&["app@1.service", "app@2.service"])).await;
    println!("{journal}");
    assert_no_loss("through a restart and a stop after reloads", &mut counts);
    assert_eq!(result, "success", "app@2 stopped cleanly, not killed");
    assert!(
        journal.contains(&format!("app[{reloaded}]: drain finished")),
        "the reloaded process drained on restart:\n{journal}"
    );
    assert!(!journal.contains("status=9/KILL"), "{journal}");
}
