//! Local bare mirrors of remote Git repositories, for kas: fetch the one ref that is needed with
//! [gix](https://docs.rs/gix) (never a `git` process), probe cheaply whether it moved, and read trees and
//! blobs of a commit with limits.
//!
//! - [`MirrorSet`]: every mirror under one state directory; [`Mirror`]: one repository.
//! - [`Mirror::probe`]: "did the ref move?" (protocol v2 `ls-refs` for the one ref; no pack).
//! - [`Mirror::update`]: probe and, if moved, fetch (depth 1, only missing objects); concurrent
//!   updates of one [`FetchKey`] share one fetch. [`Update::change`] says whether anything came.
//! - [`Mirror::snapshot`] → [`Snapshot`]: list, glob, read files (size-checked before reading).
//! - Sources ([`RepoUrl`]): local paths (copied object by object with gix), `git://`, smart HTTP(S)
//!   over ureq and rustls with [`Auth`] (basic auth with a token, or an `Authorization` header from a
//!   file) and an optional CA file. No tokio: gix's reqwest transport is not used.
//! - [`Error`]s are typed and say whose fault they are ([`Fault`]); they never contain credentials.
//!
//! Everything here blocks (network, disk). Async callers run it on a blocking pool (kas: smol's
//! `blocking::unblock`); calls are thread-safe. One process owns a state directory.
//!
//! This crate returns errors and does not log them (the caller logs once, rate-limited, with the
//! [`Error::code`] and [`Fault`]); it logs successful updates at `debug`.
//!
//! Limits: [`Limits`] bounds each fetch (timeout, bytes received, largest object after inflation, so a
//! small pack that inflates to a huge blob is refused while it is indexed) and tree walks
//! ([`ReadLimits`]: entries, depth); blob reads take a maximum size checked against the object header.
//! Mirrors are never garbage-collected; [`Mirror::disk_usage`] lets the caller watch their size.

mod auth;
mod budget;
mod error;
mod http;
mod local;
mod mirror;
mod set;
mod snapshot;
mod url;
mod want;

#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Auth, Remote, Secret};
pub use error::{Error, Fault};
pub use gix::ObjectId;
pub use mirror::{Change, Limits, Mirror, MirrorStats, Probe, Update};
pub use set::MirrorSet;
pub use snapshot::{Entry, EntryKind, Listing, ReadLimits, SkipReason, Skipped, Snapshot};
pub use url::{RepoId, RepoUrl, Scheme, redact};
pub use want::{FetchKey, Want};
