//! The zygote: a small single-threaded process, forked once with the pool,
//! that forks every worker (the first ones and every replacement), reaps
//! them, and reports to the parent.
//!
//! Why: `fork` in a multi-threaded program copies only the calling thread,
//! and a lock another thread held stays locked in the child. The user's
//! program may start threads after making a pool; replacement workers are
//! forked from the zygote, which never has more than one thread, so they
//! are always safe to make (Python's forkserver solves the same problem).
//!
//! Protocol, over two pipes made before the zygote was forked:
//! requests (parent -> zygote) and reports (zygote -> parent) are fixed-size
//! little-endian records, each written with one `write` (< PIPE_BUF, so
//! never split). A report carries the zygote's `CLOCK_MONOTONIC` when it
//! was made, for the timeline; deaths are reported while the pool shuts
//! down too (the parent reads them while it waits for the zygote).
//!
//! Task timeouts are the zygote's job too: it is always awake to run a
//! timer, whether or not the parent is inside a pool call, and it maps the
//! slots' progress words (see `shared`), so it sees which task each worker
//! runs and since when. A task past its time gets its worker's process
//! group `SIGTERM`, then `SIGKILL` after [`TERM_GRACE`] (even if the worker
//! itself is already gone: what the task started may not be), and the
//! worker's death is reported as timed out. A worker that dies within the
//! grace period is reported at once but reaped only after that SIGKILL:
//! until then its pid, and so its group id, cannot be given to another
//! process that the SIGKILL would reach.
//!
//! Parent death: the request pipe reaches EOF; the zygote kills every worker
//! and exits. The pipe's write end can outlive the parent in a process the
//! user forked later (it inherits every descriptor), so on Linux the zygote
//! also asks for `PR_SET_PDEATHSIG` — as `SIGCHLD`, which it already turns
//! into a wake-up — and checks `getppid()` whenever it wakes: a changed
//! parent means the parent is gone. (The death signal follows the *thread*
//! that forked the zygote; if only that thread ended, the parent pid is
//! unchanged and the pool lives on.) Zygote death: each worker has
//! `PR_SET_PDEATHSIG(SIGKILL)` on Linux and sees its doorbell's EOF
//! elsewhere.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::shared::Layout;
use crate::error::{Error, OsError, Result};
use crate::status::ExitStatus;
use crate::sys::registry::{self, Entry};
use crate::sys::{self, Forked, ParentOnlyFd, Pid};
use crate::wire::Wire;

const REQ_SPAWN: u32 = 1;
const REQ_SHUTDOWN: u32 = 2;
const REQ_KILL_ALL: u32 = 3;
const REQ_KILL_WORKER: u32 = 4;
const REQ_LEN: usize = 8;

const REP_SPAWNED: u32 = 1;
const REP_SPAWN_FAILED: u32 = 2;
const REP_DIED: u32 = 3;
const REP_TIMED_OUT: u32 = 4;
/// A report record: the report, then the zygote's `CLOCK_MONOTONIC` when it
/// made it (for the timeline: when the worker was forked or reaped).
const REP_BODY_LEN: usize = 20;
const REP_LEN: usize = REP_BODY_LEN + 8;
const _: () = assert!(<(u32, u32, i32, i32, i32)>::MIN_ENCODED_LEN == REP_BODY_LEN);

/// A request record: `(kind, slot)` as little-endian words. Built on the
/// stack, so the exit-signal handler can make one too.
fn request_record(kind: u32, slot: usize) -> [u8; REQ_LEN] {
    let mut rec = [0u8; REQ_LEN];
    rec[0..4].copy_from_slice(&kind.to_le_bytes());
    rec[4..8].copy_from_slice(&(slot as u32).to_le_bytes());
    rec
}

/// The `(kind, slot)` of a request record.
fn parse_request(rec: &[u8; REQ_LEN]) -> (u32, usize) {
    let (kind, slot) = rec.split_at(4);
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    (word(kind), word(slot) as usize)
}

/// The signals whose disposition the zygote changes after its
/// `reset_for_child` (SIGCHLD's self-pipe handler; SIGINT, SIGQUIT and
/// SIGTERM ignored), besides SIGPIPE: what a worker must set back to
/// default.
const ZYGOTE_SIGNALS: [i32; 4] = [libc::SIGCHLD, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM];

/// After SIGTERM, how long a timed-out worker's process group gets before
/// SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_millis(200);

/// How long ending a pool waits for its zygote, told to kill its workers
/// (or found gone), before it sends the zygote `SIGKILL`: a zygote stopped
/// with `SIGSTOP` must not block `drop` forever. Its workers die with it
/// (Linux: their parent-death signal; elsewhere: their bells' end of file,
/// once idle).
pub(crate) const ZYGOTE_EXIT_LIMIT: Duration = Duration::from_secs(1);

/// How long `join` waits for the zygote, once every worker was told to exit
/// and has nothing left to do, before it kills it (a stopped zygote or
/// worker must not block `join` forever) and reports it as
/// `Error::ZygoteDied`.
pub(crate) const ZYGOTE_JOIN_LIMIT: Duration = Duration::from_secs(10);

/// What the zygote tells the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// A worker for `slot` is running as `pid`.
    Spawned { slot: usize, pid: i32 },
    /// `fork` failed for `slot` with `errno`.
    SpawnFailed { slot: usize, errno: i32 },
    /// Worker `pid` of `slot` ended; `timed_out`: we ended it because its
    /// task ran past the pool's task timeout.
    Died { slot: usize, pid: i32, status: ExitStatus, timed_out: bool },
}

impl Report {
    /// The record, written over `rec`: `(kind, slot, a, b, c)` as
    /// little-endian words, the [`Wire`] encoding of that tuple
    /// ([`REP_BODY_LEN`] bytes), then the time stamp `at_ns`. Into a buffer
    /// the zygote reuses: every heap page it writes after forking a worker
    /// is a copy-on-write fault.
    fn encode_into(&self, at_ns: u64, rec: &mut Vec<u8>) {
        let (kind, slot, a, b, c) = match *self {
            Report::Spawned { slot, pid } => (REP_SPAWNED, slot, pid, 0, 0),
            Report::SpawnFailed { slot, errno } => (REP_SPAWN_FAILED, slot, 0, errno, 0),
            Report::Died { slot, pid, status, timed_out } => {
                let kind = if timed_out { REP_TIMED_OUT } else { REP_DIED };
                match status {
                    ExitStatus::Exited(code) => (kind, slot, pid, code, -1),
                    ExitStatus::Signaled { signal, core_dumped } => {
                        (kind, slot, pid, signal, core_dumped as i32)
                    }
                }
            }
        };
        rec.clear();
        (kind, slot as u32, a, b, c).encode(rec);
        rec.extend_from_slice(&at_ns.to_le_bytes());
    }

    /// A record's report and its time stamp.
    fn decode(rec: &[u8]) -> Option<(Report, u64)> {
        let (body, stamp) = rec.split_at_checked(REP_BODY_LEN)?;
        let at_ns = u64::from_le_bytes(stamp.try_into().ok()?);
        let (kind, slot, a, b, c) = <(u32, u32, i32, i32, i32)>::from_bytes(body).ok()?;
        let slot = slot as usize;
        let status = if c < 0 {
            ExitStatus::Exited(b)
        } else {
            ExitStatus::Signaled { signal: b, core_dumped: c != 0 }
        };
        let report = match kind {
            REP_SPAWNED => Report::Spawned { slot, pid: a },
            REP_SPAWN_FAILED => Report::SpawnFailed { slot, errno: b },
            REP_DIED => Report::Died { slot, pid: a, status, timed_out: false },
            REP_TIMED_OUT => Report::Died { slot, pid: a, status, timed_out: true },
            _ => return None,
        };
        Some((report, at_ns))
    }
}

/// Kills every pool's workers and reaps every zygote: what the exit-signal
/// handler does for pools. Async-signal-safe (see
/// [`registry::order_pools_and_reap`]).
pub(crate) fn kill_all_pools() {
    registry::order_pools_and_reap(&request_record(REQ_KILL_ALL, 0));
}

/// The parent's handle on the zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    pid: i32,
    requests: Option<ParentOnlyFd>,
    reports: ParentOnlyFd,
    partial: Vec<u8>,
    reaped: bool,
    registered: Option<Entry>,
    /// The process that forked the zygote: the only one that may talk to it
    /// or reap it (a forked child's copy of the handle does nothing).
    owner: i32,
}

/// Everything the zygote keeps (its ends of the pipes, and what it needs to
/// start a worker). Built in the parent before the fork.
pub(crate) struct ZygoteSide<W: FnMut(usize)> {
    /// Read end of the request pipe.
    pub requests: OwnedFd,
    /// Write end of the report pipe.
    pub reports: OwnedFd,
    /// Runs a worker of the given slot in a freshly forked child; never
    /// returns (it ends with `_exit`).
    pub run_worker: W,
    /// The pool's shared memory: the workers' progress words and stamps.
    pub layout: Layout,
    /// The pool's limit on one task's run time.
    pub task_timeout: Option<Duration>,
    /// The parent's own descriptors (its bell's read end, the workers'
    /// bells' write ends), closed in the zygote right after the fork. They
    /// are parent-only too, but that table is best effort (a full table
    /// leaves a descriptor inherited), and a zygote holding them would keep
    /// its workers from seeing the parent's death on systems without
    /// `PR_SET_PDEATHSIG`.
    pub parent_fds: Vec<std::os::fd::RawFd>,
}

impl Zygote {
    /// Forks the zygote. `zygote_side` runs in the child. The parent's
    /// descriptors the zygote must not hold (so that their peers see EOF
    /// when the parent dies) are `ParentOnlyFd`s, which `fork` closes.
    pub(crate) fn start<W: FnMut(usize)>(
        requests_w: ParentOnlyFd,
        reports_r: ParentOnlyFd,
        zygote_side: ZygoteSide<W>,
    ) -> Result<Zygote> {
        let parent = sys::getpid();
        // SAFETY: the child runs only `zygote_main`, which ends in `_exit`.
        match unsafe { sys::fork() }? {
            Forked::Child => {
                // `fork` closed the parent-only descriptors here (those the
                // table held); close the parent's ends by name as well. No
                // other descriptor can have been opened in between, so no
                // number here names anything else. Their owners are the
                // parent's objects: never drop them.
                for fd in [requests_w.as_raw_fd(), reports_r.as_raw_fd()]
                    .into_iter()
                    .chain(zygote_side.parent_fds.iter().copied())
                {
                    sys::close_inherited(fd);
                }
                std::mem::forget((requests_w, reports_r));
                // SAFETY: a fresh child that serves this pool only and ends
                // in `_exit` (`zygote_main`), before it maps anything.
                unsafe { zygote_side.layout.unmap_other_pools() };
                zygote_main(zygote_side, parent)
            }
            Forked::Parent(pid) => {
                crate::timeline::role(pid, crate::timeline::Role::Zygote, b"");
                drop(zygote_side);
                let registered = registry::register_pool(pid, requests_w.as_raw_fd());
                let zygote = Zygote {
                    pid,
                    requests: Some(requests_w),
                    reports: reports_r,
                    partial: Vec::new(),
                    reaped: false,
                    registered,
                    owner: sys::current_pid(),
                };
                sys::set_nonblocking(zygote.reports.as_fd(), true)?;
                Ok(zygote)
            }
        }
    }

    /// The zygote's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The report pipe, for the parent's `poll`.
    pub(crate) fn report_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.reports.as_fd()
    }

    fn request(&self, kind: u32, slot: usize) -> Result<()> {
        let Some(fd) = &self.requests else { return Err(Error::Closed) };
        let rec = request_record(kind, slot);
        // One write: a record is far below PIPE_BUF, so it is never split.
        // Without SIGPIPE: a zygote killed from outside must be an error
        // here, not the death of a program that restored SIGPIPE's default.
        sys::bell::write_without_sigpipe(fd.as_fd(), &rec).map(drop)
    }

    /// Asks the zygote to kill the worker of `slot` (and its process group)
    /// if it still runs: its death comes back as a report.
    pub(crate) fn kill_worker(&self, slot: usize) -> Result<()> {
        self.request(REQ_KILL_WORKER, slot)
    }

    /// Asks for a worker in `slot`; the answer comes as a report.
    pub(crate) fn spawn(&self, slot: usize) -> Result<()> {
        self.request(REQ_SPAWN, slot)
    }

    /// Reads every complete report available now. `Ok(false)`: the zygote
    /// has gone (EOF).
    pub(crate) fn read_reports(&mut self, out: &mut Vec<Report>) -> Result<bool> {
        let mut buf = [0u8; 64 * REP_LEN];
        let mut alive = true;
        loop {
            match sys::read(self.reports.as_fd(), &mut buf) {
                Ok(0) => {
                    alive = false;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(Error::Os(e)) if e.errno == libc::EAGAIN => break,
                Err(e) => return Err(e),
            }
        }
        let whole = self.partial.len() / REP_LEN * REP_LEN;
        for (report, at_ns) in self.partial[..whole].chunks_exact(REP_LEN).filter_map(Report::decode) {
            to_timeline(self.pid, report, at_ns);
            out.push(report);
        }
        self.partial.drain(..whole);
        Ok(alive)
    }

    /// Ends the zygote and waits for it. `kill`: workers get `SIGKILL` now,
    /// and a zygote that has not exited [`ZYGOTE_EXIT_LIMIT`] later gets
    /// `SIGKILL` too; otherwise the zygote waits for its workers to exit on
    /// their own (they have been told to). Idempotent; does nothing in a
    /// process other than the owner.
    pub(crate) fn shutdown(&mut self, kill: bool) -> Result<()> {
        match self.begin_shutdown(kill) {
            Some(exit) => exit.wait(self.reports.as_fd(), &AtomicBool::new(false)),
            None => Ok(()),
        }
    }

    /// Orders the zygote's end (as [`Zygote::shutdown`]) and hands over the
    /// wait for it: the pool waits with its lock released, so that other
    /// threads' calls do not hang on a zygote slow to go (stopped, say).
    /// `None` if it was already ended, or this is not its parent.
    pub(crate) fn begin_shutdown(&mut self, kill: bool) -> Option<ZygoteExit> {
        if self.reaped || sys::current_pid() != self.owner {
            return None;
        }
        self.unregister();
        let sent = self.request(if kill { REQ_KILL_ALL } else { REQ_SHUTDOWN }, 0);
        if kill {
            // Closing the request pipe is the fallback order: EOF means
            // kill all. After a polite order it stays open, for
            // [`Zygote::kill_all`].
            self.requests = None;
        }
        // Whoever holds the `ZygoteExit` reaps it.
        self.reaped = true;
        Some(ZygoteExit { pid: self.pid, kill, sent })
    }

    /// Turns a polite end already ordered into a kill: every worker gets
    /// `SIGKILL` from the zygote (which reaps them, so their pids are
    /// still theirs), and the zygote exits.
    pub(crate) fn kill_all(&mut self) {
        let _ = self.request(REQ_KILL_ALL, 0);
        self.requests = None;
    }

    /// The zygote's report pipe read end of file: it has exited (or is
    /// exiting). Reaps it and returns the error every call of the pool now
    /// gets.
    pub(crate) fn reap_dead(&mut self) -> Result<Error> {
        self.unregister();
        self.requests = None;
        let status = if self.reaped { None } else { self.reap_within(ZYGOTE_EXIT_LIMIT)? };
        self.reaped = true;
        Ok(Error::ZygoteDied { pid: self.pid, exitcode: status.map(|s| s.exitcode()) })
    }

    /// [`reap_within`] this zygote, through its report pipe.
    fn reap_within(&self, limit: Duration) -> Result<Option<ExitStatus>> {
        reap_within(self.pid, self.reports.as_fd(), limit, &AtomicBool::new(false))
    }

    fn unregister(&mut self) {
        if let Some(entry) = self.registered.take() {
            registry::forget_pool(entry);
        }
    }
}

/// A zygote told to end, to be waited for and reaped
/// ([`Zygote::begin_shutdown`]).
#[derive(Debug)]
#[must_use = "the zygote must be reaped"]
pub(crate) struct ZygoteExit {
    pid: i32,
    kill: bool,
    /// Whether the order reached it.
    sent: Result<()>,
}

impl ZygoteExit {
    /// Waits for the zygote (at most [`ZYGOTE_EXIT_LIMIT`] after a kill
    /// order, [`ZYGOTE_JOIN_LIMIT`] after a polite one; then `SIGKILL`),
    /// reaps it, and says whether a polite end went as it should.
    /// `reports`: the report pipe (any copy of its read end).
    /// `hurry`: set by a `terminate` that came while we wait for a polite
    /// end; from then on the kill's shorter limit applies.
    pub(crate) fn wait(self, reports: std::os::fd::BorrowedFd<'_>, hurry: &AtomicBool) -> Result<()> {
        let limit = if self.kill { ZYGOTE_EXIT_LIMIT } else { ZYGOTE_JOIN_LIMIT };
        let status = reap_within(self.pid, reports, limit, hurry)?;
        if self.kill {
            return Ok(());
        }
        // The polite end: every worker was told to exit, and the zygote
        // exits 0 once it has reaped them all. Anything else is news.
        match status {
            Some(ExitStatus::Exited(0)) => self.sent,
            Some(status) => Err(Error::ZygoteDied { pid: self.pid, exitcode: Some(status.exitcode()) }),
            None => Err(Error::ZygoteDied { pid: self.pid, exitcode: None }),
        }
    }
}

/// Waits at most `limit` for zygote `pid` to exit, then kills it; reaps it
/// either way. (It is our unreaped child, so its pid is still its own.)
/// `Ok(None)`: it was reaped by someone else (`SIGCHLD` ignored makes the
/// kernel reap it), so its status is lost.
fn reap_within(
    pid: i32,
    reports: std::os::fd::BorrowedFd<'_>,
    limit: Duration,
    hurry: &AtomicBool,
) -> Result<Option<ExitStatus>> {
    let waited = match wait_exit(pid, reports, sys::deadline_after(limit), hurry) {
        Ok(Some(status)) => return Ok(Some(status)),
        Ok(None) => {
            sys::kill(Pid::from_raw(pid), libc::SIGKILL)?;
            sys::waitpid(pid, false)
        }
        Err(e) => Err(e),
    };
    match waited {
        Err(Error::Os(e)) if e.errno == libc::ECHILD => Ok(None),
        other => other,
    }
}

/// Waits until `deadline` (`None`: no limit) for zygote `pid` to exit and
/// reaps it; `Ok(None)` if it still runs then. Its exit closes the report
/// pipe's only write end, so the wait is a `poll` for that end of file,
/// not a timer; a look every 10 ms covers a copy of the write end that
/// leaked into some other child.
fn wait_exit(
    pid: i32,
    reports: std::os::fd::BorrowedFd<'_>,
    mut deadline: Option<Instant>,
    hurry: &AtomicBool,
) -> Result<Option<ExitStatus>> {
    const REAP_LOOK: Duration = Duration::from_millis(10);
    // Where the kernel makes pidfds, the zygote's wakes us once, when it
    // has exited; the report pipe wakes us for each of its workers' last
    // reports too (a context switch each, while those processes exit).
    let exited = if sys::have_pidfd() { sys::pidfd_open(pid).ok() } else { None };
    let mut hurried = false;
    loop {
        if !hurried && hurry.load(Ordering::SeqCst) {
            hurried = true;
            let soon = Instant::now() + ZYGOTE_EXIT_LIMIT;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        if let Some(status) = sys::waitpid(pid, true)? {
            if crate::timeline::recording() {
                // Its last reports (its workers' deaths) are in the pipe.
                drain_reports(pid, reports)?;
            }
            return Ok(Some(status));
        }
        let left = deadline.map_or(REAP_LOOK, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Ok(None);
        }
        if let Some(exited) = &exited {
            // Readable: it has exited; the next waitpid reaps it.
            sys::poll(&[(exited.as_fd(), true, false)], Some(left.min(REAP_LOOK)))?;
            continue;
        }
        let ready = sys::poll(&[(reports, true, false)], Some(left.min(REAP_LOOK)))?;
        // Reports nobody will read now, or the end of file: the pipe is
        // drained like a doorbell.
        if (ready[0].hangup || ready[0].readable) && !drain_reports(pid, reports)? {
            return sys::waitpid(pid, false);
        }
    }
}

/// Tells the timeline what a report of zygote `zygote` says about its
/// workers (all it sees of them).
fn to_timeline(zygote: i32, report: Report, at_ns: u64) {
    match report {
        Report::Spawned { slot, pid } => crate::timeline::worker_forked(zygote, slot, pid, at_ns),
        Report::Died { pid, status, timed_out, .. } => {
            crate::timeline::worker_ended(pid, status, timed_out, at_ns)
        }
        Report::SpawnFailed { .. } => {}
    }
}

/// Empties the report pipe of an ending zygote like a doorbell; `Ok(false)`
/// at end of file. With a timeline recording, the reports (its workers'
/// deaths) are read first. Each was written with one `write` of
/// [`REP_LEN`] bytes, and a read of a multiple of that takes whole ones.
fn drain_reports(zygote: i32, reports: std::os::fd::BorrowedFd<'_>) -> Result<bool> {
    if !crate::timeline::recording() {
        return sys::bell::drain(reports);
    }
    let mut buf = [0u8; 64 * REP_LEN];
    loop {
        match sys::read(reports, &mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                for (report, at_ns) in buf[..n].chunks_exact(REP_LEN).filter_map(Report::decode) {
                    to_timeline(zygote, report, at_ns);
                }
            }
            Err(Error::Os(e)) if e.errno == libc::EAGAIN => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let _ = self.shutdown(true);
    }
}

/// The zygote's whole life. Never returns: not even by a panic, which
/// would otherwise unwind into the parent's code, in this process.
fn zygote_main<W: FnMut(usize)>(mut side: ZygoteSide<W>, parent: i32) -> ! {
    let code = match panic::catch_unwind(AssertUnwindSafe(|| zygote_loop(&mut side, parent))) {
        Ok(Ok(())) => 0,
        _ => 1,
    };
    sys::exit_now(code)
}

fn zygote_loop<W: FnMut(usize)>(side: &mut ZygoteSide<W>, parent: i32) -> Result<()> {
    // Ctrl-C goes to the whole foreground group, and so does the SIGTERM
    // of `timeout` or a service manager; the zygote leaves the decision to
    // its parent, which will tell it (or die, and close the pipe). Dead of
    // a SIGTERM at once, it would leave its workers to be reaped by init,
    // before the parent's exit handler could order them killed and reaped.
    sys::signal::reset_for_child()?;
    // From here on only ZYGOTE_SIGNALS (and SIGPIPE, see below) change:
    // a worker puts back just those.
    sys::signal::ignore(libc::SIGINT)?;
    sys::signal::ignore(libc::SIGQUIT)?;
    sys::signal::ignore(libc::SIGTERM)?;
    // A report to a parent that is gone fails with EPIPE; we notice the
    // death through the request pipe instead of dying of SIGPIPE. Workers
    // get the parent's disposition back (a CLI may want SIGPIPE's default).
    let parent_ignores_sigpipe = sys::signal::is_ignored(libc::SIGPIPE)?;
    sys::signal::ignore(libc::SIGPIPE)?;
    let (sig_r, sig_w) = sys::pipe_nonblocking()?;
    sys::signal::sigchld_to_pipe(sig_w.as_raw_fd())?;
    // The parent's death wakes us like a child's (see the module docs);
    // if it died before the request took effect, we see it below.
    sys::set_parent_death_signal(libc::SIGCHLD)?;
    let zygote_pid = sys::getpid();

    // Sized once: the loop allocates nothing, so that forking a worker
    // (which write-protects every page) costs no copy of heap pages here.
    let mut live: HashMap<i32, usize> = HashMap::with_capacity(2 * side.layout.slot_count());
    let mut record = Vec::with_capacity(REP_LEN);
    let mut pollfds = [sys::pollfd_in(sig_r.as_fd()), sys::pollfd_in(side.requests.as_fd())];
    let mut timers = Timers::default();
    let mut shutting_down = false;
    // Requests are read until EOF or a kill order, also after a polite
    // shutdown order: the parent may then still ask for the kill
    // (`terminate` while `join` waits).
    let mut listening = true;
    loop {
        if listening && sys::getppid() != parent {
            // Re-parented: the parent died. Same as EOF on the requests,
            // also during a polite end (a copy of the request pipe's write
            // end leaked into another process would hide that EOF).
            shutting_down = true;
            listening = false;
            kill_workers(&live, &mut timers);
        }
        if shutting_down && live.is_empty() {
            // Leave nothing a timed-out task started behind us.
            timers.kill_groups_now();
            return Ok(());
        }
        let wake_at = timers.run(&live, &side.layout, side.task_timeout);
        let watched = if listening { 2 } else { 1 };
        let wait = wake_at.map(|t| t.saturating_duration_since(Instant::now()));
        sys::poll_in_place(&mut pollfds[..watched], wait)?;
        let ready = [sys::ready_of(&pollfds[0]), sys::ready_of(&pollfds[1])];
        if ready[0].readable {
            let mut buf = [0u8; 64];
            while matches!(sys::read(sig_r.as_fd(), &mut buf), Ok(n) if n > 0) {}
            // Each worker by its pid, not `waitpid(-1)`: a timed-out one
            // whose group's SIGKILL is still to come is only looked at,
            // and stays a zombie until then (see `Timers::zombies`).
            let mut failed = None;
            live.retain(|&pid, &mut slot| {
                let hold = timers.kill_pending(pid);
                let ended = if hold { sys::peek_ended(pid) } else { sys::waitpid(pid, true) };
                match ended {
                    Ok(None) => true,
                    Ok(Some(status)) => {
                        if hold {
                            timers.zombies.push(pid);
                        }
                        let timed_out = timers.timed_out.remove(&pid);
                        // While shutting down too: the parent reads these
                        // while it waits for us (the timeline shows them).
                        report(side, &mut record, Report::Died { slot, pid, status, timed_out });
                        false
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                        true
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if listening && (ready[1].readable || ready[1].hangup) {
            let mut rec = [0u8; REQ_LEN];
            let n = read_record(side.requests.as_fd(), &mut rec)?;
            let (kind, slot) = parse_request(&rec);
            match (n, kind) {
                // No new worker once the end was ordered.
                (REQ_LEN, REQ_SPAWN) if shutting_down => {}
                (REQ_LEN, REQ_SPAWN) => {
                    match spawn_worker(side, slot, zygote_pid, parent_ignores_sigpipe, &sig_r, &sig_w) {
                        Ok(pid) => {
                            live.insert(pid, slot);
                            report(side, &mut record, Report::Spawned { slot, pid });
                        }
                        Err(Error::Os(OsError { errno, .. })) => {
                            report(side, &mut record, Report::SpawnFailed { slot, errno })
                        }
                        Err(_) => {
                            report(side, &mut record, Report::SpawnFailed { slot, errno: libc::EINVAL })
                        }
                    }
                }
                (REQ_LEN, REQ_SHUTDOWN) => shutting_down = true,
                (REQ_LEN, REQ_KILL_WORKER) => {
                    // Still unreaped (we reap, and have not): its pid is its own.
                    if let Some((&pid, _)) = live.iter().find(|&(_, &s)| s == slot) {
                        let _ = sys::kill_group(Pid::from_raw(pid), libc::SIGKILL);
                    }
                }
                // REQ_KILL_ALL, or EOF: the parent is gone or wants it over.
                _ => {
                    shutting_down = true;
                    listening = false;
                    kill_workers(&live, &mut timers);
                }
            }
        }
    }
}

/// SIGKILL to every live worker and its process group (what its tasks
/// started), and to the groups of timed-out workers still in their grace
/// period. The live pids are not reaped yet, so they cannot have been
/// reused.
fn kill_workers(live: &HashMap<i32, usize>, timers: &mut Timers) {
    for &pid in live.keys() {
        let _ = sys::kill_group(Pid::from_raw(pid), libc::SIGKILL);
    }
    timers.kill_groups_now();
}

/// The zygote's timers: task timeouts and the SIGKILLs that follow a
/// SIGTERM.
#[derive(Default)]
struct Timers {
    /// Workers we sent SIGTERM because their task ran too long.
    timed_out: HashSet<i32>,
    /// Process groups (named by their leader, the worker) that get SIGKILL
    /// at the given instant: the end of the grace period.
    group_kills: Vec<(i32, Instant)>,
    /// Leaders of those groups that ended before the SIGKILL: not reaped
    /// until it is sent. A zombie keeps its pid, and with it the group id:
    /// reaped, an emptied group's id could go to a new process leading a
    /// group of its own (a shell's job), which the SIGKILL would then hit.
    zombies: Vec<i32>,
}

impl Timers {
    /// Ends the tasks past `limit`, escalates what is due, and returns when
    /// to look again.
    fn run(
        &mut self,
        live: &HashMap<i32, usize>,
        layout: &Layout,
        limit: Option<Duration>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let zombies = &mut self.zombies;
        self.group_kills.retain(|&(pgid, at)| {
            if now < at {
                return true;
            }
            kill_group_then_reap(zombies, pgid);
            false
        });
        let mut wake_at = self.group_kills.iter().map(|&(_, at)| at).min();
        let Some(limit) = limit else { return wake_at };
        // Saturate: the builder turns a limit past u64 nanoseconds into none.
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let now_ns = sys::monotonic_ns();
        for (&pid, &slot) in live {
            if self.timed_out.contains(&pid) {
                continue;
            }
            // Acquire, then Relaxed: pairs with the worker's stamp store then
            // Release progress store, so the stamp is at least that task's.
            let progress = layout.progress(slot).load(Ordering::Acquire);
            let running = progress % 2 == 1;
            // Not running now: a task that starts from now on ends its time
            // no sooner than `limit` from now; look again then.
            let started = if running { layout.task_started_ns(slot).load(Ordering::Relaxed) } else { now_ns };
            let ran = now_ns.saturating_sub(started);
            // The same task still runs (it did not end just now, letting the
            // next one be killed in its place).
            let same = || layout.progress(slot).load(Ordering::Acquire) == progress;
            if ran >= limit_ns && same() {
                let _ = sys::kill_group(Pid::from_raw(pid), libc::SIGTERM);
                self.timed_out.insert(pid);
                self.group_kills.push((pid, now + TERM_GRACE));
                wake_at = Some(wake_at.map_or(now + TERM_GRACE, |w| w.min(now + TERM_GRACE)));
            } else {
                // An instant past what the clock can say: nothing to check.
                if let Some(check) = now.checked_add(Duration::from_nanos(limit_ns.saturating_sub(ran))) {
                    wake_at = Some(wake_at.map_or(check, |w| w.min(check)));
                }
            }
        }
        wake_at
    }

    /// SIGKILL now to every group still in its grace period.
    fn kill_groups_now(&mut self) {
        for (pgid, _) in self.group_kills.drain(..) {
            kill_group_then_reap(&mut self.zombies, pgid);
        }
    }

    /// Whether worker `pid`'s group has its SIGKILL still to come.
    fn kill_pending(&self, pid: i32) -> bool {
        self.group_kills.iter().any(|&(pgid, _)| pgid == pid)
    }
}

/// SIGKILL to the group led by `leader`, which is live or one of
/// `zombies` (unreaped either way, so the id is still its group's); then
/// reaps it if it is a zombie.
fn kill_group_then_reap(zombies: &mut Vec<i32>, leader: i32) {
    let _ = sys::kill_group(Pid::from_raw(leader), libc::SIGKILL);
    if let Some(i) = zombies.iter().position(|&z| z == leader) {
        zombies.swap_remove(i);
        let _ = sys::reap_peeked(leader);
    }
}

/// Reads one whole request record; returns how many bytes (0 at EOF).
fn read_record(fd: std::os::fd::BorrowedFd<'_>, rec: &mut [u8; REQ_LEN]) -> Result<usize> {
    let mut got = 0;
    while got < REQ_LEN {
        match sys::read(fd, &mut rec[got..])? {
            0 => return Ok(got),
            n => got += n,
        }
    }
    Ok(got)
}

fn report<W: FnMut(usize)>(side: &ZygoteSide<W>, record: &mut Vec<u8>, rep: Report) {
    rep.encode_into(sys::monotonic_ns(), record);
    // A parent that is gone cannot be told; the request pipe's EOF will end us.
    let _ = sys::write_all(side.reports.as_fd(), record);
    // After the write: a parent that sees the word set finds the report in
    // the pipe. SeqCst: a plain flag between two processes, set rarely.
    side.layout.reports_pending().store(1, Ordering::SeqCst);
}

fn spawn_worker<W: FnMut(usize)>(
    side: &mut ZygoteSide<W>,
    slot: usize,
    zygote_pid: i32,
    parent_ignores_sigpipe: bool,
    sig_r: &OwnedFd,
    sig_w: &OwnedFd,
) -> Result<i32> {
    // SAFETY: the zygote is single-threaded, so the child is a full copy;
    // it ends in `run_worker`, which never returns.
    match unsafe { sys::fork() }? {
        Forked::Child => {
            // The zygote's plumbing is not the worker's business.
            for fd in
                [side.requests.as_raw_fd(), side.reports.as_raw_fd(), sig_r.as_raw_fd(), sig_w.as_raw_fd()]
            {
                sys::close_inherited(fd);
            }
            // The zygote's mask is empty and its other dispositions are
            // the defaults (its own reset_for_child): four calls, not all.
            let _ = sys::signal::restore_defaults(&ZYGOTE_SIGNALS);
            if !parent_ignores_sigpipe {
                let _ = sys::signal::default_sigpipe();
            }
            let _ = sys::new_process_group();
            // Die with the zygote (Linux); and if it already died before the
            // prctl took effect, we have been re-parented: leave now.
            let _ = sys::set_parent_death_signal(libc::SIGKILL);
            if sys::getppid() != zygote_pid {
                sys::exit_now(1);
            }
            // run_worker ends the process itself; a panic escaping it must
            // not unwind into the zygote's loop, in this process.
            let _ = panic::catch_unwind(AssertUnwindSafe(|| (side.run_worker)(slot)));
            sys::exit_now(1)
        }
        Forked::Parent(pid) => {
            sys::set_child_process_group(pid);
            Ok(pid)
        }
    }
}
