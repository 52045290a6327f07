//! Whether this host is in its load balancer's rotation, and the verb that
//! takes it out and puts it back (`NAME rotation out|in|status`).
//!
//! A whole host that leaves (to be stopped, or upgraded while it carries
//! requests a balancer may not retry) must leave the balancer's rotation
//! before any of its instances stops: `/readyz` answers 503 while every
//! instance still serves, the balancer's health checks see it and send new
//! requests to other hosts, and only then do the instances drain.
//!
//! The state is a flag file, not a process's memory: an instance started
//! meanwhile (a rollout step, a watchdog restart) sees it too, every instance
//! sees the same, and no signal or socket to the instances is needed. It
//! lives in /run, a tmpfs, so a reboot brings the host back into rotation.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::settings::parse_duration;

/// Exit status of `NAME rotation status` for a host out of rotation.
pub(crate) const EXIT_OUT: u8 = 3;

/// An instance's view of the flag. Each check is one `stat`, made when a
/// health check asks (`/readyz`), so a change shows at the next check.
#[derive(Debug)]
pub(crate) struct Rotation {
    flag: PathBuf,
    /// What the last check found ([`Seen`]), so each change is logged once
    /// rather than at every health check.
    seen: AtomicU8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Seen {
    In = 0,
    Out = 1,
    /// The flag could not be checked (a directory we may not search).
    Unknown = 2,
}

impl Rotation {
    pub(crate) fn new(flag: impl Into<PathBuf>) -> Self {
        Self {
            flag: flag.into(),
            seen: AtomicU8::new(Seen::In as u8),
        }
    }

    /// Whether the host is out of rotation: the flag file exists. When it
    /// cannot be checked, the answer is "out": the operator may well have
    /// asked for it, and a host wrongly out costs capacity, while a host
    /// wrongly in gets requests as it stops.
    pub(crate) fn is_out(&self) -> bool {
        let checked = self.flag.try_exists();
        let seen = match checked {
            Ok(false) => Seen::In,
            Ok(true) => Seen::Out,
            Err(_) => Seen::Unknown,
        };
        if self.seen.swap(seen as u8, Ordering::Relaxed) != seen as u8 {
            let flag = self.flag.display();
            match checked {
                Ok(false) => tracing::info!(%flag, "back in rotation: /readyz answers 200"),
                Ok(true) => tracing::warn!(
                    %flag,
                    "taken out of rotation (rotation out): /readyz answers 503"
                ),
                Err(err) => tracing::error!(
                    %flag,
                    error = %err,
                    "cannot check the rotation flag; answering /readyz 503 until it can be"
                ),
            }
        }
        seen != Seen::In
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RotationError {
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot check {path}")]
    Check {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{dir} has mode {mode:o}: the instances (a dynamic user) cannot see {flag} through it; \
         make it searchable by others (chmod o+x {dir})"
    )]
    Hidden {
        dir: PathBuf,
        mode: u32,
        flag: PathBuf,
    },
}

/// Takes the host out: writes the flag (and its directory), readable by
/// every user. Returns whether the host was in rotation before.
pub(crate) fn take_out(flag: &Path) -> Result<bool, RotationError> {
    let was_in = !exists(flag)?;
    let create = |source| RotationError::Create {
        path: flag.to_owned(),
        source,
    };
    if let Some(dir) = flag.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(create)?;
        check_searchable(dir, flag)?;
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Written beside it and renamed: an instance never sees a half file,
    // though only its existence counts.
    let staged = flag.with_extension("new");
    let mut file = std::fs::File::create(&staged).map_err(create)?;
    file.write_all(format!("out of rotation since {since} (unix time)\n").as_bytes())
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| std::fs::rename(&staged, flag))
        .map_err(create)?;
    Ok(was_in)
}

/// Puts the host back: removes the flag. Returns whether it was out.
pub(crate) fn put_back(flag: &Path) -> Result<bool, RotationError> {
    match std::fs::remove_file(flag) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RotationError::Remove {
            path: flag.to_owned(),
            source,
        }),
    }
}

fn exists(flag: &Path) -> Result<bool, RotationError> {
    flag.try_exists().map_err(|source| RotationError::Check {
        path: flag.to_owned(),
        source,
    })
}

/// The instances run as another user: each directory on the way to the
/// flag must let others through, or they would answer 200 regardless.
fn check_searchable(dir: &Path, flag: &Path) -> Result<(), RotationError> {
    for ancestor in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        let mode = std::fs::metadata(ancestor)
            .map_err(|source| RotationError::Check {
                path: ancestor.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(RotationError::Hidden {
                dir: ancestor.to_owned(),
                mode: mode & 0o7777,
                flag: flag.to_owned(),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RotationArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Action {
    /// Take this host out: every instance answers /readyz with 503 and
    /// keeps serving, so the load balancer's health checks move new requests
    /// to other hosts before anything here stops
    Out {
        /// Then wait this long before returning: the balancer's time to
        /// notice (HAProxy: fall × inter, plus one inter)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Put this host back: /readyz answers 200 again
    In,
    /// Say whether this host is in rotation; exit status 0 when in, 3 when out
    Status,
}

/// Runs `NAME rotation ACTION` on `flag`, printing what it did to `out`.
pub(crate) fn run(
    args: &RotationArgs,
    flag: &Path,
    out: &mut impl Write,
) -> Result<ExitCode, RotationError> {
    match args.action {
        Action::Out { wait } => {
            let was_in = take_out(flag)?;
            let _ = writeln!(
                out,
                "rotation: {} ({}); /readyz answers 503 on every instance",
                if was_in { "out" } else { "already out" },
                flag.display()
            );
            if let Some(wait) = wait {
                let _ = writeln!(
                    out,
                    "rotation: waiting {} for the load balancer's health checks",
                    humantime::format_duration(wait)
                );
                let _ = out.flush();
                std::thread::sleep(wait);
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::In => {
            let was_out = put_back(flag)?;
            let _ = writeln!(
                out,
                "rotation: {}; /readyz answers 200 on every instance that is not draining",
                if was_out { "back in" } else { "already in" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Status => {
            if exists(flag)? {
                let _ = writeln!(out, "rotation: out ({})", flag.display());
                Ok(ExitCode::from(EXIT_OUT))
            } else {
                let _ = writeln!(out, "rotation: in");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_and_in_flip_what_instances_see() {
        let dir = tempfile::tempdir().unwrap();
        // tempdir makes it 0700; /run is 0755.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let flag = dir.path().join("app/out-of-rotation");
        let rotation = Rotation::new(&flag);
        assert!(!rotation.is_out());
        assert!(take_out(&flag).unwrap(), "was in");
        assert!(rotation.is_out());
        assert!(!take_out(&flag).unwrap(), "already out");
        let mode = std::fs::metadata(&flag).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let dir_mode = std::fs::metadata(flag.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o755);
        assert!(put_back(&flag).unwrap(), "was out");
        assert!(!rotation.is_out());
        assert!(!put_back(&flag).unwrap(), "already in");
    }

    #[test]
    fn a_directory_others_cannot_search_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let hidden = dir.path().join("hidden");
        std::fs::create_dir(&hidden).unwrap();
        std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = take_out(&hidden.join("flag")).unwrap_err().to_string();
        assert!(
            err.contains(&hidden.display().to_string()) && err.contains("mode 700"),
            "{err}"
        );
        assert!(!hidden.join("flag").exists());
    }

    #[test]
    fn status_exits_3_when_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let flag = dir.path().join("flag");
        let status = RotationArgs {
            action: Action::Status,
        };
        let mut said = Vec::new();
        assert_eq!(run(&status, &flag, &mut said).unwrap(), ExitCode::SUCCESS);
        take_out(&flag).unwrap();
        assert_eq!(
            run(&status, &flag, &mut said).unwrap(),
            ExitCode::from(EXIT_OUT)
        );
        let said = String::from_utf8(said).unwrap();
        assert!(
            said.contains("rotation: in\n") && said.contains("rotation: out ("),
            "{said}"
        );
    }
}
