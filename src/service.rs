//! [`Service`]: one call that owns a service's process, from the command
//! line to the exit status.
//!
//! The order matters and is kept here, in one place: settings (a bad one
//! fails before anything else happens), the file descriptor limit, the
//! service manager's environment and the listening sockets (read before any
//! thread of ours starts), logging, signals, then the runtime, which serves
//! until a drain signal and drains.

use std::ffi::OsString;
use std::io::Write;
use std::marker::PhantomData;
use std::process::ExitCode;

use crate::cli::{self, Invocation};
use crate::context::Context;
use crate::error_chain;
use crate::fds;
use crate::lifecycle::{self, Outcome, Startup};
use crate::listeners::{self, Fallback, ListenerError};
use crate::logging::{self, Destination, LogError};
use crate::name::{NameError, ServiceName};
use crate::notify::{ManagerEnv, Notifier, NotifyError};
use crate::render::{self, RenderError};
use crate::rollout::{self, RolloutError};
use crate::rotation::{self, Rotation, RotationError};
use crate::server::HttpService;
use crate::settings::{Loaded, NoSettings, ServeArgs, ServiceSettings, SettingsError};
use crate::signals::Intents;

/// A service built on the kit, named: the name drives every name the kit
/// uses (see the [crate docs](crate)).
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// fn main() -> std::process::ExitCode {
///     handover::Service::new("orders")
///         .version(env!("CARGO_PKG_VERSION"))
///         .run(|_ctx| Router::new().route("/", get(|| async { "hello\n" })))
/// }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a service does nothing until it runs"]
pub struct Service<T = NoSettings> {
    name: &'static str,
    version: Option<&'static str>,
    about: Option<&'static str>,
    readiness_path: &'static str,
    settings: PhantomData<fn() -> T>,
}

/// Why a service could not start or a verb failed; printed as one line.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot read the file descriptor limit")]
    FdLimit(#[source] std::io::Error),
    #[error(transparent)]
    Fds(#[from] fds::FdLimitError),
    #[error(transparent)]
    Listeners(#[from] ListenerError),
    #[error(transparent)]
    Logging(#[from] LogError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    #[cfg(feature = "fault-injection")]
    #[error("cannot install the fault switch")]
    Fault(#[source] std::io::Error),
    #[error("cannot serve")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error(transparent)]
    Rotation(#[from] RotationError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Replace(#[from] crate::replace::control::ReplaceFailed),
    #[error(transparent)]
    Inherit(#[from] crate::replace::InheritError),
}

/// Where a balancer's health check asks whether to send requests here.
const DEFAULT_READINESS_PATH: &str = "/readyz";

impl Service<NoSettings> {
    /// A service named `name`: lowercase letters, digits and `-`, starting
    /// with a letter. A name that breaks these rules makes [`Service::run`]
    /// fail with a message saying why.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            version: None,
            about: None,
            readiness_path: DEFAULT_READINESS_PATH,
            settings: PhantomData,
        }
    }
}

impl<T: ServiceSettings> Service<T> {
    /// The version `--version` and the man pages show; usually
    /// `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// A one-line description for `--help` and the man page.
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// The path of the readiness check, `/readyz` by default; `None` to
    /// leave every path to the service. While the instance drains or its
    /// host is out of rotation, the kit answers `GET` and `HEAD` on it with
    /// `503` and the service is not called, so a catch-all route cannot
    /// make a leaving instance look healthy. While it is ready, the service
    /// answers (with checks of its own, if it has them); if it has no such
    /// route and answers `404`, the kit answers `200 ready`.
    pub fn readiness_path(mut self, path: impl Into<Option<&'static str>>) -> Self {
        self.readiness_path = path.into().unwrap_or("");
        self
    }

    /// The service's own settings: the settings file's `[NAME]` table,
    /// deserialized into `U` and checked with [`ServiceSettings::validate`],
    /// at start and on every reload. [`Context::settings`] hands it out.
    pub fn settings<U: ServiceSettings>(self) -> Service<U> {
        Service {
            name: self.name,
            version: self.version,
            about: self.about,
            readiness_path: self.readiness_path,
            settings: PhantomData,
        }
    }

    /// Runs the process: parses the command line, then serves (on a runtime
    /// of its own) until a drain signal and drains, or runs the operator
    /// verb asked for. `make` builds the service once, before the first
    /// connection. Returns the exit status for `main` to return.
    pub fn run<S: HttpService>(self, make: impl FnOnce(Context<T>) -> S) -> ExitCode {
        let readiness_path = self.readiness_path;
        self.dispatch(std::env::args_os(), |name, args| {
            let startup = prepare::<T>(name, args, readiness_path)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(Failure::Runtime)?;
            #[cfg(feature = "fault-injection")]
            crate::fault::install(runtime.handle().clone()).map_err(Failure::Fault)?;
            let outcome = runtime.block_on(lifecycle::run(startup, make));
            // Connections a forced exit abandons are not worth waiting for.
            runtime.shutdown_background();
            Ok(exit_code(outcome.map_err(Failure::Serve)?))
        })
    }

    /// [`Service::run`] for a service that owns its runtime (a
    /// `#[tokio::main]`): the same, on the current multi-threaded runtime.
    pub async fn serve<S: HttpService>(self, make: impl FnOnce(Context<T>) -> S) -> ExitCode {
        let mut prepared = None;
        let readiness_path = self.readiness_path;
        let code = self.dispatch(std::env::args_os(), |name, args| {
            prepared = Some(prepare::<T>(name, args, readiness_path)?);
            Ok(ExitCode::SUCCESS)
        });
        let Some(startup) = prepared else {
            return code;
        };
        let name = startup.name;
        #[cfg(feature = "fault-injection")]
        if let Err(err) = crate::fault::install(tokio::runtime::Handle::current()) {
            return report(name, &Failure::Fault(err));
        }
        match lifecycle::run(startup, make).await {
            Ok(outcome) => exit_code(outcome),
            Err(err) => report(name, &Failure::Serve(err)),
        }
    }

    /// Parses `argv` and runs a verb, or hands serving to `serve`.
    fn dispatch(
        &self,
        argv: impl IntoIterator<Item = OsString>,
        serve: impl FnOnce(&ServiceName, ServeArgs) -> Result<ExitCode, Failure>,
    ) -> ExitCode {
        // A reload's intermediate process starts the new one and exits.
        if let Some(code) = crate::replace::intermediate() {
            return code;
        }
        let name = match ServiceName::new(self.name) {
            Ok(name) => name,
            Err(err) => return report(self.name, &Failure::Name(err)),
        };
        let command = cli::command(&name, self.about, self.version);
        let invocation = match cli::parse(command.clone(), argv) {
            Ok(invocation) => invocation,
            Err(err) => return usage_error(&name, &err),
        };
        let mut out = std::io::stdout();
        let result = match invocation {
            Invocation::Serve(args) => serve(&name, args),
            Invocation::Rollout(args) => rollout::run(&args, name.as_str(), &mut out)
                .map(|_| ExitCode::SUCCESS)
                .map_err(Failure::from),
            Invocation::Rotation(args) => {
                rotation::run(&args, &name.rotation_flag(), &mut out).map_err(Failure::from)
            }
            Invocation::Units(args) => units::<T>(&name, &args, &command, &mut out),
            Invocation::Replace(args) => {
                crate::replace::control::run(&args, name.as_str(), &mut out)
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(Failure::from)
            }
        };
        result.unwrap_or_else(|err| report(name.as_str(), &err))
    }
}

/// Everything gathered before the runtime serves, in the order that matters.
fn prepare<T: ServiceSettings>(
    name: &ServiceName,
    args: ServeArgs,
    readiness_path: &'static str,
) -> Result<Startup<T>, Failure> {
    #[cfg(feature = "fault-injection")]
    crate::fault::at_start(name.as_str());
    let settings = Loaded::<T>::load(&args, name.as_str())?;
    let fd_limit = fds::raise_soft_limit().map_err(Failure::FdLimit)?;
    fds::check(settings.kit.limits.max_connections, fd_limit)?;
    let manager = ManagerEnv::read();
    let fallback = if settings.kit.require_socket {
        Fallback::Refuse
    } else {
        Fallback::Bind(settings.kit.listen)
    };
    // Started by an old process of this service to replace it: the
    // listening sockets come from it, once this process is ready.
    let inherited = crate::replace::inherited_channel()?;
    let (listeners, unused) = match inherited {
        Some(_) => (Vec::new(), Vec::new()),
        None => listeners::take_from_env(fallback)?,
    };
    let destination = Destination::detect(std::env::var("JOURNAL_STREAM").ok().as_deref());
    let log = logging::init(&settings.kit.log_level, destination, name.as_str())?;
    for fd in unused {
        tracing::warn!(fd = %fd.describe(), "passed socket is not named \"http\"; closed it");
    }
    let notifier = Notifier::new(manager.notify_socket.as_ref())?;
    let intents = Intents::register().map_err(Failure::Signals)?;
    Ok(Startup {
        name: name.as_str(),
        args,
        settings,
        listeners,
        inherited,
        notifier,
        watchdog: manager.watchdog,
        log: Some(log),
        intents,
        rotation: Rotation::new(name.rotation_flag()),
        readiness_path,
    })
}

fn units<T: ServiceSettings>(
    name: &ServiceName,
    args: &render::UnitsArgs,
    command: &clap::Command,
    out: &mut impl Write,
) -> Result<ExitCode, Failure> {
    let files = render::render::<T>(name, args, command)?;
    for path in render::write(&args.out, &files)? {
        let _ = writeln!(out, "wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(outcome: Outcome) -> ExitCode {
    outcome.exit_code()
}

/// One line, with its causes: journal readers see one entry, not several.
fn report(name: &str, err: &Failure) -> ExitCode {
    eprintln!("{name}: error: {}", error_chain(err));
    ExitCode::FAILURE
}

/// Help and version as clap prints them; a usage error as one line, like
/// every other error.
fn usage_error(name: &ServiceName, err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("bad usage");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("{name}: usage error: {first} (see {name} --help)");
    ExitCode::from(2)
}
