//! The ceiling the benchmarks compare `app` against: a bare hyper 1.x server
//! with the same runtime (tokio multi-threaded, every core), the same
//! listening queue (4096) and TCP_NODELAY, and the same answer to `GET /` (a
//! one-line text/plain greeting), and nothing else: no drain, no
//! per-connection close policy or timeouts, no settings, no routes, no logs.
//!
//! It speaks HTTP/1.1, or with `--h2` HTTP/2 over cleartext (prior
//! knowledge) with hyper's defaults. SIGTERM or SIGINT ends it at once with
//! status 0: a profiler it runs under (callgrind) writes its figures on a
//! normal exit.
//!
//! `cargo run --release --example baseline -- [--h2] 127.0.0.1:8081`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> std::io::Result<()> {
    let mut h2 = false;
    let mut addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
    for arg in std::env::args().skip(1) {
        if arg == "--h2" {
            h2 = true;
        } else {
            addr = arg.parse().map_err(std::io::Error::other)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(handover::internals::BIND_BACKLOG as u32)?;
        let protocol = if h2 { "h2c" } else { "http" };
        println!("baseline serving {protocol} on {}", listener.local_addr()?);
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = terminate.recv() => return Ok(()),
                _ = interrupt.recv() => return Ok(()),
            };
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream, h2));
        }
    })
}

async fn serve(stream: TcpStream, h2: bool) {
    let service = service_fn(|_: Request<hyper::body::Incoming>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"hello from instance baseline\n",
        )));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(response)
    });
    let io = TokioIo::new(stream);
    let _ = if h2 {
        http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .await
    };
}
