//! Query (F) message: a simple-protocol query string (possibly several statements).

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// Parses a Query *body* into the SQL text. The string must be NUL-terminated, valid UTF-8 and
/// fill the body: anything after the NUL would be invisible to the decision but could matter to
/// a lenient server, so it is refused.
pub fn parse_query(body: &[u8]) -> Result<&str, MessageError> {
    let mut c = Cursor::new(body);
    let sql = c.read_cstr()?;
    c.expect_end()?;
    Ok(sql)
}

pub fn build_query(sql: &str) -> Bytes {
    let mut p = Payload::new(tag::QUERY);
    p.put_cstr(sql);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        let f = build_query("select 1; select 'é'");
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'Q');
        assert_eq!(parse_query(body).unwrap(), "select 1; select 'é'");
        assert_eq!(parse_query(b"select 1"), Err(MessageError::MissingNul));
        assert!(parse_query(b"select 1\0drop table x\0").is_err());
        assert_eq!(parse_query(b"\xc3\0"), Err(MessageError::InvalidUtf8));
        assert_eq!(parse_query(b""), Err(MessageError::MissingNul));
    }
}
