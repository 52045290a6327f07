//! A kit for HTTP services under systemd that deploy without losing a request.
//!
//! systemd holds the listening socket (`app.socket`) open all the time and
//! passes it to every instance of the service (`app@.service`). An instance
//! takes its sockets from the environment, serves, tells systemd `READY=1`,
//! and on SIGTERM drains: it stops accepting (connections wait in the
//! socket's queue for a sibling), finishes what is in flight, closes
//! keep-alive connections without racing their clients, and exits before its
//! deadline. Restarting instances one after another is then a deploy in which
//! nothing is lost.
//!
//! # Layout
//! One module per question:
//! - where listening sockets come from: [`activation`] (the `LISTEN_*`
//!   environment, parsed) and [`listeners`] (the fds, checked; or a bind);
//! - talking to the service manager: [`notify`];
//! - what "draining" means and who sees it: [`drain`];
//! - serving and the drain's order and deadline: [`server`]; one connection's
//!   keep-alive, timeouts and clean close: `connection`;
//! - settings from flags, environment and file: [`settings`]; whether the
//!   connections they allow fit the file descriptor limit: [`fds`];
//! - signals as intents: [`signals`]; logs: [`logging`];
//! - the process from start to exit code: [`lifecycle`];
//! - the deploy verb, restarting instances one at a time: [`rollout`];
//! - taking a whole host out of its load balancer's rotation: [`rotation`];
//! - the reference app's routes: [`routes`].
//!
//! The `app` binary (`src/main.rs`) is the reference user: it gathers
//! settings, environment and listeners before any thread starts, then hands
//! them to [`lifecycle::run`] with [`routes::App`].

pub mod activation;
mod connection;
pub mod drain;
pub mod fault;
pub mod fds;
pub mod lifecycle;
pub mod listeners;
pub mod logging;
pub mod notify;
pub mod rollout;
pub mod rotation;
pub mod routes;
pub mod server;
pub mod settings;
pub mod signals;

pub use connection::BoxError;

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
