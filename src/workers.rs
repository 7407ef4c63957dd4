//! The worker threads, thread-per-core: one current-thread tokio runtime per worker
//! (`--workers`, default the number of cores). Each worker accepts on its own handle of every
//! listening socket and runs the connections it accepted to their end, so a connection never
//! leaves the thread that accepted it: no work stealing, no wake-up of another thread per
//! connection, and the per-thread pipe pool and read scratch stay with their connections (the
//! model of nginx's worker processes, in one process). The server's own work (signals, reloads,
//! `GET /metrics`) runs on the caller's runtime, off the data path.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Running worker threads. Stopping them, or dropping them, drops every task still on them:
/// that is how the connections left at the end of a drain are closed (each logs itself as
/// drained as its task is dropped).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Taken by the first [`Workers::stop`].
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers (at least one).
    ///
    /// # Errors
    /// A runtime or a thread that can't be created (out of memory or descriptors).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let stop = CancellationToken::new();
        // Until they are all started, dropping this stops the ones that are.
        let stop_on_failure = stop.clone().drop_guard();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sniroute-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Only stray blocking work (a DNS lookup) can be left: don't wait for it.
                    runtime.shutdown_background();
                })?;
            threads.push(thread);
        }
        stop_on_failure.disarm();
        Ok(Self {
            handles,
            threads: std::sync::Mutex::new(threads),
            stop,
        })
    }

    /// Each worker's runtime, to spawn on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the workers, dropping their tasks, and waits for their threads to end (at once when
    /// already stopped).
    pub async fn stop(&self) {
        self.stop.cancel();
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The default number of workers: the cores this process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
