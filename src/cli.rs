//! The command line of a service built on the kit, made for its name: the
//! serving flags (each also a `NAME_*` variable and a settings-file key) and
//! the operator verbs every service binary carries (`rollout`, `rotation`,
//! `units`). Help texts, man pages and messages all say the service's name.

use std::ffi::OsString;

use clap::{ArgMatches, Args, Command, FromArgMatches, Subcommand};

use crate::name::ServiceName;
use crate::render::UnitsArgs;
use crate::replace::control::ReplaceArgs;
use crate::rollout::RolloutArgs;
use crate::rotation::RotationArgs;
use crate::settings::ServeArgs;

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Invocation {
    Serve(ServeArgs),
    Rollout(RolloutArgs),
    Rotation(RotationArgs),
    Units(UnitsArgs),
    Replace(ReplaceArgs),
}

#[derive(Debug, Subcommand)]
enum Verb {
    Rollout(RolloutArgs),
    Rotation(RotationArgs),
    Units(UnitsArgs),
    Replace(ReplaceArgs),
}

/// The service's whole CLI. `about` is the service's one-line description.
pub(crate) fn command(name: &ServiceName, about: Option<&str>, version: Option<&str>) -> Command {
    let mut cli = ServeArgs::augment_args(Command::new(name.as_str()))
        .about(about.map(str::to_owned).unwrap_or_else(|| {
            format!("{name}: an HTTP service that deploys without losing a request")
        }))
        .long_about(long_about(name, about))
        .after_long_help(files_help(name))
        .disable_help_subcommand(true)
        .args_conflicts_with_subcommands(true);
    if let Some(version) = version {
        cli = cli.version(version.to_owned());
    }
    // Every serving flag is also NAME_<FLAG> in the environment.
    let ids: Vec<String> = cli
        .get_arguments()
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| arg.get_id().to_string())
        .collect();
    for id in ids {
        let var = name.env_var(&id);
        cli = cli.mut_arg(id, |arg| arg.env(var));
    }
    Verb::augment_subcommands(cli)
        .mut_subcommand("rollout", |verb| {
            verb.about(format!(
                "Deploy: reload every running {name}@ instance in place, one at a time, each \
                 once the previous one serves; stop at the first that fails"
            ))
            .long_about(rollout_help(name))
        })
        .mut_subcommand("rotation", |verb| {
            verb.about(format!(
                "Take this whole host out of its load balancer's rotation, or put it back: \
                 /readyz answers 503 on every {name} instance while they keep serving"
            ))
            .long_about(rotation_help(name))
        })
        .mut_subcommand("replace", |verb| {
            verb.about(format!(
                "Replace the running {name} process PID with the binary now on disk, in place: \
                 what `systemctl reload {name}@N` runs"
            ))
            .long_about(replace_help(name))
        })
        .mut_subcommand("units", |verb| {
            verb.about(format!(
                "Write {name}'s systemd units, package scripts, settings file and man pages"
            ))
            .long_about(units_help(name))
        })
}

/// Parses `args` (the program name first).
pub(crate) fn parse(
    cli: Command,
    args: impl IntoIterator<Item = OsString>,
) -> Result<Invocation, clap::Error> {
    let matches = cli.try_get_matches_from(args)?;
    invocation(&matches)
}

fn invocation(matches: &ArgMatches) -> Result<Invocation, clap::Error> {
    if matches.subcommand_name().is_none() {
        return ServeArgs::from_arg_matches(matches).map(Invocation::Serve);
    }
    Ok(match Verb::from_arg_matches(matches)? {
        Verb::Rollout(args) => Invocation::Rollout(args),
        Verb::Rotation(args) => Invocation::Rotation(args),
        Verb::Units(args) => Invocation::Units(args),
        Verb::Replace(args) => Invocation::Replace(args),
    })
}

fn long_about(name: &ServiceName, about: Option<&str>) -> String {
    let first = about
        .map(|about| format!("{about}\n\n"))
        .unwrap_or_default();
    format!(
        "{first}Serves the sockets systemd passes (LISTEN_FDS; the one named \"http\"), or binds \
         --listen when started without them. SIGTERM or SIGINT drains and exits (a second one \
         exits at once); SIGHUP re-reads the settings file; SIGUSR1 (`systemctl reload`, via \
         `{name} replace`) replaces the process with the binary on disk, handing over the \
         sockets and every keep-alive connection.\n\n\
         Exit status: 0 after a clean drain, 1 on a start-up error, 2 on bad usage, 3 when the \
         drain deadline cut connections, 4 when a second signal cut the drain.\n\n\
         Built on handover {}.",
        env!("CARGO_PKG_VERSION")
    )
}

/// Where the packaged service keeps things; `NAME --help` and the man page show it.
fn files_help(name: &ServiceName) -> String {
    let env = name.env_prefix();
    let config = name.config_path();
    format!(
        "Every flag can also be set in the environment as {env}_<FLAG> ({env}_DRAIN_DEADLINE=5s) \
         or in the settings file as a key (drain_deadline = \"5s\"); the service's own settings \
         are in the file's [{name}] table.\n\n\
         Installed from a package, the settings file is {}, and the units \
         {name}.socket, {name}@.service and {name}.target are in /usr/lib/systemd/system. \
         Deploy with `{name} rollout`; apply a changed settings file with `{name} rollout \
         --config-only`. Before stopping a whole host behind a load balancer, take it out with \
         `{name} rotation out`.\n\n\
         See also: systemctl(1), systemd.socket(5), journalctl(1).",
        config.display()
    )
}

fn rollout_help(name: &ServiceName) -> String {
    format!(
        "Deploy: reload every running {name}@ instance in place, one at a time, each once the \
         previous one serves; stop at the first that fails.\n\n\
         Each step clears the instance's start rate limit (systemctl reset-failed), reloads it \
         (systemctl reload: the binary on disk replaces the running process, taking over its \
         sockets and keep-alive connections), and checks that a new process runs. Instances \
         that are not running, or run a release from before in-place reloads, are restarted; \
         --restart restarts every one (for changes to the socket or unit files), and \
         --config-only only sends SIGHUP (the settings file, re-read in place). Instances not \
         yet reached keep serving the old version when a step fails. Failed instances are \
         included, so rolling out a fixed release repairs them.\n\n\
         Exit status: 0 when every instance is ready, 1 when one is not (the message names it, \
         its systemd result, and the instances left untouched) or when none is running \
         (unless --if-running)."
    )
}

fn replace_help(name: &ServiceName) -> String {
    format!(
        "Replace the running {name} process PID with the binary now on disk, in place: what \
         `systemctl reload {name}@N` runs (the units' ExecReload=).\n\n\
         PID starts the binary on disk with its own arguments, in its own unit and sandbox; the \
         new process re-reads the settings file and builds the service. Once it is ready, PID \
         hands it the listening sockets and its place with systemd (MAINPID=), then moves each \
         idle HTTP/1.1 keep-alive connection to it between two requests and drains the rest \
         (HTTP/2 GOAWAY, WebSocket Close) as a stop would. Clients see no closed connection.\n\n\
         Waits until the new process serves. Exit status: 0 once it does; 1 when it exited, was \
         not ready within 10s, or PID cannot be replaced (the reason is in PID's log): PID then \
         goes on serving, untouched.\n\n\
         What a reload cannot change: the listening address (it belongs to {name}.socket) and \
         the settings that say so in the log. Change those with a restart (`{name} rollout \
         --restart`)."
    )
}

fn rotation_help(name: &ServiceName) -> String {
    format!(
        "Take this whole host out of its load balancer's rotation, or put it back: /readyz \
         answers 503 on every {name} instance while they keep serving.\n\n\
         Run it before stopping every instance of a host (or upgrading it while it carries \
         requests the balancer may not retry), so the balancer's health checks move new \
         requests to other hosts first. The state is the file {}: instances started \
         meanwhile see it too, and a reboot clears it.",
        name.rotation_flag().display()
    )
}

fn units_help(name: &ServiceName) -> String {
    format!(
        "Write {name}'s systemd units ({name}.socket, {name}@.service, {name}.target), the \
         .deb and .rpm maintainer scripts, the settings file with its defaults, and the man \
         pages, all for the name {name}, under DIR/systemd and DIR/packaging.\n\n\
         The units are the kit's: instances share {name}.socket, start gated on READY=1, drain \
         on stop within TimeoutStopSec=, and run sandboxed (systemd-analyze security: 1.0 or \
         less). Package upgrades run `{name} rollout --if-running`: a rolling in-place reload."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_as(name: &'static str, args: &[&str]) -> Result<Invocation, clap::Error> {
        let name = ServiceName::new(name).unwrap();
        let mut argv = vec![OsString::from(name.as_str())];
        argv.extend(args.iter().map(OsString::from));
        parse(command(&name, None, Some("1.0.0")), argv)
    }

    #[test]
    fn the_verbs_and_the_flags_parse() {
        assert!(matches!(parse_as("orders", &[]), Ok(Invocation::Serve(_))));
        match parse_as("orders", &["--drain-deadline", "5s"]) {
            Ok(Invocation::Serve(args)) => {
                assert_eq!(args.drain_deadline, Some(std::time::Duration::from_secs(5)))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_as("orders", &["rollout", "--if-running"]),
            Ok(Invocation::Rollout(args)) if args.if_running && args.template.is_none()
        ));
        assert!(matches!(
            parse_as("orders", &["rotation", "status"]),
            Ok(Invocation::Rotation(_))
        ));
        assert!(matches!(
            parse_as("orders", &["units", "--out", "x"]),
            Ok(Invocation::Units(_))
        ));
        assert!(parse_as("orders", &["--slow-max", "1s"]).is_err());
        assert!(parse_as("orders", &["--listen", "1.2.3.4:5", "rollout"]).is_err());
    }

    #[test]
    fn help_and_variables_say_the_services_name() {
        let name = ServiceName::new("orders").unwrap();
        let mut cli = command(&name, None, Some("1.0.0"));
        let help = cli.render_long_help().to_string();
        assert!(help.contains("ORDERS_DRAIN_DEADLINE"), "{help}");
        assert!(help.contains("/etc/orders/orders.toml"), "{help}");
        assert!(help.contains("orders rollout"), "{help}");
        assert!(!help.contains("APP_"), "{help}");
        let drain = cli
            .get_arguments()
            .find(|a| a.get_id() == "drain_deadline")
            .unwrap();
        assert_eq!(
            drain.get_env(),
            Some(std::ffi::OsStr::new("ORDERS_DRAIN_DEADLINE"))
        );
    }
}
