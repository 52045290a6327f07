//! The socket-activation environment parser: any LISTEN_PID, LISTEN_FDS and
//! LISTEN_FDNAMES, set or not, gives either fds that agree with LISTEN_FDS or
//! an error that is one line; never a panic.
#![no_main]

use arbitrary::Arbitrary;
use handover::internals::{ActivationEnv, FIRST_FD, assign};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    listen_pid: Option<String>,
    listen_fds: Option<String>,
    listen_fdnames: Option<String>,
    own_pid: u32,
}

fuzz_target!(|input: Input| {
    let env = ActivationEnv {
        listen_pid: input.listen_pid,
        listen_fds: input.listen_fds,
        listen_fdnames: input.listen_fdnames,
    };
    match env.parse(input.own_pid) {
        Ok(None) => assert_eq!(
            env,
            ActivationEnv::default(),
            "no sockets only when nothing is set"
        ),
        Ok(Some(fds)) => {
            let count: usize = env.listen_fds.as_deref().unwrap().trim().parse().unwrap();
            assert_eq!(fds.len(), count);
            for (i, fd) in fds.iter().enumerate() {
                assert_eq!(fd.fd, FIRST_FD + i as i32);
                assert!(!fd.describe().contains('\n'));
            }
            match assign(fds.clone()) {
                Ok(assignment) => {
                    assert!(!assignment.app.is_empty());
                    assert_eq!(assignment.app.len() + assignment.unused.len(), fds.len());
                }
                Err(err) => assert_one_line(&err.to_string()),
            }
        }
        Err(err) => assert_one_line(&err.to_string()),
    }
});

fn assert_one_line(message: &str) {
    assert!(!message.is_empty());
    assert!(!message.contains('\n'), "an error spans lines: {message:?}");
}
