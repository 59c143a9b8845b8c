//! ParameterStatus (B) message.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// Parses a ParameterStatus *body* into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), MessageError> {
    let mut c = Cursor::new(body);
    let name = c.read_cstr()?;
    let value = c.read_cstr()?;
    c.expect_end()?;
    Ok((name, value))
}

pub fn build_parameter_status(name: &str, value: &str) -> Bytes {
    let mut p = Payload::new(tag::PARAMETER_STATUS);
    p.put_cstr(name).put_cstr(value);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        let f = build_parameter_status("server_version", "18.1");
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'S');
        assert_eq!(
            parse_parameter_status(body).unwrap(),
            ("server_version", "18.1")
        );
        for cut in 0..body.len() {
            assert!(parse_parameter_status(&body[..cut]).is_err());
        }
    }
}
