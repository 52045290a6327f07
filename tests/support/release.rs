//! A next release of `app` for deploy tests: a copy of this tree with a
//! higher patch version, built once per test run (debug, no package).
//!
//! It builds in the fault build's target directory (tests/support/fault.rs),
//! whose dependencies are the same crates with the same features (the
//! `fault-injection` feature enables none), so only `handover` and the
//! binary compile again. The copy's binary target is renamed `app-next`, so
//! its output never lands on the fault build's `debug/app`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A release of `app` other than the one the tests were built from.
pub struct Release {
    /// What `/version` reports.
    pub version: String,
    pub binary: PathBuf,
}

/// The next release, building it on first use; a build failure fails the test.
pub fn next_release() -> &'static Release {
    static BUILT: OnceLock<Result<Release, String>> = OnceLock::new();
    match BUILT.get_or_init(build_next) {
        Ok(release) => release,
        Err(err) => panic!("cannot build the next release of app: {err}"),
    }
}

fn build_next() -> Result<Release, String> {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tree = tmp.join("reload-next-tree");
    let target = tmp.join("fault-injection");
    let manifest = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("Cargo.toml"))
        .map_err(|e| e.to_string())?;
    let current = package_version(&manifest)?;
    let version = bump(&current)?;
    copy_tree(&tree)?;
    let bin = "[[bin]]\nname = \"app\"\n";
    if !manifest.contains(bin) || !manifest.contains("default-run = \"app\"") {
        return Err(format!(
            "Cargo.toml has no `{bin}` or `default-run = \"app\"` to rename"
        ));
    }
    let manifest = manifest
        .replacen(
            &format!("version = \"{current}\""),
            &format!("version = \"{version}\""),
            1,
        )
        .replacen(bin, "[[bin]]\nname = \"app-next\"\n", 1)
        .replacen("default-run = \"app\"", "default-run = \"app-next\"", 1);
    std::fs::write(tree.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--bin", "app-next"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&tree)
        .output()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build in {} failed:\n{}",
            tree.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Release {
        version,
        binary: target.join("debug/app-next"),
    })
}

/// `version = "…"` of the [package] table (the first one in the file).
fn package_version(manifest: &str) -> Result<String, String> {
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .ok_or_else(|| "no version in Cargo.toml".into())
}

/// The version with its patch number raised by one.
fn bump(version: &str) -> Result<String, String> {
    let (head, patch) = version
        .rsplit_once('.')
        .ok_or_else(|| format!("version {version} is not MAJOR.MINOR.PATCH"))?;
    let patch: u64 = patch
        .parse()
        .map_err(|_| format!("version {version} has a non-numeric patch"))?;
    Ok(format!("{head}.{}", patch + 1))
}

/// What cargo needs to build the binary: the manifests, the lockfile, the
/// sources, and every workspace member and target the manifest names.
fn copy_tree(dest: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let items = [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "docs",
        "src",
        "systemd",
        "packaging",
        "benches",
        "examples",
    ];
    let status = Command::new("cp")
        .arg("-a")
        .args(items.iter().map(|i| Path::new(MANIFEST_DIR).join(i)))
        .arg(dest)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !status.success() {
        return Err(format!("cp -a {items:?} {} failed", dest.display()));
    }
    Ok(())
}
