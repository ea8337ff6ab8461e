//! The threads kas's tasks run on: one `smol` executor shared by a few threads, owned by one running
//! kas, so that starting kas twice in one process (tests, the demo) gives two independent instances and
//! stopping one drops every task it spawned. The tunnel's own tasks (the agent listener's accept loop,
//! handshakes, every connection's driver) run here too when started from a pool thread
//! ([`runtime_smol::spawn_on_this_thread`]): a proxied request's HTTP task and its connection's driver
//! then share threads instead of crossing to smol's global executor and back.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use smol::Executor;

/// A multi-threaded executor.
#[derive(Debug)]
pub struct Pool {
    executor: Arc<Executor<'static>>,
    stop: async_channel::Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads` (at least 1) threads named `name-N` running one executor.
    pub fn new(threads: usize, name: &str) -> std::io::Result<Pool> {
        let executor = Arc::new(Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let ex = executor.clone();
            let stopped = stopped.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // The tunnel's tasks started from here (drivers) run on this pool too.
                    runtime_smol::spawn_on_this_thread(Arc::downgrade(&ex));
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
            executor,
            stop,
            threads: handles,
        })
    }

    /// A handle to spawn from inside tasks. It does not keep the executor alive: tasks hold spawners,
    /// and a strong reference there would keep every task alive forever.
    pub fn spawner(&self) -> Spawner {
        Spawner(Arc::downgrade(&self.executor))
    }

    /// Spawns a task; dropping the returned handle cancels it (use `.detach()` to let it run).
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> smol::Task<T> {
        self.executor.spawn(future)
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
pub struct Spawner(Weak<Executor<'static>>);

impl Spawner {
    /// Spawns a task that runs to completion on its own (or until the pool stops).
    pub fn spawn_detached(&self, future: impl Future<Output = ()> + Send + 'static) {
        if let Some(ex) = self.0.upgrade() {
            ex.spawn(future).detach();
        }
    }

    /// Spawns a task; `None` once the pool stopped.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Option<smol::Task<T>> {
        self.0.upgrade().map(|ex| ex.spawn(future))
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
}
