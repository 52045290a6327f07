//! WebSocket clients we did not write the protocol of: Python's `websockets`
//! library (Debian's python3-websockets, 10.4 on Debian 12), driven by a
//! script written to a temporary file. Each client exchanges numbered
//! messages with an echo endpoint, checks every echo, and reconnects when
//! the server closes; the script prints a JSON summary at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The Python interpreters tried, in order: Debian's first, since its
/// python3-websockets lives in its dist-packages (a pyenv or venv `python3`
/// earlier in PATH would not see it).
const PYTHONS: [&str; 2] = ["/usr/bin/python3", "python3"];

/// A Python interpreter that can `import websockets`, and the library's
/// version; `None` when there is none.
pub fn python_with_websockets() -> Option<(String, String)> {
    PYTHONS.iter().find_map(|python| {
        let out = Command::new(python)
            .args(["-c", "import websockets; print(websockets.__version__)"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| {
            (
                (*python).to_owned(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )
        })
    })
}

/// What the clients saw, from the script's JSON summary.
#[derive(Debug, Clone, Default)]
pub struct WsSummary {
    pub clients: u64,
    /// Messages written to the socket.
    pub sent: u64,
    /// Echoes received that matched what was sent, in order.
    pub echoed: u64,
    /// Echoes that differed from the message awaiting one (content, type
    /// or order).
    pub mismatched: u64,
    /// Messages sent whose echo never came because the server's Close came
    /// first (the server sends no data after its Close).
    pub unanswered: u64,
    /// Close frames received from the server, by code.
    pub server_closes: BTreeMap<u16, u64>,
    /// Server closes where the closing handshake did not complete as the
    /// server's Close, then ours, then the end of the connection.
    pub unclean_handshakes: u64,
    /// Closures without a Close frame from the server (1006), or any
    /// exception other than a clean close; with a few examples.
    pub abnormal: u64,
    pub abnormal_examples: Vec<String>,
    /// New connections after the first one of each client.
    pub reconnections: u64,
    /// Failed connection attempts, timeouts and other errors, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Clients that were connected when told to stop, and closed themselves.
    pub own_closes: u64,
    /// The longest wait, after the server's Close, for the server to end
    /// the TCP connection (the client waits up to 10 s, then gives up).
    pub max_tcp_close_wait_ms: u64,
    /// From a message's send to its echo: median, 99th percentile, longest.
    pub round_trip_ms: [f64; 3],
    pub seconds: f64,
}

impl WsSummary {
    pub fn closes(&self) -> u64 {
        self.server_closes.values().sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn parse(json: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("the WebSocket clients' summary is not JSON ({e}): {json}"));
        let n = |key: &str| {
            v[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in the summary: {json}"))
        };
        let counts = |key: &str| -> BTreeMap<String, u64> {
            v[key]
                .as_object()
                .unwrap_or_else(|| panic!("no {key} in the summary: {json}"))
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect()
        };
        Self {
            clients: n("clients"),
            sent: n("sent"),
            echoed: n("echoed"),
            mismatched: n("mismatched"),
            unanswered: n("unanswered"),
            server_closes: counts("server_closes")
                .into_iter()
                .map(|(code, n)| (code.parse().unwrap(), n))
                .collect(),
            unclean_handshakes: n("unclean_handshakes"),
            abnormal: n("abnormal"),
            abnormal_examples: v["abnormal_examples"]
                .as_array()
                .map(|a| a.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default(),
            reconnections: n("reconnections"),
            errors: counts("errors"),
            own_closes: n("own_closes"),
            max_tcp_close_wait_ms: n("max_tcp_close_wait_ms"),
            round_trip_ms: ["p50", "p99", "max"]
                .map(|q| v[format!("round_trip_{q}_ms")].as_f64().unwrap_or_default()),
            seconds: v["seconds"].as_f64().unwrap_or_default(),
        }
    }
}

/// The clients, running until [`WsClients::stop`].
pub struct WsClients {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    _script: tempfile::TempDir,
}

impl WsClients {
    /// Starts `clients` clients against `ws://ADDR/PATH`, each pausing
    /// `pause` between an echo and its next message. They stop when told
    /// (stdin closed) or after `limit`, whichever comes first. Returns once
    /// every client has connected once and had its first echo.
    pub fn start(
        python: &str,
        addr: SocketAddr,
        path: &str,
        clients: usize,
        pause: Duration,
        limit: Duration,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("wsclients.py");
        std::fs::write(&script, SCRIPT).unwrap();
        let mut child = Command::new(python)
            .arg(&script)
            .arg(format!("ws://{addr}{path}"))
            .arg(clients.to_string())
            .arg(pause.as_secs_f64().to_string())
            .arg(limit.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut this = Self {
            stdin: child.stdin.take(),
            child,
            lines,
            _script: dir,
        };
        match this.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line == "connected" => this,
            other => {
                let _ = this.child.kill();
                panic!("the WebSocket clients did not all connect: {other:?}")
            }
        }
    }

    /// Tells every client to stop, waits for the script (bounded) and
    /// returns its summary.
    pub fn stop(mut self) -> WsSummary {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let summary = self.lines.recv_timeout(Duration::from_secs(60));
        let status = self.child.wait();
        match summary {
            Ok(json) => WsSummary::parse(&json),
            Err(e) => panic!("no summary from the WebSocket clients ({e}); exit {status:?}"),
        }
    }
}

impl Drop for WsClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The clients, for websockets 10.x (its asyncio "legacy" client, which
/// `websockets.connect` is there; `ConnectionClosed` carries `rcvd` and
/// `sent`, the Close frames received and sent, and `rcvd_then_sent`).
const SCRIPT: &str = r#"
import asyncio
import collections
import json
import sys
import threading
import time

import websockets
from websockets.exceptions import ConnectionClosed

uri = sys.argv[1]
clients = int(sys.argv[2])
pause = float(sys.argv[3])
limit = float(sys.argv[4])

stats = {
    "clients": clients,
    "sent": 0,
    "echoed": 0,
    "mismatched": 0,
    "unanswered": 0,
    "unclean_handshakes": 0,
    "abnormal": 0,
    "reconnections": 0,
    "own_closes": 0,
    "max_tcp_close_wait_ms": 0,
}
server_closes = collections.Counter()
round_trips = []
errors = collections.Counter()
abnormal_examples = []


def abnormal(what):
    stats["abnormal"] += 1
    if len(abnormal_examples) < 10:
        abnormal_examples.append(what)


async def client(i, stop, first_echo):
    n = 0
    connected_before = False
    while not stop.is_set():
        try:
            ws = await asyncio.wait_for(
                websockets.connect(
                    uri, ping_interval=None, close_timeout=10, max_size=None
                ),
                10,
            )
        except Exception as e:
            errors["connect: %s: %s" % (type(e).__name__, e)] += 1
            await asyncio.sleep(0.1)
            continue
        if connected_before:
            stats["reconnections"] += 1
        connected_before = True
        awaiting = None
        try:
            while not stop.is_set():
                n += 1
                text = "client %d message %d" % (i, n)
                message = text if n % 2 else text.encode()
                sent_at = time.monotonic()
                await ws.send(message)
                stats["sent"] += 1
                awaiting = message
                echo = await asyncio.wait_for(ws.recv(), 10)
                awaiting = None
                round_trips.append(time.monotonic() - sent_at)
                if echo == message:
                    stats["echoed"] += 1
                else:
                    stats["mismatched"] += 1
                if not first_echo.done():
                    first_echo.set_result(None)
                await asyncio.sleep(pause)
            await ws.close()
            stats["own_closes"] += 1
        except ConnectionClosed as e:
            if awaiting is not None:
                stats["unanswered"] += 1
            if e.rcvd is None:
                abnormal("client %d: %s (%s)" % (i, type(e).__name__, e))
                continue
            server_closes[e.rcvd.code] += 1
            if e.sent is None or e.rcvd_then_sent is not True:
                stats["unclean_handshakes"] += 1
            started = time.monotonic()
            await ws.wait_closed()
            waited = int((time.monotonic() - started) * 1000)
            stats["max_tcp_close_wait_ms"] = max(stats["max_tcp_close_wait_ms"], waited)
        except asyncio.TimeoutError:
            errors["no echo within 10 s"] += 1
            abnormal("client %d: no echo within 10 s" % i)
            ws.transport.abort()
        except Exception as e:
            abnormal("client %d: %s: %s" % (i, type(e).__name__, e))
            ws.transport.abort()


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_for_stdin():
        sys.stdin.readline()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    loop.call_later(limit, stop.set)
    started = time.monotonic()
    first_echoes = [loop.create_future() for _ in range(clients)]
    tasks = [
        asyncio.create_task(client(i, stop, first_echoes[i])) for i in range(clients)
    ]
    await asyncio.wait_for(asyncio.gather(*first_echoes), 60)
    print("connected", flush=True)
    await stop.wait()
    done, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        errors["client still running 30 s after stop"] += 1
        task.cancel()
    for task in done:
        if task.exception() is not None:
            errors["client task: %r" % task.exception()] += 1
    stats["server_closes"] = {str(k): v for k, v in sorted(server_closes.items())}
    stats["errors"] = dict(errors)
    stats["abnormal_examples"] = abnormal_examples
    stats["seconds"] = time.monotonic() - started
    round_trips.sort()
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        at = round((len(round_trips) - 1) * q) if round_trips else None
        stats["round_trip_%s_ms" % name] = (
            round(round_trips[at] * 1000, 1) if at is not None else 0.0
        )
    print(json.dumps(stats), flush=True)


asyncio.run(main())
"#;
