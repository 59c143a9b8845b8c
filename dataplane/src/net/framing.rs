//! Message framing: recognising where one protocol message ends and the next begins.
//!
//! Every regular message is `tag: u8, len: i32 (includes itself), body`; the startup-phase
//! packets (StartupMessage, SSLRequest, CancelRequest, GSSENCRequest) have no tag. The length is
//! attacker-controlled, so it is validated as a signed value before any cast and against a limit
//! before anything is reserved for it.

/// Largest regular message we accept by default. PostgreSQL itself allows up to 1 GB for some
/// messages, but a gateway buffering that per session invites memory exhaustion; 128 MiB covers
/// large COPY rows and bulk parameters seen in practice.
pub const DEFAULT_MAX_MESSAGE: usize = 128 * 1024 * 1024;

/// The server refuses startup packets longer than this (`MAX_STARTUP_PACKET_LENGTH` in
/// PostgreSQL's `pqcomm.h`); we apply the same bound before authentication.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Size of the tag byte plus the length field of a regular message.
pub const HEADER_LEN: usize = 5;

/// The header of a regular (tagged) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type byte, e.g. `b'Q'`.
    pub tag: u8,
    /// The total frame length in bytes: 1 tag byte + the value of the length field.
    pub len: usize,
}

/// A frame whose declared length cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len}")]
    BadLength { len: i64 },
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Reads the big-endian i32 at `buf[at..at+4]`, or None if the buffer is too short.
fn read_i32_at(buf: &[u8], at: usize) -> Option<i32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

/// Validates a declared length field (which counts itself, not the tag) and returns the total
/// frame length: `declared + extra` where `extra` is 1 for tagged messages and 0 for startup
/// packets. `min` is the smallest acceptable declared value.
fn check_len(declared: i32, min: i32, extra: usize, max: usize) -> Result<usize, FrameError> {
    // Check the sign before casting: a negative i32 cast to usize would become enormous and
    // pass a naive `< 4` test.
    if declared < min {
        return Err(FrameError::BadLength {
            len: i64::from(declared),
        });
    }
    let total = usize::try_from(declared)
        .ok()
        .and_then(|l| l.checked_add(extra))
        .ok_or(FrameError::BadLength {
            len: i64::from(declared),
        })?;
    if total > max {
        return Err(FrameError::TooLarge {
            size: total,
            limit: max,
        });
    }
    Ok(total)
}

/// Looks at the start of `buf` for the header of a tagged message.
///
/// Returns `Ok(None)` while fewer than 5 bytes are buffered. `max` bounds the whole frame
/// (tag included). Never allocates.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let (Some(&tag), Some(declared)) = (buf.first(), read_i32_at(buf, 1)) else {
        return Ok(None);
    };
    let len = check_len(declared, 4, 1, max)?;
    Ok(Some(Header { tag, len }))
}

/// Looks at the start of `buf` for the length of an untagged startup-phase packet.
///
/// Returns the total packet length (equal to the declared length), or `Ok(None)` while fewer
/// than 4 bytes are buffered. The bound is `min(max, MAX_STARTUP_PACKET)`, as the server uses.
pub fn peek_startup_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(declared) = read_i32_at(buf, 0) else {
        return Ok(None);
    };
    // A startup packet carries at least the 4-byte protocol code after its length.
    check_len(declared, 8, 0, max.min(MAX_STARTUP_PACKET)).map(Some)
}

/// Splits a whole tagged frame into its tag and body (the frame minus the 5-byte header).
/// Returns None if `frame` is shorter than a header.
pub fn split_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    Some((*frame.first()?, frame.get(HEADER_LEN..)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert!(peek_header(b"Q\0\0\0", 100).unwrap().is_none());
        assert_eq!(
            peek_header(b"Q\0\0\0\x05x", 100).unwrap(),
            Some(Header { tag: b'Q', len: 6 })
        );
    }

    #[test]
    fn bad_lengths_rejected() {
        assert!(matches!(
            peek_header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength { len: -1 })
        ));
        assert!(matches!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength { len: 3 })
        ));
        assert!(matches!(
            peek_header(b"Q\x7f\xff\xff\xff", 1024),
            Err(FrameError::TooLarge {
                size: 0x8000_0000,
                limit: 1024
            })
        ));
        // Exactly at the limit is fine.
        assert_eq!(
            peek_header(b"Q\0\0\0\x09", 10).unwrap(),
            Some(Header { tag: b'Q', len: 10 })
        );
        assert!(peek_header(b"Q\0\0\0\x0a", 10).is_err());
    }

    #[test]
    fn startup_lengths() {
        assert!(peek_startup_len(b"\0\0\0", 100).unwrap().is_none());
        assert_eq!(peek_startup_len(b"\0\0\0\x08", 100).unwrap(), Some(8));
        assert!(peek_startup_len(b"\0\0\0\x07", 100).is_err());
        assert!(peek_startup_len(b"\x80\0\0\0", 100).is_err());
        assert!(matches!(
            peek_startup_len(b"\0\x01\0\0", DEFAULT_MAX_MESSAGE),
            Err(FrameError::TooLarge {
                size: 65536,
                limit: MAX_STARTUP_PACKET
            })
        ));
    }
}
