//! In-place replacement, one layer below systemd: the built `app` started
//! by the test with a notify socket the test owns, replaced by SIGUSR1 or
//! by `app replace PID` (what `ExecReload=` runs). tests/reload.rs runs the
//! same under a booted systemd.

use std::time::Duration;

use support::process::{NotifySocket, Process, app_binary, path_str, served_address};
use support::raw::{End, RawConn};

/// The new process: not our child (the old process spawned it), so killed
/// here if a test fails before it exits.
struct Successor(i32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; at worst the pid is gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

impl Successor {
    fn signal(&self, signal: i32) {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(self.0, signal) }, 0);
    }
}

/// `app replace PID`, what `ExecReload=` runs: its exit status and output.
async fn run_replace(pid: i32) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(app_binary())
            .args(["replace", &pid.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The pid in `MAINPID=` of a notification.
fn main_pid(message: &str) -> i32 {
    message
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {message:?}"))
}

fn pid_of(body: &[u8]) -> i32 {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["pid"].as_i64().unwrap() as i32
}

fn start(settings: Option<&std::path::Path>) -> (NotifySocket, Process, std::net::SocketAddr) {
    let mut notify = NotifySocket::new();
    // The app logs each request it serves at debug: tests wait for those.
    let mut args = vec!["--listen", "127.0.0.1:0", "--log-level", "info,app=debug"];
    let config;
    if let Some(path) = settings {
        config = path.display().to_string();
        args.extend(["--config", &config]);
    }
    let mut app = Process::spawn(
        app_binary(),
        &args,
        &[("NOTIFY_SOCKET", path_str(&notify.path))],
    );
    let ready = notify.expect(&mut app, "READY=1");
    (notify, app, served_address(&ready))
}

/// Idle keep-alive connections and one with a request in flight all move to
/// the new process: the same TCP connections answer from the new pid, and
/// none is told `Connection: close` or closed. systemd is told the new
/// main pid and READY=1 in one datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keep_alive_connection_moves_to_the_new_process() {
    let (mut notify, mut old, addr) = start(None);
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut conn = RawConn::connect(addr).await.unwrap();
        let response = conn.get("/version").await.unwrap();
        assert_eq!(pid_of(&response.body), old.pid());
        idle.push(conn);
    }
    let mut busy = RawConn::connect(addr).await.unwrap();
    busy.send(b"GET /slow?ms=700 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    old.wait_for_line(&["request", "/slow"]);

    old.signal(libc::SIGUSR1);
    let message = notify.expect(&mut old, "MAINPID=");
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    let new = Successor(main_pid(&message));
    assert_ne!(new.0, old.pid());

    let slow = busy.response().await.unwrap();
    assert_eq!(slow.status, 200);
    assert!(
        !slow.closes(),
        "the response in flight keeps its connection"
    );
    let after = busy.get("/version").await.unwrap();
    assert_eq!(
        pid_of(&after.body),
        new.0,
        "the busy connection moved after its response"
    );
    for conn in &mut idle {
        let response = conn.get("/version").await.unwrap();
        assert_eq!(response.status, 200);
        assert!(!response.closes());
        assert_eq!(pid_of(&response.body), new.0, "served by the new process");
    }
    old.wait_for_line(&["handover finished", "moved 21 connections", "0 ended here"]);
    old.wait_for_line(&[
        "the old process has exited; took its connections",
        "connections=21",
    ]);

    // The new process drains as any does: every connection closes cleanly.
    new.signal(libc::SIGTERM);
    for conn in &mut idle {
        assert_eq!(conn.end().await.unwrap(), End::Eof);
    }
    old.wait_for_line(&["drain finished"]);
    old.expect_exit(0);
}

/// `app replace PID` returns once the new process serves; when the new
/// process refuses its settings it fails, naming why, and the old process
/// serves on untouched; fixed, the next replace succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_waits_for_the_new_process_and_a_failed_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("app.toml");
    std::fs::write(&settings, "idle_grace = \"1s\"\n").unwrap();
    let (mut notify, mut old, addr) = start(Some(&settings));
    let mut conn = RawConn::connect(addr).await.unwrap();
    assert_eq!(pid_of(&conn.get("/version").await.unwrap().body), old.pid());

    // Broken: idle_grace must be shorter than drain_deadline.
    std::fs::write(&settings, "idle_grace = \"1h\"\n").unwrap();
    let replace = run_replace(old.pid()).await;
    let said = String::from_utf8_lossy(&replace.stderr);
    assert_eq!(replace.status.code(), Some(1), "{said}");
    assert!(said.contains("the reload failed"), "{said}");
    // The old process's reason, sent back to the caller: not "see the log".
    assert!(
        said.contains("the new process exited before it was ready"),
        "{said}"
    );
    old.wait_for_line(&["reload failed: this process goes on serving", "exited"]);
    assert!(
        old.output().contains("idle_grace"),
        "the new process said why"
    );
    let ready = notify.expect(&mut old, "READY=1");
    assert!(!ready.contains("MAINPID"), "{ready:?}");
    let response = conn.get("/version").await.unwrap();
    assert_eq!(
        pid_of(&response.body),
        old.pid(),
        "the old process serves on"
    );
    assert!(!response.closes());

    std::fs::write(&settings, "idle_grace = \"2s\"\n").unwrap();
    let replace = run_replace(old.pid()).await;
    assert!(
        replace.status.success(),
        "{}",
        String::from_utf8_lossy(&replace.stderr)
    );
    let message = notify.expect(&mut old, "MAINPID=");
    let new = Successor(main_pid(&message));
    // `replace` returns once the new process serves; the idle connection
    // moves just after. A request sent before it moved would be answered
    // by the old process (and the connection moved after the response),
    // so the move is awaited before asking who answers.
    old.wait_for_line(&["handover finished", "moved 1 connections"]);
    let response = conn.get("/version").await.unwrap();
    assert_eq!(pid_of(&response.body), new.0);
    new.signal(libc::SIGTERM);
    assert_eq!(conn.end().await.unwrap(), End::Eof);
    old.wait_for_line(&["drain finished"]);
    old.expect_exit(0);
}

/// An HTTP/2 connection is not moved: it gets the drain's GOAWAY from the
/// old process, its stream in flight completes, and its client's next
/// connection reaches the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_drains_in_the_old_process() {
    let (mut notify, mut old, addr) = start(None);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let request = || {
        http::Request::get(format!("http://{addr}/slow?ms=500"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let in_flight = sender.send_request(request());
    old.wait_for_line(&["request", "/slow"]);
    old.signal(libc::SIGUSR1);
    let message = notify.expect(&mut old, "MAINPID=");
    let new = Successor(main_pid(&message));
    let response = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    // GOAWAY: the connection ends cleanly.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the old process ends the HTTP/2 connection")
        .unwrap()
        .unwrap();
    old.wait_for_line(&["handover finished", "moved 0 connections", "1 ended here"]);
    let mut fresh = RawConn::connect(addr).await.unwrap();
    assert_eq!(pid_of(&fresh.get("/version").await.unwrap().body), new.0);
    new.signal(libc::SIGTERM);
    old.wait_for_line(&["drain finished"]);
    old.expect_exit(0);
}
