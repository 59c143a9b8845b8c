//! RowDescription (B) message.
//!
//! The gateway reads each column's origin (table OID, attribute number), type and format to decide
//! which DataRow fields it must mask.

use super::{Cursor, MessageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// 0 when the column is not a plain table column (an expression).
    pub table_oid: u32,
    /// 0 when the column is not a plain table column.
    pub attnum: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Parses a RowDescription *body*.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Column>, MessageError> {
    let mut c = Cursor::new(body);
    let count = c.read_i16()?;
    let count = usize::try_from(count)
        .map_err(|_| MessageError::Invalid(format!("negative column count {count}")))?;
    // Each column takes at least 19 bytes; a count the body cannot hold is refused up front.
    if count.saturating_mul(19) > c.rest().len() {
        return Err(MessageError::Truncated);
    }
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let name = String::from_utf8_lossy(c.read_cstr_bytes()?).into_owned();
        columns.push(Column {
            name,
            table_oid: c.read_u32()?,
            attnum: c.read_i16()?,
            type_oid: c.read_u32()?,
            type_size: c.read_i16()?,
            type_modifier: c.read_i32()?,
            format: c.read_i16()?,
        });
    }
    c.expect_end()?;
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::messages::payload::Payload;

    pub(crate) fn build(columns: &[(&str, u32, i16, u32, i16)]) -> bytes::Bytes {
        let mut p = Payload::new(b'T');
        p.put_i16(i16::try_from(columns.len()).unwrap());
        for (name, table, attnum, ty, format) in columns {
            p.put_cstr(name)
                .put_u32(*table)
                .put_i16(*attnum)
                .put_u32(*ty)
                .put_i16(-1)
                .put_i32(-1)
                .put_i16(*format);
        }
        p.finish()
    }

    #[test]
    fn round_trip() {
        let frame = build(&[("email", 16384, 3, 25, 0), ("n", 0, 0, 23, 1)]);
        let cols = parse_row_description(&frame[5..]).unwrap();
        assert_eq!(cols.len(), 2);
        assert_eq!(
            (cols[0].table_oid, cols[0].attnum, cols[0].type_oid),
            (16384, 3, 25)
        );
        assert_eq!(cols[1].format, 1);
    }

    #[test]
    fn truncated_and_lying_counts_are_errors() {
        let frame = build(&[("email", 16384, 3, 25, 0)]);
        for cut in 5..frame.len() - 1 {
            assert!(parse_row_description(&frame[5..cut]).is_err());
        }
        assert!(parse_row_description(&[0x7f, 0xff]).is_err());
        assert!(parse_row_description(&[0xff, 0xff]).is_err());
    }
}
