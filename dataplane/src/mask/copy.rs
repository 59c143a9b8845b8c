//! COPY TO output masking: a streaming rewriter of CopyData payloads in the text, CSV and binary
//! formats.
//!
//! COPY output carries no row description, so the decision service sends a [`CopyPlan`] with the
//! statement: the format options and, by output position, the masking function and type OID of
//! each masked column. PostgreSQL sends one row per CopyData message, but nothing in the protocol
//! promises it, so rows may be split across messages or several may share one: the rewriter keeps
//! the unfinished tail of the input (bounded by the session's maximum message size) and writes
//! only whole, masked rows. Anything it cannot parse is an error, never output.

use bytes::{Buf, BufMut, BytesMut};

use super::functions::MaskFunction;

/// The 11-byte signature that opens binary COPY data.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Client encodings whose multibyte characters can contain the bytes of `\\`, delimiters and
/// quotes (PostgreSQL's client-only encodings), normalised (upper case, alphanumerics only): text
/// and CSV output in them cannot be split by bytes.
pub const UNSAFE_ENCODINGS: &[&str] = &[
    "SJIS",
    "SHIFTJIS",
    "BIG5",
    "GBK",
    "UHC",
    "GB18030",
    "JOHAB",
    "SHIFTJIS2004",
];
/// Binary header flag bit 16: rows carry OIDs (servers before 12 only); the layout then differs.
const BINARY_FLAG_OIDS: i32 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
}

/// How to mask one output column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyColumn {
    /// The function as the decision service named it (a `hash` gets the session's key later).
    pub function: MaskFunction,
    pub type_oid: u32,
}

/// The plan of one `COPY … TO STDOUT` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub format: CopyFormat,
    /// Text and CSV: one byte (the server refuses anything else).
    pub delimiter: u8,
    /// Text and CSV: how NULL is written.
    pub null: Vec<u8>,
    /// CSV only.
    pub quote: u8,
    pub escape: u8,
    /// Text and CSV: the first line holds the column names.
    pub header: bool,
    /// By output position; `None` when no column is masked (the output is relayed unchanged).
    pub columns: Option<Vec<Option<CopyColumn>>>,
}

impl CopyPlan {
    /// Whether any column needs rewriting.
    pub fn masks(&self) -> bool {
        self.columns
            .as_ref()
            .is_some_and(|c| c.iter().any(Option::is_some))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("COPY row of {size} bytes or more exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("COPY row has {found} fields, the plan {expected}")]
    FieldCount { found: usize, expected: usize },
    #[error("malformed COPY data: {0}")]
    Malformed(&'static str),
    #[error("COPY data ended in the middle of a row")]
    Unfinished,
    #[error("the COPY plan has no column list")]
    NoColumns,
}

/// Scanner state between calls, so a row split into many pieces is scanned once (linear time).
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bytes of `pending` already scanned without finding the end of the row.
    at: usize,
    /// Text: the previous byte was an unescaped backslash.
    escaped: bool,
    /// CSV: inside a quoted section; the previous byte was the escape character inside quotes.
    in_quote: bool,
    quote_escape: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Text/CSV: the header line comes next. Binary: the file header comes next.
    Header,
    Rows,
    /// Binary: the trailer was seen; nothing may follow.
    Done,
}

/// One field of a text or CSV row: its raw bytes' range in the row, and whether it had quotes.
#[derive(Debug, Clone, Copy)]
struct Field {
    start: usize,
    end: usize,
    quoted: bool,
}

/// Rewrites the CopyData payloads of one COPY TO.
pub struct CopyRewriter {
    format: CopyFormat,
    delimiter: u8,
    null: Vec<u8>,
    quote: u8,
    escape: u8,
    columns: Vec<Option<CopyColumn>>,
    pending: BytesMut,
    scan: Scan,
    stage: Stage,
    limit: usize,
    fields: Vec<Field>,
    value: Vec<u8>,
}

impl CopyRewriter {
    /// A rewriter for `plan`; `key` is the session's `hash` key; `limit` bounds the unfinished row
    /// held between messages.
    pub fn new(plan: &CopyPlan, key: &[u8], limit: usize) -> Result<Self, CopyError> {
        let columns = plan
            .columns
            .as_ref()
            .ok_or(CopyError::NoColumns)?
            .iter()
            .map(|c| {
                c.as_ref().map(|c| CopyColumn {
                    function: c.function.keyed(key),
                    type_oid: c.type_oid,
                })
            })
            .collect();
        let header = plan.header || plan.format == CopyFormat::Binary;
        Ok(Self {
            format: plan.format,
            delimiter: plan.delimiter,
            null: plan.null.clone(),
            quote: plan.quote,
            escape: plan.escape,
            columns,
            pending: BytesMut::new(),
            scan: Scan::default(),
            stage: if header { Stage::Header } else { Stage::Rows },
            limit,
            fields: Vec::new(),
            value: Vec::new(),
        })
    }

    /// Take one CopyData payload; append the masked form of every row it completes to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), CopyError> {
        if self.stage == Stage::Done && !data.is_empty() {
            return Err(CopyError::Malformed("data after the binary trailer"));
        }
        self.pending.extend_from_slice(data);
        // Taken out while rows are parsed from it, so the row code can borrow `self` mutably.
        let mut pending = std::mem::take(&mut self.pending);
        let consumed = match self.format {
            CopyFormat::Binary => self.binary(&pending, out),
            CopyFormat::Text | CopyFormat::Csv => self.lines(&pending, out),
        };
        if let Ok(n) = consumed {
            pending.advance(n);
        }
        self.pending = pending;
        consumed?;
        if self.pending.len() > self.limit {
            return Err(CopyError::TooLarge {
                size: self.pending.len(),
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// The server said CopyDone: every row must be complete (and the binary trailer seen).
    pub fn finish(&self) -> Result<(), CopyError> {
        let complete = match self.format {
            CopyFormat::Binary => self.stage == Stage::Done,
            CopyFormat::Text | CopyFormat::Csv => true,
        };
        if self.pending.is_empty() && complete {
            Ok(())
        } else {
            Err(CopyError::Unfinished)
        }
    }

    // --- text and CSV -------------------------------------------------------------------------

    /// Rewrite every whole line of `input`; returns the bytes consumed.
    fn lines(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, CopyError> {
        let mut start = 0usize;
        loop {
            let rest = input.get(start..).unwrap_or_default();
            let Some((row_len, ending_len)) = self.find_line_end(rest) else {
                return Ok(start);
            };
            let line = rest.get(..row_len + ending_len).unwrap_or_default();
            let (row, ending) = line.split_at(row_len.min(line.len()));
            if self.stage == Stage::Header {
                // Column names, not data: checked for shape and passed on as they are.
                let n = self.split(row)?;
                self.check_count(n)?;
                out.extend_from_slice(row);
                self.stage = Stage::Rows;
            } else {
                self.row(row, out)?;
            }
            out.extend_from_slice(ending);
            start += line.len();
        }
    }

    /// Scan `rest` (the unconsumed input) for the end of the current line: (row length, length of
    /// the line ending). Resumes where the previous call stopped.
    fn find_line_end(&mut self, rest: &[u8]) -> Option<(usize, usize)> {
        let csv = self.format == CopyFormat::Csv;
        let mut s = self.scan;
        while let Some(&b) = rest.get(s.at) {
            let at = s.at;
            s.at += 1;
            if csv {
                if s.in_quote {
                    if s.quote_escape {
                        s.quote_escape = false;
                    } else if b == self.escape && self.escape != self.quote {
                        s.quote_escape = true;
                    } else if b == self.quote {
                        s.in_quote = false;
                    }
                    continue;
                }
                if b == self.quote {
                    s.in_quote = true;
                    continue;
                }
            } else if s.escaped {
                s.escaped = false;
                continue;
            } else if b == b'\\' {
                s.escaped = true;
                continue;
            }
            if b == b'\n' {
                self.scan = Scan::default();
                // A carriage return right before is part of the line ending (Windows servers):
                // PostgreSQL escapes (text) or quotes (CSV) one that is data.
                let cr = at > 0 && rest.get(at - 1) == Some(&b'\r') && !self.cr_is_data(rest, at);
                return Some(if cr { (at - 1, 2) } else { (at, 1) });
            }
        }
        self.scan = s;
        None
    }

    /// Whether the CR just before `rest[at]` is escaped (text: an odd run of backslashes before
    /// it). In CSV an unquoted CR is never data.
    fn cr_is_data(&self, rest: &[u8], at: usize) -> bool {
        if self.format == CopyFormat::Csv {
            return false;
        }
        let before = rest.get(..at.saturating_sub(1)).unwrap_or_default();
        before.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
    }

    /// Split a row (without its line ending) into `self.fields`; returns the number of fields.
    fn split(&mut self, row: &[u8]) -> Result<usize, CopyError> {
        self.fields.clear();
        let csv = self.format == CopyFormat::Csv;
        let mut start = 0usize;
        let mut quoted = false;
        let mut in_quote = false;
        let mut escaped = false;
        for (i, &b) in row.iter().enumerate() {
            if csv {
                if in_quote {
                    if escaped {
                        escaped = false;
                    } else if b == self.escape && self.escape != self.quote {
                        escaped = true;
                    } else if b == self.quote {
                        in_quote = false;
                    }
                    continue;
                }
                if b == self.quote {
                    in_quote = true;
                    quoted = true;
                    continue;
                }
            } else if escaped {
                escaped = false;
                continue;
            } else if b == b'\\' {
                escaped = true;
                continue;
            }
            if b == self.delimiter {
                self.fields.push(Field {
                    start,
                    end: i,
                    quoted,
                });
                start = i + 1;
                quoted = false;
            }
        }
        if in_quote {
            return Err(CopyError::Malformed("unterminated quoted CSV field"));
        }
        if escaped {
            return Err(CopyError::Malformed("row ends with a lone backslash"));
        }
        self.fields.push(Field {
            start,
            end: row.len(),
            quoted,
        });
        Ok(self.fields.len())
    }

    fn check_count(&self, found: usize) -> Result<(), CopyError> {
        if found == self.columns.len() {
            Ok(())
        } else {
            Err(CopyError::FieldCount {
                found,
                expected: self.columns.len(),
            })
        }
    }

    fn row(&mut self, row: &[u8], out: &mut BytesMut) -> Result<(), CopyError> {
        let n = self.split(row)?;
        self.check_count(n)?;
        out.reserve(row.len() + 32);
        for i in 0..n {
            let (Some(field), Some(column)) = (self.fields.get(i).copied(), self.columns.get(i))
            else {
                return Err(CopyError::Malformed("field index"));
            };
            if i > 0 {
                out.put_u8(self.delimiter);
            }
            let raw = row.get(field.start..field.end).unwrap_or_default();
            let is_null = !field.quoted && raw == self.null.as_slice();
            let Some(column) = column.as_ref().filter(|_| !is_null) else {
                out.extend_from_slice(raw);
                continue;
            };
            self.value.clear();
            match self.format {
                CopyFormat::Csv => unquote_csv(raw, self.quote, self.escape, &mut self.value),
                _ => unescape_text(raw, &mut self.value),
            }
            match column.function.apply(column.type_oid, false, &self.value) {
                None => out.extend_from_slice(&self.null),
                Some(masked) => match self.format {
                    CopyFormat::Csv => self.write_csv(&masked, field.quoted, out),
                    _ => escape_text(&masked, self.delimiter, out),
                },
            }
        }
        Ok(())
    }

    fn write_csv(&self, value: &[u8], was_quoted: bool, out: &mut BytesMut) {
        let special =
            |b: &u8| *b == self.delimiter || *b == self.quote || matches!(b, b'\n' | b'\r');
        // Quoted when the server quoted the original (FORCE_QUOTE), when the value would read as
        // NULL, when it holds a special character, or when it is the end-of-data marker.
        let quote = was_quoted
            || value == self.null.as_slice()
            || value.iter().any(special)
            || value == b"\\.";
        if !quote {
            out.extend_from_slice(value);
            return;
        }
        out.put_u8(self.quote);
        for &b in value {
            if b == self.quote || b == self.escape {
                out.put_u8(self.escape);
            }
            out.put_u8(b);
        }
        out.put_u8(self.quote);
    }

    // --- binary -------------------------------------------------------------------------------

    /// Rewrite the header and every whole tuple of `input`; returns the bytes consumed.
    fn binary(&mut self, input: &[u8], out: &mut BytesMut) -> Result<usize, CopyError> {
        let mut at = 0usize;
        if self.stage == Stage::Header {
            let Some(len) = self.binary_header(input)? else {
                return Ok(0);
            };
            out.extend_from_slice(input.get(..len).unwrap_or_default());
            at = len;
            self.stage = Stage::Rows;
        }
        while self.stage == Stage::Rows {
            let rest = input.get(at..).unwrap_or_default();
            let Some(count) = read_i16(rest, 0) else {
                break;
            };
            if count == -1 {
                out.put_i16(-1);
                at += 2;
                self.stage = Stage::Done;
                break;
            }
            let expected = self.columns.len();
            if usize::try_from(count).ok() != Some(expected) {
                return Err(CopyError::FieldCount {
                    found: usize::try_from(count).unwrap_or(0),
                    expected,
                });
            }
            // Is the whole tuple here? Walk the length words only.
            let mut end = 2usize;
            let mut whole = true;
            for _ in 0..expected {
                let Some(len) = read_i32(rest, end) else {
                    whole = false;
                    break;
                };
                end += 4;
                if len == -1 {
                    continue;
                }
                let len = usize::try_from(len)
                    .map_err(|_| CopyError::Malformed("negative field length"))?;
                if len > self.limit {
                    return Err(CopyError::TooLarge {
                        size: len,
                        limit: self.limit,
                    });
                }
                end += len;
                if end > rest.len() {
                    whole = false;
                    break;
                }
            }
            if !whole {
                break;
            }
            let tuple = rest.get(..end).unwrap_or_default();
            write_binary_tuple(tuple, &self.columns, out)?;
            at += end;
        }
        if self.stage == Stage::Done && at < input.len() {
            return Err(CopyError::Malformed("data after the binary trailer"));
        }
        Ok(at)
    }

    /// The length of the binary file header once it is all in `p`.
    fn binary_header(&self, p: &[u8]) -> Result<Option<usize>, CopyError> {
        let sig = BINARY_SIGNATURE.len();
        let have = p.len().min(sig);
        if p.get(..have) != BINARY_SIGNATURE.get(..have) {
            return Err(CopyError::Malformed("bad binary COPY signature"));
        }
        let (Some(flags), Some(ext)) = (read_i32(p, sig), read_i32(p, sig + 4)) else {
            return Ok(None);
        };
        if flags & BINARY_FLAG_OIDS != 0 {
            return Err(CopyError::Malformed("binary COPY with OIDs"));
        }
        let ext = usize::try_from(ext)
            .map_err(|_| CopyError::Malformed("negative header extension length"))?;
        if ext > self.limit {
            return Err(CopyError::TooLarge {
                size: ext,
                limit: self.limit,
            });
        }
        let len = sig + 8 + ext;
        Ok((p.len() >= len).then_some(len))
    }
}

fn read_i16(buf: &[u8], at: usize) -> Option<i16> {
    let bytes: [u8; 2] = buf.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(i16::from_be_bytes(bytes))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

/// Write one whole binary tuple (`count`, then length-prefixed fields), masking planned fields.
fn write_binary_tuple(
    tuple: &[u8],
    columns: &[Option<CopyColumn>],
    out: &mut BytesMut,
) -> Result<(), CopyError> {
    out.reserve(tuple.len() + 32);
    out.extend_from_slice(tuple.get(..2).unwrap_or_default());
    let mut at = 2usize;
    for column in columns {
        let len = read_i32(tuple, at).ok_or(CopyError::Malformed("truncated tuple"))?;
        at += 4;
        if len == -1 {
            out.put_i32(-1);
            continue;
        }
        let n = usize::try_from(len).map_err(|_| CopyError::Malformed("negative field length"))?;
        let value = tuple
            .get(at..at + n)
            .ok_or(CopyError::Malformed("truncated tuple"))?;
        at += n;
        match column {
            None => {
                out.put_i32(len);
                out.extend_from_slice(value);
            }
            Some(c) => match c.function.apply(c.type_oid, true, value) {
                None => out.put_i32(-1),
                Some(masked) => {
                    let len = i32::try_from(masked.len())
                        .map_err(|_| CopyError::Malformed("masked value too large"))?;
                    out.put_i32(len);
                    out.extend_from_slice(&masked);
                }
            },
        }
    }
    Ok(())
}

/// Decode a text-format field (PostgreSQL's COPY FROM rules for backslash sequences).
fn unescape_text(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&c) = raw.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            other => out.push(other),
        }
    }
}

/// Encode a value for the text format as PostgreSQL's COPY TO does.
fn escape_text(value: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in value {
        let letter = match b {
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x0b => Some(b'v'),
            _ => None,
        };
        if let Some(l) = letter {
            out.put_u8(b'\\');
            out.put_u8(l);
        } else if b == b'\\' || b == delimiter {
            out.put_u8(b'\\');
            out.put_u8(b);
        } else {
            out.put_u8(b);
        }
    }
}

/// Decode a CSV field: quoted sections lose their quotes and escapes, the rest is literal.
fn unquote_csv(raw: &[u8], quote: u8, escape: u8, out: &mut Vec<u8>) {
    let mut in_quote = false;
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if !in_quote {
            if b == quote {
                in_quote = true;
            } else {
                out.push(b);
            }
            continue;
        }
        if b == escape {
            if let Some(&next) = raw.get(i).filter(|&&n| n == quote || n == escape) {
                out.push(next);
                i += 1;
                continue;
            }
        }
        if b == quote {
            in_quote = false;
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
