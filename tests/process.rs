//! The built `app` binary as a process: a notify socket bound by the test,
//! real signals, and sockets passed by `systemd-socket-activate`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;

use support::process::{
    NotifySocket, Process, app_binary, free_port, http_get, path_str, request, served_address,
};

const ACTIVATE: &str = "systemd-socket-activate";

/// `systemd-socket-activate` comes with systemd; without it these tests
/// cannot run. In CI that is a failure, elsewhere a visible skip.
fn activate_available() -> bool {
    let found = Command::new(ACTIVATE).arg("--version").output().is_ok();
    if !found {
        support::cannot_run(
            "process tests",
            &format!("{ACTIVATE} is not installed (apt-get install systemd)"),
        );
    }
    found
}

#[test]
fn ready_is_sent_once_requests_are_served_and_stopping_on_sigterm() {
    let mut notify = NotifySocket::new();
    let mut app = Process::spawn(
        app_binary(),
        &["--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path_str(&notify.path))],
    );
    let ready = notify.expect(&mut app, "READY=1");
    assert_eq!(notify.seen.len(), 1, "READY=1 is the first thing sent");
    let addr = served_address(&ready);
    // No retry: the moment READY=1 is sent, a request must be answered.
    let (status, body) = http_get(addr, "/").unwrap();
    assert_eq!(status, 200, "{body}");

    app.signal(libc::SIGTERM);
    let stopping = notify.expect(&mut app, "STOPPING=1");
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    app.expect_exit(0);
    let output = app.output();
    assert!(output.contains("drain finished"), "{output}");
}

#[test]
fn systemd_socket_activate_passes_a_tcp_socket() {
    if !activate_available() {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut notify = NotifySocket::new();
    let notify_env = format!("NOTIFY_SOCKET={}", notify.path.display());
    let mut app = Process::spawn(
        ACTIVATE,
        &[
            "-l",
            &addr,
            "--fdname=http",
            "-E",
            &notify_env,
            app_binary(),
            "--instance",
            "activated",
        ],
        &[],
    );
    app.wait_for_line(&["Listening on", &addr]);
    // The first connection makes systemd-socket-activate exec the app, which
    // finds this connection waiting in the passed socket's queue.
    let (status, body) = http_get(addr.parse().unwrap(), "/version").unwrap();
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(version["instance"], "activated");
    assert_eq!(version["pid"], app.pid(), "the activator exec'd the app");
    let ready = notify.expect(&mut app, "READY=1");
    assert!(
        ready.contains(&format!("serving http on {addr}")),
        "{ready}"
    );

    app.signal(libc::SIGTERM);
    notify.expect(&mut app, "STOPPING=1");
    app.expect_exit(0);
}

#[test]
fn systemd_socket_activate_passes_a_unix_socket() {
    if !activate_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let mut app = Process::spawn(ACTIVATE, &["-l", path_str(&path), app_binary()], &[]);
    app.wait_for_line(&["Listening on", path_str(&path)]);
    let (status, body) = request(UnixStream::connect(&path).unwrap(), "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    app.wait_for_line(&["ready", &format!("unix:{}", path.display())]);
    app.signal(libc::SIGTERM);
    app.expect_exit(0);
}

#[test]
fn a_datagram_socket_is_a_clear_error() {
    if !activate_available() {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut app = Process::spawn(
        ACTIVATE,
        &["--datagram", "-l", &addr, "--fdname=http", app_binary()],
        &[],
    );
    app.wait_for_line(&["Listening on", &addr]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"wake up", &addr).unwrap();
    app.expect_exit(1);
    app.wait_for_line(&[
        "app: error: fd 3 (LISTEN_FDNAMES \"http\") is not a stream socket (it is a datagram socket)",
    ]);
}

#[test]
fn the_drain_deadline_cuts_a_long_request_and_exits_3() {
    let mut notify = NotifySocket::new();
    let mut app = Process::spawn(
        app_binary(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--drain-deadline",
            "500ms",
            "--idle-grace",
            "100ms",
            "--log-level",
            "debug",
        ],
        &[("NOTIFY_SOCKET", path_str(&notify.path))],
    );
    let addr = served_address(&notify.expect(&mut app, "READY=1"));
    let client = std::thread::spawn(move || http_get(addr, "/slow?ms=30000"));
    app.wait_for_line(&["request", "/slow?ms=30000"]);
    app.signal(libc::SIGTERM);
    let extend = notify.expect(&mut app, "EXTEND_TIMEOUT_USEC=");
    let usec: u64 = extend
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        usec <= 2_500_000,
        "extends systemd's stop timeout only to our own deadline (+2s), not {usec}"
    );
    app.expect_exit(3);
    app.wait_for_line(&["drain deadline passed: cut 1 connections"]);
    let cut = client.join().unwrap();
    assert!(
        cut.as_ref().map_or(true, |(_, body)| body.is_empty()),
        "the cut request got no answer: {cut:?}"
    );
}

#[test]
fn watchdog_pings_come_when_systemd_asks_for_them() {
    let mut notify = NotifySocket::new();
    let mut app = Process::spawn(
        app_binary(),
        &["--listen", "127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", path_str(&notify.path)),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    notify.expect(&mut app, "READY=1");
    notify.expect(&mut app, "WATCHDOG=1");
    notify.expect(&mut app, "WATCHDOG=1");
    app.signal(libc::SIGTERM);
    app.expect_exit(0);
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut notify = NotifySocket::new();
    let mut app = Process::spawn(
        app_binary(),
        &["--listen", "127.0.0.1:0", "--log-level", "debug"],
        &[("NOTIFY_SOCKET", path_str(&notify.path))],
    );
    let addr = served_address(&notify.expect(&mut app, "READY=1"));
    let _client = std::thread::spawn(move || http_get(addr, "/slow?ms=30000"));
    app.wait_for_line(&["request", "/slow?ms=30000"]);
    app.signal(libc::SIGINT);
    app.wait_for_line(&["drain started", "SIGINT"]);
    app.signal(libc::SIGTERM);
    app.expect_exit(4);
    app.wait_for_line(&["second drain signal"]);
}

#[test]
fn sighup_reloads_the_settings_file_and_keeps_them_when_it_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, "log_level = \"info\"\n").unwrap();
    let mut notify = NotifySocket::new();
    let mut app = Process::spawn(
        app_binary(),
        &["--listen", "127.0.0.1:0", "--config", path_str(&config)],
        &[("NOTIFY_SOCKET", path_str(&notify.path))],
    );
    let addr = served_address(&notify.expect(&mut app, "READY=1"));

    // debug shows each request: seeing one proves the new filter is applied.
    std::fs::write(&config, "log_level = \"debug\"\n").unwrap();
    app.signal(libc::SIGHUP);
    notify.expect(&mut app, "RELOADING=1");
    notify.expect(&mut app, "READY=1");
    app.wait_for_line(&["settings reloaded"]);
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    app.wait_for_line(&["request", "/healthz"]);

    std::fs::write(&config, "drain_deadline = \"soon\"\n").unwrap();
    app.signal(libc::SIGHUP);
    notify.expect(&mut app, "RELOADING=1");
    notify.expect(&mut app, "READY=1");
    app.wait_for_line(&["settings not reloaded", "drain_deadline"]);
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 200);
    app.wait_for_line(&["request", "/readyz"]);

    app.signal(libc::SIGTERM);
    app.expect_exit(0);
}

/// Arguments, environment, expected exit code, expected error line.
struct BadStart(
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    i32,
    &'static str,
);

#[test]
fn bad_settings_and_environments_are_one_clear_line_and_a_failure() {
    let cases: &[BadStart] = &[
        BadStart(
            &["--drain-deadline", "0s"],
            &[],
            1,
            "app: error: setting drain_deadline = \"0s\": must be more than zero",
        ),
        BadStart(
            &["--idle-timeout", "soon"],
            &[],
            2,
            "invalid value 'soon' for '--idle-timeout <DURATION>'",
        ),
        BadStart(
            &[],
            &[("APP_LISTEN", "nowhere")],
            2,
            "invalid value 'nowhere' for '--listen <ADDR>'",
        ),
        BadStart(
            &["--config", "/nonexistent/app.toml"],
            &[],
            1,
            "app: error: cannot read settings file /nonexistent/app.toml: No such file",
        ),
        BadStart(
            &[],
            &[("LISTEN_FDS", "abc")],
            1,
            "app: error: LISTEN_FDS=\"abc\" is not a number of sockets",
        ),
        BadStart(
            &[],
            &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
            1,
            "app: error: LISTEN_PID=1 names another process",
        ),
        BadStart(
            &[],
            &[("LISTEN_FDNAMES", "http")],
            1,
            "app: error: LISTEN_FDNAMES is set but LISTEN_FDS is not",
        ),
    ];
    for BadStart(args, env, code, expected) in cases {
        let mut app = Process::spawn(app_binary(), args, env);
        app.expect_exit(*code);
        let output = app.output();
        assert!(
            output.contains(expected),
            "{args:?} {env:?}: expected {expected:?} in:\n{output}"
        );
        assert!(!output.contains("panicked"), "{output}");
    }
}

#[test]
fn a_passed_fd_that_is_not_open_is_named() {
    // LISTEN_PID must be the app's own pid, which only exists once it runs:
    // a shell sets it and execs, as systemd does.
    let output = Command::new("sh")
        .args([
            "-c",
            "exec 3>&-; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http; exec \"$0\"",
            app_binary(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("app: error: fd 3 (LISTEN_FDNAMES \"http\") is not open"),
        "{stderr}"
    );
}

#[test]
fn a_passed_regular_file_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file.as_file(), "not a socket").unwrap();
    let output = Command::new("sh")
        .args([
            "-c",
            "exec 3<\"$1\"; export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\"",
            app_binary(),
            path_str(file.path()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("app: error: fd 3 (unnamed) is not a socket (it is a regular file)"),
        "{stderr}"
    );
}

/// Runs `app` to its exit and returns the exit code and its stderr, which
/// must be exactly one line: the error, as the journal shows it.
fn one_line_failure(command: &mut Command, what: &str) -> (i32, String) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert!(
        code == 1 || code == 2,
        "{what}: exit status {:?}, stderr:\n{stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("app: "), "{what}: {stderr}");
    (code, lines[0].to_owned())
}

/// Every combination of set, unset and malformed LISTEN_PID, LISTEN_FDS and
/// LISTEN_FDNAMES, with no fd open past stderr (so a well-formed one names
/// a closed fd) and --require-socket (so none binds an address instead):
/// each is one line on stderr and exit status 1.
#[test]
fn every_malformed_activation_environment_is_one_line_and_exit_1() {
    // "$$" is the app's own pid: the shell execs it.
    let pids = [
        None,
        Some("$$"),
        Some("1"),
        Some("abc"),
        Some(""),
        Some("-5"),
    ];
    let fds = [
        None,
        Some("0"),
        Some("1"),
        Some("3"),
        Some("abc"),
        Some("-1"),
        Some(""),
        Some("99999"),
        Some("18446744073709551617"),
    ];
    let names = [
        None,
        Some("http"),
        Some("a:b"),
        Some(""),
        Some("http:x:y"),
        Some("web"),
        Some("::"),
    ];
    let mut messages = std::collections::BTreeSet::new();
    let mut runs = 0;
    for pid in pids {
        for count in fds {
            for name in names {
                let mut script = String::from("exec 3>&- 4>&- 5>&-; ");
                for (var, value) in [
                    ("LISTEN_PID", pid),
                    ("LISTEN_FDS", count),
                    ("LISTEN_FDNAMES", name),
                ] {
                    if let Some(value) = value {
                        script.push_str(&format!("export {var}=\"{value}\"; "));
                    }
                }
                script.push_str("exec \"$0\" --require-socket");
                let what =
                    format!("LISTEN_PID={pid:?} LISTEN_FDS={count:?} LISTEN_FDNAMES={name:?}");
                let (code, line) = one_line_failure(
                    Command::new("sh").args(["-c", &script, app_binary()]),
                    &what,
                );
                assert_eq!(code, 1, "{what}: {line}");
                runs += 1;
                // The message without the values that vary.
                messages.insert(
                    line.split(['"', '=', '(', ';'])
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    }
    println!("{runs} activation environments, each one line and exit 1; the kinds of message:");
    for message in &messages {
        println!("  {message}");
    }
    assert!(messages.len() >= 8, "{messages:#?}");
}

/// Every setting, given a bad value as a flag, as an APP_* variable and in
/// the settings file: one line naming the setting, and a failure (2 for a
/// flag or variable clap cannot parse, 1 otherwise).
#[test]
fn every_bad_setting_is_one_line_naming_it() {
    // (setting, value as a flag or variable, value as TOML)
    let cases: &[(&str, &str, &str)] = &[
        ("drain_deadline", "0s", "\"0s\""),
        ("drain_deadline", "soon", "\"soon\""),
        ("drain_deadline", "2h", "7200"),
        ("idle_grace", "10m", "\"10m\""),
        ("idle_grace", "-1s", "-1"),
        ("header_read_timeout", "0", "0"),
        ("header_read_timeout", "1 fortnight", "\"1 fortnight\""),
        (
            "idle_timeout",
            "99999999999999999999s",
            "\"99999999999999999999s\"",
        ),
        ("listen", "nowhere", "\"nowhere\""),
        ("listen", "127.0.0.1:99999", "\"127.0.0.1:99999\""),
        ("instance", "", "\"\""),
        ("instance", "a\tb", "\"a\\tb\""),
        ("log_level", "loud=[", "\"loud=[\""),
        ("max_connections", "0", "0"),
        ("max_connections", "-1", "-1"),
        ("max_connections", "2000000", "2000000"),
        ("max_connections", "many", "\"many\""),
        ("max_header_bytes", "100", "100"),
        ("max_header_bytes", "1e9", "1e9"),
        ("max_body_bytes", "-1", "-1"),
        ("max_body_bytes", "1MB", "\"1MB\""),
        ("require_socket", "maybe", "\"maybe\""),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut runs = 0;
    for (name, flag_value, toml_value) in cases {
        let flag = format!("--{}", name.replace('_', "-"));
        let var = format!("APP_{}", name.to_uppercase());
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("{name} = {toml_value}\n")).unwrap();
        let ways: [(&str, Command); 3] = [
            ("flag", {
                let mut c = Command::new(app_binary());
                c.args(["--require-socket", &format!("{flag}={flag_value}")]);
                c
            }),
            ("variable", {
                let mut c = Command::new(app_binary());
                c.arg("--require-socket").env(&var, flag_value);
                c
            }),
            ("file", {
                let mut c = Command::new(app_binary());
                c.args(["--require-socket", "--config", path_str(&file)]);
                c
            }),
        ];
        for (way, mut command) in ways {
            if *name == "require_socket" && way == "flag" {
                continue; // the flag takes no value; its variable and key do
            }
            let what = format!("{name} = {flag_value:?} as a {way}");
            let (code, line) = one_line_failure(&mut command, &what);
            let named = line.contains(name) || line.contains(&flag);
            assert!(
                named,
                "{what}: the message does not name the setting: {line}"
            );
            if way == "file" {
                assert_eq!(code, 1, "{what}: {line}");
            }
            runs += 1;
        }
    }
    // A file that is not TOML at all, and one with a key that does not exist.
    for (text, expect) in [
        ("drain_deadline = ", "settings file"),
        ("drain_dedline = \"1s\"", "unknown field `drain_dedline`"),
        // The app's own section: its keys, typed and validated by the app.
        ("[app]\nslow_max = \"\"", "[app]"),
        ("[app]\nslow_max = \"0s\"", "slow_max"),
        ("[app]\nslow_mx = \"1s\"", "unknown field `slow_mx`"),
        ("slow_max = \"1s\"", "go under [app]"),
    ] {
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, text).unwrap();
        let (code, line) = one_line_failure(
            Command::new(app_binary()).args(["--require-socket", "--config", path_str(&file)]),
            text,
        );
        assert_eq!(code, 1);
        assert!(line.contains(expect), "{text}: {line}");
        runs += 1;
    }
    println!("{runs} bad settings, each one line naming the setting");
}
