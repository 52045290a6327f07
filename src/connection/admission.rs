//! Admission: the connections one instance holds, against
//! `max_connections`. What happens at the limit is nginx's answer to running
//! out of connections (close idle keep-alive ones), with the grace our
//! drains use, so a client sending at that moment is not reset.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, watch};

/// The connections an instance holds, against `max_connections`.
///
/// A connection takes its slot when accepted and gives it back when its
/// task ends, lingering close included, so the count is the file
/// descriptors connections hold. At the limit the accept loop stops taking
/// connections from the queue (they wait there, or a sibling instance takes
/// them: nothing is refused) and raises `pressure`, which gives every idle
/// keep-alive connection `idle_grace` to send a request before it is closed,
/// as a drain does. This is nginx's answer to running out of connections
/// (it closes idle keep-alive ones), with the grace our drains use so a
/// client sending at that moment is not reset.
pub(crate) struct Slots {
    taken: AtomicUsize,
    max: usize,
    room: Notify,
    /// Since when the server has been at its limit; `None` below it.
    pressure: watch::Sender<Option<Instant>>,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
            room: Notify::new(),
            pressure: watch::Sender::new(None),
        }
    }

    /// Since when the server has been at its limit, as it changes.
    pub(crate) fn pressure(&self) -> watch::Receiver<Option<Instant>> {
        self.pressure.subscribe()
    }

    /// Connections holding a slot.
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    /// Waits until a connection may be accepted and takes its slot. Raises
    /// the pressure at the limit, and lowers it only once a tenth of the
    /// slots are free again: lowered as soon as one slot frees, it would be
    /// raised anew by the next accept, restarting every idle connection's
    /// grace, and only one connection would ever leave per grace.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        let low_water = self.max - self.max.div_ceil(10);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let taken = self.taken.load(Ordering::Acquire);
            if taken < self.max {
                // Several accept loops (one per listener) share the slots.
                let claimed = self.taken.compare_exchange(
                    taken,
                    taken + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_err() {
                    continue;
                }
                if taken <= low_water {
                    self.pressure
                        .send_if_modified(|since| since.take().is_some());
                }
                return Slot(self.clone());
            }
            let raised = self.pressure.send_if_modified(|since| {
                let raise = since.is_none();
                if raise {
                    *since = Some(Instant::now());
                }
                raise
            });
            if raised {
                tracing::warn!(
                    max_connections = self.max,
                    "at max_connections: new connections wait in the queue; \
                     closing idle keep-alive connections after idle_grace"
                );
            }
            room.await;
        }
    }
}

impl Slots {
    /// A slot now, even over the limit: for a connection another process
    /// handed over, whose client is mid-conversation. The accept loops then
    /// wait until the count is below the limit again.
    pub(crate) fn force(self: &Arc<Self>) -> Slot {
        self.taken.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }
}

/// One connection's slot, given back when dropped.
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        // Only a release that makes room wakes the accept loop.
        if self.0.taken.fetch_sub(1, Ordering::AcqRel) >= self.0.max {
            self.0.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_stop_at_the_limit_and_keep_the_pressure_until_a_tenth_is_free() {
        let slots = Arc::new(Slots::new(20));
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(slots.acquire().await);
        }
        assert_eq!(slots.taken(), 20);
        let mut pressure = slots.pressure();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await }
        });
        pressure.changed().await.unwrap();
        assert!(
            pressure.borrow_and_update().is_some(),
            "raised at the limit"
        );
        assert!(!waiter.is_finished(), "no slot past the limit");

        held.pop();
        held.push(waiter.await.unwrap());
        assert_eq!(slots.taken(), 20);
        assert!(
            pressure.borrow().is_some(),
            "one free slot does not lower it"
        );

        held.truncate(18);
        held.push(slots.acquire().await);
        assert!(pressure.borrow().is_none(), "lowered with a tenth free");
        drop(held);
        assert_eq!(slots.taken(), 0);
    }
}
