//! The startup phase of a client connection: TLS negotiation (SSLRequest or direct TLS with ALPN
//! `postgresql`), GSSENCRequest, CancelRequest and the StartupMessage.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::gateway::Gateway;
use super::stream::ClientStream;
use crate::backend;
use crate::net::messages::{build_error, parse_startup, StartupPacket};
use crate::net::reader::read_startup_frame;
use crate::net::sqlstate;

/// The first byte of a TLS ClientHello record: a client using direct TLS (`sslnegotiation=direct`).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

pub struct StartupInfo {
    pub stream: ClientStream,
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
    /// Bytes the client sent after its StartupMessage (pipelining clients may).
    pub buf: BytesMut,
}

pub enum Opening {
    Session(StartupInfo),
    /// A cancel request was handled, or the client went away: nothing more to do.
    Done,
}

/// A startup that ends without a session; `Refused` still holds the stream to explain on.
pub enum StartupError {
    Refused {
        stream: Option<Box<ClientStream>>,
        sqlstate: &'static str,
        message: String,
    },
    Io(std::io::Error),
}

impl From<std::io::Error> for StartupError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

fn refuse(
    stream: ClientStream,
    sqlstate: &'static str,
    message: impl Into<String>,
) -> StartupError {
    StartupError::Refused {
        stream: Some(Box::new(stream)),
        sqlstate,
        message: message.into(),
    }
}

impl StartupError {
    /// Tell the client why (a FATAL ErrorResponse) when there is still a stream to tell it on.
    pub async fn report(self) {
        if let Self::Refused {
            stream: Some(mut stream),
            sqlstate,
            message,
        } = self
        {
            let _ = stream
                .write_all(&build_error("FATAL", sqlstate, &message, None, None))
                .await;
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
        }
    }
}

async fn accept_tls(gw: &Gateway, tcp: TcpStream) -> Result<ClientStream, StartupError> {
    let Some(config) = gw.tls.clone() else {
        return Err(StartupError::Refused {
            stream: None,
            sqlstate: sqlstate::PROTOCOL_VIOLATION,
            message: "TLS is not configured".into(),
        });
    };
    let tls = TlsAcceptor::from(config).accept(tcp).await?;
    Ok(ClientStream::Tls(Box::new(tls)))
}

/// Run the startup phase until a StartupMessage (or a handled cancel).
pub async fn open(
    gw: &Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Opening, StartupError> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Ok(Opening::Done);
    }
    let mut stream = if first[0] == TLS_HANDSHAKE_RECORD {
        let stream = accept_tls(gw, tcp).await?;
        // Direct TLS skips the SSLRequest, so ALPN is what proves the client meant PostgreSQL
        // (the same rule the server applies since PostgreSQL 17).
        let alpn_ok = match &stream {
            ClientStream::Tls(t) => t.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL),
            ClientStream::Plain(_) => false,
        };
        if !alpn_ok {
            return Err(refuse(
                stream,
                sqlstate::PROTOCOL_VIOLATION,
                "direct TLS connection without the ALPN protocol \"postgresql\"",
            ));
        }
        stream
    } else {
        ClientStream::Plain(tcp)
    };

    let mut buf = BytesMut::with_capacity(1024);
    let max = gw.config.max_message_size;
    loop {
        let Some(frame) = read_startup_frame(&mut stream, &mut buf, max)
            .await
            .map_err(|e| StartupError::Io(std::io::Error::other(e.to_string())))?
        else {
            return Ok(Opening::Done);
        };
        let packet = match parse_startup(&frame) {
            Ok(p) => p,
            Err(e) => {
                return Err(refuse(
                    stream,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup packet: {e}"),
                ))
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                let mut tcp = match stream {
                    ClientStream::Plain(tcp) => tcp,
                    tls @ ClientStream::Tls(_) => {
                        return Err(refuse(
                            tls,
                            sqlstate::PROTOCOL_VIOLATION,
                            "SSLRequest inside TLS",
                        ))
                    }
                };
                if !buf.is_empty() {
                    // Bytes after SSLRequest would be read as if they came over TLS: a known
                    // injection vector (CVE-2021-23214), so refuse them.
                    return Err(refuse(
                        ClientStream::Plain(tcp),
                        sqlstate::PROTOCOL_VIOLATION,
                        "unencrypted data after SSLRequest",
                    ));
                }
                if gw.tls.is_none() {
                    tcp.write_all(b"N").await?;
                    stream = ClientStream::Plain(tcp);
                    continue;
                }
                tcp.write_all(b"S").await?;
                stream = accept_tls(gw, tcp).await?;
            }
            StartupPacket::GssEncRequest => {
                if stream.is_tls() {
                    return Err(refuse(
                        stream,
                        sqlstate::PROTOCOL_VIOLATION,
                        "GSSENCRequest inside TLS",
                    ));
                }
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel { pid, key } => {
                if let Some(target) = gw.cancels.lookup(pid, &key) {
                    target.held.notify_waiters();
                    tokio::spawn(async move {
                        let _ = backend::send_cancel(
                            &target.host,
                            target.port,
                            target.tls,
                            target.sslrootcert.as_deref(),
                            target.pid,
                            &target.key,
                        )
                        .await;
                    });
                }
                // Close cleanly (TLS close_notify): libpq's encrypted cancel treats an abrupt
                // EOF as a failed cancel.
                let _ = stream.shutdown().await;
                return Ok(Opening::Done);
            }
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                let plaintext_ok = gw.config.allow_plaintext && peer.ip().is_loopback();
                if !(stream.is_tls() || plaintext_ok) {
                    return Err(refuse(
                        stream,
                        sqlstate::INVALID_AUTHORIZATION,
                        "pgward requires TLS: connect with sslmode=verify-full (or require)",
                    ));
                }
                return Ok(Opening::Session(StartupInfo {
                    stream,
                    major,
                    minor,
                    params,
                    buf,
                }));
            }
        }
    }
}
