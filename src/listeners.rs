//! Where listening sockets come from: the fds systemd passes, or an address we
//! bind ourselves when started outside socket activation.
//!
//! Every passed fd is checked before use (open, a socket, a stream socket,
//! listening, a family we serve), marked close-on-exec (a child must not
//! inherit it), and set non-blocking, because tokio needs it. The
//! environment is only read, never written: this runs where runtime threads
//! may exist already (`Service::serve` inside `#[tokio::main]`), and
//! changing the environment then is undefined behaviour on glibc (a
//! `getenv` in another thread may read freed memory). That is why the kit
//! takes the fds itself rather than through `listenfd`, whose `from_env`
//! removes `LISTEN_PID` and `LISTEN_FDS`.
//!
//! O_NONBLOCK is shared by every process holding the socket: when several
//! instances share one socket, the unit must say `NonBlocking=yes`, or
//! systemd clears the flag for all of them each time it starts one.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FileType;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketType, sockopt};

use crate::activation::{self, ActivationEnv, ActivationError, PassedFd};

/// What to do when systemd passes no socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Bind this address ourselves (running by hand, `cargo run`).
    Bind(SocketAddr),
    /// Fail: under a unit with `PrivateNetwork=yes`, an address of our own
    /// would be in an empty network namespace, ready and serving nobody.
    Refuse,
}

/// A listening socket, not yet registered with a tokio runtime.
#[derive(Debug)]
pub(crate) enum StdListener {
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
        let family = inspect_open(fd.as_fd())
            .map_err(|problem| io::Error::other(format!("passed listener: {problem:?}")))?;
        let socket = if family == AddressFamily::UNIX {
            let l = UnixListener::from(fd);
            l.set_nonblocking(true)?;
            StdListener::Unix(l)
        } else {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            StdListener::Tcp(l)
        };
        Ok(Listener { socket })
    }
}

/// Why the listening sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenerError {
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
    // The listenfd crate honours LISTEN_FDS_FIRST_FD, so a launcher may set
    // it; systemd never does, and passed fds here always start at 3: any
    // other value is an error, not the wrong fds.
    if let Some(first) = std::env::var_os("LISTEN_FDS_FIRST_FD")
        && first != "3"
    {
        return Err(ListenerError::FirstFd(first.to_string_lossy().into_owned()));
    }
    let assignment = activation::assign(fds)?;
    for unused in &assignment.unused {
        // Closed only if it is a socket, as systemd passes: a malformed
        // LISTEN_FDS can name fds that were never passed, and one of those
        // may be the runtime's own by now (a service that owns its runtime).
        if is_socket(unused.fd) {
            drop(own(unused.fd));
        }
    }
    let listeners = assignment
        .app
        .into_iter()
        .map(take)
        .collect::<Result<_, _>>()?;
    Ok((listeners, assignment.unused))
}

/// Takes ownership of a passed fd, checked to be one of the sockets
/// systemd passed (open, a socket), and marks it close-on-exec.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is a socket passed to this process, checked open by the
    // caller, and taken once: `take_from_env` runs once per process (its
    // TAKEN guard) and owns each passed fd at most once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // systemd passes its fds close-on-exec already; a hand-run launcher may
    // not. Failing leaves the flag as it was, which only a child would see.
    let _ = rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC);
    owned
}

/// A passed fd number, borrowed for the checks, if an fd of that number is
/// open at all.
fn borrow_open(fd: RawFd) -> Option<BorrowedFd<'static>> {
    // SAFETY: fcntl(F_GETFD) reads only the fd table; it fails with EBADF
    // when `fd` is not open. An open passed fd stays open while borrowed:
    // nothing here closes a passed fd before it is owned (`own`).
    unsafe {
        if libc::fcntl(fd, libc::F_GETFD) == -1 {
            return None;
        }
        Some(BorrowedFd::borrow_raw(fd))
    }
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
            rustix::net::listen(&l, BIND_BACKLOG)
                .map(|()| l)
                .map_err(io::Error::from)
        })
        .map_err(|source| ListenerError::Bind { addr, source })?;
    Ok(Listener::from(socket))
}

fn take(passed: PassedFd) -> Result<Listener, ListenerError> {
    let family = inspect(passed.fd).map_err(|problem| problem.into_error(&passed))?;
    let owned = own(passed.fd);
    let taken = if family == AddressFamily::UNIX {
        let l = UnixListener::from(owned);
        l.set_nonblocking(true).map(|()| StdListener::Unix(l))
    } else {
        let l = std::net::TcpListener::from(owned);
        l.set_nonblocking(true).map(|()| StdListener::Tcp(l))
    };
    let socket = taken.map_err(|source| ListenerError::Take {
        fd: passed.describe(),
        source,
    })?;
    Ok(Listener { socket })
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

/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    borrow_open(fd).is_some_and(|fd| {
        rustix::fs::fstat(fd)
            .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Socket)
    })
}

/// Checks that `fd` is an open, listening stream socket of a family we serve,
/// and returns that family.
fn inspect(fd: RawFd) -> Result<AddressFamily, FdProblem> {
    let fd = borrow_open(fd).ok_or(FdProblem::NotOpen)?;
    inspect_open(fd)
}

fn inspect_open(fd: BorrowedFd<'_>) -> Result<AddressFamily, FdProblem> {
    let stat = rustix::fs::fstat(fd).map_err(|_| FdProblem::NotOpen)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Socket => {}
        FileType::RegularFile => return Err(FdProblem::NotSocket("a regular file")),
        FileType::Directory => return Err(FdProblem::NotSocket("a directory")),
        FileType::CharacterDevice => return Err(FdProblem::NotSocket("a character device")),
        FileType::Fifo => return Err(FdProblem::NotSocket("a pipe")),
        _ => return Err(FdProblem::NotSocket("not a socket")),
    }
    let kind = sockopt::socket_type(fd).map_err(|_| FdProblem::NotOpen)?;
    if kind != SocketType::STREAM {
        return Err(FdProblem::NotStream(match kind {
            SocketType::DGRAM => "datagram",
            SocketType::SEQPACKET => "seqpacket",
            SocketType::RAW => "raw",
            _ => "non-stream",
        }));
    }
    if !sockopt::socket_acceptconn(fd).unwrap_or(false) {
        return Err(FdProblem::NotListening);
    }
    match sockopt::socket_domain(fd) {
        Ok(family @ (AddressFamily::INET | AddressFamily::INET6 | AddressFamily::UNIX)) => {
            Ok(family)
        }
        Ok(family) => Err(FdProblem::Family(i32::from(family.as_raw()))),
        Err(_) => Err(FdProblem::NotOpen),
    }
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
        let attempts: Vec<_> = (0..300)
            .map(|_| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
            })
            .collect();
        let queued = attempts.iter().filter(|a| a.is_ok()).count();
        let first_failure = attempts.iter().find_map(|a| a.as_ref().err());
        assert_eq!(queued, 300, "not queued: {first_failure:?}");
    }

    #[test]
    fn a_listening_tcp_socket_passes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(inspect(l.as_raw_fd()), Ok(AddressFamily::INET));
    }

    #[test]
    fn a_listening_unix_socket_passes() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(inspect(l.as_raw_fd()), Ok(AddressFamily::UNIX));
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
