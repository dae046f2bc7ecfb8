//! The handles a pool call returns: [`AsyncResult`] (owned, sendable,
//! awaitable) and [`Imap`] (a lazy iterator). Results are taken out of the
//! pool under its lock and decoded with the lock released, so a `Wire`
//! impl that itself uses the pool works.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::driver::{Core, Interest, Locked};
use super::engine::{Engine, Submission, Waiter};
use super::message::Call;
use super::{check_owner, Pool};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::Wire;

/// Decodes a result, within the pool's limit on what one result may take.
/// A type that owns no heap memory (nothing to drop: numbers, tuples and
/// arrays of them) takes its own size whatever the bytes say, so it skips
/// the counting, which would cost a trivial task a fifth of its time.
pub(crate) fn decode<R: Wire>(bytes: &[u8], limit: usize) -> Result<R> {
    let decoded = if std::mem::needs_drop::<R>() {
        crate::wire::from_bytes_within(bytes, limit)
    } else {
        R::from_bytes(bytes)
    };
    decoded.map_err(Error::Decode)
}

/// Waits until submission `sub` is complete and takes its results out of
/// the pool (with the pool's result limit). On an error (a deadline, a
/// failing system call) the submission stays, unless `release_on_error`.
fn take_when_complete(
    core: &Core,
    sub: u64,
    deadline: Option<Instant>,
    release_on_error: bool,
) -> Result<(Option<Submission>, usize)> {
    take_when_complete_locked(core, core.lock(), sub, deadline, release_on_error)
}

/// [`take_when_complete`], the pool already locked.
fn take_when_complete_locked<'a>(
    core: &'a Core,
    e: Locked<'a>,
    sub: u64,
    deadline: Option<Instant>,
    release_on_error: bool,
) -> Result<(Option<Submission>, usize)> {
    let limit = e.max_result();
    let complete = |e: &Engine| e.submission(sub).is_none_or(|s| s.is_complete());
    match core.wait_until(e, deadline, Interest { subs: &[sub], any: false }, complete) {
        Ok(mut e) => Ok((e.take_complete(sub), limit)),
        Err(err) => {
            if release_on_error {
                core.lock().release(sub);
            }
            Err(err)
        }
    }
}

/// [`take_when_complete`] for a call that gives up its submission on
/// error (`map`): a vanished submission is `Closed`.
pub(crate) fn wait_for(core: &Core, sub: u64, deadline: Option<Instant>) -> Result<(Submission, usize)> {
    let (s, limit) = take_when_complete(core, sub, deadline, true)?;
    Ok((s.ok_or(Error::Closed)?, limit))
}

/// `apply`'s wait, with the lock its submission was queued under: the
/// one task's outcome, decoded.
pub(crate) fn wait_for_one<'a, R: Wire>(core: &'a Core, e: Locked<'a>, sub: u64) -> Result<R> {
    let (s, limit) = take_when_complete_locked(core, e, sub, None, true)?;
    outcome(s, limit)
}

/// The pending result of [`Pool::apply_async`]: owned, so it may be kept
/// after the call, moved to another thread, or awaited (it is a
/// [`Future`]). `get` takes `&mut self` because a result is taken once: a
/// second `get` is `Err(InvalidState)`, and the borrow checker keeps two
/// threads from racing for it.
///
/// Dropping it never waits: the task still runs, and its result is
/// dropped when it arrives. A handle kept after its pool is dropped yields
/// `Err(Error::Closed)` (unless the result was already in), and keeps the
/// pool's shared memory and a few descriptors until it is dropped itself.
#[derive(Debug)]
pub struct AsyncResult<R> {
    core: Arc<Core>,
    sub: u64,
    taken: bool,
    _value: PhantomData<fn() -> R>,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(core: Arc<Core>, sub: u64) -> Self {
        AsyncResult { core, sub, taken: false, _value: PhantomData }
    }
}

impl<R: Wire> AsyncResult<R> {
    /// Whether the result is there (never blocks).
    pub fn ready(&self) -> bool {
        if self.taken || check_owner(&self.core).is_err() {
            return false;
        }
        let mut e = self.core.lock();
        let _ = self.core.step_if_free(&mut e);
        e.submission(self.sub).is_some_and(|s| s.is_complete())
    }

    /// Waits at most `timeout`. `Err(Error::Timeout)` if the task has not
    /// finished; the task keeps running and you may ask again. Never kills.
    /// A timeout too long to represent as an instant waits without limit.
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.wait(sys::deadline_after(timeout))
    }

    /// Waits for the result.
    pub fn get(&mut self) -> Result<R> {
        self.wait(None)
    }

    fn wait(&mut self, deadline: Option<Instant>) -> Result<R> {
        self.check()?;
        let (s, limit) = take_when_complete(&self.core, self.sub, deadline, false)?;
        self.taken = true;
        outcome(s, limit)
    }

    fn check(&self) -> Result<()> {
        if self.taken {
            return Err(Error::InvalidState("the result was already taken"));
        }
        check_owner(&self.core)
    }
}

/// The one result of a taken `apply_async` submission.
fn outcome<R: Wire>(s: Option<Submission>, limit: usize) -> Result<R> {
    s.and_then(|s| s.get(0).map(|r| r.and_then(|b| decode(b, limit)))).unwrap_or(Err(Error::Closed))
}

/// Awaiting an `AsyncResult` needs no runtime: the pool's driver thread
/// (or a caller pumping at the time) wakes the task when the result is in.
impl<R: Wire> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        if let Err(err) = this.check() {
            return Poll::Ready(Err(err));
        }
        let mut e = this.core.lock();
        let limit = e.max_result();
        let sub = this.sub;
        match e.submission_mut(sub) {
            Some(s) if !s.is_complete() => {
                s.add_waiter(Waiter::Task(cx.waker().clone()), false);
                e.futures_waiting = true;
                match this.core.kick_for_future(&e) {
                    Ok(()) => Poll::Pending,
                    // Nothing would ever wake this future.
                    Err(err) => Poll::Ready(Err(err)),
                }
            }
            _ => {
                let s = e.take_complete(sub);
                drop(e);
                this.taken = true;
                Poll::Ready(outcome(s, limit))
            }
        }
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        if !self.taken && check_owner(&self.core).is_ok() {
            self.core.lock().release(self.sub);
        }
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`].
#[derive(Debug)]
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    call: Call,
    /// The items not yet submitted; `None` once they ran out (or the pool
    /// refused more).
    input: Option<I>,
    chunksize: usize,
    ordered: bool,
    /// Most tasks submitted and not yet yielded: the memory bound.
    window: usize,
    /// Submitted chunks, in input order.
    pending: VecDeque<Chunk>,
    /// Tasks submitted and not yet yielded.
    outstanding: usize,
    next_index: u64,
    /// A refusal to report once, after everything submitted was yielded.
    refused: Option<Error>,
    /// Admitted while the pool took work: the rest of the input is sent
    /// after `close` too (see `Engine::admit`). Given back once the input
    /// is all sent, or with the iterator.
    ticket: Option<u64>,
    /// The pending chunks' ids, for parking on them (kept to reuse).
    waiting_on: Vec<u64>,
    _types: PhantomData<fn(A) -> R>,
}

/// One submitted chunk of an [`Imap`].
#[derive(Debug)]
struct Chunk {
    sub: u64,
    /// Its results, once complete and taken out of the pool: read without
    /// the lock from then on.
    taken: Option<Submission>,
    /// Which of its tasks were yielded.
    yielded: Vec<bool>,
    /// Every task before this one was yielded.
    cursor: usize,
    count: usize,
}

impl Chunk {
    /// Its results: taken, or still in the pool.
    fn results<'e>(&'e self, engine: Option<&'e Engine>) -> Option<&'e Submission> {
        self.taken.as_ref().or_else(|| engine?.submission(self.sub))
    }
}

impl<'p, A: Wire, R: Wire, I: Iterator<Item = A>> Imap<'p, A, R, I> {
    pub(crate) fn new(pool: &'p Pool, call: Call, input: I, chunksize: usize, ordered: bool) -> Self {
        let window = pool.processes().saturating_mul(chunksize).saturating_mul(4).max(64);
        // In a forked child the pool is not ours: never lock it there.
        let ticket = if check_owner(&pool.core).is_ok() { pool.core.lock().admit() } else { None };
        Imap {
            pool,
            call,
            input: Some(input),
            chunksize,
            ordered,
            window,
            pending: VecDeque::new(),
            outstanding: 0,
            next_index: 0,
            refused: None,
            ticket,
            waiting_on: Vec::new(),
            _types: PhantomData,
        }
    }

    /// No more input will be sent: gives the admission back.
    fn end_input(&mut self) {
        self.input = None;
        if let Some(ticket) = self.ticket.take() {
            if check_owner(&self.pool.core).is_ok() {
                self.pool.core.lock().dismiss(ticket);
            }
        }
    }

    /// An iterator that submits nothing and yields `err` once.
    pub(crate) fn refusing(mut self, err: Error) -> Self {
        self.end_input();
        self.refused = Some(err);
        self
    }

    /// Submits chunks until the window is full or the input ends.
    fn refill(&mut self) -> Result<()> {
        while self.outstanding + self.chunksize <= self.window {
            let Some(input) = self.input.as_mut() else { return Ok(()) };
            let chunk = input.by_ref().take(self.chunksize);
            let (sub, n) =
                self.pool.submit(self.call, chunk, self.chunksize, self.next_index, self.ticket)?;
            if n < self.chunksize {
                self.end_input();
            }
            if n == 0 {
                self.pool.core.lock().release(sub);
                return Ok(());
            }
            self.next_index += n as u64;
            self.outstanding += n;
            self.pending.push_back(Chunk { sub, taken: None, yielded: vec![false; n], cursor: 0, count: 0 });
        }
        Ok(())
    }

    /// The position (in `pending`, in its chunk) of a result to yield now.
    /// In order: only the first task not yet yielded qualifies. Without
    /// the engine, only among chunks already taken.
    fn ready_one(&self, engine: Option<&Engine>) -> Option<(usize, usize)> {
        for (p, chunk) in self.pending.iter().enumerate() {
            let Some(s) = chunk.results(engine) else {
                if self.ordered {
                    return None;
                }
                continue;
            };
            for i in chunk.cursor..chunk.yielded.len() {
                if chunk.yielded[i] {
                    continue;
                }
                if s.get(i as u32).is_some() {
                    return Some((p, i));
                }
                if self.ordered {
                    return None;
                }
            }
        }
        None
    }

    /// Waits until a result can be yielded, taking complete chunks out of
    /// the pool. `Ok(None)`: the pool ended with nothing for us.
    fn wait_ready(&mut self) -> Result<Option<(usize, usize)>> {
        let core = &self.pool.core;
        self.waiting_on.clear();
        self.waiting_on.extend(self.pending.iter().filter(|c| c.taken.is_none()).map(|c| c.sub));
        let e = core.lock();
        let interest = Interest { subs: &self.waiting_on, any: true };
        let waited = core.wait_until(e, None, interest, |e| e.finished || self.ready_one(Some(e)).is_some());
        let mut e = waited?;
        let found = self.ready_one(Some(&e));
        if let Some((p, _)) = found {
            // Take the chunk, and the complete ones after it: the next
            // calls then yield them without the lock.
            for chunk in self.pending.range_mut(p..) {
                if chunk.taken.is_none() {
                    chunk.taken = e.take_complete(chunk.sub);
                    if chunk.taken.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Err(e) = self.refill() {
            // No more submissions; what was submitted still comes out.
            self.end_input();
            self.refused = Some(e);
        }
        if self.pending.is_empty() {
            return self.refused.take().map(Err);
        }
        if let Err(e) = check_owner(&self.pool.core) {
            // A copy in a forked child: say so once, then end (the chunks
            // are the parent's; nothing here is locked or released).
            self.pending.clear();
            self.end_input();
            self.outstanding = 0;
            return Some(Err(e));
        }
        // A chunk already taken needs no lock; otherwise wait for one.
        let found = match self.ready_one(None) {
            Some(found) => Ok(Some(found)),
            None => self.wait_ready(),
        };
        let (p, i) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                // The pool ended with nothing for us: nothing more to come.
                self.release_pending();
                self.end_input();
                return Some(Err(Error::Closed));
            }
            Err(e) => {
                // The pool itself failed (its zygote died, a system call
                // failed): say so once and end, instead of repeating it.
                self.release_pending();
                self.end_input();
                return Some(Err(e));
            }
        };
        let limit = self.pool.core.max_result;
        let chunk = &mut self.pending[p];
        let outcome = match chunk.taken.as_ref() {
            Some(s) => s.get(i as u32).unwrap_or(Err(Error::Closed)).and_then(|b| decode(b, limit)),
            // Not complete yet (ordered, chunks of several tasks, or
            // unordered): copy this one result out under the lock.
            None => {
                let copied = {
                    let e = self.pool.core.lock();
                    e.submission(chunk.sub).and_then(|s| s.get(i as u32)).map(|r| r.map(<[u8]>::to_vec))
                };
                copied.unwrap_or(Err(Error::Closed)).and_then(|b| decode(&b, limit))
            }
        };
        chunk.yielded[i] = true;
        chunk.count += 1;
        while chunk.cursor < chunk.yielded.len() && chunk.yielded[chunk.cursor] {
            chunk.cursor += 1;
        }
        self.outstanding -= 1;
        if chunk.count == chunk.yielded.len() {
            if chunk.taken.is_none() {
                self.pool.core.lock().release(chunk.sub);
            }
            self.pending.remove(p);
        }
        Some(outcome)
    }
}

impl<A, R, I> Imap<'_, A, R, I> {
    /// Gives every chunk still in the pool back to it.
    fn release_pending(&mut self) {
        let chunks: Vec<Chunk> = self.pending.drain(..).collect();
        self.outstanding = 0;
        if check_owner(&self.pool.core).is_err() {
            return;
        }
        let mut e = self.pool.core.lock();
        for chunk in chunks.iter().filter(|c| c.taken.is_none()) {
            e.release(chunk.sub);
        }
    }
}

impl<A, R, I> Drop for Imap<'_, A, R, I> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if check_owner(&self.pool.core).is_ok() {
                self.pool.core.lock().dismiss(ticket);
            }
        }
        if !self.pending.is_empty() {
            self.release_pending();
        }
    }
}
