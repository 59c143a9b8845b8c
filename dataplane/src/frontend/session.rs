//! One client session from accept to close: startup, authentication through the decision
//! service, the upstream connection, then the relay.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cancel::CancelTarget;
use super::gateway::Gateway;
use super::relay::{End, Relay};
use super::startup::{self, Opening, StartupInfo};
use super::stream::ClientStream;
use crate::backend::{self, BackendError};
use crate::decide::bridge::{Answer, Request};
use crate::decide::types::Refusal;
use crate::net::messages::{
    auth_cleartext_password, auth_ok, build_backend_key_data, build_error,
    build_negotiate_protocol_version, build_parameter_status, build_query, build_ready_for_query,
    parse_parameter_status, parse_password, ErrorFields,
};
use crate::net::reader::read_frame;
use crate::net::sqlstate;
use crate::record::{Meta, RecordTap};

/// Newest protocol minor version the gateway speaks to clients (3.2: PostgreSQL 18).
const NEWEST_MINOR: u16 = 2;
/// A password message holds at most a token; anything bigger is not a credential.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;

struct ActiveGuard<'a>(&'a Gateway);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    gw.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    gw.stats.sessions_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&gw);
    let session_id = gw.next_session_id();

    let opened =
        tokio::time::timeout(gw.config.startup_timeout, startup::open(&gw, tcp, peer)).await;
    let info = match opened {
        Ok(Ok(Opening::Session(info))) => info,
        Ok(Ok(Opening::Done)) | Err(_) => return,
        Ok(Err(e)) => {
            gw.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            e.report().await;
            return;
        }
    };
    let reason = serve(&gw, session_id, info, peer).await;
    gw.bridge.tell(Request::SessionEnd { session_id, reason });
}

async fn fatal<W: AsyncWrite + Unpin>(
    w: &mut W,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let _ = w
        .write_all(&build_error("FATAL", sqlstate, message, detail, hint))
        .await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

async fn refuse(stream: &mut ClientStream, r: &Refusal) -> String {
    fatal(
        stream,
        &r.sqlstate,
        &r.message,
        r.detail.as_deref(),
        r.hint.as_deref(),
    )
    .await;
    format!("refused: {} {}", r.sqlstate, r.message)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn serve(gw: &Arc<Gateway>, session_id: u64, info: StartupInfo, peer: SocketAddr) -> String {
    let StartupInfo {
        mut stream,
        major,
        minor,
        params,
        mut buf,
    } = info;
    if major != 3 {
        let r = Refusal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {major}.{minor}: pgward speaks 3.0 and 3.2"),
        );
        return refuse(&mut stream, &r).await;
    }
    // `_pq_.` options are protocol extensions; pgward implements none, so it names them back.
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    let params: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .collect();
    let mut hello = BytesMut::new();
    if minor > NEWEST_MINOR || !unsupported.is_empty() {
        // The newest version as a whole protocol number (major << 16 | minor), as PostgreSQL sends it.
        let newest = (3u32 << 16) | u32::from(minor.min(NEWEST_MINOR));
        hello.put_slice(&build_negotiate_protocol_version(newest, &unsupported));
    }
    let key_len = if minor >= 2 { 32 } else { 4 };

    let Some(user) = param(&params, "user").map(str::to_owned) else {
        let r = Refusal::new(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        );
        return refuse(&mut stream, &r).await;
    };
    let database = param(&params, "database").unwrap_or(&user).to_owned();
    if param(&params, "replication").is_some_and(|v| !matches!(v, "false" | "off" | "0" | "no")) {
        let r = Refusal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgward",
        );
        return refuse(&mut stream, &r).await;
    }

    // Ask for the credential (an API key or a token); only ever inside TLS, unless the operator
    // allowed plaintext on loopback.
    hello.put_slice(&auth_cleartext_password());
    if stream.write_all(&hello).await.is_err() || stream.flush().await.is_err() {
        return "client went away during startup".into();
    }
    let frame = match read_frame(&mut stream, &mut buf, MAX_PASSWORD_MESSAGE).await {
        Ok(Some(f)) => f,
        Ok(None) => return "client closed before authenticating".into(),
        Err(e) => {
            let r = Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid password message: {e}"),
            );
            return refuse(&mut stream, &r).await;
        }
    };
    if frame.first() != Some(&b'p') {
        let r = Refusal::new(sqlstate::PROTOCOL_VIOLATION, "expected a password message");
        return refuse(&mut stream, &r).await;
    }
    let password = match parse_password(frame.get(5..).unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => {
            let r = Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid password message: {e}"),
            );
            return refuse(&mut stream, &r).await;
        }
    };

    let request = Request::Authenticate {
        session_id,
        client_addr: peer.to_string(),
        user: user.clone(),
        database: database.clone(),
        password,
        startup_params: params,
        tls: stream.is_tls(),
    };
    let scope = match gw.bridge.ask(request).await {
        Ok(Answer::Authenticated(Ok(admission))) => admission.scope,
        Ok(Answer::Authenticated(Err(refusal))) => return refuse(&mut stream, &refusal).await,
        Ok(Answer::Decided { .. }) | Err(_) => {
            let r = Refusal::new(
                sqlstate::INVALID_AUTHORIZATION,
                "pgward could not verify the credential: the decision service did not answer",
            );
            return refuse(&mut stream, &r).await;
        }
    };

    let upstream = match backend::connect(&scope.upstream).await {
        Ok(mut u) => match &scope.setup_sql {
            None => u,
            Some(sql) => match run_setup(&mut u, sql, gw.config.max_message_size).await {
                Ok(()) => u,
                Err(detail) => {
                    let r = Refusal {
                        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE.into(),
                        message: "pgward could not establish the session's scope on the target".into(),
                        detail: Some(detail),
                        hint: Some("the connection's policy names a role or setting the target refused; tell the pgward operator".into()),
                    };
                    return refuse(&mut stream, &r).await;
                }
            },
        },
        Err(e) => {
            let detail = upstream_detail(&e);
            let r = Refusal {
                sqlstate: sqlstate::CONNECTION_FAILURE.into(),
                message: format!(
                    "pgward could not connect to the database of connection \"{database}\""
                ),
                detail: Some(detail),
                hint: Some(
                    "the target database may be down; try again, or ask the pgward operator".into(),
                ),
            };
            return refuse(&mut stream, &r).await;
        }
    };

    // Recording starts with the relay: the startup exchange (and its credential) is never recorded.
    // A recording that cannot start refuses the session (fail closed).
    let record = match &gw.recorder {
        None => RecordTap::default(),
        Some(recorder) => {
            let meta = Meta {
                session_uuid: &scope.session_uuid,
                identity: &scope.identity,
                identity_detail: scope.identity_detail.as_deref(),
                connection: &scope.connection,
                client_addr: &peer.to_string(),
                protocol: format!("{major}.{minor}"),
            };
            match recorder.open(&meta).await {
                Ok(r) => RecordTap::new(Some(r)),
                Err(e) => {
                    let r = Refusal {
                        sqlstate: e.sqlstate().into(),
                        message: "pgward could not start recording this session, and records every session".into(),
                        detail: Some(e.to_string()),
                        hint: Some("tell the pgward operator (check the recording directory's disk space and permissions)".into()),
                    };
                    return refuse(&mut stream, &r).await;
                }
            }
        }
    };

    let target = CancelTarget {
        host: scope.upstream.host.clone(),
        port: scope.upstream.port,
        tls: scope.upstream.tls,
        sslrootcert: scope.upstream.sslrootcert.clone(),
        pid: upstream.pid,
        key: upstream.key.clone(),
        held: Arc::new(tokio::sync::Notify::new()),
    };
    let held = Arc::clone(&target.held);
    let (pid, key) = gw.cancels.register(target, key_len);
    let keys = (pid, key.as_slice(), held);
    let end = relay_session(gw, session_id, &scope, &record, stream, upstream, buf, keys).await;
    gw.cancels.remove(pid, &key);
    match record.finish(&end).await {
        Ok(()) => end,
        Err(e) => format!("{end}; {e}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_session(
    gw: &Arc<Gateway>,
    session_id: u64,
    scope: &crate::decide::Scope,
    record: &RecordTap,
    stream: ClientStream,
    upstream: backend::Upstream,
    client_buf: BytesMut,
    (pid, key, held): (i32, &[u8], Arc<tokio::sync::Notify>),
) -> String {
    let mut hello = BytesMut::new();
    hello.put_slice(&auth_ok());
    for (name, value) in &upstream.parameters {
        hello.put_slice(&build_parameter_status(name, value));
    }
    hello.put_slice(&build_backend_key_data(pid, key));
    hello.put_slice(&build_ready_for_query(b'I'));

    let client_encoding = upstream
        .parameters
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("client_encoding"))
        .map_or("UTF8", |(_, v)| v.as_str())
        .to_owned();
    let backend::Upstream {
        stream: server,
        read_buf: server_buf,
        ..
    } = upstream;
    let (mut client_read, mut client_write) = tokio::io::split(stream);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    if client_write.write_all(&hello).await.is_err() || client_write.flush().await.is_err() {
        return "client went away during startup".into();
    }
    let relay = Relay::new(gw, session_id, scope, record)
        .with_client_encoding(&client_encoding)
        .with_cancel(held);
    let end = relay
        .run(
            &mut client_read,
            &mut client_write,
            &mut server_read,
            &mut server_write,
            client_buf,
            server_buf,
        )
        .await;
    match end {
        End::ClientClosed => {
            let _ = server_write.shutdown().await;
            "client closed".into()
        }
        End::ServerClosed { fatal_sent } => {
            if !fatal_sent {
                fatal(
                    &mut client_write,
                    sqlstate::CONNECTION_FAILURE,
                    "the target database closed the connection unexpectedly",
                    None,
                    Some("the target may have restarted; reconnect to continue"),
                )
                .await;
            } else {
                let _ = client_write.shutdown().await;
            }
            "target closed".into()
        }
        End::ClientProtocol(reason) => {
            gw.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            fatal(
                &mut client_write,
                sqlstate::PROTOCOL_VIOLATION,
                &reason,
                None,
                None,
            )
            .await;
            let _ = server_write.shutdown().await;
            format!("client protocol violation: {reason}")
        }
        End::ServerProtocol(reason) => {
            fatal(
                &mut client_write,
                sqlstate::CONNECTION_FAILURE,
                "the target database broke the protocol",
                Some(&reason),
                None,
            )
            .await;
            format!("target protocol violation: {reason}")
        }
        End::MaskingFailed(reason) => {
            fatal(
                &mut client_write,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "pgward could not mask this result and closed the session rather than show it",
                Some(&reason),
                Some("select the masked columns plainly, or ask for access to the clear values"),
            )
            .await;
            let _ = server_write.shutdown().await;
            format!("masking failed: {reason}")
        }
        End::AuditUnavailable(reason) => {
            fatal(
                &mut client_write,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "pgward did not run the statement: its audit record could not be committed (strict audit mode)",
                Some(&reason),
                Some("the audit store may be down or slow; reconnect and retry, or tell the pgward operator"),
            )
            .await;
            let _ = server_write.shutdown().await;
            format!("audit unavailable: {reason}")
        }
        End::Recording(e) => {
            fatal(
                &mut client_write,
                e.sqlstate(),
                "pgward could not record this session and closed it, because every session is recorded",
                Some(&e.to_string()),
                Some("tell the pgward operator (check the recording directory's disk space)"),
            )
            .await;
            let _ = server_write.shutdown().await;
            format!("recording failed: {e}")
        }
        End::Io(e) => format!("I/O error: {e}"),
    }
}

/// Run the scope's setup SQL upstream and consume its results up to ReadyForQuery. Parameter
/// changes it causes are folded into what the client will be told.
async fn run_setup(upstream: &mut backend::Upstream, sql: &str, max: usize) -> Result<(), String> {
    upstream
        .stream
        .write_all(&build_query(sql))
        .await
        .map_err(|e| e.to_string())?;
    upstream.stream.flush().await.map_err(|e| e.to_string())?;
    let mut error: Option<String> = None;
    loop {
        let frame = match read_frame(&mut upstream.stream, &mut upstream.read_buf, max).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err("the target closed the connection during session setup".into()),
            Err(e) => return Err(e.to_string()),
        };
        let body = frame.get(5..).unwrap_or_default();
        match frame.first() {
            Some(b'E') => {
                let fields = ErrorFields::parse(body).map_err(|e| e.to_string())?;
                error.get_or_insert_with(|| {
                    format!(
                        "{}: {}",
                        fields.sqlstate().unwrap_or("?????"),
                        fields.message().unwrap_or("error")
                    )
                });
            }
            Some(b'S') => {
                if let Ok((name, value)) = parse_parameter_status(body) {
                    match upstream.parameters.iter_mut().find(|(n, _)| n == name) {
                        Some(entry) => entry.1 = value.to_owned(),
                        None => upstream
                            .parameters
                            .push((name.to_owned(), value.to_owned())),
                    }
                }
            }
            Some(b'Z') => return error.map_or(Ok(()), Err),
            _ => {}
        }
    }
}

fn upstream_detail(e: &BackendError) -> String {
    match e {
        BackendError::Server(fields) => {
            format!(
                "{}: {}",
                fields.sqlstate().unwrap_or("?????"),
                fields.message().unwrap_or("error")
            )
        }
        other => other.to_string(),
    }
}
