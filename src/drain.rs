//! The drain signal: one [`Trigger`] that decides when draining starts, and
//! any number of [`Watch`]es (the accept loops, every connection, the routes
//! that answer differently while draining) that see it.
//!
//! The trigger is deliberately not `Clone`: exactly one place, the lifecycle,
//! decides to drain. Dropping the trigger without pulling it also counts as a
//! drain, so a watcher can never wait forever on a server that is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::watch;

/// Starts the drain. Purposefully not `Clone`.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<Option<Instant>>,
    draining: Arc<AtomicBool>,
    handing_over: Arc<AtomicBool>,
}

/// Sees whether, and since when, the drain has started.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<Option<Instant>>,
    /// The same fact as `rx` holds, as one load: every HTTP/1 response asks
    /// it, and the channel's borrow is a lock.
    draining: Arc<AtomicBool>,
    handing_over: Arc<AtomicBool>,
}

/// A new trigger and its first watch.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(None);
    let draining = Arc::new(AtomicBool::new(false));
    let handing_over = Arc::new(AtomicBool::new(false));
    (
        Trigger {
            tx,
            draining: draining.clone(),
            handing_over: handing_over.clone(),
        },
        Watch {
            rx,
            draining,
            handing_over,
        },
    )
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.draining.store(true, Ordering::Release);
    }
}

impl Trigger {
    /// Starts the drain now; later calls keep the first start time.
    pub fn start(&self) -> Instant {
        let now = Instant::now();
        self.draining.store(true, Ordering::Release);
        self.tx.send_if_modified(|started| {
            if started.is_none() {
                *started = Some(now);
                true
            } else {
                false
            }
        });
        self.tx.borrow().unwrap_or(now)
    }

    /// Starts the drain of a process that a new one replaces: its HTTP/1
    /// connections move to the new process instead of closing.
    pub(crate) fn start_handover(&self) -> Instant {
        self.handing_over.store(true, Ordering::Release);
        self.start()
    }

    /// Another watch of this trigger.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            draining: self.draining.clone(),
            handing_over: self.handing_over.clone(),
        }
    }
}

impl Watch {
    /// Whether the drain has started (or the trigger is gone).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether this drain hands connections to a new process.
    pub(crate) fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// When the drain started, if it has.
    pub fn started_at(&self) -> Option<Instant> {
        *self.rx.borrow()
    }

    /// Resolves once the drain has started (or the trigger is gone), with its start time.
    pub async fn draining(&self) -> Instant {
        let mut rx = self.rx.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(started) => started.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    #[test]
    fn watchers_wait_until_the_trigger_is_pulled() {
        let (trigger, watch) = channel();
        let second = trigger.watch();
        let mut first_wait = task::spawn(watch.draining());
        let mut second_wait = task::spawn(second.draining());
        assert_pending!(first_wait.poll());
        assert_pending!(second_wait.poll());
        assert!(!watch.is_draining());

        let started = trigger.start();
        assert!(first_wait.is_woken());
        assert_eq!(assert_ready!(first_wait.poll()), started);
        assert_eq!(assert_ready!(second_wait.poll()), started);
        assert!(watch.is_draining());
        assert_eq!(watch.started_at(), Some(started));
    }

    #[test]
    fn a_second_start_keeps_the_first_time() {
        let (trigger, watch) = channel();
        let first = trigger.start();
        let second = trigger.start();
        assert_eq!(first, second);
        assert_eq!(watch.started_at(), Some(first));
    }

    #[test]
    fn a_watch_taken_after_the_start_is_ready_at_once() {
        let (trigger, _watch) = channel();
        trigger.start();
        let late = trigger.watch();
        let mut wait = task::spawn(late.draining());
        assert_ready!(wait.poll());
    }

    #[test]
    fn dropping_the_trigger_releases_watchers() {
        let (trigger, watch) = channel();
        let mut wait = task::spawn(watch.draining());
        assert_pending!(wait.poll());
        drop(trigger);
        assert!(wait.is_woken());
        assert_ready!(wait.poll());
        assert!(watch.is_draining());
    }
}
