//! What the running service tells a client: which instance, process and
//! version answered (`/version`), and whether a load run lost anything.

use std::net::SocketAddr;
use std::sync::Arc;

use super::load::Counts;
use super::process::http_get;
use super::systemd::SystemdBox;

/// One instance as `/version` describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub instance: String,
    pub pid: String,
    pub version: String,
}

/// Asks `/version` until `instances` distinct instances have answered (or
/// 500 requests were made); returns them sorted by instance name.
pub fn versions(addr: SocketAddr, instances: usize) -> Vec<Version> {
    let mut seen: Vec<Version> = Vec::new();
    for _ in 0..500 {
        let (status, body) = http_get(addr, "/version").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        let entry = Version {
            instance: v["instance"].as_str().unwrap().to_owned(),
            pid: v["pid"].to_string(),
            version: v["version"].as_str().unwrap().to_owned(),
        };
        if !seen.contains(&entry) {
            seen.push(entry);
        }
        if seen.len() == instances {
            break;
        }
    }
    seen.sort();
    seen
}

/// Both default instances behind `addr` answer `/version` with `version`;
/// returns them, sorted by instance.
pub fn assert_serving(addr: SocketAddr, version: &str) -> Vec<Version> {
    let seen = versions(addr, 2);
    let instances: Vec<&str> = seen.iter().map(|v| v.instance.as_str()).collect();
    assert_eq!(instances, ["1", "2"], "{addr}: {seen:?}");
    for v in &seen {
        assert_eq!(v.version, version, "{addr}: {seen:?}");
    }
    seen
}

/// A load run lost nothing: no socket or protocol error, no non-2xx status,
/// and some traffic went through. Prints the summary either way.
pub fn assert_no_loss(phase: &str, counts: &mut Counts) {
    println!("{phase}: {}", counts.summary());
    assert_eq!(counts.error_count(), 0, "{phase}: {:?}", counts.errors);
    assert_eq!(counts.non_2xx(), 0, "{phase}: {:?}", counts.by_status);
    assert!(counts.ok() > 0, "{phase}: no traffic at all");
}

/// Runs a blocking box operation off the runtime, so load keeps flowing.
pub async fn blocking<T: Send + 'static>(
    sd: &Arc<SystemdBox>,
    op: impl FnOnce(&SystemdBox) -> T + Send + 'static,
) -> T {
    let sd = sd.clone();
    tokio::task::spawn_blocking(move || op(&sd)).await.unwrap()
}
