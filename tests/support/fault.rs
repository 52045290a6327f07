//! The test build of `app` with its fault switch (the `fault-injection`
//! feature: SIGUSR2 wedges the runtime). Built once per test run into its
//! own target directory, so the binary every other test uses, and the one
//! the packages ship, never has the switch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn fault_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = crate::target_tmpdir().join("fault-injection");
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--package",
                "app",
                "--bin",
                "app",
                "--features",
                "fault-injection",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(crate::root())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cannot build app with fault-injection:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug/app")
    })
}
