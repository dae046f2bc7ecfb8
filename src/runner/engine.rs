//! The scheduling loop: start jobs, one `poll` over every job's pipes and a
//! self-pipe for signals, route output, reap, enforce deadlines.
//!
//! A job's life, as fields of [`Job`]:
//!
//! ```text
//! spawned ──► pipes open, leader running
//!   │   (stdout and stderr reach EOF: every process holding them is gone)
//!   ▼
//! pipes closed ──► waitpid(WNOHANG) on each wake-up (SIGCHLD) ──► status
//!   ▼
//! completed: outcome decided, reported (job log), counted
//!   ▼
//! printed (keep-order: when it reaches the head) and removed
//! ```
//!
//! The leader is reaped only after its pipes close (or after it was sent
//! SIGKILL). Until then it stays a zombie at worst, which keeps its pid —
//! the process group id we signal — from being reused by another process.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::fd_limit::fit_jobs;
use super::halt::{HaltWhen, Tally};
use super::input::{Args, Inputs, Next};
use super::lines::LineState;
use super::progress::{Counts, Progress};
use super::sink::{drain_wake, is_interrupted, Sink};
use super::spool::{io_error, Budget, SpillFile, Spool};
use super::template::JobArgs;
use super::{shell_line, JobReport, JobStdin, Options, Order, Outcome, Output, Summary, Template};
use crate::error::{Error, Result};
use crate::status::ExitStatus;
use crate::sys::bell::SigpipeBlocked;
use crate::sys::{self, exec, signal, trace};

/// How long `poll` may sleep while a job's pipes are closed but its exit has
/// not been seen: a safety net should a SIGCHLD go to a handler other than
/// ours (another thread re-installing one). Normally SIGCHLD wakes us first.
const REAP_RECHECK: Duration = Duration::from_millis(50);

/// Read size per pipe per wake-up: a full default pipe buffer.
const READ_CHUNK: usize = 64 * 1024;

/// Keep-order: finished jobs that may wait for the head job to finish
/// before no new job starts. Bounds the runner's memory when the head job
/// runs long (each waiting job holds a few hundred bytes, plus output that
/// is bounded and spills).
const WAITING_JOBS_MAX: usize = 4096;

/// Signals that stop a run (when `Options::handle_signals` is set).
const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static RUN_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Runs `template` once per job of `inputs`; see the [module docs](super).
///
/// Jobs are started in input order, at most `options.jobs` at a time, each
/// in a process group of its own, as soon as a slot is free and `inputs`
/// has the job's arguments (a stream is read only as jobs need it). Their output goes to `output`, grouped per
/// job (see [`Order`]). `on_finish` is called once per completed job, in
/// completion order, before its output is printed.
///
/// Returns when every started job has completed and been reaped. A stop
/// signal (SIGINT, SIGTERM, SIGHUP) ends the run early: running jobs get the
/// same signal, SIGKILL after [`Options::kill_grace`], are reaped, and
/// nothing more is printed; [`Summary::interrupted`] names the signal.
///
/// # Errors
/// [`Error::InvalidArgument`] for `jobs == 0`; [`Error::InvalidState`] when
/// another `run` is active in this process (signal handlers are
/// process-wide); [`Error::Os`] when the machinery fails (`pipe`, `clone` or `fork`,
/// reading the inputs, writing the output, the spill file). Even then,
/// every job already started has been stopped and reaped before `run`
/// returns.
pub fn run(
    template: &Template,
    inputs: &mut Inputs,
    options: &Options,
    output: Output<'_>,
    on_finish: &mut dyn FnMut(&JobReport<'_>),
) -> Result<Summary> {
    if options.jobs == 0 {
        return Err(Error::InvalidArgument("jobs must be at least 1".into()));
    }
    exec::ensure_standard_fds()?;
    // Output buffered by the caller goes out before the jobs' (spawn does
    // not flush at each job).
    sys::flush_stdio();
    let _active = ActiveRun::claim()?;
    let signals = SignalGuard::install(options.handle_signals)?;
    let stop_signals: &[i32] = if options.handle_signals { &STOP_SIGNALS } else { &[] };
    let fit = fit_jobs(options.jobs)?;
    // A --halt percentage needs the number of jobs: read the inputs whole.
    let total_jobs = match options.halt.map(|h| h.threshold) {
        Some(super::halt::Threshold::Percent(_)) => Some(inputs.read_whole()?),
        _ => None,
    };
    // Drawn only where a person sees it.
    let progress = ((options.bar || options.eta) && std::io::IsTerminal::is_terminal(&output.stderr))
        .then(|| Progress::new(options.bar, options.eta, Instant::now()));
    let job_stdin = match options.stdin {
        JobStdin::Null => true,
        // A job in its own process group that reads the terminal would be
        // stopped by SIGTTIN and never finish.
        JobStdin::Inherit => std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    let devnull = match job_stdin {
        true => Some(File::open("/dev/null").map_err(|e| io_error("open", e))?),
        false => None,
    };
    // The vectors rewritten at every wake-up, allocated together so they
    // share heap pages (see exec::poll_in_place).
    let slots = fit.jobs.min(1 << 16);
    let (live, pollfds, targets) =
        (Vec::with_capacity(slots), Vec::with_capacity(2 * slots + 1), Vec::with_capacity(2 * slots));
    let mut engine = Engine {
        template,
        options,
        out: Sink::new(output.stdout, signals.wake_read.as_fd(), stop_signals),
        err: Sink::new(output.stderr, signals.wake_read.as_fd(), stop_signals),
        on_finish,
        inputs,
        exhausted: false,
        input_ready: false,
        input_waiting: false,
        next_seq: 0,
        jobs_at_once: fit.jobs,
        job_file_limit: fit.job_limit.map(|limit| limit.as_rlimit()),
        warned_fd_limit: fit.warning.is_some(),
        unstarted: None,
        slots: Slots { tracked: template.uses_slot(), free: Vec::new(), made: 0 },
        jobs: BTreeMap::new(),
        live,
        unordered_ready: VecDeque::new(),
        budget: Budget { per_stream: options.buffer_per_stream, total: options.buffer_total, used: 0 },
        spill: SpillFile::default(),
        halted: false,
        tally: Tally::default(),
        skipped: 0,
        progress,
        total_jobs,
        halt_status: None,
        stop: None,
        started: 0,
        failed: 0,
        wake: signals.wake_read.as_fd(),
        devnull,
        reset_signals: signal::signals_to_reset(),
        child_stack: exec::ChildStack::default(),
        held: Vec::new(),
        buf: vec![0; READ_CHUNK],
        pollfds,
        targets,
    };
    if let Some(warning) = &fit.warning {
        engine.err.write_all(warning.as_bytes())?;
    }
    let result = engine.run_loop();
    engine.show_progress(true);
    if engine.progress.is_some() {
        // The last state stays on the screen, on a line of its own.
        engine.err.write_all(b"\n")?;
    }
    result?;
    let halt_status = options.halt.map(|halt| {
        engine.halt_status.unwrap_or_else(|| halt.unmet_exit_status(&engine.tally, engine.started))
    });
    let summary = Summary { started: engine.started, failed: engine.failed, interrupted: None, halt_status };
    match engine.stop.take() {
        None => Ok(summary),
        Some(Stop::Signal(signal)) => Ok(Summary { interrupted: Some(signal), ..summary }),
        Some(Stop::Failed(err)) => Err(err),
    }
}

/// `{%}` numbers: each new job takes the lowest one no running job holds.
/// Kept only when the command uses `{%}`: otherwise every job gets 0 and
/// nothing is written per job (where jobs start with `fork`, each page the
/// runner writes while one is starting costs a copy-on-write fault).
struct Slots {
    tracked: bool,
    /// Given back by completed jobs, highest first, so `pop` takes the
    /// lowest.
    free: Vec<usize>,
    /// Handed out so far: a new one is `made + 1`.
    made: usize,
}

impl Slots {
    fn take(&mut self) -> usize {
        if !self.tracked {
            return 0;
        }
        let slot = self.free.pop().unwrap_or(self.made + 1);
        self.made = self.made.max(slot);
        slot
    }

    fn give_back(&mut self, slot: usize) {
        if self.tracked {
            self.free.push(slot);
        }
    }

    /// Lowest first, as GNU parallel hands them out.
    fn sort(&mut self) {
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }
}

/// Only one run per process: the signal handlers and the self-pipe are
/// process-wide.
struct ActiveRun;

impl ActiveRun {
    fn claim() -> Result<ActiveRun> {
        // AcqRel/Acquire: a plain mutual-exclusion flag.
        RUN_ACTIVE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ActiveRun)
            .map_err(|_| Error::InvalidState("another mproc run is active in this process"))
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        RUN_ACTIVE.store(false, Ordering::Release);
    }
}

/// The run's signal handlers and self-pipe; Drop puts everything back.
struct SignalGuard {
    saved: Vec<signal::SavedAction>,
    old_mask: Option<signal::SigMask>,
    /// Output written into a pipe with no reader fails with EPIPE, even in
    /// a program that keeps SIGPIPE's default action (jobs get it back:
    /// a child unblocks every signal before exec).
    _no_sigpipe: SigpipeBlocked,
    wake_read: OwnedFd,
    _wake_write: OwnedFd,
}

impl SignalGuard {
    fn install(stop_signals: bool) -> Result<SignalGuard> {
        let (wake_read, wake_write) = sys::pipe()?;
        // Non-blocking both ways: the handler must never block on a full
        // pipe, and draining stops at "empty" instead of waiting.
        sys::set_nonblocking(wake_read.as_fd(), true)?;
        sys::set_nonblocking(wake_write.as_fd(), true)?;
        signal::take_pending_signals();
        signal::set_wake_fd(wake_write.as_raw_fd());
        // Built before installing, so Drop undoes a half-done install.
        let mut guard = SignalGuard {
            saved: Vec::new(),
            old_mask: None,
            _no_sigpipe: SigpipeBlocked::new(),
            wake_read,
            _wake_write: wake_write,
        };
        guard.saved.push(signal::install_handler(libc::SIGCHLD)?);
        let mut unblock = vec![libc::SIGCHLD];
        if stop_signals {
            for sig in STOP_SIGNALS {
                // An ignored signal stays ignored (`nohup`, `cmd &` in sh).
                if !signal::is_ignored(sig)? {
                    // Without SA_RESTART: a write blocked on a full pipe
                    // returns, and the signal acts at once (see sink).
                    guard.saved.push(signal::install_interrupting_handler(sig)?);
                    unblock.push(sig);
                }
            }
        }
        // A thread that blocks SIGCHLD would never hear of its jobs ending.
        guard.old_mask = Some(signal::SigMask::unblock(&unblock)?);
        Ok(guard)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for saved in self.saved.iter().rev() {
            // Nothing sensible to do if putting a disposition back fails.
            let _ = signal::restore_handler(saved);
        }
        if let Some(mask) = &self.old_mask {
            mask.restore();
        }
        signal::set_wake_fd(-1);
    }
}

/// Which of a job's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// Where a job is in being killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kill {
    /// Not being killed.
    No,
    /// Sent SIGTERM (or the stop signal); SIGKILL follows at this instant.
    Term { sigkill_at: Instant },
    /// Sent SIGKILL: it will be reaped even if its pipes stay open.
    Killed,
}

/// Why the run is stopping early.
enum Stop {
    /// A stop signal arrived.
    Signal(i32),
    /// The machinery failed (starting a job, write, spill file).
    Failed(Error),
}

struct Job {
    command: Vec<Vec<u8>>,
    /// `None` when the command could not even be built (a NUL byte in it).
    pid: Option<i32>,
    /// Read ends of the job's stdout and stderr pipes; `None` after EOF.
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Spool,
    err: Spool,
    started: SystemTime,
    start: Instant,
    deadline: Option<Instant>,
    kill: Kill,
    timed_out: bool,
    /// Set when the leader has been reaped.
    status: Option<ExitStatus>,
    /// Set when the job completed; then it only waits to be printed.
    outcome: Option<Outcome>,
    /// Its `{%}`, given back when it completes.
    slot: usize,
    /// Killed by `--halt now`: neither reported nor printed.
    dropped: bool,
    /// Runs of this job so far, this one included (`--retries`).
    attempt: u32,
    /// Bytes it wrote on stdout (the job log's `Receive`).
    stdout_bytes: u64,
    /// `--tag`: the inputs and a tab, before each line; else empty.
    tag: Vec<u8>,
    /// Where each stream is between lines (`--tag`, `--line-buffer`).
    out_lines: LineState,
    err_lines: LineState,
}

impl Job {
    fn pipes_closed(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// The next instant at which something must happen to this job.
    fn next_deadline(&self) -> Option<Instant> {
        if self.status.is_some() {
            return None;
        }
        match self.kill {
            Kill::No => self.deadline,
            Kill::Term { sigkill_at } => Some(sigkill_at),
            Kill::Killed => None,
        }
    }

    /// Sends `signal` to the job's process group, while the group id is
    /// still ours (the leader not yet reaped).
    fn signal_group(&self, signal: i32) {
        if let (Some(pid), None) = (self.pid, self.status) {
            // The child makes its group itself before exec; should it not
            // have run yet, the group would not exist and the signal would
            // miss it. Setting it from here first closes that window.
            exec::ensure_process_group(pid);
            // The only failures left after ESRCH are EPERM (a process in the
            // group changed its credentials); there is nothing better to do
            // than carry on: SIGKILL follows, then the leader is reaped.
            let _ = sys::kill_orphaned_group(sys::Pid::from_raw(pid), signal);
        }
    }
}

struct Engine<'a> {
    template: &'a Template,
    options: &'a Options,
    out: Sink<'a>,
    err: Sink<'a>,
    on_finish: &'a mut dyn FnMut(&JobReport<'_>),
    inputs: &'a mut Inputs,
    /// The inputs have all been handed out.
    exhausted: bool,
    /// The last `poll` saw the input stream readable: one read is allowed.
    input_ready: bool,
    /// The input stream has nothing whole buffered: poll it.
    input_waiting: bool,
    next_seq: u64,
    /// Jobs run at once: `options.jobs`, lowered to fit the open-files limit.
    jobs_at_once: usize,
    /// The open-files limit jobs get back (mproc raised its own).
    job_file_limit: Option<libc::rlimit>,
    /// The warning that fewer jobs run at once has been printed.
    warned_fd_limit: bool,
    /// A job that could not start for want of descriptors: it goes first.
    unstarted: Option<Args>,
    /// The jobs' `{%}` numbers.
    slots: Slots,
    /// Started jobs not yet printed, by sequence number. In keep-order mode
    /// the first entry is the head: the one job whose stdout streams
    /// straight to our stdout.
    /// Boxed: B-tree nodes then hold pointers, not whole jobs, so a job's
    /// state stays in one small allocation instead of moving between
    /// large nodes (fewer pages written per job: copy-on-write faults where
    /// jobs start with `fork`, see `exec::spawn`).
    jobs: BTreeMap<u64, Box<Job>>,
    /// Jobs not yet completed (at most `options.jobs`), in start order.
    /// Invariant: each is a key of `jobs` (a job leaves `live` before it
    /// can leave `jobs`), which makes `self.jobs[seq]` safe for them.
    live: Vec<u64>,
    /// Unordered mode: completed jobs, in completion order, to print.
    unordered_ready: VecDeque<u64>,
    budget: Budget,
    spill: SpillFile,
    /// The `--halt` condition was met: start nothing more.
    halted: bool,
    /// Jobs completed so far, and how many failed (for `--halt`).
    tally: Tally,
    /// Jobs skipped (`--resume`).
    skipped: u64,
    /// `--bar`, `--eta` on a terminal.
    progress: Option<Progress>,
    /// The number of jobs, for a `--halt` percentage (the inputs are read
    /// whole for it).
    total_jobs: Option<u64>,
    /// The exit status the met `--halt` condition gives.
    halt_status: Option<i32>,
    stop: Option<Stop>,
    started: u64,
    failed: u64,
    wake: BorrowedFd<'a>,
    devnull: Option<File>,
    reset_signals: Vec<libc::c_int>,
    /// The stack each job's child runs on until it execs (see `exec::spawn`).
    child_stack: exec::ChildStack,
    /// Main processes of jobs that ended while their group's SIGKILL was
    /// still due (a timeout's or a stop signal's grace period), with that
    /// instant: seen ended but not reaped, so that the group id stays
    /// theirs until the SIGKILL; reaped right after it. Reaped at once, an
    /// emptied group's id could pass to a new process leading a group of
    /// its own, and skipping the SIGKILL would spare what the job left
    /// running in its group.
    held: Vec<(i32, Instant)>,
    buf: Vec<u8>,
    /// What the last `poll` watched: the self-pipe, then job pipes, one
    /// `targets` entry per job pipe.
    pollfds: Vec<libc::pollfd>,
    targets: Vec<(u64, Stream)>,
}

impl Engine<'_> {
    fn run_loop(&mut self) -> Result<()> {
        loop {
            // Completing first frees the slots of jobs reaped in the last
            // pass, so their successors start in this one, not a wake-up
            // later.
            self.complete_finished();
            self.print_ready();
            self.start_jobs();
            self.show_progress(false);
            if self.live.is_empty() && !self.waiting_for_input() {
                // start_jobs filled no slot: inputs exhausted, halted or
                // stopping. What a finished job left in its group still
                // gets the SIGKILL due at the end of its grace period.
                self.release_empty_groups();
                if self.held.is_empty() {
                    return Ok(());
                }
            }
            self.wait_and_service()?;
        }
    }

    fn may_start(&self) -> bool {
        self.stop.is_none() && !self.halted && !self.exhausted
    }

    /// Whether a job could start now but for its input, not yet read.
    fn waiting_for_input(&self) -> bool {
        self.input_waiting && self.may_start() && self.has_room()
    }

    /// A free slot, and (keep-order) not too many jobs waiting their turn.
    fn has_room(&self) -> bool {
        self.live.len() < self.jobs_at_once
            && (self.options.order == Order::Unordered
                || self.jobs.len() < self.jobs_at_once + WAITING_JOBS_MAX)
    }

    fn start_jobs(&mut self) {
        while self.may_start() && self.has_room() {
            if let Some(args) = self.unstarted.take() {
                self.start_job(args);
                continue;
            }
            let next = self.inputs.next(std::mem::take(&mut self.input_ready));
            self.input_waiting = matches!(next, Ok(Next::Pending));
            let args = match next {
                Ok(Next::Args(args)) => args,
                Ok(Next::Pending) => break,
                Ok(Next::End) => {
                    self.exhausted = true;
                    break;
                }
                Err(err) => {
                    self.begin_stop(Stop::Failed(err));
                    break;
                }
            };
            if self.options.skip.contains(self.next_seq + 1) {
                self.next_seq += 1; // done in an earlier run (--resume)
                self.skipped += 1;
                continue;
            }
            self.start_job(args);
        }
    }

    fn start_job(&mut self, args: Args) {
        let seq = self.next_seq + 1;
        let slot = self.slots.take();
        let command = self.template.expand(JobArgs { values: &args, seq, slot });
        match self.spawn_job(seq, slot, command) {
            Ok(mut job) => {
                if self.options.tag {
                    job.tag = args.join(&b' ');
                    job.tag.push(b'\t');
                }
                self.next_seq = seq;
                self.started += 1;
                self.jobs.insert(seq, Box::new(job));
                self.live.push(seq);
            }
            Err(err) => {
                self.slots.give_back(slot);
                if is_out_of_resources(&err) && !self.live.is_empty() {
                    // Something else holds descriptors (or processes) too:
                    // run fewer at once; this job starts when one ends.
                    self.jobs_at_once = self.live.len();
                    self.unstarted = Some(args);
                    self.warn_fewer_jobs(err);
                } else {
                    self.begin_stop(Stop::Failed(err));
                }
            }
        }
    }

    fn warn_fewer_jobs(&mut self, err: Error) {
        if std::mem::replace(&mut self.warned_fd_limit, true) {
            return;
        }
        // `usize::MAX` is how `-j 0` ("as many as possible") arrives.
        let asked = match self.options.jobs {
            usize::MAX => "0".to_string(),
            n => n.to_string(),
        };
        let line = format!("mproc: run: warning: -j {asked} lowered to {} ({err})\n", self.jobs_at_once);
        if let Err(err) = self.err.write_all(line.as_bytes()) {
            self.output_failed(err);
        }
    }

    fn spawn_job(&mut self, seq: u64, slot: usize, command: Vec<Vec<u8>>) -> Result<Job> {
        let mut job = Job {
            slot,
            dropped: false,
            attempt: 1,
            stdout_bytes: 0,
            tag: Vec::new(),
            out_lines: LineState::default(),
            err_lines: LineState::default(),
            command,
            pid: None,
            stdout: None,
            stderr: None,
            out: Spool::default(),
            err: Spool::default(),
            started: SystemTime::now(),
            start: Instant::now(),
            deadline: None,
            kill: Kill::No,
            timed_out: false,
            status: None,
            outcome: None,
        };
        let argv = match exec::Argv::new(&job.command) {
            Ok(argv) => argv,
            Err(err) => {
                // Fails like a command that cannot be executed, without a fork.
                let msg = format!("mproc: job {seq}: {err}\n");
                job.err.push(msg.as_bytes(), &mut self.budget, &mut self.spill)?;
                job.status = Some(ExitStatus::Exited(exec::EXEC_FAILED));
                return Ok(job);
            }
        };
        // The read ends stay blocking: they are read only after poll said
        // so (one read each), which saves two fcntl calls per pipe per job.
        let (out_read, out_write) = sys::pipe()?;
        let (err_read, err_write) = sys::pipe()?;
        let plan = exec::ChildPlan {
            argv: &argv,
            stdin: self.devnull.as_ref().map(|f| f.as_raw_fd()),
            stdout: out_write.as_raw_fd(),
            stderr: err_write.as_raw_fd(),
            reset_signals: &self.reset_signals,
            file_limit: self.job_file_limit,
        };
        job.started = SystemTime::now();
        job.start = Instant::now();
        let pid = exec::spawn(&plan, &mut self.child_stack)?;
        crate::timeline::job(pid, &job.command);
        // Close our copies of the write ends now: the child has its own, and
        // EOF must come as soon as the job (and all it started) is done.
        drop((out_write, err_write));
        job.pid = Some(pid);
        job.stdout = Some(out_read);
        job.stderr = Some(err_read);
        job.deadline = self.options.timeout.map(|t| job.start + t);
        Ok(job)
    }

    /// One `poll` over the self-pipe and every open job pipe, then whatever
    /// became due: reading, reaping, deadlines.
    fn wait_and_service(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut wait: Option<Duration> = None;
        let mut shorten = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
        // A SIGCHLD wake-up taken by a sink: reap now, not at the next one.
        if self.out.take_drained() | self.err.take_drained() {
            shorten(Duration::ZERO);
        }
        if let Some(progress) = &self.progress {
            shorten(progress.next_tick(now)); // the ETA moves on
        }
        for &(_, at) in &self.held {
            shorten(at.saturating_duration_since(now));
        }
        for seq in &self.live {
            let job = &self.jobs[seq];
            if let Some(at) = job.next_deadline() {
                shorten(at.saturating_duration_since(now));
            }
            if job.pipes_closed() {
                // Done but not yet completed (a job that never forked):
                // don't sleep. Pipes closed, exit not yet seen: recheck.
                shorten(if job.status.is_some() { Duration::ZERO } else { REAP_RECHECK });
            }
        }

        // Reused from one wake-up to the next (see exec::poll_in_place).
        // The raw fds stay open while polled: only this thread closes them.
        let watch = |fd: RawFd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        self.pollfds.clear();
        self.targets.clear();
        self.pollfds.push(watch(self.wake.as_raw_fd()));
        let input_fd = self.inputs.wait_fd().filter(|_| self.waiting_for_input()).map(|fd| fd.as_raw_fd());
        if let Some(fd) = input_fd {
            self.pollfds.push(watch(fd));
        }
        let first_job_fd = self.pollfds.len();
        for &seq in &self.live {
            let job = &self.jobs[&seq];
            for (fd, stream) in [(&job.stdout, Stream::Out), (&job.stderr, Stream::Err)] {
                if let Some(fd) = fd {
                    self.pollfds.push(watch(fd.as_raw_fd()));
                    self.targets.push((seq, stream));
                }
            }
        }
        exec::poll_in_place(&mut self.pollfds, wait)?;

        const HANGUP: libc::c_short = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if self.pollfds[0].revents != 0 {
            self.handle_signals();
        }
        if input_fd.is_some() {
            // Readable, or at its end (POLLHUP): either way a read returns.
            self.input_ready = self.pollfds[1].revents != 0;
        }
        for i in 0..self.targets.len() {
            let (seq, stream) = self.targets[i];
            let revents = self.pollfds[first_job_fd + i].revents;
            if revents & libc::POLLIN != 0 {
                self.read_once(seq, stream);
            } else if revents & HANGUP != 0 {
                // A pipe with no writer left and no data: EOF, no read needed.
                self.close_stream(seq, stream);
            }
        }
        self.reap()?;
        self.enforce_deadlines(Instant::now());
        Ok(())
    }

    fn handle_signals(&mut self) {
        drain_wake(self.wake);
        let pending = signal::take_pending_signals();
        // SIGCHLD needs nothing here: reap() runs after every wake-up.
        for sig in STOP_SIGNALS {
            if pending & (1 << sig) != 0 {
                trace!("caught {}", crate::status::signal_abbrev(sig));
                self.begin_stop(Stop::Signal(sig));
            }
        }
    }

    /// Reads once from one pipe that poll reported ready; EOF closes it.
    /// Returns whether data was read.
    fn read_once(&mut self, seq: u64, stream: Stream) -> bool {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.read_into(seq, stream, &mut buf);
        self.buf = buf;
        result
    }

    fn read_into(&mut self, seq: u64, stream: Stream, buf: &mut [u8]) -> bool {
        let Some(job) = self.jobs.get_mut(&seq) else { return false };
        let slot = match stream {
            Stream::Out => &mut job.stdout,
            Stream::Err => &mut job.stderr,
        };
        let Some(fd) = slot else { return false };
        // No error is expected on our own pipe; should one happen, end the
        // stream rather than fail the run.
        let n = sys::read(fd.as_fd(), buf).unwrap_or(0);
        if n == 0 {
            *slot = None;
            return false;
        }
        if stream == Stream::Out {
            job.stdout_bytes += n as u64;
        }
        self.route(seq, stream, &buf[..n]);
        true
    }

    fn close_stream(&mut self, seq: u64, stream: Stream) {
        if let Some(job) = self.jobs.get_mut(&seq) {
            match stream {
                Stream::Out => job.stdout = None,
                Stream::Err => job.stderr = None,
            }
        }
    }

    /// Whether a read on the pipe would return at once (data or EOF).
    fn pipe_ready(&self, seq: u64, stream: Stream) -> Result<bool> {
        let Some(job) = self.jobs.get(&seq) else { return Ok(false) };
        let fd = match stream {
            Stream::Out => &job.stdout,
            Stream::Err => &job.stderr,
        };
        let Some(fd) = fd else { return Ok(false) };
        let ready = sys::poll(&[(fd.as_fd(), true, false)], Some(Duration::ZERO))?;
        Ok(ready[0].readable || ready[0].hangup)
    }

    /// Sends bytes a job wrote where they belong: straight to our stdout
    /// when the job is the keep-order head, else into its spool.
    fn route(&mut self, seq: u64, stream: Stream, data: &[u8]) {
        if self.stop.is_some() {
            return; // stopping: nothing more is printed
        }
        let line_buffer = self.options.line_buffer;
        // Straight out: the keep-order head's stdout (and stderr, with
        // --line-buffer); with --line-buffer and --unordered, every job's.
        // Never with retries: a failed attempt's output is dropped.
        let direct = self.options.retries <= 1
            && match self.options.order {
                Order::Keep => {
                    (stream == Stream::Out || line_buffer)
                        && self.jobs.first_key_value().map(|(&s, _)| s) == Some(seq)
                }
                Order::Unordered => line_buffer,
            };
        if direct {
            self.hide_progress();
        }
        let Some(job) = self.jobs.get_mut(&seq).filter(|job| !job.dropped) else { return };
        debug_assert!(!direct || if stream == Stream::Out { job.out.is_empty() } else { job.err.is_empty() });
        let result = match (direct, stream) {
            // Invariant: the head's spools were drained when it became the
            // head (print_ready), so these bytes come right after them.
            (true, Stream::Out) => emit(&self.out, &mut job.out_lines, &job.tag, line_buffer, data),
            (true, Stream::Err) => emit(&self.err, &mut job.err_lines, &job.tag, line_buffer, data),
            (false, Stream::Out) => job.out.push(data, &mut self.budget, &mut self.spill),
            (false, Stream::Err) => job.err.push(data, &mut self.budget, &mut self.spill),
        };
        if let Err(err) = result {
            self.output_failed(err);
        }
    }

    /// A write of the output failed: a stop signal cut it short (act on
    /// the signal), or the output is gone (stop the run).
    fn output_failed(&mut self, err: Error) {
        if is_interrupted(&err) {
            self.handle_signals();
        } else {
            self.begin_stop(Stop::Failed(err));
        }
    }

    /// Collects the exit of every job whose pipes are closed (or that was
    /// sent SIGKILL). Called after every wake-up, SIGCHLD included.
    fn reap(&mut self) -> Result<()> {
        for i in 0..self.live.len() {
            let seq = self.live[i];
            let job = &self.jobs[&seq];
            let (Some(pid), None) = (job.pid, job.status) else { continue };
            if !job.pipes_closed() && job.kill != Kill::Killed {
                continue;
            }
            // ECHILD here means someone else reaped our child: an error of
            // the program around us, reported, never swallowed. A leader
            // whose group's SIGKILL is still due stays a zombie until then.
            let status = match job.kill {
                Kill::Term { sigkill_at } => {
                    let Some(status) = sys::peek_ended(pid)? else { continue };
                    self.held.push((pid, sigkill_at));
                    status
                }
                _ => {
                    let Some(status) = sys::waitpid(pid, true)? else { continue };
                    status
                }
            };
            if let Some(job) = self.jobs.get_mut(&seq) {
                job.status = Some(status);
            }
            // Killed, yet its pipes are open: a process that left the group
            // holds them. Take what is there and stop waiting for EOF.
            for stream in [Stream::Out, Stream::Err] {
                // Bounded: a writer that keeps going must not keep us here.
                for _ in 0..16 {
                    if !self.pipe_ready(seq, stream)? || !self.read_once(seq, stream) {
                        break;
                    }
                }
                self.close_stream(seq, stream);
            }
        }
        Ok(())
    }

    /// Timeouts: SIGTERM to the group, then SIGKILL after the grace period
    /// (also to the groups of jobs whose main process is gone, `held`).
    fn enforce_deadlines(&mut self, now: Instant) {
        self.kill_held(Some(now));
        let grace = self.options.kill_grace;
        for seq in &self.live {
            let Some(job) = self.jobs.get_mut(seq) else { continue };
            if job.status.is_some() {
                continue;
            }
            match job.kill {
                Kill::No if job.deadline.is_some_and(|d| now >= d) => {
                    job.timed_out = true;
                    if let Some(pid) = job.pid {
                        crate::timeline::timed_out(pid);
                    }
                    job.signal_group(libc::SIGTERM);
                    job.kill = Kill::Term { sigkill_at: now + grace };
                }
                Kill::Term { sigkill_at } if now >= sigkill_at => {
                    job.signal_group(libc::SIGKILL);
                    job.kill = Kill::Killed;
                }
                _ => {}
            }
        }
    }

    /// SIGKILL to the group of each `held` leader whose grace period is
    /// over by `now` (every one, without `now`), then reaps the leader.
    fn kill_held(&mut self, now: Option<Instant>) {
        self.held.retain(|&(pid, at)| {
            if now.is_some_and(|now| now < at) {
                return true;
            }
            // Unreaped (a zombie), so the group id is still this job's.
            let _ = sys::kill_orphaned_group(sys::Pid::from_raw(pid), libc::SIGKILL);
            let _ = sys::reap_peeked(pid);
            false
        });
    }

    /// Reaps the `held` leaders whose groups have nobody else left (seen
    /// in `/proc`, Linux): the run need not wait for their grace period
    /// to end. Elsewhere every one waits for its SIGKILL.
    fn release_empty_groups(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Some(groups) = sys::groups_with_live_members() else { return };
        self.held.retain(|&(pid, _)| {
            if groups.contains(&pid) {
                return true;
            }
            let _ = sys::reap_peeked(pid);
            false
        });
    }

    /// Starts stopping the run: no new jobs, running ones signalled (SIGKILL
    /// after the grace period), nothing more printed. A second stop signal
    /// sends SIGKILL at once.
    fn begin_stop(&mut self, reason: Stop) {
        let (signal, escalate) = match (&self.stop, &reason) {
            (None, Stop::Signal(sig)) => (*sig, false),
            (None, Stop::Failed(_)) => (libc::SIGTERM, false),
            (Some(_), Stop::Signal(_)) => (libc::SIGKILL, true),
            (Some(_), Stop::Failed(_)) => return, // keep the first reason
        };
        if self.stop.is_none() {
            self.stop = Some(reason);
        }
        self.signal_live(signal, escalate);
    }

    /// Sends `signal` to every running job not being killed yet (SIGKILL
    /// follows after the grace period); with `escalate`, SIGKILL to every
    /// running job at once.
    fn signal_live(&mut self, signal: i32, escalate: bool) {
        if escalate {
            self.kill_held(None);
        }
        let now = Instant::now();
        for seq in &self.live {
            let Some(job) = self.jobs.get_mut(seq) else { continue };
            match (job.kill, escalate) {
                (Kill::No, false) => {
                    job.signal_group(signal);
                    job.kill = Kill::Term { sigkill_at: now + self.options.kill_grace };
                }
                (Kill::No | Kill::Term { .. }, true) => {
                    job.signal_group(libc::SIGKILL);
                    job.kill = Kill::Killed;
                }
                _ => {}
            }
        }
    }

    /// Decides the outcome of every job that is done (pipes closed, leader
    /// reaped): counts it, reports it, queues it for printing.
    fn complete_finished(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            let seq = self.live[i];
            let job = &self.jobs[&seq];
            let Some(status) = job.status.filter(|_| job.pipes_closed()) else {
                i += 1;
                continue;
            };
            let outcome = if job.timed_out { Outcome::TimedOut(status) } else { Outcome::Completed(status) };
            self.live.swap_remove(i);
            if !outcome.success() && job.attempt < self.options.retries && self.stop.is_none() {
                // Its output was held back (no streaming with retries), so
                // this attempt leaves no trace; it keeps its number and slot.
                self.retry(seq);
                continue;
            }
            self.slots.give_back(job.slot);
            if self.stop.is_some() || job.dropped {
                // Stopped by us, or ended in the middle of the stop: neither
                // reported nor printed.
                if let Some(mut job) = self.jobs.remove(&seq) {
                    let _ = job.out.discard(&mut self.budget, &mut self.spill);
                    let _ = job.err.discard(&mut self.budget, &mut self.spill);
                }
                continue;
            }
            let report = JobReport {
                seq,
                command: &job.command,
                started: job.started,
                runtime: job.start.elapsed(),
                stdout_bytes: job.stdout_bytes,
                outcome,
            };
            self.tally.done += 1;
            if !outcome.success() {
                self.failed += 1;
                self.tally.failed += 1;
            }
            (self.on_finish)(&report);
            self.check_halt(outcome);
            if let Some(job) = self.jobs.get_mut(&seq) {
                job.outcome = Some(outcome);
            }
            if self.options.order == Order::Unordered {
                self.unordered_ready.push_back(seq);
            }
        }
        // swap_remove and retries shuffle; keep `live` in start order for
        // fair polling.
        self.live.sort_unstable();
        self.slots.sort();
    }

    /// Whether printing now writes anything (so the progress line must be
    /// erased first; erasing it for jobs that print nothing would make it
    /// flicker).
    fn has_output_to_print(&self) -> bool {
        let prints = |job: &Job| {
            !job.out.is_empty()
                || !job.err.is_empty()
                || job.out_lines.holds_a_line()
                || job.err_lines.holds_a_line()
                || job.outcome.is_some_and(|o| !matches!(o, Outcome::Completed(ExitStatus::Exited(_))))
        };
        match self.options.order {
            // The heads print in turn up to the first still running.
            Order::Keep => {
                for job in self.jobs.values() {
                    if prints(job) {
                        return true;
                    }
                    if job.outcome.is_none() {
                        return false;
                    }
                }
                false
            }
            Order::Unordered => {
                self.unordered_ready.iter().any(|seq| self.jobs.get(seq).is_some_and(|j| prints(j)))
            }
        }
    }

    /// Redraws the `--bar`/`--eta` line (at most ten times a second, unless
    /// `force`).
    fn show_progress(&mut self, force: bool) {
        let Some(progress) = &mut self.progress else { return };
        let counts = Counts {
            done: self.tally.done + self.skipped,
            running: self.live.len() as u64,
            total: self.total_jobs.or_else(|| self.inputs.remaining().map(|left| self.next_seq + left)),
        };
        if let Some(line) = progress.redraw(counts, Instant::now(), force) {
            if let Err(err) = self.err.write_all(&line) {
                self.output_failed(err);
            }
        }
    }

    /// Erases the `--bar`/`--eta` line before job output is printed.
    fn hide_progress(&mut self) {
        if let Some(erase) = self.progress.as_mut().and_then(Progress::erase) {
            if let Err(err) = self.err.write_all(erase) {
                self.output_failed(err);
            }
        }
    }

    /// After each completed job: whether the `--halt` condition is met now.
    fn check_halt(&mut self, outcome: Outcome) {
        let Some(halt) = self.options.halt else { return };
        if self.halt_status.is_some() || !halt.is_met(&self.tally, self.total_jobs) {
            return;
        }
        let status = match outcome {
            Outcome::Completed(ExitStatus::Exited(code)) => code,
            Outcome::Completed(ExitStatus::Signaled { signal, .. }) => 128 + signal,
            // GNU parallel's exit value for a job it killed for time is -1,
            // which it exits with as 255, whatever signal ended the job.
            Outcome::TimedOut(_) => TIMED_OUT_STATUS,
        };
        self.halt_status = Some(halt.exit_status(&self.tally, self.total_jobs, status));
        self.halted = true;
        if halt.when == HaltWhen::Now {
            for seq in &self.live {
                if let Some(job) = self.jobs.get_mut(seq) {
                    job.dropped = true;
                }
            }
            self.signal_live(libc::SIGTERM, false);
        }
    }

    /// Runs a failed job again, under the same number and slot, its output
    /// so far dropped.
    fn retry(&mut self, seq: u64) {
        let Some(mut old) = self.jobs.remove(&seq) else { return };
        let _ = old.out.discard(&mut self.budget, &mut self.spill);
        let _ = old.err.discard(&mut self.budget, &mut self.spill);
        match self.spawn_job(seq, old.slot, std::mem::take(&mut old.command)) {
            Ok(mut job) => {
                job.attempt = old.attempt + 1;
                job.tag = std::mem::take(&mut old.tag);
                self.jobs.insert(seq, Box::new(job));
                self.live.push(seq);
            }
            Err(err) => {
                self.slots.give_back(old.slot);
                self.begin_stop(Stop::Failed(err));
            }
        }
    }

    /// Prints every job whose turn it is. Keep-order: the head's saved
    /// stdout (it streams from now on), and, once the head has completed,
    /// its stderr and status line; then the next job becomes the head.
    fn print_ready(&mut self) {
        if self.stop.is_some() {
            return;
        }
        if self.progress.is_some() && self.has_output_to_print() {
            self.hide_progress();
        }
        let result = match self.options.order {
            Order::Keep => self.print_heads(),
            Order::Unordered => self.print_unordered(),
        };
        if let Err(err) = result {
            self.output_failed(err);
        }
    }

    fn print_heads(&mut self) -> Result<()> {
        let (out, err) = (&self.out, &self.err);
        let line_buffer = self.options.line_buffer;
        while let Some(mut entry) = self.jobs.first_entry() {
            let seq = *entry.key();
            let job = &mut **entry.get_mut();
            if job.outcome.is_none() && self.options.retries > 1 {
                return Ok(()); // held until its last attempt
            }
            let (budget, spill) = (&mut self.budget, &mut self.spill);
            // Running: whole lines only with --line-buffer (its stderr
            // streams too, so it is drained now).
            let whole = line_buffer && job.outcome.is_none();
            job.out.drain(budget, spill, &mut |b| emit(out, &mut job.out_lines, &job.tag, whole, b))?;
            if line_buffer {
                job.err.drain(budget, spill, &mut |b| emit(err, &mut job.err_lines, &job.tag, whole, b))?;
            }
            let Some(outcome) = job.outcome else { return Ok(()) };
            print_rest(job, out, err, budget, spill)?;
            if let Some(line) = status_line(seq, &job.command, outcome, self.options.timeout) {
                err.write_all(line.as_bytes())?;
            }
            entry.remove();
        }
        Ok(())
    }

    fn print_unordered(&mut self) -> Result<()> {
        let (out, err) = (&self.out, &self.err);
        while let Some(seq) = self.unordered_ready.pop_front() {
            let Some(mut job) = self.jobs.remove(&seq) else { continue };
            print_rest(&mut job, out, err, &mut self.budget, &mut self.spill)?;
            if let Some(outcome) = job.outcome {
                if let Some(line) = status_line(seq, &job.command, outcome, self.options.timeout) {
                    err.write_all(line.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// Prints what a completed job has not printed yet: its stdout, then its
/// stderr, each with its unfinished last line.
fn print_rest(
    job: &mut Job,
    out: &Sink<'_>,
    err: &Sink<'_>,
    budget: &mut Budget,
    spill: &mut SpillFile,
) -> Result<()> {
    job.out.drain(budget, spill, &mut |b| emit(out, &mut job.out_lines, &job.tag, false, b))?;
    finish_lines(out, &mut job.out_lines, &job.tag)?;
    job.err.drain(budget, spill, &mut |b| emit(err, &mut job.err_lines, &job.tag, false, b))?;
    finish_lines(err, &mut job.err_lines, &job.tag)
}

/// Writes `data`, a job's output, tagged and cut into whole lines as
/// `--tag` and `--line-buffer` (`whole_lines`) ask.
fn emit(sink: &Sink<'_>, lines: &mut LineState, tag: &[u8], whole_lines: bool, data: &[u8]) -> Result<()> {
    if lines.passes_through(tag, whole_lines) {
        return sink.write_all(data);
    }
    let mut cut = Vec::with_capacity(data.len() + tag.len());
    lines.cut(tag, whole_lines, data, &mut cut);
    match cut.is_empty() {
        true => Ok(()),
        false => sink.write_all(&cut),
    }
}

/// Writes the unfinished line `--line-buffer` held back (the job ended).
fn finish_lines(sink: &Sink<'_>, lines: &mut LineState, tag: &[u8]) -> Result<()> {
    let mut rest = Vec::new();
    lines.finish(tag, &mut rest);
    match rest.is_empty() {
        true => Ok(()),
        false => sink.write_all(&rest),
    }
}

impl Drop for Engine<'_> {
    /// The backstop for an error that left the loop early: no job outlives
    /// the run, and none stays a zombie.
    fn drop(&mut self) {
        for seq in &self.live {
            let Some(job) = self.jobs.get(seq) else { continue };
            if let (Some(pid), None) = (job.pid, job.status) {
                let _ = sys::kill_group(sys::Pid::from_raw(pid), libc::SIGKILL);
                let _ = sys::waitpid(pid, false);
            }
        }
        self.kill_held(None);
    }
}

/// The exit status a job that timed out gives the run when it meets a
/// `--halt` condition on its own (`fail=1`, `done=1`), as in GNU parallel.
const TIMED_OUT_STATUS: i32 = 255;

/// Whether `err` is running out of descriptors (this process's or the
/// system's) or of processes (EAGAIN from the `clone` or `fork` that starts
/// a job, `RLIMIT_NPROC`): fewer jobs at once will do.
fn is_out_of_resources(err: &Error) -> bool {
    matches!(err, Error::Os(e) if e.errno == libc::EMFILE || e.errno == libc::ENFILE
        || (e.call == exec::START_CALL && e.errno == libc::EAGAIN))
}

/// The one line printed after a job that timed out or was killed by a
/// signal, e.g. `mproc: job 3 timed out after 2s: sleep 30`.
fn status_line(seq: u64, command: &[Vec<u8>], outcome: Outcome, timeout: Option<Duration>) -> Option<String> {
    let what = match outcome {
        Outcome::TimedOut(_) => format!("timed out after {}", format_duration(timeout.unwrap_or_default())),
        Outcome::Completed(status @ ExitStatus::Signaled { .. }) => status.to_string(),
        Outcome::Completed(ExitStatus::Exited(_)) => return None,
    };
    Some(format!("mproc: job {seq} {what}: {}\n", String::from_utf8_lossy(&shell_line(command))))
}

/// `2s`, `1.5s`, `250ms`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        // Below a millisecond (`--timeout 0.0004`): not "0s".
        return format!("{}s", d.as_secs_f64());
    }
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", (ms as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_short() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_micros(400)), "0.0004s");
    }

    #[test]
    fn status_lines_name_the_job_and_the_cause() {
        let cmd = vec![b"sleep".to_vec(), b"30".to_vec()];
        let timed_out = Outcome::TimedOut(ExitStatus::Signaled { signal: libc::SIGTERM, core_dumped: false });
        assert_eq!(
            status_line(3, &cmd, timed_out, Some(Duration::from_secs(2))).as_deref(),
            Some("mproc: job 3 timed out after 2s: sleep 30\n")
        );
        let segv = Outcome::Completed(ExitStatus::Signaled { signal: libc::SIGSEGV, core_dumped: false });
        assert_eq!(
            status_line(1, &cmd, segv, None).as_deref(),
            Some("mproc: job 1 killed by signal 11 (Segmentation fault): sleep 30\n")
        );
        assert_eq!(status_line(1, &cmd, Outcome::Completed(ExitStatus::Exited(1)), None), None);
    }
}
