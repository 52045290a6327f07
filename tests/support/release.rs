//! A next release of `app` for deploy tests: a copy of this tree with a
//! higher patch version, built once per test run (debug, no package).
//!
//! It builds in the fault build's target directory (tests/support/fault.rs),
//! whose dependencies are the same crates with the same features (the
//! `fault-injection` feature enables none), so only `handover` and the
//! binary compile again. The copy's binary target is renamed `app-next`, so
//! its output never lands on the fault build's `debug/app`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::packages::{bump, copy_sources, package_version};

/// The reference service's package, under the tree's root.
const APP_MANIFEST: &str = "src/bin/app/Cargo.toml";

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
    let tmp = crate::target_tmpdir();
    let tree = tmp.join("reload-next-tree");
    let target = tmp.join("fault-injection");
    // The version is the workspace's (the root manifest); the binary
    // target is the app package's.
    let manifest =
        std::fs::read_to_string(crate::root().join("Cargo.toml")).map_err(|e| e.to_string())?;
    let current = package_version(&manifest)?;
    let version = bump(&current, 1)?;
    copy_sources(&tree)?;
    let manifest = manifest.replacen(
        &format!("version = \"{current}\""),
        &format!("version = \"{version}\""),
        1,
    );
    std::fs::write(tree.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
    let app_manifest = tree.join(APP_MANIFEST);
    let app = std::fs::read_to_string(&app_manifest).map_err(|e| e.to_string())?;
    let bin = "[[bin]]\nname = \"app\"\n";
    if !app.contains(bin) {
        return Err(format!("{APP_MANIFEST} has no `{bin}` to rename"));
    }
    let app = app.replacen(bin, "[[bin]]\nname = \"app-next\"\n", 1);
    std::fs::write(&app_manifest, app).map_err(|e| e.to_string())?;
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--package", "app", "--bin", "app-next"])
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
