//! Faults under a real systemd booted by the harness: a hung instance and
//! the watchdog, the drain deadline and how `systemctl status` tells a cut
//! drain from a clean one, and a stop that never waits past TimeoutStopSec=.
//! The hang comes from the test build's fault switch (tests/support/fault.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover::fault::HANG_MESSAGE;
use support::fault::fault_binary;
use support::load::Load;
use support::process::http_get;
use support::service::{assert_no_loss, blocking, versions};
use support::systemd::{Install, SystemdBox, can_boot};

const DROP_IN: &str = "/etc/systemd/system/app@.service.d/test.conf";

/// Boots the units with the fault-switch build of `app` and a drop-in for
/// app@.service. No core dumps: a watchdog kill is SIGABRT.
fn boot_faulty(settings: &str, service: &str) -> (Arc<SystemdBox>, SocketAddr) {
    let install = Install::project_with_binary(settings, fault_binary())
        .file(DROP_IN, &format!("[Service]\nLimitCORE=0\n{service}"));
    SystemdBox::boot_on_free_port(install)
}

/// Flips the fault switch of `unit` and waits until the instance says so.
fn hang(sd: &SystemdBox, unit: &str, journal: &mut support::process::Process) -> Instant {
    let pid = sd.property(unit, "MainPID");
    let out = sd.run("kill", &["-USR2", &pid]);
    assert!(out.status.success(), "kill -USR2 {pid}: {out:?}");
    journal.wait_for_line(&[HANG_MESSAGE]);
    Instant::now()
}

/// A hung instance stops its watchdog pings; systemd kills and restarts it,
/// and clients, served by the sibling meanwhile, see no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_instance_is_killed_by_the_watchdog_and_restarted_while_its_sibling_serves() {
    if !can_boot("a_hung_instance_is_killed_by_the_watchdog_and_restarted_while_its_sibling_serves")
    {
        return;
    }
    let (sd, addr) = tokio::task::spawn_blocking(|| boot_faulty("", "WatchdogSec=2s\n"))
        .await
        .unwrap();
    blocking(&sd, |sd| sd.systemctl_ok(&["start", "app.target"])).await;
    let hung_pid = sd.property("app@2.service", "MainPID");
    let mut journal = sd.follow_journal("app@2.service");
    let (hung_at, mut journal) = tokio::task::spawn_blocking({
        let sd = sd.clone();
        move || (hang(&sd, "app@2.service", &mut journal), journal)
    })
    .await
    .unwrap();

    // From here on only app@1 accepts: a wedged runtime takes nothing from
    // the shared queue.
    let load = Load::start(addr, "/", 20, 20, Duration::from_millis(20));
    let (killed, ready, journal) = tokio::task::spawn_blocking(move || {
        journal.wait_for_line(&["Watchdog timeout"]);
        let killed = hung_at.elapsed();
        journal.wait_for_line(&["\"MESSAGE\":\"ready\""]);
        (killed, hung_at.elapsed(), journal)
    })
    .await
    .unwrap();
    drop(journal);
    // Traffic reaches the new app@2 as well before the load ends.
    let seen = blocking(&sd, move |sd| versions(sd, addr, 2)).await;
    let mut counts = load.stop().await;
    println!(
        "watchdog: app@2 hung; killed after {killed:?} (WatchdogSec=2s), ready again after {ready:?}"
    );
    assert_no_loss("while app@2 hung and was restarted", &mut counts);
    let new_pid = &seen.iter().find(|v| v.instance == "2").unwrap().pid;
    assert_ne!(new_pid, &hung_pid, "app@2 is a new process");
    let restarts: u32 = sd.property("app@2.service", "NRestarts").parse().unwrap();
    assert!(restarts >= 1, "systemd restarted app@2 ({restarts})");
    assert!(
        killed >= Duration::from_secs(1),
        "killed before the watchdog interval: {killed:?}"
    );
}

/// A request longer than drain_deadline is cut at the deadline and logged;
/// the exit status is 3 and `systemctl status` shows it, where a clean drain
/// exits 0 and leaves the unit inactive, not failed.
#[test]
fn a_drain_cut_at_its_deadline_shows_in_systemctl_status() {
    if !can_boot("a_drain_cut_at_its_deadline_shows_in_systemctl_status") {
        return;
    }
    let settings = "drain_deadline = \"2s\"\nlog_level = \"debug\"\n";
    let (sd, addr) = SystemdBox::boot_on_free_port(
        Install::project(settings).file(DROP_IN, "[Service]\nTimeoutStopSec=8s\n"),
    );
    sd.systemctl_ok(&["start", "app.socket", "app@1.service"]);
    let mut journal = sd.follow_journal("app@1.service");
    let request = std::thread::spawn(move || http_get(addr, "/slow?ms=30000"));
    journal.wait_for_line(&["\"MESSAGE\":\"request\"", "/slow?ms=30000"]);
    let started = Instant::now();
    sd.systemctl_ok(&["stop", "app@1.service"]);
    let stop_took = started.elapsed();
    let cut_line = journal.wait_for_line(&["drain deadline passed: cut 1 connections"]);
    assert!(
        cut_line.contains("\"PRIORITY\":\"3\""),
        "logged as an error: {cut_line}"
    );
    let answer = request.join().unwrap();
    assert!(answer.is_err(), "the cut request got an answer: {answer:?}");
    let cut_status = status(&sd, "app@1.service");
    assert_eq!(sd.property("app@1.service", "ExecMainStatus"), "3");
    assert_eq!(sd.property("app@1.service", "Result"), "exit-code");
    assert!(cut_status.contains("status=3"), "{cut_status}");

    // The same instance drained cleanly.
    sd.systemctl_ok(&["start", "app@1.service"]);
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    sd.systemctl_ok(&["stop", "app@1.service"]);
    let clean_status = status(&sd, "app@1.service");
    assert_eq!(sd.property("app@1.service", "ExecMainStatus"), "0");
    assert_eq!(sd.property("app@1.service", "Result"), "success");
    assert!(clean_status.contains("inactive (dead)"), "{clean_status}");

    println!(
        "stop with a 30 s request in flight took {stop_took:?} (drain_deadline 2s, TimeoutStopSec=8s)"
    );
    println!(
        "systemctl status after the cut drain:\n{}",
        summary(&cut_status)
    );
    println!(
        "systemctl status after a clean drain:\n{}",
        summary(&clean_status)
    );
    assert!(
        stop_took >= Duration::from_secs(2),
        "stopped before the deadline: {stop_took:?}"
    );
    assert!(
        stop_took < Duration::from_secs(8),
        "systemd's timeout, not ours, ended it: {stop_took:?}"
    );
}

/// An instance that hangs does not answer SIGTERM: `systemctl stop` ends
/// at TimeoutStopSec=, with SIGKILL, and says so.
#[test]
fn stopping_a_hung_instance_never_waits_past_the_stop_timeout() {
    if !can_boot("stopping_a_hung_instance_never_waits_past_the_stop_timeout") {
        return;
    }
    let (sd, _addr) = boot_faulty("", "TimeoutStopSec=3s\n");
    sd.systemctl_ok(&["start", "app.socket", "app@1.service"]);
    let mut journal = sd.follow_journal("app@1.service");
    hang(&sd, "app@1.service", &mut journal);
    let started = Instant::now();
    sd.systemctl_ok(&["stop", "app@1.service"]);
    let stop_took = started.elapsed();
    let stopped = status(&sd, "app@1.service");
    println!(
        "stop of a hung instance took {stop_took:?} (TimeoutStopSec=3s)\n{}",
        summary(&stopped)
    );
    assert_eq!(sd.property("app@1.service", "Result"), "timeout");
    assert!(
        stopped.contains("signal=KILL") || stopped.contains("status=9/KILL"),
        "{stopped}"
    );
    assert!(stop_took >= Duration::from_secs(3), "{stop_took:?}");
    assert!(stop_took < Duration::from_secs(6), "{stop_took:?}");
}

fn status(sd: &SystemdBox, unit: &str) -> String {
    let out = sd.systemctl(&["status", "--no-pager", "--lines=3", unit]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of `systemctl status` that say how the process ended.
fn summary(status: &str) -> String {
    status
        .lines()
        .filter(|l| l.contains("Active:") || l.contains("Main PID:") || l.contains("Process:"))
        .map(|l| format!("  {}\n", l.trim()))
        .collect()
}
