//! Test helpers: a raw HTTP/1.1 connection, a keep-alive load client, and
//! running the built binary. Each test file uses what it needs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod balancer;
pub mod consumer;
pub mod drains;
pub mod fault;
pub mod http10;
pub mod http2;
pub mod inprocess;
pub mod load;
pub mod packages;
pub mod pool;
pub mod process;
pub mod raw;
pub mod release;
pub mod service;
pub mod systemd;
pub mod wsclients;

/// A test that cannot run here: under CI that is a failure, never a silent
/// pass; elsewhere it skips with a visible message. Call it and return.
pub fn cannot_run(test: &str, reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// The repository's root: the handover package's directory.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .expect("the repository root")
    })
}

/// Where a test may keep files between runs: the target directory's `tmp`,
/// as cargo's `CARGO_TARGET_TMPDIR` says to integration tests (a library
/// is not told it). The running test or bench binary is in
/// `target/PROFILE/deps/`.
pub fn target_tmpdir() -> &'static Path {
    static TMP: OnceLock<PathBuf> = OnceLock::new();
    TMP.get_or_init(|| {
        let exe = std::env::current_exe().expect("the running binary");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the binary is in target/PROFILE/deps");
        let tmp = target.join("tmp");
        std::fs::create_dir_all(&tmp).expect("target/tmp");
        tmp
    })
}
