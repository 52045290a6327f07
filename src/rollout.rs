//! The deploy verb: reload every running instance of the template one at a
//! time, each waiting until its new process serves (`systemctl reload` runs
//! `NAME replace`, which returns only then), and stop at the first failure,
//! leaving the instances not yet reached serving the old version. An
//! instance that is not running, or runs a release from before in-place
//! reloads, is restarted instead (`Type=notify`: `systemctl restart` returns
//! once `READY=1` arrives); `--restart` restarts every one, for what a
//! reload cannot change; `--config-only` sends SIGHUP (settings re-read in
//! the running process). Each step first clears the instance's failed state and
//! start rate limit (`systemctl reset-failed`): app@.service sets no limit,
//! but a template of the user's own (`--template`) may keep systemd's
//! default, which counts deliberate restarts too.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub(crate) struct RolloutArgs {
    /// Restart each instance instead of reloading it in place: for what a
    /// reload cannot change (the socket unit, the unit file's own settings)
    #[arg(long, conflicts_with = "config_only")]
    pub restart: bool,

    /// Only re-read the settings file in each running process (SIGHUP); no
    /// new binary. A reload re-reads it too
    #[arg(long)]
    pub config_only: bool,

    /// The template whose instances to roll: NAME@.service [default: the service's name]
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,

    /// With no instance running, do nothing and succeed instead of failing.
    /// Package upgrades use it: an upgrade starts nothing the administrator stopped
    #[arg(long)]
    pub if_running: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RolloutError {
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Query { command: String, stderr: String },
    #[error("no running instance of {0}@.service to roll out")]
    NothingRunning(String),
    #[error(
        "{unit} did not become ready after {verb} ({state}); stopped the rollout, \
         {untouched} left on the old version"
    )]
    Failed {
        unit: String,
        verb: &'static str,
        state: String,
        untouched: String,
    },
}

/// Runs the rollout of `default_template`'s instances (or `--template`'s),
/// printing each step to `out`. Returns how many instances it rolled.
pub(crate) fn run(
    args: &RolloutArgs,
    default_template: &str,
    out: &mut impl Write,
) -> Result<usize, RolloutError> {
    let systemctl = Systemctl;
    let template = args.template.as_deref().unwrap_or(default_template);
    let units = running_instances(&systemctl, template)?;
    if units.is_empty() {
        if args.if_running {
            let _ = writeln!(
                out,
                "rollout: no {template}@ instance is running; nothing to do"
            );
            return Ok(0);
        }
        return Err(RolloutError::NothingRunning(template.to_owned()));
    }
    let _ = writeln!(
        out,
        "rollout: {} {} one at a time: {}",
        if args.config_only {
            "re-read the settings of"
        } else if args.restart {
            "restart"
        } else {
            "reload"
        },
        units.len(),
        units.join(", ")
    );
    let started = Instant::now();
    for (i, unit) in units.iter().enumerate() {
        let before = systemctl.state(unit)?;
        let old_pid = before.main_pid.clone();
        let verb = step(args, &before);
        let _ = writeln!(
            out,
            "rollout: {} {unit} (pid {old_pid}) ...",
            verb.describe()
        );
        let step_started = Instant::now();
        // A deliberate deploy is not a crash loop: clear a failed state and
        // any start rate limit (5 starts in 10 s, where a unit keeps
        // systemd's default) so repeated rollouts are not refused.
        systemctl.call(&["reset-failed", unit])?;
        let done = match verb {
            Step::Reload => systemctl.call(&["reload", unit])?,
            Step::Restart => systemctl.call(&["restart", unit])?,
            Step::Settings => {
                systemctl.call(&["kill", "--kill-whom=main", "--signal=SIGHUP", unit])?
            }
        };
        let took = step_started.elapsed();
        let state = systemctl.state(unit)?;
        // A reload that leaves the old process main replaced nothing.
        let replaced = verb != Step::Reload || state.main_pid != old_pid;
        if !done || !state.is_ready() || !replaced {
            let untouched = match &units[i + 1..] {
                [] => "no other instance".to_owned(),
                rest => rest.join(", "),
            };
            return Err(RolloutError::Failed {
                unit: unit.clone(),
                verb: verb.name(),
                state: state.to_string(),
                untouched,
            });
        }
        // A restart's time is mostly the old process's drain: say how it
        // splits, so a slow drain is not read as a slow start.
        let phases = match (verb, state.restart_phases()) {
            (Step::Restart, Some((drain, start))) => format!(
                ": the old process drained in {:.2}s, the new one was ready {:.2}s later",
                drain.as_secs_f64(),
                start.as_secs_f64()
            ),
            _ => String::new(),
        };
        let new_pid = &state.main_pid;
        let _ = writeln!(
            out,
            "rollout: {unit} ready in {:.2}s{phases} (pid {old_pid} -> {new_pid})",
            took.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "rollout: done, {} instances in {:.2}s",
        units.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(units.len())
}

/// What one step does to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Replace the process in place (`systemctl reload`: ExecReload=).
    Reload,
    Restart,
    /// SIGHUP: the running process re-reads its settings.
    Settings,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Reload => "reload",
            Step::Restart => "restart",
            Step::Settings => "SIGHUP",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Reload => "reload",
            Step::Restart => "restart",
            Step::Settings => "re-read the settings of",
        }
    }
}

/// Reload a running instance whose process takes it; restart the rest (not
/// running, or a release from before in-place reloads, which SIGUSR1 would
/// kill).
fn step(args: &RolloutArgs, state: &UnitState) -> Step {
    if args.config_only {
        return Step::Settings;
    }
    if args.restart || !state.is_ready() {
        return Step::Restart;
    }
    let takes_reload = std::fs::read_to_string(format!("/proc/{}/status", state.main_pid))
        .ok()
        .and_then(|status| crate::replace::control::catches_sigusr1(&status));
    if takes_reload == Some(true) {
        Step::Reload
    } else {
        Step::Restart
    }
}

/// Instances that are running or trying to (a failed one is included, so a
/// rollout of a fixed binary also repairs an earlier failed one), in
/// instance order.
fn running_instances(systemctl: &Systemctl, template: &str) -> Result<Vec<String>, RolloutError> {
    let listing = systemctl.output(&[
        "list-units",
        "--type=service",
        "--state=active,activating,reloading,failed",
        "--plain",
        "--no-legend",
        "--no-pager",
        &format!("{template}@*.service"),
    ])?;
    Ok(parse_instances(&listing, template))
}

/// The unit names in `systemctl list-units --plain --no-legend` output.
pub(crate) fn parse_instances(listing: &str, template: &str) -> Vec<String> {
    let prefix = format!("{template}@");
    let mut units: Vec<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|unit| unit.starts_with(&prefix) && unit.ends_with(".service"))
        .map(str::to_owned)
        .collect();
    // Numeric instances in numeric order (app@2 before app@10), others after.
    units.sort_by_key(|unit| {
        let instance = &unit[prefix.len()..unit.len() - ".service".len()];
        (
            instance.parse::<u64>().unwrap_or(u64::MAX),
            instance.to_owned(),
        )
    });
    units.dedup();
    units
}

/// A unit's state after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitState {
    pub active: String,
    pub sub: String,
    pub result: String,
    pub exit_status: String,
    pub main_pid: String,
    /// systemd's CLOCK_MONOTONIC stamps (µs; 0 when never): the last stop
    /// began (ActiveExit), ended (InactiveEnter), and the unit last became
    /// active, which for `Type=notify` is READY=1 (ActiveEnter).
    pub stop_began_us: u64,
    pub stop_ended_us: u64,
    pub ready_us: u64,
}

impl UnitState {
    fn is_ready(&self) -> bool {
        self.active == "active" && self.sub == "running"
    }

    /// After a restart: how long the old process took to stop (its drain),
    /// and from then until the new one said READY=1. `None` when systemd's
    /// stamps are not in that order (the unit was not running before).
    fn restart_phases(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        let us = std::time::Duration::from_micros;
        if self.stop_began_us == 0
            || self.stop_began_us > self.stop_ended_us
            || self.stop_ended_us > self.ready_us
        {
            return None;
        }
        Some((
            us(self.stop_ended_us - self.stop_began_us),
            us(self.ready_us - self.stop_ended_us),
        ))
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state {}/{}, result {}, exit status {}",
            self.active, self.sub, self.result, self.exit_status
        )
    }
}

/// `systemctl` on the PATH, as the operator would run it.
struct Systemctl;

impl Systemctl {
    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut command = Command::new("systemctl");
        command.args(args);
        (command, format!("systemctl {}", args.join(" ")))
    }

    /// Runs a job (restart, reload); true when systemctl says it succeeded.
    /// Its own messages go to our stderr, where the operator sees them.
    fn call(&self, args: &[&str]) -> Result<bool, RolloutError> {
        let (mut command, text) = self.command(args);
        command
            .status()
            .map(|s| s.success())
            .map_err(|source| RolloutError::Spawn {
                command: text,
                source,
            })
    }

    fn output(&self, args: &[&str]) -> Result<String, RolloutError> {
        let (mut command, text) = self.command(args);
        let out = command.output().map_err(|source| RolloutError::Spawn {
            command: text.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(RolloutError::Query {
                command: text,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn state(&self, unit: &str) -> Result<UnitState, RolloutError> {
        let text = self.output(&[
            "show",
            "-p",
            "ActiveState,SubState,Result,ExecMainStatus,MainPID,ActiveExitTimestampMonotonic,\
             InactiveEnterTimestampMonotonic,ActiveEnterTimestampMonotonic",
            unit,
        ])?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("")
                .to_owned()
        };
        Ok(UnitState {
            active: value("ActiveState"),
            sub: value("SubState"),
            result: value("Result"),
            exit_status: value("ExecMainStatus"),
            main_pid: value("MainPID"),
            stop_began_us: value("ActiveExitTimestampMonotonic").parse().unwrap_or(0),
            stop_ended_us: value("InactiveEnterTimestampMonotonic")
                .parse()
                .unwrap_or(0),
            ready_us: value("ActiveEnterTimestampMonotonic").parse().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_splits_into_the_old_drain_and_the_new_start() {
        let state = |began, ended, ready| UnitState {
            active: "active".into(),
            sub: "running".into(),
            result: "success".into(),
            exit_status: "0".into(),
            main_pid: "2".into(),
            stop_began_us: began,
            stop_ended_us: ended,
            ready_us: ready,
        };
        let ms = std::time::Duration::from_millis;
        assert_eq!(
            state(1_000_000, 10_000_000, 10_150_000).restart_phases(),
            Some((ms(9_000), ms(150)))
        );
        // Never stopped before (a first start), or stamps out of order.
        assert_eq!(state(0, 0, 5).restart_phases(), None);
        assert_eq!(state(9, 5, 10).restart_phases(), None);
    }

    #[test]
    fn instances_are_read_from_list_units_in_numeric_order() {
        let listing = "\
app@10.service loaded active running app instance 10
app@2.service  loaded active running app instance 2
app@blue.service loaded failed failed app instance blue
app@1.service  loaded activating auto-restart app instance 1
other@1.service loaded active running something else
";
        assert_eq!(
            parse_instances(listing, "app"),
            vec![
                "app@1.service",
                "app@2.service",
                "app@10.service",
                "app@blue.service"
            ]
        );
        assert!(parse_instances("", "app").is_empty());
    }

    #[test]
    fn failure_messages_name_the_instance_and_its_result() {
        let err = RolloutError::Failed {
            unit: "app@1.service".into(),
            verb: "restart",
            state: UnitState {
                active: "activating".into(),
                sub: "auto-restart".into(),
                result: "exit-code".into(),
                exit_status: "1".into(),
                main_pid: "0".into(),
                stop_began_us: 0,
                stop_ended_us: 0,
                ready_us: 0,
            }
            .to_string(),
            untouched: "app@2.service".into(),
        };
        assert_eq!(
            err.to_string(),
            "app@1.service did not become ready after restart (state activating/auto-restart, \
             result exit-code, exit status 1); stopped the rollout, app@2.service left on the old version"
        );
    }
}
