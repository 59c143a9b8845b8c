//! Building frames: write the tag and a length placeholder, append the body, patch the length.
//!
//! Patching afterwards means no builder computes lengths by hand, which is where hand-written
//! encoders usually go wrong.

use bytes::{BufMut, Bytes, BytesMut};

/// A frame under construction.
#[derive(Debug)]
pub struct Payload {
    buf: BytesMut,
    /// Offset of the length field (1 for tagged messages, 0 for startup packets).
    len_at: usize,
}

impl Payload {
    /// Starts a tagged message.
    pub fn new(tag: u8) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u8(tag);
        buf.put_i32(0);
        Self { buf, len_at: 1 }
    }

    /// Starts an untagged startup-phase packet.
    pub fn untagged() -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_i32(0);
        Self { buf, len_at: 0 }
    }

    pub fn put_u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }

    pub fn put_i16(&mut self, v: i16) -> &mut Self {
        self.buf.put_i16(v);
        self
    }

    pub fn put_i32(&mut self, v: i32) -> &mut Self {
        self.buf.put_i32(v);
        self
    }

    pub fn put_u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }

    pub fn put_bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_slice(v);
        self
    }

    /// Writes `s` and a NUL. An interior NUL would end the string early on the receiving
    /// side, so the string is cut at the first NUL: the frame stays well-formed.
    pub fn put_cstr(&mut self, s: &str) -> &mut Self {
        let bytes = s.as_bytes();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        self.buf.put_slice(bytes.get(..end).unwrap_or_default());
        self.buf.put_u8(0);
        self
    }

    /// Patches the length field and returns the frame.
    pub fn finish(mut self) -> Bytes {
        // Our own messages stay far below 2 GiB; saturating keeps this total rather than
        // panicking, and the peer would reject such a frame anyway.
        let len = i32::try_from(self.buf.len().saturating_sub(self.len_at)).unwrap_or(i32::MAX);
        if let Some(slot) = self.buf.get_mut(self.len_at..self.len_at + 4) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        self.buf.freeze()
    }

    /// Patches the length field and appends the frame to `out`.
    pub fn finish_into(self, out: &mut BytesMut) {
        out.extend_from_slice(&self.finish());
    }
}
