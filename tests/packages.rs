//! The `.deb` and `.rpm`: lint, scriptlets, and their whole lifecycle inside a
//! booted systemd: install, upgrade under load, an upgrade whose new release
//! cannot start, removal and purge. Each package manager runs the package's
//! own scripts, as on a user's host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover::fault::HANG_MESSAGE;
use support::fault::fault_binary;
use support::load::Load;
use support::packages::{
    Built, Step, assert_clean, assert_nothing_left, boot_with_packages, packages, run_step,
};
use support::raw::{End, RawConn};
use support::service::{assert_no_loss, assert_serving, blocking, versions};
use support::systemd::{SystemdBox, can_boot};

/// Each client starts a request at most this often.
const PACE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
enum Format {
    Deb,
    Rpm,
}

impl Format {
    fn file(self, built: &Built) -> &std::path::Path {
        match self {
            Format::Deb => &built.deb,
            Format::Rpm => &built.rpm,
        }
    }

    /// Installs or upgrades to `inside` (a path in the box).
    fn install(self, sd: &SystemdBox, inside: &str, upgrade: bool) -> Step {
        match self {
            Format::Deb => run_step(sd, "dpkg", &["-i", inside]),
            // --nodeps: a Debian host's rpm database knows none of the
            // libraries the package requires (libc and friends are dpkg's).
            // --force-debian: Debian's rpm otherwise warns that it is not
            // Debian's package manager.
            Format::Rpm => {
                let verb = if upgrade { "-U" } else { "-i" };
                run_step(sd, "rpm", &[verb, "--force-debian", "--nodeps", inside])
            }
        }
    }

    fn remove(self, sd: &SystemdBox) -> Step {
        match self {
            Format::Deb => run_step(sd, "dpkg", &["-r", "app"]),
            Format::Rpm => run_step(sd, "rpm", &["-e", "--force-debian", "--nodeps", "app"]),
        }
    }

    /// dpkg's purge; rpm has none (erasing removes an unmodified config file).
    fn purge(self, sd: &SystemdBox) -> Option<Step> {
        match self {
            Format::Deb => Some(run_step(sd, "dpkg", &["-P", "app"])),
            Format::Rpm => None,
        }
    }
}

fn boot(format: Format, builds: &[&Built]) -> (Arc<SystemdBox>, SocketAddr, Vec<String>) {
    let files: Vec<&std::path::Path> = builds.iter().map(|b| format.file(b)).collect();
    boot_with_packages(&files)
}

fn invocation(sd: &SystemdBox, unit: &str) -> String {
    sd.property(unit, "InvocationID")
}

/// Install, upgrade under load, remove, purge.
async fn lifecycle(format: Format, test: &str) {
    if !can_boot(test) {
        return;
    }
    let Some(packages) = packages(test) else {
        return;
    };
    let (sd, addr, files) = boot(format, &[&packages.current, &packages.next]);
    let (current, next) = (files[0].clone(), files[1].clone());

    // Install: enabled, started, answering as soon as the command returns.
    let step = blocking(&sd, move |sd| format.install(sd, &current, false)).await;
    assert_clean("install", &step, &sd);
    let before = blocking(&sd, {
        let version = packages.current.version.clone();
        move |sd| assert_serving(sd, addr, &version)
    })
    .await;
    for unit in ["app.socket", "app.target"] {
        assert_eq!(sd.property(unit, "UnitFileState"), "enabled", "{unit}");
        assert_eq!(sd.property(unit, "ActiveState"), "active", "{unit}");
    }
    let socket_before = invocation(&sd, "app.socket");
    // The licence travels with the package: the DEP-5 copyright file
    // (both formats), and for rpm the licence field and the licence texts.
    let copyright = match format {
        Format::Deb => "/usr/share/doc/app/copyright",
        Format::Rpm => "/usr/share/licenses/app/copyright",
    };
    let text = String::from_utf8_lossy(&sd.run("cat", &[copyright]).stdout).into_owned();
    assert!(
        text.contains("License: MIT or Apache-2.0")
            && text.contains("Permission is hereby granted"),
        "{copyright}:\n{text}"
    );
    if let Format::Rpm = format {
        let field = sd.run("rpm", &["-q", "--queryformat", "%{LICENSE}", "app"]);
        assert_eq!(String::from_utf8_lossy(&field.stdout), "MIT OR Apache-2.0");
        for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
            let path = format!("/usr/share/licenses/app/{file}");
            assert!(sd.run("test", &["-s", &path]).status.success(), "{path}");
        }
    }

    // Upgrade under load: a rolling restart, nothing lost, the socket kept.
    let load = Load::start(addr, "/", 50, 50, PACE);
    let started = Instant::now();
    let step = blocking(&sd, move |sd| format.install(sd, &next, true)).await;
    let took = started.elapsed();
    let mut during = load.stop().await;
    assert_clean("upgrade", &step, &sd);
    println!("upgrade took {took:?}");
    assert!(
        step.stdout.contains("rollout: done, 2 instances"),
        "the upgrade did not roll the instances:\n{}",
        step.stdout
    );
    assert_no_loss("during the upgrade", &mut during);
    let after = blocking(&sd, {
        let version = packages.next.version.clone();
        move |sd| assert_serving(sd, addr, &version)
    })
    .await;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(
            old.pid, new.pid,
            "instance {} was not restarted",
            old.instance
        );
    }
    assert_eq!(
        invocation(&sd, "app.socket"),
        socket_before,
        "the upgrade restarted app.socket"
    );

    // Remove: a stream in flight on an instance ends cleanly when it drains.
    let mut stream = RawConn::connect(addr).await.unwrap();
    stream
        .send(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut response = stream.head().await.unwrap();
    assert_eq!(response.status, 200);
    let step = blocking(&sd, move |sd| format.remove(sd)).await;
    assert_clean("remove", &step, &sd);
    if let Err(err) = stream.body(&mut response).await {
        panic!(
            "the /events stream ended before its drain message ({err}); it had {:?}\n{}",
            String::from_utf8_lossy(&response.body),
            sd.journal(&["app@1.service", "app@2.service"])
        );
    }
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.ends_with(": draining, reconnect\n\n"), "{body:?}");
    assert_eq!(stream.end().await.unwrap(), End::Eof);
    let journal = sd.journal(&["app@1.service", "app@2.service"]);
    assert_eq!(
        (
            journal.matches("reload: handover finished").count(),
            journal.matches("drain finished").count()
        ),
        // The upgrade reloads each instance in place (its old process hands
        // over and exits); the removal drains each.
        (2, 2),
        "each instance hands over on upgrade and drains cleanly on removal:\n{journal}"
    );
    assert_nothing_left(&sd, "app", addr, "after remove");

    if let Some(step) = blocking(&sd, move |sd| format.purge(sd)).await {
        assert_clean("purge", &step, &sd);
    }
    assert_nothing_left(&sd, "app", addr, "after purge");
    assert_no_trace(&sd);
}

/// Nothing runs and nothing listens.
/// No file of the package, enablement link, mask or configuration remains.
/// The administrator's own drop-in (app.socket.d) is theirs to remove.
fn assert_no_trace(sd: &SystemdBox) {
    // Exits 1 when nothing matches, which is what we want to see.
    let out = sd.systemctl(&["list-unit-files", "--plain", "--no-legend", "app*"]);
    let files = String::from_utf8_lossy(&out.stdout);
    assert!(files.trim().is_empty(), "unit files left:\n{files}");
    let owned = [
        "/etc/app",
        "/usr/bin/app",
        "/usr/lib/systemd/system/app.socket",
        "/usr/lib/systemd/system/app@.service",
        "/usr/lib/systemd/system/app.target",
        "/usr/share/doc/app/examples",
        "/usr/share/doc/app",
        "/usr/share/licenses/app",
        "/usr/share/man/man1/app.1.gz",
        "/usr/share/man/man1/app.1",
        "/usr/share/man/man1/app-rollout.1.gz",
        "/usr/share/man/man1/app-rollout.1",
        "/usr/share/man/man1/app-replace.1.gz",
        "/usr/share/man/man1/app-replace.1",
        "/usr/share/man/man1/app-rotation.1.gz",
        "/usr/share/man/man1/app-rotation.1",
        "/usr/share/lintian/overrides/app",
    ];
    let left: Vec<&str> = owned
        .into_iter()
        .filter(|p| sd.run("test", &["-e", p]).status.success())
        .collect();
    assert!(left.is_empty(), "package files left: {left:?}");
    // Enablement symlinks, masks, and deb-systemd-helper's state.
    let find = sd.run(
        "find",
        &[
            "/etc/systemd/system",
            "/var/lib/systemd",
            "(",
            "-name",
            "app.socket*",
            "-o",
            "-name",
            "app.target*",
            "-o",
            "-name",
            "app@*",
            ")",
            "-not",
            "-name",
            "app.socket.d",
            "-not",
            "-path",
            "*/app.socket.d/*",
        ],
    );
    let links = String::from_utf8_lossy(&find.stdout);
    assert!(links.trim().is_empty(), "left behind:\n{links}");
}

/// An upgrade to a release that cannot start: the package manager fails,
/// the rollout stops at the first instance, the other keeps serving the old
/// version with nothing lost, the socket stays up; a fixed release then
/// rolls out over it.
async fn broken_upgrade(format: Format, test: &str) {
    if !can_boot(test) {
        return;
    }
    let Some(packages) = packages(test) else {
        return;
    };
    let builds = [&packages.current, &packages.broken, &packages.next];
    let (sd, addr, files) = boot(format, &builds);
    let [current, broken, next] = [files[0].clone(), files[1].clone(), files[2].clone()];

    let step = blocking(&sd, move |sd| format.install(sd, &current, false)).await;
    assert_clean("install", &step, &sd);
    let socket_before = invocation(&sd, "app.socket");

    let load = Load::start(addr, "/", 50, 50, PACE);
    let step = blocking(&sd, move |sd| format.install(sd, &broken, true)).await;
    println!(
        "broken upgrade:\n{}{}",
        step.stdout.trim_end(),
        step.stderr.trim_end()
    );
    let said = assert_reported_failure(format, &step);
    assert!(
        said.contains("app@1.service did not become ready")
            && said.contains("app@2.service left on the old version"),
        "{said}"
    );
    // A reload that fails leaves the old process in place: both instances
    // go on serving the old release, app@1 with the process it had.
    let mut during = load.stop().await;
    assert_no_loss("during and after the broken upgrade", &mut during);
    let current_version = packages.current.version.clone();
    let serving = blocking(&sd, move |sd| versions(sd, addr, 2)).await;
    assert_eq!(serving.len(), 2, "{serving:?}");
    for instance in &serving {
        assert_eq!(instance.version, current_version, "{serving:?}");
    }
    assert_eq!(sd.property("app@1.service", "ActiveState"), "active");
    let journal = sd.journal(&["app@1.service"]);
    assert!(
        journal.contains("reload failed: this process goes on serving")
            && journal.contains("this release is broken on purpose"),
        "app@1's journal names the failed reload and the new release's reason:\n{journal}"
    );
    assert_eq!(sd.property("app.socket", "ActiveState"), "active");
    assert_eq!(invocation(&sd, "app.socket"), socket_before);

    // The fix: the next release repairs app@1 and rolls app@2.
    let load = Load::start(addr, "/", 50, 50, PACE);
    let step = blocking(&sd, move |sd| format.install(sd, &next, true)).await;
    let mut during = load.stop().await;
    assert_clean("fixed upgrade", &step, &sd);
    assert_no_loss("during the fixed upgrade", &mut during);
    let version = packages.next.version.clone();
    blocking(&sd, move |sd| assert_serving(sd, addr, &version)).await;
    assert_eq!(invocation(&sd, "app.socket"), socket_before);
}

/// The package manager said the step failed; returns all it printed.
fn assert_reported_failure(format: Format, step: &Step) -> String {
    let said = format!("{}{}", step.stdout, step.stderr);
    match format {
        Format::Deb => assert!(!step.ok, "dpkg reported success:\n{said}"),
        // rpm reports a failed %post as a warning and still exits 0 (dnf:
        // "Error in POSTIN scriptlet"); that warning is its way of saying so.
        Format::Rpm => assert!(
            step.stderr.contains("warning: %post(app-") && step.stderr.contains("scriptlet failed"),
            "rpm did not report the failed %post:\n{said}"
        ),
    }
    said
}

/// Installing a release whose instances cannot start says so, naming them,
/// instead of reporting a service that answers nothing.
async fn broken_install(format: Format, test: &str) {
    if !can_boot(test) {
        return;
    }
    let Some(packages) = packages(test) else {
        return;
    };
    let (sd, _addr, files) = boot(format, &[&packages.broken]);
    let broken = files[0].clone();
    let step = blocking(&sd, move |sd| format.install(sd, &broken, false)).await;
    let said = assert_reported_failure(format, &step);
    println!("broken install:\n{said}");
    // In systemd's order of app.target's Wants=, which is not sorted.
    let line = said
        .lines()
        .find(|l| l.starts_with("app: not running after install:"))
        .unwrap_or_else(|| panic!("no line naming the instances:\n{said}"));
    assert!(
        line.contains(" app@1.service") && line.contains(" app@2.service"),
        "{line}"
    );
    // The broken instances retry once a second. Past systemd's default
    // start limit (5 in 10 s), which would fail app.socket itself, the
    // socket stays: a fixed release can still be rolled out onto it.
    let restarts = blocking(&sd, |sd| wait_for_restarts(sd, "app@1.service", 6)).await;
    println!("app@1 restarted {restarts} times");
    assert_eq!(sd.property("app.socket", "ActiveState"), "active");
}

/// Polls the unit's automatic restart count until it reaches `at_least`.
fn wait_for_restarts(sd: &SystemdBox, unit: &str, at_least: u32) -> u32 {
    let started = Instant::now();
    loop {
        let restarts: u32 = sd.property(unit, "NRestarts").parse().unwrap_or(0);
        if restarts >= at_least {
            return restarts;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{unit} restarted only {restarts} times in 60 s"
        );
        // systemd signals no event for "restarted again" short of D-Bus.
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_installs_upgrades_without_loss_and_removes_cleanly() {
    lifecycle(
        Format::Deb,
        "deb_installs_upgrades_without_loss_and_removes_cleanly",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_installs_upgrades_without_loss_and_removes_cleanly() {
    lifecycle(
        Format::Rpm,
        "rpm_installs_upgrades_without_loss_and_removes_cleanly",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_upgrade_to_a_release_that_cannot_start_keeps_the_old_one_serving() {
    broken_upgrade(
        Format::Deb,
        "deb_upgrade_to_a_release_that_cannot_start_keeps_the_old_one_serving",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_upgrade_to_a_release_that_cannot_start_keeps_the_old_one_serving() {
    broken_upgrade(
        Format::Rpm,
        "rpm_upgrade_to_a_release_that_cannot_start_keeps_the_old_one_serving",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_install_of_a_release_that_cannot_start_fails_naming_the_instances() {
    broken_install(
        Format::Deb,
        "deb_install_of_a_release_that_cannot_start_fails_naming_the_instances",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_install_of_a_release_that_cannot_start_fails_naming_the_instances() {
    broken_install(
        Format::Rpm,
        "rpm_install_of_a_release_that_cannot_start_fails_naming_the_instances",
    )
    .await;
}

#[test]
fn deb_passes_lintian() {
    let test = "deb_passes_lintian";
    let Some(packages) = packages(test) else {
        return;
    };
    let out = std::process::Command::new("lintian")
        .args([
            "--pedantic",
            "--display-info",
            "--display-experimental",
            "--show-overrides",
            "--no-tag-display-limit",
        ])
        .arg(&packages.current.deb)
        .output();
    let Ok(out) = out else {
        support::cannot_run(test, "lintian is not installed (.ci/run installs it)");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lintian:\n{text}");
    // E: error, W: warning, I: info, P: pedantic, X: experimental; O: is a
    // tag the package overrides, each with its reason in lintian-overrides.
    // One override may go unused: whether lintian finds a "misspelled
    // word" in the binary depends on the bytes of its machine code, which
    // change with every build (see lintian-overrides).
    let unexplained: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["E:", "W:", "I:", "P:", "X:"]
                .iter()
                .any(|t| l.starts_with(t))
        })
        .filter(|l| !l.starts_with("I: app: unused-override spelling-error-in-binary "))
        .collect();
    assert!(
        unexplained.is_empty(),
        "lintian tags without an override:\n{}",
        unexplained.join("\n")
    );
    assert!(
        out.status.success(),
        "lintian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rpm -qp --scripts` shows the scriptlets as rpm will run them: our shell,
/// with no unexpanded macro (cargo-generate-rpm expands none).
#[test]
fn rpm_scriptlets_are_the_packaged_shell() {
    let Some(packages) = packages("rpm_scriptlets_are_the_packaged_shell") else {
        return;
    };
    let out = std::process::Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&packages.current.rpm)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for (header, file) in [
        ("postinstall scriptlet", "post_install.sh"),
        ("preuninstall scriptlet", "pre_uninstall.sh"),
        ("postuninstall scriptlet", "post_uninstall.sh"),
    ] {
        let script = std::fs::read_to_string(format!(
            "{}/packaging/rpm/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let section = text
            .split(header)
            .nth(1)
            .unwrap_or_else(|| panic!("no {header} in:\n{text}"));
        assert!(
            section.contains(script.trim()),
            "{header} is not packaging/rpm/{file}"
        );
    }
    assert!(!text.contains("%{"), "an unexpanded macro:\n{text}");
}

/// The fault switch the watchdog tests use exists only in their own build:
/// the packaged binary does not contain it, and the test build does (so
/// this check can fail).
#[test]
fn the_packaged_binary_has_no_fault_switch() {
    let test = "the_packaged_binary_has_no_fault_switch";
    let Some(packages) = packages(test) else {
        return;
    };
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "dpkg-deb --fsys-tarfile \"$1\" | tar -xO ./usr/bin/app",
            "sh",
        ])
        .arg(&packages.current.deb)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.len() > 100_000,
        "cannot extract /usr/bin/app: {out:?}"
    );
    let contains = |binary: &[u8]| {
        binary
            .windows(HANG_MESSAGE.len())
            .any(|w| w == HANG_MESSAGE.as_bytes())
    };
    assert!(
        !contains(&out.stdout),
        "the packaged app has the fault switch"
    );
    let test_build = std::fs::read(fault_binary()).unwrap();
    assert!(
        contains(&test_build),
        "the test build lacks the switch: the check proves nothing"
    );
}
