//! A parallel command runner on `fork` (or `clone`) + `execvp` — the engine of `mproc run`.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use mproc::runner::{self, Inputs, Options, Output, Template};
//!
//! let template = Template::new(vec![b"gzip".to_vec(), b"-k".to_vec(), b"{}".to_vec()])?;
//! let mut inputs: Inputs = ["a.txt", "b.txt"].into_iter().collect();
//! let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
//! let output = Output { stdout: stdout.as_fd(), stderr: stderr.as_fd() };
//! let summary = runner::run(&template, &mut inputs, &Options::default(), output, &mut |_| {})?;
//! assert_eq!(summary.failed, 0);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # How it works
//! - **One process per job**, started and exec'd by [`run`] itself (no
//!   `std::process::Command`): on Linux with `clone(CLONE_VM | CLONE_VFORK)`,
//!   as `posix_spawn` does, so the child runs in the runner's memory until
//!   it execs and no page tables are copied; elsewhere with `fork`. The
//!   child does only async-signal-safe work before `exec` (the argv is
//!   built beforehand), puts itself in a new process group, sets every
//!   signal handler back to the default, and sees exactly fds 0, 1 and 2:
//!   every descriptor mproc opens is close-on-exec. As with `posix_spawn`
//!   and `std::process::Command`, the child reads the program's
//!   environment as it is then: another thread of the program must not
//!   change it (`setenv`, `std::env::set_var`) while a run is going.
//! - **One thread, one `poll`** over every job's stdout and stderr pipe, a
//!   self-pipe that the SIGCHLD/SIGINT/SIGTERM/SIGHUP handlers write to,
//!   and, while a job slot waits for its input, the input stream
//!   ([`Inputs`]): jobs start as input arrives, and read-ahead is one buffer.
//! - **Grouped output.** Each job's stdout is printed whole, then its
//!   stderr whole (stdout first, so a job's results come before its
//!   complaints), never interleaved with another job's. With
//!   [`Order::Keep`] jobs are printed in input order and the output is
//!   byte-identical to running them one by one; the job at the head of the
//!   order streams straight through, so a job printing gigabytes needs no
//!   buffer. Output that must wait is kept in memory up to
//!   [`Options::buffer_per_stream`] per stream and [`Options::buffer_total`]
//!   in all, then spills to one unlinked temporary file in `$TMPDIR`.
//! - **A job ends** when its pipes reach end-of-file *and* its process has
//!   exited — like a shell's `$(...)`, a background process still holding
//!   the job's stdout keeps the job running (a timeout kills it too, as it
//!   is in the job's process group).
//! - **Killing** (timeouts, stop signals) signals the job's whole process
//!   group, then sends SIGKILL after [`Options::kill_grace`] — also when
//!   the job's main process died meanwhile, since what it started in its
//!   group may live on. That process is reaped only after the SIGKILL, so
//!   the group id cannot pass to another process in between. A run
//!   returns once those SIGKILLs are sent, except (Linux) for groups that
//!   `/proc` shows have nobody else left.
//!
//! # Common traps
//! - Jobs run in their own process groups, so a job cannot read from a
//!   terminal (it would be stopped by SIGTTIN): when stdin is a terminal,
//!   jobs get `/dev/null`.
//! - The signal handlers are process-wide; only one [`run`] may be active in
//!   a process at a time.
//! - A reader that stops reading mproc's output stops the jobs (they
//!   block on their own full pipes). A stop signal still acts at once:
//!   every write polls the self-pipe too (see `sink`).

mod engine;
mod fd_limit;
pub mod halt;
pub mod input;
pub mod joblog;
mod lines;
mod progress;
mod sink;
mod spool;
mod template;

use std::os::fd::BorrowedFd;
use std::time::{Duration, SystemTime};

pub use engine::run;
pub use halt::{Halt, HaltOn, HaltWhen, Threshold};
pub use input::{Inputs, Source};
pub use template::{shell_line, shell_quote, JobArgs, Template};

use crate::status::ExitStatus;

/// The order in which jobs' output is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// In input order (GNU parallel's `--keep-order`): the output equals
    /// that of running the jobs one after the other.
    #[default]
    Keep,
    /// Each job as soon as it completes.
    Unordered,
}

/// What a job gets as its stdin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobStdin {
    /// mproc's own stdin (unless it is a terminal: then `/dev/null`).
    #[default]
    Inherit,
    /// `/dev/null` (used when the inputs themselves came from stdin).
    Null,
}

/// How to run the jobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Jobs running at once; at least 1. `usize::MAX`: as many as the
    /// open-files limit allows (GNU parallel's `-j 0`).
    pub jobs: usize,
    /// Output order.
    pub order: Order,
    /// Kill a job that runs longer than this (SIGTERM to its process group,
    /// SIGKILL after `kill_grace`); it then counts as failed.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM (or the stop signal) and SIGKILL.
    pub kill_grace: Duration,
    /// Stop the run early when this condition is met (GNU parallel's
    /// `--halt`): start no new job, and with [`HaltWhen::Now`] kill the
    /// running ones (their output is dropped, they are not reported).
    pub halt: Option<Halt>,
    /// Runs of a failing job in all, at least 1 (GNU parallel's
    /// `--retries`): a job that fails is run again, under the same number
    /// and slot, until it succeeds or has run this many times. Only its
    /// last run is printed and reported, so with more than 1, nothing
    /// streams: each job's output waits until its last run.
    pub retries: u32,
    /// Jobs not to run, by number (as `--resume` reads them from a job
    /// log): their inputs are still read and numbered, so every other job
    /// keeps its number.
    pub skip: joblog::SeqSet,
    /// The jobs' stdin.
    pub stdin: JobStdin,
    /// Stop the run on SIGINT, SIGTERM and SIGHUP (those not ignored): the
    /// running jobs' groups get the signal, SIGKILL after `kill_grace`, are
    /// reaped, and [`Summary::interrupted`] is set. A second signal sends
    /// SIGKILL at once. Without it these signals keep their dispositions.
    pub handle_signals: bool,
    /// Put the job's inputs (separated by spaces) and a tab before each
    /// line it prints, on stdout and stderr.
    pub tag: bool,
    /// Print whole lines as the jobs write them, instead of each job's
    /// output whole when it completes: with [`Order::Unordered`] from every
    /// running job, with [`Order::Keep`] from the head job (its stderr
    /// too). Lines of different jobs never mix; a line longer than 1 MiB
    /// may be cut.
    pub line_buffer: bool,
    /// Show a progress bar (done/total, share, ETA) on stderr, redrawn in
    /// place, when stderr is a terminal.
    pub bar: bool,
    /// Show GNU parallel's ETA line (`ETA: 12s Left: 40 AVG: 0.30s`) on
    /// stderr, redrawn in place, when stderr is a terminal.
    pub eta: bool,
    /// Bytes of one stream of one job kept in memory before spilling.
    pub buffer_per_stream: usize,
    /// Bytes kept in memory across all jobs before spilling.
    pub buffer_total: usize,
}

impl Default for Options {
    /// One job per CPU, keep-order, no timeout, 200 ms grace, 1 MiB per
    /// stream and 32 MiB in all.
    fn default() -> Options {
        Options {
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            order: Order::Keep,
            timeout: None,
            kill_grace: Duration::from_millis(200),
            halt: None,
            retries: 1,
            skip: joblog::SeqSet::default(),
            stdin: JobStdin::Inherit,
            handle_signals: false,
            tag: false,
            line_buffer: false,
            bar: false,
            eta: false,
            buffer_per_stream: 1 << 20,
            buffer_total: 32 << 20,
        }
    }
}

/// Where the jobs' output goes (usually mproc's own stdout and stderr).
#[derive(Clone, Copy, Debug)]
pub struct Output<'a> {
    /// Receives every job's stdout.
    pub stdout: BorrowedFd<'a>,
    /// Receives every job's stderr and the runner's per-job status lines.
    pub stderr: BorrowedFd<'a>,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ended by itself. As in a shell, a command that was not found
    /// exits 127, and one that was found but could not be executed, 126.
    Completed(ExitStatus),
    /// It ran past the timeout and was killed; the status is how it died.
    TimedOut(ExitStatus),
}

impl Outcome {
    /// True only for `Completed(Exited(0))`.
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Completed(status) if status.success())
    }
}

/// One completed job, as passed to `run`'s `on_finish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobReport<'a> {
    /// The job's number: its input's position, from 1.
    pub seq: u64,
    /// The command line that ran, after substitution.
    pub command: &'a [Vec<u8>],
    /// When it was started.
    pub started: SystemTime,
    /// From start to completion (exit and end of its output).
    pub runtime: Duration,
    /// Bytes it wrote on stdout.
    pub stdout_bytes: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// What a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Jobs started.
    pub started: u64,
    /// Jobs that completed without success (non-zero exit, signal, timeout,
    /// could not be executed).
    pub failed: u64,
    /// The stop signal that ended the run early, if one did.
    pub interrupted: Option<i32>,
    /// With [`Options::halt`], the exit status GNU parallel gives: the
    /// condition's when it was met ([`Halt`]'s rules), else the failed jobs
    /// (at most 101) or, for a percentage, their share.
    pub halt_status: Option<i32>,
}
