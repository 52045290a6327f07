//! The built binary as a process: a notify socket bound by the test, stderr
//! collected line by line, signals, and failures that print the command, its
//! exit status and its output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long any awaited event may take before the test fails.
pub const EVENT_LIMIT: Duration = Duration::from_secs(15);

/// The build of the reference service (`cargo build -p app`; `--release`
/// for the benchmarks), built on first use: it is a package of its own
/// (src/bin/app), so cargo does not hand this package's tests its path.
pub fn app_binary() -> &'static str {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let path = super::consumer::example_binary("app");
        path.to_str().expect("a UTF-8 target directory").to_owned()
    })
}

/// A free loopback port: bound, read, released. Another process could take it
/// in between; on a test machine that is rare enough.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `NOTIFY_SOCKET` the test owns, to receive what the app tells systemd.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    socket: UnixDatagram,
    pub seen: Vec<String>,
}

impl NotifySocket {
    #[allow(clippy::new_without_default)] // it binds a socket: no default value
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            _dir: dir,
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits for a datagram containing `line` (such as `READY=1`, or `KEY=`
    /// for any value) from `app`
    /// and returns it; fails with the app's output if none comes.
    pub fn expect(&mut self, app: &mut Process, line: &str) -> String {
        let until = Instant::now() + EVENT_LIMIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                app.fail(&format!(
                    "no {line:?} from the app; it sent {:?}",
                    self.seen
                ));
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(message.clone());
            // `KEY=` matches any value of KEY.
            let matches = |l: &str| l == line || (line.ends_with('=') && l.starts_with(line));
            if message.lines().any(matches) {
                return message;
            }
        }
    }
}

/// A running app (or `systemd-socket-activate` execing into it).
pub struct Process {
    pub command: String,
    pid: i32,
    /// Sent by the thread that owns the child and waits for it.
    exit: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    lines: mpsc::Receiver<String>,
    output: Arc<Mutex<Vec<String>>>,
    /// The threads copying stdout and stderr; they end at EOF.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let command = format!("{program} {}", args.join(" "));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        let (tx, lines) = mpsc::channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }));
        }
        let pid = child.id() as i32;
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child: Child = child;
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Self {
            command,
            pid,
            exit,
            status: None,
            lines,
            output,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Fails the test with everything known about the process.
    pub fn fail(&mut self, what: &str) -> ! {
        let status = self.status.or_else(|| self.exit.try_recv().ok());
        panic!(
            "{what}\ncommand: {}\nstatus: {status:?}\noutput:\n{}",
            self.command,
            self.output()
        );
    }

    /// Waits for an output line containing every one of `parts`.
    pub fn wait_for_line(&mut self, parts: &[&str]) -> String {
        let until = Instant::now() + EVENT_LIMIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(_) => self.fail(&format!("no output line with {parts:?}")),
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "cannot signal {}", self.command);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match self.exit.recv_timeout(EVENT_LIMIT) {
            Ok(status) => {
                self.status = Some(status);
                // The pipes reach EOF with the process; read them to the end
                // so `output` is complete.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                status
            }
            Err(_) => self.fail("the process did not exit"),
        }
    }

    /// Waits for the exit and checks its code, printing the output if it differs.
    pub fn expect_exit(&mut self, code: i32) {
        let status = self.wait_exit();
        if status.code() != Some(code) {
            self.fail(&format!(
                "expected exit {code}, got {status:?} (signal {:?})",
                status.signal()
            ));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() && self.exit.try_recv().is_err() {
            // SAFETY: as in `signal`; the waiter thread has not reaped it yet.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exit.recv_timeout(EVENT_LIMIT);
        }
    }
}

/// GET over a blocking TCP connection, returning the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let stream = std::net::TcpStream::connect(addr)?;
    request(stream, path)
}

/// `http_get`, bounded: fails after `within` instead of waiting forever
/// on a server that does not accept or answer.
pub fn http_get_within(
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> std::io::Result<(u16, String)> {
    let stream = std::net::TcpStream::connect_timeout(&addr, within)?;
    stream.set_read_timeout(Some(within))?;
    stream.set_write_timeout(Some(within))?;
    request(stream, path)
}

/// GET over any blocking stream; the request asks the server to close.
pub fn request<S: std::io::Read + std::io::Write>(
    mut stream: S,
    path: &str,
) -> std::io::Result<(u16, String)> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The address in a `STATUS=serving http on ADDR` line.
pub fn served_address(ready: &str) -> SocketAddr {
    ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving http on "))
        .and_then(|a| a.split(", ").next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no served address in {ready:?}"))
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB, from its
/// `/proc/PID/status`; 0 for a field that is missing.
pub fn rss_from_status(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
