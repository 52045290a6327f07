//! Whether a connection moves to the process that replaces this one, and
//! when: the decision a reload must never get wrong, as pure code. A
//! connection moves only where hyper holds none of its bytes, so the new
//! process reads exactly what the client sends next; anything else drains
//! here, as in a stop.
//!
//! Two parts, both without I/O or atomics (the task's shell reads them,
//! [`super::tracking::Shared::move_facts`], and carries out the result):
//! - [`movable`]: what one snapshot of the connection allows;
//! - [`Mover`]: one connection's move from the drain's start, events in
//!   (the drain started, the task is between two polls of hyper), actions
//!   out (wait, move, drain here).

use std::time::Instant;

/// What the decision reads of a connection at one instant, between two
/// polls of hyper (so hyper is not reading meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Facts {
    /// Something other than HTTP/1 was found (HTTP/2): hyper's h2 state
    /// cannot be carried over.
    pub not_http1: bool,
    /// The connection belongs to a service that took an upgrade.
    pub upgraded: bool,
    /// A request began from bytes read before its turn: hyper may hold
    /// bytes of the next one at any time.
    pub pipelined: bool,
    /// Requests whose response has not ended.
    pub in_flight: u32,
    /// Some bytes of a next request head have arrived.
    pub head_started: bool,
    /// A response ended and hyper has not flushed it yet.
    pub unflushed: bool,
    /// Bytes arrived while the last request was in flight: its body, or a
    /// next request hyper may hold.
    pub read_in_flight: bool,
}

/// Whether an HTTP/1 connection can move to another process now, with
/// nothing of it left in hyper's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Movable {
    Now,
    /// After the request in flight, the head arriving, or the flush.
    Later,
    /// Not HTTP/1, upgraded, pipelining, or unsure what hyper holds: it
    /// drains here instead.
    Never,
}

/// What the facts allow. Never wins over Later: a connection that can
/// never move must start its drain now, not after its request.
pub(super) fn movable(facts: &Facts) -> Movable {
    if facts.pipelined || facts.not_http1 || facts.upgraded {
        return Movable::Never;
    }
    if facts.in_flight > 0 || facts.head_started || facts.unflushed {
        return Movable::Later;
    }
    if facts.read_in_flight {
        // Bytes came while the last request was in flight: its body, or a
        // next request hyper may hold. Not knowing, it drains here, as in a
        // stop, rather than wait for a request that may never come.
        return Movable::Never;
    }
    Movable::Now
}

/// What the task does next about the move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MoveAction {
    /// Nothing yet: each response's end (and its flush) wakes the task to
    /// ask again.
    Wait,
    /// Drop hyper's connection and send the socket: hyper holds nothing.
    Move,
    /// The connection stays: drain it here as from `at`, when the drain
    /// started (its grace and deadline count from then, not from now).
    DrainHere { at: Instant },
    /// The move is decided already (moved, or draining here).
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No drain yet.
    Serving,
    /// The drain started at `at`; the connection moves at its next boundary.
    Waiting { at: Instant },
    /// Moved, or draining here: decided.
    Decided,
}

/// One connection's move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mover {
    state: State,
}

impl Default for Mover {
    fn default() -> Self {
        Self::new()
    }
}

impl Mover {
    pub(super) fn new() -> Self {
        Self {
            state: State::Serving,
        }
    }

    /// The drain started at `at`. `target`: a new process takes
    /// connections (a reload); without one (a stop) every connection
    /// drains here. Wait means: wake on each boundary, and [`Mover::check`]
    /// at the next one (the task may be inside a poll of hyper now).
    pub(super) fn drain_started(&mut self, at: Instant, target: bool, facts: &Facts) -> MoveAction {
        if self.state != State::Serving {
            return MoveAction::Nothing;
        }
        if !target || movable(facts) == Movable::Never {
            self.state = State::Decided;
            return MoveAction::DrainHere { at };
        }
        self.state = State::Waiting { at };
        MoveAction::Wait
    }

    /// The task is between two polls of hyper: move now, go on waiting,
    /// or give up and drain here.
    pub(super) fn check(&mut self, facts: &Facts) -> MoveAction {
        let State::Waiting { at } = self.state else {
            return MoveAction::Nothing;
        };
        match movable(facts) {
            Movable::Now => {
                self.state = State::Decided;
                MoveAction::Move
            }
            Movable::Later => MoveAction::Wait,
            Movable::Never => {
                self.state = State::Decided;
                MoveAction::DrainHere { at }
            }
        }
    }

    /// Whether the connection is waiting for its boundary to move: its
    /// responses' ends then wake the task.
    pub(super) fn waiting(&self) -> bool {
        matches!(self.state, State::Waiting { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn idle() -> Facts {
        Facts::default()
    }

    /// Every combination of the facts against the rule written out: Never
    /// if any of the four "never" facts, else Later if any "later" one,
    /// else Now.
    #[test]
    fn movable_follows_the_rule_for_every_combination() {
        for bits in 0u32..128 {
            let bit = |n: u32| bits & (1 << n) != 0;
            let facts = Facts {
                not_http1: bit(0),
                upgraded: bit(1),
                pipelined: bit(2),
                in_flight: u32::from(bit(3)) * 2,
                head_started: bit(4),
                unflushed: bit(5),
                read_in_flight: bit(6),
            };
            let never = bit(0) || bit(1) || bit(2);
            let later = bit(3) || bit(4) || bit(5);
            let expected = if never {
                Movable::Never
            } else if later {
                Movable::Later
            } else if bit(6) {
                Movable::Never
            } else {
                Movable::Now
            };
            assert_eq!(movable(&facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn an_idle_connection_moves_as_the_drain_starts() {
        let mut mover = Mover::new();
        let at = Instant::now();
        assert_eq!(mover.drain_started(at, true, &idle()), MoveAction::Wait);
        assert!(mover.waiting());
        assert_eq!(mover.check(&idle()), MoveAction::Move);
        assert!(!mover.waiting());
        assert_eq!(mover.check(&idle()), MoveAction::Nothing, "moved once");
    }

    #[test]
    fn a_busy_connection_waits_for_its_response_and_its_flush() {
        let mut mover = Mover::new();
        let at = Instant::now();
        let busy = Facts {
            in_flight: 1,
            read_in_flight: false,
            ..idle()
        };
        assert_eq!(mover.drain_started(at, true, &busy), MoveAction::Wait);
        assert!(mover.waiting());
        let unflushed = Facts {
            unflushed: true,
            ..idle()
        };
        assert_eq!(mover.check(&unflushed), MoveAction::Wait);
        assert_eq!(mover.check(&idle()), MoveAction::Move);
    }

    #[test]
    fn without_a_new_process_every_connection_drains_here() {
        let mut mover = Mover::new();
        let at = Instant::now();
        assert_eq!(
            mover.drain_started(at, false, &idle()),
            MoveAction::DrainHere { at }
        );
        assert_eq!(mover.check(&idle()), MoveAction::Nothing);
    }

    #[test]
    fn an_http2_or_upgraded_connection_drains_here_at_once() {
        for facts in [
            Facts {
                not_http1: true,
                ..idle()
            },
            Facts {
                upgraded: true,
                in_flight: 1,
                ..idle()
            },
        ] {
            let mut mover = Mover::new();
            let at = Instant::now();
            assert_eq!(
                mover.drain_started(at, true, &facts),
                MoveAction::DrainHere { at },
                "{facts:?}"
            );
        }
    }

    /// A client found pipelining while the connection waited: it drains
    /// here, its grace counted from the drain's start, not from then.
    #[test]
    fn pipelining_found_while_waiting_drains_here_from_the_drains_start() {
        let mut mover = Mover::new();
        let at = Instant::now();
        let busy = Facts {
            in_flight: 1,
            ..idle()
        };
        assert_eq!(mover.drain_started(at, true, &busy), MoveAction::Wait);
        let pipelined = Facts {
            in_flight: 1,
            pipelined: true,
            ..idle()
        };
        assert_eq!(mover.check(&pipelined), MoveAction::DrainHere { at });
        assert!(!mover.waiting());
        assert_eq!(mover.check(&idle()), MoveAction::Nothing);
    }

    /// Bytes read during the last request (a body, or a next request hyper
    /// may hold): once the response is out, it may not move.
    #[test]
    fn bytes_read_during_a_request_keep_the_connection_here() {
        let mut mover = Mover::new();
        let at = Instant::now();
        let busy = Facts {
            in_flight: 1,
            read_in_flight: true,
            ..idle()
        };
        assert_eq!(mover.drain_started(at, true, &busy), MoveAction::Wait);
        let done = Facts {
            read_in_flight: true,
            ..idle()
        };
        assert_eq!(mover.check(&done), MoveAction::DrainHere { at });
    }

    #[test]
    fn a_second_drain_start_changes_nothing() {
        let mut mover = Mover::new();
        let at = Instant::now();
        let busy = Facts {
            in_flight: 1,
            ..idle()
        };
        assert_eq!(mover.drain_started(at, true, &busy), MoveAction::Wait);
        let later = at + Duration::from_secs(1);
        assert_eq!(
            mover.drain_started(later, true, &idle()),
            MoveAction::Nothing
        );
        assert_eq!(mover.check(&idle()), MoveAction::Move);
    }
}
