//! One repository's bare mirror: the cheap "did the ref move?" probe, the update (fetch of one ref,
//! depth 1), and snapshots for reading.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::protocol::transport::Protocol;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::remote::fetch::Shallow;

use crate::auth::{Redactor, Remote};
use crate::budget::{Budget, TimedStream, Trip};
use crate::error::{Error, chain};
use crate::http::UreqHttp;
use crate::local;
use crate::set::Agents;
use crate::snapshot::{ReadLimits, Snapshot};
use crate::url::{RepoId, RepoUrl, Scheme};
use crate::want::{FetchKey, Want};

/// Bounds on fetching and reading, shared by every mirror of a [`crate::MirrorSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest one probe or update may take, connection set-up included.
    pub fetch_timeout: Duration,
    /// The most bytes one probe or update may receive (for local repositories: copy).
    pub max_fetch_bytes: u64,
    /// The largest single object (after decompression) a fetch accepts: gix's allocation limit, so a
    /// small pack that inflates to a huge blob is refused while it is indexed.
    pub max_object_bytes: u64,
    /// Bounds on walking trees.
    pub read: ReadLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fetch_timeout: Duration::from_secs(60),
            max_fetch_bytes: 256 * 1024 * 1024,
            max_object_bytes: 64 * 1024 * 1024,
            read: ReadLimits::default(),
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The ref had not moved: nothing was downloaded beyond the ref advertisement.
    Unchanged,
    /// The ref moved (possibly backwards or to unrelated history); `objects` new objects were received
    /// (0 when the mirror already had them).
    Updated { objects: u64 },
}

/// The result of [`Mirror::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub want: Want,
    /// The commit the want now resolves to in the mirror (annotated tags peeled).
    pub commit: ObjectId,
    /// What the ref points to (the tag object for annotated tags, otherwise the commit).
    pub target: ObjectId,
    /// The target before this update, if the mirror had one.
    pub previous: Option<ObjectId>,
    pub change: Change,
    /// For [`Want::DefaultBranch`]: the branch the remote's `HEAD` points to (`refs/heads/main`).
    pub symref_target: Option<String>,
    /// Bytes received from the remote (or copied from a local repository).
    pub received_bytes: u64,
}

/// The result of [`Mirror::probe`]: the remote's and the mirror's view of a want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub want: Want,
    /// What the remote's ref points to (`None` if the ref does not exist or is unborn).
    pub remote: Option<ObjectId>,
    /// What the mirror's ref points to.
    pub local: Option<ObjectId>,
    pub symref_target: Option<String>,
    pub received_bytes: u64,
}

impl Probe {
    /// Whether an update would fetch (or move the mirror's ref). `false` when the remote has no such
    /// ref (`remote == None`): an update would fail with [`Error::RefNotFound`].
    pub fn moved(&self) -> bool {
        self.remote.is_some() && self.remote != self.local
    }
}

/// A mirror's counters (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Probes run (each one a connection).
    pub probes: u64,
    /// Updates run (each one a connection, or a local copy).
    pub updates: u64,
    /// Update calls answered by another caller's concurrent update.
    pub coalesced: u64,
    /// Updates that received a pack (or copied objects).
    pub packs: u64,
    /// Updates or probes that failed.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    probes: AtomicU64,
    updates: AtomicU64,
    coalesced: AtomicU64,
    packs: AtomicU64,
    failures: AtomicU64,
}

/// Single-flight state of one want.
#[derive(Default)]
struct Flight {
    running: bool,
    /// Completed updates of this want.
    epoch: u64,
    last: Option<Result<Update, Error>>,
    /// Callers waiting for this want's next update.
    waiters: usize,
}

/// A bare mirror of one remote repository under the state directory.
///
/// All operations block (network and disk I/O): async callers run them on a blocking pool (kas: smol's
/// `unblock`). They are safe to call from many threads: updates of one repository are serialised,
/// concurrent updates of the same want are coalesced into one fetch, and reads run in parallel with
/// updates.
pub struct Mirror {
    id: RepoId,
    dir: PathBuf,
    repo: gix::ThreadSafeRepository,
    remote: Mutex<Remote>,
    agents: Arc<Agents>,
    limits: Limits,
    fetch_lock: Mutex<()>,
    flights: Mutex<HashMap<Want, Flight>>,
    flight_done: Condvar,
    counters: Counters,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Pack indices a mirror can hold at once, at least (see [`open_options`]).
pub(crate) const MIRROR_INDEX_SLOTS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Configuration every mirror is opened with: no global or system configuration, no environment, one
/// indexing thread (kas runs many fetches), protocol v2, and gix's allocation limit.
///
/// Every fetch that brings objects adds a pack, and gix sizes its table of pack indices when the
/// repository is opened (by default the packs on disk, at least 32): with the default, the 32nd
/// fetched pack failed every later update ("too few index slots"). [`MIRROR_INDEX_SLOTS`] delay that
/// (a slot is a few dozen bytes, allocated at open); the lasting fix is to compact or re-create a
/// mirror whose pack count nears its slots.
fn open_options(limits: &Limits) -> gix::open::Options {
    gix::open::Options::isolated()
        .object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: MIRROR_INDEX_SLOTS,
        })
        .config_overrides([
            format!("gitoxide.objects.allocLimit={}", limits.max_object_bytes),
            "pack.threads=1".to_owned(),
            "protocol.version=2".to_owned(),
            "core.logAllRefUpdates=false".to_owned(),
            format!(
                "gitoxide.userAgent=kas-git-mirror/{}",
                env!("CARGO_PKG_VERSION")
            ),
        ])
}

impl Mirror {
    pub(crate) fn open_or_init(
        dir: PathBuf,
        remote: Remote,
        agents: Arc<Agents>,
        limits: Limits,
    ) -> Result<Self, Error> {
        if !dir.exists() {
            init_bare(&dir, &remote.url, &limits)?;
        }
        let repo = match gix::ThreadSafeRepository::open_opts(&dir, open_options(&limits)) {
            Ok(repo) => repo,
            Err(e) => {
                // A mirror is a cache: one that cannot be opened (a crash mid-creation, a disk
                // problem, someone's editing) is replaced by a new one, fetched again on next update.
                tracing::warn!(
                    mirror = %dir.display(), error = %chain(&e),
                    "the mirror cannot be opened; re-creating it"
                );
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    Error::local(&format!("removing the broken mirror {}", dir.display()), e)
                })?;
                init_bare(&dir, &remote.url, &limits)?;
                gix::ThreadSafeRepository::open_opts(&dir, open_options(&limits)).map_err(|e| {
                    Error::local(&format!("opening the mirror {}", dir.display()), chain(&e))
                })?
            }
        };
        Ok(Mirror {
            id: remote.url.id(),
            dir,
            repo,
            remote: Mutex::new(remote),
            agents,
            limits,
            fetch_lock: Mutex::new(()),
            flights: Mutex::new(HashMap::new()),
            flight_done: Condvar::new(),
            counters: Counters::default(),
        })
    }

    /// The identity of this mirror (its normalised URL).
    pub fn id(&self) -> &RepoId {
        &self.id
    }

    /// The repository URL (without credentials).
    pub fn url(&self) -> RepoUrl {
        lock(&self.remote).url.clone()
    }

    /// The mirror's directory (a bare repository).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The deduplication key of fetching `want` from this repository.
    pub fn key(&self, want: &Want) -> FetchKey {
        FetchKey {
            repo: self.id.clone(),
            want: want.clone(),
        }
    }

    /// Replaces the credentials and trust roots used from the next fetch on (the URL must not change).
    pub(crate) fn set_remote(&self, remote: Remote) {
        let mut r = lock(&self.remote);
        debug_assert_eq!(r.url, remote.url, "a mirror's URL never changes");
        *r = remote;
    }

    pub fn stats(&self) -> MirrorStats {
        let c = &self.counters;
        MirrorStats {
            probes: c.probes.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            packs: c.packs.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Bytes the mirror's objects take on disk (packs and loose objects). Mirrors are never garbage
    /// collected: every update adds the objects of a new snapshot, so kas can watch this (metrics) and
    /// drop a mirror directory that grew too large (it is re-created and fetched on next use).
    pub fn disk_usage(&self) -> Result<u64, Error> {
        fn walk(dir: &Path, depth: usize) -> std::io::Result<u64> {
            let mut total = 0;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() && depth < 2 {
                    total += walk(&entry.path(), depth + 1)?;
                } else if meta.is_file() {
                    total += meta.len();
                }
            }
            Ok(total)
        }
        walk(&self.dir.join("objects"), 0).map_err(|e| Error::local("measuring the mirror", e))
    }

    /// What the mirror has for `want` from earlier updates, without any network: `(target, commit)`.
    /// After a failed update (the remote gone, a bad pack) this is still the last good state.
    pub fn local(&self, want: &Want) -> Result<Option<(ObjectId, ObjectId)>, Error> {
        let repo = self.repo.to_thread_local();
        let Some(target) = local_target(&repo, want)? else {
            return Ok(None);
        };
        if !repo.has_object(target) {
            return Ok(None);
        }
        Ok(Some((target, peel_to_commit(&repo, target)?)))
    }

    /// A snapshot of `commit` for reading trees and blobs ([`Error::MissingObject`] if the mirror does
    /// not have it).
    pub fn snapshot(&self, commit: ObjectId) -> Result<Snapshot, Error> {
        Snapshot::new(self.repo.to_thread_local(), commit, self.limits.read)
    }

    /// "Did the ref move?": asks the remote where `want` points (protocol v2 `ls-refs` only, filtered to
    /// the one ref; no pack is requested) and compares with the mirror. For a commit no network is used.
    pub fn probe(&self, want: &Want) -> Result<Probe, Error> {
        self.counters.probes.fetch_add(1, Ordering::Relaxed);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.probe_inner(want)))
                .unwrap_or_else(|_| {
                    Err(Error::local("probe", "internal error: the probe panicked"))
                });
        if result.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn probe_inner(&self, want: &Want) -> Result<Probe, Error> {
        let remote = lock(&self.remote).clone();
        let repo = self.repo.to_thread_local();
        let local = local_target(&repo, want)?.filter(|id| repo.has_object(id));
        if let Want::Commit(c) = want {
            return Ok(Probe {
                want: want.clone(),
                remote: Some(*c),
                local: repo.has_object(c).then_some(*c),
                symref_target: None,
                received_bytes: 0,
            });
        }
        let budget = Budget::new(self.limits.fetch_timeout, self.limits.max_fetch_bytes);
        if remote.url.scheme() == Scheme::File {
            let src = local::open_source(&remote.url)?;
            let found = local::resolve(&src, want)?;
            return Ok(Probe {
                want: want.clone(),
                remote: found.as_ref().map(|f| f.target),
                local,
                symref_target: found.and_then(|f| f.symref_target),
                received_bytes: 0,
            });
        }
        let mapped = self.with_connection(&repo, &remote, want, &budget, |connection, ctx| {
            let (ref_map, _handshake) = connection
                .ref_map(gix::progress::Discard, ref_map_options())
                .map_err(|e| ctx.classify(&e))?;
            Ok(mapping_for(&ref_map, want))
        })?;
        Ok(Probe {
            want: want.clone(),
            remote: mapped.as_ref().and_then(|m| m.0),
            local,
            symref_target: mapped.and_then(|m| m.1),
            received_bytes: budget.received(),
        })
    }

    /// Brings the mirror's copy of `want` up to date: asks the remote where the ref points and fetches
    /// it (depth 1, only objects the mirror lacks) only if it moved. For a commit already in the mirror
    /// no network is used. On error the mirror keeps its previous state ([`Mirror::local`]).
    ///
    /// Concurrent calls for the same want share one fetch: a call made while a fetch of that want is
    /// running waits for the *next* fetch (which starts after it arrived, so a push that triggered the
    /// call is seen) and every waiter gets its result.
    pub fn update(&self, want: &Want) -> Result<Update, Error> {
        let mut flights = lock(&self.flights);
        let target_epoch = {
            let f = flights.entry(want.clone()).or_default();
            if f.running { f.epoch + 2 } else { f.epoch + 1 }
        };
        let mut ran = false;
        loop {
            let f = flights.entry(want.clone()).or_default();
            if f.epoch >= target_epoch {
                let result = f.last.clone().unwrap_or_else(|| {
                    Err(Error::local(
                        "update",
                        "no result recorded for a finished update",
                    ))
                });
                // Nobody else needs this want's state: forget it (the map stays as small as the set
                // of wants being updated right now).
                if !f.running && f.waiters == 0 {
                    flights.remove(want);
                }
                if !ran {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                return result;
            }
            if !f.running {
                f.running = true;
                ran = true;
                drop(flights);
                let result = {
                    let _serialised = lock(&self.fetch_lock);
                    self.counters.updates.fetch_add(1, Ordering::Relaxed);
                    // A panic in gix on hostile input must not leave waiters hanging or reach callers.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.update_inner(want)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::local(
                            "update",
                            "internal error: the update panicked",
                        ))
                    })
                };
                match &result {
                    Ok(u) if u.change != Change::Unchanged => {
                        self.counters.packs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                flights = lock(&self.flights);
                let f = flights.entry(want.clone()).or_default();
                f.running = false;
                f.epoch += 1;
                f.last = Some(result);
                self.flight_done.notify_all();
                continue;
            }
            f.waiters += 1;
            flights = self
                .flight_done
                .wait(flights)
                .unwrap_or_else(|p| p.into_inner());
            // The entry exists: it is only removed when nobody waits and no update runs.
            if let Some(f) = flights.get_mut(want) {
                f.waiters -= 1;
            }
        }
    }

    fn update_inner(&self, want: &Want) -> Result<Update, Error> {
        let remote = lock(&self.remote).clone();
        let repo = self.repo.to_thread_local();
        let previous = local_target(&repo, want)?.filter(|id| repo.has_object(id));
        let budget = Budget::new(self.limits.fetch_timeout, self.limits.max_fetch_bytes);

        if let Want::Commit(c) = want
            && repo.has_object(c)
        {
            // Commits never move: what the mirror has is final.
            if previous.is_none() {
                set_local_ref(&repo, want, *c)?;
            }
            return Ok(Update {
                want: want.clone(),
                commit: peel_to_commit(&repo, *c)?,
                target: *c,
                previous: Some(*c),
                change: Change::Unchanged,
                symref_target: None,
                received_bytes: 0,
            });
        }

        if remote.url.scheme() == Scheme::File {
            return self.update_local(&repo, &remote.url, want, previous, &budget);
        }

        self.with_connection(&repo, &remote, want, &budget, |connection, ctx| {
            let prepare = connection
                .prepare_fetch(gix::progress::Discard, ref_map_options())
                .map_err(|e| ctx.classify(&e))?;
            let (remote_target, symref_target) = match mapping_for(prepare.ref_map(), want) {
                Some((Some(id), symref)) => (id, symref),
                _ => {
                    return Err(Error::RefNotFound {
                        url: remote.url.to_string(),
                        want: want.to_string(),
                    });
                }
            };
            if previous == Some(remote_target) {
                // Unchanged: dropping `prepare` ends the session without requesting a pack.
                drop(prepare);
                return Ok(Update {
                    want: want.clone(),
                    commit: peel_to_commit(&repo, remote_target)?,
                    target: remote_target,
                    previous,
                    change: Change::Unchanged,
                    symref_target,
                    received_bytes: budget.received(),
                });
            }
            let interrupt = AtomicBool::new(false);
            let outcome = prepare
                .with_shallow(Shallow::DepthAtRemote(
                    std::num::NonZeroU32::new(1).unwrap_or(std::num::NonZeroU32::MIN),
                ))
                .receive(gix::progress::Discard, &interrupt)
                .map_err(|e| ctx.classify(&e))?;
            let objects = match &outcome.status {
                gix::remote::fetch::Status::Change {
                    write_pack_bundle, ..
                } => write_pack_bundle.index.num_objects as u64,
                gix::remote::fetch::Status::NoPackReceived { .. } => 0,
            };
            // Read back what gix wrote: the mirror's ref must now be the advertised target.
            let now = local_target(&repo, want)?;
            if now != Some(remote_target) || !repo.has_object(remote_target) {
                return Err(Error::Protocol {
                    url: remote.url.to_string(),
                    detail: format!(
                        "after the fetch the mirror's {} is {:?}, expected {remote_target}",
                        want.local_ref(),
                        now
                    ),
                });
            }
            let commit = peel_to_commit(&repo, remote_target)?;
            tracing::debug!(
                repo = %remote.url, want = %want, %commit, objects,
                bytes = budget.received(), "mirror updated"
            );
            Ok(Update {
                want: want.clone(),
                commit,
                target: remote_target,
                previous,
                change: Change::Updated { objects },
                symref_target,
                received_bytes: budget.received(),
            })
        })
    }

    /// Connects to the remote and runs `f` with a gix connection configured for `want` (one refspec,
    /// no tags, no credential helpers: credentials only come from the [`Remote`]) and the context that
    /// classifies gix's errors.
    fn with_connection<R>(
        &self,
        repo: &gix::Repository,
        remote: &Remote,
        want: &Want,
        budget: &Arc<Budget>,
        f: impl FnOnce(
            gix::remote::Connection<'_, '_, '_, Box<dyn Transport>>,
            &Ctx<'_>,
        ) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let (transport, redactor) = self.connect(remote, budget)?;
        let ctx = Ctx {
            url: &remote.url,
            budget,
            redactor: &redactor,
            max_object_bytes: self.limits.max_object_bytes,
        };
        let git_remote = configured_remote(repo, &remote.url, want)?;
        let connection = git_remote
            .to_connection_with_transport(transport)
            .with_credentials(|_| Ok(None))
            .with_transport_options(Box::new(()));
        f(connection, &ctx)
    }

    fn update_local(
        &self,
        repo: &gix::Repository,
        url: &RepoUrl,
        want: &Want,
        previous: Option<ObjectId>,
        budget: &Budget,
    ) -> Result<Update, Error> {
        let src = local::open_source(url)?;
        let Some(found) = local::resolve(&src, want)? else {
            return Err(Error::RefNotFound {
                url: url.to_string(),
                want: want.to_string(),
            });
        };
        if previous == Some(found.target) {
            return Ok(Update {
                want: want.clone(),
                commit: peel_to_commit(repo, found.target)?,
                target: found.target,
                previous,
                change: Change::Unchanged,
                symref_target: found.symref_target,
                received_bytes: 0,
            });
        }
        let (commit, copied) = local::copy_snapshot(
            url,
            &src,
            repo,
            found.target,
            budget,
            self.limits.max_object_bytes,
            self.limits.read,
        )?;
        local::mark_shallow(repo, commit)?;
        set_local_ref(repo, want, found.target)?;
        Ok(Update {
            want: want.clone(),
            commit,
            target: found.target,
            previous,
            change: Change::Updated {
                objects: copied.objects,
            },
            symref_target: found.symref_target,
            received_bytes: copied.bytes,
        })
    }

    /// Opens a transport to the remote for one fetch.
    fn connect(
        &self,
        remote: &Remote,
        budget: &Arc<Budget>,
    ) -> Result<(Box<dyn Transport>, Redactor), Error> {
        let url = &remote.url;
        match url.scheme() {
            Scheme::Git => {
                let stream = tcp_connect(url, budget)?;
                let read = stream
                    .try_clone()
                    .map_err(|e| Error::local("cloning a socket", e))?;
                let connection =
                    gix::protocol::transport::client::git::blocking_io::Connection::new(
                        TimedStream::new(read, budget.clone()),
                        TimedStream::new(stream, budget.clone()),
                        Protocol::V2,
                        url.path().as_bytes().as_bstr().to_owned(),
                        Some((url.host().to_owned(), url.port())),
                        gix::protocol::transport::client::git::ConnectMode::Daemon,
                        false,
                    )
                    .custom_url(Some(url.to_string().into()));
                Ok((Box::new(connection), Redactor::default()))
            }
            Scheme::Http | Scheme::Https => {
                let header = remote.auth.header_value(url)?;
                let redactor = Redactor::new(&remote.auth, header.as_ref());
                let agent = self.agents.get(remote.ca_file.as_deref())?;
                let gix_url =
                    gix::url::parse(url.to_string().as_bytes().as_bstr()).map_err(|e| {
                        Error::InvalidUrl {
                            reason: e.to_string(),
                        }
                    })?;
                let http = UreqHttp::new(agent, header, budget.clone());
                let transport =
                    gix::protocol::transport::client::blocking_io::http::Transport::new_http(
                        http,
                        gix_url,
                        Protocol::V2,
                        false,
                    );
                Ok((Box::new(transport), redactor))
            }
            Scheme::File => Err(Error::InvalidUrl {
                reason: "local repositories are copied, not connected to".into(),
            }),
        }
    }
}

/// The pieces needed to turn a gix error into a typed one.
struct Ctx<'a> {
    url: &'a RepoUrl,
    budget: &'a Budget,
    redactor: &'a Redactor,
    max_object_bytes: u64,
}

impl Ctx<'_> {
    fn classify(&self, e: &gix::Error) -> Error {
        let url = self.url.to_string();
        match self.budget.trip() {
            Some(Trip::Deadline) => {
                return Error::Timeout {
                    url,
                    timeout: self.budget.timeout(),
                };
            }
            Some(Trip::TooManyBytes) => {
                return Error::FetchTooLarge {
                    url,
                    limit: self.budget.max_bytes(),
                };
            }
            Some(Trip::HttpStatus(s @ (401 | 403))) => {
                return Error::AuthRefused {
                    url,
                    status: Some(s),
                };
            }
            Some(Trip::HttpStatus(404)) => {
                return Error::RepoNotFound {
                    url,
                    detail: "HTTP 404".into(),
                };
            }
            Some(Trip::HttpStatus(s @ 300..=399)) => {
                return Error::Protocol {
                    url,
                    detail: format!(
                        "HTTP {s}: redirects are not followed (credentials must not go elsewhere); configure the final URL"
                    ),
                };
            }
            Some(Trip::HttpStatus(s)) => {
                return Error::Unreachable {
                    url,
                    detail: format!("HTTP status {s}"),
                };
            }
            Some(Trip::Connect(detail)) => {
                return Error::Unreachable {
                    url,
                    detail: crate::error::truncate(&self.redactor.scrub(detail)),
                };
            }
            None => {}
        }
        let detail = self.redactor.scrub(chain(e));
        if e.is_unauthenticated() {
            return Error::AuthRefused { url, status: None };
        }
        if e.is_resource_exhausted() {
            return Error::ObjectTooLarge {
                url,
                limit: self.max_object_bytes,
                detail,
            };
        }
        let io_kind = e
            .iter_errors()
            .find_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
        let lower = detail.to_ascii_lowercase();
        if lower.contains("access denied or repository not exported")
            || lower.contains("repository not found")
            || lower.contains("does not appear to be a git repository")
            || lower.contains("no such repository")
        {
            return Error::RepoNotFound { url, detail };
        }
        if lower.contains("not our ref") || lower.contains("not found on the remote") {
            return Error::RefNotFound { url, want: detail };
        }
        if matches!(
            io_kind,
            Some(
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        ) {
            return Error::Unreachable { url, detail };
        }
        if e.is_corrupted() || lower.contains("checksum") || lower.contains("pack") {
            return Error::BadContent {
                detail: crate::error::truncate(&format!("{url}: {detail}")),
            };
        }
        Error::Protocol { url, detail }
    }
}

fn tcp_connect(url: &RepoUrl, budget: &Budget) -> Result<TcpStream, Error> {
    let host = url.host().trim_start_matches('[').trim_end_matches(']');
    let port = url.port().unwrap_or(9418);
    let unreachable = |detail: String| Error::Unreachable {
        url: url.to_string(),
        detail,
    };
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = String::from("no address");
    for addr in addrs {
        let left = budget.remaining().map_err(|_| Error::Timeout {
            url: url.to_string(),
            timeout: budget.timeout(),
        })?;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(10))) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(unreachable(last))
}

fn ref_map_options() -> gix::remote::ref_map::Options {
    gix::remote::ref_map::Options {
        prefix_from_spec_as_filter_on_remote: true,
        handshake_parameters: Vec::new(),
        extra_refspecs: Vec::new(),
    }
}

/// An in-memory remote with the one refspec of `want` and no tag following.
fn configured_remote<'r>(
    repo: &'r gix::Repository,
    url: &RepoUrl,
    want: &Want,
) -> Result<gix::Remote<'r>, Error> {
    let invalid = |e: gix::Error| Error::InvalidUrl { reason: chain(&e) };
    let spec = want.refspec();
    repo.remote_at(url.to_string().as_str())
        .map_err(invalid)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([spec.as_str()], gix::remote::Direction::Fetch)
        .map_err(|e| Error::InvalidRef {
            name: want.to_string(),
            reason: chain(&e),
        })
}

/// The remote's target for `want` and, for symbolic refs, the ref they point to.
fn mapping_for(
    ref_map: &gix::remote::fetch::RefMap,
    want: &Want,
) -> Option<(Option<ObjectId>, Option<String>)> {
    let local = want.local_ref();
    ref_map
        .mappings
        .iter()
        .find(|m| m.local.as_ref().is_some_and(|l| l == local.as_bytes()))
        .map(|m| {
            (
                m.remote.as_id().map(|i| i.to_owned()),
                m.remote.as_target().map(|t| t.to_string()),
            )
        })
}

fn local_target(repo: &gix::Repository, want: &Want) -> Result<Option<ObjectId>, Error> {
    let name = want.local_ref();
    let r = repo
        .try_find_reference(name.as_str())
        .map_err(|e| Error::local("reading a mirror ref", chain(&e)))?;
    Ok(r.and_then(|r| r.target().try_id().map(|id| id.to_owned())))
}

fn set_local_ref(repo: &gix::Repository, want: &Want, target: ObjectId) -> Result<(), Error> {
    repo.reference(
        want.local_ref().as_str(),
        target,
        gix::refs::transaction::PreviousValue::Any,
        "kas mirror",
    )
    .map(|_| ())
    .map_err(|e| Error::local("writing a mirror ref", chain(&e)))
}

fn peel_to_commit(repo: &gix::Repository, target: ObjectId) -> Result<ObjectId, Error> {
    let mut id = target;
    for _ in 0..8 {
        let object = repo.find_object(id).map_err(|e| {
            if e.is_not_found() {
                Error::MissingObject { id }
            } else {
                Error::bad_content(chain(&e))
            }
        })?;
        match object.kind {
            gix::object::Kind::Commit => return Ok(id),
            gix::object::Kind::Tag => {
                id = object
                    .into_tag()
                    .target_id()
                    .map_err(|e| Error::bad_content(chain(&e)))?
                    .detach();
            }
            other => {
                return Err(Error::NotACommit {
                    id,
                    kind: other.to_string(),
                });
            }
        }
    }
    Err(Error::bad_content("more than 8 nested tags"))
}

/// Creates a bare repository at `dir` atomically (in a temporary sibling, then renamed).
fn init_bare(dir: &Path, url: &RepoUrl, limits: &Limits) -> Result<(), Error> {
    let parent = dir
        .parent()
        .ok_or_else(|| Error::local("creating a mirror", "no parent directory"))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = parent.join(format!(
        ".init-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    gix::ThreadSafeRepository::init_opts(
        &tmp,
        gix::create::Kind::Bare,
        gix::create::Options::default(),
        open_options(limits),
    )
    .map_err(|e| {
        Error::local(
            &format!("creating a mirror in {}", tmp.display()),
            chain(&e),
        )
    })?;
    // For people looking at the state directory: which repository this is (never credentials).
    std::fs::write(tmp.join("kas-mirror-url"), format!("{url}\n"))
        .map_err(|e| Error::local("writing kas-mirror-url", e))?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process created it first: use theirs.
        Err(_) if dir.join("HEAD").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(Error::local(
                &format!("creating the mirror {}", dir.display()),
                e,
            ))
        }
    }
}
