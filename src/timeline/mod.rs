//! A timeline of processes and pool batches: which process existed when,
//! who forked whom, how each ended, and which batch of tasks ran on which
//! worker — the record behind the CLI's `--timeline`.
//!
//! ```
//! mproc::timeline::start()?;
//! let mut p = mproc::Process::new(|| ());
//! p.start()?;
//! p.join()?;
//! let timeline = mproc::timeline::finish().expect("recording in this process");
//! let lanes = timeline.lanes();
//! assert_eq!(lanes.len(), 2); // the parent and its child
//! assert_eq!(lanes[1].status, Some(mproc::ExitStatus::Exited(0)));
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # What is recorded, and by whom
//! Only the process that called [`start`] records, and only what it sees
//! itself: the `fork`s it makes and the `waitpid`s that reap its children,
//! the signals it sends, its pools' zygote reports (a worker forked, a
//! worker ended — stamped by the zygote with the monotonic clock every
//! process shares), and its pools' batches as it sends them and takes
//! their results. A forked child inherits a copy of the recorder and
//! records nothing (so nothing ever has to travel back from a child).
//!
//! # Cost
//! Events go into a buffer allocated once by [`start`]: recording one is
//! a clock read (none for a batch), one atomic `fetch_add` to claim a
//! slot, and five stores,
//! with no lock (a forked child never waits on one another thread held,
//! and threads of the parent never wait for each other). A full buffer
//! drops later events and counts them ([`Timeline::dropped`]). Pool
//! batches and failed tasks, the events a long run makes most of, stop at
//! three quarters of it: the last quarter (65,536 events) is kept for the
//! processes' forks, roles, ends and kills, so a long pool run loses batch
//! bars before it loses the end of a process. With no recording, each
//! hook costs one atomic load.
//!
//! # Pool batches
//! A pool sends tasks to a worker in batches (one task each when tasks are
//! slow, many when they are quick). The timeline draws one bar per batch
//! as the parent sees it: from the moment the batch became the worker's
//! current one (handed to an idle worker, or the one before it done) to
//! the moment the parent has its last result. One event per batch, at its
//! end, with the pool's own time stamps: recording reads no clock. A batch
//! cut short by its worker's death ends at that death, coloured by why
//! (its worker died, or was killed for running past the task timeout).

mod lanes;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub use lanes::{Bar, Kill, Lane};

use crate::error::{Error, Result};
use crate::status::ExitStatus;
use crate::sys;

/// Events the buffer holds (40 bytes each, 10 MiB): a `Pool::map` of a
/// million trivial tasks takes a few thousand, a task sent alone
/// (`apply`, `imap` at chunksize 1) one.
const CAPACITY: usize = 1 << 18;
/// Bytes of labels (job command lines) the buffer holds.
const LABEL_CAPACITY: usize = 1 << 20;
/// The longest label kept, in bytes: more than a picture shows of a
/// command line, small enough that the first 4,096 jobs keep theirs
/// however long their commands are.
const LABEL_MAX: usize = 256;

/// What a process was to the recording process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The process that recorded the timeline.
    Parent,
    /// A pool's zygote, which forks the pool's workers.
    Zygote,
    /// A pool worker.
    Worker,
    /// Any other forked child (a [`crate::Process`], a
    /// [`crate::fork_map`] child).
    Child,
    /// A job of [`crate::runner::run`]; its lane's label is the command.
    Job,
}

impl Role {
    /// The role's name as the pictures print it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Zygote => "zygote",
            Role::Worker => "worker",
            Role::Child => "child",
            Role::Job => "job",
        }
    }

    fn from_code(code: u64) -> Role {
        match code {
            0 => Role::Parent,
            1 => Role::Zygote,
            2 => Role::Worker,
            4 => Role::Job,
            _ => Role::Child,
        }
    }

    fn code(self) -> u64 {
        match self {
            Role::Parent => 0,
            Role::Zygote => 1,
            Role::Worker => 2,
            Role::Child => 3,
            Role::Job => 4,
        }
    }
}

/// How a batch of pool tasks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every task returned.
    Ok,
    /// A task failed without panicking (its argument or result did not
    /// cross, say); a job that did not exit 0.
    Failed,
    /// A task panicked (the worker lived on).
    Panicked,
    /// Its worker died before the batch's last result came.
    WorkerDied,
    /// Its worker was killed because a task ran past the pool's timeout.
    Timeout,
}

impl Outcome {
    /// Every outcome, in the order a legend lists them.
    pub const ALL: [Outcome; 5] =
        [Outcome::Ok, Outcome::Panicked, Outcome::Failed, Outcome::WorkerDied, Outcome::Timeout];

    /// The outcome's name as the pictures print it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Panicked => "panicked",
            Outcome::WorkerDied => "worker died",
            Outcome::Timeout => "timeout",
        }
    }
}

/// One recorded event. Every `at` is nanoseconds since [`start`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are named for what they are
pub enum Event {
    /// `parent` forked `child`.
    Forked { at: u64, parent: i32, child: i32 },
    /// What process `pid` is; `label` is a job's command line (or empty).
    Role { at: u64, pid: i32, role: Role, label: String },
    /// Process `pid` was reaped (for a pool worker: reported reaped by the
    /// zygote) and ended with `status`.
    Ended { at: u64, pid: i32, status: ExitStatus },
    /// The recording process sent `signal` to `pid` (or to its group).
    Killed { at: u64, pid: i32, signal: i32 },
    /// Process `pid` ran past its time limit and was killed for it.
    TimedOut { at: u64, pid: i32 },
    /// Worker `pid` serves slot `slot` of the pool whose zygote is
    /// `zygote` (until it ends).
    Slot { at: u64, zygote: i32, slot: u32, pid: i32 },
    /// A task of the batch that the worker in slot `slot` of pool `zygote`
    /// runs failed with `outcome`.
    TaskFailed { at: u64, zygote: i32, slot: u32, outcome: Outcome },
    /// The worker in slot `slot` of pool `zygote` ran a batch of `tasks`
    /// tasks, from `start` (when the parent saw it become the worker's
    /// current batch) to `at` (when the parent had its last result).
    BatchRan { at: u64, start: u64, zygote: i32, slot: u32, tasks: u32 },
    /// Worker `pid` died in the batch it had run since `start`, which ends
    /// with `outcome` ([`Outcome::WorkerDied`], [`Outcome::Timeout`], or
    /// [`Outcome::Failed`] when the parent had it killed for a corrupt
    /// ring).
    BatchCut { at: u64, start: u64, pid: i32, outcome: Outcome },
}

impl Event {
    /// When it happened, in nanoseconds since [`start`].
    pub fn at(&self) -> u64 {
        match *self {
            Event::Forked { at, .. }
            | Event::Role { at, .. }
            | Event::Ended { at, .. }
            | Event::Killed { at, .. }
            | Event::TimedOut { at, .. }
            | Event::Slot { at, .. }
            | Event::TaskFailed { at, .. }
            | Event::BatchRan { at, .. }
            | Event::BatchCut { at, .. } => at,
        }
    }
}

/// A finished recording: see [`finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// The recording process.
    pub owner: i32,
    /// Nanoseconds from [`start`] to [`finish`].
    pub duration: u64,
    /// Every event, in the order they were recorded.
    pub events: Vec<Event>,
    /// Events not recorded because the buffer was full (for batches and
    /// failed tasks: their three quarters of it).
    pub dropped: u64,
}

// ---------------------------------------------------------------------------
// the recorder

/// Event kinds, as stored (0: a slot claimed but not yet written).
const FORKED: u64 = 1;
const ROLE: u64 = 2;
const ENDED: u64 = 3;
const KILLED: u64 = 4;
const TIMED_OUT: u64 = 5;
const SLOT: u64 = 6;
const TASK_FAILED: u64 = 7;
const BATCH_RAN: u64 = 8;
const BATCH_CUT: u64 = 9;

/// One event as stored: five words, the kind written last.
#[derive(Default)]
struct Slot {
    /// The event's kind; 0 until the other words are written.
    kind: AtomicU64,
    /// `CLOCK_MONOTONIC`, in nanoseconds.
    at: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
    c: AtomicU64,
}

struct Recorder {
    owner: i32,
    start_ns: u64,
    /// The same instant as `start_ns`, to place the pool's own `Instant`s
    /// on the timeline without reading the clock again.
    start: Instant,
    /// Cleared by [`finish`]: later hooks record nothing.
    on: AtomicBool,
    /// Slots claimed so far (past the end: events dropped).
    next: AtomicUsize,
    slots: Box<[Slot]>,
    /// Label bytes, claimed like slots; published by the `Role` event that
    /// names them.
    labels: Box<[AtomicU8]>,
    labels_next: AtomicUsize,
    /// Batch events not recorded because they had used their share.
    batches_dropped: AtomicU64,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Starts recording in this process. Once per process:
/// [`Error::InvalidState`] the second time.
pub fn start() -> Result<()> {
    let mut started = false;
    RECORDER.get_or_init(|| {
        started = true;
        Recorder::new(CAPACITY, LABEL_CAPACITY)
    });
    if started {
        Ok(())
    } else {
        Err(Error::InvalidState("the timeline was started already"))
    }
}

/// Whether this process records a timeline now.
pub fn recording() -> bool {
    recorder().is_some()
}

/// Ends the recording and returns it; `None` if this process did not
/// [`start`] one (a forked child has none), or it was finished already.
pub fn finish() -> Option<Timeline> {
    let r = recorder()?;
    // Relaxed: a plain switch. Hooks running on other threads now may
    // still claim slots; those not yet published are skipped below.
    r.on.store(false, Ordering::Relaxed);
    Some(r.timeline())
}

/// The recorder, if this process records.
#[inline]
fn recorder() -> Option<&'static Recorder> {
    let r = RECORDER.get()?;
    // Relaxed: a plain switch; the owner never changes, and a child's
    // current_pid() is its own from the moment it exists.
    (r.on.load(Ordering::Relaxed) && r.owner == sys::current_pid()).then_some(r)
}

/// Two i32 in one word (`hi` in the upper half).
fn pack(hi: i32, lo: i32) -> u64 {
    (u64::from(hi as u32) << 32) | u64::from(lo as u32)
}

fn unpack(word: u64) -> (i32, i32) {
    ((word >> 32) as u32 as i32, word as u32 as i32)
}

fn pack_status(status: ExitStatus) -> u64 {
    match status {
        ExitStatus::Exited(code) => pack(0, code),
        ExitStatus::Signaled { signal, core_dumped } => pack(1 | (i32::from(core_dumped) << 1), signal),
    }
}

fn unpack_status(word: u64) -> ExitStatus {
    match unpack(word) {
        (0, code) => ExitStatus::Exited(code),
        (flags, signal) => ExitStatus::Signaled { signal, core_dumped: flags & 2 != 0 },
    }
}

fn pack_outcome(outcome: Outcome) -> u64 {
    Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0) as u64
}

fn outcome_of(word: u64) -> Outcome {
    usize::try_from(word).ok().and_then(|i| Outcome::ALL.get(i)).copied().unwrap_or(Outcome::Failed)
}

impl Recorder {
    /// A recorder of `capacity` events and `label_capacity` label bytes,
    /// owned by this process, its clock started now.
    fn new(capacity: usize, label_capacity: usize) -> Recorder {
        let slots: Box<[Slot]> = std::iter::repeat_with(Slot::default).take(capacity).collect();
        // The allocator hands out zeroed pages untouched: fault them in
        // now, once, rather than one by one while the program runs.
        for slot in slots.iter().step_by(sys::page_size() / std::mem::size_of::<Slot>()) {
            // Relaxed: nothing is published yet; the write only maps the page.
            slot.kind.store(0, Ordering::Relaxed);
        }
        let labels = std::iter::repeat_with(|| AtomicU8::new(0)).take(label_capacity).collect();
        Recorder {
            owner: sys::getpid(),
            // After the buffers are made: their cost is not the program's.
            start_ns: sys::monotonic_ns(),
            start: Instant::now(),
            on: AtomicBool::new(true),
            next: AtomicUsize::new(0),
            slots,
            labels,
            labels_next: AtomicUsize::new(0),
            batches_dropped: AtomicU64::new(0),
        }
    }

    /// The events recorded so far, as a [`Timeline`] ending now.
    fn timeline(&self) -> Timeline {
        let end_ns = sys::monotonic_ns();
        let claimed = self.next.load(Ordering::Relaxed);
        let mut events = Vec::with_capacity(claimed.min(self.slots.len()));
        for slot in &self.slots[..claimed.min(self.slots.len())] {
            // Acquire: pairs with the Release store of `kind` in `push`, so
            // the other words (and a role's label bytes) are those of this
            // event.
            let kind = slot.kind.load(Ordering::Acquire);
            let at = slot.at.load(Ordering::Relaxed).saturating_sub(self.start_ns);
            let (a, b) = (slot.a.load(Ordering::Relaxed), slot.b.load(Ordering::Relaxed));
            let c = slot.c.load(Ordering::Relaxed);
            if let Some(event) = self.decode(kind, at, [a, b, c]) {
                events.push(event);
            }
        }
        Timeline {
            owner: self.owner,
            duration: end_ns.saturating_sub(self.start_ns),
            events,
            dropped: (claimed.saturating_sub(self.slots.len()) as u64)
                .saturating_add(self.batches_dropped.load(Ordering::Relaxed)),
        }
    }

    /// Claims a slot and writes one event into it; a full buffer counts it.
    #[inline]
    fn push(&self, kind: u64, at: u64, a: u64, b: u64) {
        self.push3(kind, at, [a, b, 0]);
    }

    /// [`Recorder::push`] with a third word.
    #[inline]
    fn push3(&self, kind: u64, at: u64, [a, b, c]: [u64; 3]) {
        if matches!(kind, BATCH_RAN | TASK_FAILED)
            // Relaxed: a threshold; a few batches racing past it are fine.
            && self.next.load(Ordering::Relaxed) >= self.slots.len() - self.slots.len() / 4
        {
            // The last quarter is kept for processes' forks, roles, ends
            // and kills: a long run loses batch bars before ends.
            self.batches_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Relaxed: the claim only has to be unique; the event is published
        // by the Release store of its kind.
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.slots.get(i) else { return };
        slot.at.store(at, Ordering::Relaxed);
        slot.a.store(a, Ordering::Relaxed);
        slot.b.store(b, Ordering::Relaxed);
        slot.c.store(c, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `finish`.
        slot.kind.store(kind, Ordering::Release);
    }

    /// Copies `label` into the label buffer: `(offset << 32) | len`, or an
    /// empty label when the buffer is full.
    fn store_label(&self, label: &[u8]) -> u64 {
        // Cut at a character's start (a command line is UTF-8 as often as
        // not), so that the cut does not show as a replacement character:
        // back over at most three continuation bytes (bytes that are not
        // UTF-8 are cut where they are).
        let mut len = label.len().min(LABEL_MAX);
        let longest = len;
        while len < label.len() && longest - len < 3 && label[len] & 0xc0 == 0x80 {
            len -= 1;
        }
        let label = &label[..len];
        // Relaxed: a unique claim, published with the Role event.
        let at = self.labels_next.fetch_add(label.len(), Ordering::Relaxed);
        let Some(room) = self.labels.get(at..at + label.len()) else { return 0 };
        for (cell, &byte) in room.iter().zip(label) {
            cell.store(byte, Ordering::Relaxed);
        }
        ((at as u64) << 32) | label.len() as u64
    }

    fn label(&self, word: u64) -> String {
        let (at, len) = ((word >> 32) as usize, (word & 0xffff_ffff) as usize);
        let bytes: Vec<u8> = self
            .labels
            .get(at..at + len)
            .map_or(Vec::new(), |cells| cells.iter().map(|c| c.load(Ordering::Relaxed)).collect());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// `instant` as `CLOCK_MONOTONIC` nanoseconds (an `Instant` reads that
    /// clock on Linux; elsewhere the two agree from the start on, while the
    /// machine does not sleep). An instant before the start (of a pool made
    /// before it) counts as the start.
    #[inline]
    fn ns_of(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.start).as_nanos();
        self.start_ns.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    fn decode(&self, kind: u64, at: u64, [a, b, c]: [u64; 3]) -> Option<Event> {
        let (hi, lo) = unpack(a);
        Some(match kind {
            FORKED => Event::Forked { at, parent: hi, child: lo },
            ROLE => Event::Role { at, pid: hi, role: Role::from_code(lo as u64), label: self.label(b) },
            ENDED => Event::Ended { at, pid: hi, status: unpack_status(b) },
            KILLED => Event::Killed { at, pid: hi, signal: lo },
            TIMED_OUT => Event::TimedOut { at, pid: hi },
            SLOT => Event::Slot { at, zygote: hi, slot: b as u32, pid: lo },
            TASK_FAILED => Event::TaskFailed { at, zygote: hi, slot: lo as u32, outcome: outcome_of(b) },
            BATCH_RAN => Event::BatchRan {
                at,
                start: c.saturating_sub(self.start_ns),
                zygote: hi,
                slot: lo as u32,
                tasks: b as u32,
            },
            BATCH_CUT => Event::BatchCut {
                at,
                start: c.saturating_sub(self.start_ns),
                pid: hi,
                outcome: outcome_of(b),
            },
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// hooks: called where the recording process sees each event

/// This process forked `child` (from `sys`, where the fork returns).
pub(crate) fn forked(child: i32) {
    if let Some(r) = recorder() {
        r.push(FORKED, sys::monotonic_ns(), pack(r.owner, child), 0);
    }
}

/// What process `pid` is (a zygote, a job and its command line).
pub(crate) fn role(pid: i32, role: Role, label: &[u8]) {
    if let Some(r) = recorder() {
        let label = r.store_label(label);
        r.push(ROLE, sys::monotonic_ns(), pack(pid, role.code() as i32), label);
    }
}

/// `pid` is a job of the runner, running `command`.
pub(crate) fn job(pid: i32, command: &[Vec<u8>]) {
    if recording() {
        role(pid, Role::Job, &crate::runner::shell_line(command));
    }
}

/// This process reaped `pid` (from `sys`, where `waitpid` returns).
pub(crate) fn reaped(pid: i32, status: ExitStatus) {
    if let Some(r) = recorder() {
        r.push(ENDED, sys::monotonic_ns(), pack(pid, 0), pack_status(status));
    }
}

/// This process sent `signal` to `pid`, or to the group `-pid`.
pub(crate) fn killed(pid: i32, signal: i32) {
    if let Some(r) = recorder() {
        r.push(KILLED, sys::monotonic_ns(), pack(pid.saturating_abs(), signal), 0);
    }
}

/// Process `pid` ran past its time limit (and is being killed for it).
pub(crate) fn timed_out(pid: i32) {
    if let Some(r) = recorder() {
        r.push(TIMED_OUT, sys::monotonic_ns(), pack(pid, 0), 0);
    }
}

/// A pool's zygote reported that it forked worker `pid` for `slot` at
/// `at_ns` (`CLOCK_MONOTONIC`).
pub(crate) fn worker_forked(zygote: i32, slot: usize, pid: i32, at_ns: u64) {
    if let Some(r) = recorder() {
        r.push(FORKED, at_ns, pack(zygote, pid), 0);
        r.push(ROLE, at_ns, pack(pid, Role::Worker.code() as i32), 0);
        r.push(SLOT, at_ns, pack(zygote, pid), slot as u64);
    }
}

/// A pool's zygote reported that it reaped worker `pid` at `at_ns`;
/// `timed_out`: it had killed it for running past the task timeout.
pub(crate) fn worker_ended(pid: i32, status: ExitStatus, timed_out: bool, at_ns: u64) {
    if let Some(r) = recorder() {
        if timed_out {
            r.push(TIMED_OUT, at_ns, pack(pid, 0), 0);
        }
        r.push(ENDED, at_ns, pack(pid, 0), pack_status(status));
    }
}

/// A task of the batch that the worker in `slot` of pool `zygote` runs
/// failed with `err`.
#[cold]
pub(crate) fn task_failed(zygote: i32, slot: usize, err: &Error) {
    if let Some(r) = recorder() {
        let outcome = if matches!(err, Error::Panicked { .. }) { Outcome::Panicked } else { Outcome::Failed };
        r.push(TASK_FAILED, sys::monotonic_ns(), pack(zygote, slot as i32), pack_outcome(outcome));
    }
}

/// The worker in `slot` of pool `zygote` ran a batch of `tasks` tasks from
/// `start` to `end`: the pool's own instants, so that recording reads no
/// clock (one event per batch, a few stores).
#[inline]
pub(crate) fn batch_ran(zygote: i32, slot: usize, start: Instant, end: Instant, tasks: u32) {
    if let Some(r) = recorder() {
        let (start, end) = (r.ns_of(start), r.ns_of(end));
        r.push3(BATCH_RAN, end, [pack(zygote, slot as i32), u64::from(tasks), start]);
    }
}

/// Worker `pid` died in the batch it had run since `start`; `cause` is
/// what its task gets (a timeout, its death, or the corruption it was
/// killed for).
#[cold]
pub(crate) fn batch_cut(pid: i32, start: Instant, cause: &Error) {
    if let Some(r) = recorder() {
        let outcome = match cause {
            Error::Timeout => Outcome::Timeout,
            Error::WorkerDied { .. } => Outcome::WorkerDied,
            // Killed by the parent: its ring went corrupt.
            _ => Outcome::Failed,
        };
        r.push3(BATCH_CUT, sys::monotonic_ns(), [pack(pid, 0), pack_outcome(outcome), r.ns_of(start)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_pairs_survive_packing() {
        for status in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(255),
            ExitStatus::Exited(-1),
            ExitStatus::Signaled { signal: 9, core_dumped: false },
            ExitStatus::Signaled { signal: 11, core_dumped: true },
        ] {
            assert_eq!(unpack_status(pack_status(status)), status);
        }
        assert_eq!(unpack(pack(-5, 7)), (-5, 7));
        assert_eq!(unpack(pack(i32::MAX, i32::MIN)), (i32::MAX, i32::MIN));
        for outcome in Outcome::ALL {
            assert_eq!(outcome_of(pack_outcome(outcome)), outcome);
        }
        for role in [Role::Parent, Role::Zygote, Role::Worker, Role::Child, Role::Job] {
            assert_eq!(Role::from_code(role.code()), role);
        }
    }

    /// A long pool run fills the buffer with batches; the processes' ends
    /// that come after must still be recorded, or the picture would draw
    /// every worker alive to the end.
    #[test]
    fn batches_never_crowd_out_the_ends_of_processes() {
        let r = Recorder::new(64, 64);
        let now = Instant::now();
        let batch = [pack(1, 0), 1, r.ns_of(now)];
        for _ in 0..200 {
            r.push3(BATCH_RAN, r.start_ns, batch);
        }
        r.push(FORKED, r.start_ns, pack(1, 2), 0);
        r.push(ENDED, r.start_ns, pack(2, 0), pack_status(ExitStatus::Exited(3)));
        let t = r.timeline();
        assert!(
            t.events.contains(&Event::Ended { at: 0, pid: 2, status: ExitStatus::Exited(3) }),
            "{:?}",
            t.events
        );
        assert!(t.events.contains(&Event::Forked { at: 0, parent: 1, child: 2 }));
        let batches = t.events.iter().filter(|e| matches!(e, Event::BatchRan { .. })).count();
        assert!(batches > 0, "batches are recorded while there is room for them");
        assert_eq!(batches as u64 + t.dropped, 200, "every batch is recorded or counted as dropped");
    }

    /// A long command line keeps its start, cut between characters.
    #[test]
    fn a_long_label_is_cut_between_characters() {
        let r = Recorder::new(4, 1 << 16);
        let command = format!("x{}", "é".repeat(3000));
        let label = r.label(r.store_label(command.as_bytes()));
        // "x" and 127 two-byte characters: the 128th would cross the limit.
        assert_eq!(label.len(), LABEL_MAX - 1, "{label:?}");
        assert!(command.starts_with(&label), "{label:?}");
        // Bytes that are not UTF-8 (all continuation bytes) are still kept,
        // cut at most three bytes short (one replacement character each).
        let junk = vec![0x80u8; 1000];
        assert_eq!(r.label(r.store_label(&junk)).chars().count(), LABEL_MAX - 3);
    }
}
