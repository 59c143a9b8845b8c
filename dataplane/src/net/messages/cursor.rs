//! A checked reader over a message body.
//!
//! `bytes::Buf::get_i32` panics on a short buffer; every read here returns
//! [`MessageError::Truncated`] instead, so a hostile peer cannot crash a session task.

use super::MessageError;

/// Reads big-endian integers and C strings from a byte slice, front to back.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Errors if anything is left: trailing garbage usually means a mis-framed message, which
    /// the server also rejects ("invalid message format").
    pub fn expect_end(&self) -> Result<(), MessageError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(MessageError::Invalid(format!(
                "{} unexpected trailing bytes",
                self.buf.len()
            )))
        }
    }

    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if n > self.buf.len() {
            return Err(MessageError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        self.read_bytes(N)?
            .try_into()
            .map_err(|_| MessageError::Truncated)
    }

    pub fn read_u8(&mut self) -> Result<u8, MessageError> {
        Ok(u8::from_be_bytes(self.read_array()?))
    }

    pub fn read_i16(&mut self) -> Result<i16, MessageError> {
        Ok(i16::from_be_bytes(self.read_array()?))
    }

    pub fn read_u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_be_bytes(self.read_array()?))
    }

    pub fn read_i32(&mut self) -> Result<i32, MessageError> {
        Ok(i32::from_be_bytes(self.read_array()?))
    }

    pub fn read_u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_be_bytes(self.read_array()?))
    }

    /// A NUL-terminated string's bytes (without the NUL); the NUL is consumed.
    pub fn read_cstr_bytes(&mut self) -> Result<&'a [u8], MessageError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(MessageError::MissingNul)?;
        let s = self.read_bytes(nul)?;
        self.read_u8()?;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string (without the NUL).
    pub fn read_cstr(&mut self) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.read_cstr_bytes()?).map_err(|_| MessageError::InvalidUtf8)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_truncation() {
        let mut c = Cursor::new(b"\x00\x01\xff\xff\xff\xfeab\0x");
        assert_eq!(c.read_i16(), Ok(1));
        assert_eq!(c.read_i32(), Ok(-2));
        assert_eq!(c.read_cstr(), Ok("ab"));
        assert_eq!(c.read_cstr(), Err(MessageError::MissingNul));
        assert_eq!(c.read_i32(), Err(MessageError::Truncated));
        assert_eq!(c.read_u8(), Ok(b'x'));
        assert!(c.expect_end().is_ok());
        assert_eq!(c.read_u8(), Err(MessageError::Truncated));
        assert_eq!(
            Cursor::new(b"\xff\0").read_cstr(),
            Err(MessageError::InvalidUtf8)
        );
    }
}
