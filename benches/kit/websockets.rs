//! A drain with 1,000 open WebSockets: what an idle WebSocket costs `app` in
//! memory, and how long SIGTERM takes to close them all and exit.
//!
//! Every client opens `/ws`, has one message echoed, then only reads: on the
//! kit's Close it answers (tungstenite does, when it is read past the Close)
//! and waits for the server to close TCP. A client ends well when it got a
//! Close frame, the WebSocket then ended without an error, and TCP ended with
//! a FIN; anything else (no Close, an error, a reset, no end within the
//! deadline) is an abnormal end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Server, mib, ms, rss};

pub const SOCKETS: usize = 1_000;
/// Handshakes in flight at once while the sockets open.
const OPENING_AT_ONCE: usize = 100;
/// The app's default; the run says what it used.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// `--websocket-close-window` for each drain: the app's default, what a
/// deploy does, then none, what the closing itself costs.
const CLOSE_WINDOWS: [&str; 2] = ["1s", "0s"];
/// Longest a client waits, after SIGTERM, for its Close and the end.
const CLIENT_PATIENCE: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One drain of `SOCKETS` idle WebSockets.
pub struct Drain {
    /// The app's `--websocket-close-window`.
    pub close_window: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// SIGTERM to the first and the last Close frame a client received.
    pub first_close: Duration,
    pub last_close: Duration,
    /// SIGTERM to the last client seeing the server's FIN.
    pub last_end: Duration,
    /// SIGTERM to the process's exit, and its status.
    pub exit: Duration,
    pub status: ExitStatus,
    /// Close codes received, and how many of each.
    pub codes: BTreeMap<u16, usize>,
    pub abnormal: usize,
    /// What the abnormal ends were, and how many of each.
    pub abnormal_kinds: BTreeMap<String, usize>,
}

impl Drain {
    pub fn rss_per_socket_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / SOCKETS as f64
    }

    fn going_away(&self) -> usize {
        self.codes.get(&1001).copied().unwrap_or(0)
    }

    fn window(&self) -> String {
        humantime::format_duration(self.close_window).to_string()
    }

    pub fn row(&self) -> String {
        format!(
            "| drain of {SOCKETS} idle WebSockets, close window {} (SIGTERM → last Close frame a client received; → exit) | last Close {} (first {}), exit {} (status {}); {} of {SOCKETS} closed with 1001, **{} abnormal ends** | 0 abnormal, exit 0: {} |",
            self.window(),
            ms(self.last_close),
            ms(self.first_close),
            ms(self.exit),
            self.status.code().map_or("none".into(), |c| c.to_string()),
            self.going_away(),
            self.abnormal,
            super::verdict(
                self.abnormal == 0 && self.going_away() == SOCKETS && self.status.success()
            ),
        )
    }

    pub fn rss_row(&self) -> String {
        format!(
            "| RSS per idle WebSocket ({SOCKETS} open, one message echoed on each) | {:.1} KiB ({} before, {} after) | |",
            self.rss_per_socket_kib(),
            mib(self.rss_before_kib),
            mib(self.rss_after_kib),
        )
    }

    fn show(&self) {
        println!(
            "close window {}: SIGTERM -> first Close {}, last Close {}, last TCP end {}, exit {} ({})",
            self.window(),
            ms(self.first_close),
            ms(self.last_close),
            ms(self.last_end),
            ms(self.exit),
            self.status
        );
        println!(
            "  close codes {:?}; abnormal ends {} {:?}",
            self.codes, self.abnormal, self.abnormal_kinds
        );
        println!(
            "  RSS {} before, {} with {SOCKETS} idle WebSockets: {:.1} KiB each",
            mib(self.rss_before_kib),
            mib(self.rss_after_kib),
            self.rss_per_socket_kib()
        );
    }
}

/// How one client's WebSocket ended after SIGTERM.
struct Ending {
    /// When the Close frame came, and its code.
    close: Option<(Instant, Option<u16>)>,
    /// When the client saw the WebSocket and TCP end.
    end: Instant,
    /// None when it ended well; else what went wrong.
    abnormal: Option<String>,
}

/// A drain with each of `CLOSE_WINDOWS`.
pub fn measure(app: &Path) -> Vec<Drain> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    CLOSE_WINDOWS
        .into_iter()
        .map(|window| {
            let drain = runtime.block_on(drain(app, window));
            drain.show();
            drain
        })
        .collect()
}

async fn drain(app: &Path, close_window: &str) -> Drain {
    let deadline = humantime::format_duration(DRAIN_DEADLINE).to_string();
    let args = [
        "--drain-deadline",
        &deadline,
        "--websocket-close-window",
        close_window,
    ];
    let mut server = Server::app(app, &args);
    let addr = server.addr;
    let pid = server.pid();

    // One WebSocket first, opened and closed, so the runtime's lazily made
    // parts (the allocator's per-thread arenas) are not charged to the rest.
    let mut warm = open(addr, usize::MAX).await;
    warm.close(None).await.expect("close the warm-up WebSocket");
    while let Some(Ok(_)) = warm.next().await {}
    // Our FIN: else the kit lingers on it, and the drain waits for that.
    drop(warm);
    let rss_before_kib = rss(pid).0;

    let (opened_tx, mut opened) = mpsc::channel(SOCKETS);
    let (sigterm_tx, sigterm_rx) = watch::channel(false);
    let handshakes = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let clients: Vec<_> = (0..SOCKETS)
        .map(|i| {
            let (opened_tx, handshakes) = (opened_tx.clone(), handshakes.clone());
            let sigterm = sigterm_rx.clone();
            tokio::spawn(async move {
                let permit = handshakes.acquire_owned().await.unwrap();
                let socket = open(addr, i).await;
                drop(permit);
                opened_tx.send(()).await.unwrap();
                until_closed(socket, sigterm).await
            })
        })
        .collect();
    for _ in 0..SOCKETS {
        opened
            .recv()
            .await
            .expect("every client opens its WebSocket");
    }
    let rss_after_kib = rss(pid).0;

    let sigterm = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    sigterm_tx.send_replace(true);
    let exited = tokio::task::spawn_blocking(move || {
        let status = server.wait();
        (Instant::now(), status)
    });
    let mut codes = BTreeMap::new();
    let mut abnormal_kinds = BTreeMap::new();
    let mut closes = Vec::with_capacity(SOCKETS);
    let mut last_end = Duration::ZERO;
    for client in clients {
        let ending = client.await.expect("a client task");
        last_end = last_end.max(ending.end - sigterm);
        if let Some((at, code)) = ending.close {
            closes.push(at - sigterm);
            *codes.entry(code.unwrap_or(0)).or_insert(0) += 1;
        }
        if let Some(kind) = ending.abnormal {
            *abnormal_kinds.entry(kind).or_insert(0) += 1;
        }
    }
    let (exited, status) = exited.await.unwrap();
    Drain {
        close_window: humantime::parse_duration(close_window).expect("a duration"),
        rss_before_kib,
        rss_after_kib,
        first_close: closes.iter().min().copied().unwrap_or_default(),
        last_close: closes.iter().max().copied().unwrap_or_default(),
        last_end,
        exit: exited - sigterm,
        status,
        codes,
        abnormal: abnormal_kinds.values().sum(),
        abnormal_kinds,
    }
}

/// Opens a WebSocket on `/ws` and has one message echoed on it.
async fn open(addr: SocketAddr, i: usize) -> Socket {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
            .await
            .expect("the WebSocket handshake");
    assert_eq!(response.status(), 101);
    let text = format!("hello {i}");
    socket.send(Message::text(text.clone())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("an echo within 10 s");
    match echo {
        Some(Ok(message)) => assert_eq!(message, Message::text(text)),
        other => panic!("no echo: {other:?}"),
    }
    socket
}

/// Reads until the WebSocket ends, answering the server's Close on the way
/// (tungstenite sends the answer when read past the Close), then checks that
/// TCP ends with a FIN. Gives up `CLIENT_PATIENCE` after SIGTERM.
async fn until_closed(mut socket: Socket, mut sigterm: watch::Receiver<bool>) -> Ending {
    let patience = async move {
        let _ = sigterm.wait_for(|sent| *sent).await;
        tokio::time::sleep(CLIENT_PATIENCE).await;
    };
    tokio::pin!(patience);
    let mut close = None;
    let abnormal = loop {
        let next = tokio::select! {
            next = socket.next() => next,
            () = &mut patience => break Some("no end within 15 s".to_owned()),
        };
        match next {
            Some(Ok(Message::Close(frame))) => {
                close = Some((Instant::now(), frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => {
                break close.is_none().then(|| "ended without a Close".into());
            }
            Some(Err(err)) => break Some(format!("error: {err}")),
        }
    };
    let abnormal = match abnormal {
        Some(kind) => Some(kind),
        None => tokio::select! {
            end = tcp_end(&mut socket) => end,
            () = &mut patience => Some("TCP still open 15 s after SIGTERM".into()),
        },
    };
    Ending {
        close,
        end: Instant::now(),
        abnormal,
    }
}

/// None when the server's side of TCP ends with a FIN.
async fn tcp_end(socket: &mut Socket) -> Option<String> {
    let MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
        unreachable!("plain TCP")
    };
    let mut byte = [0u8; 1];
    match tcp.read(&mut byte).await {
        Ok(0) => None,
        Ok(_) => Some("bytes after the Close".into()),
        Err(err) => Some(format!("TCP: {}", err.kind())),
    }
}
