//! Loading TLS material from PEM: certificate chains, private keys, identities and root stores.
//!
//! Parsing uses `rustls_pki_types::pem::PemObject`. Files are read whole first, so a missing file is
//! reported as [`TlsError::FileNotFound`] with its path; every other error names its origin (the path,
//! or a description of in-memory input).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::crypto_provider;
use crate::error::TlsError;

/// Reads a whole file, telling a missing file apart from other I/O errors.
pub fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TlsError::FileNotFound {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Every certificate in `pem`, in order (other PEM sections are skipped). At least one is required.
pub fn certificates_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            origin: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in `pem`; other PEM sections are skipped.
pub fn private_key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            origin: origin.to_owned(),
        },
        source => TlsError::Pem {
            origin: origin.to_owned(),
            source,
        },
    })
}

/// [`certificates_from_pem`] on the contents of a file.
pub fn certificates_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_from_pem(&read_file(path)?, &path.display().to_string())
}

/// [`private_key_from_pem`] on the contents of a file.
pub fn private_key_from_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    private_key_from_pem(&read_file(path)?, &path.display().to_string())
}

/// A certificate chain (leaf first) with its private key: what a server presents, or a client for
/// mutual TLS. Every constructor checks that the key is usable and belongs to the leaf certificate.
pub struct Identity {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From DER values already in memory; `origin` names them in errors.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        origin: &str,
    ) -> Result<Self, TlsError> {
        if cert_chain.is_empty() {
            return Err(TlsError::NoCertificate {
                origin: origin.to_owned(),
            });
        }
        let provider = crypto_provider();
        CertifiedKey::from_der(cert_chain.clone(), key.clone_key(), &provider).map_err(
            |source| match source {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    origin: origin.to_owned(),
                },
                source => TlsError::BadKey {
                    origin: origin.to_owned(),
                    source,
                },
            },
        )?;
        Ok(Identity { cert_chain, key })
    }

    /// From PEM bytes: the certificate chain and the private key (they may be the same buffer).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let cert_chain = certificates_from_pem(cert_chain_pem, "certificate chain (PEM bytes)")?;
        let key = private_key_from_pem(key_pem, "private key (PEM bytes)")?;
        Self::new(cert_chain, key, "identity (PEM bytes)")
    }

    /// From PEM files: the certificate chain and the private key (they may be the same file).
    pub fn from_pem_files(
        cert_chain_pem: impl AsRef<Path>,
        key_pem: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_chain_pem.as_ref(), key_pem.as_ref());
        let cert_chain = certificates_from_file(cert_path)?;
        let key = private_key_from_file(key_path)?;
        Self::new(cert_chain, key, &key_path.display().to_string())
    }

    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The chain and the key, by value.
    pub fn into_parts(self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.cert_chain, self.key)
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.cert_chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Where the trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file holding one or more CA certificates.
    PemFile(PathBuf),
    /// PEM bytes holding one or more CA certificates.
    Pem(Vec<u8>),
    /// The operating system's store, through `rustls-native-certs` (honours `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR`).
    System,
}

impl Roots {
    /// Builds the root store. Every certificate of a PEM source must be a valid trust anchor; from the
    /// system store, unparsable entries are skipped (and logged) but at least one must load.
    pub fn load(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        match self {
            Roots::PemFile(path) => {
                let origin = path.display().to_string();
                add_all(&mut store, certificates_from_file(path)?, &origin)?;
            }
            Roots::Pem(pem) => {
                let origin = "root certificates (PEM bytes)";
                add_all(&mut store, certificates_from_pem(pem, origin)?, origin)?;
            }
            Roots::System => {
                let result = rustls_native_certs::load_native_certs();
                for error in &result.errors {
                    tracing::warn!(%error, "skipping unreadable system root certificate source");
                }
                let (added, ignored) = store.add_parsable_certificates(result.certs);
                if ignored > 0 {
                    tracing::warn!(ignored, "skipped unparsable system root certificates");
                }
                if added == 0 {
                    let details = if result.errors.is_empty() {
                        "the store is empty".to_owned()
                    } else {
                        result
                            .errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    return Err(TlsError::NoSystemRoots { details });
                }
            }
        }
        Ok(store)
    }
}

fn add_all(
    store: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    origin: &str,
) -> Result<(), TlsError> {
    for cert in certs {
        store
            .add(cert)
            .map_err(|source| TlsError::BadRootCertificate {
                origin: origin.to_owned(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::ThrowawayPki;

    const NOT_DER: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    const BAD_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";

    #[test]
    fn missing_file_names_its_path() {
        let path = Path::new("/nonexistent/agent-tunnel/server.pem");
        match certificates_from_file(path) {
            Err(TlsError::FileNotFound { path: p }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        let err = Identity::from_pem_files(path, path).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/agent-tunnel/server.pem"),
            "{err}"
        );
    }

    #[test]
    fn pem_without_certificate_or_key() {
        let pki = ThrowawayPki::generate().unwrap();
        // a key-only PEM has no certificate, a certificate-only PEM has no key
        assert!(matches!(
            certificates_from_pem(pki.server.key_pem.as_bytes(), "k"),
            Err(TlsError::NoCertificate { origin }) if origin == "k"
        ));
        assert!(matches!(
            private_key_from_pem(pki.server.cert_pem.as_bytes(), "c"),
            Err(TlsError::NoPrivateKey { origin }) if origin == "c"
        ));
        assert!(matches!(
            certificates_from_pem(b"", "empty"),
            Err(TlsError::NoCertificate { .. })
        ));
        // both in one buffer is fine
        let both = format!("{}{}", pki.server.cert_pem, pki.server.key_pem);
        Identity::from_pem(both.as_bytes(), both.as_bytes()).unwrap();
    }

    #[test]
    fn malformed_pem_is_a_pem_error() {
        let truncated = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n";
        assert!(matches!(
            certificates_from_pem(truncated.as_bytes(), "t"),
            Err(TlsError::Pem { .. })
        ));
        let bad_base64 = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            private_key_from_pem(bad_base64.as_bytes(), "b"),
            Err(TlsError::Pem { .. })
        ));
    }

    #[test]
    fn unusable_or_foreign_keys_are_rejected() {
        let pki = ThrowawayPki::generate().unwrap();
        assert!(matches!(
            Identity::from_pem(pki.server.cert_pem.as_bytes(), BAD_KEY.as_bytes()),
            Err(TlsError::BadKey { .. })
        ));
        assert!(matches!(
            Identity::from_pem(
                pki.server.cert_pem.as_bytes(),
                pki.client.key_pem.as_bytes()
            ),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert!(matches!(
            Identity::new(Vec::new(), pki.server.key_der(), "x"),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn roots_must_be_trust_anchors() {
        assert!(matches!(
            Roots::Pem(NOT_DER.as_bytes().to_vec()).load(),
            Err(TlsError::BadRootCertificate { .. })
        ));
        assert!(matches!(
            Roots::Pem(b"no pem here".to_vec()).load(),
            Err(TlsError::NoCertificate { .. })
        ));
        let pki = ThrowawayPki::generate().unwrap();
        assert_eq!(pki.roots().load().unwrap().len(), 1);
    }

    #[test]
    fn identity_debug_hides_the_key() {
        let pki = ThrowawayPki::generate().unwrap();
        let shown = format!("{:?}", pki.server.identity().unwrap());
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
