//! In-memory TLS handshakes between configs built by this crate, driven by hand (no sockets): the
//! client's records are fed to the server and back until both finish or one fails.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, Error, ServerConfig,
    ServerConnection,
};
use tunnel_tls::{
    ALPN_PROTOCOL, Identity, Roots, ThrowawayPki, client_config, server_config,
    server_config_from_pem, server_config_with, server_name,
};

#[derive(Debug)]
enum Failure {
    Client(Error),
    Server(Error),
}

/// Moves every pending TLS record from `from` to `to`, letting `to` process them.
fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), Error> {
    let mut buf = Vec::new();
    // bounded: each call writes at least one record while there is something to write
    for _ in 0..1000 {
        if !from.wants_write() {
            break;
        }
        from.write_tls(&mut buf).unwrap();
    }
    let mut rest = &buf[..];
    for _ in 0..1000 {
        if rest.is_empty() {
            break;
        }
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// Runs a handshake; on success, sends one message each way and returns the negotiated ALPN protocol
/// and the server side.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: &str,
) -> Result<(Vec<u8>, Connection), Failure> {
    let mut c =
        Connection::Client(ClientConnection::new(client, server_name(name).unwrap()).unwrap());
    let mut s = Connection::Server(ServerConnection::new(server).unwrap());
    for _ in 0..20 {
        transfer(&mut c, &mut s).map_err(Failure::Server)?;
        transfer(&mut s, &mut c).map_err(Failure::Client)?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            let alpn = c.alpn_protocol().unwrap_or_default().to_vec();
            assert_eq!(s.alpn_protocol(), Some(&alpn[..]));
            // application data both ways
            let mut got = [0u8; 4];
            c.writer().write_all(b"ping").unwrap();
            transfer(&mut c, &mut s).map_err(Failure::Server)?;
            s.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"ping");
            s.writer().write_all(b"pong").unwrap();
            transfer(&mut s, &mut c).map_err(Failure::Client)?;
            c.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"pong");
            return Ok((alpn, s));
        }
    }
    panic!("handshake neither finished nor failed within 20 round trips");
}

#[test]
fn handshake_succeeds_with_the_right_ca_for_every_default_name() {
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let client = client_config(&pki.roots(), None).unwrap();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let (alpn, _) = handshake(client.clone(), server.clone(), name).unwrap();
        assert_eq!(alpn, ALPN_PROTOCOL, "{name}");
    }
}

#[test]
fn handshake_fails_with_a_wrong_ca() {
    let pki = ThrowawayPki::generate().unwrap();
    let other = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), None).unwrap();
    let client = client_config(&other.roots(), None).unwrap();
    match handshake(client, server, "localhost") {
        Err(Failure::Client(Error::InvalidCertificate(CertificateError::UnknownIssuer))) => {}
        other => panic!("expected the client to reject an unknown issuer, got {other:?}"),
    }
}

#[test]
fn handshake_fails_for_a_name_not_in_the_certificate() {
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), None).unwrap();
    let client = client_config(&pki.roots(), None).unwrap();
    match handshake(client, server, "kas.example.com") {
        Err(Failure::Client(Error::InvalidCertificate(e))) => {
            assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}")
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

#[test]
fn mutual_tls_succeeds_with_a_client_certificate() {
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_from_pem(
        pki.server.cert_pem.as_bytes(),
        pki.server.key_pem.as_bytes(),
        Some(pki.ca_pem().as_bytes()),
    )
    .unwrap();
    let client = client_config(&pki.roots(), Some(pki.client.identity().unwrap())).unwrap();
    let (alpn, s) = handshake(client, server, "localhost").unwrap();
    assert_eq!(alpn, ALPN_PROTOCOL);
    let presented = s.peer_certificates().unwrap();
    assert_eq!(presented[0], pki.client.cert_der);
}

#[test]
fn mutual_tls_fails_without_a_client_certificate() {
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), Some(&pki.roots())).unwrap();
    let client = client_config(&pki.roots(), None).unwrap();
    match handshake(client, server, "localhost") {
        Err(Failure::Server(Error::NoCertificatesPresented)) => {}
        other => panic!("expected the server to require a certificate, got {other:?}"),
    }
}

#[test]
fn mutual_tls_fails_with_a_client_certificate_from_another_ca() {
    let pki = ThrowawayPki::generate().unwrap();
    let other = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), Some(&pki.roots())).unwrap();
    let client = client_config(&pki.roots(), Some(other.client.identity().unwrap())).unwrap();
    match handshake(client, server, "localhost") {
        Err(Failure::Server(Error::InvalidCertificate(CertificateError::UnknownIssuer))) => {}
        other => panic!("expected the server to reject the client's issuer, got {other:?}"),
    }
}

#[test]
fn a_server_certificate_cannot_authenticate_a_client() {
    // the server certificate lacks the client-auth extended key usage
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), Some(&pki.roots())).unwrap();
    let client = client_config(&pki.roots(), Some(pki.server.identity().unwrap())).unwrap();
    match handshake(client, server, "localhost") {
        Err(Failure::Server(Error::InvalidCertificate(_))) => {}
        other => panic!("expected the server to reject the certificate's usage, got {other:?}"),
    }
}

#[test]
fn server_rejects_another_alpn_protocol_and_tls12() {
    let pki = ThrowawayPki::generate().unwrap();
    let server = server_config_with(pki.server.identity().unwrap(), None).unwrap();
    let mut wrong_alpn = (*client_config(&pki.roots(), None).unwrap()).clone();
    wrong_alpn.alpn_protocols = vec![b"h2".to_vec()];
    match handshake(Arc::new(wrong_alpn), server.clone(), "localhost") {
        Err(Failure::Server(Error::NoApplicationProtocol)) => {}
        other => panic!("expected an ALPN failure, got {other:?}"),
    }
    let tls12 = ClientConfig::builder_with_provider(tunnel_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(pki.roots().load().unwrap())
        .with_no_client_auth();
    match handshake(Arc::new(tls12), server, "localhost") {
        Err(Failure::Server(Error::PeerIncompatible(_))) => {}
        other => panic!("expected TLS 1.2 to be refused, got {other:?}"),
    }
}

#[test]
fn configs_build_from_pki_files_and_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ThrowawayPki::generate().unwrap();
    let files = pki.write_pem_files(dir.path()).unwrap();
    for (path, name) in [
        (&files.ca, "ca.pem"),
        (&files.server_cert, "server.pem"),
        (&files.server_key, "server-key.pem"),
        (&files.client_cert, "client.pem"),
        (&files.client_key, "client-key.pem"),
    ] {
        assert_eq!(path, &dir.path().join(name));
        assert!(path.is_file(), "{name}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.server_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
    let server = server_config(&files.server_cert, &files.server_key, Some(&files.ca)).unwrap();
    let identity = Identity::from_pem_files(&files.client_cert, &files.client_key).unwrap();
    let client = client_config(&Roots::PemFile(files.ca.clone()), Some(identity)).unwrap();
    let (alpn, _) = handshake(client, server, "127.0.0.1").unwrap();
    assert_eq!(alpn, ALPN_PROTOCOL);
}

#[test]
fn additional_certificates_from_the_same_ca_work() {
    let pki = ThrowawayPki::generate().unwrap();
    let kas = pki.issue_server(&["kas.test", "10.1.2.3"]).unwrap();
    let agent = pki.issue_client("agent 42").unwrap();
    let server = server_config_with(kas.identity().unwrap(), Some(&pki.roots())).unwrap();
    let client = client_config(&pki.roots(), Some(agent.identity().unwrap())).unwrap();
    handshake(client.clone(), server.clone(), "kas.test").unwrap();
    handshake(client.clone(), server.clone(), "10.1.2.3").unwrap();
    assert!(handshake(client, server, "localhost").is_err());
}
