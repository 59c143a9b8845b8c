//! BackendKeyData (B) message.
//!
//! Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256, so the key is kept as bytes.

use bytes::Bytes;

use super::payload::Payload;
use super::startup::MAX_CANCEL_KEY;
use super::tag;
use super::{Cursor, MessageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKeyData {
    pub pid: i32,
    pub key: Vec<u8>,
}

/// Parses a BackendKeyData *body*.
pub fn parse_backend_key_data(body: &[u8]) -> Result<BackendKeyData, MessageError> {
    let mut c = Cursor::new(body);
    let pid = c.read_i32()?;
    let key = c.rest();
    if !(4..=MAX_CANCEL_KEY).contains(&key.len()) {
        return Err(MessageError::Invalid(format!(
            "cancel key of {} bytes",
            key.len()
        )));
    }
    Ok(BackendKeyData {
        pid,
        key: key.to_vec(),
    })
}

pub fn build_backend_key_data(pid: i32, key: &[u8]) -> Bytes {
    let mut p = Payload::new(tag::BACKEND_KEY_DATA);
    p.put_i32(pid).put_bytes(key);
    p.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::net::messages::split_frame;

    #[test]
    fn round_trip() {
        for key in [vec![1, 2, 3, 4], vec![9; 32]] {
            let f = build_backend_key_data(1234, &key);
            let (t, body) = split_frame(&f).unwrap();
            assert_eq!(t, b'K');
            assert_eq!(
                parse_backend_key_data(body).unwrap(),
                BackendKeyData {
                    pid: 1234,
                    key: key.clone()
                }
            );
        }
        assert!(parse_backend_key_data(&[0, 0, 0, 1, 2, 3, 4]).is_err());
        assert!(parse_backend_key_data(&[0, 0]).is_err());
    }
}
