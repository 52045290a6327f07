//! `NAME replace PID`: what the units' `ExecReload=` runs. It asks the
//! running process PID to replace itself with the binary on disk and
//! waits for the answer, so `systemctl reload` returns once the new process
//! serves, and fails when it does not.
//!
//! The request is `SIGUSR1` sent with `sigqueue` (a plain `kill -USR1`
//! also replaces, but gets no answer); the answer is a signal back from
//! PID: `SIGUSR1` done, `SIGUSR2` failed, the reason in PID's log. Answers
//! from any other process are ignored.

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
        "the reload failed: PID {0} goes on serving with the release it runs; its log says why"
    )]
    Refused(i32),
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
    // Before the request: the answer may come at once.
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
            _ => Err(ReplaceFailed::Refused(pid)),
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
