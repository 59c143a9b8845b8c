//! Values exchanged with the decision service: session scopes, decisions and refusals.

use std::sync::Arc;

use crate::audit::AuditScope;
use crate::backend::UpstreamTarget;
use crate::mask::{CopyPlan, MaskPlan};

/// Why the gateway refuses something, as the client will see it in an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Refusal {
    pub fn new(sqlstate: &str, message: impl Into<String>) -> Self {
        Self {
            sqlstate: sqlstate.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
}

/// The decision for one statement (or one multi-statement Query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Arc<Refusal>),
    /// Allowed, but the server gets this text instead of the client's (strict masking replaces
    /// masked columns at the source). Always cached by exact text: it holds the client's constants.
    Rewrite(Arc<str>),
    /// Allowed in a masked session, with one plan per `COPY … TO STDOUT` statement of the string, in
    /// order: the relay masks their output by them (see [`crate::mask::copy`]). `rewrite`: the
    /// strict-masking text to send instead, if any. Cached by exact text only.
    AllowCopy {
        plans: Arc<[CopyPlan]>,
        rewrite: Option<Arc<str>>,
    },
    /// Held for approval: the relay tells the client (NoticeResponse), waits for the review's
    /// decision and then forwards the statement or refuses it. Never cached.
    Hold(Arc<Hold>),
}

/// A statement held for a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub review_id: String,
    /// What the NoticeResponse says (severity NOTICE; `sqlstate` is its code).
    pub notice: Refusal,
    /// How long to wait for the decision service's verdict (the review's own time limit plus a
    /// margin: the service answers with a refusal when the review expires).
    pub wait: std::time::Duration,
}

/// How Python allows a decision to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Reuse for any statement with the same fingerprint (the decision does not depend on constants).
    Fingerprint,
    /// Reuse only for the exact same text.
    Text,
    /// Never reuse.
    Never,
}

/// What a session may do, decided once at session start.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Identity + connection + policy version: the decision cache is partitioned by it.
    pub scope_key: Arc<str>,
    /// Who the session is, for logs.
    pub identity: String,
    /// The session's id across the deployment (a UUID from the decision service): audit records
    /// and recordings are keyed by it. The `u64` session id is only unique within one process.
    pub session_uuid: Arc<str>,
    /// Who the session is in full (subject, username, groups, issuer, kind), as a JSON object for
    /// the session recording's header.
    pub identity_detail: Option<Arc<str>>,
    /// The pgward connection name the client asked for.
    pub connection: Arc<str>,
    pub upstream: UpstreamTarget,
    /// SQL the gateway runs upstream before the client's first ReadyForQuery (SET ROLE, the
    /// session context for row-level security, read-only mode). The client never sees it.
    pub setup_sql: Option<String>,
    /// Columns this session sees masked; empty means the relay never looks at rows.
    pub mask_plan: Arc<MaskPlan>,
    /// Whether FunctionCall (fastpath, by function OID) messages may pass; off unless a policy says.
    pub allow_function_call: bool,
    /// What the session's audit records say about it, and whether there are any.
    pub audit: Arc<AuditScope>,
}
