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
//! - [`exchange`]: the old process's side of the exchange, as a pure state
//!   machine;
//! - this module: the shells around it (spawning, the channel, systemd),
//!   and the new process's side.

pub(crate) mod channel;
pub(crate) mod control;
mod exchange;
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
use exchange::{Event, Exchange, Step};
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
    tracing::debug!(exe = %exe.display(), "starting the new process");
    exchange(
        channel,
        intermediate.wait(),
        listeners,
        watchdog,
        until,
        |pid| {
            // One datagram: systemd never sees the new main process without READY=1.
            notifier.notify(&[
                NotifyState::MainPid(pid),
                NotifyState::Ready,
                NotifyState::Status(status),
            ]);
        },
    )
    .await
}

/// The exchange's shell: feeds [`exchange::Exchange`] what the channel, the
/// intermediate process and the clock say, and does what it answers.
/// `announce` tells systemd the new process is the main one. Spawning is
/// the caller's, so tests run this over a socketpair, in-process.
async fn exchange(
    channel: Arc<Channel>,
    intermediate: impl Future<Output = io::Result<ExitStatus>>,
    listeners: &[BorrowedFd<'_>],
    watchdog: Option<Duration>,
    until: Instant,
    announce: impl FnOnce(u32),
) -> Result<Successor, ReplaceError> {
    let mut machine = Exchange::default();
    // Kills the new process on any way out but success.
    let mut guard: Option<Spawned> = None;
    let mut intermediate = std::pin::pin!(intermediate);
    let (mut open, mut intermediate_running) = (true, true);
    loop {
        let event = tokio::select! {
            // What is in the channel was sent before the intermediate
            // exited (it sends Spawned, then exits): read it first.
            biased;
            received = channel.recv(), if open => match received.map_err(peer_gone) {
                Ok(Some((message, _fds))) => Event::Received(message),
                // A peer that closes with our message unread resets the
                // channel instead of ending it: gone either way.
                Ok(None) | Err(ReplaceError::Exited) => {
                    open = false;
                    Event::Closed
                }
                Err(err) => return Err(err),
            },
            status = &mut intermediate, if intermediate_running => {
                intermediate_running = false;
                Event::IntermediateExited(status.map_err(ReplaceError::Setup)?)
            }
            () = tokio::time::sleep_until(until) => Event::TimedOut,
        };
        if let Event::Received(message @ Message::Hello { .. }) = &event {
            tracing::debug!(?message, "the new process is ready");
        }
        let step = machine.on(event);
        if guard.is_none()
            && let Some(pid) = machine.spawned()
        {
            tracing::info!(pid, "started the new process");
            guard = Some(Spawned {
                pid,
                took_over: false,
            });
        }
        match step {
            Step::Wait => {}
            Step::SendListeners => {
                let watchdog_usec = watchdog.map_or(0, |w| w.as_micros() as u64);
                channel
                    .send(&Message::Listeners { watchdog_usec }, listeners)
                    .await
                    .map_err(peer_gone)?;
            }
            Step::Announce {
                pid,
                takes_connections,
            } => {
                announce(pid);
                if let Some(guard) = &mut guard {
                    guard.took_over = true;
                }
                channel.send(&Message::Main, &[]).await?;
                return Ok(Successor {
                    pid,
                    channel,
                    takes_connections,
                });
            }
            Step::Fail(err) => return Err(err),
        }
    }
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

/// A send that failed because the new process's end is closed: it exited,
/// which is what the operator needs to hear, not "the channel failed".
fn peer_gone(err: ChannelError) -> ReplaceError {
    match &err {
        ChannelError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            ReplaceError::Exited
        }
        _ => ReplaceError::Channel(err),
    }
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

/// The exchange in-process, over a real socketpair: a fake new process on
/// the other end, scripted to speak in either order, out of turn, or to
/// die at each step, and a real process (`sleep`) standing for the new
/// one, to see it killed when the reload fails.
#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    use super::*;

    /// What the fake new process does, one step at a time.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Spawned,
        Hello,
        /// Waits for Listeners, checking it carries the one listener.
        TakeListeners,
        Serving,
        /// Waits for Main.
        TakeMain,
        /// Sends a message out of turn.
        Send(&'static str),
        /// Sends bytes that are not a message.
        Garbage,
        /// Keeps its end open, saying nothing, until the old side closes its own.
        Linger,
    }

    struct Run {
        result: Result<Successor, ReplaceError>,
        announced: Option<u32>,
        /// How the stand-in for the new process ended, if it was killed.
        killed: bool,
    }

    fn stand_in() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    /// Runs the old side against `acts`; the fake side then closes its end
    /// (it "exits"). The intermediate exits with `intermediate` at once.
    async fn run(acts: &[Act], intermediate: i32, within: Duration) -> Run {
        let (ours, theirs) = channel::pair().unwrap();
        let ours = Arc::new(Channel::new(ours).unwrap());
        let theirs = Channel::new(theirs).unwrap();
        let mut new_process = stand_in();
        let pid = new_process.id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let acts = acts.to_vec();
        // The intermediate exits once it has sent Spawned, as the real one does.
        let (exit, exited) = tokio::sync::oneshot::channel::<()>();
        let mut exit = Some(exit);
        // A send that fails is the old side gone: the fake stops there.
        let fake = tokio::spawn(async move {
            for act in acts {
                let sent = match act {
                    Act::Spawned => theirs.send(&Message::Spawned { pid }, &[]).await,
                    Act::Hello => {
                        let hello = Message::Hello {
                            version: wire::VERSION,
                            takes_connections: true,
                        };
                        theirs.send(&hello, &[]).await
                    }
                    Act::TakeListeners => match theirs.recv().await.unwrap() {
                        Some((Message::Listeners { .. }, fds)) => {
                            assert_eq!(fds.len(), 1);
                            Ok(())
                        }
                        other => panic!("wanted Listeners, got {other:?}"),
                    },
                    Act::Serving | Act::Send("Serving") => {
                        theirs.send(&Message::Serving, &[]).await
                    }
                    Act::TakeMain => {
                        let main = theirs.recv().await.unwrap();
                        assert!(matches!(main, Some((Message::Main, _))), "{main:?}");
                        Ok(())
                    }
                    Act::Send(_) => theirs.send(&Message::Main, &[]).await,
                    Act::Garbage => theirs.send_raw(b"nonsense").map(drop).map_err(Into::into),
                    Act::Linger => {
                        let _ = theirs.recv().await;
                        Ok(())
                    }
                };
                if matches!(act, Act::Spawned)
                    && let Some(exit) = exit.take()
                {
                    let _ = exit.send(());
                }
                if sent.is_err() {
                    break;
                }
            }
            // The fake "exits": its end closes, and the intermediate is
            // surely gone by now.
            drop(theirs);
            if let Some(exit) = exit.take() {
                let _ = exit.send(());
            }
        });
        let status = ExitStatus::from_raw(intermediate << 8);
        let mut announced = None;
        let result = exchange(
            ours,
            async move {
                let _ = exited.await;
                Ok(status)
            },
            &[listener.as_fd()],
            Some(Duration::from_secs(1)),
            Instant::now() + within,
            |pid| announced = Some(pid),
        )
        .await;
        fake.await.unwrap();
        // Killed by the exchange, or ended here with SIGTERM: the signal
        // it died of says which, without a race (a SIGKILL sent before is
        // already pending, and wins).
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&new_process),
            rustix::process::Signal::TERM,
        );
        let status = tokio::task::spawn_blocking(move || new_process.wait().unwrap())
            .await
            .unwrap();
        let killed = status.signal() == Some(9);
        Run {
            result,
            announced,
            killed,
        }
    }

    use Act::*;
    use std::os::fd::AsFd;

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn either_order_of_spawned_and_hello_ends_with_the_new_process_main() {
        for acts in [
            [Spawned, Hello, TakeListeners, Serving, TakeMain],
            [Hello, Spawned, TakeListeners, Serving, TakeMain],
        ] {
            let run = run(&acts, 0, LONG).await;
            let successor = run.result.unwrap_or_else(|err| panic!("{acts:?}: {err}"));
            assert!(successor.takes_connections);
            assert_eq!(run.announced, Some(successor.pid), "{acts:?}");
            assert!(!run.killed, "{acts:?}: the successor must live");
        }
    }

    #[tokio::test]
    async fn a_new_process_that_dies_at_any_step_is_a_failed_reload() {
        let cases: [(&[Act], &str); 4] = [
            (&[], "the process that starts the new one failed"),
            (&[Spawned], "exited before it was ready"),
            (&[Spawned, Hello], "exited before it was ready"),
            (
                &[Spawned, Hello, TakeListeners],
                "exited before it was ready",
            ),
        ];
        for (acts, reason) in cases {
            let run = run(acts, 0, LONG).await;
            let Err(err) = run.result else {
                panic!("{acts:?}: a reload that cannot have worked worked")
            };
            assert!(err.to_string().contains(reason), "{acts:?}: {err}");
            assert_eq!(run.announced, None, "{acts:?}");
            if !acts.is_empty() {
                assert!(run.killed, "{acts:?}: the new process was left running");
            }
        }
    }

    #[tokio::test]
    async fn a_failed_intermediate_fails_the_reload_and_kills_what_it_started() {
        let run = run(&[Spawned, Hello, Linger], 3, LONG).await;
        let err = run.result.err().expect("must fail");
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        assert!(run.killed);
    }

    #[tokio::test]
    async fn out_of_turn_or_garbage_is_a_failed_reload_and_a_killed_process() {
        let cases: [(&[Act], &str); 3] = [
            (
                &[Spawned, Send("Serving")],
                "sent Serving where Spawned and Hello",
            ),
            (
                &[Spawned, Hello, TakeListeners, Send("Main")],
                "sent Main where Serving was due",
            ),
            (&[Spawned, Garbage], "not a handover message"),
        ];
        for (acts, reason) in cases {
            let run = run(acts, 0, LONG).await;
            let err = run.result.err().expect("must fail");
            let chain = crate::error_chain(&err);
            assert!(chain.contains(reason), "{acts:?}: {chain}");
            assert!(run.killed, "{acts:?}");
        }
    }

    /// The new process's side: it takes the listeners and waits to be
    /// main, and anything else from the old side is an error naming it.
    #[tokio::test]
    async fn the_new_side_takes_listeners_then_main_and_refuses_anything_else() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let old_side = |first: Option<Message>, then: Option<Message>| {
            let (ours, theirs) = channel::pair().unwrap();
            let ours = Channel::new(ours).unwrap();
            let fd = listener.as_fd().try_clone_to_owned().unwrap();
            let old = tokio::spawn(async move {
                let hello = ours.recv().await.unwrap();
                assert!(
                    matches!(hello, Some((Message::Hello { .. }, _))),
                    "{hello:?}"
                );
                if let Some(first) = first {
                    ours.send(&first, &[fd.as_fd()]).await.unwrap();
                }
                if let Some(then) = then {
                    let serving = ours.recv().await.unwrap();
                    assert!(
                        matches!(serving, Some((Message::Serving, _))),
                        "{serving:?}"
                    );
                    ours.send(&then, &[]).await.unwrap();
                }
                // Held until the new side is done with it.
                let _ = ours.recv().await;
            });
            (Predecessor::new(theirs).unwrap(), old)
        };

        let listeners = Message::Listeners { watchdog_usec: 0 };
        let (new, old) = old_side(Some(listeners.clone()), Some(Message::Main));
        let (taken, watchdog) = new.take_listeners(true).await.unwrap();
        assert_eq!((taken.len(), watchdog), (1, None));
        new.become_main().await.unwrap();
        drop(new);
        old.await.unwrap();

        let (new, old) = old_side(Some(Message::Main), None);
        let err = new.take_listeners(true).await.expect_err("Main first");
        assert!(
            err.to_string()
                .contains("sent Main where Listeners was due"),
            "{err}"
        );
        drop(new);
        old.await.unwrap();

        let (new, old) = old_side(Some(listeners.clone()), Some(Message::Serving));
        new.take_listeners(false).await.unwrap();
        let err = new.become_main().await.expect_err("Serving is not Main");
        assert!(err.to_string().contains("where Main was due"), "{err}");
        drop(new);
        old.await.unwrap();

        // The old process gone before it sent anything.
        let (ours, theirs) = channel::pair().unwrap();
        drop(ours);
        let new = Predecessor::new(theirs).unwrap();
        assert!(new.take_listeners(true).await.is_err());
    }

    #[tokio::test]
    async fn a_new_process_that_never_says_hello_is_killed_at_the_bound() {
        let run = run(&[Spawned, Linger], 0, Duration::from_millis(300)).await;
        let err = run.result.err().expect("must fail");
        assert!(err.to_string().contains("was not ready within"), "{err}");
        assert!(run.killed);
    }
}
