//! Fault injection for tests: compiled only with the `fault-injection`
//! feature, which the shipped binary (`cargo build --release`, the
//! packages) never has. A test build sent SIGUSR2 wedges its runtime, as a
//! deadlock or a blocking call on every worker would: nothing is accepted
//! or answered, and the `WATCHDOG=1` pings stop, so systemd's
//! `WatchdogSec=` is what ends it.

use std::time::Duration;

use signal_hook::consts::SIGUSR2;
use signal_hook::iterator::Signals;

/// What the log says when the fault fires; tests wait for it.
pub const HANG_MESSAGE: &str = "fault injection: wedging every runtime worker";

/// Starts the thread that waits for SIGUSR2.
pub fn install(runtime: tokio::runtime::Handle) -> std::io::Result<()> {
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
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    });
                }
            }
        })?;
    Ok(())
}
