//! The parent's half of the pool: queues, dispatch, results, deaths.
//! Plain state behind the pool's lock (see `driver`): whoever holds the
//! lock may queue and dispatch; only the thread that holds the pump role
//! as well reads the rings and the report pipe ([`Engine::step`]). (Task
//! timeouts are the zygote's: it runs whatever the parent does.)
//!
//! Every task is in exactly one place at a time: the queue (not yet sent),
//! a slot's in-flight list (sent to that worker, in order), or its
//! submission's results (a value or an error). A worker's death gives the
//! task it was running an error (see [`Engine::on_death`]) and moves its
//! other in-flight tasks back to the front of the queue, so every task gets
//! exactly one outcome. A task whose result had not reached the parent when
//! its worker died (still packed in the worker, see `worker`) runs again.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::thread::{Thread, ThreadId};
use std::time::{Duration, Instant};

use super::message::{self, Call, ResultTag};
use super::queue::TaskQueue;
use super::shared::{self, Layout};
use super::slab::Slab;
use super::zygote::{Report, Zygote, ZygoteExit};
use crate::error::{Error, OsError, Result};
use crate::ring::{Receiver, Sender};
use crate::status::ExitStatus;
use crate::sys::{self, ParentOnlyFd};
use crate::wire::{DecodeError, Wire};

/// The most a slot's result buffer keeps between messages (bigger results
/// are rare; their buffer is freed after each).
const RESULT_BUF_KEPT: usize = 1 << 20;
/// Batches a worker may hold at once: one running, one ready behind it, so
/// it never waits for the parent between batches...
const BATCHES_IN_FLIGHT: usize = 2;
/// ...and more while its batches take less than [`QUICK_BATCH`] each: then
/// a round trip to the parent costs more than a batch, and two are not
/// enough to keep it busy. (Slow batches stay at two, so that work queued
/// behind a slow task on one worker does not wait while another is idle.)
const QUICK_BATCHES_IN_FLIGHT: usize = 4;
const QUICK_BATCH: Duration = Duration::from_micros(500);
/// Fresh workers of one slot that may die in a row before running any pool
/// code (killed from outside) before the next one's death fails a task.
const EARLY_DEATHS_LIMIT: u32 = 3;
/// How often a finished task whose result died with its worker runs again
/// before it fails with `WorkerDied` instead.
const MAX_RERUNS: u8 = 1;
/// A submission of at least this many tasks gets the buffers the last big
/// `map` gave back (see [`Engine::recycle`])...
const RECYCLE_FROM_TASKS: usize = 4096;
/// ...which the pool keeps while they take at most this many bytes.
const MAX_SPARE_BYTES: usize = 64 << 20;
/// How long to wait before asking the zygote again after a failed fork.
const SPAWN_RETRY: Duration = Duration::from_millis(100);

/// A run of consecutive tasks of one submission, for one function, as the
/// task message that carries it.
#[derive(Debug)]
pub(crate) struct Batch {
    pub sub: u64,
    pub first: u32,
    pub count: u32,
    pub call: Call,
    /// The whole task message: header (with `count`) and the arguments.
    pub msg: Vec<u8>,
    /// How often these tasks ran to the end on a worker that then died
    /// before their results reached us (see [`MAX_RERUNS`]).
    pub reruns: u8,
}

impl Batch {
    /// Splits off the tasks from `at` on (re-queueing after a death, or
    /// honouring `max_tasks_per_child`).
    fn split_off(&mut self, at: u32) -> Batch {
        let offset = message::arg_offset(self.call, &self.msg, at);
        let mut msg = Vec::with_capacity(message::BATCH_HEADER_LEN + self.msg.len() - offset);
        message::begin_batch(self.call, &mut msg);
        msg.extend_from_slice(&self.msg[offset..]);
        message::set_batch_count(&mut msg, self.count - at);
        let tail = Batch {
            sub: self.sub,
            first: self.first + at,
            count: self.count - at,
            call: self.call,
            msg,
            reruns: self.reruns,
        };
        self.msg.truncate(offset);
        self.count = at;
        message::set_batch_count(&mut self.msg, at);
        tail
    }
}

/// Encodes one submission's arguments into task messages of at most
/// `chunk` tasks. Runs outside the engine: the caller's iterator and `Wire`
/// code run with no pool state borrowed, so they may use the pool
/// themselves (`pool.imap(f, pool.imap(g, items))`).
#[derive(Debug)]
pub(crate) struct BatchEncoder {
    sub: u64,
    call: Call,
    chunk: u32,
    /// A batch travels as task messages of at most a quarter of the ring,
    /// so a worker starts on the first tasks of a big chunk while the rest
    /// stream in behind them. (Chunks are a cost knob, not a promise of
    /// which worker runs what.)
    max_msg: usize,
    /// Tasks encoded so far.
    count: u32,
    /// Bytes the last argument took (with its length, if it has one), to
    /// size the next message at once.
    arg_len: usize,
    batch: Option<Batch>,
}

impl BatchEncoder {
    pub(crate) fn new(sub: u64, call: Call, chunk: usize, ring_capacity: usize) -> BatchEncoder {
        let chunk = chunk.clamp(1, u32::MAX as usize / 2) as u32;
        BatchEncoder { sub, call, chunk, max_msg: ring_capacity / 4, count: 0, arg_len: 20, batch: None }
    }

    /// The submission the batches are for.
    pub(crate) fn sub(&self) -> u64 {
        self.sub
    }

    /// The width of each argument, if they travel as a column of at least
    /// one byte each (then use [`BatchEncoder::push_column`]).
    pub(crate) fn column_width(&self) -> Option<usize> {
        self.call.arg_width().filter(|&w| w > 0)
    }

    /// Tasks encoded so far.
    pub(crate) fn count(&self) -> usize {
        self.count as usize
    }

    /// Encodes one more argument (`more`: how many the input says follow,
    /// asked only when a batch starts). Returns whether the batch is full:
    /// then [`BatchEncoder::finish`] hands it over. Small and inlined: it
    /// runs once per task.
    #[inline]
    pub(crate) fn push<A: Wire>(&mut self, arg: &A, more: impl FnOnce() -> usize) -> Result<bool> {
        // Tasks are numbered by `u32` within a call.
        if self.count == u32::MAX {
            return Err(too_many_tasks());
        }
        if self.batch.is_none() {
            self.batch = Some(self.start_batch(more()));
        }
        let Some(b) = self.batch.as_mut() else { return Ok(false) };
        let before = b.msg.len();
        message::push_arg(self.call, &mut b.msg, arg)?;
        self.arg_len = b.msg.len() - before;
        b.count += 1;
        self.count += 1;
        Ok(b.count == self.chunk || b.msg.len() >= self.max_msg)
    }

    /// Encodes arguments of a fixed width (the call's arguments travel as a
    /// column) from `items` until the batch is full or `items` ends, in one
    /// tight loop: a trivial task's argument costs a copy of its bytes.
    /// Returns whether the batch is full, and whether `items` ended.
    pub(crate) fn push_column<A: Wire>(
        &mut self,
        items: &mut impl Iterator<Item = A>,
    ) -> Result<(bool, bool)> {
        // The width as a constant of `A` (the call's is the same number):
        // the compiler then sees each built-in value's length check pass.
        let width = match A::FIXED_LEN {
            Some(width) if self.column_width() == Some(width) => width,
            _ => return Err(Error::InvalidState("a column of arguments without their fixed width")),
        };
        // No batch for an input that has ended (a message costs a buffer),
        // and no error for one that ends at the most tasks a call may have.
        let Some(first) = items.next() else { return Ok((false, true)) };
        if self.count == u32::MAX {
            return Err(too_many_tasks());
        }
        if self.batch.is_none() {
            self.batch = Some(self.start_batch(items.size_hint().0));
        }
        let Some(b) = self.batch.as_mut() else { return Ok((false, true)) };
        // Up to the chunk, the task count's limit, and the first argument
        // that takes the message to `max_msg` (as `push` does).
        let to_max_msg = self.max_msg.saturating_sub(b.msg.len()).div_ceil(width.max(1)).max(1);
        let room =
            (self.chunk - b.count).min(u32::MAX - self.count).min(to_max_msg.min(u32::MAX as usize) as u32);
        // A local vector: its length stays in a register through the loop.
        let mut msg = std::mem::take(&mut b.msg);
        msg.reserve(room as usize * width);
        // Every value's length is checked, not their sum: two wrong ones
        // can add up, and would shift every argument after them. (For the
        // crate's own types the compiler sees the length and drops it.)
        let mut at = msg.len();
        first.encode(&mut msg);
        let mut fits = msg.len() == at + width;
        let mut n = 1;
        let mut ended = false;
        while fits && n < room {
            let Some(arg) = items.next() else {
                ended = true;
                break;
            };
            at = msg.len();
            arg.encode(&mut msg);
            fits = msg.len() == at + width;
            n += 1;
        }
        b.msg = msg;
        if !fits {
            return Err(Error::InvalidArgument(format!(
                "a value of type {} did not encode to the {width} bytes its Wire::FIXED_LEN says",
                std::any::type_name::<A>(),
            )));
        }
        self.arg_len = width;
        b.count += n;
        self.count += n;
        Ok((b.count == self.chunk || b.msg.len() >= self.max_msg || self.count == u32::MAX, ended))
    }

    /// A new batch whose first task is the next one, sized for `more` more.
    fn start_batch(&self, more: usize) -> Batch {
        let tasks = more.saturating_add(1).min(self.chunk as usize);
        let expected = tasks.saturating_mul(self.arg_len);
        // A message ends once past `max_msg`: room for that and one more
        // argument, unless the arguments are big (then it grows).
        let mut msg = Vec::with_capacity(message::BATCH_HEADER_LEN + expected.min(2 * self.max_msg));
        message::begin_batch(self.call, &mut msg);
        Batch { sub: self.sub, first: self.count, count: 0, call: self.call, msg, reruns: 0 }
    }

    /// The last, partly filled batch.
    pub(crate) fn finish(&mut self) -> Option<Batch> {
        self.batch.take()
    }
}

/// A task's state in its submission.
const PENDING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// Where a submission keeps its results' bytes.
#[derive(Debug)]
enum Store {
    /// No result yet.
    Empty,
    /// Every result so far has `stride` bytes: task i's are at
    /// `i * stride` (the common case: numbers). One byte of state per task
    /// and the results themselves, nothing else: a million-task `map`
    /// touches as little fresh memory as it can.
    Fixed { stride: usize },
    /// Results of different sizes: task i's are at `spans[i]` (start, len).
    Spans { spans: Vec<(usize, usize)> },
}

/// The results of one call (`map`, one `apply_async`, one `imap` chunk).
#[derive(Debug)]
pub(crate) struct Submission {
    /// Position of the first task in the caller's input (for messages).
    base_index: u64,
    /// Per task: PENDING, DONE or FAILED.
    states: Vec<u8>,
    /// How many tasks the input said it holds (capped): what the result
    /// store is sized for at once.
    expected: usize,
    store: Store,
    bytes: Vec<u8>,
    errors: HashMap<u32, Error>,
    remaining: usize,
    /// The caller no longer wants these results (dropped handle).
    abandoned: bool,
    /// Its caller is still encoding and queueing its tasks...
    filling: bool,
    /// ...on this thread (when its input is the caller's own iterator).
    filler: Option<std::thread::ThreadId>,
    /// Who to wake when results arrive (see [`Waiter`]), and whether each
    /// wants every result (`imap`) or only the last one.
    waiters: Vec<(Waiter, bool)>,
}

/// A caller thread that waits for the pool: its handle, and a flag raised
/// by whoever wakes it, so that it can yield the CPU for a while watching
/// the flag before it parks (see `Core::wait_until`).
#[derive(Debug)]
pub(crate) struct Sleeper {
    thread: Thread,
    /// Raised (Release) before the thread is unparked; lowered by the
    /// thread itself, under the engine lock, before it waits.
    pub woken: AtomicBool,
}

impl Sleeper {
    /// The calling thread's (one per thread, made on first use; a new one
    /// while the thread's locals are being destroyed, for a pool called
    /// from a thread-local's destructor).
    pub(crate) fn current() -> Arc<Sleeper> {
        fn new() -> Arc<Sleeper> {
            Arc::new(Sleeper { thread: std::thread::current(), woken: AtomicBool::new(false) })
        }
        thread_local! {
            static ME: Arc<Sleeper> = new();
        }
        ME.try_with(Arc::clone).unwrap_or_else(|_| new())
    }

    pub(crate) fn id(&self) -> ThreadId {
        self.thread.id()
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// A thread parked until a submission has results, or a future's waker.
#[derive(Debug)]
pub(crate) enum Waiter {
    Thread(Arc<Sleeper>),
    Task(Waker),
}

impl Waiter {
    /// Wakes it. Called with the pool's lock released: a waker may run an
    /// executor's code, which may call the pool.
    pub(crate) fn wake(self) {
        match self {
            Waiter::Thread(t) => t.wake(),
            Waiter::Task(w) => w.wake(),
        }
    }

    fn same(&self, other: &Waiter) -> bool {
        match (self, other) {
            (Waiter::Thread(a), Waiter::Thread(b)) => a.id() == b.id(),
            (Waiter::Task(a), Waiter::Task(b)) => a.will_wake(b),
            _ => false,
        }
    }
}

impl Submission {
    fn new(base_index: u64, capacity: usize) -> Submission {
        Submission {
            base_index,
            states: Vec::with_capacity(capacity),
            expected: capacity,
            store: Store::Empty,
            bytes: Vec::new(),
            errors: HashMap::new(),
            remaining: 0,
            abandoned: false,
            filling: true,
            filler: None,
            waiters: Vec::new(),
        }
    }

    /// Takes over `old`'s buffers (emptied), keeping the bigger of each.
    fn reuse(&mut self, mut old: Submission) {
        for (mine, theirs) in [(&mut self.states, &mut old.states), (&mut self.bytes, &mut old.bytes)] {
            if theirs.capacity() > mine.capacity() {
                theirs.clear();
                std::mem::swap(mine, theirs);
            }
        }
    }

    /// Registers `waiter` for this submission's next result (`any`) or its
    /// last; once per waiter (a thread parks again and again, a future is
    /// polled again and again).
    pub(crate) fn add_waiter(&mut self, waiter: Waiter, any: bool) {
        // A submission has one future at most (its `AsyncResult`): its
        // latest waker replaces the one it gave before.
        if let Waiter::Task(_) = waiter {
            self.waiters.retain(|(w, _)| !matches!(w, Waiter::Task(_)));
        }
        match self.waiters.iter_mut().find(|(w, _)| w.same(&waiter)) {
            Some(entry) => entry.1 |= any,
            None => self.waiters.push((waiter, any)),
        }
    }

    /// Moves the waiters due now (after a result was filed) to `out`.
    fn take_due_waiters(&mut self, out: &mut Vec<Waiter>) {
        if self.waiters.is_empty() {
            return;
        }
        if self.is_complete() {
            out.extend(self.waiters.drain(..).map(|(w, _)| w));
        } else {
            let (due, wait): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|(_, any)| *any);
            self.waiters = wait;
            out.extend(due.into_iter().map(|(w, _)| w));
        }
    }

    /// Makes room for tasks up to `len` (they are being queued).
    fn grow(&mut self, len: usize) {
        if len > self.states.len() {
            self.remaining += len - self.states.len();
            self.states.resize(len, PENDING);
        }
    }

    /// The outcome of task `i`, if it has one.
    pub(crate) fn get(&self, i: u32) -> Option<Result<&[u8]>> {
        let i = i as usize;
        match self.states[i] {
            PENDING => None,
            FAILED => Some(Err(self.errors.get(&(i as u32)).cloned().unwrap_or(Error::Closed))),
            _ => Some(Ok(match &self.store {
                Store::Fixed { stride } => &self.bytes[i * stride..(i + 1) * stride],
                Store::Spans { spans } => &self.bytes[spans[i].0..spans[i].0 + spans[i].1],
                Store::Empty => &[],
            })),
        }
    }

    /// Every result's bytes, `stride` each in task order, if every task
    /// returned a value and all have one width: a whole `map` of numbers
    /// is decoded from this, with no look-up per task.
    pub(crate) fn fixed_results(&self) -> Option<(&[u8], usize)> {
        match self.store {
            Store::Fixed { stride } if self.remaining == 0 && !self.states.contains(&FAILED) => {
                let len = self.states.len().checked_mul(stride)?;
                Some((self.bytes.get(..len)?, stride))
            }
            _ => None,
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// Files task `i`'s outcome; a second outcome for the same task (which
    /// the engine never produces) is ignored.
    fn set(&mut self, i: u32, outcome: Result<&[u8]>) {
        let i = i as usize;
        if self.states[i] != PENDING {
            return;
        }
        self.remaining -= 1;
        let bytes = match outcome {
            Ok(bytes) => bytes,
            Err(e) => {
                self.states[i] = FAILED;
                self.errors.insert(i as u32, e);
                return;
            }
        };
        self.states[i] = DONE;
        if let Store::Empty = self.store {
            self.store = Store::Fixed { stride: bytes.len() };
        }
        match &mut self.store {
            Store::Fixed { stride } if *stride == bytes.len() => {
                let (at, stride) = (i * *stride, *stride);
                self.make_room(i + 1, stride);
                self.bytes[at..at + stride].copy_from_slice(bytes);
            }
            Store::Fixed { stride } => {
                // A result of another size: keep what is there where it is,
                // and from now on say where each result lies.
                let stride = *stride;
                let mut spans = vec![(0, 0); self.states.len()];
                for (j, span) in spans.iter_mut().enumerate() {
                    if self.states[j] == DONE && j != i {
                        *span = (j * stride, stride);
                    }
                }
                self.store = Store::Spans { spans };
                self.set_span(i, bytes);
            }
            Store::Spans { .. } => self.set_span(i, bytes),
            Store::Empty => {}
        }
    }

    /// Files the values of tasks `i..i + n`, all of `width` bytes, which
    /// all returned: one copy while every result so far has that width.
    fn set_run(&mut self, i: u32, n: u32, values: &[u8], width: usize) {
        let (start, end) = (i as usize, i as usize + n as usize);
        let fresh = self.states[start..end].iter().all(|&s| s == PENDING);
        if let (true, Store::Empty | Store::Fixed { .. }) = (fresh, &self.store) {
            if let Store::Empty = self.store {
                self.store = Store::Fixed { stride: width };
            }
            if let Store::Fixed { stride } = self.store {
                if stride == width {
                    self.make_room(end, width);
                    self.bytes[start * width..end * width].copy_from_slice(values);
                    self.states[start..end].fill(DONE);
                    self.remaining -= n as usize;
                    return;
                }
            }
        }
        for j in 0..n as usize {
            self.set(i + j as u32, Ok(&values[j * width..(j + 1) * width]));
        }
    }

    /// Makes room in a `Fixed` store for the results of tasks `..end`: for
    /// every task we expect (the input's length hint, not the capacity of
    /// buffers reused from a bigger call) at once, so there is no regrowth
    /// while the input streams.
    fn make_room(&mut self, end: usize, stride: usize) {
        if self.bytes.len() < end * stride {
            let want = self.expected.max(self.states.len()).saturating_mul(stride);
            self.bytes.reserve_exact(want.saturating_sub(self.bytes.len()));
            self.bytes.resize(self.states.len() * stride, 0);
        }
    }

    fn set_span(&mut self, i: usize, bytes: &[u8]) {
        if let Store::Spans { spans } = &mut self.store {
            if spans.len() < self.states.len() {
                spans.resize(self.states.len(), (0, 0));
            }
            spans[i] = (self.bytes.len(), bytes.len());
            self.bytes.extend_from_slice(bytes);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Asked the zygote for a worker; no answer yet.
    Spawning,
    Live {
        pid: i32,
    },
    /// No worker, none asked for (closed pool with nothing left, or a
    /// failed fork waiting for a retry).
    Empty,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    /// Our ends of the slot's rings: tasks out, results in.
    tasks: Sender,
    results: Receiver,
    /// Batches sent or being sent, oldest first. The worker answers their
    /// tasks in exactly this order.
    inflight: VecDeque<Batch>,
    /// Results received for `inflight[0]`.
    head_done: u32,
    /// Since when `inflight[0]` has been the batch the worker works on (as
    /// far as the parent can tell), and whether the last one was quick.
    head_since: Instant,
    quick: bool,
    /// Index into `inflight` of the batch being written, and bytes of it
    /// already in the ring.
    sending: usize,
    sent_bytes: usize,
    /// Tasks handed to this worker (for max_tasks_per_child).
    assigned: usize,
    /// Results received from this worker (compared with its progress word
    /// when it dies).
    received: u64,
    /// Set when we killed the worker (its ring went corrupt): the outcome
    /// of the task it runs. No more work goes to it.
    kill_cause: Option<Error>,
    exit_sent: bool,
    retry_spawn_at: Option<Instant>,
    result_buf: Vec<u8>,
    /// Workers of this slot in a row that died before running any pool
    /// code (see [`Engine::on_death`]).
    early_deaths: u32,
}

impl Slot {
    fn new(layout: &Layout, k: usize, max_message: usize) -> Result<Slot> {
        let (tasks, _) = layout.task_channel(k)?;
        let (_, mut results) = layout.result_channel(k)?;
        results.set_max_message(max_message);
        Ok(Slot {
            state: SlotState::Spawning,
            tasks,
            results,
            inflight: VecDeque::new(),
            head_done: 0,
            head_since: Instant::now(),
            quick: false,
            sending: 0,
            sent_bytes: 0,
            assigned: 0,
            received: 0,
            kill_cause: None,
            exit_sent: false,
            retry_spawn_at: None,
            result_buf: Vec::new(),
            early_deaths: 0,
        })
    }

    fn is_live(&self) -> bool {
        matches!(self.state, SlotState::Live { .. })
    }
}

/// Configuration the parent needs (task timeouts are the zygote's).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_tasks: Option<usize>,
    /// Most memory one decoded result may take, and (with a ring's worth of
    /// slack for the records packed beside it) the longest result message
    /// a worker may send.
    pub max_result: usize,
}

impl Limits {
    fn max_message(&self, ring_capacity: usize) -> usize {
        self.max_result.saturating_add(ring_capacity)
    }
}

/// The parent's state.
#[derive(Debug)]
pub(crate) struct Engine {
    pub layout: Layout,
    worker_bells: Vec<ParentOnlyFd>,
    zygote: Zygote,
    slots: Vec<Slot>,
    queue: TaskQueue,
    subs: Slab<Submission>,
    /// A big submission's buffers, given back for the next one: fresh
    /// memory costs a page fault per 4 KiB, as much as the copying it holds.
    spare: Option<Submission>,
    limits: Limits,
    pub closed: bool,
    pub finished: bool,
    /// Why the pool ended on its own (its zygote died): what every later
    /// call gets.
    pub broken: Option<Error>,
    reports: Vec<Report>,
    /// Read the report pipe at the next step even if the zygote's flag is
    /// down: our poll saw the pipe readable or hung up (EOF sets no flag).
    pub reports_due: bool,
    /// A thread holds the pump role: it alone reads the rings and the
    /// report pipe, and it sleeps with the lock released (see `driver`).
    pub pumping: bool,
    /// ...and that thread is the pool's driver, not a caller.
    pub driver_pumps: bool,
    /// Which thread pumps (a waker the pool runs must not wait on it).
    pub pumper: Option<std::thread::ThreadId>,
    /// Counts the calls that show a caller is active: waits, a big
    /// input's batches, `apply_async` (the driver waits for it to stand
    /// still before it pumps itself, and leaves the role when it moves).
    pub call_epoch: u64,
    /// When `apply_async` was last called, and how many calls in a row
    /// came close together (see `driver::TIGHT_CALLS`).
    pub last_unattended: Option<Instant>,
    pub tight_calls: u32,
    /// The latest change of `call_epoch` came from such a tight loop (the
    /// driver then looks again sooner, see `driver::TIGHT_RECHECK`).
    pub tight_run_active: bool,
    /// A future waits for a result: the driver must pump, not idle.
    pub futures_waiting: bool,
    /// The driver sleeps until nudged (no work): `apply_async` nudges it.
    pub driver_idle: bool,
    /// Submissions still being filled by their callers (`join` waits for
    /// them: their tasks were accepted before `close`).
    filling: usize,
    /// `imap`s started before `close` whose input is not all sent yet,
    /// by ticket, with the thread that last sent from each: they may go
    /// on after `close`, as in Python, and `join` waits for them.
    admitted: Vec<(u64, std::thread::ThreadId)>,
    next_ticket: u64,
    /// A state change the pumping thread must look at (a submission done
    /// filling, which `join` may wait for; a caller submitting while the
    /// driver pumps): `Locked`'s drop nudges it.
    pub nudge_pumper: bool,
    /// The zygote was ordered to end and is being waited for, outside the
    /// lock, by the thread that holds its `ZygoteExit`.
    pub zygote_ending: bool,
    /// The report pipe read end of file (or a request EPIPE): the zygote
    /// has died; the next reading of reports ends the pool.
    zygote_gone: bool,
    /// Callers parked until the pump role is free or their results come.
    pub parked: Vec<Arc<Sleeper>>,
    /// Waiters whose results were filed under the lock: woken once it is
    /// released (see `driver::Locked`).
    pub to_wake: Vec<Waiter>,
}

impl Engine {
    pub(crate) fn new(
        layout: Layout,
        worker_bells: Vec<ParentOnlyFd>,
        zygote: Zygote,
        limits: Limits,
    ) -> Result<Engine> {
        let max_message = limits.max_message(layout.ring_capacity());
        let slots = (0..worker_bells.len())
            .map(|k| Slot::new(&layout, k, max_message))
            .collect::<Result<Vec<_>>>()?;
        Ok(Engine {
            layout,
            worker_bells,
            zygote,
            slots,
            queue: TaskQueue::default(),
            subs: Slab::new(),
            spare: None,
            limits,
            closed: false,
            finished: false,
            broken: None,
            reports: Vec::new(),
            reports_due: true,
            pumping: false,
            driver_pumps: false,
            pumper: None,
            call_epoch: 0,
            last_unattended: None,
            tight_calls: 0,
            tight_run_active: false,
            futures_waiting: false,
            driver_idle: false,
            filling: 0,
            admitted: Vec::new(),
            next_ticket: 0,
            nudge_pumper: false,
            zygote_ending: false,
            zygote_gone: false,
            parked: Vec::new(),
            to_wake: Vec::new(),
        })
    }

    /// Asks the zygote for the first workers and waits until each is
    /// running. A failed fork fails the whole start, naming `fork`; the
    /// caller drops the engine, which kills and reaps what did start.
    pub(crate) fn start_workers(&mut self) -> Result<()> {
        for slot in 0..self.slots.len() {
            self.zygote.spawn(slot)?;
        }
        while self.spawning() {
            sys::poll(&[(self.zygote.report_fd(), true, false)], None)?;
            let mut reports = Vec::new();
            let alive = self.zygote.read_reports(&mut reports)?;
            for rep in reports {
                match rep {
                    Report::Spawned { slot, pid } => self.slots[slot].state = SlotState::Live { pid },
                    Report::SpawnFailed { errno, .. } => {
                        return Err(Error::Os(OsError { call: "fork", pid: None, errno }))
                    }
                    Report::Died { slot, pid, status, .. } => {
                        // Died before doing anything (its initializer
                        // panicked, say): report it as such.
                        self.slots[slot].state = SlotState::Empty;
                        return Err(Error::died(pid, status, None));
                    }
                }
            }
            if !alive {
                return Err(self.zygote.reap_dead()?);
            }
        }
        Ok(())
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        if self.finished {
            return Vec::new();
        }
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Live { pid } => Some(pid),
                _ => None,
            })
            .collect()
    }

    /// Whether a worker has been asked for and not yet reported.
    pub(crate) fn spawning(&self) -> bool {
        self.slots.iter().any(|s| s.state == SlotState::Spawning)
    }

    /// Opens a new submission whose first task is number `base_index` of
    /// the caller's input; `hint` tasks are expected. Its tasks come from a
    /// [`BatchEncoder`] through [`Engine::queue`] and [`Engine::end_fill`].
    pub(crate) fn open(&mut self, base_index: u64, hint: usize, ticket: Option<u64>) -> Result<u64> {
        if let Some(err) = &self.broken {
            return Err(err.clone());
        }
        let admitted = ticket.and_then(|t| self.admitted.iter_mut().find(|(a, _)| *a == t));
        if self.finished || (self.closed && admitted.is_none()) {
            return Err(Error::Closed);
        }
        if let Some((_, thread)) = admitted {
            *thread = std::thread::current().id();
        }
        self.filling += 1;
        // The length hint sizes the result store up front; capped, as a
        // hint is only a hint (and `0..u64::MAX` has a huge one).
        let mut submission = Submission::new(base_index, hint.min(1 << 24));
        if let Some(spare) = self.spare.take_if(|_| hint >= RECYCLE_FROM_TASKS) {
            submission.reuse(spare);
        }
        let Some(sub) = self.subs.insert(submission) else {
            self.filling -= 1;
            return Err(Error::InvalidState("2^32 submissions open at once"));
        };
        Ok(sub)
    }

    /// Takes back the buffers of a submission whose results were read, for
    /// the next big one (the bigger, within [`MAX_SPARE_BYTES`]).
    pub(crate) fn recycle(&mut self, done: Submission) {
        let held = |s: &Submission| s.states.capacity() + s.bytes.capacity();
        if held(&done) <= MAX_SPARE_BYTES && self.spare.as_ref().is_none_or(|s| held(s) < held(&done)) {
            self.spare = Some(done);
        }
    }

    /// Queues one finished batch and hands it out, so that workers start
    /// on the first batches while later ones are being encoded.
    pub(crate) fn queue(&mut self, batch: Batch) -> Result<()> {
        // A caller encoding a big input, about to wait for it: the driver
        // keeps out of its way (see `driver::GRACE`).
        self.call_epoch = self.call_epoch.wrapping_add(1);
        self.tight_run_active = false;
        self.queue_batch(Some(batch));
        self.step_unless_pumped()
    }

    /// A step if no thread pumps (results in as well as tasks out, so
    /// workers whose result rings filled up go on), else a dispatch.
    pub(crate) fn step_unless_pumped(&mut self) -> Result<()> {
        if self.pumping {
            return self.dispatch();
        }
        self.pumping = true;
        let stepped = self.step();
        self.pumping = false;
        stepped
    }

    /// Queues the last batch of a submission (if any) and dispatches.
    pub(crate) fn end_fill(&mut self, sub: u64, batch: Option<Batch>) -> Result<()> {
        self.queue_batch(batch);
        self.done_filling(sub);
        self.dispatch()
    }

    /// Forgets a submission whose filling failed: its queued tasks still
    /// run, and their results find no one.
    pub(crate) fn cancel(&mut self, sub: u64) {
        self.done_filling(sub);
        self.subs.remove(sub);
    }

    /// Queues a finished task message, first giving its tasks their
    /// places in the submission (results may come back at once).
    fn queue_batch(&mut self, batch: Option<Batch>) {
        if let Some(mut b) = batch {
            message::set_batch_count(&mut b.msg, b.count);
            if let Some(s) = self.subs.get_mut(b.sub) {
                s.grow((b.first + b.count) as usize);
            }
            if self.finished {
                // The pool ended while the caller was encoding: no worker
                // will take these tasks.
                let err = self.broken.clone().unwrap_or(Error::Closed);
                for i in b.first..b.first + b.count {
                    self.file(b.sub, i, Err(err.clone()));
                }
                return;
            }
            self.queue.push_back(b);
        }
    }

    /// Most memory one decoded result may take (`PoolBuilder::max_result_size`).
    pub(crate) fn max_result(&self) -> usize {
        self.limits.max_result
    }

    pub(crate) fn submission(&self, sub: u64) -> Option<&Submission> {
        self.subs.get(sub)
    }

    /// Forgets a submission; results still to come are dropped on arrival.
    pub(crate) fn release(&mut self, sub: u64) {
        if let Some(s) = self.subs.get_mut(sub) {
            if s.is_complete() {
                self.subs.remove(sub);
            } else {
                s.abandoned = true;
                // Nobody can wait on it any more: let go of the wakers (an
                // executor's task kept alive, and woken, for nothing).
                s.waiters.clear();
            }
        }
    }

    /// Whether a caller is still filling a submission, or an `imap`
    /// started before `close` has input left to send (`join` waits).
    pub(crate) fn filling(&self) -> bool {
        self.filling > 0 || !self.admitted.is_empty()
    }

    /// A ticket for an `imap` started now, while the pool takes work: its
    /// later batches are accepted after `close` too. `None` otherwise.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        if self.closed || self.finished || self.broken.is_some() {
            return None;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.admitted.push((ticket, std::thread::current().id()));
        Some(ticket)
    }

    /// The `imap` of `ticket` has sent all its input, or was dropped.
    pub(crate) fn dismiss(&mut self, ticket: u64) {
        self.admitted.retain(|(t, _)| *t != ticket);
        // A `join` may wait (pumping) for the last one.
        self.nudge_pumper |= self.admitted.is_empty() && self.filling == 0 && self.closed;
    }

    /// Whether `thread` last sent from an `imap` with input left (a `join`
    /// there would wait for itself).
    pub(crate) fn holds_admitted(&self, thread: std::thread::ThreadId) -> bool {
        self.admitted.iter().any(|(_, t)| *t == thread)
    }

    /// Submission `sub` has all its tasks (once; a cancelled one too).
    fn done_filling(&mut self, sub: u64) {
        if let Some(s) = self.subs.get_mut(sub) {
            if std::mem::take(&mut s.filling) {
                self.filling -= 1;
                // A `join` may wait (pumping) for the last one.
                self.nudge_pumper |= self.filling == 0 && self.admitted.is_empty() && self.closed;
            }
        }
    }

    /// Whether `thread` is filling a submission now (a `join` from inside
    /// a `map`'s own input would wait for itself).
    pub(crate) fn is_filling(&self, thread: std::thread::ThreadId) -> bool {
        self.filling > 0 && self.subs.values().any(|s| s.filling && s.filler == Some(thread))
    }

    /// Records which thread fills submission `sub`.
    pub(crate) fn set_filler(&mut self, sub: u64, thread: std::thread::ThreadId) {
        if let Some(s) = self.subs.get_mut(sub) {
            s.filler = Some(thread);
        }
    }

    /// Whether every queued and in-flight task has an outcome.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.inflight.is_empty())
    }

    /// Whether the pump role has anything to do now, or soon: tasks queued
    /// or in flight, a worker asked for, a timer set, reports to read.
    pub(crate) fn has_work(&self) -> bool {
        !self.finished && (!self.idle() || self.spawning() || self.reports_due || self.next_timer().is_some())
    }

    /// Whether a step would find something to do in the rings: results to
    /// read, or task bytes waiting for room that has appeared. Cheap: what
    /// the pumping thread polls while it spins.
    pub(crate) fn ready_to_step(&self) -> bool {
        self.slots.iter().any(|s| {
            // A slot being killed waits for its death report: its ring may
            // say "ready" for ever.
            s.is_live()
                && s.kill_cause.is_none()
                && (s.results.has_data() || (s.sending < s.inflight.len() && s.tasks.has_room()))
        })
    }

    /// Why nothing can move any more, once the pool has ended.
    pub(crate) fn ended(&self) -> Option<Error> {
        self.finished.then(|| self.broken.clone().unwrap_or(Error::Closed))
    }

    /// Tasks submitted and not yet handed to a worker.
    pub(crate) fn queued_tasks(&self) -> usize {
        self.queue.tasks()
    }

    pub(crate) fn submission_mut(&mut self, sub: u64) -> Option<&mut Submission> {
        self.subs.get_mut(sub)
    }

    /// Hands over a complete submission's results (the caller decodes them
    /// with the lock released).
    pub(crate) fn take_complete(&mut self, sub: u64) -> Option<Submission> {
        if self.subs.get(sub)?.is_complete() {
            self.subs.remove(sub)
        } else {
            None
        }
    }

    /// The report pipe, to watch while idle.
    pub(crate) fn report_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.zygote.report_fd()
    }

    /// [`Engine::step`], reading the report pipe whatever the zygote's flag
    /// says (it sets none when it dies): for calls that show the caller the
    /// pool's state (`pids`, `ready`).
    pub(crate) fn refresh(&mut self) -> Result<()> {
        self.reports_due = true;
        self.step()
    }

    /// One non-blocking round: results in, reports in, timers, work out.
    /// Only for the thread that holds the pump role.
    pub(crate) fn step(&mut self) -> Result<()> {
        debug_assert!(self.pumping, "a step without the pump role");
        for k in 0..self.slots.len() {
            self.collect(k, false)?;
        }
        self.handle_reports()?;
        self.check_timers()?;
        self.dispatch()
    }

    /// Takes slot `k`'s results: with `drain`, all its ring holds (a dead
    /// worker's); otherwise a bounded share (see `Receiver::try_recv_some`).
    fn collect(&mut self, k: usize, drain: bool) -> Result<()> {
        loop {
            let slot = &mut self.slots[k];
            // In a step, a bounded look (a worker that streams without end
            // must not hold the others up); for a dead worker, all it left.
            let took = if drain {
                slot.results.try_recv_into(&mut slot.result_buf)
            } else {
                slot.results.try_recv_some(&mut slot.result_buf)
            };
            let filed = match took {
                Ok(false) => break,
                Ok(true) => {
                    let mut msg = std::mem::take(&mut slot.result_buf);
                    let filed = self.deliver_all(k, &msg);
                    // Kept for the next message, unless one big result
                    // grew it: that memory goes back now, not with the pool.
                    if msg.capacity() > RESULT_BUF_KEPT {
                        msg = Vec::new();
                    }
                    self.slots[k].result_buf = msg;
                    filed
                }
                Err(Error::Decode(e)) => Err(e),
                Err(e) => return Err(e),
            };
            if let Err(e) = filed {
                // The worker and we no longer agree on what its bytes mean:
                // end it; the task it runs gets the decode error.
                self.kill_slot(k, Error::Decode(e))?;
                break;
            }
        }
        // Taking results (whole messages, or fragments of one bigger than
        // the ring) freed room a worker may be asleep waiting for.
        self.wake_worker(k);
        Ok(())
    }

    /// Files every record of one result message against slot `k`'s tasks,
    /// in order. The submission is looked up once per batch, not per task:
    /// a message may carry a thousand results.
    fn deliver_all(&mut self, k: usize, msg: &[u8]) -> std::result::Result<(), DecodeError> {
        let mut records = message::result_records(msg).peekable();
        if records.peek().is_none() {
            // A worker sends a message only with results in it: an empty
            // one (a zeroed ring reads as a run of them) would file
            // nothing, and a stream of them would hold the parent here.
            return Err(DecodeError::new("a result message with no result"));
        }
        while records.peek().is_some() {
            let slot = &mut self.slots[k];
            let Some(head) = slot.inflight.front() else {
                return Err(DecodeError::new("a result for a task that was never sent"));
            };
            let (sub, first, count) = (head.sub, head.first, head.count);
            let width = head.call.result_width();
            let mut submission = self.subs.get_mut(sub);
            while slot.head_done < count {
                let Some(record) = records.next() else { break };
                let (tag, payload) = record?;
                // A record the worker marked corrupt, or an unknown tag: the
                // whole message is suspect (the worker is killed).
                let outcome = match ResultTag::from_byte(tag) {
                    Some(ResultTag::Corrupt) | None => return Err(DecodeError::new("corrupt result frame")),
                    Some(ResultTag::OkRun) => {
                        // The next `n` tasks of this batch, all returned; a
                        // run for a batch without fixed-width results, or
                        // past the batch's end, is corrupt.
                        let width = width.ok_or_else(|| DecodeError::new("corrupt result run"))?;
                        let (n, values) = message::run_values(payload, width)?;
                        if n > count - slot.head_done {
                            return Err(DecodeError::new("a result for a task that was never sent"));
                        }
                        if let Some(s) = submission.as_deref_mut() {
                            s.set_run(first + slot.head_done, n, values, width);
                        }
                        slot.head_done += n;
                        slot.received += u64::from(n);
                        continue;
                    }
                    Some(_) => crate::outcome::bytes_or_error(tag, payload),
                };
                if let Err(e) = &outcome {
                    crate::timeline::task_failed(self.zygote.pid(), k, e);
                }
                if let Some(s) = submission.as_deref_mut() {
                    s.set(first + slot.head_done, outcome);
                }
                slot.head_done += 1;
                slot.received += 1;
            }
            if slot.head_done == count {
                slot.inflight.pop_front();
                slot.head_done = 0;
                slot.sending = slot.sending.saturating_sub(1);
                let now = Instant::now();
                crate::timeline::batch_ran(self.zygote.pid(), k, slot.head_since, now, count);
                slot.quick = now.duration_since(slot.head_since) < QUICK_BATCH;
                slot.head_since = now;
            }
            if let Some(s) = submission {
                s.take_due_waiters(&mut self.to_wake);
                if s.abandoned && s.is_complete() {
                    self.subs.remove(sub);
                }
            }
        }
        Ok(())
    }

    fn file(&mut self, sub: u64, i: u32, outcome: Result<&[u8]>) {
        if let Some(s) = self.subs.get_mut(sub) {
            s.set(i, outcome);
            s.take_due_waiters(&mut self.to_wake);
            if s.abandoned && s.is_complete() {
                self.subs.remove(sub);
            }
        }
    }

    fn handle_reports(&mut self) -> Result<()> {
        if self.finished {
            // The zygote is being (or has been) waited for and reaped by
            // whoever ended the pool, who drains the pipe: reports now are
            // about workers that are gone.
            return Ok(());
        }
        // Load before swap: the word shares a cache line with the parent's
        // sleep flag, which every worker reads after each send; a write at
        // each step would bounce that line. SeqCst: pairs with the zygote's
        // store after its write, so a report it flagged is in the pipe when
        // we read it; one flagged after our read sets the word again.
        let pending = self.layout.reports_pending();
        let flagged = pending.load(Ordering::SeqCst) != 0 && pending.swap(0, Ordering::SeqCst) != 0;
        if !(flagged || std::mem::take(&mut self.reports_due)) {
            return Ok(());
        }
        let mut reports = std::mem::take(&mut self.reports);
        let alive = self.zygote.read_reports(&mut reports)?;
        // A zygote that is gone is asked for nothing more (its request
        // pipe would answer EPIPE): its last reports are still filed.
        self.zygote_gone |= !alive;
        for rep in reports.drain(..) {
            match rep {
                Report::Spawned { slot, pid } => {
                    self.slots[slot].state = SlotState::Live { pid };
                }
                Report::SpawnFailed { slot, errno } => {
                    self.slots[slot].state = SlotState::Empty;
                    self.slots[slot].retry_spawn_at = Some(Instant::now() + SPAWN_RETRY);
                    if !self.slots.iter().any(|s| s.is_live() || s.state == SlotState::Spawning) {
                        // Nobody left to run the queue: fail it, don't hang.
                        let err = Error::Os(OsError { call: "fork", pid: None, errno });
                        self.fail_queue(&err);
                    }
                }
                Report::Died { slot, pid, status, timed_out } => {
                    self.on_death(slot, pid, status, timed_out)?
                }
            }
        }
        self.reports = reports;
        if !alive && !self.finished {
            // The zygote is gone (killed from outside): the pool is over.
            // Its workers died with it (Linux: their parent-death signal);
            // elsewhere closing their bells ends them once idle.
            let err = self.zygote.reap_dead()?;
            self.fail_everything(&err);
            self.finished = true;
            self.closed = true;
            self.broken = Some(err);
            self.worker_bells.clear();
        }
        Ok(())
    }

    /// Worker `pid` of slot `k` has ended and been reaped by the zygote.
    ///
    /// Which task ends with it, from its progress word (`2 × finished`,
    /// `+ 1` while running) and the results we have: the `finished -
    /// received` tasks after the last result we got had finished but their
    /// results were still packed in the worker (they run again); the next
    /// one, if it was running, is the one that killed it, and gets
    /// `WorkerDied` (or the cause, if it was killed on purpose: `Timeout`
    /// from the zygote, `Decode` from us).
    /// A worker that dies in its initializer takes its first task with it,
    /// so a worker that can never work fails the tasks one by one instead
    /// of being replaced forever. A worker killed between tasks, or before
    /// it started (see `shared::WORKER_READY`), takes none: all its tasks
    /// run again.
    fn on_death(&mut self, k: usize, pid: i32, status: ExitStatus, timed_out: bool) -> Result<()> {
        // Results it published before dying are good: take them first.
        // (Empty first, so a corrupt ring found now signals no one: the pid
        // is reaped and may be reused.)
        self.slots[k].state = SlotState::Empty;
        self.collect(k, true)?;
        // Acquire: pairs with the worker's Release stores; its exit, the
        // zygote's waitpid and the report pipe order them before this anyway.
        let progress = self.layout.progress(k).load(Ordering::Acquire);
        let (finished, running) = (progress / 2, progress % 2 == 1);
        let lifecycle = self.layout.lifecycle(k).load(Ordering::Acquire);
        let slot = &mut self.slots[k];
        // Killed by us because its ring went corrupt: see `victim_at` below.
        let corrupted = matches!(slot.kill_cause, Some(Error::Decode(_)));
        let cause = slot.kill_cause.take().or(timed_out.then_some(Error::Timeout));
        let unsent = finished.saturating_sub(slot.received);
        // A worker killed before it ran any pool code blames nobody, but
        // not forever: fresh workers that keep dying that way (something
        // kills every new process) fail tasks one by one, like a failed
        // initializer, instead of being replaced in a loop.
        slot.early_deaths = if lifecycle == shared::WORKER_FORKED { slot.early_deaths + 1 } else { 0 };
        let guilty = running
            || cause.is_some()
            || lifecycle == shared::WORKER_INITIALIZING
            || slot.early_deaths >= EARLY_DEATHS_LIMIT;
        let mut rest: VecDeque<Batch> = std::mem::take(&mut slot.inflight);
        if let Some(head) = rest.front_mut() {
            if slot.head_done > 0 {
                *head = head.split_off(slot.head_done);
            }
        }
        // Its tasks without a result, in order: `unsent` that it finished
        // (their results died with it), then the one it ran, then the rest.
        // The words come from the worker's memory, which it may have
        // scribbled on: clamp them to the tasks it really holds.
        let pending: u64 = rest.iter().map(|b| u64::from(b.count)).sum();
        let unsent = unsent.min(pending);
        // The task to blame: the one it was running; or, when we killed it
        // for a corrupt ring between tasks (while it sent results), the last
        // one it finished, the likeliest culprit. Those before it count as
        // lost (run again once, then fail), so a task that corrupts its
        // worker cannot go round the workers for ever.
        let victim_at = (guilty && pending > 0).then(|| {
            let at = if corrupted && !running { unsent.saturating_sub(1) } else { unsent };
            at.min(pending - 1)
        });
        let lost = take_tasks(&mut rest, victim_at.unwrap_or(unsent));
        let victim = victim_at.and_then(|_| take_tasks(&mut rest, 1).pop());
        if let Some(hit) = victim {
            let index = self.subs.get(hit.sub).map_or(0, |s| s.base_index) + u64::from(hit.first);
            let err = cause.unwrap_or_else(|| Error::died(pid, status, Some(index)));
            crate::timeline::batch_cut(pid, self.slots[k].head_since, &err);
            self.file(hit.sub, hit.first, Err(err));
        }
        // Finished tasks whose results were lost run again, once: lost a
        // second time (a task that kills its worker after it returns, or
        // scribbles on its rings), they fail instead of looping for ever.
        let mut requeue = Vec::new();
        for mut batch in lost {
            if batch.reruns >= MAX_RERUNS {
                for i in batch.first..batch.first + batch.count {
                    let index = self.subs.get(batch.sub).map_or(0, |s| s.base_index) + u64::from(i);
                    self.file(batch.sub, i, Err(Error::died(pid, status, Some(index))));
                }
            } else {
                batch.reruns += 1;
                requeue.push(batch);
            }
        }
        requeue.extend(rest);
        for b in requeue.into_iter().rev() {
            self.queue.push_front(b);
        }
        let slot = &mut self.slots[k];
        slot.head_done = 0;
        slot.sending = 0;
        slot.sent_bytes = 0;
        slot.assigned = 0;
        slot.received = 0;
        slot.exit_sent = false;
        // The worker is gone: nobody else touches the slot's rings now.
        self.layout.reset_slot(k);
        let (tasks, _) = self.layout.task_channel(k)?;
        let (_, mut results) = self.layout.result_channel(k)?;
        results.set_max_message(self.limits.max_message(self.layout.ring_capacity()));
        let slot = &mut self.slots[k];
        slot.tasks = tasks;
        slot.results = results;
        self.maybe_respawn(k)
    }

    /// Replaces the worker of an empty slot when there is work it may get:
    /// the pool is open, or queued work remains after `close()`.
    fn maybe_respawn(&mut self, k: usize) -> Result<()> {
        if self.finished || self.slots[k].state != SlotState::Empty {
            return Ok(());
        }
        if self.closed && self.queue.is_empty() {
            // Nothing will ever need this slot: drop its retry timer too,
            // or the wait would wake for it at once, again and again.
            self.slots[k].retry_spawn_at = None;
            return Ok(());
        }
        if self.slots[k].retry_spawn_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        if self.zygote_gone {
            return Ok(());
        }
        self.slots[k].retry_spawn_at = None;
        self.slots[k].state = SlotState::Spawning;
        match self.zygote.spawn(k) {
            // The zygote died since its last report: the end of file on the
            // report pipe (read next) says so, for every call, as
            // `ZygoteDied`; not this write's EPIPE.
            Err(Error::Os(e)) if e.errno == libc::EPIPE => {
                self.zygote_gone = true;
                self.reports_due = true;
                Ok(())
            }
            other => other,
        }
    }

    /// Kills worker `k` (and its process group) now: its ring can no longer
    /// be trusted. The task it runs gets `cause`.
    fn kill_slot(&mut self, k: usize, cause: Error) -> Result<()> {
        let slot = &mut self.slots[k];
        if !slot.is_live() || slot.kill_cause.is_some() {
            return Ok(());
        }
        slot.kill_cause = Some(cause);
        // The zygote kills it: it reaps its workers, so it alone knows
        // whether the pid is still this worker's (we may not have read the
        // report of its death yet, and a reaped pid can be reused).
        self.zygote.kill_worker(k)
    }

    /// Retries failed forks when their time comes.
    fn check_timers(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            if self.slots[k].state == SlotState::Empty {
                self.maybe_respawn(k)?;
            }
        }
        Ok(())
    }

    /// The next instant a timer needs attention.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.slots.iter().filter(|s| s.state == SlotState::Empty).filter_map(|s| s.retry_spawn_at).min()
    }

    /// Gives back what a burst of submissions left in the table and in
    /// the queue, each once it is empty and that is due (see
    /// `slab::Burst`); otherwise, when to look again. Calls do this as they
    /// empty them; for a pool left idle after a burst, the driver does.
    pub(crate) fn give_back_burst(&mut self) -> Option<Instant> {
        [self.subs.shrink_when_due(), self.queue.shrink_when_due()].into_iter().flatten().min()
    }

    /// Hands queued batches to live workers with room, and pushes pending
    /// bytes into their task rings. Never blocks. Every idle worker gets a
    /// batch before any worker gets a second one (queued behind the one it
    /// runs, so it never waits for the parent between batches).
    ///
    /// Among workers equally free, those last seen on another CPU than
    /// this thread's come first. The thread that dispatches is the one that
    /// then spins for the results; a worker sharing its CPU runs only when
    /// that thread yields or sleeps, so each task sent to it alone is a
    /// hand-over of the CPU each way. Measured on 2 vCPUs (`apply` of a
    /// trivial task in a loop): in slot order, a run went at 0.11–0.6 M
    /// tasks/s whenever the first worker shared the caller's CPU (the
    /// second, on the other CPU, asleep), and 1.7–2.1 M otherwise; in
    /// this order, 1.4–2.0 M in each of 16 runs. Eight threads
    /// calling `apply` (with callers that yield before they park, see
    /// `driver::yield_until_woken`): 0.59 M tasks/s (median of 6 runs of
    /// `mproc bench pool`) in slot order, 1.66 M in this one.
    fn dispatch(&mut self) -> Result<()> {
        // Asked once, and only when an idle worker is to be chosen (a busy
        // worker's line is not read either: it is being written).
        let mut here = None;
        for depth in 1..=QUICK_BATCHES_IN_FLIGHT {
            let passes: &[bool] = if depth == 1 { &[false, true] } else { &[false] };
            for &beside_pass in passes {
                for k in 0..self.slots.len() {
                    if self.queue.is_empty() {
                        break;
                    }
                    let slot = &self.slots[k];
                    let most = if slot.quick { QUICK_BATCHES_IN_FLIGHT } else { BATCHES_IN_FLIGHT };
                    if !slot.is_live()
                        || slot.kill_cause.is_some()
                        || slot.exit_sent
                        || slot.inflight.len() >= depth.min(most)
                    {
                        continue;
                    }
                    if depth == 1 {
                        let here = *here
                            .get_or_insert_with(|| sys::current_cpu().map_or(0, |c| c.saturating_add(1)));
                        // Relaxed: a hint (see SleepFlag::cpu); any value is harmless.
                        let beside = here != 0 && self.layout.worker_cpu(k).load(Ordering::Relaxed) == here;
                        if beside != beside_pass {
                            continue;
                        }
                    }
                    self.assign(k);
                }
            }
        }
        for k in 0..self.slots.len() {
            if self.slots[k].is_live() && self.slots[k].kill_cause.is_none() {
                self.flush(k)?;
            }
        }
        Ok(())
    }

    /// Moves the first queued batch (or as much of it as
    /// `max_tasks_per_child` allows) to slot `k`.
    fn assign(&mut self, k: usize) {
        let Some(mut batch) = self.queue.pop_front() else { return };
        let slot = &mut self.slots[k];
        if let Some(max) = self.limits.max_tasks {
            let allowed = max.saturating_sub(slot.assigned).min(u32::MAX as usize) as u32;
            if allowed == 0 {
                self.queue.push_front(batch);
                return;
            }
            if batch.count > allowed {
                self.queue.push_front(batch.split_off(allowed));
            }
        }
        slot.assigned = slot.assigned.saturating_add(batch.count as usize);
        if slot.inflight.is_empty() {
            slot.head_since = Instant::now();
        }
        slot.inflight.push_back(batch);
    }

    /// Writes as much of slot `k`'s unsent batches as its ring takes.
    fn flush(&mut self, k: usize) -> Result<()> {
        let slot = &mut self.slots[k];
        let mut wrote = false;
        let mut corrupt = None;
        while let Some(batch) = slot.inflight.get(slot.sending) {
            let before = slot.sent_bytes;
            let done = match slot.tasks.try_send_partial(&batch.msg, &mut slot.sent_bytes) {
                Ok(done) => done,
                // The worker's side of the ring (its head) is garbage: that
                // worker's corruption, not the pool's. End it; the task it
                // runs gets the error, the others run elsewhere.
                Err(Error::Decode(e)) => {
                    corrupt = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            };
            wrote |= slot.sent_bytes != before;
            if !done {
                break;
            }
            slot.sending += 1;
            slot.sent_bytes = 0;
        }
        if wrote {
            self.wake_worker(k);
        }
        match corrupt {
            Some(e) => self.kill_slot(k, Error::Decode(e)),
            None => Ok(()),
        }
    }

    /// Rings worker `k`'s bell if it sleeps (and the pool still has bells).
    fn wake_worker(&self, k: usize) {
        if let Some(bell) = self.worker_bells.get(k) {
            shared::wake(self.layout.worker_sleeping(k), bell.as_fd());
        }
    }

    /// Tells every live worker to exit once its work is done (join).
    pub(crate) fn send_exit(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            let slot = &mut self.slots[k];
            if !slot.is_live()
                || slot.exit_sent
                || slot.kill_cause.is_some()
                || slot.sending < slot.inflight.len()
            {
                continue;
            }
            let mut sent = 0;
            match slot.tasks.try_send_partial(&message::exit_message(), &mut sent) {
                Ok(true) => {
                    slot.exit_sent = true;
                    self.wake_worker(k);
                }
                Ok(false) => {}
                Err(Error::Decode(e)) => self.kill_slot(k, Error::Decode(e))?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn all_exits_sent(&self) -> bool {
        self.slots.iter().all(|s| s.exit_sent || !s.is_live() || s.kill_cause.is_some())
    }

    fn fail_queue(&mut self, err: &Error) {
        while let Some(b) = self.queue.pop_front() {
            for i in b.first..b.first + b.count {
                self.file(b.sub, i, Err(err.clone()));
            }
        }
    }

    fn fail_everything(&mut self, err: &Error) {
        self.fail_queue(err);
        for k in 0..self.slots.len() {
            let done = self.slots[k].head_done;
            let batches: Vec<Batch> = self.slots[k].inflight.drain(..).collect();
            for (n, b) in batches.into_iter().enumerate() {
                let start = if n == 0 { b.first + done } else { b.first };
                for i in start..b.first + b.count {
                    self.file(b.sub, i, Err(err.clone()));
                }
            }
            let slot = &mut self.slots[k];
            slot.state = SlotState::Empty;
            slot.head_done = 0;
            slot.sending = 0;
            slot.sent_bytes = 0;
        }
    }

    /// Stops everything now: workers get SIGKILL, the zygote reaps them and
    /// exits, and every task without an outcome gets `Error::Closed`.
    /// The caller waits for the returned zygote with the lock released.
    pub(crate) fn terminate(&mut self) -> Option<ZygoteExit> {
        if self.finished {
            if self.zygote_ending {
                // `join` waits for a polite end: make it a kill.
                self.zygote.kill_all();
            }
            return None;
        }
        self.finished = true;
        self.closed = true;
        let exit = self.zygote.begin_shutdown(true);
        self.fail_everything(&Error::Closed);
        exit
    }

    /// The polite end, once `idle()` and exits are sent: the zygote waits
    /// for the workers to exit on their own, then exits itself. The caller
    /// waits for it with the lock released.
    pub(crate) fn finish(&mut self) -> Option<ZygoteExit> {
        self.finished = true;
        self.zygote.begin_shutdown(false)
    }
}

/// Takes the first `n` tasks (or all, if fewer) off the front of `batches`,
/// splitting a batch where needed.
fn take_tasks(batches: &mut VecDeque<Batch>, mut n: u64) -> Vec<Batch> {
    let mut taken = Vec::new();
    while n > 0 {
        let Some(mut batch) = batches.pop_front() else { break };
        if u64::from(batch.count) > n {
            // n < count <= u32::MAX.
            let tail = batch.split_off(n as u32);
            batches.push_front(tail);
        }
        n -= u64::from(batch.count);
        taken.push(batch);
    }
    taken
}

#[cold]
fn too_many_tasks() -> Error {
    Error::InvalidArgument(format!("more than {} tasks in one call", u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(n: u64) -> u64 {
        2 * n
    }

    #[test]
    fn a_column_input_of_exactly_the_most_tasks_is_taken_whole() {
        let mut encoder = BatchEncoder::new(0, Call::new(double as fn(u64) -> u64), 1 << 20, 1 << 16);
        encoder.count = u32::MAX - 2;
        let mut items = [7u64, 8].into_iter();
        // The last two of the u32::MAX tasks a call may have fill the batch...
        assert_eq!(encoder.push_column(&mut items).unwrap(), (true, false));
        assert_eq!(encoder.finish().map(|b| b.count), Some(2));
        // ...and the input then ends: that is no task too many.
        assert_eq!(encoder.push_column(&mut items).unwrap(), (false, true));
        assert_eq!(encoder.count(), u32::MAX as usize);
        let mut more = [9u64].into_iter();
        assert!(matches!(encoder.push_column(&mut more), Err(Error::InvalidArgument(_))));
    }
}
