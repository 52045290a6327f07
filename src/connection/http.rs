//! hyper's HTTP/1 and HTTP/2 on one socket, chosen by the connection's
//! first bytes: the HTTP/2 preface (h2c with prior knowledge), or anything
//! else for HTTP/1.
//!
//! hyper-util's `auto` connection does the same, but it reads the first
//! bytes itself and then wraps the IO to give them back, a wrapper every
//! later read of the connection's life goes through. Here the first bytes
//! are read through the connection's own IO wrapper, which gives them back
//! to hyper from its buffer, and the protocol goes to the close policy at
//! the same time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::policy::Protocol;
use super::tracking::{Shared, Tracked};
use super::{BoxError, GracefulShutdown};
use crate::settings::Limits;

/// The HTTP/2 connection preface (RFC 9113 §3.4): how an h2c client with
/// prior knowledge opens.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1 and HTTP/2 as every connection speaks them, configured once.
pub(crate) struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Http {
    pub(crate) fn new(limits: &Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Our own header and idle timeouts replace hyper's, which would
            // also bound the keep-alive idle time by the header timeout.
            .header_read_timeout(None)
            // A head that does not fit gets 431 from hyper.
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self { h1, h2 }
    }
}

/// What the bytes a connection opened with say it speaks; `None` while they
/// could still be the start of the HTTP/2 preface.
pub(super) fn sniff(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

type Io<I> = TokioIo<Tracked<I>>;

/// One connection as hyper serves it, once its protocol is known.
pub(super) enum Conn<I, S>
where
    S: HttpService<Incoming>,
{
    /// Reading the first bytes, up to the length of the HTTP/2 preface.
    Sniffing {
        io: Option<Io<I>>,
        service: Option<S>,
        http: Arc<Http>,
        shared: Arc<Shared>,
        first: [u8; H2_PREFACE.len()],
        read: usize,
        /// Asked to end before the client said anything that counts.
        shutdown: bool,
    },
    Http1(Pin<Box<http1::UpgradeableConnection<Io<I>, S>>>),
    Http2(Pin<Box<http2::Connection<Io<I>, S, TokioExecutor>>>),
    /// The client left, or the connection was shut down, before it spoke.
    Done,
}

// Nothing in a `Conn` is pinned in place: hyper's connections are boxed,
// and the IO and service move into them.
impl<I, S: HttpService<Incoming>> Unpin for Conn<I, S> {}

impl<I, S> Conn<I, S>
where
    S: HttpService<Incoming>,
{
    /// A connection just accepted: its protocol is not known yet.
    pub(super) fn sniffing(io: Io<I>, service: S, http: Arc<Http>, shared: Arc<Shared>) -> Self {
        Conn::Sniffing {
            io: Some(io),
            service: Some(service),
            http,
            shared,
            first: [0; H2_PREFACE.len()],
            read: 0,
            shutdown: false,
        }
    }
}

impl<I, S, B> GracefulShutdown for Conn<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: AsyncRead + AsyncWrite + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            Conn::Sniffing { shutdown, .. } => *shutdown = true,
            Conn::Http1(conn) => conn.as_mut().graceful_shutdown(),
            Conn::Http2(conn) => conn.as_mut().graceful_shutdown(),
            Conn::Done => {}
        }
    }
}

impl<I, S, B> Future for Conn<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Conn::Http1(conn) => return conn.as_mut().poll(cx).map_err(Into::into),
                Conn::Http2(conn) => return conn.as_mut().poll(cx).map_err(Into::into),
                Conn::Done => return Poll::Ready(Ok(())),
                Conn::Sniffing {
                    io,
                    service,
                    http,
                    shared,
                    first,
                    read,
                    shutdown,
                } => {
                    if *shutdown {
                        *this = Conn::Done;
                        continue;
                    }
                    let tracked = io.as_mut().expect("sniffing holds the IO").inner_mut();
                    let mut buf = ReadBuf::new(&mut first[*read..]);
                    match Pin::new(&mut *tracked).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                        Poll::Ready(Ok(())) => {}
                    }
                    let n = buf.filled().len();
                    if n == 0 && *read == 0 {
                        // Gone before a byte: nothing to answer.
                        *this = Conn::Done;
                        continue;
                    }
                    *read += n;
                    // A client that stops short of the preface ends the
                    // sniff too: HTTP/1 answers (or times out) what it sent.
                    let protocol = match sniff(&first[..*read]) {
                        Some(protocol) => protocol,
                        None if n == 0 => Protocol::Http1,
                        None => continue,
                    };
                    shared.protocol_found(protocol);
                    let mut io = io.take().expect("sniffing holds the IO");
                    io.inner_mut().give_back(&first[..*read]);
                    let service = service.take().expect("sniffing holds the service");
                    *this = match protocol {
                        Protocol::Http2 => {
                            Conn::Http2(Box::pin(http.h2.serve_connection(io, service)))
                        }
                        _ => Conn::Http1(Box::pin(
                            http.h1.serve_connection(io, service).with_upgrades(),
                        )),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_makes_it_http2_and_anything_else_http1() {
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n"), None, "not decided yet");
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"),
            Some(Protocol::Http2)
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(sniff(b"P"), None);
        assert_eq!(sniff(b"POST /echo HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    }
}
