//! Which result columns a session must mask, and the per-result row rewriter.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::detect::{count_digits, Kind, Kinds};
use super::functions::{oid, MaskFunction};
use crate::net::messages::{parse_data_row, Column, MessageError};

/// The session's masking rules compiled to column origins: (table OID, attribute number), and its
/// content detectors for columns without an origin.
#[derive(Debug, Clone, Default)]
pub struct MaskPlan {
    columns: HashMap<(u32, i16), MaskFunction>,
    detectors: Option<Arc<Detectors>>,
    /// The deployment's `hash` key, for functions that arrive later (COPY plans).
    key: Vec<u8>,
}

impl MaskPlan {
    pub fn new(columns: HashMap<(u32, i16), MaskFunction>) -> Self {
        Self {
            columns,
            detectors: None,
            key: Vec::new(),
        }
    }

    /// The same plan, with the `hash` key for COPY plans.
    #[must_use]
    pub fn with_key(mut self, key: Vec<u8>) -> Self {
        self.key = key;
        self
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The same plan, also scanning columns without an origin with `detectors`.
    #[must_use]
    pub fn with_detectors(mut self, detectors: Detectors) -> Self {
        self.detectors = (!detectors.is_empty()).then(|| Arc::new(detectors));
        self
    }

    /// Nothing to mask and nothing to scan: the relay never looks at rows.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.detectors.is_none()
    }

    /// The names of the columns of a result shape that this plan masks by their origin (for the
    /// audit; columns scanned by detectors are not named).
    pub fn masked_names(&self, columns: &[Column]) -> Vec<String> {
        columns
            .iter()
            .filter(|c| self.columns.contains_key(&(c.table_oid, c.attnum)))
            .map(|c| c.name.clone())
            .collect()
    }

    /// The masker for one result shape; `None` when no column of it is masked or scanned.
    pub fn for_columns(&self, columns: &[Column]) -> Option<RowMasker> {
        if self.is_empty() {
            return None;
        }
        let actions: Vec<Option<Masking>> = columns
            .iter()
            .map(|c| {
                let binary = c.format == 1;
                if let Some(f) = self.columns.get(&(c.table_oid, c.attnum)) {
                    return Some(Masking::Function(f.clone(), c.type_oid, binary));
                }
                // Only columns with no table origin are scanned: a column with an origin is masked
                // by its rules or is in clear by policy.
                (self.detectors.is_some() && c.table_oid == 0 && is_scanned_type(c.type_oid))
                    .then_some(Masking::Detect(c.type_oid, binary))
            })
            .collect();
        actions.iter().any(Option::is_some).then(|| RowMasker {
            actions,
            detectors: self.detectors.clone(),
        })
    }
}

/// Types whose values detectors scan: text-like types, whose text and binary forms are the text
/// itself, JSON (its binary form is the text), JSONB (a version byte, then the text), and arrays of
/// those (`array_agg` over text), whose elements' bytes are contiguous in both formats.
fn is_scanned_type(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::CITEXT_LIKE_UNKNOWN
            | oid::JSON
            | oid::JSONB
    ) || array_element(type_oid).is_some()
}

/// The element type of the arrays of scanned types (pg_type.dat).
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1009 => oid::TEXT,
        1015 => oid::VARCHAR,
        1014 => oid::BPCHAR,
        1003 => oid::NAME,
        199 => oid::JSON,
        3807 => oid::JSONB,
        _ => return None,
    })
}

/// A detected value masked with `f`. An array has no masked form of its own: it becomes the empty
/// array of its type (a valid value in both formats), or NULL for `null` and `redact` without text.
fn mask_detected(f: &MaskFunction, type_oid: u32, binary: bool, value: &[u8]) -> Option<Vec<u8>> {
    let Some(element) = array_element(type_oid) else {
        return f.apply(type_oid, binary, value);
    };
    if matches!(f, MaskFunction::Null | MaskFunction::Redact { text: None }) {
        return None;
    }
    if !binary {
        return Some(b"{}".to_vec());
    }
    // ndim 0, no NULLs, the element type: PostgreSQL's own binary form of '{}'.
    let mut out = vec![0u8; 8];
    out.extend_from_slice(&element.to_be_bytes());
    Some(out)
}

/// A session's content detectors: each enabled kind with the function a value containing it gets,
/// strictest first.
#[derive(Debug, Clone, Default)]
pub struct Detectors {
    rules: Vec<(Kind, MaskFunction)>,
}

impl Detectors {
    /// `rules` in strictness order: when a value holds several kinds, the first listed wins.
    pub fn new(rules: Vec<(Kind, MaskFunction)>) -> Self {
        let mut seen = Kinds::default();
        let rules = rules
            .into_iter()
            .filter(|(k, _)| {
                let new = !seen.contains(*k);
                seen.insert(*k);
                new
            })
            .collect();
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The function for a value that contains a detected item, `None` when nothing is detected.
    /// Stops at the strictest kind found; a value with no match costs one scan per kind.
    pub fn function_for(&self, value: &[u8]) -> Option<&MaskFunction> {
        let digits = count_digits(value);
        self.rules
            .iter()
            .find(|(kind, _)| kind.found_in_counted(value, digits))
            .map(|(_, f)| f)
    }
}

#[derive(Debug, Clone)]
enum Masking {
    /// A masked column: (function, type OID, binary format).
    Function(MaskFunction, u32, bool),
    /// A column without an origin, scanned by the detectors: (type OID, binary format).
    Detect(u32, bool),
}

/// Rewrites the DataRows of one result.
#[derive(Debug, Clone)]
pub struct RowMasker {
    actions: Vec<Option<Masking>>,
    detectors: Option<Arc<Detectors>>,
}

impl RowMasker {
    /// Mask one whole DataRow frame. A row in which nothing changes (only scanned columns, and no
    /// detector matched) is returned as is, without a copy: detectors cost a scan, not a rebuild.
    pub fn mask_frame(&self, frame: &Bytes) -> Result<Bytes, MessageError> {
        let body = frame.get(5..).unwrap_or_default();
        let fields = parse_data_row(body)?;
        let changes =
            fields
                .iter()
                .zip(&self.actions)
                .any(|(field, action)| match (field, action) {
                    (Some(_), Some(Masking::Function(..))) => true,
                    (Some(v), Some(Masking::Detect(..))) => self
                        .detectors
                        .as_ref()
                        .is_some_and(|d| d.function_for(v).is_some()),
                    _ => false,
                });
        if changes || fields.len() != self.actions.len() {
            return self.mask(body);
        }
        Ok(frame.clone())
    }

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
                (Some(v), Some(Masking::Function(f, ty, binary))) => {
                    masked = f.apply(*ty, *binary, v);
                    masked.as_deref()
                }
                (Some(v), Some(Masking::Detect(ty, binary))) => {
                    match self.detectors.as_ref().and_then(|d| d.function_for(v)) {
                        Some(f) => {
                            masked = mask_detected(f, *ty, *binary, v);
                            masked.as_deref()
                        }
                        None => Some(*v),
                    }
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

    fn detecting() -> MaskPlan {
        MaskPlan::new(HashMap::new()).with_detectors(Detectors::new(vec![
            (Kind::Ssn, MaskFunction::Null),
            (
                Kind::Email,
                MaskFunction::Redact {
                    text: Some("[email]".into()),
                },
            ),
            (Kind::Ssn, MaskFunction::Email),
        ]))
    }

    fn typed(type_oid: u32, format: i16) -> Column {
        Column {
            format,
            ..col(0, 0, type_oid)
        }
    }

    #[test]
    fn detectors_scan_only_text_like_columns_without_an_origin() {
        let plan = detecting();
        assert!(!plan.is_empty());
        assert!(MaskPlan::default()
            .with_detectors(Detectors::default())
            .is_empty());
        // A table column, an int column and a bytea column are never scanned.
        assert!(plan
            .for_columns(&[col(100, 3, 25), typed(23, 0), typed(17, 0)])
            .is_none());
        let masker = plan
            .for_columns(&[
                col(100, 3, 25),
                typed(25, 0),
                typed(1043, 1),
                typed(3802, 1),
                typed(114, 0),
            ])
            .unwrap();
        let row = build_data_row(
            [
                Some(&b"jane@example.com"[..]),
                Some(&b"mail jane@example.com or call"[..]),
                Some(&b"ssn 123-45-6789 and jane@example.com"[..]),
                Some(&b"\x01{\"e\": \"jane@example.com\"}"[..]),
                Some(&b"{\"ssn\": \"666-12-3456\"}"[..]),
            ]
            .into_iter(),
            64,
        )
        .unwrap();
        let out = masker.mask(&row[5..]).unwrap();
        let fields = parse_data_row(&out[5..]).unwrap();
        assert_eq!(
            fields,
            vec![
                // The table column is not scanned (no rule masks it).
                Some(&b"jane@example.com"[..]),
                Some(&b"[email]"[..]),
                // Both kinds: the strictest (listed first) wins.
                None,
                // JSON gets a valid JSON value whatever the function.
                Some(&b"\x01null"[..]),
                // Not a valid SSN: passes.
                Some(&b"{\"ssn\": \"666-12-3456\"}"[..]),
            ]
        );
    }

    #[test]
    fn rows_without_a_match_pass_unchanged_and_uncopied() {
        let masker = detecting()
            .for_columns(&[typed(25, 0), typed(23, 0)])
            .unwrap();
        let clean =
            build_data_row([Some(&b"no pii here"[..]), Some(&b"7"[..])].into_iter(), 16).unwrap();
        let out = masker.mask_frame(&clean).unwrap();
        assert_eq!(out, clean);
        assert_eq!(out.as_ptr(), clean.as_ptr());
        let hit = build_data_row(
            [Some(&b"a@example.com"[..]), Some(&b"7"[..])].into_iter(),
            16,
        )
        .unwrap();
        let out = masker.mask_frame(&hit).unwrap();
        assert_eq!(
            parse_data_row(&out[5..]).unwrap(),
            vec![Some(&b"[email]"[..]), Some(&b"7"[..])]
        );
        // A masked column always rewrites; a malformed row is an error either way.
        let masked = plan().for_columns(&[col(100, 3, 25)]).unwrap();
        let row = build_data_row([Some(&b"a@b.io"[..])].into_iter(), 16).unwrap();
        assert_ne!(masked.mask_frame(&row).unwrap(), row);
        assert!(masker
            .mask_frame(&Bytes::from_static(b"D\0\0\0\x06\0\x05"))
            .is_err());
    }

    #[test]
    fn detected_arrays_become_empty_arrays_of_their_type() {
        let masker = detecting()
            .for_columns(&[typed(1009, 0), typed(1015, 1), typed(1009, 0)])
            .unwrap();
        let mut binary = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 19, 0, 0, 0, 2, 0, 0, 0, 1];
        binary.extend_from_slice(&[0, 0, 0, 16]);
        binary.extend_from_slice(b"jane@example.com");
        let row = build_data_row(
            [
                Some(&b"{a,jane@example.com}"[..]),
                Some(&binary[..]),
                Some(&b"{a,b}"[..]),
            ]
            .into_iter(),
            64,
        )
        .unwrap();
        let out = masker.mask(&row[5..]).unwrap();
        let fields = parse_data_row(&out[5..]).unwrap();
        assert_eq!(
            fields,
            vec![
                Some(&b"{}"[..]),
                Some(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 19][..]),
                Some(&b"{a,b}"[..]),
            ]
        );
        // An SSN (its function is null) makes the array NULL.
        let row = build_data_row([Some(&b"{123-45-6789}"[..])].into_iter(), 16).unwrap();
        let masker = detecting().for_columns(&[typed(1009, 0)]).unwrap();
        let out = masker.mask(&row[5..]).unwrap();
        assert_eq!(parse_data_row(&out[5..]).unwrap(), vec![None]);
    }

    proptest! {
        #[test]
        fn detecting_any_row_gives_a_well_formed_row_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let masker = detecting().for_columns(&[typed(25, 0), typed(3802, 1)]).unwrap();
            if let Ok(frame) = masker.mask(&body) {
                prop_assert!(parse_data_row(&frame[5..]).is_ok());
            }
        }

        #[test]
        fn mask_frame_agrees_with_mask(values in proptest::collection::vec(proptest::option::of("[a-z0-9@. ()-]{0,24}"), 2..=2usize)) {
            let masker = detecting().for_columns(&[typed(25, 0), col(100, 3, 25)]).unwrap();
            let row = build_data_row(values.iter().map(|v| v.as_deref().map(str::as_bytes)), 64).unwrap();
            prop_assert_eq!(masker.mask_frame(&row).unwrap(), masker.mask(&row[5..]).unwrap());
        }

        #[test]
        fn detected_values_never_pass(local in "[a-z]{1,10}", noise in "[a-z ]{0,20}") {
            let value = format!("{noise}{local}@example.org{noise}");
            let masker = detecting().for_columns(&[typed(25, 0)]).unwrap();
            let row = build_data_row([Some(value.as_bytes())].into_iter(), 64).unwrap();
            let out = masker.mask(&row[5..]).unwrap();
            let fields = parse_data_row(&out[5..]).unwrap();
            prop_assert_eq!(fields, vec![Some(&b"[email]"[..])]);
        }

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
