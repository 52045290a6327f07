//! Signals, turned into named intents in one place.
//!
//! SIGTERM (what systemd sends) and SIGINT (what Ctrl-C, pm2 and many
//! supervisors send) both mean "drain"; SIGHUP (what `systemctl reload` sends
//! through `ExecReload=`) means "reload the settings". What a second drain
//! request means is the lifecycle's decision, not this module's.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// What a signal asks of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Stop accepting, finish what is in flight, exit. Names the signal.
    Drain(&'static str),
    /// Re-read the settings file.
    Reload,
}

impl Intent {
    fn from_signal(signal: i32) -> Option<Self> {
        match signal {
            SIGTERM => Some(Intent::Drain("SIGTERM")),
            SIGINT => Some(Intent::Drain("SIGINT")),
            SIGHUP => Some(Intent::Reload),
            _ => None,
        }
    }
}

/// The stream of intents.
pub struct Intents {
    rx: mpsc::UnboundedReceiver<Intent>,
}

impl Intents {
    /// Installs the handlers and starts the thread that forwards signals.
    ///
    /// Call it once the environment has been read: it starts a thread. Signals
    /// that arrive before the runtime is up are queued, not lost, and from this
    /// point SIGTERM no longer kills the process outright.
    pub fn register() -> io::Result<Self> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let Some(intent) = Intent::from_signal(signal) else {
                        continue;
                    };
                    if tx.send(intent).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { rx })
    }

    /// The next intent; `None` once no more can come.
    pub async fn recv(&mut self) -> Option<Intent> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_intents() {
        assert_eq!(Intent::from_signal(SIGTERM), Some(Intent::Drain("SIGTERM")));
        assert_eq!(Intent::from_signal(SIGINT), Some(Intent::Drain("SIGINT")));
        assert_eq!(Intent::from_signal(SIGHUP), Some(Intent::Reload));
        assert_eq!(Intent::from_signal(signal_hook::consts::SIGUSR1), None);
    }
}
