//! Clients that behave like Node's `http.Agent({ keepAlive: true })`: a pool
//! of keep-alive connections, each sending a request, reading the whole
//! response, then idling a random while before the next, with no retry.
//!
//! What such a pool does, and so what this one counts:
//! - a connection the server closes while it idles is dropped from the pool
//!   and the next request opens a new one: counted in `opened` (and
//!   `closed_idle`), which is what a reload must not cause;
//! - a request that meets a reset, an end of stream before its response is
//!   complete, or no answer in time is an error the user sees: no retry.
//!
//! Plain HTTP/1.1 written by hand on a tokio `TcpStream`, so nothing between
//! the test and the socket reconnects or retries on its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// Bounds connecting and each request, so a stuck server is an error, not a hang.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
pub struct PoolCounts {
    /// Complete responses, by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Errors a user would see, by kind.
    pub errors: BTreeMap<String, u64>,
    /// TCP connections opened, the pool's first ones included.
    pub opened: u64,
    /// Connections the server closed while they idled in the pool.
    pub closed_idle: u64,
    /// Responses that carried `Connection: close`.
    pub closes: u64,
}

impl PoolCounts {
    pub fn responses(&self) -> u64 {
        self.by_status.values().sum()
    }

    pub fn non_2xx(&self) -> u64 {
        super::load::with_status(&self.by_status, false)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, other: PoolCounts) {
        for (status, n) in other.by_status {
            *self.by_status.entry(status).or_default() += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.opened += other.opened;
        self.closed_idle += other.closed_idle;
        self.closes += other.closes;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} responses {:?}, {} errors {:?}, {} connections opened, {} closed by the server while idle, {} Connection: close",
            self.responses(),
            self.by_status,
            self.error_count(),
            self.errors,
            self.opened,
            self.closed_idle,
            self.closes,
        )
    }
}

/// A running pool of keep-alive connections.
pub struct Pool {
    pub connections: usize,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<PoolCounts>,
}

impl Pool {
    /// Opens `connections` connections to `addr`, each asking `GET path` and
    /// idling up to `idle_max` between requests; returns once every one has
    /// had its first answer (or error), so the pool is full when the test
    /// goes on.
    pub async fn start(
        addr: SocketAddr,
        path: &'static str,
        connections: usize,
        idle_max: Duration,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (first_tx, mut first_rx) = mpsc::channel(connections.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..connections {
            let rng = Rng::new(i as u64);
            tasks.spawn(connection(
                addr,
                path,
                idle_max,
                rng,
                stop_rx.clone(),
                first_tx.clone(),
            ));
        }
        drop(first_tx);
        for _ in 0..connections {
            let first = tokio::time::timeout(REQUEST_LIMIT * 2, first_rx.recv()).await;
            assert!(
                matches!(first, Ok(Some(()))),
                "the pool's connections did not all get a first answer"
            );
        }
        Self {
            connections,
            stop,
            tasks,
        }
    }

    pub async fn stop(mut self) -> PoolCounts {
        let _ = self.stop.send(true);
        let mut total = PoolCounts::default();
        while let Some(counts) = self.tasks.join_next().await {
            total.merge(counts.expect("a pool connection panicked"));
        }
        total
    }
}

/// One pooled connection's life: request, response, idle, again; a new TCP
/// connection only when the last one ended.
async fn connection(
    addr: SocketAddr,
    path: &'static str,
    idle_max: Duration,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
    first: mpsc::Sender<()>,
) -> PoolCounts {
    let mut counts = PoolCounts::default();
    let mut first = Some(first);
    let mut stream: Option<TcpStream> = None;
    let request = format!("GET {path} HTTP/1.1\r\nHost: pool\r\n\r\n");
    while !*stop.borrow() {
        if stream.is_none() {
            match tokio::time::timeout(REQUEST_LIMIT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    counts.opened += 1;
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Ok(Err(err)) => counts.error(format!("connect: {:?}", err.kind())),
                Err(_) => counts.error("connect: timed out"),
            }
        }
        if let Some(s) = stream.as_mut() {
            match tokio::time::timeout(REQUEST_LIMIT, exchange(s, request.as_bytes())).await {
                Ok(Ok(response)) => {
                    *counts.by_status.entry(response.status).or_default() += 1;
                    if response.close {
                        counts.closes += 1;
                        stream = None;
                    }
                }
                Ok(Err(err)) => {
                    counts.error(err);
                    stream = None;
                }
                Err(_) => {
                    counts.error("request: timed out");
                    stream = None;
                }
            }
        }
        if let Some(first) = first.take() {
            let _ = first.send(()).await;
        }
        let idle = idle_max.mul_f64(rng.unit());
        if idle_until(&mut stream, &mut counts, &mut stop, idle).await {
            break;
        }
    }
    counts
}

/// Idles for `idle`, as a pooled socket does: an end of stream from the
/// server drops the connection from the pool (the next request opens a
/// new one); bytes nobody asked for are an error. True when told to stop.
async fn idle_until(
    stream: &mut Option<TcpStream>,
    counts: &mut PoolCounts,
    stop: &mut watch::Receiver<bool>,
    idle: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let Some(s) = stream.as_mut() else {
            return tokio::select! {
                () = tokio::time::sleep_until(deadline) => false,
                _ = stop.changed() => true,
            };
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return false,
            _ = stop.changed() => return true,
            readable = s.readable() => {
                if readable.is_err() {
                    counts.error("idle: socket error");
                    *stream = None;
                    continue;
                }
                let mut byte = [0u8; 1];
                match s.try_read(&mut byte) {
                    Ok(0) => {
                        counts.closed_idle += 1;
                        *stream = None;
                    }
                    Ok(_) => {
                        counts.error("idle: bytes nobody asked for");
                        *stream = None;
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => {
                        counts.error(format!("idle: {:?}", err.kind()));
                        *stream = None;
                    }
                }
            }
        }
    }
}

struct Response {
    status: u16,
    /// `Connection: close`: the server ends the connection after it.
    close: bool,
}

/// Sends one request and reads its whole response (Content-Length or
/// chunked body). The error says where it failed, as a user would see it.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Result<Response, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {:?}", e.kind()))?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, &mut buf, "head").await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head: not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("head: bad status line {head:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = buf.split_off(head_end);
    if chunked {
        read_chunked(stream, &mut body).await?;
    } else {
        let length = length.ok_or("head: neither Content-Length nor chunked")?;
        while body.len() < length {
            read_more(stream, &mut body, "body").await?;
        }
        if body.len() > length {
            return Err("body: more bytes than Content-Length".into());
        }
    }
    Ok(Response { status, close })
}

/// Reads a chunked body to its last chunk and trailer end.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut at = 0;
    loop {
        let line_end = loop {
            if let Some(end) = find(&buf[at..], b"\r\n") {
                break at + end;
            }
            read_more(stream, buf, "chunk size").await?;
        };
        let size_text = std::str::from_utf8(&buf[at..line_end]).map_err(|_| "chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from our server: the body ends with one more CRLF.
            while buf.len() < at + 2 {
                read_more(stream, buf, "last chunk").await?;
            }
            return Ok(());
        }
        while buf.len() < at + size + 2 {
            read_more(stream, buf, "chunk").await?;
        }
        at += size + 2;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, what: &str) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) => Err(format!("{what}: end of stream before a full response")),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(err) => Err(format!("{what}: {:?}", err.kind())),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// xorshift64*: idle times that differ per connection and per run, without
/// a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Self((seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
