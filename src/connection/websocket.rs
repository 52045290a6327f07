//! The kit's side of a WebSocket's close: where the service's outgoing
//! frames begin and end, so the kit's Close frame goes in between two of
//! them and never inside one; whether the service sent a Close of its own;
//! and the Close frame itself.
//!
//! The service owns the WebSocket (axum's `ws`, tokio-tungstenite): the kit
//! only watches the bytes it writes. Once the kit has sent its Close, RFC
//! 6455 forbids further frames from this side, so what the service writes
//! after it (its own reply to the client's Close, or data) is dropped.

/// Follows the frames the server writes, byte by byte.
#[derive(Debug, Default, Clone)]
pub(crate) struct OutgoingFrames {
    /// Header bytes of the current frame seen so far (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The service has sent a Close frame.
    closed: bool,
}

impl OutgoingFrames {
    /// Between two frames: a Close may go here.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Whether the service has sent a Close frame of its own.
    pub(super) fn service_closed(&self) -> bool {
        self.closed
    }

    /// Follows `bytes`, written by the service.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.header_len()
                && self.have == len
            {
                self.finish_header();
            }
        }
    }

    /// The whole header's length, once its first two bytes say it.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    fn finish_header(&mut self) {
        let h = &self.header;
        self.payload_left = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            len => u64::from(len),
        };
        if h[0] & 0x0f == 0x8 {
            self.closed = true;
        }
        self.have = 0;
    }
}

/// A server's Close frame (unmasked) with `code` and no reason.
pub(crate) fn close_frame(code: u16) -> [u8; 4] {
    let [high, low] = code.to_be_bytes();
    [0x88, 0x02, high, low]
}

/// Whether a request asks to become a WebSocket, or a `101` response says
/// it became one (`Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(mask | payload as u8),
            126..=65535 => {
                f.push(mask | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_frame_size_and_the_write_size() {
        for payload in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            for masked in [false, true] {
                let bytes = frame(0x2, payload, masked);
                for chunk in [1, 3, 7, 1000, bytes.len()] {
                    let mut frames = OutgoingFrames::default();
                    for (i, piece) in bytes.chunks(chunk).enumerate() {
                        assert!(
                            i == 0 || !frames.at_boundary(),
                            "{payload} {masked} {chunk}: a boundary inside the frame"
                        );
                        frames.feed(piece);
                    }
                    assert!(frames.at_boundary(), "{payload} {masked} {chunk}");
                    assert!(!frames.service_closed());
                }
            }
        }
    }

    #[test]
    fn several_frames_in_one_write_and_a_close_among_them() {
        let mut bytes = frame(0x1, 10, false);
        bytes.extend(frame(0x9, 0, false));
        let mut frames = OutgoingFrames::default();
        frames.feed(&bytes);
        assert!(frames.at_boundary());
        assert!(!frames.service_closed());
        let close = frame(0x8, 2, false);
        frames.feed(&close[..3]);
        assert!(!frames.at_boundary());
        frames.feed(&close[3..]);
        assert!(frames.at_boundary() && frames.service_closed());
    }

    #[test]
    fn the_close_frame_carries_the_code() {
        assert_eq!(close_frame(1001), [0x88, 0x02, 0x03, 0xe9]);
        assert_eq!(close_frame(1012), [0x88, 0x02, 0x03, 0xf4]);
        let mut frames = OutgoingFrames::default();
        frames.feed(&close_frame(1001));
        assert!(frames.service_closed() && frames.at_boundary());
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_websocket_upgrade(&headers));
        headers.insert(http::header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_websocket_upgrade(&headers));
        headers.insert(http::header::UPGRADE, "foo, WebSocket".parse().unwrap());
        assert!(is_websocket_upgrade(&headers));
    }
}
