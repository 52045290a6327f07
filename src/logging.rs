//! Logging: to the journal under systemd, to stderr elsewhere, with a filter
//! that a settings reload can change.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Changes the log filter of the running process.
pub(crate) struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set the log filter")]
pub(crate) struct LogError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    Journal,
    Stderr,
}

impl Destination {
    /// The journal when our stderr is the stream systemd connected to it.
    ///
    /// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for that stream; comparing it
    /// with stderr (as sd_journal_stream_fd(3) advises) keeps a shell redirect
    /// of a socket-activated process from sending its logs somewhere unexpected.
    pub(crate) fn detect(journal_stream: Option<&str>) -> Self {
        let Some((dev, ino)) = journal_stream.and_then(|value| value.split_once(':')) else {
            return Destination::Stderr;
        };
        match std::fs::metadata("/proc/self/fd/2") {
            Ok(meta) if dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()) => {
                Destination::Journal
            }
            _ => Destination::Stderr,
        }
    }
}

/// Installs the global subscriber. `filter` has been validated with the
/// settings; `identifier` is the journal's `SYSLOG_IDENTIFIER` (the service's
/// name, so `journalctl -t orders` finds its lines).
pub(crate) fn init(
    filter: &str,
    destination: Destination,
    identifier: &str,
) -> Result<LogHandle, LogError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| LogError(e.into()))?;
    let (filter, handle) = reload::Layer::new(filter);
    let journald = match destination {
        Destination::Journal => match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier(identifier.to_owned())),
            Err(err) => {
                eprintln!("{identifier}: cannot log to the journal ({err}); logging to stderr");
                None
            }
        },
        Destination::Stderr => None,
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init()
        .map_err(|e| LogError(e.into()))?;
    Ok(LogHandle { filter: handle })
}

impl LogHandle {
    pub(crate) fn set_filter(&self, filter: &str) -> Result<(), LogError> {
        let filter = EnvFilter::try_new(filter).map_err(|e| LogError(e.into()))?;
        self.filter.reload(filter).map_err(|e| LogError(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_matching_journal_stream_logs_go_to_stderr() {
        assert_eq!(Destination::detect(None), Destination::Stderr);
        assert_eq!(Destination::detect(Some("garbage")), Destination::Stderr);
        assert_eq!(Destination::detect(Some("1:1")), Destination::Stderr);
    }

    #[test]
    fn a_journal_stream_matching_stderr_selects_the_journal() {
        let meta = std::fs::metadata("/proc/self/fd/2").unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert_eq!(Destination::detect(Some(&value)), Destination::Journal);
    }
}
