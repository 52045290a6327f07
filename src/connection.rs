//! One HTTP/1.1 connection, from accept to a clean close.
//!
//! hyper parses and writes HTTP; this module decides when a connection ends,
//! because hyper's own `graceful_shutdown` closes an idle keep-alive connection
//! at once, which races a client that is sending its next request at that
//! moment (the reset pm2 and Node cluster reloads show, hyper#3792). The rules:
//!
//! - A response produced while draining carries `Connection: close`; hyper
//!   then closes the connection once it is written.
//! - A connection idle when the drain starts (or that becomes idle during it)
//!   gets [`ConnectionTimeouts::idle_grace`] to send one last request before it
//!   is closed.
//! - Outside a drain, a connection with no request for
//!   [`ConnectionTimeouts::idle`] is closed, and one that started a request head
//!   must finish it within [`ConnectionTimeouts::header_read`].
//! - Every close is a lingering close: we send FIN and read what the client
//!   still sends until it closes its side, so the kernel never answers unread
//!   bytes with a reset that could destroy a response the client has not read.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{CONNECTION, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::drain;
use crate::settings::{ConnectionTimeouts, Limits};

/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// Any error, as hyper and tower pass them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a connection needs from the server that accepted it.
#[derive(Clone)]
pub(crate) struct ConnectionContext {
    pub drain: drain::Watch,
    pub timeouts: watch::Receiver<ConnectionTimeouts>,
    /// Cancelled when the drain deadline passes: stop at once.
    pub cut: CancellationToken,
    /// Connections that have not yet started their lingering close; what the
    /// deadline would cut.
    pub open: Arc<AtomicUsize>,
    pub limits: Limits,
    pub slots: Arc<Slots>,
}

/// The connections an instance holds, against `max_connections`.
///
/// A connection takes its slot when accepted and gives it back when its
/// task ends, lingering close included, so the count is the file
/// descriptors connections hold. At the limit the accept loop stops taking
/// connections from the queue (they wait there, or a sibling instance takes
/// them: nothing is refused) and raises `pressure`, which gives every idle
/// keep-alive connection `idle_grace` to send a request before it is closed,
/// as a drain does. This is nginx's answer to running out of connections
/// (it closes idle keep-alive ones), with the grace our drains use so a
/// client sending at that moment is not reset.
pub(crate) struct Slots {
    taken: AtomicUsize,
    max: usize,
    room: Notify,
    /// Since when the server has been at its limit; `None` below it.
    pressure: watch::Sender<Option<Instant>>,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
            room: Notify::new(),
            pressure: watch::Sender::new(None),
        }
    }

    /// Connections holding a slot.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// Waits until a connection may be accepted and takes its slot. Raises
    /// the pressure at the limit, and lowers it only once a tenth of the
    /// slots are free again: lowered as soon as one slot frees, it would be
    /// raised anew by the next accept, restarting every idle connection's
    /// grace, and only one connection would ever leave per grace.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        let low_water = self.max - self.max.div_ceil(10);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let taken = self.taken.load(Ordering::Acquire);
            if taken < self.max {
                // Several accept loops (one per listener) share the slots.
                let claimed = self.taken.compare_exchange(
                    taken,
                    taken + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_err() {
                    continue;
                }
                if taken <= low_water {
                    self.pressure
                        .send_if_modified(|since| since.take().is_some());
                }
                return Slot(self.clone());
            }
            let raised = self.pressure.send_if_modified(|since| {
                let raise = since.is_none();
                if raise {
                    *since = Some(Instant::now());
                }
                raise
            });
            if raised {
                tracing::warn!(
                    max_connections = self.max,
                    "at max_connections: new connections wait in the queue; \
                     closing idle keep-alive connections after idle_grace"
                );
            }
            room.await;
        }
    }
}

/// One connection's slot, given back when dropped.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        // Only a release that makes room wakes the accept loop.
        if self.0.taken.fetch_sub(1, Ordering::AcqRel) >= self.0.max {
            self.0.room.notify_waiters();
        }
    }
}

/// Why an idle connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    HeaderTimeout,
    IdleTimeout,
    DrainGrace,
}

/// What the connection is doing, as far as closing it is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    /// Requests whose response body has not been fully written.
    pub in_flight: usize,
    /// Since when no request has been in flight.
    pub idle_since: Instant,
    /// When the first bytes of the next request arrived, if they have.
    pub head_started: Option<Instant>,
}

impl Activity {
    /// When, and why, to close this connection if nothing else happens first.
    /// `None` while a request is in flight: finishing it is the handler's business.
    /// `shed_since`: since when the server has been closing idle connections
    /// (a drain, or being at `max_connections`).
    pub(crate) fn close_at(
        &self,
        timeouts: &ConnectionTimeouts,
        shed_since: Option<Instant>,
    ) -> Option<(Instant, CloseReason)> {
        if self.in_flight > 0 {
            return None;
        }
        if let Some(started) = self.head_started {
            return Some((started + timeouts.header_read, CloseReason::HeaderTimeout));
        }
        let idle_end = (self.idle_since + timeouts.idle, CloseReason::IdleTimeout);
        match shed_since {
            None => Some(idle_end),
            Some(shed) => {
                // The grace counts from when the connection became idle or the
                // shedding began, whichever is later: a client that just got a
                // keep-alive response may reuse the connection.
                let grace_end = (
                    self.idle_since.max(shed) + timeouts.idle_grace,
                    CloseReason::DrainGrace,
                );
                Some(if grace_end.0 < idle_end.0 {
                    grace_end
                } else {
                    idle_end
                })
            }
        }
    }
}

/// Activity shared by the IO wrapper, the service wrapper and the response
/// bodies of one connection, all of which run inside its task.
///
/// The serving loop sleeps until the connection's close time, but never
/// longer than the header timeout, and is woken early only when activity
/// brings the close time before its timer (the drain's grace, say). A
/// request head starting, a request in flight, a response finished: none
/// of them does, so a busy keep-alive connection costs one timer check per
/// header timeout instead of several wake-ups per request. When the timer
/// fires the loop recomputes the close time, closes if it has come, and
/// sleeps again if it has moved.
struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    activity: Activity,
    /// What the loop last saw of the settings, the drain and the pressure.
    timeouts: ConnectionTimeouts,
    drain_started: Option<Instant>,
    pressure_since: Option<Instant>,
    /// When the loop's timer fires; `None` when it armed none.
    armed: Option<Instant>,
    /// Whether the client has sent anything at all.
    heard: bool,
}

impl State {
    fn close_at(&self) -> Option<(Instant, CloseReason)> {
        // Idle connections go after the grace from whichever came first.
        let shed_since = match (self.drain_started, self.pressure_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.activity.close_at(&self.timeouts, shed_since)
    }

    /// Whether the close is now due before the loop's timer would fire.
    fn needs_wake(&self) -> bool {
        match (self.close_at(), self.armed) {
            (Some((at, _)), Some(armed)) => at < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code panics while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` and wakes the loop if the close is now due sooner.
    fn update(&self, change: impl FnOnce(&mut Activity)) {
        let mut state = self.lock();
        change(&mut state.activity);
        let wake = state.needs_wake();
        drop(state);
        if wake {
            self.changed.notify_one();
        }
    }

    // Neither a request starting nor a head starting ever brings the close
    // before the loop's timer, which is armed no further ahead than the
    // header timeout: they skip the check that `update` makes.
    fn request_started(self: &Arc<Self>) -> InFlight {
        {
            let mut state = self.lock();
            state.activity.in_flight += 1;
            state.activity.head_started = None;
        }
        InFlight(self.clone())
    }

    fn bytes_arrived(&self) {
        let mut state = self.lock();
        state.heard = true;
        if state.activity.in_flight == 0 && state.activity.head_started.is_none() {
            state.activity.head_started = Some(Instant::now());
        }
    }
}

/// Held by a response body until hyper has written (or dropped) it.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|activity| {
            activity.in_flight -= 1;
            if activity.in_flight == 0 {
                activity.idle_since = Instant::now();
            }
        });
    }
}

/// Decrements the open-connection count when the connection stops counting as
/// one the deadline would cut.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Event {
    Done(hyper::Result<Farewell>),
    Cut,
    DrainStarted(Instant),
    Changed,
    Reloaded(bool),
    Pressure(bool),
    Timer,
}

/// Serves one accepted connection until it is closed.
pub(crate) async fn serve<I, S, B>(io: I, service: S, mut ctx: ConnectionContext, slot: Slot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ctx.open.fetch_add(1, Ordering::Relaxed);
    let open = Open(ctx.open.clone());
    let mut pressure = ctx.slots.pressure.subscribe();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            activity: Activity {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
            },
            timeouts: *ctx.timeouts.borrow_and_update(),
            drain_started: ctx.drain.started_at(),
            pressure_since: *pressure.borrow_and_update(),
            armed: None,
            heard: false,
        }),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Tracked {
        inner: io,
        shared: shared.clone(),
    });
    let service = Tracking {
        inner: service,
        shared: shared.clone(),
        drain: ctx.drain.clone(),
        max_body_bytes: ctx.limits.max_body_bytes,
    };
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // Our own header and idle timeouts replace hyper's, which would also
        // bound the keep-alive idle time by the header timeout.
        .header_read_timeout(None)
        // A head that does not fit gets 431 from hyper.
        .max_buf_size(ctx.limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service);

    let mut drain_started = ctx.drain.started_at();
    let mut reloads_open = true;
    let mut pressure_open = true;
    let mut close_requested = false;
    // One timer for the connection's life, moved rather than recreated.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut timer_at = None;
    let control = Arc::new(ControlWake::default());
    let result = loop {
        let armed = if close_requested {
            None
        } else {
            let mut state = shared.lock();
            state.drain_started = drain_started;
            // Never further ahead than a request head may take: the next
            // head's deadline then falls after the timer, and starting it
            // wakes nobody.
            let check = Instant::now() + state.timeouts.header_read;
            let armed = state.close_at().map_or(check, |(at, _)| at.min(check));
            state.armed = Some(armed);
            Some(armed)
        };
        if armed != timer_at {
            if let Some(at) = armed {
                timer.as_mut().reset(at.into());
            }
            timer_at = armed;
        }
        let event = {
            let cut = ctx.cut.cancelled();
            let draining = ctx.drain.draining();
            let reloaded = ctx.timeouts.changed();
            let changed = shared.changed.notified();
            let pressured = pressure.changed();
            tokio::pin!(cut, draining, reloaded, changed, pressured);
            // Poll every control future once, so each has its waker.
            control.woken.store(true, Ordering::Release);
            poll_fn(|cx| {
                control.task.register(cx.waker());
                if let Poll::Ready(result) = conn.poll_without_shutdown(cx) {
                    return Poll::Ready(Event::Done(result.map(|()| Farewell::None)));
                }
                // The control futures wake `control`, not the task directly,
                // so the many wake-ups that are only traffic skip them.
                if !control.woken.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
                let waker = Waker::from(control.clone());
                let mut cx = Context::from_waker(&waker);
                if cut.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Cut);
                }
                if drain_started.is_none()
                    && let Poll::Ready(at) = draining.as_mut().poll(&mut cx)
                {
                    return Poll::Ready(Event::DrainStarted(at));
                }
                if reloads_open && let Poll::Ready(changed) = reloaded.as_mut().poll(&mut cx) {
                    return Poll::Ready(Event::Reloaded(changed.is_ok()));
                }
                if changed.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Changed);
                }
                if pressure_open && let Poll::Ready(changed) = pressured.as_mut().poll(&mut cx) {
                    return Poll::Ready(Event::Pressure(changed.is_ok()));
                }
                if timer_at.is_some() && timer.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Done(result) => break result,
            Event::Cut => return,
            Event::DrainStarted(at) => drain_started = Some(at),
            Event::Changed => {}
            Event::Reloaded(open) => {
                reloads_open = open;
                shared.lock().timeouts = *ctx.timeouts.borrow_and_update();
            }
            Event::Pressure(open) => {
                pressure_open = open;
                shared.lock().pressure_since = *pressure.borrow_and_update();
            }
            Event::Timer => {
                timer_at = None;
                // The timer was armed for the close time as it stood then;
                // activity since may have moved it later.
                let due = shared.lock().close_at();
                match due {
                    Some((at, reason)) if at <= Instant::now() => match reason {
                        CloseReason::HeaderTimeout => {
                            // hyper keeps waiting for the rest of a head that
                            // started on a fresh connection even after
                            // graceful_shutdown; no response is owed, so take
                            // the connection back and answer 408 ourselves.
                            tracing::debug!("request head not finished in time");
                            break Ok(Farewell::RequestTimeout);
                        }
                        reason => {
                            tracing::debug!(?reason, "closing connection");
                            close_requested = true;
                            Pin::new(&mut conn).graceful_shutdown();
                        }
                    },
                    _ => {}
                }
            }
        }
    };
    let farewell = result.unwrap_or_else(|err| {
        // Clients that vanish or send garbage are routine; hyper has already
        // answered what deserved an answer (400, 431).
        tracing::debug!(error = %err, "connection ended with an error");
        Farewell::None
    });
    let io = conn.into_parts().io.into_inner().inner;
    drop(open);
    // A connection whose client never sent a byte has no response to
    // protect and nothing unread to draw a reset: it closes at once instead
    // of lingering. An idle flood gives its slots back after the grace, not
    // the grace and the linger.
    let farewell = match farewell {
        Farewell::None if !shared.lock().heard => Farewell::Unused,
        farewell => farewell,
    };
    linger(io, farewell, &ctx.cut).await;
    drop(slot);
}

/// Wakes the connection's task on behalf of its control futures (the cut,
/// the drain, a reload, an earlier close time, the timer), and says so: the
/// task then polls them only when one of them, and not traffic, woke it.
/// Polling five futures on every read and write cost more than the rest of
/// the kit's per-request work together.
#[derive(Default)]
struct ControlWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What we still write before closing.
enum Farewell {
    None,
    RequestTimeout,
    /// The client never sent a byte: close without lingering.
    Unused,
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Closes our side and waits (briefly) for the client to close its own.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    farewell: Farewell,
    cut: &CancellationToken,
) {
    if let Farewell::RequestTimeout = farewell {
        // A small write into an idle connection's empty send buffer; bounded
        // anyway, in case the client stopped reading too.
        let write = tokio::time::timeout(LINGER, io.write_all(REQUEST_TIMEOUT));
        if !matches!(write.await, Ok(Ok(()))) {
            return;
        }
    }
    if io.shutdown().await.is_err() || matches!(farewell, Farewell::Unused) {
        return;
    }
    let drain_reads = async {
        let mut scratch = [0u8; 4096];
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, drain_reads) => {}
        () = cut.cancelled() => {}
    }
}

/// The IO object, noting when bytes of a new request arrive.
struct Tracked<I> {
    inner: I,
    shared: Arc<Shared>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.shared.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app's service, counting requests in flight and adding
/// `Connection: close` to responses produced while draining.
struct Tracking<S> {
    inner: S,
    shared: Arc<Shared>,
    drain: drain::Watch,
    max_body_bytes: u64,
}

// Sound because `inner` is only ever used through `&self`; nothing pins it.
// hyper needs the service `Unpin` to give the IO back without shutting it down.
impl<S> Unpin for Tracking<S> {}

type TrackedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracking<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.shared.request_started();
        // hyper's size hint is the Content-Length, exactly; a chunked body
        // hints 0 and is the service's to cap as it reads.
        let declared = request.body().size_hint().lower();
        if declared > self.max_body_bytes {
            let response = too_large(self.max_body_bytes, in_flight);
            return Box::pin(async move { Ok(response) });
        }
        let drain = self.drain.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let (mut parts, body) = response.await?.into_parts();
            if drain.is_draining() {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(Response::from_parts(
                parts,
                TrackedBody {
                    inner: Either::App { body },
                    _in_flight: in_flight,
                },
            ))
        })
    }
}

/// 413, without calling the service. The body is never read (nor is a
/// `100 Continue` sent), so the connection closes after it.
fn too_large<B>(max: u64, in_flight: InFlight) -> Response<TrackedBody<B>> {
    let text = format!("request body larger than {max} bytes\n");
    let mut response = Response::new(TrackedBody {
        inner: Either::Kit {
            bytes: Some(Bytes::from(text)),
        },
        _in_flight: in_flight,
    });
    *response.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until
    /// hyper is done with it.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: Either<B>,
        _in_flight: InFlight,
    }
}

pin_project_lite::pin_project! {
    /// The app's body, or one the kit answered with itself.
    #[project = EitherProj]
    enum Either<B> {
        App { #[pin] body: B },
        Kit { bytes: Option<Bytes> },
    }
}

impl<B: Body<Data = Bytes>> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            EitherProj::App { body } => body.poll_frame(cx),
            EitherProj::Kit { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
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

    #[tokio::test]
    async fn slots_stop_at_the_limit_and_keep_the_pressure_until_a_tenth_is_free() {
        let slots = Arc::new(Slots::new(20));
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(slots.acquire().await);
        }
        assert_eq!(slots.taken(), 20);
        let mut pressure = slots.pressure.subscribe();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        pressure.changed().await.unwrap();
        assert!(
            pressure.borrow_and_update().is_some(),
            "raised at the limit"
        );
        assert!(!waiter.is_finished(), "no slot past the limit");

        held.pop();
        held.push(waiter.await.unwrap());
        assert_eq!(slots.taken(), 20);
        assert!(
            pressure.borrow().is_some(),
            "one free slot does not lower it"
        );

        held.truncate(18);
        held.push(slots.acquire().await);
        assert!(pressure.borrow().is_none(), "lowered with a tenth free");
        drop(held);
        assert_eq!(slots.taken(), 0);
    }

    const T: ConnectionTimeouts = ConnectionTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        idle_grace: Duration::from_secs(1),
    };

    fn activity(in_flight: usize, idle_since: Instant, head: Option<Instant>) -> Activity {
        Activity {
            in_flight,
            idle_since,
            head_started: head,
        }
    }

    #[test]
    fn nothing_closes_a_connection_with_a_request_in_flight() {
        let now = Instant::now();
        assert_eq!(activity(1, now, None).close_at(&T, None), None);
        assert_eq!(activity(2, now, None).close_at(&T, Some(now)), None);
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let now = Instant::now();
        assert_eq!(
            activity(0, now, None).close_at(&T, None),
            Some((now + T.idle, CloseReason::IdleTimeout))
        );
    }

    #[test]
    fn a_started_head_must_finish_within_the_header_timeout() {
        let now = Instant::now();
        let head = now + Duration::from_secs(5);
        assert_eq!(
            activity(0, now, Some(head)).close_at(&T, None),
            Some((head + T.header_read, CloseReason::HeaderTimeout))
        );
        // Draining does not cut a request that is arriving.
        assert_eq!(
            activity(0, now, Some(head)).close_at(&T, Some(now)),
            Some((head + T.header_read, CloseReason::HeaderTimeout))
        );
    }

    #[test]
    fn the_drain_grace_counts_from_the_later_of_idle_and_drain_start() {
        let idle = Instant::now();
        let drain = idle + Duration::from_secs(30);
        assert_eq!(
            activity(0, idle, None).close_at(&T, Some(drain)),
            Some((drain + T.idle_grace, CloseReason::DrainGrace))
        );
        let became_idle = drain + Duration::from_secs(3);
        assert_eq!(
            activity(0, became_idle, None).close_at(&T, Some(drain)),
            Some((became_idle + T.idle_grace, CloseReason::DrainGrace))
        );
    }

    #[test]
    fn the_idle_timeout_still_wins_if_it_is_sooner_than_the_grace() {
        let idle = Instant::now();
        let drain = idle + T.idle - Duration::from_millis(100);
        assert_eq!(
            activity(0, idle, None).close_at(&T, Some(drain)),
            Some((idle + T.idle, CloseReason::IdleTimeout))
        );
    }
}
