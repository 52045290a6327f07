//! HTTP/2 streams the service has not finished when the drain deadline
//! nears. A stream the service never ends (a gRPC server stream that does
//! not watch the drain, say) would hold the drain to its deadline and then
//! be cut with its connection, a reset its client cannot tell from a crash.
//! So shortly before the deadline ([`stream_end_at`]) the kit ends each one
//! itself, in a way its client can act on:
//! - **gRPC** (`content-type: application/grpc…`): trailers with
//!   `grpc-status: 14` (UNAVAILABLE), which gRPC clients treat as "try
//!   again"; a call the service has not answered at all gets the same
//!   status as a Trailers-Only response.
//! - **other HTTP/2 streams**: `RST_STREAM(CANCEL)` once the response has
//!   started; before it, `503` with `Retry-After`.
//!
//! HTTP/1 responses are left to the deadline: an HTTP/1 response has no
//! way to end early that a client reads as anything but a broken one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use hyper::body::Frame;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::BoxError;

/// How long before the drain deadline the kit ends the streams still open:
/// time for the trailers or resets to go out, the connections' GOAWAY to
/// finish and the process to exit, before the deadline would cut them.
const STREAM_END_LEAD: Duration = Duration::from_secs(1);

/// gRPC's UNAVAILABLE: "the service is currently unavailable … most likely
/// a transient condition, which can be corrected by retrying".
const GRPC_UNAVAILABLE: &str = "14";
const GRPC_MESSAGE: &str = "the server is shutting down; try again";

/// When a drain that started at `started` with `deadline` ends the HTTP/2
/// streams still open: [`STREAM_END_LEAD`] before the deadline, or halfway
/// to a deadline shorter than twice that.
pub(crate) fn stream_end_at(started: Instant, deadline: Duration) -> Instant {
    started + deadline - STREAM_END_LEAD.min(deadline / 2)
}

/// The moment a drain ends the streams still open, shared by every
/// connection of one server, and how many it ended.
#[derive(Clone, Default)]
pub(crate) struct StreamCutoff {
    token: CancellationToken,
    ended: Arc<AtomicUsize>,
}

impl StreamCutoff {
    /// Ends every HTTP/2 stream still open, now and from now on.
    pub(crate) fn fire(&self) {
        self.token.cancel();
    }

    /// One connection's own: fired with this one, or alone (the connection
    /// is past its maximum age), counting in the same total.
    pub(crate) fn for_connection(&self) -> Self {
        Self {
            token: self.token.child_token(),
            ended: self.ended.clone(),
        }
    }

    /// Streams the cut-off ended.
    pub(crate) fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }
}

/// One HTTP/2 stream, as the cut-off sees it.
pub(super) struct H2Stream {
    grpc: bool,
    /// Waits for the cut-off; made the first time the service keeps the
    /// stream waiting, so a response that is ready at once costs nothing.
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
}

impl H2Stream {
    pub(super) fn new(request: &HeaderMap) -> Self {
        let grpc = request
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Self {
            grpc,
            wait: None,
            ended: false,
        }
    }

    /// Whether the kit ended this stream.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// Called when the service keeps the stream waiting: whether the
    /// cut-off has come (the stream then counts as ended by the kit), or,
    /// if not, arranges to be woken when it does.
    pub(super) fn cut_off(&mut self, cutoff: &StreamCutoff, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return true;
        }
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(cutoff.token.clone().cancelled_owned()));
        if wait.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.ended = true;
        cutoff.ended.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How a response the service has started ends at the cut-off.
    pub(super) fn last_frame(&self) -> Result<Frame<Bytes>, BoxError> {
        if self.grpc {
            let mut trailers = HeaderMap::new();
            grpc_unavailable(&mut trailers);
            Ok(Frame::trailers(trailers))
        } else {
            Err(Box::new(h2::Error::from(h2::Reason::CANCEL)))
        }
    }

    /// The kit's answer to a request the service has not answered by the
    /// cut-off (its future is dropped).
    pub(super) fn unanswered(&self) -> Response<Option<Bytes>> {
        let mut response = Response::new(None);
        if self.grpc {
            // Trailers-Only: the status in the one HEADERS frame.
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            grpc_unavailable(headers);
        } else {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let headers = response.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from_static("0"));
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            *response.body_mut() = Some(Bytes::from_static(b"the server is shutting down\n"));
        }
        response
    }
}

fn grpc_unavailable(headers: &mut HeaderMap) {
    headers.insert("grpc-status", HeaderValue::from_static(GRPC_UNAVAILABLE));
    headers.insert("grpc-message", HeaderValue::from_static(GRPC_MESSAGE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_end_a_second_before_the_deadline_or_halfway_to_a_short_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(stream_end_at(t0, s(10)), t0 + s(9));
        assert_eq!(stream_end_at(t0, s(2)), t0 + s(1));
        assert_eq!(
            stream_end_at(t0, Duration::from_millis(600)),
            t0 + Duration::from_millis(300)
        );
    }

    #[test]
    fn grpc_streams_end_with_unavailable_and_others_with_cancel() {
        let mut grpc = HeaderMap::new();
        grpc.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let stream = H2Stream::new(&grpc);
        let trailers = stream.last_frame().unwrap().into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        let unanswered = stream.unanswered();
        assert_eq!(unanswered.status(), StatusCode::OK);
        assert_eq!(unanswered.headers()["grpc-status"], "14");
        assert!(unanswered.body().is_none(), "Trailers-Only: no body");

        let plain = H2Stream::new(&HeaderMap::new());
        let err = plain.last_frame().unwrap_err();
        let h2 = err.downcast_ref::<h2::Error>().expect("an h2 error");
        assert_eq!(h2.reason(), Some(h2::Reason::CANCEL));
        let unanswered = plain.unanswered();
        assert_eq!(unanswered.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unanswered.headers()[RETRY_AFTER], "0");
    }

    #[tokio::test]
    async fn the_cut_off_wakes_a_waiting_stream_and_counts_it_once() {
        let cutoff = StreamCutoff::default();
        let mut stream = H2Stream::new(&HeaderMap::new());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!stream.cut_off(&cutoff, &mut cx));
        cutoff.fire();
        assert!(stream.cut_off(&cutoff, &mut cx));
        assert!(stream.cut_off(&cutoff, &mut cx));
        assert_eq!(cutoff.ended(), 1);
        assert!(stream.ended());
    }
}
