//! The messages between an old process and the new one that replaces it,
//! as bytes: pure code, tested without sockets.
//!
//! Each message is one datagram of the `SOCK_SEQPACKET` channel (so it
//! needs no framing) and starts with a magic and the sender's protocol
//! version. The versions only ever add: a receiver takes from a newer
//! sender the kinds it knows, and the new process says in `Hello` what it
//! can take, so an old process never sends a release what it cannot read.
//!
//! ```text
//! magic "HOVR" | version u16 BE | kind u8 | payload
//! Hello:      flags u8 (bit 0: takes connections)
//! Listeners:  watchdog interval u64 BE, in µs (0: none)   + the listening fds
//! Serving:    -
//! Main:       -
//! Connection: the bytes already read from it               + its fd
//! Spawned:    pid u32 BE (from the intermediate process: the new one's pid)
//! ```

const MAGIC: &[u8; 4] = b"HOVR";
/// This release's protocol version.
pub(crate) const VERSION: u16 = 1;
const HEADER: usize = MAGIC.len() + 2 + 1;

/// The largest message either side sends or accepts: a connection's bytes
/// already read are at most a request head, and heads this large are
/// refused anyway.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

const HELLO: u8 = 1;
const LISTENERS: u8 = 2;
const SERVING: u8 = 3;
const MAIN: u8 = 4;
const CONNECTION: u8 = 5;
const SPAWNED: u8 = 6;

const TAKES_CONNECTIONS: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// New → old: settings valid, service built; ready for the sockets.
    Hello {
        version: u16,
        takes_connections: bool,
    },
    /// Old → new: the listening sockets (attached), and the watchdog
    /// interval systemd asked of the main process, in µs.
    Listeners { watchdog_usec: u64 },
    /// New → old: accepting on them.
    Serving,
    /// Old → new: systemd now has the new process as the unit's main one.
    Main,
    /// Old → new: a connection (attached) with the bytes already read from it.
    Connection { read: Vec<u8> },
    /// Intermediate → old: the new process started, with this pid.
    Spawned { pid: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    #[error("not a handover message ({0} bytes)")]
    NotOurs(usize),
    #[error("unknown message kind {kind} (protocol version {version})")]
    UnknownKind { kind: u8, version: u16 },
    #[error("malformed message of kind {0}")]
    Malformed(u8),
}

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        match self {
            Message::Hello {
                version: _,
                takes_connections,
            } => {
                out.push(HELLO);
                out.push(if *takes_connections {
                    TAKES_CONNECTIONS
                } else {
                    0
                });
            }
            Message::Listeners { watchdog_usec } => {
                out.push(LISTENERS);
                out.extend_from_slice(&watchdog_usec.to_be_bytes());
            }
            Message::Serving => out.push(SERVING),
            Message::Main => out.push(MAIN),
            Message::Connection { read } => {
                out.push(CONNECTION);
                out.extend_from_slice(read);
            }
            Message::Spawned { pid } => {
                out.push(SPAWNED);
                out.extend_from_slice(&pid.to_be_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(WireError::NotOurs(bytes.len()));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let kind = bytes[6];
        let payload = &bytes[HEADER..];
        let message = match kind {
            HELLO => {
                let [flags] = payload[..] else {
                    return Err(WireError::Malformed(kind));
                };
                Message::Hello {
                    version,
                    takes_connections: flags & TAKES_CONNECTIONS != 0,
                }
            }
            LISTENERS => {
                let usec: [u8; 8] = payload.try_into().map_err(|_| WireError::Malformed(kind))?;
                Message::Listeners {
                    watchdog_usec: u64::from_be_bytes(usec),
                }
            }
            SERVING if payload.is_empty() => Message::Serving,
            MAIN if payload.is_empty() => Message::Main,
            SERVING | MAIN => return Err(WireError::Malformed(kind)),
            CONNECTION => Message::Connection {
                read: payload.to_vec(),
            },
            SPAWNED => {
                let pid: [u8; 4] = payload.try_into().map_err(|_| WireError::Malformed(kind))?;
                Message::Spawned {
                    pid: u32::from_be_bytes(pid),
                }
            }
            kind => return Err(WireError::UnknownKind { kind, version }),
        };
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_comes_back_as_sent() {
        for message in [
            Message::Hello {
                version: VERSION,
                takes_connections: true,
            },
            Message::Hello {
                version: VERSION,
                takes_connections: false,
            },
            Message::Listeners {
                watchdog_usec: 10_000_000,
            },
            Message::Serving,
            Message::Main,
            Message::Connection { read: Vec::new() },
            Message::Connection {
                read: b"GET / HTTP/1.1\r\nHo".to_vec(),
            },
            Message::Spawned { pid: 4_194_304 },
        ] {
            assert_eq!(Message::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn what_is_not_a_message_of_ours_is_named() {
        assert_eq!(Message::decode(b""), Err(WireError::NotOurs(0)));
        assert_eq!(
            Message::decode(b"GET / HTTP/1.1"),
            Err(WireError::NotOurs(14))
        );
        let mut future = Message::Serving.encode();
        future[5] = 9;
        future[6] = 42;
        assert_eq!(
            Message::decode(&future),
            Err(WireError::UnknownKind {
                kind: 42,
                version: 9
            })
        );
        let mut long = Message::Main.encode();
        long.push(0);
        assert_eq!(Message::decode(&long), Err(WireError::Malformed(MAIN)));
        let short = &Message::Listeners { watchdog_usec: 1 }.encode()[..10];
        assert_eq!(Message::decode(short), Err(WireError::Malformed(LISTENERS)));
    }

    #[test]
    fn a_newer_sender_is_read_for_what_this_release_knows() {
        let mut hello = Message::Hello {
            version: VERSION,
            takes_connections: true,
        }
        .encode();
        hello[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Message::decode(&hello),
            Ok(Message::Hello {
                version: 7,
                takes_connections: true
            })
        );
    }
}
