//! Every kit setting, declared once. From each declaration come its flag
//! (`--drain-deadline`, with its help and default), its `NAME_*` variable
//! (the CLI adds those), its settings-file key, its default, its check,
//! whether a reload applies it, its lines in the packaged `NAME.toml`, and
//! its row in docs/operations.md (a test compares them).
//!
//! To add a setting: one entry below, and the field of [`Settings`] it
//! fills (`=> timeouts.idle`), which the code that obeys it reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command, FromArgMatches};

use super::kind::{Address, DurationOrOff, Kind, Number, Span, Switch, Text};
use super::*;

/// When a changed value takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applies {
    /// On reload (SIGHUP or `systemctl reload`).
    OnReload,
    /// At the next restart; a reload keeps the old value and says so.
    AtRestart,
}

/// What the CLI, the packaged settings file and the docs say of one setting.
#[derive(Debug)]
pub(crate) struct Declared {
    /// The file key; the flag is `--` and the key with dashes, the variable
    /// `NAME_` and the key in capitals.
    pub(crate) key: &'static str,
    /// The flag's one line of help, without its default.
    pub(crate) help: &'static str,
    /// Its comment in the packaged settings file, or empty to leave it out.
    pub(crate) file: &'static str,
    /// The default as `--help` and the docs write it.
    pub(crate) shown: fn() -> String,
    /// The default as the settings file writes it.
    pub(crate) toml: fn() -> String,
    pub(crate) applies: Applies,
}

/// One list of declarations in, every place a setting appears out.
macro_rules! settings {
    ($(
        $(#[doc = $help:literal])+
        $key:ident: $ty:ty as $kind:ty => $($field:ident).+ {
            value: $value_name:literal,
            default: $default:expr,
            check: $check:expr,
            applies: $applies:ident,
            file: $file:literal $(,)?
        }
    )*) => {
        /// The serving flags, each also a `NAME_*` environment variable (the
        /// CLI adds them for the service's name) and a settings-file key.
        #[doc(hidden)]
        #[derive(Debug, Clone, Default, PartialEq)]
        #[allow(missing_docs)] // the flags' help is in the declarations
        pub struct ServeArgs {
            pub config: Option<PathBuf>,
            $(pub $key: Option<$ty>,)*
        }

        /// The kit's keys in the settings file; every one is optional.
        #[doc(hidden)]
        #[derive(Debug, Clone, Default, PartialEq)]
        #[allow(missing_docs)] // internal (tests and fuzzing); the keys are ServeArgs's
        pub struct FileSettings {
            $(pub $key: Option<$ty>,)*
        }

        /// Every declaration, in the order `--help` and the settings file list them.
        pub(crate) const DECLARED: &[Declared] = &[$(
            Declared {
                key: stringify!($key),
                help: concat!($($help),+),
                file: $file,
                shown: || <$kind as Kind>::show(&$default),
                toml: || <$kind as Kind>::to_toml(&$default),
                applies: Applies::$applies,
            },
        )*];

        impl clap::Args for ServeArgs {
            fn augment_args(cli: Command) -> Command {
                let config = Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Settings file (TOML, keys as below with underscores), re-read on SIGHUP [default: none]");
                cli.arg(config)
                    $(.arg(described(<$kind as Kind>::arg(stringify!($key), $value_name))))*
            }

            fn augment_args_for_update(cli: Command) -> Command {
                Self::augment_args(cli)
            }
        }

        impl FromArgMatches for ServeArgs {
            fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
                Ok(Self {
                    config: matches.get_one::<PathBuf>("config").cloned(),
                    $($key: <$kind as Kind>::given(matches, stringify!($key)),)*
                })
            }

            fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(matches)?;
                Ok(())
            }
        }

        impl ServeArgs {
            /// The flags, then the file, for each setting either gives.
            pub(crate) fn over(&self, file: &FileSettings) -> FileSettings {
                FileSettings {
                    $($key: self.$key.clone().or_else(|| file.$key.clone()),)*
                }
            }
        }

        impl FileSettings {
            /// The kit's keys of a parsed settings file; any other key is an error.
            pub(crate) fn from_table(table: toml::Table) -> Result<Self, String> {
                let mut file = Self::default();
                for (key, value) in table {
                    match key.as_str() {
                        $(stringify!($key) => {
                            let read = <$kind as Kind>::from_toml(&value)
                                .map_err(|reason| format!("{key} = {value}: {reason}"))?;
                            file.$key = Some(read);
                        })*
                        _ => return Err(match closest(&key) {
                            Some(near) => format!("unknown field `{key}`; did you mean `{near}`?"),
                            None => format!("unknown field `{key}`"),
                        }),
                    }
                }
                Ok(file)
            }
        }

        impl Settings {
            /// Each setting given, else its default, into its field; then
            /// each setting's own check.
            pub(super) fn fill(&mut self, given: &FileSettings) -> Result<(), SettingsError> {
                $(
                    self.$($field).+ = given.$key.clone().unwrap_or_else(|| $default);
                )*
                $(
                    let check: fn(&$ty) -> Result<(), String> = $check;
                    if let Err(reason) = check(&self.$($field).+) {
                        return Err(SettingsError::Invalid {
                            name: stringify!($key),
                            value: <$kind as Kind>::show(&self.$($field).+),
                            reason,
                        });
                    }
                )*
                Ok(())
            }

            /// `next` with every setting a reload cannot apply kept at its
            /// value in `self`; the names of those that differed.
            pub(super) fn keep_restart_only(&self, next: &mut Self) -> Vec<&'static str> {
                let mut kept = Vec::new();
                $(
                    if Applies::$applies == Applies::AtRestart
                        && next.$($field).+ != self.$($field).+
                    {
                        kept.push(stringify!($key));
                        next.$($field).+ = self.$($field).+.clone();
                    }
                )*
                kept
            }
        }
    };
}

settings! {
    /// Address to bind when systemd passes no socket
    listen: SocketAddr as Address => listen {
        value: "ADDR",
        default: default_listen(),
        check: |_| Ok(()),
        applies: AtRestart,
        file: "Address to bind when systemd passes no socket (running {{name}} by hand).\n\
               Under the units it is unused.",
    }

    /// Instance name, in logs and `Context::instance()` (the units pass %i)
    instance: String as Text => instance {
        value: "NAME",
        default: DEFAULT_INSTANCE.to_owned(),
        check: |name| {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err("must be non-empty printable text".into());
            }
            Ok(())
        },
        applies: AtRestart,
        file: "",
    }

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives
    log_level: String as Text => log_level {
        value: "FILTER",
        default: DEFAULT_LOG_LEVEL.to_owned(),
        check: |filter| match tracing_subscriber::EnvFilter::try_new(filter) {
            Ok(_) => Ok(()),
            Err(err) => Err(format!("not a log filter: {err}")),
        },
        applies: OnReload,
        file: "Log filter: error, warn, info, debug, trace, or tracing directives\n\
               (\"info,handover::connection=debug\").",
    }

    /// Longest a drain may take before remaining connections are cut
    drain_deadline: Duration as Span => drain_deadline {
        value: "DURATION",
        default: DEFAULT_DRAIN_DEADLINE,
        check: timeout,
        applies: OnReload,
        file: "Longest a drain (on stop or restart) may take before the connections left\n\
               are cut and logged. Keep it below TimeoutStopSec= in {{name}}@.service (20s),\n\
               or systemd kills the instance first.",
    }

    /// While draining, how long an idle keep-alive connection may still send one last request
    idle_grace: Duration as Span => timeouts.idle_grace {
        value: "DURATION",
        default: DEFAULT_IDLE_GRACE,
        check: timeout,
        applies: OnReload,
        file: "While draining, how long an idle keep-alive connection may still send one\n\
               last request before it is closed. Shorter than drain_deadline.",
    }

    /// How long a client has to send a complete request head once it starts one
    header_read_timeout: Duration as Span => timeouts.header_read {
        value: "DURATION",
        default: DEFAULT_HEADER_READ_TIMEOUT,
        check: timeout,
        applies: OnReload,
        file: "How long a client has to finish a request head once it starts one; then\n\
               it gets 408 and the connection is closed.",
    }

    /// How long a connection may sit without a request before it is closed
    idle_timeout: Duration as Span => timeouts.idle {
        value: "DURATION",
        default: DEFAULT_IDLE_TIMEOUT,
        check: timeout,
        applies: OnReload,
        file: "How long a connection may sit without a request before it is closed.",
    }

    /// The close code a drain sends each WebSocket: 1001 (Going Away), 1012 (Service Restart), 1000 or 1013
    websocket_close_code: u16 as Number<u16> => timeouts.websocket_close_code {
        value: "CODE",
        default: DEFAULT_WEBSOCKET_CLOSE_CODE,
        check: |code| {
            if !WEBSOCKET_CLOSE_CODES.contains(code) {
                return Err("must be 1001 (Going Away), 1012 (Service Restart), 1000 or 1013".into());
            }
            Ok(())
        },
        applies: OnReload,
        file: "When a drain starts, each open WebSocket gets a Close frame with this code:\n\
               1001 (Going Away) or 1012 (Service Restart; 1000 and 1013 are accepted too).",
    }

    /// Over how long a drain spreads the Close frames it sends its WebSockets, so siblings do not take every reconnect at once
    websocket_close_window: Duration as Span => timeouts.websocket_close_window {
        value: "DURATION",
        default: DEFAULT_WEBSOCKET_CLOSE_WINDOW,
        check: |_| Ok(()),
        applies: OnReload,
        file: "Over how long a drain spreads those Close frames, so the siblings do not\n\
               take every reconnect in the same instant. Shorter than drain_deadline;\n\
               unset, at most half of it.",
    }

    /// Oldest a connection may grow before it is asked to end (HTTP/2: GOAWAY; HTTP/1: its next response closes it), give or take 10%, so clients spread over the instances again; 0 or off: never
    max_connection_age: Option<Duration> as DurationOrOff => timeouts.max_connection_age {
        value: "DURATION",
        default: DEFAULT_MAX_CONNECTION_AGE,
        check: |age| match age {
            Some(age) if !(MIN_CONNECTION_AGE..=MAX_CONNECTION_AGE).contains(age) => {
                Err("must be from 1s to 7days, or off".into())
            }
            _ => Ok(()),
        },
        applies: OnReload,
        file: "Oldest a connection may grow before it is asked to end, give or take 10%,\n\
               so long-lived clients (gRPC channels, HTTP/2 pools) spread over the\n\
               instances again after a scale-up or a restart. HTTP/2 gets a GOAWAY, and\n\
               streams still open max_connection_age_grace later are ended (gRPC:\n\
               UNAVAILABLE, which clients retry); an HTTP/1 connection's next response\n\
               says Connection: close. WebSockets are left alone. \"off\": never.\n\
               An age counts from when the connection was accepted.",
    }

    /// Past the maximum age, how long an HTTP/2 connection's open streams have before the kit ends them (gRPC: UNAVAILABLE)
    max_connection_age_grace: Duration as Span => timeouts.max_connection_age_grace {
        value: "DURATION",
        default: DEFAULT_MAX_CONNECTION_AGE_GRACE,
        check: timeout,
        applies: OnReload,
        file: "Past max_connection_age, how long an HTTP/2 connection's open streams\n\
               have before the kit ends them.",
    }

    /// Connections one instance serves at once; more wait in the socket's queue
    max_connections: usize as Number<usize> => limits.max_connections {
        value: "N",
        default: DEFAULT_MAX_CONNECTIONS,
        check: |n| within(*n, 1, MAX_CONNECTIONS),
        applies: AtRestart,
        file: "Connections one instance serves at once. At the limit it stops accepting\n\
               (new connections wait in the socket's queue, or a sibling takes them; none\n\
               is refused) and closes idle keep-alive connections after idle_grace to make\n\
               room. Each connection is one file descriptor; the limit must fit under\n\
               LimitNOFILE= with room to spare.",
    }

    /// Largest request head (request line and headers); larger gets 431
    max_header_bytes: usize as Number<usize> => limits.max_header_bytes {
        value: "BYTES",
        default: DEFAULT_MAX_HEADER_BYTES,
        check: |n| within(*n, MIN_HEADER_BYTES, MAX_HEADER_BYTES),
        applies: AtRestart,
        file: "Largest request head (request line and headers), in bytes; larger gets\n\
               431 Request Header Fields Too Large. At least 8192.",
    }

    /// Largest request body; a larger Content-Length gets 413
    max_body_bytes: u64 as Number<u64> => limits.max_body_bytes {
        value: "BYTES",
        default: DEFAULT_MAX_BODY_BYTES,
        check: |_| Ok(()),
        applies: AtRestart,
        file: "Largest request body, in bytes; a larger Content-Length gets 413 Content\n\
               Too Large before the service sees the request.",
    }

    /// Refuse to start unless systemd passes a socket, instead of binding --listen (the units set it)
    require_socket: bool as Switch => require_socket {
        value: "",
        default: false,
        check: |_| Ok(()),
        applies: AtRestart,
        file: "Refuse to start unless systemd passes a socket, rather than binding\n\
               `listen`. {{name}}@.service sets it with --require-socket: inside the unit's\n\
               private network namespace, an address of its own would serve nobody.",
    }
}

/// The declared key a typo most likely meant: at most two edits away.
fn closest(key: &str) -> Option<&'static str> {
    DECLARED
        .iter()
        .map(|setting| (edits(key, setting.key), setting.key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, near)| near)
}

/// Levenshtein distance, for short keys.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A flag with its declaration's help and default.
fn described(arg: Arg) -> Arg {
    let Some(setting) = DECLARED.iter().find(|setting| setting.key == arg.get_id()) else {
        return arg;
    };
    let help = format!("{} [default: {}]", setting.help.trim(), (setting.shown)());
    arg.help(help)
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .expect("the default address is valid")
}

/// A timeout: more than zero, and not so long it is surely a typo.
fn timeout(value: &Duration) -> Result<(), String> {
    if value.is_zero() {
        return Err("must be more than zero".into());
    }
    if *value > MAX_DURATION {
        return Err("must be at most 1h".into());
    }
    Ok(())
}

fn within(n: usize, min: usize, max: usize) -> Result<(), String> {
    if !(min..=max).contains(&n) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings::resolve(&ServeArgs::default(), &FileSettings::default()).unwrap()
    }

    /// The public defaults (`ConnectionTimeouts::default()`, `Limits::default()`,
    /// which a service passes to the builder) are the declarations'.
    #[test]
    fn the_declared_defaults_are_the_public_ones() {
        let settings = defaults();
        assert_eq!(settings.timeouts, ConnectionTimeouts::default());
        assert_eq!(settings.limits, Limits::default());
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
    }

    /// Each default, written as `--help` shows it, is read back as a flag to
    /// the same settings: the help never shows a default the flag would not take.
    #[test]
    fn every_flag_takes_its_shown_default() {
        let name = crate::name::ServiceName::new("orders").unwrap();
        for setting in DECLARED {
            let flag = format!("--{}", setting.key.replace('_', "-"));
            let mut argv = vec!["orders".to_owned(), flag.clone()];
            if setting.key != "require_socket" {
                argv.push((setting.shown)());
            }
            let cli = crate::cli::command(&name, None, None);
            let matches = cli.try_get_matches_from(&argv).unwrap();
            let args = ServeArgs::from_arg_matches(&matches).unwrap();
            assert_ne!(args, ServeArgs::default(), "{argv:?} gave nothing");
            let mut expected = defaults();
            if setting.key == "require_socket" {
                expected.require_socket = true; // the flag only turns it on
            }
            assert_eq!(
                Settings::resolve(&args, &FileSettings::default()).unwrap(),
                expected,
                "{argv:?}"
            );
        }
    }

    /// Every setting has its row in docs/operations.md, with its flag,
    /// variable, key and default as the declaration has them.
    #[test]
    fn the_operations_guide_lists_every_setting() {
        let guide = include_str!("../../docs/operations.md");
        for setting in DECLARED {
            let row = format!(
                "| `--{}` | `APP_{}` | `{}` | `{}`",
                setting.key.replace('_', "-"),
                setting.key.to_uppercase(),
                setting.key,
                (setting.shown)(),
            );
            assert!(
                guide.lines().any(|line| line.starts_with(&row)),
                "docs/operations.md has no row starting {row}"
            );
        }
    }

    #[test]
    fn an_unknown_key_names_the_one_it_was_likely_meant_for() {
        let unknown = |text: &str| FileSettings::from_table(text.parse().unwrap()).unwrap_err();
        assert_eq!(
            unknown("drain_dedline = 1"),
            "unknown field `drain_dedline`; did you mean `drain_deadline`?"
        );
        assert_eq!(
            unknown("idle_timout = 1"),
            "unknown field `idle_timout`; did you mean `idle_timeout`?"
        );
        assert_eq!(
            unknown("database_url = \"x\""),
            "unknown field `database_url`"
        );
        assert_eq!(edits("kitten", "sitting"), 3);
    }

    #[test]
    fn a_reload_keeps_what_only_a_restart_applies() {
        let before = defaults();
        let file = FileSettings::from_table(
            "max_connections = 10\nlisten = \"127.0.0.1:9\"\nidle_timeout = 5\n"
                .parse()
                .unwrap(),
        )
        .unwrap();
        let next = Settings::resolve(&ServeArgs::default(), &file).unwrap();
        let (after, kept) = before.reloaded(next);
        assert_eq!(kept, ["listen", "max_connections"]);
        assert_eq!(after.limits, before.limits);
        assert_eq!(after.listen, before.listen);
        assert_eq!(after.timeouts.idle, Duration::from_secs(5));
        let restart_only: Vec<_> = DECLARED
            .iter()
            .filter(|setting| setting.applies == Applies::AtRestart)
            .map(|setting| setting.key)
            .collect();
        assert!(
            restart_only.contains(&"max_connections"),
            "{restart_only:?}"
        );
        assert!(!restart_only.contains(&"idle_timeout"), "{restart_only:?}");
    }
}
