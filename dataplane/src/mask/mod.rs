//! Inline masking of result rows: which columns to mask ([`plan`]) and how ([`functions`]); COPY
//! TO output by position ([`copy`]).
//!
//! Python compiles a session's masking rules into a [`plan::MaskPlan`] keyed by table OID and
//! attribute number; the relay applies it to every DataRow whose RowDescription names a masked
//! column. Masked values are valid for the column's type in text and binary format. Columns with
//! no table origin can also be scanned by content detectors ([`detect`]), configured per policy.

pub mod copy;
pub mod detect;
pub mod functions;
pub mod plan;

pub use copy::{CopyColumn, CopyError, CopyFormat, CopyPlan, CopyRewriter};
pub use detect::Kind;
pub use functions::{MaskError, MaskFunction};
pub use plan::{Detectors, MaskPlan, RowMasker};
