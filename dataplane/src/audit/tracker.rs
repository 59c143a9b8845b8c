//! Which statement each server answer belongs to, and the record it completes.
//!
//! The client half pushes a [`Pending`] for every statement it forwards (each part of a simple
//! Query, each Execute, each denial's substitute), tagged with its Sync/Query segment. The server
//! half completes the oldest pending statement of the current segment on CommandComplete,
//! EmptyQueryResponse, PortalSuspended or ErrorResponse; after an error the server skips the rest
//! of the segment, and so does the tracker. Rows and a SHA-256 of the DataRow (and COPY) bytes the
//! client received, after masking, accumulate meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::record::{decision_fields, now_rfc3339, session_fields, Event, JsonObject, ScopeRef};
use super::AuditMeta;
use crate::decide::types::Refusal;
use crate::net::messages::Cursor;

/// Longest parameter value kept in a record; longer ones are cut (and say so).
const MAX_PARAM_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub enum Verdict {
    Allow,
    Rewritten,
    Deny(Arc<Refusal>),
}

/// A prepared statement as the client parsed it (the audit remembers its text for Executes).
#[derive(Debug)]
pub struct Prepared {
    pub text: Arc<str>,
    pub fingerprint: Option<u64>,
    pub meta: Arc<AuditMeta>,
    pub rewritten: bool,
}

#[derive(Debug)]
pub struct Pending {
    pub segment: u64,
    pub started: Instant,
    pub time: String,
    pub source: &'static str,
    pub text: Arc<str>,
    pub fingerprint: Option<u64>,
    pub part_kind: Option<Arc<str>>,
    /// The classes of this part, when the text has several statements of different classes.
    pub part_class: Option<Arc<str>>,
    pub meta: Arc<AuditMeta>,
    pub verdict: Verdict,
    pub params: Option<String>,
}

impl Pending {
    pub fn new(
        segment: u64,
        source: &'static str,
        text: Arc<str>,
        fingerprint: Option<u64>,
        meta: Arc<AuditMeta>,
        verdict: Verdict,
    ) -> Self {
        Self {
            segment,
            started: Instant::now(),
            time: now_rfc3339(),
            source,
            text,
            fingerprint,
            part_kind: None,
            part_class: None,
            meta,
            verdict,
            params: None,
        }
    }
}

/// How the server answered a statement.
pub enum Completion<'a> {
    Command(&'a str),
    Empty,
    Suspended,
    Error(&'a str),
}

/// Shared by both halves of one session's relay.
#[derive(Default)]
pub struct Tracker {
    pending: Mutex<VecDeque<Pending>>,
}

/// The server half's running totals for the statement whose answer is arriving.
pub struct ResultState {
    rows: u64,
    digest: Sha256,
    pub masked: Option<Arc<[String]>>,
}

impl Default for ResultState {
    fn default() -> Self {
        Self {
            rows: 0,
            digest: Sha256::new(),
            masked: None,
        }
    }
}

impl ResultState {
    pub fn data_row(&mut self) {
        self.rows += 1;
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
    }

    fn reset(&mut self) -> (u64, String, Option<Arc<[String]>>) {
        let digest = std::mem::take(&mut self.digest).finalize();
        let hex = digest.iter().fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
        let rows = std::mem::take(&mut self.rows);
        (rows, hex, self.masked.take())
    }
}

impl Tracker {
    pub fn push(&self, p: Pending) {
        self.pending.lock().push_back(p);
    }

    /// The server answered the current statement of segment `segment`. Returns the records to
    /// emit: the completed statement, and after an error the denials the server skipped.
    pub fn complete(
        &self,
        segment: u64,
        how: &Completion<'_>,
        result: &mut ResultState,
        scope: &ScopeRef<'_>,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|p| p.segment < segment) {
            if let Some(stale) = pending.pop_front() {
                out.extend(skipped(stale, scope));
            }
        }
        let current = pending.front().is_some_and(|p| p.segment == segment);
        let (rows, digest, masked) = result.reset();
        if current {
            if let Some(p) = pending.pop_front() {
                out.push(finish(p, how, rows, &digest, masked.as_deref(), scope));
            }
        }
        if matches!(how, Completion::Error(_)) {
            // The server skips to the end of the segment: what was queued in it never runs.
            while pending.front().is_some_and(|p| p.segment == segment) {
                if let Some(p) = pending.pop_front() {
                    out.extend(skipped(p, scope));
                }
            }
        }
        out
    }

    /// ReadyForQuery ended every segment before `done`.
    pub fn segment_done(&self, done: u64, scope: &ScopeRef<'_>) -> Vec<Event> {
        let mut out = Vec::new();
        let mut pending = self.pending.lock();
        while pending.front().is_some_and(|p| p.segment < done) {
            if let Some(p) = pending.pop_front() {
                out.extend(skipped(p, scope));
            }
        }
        out
    }
}

fn skipped(p: Pending, scope: &ScopeRef<'_>) -> Option<Event> {
    // A denial is on record even when the server never reached its substitute; an allowed
    // statement the server skipped did not run and has no record.
    if let Verdict::Deny(r) = &p.verdict {
        let sqlstate = r.sqlstate.clone();
        return Some(finish(p, &Completion::Error(&sqlstate), 0, "", None, scope));
    }
    None
}

fn rows_of(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

fn finish(
    p: Pending,
    how: &Completion<'_>,
    rows_sent: u64,
    digest: &str,
    masked: Option<&[String]>,
    scope: &ScopeRef<'_>,
) -> Event {
    let duration = u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (decision, refusal) = match &p.verdict {
        Verdict::Deny(r) => ("deny", Some(r)),
        _ => ("allow", None),
    };
    let (command, rows, sqlstate): (Option<String>, Option<u64>, Option<String>) = match how {
        Completion::Command(tag) => {
            // "INSERT 0 5" → INSERT, 5; "CREATE TABLE" → CREATE TABLE; "SHOW" counts its rows.
            let words: Vec<&str> = tag
                .split(' ')
                .filter(|w| !w.bytes().all(|b| b.is_ascii_digit()))
                .collect();
            let rows = rows_of(tag).or((rows_sent > 0).then_some(rows_sent));
            (Some(words.join(" ")), rows, None)
        }
        Completion::Empty => (None, None, None),
        Completion::Suspended => (None, Some(rows_sent), None),
        Completion::Error(code) => (
            None,
            None,
            Some(refusal.map_or_else(|| (*code).to_owned(), |r| r.sqlstate.clone())),
        ),
    };
    let mut obj = JsonObject::new();
    session_fields(&mut obj, "statement", &p.time, scope);
    obj.str("source", p.source)
        .str("statement", &p.text)
        .opt_str(
            "fingerprint",
            p.fingerprint.map(|f| format!("{f:016x}")).as_deref(),
        )
        .str("decision", decision);
    let class = p.part_class.clone().or_else(|| p.meta.class.clone());
    decision_fields(&mut obj, &p.meta, class.as_deref(), p.part_kind.as_deref());
    if matches!(p.verdict, Verdict::Rewritten) {
        obj.bool("rewritten", true);
    }
    if let Some(r) = refusal {
        let mut inner = JsonObject::new();
        inner
            .str("sqlstate", &r.sqlstate)
            .str("message", &r.message);
        obj.raw("refusal", &inner.finish());
    }
    if let Some(params) = &p.params {
        obj.raw("params", params);
    }
    obj.str_array(
        "masked_columns",
        masked.unwrap_or_default().iter().map(String::as_str),
    )
    .opt_str("command", command.as_deref())
    .opt_num("rows", rows)
    .num("rows_sent", rows_sent)
    .num("duration_us", duration)
    .opt_str("sqlstate", sqlstate.as_deref())
    .opt_str(
        "result_digest",
        (decision == "allow")
            .then_some(digest)
            .filter(|d| !d.is_empty()),
    );
    Event {
        ack: 0,
        time: p.time,
        kind: "statement",
        session: Arc::clone(scope.session),
        identity: Arc::clone(&scope.audit.subject),
        username: Arc::clone(&scope.audit.username),
        connection: Arc::clone(scope.connection),
        decision,
        class,
        statement: p.text.to_string(),
        sqlstate,
        body: obj.finish(),
    }
}

/// The intent record of strict mode: the statement and its decision, committed before it runs.
pub fn intent(p: &Pending, scope: &ScopeRef<'_>) -> Event {
    let mut obj = JsonObject::new();
    session_fields(&mut obj, "intent", &p.time, scope);
    obj.str("source", p.source)
        .str("statement", &p.text)
        .opt_str(
            "fingerprint",
            p.fingerprint.map(|f| format!("{f:016x}")).as_deref(),
        )
        .str("decision", "allow");
    decision_fields(&mut obj, &p.meta, p.meta.class.as_deref(), None);
    Event {
        ack: 0,
        time: p.time.clone(),
        kind: "intent",
        session: Arc::clone(scope.session),
        identity: Arc::clone(&scope.audit.subject),
        username: Arc::clone(&scope.audit.username),
        connection: Arc::clone(scope.connection),
        decision: "allow",
        class: p.meta.class.clone(),
        statement: p.text.to_string(),
        sqlstate: None,
        body: obj.finish(),
    }
}

/// The client half's memory of prepared statements and portals.
#[derive(Default)]
pub struct ClientTrack {
    prepared: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, (Arc<Prepared>, Option<String>)>,
}

impl ClientTrack {
    pub fn parsed(&mut self, name: &str, prepared: Option<Prepared>) {
        match prepared {
            Some(p) => {
                self.prepared.insert(name.to_owned(), Arc::new(p));
            }
            None => {
                self.prepared.remove(name);
            }
        }
    }

    /// Bind: remember which statement the portal runs (and its parameters, when recorded).
    pub fn bind(&mut self, body: &[u8], parameters: Parameters) -> Result<(), String> {
        let mut c = Cursor::new(body);
        let portal = c.read_cstr().map_err(|e| e.to_string())?.to_owned();
        let statement = c.read_cstr().map_err(|e| e.to_string())?;
        let Some(prepared) = self.prepared.get(statement).cloned() else {
            // Unknown here (prepared before the statement was tracked, or denied): the server
            // answers the Bind with an error, which ends the segment.
            self.portals.remove(&portal);
            return Ok(());
        };
        let params = match parameters {
            Parameters::Skip => None,
            Parameters::Masked | Parameters::Record => Some(read_params(
                &mut c,
                matches!(parameters, Parameters::Masked),
            )?),
        };
        self.portals.insert(portal, (prepared, params));
        Ok(())
    }

    /// Execute: the pending record of the portal's statement, if the portal is known.
    pub fn execute(&self, body: &[u8], segment: u64) -> Result<Option<Pending>, String> {
        let portal = Cursor::new(body)
            .read_cstr()
            .map_err(|e| e.to_string())?
            .to_owned();
        Ok(self.portals.get(&portal).map(|(p, params)| {
            let verdict = if p.rewritten {
                Verdict::Rewritten
            } else {
                Verdict::Allow
            };
            let mut pending = Pending::new(
                segment,
                "execute",
                Arc::clone(&p.text),
                p.fingerprint,
                Arc::clone(&p.meta),
                verdict,
            );
            pending.part_kind = p.meta.kinds.first().cloned();
            pending.params.clone_from(params);
            pending
        }))
    }

    pub fn close(&mut self, body: &[u8]) -> Result<(), String> {
        let mut c = Cursor::new(body);
        let kind = c.read_u8().map_err(|e| e.to_string())?;
        let name = c.read_cstr().map_err(|e| e.to_string())?;
        if kind == b'S' {
            self.prepared.remove(name);
        } else {
            self.portals.remove(name);
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub enum Parameters {
    Skip,
    /// The session masks columns: values are recorded as masked (their origin is unknown here).
    Masked,
    Record,
}

fn read_params(c: &mut Cursor<'_>, masked: bool) -> Result<String, String> {
    let err = |e: crate::net::messages::MessageError| e.to_string();
    let nformats = usize::try_from(c.read_i16().map_err(err)?).map_err(|e| e.to_string())?;
    let mut formats = Vec::with_capacity(nformats.min(64));
    for _ in 0..nformats {
        formats.push(c.read_i16().map_err(err)?);
    }
    let nparams = usize::try_from(c.read_i16().map_err(err)?).map_err(|e| e.to_string())?;
    let mut out = String::from("[");
    for i in 0..nparams {
        if i > 0 {
            out.push(',');
        }
        let len = c.read_i32().map_err(err)?;
        if len < 0 {
            out.push_str("null");
            continue;
        }
        let value = c
            .read_bytes(usize::try_from(len).map_err(|e| e.to_string())?)
            .map_err(err)?;
        if masked {
            out.push_str("\"****\"");
            continue;
        }
        let format = match formats.len() {
            0 => 0,
            1 => formats.first().copied().unwrap_or(0),
            _ => formats.get(i).copied().unwrap_or(0),
        };
        let shown = value.get(..MAX_PARAM_BYTES).unwrap_or(value);
        let mut text = if format == 1 {
            shown.iter().fold(String::from("\\x"), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            })
        } else {
            String::from_utf8_lossy(shown).into_owned()
        };
        if shown.len() < value.len() {
            text.push_str("…(truncated)");
        }
        super::record::push_json_str(&mut out, &text);
    }
    out.push(']');
    Ok(out)
}

/// The parts of a simple Query text: one per statement when the decision says there are several.
pub fn parts(sql: &str, statements: usize) -> Vec<&str> {
    if statements > 1 {
        if let Ok(split) = pg_query::split_with_parser(sql) {
            if split.len() == statements {
                return split.into_iter().map(str::trim).collect();
            }
        }
    }
    vec![sql.trim()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditScope;

    fn scope() -> (Arc<str>, Arc<str>, AuditScope) {
        (
            Arc::from("sess"),
            Arc::from("shop"),
            AuditScope {
                enabled: true,
                identity_json: Arc::from("{\"subject\":\"x\"}"),
                ..AuditScope::default()
            },
        )
    }

    fn pending(segment: u64, text: &str, verdict: Verdict) -> Pending {
        Pending::new(
            segment,
            "query",
            Arc::from(text),
            None,
            Arc::default(),
            verdict,
        )
    }

    #[test]
    fn an_error_completes_the_current_part_and_skips_the_rest_of_the_segment() {
        let (s, c, a) = scope();
        let sr = ScopeRef {
            session: &s,
            connection: &c,
            audit: &a,
        };
        let t = Tracker::default();
        t.push(pending(0, "select 1", Verdict::Allow));
        t.push(pending(0, "select 1/0", Verdict::Allow));
        t.push(pending(0, "select 3", Verdict::Allow));
        t.push(pending(1, "select 4", Verdict::Allow));
        let mut r = ResultState::default();
        r.data_row();
        r.bytes(b"D...");
        let done = t.complete(0, &Completion::Command("SELECT 1"), &mut r, &sr);
        assert_eq!(done.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&done[0].body).unwrap();
        assert_eq!(v["rows"], 1);
        assert_eq!(v["command"], "SELECT");
        assert_eq!(v["result_digest"].as_str().unwrap().len(), 64);
        let failed = t.complete(0, &Completion::Error("22012"), &mut r, &sr);
        assert_eq!(failed.len(), 1, "select 3 never ran");
        assert_eq!(failed[0].sqlstate.as_deref(), Some("22012"));
        let next = t.complete(1, &Completion::Command("SELECT 1"), &mut r, &sr);
        assert_eq!(next[0].statement, "select 4");
    }

    #[test]
    fn an_answer_of_another_segment_never_completes_a_pending_statement() {
        let (s, c, a) = scope();
        let sr = ScopeRef {
            session: &s,
            connection: &c,
            audit: &a,
        };
        let t = Tracker::default();
        t.push(pending(3, "select 1", Verdict::Allow));
        let mut r = ResultState::default();
        assert!(t
            .complete(2, &Completion::Error("42P01"), &mut r, &sr)
            .is_empty());
        assert_eq!(
            t.complete(3, &Completion::Command("SELECT 1"), &mut r, &sr)
                .len(),
            1
        );
    }

    #[test]
    fn multi_statement_queries_split_into_parts() {
        assert_eq!(
            parts("select 1; select 'a;b' ;insert into t values (1)", 3),
            vec!["select 1", "select 'a;b'", "insert into t values (1)"]
        );
        assert_eq!(parts("select 1;", 1), vec!["select 1;"]);
    }
}
