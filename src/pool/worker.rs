//! A worker's life: run the initializer, then take batches of tasks from
//! the task ring, run each, and put each result on the result ring, in
//! order. The parent matches results to tasks by that order alone.

use std::os::fd::{AsFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};

use super::message::{self, Batch, ResultTag};
use super::shared::{self, Layout, Woke};
use crate::error::{Error, Result};
use crate::ring::Sender;
use crate::sys;

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
}

impl Worker<'_> {
    /// Runs until told to exit, the parent disappears, or the task limit is
    /// reached; then `_exit`s.
    pub(crate) fn run(self) -> ! {
        // A task's panic is reported to the caller as Error::Panicked with
        // its message; printing it here too would only be noise.
        panic::set_hook(Box::new(|_| {}));
        if let Some(init) = self.initializer {
            if panic::catch_unwind(init).is_err() {
                sys::exit_now(1);
            }
        }
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
        let mut result = Vec::new();
        let mut out = Vec::new();
        let mut done = 0usize;
        loop {
            // Take the next message, sleeping on our bell when the ring is empty.
            loop {
                if tasks.try_recv_into(&mut msg)? {
                    break;
                }
                if self.sleep(|| tasks.has_data())? == Woke::BellClosed && !tasks.has_data() {
                    return Ok(()); // the parent is gone
                }
            }
            // We freed ring space; a parent streaming a big batch may wait on it.
            shared::wake(self.layout.parent_sleeping(), self.parent_bell);
            let batch = match message::decode_task_message(&msg) {
                Ok(Some(batch)) => batch,
                Ok(None) => return Ok(()), // told to exit
                Err(_) => {
                    // Unreadable batch: say so for its first task and leave;
                    // the parent re-queues the rest when it sees us die.
                    self.send_result(&mut results, &mut out, ResultTag::Corrupt, &[])?;
                    return Err(Error::InvalidState("corrupt task message"));
                }
            };
            for arg in batch.args() {
                let tag = run_task(&batch, arg, &mut result);
                self.send_result(&mut results, &mut out, tag, &result)?;
                done += 1;
                if self.max_tasks == Some(done) {
                    return Ok(());
                }
            }
        }
    }

    fn send_result(&self, results: &mut Sender, out: &mut Vec<u8>, tag: ResultTag, payload: &[u8]) -> Result<()> {
        out.clear();
        out.push(tag as u8);
        out.extend_from_slice(payload);
        let mut sent = 0;
        while !results.try_send_partial(out, &mut sent)? {
            shared::wake(self.layout.parent_sleeping(), self.parent_bell);
            if self.sleep(|| results.has_room())? == Woke::BellClosed {
                return Err(Error::Closed);
            }
        }
        shared::wake(self.layout.parent_sleeping(), self.parent_bell);
        Ok(())
    }

    fn sleep(&self, ready: impl Fn() -> bool) -> Result<Woke> {
        shared::sleep(self.layout.worker_sleeping(self.slot), self.bell.as_fd(), &[], None, ready)
    }
}

/// Runs one task through its type-erased entry point, leaving the encoded
/// result (or panic message) in `out`.
fn run_task(batch: &Batch<'_>, arg: &[u8], out: &mut Vec<u8>) -> ResultTag {
    out.clear();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| batch.call(arg, out)));
    match outcome {
        Ok(Ok(())) => ResultTag::Ok,
        Ok(Err(_decode)) => ResultTag::ArgDecode,
        Err(payload) => {
            out.clear();
            out.extend_from_slice(crate::process::panic_message(payload.as_ref()).as_bytes());
            ResultTag::Panicked
        }
    }
}
