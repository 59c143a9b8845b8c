//! The upstream side: connecting and authenticating to the target PostgreSQL server, and
//! forwarding cancel requests to it.
//!
//! Upstream always speaks protocol 3.0. TLS is negotiated with SSLRequest (every server version
//! supports it); the single response byte is read unbuffered so nothing the server sends before
//! the handshake can be mistaken for TLS-protected data (CVE-2021-23222).

mod auth;
mod channel_binding;
mod stream;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::net::framing::split_frame;
use crate::net::messages::{
    self, build_cancel, build_ssl_request, build_startup, parse_backend_key_data,
    parse_parameter_status, tag, ErrorFields, MessageError,
};
use crate::net::reader::{read_frame, ReadError};
use crate::net::tls::{self, TlsError, UpstreamTls};

pub use channel_binding::tls_server_end_point;
pub use stream::UpstreamStream;

/// Messages during startup are small (ParameterStatus, errors); a server sending more than this
/// before ReadyForQuery is misbehaving.
const STARTUP_MAX_MESSAGE: usize = 1024 * 1024;

/// Where and as whom to connect upstream.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub tls: UpstreamTls,
    /// Root certificate(s) for `VerifyFull`; the webpki roots when None.
    pub sslrootcert: Option<PathBuf>,
    /// Extra StartupMessage parameters (e.g. `application_name`, `client_encoding`).
    /// `user` and `database` here are ignored: the target's own values win.
    pub startup_params: Vec<(String, String)>,
    /// Bounds the whole connection set-up (TCP, TLS, authentication, up to ReadyForQuery),
    /// as libpq's `connect_timeout` does. Zero means no limit.
    pub connect_timeout: Duration,
}

/// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("sslrootcert", &self.sslrootcert)
            .field("startup_params", &self.startup_params)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// An authenticated upstream connection, ready for queries.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// ParameterStatus values in the order the server sent them.
    pub parameters: Vec<(String, String)>,
    pub pid: i32,
    pub key: Vec<u8>,
    /// Bytes read past the first ReadyForQuery (normally empty); the relay must consume these
    /// before reading the socket.
    pub read_buf: BytesMut,
    /// How we authenticated: "trust", "password", "md5", "SCRAM-SHA-256" or
    /// "SCRAM-SHA-256-PLUS" (for audit and diagnostics).
    pub auth_method: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS error: {0}")]
    Tls(#[from] TlsError),
    #[error("the server does not support TLS, which this connection requires")]
    TlsRefused,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("unsupported authentication: {0}")]
    AuthUnsupported(String),
    #[error("the server asked for a password but none is configured for this connection")]
    MissingPassword,
    #[error("timed out connecting to the server")]
    Timeout,
    #[error("server error: {0}")]
    Server(ErrorFields),
}

impl From<rustls::Error> for BackendError {
    fn from(e: rustls::Error) -> Self {
        BackendError::Tls(TlsError::Rustls(e))
    }
}

impl From<MessageError> for BackendError {
    fn from(e: MessageError) -> Self {
        BackendError::Protocol(e.to_string())
    }
}

impl From<ReadError> for BackendError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => BackendError::Io(e),
            ReadError::Frame(e) => BackendError::Protocol(e.to_string()),
            ReadError::UnexpectedEof => {
                BackendError::Protocol("the server closed the connection mid-message".into())
            }
        }
    }
}

/// Runs `fut` under `limit` (zero = unbounded).
async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    if limit.is_zero() {
        fut.await
    } else {
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| BackendError::Timeout)?
    }
}

/// Connects, negotiates TLS, authenticates and waits for the first ReadyForQuery.
pub async fn connect(target: &UpstreamTarget) -> Result<Upstream, BackendError> {
    with_timeout(target.connect_timeout, connect_inner(target)).await
}

async fn connect_inner(target: &UpstreamTarget) -> Result<Upstream, BackendError> {
    let mut stream = open(
        &target.host,
        target.port,
        target.tls,
        target.sslrootcert.as_deref(),
    )
    .await?;

    let mut params: Vec<(&str, &str)> = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ];
    params.extend(
        target
            .startup_params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    stream.write_all(&build_startup(&params)).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(8 * 1024);
    let auth_method = auth::authenticate(&mut stream, &mut buf, target).await?;
    let (parameters, pid, key) = await_ready(&mut stream, &mut buf).await?;
    Ok(Upstream {
        stream,
        parameters,
        pid,
        key,
        read_buf: buf,
        auth_method,
    })
}

/// Reads the next whole frame during startup and returns (tag, frame); EOF is an error.
async fn next_frame(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<(u8, Bytes), BackendError> {
    let frame = read_frame(stream, buf, STARTUP_MAX_MESSAGE)
        .await?
        .ok_or_else(|| BackendError::Protocol("the server closed the connection".into()))?;
    let (tag, _) =
        split_frame(&frame).ok_or_else(|| BackendError::Protocol("short frame".into()))?;
    Ok((tag, frame))
}

/// The body of a frame returned by [`next_frame`] (always at least a header long).
fn body(frame: &Bytes) -> &[u8] {
    split_frame(frame).map_or(&[], |(_, b)| b)
}

/// Turns a server ErrorResponse frame into [`BackendError::Server`].
fn server_error(frame: &Bytes) -> BackendError {
    match ErrorFields::parse(body(frame)) {
        Ok(fields) => BackendError::Server(fields),
        Err(e) => BackendError::Protocol(format!("malformed ErrorResponse: {e}")),
    }
}

/// After AuthenticationOk: collects ParameterStatus and BackendKeyData until ReadyForQuery.
async fn await_ready(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<(Vec<(String, String)>, i32, Vec<u8>), BackendError> {
    let mut parameters: Vec<(String, String)> = Vec::new();
    let mut key_data = None;
    loop {
        let (t, frame) = next_frame(stream, buf).await?;
        match t {
            tag::PARAMETER_STATUS => {
                let (name, value) = parse_parameter_status(body(&frame))?;
                // A repeated name (not expected during startup) replaces the earlier value
                // in place, so the client sees each parameter once.
                match parameters.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => value.clone_into(&mut slot.1),
                    None => parameters.push((name.to_owned(), value.to_owned())),
                }
            }
            tag::BACKEND_KEY_DATA => {
                let k = parse_backend_key_data(body(&frame))?;
                key_data = Some((k.pid, k.key));
            }
            tag::READY_FOR_QUERY => {
                messages::parse_ready_for_query(body(&frame))?;
                // Without BackendKeyData (some poolers omit it) cancels cannot be forwarded;
                // pid 0 with an empty key marks that.
                let (pid, key) = key_data.unwrap_or((0, Vec::new()));
                return Ok((parameters, pid, key));
            }
            tag::ERROR_RESPONSE => return Err(server_error(&frame)),
            // Notices during startup (e.g. collation version warnings) are not relayed.
            tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    char::from(other)
                )))
            }
        }
    }
}

/// Opens TCP (TCP_NODELAY on) and, unless `tls` is Disable, negotiates TLS with SSLRequest.
async fn open(
    host: &str,
    port: u16,
    mode: UpstreamTls,
    root: Option<&Path>,
) -> Result<UpstreamStream, BackendError> {
    let mut tcp = TcpStream::connect((host, port)).await?;
    // Protocol messages are small and latency-bound; Nagle would add up to 40 ms per exchange.
    tcp.set_nodelay(true)?;
    if mode == UpstreamTls::Disable {
        return Ok(UpstreamStream::Plain(tcp));
    }
    let config = tls::client_config(mode, root)?;
    tcp.write_all(&build_ssl_request()).await?;
    // Exactly one byte, unbuffered: see the module comment.
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' => return Err(BackendError::TlsRefused),
        // Servers older than 7.x answer SSLRequest with an ErrorResponse.
        b'E' => {
            return Err(BackendError::Protocol(
                "the server answered SSLRequest with an error".into(),
            ))
        }
        other => {
            return Err(BackendError::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )))
        }
    }
    let name = tls::server_name(host)?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(UpstreamStream::Tls(Box::new(tls)))
}

/// Sends a CancelRequest for (pid, key) over a new connection, with TLS unless `tls` is
/// Disable (the server accepts cancels inside TLS). The server answers nothing; we wait for it
/// to close so the request is known to be delivered.
pub async fn send_cancel(
    host: &str,
    port: u16,
    tls: UpstreamTls,
    root: Option<&Path>,
    pid: i32,
    key: &[u8],
) -> Result<(), BackendError> {
    with_timeout(Duration::from_secs(10), async {
        let mut stream = open(host, port, tls, root).await?;
        stream.write_all(&build_cancel(pid, key)).await?;
        stream.flush().await?;
        let mut sink = [0u8; 64];
        // The server closes after reading the request; a TLS close may surface as an error,
        // which is fine: the request was sent.
        let _ = stream.read(&mut sink).await;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests;
