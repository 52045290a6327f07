//! The readiness check (`/readyz` unless [`Service::readiness_path`] moves
//! it), which the connections answer around the service.
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
//! This module decides; `connection::tracking` asks it once per request
//! (a comparison of the path) and answers as it answers a too-large body,
//! so a request to another path costs nothing more.
//!
//! [`Service::readiness_path`]: crate::Service::readiness_path

use std::sync::Arc;

use http::{Method, Request, StatusCode};

use crate::context::Readiness;

/// The instance's readiness, as [`Context::readiness`](crate::Context::readiness) tells it.
pub(crate) type ReadinessOf = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// Where the check is, and how to know the instance's readiness.
pub(crate) struct ReadinessCheck {
    path: &'static str,
    readiness: ReadinessOf,
}

/// What the kit answers to the check: the status and the body.
pub(crate) type Answer = (StatusCode, &'static str);

impl ReadinessCheck {
    /// `None` for an empty path: the service answers every path.
    pub(crate) fn new(path: &'static str, readiness: ReadinessOf) -> Option<Self> {
        (!path.is_empty()).then_some(Self { path, readiness })
    }

    /// Whether `request` is the check.
    pub(crate) fn asks<B>(&self, request: &Request<B>) -> bool {
        request.uri().path() == self.path && matches!(*request.method(), Method::GET | Method::HEAD)
    }

    /// The kit's answer now, or `None` to let the service answer.
    pub(crate) fn answer(&self) -> Option<Answer> {
        answer((self.readiness)())
    }
}

fn answer(readiness: Readiness) -> Option<Answer> {
    match readiness {
        Readiness::Ready => None,
        Readiness::Draining => Some((StatusCode::SERVICE_UNAVAILABLE, "draining\n")),
        Readiness::OutOfRotation => Some((StatusCode::SERVICE_UNAVAILABLE, "out of rotation\n")),
    }
}

/// What the kit answers instead of the service's answer to the check of a
/// ready instance: `200` when the service has no such route.
pub(crate) fn instead_of(service_status: StatusCode) -> Option<Answer> {
    (service_status == StatusCode::NOT_FOUND).then_some((StatusCode::OK, "ready\n"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    #[test]
    fn only_a_ready_instance_lets_the_service_answer() {
        let state = Arc::new(AtomicU8::new(0));
        let check = ReadinessCheck::new("/readyz", {
            let state = state.clone();
            Arc::new(move || match state.load(Ordering::Relaxed) {
                0 => Readiness::Ready,
                1 => Readiness::Draining,
                _ => Readiness::OutOfRotation,
            })
        })
        .unwrap();
        let get = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        assert!(check.asks(&get(Method::GET, "/readyz")));
        assert!(check.asks(&get(Method::HEAD, "/readyz?verbose")));
        assert!(!check.asks(&get(Method::POST, "/readyz")));
        assert!(!check.asks(&get(Method::GET, "/readyz/x")));

        assert_eq!(check.answer(), None);
        state.store(1, Ordering::Relaxed);
        assert_eq!(
            check.answer(),
            Some((StatusCode::SERVICE_UNAVAILABLE, "draining\n"))
        );
        state.store(2, Ordering::Relaxed);
        assert_eq!(
            check.answer(),
            Some((StatusCode::SERVICE_UNAVAILABLE, "out of rotation\n"))
        );

        assert_eq!(
            instead_of(StatusCode::NOT_FOUND),
            Some((StatusCode::OK, "ready\n"))
        );
        assert_eq!(instead_of(StatusCode::OK), None);
        assert_eq!(instead_of(StatusCode::SERVICE_UNAVAILABLE), None);
        assert!(ReadinessCheck::new("", Arc::new(|| Readiness::Ready)).is_none());
    }
}
