//! The old process's side of a reload's exchange, as a pure state machine:
//! events in (a message from the new process, the intermediate process's
//! exit, the channel's end, the deadline), one step out (wait, send the
//! listeners, make the new process the main one, or fail). The spawning,
//! the channel and systemd are the shell around it (`super::start_successor`).
//!
//! ```text
//! Starting ── Spawned(pid) + the intermediate's clean exit + Hello,
//!             in any order ──► SendListeners ──► Listening
//! Listening ── Serving ──► Announce(pid) ──► Over
//! ```
//!
//! Anything else fails the reload: an unexpected or repeated message, the
//! channel's end (the new process exited), a failed intermediate, the
//! deadline. The shell then kills the new process, if it started, and the
//! old one serves on as it was.

use std::process::ExitStatus;

use super::ReplaceError;
use super::wire::Message;

/// What happened, as the shell saw it.
#[derive(Debug)]
pub(crate) enum Event {
    Received(Message),
    /// The intermediate process exited with this status.
    IntermediateExited(ExitStatus),
    /// The new process's end of the channel closed: it exited (or never
    /// started).
    Closed,
    /// The bound for the whole exchange passed.
    TimedOut,
}

/// What the shell does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Nothing yet: wait for the next event.
    Wait,
    /// Send `Listeners` with the listening sockets.
    SendListeners,
    /// The new process serves: tell systemd it is the main process (with
    /// READY=1, in one datagram), then send it `Main`. The exchange is over.
    Announce { pid: u32, takes_connections: bool },
    /// The reload failed: kill the new process (if it started) and go on.
    Fail(ReplaceError),
}

#[derive(Debug)]
enum Phase {
    Starting {
        spawned: Option<u32>,
        /// How the intermediate exited, once it has.
        intermediate: Option<ExitStatus>,
        /// The channel closed before `Spawned`: the intermediate's status says why.
        closed_early: bool,
        hello: Option<bool>,
    },
    Listening {
        pid: u32,
        takes_connections: bool,
    },
    Over,
}

/// One exchange, from the spawn to the new process's `Serving`.
#[derive(Debug)]
pub(crate) struct Exchange {
    phase: Phase,
    /// The new process's pid once known; it stays known after a failure,
    /// so the shell can kill it.
    spawned: Option<u32>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self {
            phase: Phase::Starting {
                spawned: None,
                intermediate: None,
                closed_early: false,
                hello: None,
            },
            spawned: None,
        }
    }
}

impl Exchange {
    /// The new process's pid, once the intermediate has said it.
    pub(crate) fn spawned(&self) -> Option<u32> {
        self.spawned
    }

    pub(crate) fn on(&mut self, event: Event) -> Step {
        let step = self.next(event);
        if matches!(step, Step::Fail(_) | Step::Announce { .. }) {
            self.phase = Phase::Over;
        }
        step
    }

    fn next(&mut self, event: Event) -> Step {
        match &mut self.phase {
            Phase::Starting {
                spawned,
                intermediate,
                closed_early,
                hello,
            } => {
                match event {
                    Event::Received(Message::Spawned { pid }) if spawned.is_none() => {
                        *spawned = Some(pid);
                        self.spawned = Some(pid);
                    }
                    Event::Received(Message::Hello {
                        takes_connections, ..
                    }) if hello.is_none() => *hello = Some(takes_connections),
                    Event::Received(other) => return unexpected("Spawned and Hello", &other),
                    Event::IntermediateExited(status) if !status.success() || *closed_early => {
                        return Step::Fail(ReplaceError::Intermediate(status));
                    }
                    Event::IntermediateExited(status) => *intermediate = Some(status),
                    // Before Spawned (which the intermediate sends before it
                    // exits, so it is read before the end), the new process
                    // never started: the intermediate's status says why.
                    Event::Closed if spawned.is_none() => match intermediate {
                        Some(status) => return Step::Fail(ReplaceError::Intermediate(*status)),
                        None => {
                            *closed_early = true;
                            return Step::Wait;
                        }
                    },
                    Event::Closed => return Step::Fail(ReplaceError::Exited),
                    Event::TimedOut => return not_ready(),
                }
                // The new process is systemd's child only once the
                // intermediate has exited; not before are the sockets sent.
                match (*spawned, intermediate.is_some(), *hello) {
                    (Some(pid), true, Some(takes_connections)) => {
                        self.phase = Phase::Listening {
                            pid,
                            takes_connections,
                        };
                        Step::SendListeners
                    }
                    _ => Step::Wait,
                }
            }
            Phase::Listening {
                pid,
                takes_connections,
            } => match event {
                Event::Received(Message::Serving) => Step::Announce {
                    pid: *pid,
                    takes_connections: *takes_connections,
                },
                Event::Received(other) => unexpected("Serving", &other),
                Event::IntermediateExited(_) => Step::Wait,
                Event::Closed => Step::Fail(ReplaceError::Exited),
                Event::TimedOut => not_ready(),
            },
            Phase::Over => Step::Wait,
        }
    }
}

fn not_ready() -> Step {
    Step::Fail(ReplaceError::NotReady(super::READY_WITHIN))
}

fn unexpected(want: &'static str, got: &Message) -> Step {
    Step::Fail(super::unexpected(want, got))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn exited(code: i32) -> Event {
        Event::IntermediateExited(ExitStatus::from_raw(code << 8))
    }

    fn hello(takes_connections: bool) -> Event {
        Event::Received(Message::Hello {
            version: 1,
            takes_connections,
        })
    }

    fn spawned(pid: u32) -> Event {
        Event::Received(Message::Spawned { pid })
    }

    fn name(step: &Step) -> String {
        match step {
            Step::Wait => "wait".into(),
            Step::SendListeners => "listeners".into(),
            Step::Announce { pid, .. } => format!("announce {pid}"),
            Step::Fail(err) => format!("fail: {err}"),
        }
    }

    fn run(events: Vec<Event>) -> (Vec<String>, Exchange) {
        let mut exchange = Exchange::default();
        let steps = events
            .into_iter()
            .map(|event| name(&exchange.on(event)))
            .collect();
        (steps, exchange)
    }

    /// Spawned, the intermediate's exit and Hello come in any order; the
    /// listeners go once all three are in, never before.
    #[test]
    fn the_three_starting_events_in_every_order_send_the_listeners_once() {
        let orders: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            let make = |i: usize| match i {
                0 => spawned(42),
                1 => exited(0),
                _ => hello(true),
            };
            let mut events: Vec<Event> = order.iter().map(|&i| make(i)).collect();
            events.push(Event::Received(Message::Serving));
            let (steps, exchange) = run(events);
            assert_eq!(
                steps,
                ["wait", "wait", "listeners", "announce 42"],
                "{order:?}"
            );
            assert_eq!(exchange.spawned(), Some(42));
        }
    }

    #[test]
    fn the_new_process_dying_at_each_step_fails_the_reload() {
        let cases: Vec<(Vec<Event>, &str)> = vec![
            // The intermediate could not start it: the channel closes, and
            // the intermediate's status says why, in either order.
            (
                vec![Event::Closed, exited(1)],
                "the process that starts the new one failed",
            ),
            (
                vec![exited(1)],
                "the process that starts the new one failed",
            ),
            (vec![Event::Closed, exited(0)], "the process that starts"),
            (vec![exited(0), Event::Closed], "the process that starts"),
            // Started, then gone before Hello, or after it.
            (
                vec![spawned(7), Event::Closed],
                "exited before it was ready",
            ),
            (
                vec![spawned(7), exited(0), hello(true), Event::Closed],
                "exited before it was ready",
            ),
            (
                vec![hello(false), spawned(7), Event::Closed],
                "exited before it was ready",
            ),
        ];
        for (events, reason) in cases {
            let described = format!("{events:?}");
            let (steps, _) = run(events);
            let last = steps.last().unwrap();
            assert!(
                last.starts_with("fail: ") && last.contains(reason),
                "{described}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|step| step == "listeners") || reason.contains("exited"),
                "{described}: {steps:?}"
            );
        }
    }

    #[test]
    fn a_message_out_of_turn_is_a_protocol_error_naming_both() {
        let cases: Vec<(Vec<Event>, &str)> = vec![
            (
                vec![Event::Received(Message::Serving)],
                "sent Serving where Spawned and Hello was due",
            ),
            (
                vec![spawned(7), spawned(8)],
                "sent Spawned { pid: 8 } where Spawned and Hello was due",
            ),
            (vec![hello(true), hello(true)], "where Spawned and Hello"),
            (
                vec![spawned(7), exited(0), hello(true), hello(true)],
                "where Serving was due",
            ),
            (
                vec![
                    spawned(7),
                    exited(0),
                    hello(true),
                    Event::Received(Message::Main),
                ],
                "sent Main where Serving was due",
            ),
        ];
        for (events, reason) in cases {
            let described = format!("{events:?}");
            let (steps, exchange) = run(events);
            let last = steps.last().unwrap();
            assert!(last.contains(reason), "{described}: {steps:?}");
            // A pid once known stays known, for the shell to kill it.
            if described.contains("Spawned") {
                assert_eq!(exchange.spawned(), Some(7), "{described}");
            }
        }
    }

    #[test]
    fn the_deadline_fails_the_reload_in_either_phase() {
        for events in [
            vec![Event::TimedOut],
            vec![spawned(7), Event::TimedOut],
            vec![spawned(7), exited(0), hello(true), Event::TimedOut],
        ] {
            let (steps, _) = run(events);
            assert!(
                steps.last().unwrap().contains("was not ready within 10s"),
                "{steps:?}"
            );
        }
    }

    #[test]
    fn once_over_nothing_more_happens() {
        let (steps, _) = run(vec![
            Event::TimedOut,
            spawned(7),
            exited(0),
            hello(true),
            Event::Received(Message::Serving),
        ]);
        assert_eq!(steps[1..], ["wait", "wait", "wait", "wait"]);
        let (steps, _) = run(vec![
            spawned(7),
            exited(0),
            hello(false),
            Event::Received(Message::Serving),
            Event::Closed,
        ]);
        assert_eq!(steps, ["wait", "wait", "listeners", "announce 7", "wait"]);
    }
}
