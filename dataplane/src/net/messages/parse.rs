//! Parse (F) message: an extended-protocol statement to prepare.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// A decoded Parse message, borrowing from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMessage<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a str,
    pub sql: &'a str,
    /// Parameter type OIDs (0 = unspecified).
    pub param_types: Vec<u32>,
}

/// Parses a Parse *body*.
pub fn parse_parse(body: &[u8]) -> Result<ParseMessage<'_>, MessageError> {
    let mut c = Cursor::new(body);
    let name = c.read_cstr()?;
    let sql = c.read_cstr()?;
    let count = c.read_i16()?;
    let count = usize::try_from(count)
        .map_err(|_| MessageError::Invalid(format!("parameter type count {count}")))?;
    // Check the bytes are there before allocating for the (untrusted, but ≤ 32767) count.
    if c.rest().len() < count.saturating_mul(4) {
        return Err(MessageError::Truncated);
    }
    let mut param_types = Vec::with_capacity(count);
    for _ in 0..count {
        param_types.push(c.read_u32()?);
    }
    c.expect_end()?;
    Ok(ParseMessage {
        name,
        sql,
        param_types,
    })
}

pub fn build_parse(name: &str, sql: &str, param_types: &[u32]) -> Bytes {
    let mut p = Payload::new(tag::PARSE);
    // The protocol caps the count at i16; more types than that cannot be sent.
    let count = i16::try_from(param_types.len()).unwrap_or(i16::MAX);
    p.put_cstr(name).put_cstr(sql).put_i16(count);
    for oid in param_types.iter().take(usize::from(count.unsigned_abs())) {
        p.put_u32(*oid);
    }
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        let f = build_parse("s1", "select $1::int, $2", &[23, 0]);
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'P');
        assert_eq!(
            parse_parse(body).unwrap(),
            ParseMessage {
                name: "s1",
                sql: "select $1::int, $2",
                param_types: vec![23, 0]
            }
        );
        for cut in 0..body.len() {
            assert!(parse_parse(&body[..cut]).is_err(), "cut {cut}");
        }
        // Negative count.
        assert!(parse_parse(b"\0x\0\xff\xff").is_err());
        // Trailing bytes.
        assert!(parse_parse(b"\0x\0\0\0z").is_err());
        let f = build_parse("", "select 1", &[]);
        assert_eq!(parse_parse(&f[5..]).unwrap().param_types, Vec::<u32>::new());
    }
}
