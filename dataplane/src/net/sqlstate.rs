//! SQLSTATE codes pgward sends or inspects, named as in PostgreSQL's `errcodes.txt`.
//!
//! Kept as named constants so the contract in DESIGN.md ("auth failures 28P01/28000, …") can be
//! grepped and no bare string literal drifts from it.

/// Class 08: a malformed or unexpected protocol message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// Class 08: the upstream server cannot be reached or dropped the connection.
pub const CONNECTION_FAILURE: &str = "08006";
/// Class 08: the connection could not be established (used by libpq for refused connections).
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
/// Class 28: wrong password or rejected credential.
pub const INVALID_PASSWORD: &str = "28P01";
/// Class 28: the identity is known but not allowed to use this connection.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// Class 42: policy denial.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// Class 42: parse error (also what the denial substitute statement provokes).
pub const SYNTAX_ERROR: &str = "42601";
/// Class 0A: e.g. GSSAPI, replication connections, unsupported protocol features.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// Class 57: the gateway is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// Class 57: statement cancelled on request.
pub const QUERY_CANCELED: &str = "57014";
/// Class 53: connection limit reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// Class 3D: the requested database (connection) does not exist.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// Class XX: a bug in pgward.
pub const INTERNAL_ERROR: &str = "XX000";
