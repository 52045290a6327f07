//! The third-party consumer, examples/orders: an axum service named `orders`
//! built on the kit's public API alone. Its binary, built once per test run,
//! and where its committed rendered files live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The consumer's service name, which drives every name it uses.
pub const NAME: &str = "orders";

/// examples/orders: its crate, and the committed output of `orders units
/// --out examples/orders` (systemd/, packaging/).
pub fn crate_dir() -> PathBuf {
    crate::root().join("examples/orders")
}

/// The debug build of `orders` (`cargo build -p orders`), built on first use.
/// It shares the workspace's target directory, so a developer's own build is
/// reused; its path is what cargo reports, wherever that directory is.
pub fn orders_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| example_binary(NAME))
}

/// The build of the workspace member whose package and binary are both
/// `name` (`cargo build -p NAME --bin NAME`), where cargo put it: a debug
/// build for the tests, a release build for the benchmarks (whatever
/// profile compiled this code, as cargo's own `CARGO_BIN_EXE_*` would be).
pub fn example_binary(name: &str) -> PathBuf {
    let release: &[&str] = if cfg!(debug_assertions) {
        &[]
    } else {
        &["--release"]
    };
    let out = Command::new(env!("CARGO"))
        .arg("build")
        .args(release)
        .args([
            "--quiet",
            "--package",
            name,
            "--bin",
            name,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::root())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "cannot build {name}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo build -p {name} reported no executable"))
}
