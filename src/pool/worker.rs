//! A worker's life: run the initializer, then take batches of tasks from
//! the task ring, run each, and put each result on the result ring, in
//! order. The parent matches results to tasks by that order alone.
//!
//! Results of quick tasks travel together: the worker packs records into
//! one message until it holds a quarter of the ring, the batch ends, or
//! about [`FLUSH_INTERVAL`] has passed since the last message. One message
//! per thousand trivial tasks instead of one per task is most of the
//! pool's speed; the time limit keeps slow tasks' results flowing one by
//! one. A result still packed when its worker dies is lost, and its task
//! runs again (see `engine`).
//!
//! Progress is published in the slot's shared `progress` word (and, with a
//! task timeout, the start time of the running task), so the parent knows
//! which task a dead worker was running without any message.

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::message::{self, Batch, ResultTag};
use super::shared::{self, Layout, Woke};
use crate::error::{Error, Result};
use crate::ring::{Receiver, Sender};
use crate::sys;

/// Results wait at most about this long in a worker before they are sent.
const FLUSH_INTERVAL: Duration = Duration::from_micros(200);
/// At most this many tasks between two looks at the clock.
const MAX_CLOCK_STRIDE: u32 = 1024;

/// What a worker needs; the zygote builds one per fork.
pub(crate) struct Worker<'a> {
    pub layout: &'a Layout,
    pub slot: usize,
    /// Read end of this worker's doorbell (the parent holds the write end,
    /// so EOF here means the parent is gone).
    pub bell: BorrowedFd<'a>,
    /// Write end of the parent's doorbell.
    pub parent_bell: BorrowedFd<'a>,
    pub initializer: Option<fn()>,
    pub max_tasks: Option<usize>,
    /// Publish each task's start time (the pool has a task timeout).
    pub stamp_tasks: bool,
    /// The pool's `max_result_size`: a larger result is sent as a
    /// `TooLarge` record instead (the parent would refuse it anyway).
    pub max_result: usize,
}

/// Decides when packed results go out: by size, or by time. Reading the
/// clock costs about as much as a trivial task, so with quick tasks it is
/// read only every few tasks (the stride doubles while tasks are quick and
/// drops to 1 as soon as they are not).
struct Pacer {
    last_send: Instant,
    stride: u32,
    since_look: u32,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer { last_send: Instant::now(), stride: 1, since_look: 0 }
    }

    /// Tasks to run before the next look at the clock (at least 1).
    fn until_look(&self) -> usize {
        self.stride.saturating_sub(self.since_look).max(1) as usize
    }

    /// Called after `n` tasks ran: whether the packed results are due.
    fn ran(&mut self, n: usize) -> bool {
        self.since_look = self.since_look.saturating_add(n.min(u32::MAX as usize) as u32);
        if self.since_look < self.stride {
            return false;
        }
        self.since_look = 0;
        if self.last_send.elapsed() >= FLUSH_INTERVAL {
            self.stride = 1;
            return true;
        }
        self.stride = (self.stride * 2).min(MAX_CLOCK_STRIDE);
        false
    }

    fn sent(&mut self) {
        self.last_send = Instant::now();
        self.since_look = 0;
    }
}

/// What running a batch changes: the result ring, the packed results and
/// their open run, the pacer, and the count of tasks done.
struct Context<'c> {
    results: &'c mut Sender,
    out: &'c mut Vec<u8>,
    run: &'c mut Run,
    pacer: &'c mut Pacer,
    done: &'c mut u64,
}

impl Worker<'_> {
    /// Runs until told to exit, the parent disappears, or the task limit is
    /// reached; then `_exit`s.
    pub(crate) fn run(self) -> ! {
        // A task's panic is reported to the caller as Error::Panicked with
        // its message; printing it here too would only be noise.
        panic::set_hook(Box::new(|_| {}));
        // Release: the parent reads the word after our death (the zygote's
        // waitpid and report order it anyway); a death before READY is the
        // initializer's doing, or a kill before we ran any code of the pool.
        let lifecycle = self.layout.lifecycle(self.slot);
        if let Some(init) = self.initializer {
            lifecycle.store(shared::WORKER_INITIALIZING, Ordering::Release);
            if panic::catch_unwind(init).is_err() {
                sys::exit_now(1);
            }
        }
        lifecycle.store(shared::WORKER_READY, Ordering::Release);
        let code = match self.serve() {
            Ok(()) => 0,
            Err(_) => 1,
        };
        sys::flush_stdio();
        sys::exit_now(code)
    }

    fn serve(&self) -> Result<()> {
        let (_, mut tasks) = self.layout.task_channel(self.slot)?;
        let (mut results, _) = self.layout.result_channel(self.slot)?;
        let mut msg = Vec::new();
        let mut out = Vec::new();
        let mut done = 0u64;
        let mut pacer = Pacer::new();
        let mut last_cpu = 0;
        loop {
            if !self.next_message(&mut tasks, &mut msg)? {
                return Ok(()); // the parent is gone
            }
            let batch = match message::decode_task_message(&msg) {
                Ok(Some(batch)) => batch,
                Ok(None) => return Ok(()), // told to exit
                Err(_) => {
                    // Unreadable batch: say so for its first task and leave;
                    // the parent re-queues the rest when it sees us die.
                    let at = message::begin_result(&mut out);
                    message::finish_result(&mut out, at, ResultTag::Corrupt, 0);
                    self.send(&mut results, &mut out)?;
                    return Err(Error::InvalidState("corrupt task message"));
                }
            };
            pacer.sent();
            // A hint for the parent's choice among idle workers (see
            // `Engine::dispatch`), stored only when it changes: the line is
            // the one the parent reads our sleep flag from.
            let cpu = sys::current_cpu().map_or(0, |c| c.saturating_add(1));
            if cpu != last_cpu {
                last_cpu = cpu;
                // Relaxed: nothing is published with it.
                self.layout.worker_cpu(self.slot).store(cpu, Ordering::Relaxed);
            }
            let mut run = Run::default();
            let mut ctx = Context {
                results: &mut results,
                out: &mut out,
                run: &mut run,
                pacer: &mut pacer,
                done: &mut done,
            };
            let stop = match batch.column() {
                Some((args, arg_width, width)) => {
                    self.run_column(&batch, args, arg_width, width, &mut ctx)?
                }
                None => self.run_each(&batch, &mut ctx)?,
            };
            // A run never spans two batches: the parent files it against one.
            run.close(&mut out);
            if stop {
                // Never an empty message: the parent takes one for a
                // corrupt ring (see `Engine::deliver_all`).
                return if out.is_empty() { Ok(()) } else { self.send(&mut results, &mut out) };
            }
            if !out.is_empty() {
                self.send(&mut results, &mut out)?;
            }
        }
    }

    /// Runs a batch one task at a time. `Ok(true)`: the task limit is
    /// reached (the results are still to be sent).
    fn run_each(&self, batch: &Batch<'_>, ctx: &mut Context<'_>) -> Result<bool> {
        // Results of a fixed width go in runs, if a run can carry them.
        let width = batch.result_width().and_then(|w| run_width(w, self.max_result));
        for arg in batch.args() {
            self.starting(*ctx.done);
            match width {
                Some(width) => ctx.run.task(batch, arg, ctx.out, width, self.max_result),
                None => {
                    let at = message::begin_result(ctx.out);
                    let tag = run_task(batch, arg, ctx.out, at + 5);
                    message::finish_result(ctx.out, at, tag, self.max_result);
                }
            }
            *ctx.done += 1;
            self.layout.progress(self.slot).store(2 * *ctx.done, Ordering::Release);
            if self.after(1, ctx)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs a column batch (see `message::Batch::column`) a slice of tasks
    /// per call: as many as run until the next look at the clock, or fill
    /// the room left before a send. Each task's result joins the open run;
    /// a task that panics, or whose argument does not decode, gets a record
    /// of its own, and the next call goes on after it. `Ok(true)`: the task
    /// limit is reached.
    fn run_column(
        &self,
        batch: &Batch<'_>,
        mut args: &[u8],
        arg_width: usize,
        width: usize,
        ctx: &mut Context<'_>,
    ) -> Result<bool> {
        let progress = self.layout.progress(self.slot);
        // Each result a record of its own (`TooLarge`, or too wide for a
        // run), or in the run.
        let too_large = run_width(width, self.max_result).is_none();
        // One at a time when each task's start is stamped (a task
        // timeout), or each result is a record of its own.
        let one_by_one = self.stamp_tasks || too_large;
        while !args.is_empty() {
            let mut k = (args.len() / arg_width).min(ctx.pacer.until_look());
            if let Some(fit) = self.send_at().saturating_sub(ctx.out.len()).checked_div(width) {
                k = k.min(fit).max(1);
            }
            if let Some(max) = self.max_tasks {
                k = k.min((max as u64).saturating_sub(*ctx.done).max(1) as usize);
            }
            if one_by_one {
                k = 1;
                self.starting(*ctx.done);
            }
            let slice = &args[..k * arg_width];
            let values = ctx.run.open(ctx.out);
            let before = *ctx.done;
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                batch.run_column(slice, ctx.out, progress, ctx.done)
            }));
            // Tasks that returned; their values (all but a last one of the
            // wrong width) are in place.
            let returned = (*ctx.done - before) as usize;
            let odd = match outcome {
                Ok(Ok(())) if ctx.out.len() - values == returned * width && !too_large => None,
                Ok(Ok(())) => Some((returned - 1, ResultTag::Ok, None)),
                Ok(Err(_decode)) => Some((returned, ResultTag::ArgDecode, None)),
                Err(payload) => Some((returned, ResultTag::Panicked, Some(payload))),
            };
            let ran = match odd {
                None => {
                    ctx.run.add(returned as u32);
                    returned
                }
                Some((kept, tag, payload)) => {
                    // Task `kept` of the slice ended otherwise: its own record.
                    ctx.run.add(kept as u32);
                    let mut own = ctx.out.split_off(values + kept * width);
                    if tag != ResultTag::Ok {
                        own.clear();
                        if let Some(payload) = payload {
                            own.extend_from_slice(crate::outcome::panic_message(payload.as_ref()).as_bytes());
                        }
                        *ctx.done += 1;
                        progress.store(2 * *ctx.done, Ordering::Release);
                    }
                    ctx.run.close(ctx.out);
                    let at = message::begin_result(ctx.out);
                    ctx.out.extend_from_slice(&own);
                    message::finish_result(ctx.out, at, tag, self.max_result);
                    kept + 1
                }
            };
            args = &args[ran * arg_width..];
            if self.after(ran, ctx)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Packed results go out once they take this many bytes (a quarter of
    /// the ring).
    fn send_at(&self) -> usize {
        self.layout.ring_capacity() / 4
    }

    /// Publishes that task `done` (counting from 0 over our life) starts.
    fn starting(&self, done: u64) {
        if self.stamp_tasks {
            // Relaxed: the Release store of `progress` below publishes it
            // (the parent loads progress, then this).
            self.layout.task_started_ns(self.slot).store(sys::monotonic_ns(), Ordering::Relaxed);
        }
        // Release: a parent that sees "running" also sees the stamp. The
        // parent reads this word mostly after our death, which the
        // zygote's waitpid and report pipe order anyway.
        self.layout.progress(self.slot).store(2 * done + 1, Ordering::Release);
    }

    /// After `n` more tasks ran: sends the packed results if they are big
    /// or old enough. `Ok(true)`: the task limit is reached.
    fn after(&self, n: usize, ctx: &mut Context<'_>) -> Result<bool> {
        if self.max_tasks.is_some_and(|max| *ctx.done >= max as u64) {
            return Ok(true);
        }
        if ctx.out.len() >= self.send_at() || ctx.pacer.ran(n) {
            ctx.run.close(ctx.out);
            self.send(ctx.results, ctx.out)?;
            ctx.pacer.sent();
        }
        Ok(false)
    }

    /// Takes the next whole message into `msg`, sleeping on our bell while
    /// the ring is empty. `Ok(false)`: the parent is gone.
    fn next_message(&self, tasks: &mut Receiver, msg: &mut Vec<u8>) -> Result<bool> {
        loop {
            let whole = tasks.try_recv_into(msg)?;
            // We freed ring space (a whole message, or fragments of a batch
            // bigger than the ring): a parent streaming into it may be
            // asleep waiting for exactly that.
            shared::wake(self.layout.parent_sleeping_in(self.slot), self.parent_bell);
            if whole {
                return Ok(true);
            }
            if self.sleep(|| tasks.has_data())? == Woke::BellClosed && !tasks.has_data() {
                return Ok(false);
            }
        }
    }

    /// Sends the packed results in `out` (then empties it), waiting for
    /// room as needed.
    fn send(&self, results: &mut Sender, out: &mut Vec<u8>) -> Result<()> {
        let mut sent = 0;
        while !results.try_send_partial(out, &mut sent)? {
            shared::wake(self.layout.parent_sleeping_in(self.slot), self.parent_bell);
            if self.sleep(|| results.has_room())? == Woke::BellClosed {
                return Err(Error::Closed);
            }
        }
        shared::wake(self.layout.parent_sleeping_in(self.slot), self.parent_bell);
        out.clear();
        Ok(())
    }

    fn sleep(&self, ready: impl Fn() -> bool) -> Result<Woke> {
        shared::sleep(&[self.layout.worker_sleeping(self.slot)], self.bell.as_fd(), &[], None, ready)
    }
}

/// The width results travel in runs with, if they may: a run holds no
/// result larger than a result may be (each such is a `TooLarge` record of
/// its own), and none wider than [`message::MAX_RUN_WIDTH`] (a run's
/// length must fit its `u32`).
fn run_width(width: usize, max_result: usize) -> Option<usize> {
    (width <= max_result.min(message::MAX_RUN_WIDTH)).then_some(width)
}

/// The run record being packed, if one is open: where it starts, and how
/// many results it holds.
#[derive(Default)]
struct Run {
    open: Option<(usize, u32)>,
}

impl Run {
    /// Opens a run if none is, and returns where the next value goes.
    fn open(&mut self, out: &mut Vec<u8>) -> usize {
        self.open.get_or_insert_with(|| (message::begin_run(out), 0));
        out.len()
    }

    /// Counts `n` more values appended to the open run.
    fn add(&mut self, n: u32) {
        if let Some((_, count)) = self.open.as_mut() {
            *count += n;
        }
    }

    /// Runs one task whose result should be `width` bytes: a value of that
    /// width joins the open run (opening one); anything else (a panic, an
    /// argument that did not decode, a `Wire` impl whose `FIXED_LEN` is
    /// wrong) closes the run and gets a record of its own.
    #[inline]
    fn task(&mut self, batch: &Batch<'_>, arg: &[u8], out: &mut Vec<u8>, width: usize, max_result: usize) {
        let start = self.open(out);
        let tag = run_task(batch, arg, out, start);
        if tag == ResultTag::Ok && out.len() - start == width {
            self.add(1);
            return;
        }
        let payload = out.split_off(start);
        self.close(out);
        let record = message::begin_result(out);
        out.extend_from_slice(&payload);
        message::finish_result(out, record, tag, max_result);
    }

    /// Completes the open run, if any (an empty one is removed).
    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((at, n)) = self.open.take() {
            message::finish_run(out, at, n);
        }
    }
}

/// Runs one task through its type-erased entry point, appending the
/// encoded result (or the panic message) to `out` from `start` on.
fn run_task(batch: &Batch<'_>, arg: &[u8], out: &mut Vec<u8>, start: usize) -> ResultTag {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| batch.call(arg, out)));
    match outcome {
        Ok(Ok(())) => ResultTag::Ok,
        Ok(Err(_decode)) => {
            out.truncate(start);
            ResultTag::ArgDecode
        }
        Err(payload) => {
            out.truncate(start);
            out.extend_from_slice(crate::outcome::panic_message(payload.as_ref()).as_bytes());
            ResultTag::Panicked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_carry_no_result_too_large_for_a_result_or_for_a_run() {
        assert_eq!(run_width(8, 8), Some(8));
        assert_eq!(run_width(0, 0), Some(0));
        assert_eq!(run_width(9, 8), None);
        // A run's length is a u32: 4 bytes of count and the values. With
        // no limit on results, a value of nearly 4 GiB must still not go
        // in one (its length would wrap).
        assert_eq!(run_width(u32::MAX as usize - 3, usize::MAX), None);
        assert_eq!(run_width(message::MAX_RUN_WIDTH, usize::MAX), Some(message::MAX_RUN_WIDTH));
    }
}
