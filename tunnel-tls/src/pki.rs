//! A throw-away PKI for tests, the simulator and the demo: a CA made on the spot that issues server and
//! client certificates. Keys are ECDSA P-256; certificates carry the right extended key usage
//! (server auth / client auth) and rcgen's default validity (1975 to 4096), so no clock is read.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::TlsError;
use crate::pem::{Identity, Roots};

/// The names a default server certificate is valid for.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The common name of the default client certificate.
pub const DEFAULT_CLIENT_NAME: &str = "agent-tunnel test client";

/// One issued certificate with its private key, in PEM and DER.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl IssuedCert {
    fn new(cert: &rcgen::Certificate, key: &KeyPair) -> Self {
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// The private key (PKCS#8 DER).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The certificate (a one-element chain: the issuing CA is the trust anchor) and its key.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        Identity::new(
            vec![self.cert_der.clone()],
            self.key_der(),
            "issued certificate",
        )
    }
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Paths written by [`ThrowawayPki::write_pem_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// `ca.pem`: the CA certificate (the roots for both sides).
    pub ca: PathBuf,
    /// `server.pem` / `server-key.pem`
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `client.pem` / `client-key.pem`
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A generated CA with one server certificate (for [`DEFAULT_SERVER_NAMES`] unless given) and one client
/// certificate; more can be issued.
pub struct ThrowawayPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// The server certificate.
    pub server: IssuedCert,
    /// The client certificate, for mutual TLS.
    pub client: IssuedCert,
}

impl ThrowawayPki {
    /// A new CA, a server certificate for `localhost`, `127.0.0.1` and `::1`, and a client certificate.
    pub fn generate() -> Result<Self, TlsError> {
        Self::generate_for(DEFAULT_SERVER_NAMES)
    }

    /// A new CA, a server certificate for `server_names` (DNS names or IP addresses), and a client
    /// certificate named [`DEFAULT_CLIENT_NAME`].
    pub fn generate_for(server_names: &[&str]) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        // Distinct names per CA, so a certificate from another throw-away CA is reported as an unknown
        // issuer rather than as a bad signature from a same-named one.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hasher::write(&mut hasher, key.public_key_raw());
        let tag = std::hash::Hasher::finish(&hasher);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("agent-tunnel throw-away CA {tag:016x}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&key)?;
        let ca_pem = ca_cert.pem();
        let ca_der = ca_cert.der().clone();
        let issuer = Issuer::new(params, key);
        let server = issue(&issuer, server_leaf_params(server_names)?)?;
        let client = issue(&issuer, client_leaf_params(DEFAULT_CLIENT_NAME))?;
        tracing::debug!(?server_names, "throw-away PKI generated");
        Ok(ThrowawayPki {
            issuer,
            ca_pem,
            ca_der,
            server,
            client,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA as [`Roots`] (in memory).
    pub fn roots(&self) -> Roots {
        Roots::Pem(self.ca_pem.clone().into_bytes())
    }

    /// Issues another server certificate, valid for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[&str]) -> Result<IssuedCert, TlsError> {
        issue(&self.issuer, server_leaf_params(names)?)
    }

    /// Issues another client certificate with this common name.
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert, TlsError> {
        issue(&self.issuer, client_leaf_params(common_name))
    }

    /// Writes `ca.pem`, `server.pem`, `server-key.pem`, `client.pem` and `client-key.pem` into `dir`
    /// (which must exist); key files are readable by the owner only on Unix.
    pub fn write_pem_files(&self, dir: &Path) -> Result<PkiFiles, TlsError> {
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        write(&files.ca, &self.ca_pem, false)?;
        write(&files.server_cert, &self.server.cert_pem, false)?;
        write(&files.server_key, &self.server.key_pem, true)?;
        write(&files.client_cert, &self.client.cert_pem, false)?;
        write(&files.client_key, &self.client.key_pem, true)?;
        Ok(files)
    }
}

impl std::fmt::Debug for ThrowawayPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrowawayPki")
            .field("ca_pem", &self.ca_pem)
            .field("server", &self.server)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

fn server_leaf_params(names: &[&str]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*name).try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    let cn = names.first().copied().unwrap_or("agent-tunnel server");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn client_leaf_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    params: CertificateParams,
) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(IssuedCert::new(&cert, &key))
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let map = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(map)?;
    file.write_all(contents.as_bytes()).map_err(map)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_pki_has_its_own_ca() {
        let a = ThrowawayPki::generate().unwrap();
        let b = ThrowawayPki::generate().unwrap();
        assert_ne!(a.ca_pem(), b.ca_pem());
        assert_ne!(a.ca_der(), b.ca_der());
        assert_ne!(a.server.cert_der, a.client.cert_der);
    }

    #[test]
    fn invalid_dns_names_are_an_error() {
        let pki = ThrowawayPki::generate().unwrap();
        assert!(matches!(
            pki.issue_server(&["bücher.example"]),
            Err(TlsError::Generate(_))
        ));
    }

    #[test]
    fn writing_into_a_missing_directory_fails_with_the_path() {
        let pki = ThrowawayPki::generate().unwrap();
        let dir = std::env::temp_dir().join("tunnel-tls-missing-dir/nested");
        match pki.write_pem_files(&dir) {
            Err(TlsError::Write { path, .. }) => assert_eq!(path, dir.join("ca.pem")),
            other => panic!("{other:?}"),
        }
    }
}
