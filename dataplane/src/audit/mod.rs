//! The audit trail of statements: what each session ran, how it was decided and what it returned.
//!
//! The relay tracks every statement the client runs (each part of a simple Query, each Execute of
//! a prepared statement, each denial) and completes its record when the server's answer arrives
//! (CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse). Records go to Python in
//! batches through [`queue::AuditQueue`]; Python chains and commits them. Nothing here calls
//! Python per statement: a statement decided from the cache still gets its record, with the audit
//! metadata cached next to the decision ([`AuditMeta`]).

pub mod queue;
pub mod record;
pub mod tracker;

use std::sync::Arc;

pub use queue::{AuditError, AuditQueue};
pub use record::Event;

/// What a session's records say about the session; from the scope, fixed for the session.
#[derive(Debug, Clone, Default)]
pub struct AuditScope {
    /// Off: the relay tracks nothing.
    pub enabled: bool,
    /// A statement goes upstream only once its intent record is committed.
    pub strict: bool,
    /// The identity as a JSON object (subject, username, groups, issuer, kind, credential),
    /// serialised once by Python and embedded in every record as is.
    pub identity_json: Arc<str>,
    pub subject: Arc<str>,
    pub username: Arc<str>,
    pub client_addr: Arc<str>,
    /// Record Bind parameter values.
    pub parameters: bool,
}

/// How a decision was made, for the records of the statements it decides. Cached with the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditMeta {
    /// The statement classes (comma-separated when a Query has several).
    pub class: Option<Arc<str>>,
    pub policy: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
    /// Parse node names, one per statement of the text (`SelectStmt`, …).
    pub kinds: Vec<Arc<str>>,
    /// The classes of each statement of the text (comma-separated), for each part's record.
    pub part_classes: Vec<Arc<str>>,
    pub policy_version: Option<Arc<str>>,
    /// The approval (review) that let the statement run, when one did.
    pub approval: Option<Arc<str>>,
}
