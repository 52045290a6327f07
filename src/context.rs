//! What a service gets from the kit when it is built: its settings (current,
//! as reloads change them), the drain, and its readiness.

use std::sync::Arc;

use tokio::sync::watch;

use crate::drain;
use crate::rotation::Rotation;
use crate::settings::{NoSettings, Settings};

/// Handed to the function that builds the service. Cheap to clone: keep it
/// in the service's state and ask it for the current settings per request.
#[derive(Debug)]
pub struct Context<T = NoSettings> {
    name: &'static str,
    drain: drain::Watch,
    kit: watch::Receiver<Arc<Settings>>,
    service: watch::Receiver<Arc<T>>,
    rotation: Arc<Rotation>,
}

// Not derived: a derive would ask `T: Clone`, and the settings are shared.
impl<T> Clone for Context<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            drain: self.drain.clone(),
            kit: self.kit.clone(),
            service: self.service.clone(),
            rotation: self.rotation.clone(),
        }
    }
}

/// What a readiness check (`/readyz`) should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// 200: send requests here.
    Ready,
    /// 503: this instance is leaving; its siblings and successor serve.
    Draining,
    /// 503: the whole host is leaving (`NAME rotation out`); every instance
    /// still serves, so a balancer can move traffic before anything stops.
    OutOfRotation,
}

impl<T> Context<T> {
    pub(crate) fn new(
        name: &'static str,
        drain: drain::Watch,
        kit: watch::Receiver<Arc<Settings>>,
        service: watch::Receiver<Arc<T>>,
        rotation: Arc<Rotation>,
    ) -> Self {
        Self {
            name,
            drain,
            kit,
            service,
            rotation,
        }
    }

    /// The service's name, as given to [`Service::new`](crate::Service::new).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// This instance's name: `%i` of the unit (`orders@2` is `2`), or
    /// `standalone` outside one.
    pub fn instance(&self) -> String {
        self.kit.borrow().instance.clone()
    }

    /// The service's own section of the settings file, as it stands now: a
    /// reload (SIGHUP) that validates replaces it.
    pub fn settings(&self) -> Arc<T> {
        self.service.borrow().clone()
    }

    /// The kit's settings as they stand now (timeouts, limits, deadline).
    pub fn kit_settings(&self) -> Arc<Settings> {
        self.kit.borrow().clone()
    }

    /// Resolves at the next reload that changed the service's section.
    /// Returns `false` once the service is gone and no more can come.
    pub async fn settings_changed(&mut self) -> bool {
        self.service.changed().await.is_ok()
    }

    /// Whether, and since when, this instance drains. A long response (a
    /// stream, a WebSocket of the service's own) should end once it does.
    pub fn drain(&self) -> &drain::Watch {
        &self.drain
    }

    /// This instance's readiness; a drain wins, as it is the more final.
    pub fn readiness(&self) -> Readiness {
        if self.drain.is_draining() {
            Readiness::Draining
        } else if self.rotation.is_out() {
            Readiness::OutOfRotation
        } else {
            Readiness::Ready
        }
    }
}
