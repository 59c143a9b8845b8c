//! TLS configuration for both sides: the gateway's listener (server) and upstream connections
//! (client).
//!
//! The ring provider is passed explicitly to every config builder rather than relying on a
//! process-wide default, which another library in the same process (the Python extension host)
//! could install differently or not at all.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN protocol name PostgreSQL 17+ uses; required by clients doing direct TLS
/// (`sslnegotiation=direct`), absent from clients that negotiate with SSLRequest.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// How the gateway protects its connection to the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// Encrypt, but accept any certificate (libpq `sslmode=require`): protects against passive
    /// eavesdropping only.
    Require,
    /// Encrypt and verify the certificate chain and host name (libpq `sslmode=verify-full`).
    VerifyFull,
}

impl UpstreamTls {
    /// Parses the control plane's spelling (`disable`, `require`, `verify-full`).
    pub fn from_mode(mode: &str) -> Option<Self> {
        match mode {
            "disable" => Some(Self::Disable),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("no private key found in {0}")]
    NoPrivateKey(PathBuf),
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#1, PKCS#8 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey(path.to_owned()))
}

/// The listener's TLS configuration from a PEM certificate chain and key, advertising ALPN
/// `postgresql`. Clients that send no ALPN (SSLRequest negotiation, libpq < 17) still connect:
/// rustls only fails the handshake when the client offers protocols and none match.
pub fn server_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_pem_path)?;
    let key = load_key(key_pem_path)?;
    server_config_from_der(certs, key)
}

/// As [`server_config`], from certificates and key already in memory (tests, generated certs).
pub fn server_config_from_der(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration for upstream connections. `Disable` yields a `Require`-style config
/// (never used for a handshake) so the caller need not special-case it.
///
/// ALPN `postgresql` is offered: servers ≥ 17 accept it, older ones ignore it, and it is what
/// a direct-TLS server would require.
pub fn client_config(
    mode: UpstreamTls,
    root_cert_path: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match mode {
        UpstreamTls::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match root_cert_path {
                Some(path) => {
                    for cert in load_certs(path)? {
                        roots.add(cert)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTls::Require | UpstreamTls::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert { provider }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The name rustls checks the certificate against and sends as SNI: a DNS name or an IP
/// address (for which no SNI is sent).
pub fn server_name(host: &str) -> Result<ServerName<'static>, rustls::Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| rustls::Error::General(format!("invalid server name {host:?}")))
}

/// `sslmode=require`: any certificate is accepted, but the handshake signatures are still
/// checked, so the session key is bound to the certificate the server presented (which is
/// what SCRAM channel binding then hashes).
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
