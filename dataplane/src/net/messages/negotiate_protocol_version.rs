//! NegotiateProtocolVersion (B) message.
//!
//! Sent when a client asks for a newer minor version than we speak or for `_pq_.` protocol
//! options we do not know; the client then continues with what we support.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// `version` is the whole protocol number PostgreSQL sends (`major << 16 | minor`, e.g. 196610 for 3.2).
pub fn build_negotiate_protocol_version(version: u32, unsupported: &[String]) -> Bytes {
    let mut p = Payload::new(tag::NEGOTIATE_PROTOCOL_VERSION);
    let count = i32::try_from(unsupported.len()).unwrap_or(i32::MAX);
    p.put_u32(version).put_i32(count);
    for option in unsupported {
        p.put_cstr(option);
    }
    p.finish()
}

/// Parses a NegotiateProtocolVersion *body* into (newest minor, unsupported options).
pub fn parse_negotiate_protocol_version(body: &[u8]) -> Result<(u32, Vec<String>), MessageError> {
    let mut c = Cursor::new(body);
    let minor = c.read_u32()?;
    let count = c.read_i32()?;
    let count = usize::try_from(count)
        .map_err(|_| MessageError::Invalid(format!("option count {count}")))?;
    // No with_capacity(count): the count is untrusted; each option costs at least one byte.
    let mut options = Vec::new();
    for _ in 0..count {
        options.push(c.read_cstr()?.to_owned());
    }
    c.expect_end()?;
    Ok((minor, options))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        let opts = vec!["_pq_.foo".to_owned(), "_pq_.bar".to_owned()];
        let f = build_negotiate_protocol_version(2, &opts);
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'v');
        assert_eq!(parse_negotiate_protocol_version(body).unwrap(), (2, opts));
        for cut in 0..body.len() {
            assert!(parse_negotiate_protocol_version(&body[..cut]).is_err());
        }
    }
}
