//! The channel between an old process and its replacement: one end of a
//! `SOCK_SEQPACKET` socketpair each, inherited across the spawn and never
//! bound to a path, so nobody else can connect to it. Messages keep their
//! boundaries; file descriptors ride along as `SCM_RIGHTS`.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::wire::{MAX_MESSAGE, Message, WireError};

/// The most fds one message carries: the listeners. More are refused.
pub(crate) const MAX_FDS: usize = 16;

/// Two connected ends, close-on-exec and non-blocking; the one for the new
/// process has close-on-exec cleared just before the spawn.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelError {
    #[error("the handover channel failed")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    /// We refused to send it: the other side could not take it whole.
    #[error(
        "a handover message of {bytes} bytes with {fds} fds is over the channel's {MAX_MESSAGE} bytes or {MAX_FDS} fds"
    )]
    TooLarge { bytes: usize, fds: usize },
    /// What arrived was cut short by the kernel: the sender broke the limits.
    #[error("a handover message arrived truncated (over {MAX_MESSAGE} bytes or {MAX_FDS} fds)")]
    Truncated,
}

/// One end of the channel, registered with the runtime.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
    /// Where messages are received: one buffer, not one per message (a
    /// thousand connections handed over are a thousand messages).
    buffer: std::sync::Mutex<Vec<u8>>,
}

impl Channel {
    /// Must run inside a tokio runtime. `fd` must be non-blocking.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the OwnedFd is the registration's own, closed only when
        // the AsyncFd (which deregisters it first) drops.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)?
        };
        Ok(Self {
            fd,
            buffer: std::sync::Mutex::new(vec![0; MAX_MESSAGE + 1]),
        })
    }

    /// Sends `message` with `fds` attached, as one datagram. Waits while
    /// the other side's queue is full.
    pub(crate) async fn send(
        &self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        let bytes = message.encode();
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(ChannelError::TooLarge {
                bytes: bytes.len(),
                fds: fds.len(),
            });
        }
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(fds));
                }
                rustix::net::sendmsg(
                    fd.as_fd(),
                    &[IoSlice::new(&bytes)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await?;
        Ok(())
    }

    /// The next message and the fds that came with it; `None` once the
    /// other side has closed its end (or exited).
    /// Sends `bytes` as they are, not as a message: for tests of what a
    /// broken peer sends.
    #[cfg(test)]
    pub(crate) fn send_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            self.fd.get_ref(),
            bytes,
            SendFlags::empty(),
        )?)
    }

    pub(crate) async fn recv(&self) -> Result<Option<(Message, Vec<OwnedFd>)>, ChannelError> {
        let mut fds = Vec::new();
        let mut message = Vec::new();
        let received = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let mut bytes = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let received = rustix::net::recvmsg(
                    fd.as_fd(),
                    &mut [IoSliceMut::new(&mut bytes)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                message.clear();
                message.extend_from_slice(&bytes[..received.bytes]);
                // Taken even from a message refused below: dropping them
                // closes them, so no fd leaks whatever was sent.
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(passed) = message {
                        fds.extend(passed);
                    }
                }
                Ok(received)
            })
            .await?;
        if received.flags.contains(rustix::net::ReturnFlags::TRUNC)
            || received.flags.contains(rustix::net::ReturnFlags::CTRUNC)
        {
            return Err(ChannelError::Truncated);
        }
        if received.bytes == 0 {
            // We never send an empty message: this is the other end closing.
            return Ok(None);
        }
        let message = Message::decode(&message)?;
        Ok(Some((message, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn messages_and_fds_cross_and_the_end_is_seen() {
        let (a, b) = pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        a.send(
            &Message::Listeners { watchdog_usec: 5 },
            &[listener.as_fd()],
        )
        .await
        .unwrap();
        let (message, fds) = b.recv().await.unwrap().unwrap();
        assert_eq!(message, Message::Listeners { watchdog_usec: 5 });
        assert_eq!(fds.len(), 1);
        assert_ne!(fds[0].as_raw_fd(), listener.as_raw_fd(), "a new fd");
        let passed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr, "the same socket");

        b.send(&Message::Serving, &[]).await.unwrap();
        assert_eq!(a.recv().await.unwrap().unwrap().0, Message::Serving);
        drop(b);
        assert!(a.recv().await.unwrap().is_none(), "the other end closed");
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let (a, b) = pair().unwrap();
        let b = Channel::new(b).unwrap();
        rustix::net::send(&a, b"hello there", SendFlags::empty()).unwrap();
        assert!(matches!(
            b.recv().await,
            Err(ChannelError::Wire(WireError::NotOurs(11)))
        ));
    }
}
