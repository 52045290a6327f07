//! `NAME replace PID`: what the units' `ExecReload=` runs. It asks the
//! running process PID to replace itself with the binary on disk and
//! waits for the answer, so `systemctl reload` returns once the new process
//! serves, and fails when it does not.
//!
//! The request is `SIGUSR1` sent with `sigqueue` (a plain `kill -USR1`
//! also replaces, but gets no answer); the answer is a signal back from
//! PID: `SIGUSR1` done, `SIGUSR2` failed. Before a `SIGUSR2`, PID sends the
//! reason as one datagram to an abstract unix socket named after the
//! asking process ([`reply_address`]), so `systemctl reload`'s own output
//! in the journal, and `systemctl status`, say why, as shellflip answers its
//! caller. Answers from any other process are ignored: the signal's origin
//! and the datagram's credentials (`SO_PASSCRED`) name the sender.

use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use signal_hook::consts::{SIGUSR1, SIGUSR2};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;

use super::READY_WITHIN;

/// Beyond the old process's own bound on the new one: the reply's way back.
const REPLY_MARGIN: Duration = Duration::from_secs(3);

/// `NAME replace PID`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplaceArgs {
    /// The running process to replace: `$MAINPID` in `ExecReload=`.
    #[arg(value_name = "PID")]
    pub pid: i32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplaceFailed {
    #[error("PID {pid} cannot be signalled")]
    NoProcess {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "PID {0} does not take in-place reloads (a release from before them): restart it \
         instead (systemctl restart)"
    )]
    Unsupported(i32),
    #[error("cannot ask PID {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the reload failed: PID {pid} goes on serving with the release it runs: {}",
        reason.as_deref().unwrap_or("its log says why")
    )]
    Refused { pid: i32, reason: Option<String> },
    #[error("no answer from PID {pid} within {}", humantime::format_duration(*.within))]
    NoAnswer { pid: i32, within: Duration },
}

/// Whether `pid` handles `SIGUSR1`: a release that does not would be
/// killed by it. Read from `/proc/PID/status`'s `SigCgt` mask.
pub(crate) fn catches_sigusr1(status: &str) -> Option<bool> {
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))?
        .trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    Some(mask & (1 << (SIGUSR1 - 1)) != 0)
}

pub(crate) fn run(
    args: &ReplaceArgs,
    name: &str,
    out: &mut impl Write,
) -> Result<(), ReplaceFailed> {
    let pid = args.pid;
    let target = rustix::process::Pid::from_raw(pid).ok_or(ReplaceFailed::NoProcess {
        pid,
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    rustix::process::test_kill_process(target).map_err(|err| ReplaceFailed::NoProcess {
        pid,
        source: err.into(),
    })?;
    // Under PrivateUsers=, each process of the unit has a user namespace of
    // its own and PID's /proc entry is hidden from us: then we cannot tell,
    // and ask anyway (`NAME rollout`, run as root, checks and restarts such
    // instances instead).
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && catches_sigusr1(&status) == Some(false)
    {
        return Err(ReplaceFailed::Unsupported(pid));
    }
    // Before the request: the answer may come at once. Without a socket
    // for the reason (its name taken), the answer is the signal alone.
    let reasons = reason_socket().ok();
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGUSR1, SIGUSR2])
        .map_err(|source| ReplaceFailed::Signal { pid, source })?;
    let (tx, rx) = mpsc::channel();
    let handle = signals.handle();
    std::thread::spawn(move || {
        for origin in signals.forever() {
            if tx.send(origin).is_err() {
                break;
            }
        }
    });
    ask(pid).map_err(|source| ReplaceFailed::Signal { pid, source })?;
    let within = READY_WITHIN + REPLY_MARGIN;
    let until = Instant::now() + within;
    let answer = loop {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(origin) = rx.recv_timeout(left) else {
            break Err(ReplaceFailed::NoAnswer { pid, within });
        };
        if origin.process.map(|p| p.pid) != Some(pid) {
            continue;
        }
        break match origin.signal {
            SIGUSR1 => Ok(()),
            _ => Err(ReplaceFailed::Refused {
                pid,
                reason: reasons.as_ref().and_then(|fd| reason_from(fd, pid)),
            }),
        };
    };
    handle.close();
    answer?;
    let _ = writeln!(
        out,
        "{name}: PID {pid} replaced by the binary on disk, which now serves"
    );
    Ok(())
}

/// Longest reason sent; a longer one is cut (at a character boundary).
const MAX_REASON: usize = 4096;

/// Where the process that asked, `pid`, hears why its reload failed: an
/// abstract name (no file, nothing left behind), in the unit's network
/// namespace, which `ExecReload=` shares with the main process.
fn reply_address(pid: u32) -> rustix::io::Result<SocketAddrUnix> {
    SocketAddrUnix::new_abstract_name(format!("handover-replace/{pid}").as_bytes())
}

/// This process's socket for the reason, bound before it asks.
fn reason_socket() -> rustix::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_passcred(&fd, true)?;
    rustix::net::bind(&fd, &reply_address(std::process::id())?)?;
    Ok(fd)
}

/// The reason `pid` sent, if it did: queued before its `SIGUSR2`. A
/// datagram from any other process is skipped.
fn reason_from(fd: &OwnedFd, pid: i32) -> Option<String> {
    let mut bytes = vec![0; MAX_REASON];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            fd.as_fd(),
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::DONTWAIT,
        )
        .ok()?;
        let sender = control.drain().find_map(|message| match message {
            RecvAncillaryMessage::ScmCredentials(cred) => Some(cred.pid.as_raw_nonzero().get()),
            _ => None,
        });
        if sender == Some(pid) {
            let reason = String::from_utf8_lossy(&bytes[..received.bytes]);
            return Some(reason.trim().to_owned());
        }
    }
}

/// Answers `NAME replace` (a reload's `ExecReload=`) from the process it
/// asked: `SIGUSR1` done; the reason, then `SIGUSR2`, failed.
pub(crate) fn answer(to: Option<i32>, result: Result<(), &str>) {
    let Some(pid) = to.and_then(rustix::process::Pid::from_raw) else {
        return;
    };
    let signal = match result {
        Ok(()) => rustix::process::Signal::USR1,
        Err(reason) => {
            if let Err(err) = send_reason(pid, reason) {
                tracing::debug!(error = %err, "cannot send the reload's failure to the caller");
            }
            rustix::process::Signal::USR2
        }
    };
    if let Err(err) = rustix::process::kill_process(pid, signal) {
        tracing::warn!(pid = pid.as_raw_nonzero().get(), error = %err, "cannot answer the reload");
    }
}

fn send_reason(to: rustix::process::Pid, reason: &str) -> rustix::io::Result<()> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let address = reply_address(to.as_raw_nonzero().get().unsigned_abs())?;
    rustix::net::sendto(
        &fd,
        &reason.as_bytes()[..end],
        SendFlags::DONTWAIT,
        &address,
    )?;
    Ok(())
}

/// `sigqueue(pid, SIGUSR1)`: queued, so the receiver knows to answer.
fn ask(pid: i32) -> std::io::Result<()> {
    let value = libc::sigval {
        sival_ptr: std::ptr::null_mut(),
    };
    // SAFETY: sigqueue reads its three arguments only.
    if unsafe { libc::sigqueue(pid, SIGUSR1, value) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caught_mask_says_whether_sigusr1_is_handled() {
        let with = "Name:\tapp\nSigBlk:\t0000000000000000\nSigCgt:\t0000000180004a02\n";
        assert_eq!(catches_sigusr1(with), Some(true));
        let without = "SigCgt:\t0000000180004802\n";
        assert_eq!(catches_sigusr1(without), Some(false));
        assert_eq!(catches_sigusr1("Name:\tapp\n"), None);
    }
}
