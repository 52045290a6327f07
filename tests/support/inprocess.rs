//! The reference app served in process on 127.0.0.1, ended by a
//! test-supplied shutdown instead of a signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handover::drain;
use handover::internals::{FileSettings, ServeArgs, Settings};
use handover::server::{DrainReport, Server, TimeoutsHandle};
use handover::settings::{ConnectionTimeouts, Limits};
use handover::{HyperService, Listener};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::sync::{mpsc, oneshot};

// The reference app's routes (its package's library target), as its binary
// serves them: they use the kit's public API only.
use app::{App, AppBody, AppSettings};

pub const GRACE: Duration = Duration::from_millis(400);

pub fn timeouts() -> ConnectionTimeouts {
    ConnectionTimeouts {
        header_read: Duration::from_millis(800),
        idle: Duration::from_secs(30),
        idle_grace: GRACE,
        websocket_close_window: WEBSOCKET_CLOSE_WINDOW,
        websocket_close_code: 1001,
        ..ConnectionTimeouts::default()
    }
}

/// Short enough for tests that wait for every WebSocket's Close.
pub const WEBSOCKET_CLOSE_WINDOW: Duration = Duration::from_millis(200);

/// The reference app, reporting each request path as it enters, so a test can
/// wait for "the server has this request" instead of sleeping.
#[derive(Clone)]
struct Observed {
    app: App,
    entered: mpsc::UnboundedSender<String>,
}

impl Service<Request<Incoming>> for Observed {
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = <App as tower::Service<Request<Incoming>>>::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let _ = self.entered.send(
            request
                .uri()
                .path_and_query()
                .map_or_else(String::new, ToString::to_string),
        );
        tower::Service::call(&mut self.app.clone(), request)
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Sees the drain start, as the connections do.
    drain: drain::Watch,
    pub entered: mpsc::UnboundedReceiver<String>,
    shutdown: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<DrainReport>,
    /// What a reload sends the connections.
    pub timeouts: TimeoutsHandle,
    /// Connections holding a descriptor, as the server counts them.
    pub fds: Arc<AtomicUsize>,
}

impl TestServer {
    /// Serves a clone of `socket`, the way every instance gets a copy of the fd
    /// systemd holds: dropping ours does not close the socket.
    pub fn on(socket: &std::net::TcpListener, deadline: Duration) -> Self {
        Self::with_limits(socket, deadline, Limits::default())
    }

    pub fn with_limits(socket: &std::net::TcpListener, deadline: Duration, limits: Limits) -> Self {
        let socket = socket.try_clone().expect("clone the listening socket");
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = Listener::from(socket);
        let settings = Settings::resolve(&ServeArgs::default(), &FileSettings::default()).unwrap();
        let (trigger, drain) = drain::channel();
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let app = HyperService(Observed {
            app: App::new(handover::internals::context(
                "app",
                drain.clone(),
                settings,
                AppSettings::default(),
                // A path that never exists: always in rotation.
                std::path::Path::new("/nonexistent/out-of-rotation"),
            )),
            entered: entered_tx,
        });
        let server = Server::builder(vec![listener], app)
            .drain(trigger)
            .timeouts(timeouts())
            .limits(limits)
            .start()
            .unwrap();
        let timeouts = server.timeouts();
        let fds = Arc::new(AtomicUsize::new(0));
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let done = tokio::spawn({
            let fds = fds.clone();
            async move {
                // Publish the server's count of connection descriptors.
                let mut ticks = tokio::time::interval(Duration::from_millis(5));
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = ticks.tick() => fds.store(server.connection_fds(), Ordering::Relaxed),
                    }
                }
                server.drain(deadline, |_| {}).await
            }
        });
        TestServer {
            addr,
            drain,
            entered,
            shutdown: Some(shutdown),
            done,
            timeouts,
            fds,
        }
    }

    pub fn start(deadline: Duration) -> (Self, std::net::TcpListener) {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (Self::on(&socket, deadline), socket)
    }

    pub async fn wait_entered(&mut self, path: &str) {
        let limit = Duration::from_secs(10);
        loop {
            let entered = tokio::time::timeout(limit, self.entered.recv())
                .await
                .expect("the request did not reach the server")
                .expect("the server is gone");
            if entered == path {
                return;
            }
        }
    }

    /// Starts the drain and returns once it has begun.
    pub async fn begin_drain(&mut self) -> Instant {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.drain.draining().await
    }

    pub async fn report(self) -> DrainReport {
        tokio::time::timeout(Duration::from_secs(20), self.done)
            .await
            .expect("the drain did not end")
            .unwrap()
    }
}
