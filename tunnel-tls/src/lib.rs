//! TLS plumbing shared by both ends of the agent tunnel.
//!
//! `agentk` (on `runtime-tokio`) dials out to `kas` (on `runtime-smol`) over TLS; both runtimes and the
//! demo build their rustls configurations here so that the two ends agree on every setting:
//!
//! - [`config`]: [`server_config`] / [`server_config_from_pem`] for kas and [`client_config`] for agentk.
//!   TLS 1.3 only, ALPN [`ALPN_PROTOCOL`] (`agent-tunnel/1`) on both sides, optional mutual TLS (the
//!   server verifies client certificates against given roots with rustls' `WebPkiClientVerifier`). The
//!   `ring` provider is passed explicitly to every builder, so no process-wide default provider is needed.
//! - [`pem`]: loading certificate chains, private keys and root stores from PEM files or bytes
//!   (with `rustls_pki_types::pem::PemObject`), and the [`Identity`] / [`Roots`] inputs of the configs.
//! - [`pki`]: [`ThrowawayPki`], a CA generated on the spot (`rcgen`) that issues server and client
//!   certificates, for tests, the simulator and the demo; it can write itself out as PEM files.
//! - [`error`]: [`TlsError`], the one typed error of this crate.
//!
//! The crate holds configuration only: no sockets and no async runtime. The runtimes wrap the returned
//! configs in `tokio-rustls` / `futures-rustls`. It re-exports [`rustls`] so they use the same version.

pub mod config;
pub mod error;
pub mod pem;
pub mod pki;

pub use config::{
    ALPN_PROTOCOL, client_config, crypto_provider, server_config, server_config_from_pem,
    server_config_with, server_name,
};
pub use error::TlsError;
pub use pem::{Identity, Roots};
pub use pki::{IssuedCert, PkiFiles, ThrowawayPki};
pub use rustls;
