//! Talking to the service manager: `READY=1`, `STOPPING=1`, `STATUS=`,
//! `RELOADING=1`, `WATCHDOG=1` and `EXTEND_TIMEOUT_USEC=`.
//!
//! States are sd-notify's typed [`NotifyState`] values, rendered by its
//! `Display`. We send them ourselves rather than through `sd_notify::notify`
//! because that reads `NOTIFY_SOCKET` on every call, and we read it once at
//! start. Outside systemd every call is a no-op.
//!
//! The variables stay in the environment: removing them is not safe once
//! threads may exist, and a service that owns its runtime has threads. The
//! units' `NotifyAccess=main` makes a child's datagrams harmless anyway.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub(crate) use sd_notify::NotifyState;

/// What the service manager told us at start.
#[derive(Debug)]
pub(crate) struct ManagerEnv {
    pub notify_socket: Option<OsString>,
    /// Half of this is how often to send `WATCHDOG=1`.
    pub watchdog: Option<Duration>,
}

impl ManagerEnv {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub(crate) fn read() -> Self {
        let var = |name| std::env::var(name).ok();
        Self {
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog: watchdog_interval(
                var("WATCHDOG_USEC").as_deref(),
                var("WATCHDOG_PID").as_deref(),
                std::process::id(),
            ),
        }
    }
}

/// The watchdog interval systemd asks of `own_pid`, as sd_watchdog_enabled(3)
/// reads it: `WATCHDOG_USEC` a positive number, and `WATCHDOG_PID`, when set,
/// this process (a child that inherited the variables is not watched).
pub(crate) fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&usec| usec > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    #[error("NOTIFY_SOCKET={path:?} is not a usable socket address")]
    Address {
        path: OsString,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a socket to talk to the service manager")]
    Socket(#[source] io::Error),
}

/// Sends state changes to the service manager; a no-op when there is none.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier that sends nothing: outside systemd, and in tests.
    pub(crate) fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for `NOTIFY_SOCKET`; `None` gives a disabled one.
    ///
    /// The address is resolved once but each datagram is sent with `send_to`,
    /// not over a connected socket, so a `systemctl daemon-reexec` (which
    /// recreates the notify socket) does not cut us off.
    pub(crate) fn new(notify_socket: Option<&OsString>) -> Result<Self, NotifyError> {
        let Some(path) = notify_socket else {
            return Ok(Self::disabled());
        };
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(path),
        }
        .map_err(|source| NotifyError::Address {
            path: path.clone(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    /// Sends `states` in one datagram. A failure is logged, not returned: the
    /// service keeps serving even if the manager cannot hear it.
    pub(crate) fn notify(&self, states: &[NotifyState<'_>]) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let message = render(states);
        if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!(error = %err, message = %message.trim_end(), "cannot notify the service manager");
        }
    }
}

/// One `KEY=VALUE` line per state, as sd_notify(3) expects.
pub(crate) fn render(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|state| format!("{state}\n")).collect()
}

/// A `STATUS=` value must be one line; a newline would start a new assignment.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_render_one_per_line() {
        let text = render(&[
            NotifyState::Ready,
            NotifyState::Status("serving"),
            NotifyState::ExtendTimeoutUsec(1_500_000),
        ]);
        assert_eq!(
            text,
            "READY=1\nSTATUS=serving\nEXTEND_TIMEOUT_USEC=1500000\n"
        );
    }

    #[test]
    fn status_text_cannot_inject_a_second_state() {
        assert_eq!(one_line("a\nREADY=1"), "a READY=1");
    }

    #[test]
    fn datagrams_reach_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(&path.clone().into_os_string())).unwrap();
        notifier.notify(&[NotifyState::Ready, NotifyState::Status("up")]);
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up\n");
    }

    #[test]
    fn abstract_addresses_are_supported() {
        let name = format!("handover-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::new(Some(&OsString::from(format!("@{name}")))).unwrap();
        notifier.notify(&[NotifyState::Stopping]);
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn the_watchdog_is_ours_only_when_its_pid_is() {
        let ten = Some(Duration::from_secs(10));
        assert_eq!(watchdog_interval(Some("10000000"), None, 7), ten);
        assert_eq!(watchdog_interval(Some("10000000"), Some("7"), 7), ten);
        assert_eq!(watchdog_interval(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        // No target is what makes `notify` send nothing: it returns before
        // rendering a message.
        let notifier = Notifier::new(None).unwrap();
        assert!(notifier.target.is_none());
    }
}
