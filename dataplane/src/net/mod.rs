//! Wire-level building blocks shared by the frontend (client sessions) and the backend
//! (upstream connections): framing, message codecs, SQLSTATE names and TLS configuration.

pub mod framing;
pub mod messages;
pub mod reader;
pub mod sqlstate;
pub mod tls;

pub use framing::{FrameError, Header, DEFAULT_MAX_MESSAGE};
pub use reader::{read_frame, read_startup_frame, ReadError};
