//! Settings: command-line flags with environment fallbacks, an optional TOML
//! file, and built-in defaults, in that order of precedence.
//!
//! The file is re-read on SIGHUP; flags and environment variables keep winning
//! over it, so a reload can only change what they leave unset. Every value is
//! validated in one place and errors name the setting the way the file spells it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_INSTANCE: &str = "standalone";
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Well below the unit's `TimeoutStopSec=` (see `systemd/app@.service`), so
/// our own deadline, which logs what it cut, always fires before systemd's
/// SIGKILL, which logs nothing useful.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SLOW_MAX: Duration = Duration::from_secs(60);
/// Per instance. About 20 KiB of memory each when busy (77 MiB at 4,096 in
/// the benchmarks), and one file descriptor.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// A request head (request line and headers) larger than this gets 431.
/// Node's default is 16 KiB, nginx's 32 KiB (4 x 8k buffers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// A request body declared larger than this gets 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// hyper refuses a read buffer smaller than this (it asserts).
pub const MIN_HEADER_BYTES: usize = 8192;
/// More than this is a typo: every connection could buffer it.
const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;
/// More connections per instance than this is a typo, not a capacity plan.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Anything longer than this is a typo, not a timeout.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The serving flags. Each is also read from an `APP_*` environment variable
/// and from the settings file; the help text gives the default.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Settings file (TOML, keys as below with underscores), re-read on SIGHUP [default: none]
    #[arg(long, env = "APP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to bind when systemd passes no socket [default: 127.0.0.1:8080]
    #[arg(long, env = "APP_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Instance name shown by /version and in logs (the units pass %i) [default: standalone]
    #[arg(long, env = "APP_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives [default: info]
    #[arg(long, env = "APP_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Longest a drain may take before remaining connections are cut [default: 10s]
    #[arg(long, env = "APP_DRAIN_DEADLINE", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_deadline: Option<Duration>,

    /// While draining, how long an idle keep-alive connection may still send one last request [default: 1s]
    #[arg(long, env = "APP_IDLE_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub idle_grace: Option<Duration>,

    /// How long a client has to send a complete request head once it starts one [default: 10s]
    #[arg(long, env = "APP_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,

    /// How long a connection may sit without a request before it is closed [default: 60s]
    #[arg(long, env = "APP_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Longest delay /slow?ms=N grants; longer asks are capped [default: 60s]
    #[arg(long, env = "APP_SLOW_MAX", value_name = "DURATION", value_parser = parse_duration)]
    pub slow_max: Option<Duration>,

    /// Connections one instance serves at once; more wait in the socket's queue [default: 4096]
    #[arg(long, env = "APP_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Largest request head (request line and headers); larger gets 431 [default: 32768]
    #[arg(long, env = "APP_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Largest request body; a larger Content-Length gets 413 [default: 1048576]
    #[arg(long, env = "APP_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Refuse to start unless systemd passes a socket, instead of binding --listen (the units set it)
    #[arg(long, env = "APP_REQUIRE_SOCKET", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    pub require_socket: bool,
}

/// The settings file; every key is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<SocketAddr>,
    pub instance: Option<String>,
    pub log_level: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    pub drain_deadline: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_grace: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub slow_max: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
    pub require_socket: Option<bool>,
}

/// The timeouts one connection obeys; they can change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub idle_grace: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
        }
    }
}

/// What one instance accepts from clients. Fixed for the life of a process:
/// a reload reports a change and keeps the old values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; at the limit the instance stops accepting
    /// and closes idle keep-alive connections after `idle_grace`.
    pub max_connections: usize,
    /// Largest request head; hyper answers 431 beyond it.
    pub max_header_bytes: usize,
    /// Largest declared request body; the kit answers 413 beyond it.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Never bind `listen`: without a passed socket, fail to start.
    pub require_socket: bool,
    pub instance: String,
    pub log_level: String,
    pub drain_deadline: Duration,
    pub timeouts: ConnectionTimeouts,
    pub slow_max: Duration,
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("setting {name} = {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Accepts `10s`, `500ms`, `1m 30s`, and plain integers as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write a duration such as 10s or 500ms)"))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(de)? {
        Raw::Secs(secs) => Ok(Some(Duration::from_secs(secs))),
        Raw::Text(text) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl FileSettings {
    pub fn parse(path: &Path, text: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|err| SettingsError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().replace('\n', " "),
        })
    }

    pub fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

impl Settings {
    /// Reads the settings file named by `args` (if any) and resolves everything.
    pub fn load(args: &ServeArgs) -> Result<Self, SettingsError> {
        let file = match &args.config {
            Some(path) => FileSettings::read(path)?,
            None => FileSettings::default(),
        };
        Self::resolve(args, &file)
    }

    /// Flags (and environment) over the file over the defaults, then validated.
    pub fn resolve(args: &ServeArgs, file: &FileSettings) -> Result<Self, SettingsError> {
        let settings = Settings {
            config: args.config.clone(),
            listen: args.listen.or(file.listen).unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .expect("the default address is valid")
            }),
            instance: args
                .instance
                .clone()
                .or_else(|| file.instance.clone())
                .unwrap_or_else(|| DEFAULT_INSTANCE.to_owned()),
            log_level: args
                .log_level
                .clone()
                .or_else(|| file.log_level.clone())
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            drain_deadline: args
                .drain_deadline
                .or(file.drain_deadline)
                .unwrap_or(DEFAULT_DRAIN_DEADLINE),
            timeouts: ConnectionTimeouts {
                header_read: args
                    .header_read_timeout
                    .or(file.header_read_timeout)
                    .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
                idle: args
                    .idle_timeout
                    .or(file.idle_timeout)
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT),
                idle_grace: args
                    .idle_grace
                    .or(file.idle_grace)
                    .unwrap_or(DEFAULT_IDLE_GRACE),
            },
            require_socket: args.require_socket || file.require_socket.unwrap_or(false),
            slow_max: args.slow_max.or(file.slow_max).unwrap_or(DEFAULT_SLOW_MAX),
            limits: Limits {
                max_connections: args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                max_header_bytes: args
                    .max_header_bytes
                    .or(file.max_header_bytes)
                    .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
                max_body_bytes: args
                    .max_body_bytes
                    .or(file.max_body_bytes)
                    .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |name, value: String, reason: &str| SettingsError::Invalid {
            name,
            value,
            reason: reason.to_owned(),
        };
        let durations = [
            ("drain_deadline", self.drain_deadline),
            ("idle_grace", self.timeouts.idle_grace),
            ("header_read_timeout", self.timeouts.header_read),
            ("idle_timeout", self.timeouts.idle),
            ("slow_max", self.slow_max),
        ];
        for (name, value) in durations {
            let shown = humantime::format_duration(value).to_string();
            if value.is_zero() {
                return Err(invalid(name, shown, "must be more than zero"));
            }
            if value > MAX_DURATION {
                return Err(invalid(name, shown, "must be at most 1h"));
            }
        }
        if self.timeouts.idle_grace >= self.drain_deadline {
            return Err(invalid(
                "idle_grace",
                humantime::format_duration(self.timeouts.idle_grace).to_string(),
                "must be shorter than drain_deadline, or idle connections would hold every drain to its deadline",
            ));
        }
        let limits = &self.limits;
        if !(1..=MAX_CONNECTIONS).contains(&limits.max_connections) {
            return Err(invalid(
                "max_connections",
                limits.max_connections.to_string(),
                &format!("must be from 1 to {MAX_CONNECTIONS}"),
            ));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&limits.max_header_bytes) {
            return Err(invalid(
                "max_header_bytes",
                limits.max_header_bytes.to_string(),
                &format!("must be from {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"),
            ));
        }
        if self.instance.is_empty() || self.instance.chars().any(char::is_control) {
            return Err(invalid(
                "instance",
                self.instance.clone(),
                "must be non-empty printable text",
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(invalid(
                "log_level",
                self.log_level.clone(),
                &format!("not a log filter: {err}"),
            ));
        }
        Ok(())
    }

    /// Re-reads the file for a reload. Returns the new settings and the names
    /// of changed settings that only a restart applies (they keep their old value).
    pub fn reload(&self, args: &ServeArgs) -> Result<(Self, Vec<&'static str>), SettingsError> {
        let mut next = Self::load(args)?;
        let mut restart_only = Vec::new();
        if next.listen != self.listen {
            restart_only.push("listen");
            next.listen = self.listen;
        }
        if next.instance != self.instance {
            restart_only.push("instance");
            next.instance = self.instance.clone();
        }
        if next.require_socket != self.require_socket {
            restart_only.push("require_socket");
            next.require_socket = self.require_socket;
        }
        let (old, new) = (self.limits, next.limits);
        for (name, changed) in [
            (
                "max_connections",
                old.max_connections != new.max_connections,
            ),
            (
                "max_header_bytes",
                old.max_header_bytes != new.max_header_bytes,
            ),
            ("max_body_bytes", old.max_body_bytes != new.max_body_bytes),
        ] {
            if changed {
                restart_only.push(name);
            }
        }
        next.limits = self.limits;
        Ok((next, restart_only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileSettings, SettingsError> {
        FileSettings::parse(Path::new("app.toml"), text)
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::resolve(&ServeArgs::default(), &FileSettings::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.instance, "standalone");
        assert_eq!(s.drain_deadline, DEFAULT_DRAIN_DEADLINE);
        assert_eq!(s.timeouts, ConnectionTimeouts::default());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let f = file("drain_deadline = \"3s\"\nidle_grace = \"200ms\"\ninstance = \"from-file\"")
            .unwrap();
        let args = ServeArgs {
            drain_deadline: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &f).unwrap();
        assert_eq!(s.drain_deadline, Duration::from_secs(5));
        assert_eq!(s.timeouts.idle_grace, Duration::from_millis(200));
        assert_eq!(s.instance, "from-file");
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        let f = file("idle_timeout = 30").unwrap();
        assert_eq!(f.idle_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn file_errors_name_the_file_and_the_key() {
        let err = file("drain_deadline = \"soon\"").unwrap_err().to_string();
        assert!(err.starts_with("settings file app.toml:"), "{err}");
        assert!(err.contains("drain_deadline"), "{err}");

        let err = file("drain_dedline = \"1s\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `drain_dedline`"), "{err}");

        let err = file("listen = \"nowhere\"").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                "drain_deadline = \"0s\"",
                "drain_deadline",
                "more than zero",
            ),
            ("idle_timeout = \"2h\"", "idle_timeout", "at most 1h"),
            (
                "drain_deadline = \"1s\"\nidle_grace = \"2s\"",
                "idle_grace",
                "shorter than drain_deadline",
            ),
            ("instance = \"\"", "instance", "non-empty"),
            ("log_level = \"loud=[\"", "log_level", "not a log filter"),
            ("max_connections = 0", "max_connections", "from 1 to"),
            ("max_header_bytes = 100", "max_header_bytes", "from 8192 to"),
        ];
        for (text, name, reason) in cases {
            let err = Settings::resolve(&ServeArgs::default(), &file(text).unwrap()).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("setting {name} = ")) && message.contains(reason),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let args = ServeArgs {
            config: Some("/nonexistent/app.toml".into()),
            ..Default::default()
        };
        let err = Settings::load(&args).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read settings file /nonexistent/app.toml"
        );
    }

    #[test]
    fn reload_keeps_restart_only_settings_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.toml");
        std::fs::write(&path, "log_level = \"info\"\nidle_grace = \"1s\"").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let before = Settings::load(&args).unwrap();
        std::fs::write(
            &path,
            "log_level = \"debug\"\nidle_grace = \"2s\"\nlisten = \"127.0.0.1:9\"",
        )
        .unwrap();
        let (after, restart_only) = before.reload(&args).unwrap();
        assert_eq!(after.log_level, "debug");
        assert_eq!(after.timeouts.idle_grace, Duration::from_secs(2));
        assert_eq!(after.listen, before.listen);
        assert_eq!(restart_only, vec!["listen"]);

        std::fs::write(&path, "idle_grace = \"never\"").unwrap();
        assert!(before.reload(&args).is_err());
    }

    /// The packaged /etc/app/app.toml documents the defaults as commented-out
    /// lines. As shipped it must parse (an instance must start on it), and
    /// with every line uncommented it must still give the built-in defaults,
    /// so its comments never drift from the code.
    #[test]
    fn the_packaged_settings_file_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/app.toml");
        let shipped = std::fs::read_to_string(&path).unwrap();
        assert_eq!(file(&shipped).unwrap(), FileSettings::default());

        let uncommented: String = shipped
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| {
                line.starts_with(|c: char| c.is_ascii_lowercase()) && line.contains(" = ")
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let keys = uncommented.lines().count();
        assert_eq!(
            keys, 11,
            "every setting but instance is shown:\n{uncommented}"
        );
        let from_file =
            Settings::resolve(&ServeArgs::default(), &file(&uncommented).unwrap()).unwrap();
        let defaults = Settings::resolve(&ServeArgs::default(), &FileSettings::default()).unwrap();
        assert_eq!(from_file, defaults);
    }
}
