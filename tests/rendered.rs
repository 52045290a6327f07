//! The rendered files: what `NAME units --out DIR` writes is what the
//! repository commits (the reference app's systemd/ and packaging/, and the
//! consumer's examples/orders/{systemd,packaging}, which cargo-deb copies as
//! they are), and every rendered unit set passes the kit's unit checks:
//! `systemd-analyze verify`, `systemd-analyze security` exposure ≤ 1.0, and
//! a stop timeout above the drain deadline.
//!
//! `UPDATE_RENDERED=1 cargo test --test rendered` rewrites the committed
//! files from the binaries instead of comparing them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::consumer::{crate_dir, orders_binary};
use support::systemd::{Install, SystemdBox, can_boot, unit_file_duration, unit_names};

const HINT: &str = "refresh them with `UPDATE_RENDERED=1 cargo test --test rendered`";

/// A service whose binary renders its files, and where they are committed.
struct RenderedSet {
    name: &'static str,
    binary: PathBuf,
    /// Options after `units --out DIR`.
    args: &'static [&'static str],
    /// Where the rendered `ExecStart=` runs the binary.
    exec: &'static str,
    /// The directory `NAME units --out` is pointed at to refresh them.
    committed: PathBuf,
    /// Committed files under systemd/ and packaging/ written by hand, not
    /// rendered (relative paths; a directory covers what is under it).
    hand_written: &'static [&'static str],
}

fn app() -> RenderedSet {
    RenderedSet {
        name: "app",
        binary: support::process::app_binary().into(),
        args: &[],
        exec: "/usr/bin/app",
        committed: env!("CARGO_MANIFEST_DIR").into(),
        hand_written: &[
            "packaging/copyright",
            "packaging/debian/changelog",
            "packaging/examples",
        ],
    }
}

fn orders() -> RenderedSet {
    RenderedSet {
        name: "orders",
        binary: orders_binary().to_owned(),
        args: &[],
        exec: "/usr/bin/orders",
        committed: crate_dir(),
        hand_written: &[],
    }
}

/// orders rendered for another layout: the binary elsewhere, the socket on
/// IPv6. Only for the unit checks; nothing of it is committed.
fn orders_elsewhere() -> RenderedSet {
    RenderedSet {
        args: &["--exec", "/opt/orders/bin/orders", "--listen", "[::1]:9090"],
        exec: "/opt/orders/bin/orders",
        ..orders()
    }
}

/// Every rendered set the unit checks run on.
fn unit_sets() -> [RenderedSet; 3] {
    [app(), orders(), orders_elsewhere()]
}

/// Runs `BINARY units --out DIR ARGS`; fails the test with its output otherwise.
fn units(binary: &Path, out: &Path, args: &[&str]) {
    let run = Command::new(binary)
        .arg("units")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(
        run.status.success(),
        "{} units --out {} failed: {}\n{}",
        binary.display(),
        out.display(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every file under `root`'s systemd/ and packaging/, relative to `root`, sorted.
fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, found);
            } else {
                found.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut found = Vec::new();
    for top in ["systemd", "packaging"] {
        walk(&root.join(top), root, &mut found);
    }
    found.sort();
    found
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// What differs between the fresh rendering and the committed file, or
/// `None` when they are the same bytes and the same executable bit.
fn difference(fresh: &Path, committed: &Path) -> Option<String> {
    let Ok(committed_bytes) = std::fs::read(committed) else {
        return Some("not committed".into());
    };
    if std::fs::read(fresh).unwrap() != committed_bytes {
        let diff = Command::new("diff")
            .arg("-u")
            .arg(committed)
            .arg(fresh)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        return Some(format!("content differs:\n{diff}"));
    }
    if executable(fresh) != executable(committed) {
        return Some(format!(
            "executable bit differs: rendered {}, committed {}",
            executable(fresh),
            executable(committed)
        ));
    }
    None
}

/// The set's binary renders exactly the committed files; with
/// UPDATE_RENDERED=1 it rewrites them instead.
fn committed_files_are_the_rendering(set: &RenderedSet) {
    if std::env::var_os("UPDATE_RENDERED").is_some_and(|v| v == "1") {
        units(&set.binary, &set.committed, set.args);
        println!(
            "UPDATE_RENDERED=1: rewrote {}'s files under {}",
            set.name,
            set.committed.display()
        );
    }
    let fresh = tempfile::tempdir().unwrap();
    units(&set.binary, fresh.path(), set.args);
    let rendered = files_under(fresh.path());
    assert!(
        rendered.len() >= 15,
        "{} units wrote only {rendered:?}",
        set.name
    );
    let mut problems = Vec::new();
    for rel in &rendered {
        if let Some(what) = difference(&fresh.path().join(rel), &set.committed.join(rel)) {
            problems.push(format!("{}: {what}", set.committed.join(rel).display()));
        }
    }
    // A committed file the binary no longer renders (a removed verb's man
    // page, a renamed unit) would still be shipped.
    for rel in files_under(&set.committed) {
        let hand_written = set.hand_written.iter().any(|h| rel.starts_with(h));
        if !hand_written && !rendered.contains(&rel) {
            problems.push(format!(
                "{}: committed but not rendered by `{} units` (remove it, or list it as hand-written)",
                set.committed.join(&rel).display(),
                set.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}'s committed files are not `{} units --out {}`; {HINT}.\n\n{}",
        set.name,
        set.name,
        set.committed.display(),
        problems.join("\n\n")
    );
    println!(
        "{}: {} rendered files equal the committed ones",
        set.name,
        rendered.len()
    );
}

#[test]
fn app_units_writes_the_committed_files() {
    committed_files_are_the_rendering(&app());
}

#[test]
fn orders_units_writes_the_committed_files() {
    committed_files_are_the_rendering(&orders());
}

/// A fresh rendering of the set, in a temporary directory. Its units run
/// the binary where the set says and listen where it says.
fn render(set: &RenderedSet) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    units(&set.binary, dir.path(), set.args);
    let read = |unit: &str| std::fs::read_to_string(dir.path().join("systemd").join(unit)).unwrap();
    let service = read(&format!("{}@.service", set.name));
    assert!(
        service.contains(&format!("\nExecStart={} --instance %i ", set.exec)),
        "{}@.service does not run {}:\n{service}",
        set.name,
        set.exec
    );
    let listen = set
        .args
        .iter()
        .skip_while(|a| **a != "--listen")
        .nth(1)
        .copied()
        .unwrap_or("127.0.0.1:8080");
    let socket = read(&format!("{}.socket", set.name));
    assert!(
        socket.contains(&format!("\nListenStream={listen}\n")),
        "{}.socket does not listen on {listen}:\n{socket}",
        set.name
    );
    dir
}

/// What the set's units are checked as: `NAME` and the options it was
/// rendered with.
fn label(set: &RenderedSet) -> String {
    [set.name]
        .iter()
        .chain(set.args)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `systemd-analyze security`'s overall exposure of a unit file.
fn exposure(unit: &Path, name: &str) -> Option<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| {
            l.split(&format!("Overall exposure level for {name}@"))
                .nth(1)
        })
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Some(score.unwrap_or_else(|| panic!("no exposure level for {name}@ in:\n{text}")))
}

#[test]
fn every_rendered_service_unit_is_hardened() {
    for set in unit_sets() {
        let dir = render(&set);
        let unit = dir.path().join(format!("systemd/{}@.service", set.name));
        let Some(score) = exposure(&unit, set.name) else {
            support::cannot_run(
                "every_rendered_service_unit_is_hardened",
                "systemd-analyze is missing",
            );
            return;
        };
        let label = label(&set);
        println!("{label}: systemd-analyze security exposure {score}");
        assert!(score <= 1.0, "{label}: exposure {score} > 1.0");
    }
}

#[test]
fn every_rendered_stop_timeout_is_above_the_drain_deadline() {
    let drain = handover::settings::DEFAULT_DRAIN_DEADLINE;
    for set in unit_sets() {
        let dir = render(&set);
        let unit = dir.path().join(format!("systemd/{}@.service", set.name));
        let stop_timeout = unit_file_duration(&unit, "TimeoutStopSec");
        let label = label(&set);
        println!("{label}: TimeoutStopSec={stop_timeout:?}, drain deadline {drain:?}");
        // The service's own deadline must fire first, with room for the exit.
        assert!(
            stop_timeout >= drain + Duration::from_secs(5),
            "{label}: TimeoutStopSec={stop_timeout:?} leaves no room for drain_deadline={drain:?}"
        );
    }
}

/// `systemd-analyze verify` wants each `ExecStart=` binary at its path, so
/// it runs inside a booted box (one per set: two sets share a name), where
/// the set's units are in /etc/systemd/system and its binary is where the
/// rendered `ExecStart=` runs it.
#[test]
fn every_rendered_unit_set_verifies_cleanly() {
    if !can_boot("every_rendered_unit_set_verifies_cleanly") {
        return;
    }
    for set in unit_sets() {
        let dir = render(&set);
        let mut install = Install::service(set.name, &dir.path().join("systemd"), &set.binary, "");
        for (inside, _) in &mut install.copies {
            if *inside == Path::new("/usr/bin").join(set.name) {
                *inside = set.exec.into();
            }
        }
        let sd = SystemdBox::boot(install);
        let units: Vec<String> = unit_names(set.name)
            .iter()
            .map(|u| format!("/etc/systemd/system/{u}"))
            .collect();
        let mut args = vec!["verify", "--man=no"];
        args.extend(units.iter().map(String::as_str));
        let out = sd.run("systemd-analyze", &args);
        let complaints = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let label = label(&set);
        assert!(
            out.status.success() && complaints.trim().is_empty(),
            "systemd-analyze verify of {label}'s units: {complaints}"
        );
        println!("{label}: systemd-analyze verify is clean");
    }
}
