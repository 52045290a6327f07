//! What a connection's wrappers note as it serves, in one atomic word: the
//! requests in flight (the low 32 bits) and every flag the move decision
//! and the close policy read (the high ones). One word, so that what a
//! response's end writes (one fewer in flight, and its bytes not yet
//! flushed) is seen whole or not at all, and so that the task reading the
//! facts and a wrapper writing them cannot both miss the other: every
//! change is one read-modify-write of the same word (see the loom tests).
//!
//! The times (a head's start, the last response's end) are not flags and
//! stay apart, in `tracking::Hot`.

#[cfg(all(test, handover_loom))]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(all(test, handover_loom)))]
use std::sync::atomic::{AtomicU64, Ordering};

/// One flag of the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flag(u64);

impl Flag {
    /// The client has sent anything at all.
    pub(super) const HEARD: Flag = Flag(1 << 32);
    /// The protocol is known and is not HTTP/1.
    pub(super) const NOT_HTTP1: Flag = Flag(1 << 33);
    /// The policy may bring its next action forward (`Policy::may_hurry`):
    /// a response's end then asks whether to wake the task.
    pub(super) const HURRY: Flag = Flag(1 << 34);
    /// Bytes arrived while the current request was in flight: its body, or
    /// the next request ahead of its turn, perhaps in hyper's buffer.
    pub(super) const READ_IN_FLIGHT: Flag = Flag(1 << 35);
    /// An HTTP/1 request began from bytes read before its turn: the client
    /// pipelines, so hyper may hold bytes of its next request at any time.
    pub(super) const PIPELINED: Flag = Flag(1 << 36);
    /// Upgraded to a WebSocket: the service's writes go through the kit's
    /// frame watch.
    pub(super) const WEBSOCKET: Flag = Flag(1 << 37);
    /// A response ended and hyper has not yet flushed it to the socket.
    pub(super) const UNFLUSHED: Flag = Flag(1 << 38);
    /// The connection is to move to a new process at its next boundary: a
    /// response's end and its flush wake the task.
    pub(super) const MOVING: Flag = Flag(1 << 39);
    /// The connection drains here although the process hands over.
    pub(super) const STAYS: Flag = Flag(1 << 40);
    /// Past its maximum age: an HTTP/1 response then closes the connection.
    pub(super) const RETIRED: Flag = Flag(1 << 41);
}

const IN_FLIGHT: u64 = u32::MAX as u64;

/// The word as it was at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot(u64);

impl Snapshot {
    pub(super) fn has(self, flag: Flag) -> bool {
        self.0 & flag.0 != 0
    }

    pub(super) fn in_flight(self) -> u32 {
        (self.0 & IN_FLIGHT) as u32
    }
}

/// The word. Every access is sequentially consistent: the times beside it
/// are read with it, and one ordering for every access of one atomic is
/// one fewer thing to reason about.
#[derive(Debug)]
pub(super) struct Word(AtomicU64);

impl Word {
    pub(super) fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub(super) fn load(&self) -> Snapshot {
        Snapshot(self.0.load(Ordering::SeqCst))
    }

    /// Sets `flag`; returns the word before.
    pub(super) fn set(&self, flag: Flag) -> Snapshot {
        Snapshot(self.0.fetch_or(flag.0, Ordering::SeqCst))
    }

    /// Clears `flag`; returns the word before.
    pub(super) fn clear(&self, flag: Flag) -> Snapshot {
        Snapshot(self.0.fetch_and(!flag.0, Ordering::SeqCst))
    }

    /// Sets `flag` to `on`, with no write when it already is.
    pub(super) fn put(&self, flag: Flag, on: bool) {
        if self.load().has(flag) != on {
            if on {
                self.set(flag);
            } else {
                self.clear(flag);
            }
        }
    }

    /// One change to the whole word; returns the word after it.
    fn update(&self, change: impl Fn(u64) -> u64) -> Snapshot {
        let mut now = self.0.load(Ordering::SeqCst);
        loop {
            let next = change(now);
            match self
                .0
                .compare_exchange_weak(now, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Snapshot(next),
                Err(actual) => now = actual,
            }
        }
    }

    /// The connection drains here after all: it stays, and is no longer moving.
    pub(super) fn stay(&self) {
        self.update(|word| (word | Flag::STAYS.0) & !Flag::MOVING.0);
    }

    /// A request started: one more in flight, and for HTTP/1 a fresh
    /// `READ_IN_FLIGHT`, and `PIPELINED` if its head came ahead of its turn.
    pub(super) fn request_started(&self, http1: bool, pipelined: bool) {
        if !http1 {
            self.0.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let pipelined = if pipelined { Flag::PIPELINED.0 } else { 0 };
        self.update(|word| ((word + 1) & !Flag::READ_IN_FLIGHT.0) | pipelined);
    }

    /// A response ended (hyper dropped its body): one fewer in flight and,
    /// in the same write, its bytes not yet flushed. Returns the word after.
    pub(super) fn response_ended(&self) -> Snapshot {
        self.update(|word| (word - 1) | Flag::UNFLUSHED.0)
    }

    /// The IO was flushed: if a response's bytes were pending, they are
    /// out. Returns the word before when they were, else `None`.
    pub(super) fn flushed(&self) -> Option<Snapshot> {
        if !self.load().has(Flag::UNFLUSHED) {
            return None;
        }
        Some(self.clear(Flag::UNFLUSHED))
    }
}

#[cfg(all(test, not(handover_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_count_and_the_flags_share_the_word_without_touching() {
        let word = Word::new();
        word.request_started(true, false);
        word.set(Flag::READ_IN_FLIGHT);
        word.request_started(true, true);
        let now = word.load();
        assert_eq!(now.in_flight(), 2);
        assert!(now.has(Flag::PIPELINED) && !now.has(Flag::READ_IN_FLIGHT));
        let after = word.response_ended();
        assert_eq!(after.in_flight(), 1);
        assert!(after.has(Flag::UNFLUSHED));
        assert_eq!(
            word.flushed().map(|before| before.has(Flag::UNFLUSHED)),
            Some(true)
        );
        assert_eq!(word.flushed(), None);
        word.set(Flag::MOVING);
        word.stay();
        let now = word.load();
        assert!(now.has(Flag::STAYS) && !now.has(Flag::MOVING));
        word.put(Flag::HURRY, true);
        word.put(Flag::HURRY, true);
        assert!(word.load().has(Flag::HURRY));
        word.put(Flag::HURRY, false);
        assert!(!word.load().has(Flag::HURRY));
        word.response_ended();
        assert_eq!(word.load().in_flight(), 0);
        // Every flag is its own bit, above the count.
        let flags = [
            Flag::HEARD,
            Flag::NOT_HTTP1,
            Flag::HURRY,
            Flag::READ_IN_FLIGHT,
            Flag::PIPELINED,
            Flag::WEBSOCKET,
            Flag::UNFLUSHED,
            Flag::MOVING,
            Flag::STAYS,
            Flag::RETIRED,
        ];
        let all = flags.iter().fold(0u64, |all, flag| {
            assert_eq!(flag.0.count_ones(), 1);
            assert_eq!(all & flag.0, 0, "{flag:?} twice");
            assert_eq!(flag.0 & IN_FLIGHT, 0, "{flag:?} in the count");
            all | flag.0
        });
        assert_eq!(all.count_ones() as usize, flags.len());
    }
}

/// Every interleaving of the connection's task and a wrapper on another
/// thread, explored by loom: `RUSTFLAGS="--cfg handover_loom" cargo test --release
/// --lib loom` (the CI runs it).
#[cfg(all(test, handover_loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// The move's race: the task marks the connection moving, then reads
    /// whether a response is unflushed (if so it waits to be woken); the
    /// flush clears it, then reads whether to wake the task. Whatever the
    /// interleaving, a task that saw the response unflushed is woken.
    #[test]
    fn loom_a_task_waiting_for_a_flush_is_always_woken() {
        loom::model(|| {
            let word = Arc::new(Word::new());
            word.request_started(true, false);
            word.response_ended();
            let flusher = {
                let word = word.clone();
                thread::spawn(move || {
                    word.flushed()
                        .is_some_and(|before| before.has(Flag::MOVING))
                })
            };
            word.set(Flag::MOVING);
            let waits = word.load().has(Flag::UNFLUSHED);
            let woken = flusher.join().unwrap();
            assert!(!waits || woken, "the task waits and nobody wakes it");
        });
    }

    /// A response's end seen by the task reading the facts: either still in
    /// flight, or ended and unflushed, never "nothing in flight, nothing
    /// unflushed" while its bytes are still in hyper's buffer.
    #[test]
    fn loom_a_response_end_is_seen_whole() {
        loom::model(|| {
            let word = Arc::new(Word::new());
            word.request_started(true, false);
            let ender = {
                let word = word.clone();
                thread::spawn(move || {
                    word.response_ended();
                })
            };
            let seen = word.load();
            assert!(
                seen.in_flight() == 1 || seen.has(Flag::UNFLUSHED),
                "{seen:?}: ended but not unflushed"
            );
            ender.join().unwrap();
            let after = word.load();
            assert_eq!(after.in_flight(), 0);
            assert!(after.has(Flag::UNFLUSHED));
        });
    }

    /// Two requests' ends on two threads (HTTP/2 streams) and a flag set
    /// meanwhile: no update is lost.
    #[test]
    fn loom_concurrent_changes_lose_nothing() {
        loom::model(|| {
            let word = Arc::new(Word::new());
            word.request_started(false, false);
            word.request_started(false, false);
            let ends: Vec<_> = (0..2)
                .map(|_| {
                    let word = word.clone();
                    thread::spawn(move || {
                        word.response_ended();
                    })
                })
                .collect();
            word.set(Flag::RETIRED);
            for end in ends {
                end.join().unwrap();
            }
            let after = word.load();
            assert_eq!(after.in_flight(), 0);
            assert!(after.has(Flag::RETIRED) && after.has(Flag::UNFLUSHED));
        });
    }
}
