//! `app`: the reference service. Settings, environment and listeners are
//! gathered before any thread starts; then the runtime serves until drained.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use handover::lifecycle::{self, Startup};
use handover::listeners;
use handover::logging::{self, Destination};
use handover::notify::{ManagerEnv, Notifier};
use handover::rollout::{self, RolloutArgs};
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
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Deploy: restart every running app@ instance one at a time, each once
    /// the previous one is ready; stop at the first that fails.
    Rollout(RolloutArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Rollout(args)) => rollout::run(&args, &mut std::io::stdout())
            .map(|_| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        None => serve(cli.serve),
    };
    result.unwrap_or_else(|err| {
        eprintln!("app: error: {err:#}");
        ExitCode::FAILURE
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&args)?;
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
        args,
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
