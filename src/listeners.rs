//! Where listening sockets come from: the fds systemd passes, or an address we
//! bind ourselves when started outside socket activation.
//!
//! Every passed fd is checked before use (open, a socket, a stream socket,
//! listening, a family we serve), marked close-on-exec by listenfd, and set
//! non-blocking here, because listenfd leaves that to us and tokio needs it.
//!
//! O_NONBLOCK is shared by every process holding the socket: when several
//! instances share one socket, the unit must say `NonBlocking=yes`, or
//! systemd clears the flag for all of them each time it starts one.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use listenfd::ListenFd;

use crate::activation::{self, ActivationEnv, ActivationError, PassedFd};

/// What to do when systemd passes no socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Bind this address ourselves (running by hand, `cargo run`).
    Bind(SocketAddr),
    /// Fail: under a unit with `PrivateNetwork=yes`, an address of our own
    /// would be in an empty network namespace, ready and serving nobody.
    Refuse,
}

/// A listening socket, not yet registered with a tokio runtime.
#[derive(Debug)]
pub enum StdListener {
    /// A TCP socket (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
    /// A Unix stream socket.
    Unix(UnixListener),
}

/// A listening socket, and where it came from. The kit takes them from
/// systemd itself; build one from a std listener to serve by hand
/// ([`crate::server`]). It must be non-blocking.
#[derive(Debug)]
pub struct Listener {
    pub(crate) socket: StdListener,
}

impl From<std::net::TcpListener> for Listener {
    fn from(socket: std::net::TcpListener) -> Self {
        Self {
            socket: StdListener::Tcp(socket),
        }
    }
}

impl From<UnixListener> for Listener {
    fn from(socket: UnixListener) -> Self {
        Self {
            socket: StdListener::Unix(socket),
        }
    }
}

impl StdListener {
    /// A copy of the socket (close-on-exec), to pass to another process.
    pub(crate) fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        match self {
            StdListener::Tcp(l) => Ok(l.try_clone()?.into()),
            StdListener::Unix(l) => Ok(l.try_clone()?.into()),
        }
    }
}

impl Listener {
    /// A listening socket another process passed, checked as systemd's are.
    pub(crate) fn from_passed(fd: OwnedFd) -> io::Result<Listener> {
        let family = inspect(fd.as_raw_fd())
            .map_err(|problem| io::Error::other(format!("passed listener: {problem:?}")))?;
        let socket = match family {
            libc::AF_INET | libc::AF_INET6 => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                StdListener::Tcp(l)
            }
            _ => {
                let l = UnixListener::from(fd);
                l.set_nonblocking(true)?;
                StdListener::Unix(l)
            }
        };
        Ok(Listener { socket })
    }
}

/// Why the listening sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Environment(#[from] ActivationError),
    #[error("{fd} is not open")]
    NotOpen { fd: String },
    #[error("{fd} is not a socket (it is {kind})")]
    NotSocket { fd: String, kind: &'static str },
    #[error("{fd} is not a stream socket (it is a {kind} socket)")]
    NotStream { fd: String, kind: &'static str },
    #[error("{fd} is a stream socket that is not listening; pass it without Accept=yes")]
    NotListening { fd: String },
    #[error("{fd} is a socket of address family {family}, not TCP or Unix")]
    Family { fd: String, family: i32 },
    #[error("cannot use {fd}")]
    Take {
        fd: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "no socket passed (LISTEN_FDS is not set) and require_socket is on: \
         start the service through its socket unit, or drop --require-socket to bind --listen"
    )]
    NoSocket,
    #[error("the passed sockets were already taken by this process")]
    AlreadyTaken,
    #[error("LISTEN_FDS_FIRST_FD={0:?}: passed fds start at 3; unset it")]
    FirstFd(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.socket {
            StdListener::Tcp(l) => match l.local_addr() {
                Ok(addr) => write!(f, "{addr}"),
                Err(_) => write!(f, "tcp fd {}", l.as_raw_fd()),
            },
            StdListener::Unix(l) => match l.local_addr().ok().and_then(|a| {
                a.as_pathname()
                    .map(|p| p.display().to_string())
                    .or_else(|| {
                        use std::os::linux::net::SocketAddrExt;
                        a.as_abstract_name()
                            .map(|n| format!("@{}", String::from_utf8_lossy(n)))
                    })
            }) {
                Some(path) => write!(f, "unix:{path}"),
                None => write!(f, "unix fd {}", l.as_raw_fd()),
            },
        }
    }
}

/// The listeners for this process: those systemd passed, or what `fallback` says.
///
/// Returns also the passed fds that are not the service's (already closed).
///
/// The activation variables stay in the environment (removing them is not
/// safe once threads may exist). A child process cannot mistake them for
/// its own: `LISTEN_PID` names this process, and the fds are close-on-exec.
/// The fds are taken once per process: a second call is an error, not a
/// second owner of the same fds.
pub(crate) fn take_from_env(
    fallback: Fallback,
) -> Result<(Vec<Listener>, Vec<PassedFd>), ListenerError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ListenerError::AlreadyTaken);
    }
    let env = ActivationEnv::from_process_env();
    let parsed = env.parse(std::process::id());
    let Some(fds) = parsed? else {
        return match fallback {
            Fallback::Bind(addr) => Ok((vec![bind(addr)?], Vec::new())),
            Fallback::Refuse => Err(ListenerError::NoSocket),
        };
    };
    // listenfd honours LISTEN_FDS_FIRST_FD, which systemd never sets; with
    // it set, listenfd's indexes would not be ours.
    if let Some(first) = std::env::var_os("LISTEN_FDS_FIRST_FD")
        && first != "3"
    {
        return Err(ListenerError::FirstFd(first.to_string_lossy().into_owned()));
    }
    let mut listenfd = ListenFd::from_env();
    let assignment = activation::assign(fds)?;
    for unused in &assignment.unused {
        // Closed only if it is a socket, as systemd passes: a malformed
        // LISTEN_FDS can name fds that were never passed, and one of those
        // may be the runtime's own by now (a service that owns its runtime).
        if let Ok(Some(fd)) = listenfd.take_raw_fd(index(unused))
            && is_socket(fd)
        {
            // SAFETY: a socket systemd passed to this process; by the TAKEN
            // guard above nothing else here took it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let listeners = assignment
        .app
        .into_iter()
        .map(|passed| take(&mut listenfd, passed))
        .collect::<Result<_, _>>()?;
    Ok((listeners, assignment.unused))
}

/// The queue of a socket we bind ourselves: as deep as app.socket's
/// `Backlog=`, so a standalone app holds as many waiting connections as one
/// under systemd. The kernel caps it at `net.core.somaxconn`.
pub const BIND_BACKLOG: i32 = 4096;

/// Binds `addr` as the kit does outside socket activation: non-blocking,
/// with a queue as deep as the socket unit's.
pub(crate) fn bind(addr: SocketAddr) -> Result<Listener, ListenerError> {
    let socket = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(|l| {
            // std listens with a backlog of 128, which a burst of a few
            // hundred connections overflows (SYNs dropped, clients retrying
            // after a second). listen() on a listening socket only resizes
            // its queue.
            // SAFETY: a valid socket we own; listen has no memory effects.
            match unsafe { libc::listen(l.as_raw_fd(), BIND_BACKLOG) } {
                0 => Ok(l),
                _ => Err(io::Error::last_os_error()),
            }
        })
        .map_err(|source| ListenerError::Bind { addr, source })?;
    Ok(Listener::from(socket))
}

fn index(passed: &PassedFd) -> usize {
    (passed.fd - activation::FIRST_FD) as usize
}

fn take(listenfd: &mut ListenFd, passed: PassedFd) -> Result<Listener, ListenerError> {
    let family = inspect(passed.fd).map_err(|problem| problem.into_error(&passed))?;
    let idx = index(&passed);
    let taken = match family {
        libc::AF_INET | libc::AF_INET6 => listenfd
            .take_tcp_listener(idx)
            .and_then(|l| l.ok_or_else(already_taken))
            .and_then(|l| l.set_nonblocking(true).map(|()| StdListener::Tcp(l))),
        _ => listenfd
            .take_unix_listener(idx)
            .and_then(|l| l.ok_or_else(already_taken))
            .and_then(|l| l.set_nonblocking(true).map(|()| StdListener::Unix(l))),
    };
    let socket = taken.map_err(|source| ListenerError::Take {
        fd: passed.describe(),
        source,
    })?;
    Ok(Listener { socket })
}

fn already_taken() -> io::Error {
    io::Error::other("the fd was already taken")
}

/// Why an fd cannot serve, before it is given a name for the error message.
#[derive(Debug, PartialEq, Eq)]
enum FdProblem {
    NotOpen,
    NotSocket(&'static str),
    NotStream(&'static str),
    NotListening,
    Family(i32),
}

impl FdProblem {
    fn into_error(self, passed: &PassedFd) -> ListenerError {
        let fd = passed.describe();
        match self {
            FdProblem::NotOpen => ListenerError::NotOpen { fd },
            FdProblem::NotSocket(kind) => ListenerError::NotSocket { fd, kind },
            FdProblem::NotStream(kind) => ListenerError::NotStream { fd, kind },
            FdProblem::NotListening => ListenerError::NotListening { fd },
            FdProblem::Family(family) => ListenerError::Family { fd, family },
        }
    }
}

/// Checks that `fd` is an open, listening stream socket of a family we serve,
/// and returns that family.
/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes into the buffer we pass; an fd that is not
    // open makes it fail with EBADF.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

fn inspect(fd: RawFd) -> Result<i32, FdProblem> {
    // SAFETY: fstat and getsockopt only write into the buffers we pass; an fd
    // that is not open makes them fail with EBADF, which we report.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 {
            return Err(FdProblem::NotOpen);
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFSOCK => {}
            libc::S_IFREG => return Err(FdProblem::NotSocket("a regular file")),
            libc::S_IFDIR => return Err(FdProblem::NotSocket("a directory")),
            libc::S_IFCHR => return Err(FdProblem::NotSocket("a character device")),
            libc::S_IFIFO => return Err(FdProblem::NotSocket("a pipe")),
            _ => return Err(FdProblem::NotSocket("not a socket")),
        }
        let kind = sockopt(fd, libc::SO_TYPE).ok_or(FdProblem::NotOpen)?;
        if kind != libc::SOCK_STREAM {
            return Err(FdProblem::NotStream(match kind {
                libc::SOCK_DGRAM => "datagram",
                libc::SOCK_SEQPACKET => "seqpacket",
                libc::SOCK_RAW => "raw",
                _ => "non-stream",
            }));
        }
        if sockopt(fd, libc::SO_ACCEPTCONN) != Some(1) {
            return Err(FdProblem::NotListening);
        }
        match sockopt(fd, libc::SO_DOMAIN) {
            Some(family @ (libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)) => Ok(family),
            Some(family) => Err(FdProblem::Family(family)),
            None => Err(FdProblem::NotOpen),
        }
    }
}

/// An integer `SOL_SOCKET` option, or `None` when it cannot be read.
unsafe fn sockopt(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    /// A burst beyond std's 128 waits in the queue while nobody accepts:
    /// with a 128-deep queue the 130th connection's SYN is dropped and its
    /// connect does not complete within the limit.
    #[test]
    fn a_socket_we_bind_queues_a_burst_of_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let StdListener::Tcp(socket) = &listener.socket else {
            panic!("bind gives a TCP socket");
        };
        let addr = socket.local_addr().unwrap();
        let waiting: Vec<_> = (0..300)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(waiting.len(), 300);
    }

    #[test]
    fn a_listening_tcp_socket_passes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(inspect(l.as_raw_fd()), Ok(libc::AF_INET));
    }

    #[test]
    fn a_listening_unix_socket_passes() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(inspect(l.as_raw_fd()), Ok(libc::AF_UNIX));
    }

    #[test]
    fn wrong_fds_are_named_problems() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            inspect(udp.as_raw_fd()),
            Err(FdProblem::NotStream("datagram"))
        );
        let unbound = socket2_stream();
        assert_eq!(inspect(unbound.as_raw_fd()), Err(FdProblem::NotListening));
        let file = tempfile::tempfile().unwrap();
        assert_eq!(
            inspect(file.as_raw_fd()),
            Err(FdProblem::NotSocket("a regular file"))
        );
        assert_eq!(inspect(9999), Err(FdProblem::NotOpen));
    }

    #[test]
    fn errors_name_the_fd_and_its_name() {
        let passed = PassedFd {
            fd: 3,
            name: Some("http".into()),
        };
        let err = FdProblem::NotStream("datagram").into_error(&passed);
        assert_eq!(
            err.to_string(),
            "fd 3 (LISTEN_FDNAMES \"http\") is not a stream socket (it is a datagram socket)"
        );
    }

    /// A connected (not listening) stream socket.
    fn socket2_stream() -> std::net::TcpStream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap()
    }
}
