//! Terminate (F) message.

use bytes::Bytes;

use super::payload::Payload;
use super::tag;

pub fn build_terminate() -> Bytes {
    Payload::new(tag::TERMINATE).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(&build_terminate()[..], b"X\0\0\0\x04");
    }
}
