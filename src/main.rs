//! `app`: the reference service. Settings, environment and listeners are
//! gathered before any thread starts; then the runtime serves until drained.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use handover::lifecycle::{self, Startup};
use handover::listeners;
use handover::logging::{self, Destination};
use handover::notify::{ManagerEnv, Notifier};
use handover::routes::App;
use handover::settings::{ServeArgs, Settings};
use handover::signals::Intents;

/// A zero-downtime HTTP service for systemd socket activation.
///
/// Serves the sockets systemd passes (LISTEN_FDS; the one named "http"), or
/// binds --listen when started without them. SIGTERM or SIGINT drains and
/// exits (a second one exits at once); SIGHUP re-reads the settings file.
///
/// Exit status: 0 after a clean drain, 1 on a start-up error, 2 on bad usage,
/// 3 when the drain deadline cut connections, 4 when a second signal cut the drain.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("app: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&cli.serve)?;
    // SAFETY (both): no other thread exists yet; the runtime starts below.
    let manager = unsafe { ManagerEnv::take() };
    let (listeners, unused) = unsafe { listeners::take_from_env(settings.listen)? };
    let destination = Destination::detect(std::env::var("JOURNAL_STREAM").ok().as_deref());
    let log = logging::init(&settings.log_level, destination)?;
    for fd in unused {
        tracing::warn!(fd = %fd.describe(), "passed socket is not named \"http\"; closed it");
    }
    let notifier = Notifier::new(manager.notify_socket.as_ref())?;
    let intents = Intents::register().context("cannot install signal handlers")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let startup = Startup {
        args: cli.serve,
        settings,
        listeners,
        notifier,
        watchdog: manager.watchdog,
        log: Some(log),
        intents,
    };
    let outcome = runtime
        .block_on(lifecycle::run(startup, App::new))
        .context("cannot serve")?;
    // Connections a forced exit abandons are not worth waiting for.
    runtime.shutdown_background();
    Ok(outcome.exit_code())
}
