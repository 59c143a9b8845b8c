//! Row shapes for masking: which RowDescription applies to each DataRow the server sends.
//!
//! Active only when the session's scope masks something. The client half records, in order, the
//! responses each message it forwards will produce ([`Expect`]); the server half pops them as the
//! answers arrive, so it always knows whether a DataRow belongs to a simple Query (the inline
//! RowDescription applies) or to an Execute of a portal (that portal's description applies). An
//! Execute of a portal the client never described gets a Describe added by the gateway, whose
//! answer is consumed here and not relayed: the gateway always knows the row shape, with the
//! result formats the client bound. A DataRow whose shape is still unknown ends the session
//! instead of passing unmasked (fail closed).
//!
//! COPY TO output has no row description: a simple Query whose decision carried COPY plans records
//! them with its expectation, and each CopyOutResponse takes the next one. Its CopyData then goes
//! through a [`CopyRewriter`]. CopyOutResponse without a plan, or one whose format or width
//! disagrees with the plan, ends the session (fail closed).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

use crate::mask::copy::UNSAFE_ENCODINGS;
use crate::mask::{CopyFormat, CopyPlan, CopyRewriter, MaskPlan, RowMasker};
use crate::net::messages::payload::Payload;
use crate::net::messages::{parse_parameter_status, parse_row_description, Cursor, ErrorFields};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal {
        portal: String,
        injected: bool,
    },
    Execute {
        portal: String,
    },
    Close,
    Sync,
    /// `copies`: the plans of the Query's `COPY … TO STDOUT` statements; `next` is the one the
    /// next CopyOutResponse takes.
    Query {
        copies: Option<Arc<[CopyPlan]>>,
        next: usize,
    },
    FunctionCall,
}

/// Shared between the two halves of one session's relay.
#[derive(Default)]
pub struct Expectations {
    queue: Mutex<VecDeque<Expect>>,
}

/// What the server half does with a message.
pub enum Action {
    Forward,
    Replace(Bytes),
    Swallow,
}

fn first_cstr(body: &[u8]) -> Result<String, String> {
    Cursor::new(body)
        .read_cstr()
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

/// The client half: records expectations, adds Describe before undescribed Executes.
#[derive(Default)]
pub struct ClientSide {
    described: HashSet<String>,
}

impl ClientSide {
    /// Called for every whole client message about to be forwarded, with the COPY plans of a
    /// Query's decision. Returns a message to send before it (an added Describe), if any.
    pub fn before_forward(
        &mut self,
        exp: &Expectations,
        tag: u8,
        body: &[u8],
        copies: Option<&Arc<[CopyPlan]>>,
    ) -> Result<Option<Bytes>, String> {
        let mut q = exp.queue.lock();
        let mut inject = None;
        match tag {
            b'P' => q.push_back(Expect::Parse),
            b'B' => {
                let portal = first_cstr(body)?;
                self.described.remove(&portal);
                q.push_back(Expect::Bind);
            }
            b'D' => {
                let mut c = Cursor::new(body);
                let kind = c.read_u8().map_err(|e| e.to_string())?;
                let name = c.read_cstr().map_err(|e| e.to_string())?.to_owned();
                if kind == b'P' {
                    self.described.insert(name.clone());
                    q.push_back(Expect::DescribePortal {
                        portal: name,
                        injected: false,
                    });
                } else {
                    q.push_back(Expect::DescribeStatement);
                }
            }
            b'E' => {
                let portal = first_cstr(body)?;
                if !self.described.contains(&portal) {
                    let mut p = Payload::new(b'D');
                    p.put_u8(b'P').put_cstr(&portal);
                    inject = Some(p.finish());
                    self.described.insert(portal.clone());
                    q.push_back(Expect::DescribePortal {
                        portal: portal.clone(),
                        injected: true,
                    });
                }
                q.push_back(Expect::Execute { portal });
            }
            b'C' => q.push_back(Expect::Close),
            b'S' => q.push_back(Expect::Sync),
            b'Q' => q.push_back(Expect::Query {
                copies: copies.cloned(),
                next: 0,
            }),
            b'F' => q.push_back(Expect::FunctionCall),
            _ => {}
        }
        Ok(inject)
    }

    /// Messages whose whole body the client half needs.
    pub fn inspects(tag: u8) -> bool {
        matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'Q' | b'F')
    }
}

/// The server half: applies the mask plan to DataRows and COPY plans to CopyData.
pub struct ServerSide {
    plan: Arc<MaskPlan>,
    portals: HashMap<String, Option<RowMasker>>,
    /// The masker of the current result of a simple Query.
    simple: Option<RowMasker>,
    /// The rewriter of the COPY TO in progress, when its plan masks a column.
    copy: Option<CopyRewriter>,
    /// Largest unfinished COPY row held between CopyData messages.
    copy_limit: usize,
    /// The session's client_encoding, from ParameterStatus.
    client_encoding: String,
}

impl ServerSide {
    pub fn new(plan: Arc<MaskPlan>, copy_limit: usize, client_encoding: &str) -> Self {
        Self {
            plan,
            portals: HashMap::new(),
            simple: None,
            copy: None,
            copy_limit,
            client_encoding: client_encoding.to_owned(),
        }
    }

    /// Whether the relay must hand over this message whole (static set, plus CopyData and
    /// CopyDone while a COPY is being rewritten).
    pub fn inspects_now(&self, tag: u8) -> bool {
        Self::inspects(tag) || (self.copy.is_some() && matches!(tag, b'd' | b'c'))
    }

    /// Messages whose whole body the server half needs.
    pub fn inspects(tag: u8) -> bool {
        matches!(
            tag,
            b'1' | b'2'
                | b't'
                | b'T'
                | b'n'
                | b'D'
                | b'C'
                | b's'
                | b'I'
                | b'3'
                | b'E'
                | b'N'
                | b'Z'
                | b'H'
                | b'S'
        )
    }

    pub fn on_message(
        &mut self,
        exp: &Expectations,
        tag: u8,
        frame: &Bytes,
    ) -> Result<Action, String> {
        let body = frame.get(5..).unwrap_or_default();
        let mut q = exp.queue.lock();
        let action = match tag {
            b'1' | b'2' | b'3' => {
                q.pop_front();
                Action::Forward
            }
            b't' => Action::Forward,
            b'T' => {
                let columns =
                    parse_row_description(body).map_err(|e| format!("RowDescription: {e}"))?;
                match q.front().cloned() {
                    Some(Expect::DescribeStatement) => {
                        q.pop_front();
                        Action::Forward
                    }
                    Some(Expect::DescribePortal { portal, injected }) => {
                        q.pop_front();
                        self.portals.insert(portal, self.plan.for_columns(&columns));
                        if injected {
                            Action::Swallow
                        } else {
                            Action::Forward
                        }
                    }
                    _ => {
                        self.simple = self.plan.for_columns(&columns);
                        Action::Forward
                    }
                }
            }
            b'n' => match q.front().cloned() {
                Some(Expect::DescribeStatement) => {
                    q.pop_front();
                    Action::Forward
                }
                Some(Expect::DescribePortal { portal, injected }) => {
                    q.pop_front();
                    self.portals.insert(portal, None);
                    if injected {
                        Action::Swallow
                    } else {
                        Action::Forward
                    }
                }
                _ => Action::Forward,
            },
            b'D' => {
                let masker = match q.front() {
                    Some(Expect::Execute { portal }) => match self.portals.get(portal) {
                        Some(m) => m.as_ref(),
                        None => {
                            return Err(format!(
                                "a row of portal \"{portal}\" arrived before its description"
                            ))
                        }
                    },
                    _ => self.simple.as_ref(),
                };
                match masker {
                    Some(m) => {
                        Action::Replace(m.mask_frame(frame).map_err(|e| format!("DataRow: {e}"))?)
                    }
                    None => Action::Forward,
                }
            }
            b'C' | b's' | b'I' => {
                if matches!(q.front(), Some(Expect::Execute { .. })) {
                    q.pop_front();
                } else {
                    self.simple = None;
                }
                self.copy = None;
                Action::Forward
            }
            b'H' => {
                let plan = match q.front_mut() {
                    Some(Expect::Query {
                        copies: Some(copies),
                        next,
                    }) => {
                        let plan = copies.get(*next).cloned();
                        *next += 1;
                        plan
                    }
                    _ => None,
                };
                // Without a plan there is no telling which fields to mask: never relay it.
                let plan = plan.ok_or_else(|| {
                    "COPY TO output arrived for a statement pgward has no COPY plan for".to_owned()
                })?;
                self.start_copy(body, &plan)?;
                Action::Forward
            }
            b'd' => match self.copy.as_mut() {
                Some(rewriter) => {
                    let mut out = BytesMut::with_capacity(body.len() + 64);
                    out.put_u8(b'd');
                    out.put_i32(0);
                    rewriter
                        .feed(body, &mut out)
                        .map_err(|e| format!("CopyData: {e}"))?;
                    if out.len() == 5 {
                        Action::Swallow
                    } else {
                        let len = i32::try_from(out.len() - 1)
                            .map_err(|_| "CopyData too large".to_owned())?;
                        if let Some(slot) = out.get_mut(1..5) {
                            slot.copy_from_slice(&len.to_be_bytes());
                        }
                        Action::Replace(out.freeze())
                    }
                }
                None => Action::Forward,
            },
            b'c' => {
                if let Some(rewriter) = self.copy.take() {
                    rewriter.finish().map_err(|e| format!("CopyDone: {e}"))?;
                }
                Action::Forward
            }
            b'S' => {
                if let Ok((name, value)) = parse_parameter_status(body) {
                    if name.eq_ignore_ascii_case("client_encoding") {
                        value.clone_into(&mut self.client_encoding);
                    }
                }
                Action::Forward
            }
            b'E' | b'N' => {
                if tag == b'E' {
                    // A failed COPY sends no CopyDone; its unfinished row is dropped.
                    self.copy = None;
                }
                // The server skips to Sync after an error in the extended protocol.
                if tag == b'E'
                    && !matches!(q.front(), Some(Expect::Query { .. } | Expect::FunctionCall))
                {
                    while q.front().is_some_and(|e| *e != Expect::Sync) {
                        q.pop_front();
                    }
                }
                self.simple = None;
                // DETAIL and CONTEXT can quote row values (a unique violation's key): drop them.
                Action::Replace(scrub(tag, body)?)
            }
            b'Z' => {
                while let Some(e) = q.pop_front() {
                    if matches!(
                        e,
                        Expect::Sync | Expect::Query { .. } | Expect::FunctionCall
                    ) {
                        break;
                    }
                }
                self.simple = None;
                self.copy = None;
                Action::Forward
            }
            _ => Action::Forward,
        };
        Ok(action)
    }

    /// CopyOutResponse: check it against the plan and start rewriting when the plan masks.
    fn start_copy(&mut self, body: &[u8], plan: &CopyPlan) -> Result<(), String> {
        let mut c = Cursor::new(body);
        let overall = c.read_u8().map_err(|e| format!("CopyOutResponse: {e}"))?;
        let width = c.read_i16().map_err(|e| format!("CopyOutResponse: {e}"))?;
        if (overall == 1) != (plan.format == CopyFormat::Binary) {
            return Err("CopyOutResponse's format differs from the COPY plan's".into());
        }
        let Some(columns) = plan.columns.as_ref() else {
            self.copy = None;
            return Ok(());
        };
        if usize::try_from(width).ok() != Some(columns.len()) {
            return Err(format!(
                "COPY output has {width} columns, pgward's plan {} (the table changed since the \
                 session started? reconnect)",
                columns.len()
            ));
        }
        if !plan.masks() {
            self.copy = None;
            return Ok(());
        }
        let encoding: String = self
            .client_encoding
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_uppercase();
        if plan.format != CopyFormat::Binary && UNSAFE_ENCODINGS.contains(&encoding.as_str()) {
            return Err(format!(
                "COPY text and CSV output in client_encoding {} cannot be split safely; use UTF8 \
                 or the binary format",
                self.client_encoding
            ));
        }
        let rewriter =
            CopyRewriter::new(plan, self.plan.key(), self.copy_limit).map_err(|e| e.to_string())?;
        self.copy = Some(rewriter);
        Ok(())
    }
}

fn scrub(tag: u8, body: &[u8]) -> Result<Bytes, String> {
    let mut fields = ErrorFields::parse(body).map_err(|e| e.to_string())?;
    fields
        .fields
        .retain(|(code, _)| !matches!(code, b'D' | b'W' | b'q'));
    Ok(crate::net::messages::rebuild(tag, &fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::MaskFunction;
    use crate::net::messages::{build_data_row, parse_data_row};

    fn plan() -> Arc<MaskPlan> {
        let mut m = HashMap::new();
        m.insert((100, 2), MaskFunction::Email);
        Arc::new(MaskPlan::new(m))
    }

    fn row_description(format: i16) -> Bytes {
        let mut p = Payload::new(b'T');
        p.put_i16(2);
        for (name, attnum, ty) in [("id", 1i16, 23u32), ("email", 2, 25)] {
            p.put_cstr(name)
                .put_u32(100)
                .put_i16(attnum)
                .put_u32(ty)
                .put_i16(-1)
                .put_i32(-1)
                .put_i16(format);
        }
        p.finish()
    }

    fn data_row() -> Bytes {
        build_data_row([Some(&b"1"[..]), Some(&b"x@y.io"[..])].into_iter(), 16).unwrap()
    }

    fn msg(tag: u8, body: &[u8]) -> (u8, Vec<u8>) {
        (tag, body.to_vec())
    }

    #[test]
    fn execute_without_describe_gets_an_injected_describe_whose_answer_is_swallowed() {
        let exp = Expectations::default();
        let mut client = ClientSide::default();
        let mut server = ServerSide::new(plan(), 1 << 20, "UTF8");
        for (tag, body) in [
            msg(b'P', b"\0select\0\0\0"),
            msg(b'B', b"\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            let inject = client.before_forward(&exp, tag, &body, None).unwrap();
            assert_eq!(inject.is_some(), tag == b'E');
        }
        let answers: Vec<(u8, Bytes)> = vec![
            (b'1', Bytes::from_static(b"1\0\0\0\x04")),
            (b'2', Bytes::from_static(b"2\0\0\0\x04")),
            (b'T', row_description(0)),
            (b'D', data_row()),
            (b'C', Bytes::from_static(b"C\0\0\0\x0bSELECT 1\0")),
            (b'Z', Bytes::from_static(b"Z\0\0\0\x05I")),
        ];
        let mut seen = Vec::new();
        for (tag, frame) in answers {
            match server.on_message(&exp, tag, &frame).unwrap() {
                Action::Swallow => seen.push(format!("{}-swallowed", tag as char)),
                Action::Replace(f) => {
                    let fields = parse_data_row(&f[5..]).unwrap();
                    assert_eq!(fields[1], Some(&b"****@y.io"[..]));
                    seen.push(format!("{}-masked", tag as char));
                }
                Action::Forward => seen.push((tag as char).to_string()),
            }
        }
        assert_eq!(seen, vec!["1", "2", "T-swallowed", "D-masked", "C", "Z"]);
        assert!(exp.queue.lock().is_empty());
    }

    #[test]
    fn simple_query_rows_use_the_inline_description() {
        let exp = Expectations::default();
        let mut client = ClientSide::default();
        let mut server = ServerSide::new(plan(), 1 << 20, "UTF8");
        client
            .before_forward(&exp, b'Q', b"select\0", None)
            .unwrap();
        assert!(matches!(
            server.on_message(&exp, b'T', &row_description(0)).unwrap(),
            Action::Forward
        ));
        assert!(matches!(
            server.on_message(&exp, b'D', &data_row()).unwrap(),
            Action::Replace(_)
        ));
    }

    fn copy_plan(columns: Option<Vec<Option<crate::mask::CopyColumn>>>) -> Arc<[CopyPlan]> {
        Arc::from(vec![CopyPlan {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            quote: b'"',
            escape: b'"',
            header: false,
            columns,
        }])
    }

    fn copy_out_response(width: i16) -> Bytes {
        let mut p = Payload::new(b'H');
        p.put_u8(0).put_i16(width);
        for _ in 0..width {
            p.put_i16(0);
        }
        p.finish()
    }

    fn copy_data(body: &[u8]) -> Bytes {
        let mut p = Payload::new(b'd');
        p.put_bytes(body);
        p.finish()
    }

    #[test]
    fn copy_out_of_a_planned_query_is_masked() {
        let exp = Expectations::default();
        let mut client = ClientSide::default();
        let mut server = ServerSide::new(plan(), 1 << 20, "UTF8");
        let plans = copy_plan(Some(vec![
            None,
            Some(crate::mask::CopyColumn {
                function: MaskFunction::Email,
                type_oid: 25,
            }),
        ]));
        client
            .before_forward(&exp, b'Q', b"copy t to stdout\0", Some(&plans))
            .unwrap();
        assert!(matches!(
            server
                .on_message(&exp, b'H', &copy_out_response(2))
                .unwrap(),
            Action::Forward
        ));
        assert!(server.inspects_now(b'd'));
        // A row split over two CopyData messages comes out whole, once.
        assert!(matches!(
            server.on_message(&exp, b'd', &copy_data(b"1\tx@")).unwrap(),
            Action::Swallow
        ));
        match server
            .on_message(&exp, b'd', &copy_data(b"y.io\n"))
            .unwrap()
        {
            Action::Replace(f) => assert_eq!(&f[5..], b"1\t****@y.io\n"),
            _ => panic!("expected a rewritten CopyData"),
        }
        assert!(matches!(
            server
                .on_message(&exp, b'c', &Bytes::from_static(b"c\0\0\0\x04"))
                .unwrap(),
            Action::Forward
        ));
        assert!(!server.inspects_now(b'd'));
    }

    #[test]
    fn copy_out_whose_width_differs_from_the_plan_fails_closed() {
        let exp = Expectations::default();
        let mut client = ClientSide::default();
        let mut server = ServerSide::new(plan(), 1 << 20, "UTF8");
        let plans = copy_plan(Some(vec![Some(crate::mask::CopyColumn {
            function: MaskFunction::Email,
            type_oid: 25,
        })]));
        client
            .before_forward(&exp, b'Q', b"copy t to stdout\0", Some(&plans))
            .unwrap();
        assert!(server
            .on_message(&exp, b'H', &copy_out_response(2))
            .is_err());
    }

    #[test]
    fn copy_out_fails_closed() {
        let exp = Expectations::default();
        let mut server = ServerSide::new(plan(), 1 << 20, "UTF8");
        assert!(server
            .on_message(&exp, b'H', &Bytes::from_static(b"H\0\0\0\x07\0\0\0"))
            .is_err());
    }
}
