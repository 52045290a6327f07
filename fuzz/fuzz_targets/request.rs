//! The request path: any bytes a client sends, over a real socket, through
//! the kit's connection handling (timeouts, drain tracking, lingering close,
//! HTTP/2 detection, upgrades) and the reference app's routes, /ws included.
//! The server answers with HTTP/1 or HTTP/2 or closes; it never answers 5xx
//! (but 505 to a version HTTP/1 does not speak), never panics, and never
//! keeps a connection open after its client has gone.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use handover::Listener;
use handover::drain;
use handover::internals::{ServeArgs, Settings};
use handover::server::Server;
use libfuzzer_sys::fuzz_target;

// The reference app's routes (its package's library target), as its binary
// serves them.
use app::{App, AppSettings};

/// One server for the whole run: state that outlives a connection (a leak,
/// a stuck task) builds up where the checks below see it.
struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Server,
    path: PathBuf,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // libFuzzer's main, unlike Rust's, leaves SIGPIPE fatal: a write to
        // a connection the server closed (after a 400, say) would end the
        // run. The app itself runs with Rust's main, which ignores it.
        // SAFETY: no other thread exists yet that handles signals.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("app-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("http.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixListener::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        // /slow answers at once; the timeouts are short so that a head the
        // input leaves unfinished costs milliseconds, not the default 10s.
        let args = ServeArgs {
            header_read_timeout: Some(Duration::from_millis(200)),
            idle_timeout: Some(Duration::from_millis(200)),
            ..ServeArgs::default()
        };
        let settings = Settings::resolve(&args, &Default::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let timeouts = settings.timeouts;
        let (trigger, drain) = drain::channel();
        let app = App::new(handover::internals::context(
            "app",
            drain,
            settings,
            AppSettings {
                slow_max: Duration::from_millis(1),
            },
            std::path::Path::new("/nonexistent/out-of-rotation"),
        ));
        let listener = Listener::from(socket);
        let server = {
            let _enter = runtime.enter();
            Server::builder(vec![listener], app)
                .drain(trigger)
                .timeouts(timeouts)
                .start()
                .unwrap()
        };
        Harness {
            runtime,
            server,
            path,
        }
    })
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let harness = harness();
    let _ = &harness.runtime;
    let mut client = UnixStream::connect(&harness.path).unwrap();
    // The server may close before reading everything (after a 400, say).
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answer = Vec::new();
    let started = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    // Bounded: /events streams until the client leaves.
    while answer.len() < 1 << 20 && started.elapsed() < Duration::from_millis(500) {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    drop(client);
    if data.starts_with(H2_PREFACE) {
        // HTTP/2: the server's first frame is its SETTINGS, on stream 0.
        if answer.len() >= 9 {
            assert_eq!(answer[3], 0x4, "HTTP/2 must open with SETTINGS");
            assert_eq!(&answer[5..9], &[0, 0, 0, 0]);
        }
    } else if !answer.is_empty() {
        // After a 101 the bytes are the upgraded protocol's (WebSocket
        // frames echoing the input), not HTTP: look only before it.
        let http = match find(&answer, b"HTTP/1.1 101 ") {
            Some(at) => &answer[..at + 12],
            None => &answer[..],
        };
        // hyper answers an HTTP/1.0 request in kind.
        assert!(
            answer.starts_with(b"HTTP/1.1 ") || answer.starts_with(b"HTTP/1.0 "),
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        for status in http
            .windows(12)
            .filter(|w| w.starts_with(b"HTTP/1.1 ") || w.starts_with(b"HTTP/1.0 "))
        {
            assert!(
                status[9] != b'5' || &status[9..12] == b"505",
                "a 5xx answer to {:?}",
                String::from_utf8_lossy(data)
            );
        }
    }
    // Its client has gone: the connection must end (after its lingering
    // close, which sees the client's FIN at once).
    let deadline = Instant::now() + Duration::from_secs(3);
    while harness.server.connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections outlived their client; input {:?}",
            harness.server.connections(),
            String::from_utf8_lossy(data)
        );
        std::thread::sleep(Duration::from_micros(100));
    }
});
