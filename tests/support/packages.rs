//! The `.deb` and `.rpm` of this tree, built once per test run with the
//! README's commands (`cargo deb -p app`; `cargo build --release && cargo
//! generate-rpm -p src/bin/app`), and of two copies of the tree with higher
//! versions: one good, for an upgrade, and one whose binary fails to start,
//! for an upgrade that must stop and leave the old version serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::systemd::SystemdBox;

/// One build of the tree.
pub struct Built {
    /// The Cargo version, which `/version` reports.
    pub version: String,
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

pub struct Packages {
    /// This tree as it is.
    pub current: Built,
    /// The next patch version: the same code, a higher version.
    pub next: Built,
    /// Between the two: a release that exits at start-up.
    pub broken: Built,
}

/// What the package tests need installed, or why they cannot run.
fn missing_tool() -> Option<String> {
    let checks: [(&str, &[&str]); 4] = [
        ("cargo-deb", &["cargo", "deb", "--version"]),
        (
            "cargo-generate-rpm",
            &["cargo", "generate-rpm", "--version"],
        ),
        ("dpkg-deb", &["dpkg-deb", "--version"]),
        ("rpm", &["rpm", "--version"]),
    ];
    for (name, argv) in checks {
        let ok = Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!("{name} is not installed (.ci/run installs it)"));
        }
    }
    None
}

/// The packages, building them on first use; `None` (after the CI-aware
/// skip message) when the tools are missing. A build failure fails the test.
pub fn packages(test: &str) -> Option<&'static Packages> {
    if let Some(reason) = missing_tool() {
        super::cannot_run(test, &reason);
        return None;
    }
    static BUILT: OnceLock<Result<Packages, String>> = OnceLock::new();
    match BUILT.get_or_init(build_all) {
        Ok(packages) => Some(packages),
        Err(err) => panic!("cannot build the packages: {err}"),
    }
}

fn build_all() -> Result<Packages, String> {
    let root = crate::target_tmpdir().join("packages");
    // One target directory for every tree: dependencies build once, and the
    // developer's own target/release is left alone.
    let target = root.join("target");
    let version = package_version(
        &std::fs::read_to_string(crate::root().join("Cargo.toml")).map_err(|e| e.to_string())?,
    )?;
    let current = build(crate::root(), &target, &root.join("out/current"), &version)?;

    let broken_version = bump(&version, 1)?;
    let tree = copy_tree(&root.join("tree-broken"), &broken_version)?;
    // Broken where serving starts (its own settings never validate), so
    // the release's `app rollout` still runs and its instances fail.
    let routes = tree.join("src/bin/app/lib.rs");
    let source = std::fs::read_to_string(&routes).map_err(|e| e.to_string())?;
    let validate = "fn validate(&self) -> Result<(), String> {";
    if !source.contains(validate) {
        return Err(format!("src/bin/app/lib.rs has no `{validate}` to break"));
    }
    let broken_source = source.replace(
        validate,
        &format!(
            "{validate}\n        #[allow(unreachable_code)]\n        return Err(\"this release is broken on purpose (package tests)\".into());"
        ),
    );
    std::fs::write(&routes, broken_source).map_err(|e| e.to_string())?;
    let broken = build(&tree, &target, &root.join("out/broken"), &broken_version)?;

    let next_version = bump(&version, 2)?;
    let tree = copy_tree(&root.join("tree-next"), &next_version)?;
    let next = build(&tree, &target, &root.join("out/next"), &next_version)?;
    Ok(Packages {
        current,
        next,
        broken,
    })
}

/// The first `version = "…"` line: the [workspace.package] table's in the
/// root manifest, a package's own in a consumer's.
pub fn package_version(manifest: &str) -> Result<String, String> {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .ok_or_else(|| "no version in Cargo.toml".into())
}

/// The version with its patch number raised by `by`.
pub fn bump(version: &str, by: u64) -> Result<String, String> {
    let (head, patch) = version
        .rsplit_once('.')
        .ok_or_else(|| format!("version {version} is not MAJOR.MINOR.PATCH"))?;
    let patch: u64 = patch
        .parse()
        .map_err(|_| format!("version {version} has a non-numeric patch"))?;
    Ok(format!("{head}.{}", patch + by))
}

/// What cargo needs to build from a copy of this tree, copied to `dest`
/// (emptied first): the manifests, the lockfile, the sources, and every
/// workspace member and target the manifest names.
pub fn copy_sources(dest: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let items = [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "docs",
        "src",
        "systemd",
        "packaging",
        "benches",
        // Workspace members: cargo wants them present (tests/support, the
        // test helpers, is one).
        "examples",
        "tests",
        // The patched h2 that `[patch.crates-io]` points at.
        "vendor",
    ];
    let status = Command::new("cp")
        .arg("-a")
        .args(items.iter().map(|i| crate::root().join(i)))
        .arg(dest)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !status.success() {
        return Err(format!("cp -a {items:?} {} failed", dest.display()));
    }
    Ok(())
}

/// A copy of what the packages are built from, at `version`.
fn copy_tree(dest: &Path, version: &str) -> Result<PathBuf, String> {
    copy_sources(dest)?;
    let manifest = dest.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
    let old = package_version(&text)?;
    let text = text.replacen(
        &format!("version = \"{old}\""),
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(&manifest, text).map_err(|e| e.to_string())?;
    Ok(dest.to_owned())
}

/// `cargo deb`, then `cargo generate-rpm` on the binary it built.
fn build(tree: &Path, target: &Path, out: &Path, version: &str) -> Result<Built, String> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    run(tree, target, &["deb", "--package", "app", "--output"], out)?;
    run(
        tree,
        target,
        &["generate-rpm", "--package", "src/bin/app", "--output"],
        out,
    )?;
    let find = |ext: &str| -> Result<PathBuf, String> {
        std::fs::read_dir(out)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .ok_or_else(|| format!("no .{ext} in {}", out.display()))
    };
    Ok(Built {
        version: version.to_owned(),
        deb: find("deb")?,
        rpm: find("rpm")?,
    })
}

fn run(tree: &Path, target: &Path, args: &[&str], out: &Path) -> Result<(), String> {
    let output = Command::new("cargo")
        .args(args)
        .arg(out)
        .current_dir(tree)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .map_err(|e| format!("cargo {args:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo {args:?} in {} failed:\n{}",
            tree.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// A box with nothing of ours installed, the socket moved to a free port by a
/// drop-in written before the package arrives (as an administrator would
/// with `systemctl edit app.socket`), and `files` copied into /root; returns
/// their paths inside.
pub fn boot_with_packages(
    files: &[&Path],
) -> (
    std::sync::Arc<super::systemd::SystemdBox>,
    std::net::SocketAddr,
    Vec<String>,
) {
    boot_service_with_packages("app", files)
}

/// As [`boot_with_packages`], for the service `name`: the drop-in is for
/// `NAME.socket` (/etc/systemd/system/NAME.socket.d/listen.conf).
pub fn boot_service_with_packages(
    name: &str,
    files: &[&Path],
) -> (
    std::sync::Arc<super::systemd::SystemdBox>,
    std::net::SocketAddr,
    Vec<String>,
) {
    let (install, addr) =
        super::systemd::listen_on_free_port(name, super::systemd::Install::nothing());
    let sd = super::systemd::SystemdBox::boot(install);
    let inside = files
        .iter()
        .map(|file| {
            let inside = format!("/root/{}", file.file_name().unwrap().to_str().unwrap());
            sd.copy_in(file, &inside);
            inside
        })
        .collect();
    (std::sync::Arc::new(sd), addr, inside)
}

/// The consumer's `.deb` (examples/orders), built twice: as its Cargo.toml
/// says, and again at a higher Debian version, for an upgrade.
pub struct ConsumerDebs {
    /// The package (and service) name.
    pub name: &'static str,
    /// `cargo deb -p orders`: version 0.1.0-1.
    pub first: ConsumerDeb,
    /// The same build at a higher version (`--deb-version`): installing it
    /// over the first is an upgrade.
    pub second: ConsumerDeb,
}

pub struct ConsumerDeb {
    /// The Debian version, revision included (`dpkg-query -W` shows it).
    pub version: String,
    pub deb: PathBuf,
}

/// What the consumer's `.deb` needs: cargo-deb, and dpkg-deb (which it runs).
fn missing_deb_tool() -> Option<String> {
    let checks: [(&str, &[&str]); 2] = [
        ("cargo-deb", &["cargo", "deb", "--version"]),
        ("dpkg-deb", &["dpkg-deb", "--version"]),
    ];
    checks.into_iter().find_map(|(name, argv)| {
        let ok = Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .is_ok_and(|o| o.status.success());
        (!ok).then(|| format!("{name} is not installed (.ci/run installs it)"))
    })
}

/// The consumer's packages, building them on first use, in the same target
/// directory as the app's (so the dependencies build once); `None` (after
/// the CI-aware skip message) when cargo-deb or dpkg-deb is missing. A build
/// failure fails the test.
pub fn consumer_debs(test: &str) -> Option<&'static ConsumerDebs> {
    if let Some(reason) = missing_deb_tool() {
        super::cannot_run(test, &reason);
        return None;
    }
    static BUILT: OnceLock<Result<ConsumerDebs, String>> = OnceLock::new();
    match BUILT.get_or_init(build_consumer) {
        Ok(debs) => Some(debs),
        Err(err) => panic!("cannot build the consumer's .deb: {err}"),
    }
}

fn build_consumer() -> Result<ConsumerDebs, String> {
    let name = super::consumer::NAME;
    let root = crate::target_tmpdir().join("packages");
    let target = root.join("target");
    let manifest = super::consumer::crate_dir().join("Cargo.toml");
    let version = package_version(&std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?)?;
    let first_version = format!("{version}-1");
    let second_version = format!("{}-1", bump(&version, 1)?);
    let deb = |out: &str, extra: &[&str]| -> Result<PathBuf, String> {
        let out = root.join(out);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let output = Command::new("cargo")
            .args(["deb", "--package", name])
            .args(extra)
            .arg("--output")
            .arg(&out)
            .current_dir(crate::root())
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .map_err(|e| format!("cargo deb: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo deb --package {name} {extra:?} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        std::fs::read_dir(&out)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| format!("no .deb in {}", out.display()))
    };
    let first = deb("out/orders-first", &[])?;
    // The same binary, already built: only the package version differs.
    let second = deb(
        "out/orders-second",
        &["--no-build", "--deb-version", &second_version],
    )?;
    Ok(ConsumerDebs {
        name,
        first: ConsumerDeb {
            version: first_version,
            deb: first,
        },
        second: ConsumerDeb {
            version: second_version,
            deb: second,
        },
    })
}

/// What a package manager command did.
pub struct Step {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a package manager command in the box.
pub fn run_step(sd: &SystemdBox, program: &str, args: &[&str]) -> Step {
    let out = sd.run(program, args);
    Step {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The step succeeded and printed no error or warning. stderr may carry
/// only systemctl's notes on enabling and disabling units ("Created symlink
/// …", "Removed …"), which every Debian service package prints when
/// deb-systemd-helper enables it (through `systemctl preset`).
pub fn assert_clean(what: &str, step: &Step, sd: &SystemdBox) {
    println!("{what}:\n{}{}", step.stdout, step.stderr);
    let unexpected: Vec<&str> = step
        .stderr
        .lines()
        .filter(|l| !l.starts_with("Created symlink ") && !l.starts_with("Removed "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        step.ok && unexpected.is_empty(),
        "{what}: ok={} stderr:\n{}\nstdout:\n{}\njournal:\n{}",
        step.ok,
        step.stderr,
        step.stdout,
        sd.journal(&[])
    );
}

/// Nothing of the service `name` runs, and nothing listens on its address.
pub fn assert_nothing_left(sd: &SystemdBox, name: &str, addr: SocketAddr, when: &str) {
    let units = sd.systemctl_ok(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--state=active,activating,deactivating,reloading",
        &format!("{name}*"),
    ]);
    assert!(units.trim().is_empty(), "{when}: still running:\n{units}");
    let processes = sd.run("pgrep", &["-a", "-x", name]);
    assert!(
        !processes.status.success(),
        "{when}: {name} processes left: {}",
        String::from_utf8_lossy(&processes.stdout)
    );
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "{when}: {addr} still accepts connections");
}
