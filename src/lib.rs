#![doc = include_str!("../docs/guide.md")]
//!
//! # Layout
//! One module per question:
//! - the one call that owns the process: `service` ([`Service`]); what a
//!   service is handed: `context` ([`Context`]); its name and every name
//!   derived from it: `name`; its command line: `cli`;
//! - where listening sockets come from: `activation` (the `LISTEN_*`
//!   environment, parsed) and `listeners` (the fds, checked; or a bind);
//! - talking to the service manager: `notify`;
//! - what "draining" means and who sees it: [`drain`];
//! - serving and the drain's order and deadline: [`server`]; one connection's
//!   keep-alive, timeouts and clean close: `connection`;
//! - settings from flags, environment and file: [`settings`], each one
//!   declared once in `settings/declared.rs` (flag, variable, key, default,
//!   check, reload, its lines in the packaged file); whether the
//!   connections they allow fit the file descriptor limit: `fds`;
//! - signals as intents: `signals`; logs: `logging`;
//! - the process from start to exit code: `lifecycle`;
//! - the operator verbs: `rollout` (restart instances one at a time),
//!   `rotation` (take a host out of its balancer's rotation), `render`
//!   (units, package scripts, settings file and man pages for a name);
//! - the in-place reload, one process handing its sockets and idle
//!   connections to its successor: `replace` (the crate's namesake).
//!
//! The reference service, `app`, is a package of its own (`src/bin/app/`),
//! built on this public API only, as any other service is; nothing it alone
//! uses is a dependency of this crate.
#![warn(missing_docs)]
// What is `pub` is reachable from the root; the rest says `pub(crate)`.
#![warn(unreachable_pub)]

mod activation;
mod cli;
mod connection;
mod context;
pub mod drain;
#[doc(hidden)]
pub mod fault;
mod fds;
mod lifecycle;
mod listeners;
mod logging;
mod name;
mod notify;
mod readiness;
mod render;
mod replace;
mod rollout;
mod rotation;
pub mod server;
mod service;
pub mod settings;
mod signals;

pub use connection::BoxError;
pub use context::{Context, Readiness};
/// What [`Context::drain`] returns, named from the crate root for a
/// service that keeps one in its own types.
pub use drain::Watch as DrainWatch;
pub use lifecycle::{EXIT_DRAIN_CUT, EXIT_FORCED};
pub use listeners::Listener;
pub use name::NameError;
pub use server::{HttpService, HyperService};
pub use service::Service;
pub use settings::{NoSettings, ServiceSettings};

/// An error and its sources on one line, `outer: inner: innermost`, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Internals the kit's own tests, benchmarks and fuzz targets reach into.
/// Not part of the API: no service needs them, and they change freely.
#[doc(hidden)]
pub mod internals {
    pub use crate::activation::{ActivationEnv, FIRST_FD, assign};
    pub use crate::fds::raise_soft_limit;
    pub use crate::listeners::BIND_BACKLOG;
    pub use crate::settings::{FileSettings, ServeArgs, Settings, SettingsFile};

    /// A [`Context`](crate::Context) for a service served by hand (an
    /// in-process test or a fuzz target), with fixed settings.
    pub fn context<T>(
        name: &'static str,
        drain: crate::drain::Watch,
        kit: crate::settings::Settings,
        service: T,
        rotation_flag: &std::path::Path,
    ) -> crate::Context<T> {
        let (_, kit) = tokio::sync::watch::channel(std::sync::Arc::new(kit));
        let (_, service) = tokio::sync::watch::channel(std::sync::Arc::new(service));
        crate::Context::new(
            name,
            drain,
            kit,
            service,
            std::sync::Arc::new(crate::rotation::Rotation::new(rotation_flag)),
        )
    }
}

/// The README's quick start compiles: its Rust blocks are doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
