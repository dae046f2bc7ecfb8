//! Doorbells: one-byte wake-ups through a non-blocking pipe (used by the
//! ring), and the end of file that tells a sleeper its peer is gone.
//!
//! Ringing a bell whose reader died must not kill the ringer. A `write` to a
//! pipe with no reader raises `SIGPIPE`, whose default action ends the
//! process; Rust's runtime ignores it, but a program may have restored the
//! default (CLI tools often do, to die quietly under `| head`). So the write
//! is made with `SIGPIPE` blocked in the calling thread (the signal a failed
//! `write` raises is directed at that thread), and a `SIGPIPE` it raised is
//! taken off the pending set before the old mask comes back. This costs two
//! `pthread_sigmask` calls, only on the slow path: a bell is rung only when
//! the peer is asleep, and that wake-up costs far more.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::sys::{pipe_nonblocking, read, trace, write};

/// A doorbell: a pipe whose bytes mean only "look again". Both ends are
/// non-blocking: a full pipe already holds a pending wake-up, and the
/// sleeper drains it until `EAGAIN` (waiting is `poll`'s job).
#[derive(Debug)]
pub(crate) struct Bell {
    /// The sleeper's end: `poll` it, then [`drain`] it.
    pub(crate) read: OwnedFd,
    /// The waker's end: [`ring`] it.
    pub(crate) write: OwnedFd,
}

impl Bell {
    /// A new bell, both ends close-on-exec and non-blocking.
    pub(crate) fn new() -> Result<Bell> {
        let (read, write) = pipe_nonblocking()?;
        Ok(Bell { read, write })
    }
}

/// What became of one ring of the bell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rang {
    /// The byte is in the pipe: the sleeper's `poll` returns.
    Rung,
    /// The pipe is full (`EAGAIN`): a wake-up is already pending.
    AlreadyPending,
    /// No one holds the read end any more (`EPIPE`): the peer is gone.
    PeerGone,
}

/// Writes one byte to the bell's (non-blocking) write end.
pub(crate) fn ring(fd: BorrowedFd<'_>) -> Result<Rang> {
    let outcome = match write_without_sigpipe(fd, &[1]) {
        Ok(_) => Rang::Rung,
        Err(Error::Os(e)) if is_would_block(e.errno) => Rang::AlreadyPending,
        Err(Error::Os(e)) if e.errno == libc::EPIPE => Rang::PeerGone,
        Err(e) => return Err(e),
    };
    trace!("doorbell ring(fd {}) = {outcome:?}", fd.as_raw_fd());
    Ok(outcome)
}

/// Empties the bell's (non-blocking) read end. `Ok(false)` means end of
/// file: every write end is closed, so the peer is gone.
pub(crate) fn drain(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut scratch = [0u8; 64];
    loop {
        match read(fd, &mut scratch) {
            Ok(0) => {
                trace!("doorbell eof(fd {}): peer gone", fd.as_raw_fd());
                return Ok(false);
            }
            Ok(_) => continue,
            Err(Error::Os(e)) if is_would_block(e.errno) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

fn is_would_block(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EWOULDBLOCK
}

/// `write(2)` with `SIGPIPE` blocked in this thread; a `SIGPIPE` the write
/// raised is consumed, one that was pending before is left alone.
pub(crate) fn write_without_sigpipe(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize> {
    let blocked = SigpipeBlocked::new();
    let result = write(fd, buf);
    // Only a failed write can have raised one: spare the check otherwise.
    let raised = matches!(&result, Err(Error::Os(e)) if e.errno == libc::EPIPE);
    blocked.restore(raised);
    result
}

/// Writes all of `buf` with [`write_without_sigpipe`]: a reader that is
/// gone is `Err` naming `write` with `EPIPE`, never a death by `SIGPIPE`.
pub(crate) fn write_all_without_sigpipe(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        let n = write_without_sigpipe(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// `SIGPIPE` blocked in this thread for as long as the guard lives, for a
/// caller that makes many writes (the command runner's output): a write
/// into a pipe with no reader fails with `EPIPE` instead of ending the
/// process. Dropping it consumes a `SIGPIPE` raised meanwhile (one pending
/// before is left alone) and restores the mask.
pub(crate) struct SigpipeBlocked {
    old: libc::sigset_t,
    was_blocked: bool,
    was_pending: bool,
}

impl SigpipeBlocked {
    pub(crate) fn new() -> SigpipeBlocked {
        let pipe_only = sigpipe_set();
        // SAFETY: sigset_t is plain data; pthread_sigmask fills it in.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both sets are valid; SIG_BLOCK only adds SIGPIPE to this
        // thread's mask. It fails only for an invalid `how`.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut old) };
        // SAFETY: `old` was filled in by pthread_sigmask.
        let was_blocked = unsafe { libc::sigismember(&old, libc::SIGPIPE) } == 1;
        // Pending only if it was blocked already (see write_without_sigpipe).
        let was_pending = was_blocked && sigpipe_pending();
        SigpipeBlocked { old, was_blocked, was_pending }
    }

    /// Ends the guard; `maybe_raised`: a write may have raised SIGPIPE
    /// (false spares the `sigpending` call).
    fn restore(mut self, maybe_raised: bool) {
        self.undo(maybe_raised);
        std::mem::forget(self);
    }

    fn undo(&mut self, maybe_raised: bool) {
        if maybe_raised && !self.was_pending && sigpipe_pending() {
            let mut taken: libc::c_int = 0;
            // SAFETY: SIGPIPE is pending and blocked, so sigwait returns at
            // once, removing it; both pointers are valid.
            unsafe { libc::sigwait(&sigpipe_set(), &mut taken) };
        }
        if !self.was_blocked {
            // SAFETY: restores the mask pthread_sigmask reported in new().
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
        }
    }
}

impl Drop for SigpipeBlocked {
    fn drop(&mut self) {
        self.undo(true);
    }
}

fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and
    // sigaddset with a valid signal number cannot fail.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}

fn sigpipe_pending() -> bool {
    // SAFETY: sigset_t is plain data; sigpending fills it in (it cannot fail
    // with a valid pointer).
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        libc::sigismember(&pending, libc::SIGPIPE) == 1
    }
}
