//! Authenticating to the upstream server: trust, cleartext password, md5, SCRAM-SHA-256 and
//! SCRAM-SHA-256-PLUS (`tls-server-end-point` channel binding).
//!
//! The server drives the exchange; we answer each Authentication request until
//! AuthenticationOk. Passwords appear only inside the messages we send, never in errors or logs.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use tokio::io::AsyncWriteExt;

use super::channel_binding::tls_server_end_point;
use super::{body, next_frame, server_error, BackendError, UpstreamStream, UpstreamTarget};
use crate::net::messages::{
    build_password, build_sasl_initial, build_sasl_response, parse_auth, tag, AuthRequest,
};

/// The DER of the server's end-entity certificate, if the stream is TLS.
fn server_certificate(stream: &UpstreamStream) -> Option<Vec<u8>> {
    match stream {
        UpstreamStream::Plain(_) => None,
        UpstreamStream::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.as_ref().to_vec()),
    }
}

/// Picks the SCRAM variant: -PLUS when we are on TLS and the server offers it. On TLS without
/// -PLUS on offer we say "y" (we could bind but the server did not offer), which lets a server
/// that does support -PLUS detect a downgrade by an active attacker.
fn choose_scram(
    mechanisms: &[String],
    cert: Option<&[u8]>,
) -> Result<(&'static str, ChannelBinding), BackendError> {
    let offers = |m: &str| mechanisms.iter().any(|x| x == m);
    match cert {
        Some(cert) if offers(SCRAM_SHA_256_PLUS) => Ok((
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(tls_server_end_point(cert)),
        )),
        Some(_) if offers(SCRAM_SHA_256) => Ok((SCRAM_SHA_256, ChannelBinding::unrequested())),
        None if offers(SCRAM_SHA_256) => Ok((SCRAM_SHA_256, ChannelBinding::unsupported())),
        _ => Err(BackendError::AuthUnsupported(format!(
            "SASL mechanisms {mechanisms:?}"
        ))),
    }
}

/// Runs the authentication exchange up to and including AuthenticationOk; returns the method
/// used.
pub(super) async fn authenticate(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    target: &UpstreamTarget,
) -> Result<&'static str, BackendError> {
    let mut method = "trust";
    let password = || {
        target
            .password
            .as_deref()
            .ok_or(BackendError::MissingPassword)
    };
    let mut scram: Option<ScramSha256> = None;
    // Set once the server proved it knows the password (SASLFinal verified); AuthenticationOk
    // without it would let an impostor skip mutual authentication.
    let mut scram_verified = false;
    loop {
        let (t, frame) = next_frame(stream, buf).await?;
        match t {
            tag::AUTHENTICATION => {}
            tag::ERROR_RESPONSE => return Err(server_error(&frame)),
            // NegotiateProtocolVersion may precede authentication if the server does not know
            // a `_pq_.` option we passed on; it continues with 3.0, as we want.
            tag::NEGOTIATE_PROTOCOL_VERSION | tag::NOTICE_RESPONSE => continue,
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during authentication",
                    char::from(other)
                )))
            }
        }
        let reply = match parse_auth(body(&frame))? {
            AuthRequest::Ok => {
                if scram.is_some() && !scram_verified {
                    return Err(BackendError::Protocol(
                        "the server ended SCRAM authentication without proving its identity".into(),
                    ));
                }
                return Ok(method);
            }
            AuthRequest::CleartextPassword => {
                method = "password";
                build_password(password()?)
            }
            AuthRequest::Md5 { salt } => {
                method = "md5";
                build_password(&md5_hash(
                    target.user.as_bytes(),
                    password()?.as_bytes(),
                    salt,
                ))
            }
            AuthRequest::Sasl { mechanisms } => {
                if scram.is_some() {
                    return Err(BackendError::Protocol("SASL exchange restarted".into()));
                }
                let cert = server_certificate(stream);
                let (mechanism, binding) = choose_scram(&mechanisms, cert.as_deref())?;
                let s = ScramSha256::new(password()?.as_bytes(), binding);
                let msg = build_sasl_initial(mechanism, s.message());
                method = mechanism;
                scram = Some(s);
                msg
            }
            AuthRequest::SaslContinue(data) => {
                let s = scram.as_mut().ok_or_else(|| {
                    BackendError::Protocol("SASLContinue before SASL started".into())
                })?;
                s.update(&data)
                    .map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
                build_sasl_response(s.message())
            }
            AuthRequest::SaslFinal(data) => {
                let s = scram.as_mut().ok_or_else(|| {
                    BackendError::Protocol("SASLFinal before SASL started".into())
                })?;
                s.finish(&data).map_err(|e| {
                    BackendError::Protocol(format!("SCRAM server verification failed: {e}"))
                })?;
                scram_verified = true;
                continue;
            }
            AuthRequest::Other(code) => {
                return Err(BackendError::AuthUnsupported(match code {
                    2 => "Kerberos V5".into(),
                    7 | 8 => "GSSAPI".into(),
                    9 => "SSPI".into(),
                    other => format!("authentication request code {other}"),
                }))
            }
        };
        stream.write_all(&reply).await?;
        stream.flush().await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn scram_choice() {
        let both = vec![SCRAM_SHA_256_PLUS.to_owned(), SCRAM_SHA_256.to_owned()];
        let plain = vec![SCRAM_SHA_256.to_owned()];
        assert_eq!(
            choose_scram(&both, Some(b"cert")).unwrap().0,
            SCRAM_SHA_256_PLUS
        );
        assert_eq!(choose_scram(&both, None).unwrap().0, SCRAM_SHA_256);
        assert_eq!(
            choose_scram(&plain, Some(b"cert")).unwrap().0,
            SCRAM_SHA_256
        );
        assert!(matches!(
            choose_scram(&["OAUTHBEARER".to_owned()], None),
            Err(BackendError::AuthUnsupported(_))
        ));
    }
}
