//! Protocol message codecs, one file per message type named as in the PostgreSQL docs
//! ("Message Formats" chapter).
//!
//! Conventions: a *frame* is a whole message as it travels (tag byte, i32 length, body); a
//! *body* is the frame without its 5-byte header. Each parser's doc comment says which it takes.
//! Parsers never panic: every read goes through [`cursor::Cursor`] and returns
//! [`MessageError`]. Builders return a complete frame as `Bytes`. Relayed messages stay raw
//! `Bytes`; only what the gateway inspects is parsed.

pub mod authentication;
pub mod backend_key_data;
pub mod cursor;
pub mod data_row;
pub mod error_response;
pub mod negotiate_protocol_version;
pub mod parameter_status;
pub mod parse;
pub mod password_message;
pub mod payload;
pub mod query;
pub mod ready_for_query;
pub mod row_description;
pub mod startup;
pub mod terminate;

pub use authentication::{auth_cleartext_password, auth_ok, parse_auth, AuthRequest};
pub use backend_key_data::{build_backend_key_data, parse_backend_key_data, BackendKeyData};
pub use cursor::Cursor;
pub use data_row::{build_data_row, parse_data_row};
pub use error_response::{build_error, build_notice, rebuild, ErrorFields};
pub use negotiate_protocol_version::{
    build_negotiate_protocol_version, parse_negotiate_protocol_version,
};
pub use parameter_status::{build_parameter_status, parse_parameter_status};
pub use parse::{build_parse, parse_parse, ParseMessage};
pub use password_message::{
    build_password, build_sasl_initial, build_sasl_response, parse_password,
};
pub use query::{build_query, parse_query};
pub use ready_for_query::{build_ready_for_query, parse_ready_for_query};
pub use row_description::{parse_row_description, Column};
pub use startup::{
    build_cancel, build_gssenc_request, build_ssl_request, build_startup, parse_startup,
    StartupPacket,
};
pub use terminate::build_terminate;

/// Message tags, named after the message (F = sent by the frontend, B = by the backend).
pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// PasswordMessage, SASLInitialResponse, SASLResponse (and GSSResponse) share this tag.
    pub const PASSWORD_MESSAGE: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const TERMINATE: u8 = b'X';
}

/// A message body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message truncated")]
    Truncated,
    #[error("string in message is not NUL-terminated")]
    MissingNul,
    #[error("invalid UTF-8 in message")]
    InvalidUtf8,
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Splits a whole tagged frame into (tag, body), checking that the declared length matches
/// the frame's size.
pub fn split_frame(frame: &[u8]) -> Result<(u8, &[u8]), MessageError> {
    let mut c = Cursor::new(frame);
    let tag = c.read_u8()?;
    let len = c.read_i32()?;
    let body = c.rest();
    if usize::try_from(len).ok() != body.len().checked_add(4) {
        return Err(MessageError::Invalid(format!(
            "declared length {len} does not match frame of {} bytes",
            frame.len()
        )));
    }
    Ok((tag, body))
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn split_frame_checks_length() {
        assert_eq!(split_frame(b"Z\0\0\0\x05I"), Ok((b'Z', &b"I"[..])));
        assert!(split_frame(b"Z\0\0\0\x06I").is_err());
        assert!(split_frame(b"Z\0\0").is_err());
        assert!(split_frame(b"Z\xff\xff\xff\xffI").is_err());
    }
}
