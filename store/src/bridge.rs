//! Async clients behind the stores' synchronous interface. The stores are called from
//! blocking threads (chDB calls block), while the server clients (ClickHouse over HTTP,
//! Qdrant over gRPC) are async. A bridge owns one worker thread with a small runtime and
//! runs each call there as its own task, so calls from many threads proceed concurrently;
//! each caller blocks on its own answer. Outstanding calls are bounded by the callers
//! waiting for them.

use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The worker thread has ended (it panicked, or the bridge is closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A worker thread running async calls for synchronous callers.
pub struct Bridge {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Starts the worker thread, named `name`.
    pub fn start(name: &str) -> std::io::Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let worker = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut running = tokio::task::JoinSet::new();
                    while let Some(job) = rx.recv().await {
                        running.spawn(job);
                        while running.try_join_next().is_some() {}
                    }
                    while running.join_next().await.is_some() {}
                });
            })?;
        Ok(Bridge {
            jobs: Some(tx),
            worker: Some(worker),
        })
    }

    /// Runs `call` on the worker and waits for its answer. Never call it from an async
    /// task: it blocks the calling thread.
    pub fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Closed> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or(Closed)?
            .send(Box::pin(async move {
                let _ = reply.send(call.await);
            }))
            .map_err(|_| Closed)?;
        answer.recv().map_err(|_| Closed)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Closing the queue ends the worker once running calls finish.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                tracing::error!("a store client thread panicked");
            }
        }
    }
}
