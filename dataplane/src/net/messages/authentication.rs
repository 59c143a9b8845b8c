//! Authentication (B) messages: AuthenticationOk, AuthenticationCleartextPassword,
//! AuthenticationMD5Password, AuthenticationSASL, AuthenticationSASLContinue,
//! AuthenticationSASLFinal (and the GSS/SSPI kinds, which pgward does not speak).

use bytes::Bytes;

use super::payload::Payload;
use super::tag;
use super::{Cursor, MessageError};

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// What the server asks for (or reports) in an Authentication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    /// Kerberos, GSSAPI, SSPI and anything newer, by code.
    Other(i32),
}

/// Parses an Authentication *body* (the frame without its 5-byte header).
pub fn parse_auth(body: &[u8]) -> Result<AuthRequest, MessageError> {
    let mut c = Cursor::new(body);
    let code = c.read_i32()?;
    let req = match code {
        AUTH_OK => AuthRequest::Ok,
        AUTH_CLEARTEXT => AuthRequest::CleartextPassword,
        AUTH_MD5 => {
            let salt = c.read_bytes(4)?;
            AuthRequest::Md5 {
                salt: salt.try_into().map_err(|_| MessageError::Truncated)?,
            }
        }
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = c.read_cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m.to_owned());
            }
            AuthRequest::Sasl { mechanisms }
        }
        AUTH_SASL_CONTINUE => return Ok(AuthRequest::SaslContinue(c.rest().to_vec())),
        AUTH_SASL_FINAL => return Ok(AuthRequest::SaslFinal(c.rest().to_vec())),
        // Other kinds may carry data we do not interpret.
        other => return Ok(AuthRequest::Other(other)),
    };
    c.expect_end()?;
    Ok(req)
}

fn build(code: i32, data: &[u8]) -> Bytes {
    let mut p = Payload::new(tag::AUTHENTICATION);
    p.put_i32(code).put_bytes(data);
    p.finish()
}

/// AuthenticationOk.
pub fn auth_ok() -> Bytes {
    build(AUTH_OK, &[])
}

/// AuthenticationCleartextPassword: the gateway asks the client for its credential (only
/// inside TLS).
pub fn auth_cleartext_password() -> Bytes {
    build(AUTH_CLEARTEXT, &[])
}

/// AuthenticationMD5Password with the given salt (used by tests acting as a server).
pub fn auth_md5_password(salt: [u8; 4]) -> Bytes {
    build(AUTH_MD5, &salt)
}

/// AuthenticationSASL listing the mechanisms.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    let mut p = Payload::new(tag::AUTHENTICATION);
    p.put_i32(AUTH_SASL);
    for m in mechanisms {
        p.put_cstr(m);
    }
    p.put_u8(0);
    p.finish()
}

pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    build(AUTH_SASL_CONTINUE, data)
}

pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    build(AUTH_SASL_FINAL, data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    fn round(f: &Bytes) -> AuthRequest {
        let (t, body) = split_frame(f).unwrap();
        assert_eq!(t, b'R');
        parse_auth(body).unwrap()
    }

    #[test]
    fn round_trips() {
        assert_eq!(round(&auth_ok()), AuthRequest::Ok);
        assert_eq!(
            round(&auth_cleartext_password()),
            AuthRequest::CleartextPassword
        );
        assert_eq!(
            round(&auth_md5_password([1, 2, 3, 4])),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert_eq!(
            round(&auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }
        );
        assert_eq!(
            round(&auth_sasl_continue(b"r=x")),
            AuthRequest::SaslContinue(b"r=x".to_vec())
        );
        assert_eq!(
            round(&auth_sasl_final(b"v=y")),
            AuthRequest::SaslFinal(b"v=y".to_vec())
        );
        assert_eq!(
            parse_auth(&7i32.to_be_bytes()).unwrap(),
            AuthRequest::Other(7)
        );
    }

    #[test]
    fn truncated() {
        for f in [
            auth_md5_password([1, 2, 3, 4]),
            auth_sasl(&["SCRAM-SHA-256"]),
        ] {
            let body = &f[5..];
            for cut in 0..body.len() {
                assert!(parse_auth(&body[..cut]).is_err(), "cut {cut}");
            }
        }
    }
}
