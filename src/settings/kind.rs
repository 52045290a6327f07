//! The kinds of value a kit setting holds, and how each is read from a flag
//! or variable, read from the settings file, and written back (in `--help`
//! and in the packaged settings file). A setting's declaration names its
//! kind; everything else about reading it follows from that.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Arg;
use clap::builder::ValueParser;

/// One kind of value.
pub(crate) trait Kind {
    type Value: Clone + Send + Sync + 'static;

    /// A flag's or environment variable's text.
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// A value in the settings file.
    fn from_toml(value: &toml::Value) -> Result<Self::Value, String>;

    /// As the settings file writes it (`"10s"`, `4096`, `false`).
    fn to_toml(value: &Self::Value) -> String;

    /// As `--help`, the docs and error messages write it (`10s`, `4096`).
    fn show(value: &Self::Value) -> String;

    /// The flag: `--name-with-dashes VALUE`.
    fn arg(id: &'static str, value_name: &'static str) -> Arg {
        Arg::new(id)
            .long(id.replace('_', "-"))
            .value_name(value_name)
            .value_parser(ValueParser::new(|text: &str| Self::parse(text)))
    }

    /// What the command line gave, if anything.
    fn given(matches: &clap::ArgMatches, id: &str) -> Option<Self::Value> {
        matches.get_one::<Self::Value>(id).cloned()
    }
}

/// Free text (`instance`, `log_level`).
pub(crate) struct Text;

impl Kind for Text {
    type Value = String;

    fn parse(text: &str) -> Result<String, String> {
        Ok(text.to_owned())
    }

    fn from_toml(value: &toml::Value) -> Result<String, String> {
        match value {
            toml::Value::String(text) => Ok(text.clone()),
            other => Err(format!("must be a string, not a {}", other.type_str())),
        }
    }

    fn to_toml(value: &String) -> String {
        toml::Value::String(value.clone()).to_string()
    }

    fn show(value: &String) -> String {
        value.clone()
    }
}

/// An address and port (`127.0.0.1:8080`, `[::1]:8080`).
pub(crate) struct Address;

impl Kind for Address {
    type Value = SocketAddr;

    fn parse(text: &str) -> Result<SocketAddr, String> {
        text.trim().parse().map_err(|_| {
            format!("{text:?} is not an address and port (write 127.0.0.1:8080 or [::1]:8080)")
        })
    }

    fn from_toml(value: &toml::Value) -> Result<SocketAddr, String> {
        Self::parse(&Text::from_toml(value)?)
    }

    fn to_toml(value: &SocketAddr) -> String {
        Text::to_toml(&value.to_string())
    }

    fn show(value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// A duration: `10s`, `500ms`, `1m 30s`, or whole seconds.
pub(crate) struct Span;

impl Kind for Span {
    type Value = Duration;

    fn parse(text: &str) -> Result<Duration, String> {
        super::parse_duration(text)
    }

    fn from_toml(value: &toml::Value) -> Result<Duration, String> {
        match value {
            toml::Value::Integer(secs) => u64::try_from(*secs)
                .map(Duration::from_secs)
                .map_err(|_| "must not be negative".to_owned()),
            toml::Value::String(text) => Self::parse(text),
            other => Err(format!(
                "must be a duration such as \"10s\", not a {}",
                other.type_str()
            )),
        }
    }

    fn to_toml(value: &Duration) -> String {
        Text::to_toml(&Self::show(value))
    }

    fn show(value: &Duration) -> String {
        humantime::format_duration(*value).to_string()
    }
}

/// A duration or none: `off` or `0` say none.
pub(crate) struct DurationOrOff;

impl Kind for DurationOrOff {
    type Value = Option<Duration>;

    fn parse(text: &str) -> Result<Option<Duration>, String> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let span = Span::parse(text).map_err(|err| format!("{err}, or off"))?;
        Ok(Some(span).filter(|span| !span.is_zero()))
    }

    fn from_toml(value: &toml::Value) -> Result<Option<Duration>, String> {
        match value {
            toml::Value::String(text) => Self::parse(text),
            other => Ok(Some(Span::from_toml(other)?).filter(|span| !span.is_zero())),
        }
    }

    fn to_toml(value: &Option<Duration>) -> String {
        Text::to_toml(&Self::show(value))
    }

    fn show(value: &Option<Duration>) -> String {
        value.as_ref().map_or_else(|| "off".to_owned(), Span::show)
    }
}

/// A whole number of type `N` (a count, a size in bytes, a code).
pub(crate) struct Number<N>(PhantomData<N>);

impl<N> Kind for Number<N>
where
    N: Copy + std::fmt::Display + std::str::FromStr + TryFrom<i64> + Send + Sync + 'static,
{
    type Value = N;

    fn parse(text: &str) -> Result<N, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a whole number, or is out of range"))
    }

    fn from_toml(value: &toml::Value) -> Result<N, String> {
        match value {
            toml::Value::Integer(n) => N::try_from(*n).map_err(|_| format!("{n} is out of range")),
            other => Err(format!(
                "must be a whole number, not a {}",
                other.type_str()
            )),
        }
    }

    fn to_toml(value: &N) -> String {
        value.to_string()
    }

    fn show(value: &N) -> String {
        value.to_string()
    }
}

/// On or off. The flag takes no value (`--require-socket`); its variable
/// and key do (`true`, `false`, and as a variable also `yes`, `no`, `on`,
/// `off`, `1`, `0`, `y`, `n`, `t`, `f`: what clap's boolish parser took).
pub(crate) struct Switch;

impl Kind for Switch {
    type Value = bool;

    fn parse(text: &str) -> Result<bool, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "y" | "t" => Ok(true),
            "false" | "no" | "off" | "0" | "n" | "f" => Ok(false),
            _ => Err(format!("{text:?} is neither true nor false")),
        }
    }

    fn from_toml(value: &toml::Value) -> Result<bool, String> {
        match value {
            toml::Value::Boolean(on) => Ok(*on),
            other => Err(format!("must be true or false, not a {}", other.type_str())),
        }
    }

    fn to_toml(value: &bool) -> String {
        value.to_string()
    }

    fn show(value: &bool) -> String {
        if *value { "on" } else { "off" }.to_owned()
    }

    /// The variable's text goes through [`Switch::parse`], as every other
    /// kind's does through its own.
    fn arg(id: &'static str, _value_name: &'static str) -> Arg {
        Arg::new(id)
            .long(id.replace('_', "-"))
            .value_parser(ValueParser::new(|text: &str| Self::parse(text)))
            .action(clap::ArgAction::SetTrue)
    }

    /// Only an explicit on counts: unset, the file may still say true.
    fn given(matches: &clap::ArgMatches, id: &str) -> Option<bool> {
        matches.get_flag(id).then_some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> toml::Value {
        text.parse::<toml::Table>().unwrap()["v"].clone()
    }

    #[test]
    fn each_kind_reads_what_it_writes() {
        let span = Duration::from_secs(90);
        assert_eq!(Span::to_toml(&span), "\"1m 30s\"");
        assert_eq!(Span::from_toml(&toml("v = \"1m 30s\"")), Ok(span));
        assert_eq!(Span::from_toml(&toml("v = 90")), Ok(span));
        assert!(Span::from_toml(&toml("v = -1")).is_err());
        assert!(Span::from_toml(&toml("v = 1.5")).is_err());

        assert_eq!(DurationOrOff::to_toml(&None), "\"off\"");
        for off in ["v = \"off\"", "v = 0", "v = \"0s\""] {
            assert_eq!(DurationOrOff::from_toml(&toml(off)), Ok(None), "{off}");
        }
        assert_eq!(
            DurationOrOff::parse("30m"),
            Ok(Some(Duration::from_secs(1800)))
        );
        assert!(
            DurationOrOff::parse("soon")
                .unwrap_err()
                .ends_with("or off")
        );

        assert_eq!(Number::<u16>::from_toml(&toml("v = 1001")), Ok(1001));
        let err = Number::<u16>::from_toml(&toml("v = 70000")).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let err = Number::<usize>::parse("-1").unwrap_err();
        assert!(err.contains("not a whole number"), "{err}");
        assert!(Number::<u64>::from_toml(&toml("v = \"1MB\"")).is_err());
        assert!(Number::<usize>::from_toml(&toml("v = 1e9")).is_err());

        let addr: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            Address::from_toml(&toml(&format!("v = {}", Address::to_toml(&addr)))),
            Ok(addr)
        );
        assert!(Address::parse("127.0.0.1:99999").is_err());

        assert_eq!(Switch::from_toml(&toml("v = true")), Ok(true));
        for (text, on) in [
            ("TRUE", true),
            ("y", true),
            ("1", true),
            ("off", false),
            ("F", false),
        ] {
            assert_eq!(Switch::parse(text), Ok(on), "{text}");
        }
        assert!(Switch::parse("maybe").is_err());
        assert!(Switch::from_toml(&toml("v = \"maybe\"")).is_err());
        let quoted = "a\"b'c".to_owned();
        let written = format!("v = {}", Text::to_toml(&quoted));
        assert_eq!(Text::from_toml(&toml(&written)), Ok(quoted));
    }
}
