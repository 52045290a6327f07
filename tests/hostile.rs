//! Hostile clients, in process, each beside well-behaved clients whose
//! requests must all succeed: slow heads, a flood of idle connections past
//! `max_connections`, heads and bodies over their limits, and malformed
//! requests. Each test prints what the well-behaved clients saw.

use std::time::{Duration, Instant};

use handover::settings::Limits;
use support::inprocess::{GRACE, TestServer, timeouts};
use support::load::{Counts, Load};
use support::raw::{End, RawConn};
use tokio::io::AsyncWriteExt;

/// Well-behaved traffic: 4 keep-alive and 4 new-connection clients, each
/// sending a request every 20 ms (400 requests/s in all).
fn bystanders(server: &TestServer) -> Load {
    Load::start(server.addr, "/", 4, 4, Duration::from_millis(20))
}

fn assert_unharmed(what: &str, mut counts: Counts) {
    println!("{what}: well-behaved clients: {}", counts.summary());
    assert_eq!(counts.error_count(), 0, "{what}: {:?}", counts.errors);
    assert_eq!(counts.non_2xx(), 0, "{what}: {:?}", counts.by_status);
    assert!(
        counts.ok() > 50,
        "{what}: too little traffic to mean anything"
    );
}

/// Slowloris: 50 connections each dribble a request head a byte every 50 ms.
/// Each gets 408 and a closed connection at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_at_the_header_timeout_and_others_are_served() {
    let (server, _socket) = TestServer::start(Duration::from_secs(10));
    let load = bystanders(&server);
    let header_read = timeouts().header_read;
    let mut dribblers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let addr = server.addr;
        dribblers.spawn(async move {
            let mut conn = RawConn::connect(addr).await.unwrap();
            let started = Instant::now();
            let head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: "
                .iter()
                .chain(b"a".repeat(10_000).iter())
                .copied()
                .collect::<Vec<_>>();
            for byte in head {
                if conn.stream.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    // The server answered (or closed) before the head ended.
                    readable = conn.stream.readable() => { readable.unwrap(); break; }
                }
            }
            let response = conn.response().await.expect("a 408 before the close");
            let cut_after = started.elapsed();
            assert_eq!(response.status, 408);
            assert!(response.closes());
            assert!(matches!(conn.end().await, Ok(End::Eof) | Ok(End::Reset)));
            cut_after
        });
    }
    let mut cuts = Vec::new();
    while let Some(cut) = dribblers.join_next().await {
        cuts.push(cut.unwrap());
    }
    cuts.sort();
    println!(
        "slowloris: 50 dribbled heads cut after {:?} (first) to {:?} (last); header timeout {header_read:?}",
        cuts[0],
        cuts[cuts.len() - 1]
    );
    // Not before the timeout (the head started with the first byte) and
    // not long after it: the timer is per connection, not a sweep.
    assert!(cuts[0] >= header_read, "{cuts:?}");
    assert!(
        cuts[cuts.len() - 1] < header_read + Duration::from_secs(2),
        "{cuts:?}"
    );
    assert_unharmed("slowloris", load.stop().await);
}

/// 256 connections that never send a byte, against max_connections = 32.
/// The server never holds more than 32; the rest wait in the queue. Idle
/// ones are closed after the grace to make room, and clients that send
/// requests are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_waits_in_the_queue_and_others_are_served() {
    const MAX: usize = 32;
    const FLOOD: usize = 256;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let limits = Limits {
        max_connections: MAX,
        ..Limits::default()
    };
    let server = TestServer::with_limits(&socket, Duration::from_secs(10), limits);
    // Keep-alive clients connect before the flood: their connections are
    // busy, never idle for a whole grace, and keep their slots.
    let load = bystanders(&server);
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let flooded = Instant::now();
    // Watch the server's descriptor count while the flood is worked through:
    // idle connections are closed after the grace while the server is at its
    // limit, until fewer than the limit remain. Those are under the limit and
    // may idle until idle_timeout, like any client's.
    let mut peak = 0;
    let mut closed = 0;
    let mut pending: Vec<_> = flood.into_iter().map(RawConn::new).collect();
    let deadline = flooded + Duration::from_secs(30);
    while pending.len() >= MAX {
        assert!(
            Instant::now() < deadline,
            "{} flood connections never closed",
            pending.len()
        );
        peak = peak.max(server.fds.load(std::sync::atomic::Ordering::Relaxed));
        let mut still = Vec::new();
        for conn in pending {
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Ok(0) => closed += 1,
                Ok(_) => panic!("a flood connection got bytes it never asked for"),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => still.push(conn),
                Err(_) => closed += 1,
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cleared = flooded.elapsed();
    let counts = load.stop().await;
    println!(
        "idle flood: {FLOOD} connections against max_connections {MAX}: at most {peak} held; \
         {closed} closed by {cleared:?} (idle grace {GRACE:?}), {} left idle under the limit",
        pending.len()
    );
    assert!(
        peak <= MAX,
        "the server held {peak} connections, over its limit of {MAX}"
    );
    assert!(
        peak >= MAX - 8,
        "the flood never reached the limit (peak {peak})"
    );
    // Not starved: a new connection behind the flood waits about (flood /
    // max_connections) graces in the queue, then is served.
    let longest = counts.clone().quantile(1.0);
    assert!(
        longest < Duration::from_secs(10),
        "a well-behaved request waited {longest:?}"
    );
    assert_unharmed("idle flood", counts);
}

/// Heads and bodies over their limits, and requests hyper cannot parse: each
/// gets its 4xx and a closed connection; bodies within the limit are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_4xx_and_others_are_served() {
    let (server, _socket) = TestServer::start(Duration::from_secs(10));
    let load = bystanders(&server);
    let limits = Limits::default();
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        // hyper checks the limit against its read buffer, which may hold
        // one read more than the limit: twice the limit is over in any case.
        "a".repeat(2 * limits.max_header_bytes)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-{i}: a\r\n"))
            .collect::<String>()
    );
    let declared_too_big = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\nstart of a body",
        limits.max_body_bytes + 1
    );
    let expect_too_big = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        limits.max_body_bytes + 1
    );
    // Chunked: no length up front, so the app's own cap applies as it reads.
    let chunk = "a".repeat(64 * 1024);
    let chunked_too_big = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        format!("{:x}\r\n{chunk}\r\n", chunk.len()).repeat(17)
    );
    let cases: [(&str, Vec<u8>, u16); 10] = [
        ("head over max_header_bytes", big_header.into_bytes(), 431),
        ("200 headers", many_headers.into_bytes(), 431),
        ("Content-Length over max_body_bytes", declared_too_big.into_bytes(), 413),
        ("the same with Expect: 100-continue", expect_too_big.into_bytes(), 413),
        ("chunked body over max_body_bytes", chunked_too_big.into_bytes(), 413),
        ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        ("header without a colon", b"GET / HTTP/1.1\r\nHost test\r\n\r\n".to_vec(), 400),
        ("Content-Length not a number", b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        ("two Content-Lengths that disagree", b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), 400),
        ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), 400),
    ];
    // Rounds of every case for a second at least, so the well-behaved
    // clients send throughout.
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 10 || started.elapsed() < Duration::from_secs(1) {
        let round = rounds;
        rounds += 1;
        for (what, request, status) in &cases {
            let (what, status) = (*what, *status);
            let mut conn = RawConn::connect(server.addr).await.unwrap();
            // The server may answer and close before taking all of it.
            let _ = conn.send(request).await;
            let response = conn
                .response()
                .await
                .unwrap_or_else(|err| panic!("{what}: no response: {err}"));
            if round == 0 {
                println!(
                    "{what}: {} {}",
                    response.status,
                    String::from_utf8_lossy(&response.body).trim()
                );
            }
            assert_eq!(response.status, status, "{what}");
            let end = conn.end().await.unwrap();
            assert!(
                matches!(end, End::Eof | End::Reset),
                "{what}: the connection stayed open: {end:?}"
            );
        }
    }
    println!(
        "{} hostile requests in {:?}",
        10 * cases.len(),
        started.elapsed()
    );
    // Within the limits, a body is read and the connection kept.
    let mut conn = RawConn::connect(server.addr).await.unwrap();
    for body in [
        "5\r\nhello\r\n0\r\n\r\n".to_string(),
        format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()),
    ] {
        conn.send(
            format!(
                "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let response = conn.response().await.unwrap();
        assert_eq!(response.status, 200);
        assert!(String::from_utf8_lossy(&response.body).starts_with("received "));
        assert!(!response.closes());
    }
    assert_unharmed("oversized and malformed requests", load.stop().await);
}
