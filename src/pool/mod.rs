//! `Pool`: Python's `multiprocessing.Pool`, with tasks and results carried
//! by rings in shared memory instead of pickles over pipes.
//!
//! # How it is built
//! `Pool::new(n)` maps one shared region (two rings per worker), makes the
//! doorbell pipes, and forks a **zygote**: a single-threaded helper that
//! forks the `n` workers, and later every replacement, and reaps them. The
//! parent hands each worker batches of tasks through its task ring and
//! reads results from its result ring, in order; a doorbell pipe wakes a
//! side only when it is asleep. See [`crate::ring`] and `mproc(7)`.
//!
//! # Functions cross as addresses
//! Tasks name their function as a plain `fn` pointer (non-capturing
//! closures coerce). Workers are forked, never `exec`'d, from the same
//! program image, so the function sits at the same address in the worker
//! as in the parent: the address is all that crosses. Arguments and
//! results cross as [`Wire`] bytes. For closures with captures (and inputs
//! that should not be copied at all) use [`fork_map()`].
//!
//! # Many threads, one pool
//! `Pool` is `Send + Sync`: share it as `Arc<Pool>` (or `&Pool` in scoped
//! threads) and call it from any number of threads at once. Every method
//! takes `&self`, `close`, `join` and `terminate` included, so one thread
//! can end a pool others use (their calls then return `Err(Closed)`).
//! [`AsyncResult`] owns its place in the pool: keep it, send it to another
//! thread, or `.await` it (it is a [`Future`](std::future::Future); no
//! runtime needed):
//!
//! ```
//! use std::sync::Arc;
//! fn cube(n: u64) -> u64 { n * n * n }
//! let pool = Arc::new(mproc::Pool::new(2)?);
//! let handlers: Vec<_> = (0..4u64)
//!     .map(|t| {
//!         let pool = Arc::clone(&pool);
//!         std::thread::spawn(move || pool.apply(cube, t))
//!     })
//!     .collect();
//! let cubes: Vec<u64> = handlers.into_iter().map(|h| h.join().unwrap()).collect::<Result<_, _>>()?;
//! assert_eq!(cubes, vec![0, 1, 8, 27]);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Who moves the work
//! A caller that waits moves the work itself (`map`, `apply`, `get`,
//! `imap`'s `next`): it takes results out of the rings and hands queued
//! tasks in, for every thread, while it waits for its own; other waiting
//! threads park until their results are in. When nobody waits, a small
//! **driver thread** (`mproc-pool`) does it, so that `apply_async`'s
//! backlog drains and futures complete while no thread is in a pool call.
//! It starts the first time work is left for it (the first `apply_async`,
//! an awaited result, an `imap` between two `next`s), steps aside while a
//! caller waits, and ends with the pool; a pool used only through calls
//! that wait never starts one. `task_timeout` never waits for anyone: the
//! zygote enforces it on its own clock. See `driver` for the details and
//! for what the extra thread means for `fork` (mproc(7), "Fork safety").
//!
//! # Failure model
//! | what happens                          | what the caller gets                          |
//! |---------------------------------------|-----------------------------------------------|
//! | task panics                           | `Err(Error::Panicked { message })`; worker lives on |
//! | worker killed / segfaults / aborts while running a task | that task: `Err(Error::WorkerDied { exitcode: -signal, core_dumped, task, .. })`; the others run on; worker replaced |
//! | task calls `exit(n)`                  | that task: `Err(Error::WorkerDied { exitcode: n, .. })` |
//! | worker killed between tasks, or idle before its first | no task fails; its queued tasks go to the others; worker replaced |
//! | worker dies in its initializer        | its first task gets `WorkerDied`: a pool that cannot work fails tasks one by one instead of retrying forever (so does a slot's fourth fresh worker in a row killed before it ran any pool code) |
//! | task runs past `task_timeout`         | `Err(Error::Timeout)`; its process group (the worker and what the task started) gets SIGTERM, then SIGKILL 200 ms later (the worker, if dead by then, is reaped only after it: its group id cannot be reused meanwhile); worker replaced |
//! | result bytes do not decode            | `Err(Error::Decode(..))` for that task          |
//! | corrupt ring frame                    | `Err(Error::Decode(..))` for the task its worker runs; the worker is killed and replaced |
//! | `fork` fails (EAGAIN, ENOMEM)         | `Pool::new`: `Err(Error::Os)` naming `fork`, nothing left behind; later, queued tasks fail with it once no worker is left |
//! | the parent dies (even by SIGKILL)     | the zygote sees EOF (or, on Linux, its parent change) and kills every worker |
//! | the zygote is killed from outside     | the running call and every later one: `Err(Error::ZygoteDied)`; the workers die with it |
//! | the zygote is stopped at `drop`/`terminate`/`join` | after 1 s (`join`: 10 s) it gets SIGKILL and is reaped (`join` then returns `ZygoteDied`); its workers die with it (Linux; elsewhere once idle) |
//! | used from a child forked after the pool | `Err(Error::WrongProcess)` there; nothing of the parent's is touched |
//! | called from its own input iterator    | works (`pool.imap(f, pool.imap(g, xs))`): items are pulled with no pool state borrowed |
//! | new work after `close()`/`terminate()`, from any thread | `Err(Error::Closed)`                |
//! | another thread terminates (or drops) the pool while calls wait | each returns `Err(Error::Closed)` at once; tasks without a result get `Closed` |
//! | an `AsyncResult` is dropped before its task ends | nothing waits: the task still runs, its result is dropped on arrival |
//! | an `AsyncResult` is kept past its pool | `get`/`.await`: `Err(Error::Closed)` unless the result was already in; the handle holds the pool's shared memory and a few descriptors until it is dropped |
//! | a waker the pool wakes calls back into it and waits | `Err(Error::InvalidState)` (it runs on the thread that moves the work) |
//! | the driver thread cannot be started (thread limit) | `apply_async` (or the await): `Err(Error::Os)` naming `pthread_create`; calls that wait still work |
//!
//! Every task gets exactly one outcome. A worker packs the results of quick
//! tasks into one message (see `worker`); results still packed when it
//! dies are lost with it, and those tasks run again on another worker —
//! once: lost a second time, a task fails with `WorkerDied` (so a task
//! that corrupts its worker after it returns cannot loop).
//! `map` returns the first error in input order (after every task of the
//! call has ended); `imap` and `imap_unordered` yield each task's outcome.

mod driver;
mod engine;
mod fork_map;
// pub(crate): the fuzz entry points (crate::fuzzing) reach its decoders.
pub(crate) mod message;
mod queue;
mod results;
mod shared;
mod slab;
mod worker;
mod zygote;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driver::{Core, Interest};
use engine::{BatchEncoder, Engine, Limits};
use message::Call;
use shared::Layout;
use zygote::{Zygote, ZygoteExit, ZygoteSide};

pub use fork_map::fork_map;
pub use results::{AsyncResult, Imap};

use crate::error::{Error, Result};
use crate::sys::{self, bell::Bell, ParentOnlyFd};
use crate::wire::Wire;

/// The default capacity of each ring, in bytes.
const DEFAULT_RING_CAPACITY: usize = 64 * 1024;

/// A pool of worker processes. See the [module docs](self).
///
/// ```
/// fn cube(n: u64) -> u64 {
///     n * n * n
/// }
/// let pool = mproc::Pool::new(3)?;
/// assert_eq!(pool.map(cube, vec![1u64, 2, 3, 4, 5])?, vec![1, 8, 27, 64, 125]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Pool {
    /// Shared with the pool's results and its driver thread.
    core: Arc<Core>,
}

/// Most workers one pool may have: far above any useful number (one per
/// CPU), far below what would exhaust the process table by mistake.
pub const MAX_PROCESSES: usize = 4096;

/// Builds a [`Pool`] with options: `Pool::builder().processes(2).build()`.
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    /// `None`: the number of CPUs, asked only in `build` (it reads
    /// `/proc` and the cgroup files on Linux: a dozen system calls that
    /// `Pool::new(n)` has no use for).
    processes: Option<usize>,
    initializer: Option<fn()>,
    max_tasks_per_child: Option<usize>,
    task_timeout: Option<Duration>,
    ring_capacity: usize,
    max_result_size: usize,
}

/// The default of [`PoolBuilder::max_result_size`]: 1 GiB.
pub const DEFAULT_MAX_RESULT_SIZE: usize = 1 << 30;

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            task_timeout: None,
            ring_capacity: DEFAULT_RING_CAPACITY,
            max_result_size: DEFAULT_MAX_RESULT_SIZE,
        }
    }
}

impl PoolBuilder {
    /// How many workers (default: the number of CPUs). 0 and more than
    /// [`MAX_PROCESSES`] are errors.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once, before its first task.
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
        self
    }

    /// Replaces a worker after it has run this many tasks (bounds leaks in
    /// the task code). 0 is an error.
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Kills a task that runs longer than this, with its worker's whole
    /// process group (so processes the task started die too): `SIGTERM`,
    /// then `SIGKILL` 200 ms later. The task yields `Err(Error::Timeout)`
    /// and the worker is replaced. Enforced by the zygote, whether or not
    /// you are waiting for the task. 0 is an error; a limit too long to
    /// count in nanoseconds (over 584 years) means no limit.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Each ring's capacity in bytes, rounded up to a power of two (at least
    /// 4 KiB). Larger messages still pass, in fragments.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes;
        self
    }

    /// Most memory one task's result may take in the parent (default
    /// [`DEFAULT_MAX_RESULT_SIZE`], 1 GiB): counted before it is allocated,
    /// both as bytes received from the worker (a result message longer
    /// than this and a ring's worth of records beside it is refused as it
    /// streams in) and as the decoded value's memory (see
    /// [`wire::from_bytes_within`](crate::wire::from_bytes_within): bytes
    /// that would decode into far more memory than they take, or a hostile
    /// worker's endless message, cost nothing). A result over the limit
    /// fails its task with [`Error::Decode`]: the worker sends a short
    /// record saying so instead of the bytes, and lives on. A message over
    /// it (which only a corrupt or hostile worker sends) is taken as that
    /// worker's corruption: its first unanswered task gets `Decode`, and it
    /// is replaced. `usize::MAX`: no limit.
    pub fn max_result_size(mut self, bytes: usize) -> Self {
        self.max_result_size = bytes;
        self
    }

    /// Maps the rings, forks the zygote and the workers, and waits until
    /// every worker runs.
    pub fn build(self) -> Result<Pool> {
        let n = self.processes.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if n == 0 {
            return Err(Error::InvalidArgument("a pool needs at least 1 process".into()));
        }
        if n > MAX_PROCESSES {
            return Err(Error::InvalidArgument(format!("{n} processes: a pool has at most {MAX_PROCESSES}")));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument("max_tasks_per_child must be at least 1".into()));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::InvalidArgument("task_timeout must be longer than 0".into()));
        }
        // The zygote counts time in u64 nanoseconds; beyond that, no limit.
        let task_timeout = self.task_timeout.filter(|t| u64::try_from(t.as_nanos()).is_ok());
        let capacity = self.ring_capacity.clamp(4096, 1 << 30).next_power_of_two();
        let layout = Layout::new(n, capacity)?;
        let parent_bell = Bell::new()?;
        let worker_bells = (0..n).map(|_| Bell::new()).collect::<Result<Vec<_>>>()?;
        let (requests_r, requests_w) = sys::pipe()?;
        let (reports_r, reports_w) = sys::pipe()?;

        // What only the parent may hold: its bell's read end, the workers'
        // bells' write ends (so a worker reads EOF when the parent dies),
        // its ends of the zygote's pipes (so the zygote does). Every `fork`
        // closes these in the child: the zygote's, and any other child the
        // program forks later (another pool's zygote, a `Process`), which
        // would otherwise keep them open.
        let (worker_reads, worker_writes): (Vec<OwnedFd>, Vec<ParentOnlyFd>) =
            worker_bells.into_iter().map(|b| (b.read, ParentOnlyFd::new(b.write))).unzip();
        let Bell { read: parent_read, write: parent_write } = parent_bell;
        let parent_read = ParentOnlyFd::new(parent_read);
        let (requests_w, reports_r) = (ParentOnlyFd::new(requests_w), ParentOnlyFd::new(reports_r));

        let worker_layout = layout.clone();
        let (initializer, max_tasks) = (self.initializer, self.max_tasks_per_child);
        let stamp_tasks = task_timeout.is_some();
        let max_result = self.max_result_size;
        let run_worker = move |slot: usize| {
            for (j, fd) in worker_reads.iter().enumerate() {
                if j != slot {
                    sys::close_inherited(fd.as_raw_fd());
                }
            }
            // SAFETY: this process is a worker for `slot` from here on: it
            // uses only that slot (the parent's flag included: its copy is
            // in the slot), and ends in `_exit` (`Worker::run`), so no copy
            // of the layout is ever dropped here.
            unsafe { worker_layout.unmap_all_but(slot, false) };
            use std::os::fd::AsFd;
            worker::Worker {
                layout: &worker_layout,
                slot,
                bell: worker_reads[slot].as_fd(),
                parent_bell: parent_write.as_fd(),
                initializer,
                max_tasks,
                stamp_tasks,
                max_result,
            }
            .run()
        };
        let parent_fds =
            worker_writes.iter().map(AsRawFd::as_raw_fd).chain([parent_read.as_raw_fd()]).collect();
        let side = ZygoteSide {
            requests: requests_r,
            reports: reports_w,
            run_worker,
            layout: layout.clone(),
            task_timeout,
            parent_fds,
        };
        // The zygote and the workers it forks inherit the task-message
        // check key: it must exist before this fork (see message::CheckKey).
        message::prepare_check_key();
        let zygote = Zygote::start(requests_w, reports_r, side)?;
        let limits = Limits { max_tasks: self.max_tasks_per_child, max_result: self.max_result_size };
        let mut engine = Engine::new(layout, worker_writes, zygote, limits)?;
        // On failure, dropping the engine kills and reaps whatever started.
        engine.start_workers()?;
        Ok(Pool { core: Core::start(engine, parent_read, n)? })
    }
}

impl Pool {
    /// A pool of `processes` workers, forked now.
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// Options beyond the worker count.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers the pool keeps.
    pub fn processes(&self) -> usize {
        self.core.processes
    }

    /// The current workers' pids (a replaced worker's pid changes). Empty
    /// in a process other than the pool's own, and once the pool has ended.
    pub fn pids(&self) -> Vec<i32> {
        if self.check_owner().is_err() {
            return Vec::new();
        }
        let mut e = self.core.lock();
        let _ = self.core.step_if_free(&mut e);
        e.pids()
    }

    /// Tasks submitted and not yet handed to a worker: what waits in this
    /// process's memory. `map` and `apply_async` queue everything they are
    /// given (as Python's pool does); `imap` at most a window's worth per
    /// iterator. A service that must bound its memory checks this before it
    /// submits more.
    pub fn queued(&self) -> usize {
        if self.check_owner().is_err() {
            return 0;
        }
        self.core.lock().queued_tasks()
    }

    /// [`Error::WrongProcess`] unless called in the process that made the
    /// pool (a child forked later has only a copy of its handles). Checked
    /// before anything is locked: a child forked while another thread held
    /// the pool's lock would wait for it for ever.
    fn check_owner(&self) -> Result<()> {
        check_owner(&self.core)
    }

    /// Queues `items` as one submission, encoded in `chunk`-task batches.
    /// The items are pulled and encoded with the lock released, so the
    /// iterator may itself use the pool. Returns the submission's id and
    /// its number of tasks.
    fn submit<A: Wire>(
        &self,
        call: Call,
        items: impl Iterator<Item = A>,
        chunk: usize,
        base_index: u64,
        ticket: Option<u64>,
    ) -> Result<(u64, usize)> {
        self.check_owner()?;
        let sub = {
            let mut e = self.core.lock();
            let sub = e.open(base_index, items.size_hint().0, ticket)?;
            e.set_filler(sub, std::thread::current().id());
            sub
        };
        // Cancels the submission if filling fails, or unwinds (the
        // caller's iterator or `Wire` impl panicked): `join` waits for
        // submissions being filled.
        struct Filling<'c> {
            core: &'c Core,
            sub: u64,
            done: bool,
        }
        impl Drop for Filling<'_> {
            fn drop(&mut self) {
                if !self.done {
                    self.core.lock().cancel(self.sub);
                }
            }
        }
        let mut filling = Filling { core: &self.core, sub, done: false };
        let mut encoder = BatchEncoder::new(sub, call, chunk, self.core.ring_capacity);
        self.fill(&mut encoder, items)?;
        filling.done = true;
        Ok((sub, encoder.count()))
    }

    fn fill<A: Wire>(&self, encoder: &mut BatchEncoder, mut items: impl Iterator<Item = A>) -> Result<()> {
        let sub = encoder.sub();
        if encoder.column_width().is_some() {
            loop {
                let (full, ended) = encoder.push_column(&mut items)?;
                if full {
                    if let Some(batch) = encoder.finish() {
                        self.core.lock().queue(batch)?;
                    }
                }
                if ended {
                    return self.core.lock().end_fill(sub, encoder.finish());
                }
            }
        }
        while let Some(arg) = items.next() {
            if encoder.push(&arg, || items.size_hint().0)? {
                if let Some(batch) = encoder.finish() {
                    self.core.lock().queue(batch)?;
                }
            }
        }
        self.core.lock().end_fill(sub, encoder.finish())
    }

    /// Python's default: ceil(len / (4 × processes)).
    fn default_chunksize(&self, len: usize) -> usize {
        len.div_ceil(4 * self.core.processes).max(1)
    }

    /// Applies `f` to every item, in parallel, and returns the results in
    /// input order. Returns the first error in input order (a panic, a
    /// dead worker, a timeout) once every task of the call has ended; the
    /// pool stays usable.
    ///
    /// Arguments and results whose type has a fixed width
    /// ([`Wire::FIXED_LEN`]: numbers, `bool`, `char`, and tuples, arrays
    /// and boxes of them) take a faster path: a batch's arguments travel
    /// as one column, a worker runs it a slice of tasks per call and sends
    /// the results back in runs (cut by size, by time, and around a task
    /// that failed), and the parent files a run with one copy (for trivial
    /// tasks, about seven times the rate; see the README's numbers).
    /// After a `map` whose tasks all returned values of one width, the
    /// pool keeps its result buffers (the biggest such so far, up to
    /// 64 MiB) for the next call of 4,096 tasks or more: a program that
    /// maps again, no bigger, touches no fresh memory for its results.
    ///
    /// ```
    /// fn square(n: i32) -> i32 { n * n }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let items = items.into_iter();
        match items.size_hint() {
            (len, Some(upper)) if len == upper => {
                let chunk = self.default_chunksize(len);
                self.map_items(Call::new(f), items, chunk)
            }
            _ => {
                // The default chunksize needs the length: hold the items
                // (not their encodings) to count them, as Python does.
                let items: Vec<A> = items.collect();
                let chunk = self.default_chunksize(items.len());
                self.map_items(Call::new(f), items.into_iter(), chunk)
            }
        }
    }

    /// [`Pool::map`] with an explicit number of tasks per batch (0 is an
    /// error). Bigger chunks cost less per task; smaller ones balance better.
    /// A batch travels in messages of at most a quarter of a ring, so past a
    /// few thousand small tasks a bigger chunk changes nothing.
    pub fn map_chunked<A, R, I>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        if chunksize == 0 {
            return Err(Error::InvalidArgument("chunksize must be at least 1".into()));
        }
        self.map_items(Call::new(f), items.into_iter(), chunksize)
    }

    fn map_items<A: Wire, R: Wire>(
        &self,
        call: Call,
        items: impl Iterator<Item = A>,
        chunk: usize,
    ) -> Result<Vec<R>> {
        let (sub, len) = self.submit(call, items, chunk, 0, None)?;
        let (results, limit) = results::wait_for(&self.core, sub, None)?;
        let mut out = Vec::with_capacity(len);
        if let Some((bytes, stride)) = results.fixed_results().filter(|&(_, stride)| stride > 0) {
            for value in bytes.chunks_exact(stride) {
                // A type that owns nothing needs no limit (see `decode`):
                // the plain decode keeps this loop tight.
                let value = if std::mem::needs_drop::<R>() {
                    results::decode::<R>(value, limit)
                } else {
                    R::from_bytes(value).map_err(Error::Decode)
                };
                out.push(value?);
            }
            self.core.lock().recycle(results);
            return Ok(out);
        }
        for i in 0..results.len() as u32 {
            out.push(
                results.get(i).unwrap_or(Err(Error::Closed)).and_then(|b| results::decode::<R>(b, limit))?,
            );
        }
        Ok(out)
    }

    /// Runs `f(arg)` on a worker and waits for the result.
    pub fn apply<A: Wire, R: Wire>(&self, f: fn(A) -> R, arg: A) -> Result<R> {
        // Not through `apply_async`: a call that waits needs no driver.
        let (e, sub) = self.submit_one(Call::new(f), arg, false)?;
        results::wait_for_one(&self.core, e, sub)
    }

    /// Queues one task under one lock (encoded before it), and keeps the
    /// lock for what the caller does next: a task at a time costs one
    /// lock, as many threads calling `apply` at once do. `unattended`: the
    /// caller will not wait for it, so the driver must run first (a task
    /// nothing would move is refused, not queued).
    fn submit_one<A: Wire>(&self, call: Call, arg: A, unattended: bool) -> Result<(driver::Locked<'_>, u64)> {
        self.check_owner()?;
        let mut encoder = BatchEncoder::new(0, call, 1, self.core.ring_capacity);
        encoder.push(&arg, || 0)?;
        let mut e = self.core.lock();
        let sub = e.open(0, 1, None)?;
        if unattended {
            if let Err(err) = self.core.ensure_driver(&e) {
                e.cancel(sub);
                return Err(err);
            }
        }
        let batch = encoder.finish().map(|mut b| {
            b.sub = sub;
            b
        });
        e.end_fill(sub, batch)?;
        if unattended {
            // A caller in a tight loop of calls: the driver keeps out of
            // its way (see `driver::TIGHT_CALLS`), and leaves the role if it
            // holds it (unless a future waits); each call moves the work
            // along itself. Calls further apart, or a few at a time, leave
            // the driver pumping: a call's own step hands each worker only
            // a few tasks.
            let now = Instant::now();
            let tight = e
                .last_unattended
                .is_some_and(|last| now.saturating_duration_since(last) < driver::TIGHT_CALLS);
            e.tight_calls = if tight { e.tight_calls.saturating_add(1) } else { 0 };
            if e.tight_calls >= driver::TIGHT_RUN {
                e.call_epoch = e.call_epoch.wrapping_add(1);
                e.tight_run_active = true;
                if e.driver_pumps && !e.futures_waiting {
                    e.nudge_pumper = true;
                }
            }
            e.last_unattended = Some(now);
            // Nobody will wait for it: move the work along now if nobody
            // pumps (a producer submitting faster than the driver's grace
            // period would otherwise keep everything queued). The task is
            // queued: an error here is for whoever waits next, not a
            // refusal of this task.
            let _ = e.step_unless_pumped();
        }
        Ok((e, sub))
    }

    /// Queues `f(arg)` and returns at once, even with thousands of tasks
    /// queued behind busy workers (they wait in the parent and enter the
    /// rings as they drain, moved by the pool's driver thread whether or
    /// not anyone waits). The handle owns its place: keep it, move it to
    /// another thread, `.await` it, or drop it (the task still runs; its
    /// result is dropped when it arrives).
    ///
    /// ```
    /// fn cube(n: u64) -> u64 { n * n * n }
    /// let pool = mproc::Pool::new(2)?;
    /// let mut r = pool.apply_async(cube, 7u64)?;
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(r.get()?, 343);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply_async<A: Wire, R: Wire>(&self, f: fn(A) -> R, arg: A) -> Result<AsyncResult<R>> {
        let (e, sub) = self.submit_one(Call::new(f), arg, true)?;
        self.core.kick(&e);
        drop(e);
        Ok(AsyncResult::new(Arc::clone(&self.core), sub))
    }

    /// Lazily applies `f` to each item, yielding results in input order.
    /// Keeps a bounded number of tasks in flight, so an endless iterator runs
    /// in bounded memory. Each item's outcome is yielded at its position.
    ///
    /// ```
    /// fn double(n: u64) -> u64 { 2 * n }
    /// let pool = mproc::Pool::new(2)?;
    /// let firsts: Vec<u64> = pool.imap(double, 0u64..).take(5).collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, vec![0, 2, 4, 6, 8]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, Call::new(f), items.into_iter(), 1, true)
    }

    /// Like [`Pool::imap`], but yields results as tasks complete.
    pub fn imap_unordered<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, Call::new(f), items.into_iter(), 1, false)
    }

    /// [`Pool::imap_unordered`] with `chunksize` tasks per batch (Python's
    /// `imap_unordered(f, xs, chunksize)`): results come as their batches
    /// complete. A `chunksize` of 0 is refused as by [`Pool::imap_chunked`].
    pub fn imap_unordered_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.imap_with(f, items, chunksize, false)
    }

    /// [`Pool::imap`] with `chunksize` tasks per batch. A `chunksize` of 0
    /// yields one `Err(Error::InvalidArgument)` and nothing else, as
    /// [`Pool::map_chunked`] refuses it.
    pub fn imap_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.imap_with(f, items, chunksize, true)
    }

    /// The `imap` family: `chunksize` clamped like `map_chunked`'s (a batch
    /// counts its tasks in a u32), and 0 refused, as `map_chunked` (and
    /// Python) refuse it.
    fn imap_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let imap = Imap::new(
            self,
            Call::new(f),
            items.into_iter(),
            chunksize.clamp(1, u32::MAX as usize / 2),
            ordered,
        );
        if chunksize == 0 {
            return imap.refusing(Error::InvalidArgument("chunksize must be at least 1".into()));
        }
        imap
    }

    /// Refuses new work from now on, from every thread
    /// (`Err(Error::Closed)`); queued work still runs. Follow with
    /// [`Pool::join`].
    pub fn close(&self) {
        if self.check_owner().is_ok() {
            self.core.lock().closed = true;
        }
    }

    /// Waits for all queued work, then lets every worker exit and reaps it.
    /// Call [`Pool::close`] first (`Err(Error::InvalidState)` otherwise).
    /// Results not yet taken stay with their handles. Several threads may
    /// join at once; each returns when the pool has ended.
    pub fn join(&self) -> Result<()> {
        self.check_owner()?;
        let core = &self.core;
        let mut e = core.lock();
        // A zygote that died since the last call: say so, not Ok.
        let _ = core.step_if_free(&mut e);
        if let Some(err) = &e.broken {
            return Err(err.clone());
        }
        if !e.closed {
            return Err(Error::InvalidState("join() called before close()"));
        }
        if e.is_filling(std::thread::current().id()) {
            // From a call's own input iterator: it would wait for itself.
            return Err(Error::InvalidState("join() called while this thread submits to the pool"));
        }
        if e.holds_admitted(std::thread::current().id()) {
            // Its imap's rest is sent only as this thread reads it.
            return Err(Error::InvalidState(
                "join() called while this thread reads an imap whose input is not all sent",
            ));
        }
        let mut exit = None;
        if !e.finished {
            (e, exit) = self.finish_queued_work(e)?;
        }
        let broken = e.broken.clone();
        // The zygote's end is waited for with the lock released: other
        // threads' calls (`ready`, dropping a result) never wait for it.
        let waited = core.end_zygote(e, exit);
        core.join_driver();
        broken.map_or(waited, Err)
    }

    /// `join`'s work: every task has its outcome and no worker is still on
    /// its way (a worker forked after the exit orders went out would wait
    /// for tasks forever, and the zygote, told to wait for its workers,
    /// with it); then the exit orders, then the zygote's polite end.
    fn finish_queued_work<'a>(
        &'a self,
        e: driver::Locked<'a>,
    ) -> Result<(driver::Locked<'a>, Option<ZygoteExit>)> {
        let core = &self.core;
        let settled = |e: &Engine| e.finished || (e.idle() && !e.spawning() && !e.filling());
        let mut e = ended_is_ok(core, core.wait_until(e, None, Interest::NONE, settled))?;
        while !e.finished {
            e.send_exit()?;
            if e.all_exits_sent() {
                let exit = e.finish();
                return Ok((e, exit));
            }
            let soon = Some(Instant::now() + Duration::from_millis(1));
            e = match core.wait_until(e, soon, Interest::NONE, |e| e.finished) {
                Err(Error::Timeout) => core.lock(),
                waited => ended_is_ok(core, waited)?,
            };
        }
        Ok((e, None))
    }

    /// Kills every worker now (SIGKILL), reaps them, and ends the pool,
    /// from any thread: calls waiting in other threads return
    /// `Err(Error::Closed)` at once, as does every task without a result.
    /// Dropping the pool does the same.
    pub fn terminate(&self) {
        if self.check_owner().is_err() {
            return;
        }
        let mut e = self.core.lock();
        let exit = e.terminate();
        if e.zygote_ending {
            self.core.hurry_zygote();
        }
        let _ = self.core.end_zygote(e, exit);
        self.core.join_driver();
    }
}

/// A `join` that finds the pool ended by another thread's `join` (not
/// broken): that is the end it waited for.
fn ended_is_ok<'a>(core: &'a Core, waited: Result<driver::Locked<'a>>) -> Result<driver::Locked<'a>> {
    match waited {
        Err(Error::Closed) => {
            let e = core.lock();
            if e.finished && e.broken.is_none() {
                Ok(e)
            } else {
                Err(Error::Closed)
            }
        }
        other => other,
    }
}

/// [`Error::WrongProcess`] unless this is the process that made the pool.
fn check_owner(core: &Core) -> Result<()> {
    let caller = sys::current_pid();
    if caller != core.owner {
        return Err(Error::WrongProcess { owner: core.owner, caller });
    }
    Ok(())
}

impl Drop for Pool {
    fn drop(&mut self) {
        // In a forked child, nothing: not even the lock (see check_owner).
        self.terminate();
    }
}

/// Makes `SIGINT` (Ctrl-C) and `SIGTERM` end the program cleanly: every
/// running [`crate::Process`] child (and [`crate::spawn`] child) of this
/// process gets `SIGKILL` and is reaped, every live pool's workers are
/// killed and reaped, then the process exits with status 130 or 143, as a
/// shell reports a death by those signals. `SIGKILL`, not `SIGTERM` first:
/// the handler must end in bounded time, and a child blocked in a `write`
/// to a pipe nobody reads would otherwise hold it up. Without this call the
/// default action kills the parent at once; the pools' zygotes then see
/// their request pipes close and kill the workers themselves, but `Process`
/// children run on, re-parented to `init`.
///
/// Children forked after this call inherit the handler; in them it does
/// nothing but die of the signal, so their exit codes stay `-signal`. The
/// tables the handler reads belong to the process that filled them: a
/// child that installs the handlers itself acts only on its own children
/// and pools, never on its parent's.
pub fn exit_cleanly_on_signals() -> Result<()> {
    sys::signal::exit_on_signals(zygote::kill_all_pools)
}
