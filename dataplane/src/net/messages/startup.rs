//! StartupMessage (F), SSLRequest (F), GSSENCRequest (F) and CancelRequest (F) messages.
//!
//! These are the untagged packets of the startup phase: `len: i32, code: i32, …`. They share
//! one file because they are told apart only by the code after the length.

use bytes::Bytes;

use super::payload::Payload;
use super::{Cursor, MessageError};

/// `1234 << 16 | 5679`.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// `1234 << 16 | 5680`.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// `1234 << 16 | 5678`.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0 (`3 << 16`).
pub const PROTOCOL_3_0: i32 = 196_608;
/// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
pub const MAX_CANCEL_KEY: usize = 256;
const MIN_CANCEL_KEY: usize = 4;

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// StartupMessage for protocol 3.x. `params` keeps the client's order (and duplicates);
    /// `_pq_.` protocol options are among them.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
}

impl StartupPacket {
    /// The value of a startup parameter (first occurrence).
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Parses a whole startup-phase packet (`frame` includes the 4-byte length).
///
/// Protocol versions other than 3.x and unknown request codes are errors; so is a parameter
/// list not ending in the terminating NUL.
pub fn parse_startup(frame: &[u8]) -> Result<StartupPacket, MessageError> {
    let mut c = Cursor::new(frame);
    let len = c.read_i32()?;
    if usize::try_from(len).ok() != Some(frame.len()) {
        return Err(MessageError::Invalid(format!(
            "startup packet length {len} does not match its {} bytes",
            frame.len()
        )));
    }
    let code = c.read_i32()?;
    match code {
        SSL_REQUEST_CODE => {
            c.expect_end()?;
            Ok(StartupPacket::SslRequest)
        }
        GSSENC_REQUEST_CODE => {
            c.expect_end()?;
            Ok(StartupPacket::GssEncRequest)
        }
        CANCEL_REQUEST_CODE => {
            let pid = c.read_i32()?;
            let key = c.rest();
            if !(MIN_CANCEL_KEY..=MAX_CANCEL_KEY).contains(&key.len()) {
                return Err(MessageError::Invalid(format!(
                    "cancel key of {} bytes",
                    key.len()
                )));
            }
            Ok(StartupPacket::Cancel {
                pid,
                key: key.to_vec(),
            })
        }
        _ => {
            // The code is major << 16 | minor; compare as u32 so the shifts are well-defined.
            let code = code as u32;
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(MessageError::Invalid(format!(
                    "unsupported frontend protocol {major}.{minor}"
                )));
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: parse_params(&mut c)?,
            })
        }
    }
}

/// Reads `name\0value\0…\0`: pairs until an empty name, which must be the last byte.
fn parse_params(c: &mut Cursor<'_>) -> Result<Vec<(String, String)>, MessageError> {
    let mut params = Vec::new();
    loop {
        let name = c.read_cstr()?;
        if name.is_empty() {
            c.expect_end()?;
            return Ok(params);
        }
        let value = c.read_cstr()?;
        params.push((name.to_owned(), value.to_owned()));
    }
}

/// Builds a protocol 3.0 StartupMessage with the given parameters (e.g. `user`, `database`).
pub fn build_startup(params: &[(&str, &str)]) -> Bytes {
    let mut p = Payload::untagged();
    p.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        p.put_cstr(k).put_cstr(v);
    }
    p.put_u8(0);
    p.finish()
}

pub fn build_ssl_request() -> Bytes {
    let mut p = Payload::untagged();
    p.put_i32(SSL_REQUEST_CODE);
    p.finish()
}

pub fn build_gssenc_request() -> Bytes {
    let mut p = Payload::untagged();
    p.put_i32(GSSENC_REQUEST_CODE);
    p.finish()
}

pub fn build_cancel(pid: i32, key: &[u8]) -> Bytes {
    let mut p = Payload::untagged();
    p.put_i32(CANCEL_REQUEST_CODE).put_i32(pid).put_bytes(key);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let f = build_startup(&[("user", "alice"), ("database", "shop"), ("_pq_.x", "1")]);
        let p = parse_startup(&f).unwrap();
        assert_eq!(p.param("database"), Some("shop"));
        assert_eq!(
            p,
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "shop".into()),
                    ("_pq_.x".into(), "1".into())
                ]
            }
        );
        for cut in 0..f.len() {
            assert!(parse_startup(&f[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn protocol_3_2_accepted_2_0_refused() {
        let mut f = build_startup(&[("user", "u")]).to_vec();
        f[7] = 2;
        assert!(matches!(
            parse_startup(&f).unwrap(),
            StartupPacket::Startup {
                major: 3,
                minor: 2,
                ..
            }
        ));
        f[5] = 2;
        assert!(parse_startup(&f).is_err());
    }

    #[test]
    fn missing_terminator_is_error() {
        // len 8 + "user\0u\0" without the final NUL.
        let mut f = vec![0, 0, 0, 15, 0, 3, 0, 0];
        f.extend_from_slice(b"user\0u\0");
        assert!(parse_startup(&f).is_err());
    }

    #[test]
    fn requests_round_trip() {
        assert_eq!(
            parse_startup(&build_ssl_request()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup(&build_gssenc_request()).unwrap(),
            StartupPacket::GssEncRequest
        );
        assert_eq!(
            parse_startup(&build_cancel(42, &[1, 2, 3, 4])).unwrap(),
            StartupPacket::Cancel {
                pid: 42,
                key: vec![1, 2, 3, 4]
            }
        );
        let long = vec![7u8; 32];
        assert_eq!(
            parse_startup(&build_cancel(-1, &long)).unwrap(),
            StartupPacket::Cancel { pid: -1, key: long }
        );
        assert!(parse_startup(&build_cancel(1, &[1, 2, 3])).is_err());
        assert!(parse_startup(&build_cancel(1, &[0; 257])).is_err());
    }
}
