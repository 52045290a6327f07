//! The life of a service process, from listeners to exit code: serve, tell
//! systemd `READY=1`, apply reloads, replace itself on SIGUSR1 (see
//! [`crate::replace`]), drain on the first SIGTERM/SIGINT, exit at once on
//! the second.
//!
//! Where each notification is sent: `READY=1` in [`run`] once every listener
//! has an accept loop; `RELOADING=1` and the following `READY=1` in
//! [`Lifecycle::reload`]; `STOPPING=1` and the drain's `STATUS=` and
//! `EXTEND_TIMEOUT_USEC=` in [`Lifecycle::drain`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::context::Context;
use crate::drain;
use crate::error_chain;
use crate::listeners::Listener;
use crate::logging::LogHandle;
use crate::notify::{Notifier, NotifyState};
use crate::replace::control::answer;
use crate::replace::{self, Predecessor, ReplaceError, Successor};
use crate::rotation::Rotation;
use crate::server::{DrainReport, HttpService, Server};
use crate::settings::{Loaded, ServeArgs, ServiceSettings, Settings};
use crate::signals::{Intent, Intents};

/// Margin given to systemd beyond our own drain deadline, for the exit itself.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// Exit status after a drain whose deadline cut connections.
pub const EXIT_DRAIN_CUT: u8 = 3;
/// Exit status after a second drain signal ended the drain early.
pub const EXIT_FORCED: u8 = 4;

/// Everything gathered before the runtime started.
pub(crate) struct Startup<T> {
    pub name: &'static str,
    pub args: ServeArgs,
    pub settings: Loaded<T>,
    pub listeners: Vec<Listener>,
    /// The channel from the old process this one replaces, which passes
    /// the listeners instead.
    pub inherited: Option<OwnedFd>,
    pub notifier: Notifier,
    pub watchdog: Option<Duration>,
    pub log: Option<LogHandle>,
    pub intents: Intents,
    pub rotation: Rotation,
    /// The readiness check's path; empty when the service answers every path.
    pub readiness_path: &'static str,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every connection finished before the deadline.
    Clean(DrainReport),
    /// The deadline cut connections.
    Cut(DrainReport),
    /// A second drain signal: we exited without waiting.
    Forced { connections: usize },
}

impl Outcome {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::Clean(_) => ExitCode::SUCCESS,
            Outcome::Cut(_) => ExitCode::from(EXIT_DRAIN_CUT),
            Outcome::Forced { .. } => ExitCode::from(EXIT_FORCED),
        }
    }
}

/// Serves `startup.listeners` with the service `make_service` builds, until a
/// drain signal, and drains.
pub(crate) async fn run<T, S>(
    startup: Startup<T>,
    make_service: impl FnOnce(Context<T>) -> S,
) -> std::io::Result<Outcome>
where
    T: ServiceSettings,
    S: HttpService,
{
    let Startup {
        name,
        args,
        settings:
            Loaded {
                kit: settings,
                service: service_settings,
            },
        listeners,
        inherited,
        notifier,
        watchdog,
        log,
        mut intents,
        rotation,
        readiness_path,
    } = startup;
    let notifier = Arc::new(notifier);
    let (settings_tx, settings_rx) = watch::channel(Arc::new(settings.clone()));
    let (service_tx, service_rx) = watch::channel(Arc::new(service_settings));
    let (trigger, drain) = drain::channel();
    let ctx = Context::new(name, drain, settings_rx, service_rx, Arc::new(rotation));
    let readiness = crate::readiness::ReadinessCheck::new(readiness_path, {
        let ctx = ctx.clone();
        Arc::new(move || ctx.readiness())
    });
    let service = make_service(ctx);
    let (listeners, watchdog, predecessor) = match inherited {
        None => (listeners, watchdog, None),
        Some(fd) => {
            let predecessor = Predecessor::new(fd)?;
            let (listeners, watchdog) = predecessor
                .take_listeners(true)
                .await
                .map_err(|err| std::io::Error::other(crate::error_chain(&err)))?;
            (listeners, watchdog, Some(predecessor))
        }
    };
    let server = Server::builder(listeners, service)
        .drain(trigger)
        .timeouts(settings.timeouts)
        .limits(settings.limits)
        .readiness(readiness)
        .start()?;
    // A Unix socket's path may hold a newline; STATUS= must be one line.
    let status = crate::notify::one_line(&format!(
        "serving http on {}",
        server.listening().join(", ")
    ));
    match predecessor {
        // The old process tells systemd, MAINPID= and READY=1 at once.
        Some(predecessor) => {
            predecessor
                .become_main()
                .await
                .map_err(|err| std::io::Error::other(crate::error_chain(&err)))?;
            tokio::spawn(predecessor.take_connections(server.adopter()));
        }
        None => notifier.notify(&[NotifyState::Ready, NotifyState::Status(&status)]),
    }
    tracing::info!(
        instance = %settings.instance,
        pid = std::process::id(),
        listeners = %server.listening().join(", "),
        "ready"
    );
    let watchdog_task = watchdog.map(|interval| spawn_watchdog(notifier.clone(), interval));
    let lifecycle = Lifecycle {
        name,
        args,
        config: settings.config.clone(),
        notifier,
        log,
        settings_tx,
        service_tx,
        timeouts: server.timeouts(),
        status,
        watchdog,
    };
    let signal = loop {
        match intents.recv().await {
            Some(Intent::Reload) => lifecycle.reload(),
            Some(Intent::Replace { reply_to }) => {
                match lifecycle.replace(&server, &mut intents).await {
                    Ok(successor) => {
                        answer(reply_to, Ok(()));
                        if let Some(task) = watchdog_task {
                            // The new process pings now; ours would be refused.
                            task.abort();
                        }
                        return Ok(lifecycle
                            .drain_moving_to(server, successor, &mut intents)
                            .await);
                    }
                    Err(ReplaceError::Draining(signal)) => {
                        answer(reply_to, Err("the instance is stopping"));
                        break signal;
                    }
                    Err(err) => {
                        // The reason in the message itself: what `journalctl
                        // -u` and `systemctl status` show.
                        let reason = error_chain(&err);
                        tracing::error!(
                            error = %reason,
                            "reload failed: this process goes on serving: {reason}"
                        );
                        answer(reply_to, Err(&reason));
                    }
                }
            }
            Some(Intent::Drain(signal)) => break signal,
            None => break "end of signal stream",
        }
    };
    Ok(lifecycle.drain(server, signal, &mut intents).await)
}

struct Lifecycle<T> {
    name: &'static str,
    args: ServeArgs,
    config: Option<PathBuf>,
    notifier: Arc<Notifier>,
    log: Option<LogHandle>,
    settings_tx: watch::Sender<Arc<Settings>>,
    service_tx: watch::Sender<Arc<T>>,
    timeouts: crate::server::TimeoutsHandle,
    status: String,
    watchdog: Option<Duration>,
}

impl<T: ServiceSettings> Lifecycle<T> {
    fn reload(&self) {
        self.notifier.notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
        ]);
        let current = self.settings_tx.borrow().clone();
        match Loaded::<T>::load(&self.args, self.name) {
            Ok(Loaded { kit, service }) => {
                let (next, restart_only) = current.reloaded(kit);
                if let Some(Err(err)) = self.log.as_ref().map(|log| log.set_filter(&next.log_level))
                {
                    tracing::error!(error = %err, "log filter not changed");
                }
                for name in restart_only {
                    tracing::warn!(
                        setting = name,
                        "changed in the settings file; only a restart applies it"
                    );
                }
                self.timeouts.set(next.timeouts);
                self.settings_tx.send_replace(Arc::new(next));
                self.service_tx.send_replace(Arc::new(service));
                tracing::info!(config = ?self.config, "settings reloaded");
            }
            Err(err) => {
                tracing::error!(error = %error_chain(&err), "settings not reloaded; keeping the old ones");
            }
        }
        self.notifier
            .notify(&[NotifyState::Ready, NotifyState::Status(&self.status)]);
    }

    /// Starts the binary on disk as this process's replacement and makes it
    /// the unit's main process; this process serves meanwhile, and on
    /// failure goes on as it was.
    async fn replace(
        &self,
        server: &Server,
        intents: &mut Intents,
    ) -> Result<Successor, ReplaceError> {
        tracing::info!("reload: replacing this process with the binary on disk");
        // Outside ExecReload= (a `kill -USR1`), this holds the unit in
        // "reloading" until the new process is ready.
        self.notifier.notify(&[
            NotifyState::Reloading,
            NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Status("reloading")),
        ]);
        let listeners = server.listener_fds();
        let attempt =
            replace::start_successor(&listeners, self.watchdog, &self.notifier, &self.status);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                intent = intents.recv() => match intent {
                    // Dropping the attempt kills the new process.
                    Some(Intent::Drain(signal)) => break Err(ReplaceError::Draining(signal)),
                    Some(Intent::Replace { reply_to }) => {
                        tracing::warn!("reload asked again while one is under way: refused");
                        answer(reply_to, Err("another reload of this instance is under way"));
                    }
                    Some(Intent::Reload) => tracing::info!("settings reload ignored while replacing"),
                    None => {}
                },
            }
        };
        if result.is_err() {
            self.notifier
                .notify(&[NotifyState::Ready, NotifyState::Status(&self.status)]);
        }
        result
    }

    /// The drain of a process its successor has replaced: HTTP/1
    /// connections move to it, the rest drain here. systemd hears nothing
    /// more from this process: it is no longer the unit's main one.
    async fn drain_moving_to(
        self,
        server: Server,
        successor: Successor,
        intents: &mut Intents,
    ) -> Outcome {
        let deadline = self.settings_tx.borrow().drain_deadline;
        let connections = server.connections();
        // Only idle HTTP/1 connections can move; the rest (HTTP/2, WebSockets,
        // requests in flight) drain here, and "handover finished" says how
        // many went which way.
        tracing::info!(
            pid = successor.pid,
            connections,
            "reload: the new process serves; of {connections} open connections, the idle HTTP/1 ones move to it"
        );
        let handing = async {
            if successor.takes_connections {
                let move_target = crate::connection::MoveTarget::new(successor.channel);
                server.drain_moving_to(move_target, deadline).await
            } else {
                // A release that cannot take connections: they drain here.
                (server.drain(deadline, |_| {}).await, (0, connections))
            }
        };
        tokio::pin!(handing);
        // A stop during the handover signals every process of the unit: this
        // one is draining already and goes on; a second signal cuts it.
        let mut signalled = false;
        loop {
            tokio::select! {
                (report, (moved, stayed)) = &mut handing => {
                    log_streams_ended(&report);
                    tracing::info!(
                        moved,
                        closed = stayed,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        cut = report.cut,
                        "reload: handover finished; moved {moved} connections, {stayed} ended here"
                    );
                    return if report.is_clean() { Outcome::Clean(report) } else { Outcome::Cut(report) };
                }
                intent = intents.recv() => match intent {
                    Some(Intent::Drain(signal)) if signalled => {
                        tracing::warn!(signal, "second drain signal during the handover: exiting without waiting");
                        return Outcome::Forced { connections };
                    }
                    Some(Intent::Drain(signal)) => {
                        signalled = true;
                        tracing::info!(signal, "drain signal during the handover: finishing it");
                    }
                    Some(Intent::Replace { reply_to }) => answer(
                        reply_to,
                        Err("this process was just replaced; reload the new one"),
                    ),
                    Some(Intent::Reload) | None => {}
                },
            }
        }
    }

    async fn drain(self, mut server: Server, signal: &str, intents: &mut Intents) -> Outcome {
        let deadline = self.settings_tx.borrow().drain_deadline;
        let connections = server.stop_accepting().await;
        tracing::info!(
            signal,
            connections,
            deadline = ?deadline,
            "drain started: {connections} connections, deadline {deadline:?}"
        );
        self.notifier.notify(&[
            NotifyState::Stopping,
            NotifyState::Status(&format!("draining {connections} connections")),
        ]);
        let notifier = &self.notifier;
        let drained = server.drain(deadline, |progress| {
            let left = (progress.remaining + EXIT_MARGIN).as_micros();
            notifier.notify(&[
                NotifyState::Status(&format!(
                    "draining: {} connections left, {}s to the deadline",
                    progress.connections,
                    progress.remaining.as_secs()
                )),
                // Only ever up to our own deadline: systemd still kills us
                // if we hang past it.
                NotifyState::ExtendTimeoutUsec(u32::try_from(left).unwrap_or(u32::MAX)),
            ]);
        });
        tokio::pin!(drained);
        loop {
            tokio::select! {
                report = &mut drained => return finish(report),
                intent = intents.recv() => match intent {
                    Some(Intent::Drain(signal)) => {
                        tracing::warn!(signal, "second drain signal: exiting without waiting");
                        return Outcome::Forced { connections };
                    }
                    Some(Intent::Reload) => tracing::info!("reload ignored while draining"),
                    Some(Intent::Replace { reply_to }) => {
                        tracing::info!("replace ignored while draining");
                        answer(reply_to, Err("the instance is stopping"));
                    }
                    None => {}
                },
            }
        }
    }
}

/// A warning when the kit had to end HTTP/2 streams the service left open:
/// the drain then lasted nearly its whole deadline, every time.
fn log_streams_ended(report: &DrainReport) {
    if report.streams_ended > 0 {
        tracing::warn!(
            streams = report.streams_ended,
            "drain: the service had not ended {} HTTP/2 streams shortly before the deadline, so the kit \
             ended them (gRPC: UNAVAILABLE); end long streams when `Context::drain()` fires to drain faster",
            report.streams_ended
        );
    }
}

fn finish(report: DrainReport) -> Outcome {
    let elapsed_ms = report.elapsed.as_millis() as u64;
    log_streams_ended(&report);
    if report.is_clean() {
        tracing::info!(
            connections = report.connections_at_start,
            elapsed_ms,
            "drain finished: {} connections ended in {elapsed_ms} ms",
            report.connections_at_start
        );
        Outcome::Clean(report)
    } else {
        tracing::error!(
            connections = report.connections_at_start,
            cut = report.cut,
            elapsed_ms,
            "drain deadline passed: cut {} connections",
            report.cut
        );
        Outcome::Cut(report)
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, from the
/// runtime itself, so a wedged runtime stops the pings.
fn spawn_watchdog(notifier: Arc<Notifier>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval / 2);
        loop {
            ticks.tick().await;
            notifier.notify(&[NotifyState::Watchdog]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_exit_status() {
        let report = DrainReport {
            connections_at_start: 2,
            cut: 1,
            streams_ended: 0,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(Outcome::Clean(report).exit_code(), ExitCode::SUCCESS);
        assert_eq!(
            Outcome::Cut(report).exit_code(),
            ExitCode::from(EXIT_DRAIN_CUT)
        );
        assert_eq!(
            Outcome::Forced { connections: 1 }.exit_code(),
            ExitCode::from(EXIT_FORCED)
        );
    }
}
