//! Every kind of connection drains, in process: WebSockets (closed by the
//! kit with the configured code, cut at the deadline when the client never
//! answers), HTTP/2 over cleartext (the graceful GOAWAY), and HTTP/1.0
//! keep-alive. The reference app served on 127.0.0.1:0, ended by the test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use handover::settings::ConnectionTimeouts;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use support::inprocess::{TestServer, WEBSOCKET_CLOSE_WINDOW, timeouts};
use support::raw::{End, RawConn};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn websocket(addr: std::net::SocketAddr) -> Socket {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (socket, response) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
            .await
            .expect("the WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

async fn echo(socket: &mut Socket, text: &str) {
    socket.send(Message::text(text)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an echo")
        .expect("the socket is open")
        .expect("a message");
    assert_eq!(answer, Message::text(text));
}

/// Reads until the server's Close frame; returns its code. tungstenite
/// answers it; the socket then ends, and the TCP connection after it.
async fn close_code(socket: &mut Socket) -> CloseCode {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a Close from the server");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("a Close without a code"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("the WebSocket failed instead of closing: {err}"),
            None => panic!("the WebSocket ended without a Close"),
        }
    }
}

/// After the Close handshake the WebSocket ends cleanly, and so does TCP:
/// a FIN, never a reset.
async fn ends_cleanly(mut socket: Socket) {
    let rest = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("the WebSocket ends");
    assert!(
        matches!(
            rest,
            None | Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed))
        ),
        "{rest:?}"
    );
    let MaybeTlsStream::Plain(tcp) = socket.get_mut() else {
        unreachable!()
    };
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
        .await
        .expect("the server closes TCP");
    assert_eq!(read.unwrap(), 0, "EOF, not data or a reset");
}

#[tokio::test]
async fn a_websocket_echoes_and_is_closed_with_going_away_when_the_drain_starts() {
    let (mut server, _socket) = TestServer::start(Duration::from_secs(10));
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut socket = websocket(server.addr).await;
        echo(&mut socket, &format!("hello {i}")).await;
        sockets.push(socket);
    }
    let started = server.begin_drain().await;
    for socket in &mut sockets {
        assert_eq!(close_code(socket).await, CloseCode::Away);
    }
    assert!(
        started.elapsed() < WEBSOCKET_CLOSE_WINDOW + Duration::from_secs(2),
        "every Close within the window"
    );
    for socket in sockets {
        ends_cleanly(socket).await;
    }
    let report = server.report().await;
    assert_eq!(report.connections_at_start, 3, "upgraded connections count");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
}

#[tokio::test]
async fn the_close_code_is_a_setting() {
    let (mut server, _socket) = TestServer::start(Duration::from_secs(10));
    let mut socket = websocket(server.addr).await;
    echo(&mut socket, "before").await;
    server.timeouts.set(ConnectionTimeouts {
        websocket_close_code: 1012,
        ..timeouts()
    });
    server.begin_drain().await;
    assert_eq!(close_code(&mut socket).await, CloseCode::Restart);
    ends_cleanly(socket).await;
    assert!(server.report().await.is_clean());
}

#[tokio::test]
async fn a_websocket_client_that_never_answers_the_close_is_cut_at_the_deadline() {
    let deadline = Duration::from_millis(1500);
    let (mut server, _socket) = TestServer::start(deadline);
    // The handshake by hand; then the client reads nothing and answers nothing.
    let mut raw = RawConn::connect(server.addr).await.unwrap();
    raw.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = raw.head().await.unwrap();
    assert_eq!(head.status, 101);
    let started = server.begin_drain().await;
    let report = server.report().await;
    assert_eq!(report.connections_at_start, 1);
    assert_eq!(report.cut, 1, "{report:?}");
    assert!(
        started.elapsed() >= deadline,
        "cut at the deadline, not before"
    );
    // What it got: the Close frame (1001), then the end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.stream.read_to_end(&mut rest)).await;
    assert!(rest.starts_with(&[0x88, 0x02, 0x03, 0xe9]), "{rest:?}");
}

#[tokio::test]
async fn a_service_writing_when_the_drain_starts_gets_the_close_between_frames() {
    let (mut server, _socket) = TestServer::start(Duration::from_secs(10));
    let mut socket = websocket(server.addr).await;
    // Keep echoes in flight while the drain starts: every message that comes
    // back is whole (tungstenite would fail on a frame cut by a Close).
    let big = "x".repeat(200_000);
    for _ in 0..5 {
        socket.send(Message::text(big.clone())).await.unwrap();
    }
    server.begin_drain().await;
    let mut echoed = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server answers")
        {
            Some(Ok(Message::Text(text))) => {
                assert_eq!(text.len(), big.len());
                echoed += 1;
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            other => panic!("{other:?} after {echoed} echoes"),
        }
    };
    assert_eq!(code, Some(CloseCode::Away));
    ends_cleanly(socket).await;
    assert!(server.report().await.is_clean());
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection with prior knowledge, and the task driving it.
async fn http2(
    addr: std::net::SocketAddr,
) -> (H2Sender, tokio::task::JoinHandle<hyper::Result<()>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

#[tokio::test]
async fn an_http2_stream_in_flight_completes_and_the_client_is_sent_away() {
    let (mut server, socket) = TestServer::start(Duration::from_secs(10));
    let (mut sender, conn) = http2(server.addr).await;
    let addr = server.addr;
    let get = |path: &str| {
        hyper::Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap()
    };
    let first = sender.send_request(get("/")).await.unwrap();
    assert_eq!(first.version(), http::Version::HTTP_2);
    assert_eq!(first.status(), 200);

    let slow = tokio::spawn(sender.send_request(get("/slow?ms=700")));
    server.wait_entered("/slow?ms=700").await;
    // A sibling on the same socket, for the client's next connection.
    let sibling = TestServer::on(&socket, Duration::from_secs(10));
    server.begin_drain().await;
    let response = slow.await.unwrap().expect("the stream in flight completes");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"slept 700 ms\n");
    // GOAWAY: the connection takes no new stream and ends.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends after the GOAWAY")
        .unwrap()
        .expect("cleanly");
    assert!(sender.send_request(get("/")).await.is_err());
    // The next connection lands on the sibling.
    let (mut sender, _conn) = http2(sibling.addr).await;
    assert_eq!(sender.send_request(get("/")).await.unwrap().status(), 200);
    let report = server.report().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.connections_at_start, 1);
}

/// One HTTP/2 frame as it came off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` at the end of the connection.
async fn read_frame(tcp: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    match tcp.read_exact(&mut head).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        // A reset would be the unclean end this test looks for.
        Err(err) => panic!("the connection did not end cleanly: {err}"),
    }
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    tcp.read_exact(&mut payload).await.unwrap();
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// An HTTP/2 client that never acknowledges anything (RFC 9113 §6.7 says
/// it must, and some do not) does not hold the drain: it gets the GOAWAY
/// and its PING, and once the grace has passed the connection ends with a
/// FIN, long before the deadline.
#[tokio::test]
async fn an_http2_client_that_never_acknowledges_is_closed_after_the_grace() {
    const GOAWAY: u8 = 0x7;
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let deadline = Duration::from_secs(30);
    let (mut server, _socket) = TestServer::start(deadline);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The preface and an empty SETTINGS frame; then not a byte more.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let settings = read_frame(&mut tcp).await.expect("the server's SETTINGS");
    // The server spoke HTTP/2 first: the connection is served, and counted.
    assert_eq!(settings.kind, 0x4, "the server's SETTINGS");

    let started = server.begin_drain().await;
    let (mut goaway, mut ping) = (None, false);
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tcp))
        .await
        .expect("the connection ends well before the deadline")
    {
        match frame.kind {
            GOAWAY => {
                let last = u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                goaway.get_or_insert(last);
            }
            PING if frame.flags & ACK == 0 => ping = true,
            _ => {}
        }
    }
    let ended_at = started.elapsed();
    // The first GOAWAY of the two-step shutdown names the highest stream id:
    // streams the client opened meanwhile would still be served.
    assert_eq!(goaway, Some(0x7fff_ffff), "a graceful GOAWAY first");
    assert!(ping, "the GOAWAY's PING");
    eprintln!(
        "the silent connection ended {ended_at:?} after the drain began (grace {:?})",
        support::inprocess::GRACE
    );
    assert!(
        ended_at >= support::inprocess::GRACE,
        "ended {ended_at:?} in, before the grace"
    );
    // Clean: it was not held to the deadline and cut there.
    let report = server.report().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.connections_at_start, 1);
}

/// One HTTP/2 frame for the wire: its 9-byte head, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![length[1], length[2], length[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A request head for `GET path`, in HPACK without the dynamic table:
/// indexed `:method GET` and `:scheme http`, literal `:path` and
/// `:authority` with indexed names.
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    block
}

/// A client that opens a stream as the server's final GOAWAY crosses it on
/// the wire, and sends a WINDOW_UPDATE for that stream, keeps its
/// connection: RFC 9113 §6.8 says the sender of a GOAWAY ignores frames on
/// streams above its last stream id. h2 0.4.20 ignored the HEADERS but
/// answered the WINDOW_UPDATE with GOAWAY(PROTOCOL_ERROR) ("stream ID
/// implicitly closed"), failing every stream in flight on the connection:
/// what grpcio, which shares one connection between channels, hit on every
/// reload. The fix is the patch in vendor/h2 (docs/http2.md).
#[tokio::test]
async fn frames_on_a_stream_opened_as_the_goaway_crosses_are_ignored() {
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    let (mut server, _socket) = TestServer::start(Duration::from_secs(30));
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    hello.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_headers("/slow?ms=700"),
    ));
    tcp.write_all(&hello).await.unwrap();
    server.wait_entered("/slow?ms=700").await;
    server.begin_drain().await;

    // Every frame the server sends, until it closes the connection; the
    // client's part is played as the frames arrive.
    let mut goaways = Vec::new();
    let mut stream_one_done = false;
    let mut resets = Vec::new();
    while let Some(got) = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tcp))
        .await
        .expect("the connection ends once its stream is done")
    {
        match got.kind {
            PING if got.flags & ACK == 0 => {
                // The GOAWAY's PING: acknowledge it, and nothing else yet.
                tcp.write_all(&frame(PING, ACK, 0, &got.payload))
                    .await
                    .unwrap();
            }
            GOAWAY => {
                let last = u32::from_be_bytes(got.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                let code = u32::from_be_bytes(got.payload[4..8].try_into().unwrap());
                goaways.push((last, code));
                if last != 0x7fff_ffff {
                    // The final GOAWAY is on its way to us as we open
                    // stream 3 and give it flow-control credit.
                    let mut late = frame(HEADERS, END_HEADERS | END_STREAM, 3, &get_headers("/"));
                    late.extend(frame(WINDOW_UPDATE, 0, 3, &65_535u32.to_be_bytes()));
                    tcp.write_all(&late).await.unwrap();
                }
            }
            RST_STREAM => resets.push(got.stream),
            _ => {}
        }
        // Stream 1's response ends with END_STREAM on its last frame.
        if got.stream == 1 && got.flags & END_STREAM != 0 && matches!(got.kind, 0x0 | HEADERS) {
            stream_one_done = true;
        }
    }
    assert_eq!(
        goaways,
        [(0x7fff_ffff, 0), (1, 0)],
        "the two-step GOAWAY, both NO_ERROR: no connection error for the late stream's frames"
    );
    assert!(stream_one_done, "the stream in flight was answered whole");
    assert!(resets.is_empty(), "no stream reset: {resets:?}");
    let report = server.report().await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn http2_and_http1_share_the_socket() {
    let (server, _socket) = TestServer::start(Duration::from_secs(10));
    let mut raw = RawConn::connect(server.addr).await.unwrap();
    let response = raw.get("/").await.unwrap();
    assert_eq!(response.status, 200);
    let (mut sender, _conn) = http2(server.addr).await;
    let request = hyper::Request::get(format!("http://{}/", server.addr))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_http10_keep_alive_request_during_the_drain_is_told_only_close() {
    let (mut server, _socket) = TestServer::start(Duration::from_secs(10));
    let mut conn = RawConn::connect(server.addr).await.unwrap();
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let before = conn.response().await.unwrap();
    assert_eq!(
        before.header("connection"),
        Some("keep-alive"),
        "kept alive before"
    );

    server.begin_drain().await;
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let during = conn.response().await.unwrap();
    assert_eq!(during.status, 200);
    let values: Vec<&str> = during
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(values, ["close"], "only close, no keep-alive beside it");
    assert_eq!(conn.end().await.unwrap(), End::Eof);
    let started = Instant::now();
    assert!(server.report().await.is_clean());
    assert!(started.elapsed() < Duration::from_secs(5));
}
