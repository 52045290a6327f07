//! `app`: the reference service. Settings, environment and listeners are
//! gathered before any thread starts; then the runtime serves until drained.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use handover::fds;
use handover::lifecycle::{self, Startup};
use handover::listeners::{self, Fallback};
use handover::logging::{self, Destination};
use handover::notify::{ManagerEnv, Notifier};
use handover::rollout::{self, RolloutArgs};
use handover::rotation::{self, Rotation, RotationArgs};
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
#[command(
    version,
    about,
    long_about,
    after_long_help = FILES_HELP,
    disable_help_subcommand = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Where the packaged service keeps things; `app --help` and the man page show it.
const FILES_HELP: &str = "\
Every flag can also be set in the environment as APP_<FLAG> (APP_DRAIN_DEADLINE=5s) \
or in the settings file as a key (drain_deadline = \"5s\").

Installed from a package, the settings file is /etc/app/app.toml, and the units \
app.socket, app@.service and app.target are in /usr/lib/systemd/system. \
Deploy with `app rollout`; apply a changed settings file with `app rollout --config-only`. \
Before stopping a whole host behind a load balancer, take it out with `app rotation out`.

See also: systemctl(1), systemd.socket(5), journalctl(1).";

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Deploy: restart every running app@ instance one at a time, each once
    /// the previous one is ready; stop at the first that fails.
    ///
    /// Each step clears the instance's start rate limit (systemctl
    /// reset-failed), restarts it (or reloads it, with --config-only), and
    /// checks that it runs. Instances not yet reached keep serving the old
    /// version when a step fails. Failed instances are included, so rolling
    /// out a fixed release repairs them.
    ///
    /// Exit status: 0 when every instance is ready, 1 when one is not (the
    /// message names it, its systemd result, and the instances left untouched)
    /// or when none is running (unless --if-running).
    #[command(long_about)]
    Rollout(RolloutArgs),
    /// Take this whole host out of its load balancer's rotation, or put it
    /// back: /readyz answers 503 on every instance while they keep serving.
    ///
    /// Run it before stopping every instance of a host (or upgrading it
    /// while it carries requests the balancer may not retry), so the
    /// balancer's health checks move new requests to other hosts first. The
    /// state is the file /run/app/out-of-rotation: instances started
    /// meanwhile see it too, and a reboot clears it.
    #[command(long_about)]
    Rotation(RotationArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let result = match cli.command {
        Some(Cmd::Rollout(args)) => rollout::run(&args, &mut std::io::stdout())
            .map(|_| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Some(Cmd::Rotation(args)) => rotation::run(
            &args,
            std::path::Path::new(rotation::DEFAULT_FLAG),
            &mut std::io::stdout(),
        )
        .map_err(anyhow::Error::from),
        None => serve(cli.serve),
    };
    result.unwrap_or_else(|err| {
        eprintln!("app: error: {err:#}");
        ExitCode::FAILURE
    })
}

/// Help and version as clap prints them; a usage error as one line, like
/// every other error (journal readers see one entry, not three).
fn usage_error(err: &clap::Error) -> ExitCode {
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
    eprintln!("app: usage error: {first} (see app --help)");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&args)?;
    let fd_limit = fds::raise_soft_limit().context("cannot read the file descriptor limit")?;
    fds::check(settings.limits.max_connections, fd_limit)?;
    // SAFETY (both): no other thread exists yet; the runtime starts below.
    let manager = unsafe { ManagerEnv::take() };
    let fallback = if settings.require_socket {
        Fallback::Refuse
    } else {
        Fallback::Bind(settings.listen)
    };
    let (listeners, unused) = unsafe { listeners::take_from_env(fallback)? };
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
    #[cfg(feature = "fault-injection")]
    handover::fault::install(runtime.handle().clone())
        .context("cannot install the fault switch")?;
    let startup = Startup {
        args,
        settings,
        listeners,
        notifier,
        watchdog: manager.watchdog,
        log: Some(log),
        intents,
        rotation: Rotation::new(rotation::DEFAULT_FLAG),
    };
    let outcome = runtime
        .block_on(lifecycle::run(startup, App::new))
        .context("cannot serve")?;
    // Connections a forced exit abandons are not worth waiting for.
    runtime.shutdown_background();
    Ok(outcome.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The packages ship man pages rendered from this CLI. They are committed
    /// (cargo-deb and cargo-generate-rpm copy files; they run no generator), so
    /// this keeps them in step: `UPDATE_MAN=1 cargo test man_pages` rewrites them.
    #[test]
    fn man_pages_match_the_cli() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/man");
        let app = Cli::command();
        // clap's names are 'static without its "string" feature.
        let sub = |name: &str, page: &'static str, bin: &'static str| {
            app.find_subcommand(name)
                .unwrap_or_else(|| panic!("a {name} subcommand"))
                .clone()
                .name(page)
                .bin_name(bin)
                .version(env!("CARGO_PKG_VERSION"))
        };
        let mut stale = Vec::new();
        for (file, command) in [
            ("app.1", app.clone()),
            (
                "app-rollout.1",
                sub("rollout", "app-rollout", "app rollout"),
            ),
            (
                "app-rotation.1",
                sub("rotation", "app-rotation", "app rotation"),
            ),
        ] {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .expect("render a man page");
            let path = dir.join(file);
            if std::env::var_os("UPDATE_MAN").is_some() {
                std::fs::write(&path, &page).expect("write the man page");
            } else if std::fs::read(&path).ok().as_deref() != Some(page.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "man pages out of date with the CLI: {}; run `UPDATE_MAN=1 cargo test man_pages` and commit them",
            stale.join(", ")
        );
    }
}
