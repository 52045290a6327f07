//! File descriptors: each connection holds one, so `max_connections` must
//! fit under the process's limit (`LimitNOFILE=`, `ulimit -n`).
//!
//! systemd starts services with a soft limit of 1024 and a hard limit of
//! 524288, keeping the soft one low for programs that still use `select()`.
//! Nothing here does (tokio uses epoll), so, as Go's runtime has done since
//! 1.19, we raise the soft limit to the hard one at start, then check that
//! the connections we may accept fit.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors besides connections: listeners, epoll, the runtime's
/// eventfds, the journal, stdio, a settings file being read.
pub(crate) const RESERVE: u64 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "max_connections = {max_connections} needs {needed} file descriptors, but this process \
     may open only {limit}; lower max_connections or raise LimitNOFILE= (ulimit -n)"
)]
pub(crate) struct FdLimitError {
    pub max_connections: usize,
    pub needed: u64,
    pub limit: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the limit now in force.
pub fn raise_soft_limit() -> io::Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(hard);
        }
        // Not fatal: the check below says whether the old limit is enough.
    }
    Ok(soft)
}

/// Whether `max_connections` connections fit under `limit` descriptors.
pub(crate) fn check(max_connections: usize, limit: u64) -> Result<(), FdLimitError> {
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
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current.unwrap_or(u64::MAX), limit);
        assert_eq!(now.current, now.maximum);
    }
}
