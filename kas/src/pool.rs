//! The threads kas's tasks run on, owned by one running kas, so that starting kas twice in one
//! process (tests, the demo) gives two independent instances and stopping one drops every task it
//! spawned.
//!
//! **One executor per thread.** Each thread runs its own `smol` executor, and a task stays on the
//! thread that took it: a task woken by another task of the same thread runs there next, without
//! waking a second thread (with one executor shared by all threads, nearly every wake-up of a task
//! woke another thread to run it: ~6 thread wake-ups per proxied request instead of ~2). Where a new
//! task goes:
//!
//! - [`Spawner::spawn`] and [`Spawner::spawn_detached`] from a pool thread: that thread (a request's
//!   helper tasks stay next to it); from elsewhere, the threads in turn.
//! - [`Pool::spawn`] (kas's long-running tasks) and the tunnel's own tasks (the agent listener's
//!   accept loop, handshakes, every connection's driver; runtime-smol calls back here through
//!   [`runtime_smol::spawn_with_on_this_thread`]): the threads in turn, so handshakes and drivers of
//!   many agents spread over all threads.
//! - [`Spawner::spawn_connection`] (each accepted HTTP connection): the thread with the fewest
//!   connections; and a connection **moves** to the thread of the task that keeps waking it (twice
//!   in a row: the driver of the agent connection its requests go through), so a proxied request's
//!   HTTP task and the tunnel driver hand over on one thread. Wake-ups from I/O (the reactor) do not
//!   count. A connection moves only to a thread serving fewer connections than its own (so one
//!   agent's connections do not all pile onto its driver's thread: measured, allowing up to twice
//!   the other thread's cost a third of the req/s at 64 connections). Moving
//!   is cheap and safe: the connection's future is boxed, so the task polling it ends and a new one on
//!   the other thread polls the same future (which registers its wakers afresh on that poll).
//!
//! Blocking calls (authentication backends, Redis) go to smol's blocking pool, never to these
//! threads. Stopping the pool ends the threads and drops every executor with its tasks.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

use smol::Executor;

/// A boxed task future.
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Numbers pools, so a thread knows which pool it belongs to.
static POOL_IDS: AtomicUsize = AtomicUsize::new(0);

/// "No thread" in [`Recorder::from`].
const NONE: usize = usize::MAX;

thread_local! {
    /// The pool (id) and thread index of this thread, if it is a pool thread.
    static CURRENT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
    /// A pool task is being polled on this thread (rather than the reactor delivering I/O events).
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// What the threads of one pool share.
#[derive(Debug)]
struct Shared {
    id: usize,
    executors: Vec<Arc<Executor<'static>>>,
    /// HTTP connections ([`Spawner::spawn_connection`]) per thread.
    connections: Vec<AtomicUsize>,
    /// The next thread for tasks placed in turn.
    next: AtomicUsize,
}

impl Shared {
    /// This thread's index, if it is one of this pool's threads.
    fn current(&self) -> Option<usize> {
        CURRENT
            .get()
            .and_then(|(pool, i)| (pool == self.id).then_some(i))
    }

    fn in_turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.executors.len()
    }

    fn here_or_in_turn(&self) -> usize {
        self.current().unwrap_or_else(|| self.in_turn())
    }

    fn fewest_connections(&self) -> usize {
        let mut best = 0;
        let mut least = usize::MAX;
        for (i, n) in self.connections.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n < least {
                (best, least) = (i, n);
            }
        }
        best
    }

    fn spawn_on<T: Send + 'static>(
        &self,
        thread: usize,
        future: impl Future<Output = T> + Send + 'static,
    ) -> smol::Task<T> {
        self.executors[thread].spawn(tagged(future))
    }
}

/// Marks the polls of `future` as task polls ([`POLLING`]).
async fn tagged<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    futures_lite::future::poll_fn(|cx| {
        let outer = POLLING.replace(true);
        let result = future.as_mut().poll(cx);
        POLLING.set(outer);
        result
    })
    .await
}

/// Executor threads, each with its own executor.
pub struct Pool {
    shared: Arc<Shared>,
    /// What runtime-smol calls to spawn the tunnel's tasks (the threads hold it weakly).
    _hook: Arc<runtime_smol::SpawnFn>,
    stop: async_channel::Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.shared.executors.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts `threads` (at least 1) threads named `name-N`, each running its own executor.
    pub fn new(threads: usize, name: &str) -> std::io::Result<Pool> {
        let n = threads.max(1);
        let shared = Arc::new(Shared {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            executors: (0..n).map(|_| Arc::new(Executor::new())).collect(),
            connections: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&shared);
        let hook: Arc<runtime_smol::SpawnFn> = Arc::new(move |task: BoxFuture| {
            if let Some(shared) = weak.upgrade() {
                shared.spawn_on(shared.in_turn(), task).detach();
            }
        });
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let mut handles = Vec::new();
        for i in 0..n {
            let ex = shared.executors[i].clone();
            let (id, hook) = (shared.id, Arc::downgrade(&hook));
            let stopped = stopped.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    CURRENT.set(Some((id, i)));
                    // The tunnel's tasks started from here (handshakes, drivers) run on this pool.
                    runtime_smol::spawn_with_on_this_thread(hook);
                    smol::block_on(ex.run(async move {
                        // Ends when the sender is closed.
                        let _ = stopped.recv().await;
                    }))
                });
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.close();
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            shared,
            _hook: hook,
            stop,
            threads: handles,
        })
    }

    /// A handle to spawn from inside tasks. It does not keep the executors alive: tasks hold
    /// spawners, and a strong reference there would keep every task alive forever.
    pub fn spawner(&self) -> Spawner {
        Spawner(Arc::downgrade(&self.shared))
    }

    /// Spawns a task on the next thread in turn; dropping the returned handle cancels it (use
    /// `.detach()` to let it run).
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> smol::Task<T> {
        self.shared.spawn_on(self.shared.in_turn(), future)
    }

    /// Runs `future` to completion on the calling thread while the pool keeps running.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        smol::block_on(future)
    }

    /// Stops the threads and drops every task still spawned.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.close();
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                tracing::error!("an executor thread panicked");
            }
        }
    }
}

/// Spawns tasks on a [`Pool`] while it runs; once the pool stopped, spawned futures are dropped.
#[derive(Debug, Clone)]
pub struct Spawner(Weak<Shared>);

impl Spawner {
    /// Spawns a task that runs to completion on its own (or until the pool stops): on this thread
    /// when called from a pool thread.
    pub fn spawn_detached(&self, future: impl Future<Output = ()> + Send + 'static) {
        if let Some(shared) = self.0.upgrade() {
            shared.spawn_on(shared.here_or_in_turn(), future).detach();
        }
    }

    /// Spawns a task (on this thread when called from a pool thread); `None` once the pool stopped.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Option<smol::Task<T>> {
        self.0
            .upgrade()
            .map(|shared| shared.spawn_on(shared.here_or_in_turn(), future))
    }

    /// Spawns the task serving one HTTP connection: on the thread with the fewest, moving to the
    /// thread of the task that keeps waking it (see the module docs).
    pub fn spawn_connection(&self, future: impl Future<Output = ()> + Send + 'static) {
        if let Some(shared) = self.0.upgrade() {
            let thread = shared.fewest_connections();
            let recorder = Arc::new(Recorder {
                pool: shared.id,
                waker: Mutex::new(None),
                from: AtomicUsize::new(NONE),
            });
            start_connection(&shared, thread, Box::pin(future), recorder, None);
        }
    }

    /// The index of the pool thread calling this, if it is one of this pool's.
    #[cfg(test)]
    fn current_thread(&self) -> Option<usize> {
        self.0.upgrade().and_then(|s| s.current())
    }

    /// Spawns on one given thread.
    #[cfg(test)]
    fn spawn_on_thread(&self, thread: usize, future: impl Future<Output = ()> + Send + 'static) {
        if let Some(shared) = self.0.upgrade() {
            shared.spawn_on(thread, future).detach();
        }
    }
}

/// One connection counted on a thread while its task lives there.
struct Counted {
    shared: Weak<Shared>,
    thread: usize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.connections[self.thread].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The waker a connection's future sees: remembers which pool thread's task woke it.
struct Recorder {
    pool: usize,
    /// The task's own waker, from its latest poll.
    waker: Mutex<Option<Waker>>,
    /// The thread whose task last woke the connection, or [`NONE`].
    from: AtomicUsize,
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if POLLING.get()
            && let Some((pool, thread)) = CURRENT.get()
            && pool == self.pool
        {
            self.from.store(thread, Ordering::Relaxed);
        }
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Starts (or continues, after a move) a connection's task on `thread`. `streak`: the thread that
/// woke it last from another thread, with how many times in a row.
fn start_connection(
    shared: &Arc<Shared>,
    thread: usize,
    future: BoxFuture,
    recorder: Arc<Recorder>,
    streak: Option<(usize, u32)>,
) {
    shared.connections[thread].fetch_add(1, Ordering::Relaxed);
    let counted = Counted {
        shared: Arc::downgrade(shared),
        thread,
    };
    shared
        .spawn_on(thread, run_connection(counted, future, recorder, streak))
        .detach();
}

/// How many wake-ups in a row from one other thread move a connection there.
const MOVE_AFTER: u32 = 2;

/// Whether a connection may move from a thread serving `here` connections (itself included) to one
/// serving `there`: only to a thread serving fewer.
fn may_move(here: usize, there: usize) -> bool {
    // Afterwards the new thread serves no more than the old one did.
    there < here
}

async fn run_connection(
    counted: Counted,
    future: BoxFuture,
    recorder: Arc<Recorder>,
    mut streak: Option<(usize, u32)>,
) {
    let waker = Waker::from(recorder.clone());
    let mut future = Some(future);
    let thread = counted.thread;
    let moved = futures_lite::future::poll_fn(|cx| {
        let from = recorder.from.swap(NONE, Ordering::Relaxed);
        if from == thread {
            streak = None;
        } else if from != NONE {
            let n = match streak {
                Some((t, n)) if t == from => n + 1,
                _ => 1,
            };
            streak = Some((from, n));
            if n >= MOVE_AFTER
                && let Some(shared) = counted.shared.upgrade()
            {
                let here = shared.connections[thread].load(Ordering::Relaxed);
                let there = shared.connections[from].load(Ordering::Relaxed);
                if may_move(here, there) {
                    return Poll::Ready(Some(from));
                }
            }
        }
        {
            let mut registered = recorder
                .waker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*registered {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *registered = Some(cx.waker().clone()),
            }
        }
        let Some(f) = future.as_mut() else {
            return Poll::Ready(None);
        };
        f.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .map(|()| None)
    })
    .await;
    if let (Some(to), Some(future), Some(shared)) = (moved, future, counted.shared.upgrade()) {
        drop(counted);
        start_connection(&shared, to, future, recorder, None);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_tasks_and_stops() {
        let pool = Pool::new(2, "test-pool").unwrap();
        let answer = pool.block_on(pool.spawn(async { 6 * 7 }));
        assert_eq!(answer, 42);
        // A task that never ends is dropped at stop.
        let (tx, rx) = async_channel::bounded::<()>(1);
        pool.spawn(async move {
            let _keep = tx;
            futures_lite::future::pending::<()>().await
        })
        .detach();
        pool.stop();
        assert!(
            smol::block_on(rx.recv()).is_err(),
            "task dropped with its sender"
        );
    }

    #[test]
    fn a_connection_moves_to_the_thread_whose_task_wakes_it() {
        let pool = Pool::new(2, "test-move").unwrap();
        let spawner = pool.spawner();
        let (ping_tx, ping_rx) = async_channel::bounded::<()>(1);
        let (ack_tx, ack_rx) = async_channel::bounded::<Option<usize>>(1);
        let s = spawner.clone();
        // Both threads serve no connection: it starts on the first.
        spawner.spawn_connection(async move {
            while ping_rx.recv().await.is_ok() {
                if ack_tx.send(s.current_thread()).await.is_err() {
                    break;
                }
            }
        });
        // A task on the other thread wakes it, round after round.
        let (done_tx, done_rx) = async_channel::bounded::<Vec<Option<usize>>>(1);
        spawner.spawn_on_thread(1, async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                if ping_tx.send(()).await.is_err() {
                    break;
                }
                match ack_rx.recv().await {
                    Ok(thread) => seen.push(thread),
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(seen).await;
        });
        let seen = pool.block_on(done_rx.recv()).unwrap();
        assert_eq!(seen.len(), 50);
        assert_eq!(
            seen[0],
            Some(0),
            "placed on the thread with the fewest connections"
        );
        assert_eq!(seen[49], Some(1), "moved to the thread waking it: {seen:?}");
        pool.stop();
    }

    #[test]
    fn moves_never_make_a_thread_busier_than_the_one_left() {
        assert!(may_move(1, 0));
        assert!(may_move(33, 31));
        assert!(!may_move(32, 32));
        assert!(!may_move(1, 1));
    }

    #[test]
    fn the_tunnel_spawns_on_the_pool_in_turn() {
        use runtime_smol::{Runtime as _, Smol};
        let pool = Pool::new(2, "test-hook").unwrap();
        let spawner = pool.spawner();
        let (tx, rx) = async_channel::unbounded::<Option<usize>>();
        let s = spawner.clone();
        pool.block_on(pool.spawn(async move {
            for _ in 0..4 {
                let (tx, s) = (tx.clone(), s.clone());
                Smol.spawn(Box::pin(async move {
                    let _ = tx.send(s.current_thread()).await;
                }));
            }
        }));
        let mut threads: Vec<_> = (0..4).map(|_| pool.block_on(rx.recv()).unwrap()).collect();
        threads.sort();
        assert_eq!(threads, vec![Some(0), Some(0), Some(1), Some(1)]);
        pool.stop();
    }
}
