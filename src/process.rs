//! `Process` and typed `spawn`: Python's `multiprocessing.Process`, on `fork`.
//!
//! A [`Process`] goes through three states, checked at run time and reported
//! as [`Error::InvalidState`] rather than asserted:
//!
//! ```text
//!   NotStarted --start()--> Running --join()/is_alive()/...--> Exited
//!      fork()                 waitpid() reaps the zombie, once
//! ```
//!
//! In the child, the target runs, stdout is flushed (stderr has no buffer), and the
//! process ends with `_exit`: the parent's destructors and `atexit` handlers
//! belong to the parent and never run twice.
//!
//! # Exit codes (Python's convention)
//! | the target...                         | `exitcode()` |
//! |---------------------------------------|--------------|
//! | returns                               | `0`          |
//! | calls `std::process::exit(n)`         | `n`          |
//! | panics (message printed on stderr)    | `1`          |
//! | is killed by signal `s`               | `-s`         |
//!
//! # Dropping a running process
//! Like Python at interpreter exit: dropping a started, unjoined `Process`
//! *joins* it (waits for it) unless it is a daemon ([`Process::daemon`]),
//! in which case it is killed with `SIGKILL` and then reaped. Either way no
//! zombie is left behind.
//!
//! # Fork in a multi-threaded program
//! `fork` copies only the calling thread. A lock held by another thread at
//! that instant (a `Mutex` of yours) stays locked forever in the child.
//! glibc's `malloc` and C stdio are made fork-safe by glibc itself, and
//! mproc holds Rust's stdout lock across the fork (see the crate docs), so
//! allocating and printing to stdout in the child are fine on Linux;
//! but a child must not touch any other lock another thread may have held:
//! start processes before you start threads, or make sure no other thread
//! holds such a lock across `start()`.
//! Two threads calling `start()` at the same moment are safe but not tidy:
//! between making its pipes and closing its own copies, one call's pipe ends
//! can be inherited by the other's child, which then delays the first
//! child's end-of-file until the second child exits.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::outcome;
use crate::status::ExitStatus;
use crate::sys::signal::SigMask;
use crate::sys::{self, registry, Forked, ParentOnlyFd};
use crate::wire::Wire;

type Target = Box<dyn FnOnce()>;

enum State {
    NotStarted(Target),
    /// Forked and not yet reaped.
    Running {
        pid: i32,
        /// The process that forked it: a copy of this handle that reached
        /// another process (inside a closure) is not the child's parent.
        owner: i32,
        /// What `join_timeout` and [`Process::sentinel`] poll. Where the
        /// kernel makes pidfds (Linux), one opened on first use (`None`
        /// until then): no descriptor at all for a child nobody polls.
        /// Elsewhere the read end of a pipe made at `start`, whose only
        /// write end the child holds: it hangs up when the child dies.
        sentinel: Option<ParentOnlyFd>,
        /// In the table of live children that the exit handler kills
        /// (`None` if the table was full).
        registered: Option<registry::Entry>,
    },
    /// Reaped: the pid may already belong to someone else; never signal it.
    Exited {
        pid: i32,
        status: ExitStatus,
    },
    /// Only while `start` moves the target out.
    Starting,
}

/// A child process running a closure: Python's `multiprocessing.Process`.
///
/// ```
/// let mut p = mproc::Process::new(|| println!("The square of 5 is {}", 5 * 5));
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Process {
    state: RefCell<State>,
    daemon: bool,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.state.borrow() {
            State::NotStarted(_) | State::Starting => "not started".to_string(),
            State::Running { pid, .. } => format!("running as {pid}"),
            State::Exited { pid, status } => format!("{pid} {status}"),
        };
        f.debug_struct("Process").field("state", &state).field("daemon", &self.daemon).finish()
    }
}

impl Process {
    /// Makes a process that will run `target` once started. Nothing is
    /// forked yet. Values `target` captures are moved into the child at
    /// `start()` and dropped in the parent right after the fork.
    pub fn new<F: FnOnce() + 'static>(target: F) -> Process {
        Process { state: RefCell::new(State::NotStarted(Box::new(target))), daemon: false }
    }

    /// Marks the process as a daemon: dropping it unjoined kills it
    /// (`SIGKILL`) instead of waiting for it. Python's `daemon=True`.
    pub fn daemon(mut self, daemon: bool) -> Process {
        self.daemon = daemon;
        self
    }

    /// Forks the child and runs the target in it.
    ///
    /// Errors: [`Error::InvalidState`] if already started; [`Error::Os`]
    /// naming `fork` or `pipe` if the kernel refuses (e.g. `EAGAIN` under
    /// `RLIMIT_NPROC`).
    pub fn start(&mut self) -> Result<()> {
        let state = self.state.get_mut();
        if !matches!(state, State::NotStarted(_)) {
            return Err(Error::InvalidState("process already started"));
        }
        // Without pidfds, the sentinel is a pipe, made now. Its read end is
        // registered so every later fork closes it in the child: siblings
        // must not hold each other's sentinels.
        let (sentinel, sentinel_w) = if sys::have_pidfd() {
            (None, None)
        } else {
            let (r, w) = sys::pipe()?;
            (Some(ParentOnlyFd::new(r)), Some(w))
        };
        // Between `fork` and registering the child, neither a Ctrl-C on
        // this thread nor one on another (ChildStart makes the exit handler
        // wait for the registration) may miss the new child.
        let mask = SigMask::block(&[libc::SIGINT, libc::SIGTERM])?;
        let starting = registry::ChildStart::begin();
        let owner = starting.owner();
        let State::NotStarted(target) = std::mem::replace(state, State::Starting) else {
            unreachable!("checked above")
        };
        // SAFETY: the child only runs `target` and then `_exit`s (run_child
        // never returns); the multi-threaded caveats are the caller's, as
        // documented on this module.
        match unsafe { sys::fork() } {
            Err(e) => {
                drop(starting);
                mask.restore();
                *state = State::NotStarted(target);
                Err(e)
            }
            Ok(Forked::Child) => {
                // Child: `fork` already closed a sentinel pipe's read end
                // (parent-only); its write end stays open until this process
                // dies, which is what the parent polls for. Never drop the
                // parent's objects.
                std::mem::forget(starting);
                mask.restore();
                std::mem::forget(sentinel);
                std::mem::forget(sentinel_w);
                run_child(target)
            }
            Ok(Forked::Parent(pid)) => {
                let registered = starting.register(pid);
                mask.restore();
                // Parent: drop our write end so the child holds the only one;
                // drop the target, and with it the parent's copies of
                // everything the closure captured.
                drop(sentinel_w);
                drop(target);
                *state = State::Running { pid, owner, sentinel, registered };
                Ok(())
            }
        }
    }

    /// Whether the child has ended, without reaping it (already reaped
    /// counts: `is_alive` may have done it).
    fn has_ended(&self) -> Result<bool> {
        match &*self.state.borrow() {
            State::Exited { .. } => Ok(true),
            State::Running { pid, .. } => sys::wait_ended(*pid, true),
            _ => Err(Error::InvalidState("process was never started")),
        }
    }

    /// Waits until `fd` is readable or hung up, or the child's pidfd says
    /// it ended (Linux; the sentinel must be open).
    fn wait_readable_or_ended(&self, fd: BorrowedFd<'_>) -> Result<()> {
        let state = self.state.borrow();
        let State::Running { sentinel: Some(sentinel), .. } = &*state else { return Ok(()) };
        sys::poll(&[(fd, true, false), (sentinel.as_fd(), true, false)], None)?;
        Ok(())
    }

    /// The child's pid; `None` before `start()`.
    pub fn pid(&self) -> Option<i32> {
        match &*self.state.borrow() {
            State::Running { pid, .. } | State::Exited { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Whether the child is still running (a non-blocking `waitpid`; reaps
    /// it if it has ended). False before `start()`.
    pub fn is_alive(&self) -> bool {
        matches!(self.poll_exit(), Ok(None)) && matches!(&*self.state.borrow(), State::Running { .. })
    }

    /// Waits for the child to end and returns its exit code (see the table
    /// in the module docs). Joining an already joined process returns the
    /// same code again. [`Error::InvalidState`] in a process other than
    /// the one that started the child (a copy of the handle there).
    pub fn join(&self) -> Result<i32> {
        let pid = match &*self.state.borrow() {
            State::Exited { status, .. } => return Ok(status.exitcode()),
            State::Running { pid, .. } => *pid,
            _ => return Err(Error::InvalidState("process was never started")),
        };
        let status = self.reap(pid, false)?.ok_or(Error::InvalidState("waitpid returned no status"))?;
        Ok(status.exitcode())
    }

    /// Waits at most `timeout`; `Ok(None)` if the child is still running
    /// then. The wait is a `poll` on the child's sentinel pipe, not a loop.
    /// A timeout too large to represent (`Duration::MAX`) means no limit.
    pub fn join_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        // None: no limit.
        let deadline = sys::deadline_after(timeout);
        // After the sentinel hangs up, poll() would return at once forever:
        // from then on, nap (growing, capped) between non-blocking waits.
        let mut nap: Option<Duration> = None;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(Some(status.exitcode()));
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return Ok(None),
                    left => Some(left),
                },
            };
            if let Some(d) = nap {
                // Usually the child is a zombie within microseconds of
                // closing its last descriptor; a child that exec'd (the
                // sentinel is close-on-exec) or closed its inherited fds
                // may live on, and this keeps that wait cheap.
                std::thread::sleep(left.map_or(d, |left| d.min(left)));
                nap = Some((d * 2).min(Duration::from_millis(50)));
                continue;
            }
            let hung_up = {
                let state = self.state.borrow();
                let State::Running { sentinel: Some(sentinel), .. } = &*state else {
                    drop(state);
                    // The pidfd, opened now (or an error for a process never started).
                    self.open_sentinel()?;
                    continue;
                };
                let ready = sys::poll(&[(sentinel.as_fd(), true, false)], left)?;
                ready[0].hangup || ready[0].readable
            };
            if hung_up {
                nap = Some(Duration::from_micros(100));
            }
        }
    }

    /// The exit code, once the child has been reaped; `None` while running
    /// or before `start()`. Does not wait, but does reap a finished child.
    pub fn exitcode(&self) -> Option<i32> {
        self.exit_status().map(|s| s.exitcode())
    }

    /// The full decoded status (exit code, or signal and core dump), once
    /// the child has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.poll_exit().ok().flatten()
    }

    /// A descriptor for callers who `poll` many processes at once: it
    /// becomes readable when the child dies; confirm with
    /// [`Process::is_alive`]. On Linux a pidfd, opened on the first call
    /// (and closed when the child is reaped); elsewhere the read end of the
    /// child's sentinel pipe, which also reads end of file when the child
    /// `exec`s (the write end is close-on-exec) or closes the descriptors
    /// it inherited. `None` unless running (or if no descriptor is left
    /// to open one).
    pub fn sentinel(&self) -> Option<RawFd> {
        self.open_sentinel().ok()
    }

    /// The sentinel's descriptor, opening the pidfd if it is not open yet.
    fn open_sentinel(&self) -> Result<RawFd> {
        let mut state = self.state.borrow_mut();
        let State::Running { pid, owner, sentinel, .. } = &mut *state else {
            return Err(Error::InvalidState("process is not running"));
        };
        if let Some(fd) = sentinel {
            return Ok(fd.as_raw_fd());
        }
        if *owner != sys::getpid() {
            // A copy of the handle in another process: not its child.
            return Err(Error::InvalidState("process belongs to another process"));
        }
        let fd = ParentOnlyFd::new(sys::pidfd_open(*pid)?);
        Ok(sentinel.insert(fd).as_raw_fd())
    }

    /// Sends `SIGTERM`. A no-op once the child has been reaped.
    /// [`Error::InvalidState`] in any process but the one that started it
    /// (a copy of the handle inherited by another child): there, the pid
    /// may have been reaped and given to someone else's process.
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends `SIGKILL`. A no-op once the child has been reaped; refused in
    /// another process, as [`terminate`](Process::terminate) is.
    pub fn kill(&self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// `Err(InvalidState)` in any process but the one that started the
    /// child (a copy of the handle that reached another child).
    fn check_owner(&self) -> Result<()> {
        match &*self.state.borrow() {
            State::Running { owner, .. } if *owner != sys::getpid() => {
                Err(Error::InvalidState("process belongs to another process"))
            }
            _ => Ok(()),
        }
    }

    fn signal(&self, signal: i32) -> Result<()> {
        self.check_owner()?;
        match &*self.state.borrow() {
            // Running means not yet reaped, so the pid is still ours (at
            // worst a zombie): it cannot have been recycled.
            State::Running { pid, .. } => sys::kill(sys::Pid::from_raw(*pid), signal),
            State::Exited { .. } => Ok(()),
            _ => Err(Error::InvalidState("process was never started")),
        }
    }

    /// Reaps the child if it has ended; `Ok(None)` if running.
    fn poll_exit(&self) -> Result<Option<ExitStatus>> {
        let pid = match &*self.state.borrow() {
            State::Exited { status, .. } => return Ok(Some(*status)),
            State::Running { pid, .. } => *pid,
            _ => return Err(Error::InvalidState("process was never started")),
        };
        self.reap(pid, true)
    }

    /// Reaps the running child `pid` once it has ended (waiting for that
    /// unless `nohang`): first seen ended without reaping (so the pid
    /// stays ours), then taken out of the exit handler's table, then
    /// reaped. In the other order a handler on another thread could `kill`
    /// a reaped pid that already names someone else's process.
    fn reap(&self, pid: i32, nohang: bool) -> Result<Option<ExitStatus>> {
        // Elsewhere `pid` is not our child; it may even be one of ours by
        // now, with the same number.
        self.check_owner()?;
        if !sys::wait_ended(pid, nohang)? {
            return Ok(None);
        }
        if let State::Running { registered: Some(entry), .. } = &*self.state.borrow() {
            registry::forget_child(*entry);
        }
        let status = sys::waitpid(pid, false)?.ok_or(Error::InvalidState("waitpid returned no status"))?;
        // Dropping the Running state closes the sentinel.
        *self.state.borrow_mut() = State::Exited { pid, status };
        Ok(Some(status))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let State::Running { pid, owner, .. } = self.state.get_mut() {
            if *owner != sys::getpid() {
                // A copy that reached another child (moved into its
                // closure): the process is its parent's to wait for, not
                // ours to kill.
                return;
            }
            let pid = *pid;
            if self.daemon {
                let _ = sys::kill(sys::Pid::from_raw(pid), libc::SIGKILL);
            }
            // Reap, so no zombie outlives the handle. Errors have nowhere to
            // go from a destructor; ECHILD would mean someone else reaped it.
            let _ = self.reap(pid, false);
        }
    }
}

/// Runs a target in a freshly forked child and ends the process.
pub(crate) fn run_child(target: impl FnOnce()) -> ! {
    let code = match panic::catch_unwind(AssertUnwindSafe(target)) {
        Ok(()) => 0,
        // The panic hook has already printed the message on stderr. The
        // payload is not dropped: `_exit` follows, and its drop glue is one
        // more page of code for every child to fault in.
        Err(payload) => {
            std::mem::forget(payload);
            1
        }
    };
    sys::flush_stdio();
    sys::exit_now(code)
}

/// A child started by [`spawn`], whose return value comes back through a
/// pipe. Dropping it unjoined closes the pipe, then waits for the child.
#[derive(Debug)]
pub struct JoinHandle<T> {
    // Declared before `process` so it is closed first on drop: a child
    // blocked writing a large result then gets EPIPE instead of blocking
    // the parent's wait forever.
    result: ParentOnlyFd,
    process: Process,
    /// Known from the moment the handle exists (it is made after `start`).
    pid: i32,
    _value: PhantomData<fn() -> T>,
}

/// Runs `f` in a forked child and returns a handle to its typed result.
///
/// The result is encoded with [`Wire`] and sent back through a pipe; it
/// may be of any size (the parent reads while the child writes).
///
/// ```
/// let child = mproc::spawn(|| (1..=10u64).map(|n| n * n).sum::<u64>())?;
/// assert_eq!(child.join()?, 385);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn spawn<T, F>(f: F) -> Result<JoinHandle<T>>
where
    T: Wire,
    F: FnOnce() -> T + 'static,
{
    let (result_r, result_w) = sys::pipe()?;
    // Parent-only: `fork` closes it in the child, and in every later child.
    let result_r = ParentOnlyFd::new(result_r);
    let mut process = Process::new(move || {
        // The child's one message on the result pipe (see `outcome`).
        let mut msg = Vec::new();
        let panicked = outcome::run(f, &mut msg);
        // If the parent is gone (or dropped the handle) there is no one to
        // tell; that is EPIPE here, not a death by SIGPIPE.
        let _ = sys::bell::write_all_without_sigpipe(result_w.as_fd(), &msg);
        if let Some(payload) = panicked {
            // Exit code 1, as for any panicking target.
            panic::resume_unwind(payload);
        }
    });
    process.start()?;
    let pid = process.pid().ok_or(Error::InvalidState("a started child has no pid"))?;
    Ok(JoinHandle { result: result_r, process, pid, _value: PhantomData })
}

impl<T: Wire> JoinHandle<T> {
    /// Reads the child's message: to end of file, or, once the child has
    /// ended, to what the pipe holds then (all it wrote). End of file alone
    /// can come late: a child that another thread forked while this one
    /// was being made (by any `fork`, mproc's or not) holds a copy of the
    /// write end until it ends itself.
    fn read_message(&self, out: &mut Vec<u8>) -> Result<()> {
        // In another process the descriptor's number was closed by `fork`
        // and may name one of that process's own files by now.
        self.process.check_owner()?;
        let fd = self.result.as_fd();
        sys::set_nonblocking(fd, true)?;
        let mut nap = Duration::from_millis(1);
        loop {
            if sys::read_available(fd, out)? {
                return Ok(());
            }
            if self.process.has_ended()? {
                sys::read_available(fd, out)?;
                return Ok(());
            }
            // Data, or the child's end (a pidfd); without pidfds, a nap
            // (the sentinel pipe may be held by such a child too).
            if sys::have_pidfd() && self.process.open_sentinel().is_ok() {
                self.process.wait_readable_or_ended(fd)?;
            } else {
                sys::poll(&[(fd, true, false)], Some(nap))?;
                nap = (nap * 2).min(Duration::from_millis(50));
            }
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the child is still running.
    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }

    /// Sends `SIGTERM` to the child; refused in another process, as
    /// [`Process::terminate`] is.
    pub fn terminate(&self) -> Result<()> {
        self.process.terminate()
    }

    /// Sends `SIGKILL` to the child; refused in another process, as
    /// [`Process::kill`] is.
    pub fn kill(&self) -> Result<()> {
        self.process.kill()
    }

    /// Waits for the child and returns its value.
    ///
    /// Errors: [`Error::Panicked`] with the panic's message;
    /// [`Error::ChildDied`] if it ended without sending a value (killed,
    /// or `exit()` called); [`Error::Decode`] if the bytes were malformed.
    pub fn join(self) -> Result<T> {
        let mut bytes = Vec::new();
        // Read before waiting: a child writing more than a pipe holds
        // would otherwise block forever while we block in waitpid.
        let read = self.read_message(&mut bytes);
        self.process.join()?;
        read?;
        let pid = self.pid();
        let status = self.process.exit_status().ok_or(Error::InvalidState("child not reaped"))?;
        let died =
            || Error::ChildDied { pid, exitcode: status.exitcode(), core_dumped: status.core_dumped() };
        if bytes.is_empty() {
            return Err(died());
        }
        match outcome::decode::<T>(&bytes) {
            Ok(value) => Ok(value),
            Err(e @ Error::Panicked { .. }) => Err(e),
            // Cut short by a death: report the death, not the bytes.
            Err(_) if !status.success() => Err(died()),
            Err(e) => Err(e),
        }
    }
}
