//! Serving: one accept loop per listener, one task per connection, and the
//! drain that ends them.
//!
//! The drain follows hyper-util's and axum's order: stop accepting and drop the
//! listeners, tell every connection, wait with a deadline. Under systemd the
//! socket itself stays open (systemd holds it), so connections that arrive
//! meanwhile wait in its queue for a sibling or successor instead of being
//! refused.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{
    self, BoxError, ConnectionContext, Http, MoveTarget, Open, Slots, StreamCutoff, stream_end_at,
};
use crate::drain;
use crate::listeners::{Listener, StdListener};
use crate::readiness::ReadinessCheck;
use crate::settings::{ConnectionTimeouts, Limits};

/// How often drain progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Pause after an accept error such as EMFILE, so a full fd table is not a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What the kit serves: any tower [`Service`](tower::Service) of HTTP
/// requests that is `Clone + Send`, as an axum `Router` is, with tower layers
/// or without. A hyper service fits through [`HyperService`].
///
/// Implemented for every such service; there is nothing to implement.
pub trait HttpService: Clone + Send + 'static {
    /// The response body.
    type ResponseBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
    /// The hyper service the connections call: the tower service, cloned
    /// per request and driven through `poll_ready` and `call`.
    #[doc(hidden)]
    fn into_hyper(
        self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::ResponseBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static;
}

impl<S, B> HttpService for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;

    fn into_hyper(
        self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        TowerToHyper(self)
    }
}

/// A tower service driven as hyper drives its own: cloned per request,
/// and called at once when it is ready at once (an axum `Router` always
/// is), without the `Oneshot` state machine that hyper-util's adapter
/// carries every request through; a service that is not ready yet is
/// awaited as `Oneshot` would.
#[derive(Clone)]
struct TowerToHyper<S>(S);

impl<S, B> hyper::service::Service<Request<Incoming>> for TowerToHyper<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = TowerCall<S>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut service = self.0.clone();
        let mut noop = Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut noop) {
            Poll::Ready(Ok(())) => TowerCall::Called {
                future: service.call(request),
            },
            Poll::Ready(Err(err)) => TowerCall::Failed {
                err: Some(err.into()),
            },
            Poll::Pending => TowerCall::Waiting {
                oneshot: tower::util::Oneshot::new(service, request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`TowerToHyper`].
    #[project = TowerCallProj]
    enum TowerCall<S: tower::Service<Request<Incoming>>> {
        Called { #[pin] future: S::Future },
        Waiting { #[pin] oneshot: tower::util::Oneshot<S, Request<Incoming>> },
        Failed { err: Option<BoxError> },
    }
}

impl<S> Future for TowerCall<S>
where
    S: tower::Service<Request<Incoming>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TowerCallProj::Called { future } => future.poll(cx).map_err(Into::into),
            TowerCallProj::Waiting { oneshot } => oneshot.poll(cx).map_err(Into::into),
            TowerCallProj::Failed { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
        }
    }
}

/// A hyper [`Service`](hyper::service::Service), served as a tower one:
/// `handover::HyperService(my_hyper_service)`.
#[derive(Debug, Clone)]
pub struct HyperService<S>(pub S);

impl<S, R> tower::Service<R> for HyperService<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper services are always ready: they take `&self`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.0.call(request)
    }
}

/// A running server. Dropping it without [`Server::drain`] leaves connections
/// running until the runtime ends.
pub struct Server {
    trigger: drain::Trigger,
    timeouts: TimeoutsHandle,
    /// Copies of the listening sockets, to pass to a new process.
    listener_fds: Vec<OwnedFd>,
    move_target: Arc<OnceLock<MoveTarget>>,
    adopt: Adopt,
    accept_loops: Vec<JoinHandle<()>>,
    /// Ends the accept loops, before the drain starts.
    stop_accepting: CancellationToken,
    connections: TaskTracker,
    cut: CancellationToken,
    /// Ends the HTTP/2 streams still open shortly before the deadline.
    cutoff: StreamCutoff,
    open: Arc<AtomicUsize>,
    slots: Arc<Slots>,
    listening: Vec<String>,
}

/// Progress of a drain, reported about once a second.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DrainProgress {
    /// Connections not yet closed.
    pub connections: usize,
    /// Time left before the deadline cuts them.
    pub remaining: Duration,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections open when the drain started.
    pub connections_at_start: usize,
    /// Connections the deadline cut; zero after a clean drain.
    pub cut: usize,
    /// HTTP/2 streams the service had not finished shortly before the
    /// deadline, which the kit ended (gRPC: UNAVAILABLE; others:
    /// RST_STREAM(CANCEL), or 503 before a response began).
    pub streams_ended: usize,
    /// From the drain's start to the last connection's end.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Whether every connection finished before the deadline.
    pub fn is_clean(&self) -> bool {
        self.cut == 0
    }
}

/// Serves a connection another process handed over, with the bytes it had
/// already read.
type Adopt = Arc<dyn Fn(OwnedFd, Bytes) -> io::Result<()> + Send + Sync>;

/// A listener registered with the runtime.
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + std::os::fd::AsRawFd
        + AsFd
        + Unpin
        + Send
        + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        // Responses are written whole; Nagle would only delay their last segment.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// The connection timeouts of a running [`Server`], which may change while
/// it serves (a reload): every connection, open ones included, follows.
#[derive(Debug, Clone)]
pub struct TimeoutsHandle(Arc<watch::Sender<ConnectionTimeouts>>);

impl TimeoutsHandle {
    /// Applies `timeouts` to every connection from now on.
    pub fn set(&self, timeouts: ConnectionTimeouts) {
        self.0.send_replace(timeouts);
    }

    /// The timeouts in force.
    pub fn get(&self) -> ConnectionTimeouts {
        *self.0.borrow()
    }
}

/// How a [`Server`] is set up, from [`Server::builder`]: anything left
/// unset keeps its default.
///
/// ```no_run
/// # async fn run(listener: handover::Listener, service: impl handover::HttpService) -> std::io::Result<()> {
/// use std::time::Duration;
/// use handover::server::Server;
///
/// let (trigger, drain) = handover::drain::channel();
/// // The service may hold `drain` to end its streams as the drain starts.
/// let server = Server::builder(vec![listener], service).drain(trigger).start()?;
/// tokio::signal::ctrl_c().await?;
/// let report = server.drain(Duration::from_secs(10), |_| {}).await;
/// assert!(report.is_clean());
/// # Ok(()) }
/// ```
#[must_use = "a builder serves nothing until `start` or `serve`"]
pub struct Builder<S> {
    listeners: Vec<Listener>,
    service: S,
    trigger: Option<drain::Trigger>,
    timeouts: ConnectionTimeouts,
    limits: Limits,
    readiness: Option<ReadinessCheck>,
}

impl<S: HttpService> Builder<S> {
    /// The drain trigger whose watches the service holds (to answer
    /// `/readyz` or end its streams); the server pulls it in
    /// [`Server::drain`]. Default: one of its own.
    pub fn drain(mut self, trigger: drain::Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// The connections' timeouts to start with ([`Server::timeouts`]
    /// changes them later). Default: the settings' defaults.
    pub fn timeouts(mut self, timeouts: ConnectionTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// What the server accepts from clients, fixed while it runs. Default:
    /// the settings' defaults.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The kit's readiness check, answered in front of the service.
    pub(crate) fn readiness(mut self, readiness: Option<ReadinessCheck>) -> Self {
        self.readiness = readiness;
        self
    }

    /// Starts accepting on every listener. Must run inside a tokio runtime.
    pub fn start(self) -> io::Result<Server> {
        Server::start(self)
    }

    /// Serves until `shutdown` resolves, then drains with `deadline`.
    ///
    /// The shutdown trigger is a future so tests (and embedders) can end the
    /// server without sending the process a signal.
    pub async fn serve(
        self,
        deadline: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<DrainReport> {
        let server = self.start()?;
        shutdown.await;
        Ok(server.drain(deadline, |_| {}).await)
    }
}

impl Server {
    /// Sets up a server of `service` on `listeners` (which must be
    /// non-blocking); [`Builder::start`] starts it.
    pub fn builder<S: HttpService>(listeners: Vec<Listener>, service: S) -> Builder<S> {
        Builder {
            listeners,
            service,
            trigger: None,
            timeouts: ConnectionTimeouts::default(),
            limits: Limits::default(),
            readiness: None,
        }
    }

    fn start<S: HttpService>(builder: Builder<S>) -> io::Result<Server> {
        let Builder {
            listeners,
            service,
            trigger,
            timeouts,
            limits,
            readiness,
        } = builder;
        let trigger = trigger.unwrap_or_else(|| drain::channel().0);
        let (timeouts_tx, timeouts) = watch::channel(timeouts);
        let service = service.into_hyper();
        let connections = TaskTracker::new();
        let ctx = ConnectionContext {
            drain: trigger.watch(),
            timeouts,
            cut: CancellationToken::new(),
            open: Arc::new(AtomicUsize::new(0)),
            limits,
            slots: Arc::new(Slots::new(limits.max_connections)),
            http: Arc::new(Http::new(&limits)),
            numbers: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            move_target: Arc::new(OnceLock::new()),
            cutoff: StreamCutoff::default(),
            readiness: readiness.map(Arc::new),
        };
        let listening = listeners.iter().map(ToString::to_string).collect();
        let listener_fds = listeners
            .iter()
            .map(|listener| listener.socket.try_clone_fd())
            .collect::<io::Result<_>>()?;
        let adopt: Adopt = {
            let (ctx, connections) = (ctx.clone(), connections.clone());
            // Services need not be Sync; a clone per adopted connection is.
            let service = std::sync::Mutex::new(service.clone());
            Arc::new(move |fd, read| {
                let service = service.lock().unwrap_or_else(|p| p.into_inner()).clone();
                adopt(fd, read, service, ctx.clone(), &connections)
            })
        };
        let stop_accepting = CancellationToken::new();
        let mut accept_loops = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let handle = match listener.socket {
                StdListener::Tcp(l) => tokio::spawn(accept_loop(
                    tokio::net::TcpListener::from_std(l)?,
                    service.clone(),
                    ctx.clone(),
                    connections.clone(),
                    stop_accepting.clone(),
                )),
                StdListener::Unix(l) => tokio::spawn(accept_loop(
                    tokio::net::UnixListener::from_std(l)?,
                    service.clone(),
                    ctx.clone(),
                    connections.clone(),
                    stop_accepting.clone(),
                )),
            };
            accept_loops.push(handle);
        }
        Ok(Server {
            trigger,
            timeouts: TimeoutsHandle(Arc::new(timeouts_tx)),
            listener_fds,
            move_target: ctx.move_target,
            adopt,
            accept_loops,
            stop_accepting,
            connections,
            cut: ctx.cut,
            cutoff: ctx.cutoff,
            open: ctx.open,
            slots: ctx.slots,
            listening,
        })
    }

    /// Its connections' timeouts, to change while it serves.
    pub fn timeouts(&self) -> TimeoutsHandle {
        self.timeouts.clone()
    }

    /// What the server listens on, for logs and `STATUS=`.
    pub fn listening(&self) -> &[String] {
        &self.listening
    }

    /// Connections currently open (not yet closing).
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections holding a file descriptor, closing ones included; at most
    /// `max_connections`.
    pub fn connection_fds(&self) -> usize {
        self.slots.taken()
    }

    /// The listening sockets, to pass to a new process.
    pub(crate) fn listener_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listener_fds.iter().map(AsFd::as_fd).collect()
    }

    /// Serves a connection another process handed over.
    pub(crate) fn adopter(&self) -> impl Fn(OwnedFd, Bytes) -> io::Result<()> + use<> {
        let adopt = self.adopt.clone();
        move |fd, read| adopt(fd, read)
    }

    /// The drain of a process a new one has replaced: stops accepting,
    /// moves every HTTP/1 connection to `target` between two requests, and
    /// drains the rest (HTTP/2, WebSockets) as [`Server::drain`] does.
    pub(crate) async fn drain_moving_to(
        self,
        target: MoveTarget,
        deadline: Duration,
    ) -> (DrainReport, (usize, usize)) {
        let targets = self.move_target.clone();
        targets.get_or_init(|| target);
        let report = self.drain_with(deadline, |_| {}, true).await;
        let counts = targets.get().map_or((0, 0), MoveTarget::counts);
        (report, counts)
    }

    /// Stops taking connections from the listeners and returns how many are
    /// open: exactly those the drain then holds, since the drain starts only
    /// after. Counted the other way round, a connection accepted as the
    /// drain started would be missed, or one the drain had already closed
    /// left out.
    pub(crate) async fn stop_accepting(&mut self) -> usize {
        self.stop_accepting.cancel();
        for accept_loop in self.accept_loops.drain(..) {
            // The loops end at the token, dropping their listeners.
            let _ = accept_loop.await;
        }
        self.open.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets every connection finish, and cuts those still
    /// open after `deadline`. `progress` is called about once a second.
    pub async fn drain(
        self,
        deadline: Duration,
        progress: impl FnMut(DrainProgress),
    ) -> DrainReport {
        self.drain_with(deadline, progress, false).await
    }

    async fn drain_with(
        mut self,
        deadline: Duration,
        mut progress: impl FnMut(DrainProgress),
        handing_over: bool,
    ) -> DrainReport {
        let connections_at_start = self.stop_accepting().await;
        // Connections past their maximum age may have ended streams before.
        let ended_before = self.cutoff.ended();
        let started = if handing_over {
            self.trigger.start_handover()
        } else {
            self.trigger.start()
        };
        drop(self.listener_fds);
        self.connections.close();
        let deadline_at = started + deadline;
        let streams_end = tokio::time::sleep_until(stream_end_at(started, deadline).into());
        tokio::pin!(streams_end);
        let mut streams_ended = false;
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        let finished = self.connections.wait();
        tokio::pin!(finished);
        let cut = loop {
            tokio::select! {
                () = &mut finished => break 0,
                () = &mut streams_end, if !streams_ended => {
                    streams_ended = true;
                    self.cutoff.fire();
                }
                () = tokio::time::sleep_until(deadline_at.into()) => {
                    let cut = self.open.load(Ordering::Relaxed);
                    self.cut.cancel();
                    finished.await;
                    break cut;
                }
                _ = ticks.tick() => progress(DrainProgress {
                    connections: self.open.load(Ordering::Relaxed),
                    remaining: deadline_at.saturating_duration_since(Instant::now()),
                }),
            }
        };
        DrainReport {
            connections_at_start,
            cut,
            streams_ended: self.cutoff.ended() - ended_before,
            elapsed: started.elapsed(),
        }
    }
}

async fn accept_loop<L, S, B>(
    listener: L,
    service: S,
    ctx: ConnectionContext,
    connections: TaskTracker,
    stop: CancellationToken,
) where
    L: Accept,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let drain = ctx.drain.clone();
    loop {
        let (accepted, slot) = tokio::select! {
            // Checked first: once stopped, we take nothing more from the
            // queue. The drain also stops it, should the server be dropped
            // without one (its trigger then reads as draining).
            biased;
            _ = stop.cancelled() => break,
            _ = drain.draining() => break,
            // At max_connections no slot is free: we stop taking connections
            // and they wait in the queue.
            accepted = async {
                let slot = ctx.slots.acquire().await;
                (listener.accept().await, slot)
            } => accepted,
        };
        match accepted {
            Ok(io) => {
                let open = Open::new(&ctx.open);
                connections.spawn(connection::serve(
                    io,
                    None,
                    service.clone(),
                    ctx.clone(),
                    (slot, open),
                ));
            }
            Err(err) if is_transient(&err) => {}
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

fn adopt<S, B>(
    fd: OwnedFd,
    read: Bytes,
    service: S,
    ctx: ConnectionContext,
    connections: &TaskTracker,
) -> io::Result<()>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let unix = rustix::net::getsockname(&fd)?.address_family() == rustix::net::AddressFamily::UNIX;
    // A handed-over connection is served even at max_connections: its
    // client is mid-conversation, and it was counted in the old process.
    let admitted = (ctx.slots.force(), Open::new(&ctx.open));
    if unix {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        let io = tokio::net::UnixStream::from_std(stream)?;
        connections.spawn(connection::serve(io, Some(read), service, ctx, admitted));
    } else {
        let stream = std::net::TcpStream::from(fd);
        stream.set_nonblocking(true)?;
        let io = tokio::net::TcpStream::from_std(stream)?;
        connections.spawn(connection::serve(io, Some(read), service, ctx, admitted));
    }
    Ok(())
}

/// Errors about one connection that died in the queue, not about the listener.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
