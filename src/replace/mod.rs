//! In-place reloads: a running process replaces itself with the binary now
//! on disk, and hands it the listening sockets, its role with systemd and
//! its idle HTTP/1 connections.
//!
//! The order, old process on the left:
//!
//! ```text
//! SIGUSR1 (from `NAME replace PID`, systemd's ExecReload=)
//! spawn the binary on disk, same arguments,
//!   with one end of a socketpair inherited,
//!   as an intermediate that spawns it again
//!   and exits (so systemd adopts it)       ◄───── Spawned (pid)
//!                                                 settings loaded, service built
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

/// Set for the intermediate process (see [`intermediate`]).
const INTERMEDIATE_VAR: &str = "HANDOVER_INTERMEDIATE";

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
    #[error("the new process exited before it was ready; its own message is logged above")]
    Exited,
    #[error("the process that starts the new one failed ({0})")]
    Intermediate(ExitStatus),
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

/// The new process, killed unless it took over. Not our child (see
/// [`start_successor`]): its end is seen as the end of its channel.
struct Spawned {
    pid: u32,
    took_over: bool,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.took_over
            && let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The next message, or why none came: the new process exited (its end
/// of the channel closed), or the bound passed.
async fn expect(
    channel: &Channel,
    want: &'static str,
    until: Instant,
) -> Result<(Message, Vec<OwnedFd>), ReplaceError> {
    tokio::select! {
        received = channel.recv() => match received? {
            Some(received) => Ok(received),
            None => Err(ReplaceError::Exited),
        },
        () = tokio::time::sleep_until(until) => {
            tracing::debug!(want, "no message from the new process in time");
            Err(ReplaceError::NotReady(READY_WITHIN))
        }
    }
}

/// Starts the binary on disk with this process's arguments, waits until it
/// is ready, passes it `listeners`, and once it serves on them makes it
/// the unit's main process. On any error the new process is killed and
/// this one is as it was.
///
/// The binary is started twice: once as an intermediate process, which
/// starts the new process and exits at once. The new process is then an
/// orphan, which the kernel gives to systemd before `MAINPID=` names it:
/// systemd supervises a main process that is not its child as "alien", and
/// on stop sends such a process SIGKILL at once instead of SIGTERM.
pub(crate) async fn start_successor(
    listeners: &[BorrowedFd<'_>],
    watchdog: Option<Duration>,
    notifier: &Notifier,
    status: &str,
) -> Result<Successor, ReplaceError> {
    let until = Instant::now() + READY_WITHIN;
    let exe = binary_on_disk().map_err(ReplaceError::Exe)?;
    let (ours, theirs) = channel::pair().map_err(ReplaceError::Setup)?;
    // Inherited by the intermediate and from it by the new process: cleared
    // on our fd here, so their copies (same number) stay open across exec.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())
        .map_err(|err| ReplaceError::Setup(err.into()))?;
    let mut command = tokio::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env(
            CHANNEL_VAR,
            format!("{}:{}", theirs.as_raw_fd(), std::process::id()),
        )
        .env(INTERMEDIATE_VAR, "1")
        .kill_on_drop(true);
    let intermediate = command.spawn();
    drop(theirs);
    let mut intermediate = intermediate.map_err(|source| ReplaceError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    let channel = Arc::new(Channel::new(ours).map_err(ReplaceError::Setup)?);
    // Spawned (from the intermediate) and Hello (from the new process) come
    // in either order: a quick new process may say Hello first.
    let mut spawned: Option<Spawned> = None;
    let mut hello = None;
    let (mut spawned, takes_connections) = loop {
        if let Some(takes_connections) = hello
            && let Some(spawned) = spawned.take()
        {
            break (spawned, takes_connections);
        }
        match expect(&channel, "Spawned and Hello", until).await {
            Ok((Message::Spawned { pid }, _)) if spawned.is_none() => {
                spawned = Some(Spawned {
                    pid,
                    took_over: false,
                });
                // Once the intermediate has exited, the new process is
                // systemd's child.
                let status = tokio::time::timeout_at(until, intermediate.wait())
                    .await
                    .map_err(|_| ReplaceError::NotReady(READY_WITHIN))?
                    .map_err(ReplaceError::Setup)?;
                if !status.success() {
                    return Err(ReplaceError::Intermediate(status));
                }
                tracing::info!(pid, exe = %exe.display(), "started the new process");
            }
            Ok((
                Message::Hello {
                    version,
                    takes_connections,
                },
                _,
            )) if hello.is_none() => {
                tracing::debug!(version, takes_connections, "the new process is ready");
                hello = Some(takes_connections);
            }
            Ok((other, _)) => return Err(unexpected("Spawned and Hello", &other)),
            Err(ReplaceError::Exited) if spawned.is_none() => {
                // The intermediate exited without starting the new process.
                let status = intermediate.wait().await.map_err(ReplaceError::Setup)?;
                return Err(ReplaceError::Intermediate(status));
            }
            Err(err) => return Err(err),
        }
    };
    let watchdog_usec = watchdog.map_or(0, |w| w.as_micros() as u64);
    channel
        .send(&Message::Listeners { watchdog_usec }, listeners)
        .await?;
    match expect(&channel, "Serving", until).await? {
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

/// The intermediate process's whole life: when this process was started as
/// one ([`start_successor`]), starts the new process with the same
/// arguments and the channel, tells the old process its pid, and returns
/// the exit status; `None` in any other process. Called first thing, before
/// the command line is parsed.
pub(crate) fn intermediate() -> Option<std::process::ExitCode> {
    std::env::var_os(INTERMEDIATE_VAR)?;
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        eprintln!("handover: intermediate process: {what}: {err}");
        Some(std::process::ExitCode::FAILURE)
    };
    let Some(fd) = std::env::var(CHANNEL_VAR)
        .ok()
        .and_then(|v| {
            v.split_once(':')
                .and_then(|(fd, _)| fd.parse::<RawFd>().ok())
        })
        .filter(|&fd| fd >= 3 && is_seqpacket(fd))
    else {
        return fail("no handover channel", &CHANNEL_VAR);
    };
    let exe = match binary_on_disk() {
        Ok(exe) => exe,
        Err(err) => return fail("cannot find the binary", &err),
    };
    let child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env_remove(INTERMEDIATE_VAR)
        .spawn();
    let pid = match child {
        Ok(child) => child.id(),
        Err(err) => return fail("cannot start the new process", &err),
    };
    // SAFETY: the fd is the channel (checked above), open for this whole
    // function; borrowed for one send.
    let channel = unsafe { BorrowedFd::borrow_raw(fd) };
    let message = Message::Spawned { pid }.encode();
    // The channel's buffer is empty at this point: the send does not block.
    if let Err(err) = rustix::net::send(channel, &message, rustix::net::SendFlags::empty()) {
        return fail("cannot tell the old process", &err);
    }
    Some(std::process::ExitCode::SUCCESS)
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
    #[error("cannot set close-on-exec on the handover channel (fd {fd})")]
    CloseOnExec {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
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
    if fd < 3 || !is_seqpacket(fd) || peer_pid(fd) != Some(parent) {
        // The variable without the channel: inherited through a process
        // of ours that took it (close-on-exec there), so not ours.
        return Ok(None);
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(InheritError::AlreadyTaken);
    }
    // SAFETY: our parent, named by the variable, passed this fd open for
    // us; it is a seqpacket socket (checked above) and, by the TAKEN guard,
    // nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(|err| {
        InheritError::CloseOnExec {
            fd: fd.as_raw_fd(),
            source: err.into(),
        }
    })?;
    Ok(Some(fd))
}

/// The pid of the process that created the socketpair `fd` is an end of:
/// the old process.
fn peer_pid(fd: RawFd) -> Option<i32> {
    // SAFETY: borrowed only for the one call; an fd that is not open makes
    // it fail.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let cred = rustix::net::sockopt::socket_peercred(fd).ok()?;
    Some(cred.pid.as_raw_nonzero().get())
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
