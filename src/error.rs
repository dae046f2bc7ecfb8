//! The one error type of the crate.
//!
//! Every failing system call becomes [`Error::Os`], which names the call and,
//! where one is involved, the pid. Everything a child can do wrong to its
//! parent (panic, die, send garbage) has its own variant, so a caller can tell
//! "my task failed" from "the machinery failed".

use std::fmt;

use crate::status::{write_killed, ExitStatus};
use crate::wire::DecodeError;

/// A failed system call: which call, on which pid (if any), and the `errno`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsError {
    /// The name of the call as a C programmer would write it (`"fork"`, `"waitpid"`).
    pub call: &'static str,
    /// The process the call was about, when there was one.
    pub pid: Option<i32>,
    /// The raw `errno` value.
    pub errno: i32,
}

impl OsError {
    /// The `errno` as [`nix::errno::Errno`], for matching on names such as `EAGAIN`.
    pub fn errno(&self) -> nix::errno::Errno {
        nix::errno::Errno::from_raw(self.errno)
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.call)?;
        if let Some(pid) = self.pid {
            write!(f, "({pid})")?;
        }
        write!(f, " failed: {}", std::io::Error::from_raw_os_error(self.errno))
    }
}

/// Everything that can go wrong in mproc.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// A system call failed.
    Os(OsError),
    /// The task panicked in the child; `message` is the panic's payload.
    Panicked {
        /// The panic message (`"<non-string panic payload>"` when it was not a string).
        message: String,
    },
    /// A pool or [`crate::fork_map`] worker ended without delivering a
    /// result.
    WorkerDied {
        /// The pid of the process that died.
        pid: i32,
        /// Python's convention: the exit code, or `-signal` when it was killed.
        exitcode: i32,
        /// Whether the kernel reported a core dump.
        core_dumped: bool,
        /// The index of the task it was running, when it was running one.
        task: Option<u64>,
    },
    /// The child of a [`crate::spawn`] ended without delivering its value
    /// (killed, or it called `exit`).
    ChildDied {
        /// The child's pid.
        pid: i32,
        /// Python's convention: the exit code, or `-signal` when it was killed.
        exitcode: i32,
        /// Whether the kernel reported a core dump.
        core_dumped: bool,
    },
    /// A deadline passed: a task ran past its time limit, or a wait gave up.
    Timeout,
    /// The pool was closed or terminated; no new work is accepted.
    Closed,
    /// Bytes from another process did not decode into the expected type.
    Decode(DecodeError),
    /// An argument that can never work, such as a pool of 0 processes.
    InvalidArgument(String),
    /// An operation that the object's state does not allow (starting a
    /// process twice, joining one that was never started).
    InvalidState(&'static str),
    /// A pool (or one of its results or iterators) used from a process other
    /// than the one that made it: a child forked after the pool. Its rings
    /// and pipes are the owner's; the child's copy never touches them.
    WrongProcess {
        /// The process that made the pool.
        owner: i32,
        /// The process that tried to use it.
        caller: i32,
    },
    /// The pool's zygote (the process that forks and reaps its workers)
    /// died, killed from outside: the workers died with it, every task
    /// without a result got this error, and the pool takes no more work.
    ZygoteDied {
        /// The zygote's pid.
        pid: i32,
        /// Python's convention: the exit code, or `-signal` when it was
        /// killed; `None` when its status was lost (the program ignores
        /// `SIGCHLD`, so the kernel reaped it).
        exitcode: Option<i32>,
    },
}

impl Error {
    /// Builds an [`Error::WorkerDied`] from a decoded wait status.
    pub(crate) fn died(pid: i32, status: ExitStatus, task: Option<u64>) -> Error {
        let core_dumped = matches!(status, ExitStatus::Signaled { core_dumped: true, .. });
        Error::WorkerDied { pid, exitcode: status.exitcode(), core_dumped, task }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os(e) => e.fmt(f),
            Error::Panicked { message } => write!(f, "task panicked: {message}"),
            Error::WorkerDied { pid, exitcode, core_dumped, task } => {
                write_death(f, "worker", *pid, *exitcode, *core_dumped)?;
                match task {
                    Some(t) => write!(f, ", while running task {t}"),
                    None => write!(f, " without a result"),
                }
            }
            Error::ChildDied { pid, exitcode, core_dumped } => {
                write_death(f, "child", *pid, *exitcode, *core_dumped)?;
                write!(f, " without a result")
            }
            Error::Timeout => write!(f, "timed out"),
            Error::Closed => write!(f, "the pool is closed"),
            Error::Decode(e) => write!(f, "bad data from another process: {e}"),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::InvalidState(what) => f.write_str(what),
            Error::WrongProcess { owner, caller } => write!(
                f,
                "the pool belongs to process {owner}: process {caller}, forked after it was made, cannot use it"
            ),
            Error::ZygoteDied { pid, exitcode } => {
                match exitcode {
                    Some(code) => write_death(f, "the pool's zygote", *pid, *code, false)?,
                    None => write!(f, "the pool's zygote {pid} ended (its status was lost)")?,
                }
                write!(f, ": its workers are gone and the pool takes no more work")
            }
        }
    }
}

/// `worker 4242 killed by signal 11 (Segmentation fault), core dumped` or
/// `child 31 exited with status 7`.
fn write_death(
    f: &mut fmt::Formatter<'_>,
    who: &str,
    pid: i32,
    exitcode: i32,
    core_dumped: bool,
) -> fmt::Result {
    write!(f, "{who} {pid} ")?;
    if exitcode < 0 {
        write_killed(f, -exitcode, core_dumped)
    } else {
        write!(f, "exited with status {exitcode}")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<OsError> for Error {
    fn from(e: OsError) -> Error {
        Error::Os(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::Decode(e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
