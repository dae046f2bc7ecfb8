//! Writing to mproc's own stdout and stderr so that a stop signal acts at
//! once, even when the reader has stopped reading (`mproc run ... | less`,
//! then Ctrl-C).
//!
//! A blocking `write` into a full pipe would wait for the reader, and a
//! signal handler installed with `SA_RESTART` would not even cut it short.
//! So into a pipe or socket every write is preceded by one `poll` for room
//! on the descriptor *and* for the runner's self-pipe: when a stop signal
//! has arrived, the write is given up with `EINTR` and the caller stops
//! the run. At most `PIPE_BUF` bytes go per such write — with room
//! reported, it cannot block. Files and devices (`/dev/null`, a terminal)
//! are written at once; should a terminal block (Ctrl-S), the stop
//! signals' handlers, installed without `SA_RESTART`, interrupt the write.

use std::cell::Cell;
use std::os::fd::BorrowedFd;

use crate::error::{Error, OsError, Result};
use crate::sys::{self, signal};

/// One output descriptor of the run.
pub(crate) struct Sink<'a> {
    fd: BorrowedFd<'a>,
    /// The run's self-pipe (see the engine): readable after any signal.
    wake: BorrowedFd<'a>,
    /// A pipe or socket: poll for room (and the self-pipe) before each
    /// write, of at most `PIPE_BUF` bytes.
    poll_first: bool,
    /// Bit `n` set: signal `n` stops the run.
    stop_mask: u32,
    /// The self-pipe was drained here (a SIGCHLD wake-up the engine has not
    /// seen): the engine must reap without sleeping.
    drained: Cell<bool>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>, wake: BorrowedFd<'a>, stop_signals: &[i32]) -> Sink<'a> {
        let stop_mask = stop_signals.iter().fold(0u32, |mask, &sig| mask | 1 << sig);
        Sink { fd, wake, poll_first: sys::is_pipe_or_socket(fd), stop_mask, drained: Cell::new(false) }
    }

    /// Writes all of `data`; fails with `EINTR` ([`is_interrupted`]) as soon
    /// as a stop signal is pending, whatever the reader does.
    pub(crate) fn write_all(&self, mut data: &[u8]) -> Result<()> {
        // Not a pipe: try at once; poll only if the descriptor says "later".
        let mut must_poll = self.poll_first;
        while !data.is_empty() {
            if signal::peek_pending_signals() & self.stop_mask != 0 {
                return Err(interrupted());
            }
            if must_poll && !self.wait_for_room()? {
                continue;
            }
            let end = if self.poll_first { data.len().min(libc::PIPE_BUF) } else { data.len() };
            match sys::write_interruptible(self.fd, &data[..end]) {
                Ok(n) => data = &data[n..],
                // A signal: checked at the next turn.
                Err(Error::Os(e)) if e.errno == libc::EINTR => {}
                // An inherited O_NONBLOCK we must not change: wait for room.
                Err(Error::Os(e)) if e.errno == libc::EAGAIN => must_poll = true,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// One `poll` for room on the descriptor or a signal on the self-pipe;
    /// whether there is room (or an error to meet by writing).
    fn wait_for_room(&self) -> Result<bool> {
        let ready = sys::poll(&[(self.fd, false, true), (self.wake, true, false)], None)?;
        if ready[1].readable && signal::peek_pending_signals() & self.stop_mask == 0 {
            // Only SIGCHLD: drained, or poll would return at once again.
            drain_wake(self.wake);
            self.drained.set(true);
        }
        Ok(ready[0].writable || ready[0].hangup)
    }

    /// Whether the self-pipe was drained since the last call.
    pub(crate) fn take_drained(&self) -> bool {
        self.drained.replace(false)
    }
}

/// Empties the run's non-blocking self-pipe. A pipe read returns all that
/// is buffered up to the size asked for, so a short read means it is empty
/// (one `read` per wake-up, not two). Errors cannot happen on our own pipe;
/// nothing would be lost if one did: signals are recorded apart from the
/// bytes.
pub(crate) fn drain_wake(wake: BorrowedFd<'_>) {
    let mut scratch = [0u8; 256];
    while matches!(sys::read(wake, &mut scratch), Ok(n) if n == scratch.len()) {}
}

fn interrupted() -> Error {
    Error::Os(OsError { call: "write", pid: None, errno: libc::EINTR })
}

/// Whether a write was given up for a stop signal.
pub(crate) fn is_interrupted(err: &Error) -> bool {
    matches!(err, Error::Os(e) if e.errno == libc::EINTR)
}
