//! Instructions per request, counted by `valgrind --tool=callgrind`: `app`
//! and the baseline each serve a fixed number of keep-alive `GET /` under
//! callgrind, then stop on SIGTERM (callgrind writes its counts on a normal
//! exit). Each runs twice, with N and 2N requests: the difference over N is
//! the cost of a request, with start-up and shutdown left out.
//!
//! It is done over one connection, then over a few: over one, every request
//! finds the runtime asleep and wakes it, and the count repeats to 0.1%;
//! over a few, requests share wake-ups as they do under load, and which ones
//! do depends on how valgrind interleaves the threads, so the count wanders
//! by a percent or two between runs. Wall-clock runs on this shared machine
//! wander by 10%. These are user-space instructions only: the kernel's share
//! of a request (the socket reads and writes, epoll) does not show, and it
//! is the same for both servers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use super::{Server, local_addr};

/// N: the requests of the shorter run (the longer one sends twice as many).
pub const REQUESTS: u64 = 20_000;
/// Keep-alive connections the requests are spread over, each sending its
/// next request once the previous answer is in: one run with each count.
pub const CONNECTIONS: [u64; 2] = [1, 4];

/// What callgrind counted for one server.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    /// Instructions per request: (I(2N) - I(N)) / N.
    pub per_request: f64,
    /// What is left of the shorter run: start-up, shutdown, the idle runtime.
    pub fixed: f64,
}

/// How the requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Keep-alive `GET /`, by the client below.
    Http1,
    /// h2c with prior knowledge, by h2load (`-m1`: one stream at a time on
    /// each connection), against `baseline --h2`.
    H2c,
}

/// Both servers' counts over the same number of connections.
pub struct Figures {
    pub protocol: Protocol,
    pub connections: u64,
    pub app: Count,
    pub baseline: Count,
}

impl Figures {
    pub fn ratio(&self) -> f64 {
        self.app.per_request / self.baseline.per_request
    }

    /// The table's row for all the runs (of one protocol).
    pub fn row(runs: &[Figures]) -> String {
        let what = match runs.first().map(|f| f.protocol) {
            Some(Protocol::H2c) => "HTTP/2 (h2c, h2load -m1)",
            _ => "HTTP/1.1 keep-alive",
        };
        let figures = runs
            .iter()
            .map(|f| {
                format!(
                    "over {}: app {:.0}, baseline {:.0}, **{:.2}×**",
                    plural(f.connections, "connection"),
                    f.app.per_request,
                    f.baseline.per_request,
                    f.ratio()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "| `/` instructions per request, {what} (callgrind, (I(2N) - I(N)) / N, N = {REQUESTS}) | {figures} | |"
        )
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn measure(app: &Path, baseline: &Path, protocol: Protocol) -> Vec<Figures> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let baseline_args: &[&str] = match protocol {
        Protocol::Http1 => &[],
        Protocol::H2c => &["--h2"],
    };
    CONNECTIONS
        .iter()
        .map(|&connections| {
            println!("over {}:", plural(connections, "connection"));
            let count = |name, program, args| {
                count(dir.path(), name, program, args, connections, protocol)
            };
            let figures = Figures {
                protocol,
                connections,
                app: count("app", app, &["--log-level", "warn"]),
                baseline: count("baseline", baseline, baseline_args),
            };
            for (name, c) in [("app", figures.app), ("baseline", figures.baseline)] {
                println!(
                    "{name:>10}: {:>7.0} instructions per request  (start-up and shutdown: {:.1} M)",
                    c.per_request,
                    c.fixed / 1e6
                );
            }
            println!("app / baseline: {:.2}×", figures.ratio());
            figures
        })
        .collect()
}

/// Runs `program` under callgrind with N, then 2N requests.
fn count(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[&str],
    connections: u64,
    protocol: Protocol,
) -> Count {
    let run = |requests| instructions(dir, name, program, args, requests, connections, protocol);
    let short = run(REQUESTS);
    let long = run(2 * REQUESTS);
    let per_request = (long - short) as f64 / REQUESTS as f64;
    println!(
        "{name:>10}: {:.1} M instructions for {REQUESTS} requests, {:.1} M for {}",
        short as f64 / 1e6,
        long as f64 / 1e6,
        2 * REQUESTS
    );
    Count {
        per_request,
        fixed: short as f64 - per_request * REQUESTS as f64,
    }
}

/// The instructions `program` ran, start to exit, serving `requests`.
fn instructions(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[&str],
    requests: u64,
    connections: u64,
    protocol: Protocol,
) -> u64 {
    let run = format!("{name}-{protocol:?}-{connections}-{requests}");
    let out = dir.join(format!("{run}.callgrind"));
    let log = dir.join(format!("{run}.valgrind"));
    let addr = local_addr();
    let listen = addr.to_string();
    let mut command = vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        format!("--log-file={}", log.display()),
        program.display().to_string(),
    ];
    if name == "app" {
        command.extend(["--listen".to_owned(), listen]);
    } else {
        command.push(listen);
    }
    command.extend(args.iter().map(|a| (*a).to_owned()));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut server = Server::start(Path::new("valgrind"), &command, addr);
    match protocol {
        Protocol::Http1 => keep_alive_gets(addr, requests, connections),
        Protocol::H2c => h2load_gets(addr, requests, connections),
    }
    let status = server.stop();
    let valgrind_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "{name} under callgrind exited with {status}:\n{}",
        valgrind_log()
    );
    let counts = std::fs::read_to_string(&out).unwrap_or_else(|e| {
        panic!(
            "no callgrind output {} ({e}):\n{}",
            out.display(),
            valgrind_log()
        )
    });
    total(&counts).unwrap_or_else(|| panic!("no summary: or totals: in {}", out.display()))
}

/// The first event's total (Ir, instructions), from callgrind's output file.
fn total(counts: &str) -> Option<u64> {
    ["summary:", "totals:"].iter().find_map(|key| {
        counts
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `requests` GET / over `connections` keep-alive connections, one request
/// at a time on each; every answer must be a 200. The connections are closed
/// when it returns.
fn keep_alive_gets(addr: SocketAddr, requests: u64, connections: u64) {
    std::thread::scope(|scope| {
        for c in 0..connections {
            let share = requests / connections + u64::from(c < requests % connections);
            scope.spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut buf = Vec::with_capacity(1024);
                for _ in 0..share {
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .expect("send a request");
                    read_response(&mut stream, &mut buf);
                }
            });
        }
    });
}

/// `requests` GET / over `connections` h2c connections, by h2load, one
/// stream at a time on each; every one must succeed with a 200.
fn h2load_gets(addr: SocketAddr, requests: u64, connections: u64) {
    let out = std::process::Command::new("h2load")
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &connections.to_string(),
            "-m",
            "1",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = format!("{requests} succeeded, 0 failed, 0 errored, 0 timeout");
    assert!(
        out.status.success()
            && text.contains(&wanted)
            && text.contains(&format!("status codes: {requests} 2xx")),
        "h2load did not get {requests} answers of 200:\n{text}"
    );
}

/// Reads one response with a Content-Length body; panics unless it is 200.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("an ASCII head");
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "not a 200 answer:\n{head}"
            );
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    if name.eq_ignore_ascii_case("content-length") {
                        value.trim().parse().ok()
                    } else {
                        None
                    }
                })
                .expect("a Content-Length");
            if buf.len() >= end + 4 + length {
                buf.drain(..end + 4 + length);
                return;
            }
        }
        let n = stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "the server closed the connection mid-run");
        buf.extend_from_slice(&chunk[..n]);
    }
}
