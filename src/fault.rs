//! Fault injection for tests: the switch is compiled only with the
//! `fault-injection` feature, which the shipped binary (`cargo build
//! --release`, the packages) never has; without it this module is only the
//! message tests wait for (and check the shipped binary lacks).
//!
//! A test build sent SIGUSR2 wedges its runtime, as a deadlock or a
//! blocking call on every worker would: nothing is accepted
//! or answered, and the `WATCHDOG=1` pings stop, so systemd's
//! `WatchdogSec=` is what ends it.

/// What the log says when the fault fires; tests wait for it.
pub const HANG_MESSAGE: &str = "fault injection: wedging every runtime worker";

/// What the log says when a process starts broken on purpose.
pub const START_MESSAGE: &str = "fault injection: broken at start";

/// A test build starts broken when `/etc/NAME/fault-at-start` says so, as
/// a broken release would: `exit` exits with status 70 before serving,
/// `hang` never becomes ready. Read by every process that starts to serve,
/// so an in-place reload's new process sees what the file says then.
#[cfg(feature = "fault-injection")]
pub fn at_start(name: &str) {
    let path = format!("/etc/{name}/fault-at-start");
    let Ok(what) = std::fs::read_to_string(&path) else {
        return;
    };
    match what.trim() {
        "exit" => {
            eprintln!("{name}: {START_MESSAGE}: exiting (status 70), as {path} says");
            std::process::exit(70);
        }
        "hang" => {
            eprintln!("{name}: {START_MESSAGE}: never ready, as {path} says");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        _ => {}
    }
}

/// Starts the thread that waits for SIGUSR2.
#[cfg(feature = "fault-injection")]
pub fn install(runtime: tokio::runtime::Handle) -> std::io::Result<()> {
    use signal_hook::{consts::SIGUSR2, iterator::Signals};
    let mut signals = Signals::new([SIGUSR2])?;
    std::thread::Builder::new()
        .name("fault".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                tracing::warn!("{HANG_MESSAGE}");
                // One task per worker, each blocking its thread for good.
                for _ in 0..runtime.metrics().num_workers() {
                    runtime.spawn(async {
                        loop {
                            std::thread::sleep(std::time::Duration::from_secs(3600));
                        }
                    });
                }
            }
        })?;
    Ok(())
}
