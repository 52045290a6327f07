//! File descriptors: each connection holds one, so `max_connections` must
//! fit under the process's limit (`LimitNOFILE=`, `ulimit -n`).
//!
//! systemd starts services with a soft limit of 1024 and a hard limit of
//! 524288, keeping the soft one low for programs that still use `select()`.
//! Nothing here does (tokio uses epoll), so, as Go's runtime has done since
//! 1.19, we raise the soft limit to the hard one at start, then check that
//! the connections we may accept fit.

use std::io;

/// Descriptors besides connections: listeners, epoll, the runtime's
/// eventfds, the journal, stdio, a settings file being read.
pub const RESERVE: u64 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "max_connections = {max_connections} needs {needed} file descriptors, but this process \
     may open only {limit}; lower max_connections or raise LimitNOFILE= (ulimit -n)"
)]
pub struct FdLimitError {
    pub max_connections: usize,
    pub needed: u64,
    pub limit: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the limit now in force.
pub fn raise_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write and read only `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        // Not fatal: the check below says whether the old limit is enough.
    }
    Ok(limit.rlim_cur)
}

/// Whether `max_connections` connections fit under `limit` descriptors.
pub fn check(max_connections: usize, limit: u64) -> Result<(), FdLimitError> {
    let needed = (max_connections as u64).saturating_add(RESERVE);
    if needed > limit {
        return Err(FdLimitError {
            max_connections,
            needed,
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_must_fit_under_the_limit_with_a_reserve() {
        assert_eq!(check(960, 1024), Ok(()));
        let err = check(4096, 1024).unwrap_err();
        assert_eq!(err.needed, 4096 + RESERVE);
        assert!(err.to_string().contains("LimitNOFILE="), "{err}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_soft_limit().unwrap();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, limit);
        assert_eq!(now.rlim_cur, now.rlim_max);
    }
}
