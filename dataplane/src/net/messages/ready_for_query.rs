//! ReadyForQuery (B) message.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// Idle, not in a transaction block.
pub const IDLE: u8 = b'I';
/// In a transaction block.
pub const IN_TRANSACTION: u8 = b'T';
/// In a failed transaction block (statements rejected until the block ends).
pub const FAILED_TRANSACTION: u8 = b'E';

/// Parses a ReadyForQuery *body* into its transaction status byte (`I`, `T` or `E`).
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, MessageError> {
    let mut c = Cursor::new(body);
    let status = c.read_u8()?;
    c.expect_end()?;
    match status {
        IDLE | IN_TRANSACTION | FAILED_TRANSACTION => Ok(status),
        other => Err(MessageError::Invalid(format!(
            "transaction status {other:#04x}"
        ))),
    }
}

pub fn build_ready_for_query(status: u8) -> Bytes {
    let mut p = Payload::new(tag::READY_FOR_QUERY);
    p.put_u8(status);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        for s in [IDLE, IN_TRANSACTION, FAILED_TRANSACTION] {
            let f = build_ready_for_query(s);
            assert_eq!(&f[..], &[b'Z', 0, 0, 0, 5, s]);
            assert_eq!(
                parse_ready_for_query(split_frame(&f).unwrap().1).unwrap(),
                s
            );
        }
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"X").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }
}
