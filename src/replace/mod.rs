//! In-place reloads: a running process replaces itself with the binary now
//! on disk, and hands it the listening sockets, its role with systemd and
//! its idle HTTP/1 connections.
//!
//! The order, old process on the left:
//!
//! ```text
//! SIGUSR1 (from `NAME replace PID`, systemd's ExecReload=)
//! spawn the binary on disk, same arguments,
//!   with one end of a socketpair inherited ─────► settings loaded, service built
//!                                          ◄───── Hello (version, takes connections)
//! Listeners (+ fds, watchdog interval)     ─────► accept loops started
//!                                          ◄───── Serving
//! MAINPID=new + READY=1 to systemd, one datagram
//! Main                                     ─────► watchdog pings from now on
//! reply to ExecReload: done
//! drain: each HTTP/1 connection, between
//!   two requests: Connection (+ fd)        ─────► served from its next request on
//! exit; the channel closes                 ─────► (end of handed-over connections)
//! ```
//!
//! Until `Serving`, the old process serves as before: a new release that
//! exits, never says `Hello` within the bound, or cannot take the sockets
//! changes nothing but the log and ExecReload's exit status. The channel is
//! inherited, never a path: no other process can speak on it.
//!
//! - [`wire`]: the messages, as bytes;
//! - [`channel`]: the socketpair, with fds attached;
//! - [`control`]: `NAME replace PID`, which asks and waits for the answer;
//! - this module: both processes' sides of the exchange.

pub(crate) mod channel;
pub(crate) mod control;
pub(crate) mod wire;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::listeners::Listener;
use crate::notify::{Notifier, NotifyState};
use channel::{Channel, ChannelError};
use wire::Message;

/// Tells the new process where its end of the channel is: `FD:PID`, with
/// the old process's pid, so a grandchild that inherits the variable (and
/// not the fd, close-on-exec by then) ignores it.
pub(crate) const CHANNEL_VAR: &str = "HANDOVER_CHANNEL";

/// How long the new process has to load its settings, build its service and
/// take the sockets. Below the units' `TimeoutStartSec=` (15 s), which
/// systemd also applies to `ExecReload=`: a release that is not ready in
/// time fails the reload here, with its reason, before systemd kills the
/// waiting `ExecReload=` process.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(10);

/// How long an exited new process's status is awaited once its channel
/// closed, before we kill it.
const EXIT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplaceError {
    #[error("cannot find this process's binary on disk")]
    Exe(#[source] io::Error),
    #[error("cannot start {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the new process exited ({status}) before it was ready; its own message is logged above"
    )]
    Exited { status: ExitStatus },
    #[error("the new process was not ready within {}; killed it", humantime::format_duration(*.0))]
    NotReady(Duration),
    #[error("the new process sent {got} where {want} was due")]
    Protocol { want: &'static str, got: String },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot prepare the channel to the new process")]
    Setup(#[source] io::Error),
    #[error("a drain signal ({0}) came first; killed the new process")]
    Draining(&'static str),
}

/// The new process, ready and serving, and now the unit's main one.
pub(crate) struct Successor {
    pub pid: u32,
    pub channel: Arc<Channel>,
    pub takes_connections: bool,
}

/// The binary this process was started from, as it is on disk now: after a
/// package upgrade, the new release. `/proc/self/exe` then reads
/// "PATH (deleted)": the path is what we start.
fn binary_on_disk() -> io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// A spawned new process that is killed unless it took over.
struct Spawned {
    child: tokio::process::Child,
    pid: u32,
    took_over: bool,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.took_over {
            // tokio reaps it in the background once it is dead.
            let _ = self.child.start_kill();
        }
    }
}

impl Spawned {
    /// The next message, or why none came: the process exited, or the
    /// bound passed.
    async fn expect(
        &mut self,
        channel: &Channel,
        want: &'static str,
        until: Instant,
    ) -> Result<(Message, Vec<OwnedFd>), ReplaceError> {
        tokio::select! {
            received = channel.recv() => match received? {
                Some(received) => Ok(received),
                None => Err(self.exited().await),
            },
            status = self.child.wait() => Err(match status {
                Ok(status) => ReplaceError::Exited { status },
                Err(err) => ReplaceError::Channel(err.into()),
            }),
            () = tokio::time::sleep_until(until) => Err(ReplaceError::NotReady(READY_WITHIN)),
        }
        .map_err(|err| {
            tracing::debug!(want, "no message from the new process");
            err
        })
    }

    /// The channel closed: the process is exiting.
    async fn exited(&mut self) -> ReplaceError {
        match tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => ReplaceError::Exited { status },
            _ => ReplaceError::Protocol {
                want: "Hello",
                got: "the end of the channel, and the process did not exit".to_owned(),
            },
        }
    }
}

/// Starts the binary on disk with this process's arguments, waits until it
/// is ready, passes it `listeners`, and once it serves on them makes it
/// the unit's main process. On any error the new process is killed and
/// this one is as it was.
pub(crate) async fn start_successor(
    listeners: &[BorrowedFd<'_>],
    watchdog: Option<Duration>,
    notifier: &Notifier,
    status: &str,
) -> Result<Successor, ReplaceError> {
    let until = Instant::now() + READY_WITHIN;
    let exe = binary_on_disk().map_err(ReplaceError::Exe)?;
    let (ours, theirs) = channel::pair().map_err(ReplaceError::Setup)?;
    // Inherited by the one child spawned below: cleared on our fd here, so
    // the child's copy (dup2'd by exec to the same number) stays open.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
        .map_err(|err| ReplaceError::Setup(err.into()))?;
    let mut command = tokio::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env(
            CHANNEL_VAR,
            format!("{}:{}", theirs.as_raw_fd(), std::process::id()),
        )
        .kill_on_drop(false);
    let child = command.spawn();
    drop(theirs);
    let child = child.map_err(|source| ReplaceError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    let mut spawned = Spawned {
        child,
        pid,
        took_over: false,
    };
    tracing::info!(pid, exe = %exe.display(), "started the new process");
    let channel = Arc::new(Channel::new(ours).map_err(ReplaceError::Setup)?);

    let takes_connections = match spawned.expect(&channel, "Hello", until).await? {
        (
            Message::Hello {
                version,
                takes_connections,
            },
            _,
        ) => {
            tracing::debug!(version, takes_connections, "the new process is ready");
            takes_connections
        }
        (other, _) => return Err(unexpected("Hello", &other)),
    };
    let watchdog_usec = watchdog.map_or(0, |w| w.as_micros() as u64);
    channel
        .send(&Message::Listeners { watchdog_usec }, listeners)
        .await?;
    match spawned.expect(&channel, "Serving", until).await? {
        (Message::Serving, _) => {}
        (other, _) => return Err(unexpected("Serving", &other)),
    }
    // One datagram: systemd never sees the new main process without READY=1.
    notifier.notify(&[
        NotifyState::MainPid(spawned.pid),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
    spawned.took_over = true;
    channel.send(&Message::Main, &[]).await?;
    Ok(Successor {
        pid: spawned.pid,
        channel,
        takes_connections,
    })
}

fn unexpected(want: &'static str, got: &Message) -> ReplaceError {
    ReplaceError::Protocol {
        want,
        got: format!("{got:?}"),
    }
}

/// The new process's side: its end of the channel to the old one.
#[derive(Debug)]
pub(crate) struct Predecessor {
    channel: Channel,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InheritError {
    #[error("{CHANNEL_VAR}={0:?} is not FD:PID")]
    Malformed(String),
    #[error("{CHANNEL_VAR} names fd {0}, which is not the handover channel")]
    NotChannel(RawFd),
    #[error("the handover channel was already taken")]
    AlreadyTaken,
}

/// This process's end of the channel, when an old process started it to
/// take over; `None` when it started as usual. Read before any thread of
/// ours starts.
pub(crate) fn inherited_channel() -> Result<Option<OwnedFd>, InheritError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Some(value) = std::env::var_os(CHANNEL_VAR) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().into_owned();
    let malformed = || InheritError::Malformed(value.clone());
    let (fd, parent) = value.split_once(':').ok_or_else(malformed)?;
    let fd: RawFd = fd.parse().map_err(|_| malformed())?;
    let parent: i32 = parent.parse().map_err(|_| malformed())?;
    if rustix::process::getppid().map(rustix::process::Pid::as_raw_nonzero)
        != std::num::NonZeroI32::new(parent)
    {
        // Inherited from an ancestor that replaced itself: not ours.
        return Ok(None);
    }
    if fd < 3 || !is_seqpacket(fd) {
        return Err(InheritError::NotChannel(fd));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(InheritError::AlreadyTaken);
    }
    // SAFETY: our parent, named by the variable, passed this fd open for
    // us; it is a seqpacket socket (checked above) and, by the TAKEN guard,
    // nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|_| InheritError::NotChannel(fd.as_raw_fd()))?;
    Ok(Some(fd))
}

fn is_seqpacket(fd: RawFd) -> bool {
    // SAFETY: borrowed only for the one call; an fd that is not open makes
    // it fail.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::net::sockopt::socket_type(fd) == Ok(rustix::net::SocketType::SEQPACKET)
}

impl Predecessor {
    /// Must run inside a tokio runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            channel: Channel::new(fd)?,
        })
    }

    /// Says this process is ready, and takes the listening sockets and the
    /// watchdog interval.
    pub(crate) async fn take_listeners(
        &self,
        takes_connections: bool,
    ) -> Result<(Vec<Listener>, Option<Duration>), ReplaceError> {
        self.channel
            .send(
                &Message::Hello {
                    version: wire::VERSION,
                    takes_connections,
                },
                &[],
            )
            .await?;
        match self.channel.recv().await? {
            Some((Message::Listeners { watchdog_usec }, fds)) => {
                let listeners = fds
                    .into_iter()
                    .map(Listener::from_passed)
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(ReplaceError::Setup)?;
                let watchdog = (watchdog_usec > 0).then(|| Duration::from_micros(watchdog_usec));
                Ok((listeners, watchdog))
            }
            Some((other, _)) => Err(unexpected("Listeners", &other)),
            None => Err(ReplaceError::Protocol {
                want: "Listeners",
                got: "the end of the channel".to_owned(),
            }),
        }
    }

    /// Says this process serves, and waits until it is the unit's main one.
    pub(crate) async fn become_main(&self) -> Result<(), ReplaceError> {
        self.channel.send(&Message::Serving, &[]).await?;
        match self.channel.recv().await? {
            Some((Message::Main, _)) => Ok(()),
            Some((other, _)) => Err(unexpected("Main", &other)),
            None => Err(ReplaceError::Protocol {
                want: "Main",
                got: "the end of the channel".to_owned(),
            }),
        }
    }

    /// Takes the connections the old process hands over, until it exits.
    pub(crate) async fn take_connections(
        self,
        adopt: impl Fn(OwnedFd, bytes::Bytes) -> io::Result<()>,
    ) {
        let mut taken = 0usize;
        loop {
            match self.channel.recv().await {
                Ok(Some((Message::Connection { read }, fds))) => {
                    let Some(fd) = fds.into_iter().next() else {
                        tracing::warn!("a handed-over connection came without its fd");
                        continue;
                    };
                    match adopt(fd, read.into()) {
                        Ok(()) => taken += 1,
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot serve a handed-over connection")
                        }
                    }
                }
                Ok(Some((other, _))) => {
                    tracing::warn!(message = ?other, "unexpected message from the old process");
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(error = %crate::error_chain(&err), "handover channel failed");
                    break;
                }
            }
        }
        tracing::info!(
            connections = taken,
            "the old process has exited; took its connections"
        );
    }
}
