//! Masking functions: each turns one field (text or binary format) into a masked field of the
//! same type, or NULL.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Type OIDs from pg_type.dat that the functions treat specially.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const CITEXT_LIKE_UNKNOWN: u32 = 705;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskFunction {
    /// Replace with fixed text (text-like columns) or NULL (`text: None`, or any other type).
    Redact { text: Option<String> },
    /// Keep the first `first` and last `last` characters, star the rest.
    Partial { first: usize, last: usize },
    /// Keep the domain of an e-mail address.
    Email,
    /// Keyed HMAC-SHA256, hex: equal inputs give equal outputs, so joins and GROUP BY still work.
    Hash { key: Vec<u8> },
    /// Card numbers: stars, then the last four digits.
    Last4,
    /// A fixed valid value of the column's type (0, epoch, nil uuid, `null` JSON, empty text).
    Default,
    /// SQL NULL.
    Null,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    #[error("unknown masking function {0:?}")]
    Unknown(String),
}

impl MaskFunction {
    pub fn from_spec(
        name: &str,
        text: Option<String>,
        first: usize,
        last: usize,
        key: &[u8],
    ) -> Result<Self, MaskError> {
        Ok(match name {
            "redact" => Self::Redact { text },
            "partial" => Self::Partial { first, last },
            "email" => Self::Email,
            "hash" => Self::Hash { key: key.to_vec() },
            "last4" => Self::Last4,
            "default" => Self::Default,
            "null" => Self::Null,
            other => return Err(MaskError::Unknown(other.to_owned())),
        })
    }

    /// The same function with the session's `hash` key (plans from the decision service name
    /// functions without it).
    #[must_use]
    pub fn keyed(&self, key: &[u8]) -> Self {
        match self {
            Self::Hash { .. } => Self::Hash { key: key.to_vec() },
            other => other.clone(),
        }
    }

    /// Mask one non-NULL field. `binary` is the field's format; `None` in the result is NULL.
    pub fn apply(&self, type_oid: u32, binary: bool, value: &[u8]) -> Option<Vec<u8>> {
        if !is_text_type(type_oid) {
            // String functions have no meaning for numbers, dates or uuids: a valid typed
            // default (or NULL where the rule says so) keeps every driver decoding.
            return match self {
                Self::Null | Self::Redact { text: None } => None,
                _ => Some(default_value(type_oid, binary)),
            };
        }
        // Text types have the same bytes in text and binary format (the client encoding's).
        let s = String::from_utf8_lossy(value);
        let masked = match self {
            Self::Null => return None,
            Self::Redact { text: None } => return None,
            Self::Redact { text: Some(t) } => t.clone(),
            Self::Default => String::new(),
            Self::Partial { first, last } => partial(&s, *first, *last),
            Self::Email => email(&s),
            Self::Hash { key } => hash(key, value),
            Self::Last4 => last4(&s),
        };
        Some(masked.into_bytes())
    }
}

pub fn is_text_type(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR | oid::CITEXT_LIKE_UNKNOWN
    )
}

fn partial(s: &str, first: usize, last: usize) -> String {
    let n = s.chars().count();
    if first + last >= n {
        // Keeping that much would show everything: star it all.
        return "*".repeat(n.max(1));
    }
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        out.push(if i < first || i >= n - last { c } else { '*' });
    }
    out
}

fn email(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("****@{domain}"),
        _ => "****".to_owned(),
    }
}

fn last4(s: &str) -> String {
    let digits: Vec<char> = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "*".repeat(digits.len().max(4));
    }
    let tail: String = digits.iter().skip(digits.len() - 4).collect();
    format!("{}{tail}", "*".repeat(digits.len() - 4))
}

fn hash(key: &[u8], value: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps it total anyway.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return "****".to_owned();
    };
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    // Hex by hand: one allocation per value (a `format!` per byte cost more than the HMAC).
    let mut out = String::with_capacity(24);
    for b in digest.iter().take(12) {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// A valid value of the type, in the requested format.
pub fn default_value(type_oid: u32, binary: bool) -> Vec<u8> {
    if !binary {
        let text: &str = match type_oid {
            oid::BOOL => "f",
            oid::INT2
            | oid::INT4
            | oid::INT8
            | oid::OID
            | oid::FLOAT4
            | oid::FLOAT8
            | oid::NUMERIC => "0",
            oid::DATE => "1970-01-01",
            oid::TIME => "00:00:00",
            oid::TIMESTAMP => "1970-01-01 00:00:00",
            oid::TIMESTAMPTZ => "1970-01-01 00:00:00+00",
            oid::UUID => "00000000-0000-0000-0000-000000000000",
            oid::JSON | oid::JSONB => "null",
            oid::BYTEA => "\\x",
            _ => "",
        };
        return text.as_bytes().to_vec();
    }
    match type_oid {
        oid::BOOL => vec![0],
        oid::INT2 => vec![0; 2],
        oid::INT4 | oid::OID | oid::FLOAT4 => vec![0; 4],
        oid::INT8 | oid::FLOAT8 | oid::TIME => vec![0; 8],
        // ndigits 0, weight 0, sign positive, dscale 0: the numeric zero.
        oid::NUMERIC => vec![0; 8],
        // Days since 2000-01-01 → 1970-01-01.
        oid::DATE => (-10_957_i32).to_be_bytes().to_vec(),
        // Microseconds since 2000-01-01 → 1970-01-01.
        oid::TIMESTAMP | oid::TIMESTAMPTZ => (-946_684_800_000_000_i64).to_be_bytes().to_vec(),
        oid::UUID => vec![0; 16],
        oid::JSONB => b"\x01null".to_vec(),
        oid::JSON => b"null".to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &MaskFunction, v: &str) -> Option<String> {
        f.apply(oid::TEXT, false, v.as_bytes())
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn string_functions() {
        assert_eq!(
            text(&MaskFunction::Email, "jane.doe@example.com").as_deref(),
            Some("****@example.com")
        );
        assert_eq!(
            text(&MaskFunction::Last4, "4111 1111 1111 1234").as_deref(),
            Some("************1234")
        );
        assert_eq!(
            text(&MaskFunction::Partial { first: 1, last: 2 }, "555-0100").as_deref(),
            Some("5*****00")
        );
        assert_eq!(
            text(&MaskFunction::Partial { first: 4, last: 4 }, "short").as_deref(),
            Some("*****")
        );
        assert_eq!(
            text(
                &MaskFunction::Redact {
                    text: Some("[redacted]".into())
                },
                "x"
            )
            .as_deref(),
            Some("[redacted]")
        );
        assert_eq!(text(&MaskFunction::Null, "x"), None);
    }

    #[test]
    fn hash_is_stable_keyed_and_hides_the_value() {
        let a = MaskFunction::Hash {
            key: b"k1".to_vec(),
        };
        let b = MaskFunction::Hash {
            key: b"k2".to_vec(),
        };
        let h1 = text(&a, "123-45-6789").unwrap();
        assert_eq!(h1, text(&a, "123-45-6789").unwrap());
        assert_ne!(h1, text(&b, "123-45-6789").unwrap());
        assert!(!h1.contains("6789"));
    }

    #[test]
    fn non_text_types_get_valid_defaults() {
        let f = MaskFunction::Email;
        assert_eq!(f.apply(oid::INT4, true, &[0, 0, 0, 7]), Some(vec![0; 4]));
        assert_eq!(f.apply(oid::INT4, false, b"7"), Some(b"0".to_vec()));
        assert_eq!(
            f.apply(oid::DATE, false, b"2024-01-01"),
            Some(b"1970-01-01".to_vec())
        );
        assert_eq!(f.apply(oid::UUID, true, &[1; 16]), Some(vec![0; 16]));
        assert_eq!(MaskFunction::Null.apply(oid::INT8, true, &[0; 8]), None);
    }
}
