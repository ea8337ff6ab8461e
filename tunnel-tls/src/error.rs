//! The typed error of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading TLS material or building a configuration.
///
/// `origin` fields name where the material came from: a file path, or a description such as
/// `"server certificate (PEM bytes)"` for in-memory input.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("file not found: {}", path.display())]
    FileNotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: malformed PEM: {source}")]
    Pem {
        origin: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{origin}: no certificate found in the PEM input")]
    NoCertificate { origin: String },
    #[error("{origin}: no private key found in the PEM input")]
    NoPrivateKey { origin: String },
    #[error("{origin}: unusable private key: {source}")]
    BadKey {
        origin: String,
        source: rustls::Error,
    },
    #[error("{origin}: the private key does not belong to the certificate")]
    KeyMismatch { origin: String },
    #[error("{origin}: invalid root certificate: {source}")]
    BadRootCertificate {
        origin: String,
        source: rustls::Error,
    },
    #[error("no usable root certificate found in the system store ({details})")]
    NoSystemRoots { details: String },
    #[error("invalid server name {name:?}")]
    InvalidServerName { name: String },
    #[error("cannot build the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}
