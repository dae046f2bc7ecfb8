//! Writing to mproc's own stdout and stderr so that a stop signal acts at
//! once, even when the reader has stopped reading (`mproc run ... | less`,
//! then Ctrl-C).
//!
//! A blocking `write` into a full pipe would wait for the reader, and a
//! signal handler installed with `SA_RESTART` would not even cut it short.
//! So every write is preceded by one `poll` for room on the descriptor *and*
//! for the runner's self-pipe: when a stop signal has arrived, the write is
//! given up with `EINTR` and the caller stops the run. Into a pipe, at most
//! `PIPE_BUF` bytes go per write — with room reported, such a write cannot
//! block. Elsewhere (a terminal held by Ctrl-S) the stop signals' handlers,
//! installed without `SA_RESTART`, interrupt a blocked write.

use std::cell::Cell;
use std::os::fd::BorrowedFd;

use crate::error::{Error, OsError, Result};
use crate::sys::{self, signal};

/// One output descriptor of the run.
pub(crate) struct Sink<'a> {
    fd: BorrowedFd<'a>,
    /// The run's self-pipe (see the engine): readable after any signal.
    wake: BorrowedFd<'a>,
    /// Bytes per write: `PIPE_BUF` into a pipe, else everything at once.
    chunk: usize,
    /// Bit `n` set: signal `n` stops the run.
    stop_mask: u32,
    /// The self-pipe was drained here (a SIGCHLD wake-up the engine has not
    /// seen): the engine must reap without sleeping.
    drained: Cell<bool>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>, wake: BorrowedFd<'a>, stop_signals: &[i32]) -> Sink<'a> {
        let chunk = if sys::is_fifo(fd) { libc::PIPE_BUF } else { usize::MAX };
        let stop_mask = stop_signals.iter().fold(0u32, |mask, &sig| mask | 1 << sig);
        Sink { fd, wake, chunk, stop_mask, drained: Cell::new(false) }
    }

    /// Writes all of `data`; fails with `EINTR` ([`is_interrupted`]) as soon
    /// as a stop signal is pending, whatever the reader does.
    pub(crate) fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let ready = sys::poll(&[(self.fd, false, true), (self.wake, true, false)], None)?;
            if ready[1].readable {
                if signal::peek_pending_signals() & self.stop_mask != 0 {
                    return Err(interrupted());
                }
                // Only SIGCHLD: drained, or poll would return at once again.
                // (No error is possible on our own non-blocking pipe.)
                let _ = sys::bell::drain(self.wake);
                self.drained.set(true);
            }
            if !(ready[0].writable || ready[0].hangup) {
                continue;
            }
            let end = data.len().min(self.chunk);
            match sys::write_interruptible(self.fd, &data[..end]) {
                Ok(n) => data = &data[n..],
                // A signal (acted upon above, at the next turn) or an
                // inherited O_NONBLOCK we must not change: poll again.
                Err(Error::Os(e)) if e.errno == libc::EINTR || e.errno == libc::EAGAIN => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Whether the self-pipe was drained since the last call.
    pub(crate) fn take_drained(&self) -> bool {
        self.drained.replace(false)
    }
}

fn interrupted() -> Error {
    Error::Os(OsError { call: "write", pid: None, errno: libc::EINTR })
}

/// Whether a write was given up for a stop signal.
pub(crate) fn is_interrupted(err: &Error) -> bool {
    matches!(err, Error::Os(e) if e.errno == libc::EINTR)
}
