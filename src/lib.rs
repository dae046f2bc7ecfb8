//! mproc: Python's `multiprocessing` — `Process` and `Pool` — built directly
//! on `fork`, `waitpid`, pipes and a ring buffer in shared memory.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod error;
pub mod status;
pub(crate) mod sys;
pub mod wire;
pub mod process;
pub mod ring;
pub mod pool;
pub mod runner;

pub use error::{Error, OsError, Result};
pub use pool::{exit_cleanly_on_signals, fork_map, AsyncResult, Imap, Pool, PoolBuilder};
pub use process::{spawn, JoinHandle, Process};
pub use status::ExitStatus;
pub use sys::{open_fd_count, set_trace, tracing};
pub use wire::{DecodeError, Wire};
