//! pgward's data plane: the PostgreSQL wire-protocol gateway.
//!
//! Rust owns the sockets (listener, TLS, both sides of every session), framing, the per-statement
//! decision cache and relaying. Python makes the decisions the cache does not hold; it is reached
//! through [`decide::bridge`], never called from a Rust thread.

pub mod audit;
pub mod backend;
pub mod decide;
pub mod frontend;
pub mod mask;
pub mod net;
#[cfg(feature = "python")]
mod py;
pub mod record;
