//! rustls client and server configurations for the tunnel.
//!
//! Both sides: TLS 1.3 only, the `ring` provider passed explicitly, ALPN [`ALPN_PROTOCOL`]. A peer that
//! offers ALPN without `agent-tunnel/1` fails the handshake (rustls sends `no_application_protocol`).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;

use crate::error::TlsError;
use crate::pem::{Identity, Roots};

/// The ALPN protocol id of the tunnel, version 1.
pub const ALPN_PROTOCOL: &[u8] = b"agent-tunnel/1";

/// The TLS versions offered and accepted.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider used by every configuration of this crate (`ring`).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server (kas) configuration from PEM files: certificate chain (leaf first) and private key; with
/// `client_auth_roots_pem`, clients must present a certificate issued by one of those roots (mutual TLS).
pub fn server_config(
    cert_chain_pem: impl AsRef<Path>,
    key_pem: impl AsRef<Path>,
    client_auth_roots_pem: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let identity = Identity::from_pem_files(cert_chain_pem, key_pem)?;
    let client_auth = client_auth_roots_pem.map(|p| Roots::PemFile(p.to_path_buf()));
    server_config_with(identity, client_auth.as_ref())
}

/// [`server_config`] from PEM bytes in memory.
pub fn server_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_auth_roots_pem: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let identity = Identity::from_pem(cert_chain_pem, key_pem)?;
    let client_auth = client_auth_roots_pem.map(|p| Roots::Pem(p.to_vec()));
    server_config_with(identity, client_auth.as_ref())
}

/// The server configuration from a loaded identity; `client_auth` enables mutual TLS against those roots.
pub fn server_config_with(
    identity: Identity,
    client_auth: Option<&Roots>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots.load()?), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (chain, key) = identity.into_parts();
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    tracing::debug!(
        mutual_tls = client_auth.is_some(),
        "tls server configuration built"
    );
    Ok(Arc::new(config))
}

/// The client (agentk) configuration: the server is verified against `roots`; `client_identity` is
/// presented when the server asks for a client certificate (mutual TLS).
pub fn client_config(
    roots: &Roots,
    client_identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots.load()?);
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let (chain, key) = identity.into_parts();
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    tracing::debug!(
        mutual_tls = config.client_auth_cert_resolver.has_certs(),
        "tls client configuration built"
    );
    Ok(Arc::new(config))
}

/// The name the client verifies the server certificate against: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::InvalidServerName {
        name: host.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::ThrowawayPki;

    #[test]
    fn configs_are_tls13_only_with_the_tunnel_alpn() {
        let pki = ThrowawayPki::generate().unwrap();
        let server = server_config_with(pki.server.identity().unwrap(), None).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"agent-tunnel/1".to_vec()]);
        let client = client_config(&pki.roots(), None).unwrap();
        assert_eq!(client.alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
        assert!(!client.client_auth_cert_resolver.has_certs());
        let client = client_config(&pki.roots(), Some(pki.client.identity().unwrap())).unwrap();
        assert!(client.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn server_config_from_files_reports_missing_files() {
        let dir = std::env::temp_dir().join("tunnel-tls-definitely-missing");
        let err =
            server_config(dir.join("server.pem"), dir.join("server-key.pem"), None).unwrap_err();
        assert!(
            matches!(&err, TlsError::FileNotFound { path } if path.ends_with("server.pem")),
            "{err}"
        );
    }

    #[test]
    fn mismatched_server_key_is_rejected() {
        let pki = ThrowawayPki::generate().unwrap();
        let err = server_config_from_pem(
            pki.server.cert_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn server_names() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(matches!(
            server_name("not a name"),
            Err(TlsError::InvalidServerName { .. })
        ));
    }
}
