//! Tests of the upstream client against a scripted in-process server, plus an optional
//! integration test against a real PostgreSQL (`PGWARD_TEST_UPSTREAM=host:port:db:user:password`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::net::messages::authentication::{auth_md5_password, auth_ok};
use crate::net::messages::{
    auth_cleartext_password, build_backend_key_data, build_error, build_parameter_status,
    build_ready_for_query, parse_password, parse_startup, StartupPacket,
};
use crate::net::reader::read_startup_frame;

fn target(port: u16, password: Option<&str>) -> UpstreamTarget {
    UpstreamTarget {
        host: "127.0.0.1".into(),
        port,
        database: "db".into(),
        user: "app".into(),
        password: password.map(Into::into),
        tls: UpstreamTls::Disable,
        sslrootcert: None,
        startup_params: vec![
            ("application_name".into(), "pgward".into()),
            ("user".into(), "ignored".into()),
        ],
        connect_timeout: Duration::from_secs(5),
    }
}

/// Accepts one connection, checks the StartupMessage, then lets `script` play the server.
async fn fake_server<F, Fut>(script: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let f = read_startup_frame(&mut s, &mut buf, 10_000)
            .await
            .unwrap()
            .unwrap();
        let p = parse_startup(&f).unwrap();
        assert_eq!(p.param("user"), Some("app"));
        assert_eq!(p.param("database"), Some("db"));
        assert_eq!(p.param("application_name"), Some("pgward"));
        assert!(
            matches!(p, StartupPacket::Startup { major: 3, minor: 0, ref params } if params.len() == 3)
        );
        script(s).await;
    });
    (port, h)
}

async fn read_password(s: &mut TcpStream) -> String {
    let mut buf = BytesMut::new();
    let f = read_frame(s, &mut buf, 10_000).await.unwrap().unwrap();
    assert_eq!(f[0], b'p');
    parse_password(&f[5..]).unwrap()
}

async fn finish_startup(s: &mut TcpStream, extra: &[u8]) {
    let mut out = Vec::new();
    out.extend_from_slice(&auth_ok());
    out.extend_from_slice(&build_parameter_status("server_version", "18.1"));
    out.extend_from_slice(&build_parameter_status("TimeZone", "UTC"));
    out.extend_from_slice(&build_backend_key_data(77, &[1, 2, 3, 4]));
    out.extend_from_slice(&build_ready_for_query(b'I'));
    out.extend_from_slice(extra);
    s.write_all(&out).await.unwrap();
}

#[tokio::test]
async fn trust() {
    let (port, h) = fake_server(|mut s| async move {
        finish_startup(&mut s, b"Z\0\0\0\x05I").await;
    })
    .await;
    let u = connect(&target(port, None)).await.unwrap();
    h.await.unwrap();
    assert_eq!(u.pid, 77);
    assert_eq!(u.key, vec![1, 2, 3, 4]);
    assert_eq!(
        u.parameters,
        vec![
            ("server_version".to_owned(), "18.1".to_owned()),
            ("TimeZone".to_owned(), "UTC".to_owned())
        ]
    );
    // Bytes after the first ReadyForQuery are handed over, not lost.
    assert_eq!(&u.read_buf[..], b"Z\0\0\0\x05I");
    assert!(!u.stream.is_tls());
}

#[tokio::test]
async fn cleartext_and_md5() {
    let (port, h) = fake_server(|mut s| async move {
        s.write_all(&auth_cleartext_password()).await.unwrap();
        assert_eq!(read_password(&mut s).await, "pw");
        finish_startup(&mut s, b"").await;
    })
    .await;
    connect(&target(port, Some("pw"))).await.unwrap();
    h.await.unwrap();

    let (port, h) = fake_server(|mut s| async move {
        s.write_all(&auth_md5_password([9, 8, 7, 6])).await.unwrap();
        let expected = md5_hash_for_test("app", "pw", [9, 8, 7, 6]);
        assert_eq!(read_password(&mut s).await, expected);
        finish_startup(&mut s, b"").await;
    })
    .await;
    connect(&target(port, Some("pw"))).await.unwrap();
    h.await.unwrap();
}

fn md5_hash_for_test(user: &str, password: &str, salt: [u8; 4]) -> String {
    postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
}

#[tokio::test]
async fn missing_password() {
    let (port, h) = fake_server(|mut s| async move {
        s.write_all(&auth_cleartext_password()).await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    })
    .await;
    assert!(matches!(
        connect(&target(port, None)).await,
        Err(BackendError::MissingPassword)
    ));
    h.await.unwrap();
}

#[tokio::test]
async fn server_error_is_relayed() {
    let (port, h) = fake_server(|mut s| async move {
        let e = build_error(
            "FATAL",
            "3D000",
            "database \"db\" does not exist",
            None,
            None,
        );
        s.write_all(&e).await.unwrap();
    })
    .await;
    match connect(&target(port, None)).await {
        Err(BackendError::Server(f)) => {
            assert_eq!(f.sqlstate(), Some("3D000"));
            assert_eq!(f.message(), Some("database \"db\" does not exist"));
        }
        other => panic!("{other:?}"),
    }
    h.await.unwrap();
}

#[tokio::test]
async fn scram_ok_without_final_is_refused() {
    use crate::net::messages::authentication::auth_sasl;
    let (port, h) = fake_server(|mut s| async move {
        s.write_all(&auth_sasl(&["SCRAM-SHA-256"])).await.unwrap();
        let mut buf = BytesMut::new();
        let f = read_frame(&mut s, &mut buf, 10_000).await.unwrap().unwrap();
        let (mech, data) =
            crate::net::messages::password_message::parse_sasl_initial(&f[5..]).unwrap();
        assert_eq!(mech, "SCRAM-SHA-256");
        // Plaintext connection: the client must announce "n" (no channel binding).
        assert!(data.unwrap().starts_with(b"n,,"));
        // An impostor skipping the exchange.
        s.write_all(&auth_ok()).await.unwrap();
    })
    .await;
    assert!(matches!(
        connect(&target(port, Some("pw"))).await,
        Err(BackendError::Protocol(_))
    ));
    h.await.unwrap();
}

#[tokio::test]
async fn tls_refused_by_server() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(&req[..], &build_ssl_request()[..]);
        s.write_all(b"N").await.unwrap();
    });
    let mut t = target(port, None);
    t.tls = UpstreamTls::Require;
    assert!(matches!(connect(&t).await, Err(BackendError::TlsRefused)));
    h.await.unwrap();
}

#[tokio::test]
async fn connect_timeout() {
    // Accepts but never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(s);
    });
    let mut t = target(port, None);
    t.connect_timeout = Duration::from_millis(200);
    assert!(matches!(connect(&t).await, Err(BackendError::Timeout)));
    h.abort();
}

#[tokio::test]
async fn tls_require_accepts_self_signed_and_sends_cancel() {
    // A TLS server with a throwaway certificate: Require must connect, VerifyFull must not.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = tls::server_config_from_der(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        for expect_ok in [true, false] {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 8];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(b"S").await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            match acceptor.accept(s).await {
                Ok(mut tls) => {
                    assert!(expect_ok);
                    let mut buf = BytesMut::new();
                    let f = read_startup_frame(&mut tls, &mut buf, 10_000)
                        .await
                        .unwrap()
                        .unwrap();
                    assert_eq!(
                        parse_startup(&f).unwrap(),
                        StartupPacket::Cancel {
                            pid: 5,
                            key: vec![1, 2, 3, 4]
                        }
                    );
                }
                Err(_) => assert!(!expect_ok),
            }
        }
    });
    send_cancel(
        "127.0.0.1",
        port,
        UpstreamTls::Require,
        None,
        5,
        &[1, 2, 3, 4],
    )
    .await
    .unwrap();
    assert!(send_cancel(
        "127.0.0.1",
        port,
        UpstreamTls::VerifyFull,
        None,
        5,
        &[1, 2, 3, 4]
    )
    .await
    .is_err());
    h.await.unwrap();
}

#[test]
fn debug_redacts_password() {
    let t = target(1, Some("hunter2"));
    assert!(!format!("{t:?}").contains("hunter2"));
}

/// Runs against a real server when `PGWARD_TEST_UPSTREAM=host:port:db:user:password` is set
/// (optionally `PGWARD_TEST_UPSTREAM_TLS=disable|require|verify-full` and
/// `PGWARD_TEST_UPSTREAM_ROOT=path`); passes with a note otherwise.
#[tokio::test]
async fn real_server_if_configured() {
    let Ok(spec) = std::env::var("PGWARD_TEST_UPSTREAM") else {
        eprintln!("PGWARD_TEST_UPSTREAM not set; skipping the real-server test");
        return;
    };
    let parts: Vec<&str> = spec.splitn(5, ':').collect();
    let [host, port, db, user, password] = parts[..] else {
        panic!("PGWARD_TEST_UPSTREAM must be host:port:db:user:password");
    };
    let tls = std::env::var("PGWARD_TEST_UPSTREAM_TLS")
        .ok()
        .and_then(|m| UpstreamTls::from_mode(&m))
        .unwrap_or(UpstreamTls::Disable);
    let t = UpstreamTarget {
        host: host.into(),
        port: port.parse().unwrap(),
        database: db.into(),
        user: user.into(),
        password: (!password.is_empty()).then(|| password.into()),
        tls,
        sslrootcert: std::env::var_os("PGWARD_TEST_UPSTREAM_ROOT").map(Into::into),
        startup_params: vec![("application_name".into(), "pgward-test".into())],
        connect_timeout: Duration::from_secs(10),
    };
    let mut u = connect(&t).await.unwrap();
    assert_eq!(u.stream.is_tls(), tls != UpstreamTls::Disable);
    assert!(u.parameters.iter().any(|(k, _)| k == "server_version"));
    assert!(u.pid != 0 && u.key.len() >= 4);

    // A long query, cancelled through send_cancel.
    u.stream
        .write_all(&crate::net::messages::build_query("select pg_sleep(30)"))
        .await
        .unwrap();
    u.stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_cancel(host, t.port, tls, t.sslrootcert.as_deref(), u.pid, &u.key)
        .await
        .unwrap();
    let mut buf = std::mem::take(&mut u.read_buf);
    // RowDescription comes before the sleep starts; the cancel surfaces as an ErrorResponse.
    let e = loop {
        let f = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut u.stream, &mut buf, DEFAULT_MAX),
        )
        .await
        .expect("cancel did not take effect")
        .unwrap()
        .unwrap();
        if f[0] == b'E' {
            break ErrorFields::parse(&f[5..]).unwrap();
        }
        assert_ne!(f[0], b'Z', "query finished without an error");
    };
    assert_eq!(e.sqlstate(), Some(crate::net::sqlstate::QUERY_CANCELED));
    eprintln!(
        "real server OK: tls={tls:?} auth={} params={}",
        u.auth_method,
        u.parameters.len()
    );
}

const DEFAULT_MAX: usize = crate::net::framing::DEFAULT_MAX_MESSAGE;
