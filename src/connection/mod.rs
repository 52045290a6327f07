//! One connection, from accept to a clean close, whatever it speaks:
//! HTTP/1.1 (and 1.0), HTTP/2 over cleartext (prior knowledge, on the same
//! socket), and what a `101 Switching Protocols` hands the service (a
//! WebSocket).
//!
//! hyper parses and writes HTTP; this module decides when a connection ends
//! and ends it, because hyper's own `graceful_shutdown` closes an idle
//! keep-alive connection at once, which races a client that is sending its
//! next request at that moment (the reset pm2 and Node cluster reloads show,
//! hyper#3792), and because an upgraded connection is invisible to hyper's
//! shutdown. The parts, one idea each:
//! - [`http`]: hyper's HTTP/1 or HTTP/2, as the first bytes say;
//! - [`policy`]: when and how a connection ends, as a pure state machine;
//! - [`admission`]: the slots, against `max_connections`;
//! - [`tracking`]: the wrappers that tell the task what happens on the
//!   connection, and bring its IO home when hyper or the service lets go;
//!   what they note is one atomic word, [`word`];
//! - [`streams`]: an HTTP/2 stream's end at the drain's cut-off;
//! - [`websocket`]: the WebSocket Close frame, between two frames;
//! - [`linger`]: the lingering close every connection ends with;
//! - [`moving`]: or, when a new process replaces this one, whether and when
//!   an HTTP/1 connection moves to it, between two requests, as a pure
//!   state machine; [`move_target`] sends it;
//! - this module: the task that ties them together.
//!
//! The flow, all of it in [`serve`] and the loop it runs (`drive`):
//!
//! ```text
//! accept (server.rs), with a Slot            handed over (replace), forced Slot
//!        └──────────────┬──────────────────────────────┘
//!   serve: wrap the IO, the service and each body (tracking → word)
//!   sniff the first bytes → hyper HTTP/1 or HTTP/2 (http)
//!   drive: hyper serves; the task sleeps until policy::due or a wake
//!     ├─ drain, no successor:  policy → Connection: close / GOAWAY / Close frame
//!     ├─ drain, a successor:   moving::Mover → wait | move now | drain here
//!     └─ cut-off, deadline:    streams end, what is left is cut
//!   End::Move  → move_target sends the fd; this process's copy closes
//!   End::Close → linger (a FIN, then reads drained) → the Slot is given back
//! ```

mod admission;
mod http;
mod linger;
mod move_target;
mod moving;
mod policy;
mod streams;
mod tracking;
mod websocket;
mod word;

use std::future::{Future, poll_fn};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::drain;
use crate::settings::{ConnectionTimeouts, Limits};

use crate::readiness::ReadinessCheck;
pub(crate) use admission::{Slot, Slots};
use http::Conn;
pub(crate) use http::Http;
use linger::{Farewell, linger};
pub(crate) use move_target::MoveTarget;
use moving::{MoveAction, Mover};
use policy::{Action, Policy};
pub(crate) use streams::{StreamCutoff, stream_end_at};
use tracking::{Shared, State, Tracked, Tracking};

/// Any error, as hyper and tower pass them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How soon to try again to send a WebSocket's Close whose socket was full.
const CLOSE_RETRY: Duration = Duration::from_millis(50);

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
    /// HTTP/1 and HTTP/2, configured once for every connection.
    pub http: Arc<Http>,
    /// Numbers connections, for their place in the WebSocket close window.
    pub numbers: Arc<AtomicU64>,
    /// Set, before the drain starts, when a new process replaces this one.
    pub move_target: Arc<OnceLock<MoveTarget>>,
    /// Ends the HTTP/2 streams still open shortly before the drain deadline.
    pub cutoff: StreamCutoff,
    /// The readiness check the kit answers in front of the service, if any.
    pub readiness: Option<Arc<ReadinessCheck>>,
}

/// Counts a connection as open, from where it is accepted (before its task
/// first runs, so a drain that stops the accept loops and then counts sees
/// it) until it stops counting as one the deadline would cut.
pub(crate) struct Open(Arc<AtomicUsize>);

impl Open {
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Event<I> {
    /// hyper is done with the connection.
    Done(Result<(), BoxError>),
    /// The service let go of an upgraded connection.
    Home(Option<I>),
    Cut,
    DrainStarted(Instant),
    Changed,
    Reloaded(bool),
    Pressure(bool),
    Timer,
}

/// How a connection's task ends.
enum End<I> {
    /// Closed here, how, with its IO if it came home.
    Close(Farewell, Option<I>),
    /// To move to the new process: nothing of it is left in hyper.
    Move(I),
}

/// Serves one connection until it is closed, or moves to the process that
/// replaces this one: one just accepted, or (`handed_over`, with the bytes
/// the old process had read of it) an HTTP/1 connection a process handed
/// over.
pub(crate) async fn serve<I, S, B>(
    io: I,
    handed_over: Option<Bytes>,
    service: S,
    ctx: ConnectionContext,
    (slot, open): (Slot, Open),
) where
    I: AsyncRead + AsyncWrite + AsRawFd + AsFd + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let fd = io.as_raw_fd();
    let (home_tx, home) = oneshot::channel();
    let shared = Arc::new(Shared::new(
        State::new(Policy::new(
            *ctx.timeouts.borrow(),
            policy::close_slot(ctx.numbers.fetch_add(1, Ordering::Relaxed)),
            Instant::now(),
        )),
        ctx.drain.clone(),
        ctx.cutoff.for_connection(),
    ));
    let mut io = TokioIo::new(Tracked::new(io, shared.clone(), home_tx));
    let service = Tracking {
        inner: service,
        shared: shared.clone(),
        max_body_bytes: ctx.limits.max_body_bytes,
        readiness: ctx.readiness.clone(),
    };
    if let Some(read) = handed_over.filter(|read| !read.is_empty()) {
        shared.bytes_arrived();
        io.inner_mut().give_back(&read);
    }
    // A handed-over connection speaks HTTP/1, and its first bytes say so
    // as well: until they come, it holds no hyper connection and none of
    // its buffers, as a connection just accepted does not.
    let conn = Conn::sniffing(io, service, ctx.http.clone(), shared.clone());
    let end = drive(Box::pin(conn), home, &shared, ctx.clone(), fd).await;
    drop(open);
    let (farewell, io) = match end {
        End::Close(farewell, io) => (farewell, io),
        End::Move(io) => {
            let move_target = ctx
                .move_target
                .get()
                .expect("connections move only with a target");
            let sent = tokio::select! {
                sent = move_target.send(io.as_fd()) => sent.map_err(|err| err.to_string()),
                () = ctx.cut.cancelled() => Err("the drain deadline passed".to_owned()),
            };
            match sent {
                // This process's fd closes; the socket lives on in the new one.
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "connection not moved to the new process; closing it");
                    (Farewell::Silent, Some(io))
                }
            }
        }
    };
    if let Some(move_target) = ctx.move_target.get() {
        move_target.stayed();
    }
    if let Some(io) = io {
        // A connection whose client never sent a byte has no response to
        // protect and nothing unread to draw a reset: it closes at once
        // instead of lingering. An idle flood gives its slots back after the
        // grace, not the grace and the linger.
        let farewell = match farewell {
            Farewell::Silent if !shared.heard() => Farewell::Unused,
            farewell => farewell,
        };
        linger(io, farewell, &ctx.cut).await;
    }
    drop(slot);
}

/// Runs the connection until it is over: hyper serves it, then, after an
/// upgrade, the service does, while this task carries out the close policy.
/// Returns how to close it and its IO, once home (`None` when cut, or gone),
/// or that it moves.
async fn drive<C, I>(
    conn: Pin<Box<C>>,
    mut home: oneshot::Receiver<I>,
    shared: &Shared,
    mut ctx: ConnectionContext,
    fd: RawFd,
) -> End<I>
where
    C: Future<Output = Result<(), BoxError>> + GracefulShutdown,
{
    let mut conn = Some(conn);
    let mut pressure = ctx.slots.pressure();
    shared
        .lock()
        .policy
        .set_pressure(*pressure.borrow_and_update());
    let mut mover = Mover::new();
    let mut drain_seen = false;
    if let Some(at) = ctx.drain.started_at() {
        drain_seen = true;
        drain_started(&mut mover, shared, &ctx, at);
    }
    let mut reloads_open = true;
    let mut pressure_open = true;
    // A WebSocket Close that did not fit in the socket yet.
    let mut close_retry: Option<u16> = None;
    // One timer for the connection's life, moved rather than recreated.
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut timer_at = None;
    let control = Arc::new(ControlWake::default());
    loop {
        if mover.waiting() {
            match mover.check(&shared.move_facts()) {
                MoveAction::Move => {
                    // hyper is between two polls and holds nothing of the
                    // connection: dropping it brings the IO home.
                    drop(conn.take());
                    return match home.try_recv() {
                        Ok(io) => End::Move(io),
                        Err(_) => End::Close(Farewell::Silent, None),
                    };
                }
                MoveAction::DrainHere { at } => drain_here(shared, at),
                MoveAction::Wait | MoveAction::Nothing => {}
            }
        }
        let armed = {
            let mut state = shared.lock();
            // Before the activity is read: a response ending meanwhile then
            // sees it and checks whether to wake us.
            shared.set_hurry(state.policy.may_hurry());
            // Never further ahead than a request head may take: the next
            // head's deadline then falls after the timer, and starting it
            // wakes nobody.
            let now = Instant::now();
            let check = now + state.policy.timeouts().header_read;
            let mut armed = state
                .policy
                .due(&shared.activity())
                .map_or(check, |(at, _)| at.min(check));
            if close_retry.is_some() {
                armed = armed.min(now + CLOSE_RETRY);
            }
            state.armed = Some(armed);
            armed
        };
        if Some(armed) != timer_at {
            timer.as_mut().reset(armed.into());
            timer_at = Some(armed);
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
                match conn.as_mut() {
                    Some(conn) => {
                        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                            return Poll::Ready(Event::Done(result));
                        }
                    }
                    None => {
                        if let Poll::Ready(io) = Pin::new(&mut home).poll(cx) {
                            return Poll::Ready(Event::Home(io.ok()));
                        }
                    }
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
                if !drain_seen && let Poll::Ready(at) = draining.as_mut().poll(&mut cx) {
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
                if timer.as_mut().poll(&mut cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Done(result) => {
                if let Err(err) = result {
                    // Clients that vanish or send garbage are routine; hyper
                    // has already answered what deserved an answer (400, 431).
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                // Dropping hyper's connection drops the IO, which comes home,
                // unless a service took it with an upgrade.
                conn = None;
                match home.try_recv() {
                    Ok(io) => return End::Close(Farewell::Silent, Some(io)),
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return End::Close(Farewell::Silent, None);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        let websocket = shared.mark_upgraded();
                        tracing::debug!(websocket, "connection upgraded");
                        // Upgraded: a connection waiting to move stays.
                        if let MoveAction::DrainHere { at } = mover.check(&shared.move_facts()) {
                            drain_here(shared, at);
                        }
                    }
                }
            }
            Event::Home(io) => return End::Close(Farewell::Silent, io),
            Event::Cut => {
                if conn.is_none() {
                    // The service holds the upgraded connection: end its
                    // reads and writes so it lets go. The fd is open: the IO
                    // comes home here before anyone closes it.
                    // SAFETY: shutdown on an open socket has no memory effects.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                return End::Close(Farewell::Silent, None);
            }
            Event::DrainStarted(at) => {
                drain_seen = true;
                drain_started(&mut mover, shared, &ctx, at);
            }
            Event::Changed => {}
            Event::Reloaded(open) => {
                reloads_open = open;
                let timeouts = *ctx.timeouts.borrow_and_update();
                shared.lock().policy.set_timeouts(timeouts);
            }
            Event::Pressure(open) => {
                pressure_open = open;
                let since = *pressure.borrow_and_update();
                shared.lock().policy.set_pressure(since);
            }
            Event::Timer => {
                timer_at = None;
                if let Some(code) = close_retry.take()
                    && !shared.send_close(fd, code)
                {
                    close_retry = Some(code);
                }
                // The timer was armed for the due time as it stood then;
                // activity since may have moved it later.
                let now = Instant::now();
                let due = {
                    let mut state = shared.lock();
                    match state.policy.due(&shared.activity()) {
                        Some((at, action)) if at <= now => {
                            state.policy.taken(action, now);
                            Some((action, state.policy.timeouts().websocket_close_code))
                        }
                        _ => None,
                    }
                };
                let Some((action, code)) = due else {
                    continue;
                };
                tracing::debug!(?action, "closing connection");
                match action {
                    Action::GracefulShutdown(_) => {
                        if let Some(conn) = conn.as_mut() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    Action::RequestTimeout | Action::Close(_) => {
                        // hyper keeps waiting for the rest of a head even
                        // after graceful_shutdown, and an HTTP/2 client may
                        // never acknowledge a GOAWAY: take the connection
                        // back (its IO comes home as hyper drops it).
                        drop(conn.take());
                        let farewell = if action == Action::RequestTimeout {
                            Farewell::RequestTimeout
                        } else {
                            Farewell::Silent
                        };
                        return End::Close(farewell, home.try_recv().ok());
                    }
                    Action::WebSocketClose => {
                        if !shared.send_close(fd, code) {
                            close_retry = Some(code);
                        }
                    }
                    Action::Retire => shared.retire(),
                    Action::EndStreams => shared.end_streams(),
                }
            }
        }
    }
}

/// Starts the connection's drain, or, when a new process replaces this one
/// and the connection can move there, its wait for the next boundary (or
/// its move at once, in the loop's next check).
fn drain_started(mover: &mut Mover, shared: &Shared, ctx: &ConnectionContext, at: Instant) {
    let target = ctx.move_target.get().is_some();
    match mover.drain_started(at, target, &shared.move_facts()) {
        // The loop's next check moves it (it is between two polls there).
        MoveAction::Wait => shared.set_moving(),
        MoveAction::DrainHere { at } => drain_here(shared, at),
        MoveAction::Move | MoveAction::Nothing => {}
    }
}

/// The connection drains in this process, as from `at`: its responses say
/// `Connection: close` although the process hands over.
fn drain_here(shared: &Shared, at: Instant) {
    shared.stop_moving();
    shared.lock().policy.drain_started(at);
}

/// hyper's connection, asked to end cleanly.
trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// Wakes the connection's task on behalf of its control futures (the cut,
/// the drain, a reload, an earlier due time, the timer), and says so: the
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
