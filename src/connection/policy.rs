//! When, and how, a connection ends: the close policy as a pure state
//! machine. Events (the drain, pressure at `max_connections`, a reload, the
//! protocol becoming known, an action taken) go in; [`Policy::due`] says
//! what the connection should do next and when. No sockets, no clocks of its
//! own: the serving loop (`super::serve`) feeds it and carries out its
//! answers, and the tests below drive it with made-up instants.
//!
//! The rules, by protocol:
//! - **HTTP/1** (and a connection that has not said which yet): a response
//!   produced while draining carries `Connection: close`; an idle
//!   connection gets `idle_grace` to send one last request once the drain
//!   starts (or the server is at its limit), because closing it at once
//!   races a client sending on it; a request head must finish within
//!   `header_read` (else 408); a connection without requests for `idle` is
//!   closed.
//! - **HTTP/2**: the drain starts the graceful two-step GOAWAY at once:
//!   streams in flight finish, new ones go to a new connection, which lands
//!   on a sibling. A client that never acknowledges the GOAWAY's PING is
//!   closed once it has had no stream for `idle_grace`.
//! - **A maximum age** (`max_connection_age`, off unless set), as
//!   grpc-go's `MaxConnectionAge`, so no connection lives forever on one
//!   process and balancing can follow the instances: past it (give or take
//!   10%, by the connection's close slot, so connections opened together do
//!   not all end together) an HTTP/2 connection gets the graceful GOAWAY,
//!   and its streams still open after `max_connection_age_grace` are ended
//!   as the drain's cut-off ends them; an HTTP/1 connection's next response
//!   carries `Connection: close` (closing it idle would race the client, as
//!   above). Upgraded connections are left alone.
//! - **Upgraded** (a WebSocket, or another protocol after `101`): the kit
//!   sends a WebSocket a Close frame when the drain starts, at this
//!   connection's place in the close window, so siblings do not take every
//!   reconnect in the same instant. Anything upgraded that is still open at
//!   the drain deadline is cut.

use std::time::Instant;

use crate::settings::ConnectionTimeouts;

/// What the connection speaks, as far as closing it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Nothing decided yet: treated as HTTP/1 (a head that stalls gets 408).
    Unknown,
    Http1,
    Http2,
    /// Handed to the service after `101 Switching Protocols`.
    Upgraded {
        websocket: bool,
    },
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    IdleTimeout,
    DrainGrace,
    MaxAge,
}

/// What the connection is doing, as far as closing it is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    /// Requests (HTTP/2: streams) whose response has not been fully written.
    pub in_flight: usize,
    /// Since when no request has been in flight.
    pub idle_since: Instant,
    /// When the first bytes of the next HTTP/1 request arrived, if they have.
    pub head_started: Option<Instant>,
}

/// What the serving loop should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Ask hyper to end the connection cleanly: HTTP/1 closes it once idle,
    /// HTTP/2 sends GOAWAY and closes once its streams are done.
    GracefulShutdown(CloseReason),
    /// Take the connection back from hyper, answer 408 and close.
    RequestTimeout,
    /// Close now: nothing is owed on it.
    Close(CloseReason),
    /// Send the WebSocket Close frame.
    WebSocketClose,
    /// Past its maximum age, an HTTP/1 connection: its next response says
    /// `Connection: close`.
    Retire,
    /// Past its maximum age and grace, an HTTP/2 connection: end the streams
    /// still open, as the drain's cut-off does.
    EndStreams,
}

/// One connection's close policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    protocol: Protocol,
    timeouts: ConnectionTimeouts,
    drain_started: Option<Instant>,
    pressure_since: Option<Instant>,
    /// When hyper was asked to end the connection.
    shutdown_at: Option<Instant>,
    /// Where in the close window this connection's WebSocket Close goes, as
    /// a fraction of the window.
    close_slot: f64,
    websocket_closed: bool,
    /// When the connection was accepted (or taken over), for its age.
    opened: Instant,
    /// When it was retired for its age.
    aged: Option<Instant>,
    streams_ended: bool,
}

impl Policy {
    /// `close_slot` in `[0, 1)`: this connection's place in the close window
    /// (and in the spread of its maximum age); `opened`: when it was accepted.
    pub(super) fn new(timeouts: ConnectionTimeouts, close_slot: f64, opened: Instant) -> Self {
        Self {
            protocol: Protocol::Unknown,
            timeouts,
            drain_started: None,
            pressure_since: None,
            shutdown_at: None,
            close_slot,
            websocket_closed: false,
            opened,
            aged: None,
            streams_ended: false,
        }
    }

    pub(super) fn timeouts(&self) -> &ConnectionTimeouts {
        &self.timeouts
    }

    pub(super) fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    pub(super) fn set_timeouts(&mut self, timeouts: ConnectionTimeouts) {
        self.timeouts = timeouts;
    }

    pub(super) fn drain_started(&mut self, at: Instant) {
        self.drain_started.get_or_insert(at);
    }

    pub(super) fn set_pressure(&mut self, since: Option<Instant>) {
        self.pressure_since = since;
    }

    /// Records that the loop carried out `action` at `now`.
    pub(super) fn taken(&mut self, action: Action, now: Instant) {
        match action {
            Action::GracefulShutdown(reason) => {
                self.shutdown_at.get_or_insert(now);
                if reason == CloseReason::MaxAge {
                    self.aged.get_or_insert(now);
                }
            }
            Action::WebSocketClose => self.websocket_closed = true,
            Action::Retire => {
                self.aged.get_or_insert(now);
            }
            Action::EndStreams => self.streams_ended = true,
            Action::RequestTimeout | Action::Close(_) => {}
        }
    }

    /// Whether a request ending could bring the next action before the
    /// loop's check (at most `header_read` ahead): only while shedding (a
    /// drain, pressure), for an HTTP/2 connection asked to end, or with an
    /// idle timeout shorter than the header timeout. Otherwise it only moves
    /// the idle timeout, and further out than the check.
    pub(super) fn may_hurry(&self) -> bool {
        self.drain_started.is_some()
            || self.pressure_since.is_some()
            || self.shutdown_at.is_some()
            || self.timeouts.idle < self.timeouts.header_read
    }

    /// When the connection reaches its maximum age, if it has one and has
    /// not been retired for it (nor is draining, which ends it anyway).
    fn age_due(&self) -> Option<Instant> {
        if self.aged.is_some() || self.drain_started.is_some() {
            return None;
        }
        let age = self.timeouts.max_connection_age?;
        // grpc-go spreads it by ±10% at random; the slot spreads it as
        // evenly, and repeatably.
        Some(self.opened + age.mul_f64(0.9 + 0.2 * self.close_slot))
    }

    /// What to do next and when, if nothing else happens first. `None`:
    /// nothing is scheduled (a request is in flight, or only the deadline
    /// can end it).
    pub(super) fn due(&self, activity: &Activity) -> Option<(Instant, Action)> {
        let t = &self.timeouts;
        match self.protocol {
            Protocol::Upgraded { websocket } => {
                let drain = self.drain_started?;
                (websocket && !self.websocket_closed).then(|| {
                    let offset = t.websocket_close_window.mul_f64(self.close_slot);
                    (drain + offset, Action::WebSocketClose)
                })
            }
            Protocol::Http2 => {
                if let Some(asked) = self.shutdown_at {
                    if activity.in_flight > 0 {
                        // Retired for its age: its streams have the grace,
                        // then end as the drain's cut-off ends them.
                        return match self.aged {
                            Some(aged) if !self.streams_ended => {
                                Some((aged + t.max_connection_age_grace, Action::EndStreams))
                            }
                            _ => None,
                        };
                    }
                    // Asked to end: hyper closes once the streams are done
                    // and the client acknowledges. Bound the wait for the
                    // acknowledgement: some clients never send it.
                    let idle = activity.idle_since.max(asked);
                    let reason = match self.aged {
                        Some(_) => CloseReason::MaxAge,
                        None => CloseReason::DrainGrace,
                    };
                    return Some((idle + t.idle_grace, Action::Close(reason)));
                }
                if let Some(drain) = self.drain_started {
                    // GOAWAY at once, streams in flight or not.
                    return Some((drain, Action::GracefulShutdown(CloseReason::DrainGrace)));
                }
                let aged = self
                    .age_due()
                    .map(|at| (at, Action::GracefulShutdown(CloseReason::MaxAge)));
                if activity.in_flight > 0 {
                    return aged;
                }
                let (at, reason) = self.idle_end(activity);
                sooner(Some((at, Action::GracefulShutdown(reason))), aged)
            }
            Protocol::Unknown | Protocol::Http1 => {
                if self.shutdown_at.is_some() {
                    return None;
                }
                let aged = self.age_due().map(|at| (at, Action::Retire));
                if activity.in_flight > 0 {
                    return aged;
                }
                if let Some(started) = activity.head_started {
                    // Draining does not cut a request that is arriving.
                    return sooner(
                        Some((started + t.header_read, Action::RequestTimeout)),
                        aged,
                    );
                }
                let (at, reason) = self.idle_end(activity);
                sooner(Some((at, Action::GracefulShutdown(reason))), aged)
            }
        }
    }

    /// When an idle connection ends: after the idle timeout, or, while the
    /// server sheds connections (draining, or at its limit), after the grace,
    /// whichever is sooner.
    fn idle_end(&self, activity: &Activity) -> (Instant, CloseReason) {
        let t = &self.timeouts;
        let idle_end = (activity.idle_since + t.idle, CloseReason::IdleTimeout);
        // Idle connections go after the grace from whichever came first.
        let shed_since = match (self.drain_started, self.pressure_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(shed) = shed_since else {
            return idle_end;
        };
        // The grace counts from when the connection became idle or the
        // shedding began, whichever is later: a client that just got a
        // keep-alive response may reuse the connection.
        let grace_end = (
            activity.idle_since.max(shed) + t.idle_grace,
            CloseReason::DrainGrace,
        );
        if grace_end.0 < idle_end.0 {
            grace_end
        } else {
            idle_end
        }
    }
}

/// The sooner of two due actions; the first on a tie.
fn sooner(a: Option<(Instant, Action)>, b: Option<(Instant, Action)>) -> Option<(Instant, Action)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// A connection's place in the close window, in `[0, 1)`, from its number:
/// consecutive connections land far apart (a golden-ratio sequence), so any
/// set of them spreads evenly over the window.
pub(crate) fn close_slot(connection: u64) -> f64 {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    (connection as f64 * GOLDEN).fract()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: ConnectionTimeouts = ConnectionTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        idle_grace: Duration::from_secs(1),
        websocket_close_window: Duration::from_secs(2),
        websocket_close_code: 1001,
        max_connection_age: None,
        max_connection_age_grace: Duration::from_secs(5),
    };

    fn activity(in_flight: usize, idle_since: Instant, head: Option<Instant>) -> Activity {
        Activity {
            in_flight,
            idle_since,
            head_started: head,
        }
    }

    fn http1() -> Policy {
        let mut policy = Policy::new(T, 0.5, Instant::now());
        policy.set_protocol(Protocol::Http1);
        policy
    }

    fn draining(mut policy: Policy, at: Instant) -> Policy {
        policy.drain_started(at);
        policy
    }

    use Action::*;
    use CloseReason::*;

    #[test]
    fn nothing_closes_a_connection_with_a_request_in_flight() {
        let now = Instant::now();
        assert_eq!(http1().due(&activity(1, now, None)), None);
        assert_eq!(draining(http1(), now).due(&activity(2, now, None)), None);
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let now = Instant::now();
        assert_eq!(
            http1().due(&activity(0, now, None)),
            Some((now + T.idle, GracefulShutdown(IdleTimeout)))
        );
    }

    #[test]
    fn a_started_head_must_finish_within_the_header_timeout() {
        let now = Instant::now();
        let head = now + Duration::from_secs(5);
        assert_eq!(
            http1().due(&activity(0, now, Some(head))),
            Some((head + T.header_read, RequestTimeout))
        );
        // Draining does not cut a request that is arriving.
        assert_eq!(
            draining(http1(), now).due(&activity(0, now, Some(head))),
            Some((head + T.header_read, RequestTimeout))
        );
    }

    #[test]
    fn the_drain_grace_counts_from_the_later_of_idle_and_drain_start() {
        let idle = Instant::now();
        let drain = idle + Duration::from_secs(30);
        assert_eq!(
            draining(http1(), drain).due(&activity(0, idle, None)),
            Some((drain + T.idle_grace, GracefulShutdown(DrainGrace)))
        );
        let became_idle = drain + Duration::from_secs(3);
        assert_eq!(
            draining(http1(), drain).due(&activity(0, became_idle, None)),
            Some((became_idle + T.idle_grace, GracefulShutdown(DrainGrace)))
        );
    }

    #[test]
    fn the_idle_timeout_still_wins_if_it_is_sooner_than_the_grace() {
        let idle = Instant::now();
        let drain = idle + T.idle - Duration::from_millis(100);
        assert_eq!(
            draining(http1(), drain).due(&activity(0, idle, None)),
            Some((idle + T.idle, GracefulShutdown(IdleTimeout)))
        );
    }

    #[test]
    fn only_shedding_or_a_short_idle_timeout_can_hurry_the_loop() {
        let now = Instant::now();
        assert!(!http1().may_hurry());
        assert!(draining(http1(), now).may_hurry());
        let mut pressed = http1();
        pressed.set_pressure(Some(now));
        assert!(pressed.may_hurry());
        let mut short = http1();
        short.set_timeouts(ConnectionTimeouts {
            idle: Duration::from_secs(1),
            ..T
        });
        assert!(short.may_hurry());
    }

    #[test]
    fn pressure_sheds_idle_connections_like_a_drain() {
        let idle = Instant::now();
        let mut policy = http1();
        policy.set_pressure(Some(idle + Duration::from_secs(5)));
        assert_eq!(
            policy.due(&activity(0, idle, None)),
            Some((idle + Duration::from_secs(6), GracefulShutdown(DrainGrace)))
        );
        policy.set_pressure(None);
        assert_eq!(
            policy.due(&activity(0, idle, None)),
            Some((idle + T.idle, GracefulShutdown(IdleTimeout)))
        );
    }

    #[test]
    fn once_asked_to_end_an_http1_connection_waits_for_hyper() {
        let now = Instant::now();
        let mut policy = draining(http1(), now);
        let (_, action) = policy.due(&activity(0, now, None)).unwrap();
        policy.taken(action, now + T.idle_grace);
        assert_eq!(policy.due(&activity(0, now, None)), None);
    }

    #[test]
    fn http2_sends_goaway_as_the_drain_starts_even_with_streams_in_flight() {
        let now = Instant::now();
        let mut policy = Policy::new(T, 0.5, Instant::now());
        policy.set_protocol(Protocol::Http2);
        assert_eq!(policy.due(&activity(3, now, None)), None);
        let drain = now + Duration::from_secs(1);
        policy.drain_started(drain);
        assert_eq!(
            policy.due(&activity(3, now, None)),
            Some((drain, GracefulShutdown(DrainGrace)))
        );
        policy.taken(GracefulShutdown(DrainGrace), drain);
        // Streams finish: nothing to do while they run ...
        assert_eq!(policy.due(&activity(3, now, None)), None);
        // ... and a client that never acknowledges is closed after the grace.
        let idle = drain + Duration::from_secs(2);
        assert_eq!(
            policy.due(&activity(0, idle, None)),
            Some((idle + T.idle_grace, Close(DrainGrace)))
        );
    }

    #[test]
    fn http2_ignores_the_header_timeout_and_goes_away_when_idle_too_long() {
        let now = Instant::now();
        let mut policy = Policy::new(T, 0.5, Instant::now());
        policy.set_protocol(Protocol::Http2);
        assert_eq!(
            policy.due(&activity(0, now, Some(now))),
            Some((now + T.idle, GracefulShutdown(IdleTimeout)))
        );
    }

    #[test]
    fn a_websocket_is_closed_at_its_place_in_the_window() {
        let now = Instant::now();
        let mut policy = Policy::new(T, 0.25, Instant::now());
        policy.set_protocol(Protocol::Upgraded { websocket: true });
        assert_eq!(
            policy.due(&activity(0, now, None)),
            None,
            "not before the drain"
        );
        policy.drain_started(now);
        assert_eq!(
            policy.due(&activity(0, now, None)),
            Some((now + Duration::from_millis(500), WebSocketClose))
        );
        policy.taken(WebSocketClose, now);
        assert_eq!(policy.due(&activity(0, now, None)), None, "one Close only");
    }

    #[test]
    fn the_kit_sends_no_close_on_other_upgrades() {
        let now = Instant::now();
        let mut other = draining(Policy::new(T, 0.25, Instant::now()), now);
        other.set_protocol(Protocol::Upgraded { websocket: false });
        assert_eq!(other.due(&activity(0, now, None)), None);
    }

    fn aged(protocol: Protocol, slot: f64, opened: Instant) -> Policy {
        let timeouts = ConnectionTimeouts {
            max_connection_age: Some(Duration::from_secs(10)),
            ..T
        };
        let mut policy = Policy::new(timeouts, slot, opened);
        policy.set_protocol(protocol);
        policy
    }

    #[test]
    fn an_http2_connection_past_its_age_goes_away_and_its_streams_end_after_the_grace() {
        let opened = Instant::now();
        let mut policy = aged(Protocol::Http2, 0.5, opened);
        let age = opened + Duration::from_secs(10);
        // Streams in flight do not hold the GOAWAY back.
        assert_eq!(
            policy.due(&activity(3, opened, None)),
            Some((age, GracefulShutdown(MaxAge)))
        );
        policy.taken(GracefulShutdown(MaxAge), age);
        let grace = age + T.max_connection_age_grace;
        assert_eq!(
            policy.due(&activity(3, opened, None)),
            Some((grace, EndStreams))
        );
        policy.taken(EndStreams, grace);
        assert_eq!(policy.due(&activity(3, opened, None)), None, "ended once");
        // Its streams done, a client that never acknowledges is closed.
        let idle = grace + Duration::from_millis(10);
        assert_eq!(
            policy.due(&activity(0, idle, None)),
            Some((idle + T.idle_grace, Close(MaxAge)))
        );
    }

    #[test]
    fn an_idle_http2_connection_goes_away_at_its_age_if_that_comes_first() {
        let opened = Instant::now();
        let policy = aged(Protocol::Http2, 0.5, opened);
        assert_eq!(
            policy.due(&activity(0, opened, None)),
            Some((opened + Duration::from_secs(10), GracefulShutdown(MaxAge)))
        );
    }

    #[test]
    fn an_http1_connection_past_its_age_is_retired_not_closed() {
        let opened = Instant::now();
        let mut policy = aged(Protocol::Http1, 0.5, opened);
        let age = opened + Duration::from_secs(10);
        assert_eq!(policy.due(&activity(0, opened, None)), Some((age, Retire)));
        assert_eq!(policy.due(&activity(1, opened, None)), Some((age, Retire)));
        policy.taken(Retire, age);
        // Idle, it waits for its next request (whose response says close)
        // or its idle timeout: closing it now would race the client.
        assert_eq!(
            policy.due(&activity(0, opened, None)),
            Some((opened + T.idle, GracefulShutdown(IdleTimeout)))
        );
        assert_eq!(policy.due(&activity(1, opened, None)), None);
    }

    #[test]
    fn ages_spread_by_ten_percent_over_the_slots() {
        let opened = Instant::now();
        let at = |slot| {
            aged(Protocol::Http1, slot, opened)
                .due(&activity(1, opened, None))
                .unwrap()
                .0
                - opened
        };
        assert_eq!(at(0.0), Duration::from_secs(9));
        assert_eq!(at(0.5), Duration::from_secs(10));
        assert!(at(0.999) > Duration::from_millis(10_990));
    }

    #[test]
    fn the_drain_takes_over_from_the_age() {
        let opened = Instant::now();
        let drain = opened + Duration::from_secs(1);
        let policy = draining(aged(Protocol::Http1, 0.5, opened), drain);
        assert_eq!(
            policy.due(&activity(0, opened, None)),
            Some((drain + T.idle_grace, GracefulShutdown(DrainGrace)))
        );
        assert_eq!(policy.due(&activity(1, opened, None)), None);
    }

    #[test]
    fn without_a_maximum_age_nothing_is_retired() {
        let opened = Instant::now();
        let mut policy = Policy::new(T, 0.5, opened);
        policy.set_protocol(Protocol::Http2);
        assert_eq!(policy.due(&activity(2, opened, None)), None);
    }

    #[test]
    fn close_slots_spread_over_the_window() {
        let mut slots: Vec<f64> = (0..100).map(close_slot).collect();
        assert!(slots.iter().all(|s| (0.0..1.0).contains(s)));
        slots.sort_by(f64::total_cmp);
        // Evenly: no gap wider than 3% of the window, none narrower than 0.1%.
        let widest_gap = slots.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        assert!(widest_gap < 0.03, "{widest_gap}");
        assert!(slots.windows(2).all(|w| w[1] - w[0] > 0.001));
    }
}
