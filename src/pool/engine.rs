//! The parent's half of the pool: queues, dispatch, results, deaths,
//! timeouts. Single-threaded; driven by `Pool` methods through `pump`.
//!
//! Every task is in exactly one place at a time: the queue (not yet sent),
//! a slot's in-flight list (sent to that worker, in order), or its
//! submission's results (a value or an error). A worker's death gives the
//! task it was running an error (see [`Engine::on_death`]) and moves its
//! other in-flight tasks back to the front of the queue, so every task gets
//! exactly one outcome. A task whose result had not reached the parent when
//! its worker died (still packed in the worker, see `worker`) runs again.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::message::{self, Call, ResultTag};
use super::shared::{self, Layout};
use super::zygote::{Report, Zygote};
use crate::error::{Error, OsError, Result};
use crate::ring::{Receiver, Sender};
use crate::status::ExitStatus;
use crate::sys;
use crate::wire::{DecodeError, Wire};

/// After SIGTERM, how long a timed-out worker's process group gets before
/// SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_millis(200);
/// Batches a worker may hold at once: one running, one ready behind it.
const BATCHES_IN_FLIGHT: usize = 2;
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
}

impl Batch {
    /// Splits off the tasks from `at` on (re-queueing after a death, or
    /// honouring `max_tasks_per_child`).
    fn split_off(&mut self, at: u32) -> Batch {
        let offset = message::arg_offset(&self.msg, at);
        let mut msg = Vec::with_capacity(message::BATCH_HEADER_LEN + self.msg.len() - offset);
        message::begin_batch(self.call, &mut msg);
        msg.extend_from_slice(&self.msg[offset..]);
        message::set_batch_count(&mut msg, self.count - at);
        let tail = Batch { sub: self.sub, first: self.first + at, count: self.count - at, call: self.call, msg };
        self.msg.truncate(offset);
        self.count = at;
        message::set_batch_count(&mut self.msg, at);
        tail
    }
}

const PENDING: u32 = u32::MAX;
const FAILED: u32 = u32::MAX - 1;

/// The results of one call (`map`, one `apply_async`, one `imap` chunk).
#[derive(Debug)]
pub(crate) struct Submission {
    /// Position of the first task in the caller's input (for messages).
    base_index: u64,
    /// Per task: (start in `bytes`, len), or PENDING / FAILED.
    spans: Vec<(usize, u32)>,
    bytes: Vec<u8>,
    errors: HashMap<u32, Error>,
    remaining: usize,
    /// The caller no longer wants these results (dropped handle).
    abandoned: bool,
}

impl Submission {
    /// The outcome of task `i`, if it has one.
    pub(crate) fn get(&self, i: u32) -> Option<Result<&[u8]>> {
        match self.spans[i as usize] {
            (_, PENDING) => None,
            (_, FAILED) => Some(Err(self.errors.get(&i).cloned().unwrap_or(Error::Closed))),
            (start, len) => Some(Ok(&self.bytes[start..start + len as usize])),
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Files task `i`'s outcome; a second outcome for the same task (which
    /// the engine never produces) is ignored.
    fn set(&mut self, i: u32, outcome: Result<&[u8]>) {
        if self.spans[i as usize].1 != PENDING {
            return;
        }
        self.remaining -= 1;
        match outcome {
            Ok(bytes) => {
                self.spans[i as usize] = (self.bytes.len(), bytes.len() as u32);
                self.bytes.extend_from_slice(bytes);
            }
            Err(e) => {
                self.spans[i as usize] = (0, FAILED);
                self.errors.insert(i, e);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Asked the zygote for a worker; no answer yet.
    Spawning,
    Live { pid: i32 },
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
    /// Index into `inflight` of the batch being written, and bytes of it
    /// already in the ring.
    sending: usize,
    sent_bytes: usize,
    /// Tasks handed to this worker (for max_tasks_per_child).
    assigned: usize,
    /// Results received from this worker (compared with its progress word
    /// when it dies).
    received: u64,
    /// Set when we signalled the worker to end it: since when, escalated?
    killing: Option<(Instant, bool)>,
    /// The outcome of the task it runs, when the worker dies by our hand.
    kill_cause: Option<Error>,
    exit_sent: bool,
    retry_spawn_at: Option<Instant>,
    result_buf: Vec<u8>,
}

impl Slot {
    fn new(layout: &Layout, k: usize) -> Result<Slot> {
        let (tasks, _) = layout.task_channel(k)?;
        let (_, results) = layout.result_channel(k)?;
        Ok(Slot {
            state: SlotState::Spawning,
            tasks,
            results,
            inflight: VecDeque::new(),
            head_done: 0,
            sending: 0,
            sent_bytes: 0,
            assigned: 0,
            received: 0,
            killing: None,
            kill_cause: None,
            exit_sent: false,
            retry_spawn_at: None,
            result_buf: Vec::new(),
        })
    }

    fn is_live(&self) -> bool {
        matches!(self.state, SlotState::Live { .. })
    }
}

/// Configuration the parent needs.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_tasks: Option<usize>,
    pub task_timeout: Option<Duration>,
}

/// The parent's state.
#[derive(Debug)]
pub(crate) struct Engine {
    pub layout: Layout,
    parent_bell: OwnedFd,
    worker_bells: Vec<OwnedFd>,
    zygote: Zygote,
    slots: Vec<Slot>,
    queue: VecDeque<Batch>,
    subs: HashMap<u64, Submission>,
    next_sub: u64,
    limits: Limits,
    /// Process groups of timed-out workers that died before their grace
    /// period ended: what they started still gets SIGKILL at that instant.
    group_kills: Vec<(i32, Instant)>,
    pub closed: bool,
    pub finished: bool,
    reports: Vec<Report>,
}

impl Engine {
    pub(crate) fn new(
        layout: Layout,
        parent_bell: OwnedFd,
        worker_bells: Vec<OwnedFd>,
        zygote: Zygote,
        limits: Limits,
    ) -> Result<Engine> {
        let slots = (0..worker_bells.len()).map(|k| Slot::new(&layout, k)).collect::<Result<Vec<_>>>()?;
        Ok(Engine {
            layout,
            parent_bell,
            worker_bells,
            zygote,
            slots,
            queue: VecDeque::new(),
            subs: HashMap::new(),
            next_sub: 0,
            limits,
            group_kills: Vec::new(),
            closed: false,
            finished: false,
            reports: Vec::new(),
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
                    Report::Died { slot, pid, status } => {
                        // Died before doing anything (its initializer
                        // panicked, say): report it as such.
                        self.slots[slot].state = SlotState::Empty;
                        return Err(Error::died(pid, status, None));
                    }
                }
            }
            if !alive {
                return Err(zygote_gone(self.zygote.pid()));
            }
        }
        Ok(())
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
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

    /// Queues a new submission of `items`, encoded straight into task
    /// messages of `chunk` tasks each. Never blocks: dispatch happens in
    /// `pump`. Returns the submission's id and its number of tasks.
    pub(crate) fn submit<A: Wire>(
        &mut self,
        call: Call,
        items: impl Iterator<Item = A>,
        chunk: usize,
        base_index: u64,
    ) -> Result<(u64, usize)> {
        if self.closed || self.finished {
            return Err(Error::Closed);
        }
        let sub = self.next_sub;
        self.next_sub += 1;
        let chunk = chunk.clamp(1, u32::MAX as usize / 2) as u32;
        let mut count = 0u32;
        let mut batch: Option<Batch> = None;
        for arg in items {
            let b = batch.get_or_insert_with(|| {
                let mut msg = Vec::new();
                message::begin_batch(call, &mut msg);
                Batch { sub, first: count, count: 0, call, msg }
            });
            message::push_arg(&mut b.msg, &arg);
            b.count += 1;
            count += 1;
            if b.count == chunk {
                self.queue_batch(batch.take());
            }
        }
        self.queue_batch(batch.take());
        self.subs.insert(
            sub,
            Submission {
                base_index,
                spans: vec![(0, PENDING); count as usize],
                bytes: Vec::new(),
                errors: HashMap::new(),
                remaining: count as usize,
                abandoned: false,
            },
        );
        self.dispatch()?;
        Ok((sub, count as usize))
    }

    fn queue_batch(&mut self, batch: Option<Batch>) {
        if let Some(mut b) = batch {
            message::set_batch_count(&mut b.msg, b.count);
            self.queue.push_back(b);
        }
    }

    pub(crate) fn submission(&self, sub: u64) -> Option<&Submission> {
        self.subs.get(&sub)
    }

    /// Forgets a submission; results still to come are dropped on arrival.
    pub(crate) fn release(&mut self, sub: u64) {
        if let Some(s) = self.subs.get_mut(&sub) {
            if s.is_complete() {
                self.subs.remove(&sub);
            } else {
                s.abandoned = true;
            }
        }
    }

    /// Whether every queued and in-flight task has an outcome.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.inflight.is_empty())
    }

    /// Moves work forward until `done(self)` or `deadline`; sleeps (without
    /// spinning a core) when nothing can move. `Err(Timeout)` at deadline.
    pub(crate) fn pump(&mut self, deadline: Option<Instant>, done: impl Fn(&Engine) -> bool) -> Result<()> {
        loop {
            self.step()?;
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout);
            }
            let wake_at = [deadline, self.next_timer(now)].into_iter().flatten().min();
            let timeout = wake_at.map(|t| t.saturating_duration_since(now));
            let reports = self.zygote.report_fd();
            let slots = &self.slots;
            shared::sleep(self.layout.parent_sleeping(), self.parent_bell.as_fd(), &[reports], timeout, || {
                slots.iter().any(|s| {
                    s.is_live() && (s.results.has_data() || (s.sending < s.inflight.len() && s.tasks.has_room()))
                })
            })?;
        }
    }

    /// One non-blocking round: results in, reports in, timers, work out.
    pub(crate) fn step(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            self.collect(k)?;
        }
        self.handle_reports()?;
        self.check_timers()?;
        self.dispatch()
    }

    /// Drains slot `k`'s result ring.
    fn collect(&mut self, k: usize) -> Result<()> {
        loop {
            let slot = &mut self.slots[k];
            let filed = match slot.results.try_recv_into(&mut slot.result_buf) {
                Ok(false) => break,
                Ok(true) => {
                    let msg = std::mem::take(&mut slot.result_buf);
                    let filed = self.deliver_all(k, &msg);
                    self.slots[k].result_buf = msg;
                    filed
                }
                Err(Error::Decode(e)) => Err(e),
                Err(e) => return Err(e),
            };
            if let Err(e) = filed {
                // The worker and we no longer agree on what its bytes mean:
                // end it; the task it runs gets the decode error.
                self.kill_slot(k, Error::Decode(e), libc::SIGKILL)?;
                break;
            }
        }
        // Taking results (whole messages, or fragments of one bigger than
        // the ring) freed room a worker may be asleep waiting for.
        shared::wake(self.layout.worker_sleeping(k), self.worker_bells[k].as_fd());
        Ok(())
    }

    /// Files every record of one result message against slot `k`'s tasks.
    fn deliver_all(&mut self, k: usize, msg: &[u8]) -> std::result::Result<(), DecodeError> {
        for record in message::result_records(msg) {
            let (tag, payload) = record?;
            let outcome = match ResultTag::from_byte(tag) {
                Some(ResultTag::Ok) => Ok(payload),
                Some(ResultTag::Panicked) => {
                    Err(Error::Panicked { message: String::from_utf8_lossy(payload).into_owned() })
                }
                Some(ResultTag::ArgDecode) => {
                    Err(Error::Decode(DecodeError::new("the task's argument did not decode in the worker")))
                }
                Some(ResultTag::Corrupt) | None => return Err(DecodeError::new("corrupt result frame")),
            };
            if !self.deliver(k, outcome) {
                return Err(DecodeError::new("a result for a task that was never sent"));
            }
        }
        Ok(())
    }

    /// Files one outcome against slot `k`'s first unanswered task; false if
    /// it has none.
    fn deliver(&mut self, k: usize, outcome: Result<&[u8]>) -> bool {
        let slot = &mut self.slots[k];
        let Some(head) = slot.inflight.front() else { return false };
        let (sub, i) = (head.sub, head.first + slot.head_done);
        slot.received += 1;
        slot.head_done += 1;
        if slot.head_done == head.count {
            slot.inflight.pop_front();
            slot.head_done = 0;
            slot.sending = slot.sending.saturating_sub(1);
        }
        self.file(sub, i, outcome);
        true
    }

    fn file(&mut self, sub: u64, i: u32, outcome: Result<&[u8]>) {
        if let Some(s) = self.subs.get_mut(&sub) {
            s.set(i, outcome);
            if s.abandoned && s.is_complete() {
                self.subs.remove(&sub);
            }
        }
    }

    fn handle_reports(&mut self) -> Result<()> {
        let mut reports = std::mem::take(&mut self.reports);
        let alive = self.zygote.read_reports(&mut reports)?;
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
                Report::Died { slot, pid, status } => self.on_death(slot, pid, status)?,
            }
        }
        self.reports = reports;
        if !alive && !self.finished {
            // The zygote is gone (killed from outside): the pool is over.
            let err = zygote_gone(self.zygote.pid());
            self.fail_everything(&err);
            self.finished = true;
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
    /// `WorkerDied` (or the cause, if we killed it: `Timeout`, `Decode`).
    /// A worker that dies before it starts any task (its initializer
    /// failed) takes its first task with it, so a worker that can never
    /// work fails the tasks one by one instead of being replaced forever.
    /// A worker killed between tasks takes none: all its tasks run again.
    fn on_death(&mut self, k: usize, pid: i32, status: ExitStatus) -> Result<()> {
        // Results it published before dying are good: take them first.
        // (Empty first, so a corrupt ring found now signals no one: the pid
        // is reaped and may be reused.)
        self.slots[k].state = SlotState::Empty;
        self.collect(k)?;
        // Acquire: pairs with the worker's Release stores; its exit, the
        // zygote's waitpid and the report pipe order them before this anyway.
        let progress = self.layout.progress(k).load(Ordering::Acquire);
        let (finished, running) = (progress / 2, progress % 2 == 1);
        let slot = &mut self.slots[k];
        let cause = slot.kill_cause.take();
        let unsent = finished.saturating_sub(slot.received);
        let blamed = if running || finished == 0 || cause.is_some() { Some(unsent) } else { None };
        if let Some((since, escalated)) = slot.killing.take() {
            // A timed-out worker's group may outlive it (a child that
            // ignores SIGTERM): it still gets SIGKILL when the grace ends.
            if !escalated {
                self.group_kills.push((pid, since + TERM_GRACE));
            }
        }
        let mut rest: VecDeque<Batch> = std::mem::take(&mut slot.inflight);
        if let Some(head) = rest.front_mut() {
            if slot.head_done > 0 {
                *head = head.split_off(slot.head_done);
            }
        }
        let mut requeue = Vec::new();
        let mut victim = None;
        let mut skip = blamed;
        while let Some(mut batch) = rest.pop_front() {
            match skip {
                Some(n) if n < u64::from(batch.count) => {
                    let mut hit = batch.split_off(n as u32);
                    let after = hit.split_off(1);
                    victim = Some((hit.sub, hit.first));
                    requeue.extend([batch, after].into_iter().filter(|b| b.count > 0));
                    skip = None;
                }
                Some(n) => {
                    skip = Some(n - u64::from(batch.count));
                    requeue.push(batch);
                }
                None => requeue.push(batch),
            }
        }
        if let Some((sub, i)) = victim {
            let index = self.subs.get(&sub).map_or(0, |s| s.base_index) + u64::from(i);
            let err = cause.unwrap_or_else(|| Error::died(pid, status, Some(index)));
            self.file(sub, i, Err(err));
        }
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
        let (_, results) = self.layout.result_channel(k)?;
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
            return Ok(());
        }
        if self.slots[k].retry_spawn_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        self.slots[k].retry_spawn_at = None;
        self.slots[k].state = SlotState::Spawning;
        self.zygote.spawn(k)
    }

    /// Signals worker `k`'s whole process group, recording why.
    fn kill_slot(&mut self, k: usize, cause: Error, signal: i32) -> Result<()> {
        if let SlotState::Live { pid } = self.slots[k].state {
            sys::kill(-pid, signal)?;
            sys::kill(pid, signal)?;
            let slot = &mut self.slots[k];
            slot.kill_cause.get_or_insert(cause);
            slot.killing.get_or_insert((Instant::now(), signal == libc::SIGKILL));
        }
        Ok(())
    }

    /// The start time (monotonic ns) of the task worker `k` is running, if
    /// it is running one and the pool stamps tasks.
    fn running_since(&self, k: usize) -> Option<u64> {
        // Acquire, then Relaxed: pairs with the worker's stamp store then
        // Release progress store, so the stamp is at least that task's.
        let progress = self.layout.progress(k).load(Ordering::Acquire);
        (progress % 2 == 1).then(|| self.layout.task_started_ns(k).load(Ordering::Relaxed))
    }

    fn check_timers(&mut self) -> Result<()> {
        let now = Instant::now();
        self.group_kills.retain(|&(pgid, at)| {
            if now < at {
                return true;
            }
            let _ = sys::kill(-pgid, libc::SIGKILL);
            false
        });
        let now_ns = sys::monotonic_ns();
        for k in 0..self.slots.len() {
            let slot = &self.slots[k];
            if let Some((since, escalated)) = slot.killing {
                if !escalated && now >= since + TERM_GRACE {
                    if let SlotState::Live { pid } = slot.state {
                        sys::kill(-pid, libc::SIGKILL)?;
                        sys::kill(pid, libc::SIGKILL)?;
                    }
                    self.slots[k].killing = Some((since, true));
                }
            } else if let Some(limit) = self.limits.task_timeout {
                if slot.is_live() && !slot.inflight.is_empty() {
                    let started = self.running_since(k);
                    if started.is_some_and(|t| now_ns.saturating_sub(t) >= limit.as_nanos() as u64) {
                        self.kill_slot(k, Error::Timeout, libc::SIGTERM)?;
                    }
                }
            }
            if self.slots[k].state == SlotState::Empty {
                self.maybe_respawn(k)?;
            }
        }
        Ok(())
    }

    /// The next instant a timer needs attention.
    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let now_ns = sys::monotonic_ns();
        let slot_timers = self.slots.iter().enumerate().filter_map(|(k, s)| match (s.killing, s.state) {
            (Some((since, false)), _) => Some(since + TERM_GRACE),
            (Some(_), _) => None,
            (None, SlotState::Empty) => s.retry_spawn_at,
            (None, SlotState::Live { .. }) if !s.inflight.is_empty() => {
                let limit = self.limits.task_timeout?;
                // Not running yet: whatever starts now ends its time no
                // sooner than `limit` from now; look again then.
                let started = self.running_since(k).unwrap_or(now_ns);
                let ends = started.saturating_add(limit.as_nanos() as u64);
                Some(now + Duration::from_nanos(ends.saturating_sub(now_ns)))
            }
            _ => None,
        });
        slot_timers.chain(self.group_kills.iter().map(|&(_, at)| at)).min()
    }

    /// Hands queued batches to live workers with room, and pushes pending
    /// bytes into their task rings. Never blocks.
    fn dispatch(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            if !self.slots[k].is_live() || self.slots[k].killing.is_some() {
                continue;
            }
            while self.slots[k].inflight.len() < BATCHES_IN_FLIGHT && !self.slots[k].exit_sent {
                let Some(mut batch) = self.queue.pop_front() else { break };
                let slot = &mut self.slots[k];
                if let Some(max) = self.limits.max_tasks {
                    let allowed = max.saturating_sub(slot.assigned) as u32;
                    if allowed == 0 {
                        self.queue.push_front(batch);
                        break;
                    }
                    if batch.count > allowed {
                        self.queue.push_front(batch.split_off(allowed));
                    }
                }
                slot.assigned += batch.count as usize;
                slot.inflight.push_back(batch);
            }
            self.flush(k)?;
        }
        Ok(())
    }

    /// Writes as much of slot `k`'s unsent batches as its ring takes.
    fn flush(&mut self, k: usize) -> Result<()> {
        let slot = &mut self.slots[k];
        let mut wrote = false;
        while let Some(batch) = slot.inflight.get(slot.sending) {
            let before = slot.sent_bytes;
            let done = slot.tasks.try_send_partial(&batch.msg, &mut slot.sent_bytes)?;
            wrote |= slot.sent_bytes != before;
            if !done {
                break;
            }
            slot.sending += 1;
            slot.sent_bytes = 0;
        }
        if wrote {
            shared::wake(self.layout.worker_sleeping(k), self.worker_bells[k].as_fd());
        }
        Ok(())
    }

    /// Tells every live worker to exit once its work is done (join).
    pub(crate) fn send_exit(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            let slot = &mut self.slots[k];
            if !slot.is_live() || slot.exit_sent || slot.sending < slot.inflight.len() {
                continue;
            }
            let mut sent = 0;
            if slot.tasks.try_send_partial(&message::exit_message(), &mut sent)? {
                slot.exit_sent = true;
                shared::wake(self.layout.worker_sleeping(k), self.worker_bells[k].as_fd());
            }
        }
        Ok(())
    }

    pub(crate) fn all_exits_sent(&self) -> bool {
        self.slots.iter().all(|s| s.exit_sent || !s.is_live())
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
    pub(crate) fn terminate(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.closed = true;
        for (pgid, _) in self.group_kills.drain(..) {
            let _ = sys::kill(-pgid, libc::SIGKILL);
        }
        let result = self.zygote.shutdown(true);
        self.fail_everything(&Error::Closed);
        result
    }

    /// The polite end, once `idle()` and exits are sent: the zygote waits
    /// for the workers to exit on their own, then exits itself.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.finished = true;
        for (pgid, _) in self.group_kills.drain(..) {
            let _ = sys::kill(-pgid, libc::SIGKILL);
        }
        self.zygote.shutdown(false)
    }
}

fn zygote_gone(pid: i32) -> Error {
    Error::WorkerDied { pid, exitcode: -libc::SIGKILL, core_dumped: false, task: None }
}
