//! gRPC through every deploy verb: examples/greeter (a tonic server on the
//! kit's public API) under the booted systemd with its own rendered units,
//! while Python's grpcio calls it from 21 channels that share one TCP
//! connection, as grpcio does by default: unary calls in loops, 10 long
//! server streams and 5 bidi streams. Every unary call must succeed; every
//! stream a deploy ends must end with the drain's UNAVAILABLE (then the
//! client resumes it), never with a reset or a connection error; no stream
//! message may be lost, duplicated or out of order, as grpcio counts them;
//! and every drain must finish.

use std::process::Stdio;
use std::time::Instant;

use support::consumer::example_binary;
use support::drains::{assert_drains_finished_within, drains};
use support::service::blocking;
use support::systemd::{Install, SystemdBox, can_boot};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const NAME: &str = "greeter";
/// grpcio's threads: unary loops, server streams, bidi streams.
const UNARY: usize = 6;
const STREAMS: usize = 10;
const BIDI: usize = 5;
/// Every drain ends well before the 10 s deadline, with nothing cut.
const DRAIN_LIMIT_MS: u64 = 5_000;

/// The verbs a user deploys with, each run every round; the instances' drains
/// they cause (a reload or a restart of each of the two instances).
const VERBS: &[&[&str]] = &[
    &["/usr/bin/greeter", "rollout"],
    &["/usr/bin/greeter", "rollout", "--restart"],
    &["systemctl", "reload-or-restart", "greeter@1", "greeter@2"],
    &["systemctl", "reload", "greeter@*"],
];
/// Ten rollouts by reload and ten by restart, and as many of each systemctl verb.
const ROUNDS: usize = 10;

fn has_grpcio() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_through_every_deploy_verb_fails_no_call() {
    let test = "grpcio_through_every_deploy_verb_fails_no_call";
    if !can_boot(test) {
        return;
    }
    if !has_grpcio() {
        support::cannot_run(
            test,
            "Python's grpcio is missing (apt-get install python3-grpcio)",
        );
        return;
    }
    let binary = tokio::task::spawn_blocking(|| example_binary(NAME))
        .await
        .unwrap();
    // Its units, as `greeter units` renders them for /usr/bin/greeter.
    let rendered = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&binary)
        .args(["units", "--out"])
        .arg(rendered.path())
        .args(["--exec", "/usr/bin/greeter"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let install = Install::service(NAME, &rendered.path().join("systemd"), &binary, "");
    let (sd, addr) = SystemdBox::boot_service_on_free_port(NAME, install);
    blocking(&sd, |sd| {
        sd.systemctl_ok(&["start", "greeter.socket", "greeter.target"])
    })
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_client.py");
    let mut client = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(addr.to_string())
        .args([UNARY, STREAMS, BIDI].map(|n| n.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));

    let started = Instant::now();
    for round in 1..=ROUNDS {
        for verb in VERBS {
            let verb: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
            let (ok, output) = blocking(&sd, move |sd| {
                let args: Vec<&str> = verb[1..].iter().map(String::as_str).collect();
                let out = sd.run(&verb[0], &args);
                (
                    out.status.success(),
                    format!(
                        "{} {args:?}: {}{}",
                        verb[0],
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                )
            })
            .await;
            assert!(ok, "round {round}: {output}");
            if round == 1 {
                println!("{output}");
            }
        }
    }
    let took = started.elapsed();
    drop(client.stdin.take());
    let summary = lines
        .next_line()
        .await
        .unwrap()
        .expect("the client printed no counts");
    assert!(client.wait().await.unwrap().success());
    println!(
        "{ROUNDS} rounds of {} verbs in {took:?}; grpcio: {summary}",
        VERBS.len()
    );
    let counts: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(counts["failed"], 0, "grpcio counted failures: {summary}");
    for key in [
        "unary_ok",
        "stream_messages",
        "bidi_echoes",
        // The deploys ended streams, and their clients resumed them.
        "streams_resumed",
        "bidi_resumed",
    ] {
        assert!(counts[key].as_u64().unwrap() > 0, "no {key}: {summary}");
    }

    // Restarts drain ("drain started" … "drain finished"): one per
    // instance per `rollout --restart`. Reloads hand over ("handover
    // finished"): one per instance for each of the other three verbs.
    let drains = blocking(&sd, |sd| drains(sd, NAME)).await;
    let longest = assert_drains_finished_within(&drains, 2 * ROUNDS, DRAIN_LIMIT_MS);
    let handovers = blocking(&sd, |sd| {
        sd.journal_entries(&["-t", NAME])
            .into_iter()
            .filter(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("reload: handover finished"))
            })
            .map(|e| e["F_CUT"].as_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    })
    .await;
    assert_eq!(
        handovers.len(),
        2 * 3 * ROUNDS,
        "handovers' cut counts: {handovers:?}"
    );
    assert!(handovers.iter().all(|cut| cut == "0"), "cut: {handovers:?}");
    println!("longest restart drain {longest} ms");

    // tonic's router answers every unknown path, /readyz too, with HTTP 200
    // (grpc-status 12); the kit answers it for an instance that is leaving.
    let readyz = || async move {
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", " %{http_code}"])
            .arg(format!("http://{addr}/readyz"))
            .output()
            .await
            .expect("run curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(readyz().await.ends_with(" 200"));
    let (ok, output) = blocking(&sd, |sd| {
        let out = sd.run("/usr/bin/greeter", &["rotation", "out"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await;
    assert!(ok, "{output}");
    assert_eq!(readyz().await, "out of rotation\n 503");
}
