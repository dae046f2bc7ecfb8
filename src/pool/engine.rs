//! The parent's half of the pool: queues, dispatch, results, deaths,
//! timeouts. Single-threaded; driven by `Pool` methods through `pump`.
//!
//! Every task is in exactly one place at a time: the queue (not yet sent),
//! a slot's in-flight list (sent to that worker, in order), or its
//! submission's results (a value or an error). A worker's death moves its
//! first unfinished task to "error" and its other in-flight tasks back to
//! the front of the queue, so nothing is lost and nothing runs twice after
//! it has produced a result.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::message::{self, Call, ResultTag};
use super::shared::{self, Layout};
use crate::ring::{Receiver, Sender};
use super::zygote::{Report, Zygote};
use crate::error::{Error, OsError, Result};
use crate::status::ExitStatus;
use crate::sys;
use crate::wire::DecodeError;

/// After SIGTERM, how long a timed-out worker gets before SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_millis(200);
/// Batches a worker may hold at once: one running, one ready behind it.
const BATCHES_IN_FLIGHT: usize = 2;

/// A run of consecutive tasks of one submission, for one function.
#[derive(Debug)]
pub(crate) struct Batch {
    pub sub: u64,
    pub first: u32,
    pub count: u32,
    pub call: Call,
    /// `count` x (len u32, encoded argument).
    pub payload: Vec<u8>,
}

impl Batch {
    /// Splits off the tasks from `at` on (re-queueing after a death, or
    /// honouring `max_tasks_per_child`).
    fn split_off(&mut self, at: u32) -> Batch {
        let mut offset = 0usize;
        for _ in 0..at {
            let len = u32::from_le_bytes(self.payload[offset..offset + 4].try_into().unwrap_or([0; 4]));
            offset += 4 + len as usize;
        }
        let tail = Batch {
            sub: self.sub,
            first: self.first + at,
            count: self.count - at,
            call: self.call,
            payload: self.payload.split_off(offset),
        };
        self.count = at;
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
    /// The message being written into `tasks` (header + the batch at
    /// `inflight[sending]`), kept until all of it is in the ring.
    out_msg: Vec<u8>,
    /// Batches sent or being sent, oldest first. The worker answers their
    /// tasks in exactly this order.
    inflight: VecDeque<Batch>,
    /// Results received for `inflight[0]`.
    head_done: u32,
    /// Index into `inflight` of the batch being written, and bytes written.
    sending: usize,
    sent_bytes: usize,
    /// Tasks handed to this worker (for max_tasks_per_child).
    assigned: usize,
    /// When the task now at the head started (as near as the parent knows).
    head_started: Instant,
    /// Set when we signalled the worker to end it: since when, escalated?
    killing: Option<(Instant, bool)>,
    /// What the head task's outcome is when the worker dies by our hand.
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
            out_msg: Vec::new(),
            inflight: VecDeque::new(),
            head_done: 0,
            sending: 0,
            sent_bytes: 0,
            assigned: 0,
            head_started: Instant::now(),
            killing: None,
            kill_cause: None,
            exit_sent: false,
            retry_spawn_at: None,
            result_buf: Vec::new(),
        })
    }

    fn tasks_in_flight(&self) -> usize {
        self.inflight.iter().map(|b| b.count as usize).sum::<usize>() - self.head_done as usize
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
            closed: false,
            finished: false,
            reports: Vec::new(),
        })
    }

    /// Asks the zygote for the first workers and waits until each is
    /// running. A failed fork fails the whole start, naming `fork`.
    pub(crate) fn start_workers(&mut self) -> Result<()> {
        for slot in 0..self.slots.len() {
            self.zygote.spawn(slot)?;
        }
        while self.slots.iter().any(|s| s.state == SlotState::Spawning) {
            let ready = sys::poll(&[(self.zygote.report_fd(), true, false)], None)?;
            let _ = ready;
            let mut reports = Vec::new();
            let alive = self.zygote.read_reports(&mut reports)?;
            for rep in reports {
                match rep {
                    Report::Spawned { slot, pid } => self.slots[slot].state = SlotState::Live { pid },
                    Report::SpawnFailed { errno, .. } => {
                        return Err(Error::Os(OsError { call: "fork", pid: None, errno }))
                    }
                    Report::Died { slot, pid, status } => {
                        // Died before doing anything (e.g. its initializer
                        // panicked): report it as such.
                        return Err(Error::died(pid, status, None)).inspect_err(|_| {
                            self.slots[slot].state = SlotState::Empty;
                        });
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

    /// Queues a new submission of `args` (encoded), in batches of `chunk`.
    /// Never blocks: dispatch happens in `pump`.
    pub(crate) fn submit(
        &mut self,
        call: Call,
        args: impl IntoIterator<Item = Vec<u8>>,
        chunk: usize,
        base_index: u64,
    ) -> Result<u64> {
        if self.closed || self.finished {
            return Err(Error::Closed);
        }
        let sub = self.next_sub;
        self.next_sub += 1;
        let chunk = chunk.clamp(1, u32::MAX as usize / 2) as u32;
        let mut count = 0u32;
        let mut batch: Option<Batch> = None;
        for arg in args {
            let b = batch.get_or_insert_with(|| Batch { sub, first: count, count: 0, call, payload: Vec::new() });
            b.payload.extend_from_slice(&(arg.len() as u32).to_le_bytes());
            b.payload.extend_from_slice(&arg);
            b.count += 1;
            count += 1;
            if b.count == chunk {
                self.queue.extend(batch.take());
            }
        }
        self.queue.extend(batch.take());
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
        Ok(sub)
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
            let wake_at = [deadline, self.next_timer()].into_iter().flatten().min();
            let timeout = wake_at.map(|t| t.saturating_duration_since(now));
            let reports = self.zygote.report_fd();
            let slots = &self.slots;
            shared::sleep(self.layout.parent_sleeping(), self.parent_bell.as_fd(), &[reports], timeout, || {
                slots.iter().any(|s| {
                    matches!(s.state, SlotState::Live { .. })
                        && (s.results.has_data() || (s.sending < s.inflight.len() && s.tasks.has_room()))
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
        let mut got_any = false;
        loop {
            let slot = &mut self.slots[k];
            let more = match slot.results.try_recv_into(&mut slot.result_buf) {
                Ok(more) => more,
                Err(e) => {
                    // The ring can no longer be trusted: end the worker; its
                    // head task gets the decode error.
                    self.kill_slot(k, e, libc::SIGKILL)?;
                    return Ok(());
                }
            };
            if !more {
                break;
            }
            got_any = true;
            let msg = std::mem::take(&mut self.slots[k].result_buf);
            self.deliver(k, &msg);
            self.slots[k].result_buf = msg;
        }
        if got_any {
            // We freed ring space a blocked worker may be waiting for.
            shared::wake(self.layout.worker_sleeping(k), self.worker_bells[k].as_fd());
        }
        Ok(())
    }

    /// Files one result message against slot `k`'s head task.
    fn deliver(&mut self, k: usize, msg: &[u8]) {
        let slot = &mut self.slots[k];
        let Some(head) = slot.inflight.front() else { return };
        let (sub, i) = (head.sub, head.first + slot.head_done);
        let outcome = match msg.split_first().map(|(t, p)| (ResultTag::from_byte(*t), p)) {
            Some((Some(ResultTag::Ok), payload)) => Ok(payload),
            Some((Some(ResultTag::Panicked), payload)) => {
                Err(Error::Panicked { message: String::from_utf8_lossy(payload).into_owned() })
            }
            Some((Some(ResultTag::ArgDecode), _)) => {
                Err(Error::Decode(DecodeError::new("the task's argument did not decode in the worker")))
            }
            _ => Err(Error::Decode(DecodeError::new("corrupt result frame"))),
        };
        slot.head_done += 1;
        if slot.head_done == head.count {
            slot.inflight.pop_front();
            slot.head_done = 0;
            slot.sending = slot.sending.saturating_sub(1);
        }
        slot.head_started = Instant::now();
        self.file(sub, i, outcome);
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
                    self.slots[slot].retry_spawn_at = Some(Instant::now() + Duration::from_millis(100));
                    if !self.slots.iter().any(|s| matches!(s.state, SlotState::Live { .. })) {
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

    fn on_death(&mut self, k: usize, pid: i32, status: ExitStatus) -> Result<()> {
        // Results it published before dying are good: take them first.
        self.collect(k)?;
        let slot = &mut self.slots[k];
        let cause = slot.kill_cause.take();
        let mut requeue = Vec::new();
        if let Some(mut head) = slot.inflight.pop_front() {
            let i = head.first + slot.head_done;
            let sub = head.sub;
            let index = self.subs.get(&sub).map_or(0, |s| s.base_index) + u64::from(i);
            let err = cause.unwrap_or_else(|| Error::died(pid, status, Some(index)));
            let rest = head.split_off(slot.head_done + 1);
            if rest.count > 0 {
                requeue.push(rest);
            }
            requeue.extend(slot.inflight.drain(..));
            self.file(sub, i, Err(err));
        }
        let slot = &mut self.slots[k];
        slot.head_done = 0;
        slot.sending = 0;
        slot.sent_bytes = 0;
        slot.assigned = 0;
        slot.killing = None;
        slot.exit_sent = false;
        slot.state = SlotState::Empty;
        for b in requeue.into_iter().rev() {
            self.queue.push_front(b);
        }
        // The worker is gone: nobody else touches the slot's rings now.
        self.layout.reset_slot(k);
        let (tasks, _) = self.layout.task_channel(k)?;
        let (_, results) = self.layout.result_channel(k)?;
        let slot = &mut self.slots[k];
        slot.tasks = tasks;
        slot.results = results;
        slot.out_msg.clear();
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

    fn check_timers(&mut self) -> Result<()> {
        let now = Instant::now();
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
                if !slot.inflight.is_empty() && now >= slot.head_started + limit {
                    self.kill_slot(k, Error::Timeout, libc::SIGTERM)?;
                }
            }
            if self.slots[k].state == SlotState::Empty {
                self.maybe_respawn(k)?;
            }
        }
        Ok(())
    }

    /// The next instant a timer needs attention.
    fn next_timer(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match (s.killing, s.state) {
                (Some((since, false)), _) => Some(since + TERM_GRACE),
                (Some(_), _) => None,
                (None, SlotState::Empty) => s.retry_spawn_at,
                (None, _) if !s.inflight.is_empty() => self.limits.task_timeout.map(|t| s.head_started + t),
                _ => None,
            })
            .min()
    }

    /// Hands queued batches to live workers with room, and pushes pending
    /// bytes into their task rings. Never blocks.
    fn dispatch(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            if !matches!(self.slots[k].state, SlotState::Live { .. }) || self.slots[k].killing.is_some() {
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
                if slot.inflight.is_empty() {
                    slot.head_started = Instant::now();
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
            if slot.sent_bytes == 0 {
                slot.out_msg.clear();
                message::encode_batch_header(batch.call, batch.count, &mut slot.out_msg);
                slot.out_msg.extend_from_slice(&batch.payload);
            }
            let before = slot.sent_bytes;
            let done = slot.tasks.try_send_partial(&slot.out_msg, &mut slot.sent_bytes)?;
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
            if !matches!(self.slots[k].state, SlotState::Live { .. }) || self.slots[k].exit_sent {
                continue;
            }
            let mut sent = 0;
            if self.slots[k].sending < self.slots[k].inflight.len() {
                continue; // a batch is still being written
            }
            if self.slots[k].tasks.try_send_partial(&message::exit_message(), &mut sent)? {
                self.slots[k].exit_sent = true;
                shared::wake(self.layout.worker_sleeping(k), self.worker_bells[k].as_fd());
            }
        }
        Ok(())
    }

    pub(crate) fn all_exits_sent(&self) -> bool {
        self.slots.iter().all(|s| s.exit_sent || !matches!(s.state, SlotState::Live { .. }))
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
            self.slots[k].state = SlotState::Empty;
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
        let result = self.zygote.shutdown(true);
        self.fail_everything(&Error::Closed);
        result
    }

    /// The polite end, once `idle()` and exits are sent: the zygote waits
    /// for the workers to exit on their own, then exits itself.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.finished = true;
        self.zygote.shutdown(false)
    }
}

fn zygote_gone(pid: i32) -> Error {
    Error::WorkerDied { pid, exitcode: -libc::SIGKILL, core_dumped: false, task: None }
}
