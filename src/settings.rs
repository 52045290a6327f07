//! Settings: command-line flags with environment fallbacks (`NAME_*`), an
//! optional TOML file, and built-in defaults, in that order of precedence.
//!
//! The file holds the kit's keys at the top and the service's own keys in a
//! table named after it (`[orders]`), typed by the service
//! ([`ServiceSettings`]). It is re-read on SIGHUP with the same validation;
//! flags and environment variables keep winning over it, so a reload can
//! only change what they leave unset. Every value is validated in one place
//! and errors name the setting the way the file spells it; an unknown key,
//! the kit's or the service's, is an error naming it.
//!
//! Each kit setting is declared once, in `declared.rs`; `kind.rs` says how
//! each kind of value is read and written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

mod declared;
mod kind;

pub(crate) use declared::{Applies, DECLARED};
pub use declared::{FileSettings, ServeArgs};

/// The address bound when systemd passes no socket.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The instance name outside a unit (the units pass `%i`).
pub const DEFAULT_INSTANCE: &str = "standalone";
/// The log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Well below the unit's `TimeoutStopSec=` (see `systemd/app@.service`), so
/// our own deadline, which logs what it cut, always fires before systemd's
/// SIGKILL, which logs nothing useful.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// While draining, how long an idle keep-alive connection may still send a request.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
/// How long a client has to finish a request head it started.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit without a request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Over how long a drain spreads the Close frames of its WebSockets (at
/// most half the drain deadline, unless set).
pub const DEFAULT_WEBSOCKET_CLOSE_WINDOW: Duration = Duration::from_secs(1);
/// Connections have no maximum age unless one is set.
pub const DEFAULT_MAX_CONNECTION_AGE: Option<Duration> = None;
/// Past its maximum age, how long an HTTP/2 connection's open streams have
/// before the kit ends them.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);
/// A maximum age longer than this is a typo; shorter than the minimum, one too.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_CONNECTION_AGE: Duration = Duration::from_secs(1);
/// The WebSocket close code a drain sends: 1001 Going Away.
pub const DEFAULT_WEBSOCKET_CLOSE_CODE: u16 = 1001;
/// The close codes a drain may send (RFC 6455, IANA): 1000 Normal Closure,
/// 1001 Going Away, 1012 Service Restart, 1013 Try Again Later.
const WEBSOCKET_CLOSE_CODES: [u16; 4] = [1000, 1001, 1012, 1013];
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

/// The timeouts one connection obeys; they can change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// How long a client has to finish a request head it started (`header_read_timeout`).
    pub header_read: Duration,
    /// How long a connection may sit without a request (`idle_timeout`).
    pub idle: Duration,
    /// While draining, how long an idle keep-alive connection may still send a request.
    pub idle_grace: Duration,
    /// Over how long a drain spreads the Close frames of its WebSockets.
    pub websocket_close_window: Duration,
    /// The close code a drain sends each WebSocket.
    pub websocket_close_code: u16,
    /// Oldest a connection may grow before it is asked to end, if any.
    pub max_connection_age: Option<Duration>,
    /// Past that age, how long an HTTP/2 connection's streams have.
    pub max_connection_age_grace: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
            websocket_close_window: DEFAULT_WEBSOCKET_CLOSE_WINDOW,
            websocket_close_code: DEFAULT_WEBSOCKET_CLOSE_CODE,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            max_connection_age_grace: DEFAULT_MAX_CONNECTION_AGE_GRACE,
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

/// The kit's settings in force.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// The settings file, if one was given.
    pub config: Option<PathBuf>,
    /// The address bound when systemd passes no socket.
    pub listen: SocketAddr,
    /// Never bind `listen`: without a passed socket, fail to start.
    pub require_socket: bool,
    /// This instance's name (the units pass `%i`).
    pub instance: String,
    /// The log filter.
    pub log_level: String,
    /// Longest a drain may take before what is left is cut.
    pub drain_deadline: Duration,
    /// What each connection obeys.
    pub timeouts: ConnectionTimeouts,
    /// What one instance accepts.
    pub limits: Limits,
}

/// A service's own section of the settings file: the table named after the
/// service (`[orders]`), deserialized into this type at start and on every
/// reload. Every key the type does not know is an error naming it.
///
/// `Serialize` and `Default` let `NAME units` write the section, with its
/// defaults, into the packaged settings file.
pub trait ServiceSettings:
    DeserializeOwned + serde::Serialize + Default + Send + Sync + 'static
{
    /// Checks values that deserializing alone cannot. An error keeps the
    /// service from starting, or a reload from applying (the old settings stay).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The settings of a service without a section of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NoSettings {}

impl ServiceSettings for NoSettings {}

/// Why settings cannot be used. Each message names the file, the setting
/// (as the file spells it) or the section.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are what the messages say
#[non_exhaustive]
pub enum SettingsError {
    /// The settings file cannot be read.
    #[error("cannot read settings file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or a kit key is unknown or of the wrong type.
    #[error("settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A kit setting's value is out of bounds.
    #[error("setting {name} = {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// The service's own section does not deserialize or validate.
    #[error("settings file {path}: [{section}]: {message}")]
    Section {
        path: PathBuf,
        section: String,
        message: String,
    },
}

/// Parses a duration as the settings do: `10s`, `500ms`, `1m 30s`, and
/// plain integers as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write a duration such as 10s or 500ms)"))
}

/// A `Duration` in a service's own settings, written as the kit's are
/// (`"10s"`, `"500ms"`, `"1m 30s"`, or a whole number of seconds):
/// `#[serde(with = "handover::settings::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `"1m 30s"`, as the settings file shows durations.
    pub fn serialize<S: Serializer>(value: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(&humantime::format_duration(*value))
    }

    /// Reads a duration string or a whole number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Secs(secs) => Ok(Duration::from_secs(secs)),
            Raw::Text(text) => super::parse_duration(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A settings file split into the kit's keys and the service's section.
#[derive(Debug, Clone, Default, PartialEq)]
#[doc(hidden)]
#[allow(missing_docs)] // internal (tests and fuzzing)
pub struct SettingsFile<T> {
    pub kit: FileSettings,
    pub service: T,
}

impl<T: ServiceSettings> SettingsFile<T> {
    /// Parses `text`: the table `[section]` is the service's, the rest the kit's.
    pub fn parse(path: &Path, text: &str, section: &str) -> Result<Self, SettingsError> {
        let parse = |message: String| SettingsError::Parse {
            path: path.to_owned(),
            message: message.trim_end().replace('\n', " "),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
        let in_section = |message: String| SettingsError::Section {
            path: path.to_owned(),
            section: section.to_owned(),
            message: message.trim_end().replace('\n', " "),
        };
        let service = match table.remove(section) {
            None => T::default(),
            Some(value @ toml::Value::Table(_)) => {
                let mut unknown = Vec::new();
                let service: Result<T, _> = serde_ignored::deserialize(value, |key| {
                    unknown.push(key.to_string());
                });
                // An unknown key first: it often explains a missing one (a typo).
                if let Some(key) = unknown.first() {
                    return Err(in_section(format!("unknown field `{key}`")));
                }
                service.map_err(|e| in_section(e.to_string()))?
            }
            Some(other) => {
                return Err(parse(format!(
                    "{section} must be a table ([{section}]), not a {}",
                    other.type_str()
                )));
            }
        };
        let kit =
            FileSettings::from_table(table).map_err(|e| parse(e).with_section_hint(section))?;
        Ok(Self { kit, service })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path, section: &str) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, section)
    }
}

impl SettingsError {
    /// An unknown top-level key may be meant for the service's section.
    fn with_section_hint(self, section: &str) -> Self {
        match self {
            SettingsError::Parse { path, message } if message.starts_with("unknown field") => {
                SettingsError::Parse {
                    path,
                    message: format!("{message} (the service's own keys go under [{section}])"),
                }
            }
            other => other,
        }
    }
}

/// Everything the settings say: the kit's and the service's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Loaded<T> {
    pub kit: Settings,
    pub service: T,
}

impl<T: ServiceSettings> Loaded<T> {
    /// Reads the settings file named by `args` (if any) and resolves everything.
    pub(crate) fn load(args: &ServeArgs, section: &str) -> Result<Self, SettingsError> {
        let file = match &args.config {
            Some(path) => SettingsFile::<T>::read(path, section)?,
            None => SettingsFile::default(),
        };
        let kit = Settings::resolve(args, &file.kit)?;
        file.service
            .validate()
            .map_err(|reason| SettingsError::Section {
                path: args.config.clone().unwrap_or_default(),
                section: section.to_owned(),
                message: reason,
            })?;
        Ok(Self {
            kit,
            service: file.service,
        })
    }
}

impl Settings {
    /// Flags (and environment) over the file over the defaults, then validated.
    pub fn resolve(args: &ServeArgs, file: &FileSettings) -> Result<Self, SettingsError> {
        let given = args.over(file);
        let mut settings = Settings::unfilled(args.config.clone());
        settings.fill(&given)?;
        if given.websocket_close_window.is_none() {
            // Unset, it fits any deadline: a short one is no error.
            let window = &mut settings.timeouts.websocket_close_window;
            *window = (*window).min(settings.drain_deadline / 2);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Every field before the declarations fill it (see `declared.rs`):
    /// zeros and empty text, which each setting's check would refuse, so a
    /// field no declaration fills cannot pass for a default.
    fn unfilled(config: Option<PathBuf>) -> Self {
        Settings {
            config,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            require_socket: false,
            instance: String::new(),
            log_level: String::new(),
            drain_deadline: Duration::ZERO,
            timeouts: ConnectionTimeouts {
                header_read: Duration::ZERO,
                idle: Duration::ZERO,
                idle_grace: Duration::ZERO,
                websocket_close_window: Duration::ZERO,
                websocket_close_code: 0,
                max_connection_age: None,
                max_connection_age_grace: Duration::ZERO,
            },
            limits: Limits {
                max_connections: 0,
                max_header_bytes: 0,
                max_body_bytes: 0,
            },
        }
    }

    /// What one setting's own check cannot see: how settings bound each other.
    fn validate(&self) -> Result<(), SettingsError> {
        let shorter_than_drain = |name, value: Duration, why: &str| {
            if value < self.drain_deadline {
                return Ok(());
            }
            Err(SettingsError::Invalid {
                name,
                value: humantime::format_duration(value).to_string(),
                reason: format!("must be shorter than drain_deadline, or {why}"),
            })
        };
        shorter_than_drain(
            "websocket_close_window",
            self.timeouts.websocket_close_window,
            "the last WebSockets would be cut instead of closed",
        )?;
        shorter_than_drain(
            "idle_grace",
            self.timeouts.idle_grace,
            "idle connections would hold every drain to its deadline",
        )
    }

    /// The settings a reload applies: `next`, but with the settings only a
    /// restart applies kept at their current value. Returns their names too,
    /// where they changed, for the log.
    pub(crate) fn reloaded(&self, mut next: Self) -> (Self, Vec<&'static str>) {
        let restart_only = self.keep_restart_only(&mut next);
        (next, restart_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileSettings, SettingsError> {
        SettingsFile::<NoSettings>::parse(Path::new("app.toml"), text, "app").map(|f| f.kit)
    }

    /// A service's own section, as a service would type it.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
    struct Orders {
        database_url: Option<String>,
        pool: Option<u32>,
    }

    impl ServiceSettings for Orders {
        fn validate(&self) -> Result<(), String> {
            match self.pool {
                Some(0) => Err("pool must be at least 1".into()),
                _ => Ok(()),
            }
        }
    }

    fn orders(text: &str) -> Result<SettingsFile<Orders>, SettingsError> {
        SettingsFile::parse(Path::new("orders.toml"), text, "orders")
    }

    #[test]
    fn the_service_section_is_the_services_and_the_rest_the_kits() {
        let f = orders(
            "drain_deadline = \"3s\"\n[orders]\ndatabase_url = \"postgres://db\"\npool = 4\n",
        )
        .unwrap();
        assert_eq!(f.kit.drain_deadline, Some(Duration::from_secs(3)));
        assert_eq!(f.service.database_url.as_deref(), Some("postgres://db"));
        assert_eq!(f.service.pool, Some(4));
        assert_eq!(orders("").unwrap().service, Orders::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_them_in_either_part() {
        let err = orders("[orders]\ndatabase_ur = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[orders]") && err.contains("unknown field `database_ur`"),
            "{err}"
        );
        let err = orders("database_url = \"x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `database_url`"), "{err}");
        assert!(err.contains("go under [orders]"), "{err}");
        let err = orders("[orders]\npool = \"many\"").unwrap_err().to_string();
        assert!(err.contains("[orders]") && err.contains("pool"), "{err}");
        let err = orders("orders = 3").unwrap_err().to_string();
        assert!(err.contains("must be a table"), "{err}");
        // A service without a section of its own has no keys to give.
        let err = file("[app]\nslow_max = 1").unwrap_err().to_string();
        assert!(err.contains("unknown field `slow_max`"), "{err}");
    }

    #[test]
    fn the_services_validation_runs_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.toml");
        std::fs::write(&path, "[orders]\npool = 0\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = Loaded::<Orders>::load(&args, "orders")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[orders]: pool must be at least 1"), "{err}");
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
    fn a_maximum_age_is_a_duration_or_off() {
        let resolve = |text: &str| Settings::resolve(&ServeArgs::default(), &file(text)?);
        let age = |text: &str| resolve(text).unwrap().timeouts.max_connection_age;
        assert_eq!(age(""), None);
        assert_eq!(
            age("max_connection_age = \"30m\""),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            age("max_connection_age = 90"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(age("max_connection_age = \"off\""), None);
        assert_eq!(age("max_connection_age = \"0s\""), None);
        let err = resolve("max_connection_age = \"500ms\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_connection_age") && err.contains("from 1s"),
            "{err}"
        );
        let err = resolve("max_connection_age = \"30days\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("7days"), "{err}");
        let err = resolve("max_connection_age = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_connection_age") && err.contains("or off"),
            "{err}"
        );
        let err = resolve("max_connection_age_grace = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connection_age_grace"), "{err}");
        let flag = ServeArgs {
            max_connection_age: Some(None),
            ..Default::default()
        };
        let from_flag = Settings::resolve(&flag, &file("max_connection_age = \"1h\"").unwrap());
        assert_eq!(
            from_flag.unwrap().timeouts.max_connection_age,
            None,
            "off wins too"
        );
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
            (
                "websocket_close_window = \"10s\"",
                "websocket_close_window",
                "shorter than drain_deadline",
            ),
            (
                "websocket_close_code = 1006",
                "websocket_close_code",
                "1001",
            ),
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
        let err = Loaded::<NoSettings>::load(&args, "app").unwrap_err();
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
        let load = || Loaded::<NoSettings>::load(&args, "app").map(|l| l.kit);
        let before = load().unwrap();
        std::fs::write(
            &path,
            "log_level = \"debug\"\nidle_grace = \"2s\"\nlisten = \"127.0.0.1:9\"",
        )
        .unwrap();
        let (after, restart_only) = before.reloaded(load().unwrap());
        assert_eq!(after.log_level, "debug");
        assert_eq!(after.timeouts.idle_grace, Duration::from_secs(2));
        assert_eq!(after.listen, before.listen);
        assert_eq!(restart_only, vec!["listen"]);

        std::fs::write(&path, "idle_grace = \"never\"").unwrap();
        assert!(load().is_err());
    }
}
