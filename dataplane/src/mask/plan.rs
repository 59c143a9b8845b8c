//! Which result columns a session must mask, and the per-result row rewriter.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::functions::MaskFunction;
use crate::net::messages::{parse_data_row, Column, MessageError};

/// The session's masking rules compiled to column origins: (table OID, attribute number).
#[derive(Debug, Clone, Default)]
pub struct MaskPlan {
    columns: HashMap<(u32, i16), MaskFunction>,
}

impl MaskPlan {
    pub fn new(columns: HashMap<(u32, i16), MaskFunction>) -> Self {
        Self { columns }
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The masker for one result shape; `None` when no column of it is masked.
    pub fn for_columns(&self, columns: &[Column]) -> Option<RowMasker> {
        if self.columns.is_empty() {
            return None;
        }
        let actions: Vec<Option<(MaskFunction, u32, bool)>> = columns
            .iter()
            .map(|c| {
                self.columns
                    .get(&(c.table_oid, c.attnum))
                    .map(|f| (f.clone(), c.type_oid, c.format == 1))
            })
            .collect();
        actions
            .iter()
            .any(Option::is_some)
            .then_some(RowMasker { actions })
    }
}

/// Rewrites the DataRows of one result.
#[derive(Debug, Clone)]
pub struct RowMasker {
    actions: Vec<Option<(MaskFunction, u32, bool)>>,
}

impl RowMasker {
    /// Mask one DataRow *body* and return the new frame, written in one pass into one buffer.
    pub fn mask(&self, body: &[u8]) -> Result<Bytes, MessageError> {
        let fields = parse_data_row(body)?;
        if fields.len() != self.actions.len() {
            return Err(MessageError::Invalid(format!(
                "DataRow has {} fields, its RowDescription {}",
                fields.len(),
                self.actions.len()
            )));
        }
        let mut out = BytesMut::with_capacity(body.len() + 64);
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(
            i16::try_from(fields.len())
                .map_err(|_| MessageError::Invalid("too many fields".into()))?,
        );
        for (field, action) in fields.iter().zip(&self.actions) {
            let masked;
            let value = match (field, action) {
                (Some(v), Some((f, ty, binary))) => {
                    masked = f.apply(*ty, *binary, v);
                    masked.as_deref()
                }
                (v, _) => *v,
            };
            match value {
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
        let len = i32::try_from(out.len() - 1)
            .map_err(|_| MessageError::Invalid("row too large".into()))?;
        if let Some(slot) = out.get_mut(1..5) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::messages::{build_data_row, parse_data_row};
    use proptest::prelude::*;

    fn col(table_oid: u32, attnum: i16, type_oid: u32) -> Column {
        Column {
            name: "c".into(),
            table_oid,
            attnum,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }

    fn plan() -> MaskPlan {
        let mut m = HashMap::new();
        m.insert((100, 3), MaskFunction::Email);
        m.insert((100, 4), MaskFunction::Null);
        MaskPlan::new(m)
    }

    #[test]
    fn masks_only_the_planned_columns() {
        let masker = plan()
            .for_columns(&[
                col(100, 1, 23),
                col(100, 3, 25),
                col(100, 4, 25),
                col(0, 0, 25),
            ])
            .unwrap();
        let row = build_data_row(
            [
                Some(&b"1"[..]),
                Some(&b"a@b.io"[..]),
                Some(&b"x"[..]),
                Some(&b"a@b.io"[..]),
            ]
            .into_iter(),
            32,
        )
        .unwrap();
        let out = masker.mask(&row[5..]).unwrap();
        let fields = parse_data_row(&out[5..]).unwrap();
        assert_eq!(
            fields,
            vec![
                Some(&b"1"[..]),
                Some(&b"****@b.io"[..]),
                None,
                Some(&b"a@b.io"[..])
            ]
        );
        assert!(plan().for_columns(&[col(100, 1, 23)]).is_none());
    }

    proptest! {
        #[test]
        fn any_row_in_gives_a_well_formed_row_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let masker = plan().for_columns(&[col(100, 3, 25), col(100, 4, 25)]).unwrap();
            if let Ok(frame) = masker.mask(&body) {
                prop_assert!(parse_data_row(&frame[5..]).is_ok());
            }
        }

        #[test]
        fn masked_rows_keep_their_shape(values in proptest::collection::vec(proptest::option::of("[a-z@.]{0,20}"), 2..=2usize)) {
            let masker = plan().for_columns(&[col(100, 3, 25), col(100, 4, 25)]).unwrap();
            let row = build_data_row(values.iter().map(|v| v.as_deref().map(str::as_bytes)), 64).unwrap();
            let out = masker.mask(&row[5..]).unwrap();
            let fields = parse_data_row(&out[5..]).unwrap();
            prop_assert_eq!(fields.len(), 2);
            prop_assert!(fields[1].is_none());
        }
    }
}
