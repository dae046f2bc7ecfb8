//! What makes a [`Pool`](super::Pool) shareable between threads: its
//! engine behind one lock, the *pump role*, and a small driver thread.
//!
//! # The pump role
//! Reading the result rings and the zygote's report pipe, and sleeping on
//! the parent's doorbell until there is more, is one thread's job at a
//! time: the thread that holds the pump role (a flag under the lock). It
//! sleeps with the lock released, so other threads submit, dispatch and
//! take their results meanwhile; it files every result that arrives,
//! whoever it is for, and wakes the threads (or futures) waiting for them.
//!
//! - A caller that must wait (`get`, `map`, `imap`'s `next`, `join`) takes
//!   the role if it is free and pumps until its own results are in: one
//!   thread waiting on its own, the common case, pays no hand-over between
//!   threads. If another thread holds the role, it waits until that thread
//!   files its results, or leaves the role to it: yielding its CPU for a
//!   while, then parked ([`yield_until_woken`]).
//! - The **driver thread** pumps when work is outstanding and no caller is
//!   waiting: tasks queued by `apply_async` move into the rings, results
//!   move out, and futures are woken, while nobody is inside a pool call.
//!   It leaves the role as soon as a caller waits (the caller pumps for
//!   itself from then on), and after a caller leaves it, it takes the role
//!   back only once [`GRACE`] has passed without a caller taking it, so a
//!   loop of calls (`imap`'s `next`) is not interrupted by hand-overs.
//!   A caller submitting with `apply_async` in a tight loop ([`TIGHT_RUN`]
//!   calls in a row, each less than [`TIGHT_CALLS`] after the last) counts
//!   as active too: each call moves the work along itself, and the driver
//!   waits until the calls stop (looking again every [`TIGHT_RECHECK`]),
//!   leaving the role at the next call if it holds it (unless a future
//!   waits). A third busy thread on two vCPUs cost such a loop half its
//!   rate.
//!   Idle, it sleeps on its own pipe and on the report pipe (so a zygote
//!   that dies between calls is noticed at once); after a burst of
//!   calls it also wakes when the memory the burst held is due to be
//!   given back, and once a second while the burst's table still holds
//!   open calls (`Engine::give_back_burst`).
//!
//! # Fork safety
//! Once the driver has started, the program has one more thread. The
//! locks it may hold at any moment are this pool's engine lock and, inside
//! allocations, the allocator's (glibc's `fork` resets those in the
//! child). A child forked meanwhile never takes the engine lock: every
//! entry point checks the owning pid first and touches nothing in another
//! process (see `Pool::check_owner`), and the pool's `Drop` there neither
//! locks nor joins. The driver writes nothing to stdout or stderr (traces
//! go out by raw `write`), takes no registry lock (the registries are
//! lock-free), and runs no user code but one kind: the wakers of awaited
//! results, which it calls with the lock released (an executor's waker may
//! take the executor's own lock: a child forked at that instant must not
//! use that executor). `Wire` encoding and decoding run in the callers'
//! threads. A waker that panics is caught (its panic hook has reported it):
//! the other waiters are still woken and the pool goes on.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::engine::{Engine, Sleeper, Waiter};
use super::shared::{self, Layout, Woke};
use crate::error::{Error, Result};
use crate::sys::{self, bell, ParentOnlyFd};

/// How long the driver leaves the pump role free after a caller used it
/// before taking it itself: longer than the gap between two calls of a
/// loop, short against any task worth a process.
pub(crate) const GRACE: Duration = Duration::from_millis(1);

/// [`TIGHT_RUN`] `apply_async` calls in a row, each closer to the last
/// than this, are a tight loop: the caller's own steps keep the workers
/// fed, and a driver pumping beside it only takes the lock and a CPU from
/// it and the workers (20,000 calls, then each `get`: 0.69 M tasks/s with
/// the driver pumping, 1.51 M without). Calls further apart, or in short
/// bursts, leave the driver pumping: a call's own step hands each worker
/// only a few tasks, and 20 µs tasks queued behind calls (or bursts of 2
/// or 4) 0.4 ms apart ran at a quarter of their rate.
pub(crate) const TIGHT_CALLS: Duration = Duration::from_micros(20);
/// How many close calls in a row make a tight loop (see [`TIGHT_CALLS`]).
pub(crate) const TIGHT_RUN: u32 = 16;

/// How soon the driver looks again after a tight loop kept it out: a
/// program that submits bursts of tasks (a batch per frame, per request)
/// stops calling within microseconds, and a whole [`GRACE`] would leave
/// the workers idle with tasks queued (bursts of 32 calls every 1 ms ran
/// the queue at 0.3 of its rate). A tight loop that goes on wakes the
/// driver this often for nothing: a few microseconds of CPU each time.
const TIGHT_RECHECK: Duration = Duration::from_micros(100);

/// How long a waiting caller yields its CPU, watching for its wake-up,
/// before it parks (see [`yield_until_woken`]).
const YIELD_BEFORE_PARK: Duration = Duration::from_micros(50);

/// A wait that must end sooner than this parks at once (see
/// [`yield_until_woken`]): longer than a few time slices.
const YIELD_DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The driver's stack: it runs the engine's loop and nothing else.
const DRIVER_STACK: usize = 256 * 1024;

fn os_error(call: &'static str, e: std::io::Error) -> Error {
    Error::Os(crate::error::OsError { call, pid: None, errno: e.raw_os_error().unwrap_or(libc::EAGAIN) })
}

/// The pool's state shared by its handles ([`Pool`](super::Pool),
/// [`AsyncResult`](super::AsyncResult)) and its driver thread.
#[derive(Debug)]
pub(crate) struct Core {
    engine: Mutex<Engine>,
    /// The process that made the pool; in any other, nothing here is used.
    pub owner: i32,
    pub processes: usize,
    /// `PoolBuilder::max_result_size`.
    pub max_result: usize,
    /// Each ring's capacity (how task messages are cut).
    pub ring_capacity: usize,
    /// What the pumping thread sleeps on with the lock released, so owned
    /// here rather than by the engine: the parent's doorbell, a duplicate
    /// of the zygote's report pipe, and the layout (the parent's flags).
    parent_bell: ParentOnlyFd,
    reports: ParentOnlyFd,
    layout: Layout,
    /// Wakes whoever pumps (asleep on the doorbell): the pool ended, or a
    /// caller waits for the role the driver holds.
    pump_nudge: Nudge,
    /// Wakes the driver: work nobody pumps for, a future waiting, the end.
    driver_nudge: Nudge,
    /// This core, for the driver thread started later.
    me: Weak<Core>,
    driver: Mutex<Option<JoinHandle<()>>>,
    /// How the zygote's end went, once the thread that waited for it
    /// (outside the engine lock) knows: every `join` and `terminate`
    /// returns only then, and all see the same outcome.
    zygote_end: Mutex<Option<Result<()>>>,
    zygote_end_cv: std::sync::Condvar,
    /// See [`Core::hurry_zygote`].
    hurry: AtomicBool,
    /// The driver thread's id: it must never wait on its own pool (a
    /// waker it runs might try).
    driver_id: std::sync::OnceLock<std::thread::ThreadId>,
}

/// A wake-up for a thread asleep in `shared::sleep`: a flag it raises
/// while asleep, a pipe to ring then, and a pending mark it checks.
#[derive(Debug)]
struct Nudge {
    sleeping: AtomicU32,
    pending: AtomicBool,
    read: ParentOnlyFd,
    write: ParentOnlyFd,
}

impl Nudge {
    fn new() -> Result<Nudge> {
        let bell::Bell { read, write } = bell::Bell::new()?;
        Ok(Nudge {
            sleeping: AtomicU32::new(0),
            pending: AtomicBool::new(false),
            read: ParentOnlyFd::new(read),
            write: ParentOnlyFd::new(write),
        })
    }

    fn nudge(&self) {
        // SeqCst: ordered before `wake`'s fence and flag load, against the
        // sleeper's flag store, fence and `pending` check.
        self.pending.store(true, Ordering::SeqCst);
        shared::wake(&self.sleeping, self.write.as_fd());
    }

    fn pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        self.pending.swap(false, Ordering::SeqCst)
    }

    /// Empties the pipe after a wake-up that may have come through it.
    fn drain(&self) {
        let _ = bell::drain(self.read.as_fd());
    }
}

/// The engine, locked. Waiters whose results were filed meanwhile are woken
/// when it is dropped, after the lock is released (a woken thread would
/// otherwise run straight into the lock).
#[derive(Debug)]
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, Engine>>,
    core: &'a Core,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        match &self.guard {
            Some(g) => g,
            None => unreachable!("the guard is taken only in drop"),
        }
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        match &mut self.guard {
            Some(g) => g,
            None => unreachable!("the guard is taken only in drop"),
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else { return };
        let wake = std::mem::take(&mut guard.to_wake);
        let nudge = std::mem::take(&mut guard.nudge_pumper) && guard.pumping;
        drop(guard);
        if nudge {
            self.core.pump_nudge.nudge();
        }
        for w in wake {
            // A waker is an executor's code: one that panics (its panic
            // hook has reported it) must not leave the pump role taken or
            // the other waiters asleep.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
        }
    }
}

/// Which submissions a parked caller waits on, and whether for any result
/// (`imap`) or only the last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Interest<'s> {
    pub subs: &'s [u64],
    pub any: bool,
}

impl Interest<'_> {
    pub(crate) const NONE: Interest<'static> = Interest { subs: &[], any: false };
}

/// Yields the CPU (`sched_yield`) until `me` is woken, for at most
/// [`YIELD_BEFORE_PARK`]; whether it was woken. A wait whose deadline is
/// nearer than [`YIELD_DEADLINE_MARGIN`] does not yield: on busy CPUs one
/// yield can give away a whole time slice, several milliseconds, and the
/// wait would end that much past its deadline.
///
/// Why not park at once: with more threads than CPUs (eight callers, two
/// workers and the pumping thread on two vCPUs), a parked caller costs a
/// futex wake-up to whoever files its result and a wake-up across vCPUs
/// (~20 µs here) before it runs; a caller that yields stays runnable, and
/// runs again as soon as the threads ahead of it yield or sleep, with no
/// system call on the waker's side (an unpark of a thread that is not
/// parked only sets its token). Measured with eight threads calling
/// `apply` on a 2-worker pool (`mproc bench pool` on 2 vCPUs, 8 runs
/// each, with the dispatch order of `Engine::dispatch`): 0.52 M tasks/s
/// (median) parking at once, with 0.08 sleeps per task; 1.66 M yielding
/// first, with none. The limit keeps a caller waiting for a long task
/// from burning its CPU: after it, the caller parks.
fn yield_until_woken(me: &Sleeper, deadline: Option<Instant>) -> bool {
    let start = Instant::now();
    if deadline.is_some_and(|d| d.saturating_duration_since(start) < YIELD_DEADLINE_MARGIN) {
        return false;
    }
    let until = start + YIELD_BEFORE_PARK;
    loop {
        // Acquire: pairs with the Release in `Sleeper::wake`.
        if me.woken.load(Ordering::Acquire) {
            return true;
        }
        // The clock on every turn: a turn may have been a time slice.
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}

impl Core {
    /// Wraps a started engine. The driver thread starts the first time
    /// work is left for it ([`Core::ensure_driver`]): a pool used only
    /// through calls that wait (`map`, `apply`) never starts one.
    pub(crate) fn start(engine: Engine, parent_bell: ParentOnlyFd, processes: usize) -> Result<Arc<Core>> {
        let reports: OwnedFd = engine.report_fd().try_clone_to_owned().map_err(|e| os_error("dup", e))?;
        let layout = engine.layout.clone();
        let max_result = engine.max_result();
        let (pump_nudge, driver_nudge) = (Nudge::new()?, Nudge::new()?);
        Ok(Arc::new_cyclic(|me| Core {
            engine: Mutex::new(engine),
            owner: sys::current_pid(),
            processes,
            max_result,
            ring_capacity: layout.ring_capacity(),
            parent_bell,
            reports: ParentOnlyFd::new(reports),
            layout,
            pump_nudge,
            driver_nudge,
            me: me.clone(),
            driver: Mutex::new(None),
            zygote_end: Mutex::new(None),
            zygote_end_cv: std::sync::Condvar::new(),
            hurry: AtomicBool::new(false),
            driver_id: std::sync::OnceLock::new(),
        }))
    }

    /// Starts the driver thread unless it runs (or the pool has ended).
    /// A failure to start it (the thread limit) is returned; the pool
    /// still works, moving only while callers are in it.
    pub(crate) fn ensure_driver(&self, e: &Engine) -> Result<()> {
        if self.driver_id.get().is_some() || e.finished {
            return Ok(());
        }
        let mut slot = self.driver.lock().unwrap_or_else(|p| p.into_inner());
        let Some(core) = self.me.upgrade() else { return Ok(()) };
        if slot.is_some() {
            return Ok(());
        }
        let handle = std::thread::Builder::new()
            .name("mproc-pool".into())
            .stack_size(DRIVER_STACK)
            .spawn(move || core.drive())
            .map_err(|e| os_error("pthread_create", e))?;
        let _ = self.driver_id.set(handle.thread().id());
        *slot = Some(handle);
        Ok(())
    }

    /// The engine, locked. A panic under the lock (a bug) leaves it
    /// poisoned; the state is still the best there is, so go on with it.
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked { guard: Some(self.engine.lock().unwrap_or_else(|p| p.into_inner())), core: self }
    }

    /// Runs one step if no thread holds the pump role (for calls that show
    /// the pool's state: `pids`, `ready`, `join`); with one, its thread
    /// keeps the state fresh.
    pub(crate) fn step_if_free(&self, e: &mut Locked<'_>) -> Result<()> {
        if e.pumping {
            return Ok(());
        }
        e.pumping = true;
        let stepped = e.refresh();
        e.pumping = false;
        stepped
    }

    /// Waits until `done`, or the deadline (`Err(Timeout)`), or the pool's
    /// end (its reason). Pumps if no thread does; parks otherwise, until
    /// a result for `interest` is filed or the role is handed over.
    pub(crate) fn wait_until<'a>(
        &'a self,
        mut e: Locked<'a>,
        deadline: Option<Instant>,
        interest: Interest<'_>,
        done: impl Fn(&Engine) -> bool,
    ) -> Result<Locked<'a>> {
        let me = Sleeper::current();
        // A caller is active: the driver keeps out of its way (see GRACE).
        e.call_epoch = e.call_epoch.wrapping_add(1);
        e.tight_run_active = false;
        if e.pumper == Some(me.id()) || self.driver_id.get() == Some(&me.id()) {
            // A waker the pool ran (with the lock released, but on the
            // thread that pumps) called back into it: waiting here would
            // wait for ourselves.
            return Err(Error::InvalidState("a pool was called from a waker it woke"));
        }
        loop {
            if done(&e) {
                self.hand_on(&mut e);
                return Ok(e);
            }
            if let Some(err) = e.ended() {
                self.hand_on(&mut e);
                return Err(err);
            }
            if !e.pumping {
                // Steps at least once, even past the deadline: a caller
                // polling with `get_timeout(ZERO)` moves the work too.
                return self.pump(e, deadline, false, &done);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            for &sub in interest.subs {
                if let Some(s) = e.submission_mut(sub) {
                    s.add_waiter(Waiter::Thread(me.clone()), interest.any);
                }
            }
            if !e.parked.iter().any(|t| t.id() == me.id()) {
                e.parked.push(me.clone());
            }
            if e.driver_pumps {
                // The driver leaves the role to a waiting caller.
                self.pump_nudge.nudge();
            }
            // Lowered under the lock: a wake-up for this wait comes after it.
            me.woken.store(false, Ordering::Relaxed);
            drop(e);
            if !yield_until_woken(&me, deadline) {
                match deadline {
                    Some(d) => std::thread::park_timeout(d.saturating_duration_since(Instant::now())),
                    None => std::thread::park(),
                }
            }
            e = self.lock();
            e.parked.retain(|t| t.id() != me.id());
        }
    }

    /// Holds the pump role until `done`, the deadline, or the end; then
    /// hands it to a parked caller, if any.
    fn pump<'a>(
        &'a self,
        mut e: Locked<'a>,
        deadline: Option<Instant>,
        as_driver: bool,
        done: &dyn Fn(&Engine) -> bool,
    ) -> Result<Locked<'a>> {
        e.pumping = true;
        e.driver_pumps = as_driver;
        e.pumper = Some(std::thread::current().id());
        let outcome = loop {
            if let Err(err) = e.step() {
                break Err(err);
            }
            if done(&e) {
                break Ok(());
            }
            if let Some(err) = e.ended() {
                break Err(err);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Err(Error::Timeout);
            }
            let wake_at = [deadline, e.next_timer()].into_iter().flatten().min();
            let timeout = wake_at.map(|t| t.saturating_duration_since(now));
            drop(e);
            let woke = self.pump_sleep(timeout);
            e = self.lock();
            match woke {
                Ok(woke) => e.reports_due |= woke != Woke::Ready,
                Err(err) => break Err(err),
            }
        };
        e.pumping = false;
        e.driver_pumps = false;
        e.pumper = None;
        if !(as_driver && e.parked.is_empty()) {
            self.hand_on(&mut e);
        }
        outcome.map(|()| e)
    }

    /// With the pump role free, makes sure someone takes it if anyone
    /// needs it: the first parked caller (it takes the role, or, if its
    /// wait is over, hands it on in turn), else the driver for work left
    /// outstanding (an `imap` between two `next`s; at once for a future,
    /// otherwise once callers leave the pool alone). A driver that cannot
    /// start leaves the work for the next call, as before there was one.
    fn hand_on(&self, e: &mut Engine) {
        if e.pumping {
            return;
        }
        if let Some(next) = e.parked.first().cloned() {
            e.to_wake.push(Waiter::Thread(next));
        } else if e.has_work() && (e.driver_idle || self.driver_id.get().is_none()) {
            let _ = self.ensure_driver(e);
            self.driver_nudge.nudge();
        }
    }

    /// The pumping thread's sleep, lock released: spins on the rings, then
    /// sleeps on the doorbell, the report pipe and the pump nudge.
    fn pump_sleep(&self, timeout: Option<Duration>) -> Result<Woke> {
        let mut flags = self.layout.parent_flags();
        flags.push(&self.pump_nudge.sleeping);
        let woke = shared::sleep(
            &flags,
            self.parent_bell.as_fd(),
            &[self.reports.as_fd(), self.pump_nudge.read.as_fd()],
            timeout,
            // A lock held by another thread means activity (a call queueing
            // work or taking results): go and step, rather than queue up
            // behind it on every turn of the spin.
            || {
                self.pump_nudge.pending()
                    || match self.engine.try_lock() {
                        Ok(e) => e.ready_to_step(),
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().ready_to_step(),
                        Err(std::sync::TryLockError::WouldBlock) => true,
                    }
            },
        );
        if self.pump_nudge.take() || matches!(woke, Ok(Woke::Other)) {
            self.pump_nudge.drain();
        }
        woke
    }

    /// The driver thread: pumps while work is outstanding and no caller
    /// waits; ends with the pool.
    fn drive(&self) {
        let mut seen_epoch = u64::MAX;
        loop {
            let mut e = self.lock();
            if e.finished {
                let parked: Vec<_> = e.parked.iter().cloned().map(Waiter::Thread).collect();
                e.to_wake.extend(parked);
                return;
            }
            self.driver_nudge.take();
            let work = e.has_work();
            if !work || e.pumping {
                if !work {
                    e.futures_waiting = false;
                }
                // Nothing to do, or a caller pumps: sleep until nudged (by
                // `kick`, or by that caller when it leaves the role with
                // work outstanding). Idle, watch the report pipe too (a
                // zygote that dies now fails the pool at once); while a
                // caller pumps, it reads the reports.
                let watch = !e.pumping;
                seen_epoch = e.call_epoch;
                e.driver_idle = true;
                // Memory a burst left behind, given back once that is due:
                // nothing else would look while the pool sits idle. Also
                // while a caller pumps: its last call may empty the table
                // before that is due, and leave without waking us.
                let give_back = e.give_back_burst();
                drop(e);
                let woke =
                    self.driver_sleep(watch, give_back.map(|t| t.saturating_duration_since(Instant::now())));
                let mut e = self.lock();
                e.driver_idle = false;
                if let Ok(Woke::Other) = woke {
                    e.reports_due = true;
                }
                continue;
            }
            // Pump for a future at once; for other work, once callers have
            // left the pool alone for a grace period.
            if e.parked.is_empty() && (e.futures_waiting || e.call_epoch == seen_epoch) {
                // Leave the role when a caller waits, or (unless a future
                // waits) when one calls again: `apply_async` then nudges.
                let epoch = e.call_epoch;
                let done = move |e: &Engine| {
                    !e.has_work() || !e.parked.is_empty() || (!e.futures_waiting && e.call_epoch != epoch)
                };
                if let Err(err) = self.pump(e, None, true, &done) {
                    if !matches!(err, Error::Closed | Error::ZygoteDied { .. }) {
                        // A failing system call: the callers see it too.
                        // Do not spin on it.
                        let _ = self.driver_sleep(false, Some(GRACE));
                    }
                }
                continue;
            }
            // Callers parked with the role free (none should be): wake one.
            self.hand_on(&mut e);
            seen_epoch = e.call_epoch;
            // A burst of `apply_async` ends within microseconds, and the
            // workers then drain what its calls handed them: look again
            // soon (see TIGHT_RECHECK), not a whole grace period later.
            let tight = e.tight_run_active;
            drop(e);
            if tight {
                // `poll` counts whole milliseconds. A nudge meanwhile (a
                // future, the end) is seen at the next turn, this late.
                std::thread::sleep(TIGHT_RECHECK);
            } else {
                let _ = self.driver_sleep(false, Some(GRACE));
            }
        }
    }

    /// The driver's sleep on its nudge (and the report pipe if `reports`).
    fn driver_sleep(&self, reports: bool, timeout: Option<Duration>) -> Result<Woke> {
        let watched = [self.reports.as_fd()];
        let extra: &[_] = if reports { &watched } else { &[] };
        let flags = [&self.driver_nudge.sleeping];
        shared::sleep_without_spin(&flags, self.driver_nudge.read.as_fd(), extra, timeout, || {
            self.driver_nudge.pending()
        })
    }

    /// Makes sure someone will pump for work just queued by a call that
    /// does not wait for it (`apply_async`): wakes the driver if it sleeps
    /// without a timeout. (Otherwise it looks within [`GRACE`].)
    pub(crate) fn kick(&self, e: &Locked<'_>) {
        if !e.pumping && e.driver_idle {
            self.driver_nudge.nudge();
        }
    }

    /// Makes the driver pump now, for a future that waits (unless a caller
    /// pumps: it files the result and wakes the future).
    pub(crate) fn kick_for_future(&self, e: &Locked<'_>) -> Result<()> {
        self.ensure_driver(e)?;
        if !e.pumping {
            self.driver_nudge.nudge();
        }
        Ok(())
    }

    /// After the pool ended (`e.finished`, with `exit` from that same
    /// lock): wakes every thread that might wait, then waits for the
    /// zygote's end with the lock released — as the one that reaps it if
    /// `exit` is ours, or for the thread that does. `Ok` if there is none
    /// (it died and was reaped already).
    pub(crate) fn end_zygote(
        &self,
        mut e: Locked<'_>,
        exit: Option<super::zygote::ZygoteExit>,
    ) -> Result<()> {
        let Some(exit) = exit else {
            let ending = e.zygote_ending;
            self.wake_all(e);
            let mut end = self.zygote_end.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(r) = end.as_ref() {
                    // Every `join` and `terminate` sees the same end.
                    return r.clone();
                }
                if !ending {
                    // No zygote to wait for: it died (and was reaped) on
                    // its own; the pool's `broken` error says so.
                    return Ok(());
                }
                end = self.zygote_end_cv.wait(end).unwrap_or_else(|p| p.into_inner());
            }
        };
        e.zygote_ending = true;
        // Wake nobody before the end is known: a waker run here (on this
        // thread) that calls `terminate` or `join` would wait for it.
        let mut wake = std::mem::take(&mut e.to_wake);
        wake.extend(e.parked.iter().cloned().map(Waiter::Thread));
        drop(e);
        self.pump_nudge.nudge();
        self.driver_nudge.nudge();
        let r = exit.wait(self.reports.as_fd(), &self.hurry);
        *self.zygote_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        self.zygote_end_cv.notify_all();
        self.lock().zygote_ending = false;
        for w in wake {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
        }
        r
    }

    /// A `terminate` while another thread waits for the zygote's polite
    /// end: that wait takes the kill's shorter limit from now on.
    pub(crate) fn hurry_zygote(&self) {
        self.hurry.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Wakes every thread that might wait on the pool after it ended: the
    /// parked callers, the pumping thread, the driver.
    pub(crate) fn wake_all(&self, mut e: Locked<'_>) {
        let parked: Vec<_> = e.parked.iter().cloned().map(Waiter::Thread).collect();
        e.to_wake.extend(parked);
        drop(e);
        self.pump_nudge.nudge();
        self.driver_nudge.nudge();
    }

    /// Waits for the driver thread to end (after the pool ended).
    pub(crate) fn join_driver(&self) {
        let handle = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}
