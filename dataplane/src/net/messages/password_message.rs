//! PasswordMessage (F), SASLInitialResponse (F) and SASLResponse (F) messages.
//!
//! All three use tag `p`; which one is meant follows from the preceding Authentication request.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// Parses a PasswordMessage *body*: one NUL-terminated UTF-8 string filling the whole body,
/// as the server requires ("invalid password packet size" otherwise).
pub fn parse_password(body: &[u8]) -> Result<String, MessageError> {
    let mut c = Cursor::new(body);
    let password = c.read_cstr()?;
    c.expect_end()?;
    Ok(password.to_owned())
}

/// PasswordMessage carrying a cleartext password or an md5 hash (`md5…`).
pub fn build_password(password: &str) -> Bytes {
    let mut p = Payload::new(tag::PASSWORD_MESSAGE);
    p.put_cstr(password);
    p.finish()
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
pub fn build_sasl_initial(mechanism: &str, data: &[u8]) -> Bytes {
    let mut p = Payload::new(tag::PASSWORD_MESSAGE);
    let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
    p.put_cstr(mechanism).put_i32(len).put_bytes(data);
    p.finish()
}

/// SASLResponse: the next client message of the exchange.
pub fn build_sasl_response(data: &[u8]) -> Bytes {
    let mut p = Payload::new(tag::PASSWORD_MESSAGE);
    p.put_bytes(data);
    p.finish()
}

/// Parses a SASLInitialResponse *body* into (mechanism, data); `None` data when the length is
/// -1. Used by tests acting as a server.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, Option<&[u8]>), MessageError> {
    let mut c = Cursor::new(body);
    let mechanism = c.read_cstr()?;
    let len = c.read_i32()?;
    let data = if len == -1 {
        None
    } else {
        let n = usize::try_from(len)
            .map_err(|_| MessageError::Invalid(format!("SASL data length {len}")))?;
        Some(c.read_bytes(n)?)
    };
    c.expect_end()?;
    Ok((mechanism, data))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trips() {
        let f = build_password("s3cret");
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'p');
        assert_eq!(parse_password(body).unwrap(), "s3cret");
        for cut in 0..body.len() {
            assert!(parse_password(&body[..cut]).is_err());
        }
        assert!(parse_password(b"a\0b").is_err());
        assert_eq!(parse_password(b"\xff\0"), Err(MessageError::InvalidUtf8));

        let f = build_sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        let (_, body) = split_frame(&f).unwrap();
        assert_eq!(
            parse_sasl_initial(body).unwrap(),
            ("SCRAM-SHA-256", Some(&b"n,,n=,r=abc"[..]))
        );
        for cut in 0..body.len() {
            assert!(parse_sasl_initial(&body[..cut]).is_err());
        }
        let f = build_sasl_response(b"c=biws");
        assert_eq!(split_frame(&f).unwrap(), (b'p', &b"c=biws"[..]));
    }
}
