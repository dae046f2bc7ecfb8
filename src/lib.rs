//! mproc: Python's `multiprocessing` — `Process` and `Pool` — built directly
//! on `fork`, `waitpid`, pipes and a ring buffer in shared memory.
//!
//! # A short tour
//!
//! **[`Process`]** runs a closure in a forked child, with Python's
//! lifecycle and exit codes (`0`; `n` from `exit(n)`; `1` for a panic;
//! `-signal` when killed):
//!
//! ```
//! let mut p = mproc::Process::new(|| println!("The square of 5 is 25"));
//! p.start()?;
//! assert_eq!(p.join()?, 0);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! **[`spawn`]** does the same and brings a typed value back through a
//! pipe, encoded with **[`Wire`]** (integers, floats, strings, vectors,
//! options, results, tuples, arrays — or your own types):
//!
//! ```
//! let child = mproc::spawn(|| vec![1u32, 2, 3].iter().sum::<u32>())?;
//! assert_eq!(child.join()?, 6);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! **[`Pool`]** keeps worker processes and feeds them through rings in
//! shared memory ([`ring`]): `map`, `imap`, `imap_unordered`, `apply`,
//! `apply_async`, with crash isolation (a dead worker costs one task an
//! [`Error::WorkerDied`], and is replaced) and per-task timeouts that kill:
//!
//! ```
//! fn cube(n: u64) -> u64 { n * n * n }
//! let pool = mproc::Pool::new(3)?;
//! assert_eq!(pool.map(cube, vec![1u64, 2, 3, 4, 5])?, vec![1, 8, 27, 64, 125]);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! The pool is `Send + Sync` and its results are owned futures: a service
//! shares one `Arc<Pool>` between its request threads, or awaits results
//! from any executor. A request handler that runs a crash-prone decoder in
//! the pool, and gets an error instead of a crashed server:
//!
//! ```
//! # use std::{future::Future, pin::pin, sync::Arc, task::{Context, Poll, Wake, Waker}};
//! fn decode(image: Vec<u8>) -> u64 {
//!     // Stands for a C library that may crash on hostile input.
//!     if image.first() == Some(&0xff) {
//!         std::process::abort();
//!     }
//!     image.len() as u64
//! }
//!
//! async fn handle(pool: Arc<mproc::Pool>, body: Vec<u8>) -> String {
//!     match pool.apply_async(decode, body) {
//!         Ok(pending) => match pending.await {
//!             Ok(pixels) => format!("200 {pixels} pixels"),
//!             Err(e) => format!("422 {e}"),
//!         },
//!         Err(e) => format!("503 {e}"),
//!     }
//! }
//!
//! # fn block_on<F: Future>(f: F) -> F::Output {
//! #     struct Unpark(std::thread::Thread);
//! #     impl Wake for Unpark { fn wake(self: Arc<Self>) { self.0.unpark() } }
//! #     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
//! #     let mut f = pin!(f);
//! #     loop {
//! #         match f.as_mut().poll(&mut Context::from_waker(&waker)) {
//! #             Poll::Ready(v) => return v,
//! #             Poll::Pending => std::thread::park(),
//! #         }
//! #     }
//! # }
//! let pool = Arc::new(mproc::Pool::new(2)?);
//! // Any executor will do (tokio, async-std, futures' block_on...).
//! assert_eq!(block_on(handle(pool.clone(), vec![1, 2, 3])), "200 3 pixels");
//! assert!(block_on(handle(pool.clone(), vec![0xff])).starts_with("422 worker"));
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! **[`fork_map`]** forks its workers at the call, so the closure may
//! capture anything and the input is shared by copy-on-write, never encoded.
//!
//! **[`runner`]** is the engine of `mproc run`, a parallel command runner on
//! `fork` + `execvp`.
//!
//! **[`timeline`]** records which process existed when, who forked whom,
//! how each ended and which pool batch ran where, without locks, for a
//! picture drawn at the end (the CLI's `--timeline`).
//!
//! Every system call lives in one private module, retries `EINTR`, and
//! reports failure as [`Error::Os`] naming the call; [`set_trace`] prints
//! each one as it happens (the CLI's `--trace`), and
//! [`set_trace_categories`] only those of some [`TraceCategories`].
//!
//! # Rules of `fork`, and common deadlocks
//!
//! - **Threads.** `fork` copies only the calling thread. A lock held by
//!   another thread at that instant — a `Mutex` of yours — stays locked
//!   forever in the child. Start [`Process`]es and [`fork_map`] before you
//!   start threads, or make sure no other thread holds such a lock across
//!   the call. [`Pool`] forks once, at [`Pool::new`]; every later worker
//!   comes from its single-threaded zygote, so a pool stays safe after you
//!   start threads. A pool's own driver thread (see [`pool`]) holds only
//!   that pool's lock, which no child ever takes, so a `Process` or
//!   `fork_map` beside a busy pool is safe.
//! - **Rust's stdout is safe.** mproc takes its (reentrant) lock itself
//!   before every fork, waiting for any `println!` in progress on another
//!   thread, flushes, forks, and releases it on both sides: the child's
//!   only thread is the forking thread, so it owns its copy and can print,
//!   and mproc's own flush before `_exit` never waits. The price: a thread
//!   that holds `stdout().lock()` while it waits for your `start()`
//!   deadlocks. Stderr is unbuffered and mproc never takes its lock in a
//!   child; a child that prints to stderr (`eprintln!`) at the instant
//!   another parent thread was inside one can still block, as with any
//!   lock. (Holding both locks across the fork would deadlock against a
//!   thread that holds one and prints to the other.) C stdio's locks are
//!   reset in the child by glibc.
//! - **Buffered output.** mproc flushes Rust's stdout and C's before every
//!   fork, and children end with `_exit` after flushing their own, so no
//!   line is printed twice. Other C streams (`fopen`) are not flushed on
//!   either side: the child's copies of their buffers are never written. Bypass it (a `BufWriter` of your own) and you
//!   must flush it yourself before `start()`.
//! - **Pipes that never close.** A child inherits every descriptor the
//!   parent had open at `fork`. A pipe's reader sees end-of-file only when
//!   *every* copy of the write end is closed; a grandchild your task starts
//!   and leaves running keeps them open (mproc's own pipes are
//!   close-on-exec, so an `exec`'d grandchild does not).
//! - **A child blocked writing, a parent blocked waiting.** A child that
//!   writes more than a pipe holds blocks until someone reads. [`JoinHandle::join`]
//!   reads to end-of-file *before* `waitpid` for that reason; do the same
//!   with your own pipes.
//! - **Dropping a running [`Process`]** waits for it (Python joins
//!   non-daemon children at exit); mark it [`Process::daemon`] to have drop
//!   kill it instead.
//!
//! # Signals
//! [`exit_cleanly_on_signals`] makes `SIGINT`/`SIGTERM` kill and reap every
//! running [`Process`] child and every pool's workers before the program
//! exits with 130/143 — what the CLI does.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

pub mod error;
/// Not API: entry points for the fuzz targets in `fuzz/` (see the module).
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod outcome;
pub mod pool;
pub mod process;
pub mod ring;
pub mod runner;
pub mod status;
pub(crate) mod sys;
pub mod timeline;
pub mod wire;

pub use error::{Error, OsError, Result};
pub use pool::{exit_cleanly_on_signals, fork_map, AsyncResult, Imap, Pool, PoolBuilder};
pub use process::{spawn, JoinHandle, Process};
pub use status::ExitStatus;
pub use sys::{
    minor_faults, open_fd_count, page_size, set_trace, set_trace_categories, terminal_columns,
    trace_categories, tracing, TraceCategories,
};
pub use wire::{DecodeError, Wire};

/// Restores the default action of `SIGPIPE`, which Rust's runtime ignores:
/// a program writing into a closed pipe (`mproc numbers | head -1`) then
/// ends quietly, killed by the signal (status 141 in a shell), instead of
/// panicking on the next `println!`. Children forked afterwards inherit it.
pub fn restore_default_sigpipe() -> Result<()> {
    sys::signal::default_sigpipe()
}

/// Whether standard output is a pipe nobody reads any more (its reader,
/// such as `head -1`, has exited). A child killed by `SIGPIPE` while this
/// is true died of the same event that would kill the parent on its next
/// write: a filter then ends quietly with status 141, as the CLI does.
pub fn stdout_is_broken_pipe() -> bool {
    sys::stdout_is_broken_pipe()
}
