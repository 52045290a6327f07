//! A connection's move to the process that replaces this one: its fd goes
//! over the replacement's channel, and this process forgets it without a
//! FIN (the new process holds the same socket).

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::replace::channel::{Channel, ChannelError};
use crate::replace::wire::Message;

/// Where this process's connections go, and how many went.
#[derive(Debug)]
pub(crate) struct MoveTarget {
    channel: Arc<Channel>,
    moved: AtomicUsize,
    stayed: AtomicUsize,
}

impl MoveTarget {
    pub(crate) fn new(channel: Arc<Channel>) -> Self {
        Self {
            channel,
            moved: AtomicUsize::new(0),
            stayed: AtomicUsize::new(0),
        }
    }

    /// Sends the connection `fd` to the new process. hyper holds none of
    /// its bytes by then ([`super::tracking::Movable::Now`]), so nothing
    /// read comes with it.
    pub(crate) async fn send(&self, fd: BorrowedFd<'_>) -> Result<(), ChannelError> {
        self.channel
            .send(&Message::Connection { read: Vec::new() }, &[fd])
            .await?;
        self.moved.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A connection that ended in this process during the handover:
    /// closed by its client, an HTTP/2 or WebSocket one drained, or one
    /// that could not move.
    pub(crate) fn stayed(&self) {
        self.stayed.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections moved, and connections that ended here.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.moved.load(Ordering::Relaxed),
            self.stayed.load(Ordering::Relaxed),
        )
    }
}
