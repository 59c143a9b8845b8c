//! DataRow (B) message.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Cursor, MessageError};

/// The fields of a DataRow *body*: `None` is SQL NULL.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, MessageError> {
    let mut c = Cursor::new(body);
    let count = c.read_i16()?;
    let count = usize::try_from(count)
        .map_err(|_| MessageError::Invalid(format!("negative field count {count}")))?;
    if count.saturating_mul(4) > c.rest().len() {
        return Err(MessageError::Truncated);
    }
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let len = c.read_i32()?;
        if len == -1 {
            fields.push(None);
        } else {
            let len = usize::try_from(len)
                .map_err(|_| MessageError::Invalid(format!("field length {len}")))?;
            fields.push(Some(c.read_bytes(len)?));
        }
    }
    c.expect_end()?;
    Ok(fields)
}

/// Build a DataRow frame from fields (`None` = NULL).
pub fn build_data_row<'a, I>(fields: I, capacity: usize) -> Result<Bytes, MessageError>
where
    I: ExactSizeIterator<Item = Option<&'a [u8]>>,
{
    let mut out = BytesMut::with_capacity(capacity + 7);
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(
        i16::try_from(fields.len()).map_err(|_| MessageError::Invalid("too many fields".into()))?,
    );
    for field in fields {
        match field {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(
                    i32::try_from(v.len())
                        .map_err(|_| MessageError::Invalid("field too large".into()))?,
                );
                out.put_slice(v);
            }
        }
    }
    let len =
        i32::try_from(out.len() - 1).map_err(|_| MessageError::Invalid("row too large".into()))?;
    if let Some(slot) = out.get_mut(1..5) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_nulls() {
        let frame =
            build_data_row([Some(&b"abc"[..]), None, Some(&b""[..])].into_iter(), 16).unwrap();
        let fields = parse_data_row(&frame[5..]).unwrap();
        assert_eq!(fields, vec![Some(&b"abc"[..]), None, Some(&b""[..])]);
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_data_row(&body);
        }

        #[test]
        fn rebuild_is_identity(fields in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)), 0..10)) {
            let frame = build_data_row(fields.iter().map(|f| f.as_deref()), 64).unwrap();
            let parsed = parse_data_row(&frame[5..]).unwrap();
            let again: Vec<Option<Vec<u8>>> = parsed.into_iter().map(|f| f.map(<[u8]>::to_vec)).collect();
            prop_assert_eq!(again, fields);
        }
    }
}
