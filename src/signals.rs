//! Signals, turned into named intents in one place.
//!
//! SIGTERM (what systemd sends) and SIGINT (what Ctrl-C, pm2 and many
//! supervisors send) both mean "drain"; SIGHUP (what `systemctl reload` sends
//! by hand: `kill -HUP`) means "reload the settings"; SIGUSR1 (what
//! `NAME replace`, the units' `ExecReload=`, sends) means "replace this
//! process with the binary on disk". What a second drain request means is
//! the lifecycle's decision, not this module's.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::{Cause, Origin, Sent};
use tokio::sync::mpsc;

/// What a signal asks of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Stop accepting, finish what is in flight, exit. Names the signal.
    Drain(&'static str),
    /// Re-read the settings file.
    Reload,
    /// Replace this process with the binary on disk; answer the process
    /// that asked with `sigqueue`, if one did.
    Replace { reply_to: Option<i32> },
}

impl Intent {
    fn from_signal(signal: i32) -> Option<Self> {
        match signal {
            SIGTERM => Some(Intent::Drain("SIGTERM")),
            SIGINT => Some(Intent::Drain("SIGINT")),
            SIGHUP => Some(Intent::Reload),
            SIGUSR1 => Some(Intent::Replace { reply_to: None }),
            _ => None,
        }
    }

    fn from_origin(origin: &Origin) -> Option<Self> {
        match Intent::from_signal(origin.signal)? {
            Intent::Replace { .. } => Some(Intent::Replace {
                // Only `NAME replace` queues its request; a `kill -USR1`
                // from a shell that has exited gets no answer, so its pid,
                // perhaps reused by now, gets no signal.
                reply_to: match origin.cause {
                    Cause::Sent(Sent::Queue) => origin.process.map(|p| p.pid),
                    _ => None,
                },
            }),
            intent => Some(intent),
        }
    }
}

/// The stream of intents.
pub(crate) struct Intents {
    rx: mpsc::UnboundedReceiver<Intent>,
}

impl Intents {
    /// Installs the handlers and starts the thread that forwards signals.
    ///
    /// Call it once the environment has been read: it starts a thread. Signals
    /// that arrive before the runtime is up are queued, not lost, and from this
    /// point SIGTERM no longer kills the process outright.
    pub(crate) fn register() -> io::Result<Self> {
        let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let Some(intent) = Intent::from_origin(&origin) else {
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
    pub(crate) async fn recv(&mut self) -> Option<Intent> {
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
        assert_eq!(
            Intent::from_signal(SIGUSR1),
            Some(Intent::Replace { reply_to: None })
        );
        assert_eq!(Intent::from_signal(signal_hook::consts::SIGUSR2), None);
    }
}
