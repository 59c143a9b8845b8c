//! ErrorResponse (B) and NoticeResponse (B) messages.
//!
//! Both are a list of `(field code, string)` pairs ending in a zero byte. Every field is kept,
//! in order, so a relayed or rewritten error loses nothing the client could use.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

/// Field codes ("Error and Notice Message Fields" in the PostgreSQL docs).
pub mod field {
    /// Localized severity (ERROR, FATAL, …).
    pub const SEVERITY: u8 = b'S';
    /// Non-localized severity.
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    pub const SQLSTATE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    pub const POSITION: u8 = b'P';
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub fields: Vec<(u8, String)>,
}

impl ErrorFields {
    /// Parses an ErrorResponse/NoticeResponse *body*.
    ///
    /// Strings are decoded lossily: the server sends them in the session's client_encoding,
    /// which need not be UTF-8, and an error must still reach the client.
    pub fn parse(body: &[u8]) -> Result<Self, MessageError> {
        let mut c = Cursor::new(body);
        let mut fields = Vec::new();
        loop {
            let code = c.read_u8()?;
            if code == 0 {
                c.expect_end()?;
                return Ok(Self { fields });
            }
            let value = c.read_cstr_bytes()?;
            fields.push((code, String::from_utf8_lossy(value).into_owned()));
        }
    }

    /// The first value of a field.
    pub fn get(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// Replaces the first value of a field, or appends it.
    pub fn set(&mut self, code: u8, value: impl Into<String>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(c, _)| *c == code) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((code, value)),
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        self.get(field::SQLSTATE)
    }

    pub fn message(&self) -> Option<&str> {
        self.get(field::MESSAGE)
    }

    /// The non-localized severity if present (servers since 9.6 send it), else the localized one.
    pub fn severity(&self) -> Option<&str> {
        self.get(field::SEVERITY_NONLOCALIZED)
            .or_else(|| self.get(field::SEVERITY))
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.severity().unwrap_or("ERROR"),
            self.message().unwrap_or("(no message)"),
            self.sqlstate().unwrap_or("?????")
        )
    }
}

fn build(
    tag: u8,
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    let mut p = Payload::new(tag);
    p.put_u8(field::SEVERITY).put_cstr(severity);
    p.put_u8(field::SEVERITY_NONLOCALIZED).put_cstr(severity);
    p.put_u8(field::SQLSTATE).put_cstr(sqlstate);
    p.put_u8(field::MESSAGE).put_cstr(message);
    if let Some(d) = detail {
        p.put_u8(field::DETAIL).put_cstr(d);
    }
    if let Some(h) = hint {
        p.put_u8(field::HINT).put_cstr(h);
    }
    p.put_u8(0);
    p.finish()
}

/// Builds an ErrorResponse frame. `severity` is ERROR, FATAL or PANIC (sent as both S and V).
pub fn build_error(
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    build(
        tag::ERROR_RESPONSE,
        severity,
        sqlstate,
        message,
        detail,
        hint,
    )
}

/// Builds a NoticeResponse frame. `severity` is WARNING, NOTICE, DEBUG, INFO or LOG.
pub fn build_notice(
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    build(
        tag::NOTICE_RESPONSE,
        severity,
        sqlstate,
        message,
        detail,
        hint,
    )
}

/// Re-encodes fields as a frame with the given tag (`b'E'` or `b'N'`), e.g. after rewriting
/// the message of a server error.
pub fn rebuild(tag: u8, fields: &ErrorFields) -> Bytes {
    let mut p = Payload::new(tag);
    for (code, value) in &fields.fields {
        // A zero code would terminate the list early; it cannot come from `parse`.
        if *code != 0 {
            p.put_u8(*code).put_cstr(value);
        }
    }
    p.put_u8(0);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn build_parse_round_trip() {
        let f = build_error("FATAL", "28P01", "bad password", Some("d"), Some("h"));
        let (t, body) = split_frame(&f).unwrap();
        assert_eq!(t, b'E');
        let e = ErrorFields::parse(body).unwrap();
        assert_eq!(e.sqlstate(), Some("28P01"));
        assert_eq!(e.message(), Some("bad password"));
        assert_eq!(e.get(b'D'), Some("d"));
        assert_eq!(e.get(b'H'), Some("h"));
        assert_eq!(e.severity(), Some("FATAL"));
        assert_eq!(rebuild(b'E', &e), f);
        for cut in 0..body.len() {
            assert!(ErrorFields::parse(&body[..cut]).is_err());
        }
        let n = build_notice("NOTICE", "00000", "held", None, None);
        let (t, body) = split_frame(&n).unwrap();
        assert_eq!(t, b'N');
        let e = ErrorFields::parse(body).unwrap();
        assert_eq!(e.get(b'D'), None);
        assert_eq!(e.to_string(), "NOTICE: held (00000)");
    }

    #[test]
    fn set_replaces_or_appends() {
        let mut e = ErrorFields::default();
        e.set(b'C', "42601");
        e.set(b'C', "42501");
        e.set(b'M', "denied");
        assert_eq!(
            e.fields,
            vec![(b'C', "42501".into()), (b'M', "denied".into())]
        );
    }
}
