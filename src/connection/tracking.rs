//! What one connection's task learns from the wrappers around hyper's IO,
//! the service and the response bodies, all of which share [`Shared`]:
//! bytes arriving (a request head starting; which protocol), requests in
//! flight, a response switching protocols, and what a WebSocket's service
//! writes (so the kit's Close goes between two frames).
//!
//! The IO wrapper also gives the IO back: when hyper (or, after an upgrade,
//! the service) drops it, it goes home to the connection's task through a
//! channel, so the task closes every connection itself, with a lingering
//! close, whichever protocol served it.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot};

use super::BoxError;
use super::moving::Facts;
use super::policy::{Activity, Policy, Protocol};
use super::streams::{H2Stream, StreamCutoff};
use super::websocket::{self, OutgoingFrames};
use super::word::{Flag, Word};
use crate::drain;
use crate::readiness::ReadinessCheck;

/// Activity shared by the IO wrapper, the service wrapper and the response
/// bodies of one connection, and its task.
///
/// The serving loop sleeps until the connection's next due time, but never
/// longer than the header timeout, and is woken early only when activity
/// brings the due time before its timer (the drain's grace, say). A
/// request head starting, a request in flight, a response finished: none
/// of them does, so a busy keep-alive connection costs one timer check per
/// header timeout instead of several wake-ups per request.
///
/// What every request touches (bytes arriving, a request starting, a
/// response ending) is in atomics, `hot`: no lock on a request's way. The
/// lock guards the policy, which the task reads when it arms its timer,
/// and what changes once per connection (the protocol found, an upgrade).
pub(super) struct Shared {
    state: Mutex<State>,
    hot: Hot,
    pub changed: Notify,
    /// Whether the server drains: a response produced then closes HTTP/1.
    drain: drain::Watch,
    /// The service's writes once upgraded to a WebSocket (`Flag::WEBSOCKET`).
    ws: Mutex<WsOut>,
    /// Ends the HTTP/2 streams still open shortly before the drain deadline,
    /// or when the connection is past its maximum age and grace.
    cutoff: StreamCutoff,
}

pub(super) struct State {
    pub policy: Policy,
    /// When the loop's timer fires; `None` when it armed none.
    pub armed: Option<Instant>,
    /// The last response was `101` to a WebSocket request.
    websocket_accepted: bool,
}

/// The connection's activity as atomics: see [`Shared`]. Times are
/// nanoseconds of the coarse monotonic clock ([`coarse_nanos`]); `epoch`
/// is when it read `epoch_nanos`, give or take its resolution.
struct Hot {
    epoch: Instant,
    epoch_nanos: u64,
    /// The requests in flight and every flag ([`Flag`]), in one word.
    word: Word,
    /// When the head in progress began, plus one; 0 when none is.
    head_started: AtomicU64,
    idle_since: AtomicU64,
}

impl Hot {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            // A tick before what the coarse clock says: a stamp may lag the
            // moment it marks by up to a tick, and the epoch as much the
            // other way, so this way no time the policy computes is early
            // (a timeout fires up to two ticks late, never before it).
            epoch_nanos: coarse_nanos().saturating_sub(coarse_resolution()),
            word: Word::new(),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        coarse_nanos()
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos.saturating_sub(self.epoch_nanos))
    }

    fn activity(&self) -> Activity {
        let head_started = self.head_started.load(Ordering::SeqCst);
        Activity {
            in_flight: self.word.load().in_flight() as usize,
            idle_since: self.at(self.idle_since.load(Ordering::SeqCst)),
            head_started: (head_started != 0).then(|| self.at(head_started - 1)),
        }
    }
}

/// The coarse monotonic clock, in nanoseconds: what the hot path stamps a
/// request's start and end with, twice per request. It is the clock
/// `Instant` reads, as of the last timer tick (1 to 10 ms behind), and costs
/// a fraction of it: no hardware counter read, no conversion. The policy's
/// times are seconds (a head's timeout, the idle timeout, the drain's grace):
/// a tick or two late is nothing to them, and [`Hot`] makes sure it is
/// never early.
///
/// Through libc, whose vDSO call valgrind knows: rustix's own vDSO lookup
/// crashes the process under callgrind.
fn coarse_nanos() -> u64 {
    nanos(libc::clock_gettime)
}

/// The coarse clock's resolution, a timer tick (1 to 10 ms), read once.
fn coarse_resolution() -> u64 {
    static RESOLUTION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RESOLUTION.get_or_init(|| nanos(libc::clock_getres))
}

/// What `clock_gettime` or `clock_getres` says of CLOCK_MONOTONIC_COARSE,
/// in nanoseconds.
fn nanos(read: unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int) -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC_COARSE
    // exists on every Linux since 2.6.32, and cannot fail with a valid
    // pointer.
    unsafe { read(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

impl State {
    pub(super) fn new(policy: Policy) -> Self {
        Self {
            policy,
            armed: None,
            websocket_accepted: false,
        }
    }

    /// Whether the next action is now due before the loop's timer would fire.
    fn needs_wake(&self, activity: &Activity) -> bool {
        if !self.policy.may_hurry() {
            return false;
        }
        match (self.policy.due(activity), self.armed) {
            (Some((at, _)), Some(armed)) => at < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// What the kit does to the bytes a WebSocket's service writes.
#[derive(Debug, Default)]
enum WsState {
    /// They pass; the kit's Close, once wanted, goes at the next boundary.
    #[default]
    Passing,
    /// The kit's Close is being written: this much of it so far.
    Closing { written: usize },
    /// The kit's Close is out: what the service writes now is dropped.
    Closed,
    /// The service sent its own Close: the kit sends none.
    ServiceClosed,
}

#[derive(Debug, Default)]
struct WsOut {
    frames: OutgoingFrames,
    state: WsState,
    /// The kit's Close frame, once the drain wants it sent.
    close: Option<[u8; 4]>,
}

impl WsOut {
    /// Moves to writing the Close if it is wanted and a frame just ended.
    fn start_close_at_boundary(&mut self) {
        if matches!(self.state, WsState::Passing)
            && self.close.is_some()
            && self.frames.at_boundary()
        {
            self.state = WsState::Closing { written: 0 };
        }
    }
}

impl Shared {
    pub(super) fn new(state: State, drain: drain::Watch, cutoff: StreamCutoff) -> Self {
        Self {
            cutoff,
            state: Mutex::new(state),
            hot: Hot::new(),
            changed: Notify::new(),
            drain,
            ws: Mutex::new(WsOut::default()),
        }
    }

    /// The connection is past its maximum age: its next HTTP/1 response
    /// says `Connection: close`.
    pub(super) fn retire(&self) {
        self.hot.word.set(Flag::RETIRED);
    }

    /// Ends this connection's HTTP/2 streams still open, as the drain's
    /// cut-off would.
    pub(super) fn end_streams(&self) {
        self.cutoff.fire();
    }

    /// The connection waits to move to a new process: from now on the end
    /// of each response, and its flush, wake its task.
    pub(super) fn set_moving(&self) {
        self.hot.word.set(Flag::MOVING);
    }

    /// The connection will not move after all (upgraded, pipelining, or
    /// unsure of what hyper holds): it drains here, and its responses say
    /// `Connection: close`.
    pub(super) fn stop_moving(&self) {
        self.hot.word.stay();
    }

    /// What the move decision ([`super::moving`]) reads of the connection
    /// now. Read by the connection's task between two polls of hyper, so
    /// hyper is not reading meanwhile; the atomics are written by the
    /// wrappers, on the same task or (a response's end) another.
    pub(super) fn move_facts(&self) -> Facts {
        let hot = &self.hot;
        // One load: every fact but the head's start as of one instant.
        let word = hot.word.load();
        Facts {
            not_http1: word.has(Flag::NOT_HTTP1),
            upgraded: word.has(Flag::WEBSOCKET),
            pipelined: word.has(Flag::PIPELINED),
            in_flight: word.in_flight(),
            head_started: hot.head_started.load(Ordering::SeqCst) != 0,
            unflushed: word.has(Flag::UNFLUSHED),
            read_in_flight: word.has(Flag::READ_IN_FLIGHT),
        }
    }

    /// What the policy needs to know of the connection's activity, now.
    pub(super) fn activity(&self) -> Activity {
        self.hot.activity()
    }

    /// Whether the client has sent anything at all.
    pub(super) fn heard(&self) -> bool {
        self.hot.word.load().has(Flag::HEARD)
    }

    /// Keeps the hot path's copy of `Policy::may_hurry`: the task calls it
    /// with the lock held, each time it arms its timer.
    pub(super) fn set_hurry(&self, hurry: bool) {
        self.hot.word.put(Flag::HURRY, hurry);
    }

    /// Whether the connection drains in this process although it hands
    /// over: its responses then close it, as in a stop.
    fn drains_here(&self) -> bool {
        let word = self.hot.word.load();
        word.has(Flag::STAYS) || word.has(Flag::PIPELINED)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ws(&self) -> MutexGuard<'_, WsOut> {
        self.ws.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection now belongs to the service that took the upgrade.
    /// Returns whether it is a WebSocket.
    pub(super) fn mark_upgraded(&self) -> bool {
        let websocket = {
            let mut state = self.lock();
            let websocket = state.websocket_accepted;
            state.policy.set_protocol(Protocol::Upgraded { websocket });
            self.hot.word.set(Flag::NOT_HTTP1);
            websocket
        };
        if websocket {
            self.hot.word.set(Flag::WEBSOCKET);
        }
        websocket
    }

    /// Sends the kit's Close with `code` to a WebSocket, from the
    /// connection's task: now if the service is between frames (with a
    /// non-blocking `send` on the socket, under the lock its own writes
    /// take), else at its next frame boundary. Returns whether the Close is
    /// fully out, or not owed (the service closed first); if not, call again.
    pub(super) fn send_close(&self, fd: RawFd, code: u16) -> bool {
        let mut ws = self.ws();
        ws.close.get_or_insert(websocket::close_frame(code));
        ws.start_close_at_boundary();
        let WsState::Closing { written } = ws.state else {
            return matches!(ws.state, WsState::Closed | WsState::ServiceClosed);
        };
        let frame = ws.close.expect("set above");
        let rest = &frame[written..];
        // SAFETY: `fd` is the connection's socket, open while the service
        // holds the IO (it comes home to this task before it is closed);
        // send only reads `rest`.
        let sent = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(sent) = usize::try_from(sent) {
            let written = written + sent;
            ws.state = if written == frame.len() {
                WsState::Closed
            } else {
                WsState::Closing { written }
            };
        }
        matches!(ws.state, WsState::Closed)
    }

    /// A request started: it and a head starting never bring the next
    /// action before the loop's timer, so they skip the check `update` makes.
    pub(super) fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        let hot = &self.hot;
        let http1 = version != Version::HTTP_2;
        // Every HTTP/1 head that arrives in its turn, after the previous
        // response, marks `head_started` (`bytes_arrived`).
        let pipelined = http1 && hot.head_started.swap(0, Ordering::SeqCst) == 0;
        hot.word.request_started(http1, pipelined);
        InFlight(self.clone())
    }

    /// The connection's first bytes said which protocol it speaks: only
    /// HTTP/1 keeps a head's start.
    pub(super) fn protocol_found(&self, protocol: Protocol) {
        self.lock().policy.set_protocol(protocol);
        self.hot
            .word
            .put(Flag::NOT_HTTP1, protocol != Protocol::Http1);
        if protocol != Protocol::Http1 {
            self.hot.head_started.store(0, Ordering::SeqCst);
        }
    }

    /// Bytes came from the client: the connection is heard, and an HTTP/1
    /// head starts (or, during a request, its body or the next head comes).
    pub(super) fn bytes_arrived(&self) {
        let hot = &self.hot;
        let word = hot.word.load();
        if !word.has(Flag::HEARD) {
            hot.word.set(Flag::HEARD);
        }
        if word.has(Flag::NOT_HTTP1) {
            return;
        }
        if word.in_flight() > 0 {
            if !word.has(Flag::READ_IN_FLIGHT) {
                hot.word.set(Flag::READ_IN_FLIGHT);
            }
        } else if hot.head_started.load(Ordering::SeqCst) == 0 {
            hot.head_started.store(hot.now() + 1, Ordering::SeqCst);
        }
    }
}

/// Held by a response body until hyper has written (or dropped) it.
pub(super) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // hyper drops the body before it writes its end: the response is
        // on the socket only at the next flush.
        let shared = &self.0;
        let hot = &shared.hot;
        // Stored by every response: the policy reads it only once none is
        // in flight, and then it is the last one's end.
        hot.idle_since.store(hot.now(), Ordering::SeqCst);
        let word = hot.word.response_ended();
        let wake = word.has(Flag::MOVING)
            || (word.has(Flag::HURRY) && shared.lock().needs_wake(&hot.activity()));
        if wake {
            shared.changed.notify_one();
        }
    }
}

/// The IO object: notes bytes arriving, watches what a WebSocket's service
/// writes, and goes home to the connection's task when dropped.
pub(super) struct Tracked<I> {
    inner: Option<I>,
    shared: Arc<Shared>,
    home: Option<oneshot::Sender<I>>,
    /// Bytes already read, to be read again before the socket: the first
    /// bytes, once they told the protocol, or those a handed-over
    /// connection came with.
    again: Bytes,
}

impl<I> Tracked<I> {
    pub(super) fn new(inner: I, shared: Arc<Shared>, home: oneshot::Sender<I>) -> Self {
        Self {
            inner: Some(inner),
            shared,
            home: Some(home),
            again: Bytes::new(),
        }
    }

    /// Makes `bytes`, already read (and noted), the next ones read, ahead
    /// of any given back before.
    pub(super) fn give_back(&mut self, bytes: &[u8]) {
        if self.again.is_empty() {
            self.again = Bytes::copy_from_slice(bytes);
        } else {
            let mut joined = Vec::with_capacity(bytes.len() + self.again.len());
            joined.extend_from_slice(bytes);
            joined.extend_from_slice(&self.again);
            self.again = joined.into();
        }
    }

    fn io(&mut self) -> &mut I {
        self.inner.as_mut().expect("the IO is here until dropped")
    }
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        if let (Some(io), Some(home)) = (self.inner.take(), self.home.take()) {
            // The task may be gone (cut at the deadline): then it closes here.
            let _ = home.send(io);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.again.is_empty() {
            let n = self.again.len().min(buf.remaining());
            buf.put_slice(&self.again.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(self.io()).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && !self.shared.hot.word.load().has(Flag::WEBSOCKET)
        {
            self.shared.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    /// A write of a WebSocket's service: see [`WsState`].
    fn poll_write_websocket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = self.shared.clone();
        let mut ws = shared.ws();
        loop {
            ws.start_close_at_boundary();
            match ws.state {
                WsState::Closing { written } => {
                    let frame = ws.close.expect("a Close is being written");
                    let n = ready!(Pin::new(self.io()).poll_write(cx, &frame[written..]))?;
                    let written = written + n;
                    ws.state = if written == frame.len() {
                        WsState::Closed
                    } else {
                        WsState::Closing { written }
                    };
                }
                WsState::Closed => return Poll::Ready(Ok(buf.len())),
                WsState::Passing | WsState::ServiceClosed => {
                    let n = ready!(Pin::new(self.io()).poll_write(cx, buf))?;
                    ws.frames.feed(&buf[..n]);
                    if ws.frames.service_closed() {
                        ws.state = WsState::ServiceClosed;
                    }
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.shared.hot.word.load().has(Flag::WEBSOCKET) {
            return self.poll_write_websocket(cx, buf);
        }
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.shared.hot.word.load().has(Flag::WEBSOCKET) {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write_websocket(cx, first);
        }
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(self.io()).poll_flush(cx);
        // hyper flushes the IO only once its own write buffer is empty.
        if matches!(polled, Poll::Ready(Ok(())))
            && let Some(before) = self.shared.hot.word.flushed()
            && before.has(Flag::MOVING)
        {
            self.shared.changed.notify_one();
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }
}

/// The service, counting requests in flight, noting a WebSocket accepted,
/// and making HTTP/1 responses produced while draining close the connection.
pub(super) struct Tracking<S> {
    pub inner: S,
    pub shared: Arc<Shared>,
    pub max_body_bytes: u64,
    /// The readiness check the kit answers in front of the service.
    pub readiness: Option<Arc<ReadinessCheck>>,
}

impl<S, B> Service<Request<Incoming>> for Tracking<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future, B>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let version = request.version();
        let in_flight = self.shared.request_started(version);
        // hyper's size hint is the Content-Length, exactly; a chunked body
        // hints 0 and is the service's to cap as it reads.
        let declared = request.body().size_hint().lower();
        if declared > self.max_body_bytes {
            return TrackedFuture::Kit {
                response: Some(too_large(self.max_body_bytes, version, in_flight)),
            };
        }
        let readiness = self.readiness.as_ref().is_some_and(|c| c.asks(&request));
        if readiness && let Some(answer) = self.readiness.as_ref().and_then(|c| c.answer()) {
            return TrackedFuture::Kit {
                response: Some(kit_answer(answer, version, in_flight)),
            };
        }
        // Only HTTP/2 streams end at the cut-off (`streams`).
        let h2 = (version == Version::HTTP_2).then(|| H2Stream::new(request.headers()));
        TrackedFuture::Service {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
            version,
            h2,
            readiness,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's response, tracked; or the kit's own. A future of its
    /// own rather than a boxed `async` block: no allocation per request.
    #[project = TrackedFutureProj]
    pub(super) enum TrackedFuture<F, B> {
        Service {
            #[pin]
            inner: F,
            in_flight: Option<InFlight>,
            version: Version,
            h2: Option<H2Stream>,
            // The request is the kit's readiness check, of a ready instance.
            readiness: bool,
        },
        Kit { response: Option<Response<TrackedBody<B>>> },
    }
}

impl<F, B, E> Future for TrackedFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TrackedFutureProj::Kit { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            TrackedFutureProj::Service {
                inner,
                in_flight,
                version,
                h2,
                readiness,
            } => {
                let polled = inner.poll(cx);
                let Poll::Ready(response) = polled else {
                    if let Some(stream) = h2.as_mut() {
                        let shared = &in_flight.as_ref().expect("polled after completion").0;
                        if stream.cut_off(&shared.cutoff, cx) {
                            // The service's future is dropped with this one.
                            let (parts, bytes) = stream.unanswered().into_parts();
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                TrackedBody {
                                    inner: Either::Kit { bytes },
                                    _in_flight: in_flight.take().expect("polled after completion"),
                                    h2: None,
                                },
                            )));
                        }
                    }
                    return Poll::Pending;
                };
                let (mut parts, body) = response?.into_parts();
                let in_flight = in_flight.take().expect("polled after completion");
                if *readiness && let Some(answer) = crate::readiness::instead_of(parts.status) {
                    // The service has no readiness route; its body is dropped.
                    return Poll::Ready(Ok(kit_answer(answer, *version, in_flight)));
                }
                let shared = &in_flight.0;
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    // The 101 says what the connection becomes: looked at
                    // here, on the rare upgrade, not on every request.
                    shared.lock().websocket_accepted =
                        websocket::is_websocket_upgrade(&parts.headers);
                } else if closes_after(shared, *version) {
                    // A connection that moves to the new process at its next
                    // boundary stays open: its client never hears of the deploy.
                    close_after(&mut parts, *version);
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    TrackedBody {
                        inner: Either::App { body },
                        _in_flight: in_flight,
                        h2: h2.take(),
                    },
                )))
            }
        }
    }
}

/// Makes an HTTP/1 response the last on its connection: `Connection: close`
/// and nothing else. An HTTP/1.0 response says so as HTTP/1.0, or hyper
/// would add its own `keep-alive` beside ours for a client that asked for it.
fn close_after(parts: &mut http::response::Parts, request_version: Version) {
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("close"));
    if request_version == Version::HTTP_10 {
        parts.version = Version::HTTP_10;
    }
}

/// Whether a response to an HTTP/1 request now is the last on its
/// connection: the instance drains, and this connection does not move to a
/// new process at its next boundary (its client then never hears of the
/// deploy).
fn closes_after(shared: &Shared, version: Version) -> bool {
    version < Version::HTTP_2
        && (shared.drain.is_draining() && (!shared.drain.is_handing_over() || shared.drains_here())
            || shared.hot.word.load().has(Flag::RETIRED))
}

/// The kit's answer to the readiness check, without the service's.
fn kit_answer<B>(
    (status, text): crate::readiness::Answer,
    version: Version,
    in_flight: InFlight,
) -> Response<TrackedBody<B>> {
    let closes = closes_after(&in_flight.0, version);
    let (mut parts, body) = Response::new(TrackedBody {
        inner: Either::Kit {
            bytes: Some(Bytes::from_static(text.as_bytes())),
        },
        _in_flight: in_flight,
        h2: None,
    })
    .into_parts();
    parts.status = status;
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if closes {
        close_after(&mut parts, version);
    }
    Response::from_parts(parts, body)
}

/// 413, without calling the service. The body is never read (nor is a
/// `100 Continue` sent), so an HTTP/1 connection closes after it.
fn too_large<B>(max: u64, version: Version, in_flight: InFlight) -> Response<TrackedBody<B>> {
    let text = format!("request body larger than {max} bytes\n");
    let (mut parts, body) = Response::new(TrackedBody {
        inner: Either::Kit {
            bytes: Some(Bytes::from(text)),
        },
        _in_flight: in_flight,
        h2: None,
    })
    .into_parts();
    parts.status = StatusCode::PAYLOAD_TOO_LARGE;
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if version < Version::HTTP_2 {
        close_after(&mut parts, version);
    }
    Response::from_parts(parts, body)
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until
    /// hyper is done with it.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: Either<B>,
        _in_flight: InFlight,
        // An HTTP/2 stream, which the cut-off may end.
        h2: Option<H2Stream>,
    }
}

pin_project_lite::pin_project! {
    /// The service's body, or one the kit answered with itself.
    #[project = EitherProj]
    enum Either<B> {
        App { #[pin] body: B },
        Kit { bytes: Option<Bytes> },
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.project() {
            EitherProj::App { body } => {
                if let Some(stream) = this.h2.as_mut() {
                    if stream.ended() {
                        return Poll::Ready(None);
                    }
                    let polled = body.poll_frame(cx);
                    if polled.is_pending() && stream.cut_off(&this._in_flight.0.cutoff, cx) {
                        return Poll::Ready(Some(stream.last_frame()));
                    }
                    return polled.map_err(Into::into);
                }
                body.poll_frame(cx).map_err(Into::into)
            }
            EitherProj::Kit { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.h2.as_ref().is_some_and(H2Stream::ended) {
            return true;
        }
        match &self.inner {
            Either::App { body } => body.is_end_stream(),
            Either::Kit { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Either::App { body } => body.size_hint(),
            Either::Kit { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConnectionTimeouts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_given_back_are_read_first_in_order_then_the_socket() {
        let (_trigger, watch) = drain::channel();
        let shared = Arc::new(Shared::new(
            State::new(Policy::new(
                ConnectionTimeouts::default(),
                0.0,
                Instant::now(),
            )),
            watch,
            StreamCutoff::default(),
        ));
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"st: x\r\n\r\n").await.unwrap();
        drop(b);
        let (home, _) = oneshot::channel();
        let mut io = Tracked::new(a, shared, home);
        // A handed-over connection came with "GET / HTTP/1.1\r\nHo"; the
        // sniff read its first 6 bytes again and gives them back.
        io.give_back(b"HTTP/1.1\r\nHo");
        io.give_back(b"GET / ");
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    #[test]
    fn a_response_during_the_drain_closes_and_says_so_in_its_clients_version() {
        for (version, expect) in [
            (Version::HTTP_11, Version::HTTP_11),
            (Version::HTTP_10, Version::HTTP_10),
        ] {
            let (mut parts, ()) = Response::new(()).into_parts();
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
            close_after(&mut parts, version);
            assert_eq!(parts.version, expect);
            let values: Vec<_> = parts.headers.get_all(CONNECTION).iter().collect();
            assert_eq!(values, ["close"]);
        }
    }
}
