//! The drains the journal tells of: each instance's "drain started" (how
//! many connections it held) and how it ended ("drain finished" with its
//! elapsed time, or "drain deadline passed" with the connections cut).

use super::systemd::SystemdBox;

/// One drain of one process, from its journal lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub unit: String,
    pub pid: String,
    /// Connections open when the drain started (upgraded ones included).
    pub connections: u64,
    /// How it ended; `None` when the journal has no end for it.
    pub end: Option<DrainEnd>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    /// "drain finished": every connection ended before the deadline.
    Finished { elapsed_ms: u64 },
    /// "drain deadline passed": the deadline cut `cut` connections.
    DeadlinePassed { elapsed_ms: u64, cut: u64 },
}

impl Drain {
    /// How long it took, if it ended.
    pub fn elapsed_ms(&self) -> Option<u64> {
        match self.end {
            Some(
                DrainEnd::Finished { elapsed_ms } | DrainEnd::DeadlinePassed { elapsed_ms, .. },
            ) => Some(elapsed_ms),
            None => None,
        }
    }
}

/// A journal field of an event as a number. journald gives every field as a
/// string; tracing-journald names an event's field by its upper-cased name
/// with its prefix, `F_` by default (`elapsed_ms` is `F_ELAPSED_MS`).
fn number(entry: &serde_json::Value, field: &str) -> Option<u64> {
    let upper = field.to_ascii_uppercase();
    [format!("F_{upper}"), upper].iter().find_map(|name| {
        let value = &entry[name];
        value
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| value.as_u64())
    })
}

/// Every drain of the service `identifier` (its `SYSLOG_IDENTIFIER`, the
/// service's name: `app`), in the order they started.
pub fn drains(sd: &SystemdBox, identifier: &str) -> Vec<Drain> {
    let entries = sd.journal_entries(&["-t", identifier]);
    let mut drains: Vec<Drain> = Vec::new();
    for entry in &entries {
        let message = entry["MESSAGE"].as_str().unwrap_or_default();
        let pid = entry["_PID"].as_str().unwrap_or("?").to_owned();
        let unit = entry["_SYSTEMD_UNIT"].as_str().unwrap_or("?").to_owned();
        let field = |name: &str| {
            number(entry, name)
                .unwrap_or_else(|| panic!("{unit} (pid {pid}): no {name} in {message:?}: {entry}"))
        };
        let end = if message.starts_with("drain started") {
            drains.push(Drain {
                unit: unit.clone(),
                pid: pid.clone(),
                connections: field("connections"),
                end: None,
            });
            continue;
        } else if message.starts_with("drain finished") {
            DrainEnd::Finished {
                elapsed_ms: field("elapsed_ms"),
            }
        } else if message.starts_with("drain deadline passed") {
            DrainEnd::DeadlinePassed {
                elapsed_ms: field("elapsed_ms"),
                cut: field("cut"),
            }
        } else {
            continue;
        };
        let started = drains
            .iter_mut()
            .rev()
            .find(|d| d.pid == pid && d.end.is_none())
            .unwrap_or_else(|| panic!("{unit} (pid {pid}): {message:?} without a drain started"));
        started.end = Some(end);
    }
    drains
}

/// Every drain ended as "drain finished" within `limit_ms`, and there were
/// `expected` of them; returns the longest, in milliseconds.
pub fn assert_drains_finished_within(drains: &[Drain], expected: usize, limit_ms: u64) -> u64 {
    let lines: Vec<String> = drains.iter().map(|d| format!("{d:?}")).collect();
    assert_eq!(
        drains.len(),
        expected,
        "drains in the journal:\n{}",
        lines.join("\n")
    );
    for drain in drains {
        match drain.end {
            Some(DrainEnd::Finished { elapsed_ms }) => assert!(
                elapsed_ms < limit_ms,
                "a drain took {elapsed_ms} ms, not under {limit_ms} ms: {drain:?}"
            ),
            _ => panic!(
                "a drain did not finish cleanly: {drain:?}\nall drains:\n{}",
                lines.join("\n")
            ),
        }
    }
    drains
        .iter()
        .filter_map(Drain::elapsed_ms)
        .max()
        .unwrap_or(0)
}
