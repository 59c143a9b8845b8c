//! Relaying an authenticated session: client→server with a decision per statement, and
//! server→client with the rewrites that keep denials looking like ordinary server errors.
//!
//! Both directions work in place on their read buffer. Only the messages the gateway inspects
//! (Query and Parse from the client; ErrorResponse and ReadyForQuery from the server) must be
//! whole in memory; every other message streams through as it arrives, so a huge DataRow or
//! CopyData never needs a buffer of its size. Runs of messages that pass unchanged are written as
//! one slice of the read buffer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::gateway::Gateway;
use super::masking::{Action, ClientSide, Expectations, ServerSide};
use crate::audit::record::ScopeRef;
use crate::audit::tracker::{
    self, ClientTrack, Completion, Parameters, Pending, Prepared, ResultState, Tracker, Verdict,
};
use crate::audit::{AuditMeta, Event};
use crate::decide::bridge::{Answer, Request};
use crate::decide::types::{Decision, Hold, Refusal, Scope};
use crate::mask::CopyPlan;
use crate::net::framing::{peek_header, FrameError, Header};
use crate::net::messages::{
    build_error, build_notice, build_parse, build_query, parse_parse, parse_query,
    parse_row_description, Cursor, ErrorFields,
};
use crate::net::sqlstate;
use crate::record::{RecordError, RecordTap};

/// Read at least this much at a time; small enough to keep 1,000 idle sessions cheap.
const READ_CHUNK: usize = 16 * 1024;
/// Messages from the server are trusted for framing but still bounded (PostgreSQL's own limit).
const SERVER_MAX_MESSAGE: usize = 1 << 30;

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// The client said Terminate or closed its socket.
    ClientClosed,
    /// The server closed; `fatal_sent` says whether the client already saw the server's FATAL.
    ServerClosed {
        fatal_sent: bool,
    },
    /// The client broke the protocol: tell it (08P01) and close.
    ClientProtocol(String),
    ServerProtocol(String),
    /// A result could not be masked: the session ends rather than relay it.
    MaskingFailed(String),
    /// Strict audit mode: a statement's record could not be committed, so it was not run.
    AuditUnavailable(String),
    /// The session recording could not be written: the session ends (fail closed).
    Recording(RecordError),
    Io(std::io::Error),
}

struct PendingDenial {
    /// The Sync-delimited segment the substitute was sent in.
    segment: u64,
    refusal: Arc<Refusal>,
}

/// What the two directions share.
struct Shared {
    /// Segments (a Query, a FunctionCall, or extended messages up to Sync) sent upstream.
    segments_sent: AtomicU64,
    /// ReadyForQuery messages seen from upstream.
    segments_done: AtomicU64,
    denials: Mutex<VecDeque<PendingDenial>>,
    denial_count: AtomicUsize,
    /// Unique token in the substitute statement; the server echoes it in its syntax error.
    marker: String,
    /// Responses the server owes, for row shapes (only used when the session masks).
    expect: Expectations,
    /// Statements whose answers are awaited, for their audit records.
    audit: Tracker,
    /// NoticeResponses for the client from the client→server half (a statement held for
    /// approval), written by the server→client half at the next message boundary.
    notices: Mutex<Vec<Bytes>>,
    notice_ready: Notify,
}

/// A statement's decision with what its audit record needs.
struct Decided {
    decision: Decision,
    audit: Arc<AuditMeta>,
    fingerprint: Option<u64>,
}

/// How a Query or Parse was decided, for its audit records.
struct Audited<'f> {
    verdict: Verdict,
    audit: Arc<AuditMeta>,
    fingerprint: Option<u64>,
    sql: &'f str,
    parse_name: Option<&'f str>,
}

pub struct Relay<'a> {
    gw: &'a Gateway,
    session_id: u64,
    scope: &'a Scope,
    shared: Shared,
    record: &'a RecordTap,
    /// The session's client_encoding at the start (COPY rewriting depends on it).
    client_encoding: String,
    /// Woken by the client's CancelRequest (see `CancelTarget::held`).
    cancel: Arc<Notify>,
}

/// What to forward for a decided Query or Parse.
struct Forward<'f> {
    /// A substitute statement (a denial) instead of the client's.
    substitute: Option<Bytes>,
    /// The plans of the Query's `COPY … TO STDOUT` statements.
    copies: Option<Arc<[CopyPlan]>>,
    audited: Audited<'f>,
}

fn make_marker() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("pgward_denied_{hex}")
}

impl<'a> Relay<'a> {
    pub fn new(gw: &'a Gateway, session_id: u64, scope: &'a Scope, record: &'a RecordTap) -> Self {
        Self {
            gw,
            session_id,
            scope,
            record,
            shared: Shared {
                segments_sent: AtomicU64::new(0),
                segments_done: AtomicU64::new(0),
                denials: Mutex::new(VecDeque::new()),
                denial_count: AtomicUsize::new(0),
                marker: make_marker(),
                expect: Expectations::default(),
                audit: Tracker::default(),
                notices: Mutex::new(Vec::new()),
                notice_ready: Notify::new(),
            },
            client_encoding: "UTF8".to_owned(),
            cancel: Arc::new(Notify::new()),
        }
    }

    /// What a CancelRequest for this session wakes (a statement held for approval stops waiting).
    #[must_use]
    pub fn with_cancel(mut self, cancel: Arc<Notify>) -> Self {
        self.cancel = cancel;
        self
    }

    /// The client_encoding the server reported at startup.
    #[must_use]
    pub fn with_client_encoding(mut self, encoding: &str) -> Self {
        encoding.clone_into(&mut self.client_encoding);
        self
    }

    /// Relay until either side ends. `client_buf`/`server_buf` hold bytes already read past the
    /// startup phase.
    pub async fn run<CR, CW, SR, SW>(
        &self,
        client_read: &mut CR,
        client_write: &mut CW,
        server_read: &mut SR,
        server_write: &mut SW,
        client_buf: BytesMut,
        server_buf: BytesMut,
    ) -> End
    where
        CR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
        SR: AsyncRead + Unpin,
        SW: AsyncWrite + Unpin,
    {
        tokio::select! {
            end = self.client_to_server(client_read, server_write, client_buf) => end,
            end = self.server_to_client(server_read, client_write, server_buf) => end,
            e = self.record.flusher() => End::Recording(e),
        }
    }

    async fn client_to_server<R, W>(&self, client: &mut R, server: &mut W, mut buf: BytesMut) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let max = self.gw.config.max_message_size;
        let masking = !self.scope.mask_plan.is_empty();
        let auditing = self.scope.audit.enabled;
        let mut shapes = ClientSide::default();
        let mut track = ClientTrack::default();
        let mut walker = Walker::default();
        let mut out: Vec<Bytes> = Vec::with_capacity(4);
        if let Err(e) = self.record.client(&buf).await {
            return End::Recording(e);
        }
        loop {
            let mut run = 0usize;
            let mut terminate = false;
            loop {
                let header = match walker.next(&buf, &mut run, max, &mut |_| {}) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return End::ClientProtocol(frame_error_text(&e)),
                };
                let rest = buf.get(run..).unwrap_or_default();
                let tag = header.tag;
                let whole = matches!(tag, b'Q' | b'P' | b'F')
                    || (masking && ClientSide::inspects(tag))
                    || (auditing && matches!(tag, b'B' | b'E' | b'C'));
                if !whole {
                    if matches!(tag, b'S' | b'F') {
                        self.shared.segments_sent.fetch_add(1, Ordering::AcqRel);
                    }
                    walker.pass(header, rest.len(), &mut run, false);
                    if tag == b'X' {
                        terminate = true;
                        break;
                    }
                    continue;
                }
                if rest.len() < header.len {
                    buf.reserve(header.len - rest.len());
                    break;
                }
                if run > 0 {
                    out.push(buf.split_to(run).freeze());
                    run = 0;
                }
                let frame = buf.split_to(header.len).freeze();
                let mut copies = None;
                let forward = if tag == b'F' && !self.scope.allow_function_call {
                    self.refuse_function_call(auditing)
                } else if matches!(tag, b'Q' | b'P') {
                    let decided = match self.statement(&frame).await {
                        Ok(d) => d,
                        Err(reason) => return End::ClientProtocol(reason),
                    };
                    if auditing {
                        if let Err(end) = self
                            .audit_statement(tag, &decided.audited, &mut track)
                            .await
                        {
                            return end;
                        }
                    }
                    copies = decided.copies;
                    decided.substitute.unwrap_or(frame)
                } else if auditing && matches!(tag, b'B' | b'E' | b'C') {
                    if let Err(end) = self.audit_extended(tag, &frame, &mut track).await {
                        return end;
                    }
                    frame
                } else {
                    frame
                };
                // A denial records the segment it was sent in, so a Query counts after its decision.
                if matches!(tag, b'Q' | b'S' | b'F') {
                    self.shared.segments_sent.fetch_add(1, Ordering::AcqRel);
                }
                if masking {
                    match shapes.before_forward(
                        &self.shared.expect,
                        tag,
                        forward.get(5..).unwrap_or_default(),
                        copies.as_ref(),
                    ) {
                        Ok(Some(describe)) => out.push(describe),
                        Ok(None) => {}
                        Err(reason) => return End::ClientProtocol(reason),
                    }
                }
                out.push(forward);
            }
            if run > 0 {
                out.push(buf.split_to(run).freeze());
            }
            if let Err(e) = write_segments(server, &mut out).await {
                return End::Io(e);
            }
            if terminate {
                return End::ClientClosed;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let before = buf.len();
            match client.read_buf(&mut buf).await {
                Ok(0) => return End::ClientClosed,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
            if let Err(e) = self
                .record
                .client(buf.get(before..).unwrap_or_default())
                .await
            {
                return End::Recording(e);
            }
        }
    }

    /// Decide a Query or Parse frame: forward it unchanged (with COPY plans), or send a substitute
    /// instead (a denial, or the rewritten statement).
    async fn statement<'f>(&self, frame: &'f Bytes) -> Result<Forward<'f>, String> {
        let tag = frame.first().copied().unwrap_or_default();
        let body = frame.get(5..).unwrap_or_default();
        let (sql, parse) = if tag == b'Q' {
            (
                parse_query(body).map_err(|e| format!("malformed Query message: {e}"))?,
                None,
            )
        } else {
            let p = parse_parse(body).map_err(|e| format!("malformed Parse message: {e}"))?;
            (p.sql, Some((p.name, p.param_types)))
        };
        let parse_name = parse.as_ref().map(|(name, _)| *name);
        let Decided {
            decision,
            audit,
            fingerprint,
        } = self
            .decide(sql, if tag == b'Q' { "query" } else { "parse" })
            .await;
        // A held statement's record says how its review ended (the final answer's metadata).
        let (decision, audit) = match decision {
            Decision::Hold(hold) => self.hold(&hold, audit).await,
            decided => (decided, audit),
        };
        let audited = |verdict: Verdict| Audited {
            verdict,
            audit,
            fingerprint,
            sql,
            parse_name,
        };
        let rewritten = |text: &str| match &parse {
            None => build_query(text),
            // Same statement name and parameter types: Bind, Describe and Execute that follow
            // refer to it unchanged.
            Some((name, types)) => build_parse(name, text, types),
        };
        let refusal = match decision {
            Decision::Allow => {
                return Ok(Forward {
                    substitute: None,
                    copies: None,
                    audited: audited(Verdict::Allow),
                })
            }
            Decision::Rewrite(text) => {
                self.gw.stats.rewrites.fetch_add(1, Ordering::Relaxed);
                return Ok(Forward {
                    substitute: Some(rewritten(&text)),
                    copies: None,
                    audited: audited(Verdict::Rewritten),
                });
            }
            Decision::AllowCopy { plans, rewrite } => {
                match self.copy_refusal(&plans, parse_name.is_some()) {
                    None => {
                        if rewrite.is_some() {
                            self.gw.stats.rewrites.fetch_add(1, Ordering::Relaxed);
                        }
                        let verdict = if rewrite.is_some() {
                            Verdict::Rewritten
                        } else {
                            Verdict::Allow
                        };
                        return Ok(Forward {
                            substitute: rewrite.as_deref().map(rewritten),
                            copies: Some(plans),
                            audited: audited(verdict),
                        });
                    }
                    Some(refusal) => Arc::new(refusal),
                }
            }
            Decision::Deny(refusal) => refusal,
            // `hold` never returns a hold; fail closed should it ever.
            Decision::Hold(_) => undecided("a held statement was held again"),
        };
        self.record_denial(Arc::clone(&refusal));
        let substitute = match parse_name {
            None => build_query(&self.shared.marker),
            Some(name) => build_parse(name, &self.shared.marker, &[]),
        };
        Ok(Forward {
            substitute: Some(substitute),
            copies: None,
            audited: audited(Verdict::Deny(refusal)),
        })
    }

    /// COPY plans are applied to the CopyOutResponse of a simple Query. Through the extended
    /// protocol (Parse/Bind/Execute) the plan would have to follow the statement to its portals;
    /// pgward refuses that instead, in masked sessions. A session that does not mask cannot apply
    /// a plan that masks (never expected; fail closed).
    fn copy_refusal(&self, copies: &[CopyPlan], parse: bool) -> Option<Refusal> {
        let masking = !self.scope.mask_plan.is_empty();
        if parse && masking {
            let mut r = Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "COPY … TO STDOUT through the extended query protocol is not available in a \
                 session with masked columns",
            );
            r.hint = Some(
                "send the COPY as a simple query (psql, psycopg's cursor.copy() without \
                 parameters): pgward masks its output there"
                    .into(),
            );
            return Some(r);
        }
        if !masking && copies.iter().any(CopyPlan::masks) {
            return Some(Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "pgward cannot mask this COPY's output in this session",
            ));
        }
        None
    }

    fn audit_scope(&self) -> ScopeRef<'_> {
        ScopeRef {
            session: &self.scope.session_uuid,
            connection: &self.scope.connection,
            audit: &self.scope.audit,
        }
    }

    /// Before a statement goes upstream: wait while the audit queue is full (back-pressure), and
    /// in strict mode until its intent record is committed.
    async fn admit(&self, intent: Option<&Pending>) -> Result<(), End> {
        self.gw.audit.wait_for_room().await;
        if let (true, Some(p)) = (self.scope.audit.strict, intent) {
            let record = tracker::intent(p, &self.audit_scope());
            if let Err(e) = self.gw.audit.push_durable(record).await {
                return Err(End::AuditUnavailable(e.to_string()));
            }
        }
        Ok(())
    }

    /// The records a decided Query or Parse will produce.
    async fn audit_statement(
        &self,
        tag: u8,
        st: &Audited<'_>,
        track: &mut ClientTrack,
    ) -> Result<(), End> {
        let segment = self.shared.segments_sent.load(Ordering::Acquire);
        let d = st;
        let verdict = st.verdict.clone();
        if tag == b'P' {
            let name = st.parse_name.unwrap_or_default();
            if let Verdict::Deny(_) = verdict {
                track.parsed(name, None);
                let p = Pending::new(
                    segment,
                    "parse",
                    Arc::from(st.sql),
                    d.fingerprint,
                    Arc::clone(&d.audit),
                    verdict,
                );
                self.shared.audit.push(p);
            } else {
                track.parsed(
                    name,
                    Some(Prepared {
                        text: Arc::from(st.sql),
                        fingerprint: d.fingerprint,
                        meta: Arc::clone(&d.audit),
                        rewritten: matches!(verdict, Verdict::Rewritten),
                    }),
                );
            }
            return Ok(());
        }
        if st.sql.trim().is_empty() {
            return Ok(());
        }
        if let Verdict::Deny(_) = verdict {
            self.shared.audit.push(Pending::new(
                segment,
                "query",
                Arc::from(st.sql),
                d.fingerprint,
                Arc::clone(&d.audit),
                verdict,
            ));
            return Ok(());
        }
        let whole = Pending::new(
            segment,
            "query",
            Arc::from(st.sql),
            d.fingerprint,
            Arc::clone(&d.audit),
            verdict.clone(),
        );
        self.admit(Some(&whole)).await?;
        let parts = tracker::parts(st.sql, d.audit.kinds.len());
        if parts.len() == 1 {
            let mut p = whole;
            p.part_kind = d.audit.kinds.first().cloned();
            self.shared.audit.push(p);
            return Ok(());
        }
        for (i, part) in parts.into_iter().enumerate() {
            let fingerprint = pg_query::fingerprint(part).ok().map(|f| f.value);
            let mut p = Pending::new(
                segment,
                "query",
                Arc::from(part),
                fingerprint,
                Arc::clone(&d.audit),
                verdict.clone(),
            );
            p.part_kind = d.audit.kinds.get(i).cloned();
            p.part_class = d.audit.part_classes.get(i).cloned();
            self.shared.audit.push(p);
        }
        Ok(())
    }

    /// Bind, Execute and Close of the extended protocol: which prepared statement each Execute runs.
    async fn audit_extended(
        &self,
        tag: u8,
        frame: &Bytes,
        track: &mut ClientTrack,
    ) -> Result<(), End> {
        let body = frame.get(5..).unwrap_or_default();
        let result = match tag {
            b'B' => {
                let parameters =
                    match (self.scope.audit.parameters, self.scope.mask_plan.is_empty()) {
                        (false, _) => Parameters::Skip,
                        (true, true) => Parameters::Record,
                        (true, false) => Parameters::Masked,
                    };
                track.bind(body, parameters)
            }
            b'E' => {
                let segment = self.shared.segments_sent.load(Ordering::Acquire);
                match track.execute(body, segment) {
                    Ok(Some(p)) => {
                        self.admit(Some(&p)).await?;
                        self.shared.audit.push(p);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            _ => track.close(body),
        };
        result.map_err(|e| End::ClientProtocol(format!("malformed message: {e}")))
    }

    fn emit(&self, events: Vec<Event>) {
        for e in events {
            self.gw.audit.push(e);
        }
    }

    fn record_denial(&self, refusal: Arc<Refusal>) {
        self.gw.stats.denials.fetch_add(1, Ordering::Relaxed);
        let segment = self.shared.segments_sent.load(Ordering::Acquire);
        self.shared
            .denials
            .lock()
            .push_back(PendingDenial { segment, refusal });
        self.shared.denial_count.fetch_add(1, Ordering::AcqRel);
    }

    /// The fastpath FunctionCall names a function by OID, out of reach of statement policies
    /// (it can call `pg_read_file` as well as `lo_open`), so it is refused unless the scope allows
    /// it. The substitute Query makes the server answer ErrorResponse + ReadyForQuery, which is
    /// what a client of a failed FunctionCall expects.
    fn refuse_function_call(&self, auditing: bool) -> Bytes {
        let mut refusal = Refusal::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "the fastpath function call protocol is not allowed through pgward",
        );
        refusal.hint =
            Some("call the function with SELECT instead, where policies can see it".into());
        let refusal = Arc::new(refusal);
        if auditing {
            self.shared.audit.push(Pending::new(
                self.shared.segments_sent.load(Ordering::Acquire),
                "function_call",
                Arc::from("(fastpath FunctionCall)"),
                None,
                Arc::default(),
                Verdict::Deny(Arc::clone(&refusal)),
            ));
        }
        self.record_denial(refusal);
        build_query(&self.shared.marker)
    }

    /// Tell the client its statement is held (NoticeResponse, at once), then wait for the review's
    /// verdict: the statement's decision once approved, a refusal on denial or expiry, or a
    /// refusal (57014) and a withdrawn review when the client cancels. Only this session waits;
    /// the bridge's usual 30 s limit does not apply (the review has its own).
    async fn hold(&self, hold: &Hold, audit: Arc<AuditMeta>) -> (Decision, Arc<AuditMeta>) {
        // Registered before the notice goes out, so a cancel sent on seeing it is not missed.
        let cancelled = self.cancel.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        let n = &hold.notice;
        self.shared.notices.lock().push(build_notice(
            "NOTICE",
            &n.sqlstate,
            &n.message,
            n.detail.as_deref(),
            n.hint.as_deref(),
        ));
        self.shared.notice_ready.notify_one();
        self.gw.stats.holds.fetch_add(1, Ordering::Relaxed);
        let request = Request::AwaitReview {
            session_id: self.session_id,
            review_id: hold.review_id.clone(),
        };
        tokio::select! {
            answer = self.gw.bridge.ask_within(request, hold.wait) => match answer {
                // A second hold would wait forever on a review that is already decided.
                Ok(Answer::Decided { decision: Decision::Hold(_), .. }) => {
                    (fail_closed("the decision service held a statement twice"), audit)
                }
                Ok(Answer::Decided { decision, audit: final_audit, .. }) => (decision, final_audit),
                Ok(Answer::Authenticated(_)) => {
                    (fail_closed("the decision service answered the wrong question"), audit)
                }
                Err(e) => (fail_closed(&e.to_string()), audit),
            },
            () = &mut cancelled => {
                self.gw.bridge.tell(Request::WithdrawReview {
                    session_id: self.session_id,
                    review_id: hold.review_id.clone(),
                });
                let mut refusal =
                    Refusal::new(sqlstate::QUERY_CANCELED, "canceling statement due to user request");
                refusal.detail = Some(format!(
                    "the statement was held for review {}; the review is withdrawn and the statement did not run",
                    hold.review_id
                ));
                (Decision::Deny(Arc::new(refusal)), audit)
            }
        }
    }

    async fn decide(&self, sql: &str, source: &'static str) -> Decided {
        let gw = self.gw;
        gw.stats.statements.fetch_add(1, Ordering::Relaxed);
        let decided =
            |decision: Decision, audit: Arc<AuditMeta>, fingerprint: Option<u64>| Decided {
                decision,
                audit,
                fingerprint,
            };
        if sql.trim().is_empty() {
            // Nothing runs; the server answers EmptyQueryResponse.
            return decided(Decision::Allow, Arc::default(), None);
        }
        let scope_key = &self.scope.scope_key;
        if let Some(c) = gw.cache.get_text(scope_key, sql) {
            gw.stats.cache_hits_text.fetch_add(1, Ordering::Relaxed);
            return decided(c.decision, c.audit, c.fingerprint);
        }
        let fingerprint = pg_query::fingerprint(sql).ok().map(|f| f.value);
        if let Some(fp) = fingerprint {
            if let Some(c) = gw.cache.get_fingerprint(scope_key, fp) {
                gw.stats
                    .cache_hits_fingerprint
                    .fetch_add(1, Ordering::Relaxed);
                return decided(c.decision, c.audit, fingerprint);
            }
        }
        gw.stats.python_decisions.fetch_add(1, Ordering::Relaxed);
        let request = Request::Decide {
            session_id: self.session_id,
            scope_key: scope_key.to_string(),
            sql: sql.to_owned(),
            fingerprint,
            source,
        };
        match gw.bridge.ask(request).await {
            Ok(Answer::Decided {
                decision,
                cache,
                audit,
            }) => {
                gw.cache
                    .insert(scope_key, sql, fingerprint, cache, &decision, &audit);
                decided(decision, audit, fingerprint)
            }
            Ok(Answer::Authenticated(_)) => decided(
                fail_closed("the decision service answered the wrong question"),
                Arc::default(),
                fingerprint,
            ),
            Err(e) => decided(fail_closed(&e.to_string()), Arc::default(), fingerprint),
        }
    }

    async fn server_to_client<R, W>(&self, server: &mut R, client: &mut W, mut buf: BytesMut) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let masking = !self.scope.mask_plan.is_empty();
        let max = self.gw.config.max_message_size;
        let mut shapes = ServerSide::new(
            Arc::clone(&self.scope.mask_plan),
            max,
            &self.client_encoding,
        );
        let auditing = self.scope.audit.enabled;
        let mut result = ResultState::default();
        let mut walker = Walker::default();
        let mut out: Vec<Bytes> = Vec::with_capacity(4);
        let mut fatal_sent = false;
        loop {
            let mut run = 0usize;
            loop {
                // The rest of a DataRow or CopyData passing through goes into the result digest.
                let header = match walker.next(&buf, &mut run, SERVER_MAX_MESSAGE, &mut |bytes| {
                    result.bytes(bytes);
                }) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return End::ServerProtocol(frame_error_text(&e)),
                };
                let rest = buf.get(run..).unwrap_or_default();
                let tag = header.tag;
                let whole = tag == b'E'
                    || (masking && shapes.inspects_now(tag))
                    || (auditing && matches!(tag, b'C' | b'I' | b's'));
                if whole && tag == b'd' && header.len > max {
                    // CopyData being rewritten is held whole: bound it like client messages.
                    let _ = self.record.server(&out).await;
                    let _ = write_segments(client, &mut out).await;
                    return End::MaskingFailed(format!(
                        "a CopyData message of {} bytes exceeds the limit of {max} bytes",
                        header.len
                    ));
                }
                if tag == b'Z' && rest.len() >= header.len {
                    self.ready_for_query();
                    if auditing {
                        let done = self.shared.segments_done.load(Ordering::Acquire);
                        self.emit(self.shared.audit.segment_done(done, &self.audit_scope()));
                    }
                }
                if !whole {
                    if tag == b'Z' && rest.len() < header.len {
                        // A ReadyForQuery split across reads: account for it once it is whole.
                        buf.reserve(header.len - rest.len());
                        break;
                    }
                    let digested = auditing && matches!(tag, b'D' | b'd');
                    if digested {
                        if tag == b'D' {
                            result.data_row();
                        }
                        let have = rest.len().min(header.len);
                        result.bytes(rest.get(..have).unwrap_or_default());
                    }
                    walker.pass(header, rest.len(), &mut run, digested);
                    continue;
                }
                if rest.len() < header.len {
                    buf.reserve(header.len - rest.len());
                    break;
                }
                if run > 0 {
                    out.push(buf.split_to(run).freeze());
                    run = 0;
                }
                let frame = buf.split_to(header.len).freeze();
                if auditing {
                    self.audit_answer(tag, &frame, &mut result);
                    if !masking && tag != b'E' {
                        out.push(frame);
                        continue;
                    }
                }
                if tag == b'E' {
                    let fields = ErrorFields::parse(frame.get(5..).unwrap_or_default()).ok();
                    if let Some(f) = &fields {
                        if matches!(f.get(b'S'), Some("FATAL" | "PANIC")) {
                            fatal_sent = true;
                        }
                    }
                    if let Some(denial) = self.rewrite_error(fields.as_ref()) {
                        if masking {
                            // Keep the row-shape bookkeeping in step with the server.
                            let _ = shapes.on_message(&self.shared.expect, tag, &frame);
                        }
                        out.push(denial);
                        continue;
                    }
                    if !masking {
                        out.push(frame);
                        continue;
                    }
                }
                if auditing && tag == b'T' {
                    result.masked = self.masked_columns(&frame);
                }
                match shapes.on_message(&self.shared.expect, tag, &frame) {
                    Ok(Action::Forward) => {
                        if auditing && matches!(tag, b'D' | b'd') {
                            if tag == b'D' {
                                result.data_row();
                            }
                            result.bytes(&frame);
                        }
                        out.push(frame);
                    }
                    Ok(Action::Replace(masked)) => {
                        if auditing && matches!(tag, b'D' | b'd') {
                            if tag == b'D' {
                                result.data_row();
                            }
                            result.bytes(&masked);
                        }
                        out.push(masked);
                    }
                    Ok(Action::Swallow) => {}
                    Err(reason) => {
                        // Whatever is already masked goes out; the unmaskable result does not.
                        let _ = self.record.server(&out).await;
                        let _ = write_segments(client, &mut out).await;
                        return End::MaskingFailed(reason);
                    }
                }
            }
            if run > 0 {
                out.push(buf.split_to(run).freeze());
            }
            if !walker.mid_message() {
                // Between two server messages: a notice for the client may go out here.
                let notices = std::mem::take(&mut *self.shared.notices.lock());
                out.extend(notices);
            }
            if let Err(e) = self.record.server(&out).await {
                return End::Recording(e);
            }
            if let Err(e) = write_segments(client, &mut out).await {
                return End::Io(e);
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            // Cancel-safe: `read_buf` keeps what it read when the notice branch wins.
            let read = tokio::select! {
                read = server.read_buf(&mut buf) => read,
                () = self.shared.notice_ready.notified() => continue,
            };
            match read {
                Ok(0) => return End::ServerClosed { fatal_sent },
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
        }
    }

    /// A server message that ends a statement completes its audit record.
    fn audit_answer(&self, tag: u8, frame: &Bytes, result: &mut ResultState) {
        let body = frame.get(5..).unwrap_or_default();
        let segment = self.shared.segments_done.load(Ordering::Acquire);
        let scope = self.audit_scope();
        let events = match tag {
            b'C' => {
                let text = Cursor::new(body).read_cstr().unwrap_or_default();
                self.shared
                    .audit
                    .complete(segment, &Completion::Command(text), result, &scope)
            }
            b'I' => self
                .shared
                .audit
                .complete(segment, &Completion::Empty, result, &scope),
            b's' => self
                .shared
                .audit
                .complete(segment, &Completion::Suspended, result, &scope),
            b'E' => {
                let fields = ErrorFields::parse(body).ok();
                let code = fields
                    .as_ref()
                    .and_then(ErrorFields::sqlstate)
                    .unwrap_or("XX000");
                self.shared
                    .audit
                    .complete(segment, &Completion::Error(code), result, &scope)
            }
            _ => return,
        };
        self.emit(events);
    }

    /// Names of the masked columns of a RowDescription (masked sessions only).
    fn masked_columns(&self, frame: &Bytes) -> Option<Arc<[String]>> {
        let columns = parse_row_description(frame.get(5..).unwrap_or_default()).ok()?;
        let names = self.scope.mask_plan.masked_names(&columns);
        (!names.is_empty()).then(|| Arc::from(names))
    }

    /// Every segment up to this ReadyForQuery is finished: substitutes in it that the server
    /// skipped (after an earlier error) will never produce their error.
    fn ready_for_query(&self) {
        let done = self.shared.segments_done.fetch_add(1, Ordering::AcqRel) + 1;
        if self.shared.denial_count.load(Ordering::Acquire) > 0 {
            let mut denials = self.shared.denials.lock();
            while denials.front().is_some_and(|d| d.segment < done) {
                denials.pop_front();
                self.shared.denial_count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// The denial a server error stands for, when it is the error of a substitute statement.
    fn rewrite_error(&self, fields: Option<&ErrorFields>) -> Option<Bytes> {
        if self.shared.denial_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let is_substitute = fields
            .and_then(ErrorFields::message)
            .is_some_and(|m| m.contains(self.shared.marker.as_str()));
        if !is_substitute {
            return None;
        }
        let denial = self.shared.denials.lock().pop_front()?;
        self.shared.denial_count.fetch_sub(1, Ordering::AcqRel);
        let r = &denial.refusal;
        Some(build_error(
            "ERROR",
            &r.sqlstate,
            &r.message,
            r.detail.as_deref(),
            r.hint.as_deref(),
        ))
    }
}

/// Walks the messages in a read buffer. Messages the relay does not inspect may pass through
/// before they are whole (`pass`); the walker then skips the rest of them as it arrives.
#[derive(Default)]
struct Walker {
    /// Bytes of a passing message still to come.
    streaming: usize,
    /// Whether the caller sees the rest of the passing message (`next`'s `seen`).
    watched: bool,
}

impl Walker {
    /// The header of the next message at `run`, or `None` when more bytes are needed. Bytes of a
    /// passing message are added to `run` first.
    fn next(
        &mut self,
        buf: &[u8],
        run: &mut usize,
        max: usize,
        seen: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<Header>, FrameError> {
        if self.streaming > 0 {
            let n = self.streaming.min(buf.len() - *run);
            if self.watched {
                seen(buf.get(*run..*run + n).unwrap_or_default());
            }
            *run += n;
            self.streaming -= n;
            if self.streaming > 0 {
                return Ok(None);
            }
        }
        peek_header(buf.get(*run..).unwrap_or_default(), max)
    }

    /// Whether part of a passing message is still to come (nothing may be inserted before it ends).
    fn mid_message(&self) -> bool {
        self.streaming > 0
    }

    /// Let the message at `run` pass uninspected; `available` bytes of it are in the buffer.
    fn pass(&mut self, header: Header, available: usize, run: &mut usize, watched: bool) {
        let have = available.min(header.len);
        *run += have;
        self.streaming = header.len - have;
        self.watched = watched;
    }
}

fn fail_closed(reason: &str) -> Decision {
    Decision::Deny(undecided(reason))
}

fn undecided(reason: &str) -> Arc<Refusal> {
    let mut refusal = Refusal::new(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        "statement refused: pgward could not decide it, and refuses what it cannot decide",
    );
    refusal.detail = Some(reason.to_owned());
    Arc::new(refusal)
}

fn frame_error_text(e: &FrameError) -> String {
    format!("invalid message framing: {e}")
}

/// Write the collected segments with one write call when there is more than one small piece.
async fn write_segments<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    match out.len() {
        0 => return Ok(()),
        1 => {
            if let Some(seg) = out.pop() {
                w.write_all(&seg).await?;
            }
        }
        _ => {
            let total: usize = out.iter().map(Bytes::len).sum();
            let mut joined = BytesMut::with_capacity(total);
            for seg in out.drain(..) {
                joined.extend_from_slice(&seg);
            }
            w.write_all(&joined).await?;
        }
    }
    out.clear();
    w.flush().await
}
