//! The socket-activation environment: what `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` say, checked as a pure function of their values.
//!
//! systemd (and `systemd-socket-activate`) start us with sockets already open
//! at fds 3, 4, ... and describe them in these variables. Parsing is kept apart
//! from touching the fds so every malformed combination can be unit tested
//! without a service manager. Which fd serves the app is decided here too; the
//! fds themselves are checked in [`crate::listeners`].

use std::os::unix::io::RawFd;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// The name of the fd that serves the app (`FileDescriptorName=http`).
pub(crate) const APP_FD_NAME: &str = "http";

/// More sockets than this is certainly a broken environment, not a unit file.
const MAX_FDS: u32 = 1024;

/// The raw values of the activation variables, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)] // internal (fuzzing): the variables of the same names
pub struct ActivationEnv {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub listen_fdnames: Option<String>,
}

/// One fd passed by the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFd {
    pub fd: RawFd,
    /// The `LISTEN_FDNAMES` entry; `None` when no names were passed or the entry is empty.
    pub name: Option<String>,
}

impl PassedFd {
    /// How errors and logs name this fd: `fd 3 (LISTEN_FDNAMES "http")`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("fd {} (LISTEN_FDNAMES {name:?})", self.fd),
            None => format!("fd {} (unnamed)", self.fd),
        }
    }
}

/// What the passed fds are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Served by the app.
    pub app: Vec<PassedFd>,
    /// Passed but not ours to serve; closed at start with a warning.
    pub unused: Vec<PassedFd>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of sockets")]
    BadFdCount(String),
    #[error("LISTEN_FDS=0 passes no sockets; unset it to let the app bind its own address")]
    NoFds,
    #[error("LISTEN_FDS={0} is more sockets than the {MAX_FDS} this process accepts")]
    TooManyFds(u32),
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    #[error(
        "LISTEN_PID={listen_pid} names another process (this is {own_pid}): \
         the sockets were passed to a different process"
    )]
    OtherPid { listen_pid: u32, own_pid: u32 },
    #[error("LISTEN_FDNAMES={names:?} has {count} names for LISTEN_FDS={fds}")]
    NameCount {
        names: String,
        count: usize,
        fds: u32,
    },
    #[error("{0} is set but LISTEN_FDS is not; the activation environment is incomplete")]
    Orphan(&'static str),
    #[error(
        "none of the {count} sockets is named \"{APP_FD_NAME}\" (LISTEN_FDNAMES={names:?}); \
         set FileDescriptorName={APP_FD_NAME} on the socket that serves the app"
    )]
    NoAppFd { count: usize, names: String },
}

impl ActivationEnv {
    /// Reads the variables, and leaves them: the kit never writes the
    /// environment, since other threads may exist by then. A child cannot
    /// take them for its own: `LISTEN_PID` names this process, and the
    /// passed fds are close-on-exec ([`crate::listeners`]).
    pub fn from_process_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self {
            listen_pid: var("LISTEN_PID"),
            listen_fds: var("LISTEN_FDS"),
            listen_fdnames: var("LISTEN_FDNAMES"),
        }
    }

    /// The fds passed to `own_pid`, or `None` when this is not a socket-activated start.
    ///
    /// A missing `LISTEN_PID` is accepted, as the listenfd crate (and `systemfd`) do; a
    /// `LISTEN_PID` naming another process is an error rather than "no sockets",
    /// because silently binding a default address instead of the sockets the
    /// operator configured is the surprise we want to avoid.
    pub fn parse(&self, own_pid: u32) -> Result<Option<Vec<PassedFd>>, ActivationError> {
        let Some(fds) = &self.listen_fds else {
            if self.listen_fdnames.is_some() {
                return Err(ActivationError::Orphan("LISTEN_FDNAMES"));
            }
            if self.listen_pid.is_some() {
                return Err(ActivationError::Orphan("LISTEN_PID"));
            }
            return Ok(None);
        };
        let count: u32 = fds
            .trim()
            .parse()
            .map_err(|_| ActivationError::BadFdCount(fds.clone()))?;
        if count == 0 {
            return Err(ActivationError::NoFds);
        }
        if count > MAX_FDS {
            return Err(ActivationError::TooManyFds(count));
        }
        if let Some(pid) = &self.listen_pid {
            let listen_pid: u32 = pid
                .trim()
                .parse()
                .map_err(|_| ActivationError::BadPid(pid.clone()))?;
            if listen_pid != own_pid {
                return Err(ActivationError::OtherPid {
                    listen_pid,
                    own_pid,
                });
            }
        }
        let names: Vec<Option<String>> = match &self.listen_fdnames {
            None => vec![None; count as usize],
            Some(joined) => {
                let names: Vec<Option<String>> = joined
                    .split(':')
                    .map(|name| (!name.is_empty()).then(|| name.to_owned()))
                    .collect();
                if names.len() != count as usize {
                    return Err(ActivationError::NameCount {
                        names: joined.clone(),
                        count: names.len(),
                        fds: count,
                    });
                }
                names
            }
        };
        Ok(Some(
            names
                .into_iter()
                .zip(FIRST_FD..)
                .map(|(name, fd)| PassedFd { fd, name })
                .collect(),
        ))
    }
}

/// Decides which passed fds serve the app.
///
/// Every fd named `http` serves it (one socket unit with several `ListenStream=`
/// lines passes several fds of the same name). With no fd named `http`, a single
/// fd serves it whatever its name, since systemd names fds after the socket unit
/// by default. Anything else is ambiguous and an error.
pub fn assign(fds: Vec<PassedFd>) -> Result<Assignment, ActivationError> {
    let (app, unused): (Vec<_>, Vec<_>) = fds
        .iter()
        .cloned()
        .partition(|fd| fd.name.as_deref() == Some(APP_FD_NAME));
    if !app.is_empty() {
        return Ok(Assignment { app, unused });
    }
    if fds.len() == 1 {
        return Ok(Assignment {
            app: fds,
            unused: Vec::new(),
        });
    }
    Err(ActivationError::NoAppFd {
        count: fds.len(),
        names: fds
            .iter()
            .map(|fd| fd.name.as_deref().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(":"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ActivationEnv {
        ActivationEnv {
            listen_pid: pid.map(str::to_owned),
            listen_fds: fds.map(str::to_owned),
            listen_fdnames: names.map(str::to_owned),
        }
    }

    fn fd(fd: RawFd, name: Option<&str>) -> PassedFd {
        PassedFd {
            fd,
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn no_variables_means_not_activated() {
        assert_eq!(env(None, None, None).parse(42), Ok(None));
    }

    #[test]
    fn fds_with_names_start_at_three() {
        let parsed = env(Some("42"), Some("2"), Some("http:metrics")).parse(42);
        assert_eq!(
            parsed,
            Ok(Some(vec![fd(3, Some("http")), fd(4, Some("metrics"))]))
        );
    }

    #[test]
    fn missing_pid_is_accepted_and_names_are_optional() {
        let parsed = env(None, Some("1"), None).parse(42);
        assert_eq!(parsed, Ok(Some(vec![fd(3, None)])));
    }

    #[test]
    fn empty_name_entries_are_unnamed() {
        let parsed = env(Some("7"), Some("2"), Some(":http")).parse(7);
        assert_eq!(parsed, Ok(Some(vec![fd(3, None), fd(4, Some("http"))])));
    }

    #[test]
    fn every_malformed_combination_is_an_error() {
        use ActivationError::*;
        let cases = [
            (env(Some("1"), Some("abc"), None), BadFdCount("abc".into())),
            (env(Some("1"), Some("-1"), None), BadFdCount("-1".into())),
            (env(Some("1"), Some(""), None), BadFdCount("".into())),
            (env(Some("1"), Some("0"), None), NoFds),
            (env(Some("1"), Some("5000"), None), TooManyFds(5000)),
            (env(Some("x"), Some("1"), None), BadPid("x".into())),
            (env(Some("-3"), Some("1"), None), BadPid("-3".into())),
            (
                env(Some("2"), Some("1"), None),
                OtherPid {
                    listen_pid: 2,
                    own_pid: 1,
                },
            ),
            (
                env(Some("1"), Some("2"), Some("http")),
                NameCount {
                    names: "http".into(),
                    count: 1,
                    fds: 2,
                },
            ),
            (
                env(Some("1"), Some("1"), Some("a:b")),
                NameCount {
                    names: "a:b".into(),
                    count: 2,
                    fds: 1,
                },
            ),
            (env(None, None, Some("http")), Orphan("LISTEN_FDNAMES")),
            (env(Some("1"), None, None), Orphan("LISTEN_PID")),
        ];
        for (env, expected) in cases {
            assert_eq!(env.parse(1), Err(expected), "for {env:?}");
        }
    }

    #[test]
    fn error_messages_name_the_variable() {
        let err = env(Some("2"), Some("1"), None).parse(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "LISTEN_PID=2 names another process (this is 1): \
             the sockets were passed to a different process"
        );
    }

    #[test]
    fn fds_named_http_serve_and_others_are_unused() {
        let assigned = assign(vec![
            fd(3, Some("http")),
            fd(4, Some("admin")),
            fd(5, Some("http")),
        ])
        .unwrap();
        assert_eq!(assigned.app, vec![fd(3, Some("http")), fd(5, Some("http"))]);
        assert_eq!(assigned.unused, vec![fd(4, Some("admin"))]);
    }

    #[test]
    fn a_single_fd_serves_whatever_its_name() {
        for name in [None, Some("app.socket")] {
            let assigned = assign(vec![fd(3, name)]).unwrap();
            assert_eq!(assigned.app, vec![fd(3, name)]);
            assert!(assigned.unused.is_empty());
        }
    }

    #[test]
    fn several_fds_without_http_is_ambiguous() {
        let err = assign(vec![fd(3, Some("a")), fd(4, None)]).unwrap_err();
        assert_eq!(
            err,
            ActivationError::NoAppFd {
                count: 2,
                names: "a:".into()
            }
        );
    }
}
