//! The readiness check (`/readyz` unless [`Service::readiness_path`] moves
//! it), answered around the service.
//!
//! A balancer's health check must see a draining or out-of-rotation
//! instance as down whatever routes the service has. A catch-all route
//! (tonic's router answers every unknown path with HTTP 200 and
//! `grpc-status: 12`) would otherwise make it look healthy. So:
//! - not ready ([`Readiness::Draining`], [`Readiness::OutOfRotation`]): the
//!   kit answers `503` itself, and the service is not called;
//! - ready: the service answers, with whatever checks of its own it makes;
//!   if it has no such route (it answers `404`), the kit answers `200`.
//!
//! [`Service::readiness_path`]: crate::Service::readiness_path

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::context::Readiness;

/// The readiness of the instance, as [`Context::readiness`](crate::Context::readiness) tells it.
pub(crate) type ReadinessOf = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// A hyper service with the readiness check in front.
pub(crate) struct Checked<S> {
    inner: S,
    path: &'static str,
    readiness: ReadinessOf,
}

impl<S: Clone> Clone for Checked<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            path: self.path,
            readiness: self.readiness.clone(),
        }
    }
}

impl<S> Checked<S> {
    pub fn new(inner: S, path: &'static str, readiness: ReadinessOf) -> Self {
        Self {
            inner,
            path,
            readiness,
        }
    }
}

/// What the check answers itself, or `None` to call the service.
fn answer(readiness: Readiness) -> Option<(StatusCode, &'static str)> {
    match readiness {
        Readiness::Ready => None,
        Readiness::Draining => Some((StatusCode::SERVICE_UNAVAILABLE, "draining\n")),
        Readiness::OutOfRotation => Some((StatusCode::SERVICE_UNAVAILABLE, "out of rotation\n")),
    }
}

fn text<B>(status: StatusCode, body: &'static str) -> Response<Either<B, Full<Bytes>>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<S, B, R> hyper::service::Service<Request<R>> for Checked<S>
where
    S: hyper::service::Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<Either<B, Full<Bytes>>>;
    type Error = S::Error;
    type Future = Checking<S::Future>;

    fn call(&self, request: Request<R>) -> Self::Future {
        let is_check = !self.path.is_empty()
            && request.uri().path() == self.path
            && matches!(*request.method(), Method::GET | Method::HEAD);
        if !is_check {
            return Checking::Pass {
                inner: self.inner.call(request),
            };
        }
        match answer((self.readiness)()) {
            Some((status, body)) => Checking::Answered {
                response: Some(text(status, body)),
            },
            None => Checking::Ready {
                inner: self.inner.call(request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`Checked`].
    #[project = CheckingProj]
    pub(crate) enum Checking<F> {
        Pass { #[pin] inner: F },
        Ready { #[pin] inner: F },
        Answered { response: Option<Response<Either<Never, Full<Bytes>>>> },
    }
}

/// The body of an answer the kit made, before it takes the service's body type.
pub(crate) enum Never {}

impl<F, B, E> Future for Checking<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckingProj::Pass { inner } => inner.poll(cx).map_ok(|r| r.map(Either::Left)),
            CheckingProj::Ready { inner } => inner.poll(cx).map_ok(|response| {
                if response.status() == StatusCode::NOT_FOUND {
                    // The service has no readiness route of its own.
                    text(StatusCode::OK, "ready\n")
                } else {
                    response.map(Either::Left)
                }
            }),
            CheckingProj::Answered { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(response.map(|body| match body {
                    Either::Right(full) => Either::Right(full),
                    Either::Left(never) => match never {},
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU8, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::Service as _;

    use super::*;

    /// A catch-all route, as tonic's router has: 200 for every path.
    #[derive(Clone)]
    struct CatchAll(StatusCode);

    impl hyper::service::Service<Request<()>> for CatchAll {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn call(&self, _: Request<()>) -> Self::Future {
            let mut response = Response::new(Full::new(Bytes::from_static(b"service\n")));
            *response.status_mut() = self.0;
            std::future::ready(Ok(response))
        }
    }

    async fn ask(service: &Checked<CatchAll>, method: Method, path: &str) -> (StatusCode, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = service.call(request).await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn a_catch_all_route_cannot_make_a_leaving_instance_look_ready() {
        let state = Arc::new(AtomicU8::new(0));
        let readiness: ReadinessOf = {
            let state = state.clone();
            Arc::new(move || match state.load(Ordering::Relaxed) {
                0 => Readiness::Ready,
                1 => Readiness::Draining,
                _ => Readiness::OutOfRotation,
            })
        };
        let service = Checked::new(CatchAll(StatusCode::OK), "/readyz", readiness.clone());
        let ok = |b: &'static str| (StatusCode::OK, Bytes::from_static(b.as_bytes()));
        let unavailable = |b: &'static str| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(b.as_bytes()),
            )
        };

        assert_eq!(ask(&service, Method::GET, "/readyz").await, ok("service\n"));
        state.store(1, Ordering::Relaxed);
        assert_eq!(
            ask(&service, Method::GET, "/readyz").await,
            unavailable("draining\n")
        );
        assert_eq!(
            ask(&service, Method::HEAD, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Other paths and methods are the service's.
        assert_eq!(ask(&service, Method::GET, "/other").await, ok("service\n"));
        assert_eq!(
            ask(&service, Method::POST, "/readyz").await,
            ok("service\n")
        );
        state.store(2, Ordering::Relaxed);
        assert_eq!(
            ask(&service, Method::GET, "/readyz").await,
            unavailable("out of rotation\n")
        );

        // A service without the route: the kit answers for a ready instance.
        state.store(0, Ordering::Relaxed);
        let no_route = Checked::new(
            CatchAll(StatusCode::NOT_FOUND),
            "/readyz",
            readiness.clone(),
        );
        assert_eq!(ask(&no_route, Method::GET, "/readyz").await, ok("ready\n"));
        assert_eq!(
            ask(&no_route, Method::GET, "/x").await.0,
            StatusCode::NOT_FOUND
        );

        // Switched off: every path is the service's.
        state.store(1, Ordering::Relaxed);
        let off = Checked::new(CatchAll(StatusCode::OK), "", readiness);
        assert_eq!(ask(&off, Method::GET, "/readyz").await, ok("service\n"));
    }

    #[test]
    fn only_a_ready_instance_lets_the_service_answer() {
        assert_eq!(answer(Readiness::Ready), None);
        assert_eq!(
            answer(Readiness::Draining).map(|a| a.0),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            answer(Readiness::OutOfRotation).map(|a| a.0),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
