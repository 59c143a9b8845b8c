//! Per-statement decisions: the Rust-side cache and the bridge to the Python decision service.
//!
//! A statement is decided from the cache when possible (exact text, then libpg_query fingerprint);
//! otherwise the session asks Python once through the [`bridge::Bridge`] and caches the answer as
//! Python says it may be cached.

pub mod bridge;
pub mod cache;
pub mod types;

pub use bridge::Bridge;
pub use cache::DecisionCache;
pub use types::{Decision, Refusal, Scope};
