//! What the running service tells a client: which instance, process and
//! version answered (`/version`), and whether a load run lost anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::load::Counts;
use super::process::http_get_within;
use super::systemd::SystemdBox;

/// One instance as `/version` describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub instance: String,
    pub pid: String,
    pub version: String,
}

/// `/version` as each of the instances `app@1` .. `app@N` behind `addr`
/// answers it; sorted by instance name. An instance that does not answer
/// is missing from the list, for the caller's assertion to name.
pub fn versions(sd: &SystemdBox, addr: SocketAddr, instances: usize) -> Vec<Version> {
    let mut seen = ask_each_instance(sd, "app", instances, || {
        let (status, body) = http_get_within(addr, "/version", ASK_WITHIN)?;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        Ok(Version {
            instance: v["instance"].as_str().unwrap().to_owned(),
            pid: v["pid"].to_string(),
            version: v["version"].as_str().unwrap().to_owned(),
        })
    });
    seen.sort();
    seen
}

/// How long one question to an instance may take: with its siblings
/// paused, a request to an instance that does not serve would otherwise
/// wait in the socket's queue forever.
pub const ASK_WITHIN: Duration = Duration::from_secs(10);

/// What each of the instances `NAME@1` .. `NAME@N` answers to `ask`, in
/// that order; an instance whose answer fails is left out, and said.
///
/// The instances share one listening socket, and which one accepts a
/// connection is the kernel's choice: every instance waiting in epoll is
/// woken, the most recently registered first, so an idle client's
/// connections made one after another can all land on the same instance
/// (seen in CI: 500 of 500 on app@2). Each instance is therefore asked
/// while its siblings are paused, so it is the only one that can accept.
pub fn ask_each_instance<T>(
    sd: &SystemdBox,
    name: &str,
    instances: usize,
    ask: impl Fn() -> std::io::Result<T>,
) -> Vec<T> {
    let units: Vec<String> = (1..=instances)
        .map(|i| format!("{name}@{i}.service"))
        .collect();
    let mut answers = Vec::new();
    for unit in &units {
        let siblings: Vec<String> = units
            .iter()
            .filter(|u| *u != unit)
            .map(|u| sd.property(u, "MainPID"))
            .filter(|pid| pid != "0")
            .collect();
        let _paused = Paused::new(sd, siblings);
        match ask() {
            Ok(answer) => answers.push(answer),
            Err(e) => println!("{unit} did not answer: {e}"),
        }
    }
    answers
}

/// Processes in the box stopped with SIGSTOP, every thread of them, until
/// dropped (also when the test panics meanwhile): a thread still running
/// could accept.
struct Paused<'a> {
    sd: &'a SystemdBox,
    pids: Vec<String>,
}

/// `$1` stopped: sent SIGSTOP, then awaited until no thread of it is in
/// any state but stopped (`T`). grep's 1 means no thread line matched, so
/// all are stopped; its 2 (a file vanished between glob and read) proves
/// nothing, so the loop looks again. A process that is gone accepts
/// nothing either, which ends the wait too.
const PAUSE: &str = r#"
kill -STOP "$1" || exit 1
for _ in $(seq 5000); do
    [ -d /proc/"$1" ] || exit 0
    grep -qs '^State:[[:space:]]*[^T[:space:]]' /proc/"$1"/task/*/status
    [ $? = 1 ] && exit 0
    sleep 0.001
done
echo "process $1 did not stop after 5000 looks" >&2
exit 1
"#;

impl<'a> Paused<'a> {
    fn new(sd: &'a SystemdBox, pids: Vec<String>) -> Self {
        let mut paused = Paused {
            sd,
            pids: Vec::new(),
        };
        for pid in pids {
            let out = sd.run("sh", &["-c", PAUSE, "sh", &pid]);
            // Resumed on drop even if it did not stop in time.
            paused.pids.push(pid.clone());
            assert!(
                out.status.success(),
                "pausing {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        paused
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        for pid in &self.pids {
            self.sd.run("kill", &["-CONT", pid]);
        }
    }
}

/// Both default instances behind `addr` answer `/version` with `version`;
/// returns them, sorted by instance.
pub fn assert_serving(sd: &SystemdBox, addr: SocketAddr, version: &str) -> Vec<Version> {
    let seen = versions(sd, addr, 2);
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
