//! The agents' informers, beside the event loop.
//!
//! A cluster change (`Ev::Churn`) is agent-local work: the cluster changes (drawing on its own
//! random stream), the oracle's views follow, the agent's informer cache takes the watch events, and
//! the check that the cache's views equal the oracle's runs. It reads and writes nothing but the
//! agent's [`AgentLocal`], so the loop moves that state into a [`Job`] for a worker thread
//! ([`Informers::submit`]) and goes on with other events. It takes the state back
//! ([`Informers::join`]) where it next needs it: at the latest when the API server's watch latency
//! (`cluster.watch_latency`) has passed and the agent publishes what changed (`Ev::Watched`), or
//! earlier, before any other event touches that agent's cluster, cache or oracle.
//!
//! The job depends only on its inputs, and where the loop joins it depends only on the run's own
//! history, never on how fast the worker was. So the trace is the same with any number of workers,
//! or with none ([`Informers::new`] with zero threads runs each job at once).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use protocol::cache::{AgentViews, ResourceKind, Views, WatchEvent};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cluster::Cluster;
use super::invariants::{agent_views_diverged, update_truth};

/// What a cluster change touches: the agent's cluster, its informer cache, the oracle's views.
/// Owned by the agent ([`SimAgent`](super::agent::SimAgent)) or, while a change is processed, by
/// a job.
#[derive(Debug)]
pub struct AgentLocal {
    pub cluster: Cluster,
    /// The views endpoint (the informer cache inside), while the process runs.
    pub views: Option<AgentViews>,
    /// The naive oracle's views of the cluster, kept up to date with every change (agents whose
    /// views are watched, [`World::views_watched`](super::world::World); empty for the others,
    /// whose views are checked against a fresh oracle at the end of the run only).
    pub truth: Views,
    /// The cluster's changes draw on this: the run's seed, stream `agent id`.
    rng: ChaCha8Rng,
}

impl AgentLocal {
    pub fn new(seed: u64, agent_id: u64, cluster: Cluster, truth: Views) -> AgentLocal {
        // A seed of its own, so the streams are not the links' (`World::link_rng`).
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x636c_7573_7465_7273);
        rng.set_stream(agent_id);
        AgentLocal {
            cluster,
            views: None,
            truth,
            rng,
        }
    }
}

/// The scenario's deliberate bugs in watch events, counted over the run's watch events.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchInjection {
    /// Watch events delivered before this job's.
    pub before: u64,
    /// The watch event (1-based over the run) that loses its metadata.
    pub malformed: Option<u64>,
    /// The watch event (1-based over the run) that is lost before the cache.
    pub skip: Option<u64>,
}

/// One cluster change of agent `agent` (an index), to process.
pub struct Job {
    pub agent: usize,
    pub agent_id: u64,
    pub local: Box<AgentLocal>,
    /// Whether the oracle follows this agent's views after every change.
    pub watched: bool,
    /// The change's instant (the cache stamps what it keeps with it).
    pub now: Instant,
    pub inject: WatchInjection,
}

/// A processed change: the state back, and what the loop reports.
pub struct Done {
    pub agent: usize,
    pub local: Box<AgentLocal>,
    /// Watch events delivered to the cache.
    pub events: u64,
    /// The skip injection dropped one of them.
    pub skipped: bool,
    /// An invariant the change broke: its name and the detail.
    pub violation: Option<(&'static str, String)>,
}

impl Job {
    /// Processes the change (see the module docs).
    pub fn run(self) -> Done {
        let Job {
            agent,
            agent_id,
            mut local,
            watched,
            now,
            inject,
        } = self;
        let l = &mut *local;
        let events = l.cluster.churn(&mut l.rng);
        if watched {
            let mut kinds: smallvec::SmallVec<[&ResourceKind; 3]> = smallvec::SmallVec::new();
            for (kind, _) in &events {
                if !kinds.contains(kind) {
                    kinds.push(kind);
                }
            }
            update_truth(&mut l.truth, &kinds, &mut l.cluster);
        }
        let mut delivered = 0;
        let mut skipped = false;
        let mut violation = None;
        if let Some(views) = &mut l.views {
            for (kind, ev) in events {
                delivered += 1;
                let index = inject.before + delivered;
                let ev = if inject.malformed == Some(index) {
                    // Deliberate bug: the object lost its metadata on the way.
                    WatchEvent::Apply(serde_json::json!({"kind": kind.kind}))
                } else {
                    ev
                };
                if inject.skip == Some(index) {
                    // Deliberate bug: the watch event is lost before the cache.
                    skipped = true;
                    continue;
                }
                if let Err(e) = views.handle_watch(kind, ev, now) {
                    let detail = format!("agent {agent_id} cache rejected a watch event: {e}");
                    violation = Some(("agent-cache", detail));
                    break;
                }
            }
        }
        if violation.is_none() && watched {
            violation = agent_views_diverged(agent, l).map(|d| ("views-diverged", d));
        }
        Done {
            agent,
            local,
            events: delivered,
            skipped,
            violation,
        }
    }
}

/// A job's outcome on a worker: its result, or the panic that ended it (re-raised by the loop).
type Outcome = Result<Done, Box<dyn std::any::Any + Send>>;

/// The jobs waiting for a worker, shared by the loop and the workers.
struct Queue {
    state: Mutex<Waiting>,
    /// Signalled when a job arrives for a sleeping worker, or the queue closes.
    arrived: Condvar,
    /// Jobs waiting (a copy of `state.jobs.len()` a worker can spin on without the lock).
    len: AtomicUsize,
}

struct Waiting {
    jobs: VecDeque<Job>,
    /// Workers asleep on `arrived`.
    sleeping: usize,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A worker panics only inside a job, never while it holds the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job for a worker; `None` once the queue is closed.
    fn next(&self) -> Option<Job> {
        // A job usually follows soon: look for a moment before sleeping (a wake-up costs both
        // threads a system call).
        for _ in 0..SPIN {
            if self.len.load(Ordering::Relaxed) > 0 {
                break;
            }
            std::hint::spin_loop();
        }
        let mut w = self.lock();
        loop {
            // The newest job: the loop needs the oldest first, and runs it itself if no worker
            // got to it, so a busy machine's late worker rarely makes the loop wait.
            if let Some(job) = w.jobs.pop_back() {
                self.len.store(w.jobs.len(), Ordering::Relaxed);
                return Some(job);
            }
            if w.closed {
                return None;
            }
            w.sleeping += 1;
            w = self.arrived.wait(w).unwrap_or_else(PoisonError::into_inner);
            w.sleeping -= 1;
        }
    }
}

/// How many times an idle worker looks at the queue before it sleeps (a few microseconds: a worker
/// spinning longer takes a core from the loop when the machine is busy).
const SPIN: usize = 50;

/// Jobs waiting before a sleeping worker is woken.
const WAKE_AT: usize = 2;

/// The informer workers, and which agents' states are out with jobs.
///
/// A job waits in one queue until a worker takes it. Joining a job no worker has taken yet takes it
/// out of the queue and runs it on the loop's thread: the loop never waits for a job that has not
/// started, only (briefly) for one that is running.
pub struct Informers {
    queue: Arc<Queue>,
    /// Finished jobs, from every worker.
    done: Option<mpsc::Receiver<Outcome>>,
    workers: Vec<JoinHandle<()>>,
    /// Per agent: a job holds its state.
    out: Vec<bool>,
    /// Per agent: its job, finished and not yet joined.
    ready: Vec<Option<Done>>,
    /// Agents with a job out, in no particular order (see [`Informers::outstanding`]).
    outstanding: Vec<usize>,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("workers", &self.workers.len())
            .field("outstanding", &self.outstanding.len())
            .finish()
    }
}

impl Informers {
    /// Informers for `agents` agents on `threads` worker threads (0: each job runs when submitted,
    /// on the caller's thread). `setup` runs first on each worker thread (the protocol core's
    /// deliberate bugs live in thread-locals).
    pub fn new(agents: usize, threads: usize, setup: impl Fn() + Clone + Send + 'static) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                sleeping: 0,
                closed: false,
            }),
            arrived: Condvar::new(),
            len: AtomicUsize::new(0),
        });
        let (done_tx, done) = mpsc::channel::<Outcome>();
        let workers: Vec<JoinHandle<()>> = (0..threads)
            .filter_map(|n| {
                let queue = Arc::clone(&queue);
                let done_tx = done_tx.clone();
                let setup = setup.clone();
                std::thread::Builder::new()
                    .name(format!("informer-{n}"))
                    .spawn(move || {
                        setup();
                        while let Some(job) = queue.next() {
                            let outcome =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    job.run()
                                }));
                            if done_tx.send(outcome).is_err() {
                                break;
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        Informers {
            queue,
            done: (!workers.is_empty()).then_some(done),
            workers,
            out: vec![false; agents],
            ready: (0..agents).map(|_| None).collect(),
            outstanding: Vec::new(),
        }
    }

    /// Whether agent `i`'s state is out with a job.
    pub fn is_out(&self, i: usize) -> bool {
        self.out.get(i).copied().unwrap_or(false)
    }

    /// Hands a change to the workers (or runs it now, without workers). The agent's state must
    /// not be out already: join it first.
    pub fn submit(&mut self, job: Job) {
        let i = job.agent;
        debug_assert!(!self.out[i], "agent {i}'s state is out with a job already");
        self.out[i] = true;
        self.outstanding.push(i);
        if self.workers.is_empty() {
            self.ready[i] = Some(job.run());
            return;
        }
        let mut w = self.queue.lock();
        w.jobs.push_back(job);
        self.queue.len.store(w.jobs.len(), Ordering::Relaxed);
        // A lone job may wait for the loop's join instead of a worker's wake-up (the loop then
        // runs it itself): only a second one is worth the system calls.
        if w.sleeping > 0 && w.jobs.len() >= WAKE_AT {
            self.queue.arrived.notify_one();
        }
    }

    /// Agent `i`'s finished job, if its state is out: runs it here if no worker took it yet, and
    /// waits for the worker that runs it otherwise. Jobs of other agents that finish meanwhile
    /// are kept until their own join.
    pub fn join(&mut self, i: usize) -> Option<Done> {
        if !self.is_out(i) {
            return None;
        }
        if self.ready[i].is_none() {
            let waiting = {
                let mut w = self.queue.lock();
                let job = w
                    .jobs
                    .iter()
                    .position(|j| j.agent == i)
                    .and_then(|pos| w.jobs.remove(pos));
                self.queue.len.store(w.jobs.len(), Ordering::Relaxed);
                job
            };
            match waiting {
                Some(job) => self.ready[i] = Some(job.run()),
                None => self.receive_until(i),
            }
        }
        self.out[i] = false;
        if let Some(pos) = self.outstanding.iter().rposition(|&a| a == i) {
            self.outstanding.swap_remove(pos);
        }
        self.ready[i].take()
    }

    /// Receives finished jobs until agent `i`'s is among them.
    fn receive_until(&mut self, i: usize) {
        let Some(done) = &self.done else {
            return;
        };
        while self.ready[i].is_none() {
            match done.recv() {
                Ok(Ok(d)) => {
                    let a = d.agent;
                    self.ready[a] = Some(d);
                }
                // A job panicked (a bug in the code it drives): raise it here.
                Ok(Err(payload)) => std::panic::resume_unwind(payload),
                Err(mpsc::RecvError) => panic!("the informer workers ended while a job was out"),
            }
        }
    }

    /// Ends the worker threads (jobs submitted afterwards run at once, on the caller's thread).
    pub fn shutdown(&mut self) {
        self.queue.lock().closed = true;
        self.queue.arrived.notify_all();
        for w in self.workers.drain(..) {
            // A worker ends when the queue closes; a job's panic was raised at its join.
            let _ = w.join();
        }
    }

    /// The agents whose states are out, in index order (join them in this order).
    pub fn outstanding(&self) -> Vec<usize> {
        let mut v = self.outstanding.clone();
        v.sort_unstable();
        v
    }
}

impl Drop for Informers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::ClusterSpec;
    use protocol::cache::{AgentCache, AgentViewsConfig, PublisherConfig, ViewSet, default_views};
    use rand::Rng;
    use std::num::NonZeroU64;
    use std::time::Duration;

    fn boot(views: &ViewSet, seed: u64, id: u64, now: Instant) -> Box<AgentLocal> {
        let cluster = Cluster::new(id, &ClusterSpec::default());
        let truth = crate::sim::invariants::truth(&cluster);
        let mut local = AgentLocal::new(seed, id, cluster, truth);
        let cfg = PublisherConfig::new(NonZeroU64::MIN);
        let mut v = AgentViews::with_cache(
            AgentCache::with_views(views, cfg),
            AgentViewsConfig::new(Duration::from_millis(100)),
        );
        crate::sim::views::take_relist(&mut v, &local.cluster, now).expect("relist");
        local.views = Some(v);
        Box::new(local)
    }

    /// Everything a job can change, as text.
    fn digest(l: &AgentLocal) -> String {
        format!(
            "{:?} {:?} {:?}",
            l.cluster.objects(),
            l.truth,
            l.views.as_ref().map(|v| v.cache().views().views())
        )
    }

    /// The same changes, joined at the same points in a scrambled order, give the same states and
    /// results whether the jobs run at once, on one worker or on three (and whether a join finds
    /// its job done, running or still queued).
    #[test]
    fn workers_change_nothing_but_who_does_the_work() {
        const AGENTS: usize = 24;
        let views = ViewSet::new(&default_views()).expect("default views compile");
        let now = Instant::now();
        let go = |threads: usize| {
            let mut informers = Informers::new(AGENTS, threads, || {});
            let mut agents: Vec<Option<Box<AgentLocal>>> = (0..AGENTS)
                .map(|i| Some(boot(&views, 7, i as u64 + 1, now)))
                .collect();
            let mut log = Vec::new();
            let mut join =
                |informers: &mut Informers, agents: &mut Vec<Option<Box<AgentLocal>>>, i: usize| {
                    if let Some(d) = informers.join(i) {
                        log.push(format!("{} {} {:?}", d.agent, d.events, d.violation));
                        agents[i] = Some(d.local);
                    }
                };
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            for _ in 0..600 {
                let i = rng.random_range(0..AGENTS);
                join(&mut informers, &mut agents, i);
                let local = agents[i].take().expect("joined");
                informers.submit(Job {
                    agent: i,
                    agent_id: i as u64 + 1,
                    local,
                    watched: i % 2 == 0,
                    now,
                    inject: WatchInjection::default(),
                });
                if rng.random_bool(0.3) {
                    let j = rng.random_range(0..AGENTS);
                    join(&mut informers, &mut agents, j);
                }
            }
            for i in informers.outstanding() {
                join(&mut informers, &mut agents, i);
            }
            assert!(informers.outstanding().is_empty());
            let states: Vec<String> = agents
                .iter()
                .map(|a| digest(a.as_deref().expect("every state is back")))
                .collect();
            (log, states)
        };
        let inline = go(0);
        assert!(
            inline.0.iter().any(|l| !l.contains(" 0 ")),
            "the changes reached the caches"
        );
        assert!(
            inline.0.iter().all(|l| l.ends_with("None")),
            "no change broke an invariant: {:?}",
            inline.0.iter().find(|l| !l.ends_with("None"))
        );
        for threads in [1, 3] {
            assert!(
                go(threads) == inline,
                "{threads} workers changed the outcome"
            );
        }
    }
}
