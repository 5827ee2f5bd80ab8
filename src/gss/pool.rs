//! The bounded blocking pool: where every call that may block (GSS-API, the KDC, keytab and
//! replay-cache file I/O, winbind's `ntlm_auth` helpers) runs, so that no core thread ever
//! waits on one.
//!
//! ```text
//!  core 0 ─┐  run(timeout, f)                  ┌─ kcd-kdc-0 ─ f() ─┐
//!  core 1 ─┼─► slot (semaphore) ─► job queue ──┼─ kcd-kdc-1 ─ f() ─┼─► oneshot ─► core awaits
//!  core N ─┘  try_run: no slot → QueueFull     └─ kcd-kdc-M ─ f() ─┘
//! ```
//!
//! ## Invariants
//!
//! - **Bounded twice.** At most `threads` jobs run at once, and at most `threads + queue`
//!   jobs are admitted (running or waiting). Admission takes a slot from a semaphore; the
//!   slot is released only when the job has *finished* (or was skipped), on the worker
//!   thread. So the thread count is the bound on concurrent KDC requests: MIT's krb5kdc
//!   listens with a TCP backlog of 5 and drops connections beyond it (p99 went from 75 ms to
//!   950 ms in a gateway test), so keep `threads` small (4–8) and let the delegated-ticket
//!   cache and single-flight keep the KDC idle.
//! - **A core never blocks here.** [`BlockingPool::try_run`] fails at once with
//!   [`PoolError::QueueFull`] when no slot is free; [`BlockingPool::run`] waits for a slot
//!   *asynchronously*. The only lock a core takes is the queue's mutex, held for a push.
//! - **Timeouts cannot cancel blocking code.** When the deadline passes, the caller gets
//!   [`PoolError::Timeout`] and the result is discarded whenever the job finally completes;
//!   the thread stays busy meanwhile (MIT blocked 27 s in `impersonate` against a frozen
//!   KDC), and its slot stays taken, which is the back-pressure we want. A job whose caller
//!   gave up *before* it started is skipped.
//! - **A panicking job kills only itself**: the caller gets [`PoolError::WorkerGone`] and the
//!   thread goes on serving the queue.
//!
//! Runtime-agnostic in what it hands back (a `tokio::sync::oneshot`); the deadline uses
//! `tokio::time`, which tokio-uring's runtime drives. One pool serves all cores
//! (`Arc<BlockingPool>`).

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a job produced no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// Every thread is busy and the queue is full (`try_run`), or the pool is shut down.
    QueueFull,
    /// The deadline passed (waiting for a slot, in the queue, or while running).
    Timeout,
    /// The job panicked, or the pool went away before running it.
    WorkerGone,
}

impl PoolError {
    /// A short stable token for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolError::QueueFull => "pool_queue_full",
            PoolError::Timeout => "pool_timeout",
            PoolError::WorkerGone => "pool_worker_gone",
        }
    }

    /// All three mean "the KDC side cannot answer now": 503.
    pub fn error_kind(self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::KdcUnavailable
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PoolError {}

impl From<PoolError> for crate::error::Error {
    fn from(e: PoolError) -> Self {
        crate::error::Error::with_cause(e.error_kind(), "blocking pool", e)
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Set on drop of the pool: workers finish what is queued, then exit.
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job never runs under this lock, so poisoning cannot leave the queue half-updated.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A snapshot for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    /// How many jobs may wait beyond those running.
    pub queue: usize,
    /// Jobs admitted and not finished (running or waiting), at most `threads + queue`.
    pub admitted: usize,
}

/// N named OS threads behind a bounded queue. See the module doc.
pub struct BlockingPool {
    shared: Arc<Shared>,
    /// INVARIANT: `threads + queue` permits in all; one per admitted job, released by the
    /// worker when the job is done.
    slots: Arc<Semaphore>,
    threads: usize,
    queue: usize,
    workers: Vec<JoinHandle<()>>,
}

impl BlockingPool {
    /// Starts `threads` workers named `kcd-kdc-N` (at least one) with room for `queue` more
    /// waiting jobs. The name is what operators see in `ps` and `top`, so it stays although
    /// winbind checks run here too.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(queue + threads),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let mine = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("kcd-kdc-{i}"))
                .spawn(move || worker(&mine));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    shared.lock().closed = true;
                    shared.ready.notify_all();
                    return Err(e);
                }
            }
        }
        Ok(BlockingPool {
            shared,
            slots: Arc::new(Semaphore::new(threads + queue)),
            threads,
            queue,
            workers,
        })
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            threads: self.threads,
            queue: self.queue,
            admitted: self.threads + self.queue - self.slots.available_permits(),
        }
    }

    /// Runs `f` on a pool thread and awaits its result for at most `timeout` in all (waiting
    /// for a slot included). Never blocks the calling thread.
    pub async fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => return Err(PoolError::QueueFull),
                Err(_elapsed) => return Err(PoolError::Timeout),
            };
        let rx = self.submit(permit, f)?;
        Self::wait(deadline, rx).await
    }

    /// Like [`run`](Self::run), but fails at once with [`PoolError::QueueFull`] when every
    /// slot is taken, instead of waiting for one.
    pub async fn try_run<T, F>(&self, timeout: Duration, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let rx = self.try_submit(f)?;
        Self::wait(deadline, rx).await
    }

    /// Admits `f` now or fails with `QueueFull`; the receiver yields its result (or an error
    /// when the job panicked). Synchronous, for callers that poll the receiver themselves.
    pub fn try_submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                return Err(PoolError::QueueFull)
            }
        };
        self.submit(permit, f)
    }

    fn submit<T, F>(
        &self,
        permit: OwnedSemaphorePermit,
        f: F,
    ) -> Result<oneshot::Receiver<T>, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The slot is freed when the job ends: explicitly below, or by unwinding.
            if tx.is_closed() {
                drop(permit);
                return; // the caller gave up before we started: don't call the KDC for nobody
            }
            let value = f();
            // Free the slot *before* the caller can see the result, so that a caller that
            // got its answer never observes its own job as still admitted.
            drop(permit);
            // The caller may have timed out meanwhile; then the result is discarded.
            let _ = tx.send(value);
        });
        let mut q = self.shared.lock();
        if q.closed {
            return Err(PoolError::QueueFull);
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.ready.notify_one();
        Ok(rx)
    }

    async fn wait<T>(
        deadline: tokio::time::Instant,
        rx: oneshot::Receiver<T>,
    ) -> Result<T, PoolError> {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_dropped)) => Err(PoolError::WorkerGone),
            // Dropping `rx` here tells a job that has not started yet to skip itself.
            Err(_elapsed) => Err(PoolError::Timeout),
        }
    }
}

impl Drop for BlockingPool {
    /// Closes the queue; workers finish the jobs already queued, then exit. Not joined: a job
    /// may be blocked on a dead KDC for tens of seconds, and dropping the pool must not be.
    fn drop(&mut self) {
        self.slots.close();
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        self.workers.clear();
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // A panic drops the job's sender (the caller sees WorkerGone) and its slot; the thread
        // lives on. The default hook still prints the panic.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio_uring::start(f)
    }

    #[test]
    fn results_come_back() {
        let pool = BlockingPool::new(2, 4).unwrap();
        let got = block_on(async {
            let a = pool.run(Duration::from_secs(5), || 6 * 7).await;
            let b = pool
                .try_run(Duration::from_secs(5), || {
                    std::thread::current().name().map(str::to_owned)
                })
                .await;
            (a, b)
        });
        assert_eq!(got.0, Ok(42));
        let name = got.1.unwrap().unwrap();
        assert!(name.starts_with("kcd-kdc-"), "{name}");
        assert_eq!(pool.stats().admitted, 0);
    }

    #[test]
    fn timeout_fires_while_the_job_still_runs() {
        let pool = BlockingPool::new(1, 0).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let finished = Arc::new(AtomicUsize::new(0));
        let fin = Arc::clone(&finished);
        let started = Instant::now();
        let r = block_on(pool.run(Duration::from_millis(50), move || {
            let _ = gate.recv_timeout(Duration::from_secs(10));
            fin.fetch_add(1, Ordering::SeqCst);
            "late"
        }));
        assert_eq!(r, Err(PoolError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2));
        // The thread is still busy with it: its slot is taken, a new job is refused at once.
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        assert_eq!(pool.stats().admitted, 1);
        assert_eq!(
            block_on(pool.try_run(Duration::from_secs(1), || 1)),
            Err(PoolError::QueueFull)
        );
        // Let it finish: its result is discarded, the slot comes back.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.stats().admitted != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        assert_eq!(block_on(pool.try_run(Duration::from_secs(1), || 2)), Ok(2));
    }

    #[test]
    fn full_queue_rejects_and_run_waits_for_a_slot() {
        let pool = BlockingPool::new(1, 1).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |gate: Arc<Mutex<mpsc::Receiver<()>>>, ran: Arc<AtomicUsize>| {
            move || {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
                ran.fetch_add(1, Ordering::SeqCst)
            }
        };
        let first = pool
            .try_submit(job(Arc::clone(&gate), Arc::clone(&ran)))
            .unwrap();
        let second = pool
            .try_submit(job(Arc::clone(&gate), Arc::clone(&ran)))
            .unwrap();
        assert_eq!(
            pool.try_submit(|| 0).err(),
            Some(PoolError::QueueFull),
            "1 running + 1 queued is full"
        );
        // `run` waits for a slot instead, up to its deadline.
        assert_eq!(
            block_on(pool.run(Duration::from_millis(30), || 0)),
            Err(PoolError::Timeout)
        );
        release.send(()).unwrap();
        release.send(()).unwrap();
        let (a, b) = block_on(async { (first.await, second.await) });
        assert_eq!((a.unwrap(), b.unwrap()), (0, 1));
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_job_whose_caller_gave_up_before_it_started_is_skipped() {
        let pool = BlockingPool::new(1, 1).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let busy = pool
            .try_submit(move || gate.recv_timeout(Duration::from_secs(10)).is_ok())
            .unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let queued = block_on(pool.run(Duration::from_millis(20), move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(queued, Err(PoolError::Timeout));
        release.send(()).unwrap();
        assert!(block_on(busy).unwrap());
        // The queued job was dequeued after its caller left; it must not have run.
        assert_eq!(block_on(pool.run(Duration::from_secs(5), || ())), Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_panicking_job_reports_worker_gone_and_the_thread_survives() {
        let pool = BlockingPool::new(1, 0).unwrap();
        let r: Result<(), _> = block_on(pool.run(Duration::from_secs(5), || {
            panic!("deliberate test panic in a pool job")
        }));
        assert_eq!(r, Err(PoolError::WorkerGone));
        assert_eq!(block_on(pool.run(Duration::from_secs(5), || 7)), Ok(7));
    }

    #[test]
    fn many_concurrent_callers_from_a_tokio_uring_runtime() {
        let pool = Arc::new(BlockingPool::new(4, 16).unwrap());
        let peak = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let results = block_on(async {
            let mut handles = Vec::new();
            for i in 0..200u64 {
                let pool = Arc::clone(&pool);
                let (peak, running) = (Arc::clone(&peak), Arc::clone(&running));
                handles.push(tokio_uring::spawn(async move {
                    pool.run(Duration::from_secs(30), move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i * 2
                    })
                    .await
                }));
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        });
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r, Ok(i as u64 * 2));
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=4).contains(&peak), "peak concurrency {peak}");
        assert_eq!(pool.stats().admitted, 0);
    }

    #[test]
    fn the_core_thread_keeps_running_while_jobs_block() {
        // A job blocking 200 ms must not stall other tasks on the same core.
        let pool = BlockingPool::new(1, 0).unwrap();
        let ticks = block_on(async {
            let slow = pool.run(Duration::from_secs(5), || {
                std::thread::sleep(Duration::from_millis(200))
            });
            let ticker = async {
                let mut n = 0;
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    n += 1;
                }
                n
            };
            let (r, n) = tokio::join!(slow, ticker);
            assert_eq!(r, Ok(()));
            n
        });
        assert_eq!(ticks, 10);
    }
}
