//! `fork_map`: workers forked at the call, so closures and inputs never
//! cross a wire.
//!
//! The workers inherit the closure (with its captures) and the whole input
//! slice by copy-on-write; they claim items with one atomic counter in
//! shared memory (uneven work balances itself), and only results come back,
//! through one result ring per worker. Each side sleeps on its own doorbell
//! as in the pool: the parent on one, worker k on its own (rung when the
//! parent frees room in its ring; it reads end of file if the parent dies).
//!
//! A worker that dies takes the item it was running with it (that item's
//! outcome is `WorkerDied`) and is replaced while items remain, so the
//! other items still get done.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use super::shared::{self, Layout, Woke};
use crate::error::{Error, Result};
use crate::outcome;
use crate::sys::bell::Bell;
use crate::sys::{self, Forked, ParentOnlyFd};
use crate::wire::Wire;

const RING_CAPACITY: usize = 64 * 1024;

struct Child {
    pid: i32,
    /// Readable once the child died: its pidfd (Linux), else the read end
    /// of a pipe whose write end only it should hold (EOF: it died). A
    /// child another thread forks meanwhile may hold that write end too,
    /// delaying the EOF until it ends itself; a pidfd has no such copy.
    sentinel: ParentOnlyFd,
}

/// Applies `f` to every item on `processes` workers forked now, and returns
/// the results in input order, with the same error rules as
/// [`Pool::map`](crate::Pool::map): the first error in input order, after
/// every item has ended.
///
/// Nothing is serialized on the way in: `f` may capture anything, and
/// `items` may be large; the children see both through copy-on-write.
/// Forking happens on the calling thread (see the fork rules in
/// [`crate::process`]).
///
/// Errors: [`Error::InvalidArgument`] for 0 processes or more than
/// [`MAX_PROCESSES`](crate::pool::MAX_PROCESSES) (fewer are forked when
/// there are fewer items); [`Error::Os`] naming the call that failed.
///
/// ```
/// let words = vec!["fork".to_string(), "waitpid".into(), "pipe".into()];
/// let suffix = "(2)"; // a capture: fine here, impossible with Pool::map
/// let lens = mproc::fork_map(2, &words, |w| format!("{w}{suffix}"))?;
/// assert_eq!(lens, vec!["fork(2)", "waitpid(2)", "pipe(2)"]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn fork_map<T, R, F>(processes: usize, items: &[T], f: F) -> Result<Vec<R>>
where
    R: Wire,
    F: Fn(&T) -> R,
{
    if processes == 0 {
        return Err(Error::InvalidArgument("fork_map needs at least 1 process".into()));
    }
    if processes > super::MAX_PROCESSES {
        return Err(Error::InvalidArgument(format!(
            "{processes} processes: fork_map forks at most {}",
            super::MAX_PROCESSES
        )));
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let n = processes.min(items.len());
    let Bell { read: parent_read, write: parent_write } = Bell::new()?;
    let bells = (0..n).map(|_| Bell::new()).collect::<Result<Vec<_>>>()?;
    let (bell_reads, bell_writes) = bells.into_iter().map(|b| (b.read, ParentOnlyFd::new(b.write))).unzip();
    let mut run = Run {
        layout: Layout::new(n, RING_CAPACITY)?,
        parent_read: ParentOnlyFd::new(parent_read),
        parent_write,
        bell_reads,
        bell_writes,
        children: (0..n).map(|_| None).collect(),
    };
    let mut outcome =
        (0..n).try_for_each(|slot| run.spawn(slot, items, &f)).and_then(|()| run.collect(items, &f));
    // Whatever happened, no child outlives the call. On success every child
    // has run out of items and is exiting on its own.
    for child in run.children.iter_mut().filter_map(Option::take) {
        if outcome.is_err() {
            let _ = sys::kill(sys::Pid::from_raw(child.pid), libc::SIGKILL);
        }
        if let Err(e) = sys::waitpid(child.pid, false) {
            outcome = outcome.and(Err(e));
        }
    }
    outcome
}

/// The parent's state for one call. What only the parent may hold is a
/// `ParentOnlyFd`: `fork` closes it in every child.
struct Run {
    layout: Layout,
    /// The parent's doorbell: the parent sleeps on the read end, every
    /// worker rings the write end.
    parent_read: ParentOnlyFd,
    parent_write: OwnedFd,
    /// Worker k's doorbell: k holds the read end, only the parent the write
    /// end (so k reads EOF when the parent dies).
    bell_reads: Vec<OwnedFd>,
    bell_writes: Vec<ParentOnlyFd>,
    /// The live (unreaped) child of each slot.
    children: Vec<Option<Child>>,
}

impl Run {
    /// Forks the worker of `slot` (the first one, or a replacement).
    fn spawn<T, R: Wire, F: Fn(&T) -> R>(&mut self, slot: usize, items: &[T], f: &F) -> Result<()> {
        let (sentinel, sentinel_w) = if sys::have_pidfd() {
            (None, None)
        } else {
            let (r, w) = sys::pipe()?;
            (Some(ParentOnlyFd::new(r)), Some(w))
        };
        let parent = sys::getpid();
        // SAFETY: the child runs only `work` and `_exit`s.
        match unsafe { sys::fork() }? {
            Forked::Child => {
                // Child: keep the sentinel's write end until death and our
                // bell's read end. `fork` closed what is the parent's only
                // (the sentinels' read ends, the bells' write ends, its own
                // bell's read end); the other workers' bells are theirs.
                std::mem::forget(sentinel);
                for (k, read) in self.bell_reads.iter().enumerate() {
                    if k != slot {
                        sys::close_inherited(read.as_raw_fd());
                    }
                }
                // SAFETY: this child uses only its own slot of this call's
                // memory, maps nothing before this, and ends in `_exit`
                // (below), so no copy of a layout is dropped here.
                unsafe {
                    self.layout.unmap_other_pools();
                    self.layout.unmap_all_but(slot, true);
                }
                std::mem::forget(sentinel_w);
                // Die with the parent (Linux); if it died before that took
                // effect, we have been re-parented: leave now.
                let _ = sys::set_parent_death_signal(libc::SIGKILL);
                if sys::getppid() != parent {
                    sys::exit_now(1);
                }
                panic::set_hook(Box::new(|_| {}));
                let worker = Worker {
                    layout: &self.layout,
                    slot,
                    bell: self.bell_reads[slot].as_fd(),
                    parent_bell: self.parent_write.as_fd(),
                };
                // A panic must not unwind into the caller's code, in this
                // process: `f`'s panics are caught per item, this is a
                // backstop for ours.
                let worked = panic::catch_unwind(AssertUnwindSafe(|| worker.work(items, f)));
                let code = if matches!(worked, Ok(Ok(()))) { 0 } else { 1 };
                sys::flush_stdio();
                sys::exit_now(code)
            }
            Forked::Parent(pid) => {
                drop(sentinel_w);
                let sentinel = match sentinel {
                    Some(pipe) => pipe,
                    None => match sys::pidfd_open(pid) {
                        Ok(fd) => ParentOnlyFd::new(fd),
                        Err(e) => {
                            // Nothing would see this child die: end it now.
                            let _ = sys::kill(sys::Pid::from_raw(pid), libc::SIGKILL);
                            let _ = sys::waitpid(pid, false);
                            return Err(e);
                        }
                    },
                };
                self.children[slot] = Some(Child { pid, sentinel });
                Ok(())
            }
        }
    }

    /// Gathers every item's outcome, replacing workers that die.
    fn collect<T, R: Wire, F: Fn(&T) -> R>(&mut self, items: &[T], f: &F) -> Result<Vec<R>> {
        let len = items.len();
        let mut results: Vec<Option<Result<R>>> = (0..len).map(|_| None).collect();
        let mut filled = 0;
        let mut buf = Vec::new();
        let mut last_death: Option<Error> = None;
        let n = self.children.len();
        let mut rings = (0..n).map(|k| Ok(self.layout.result_channel(k)?.1)).collect::<Result<Vec<_>>>()?;
        loop {
            for (k, ring) in rings.iter_mut().enumerate() {
                while ring.try_recv_into(&mut buf)? {
                    filled += file(&mut results, &buf);
                }
                // We freed room in its ring: the worker may be asleep on it.
                shared::wake(self.layout.worker_sleeping(k), self.bell_writes[k].as_fd());
            }
            if filled >= len {
                break;
            }
            let sentinels: Vec<BorrowedFd<'_>> =
                self.children.iter().flatten().map(|c| c.sentinel.as_fd()).collect();
            if sentinels.is_empty() {
                // Every worker is gone and items are left that no one
                // claimed (a worker died between claiming and starting).
                let err = last_death.clone().unwrap_or(Error::Closed);
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(err.clone()));
                }
                break;
            }
            let rings_ready = || rings.iter().any(|r| r.has_data());
            let woke = shared::sleep(
                &self.layout.parent_flags(),
                self.parent_read.as_fd(),
                &sentinels,
                None,
                rings_ready,
            )?;
            if woke != Woke::Other {
                continue;
            }
            // A sentinel hung up: reap that worker, file its running item,
            // and replace it while items remain unclaimed.
            for (k, ring) in rings.iter_mut().enumerate() {
                let Some(child) = &self.children[k] else { continue };
                let ready =
                    sys::poll(&[(child.sentinel.as_fd(), true, false)], Some(std::time::Duration::ZERO))?;
                if !(ready[0].hangup || ready[0].readable) {
                    continue;
                }
                let pid = child.pid;
                // Results it published before dying are good.
                while ring.try_recv_into(&mut buf)? {
                    filled += file(&mut results, &buf);
                }
                let status =
                    sys::waitpid(pid, false)?.ok_or(Error::InvalidState("waitpid returned no status"))?;
                self.children[k] = None;
                // Relaxed: its exit and our waitpid order its stores before this.
                let running = self.layout.running_item(k).load(Ordering::Relaxed);
                if let Some(slot) = running.checked_sub(1).and_then(|i| results.get_mut(i as usize)) {
                    if slot.is_none() {
                        *slot = Some(Err(Error::died(pid, status, Some(running - 1))));
                        filled += 1;
                    }
                }
                if !status.success() {
                    last_death = Some(Error::died(pid, status, None));
                }
                if (self.layout.claim_counter().load(Ordering::Relaxed) as usize) < len {
                    // Nobody uses the slot's ring now: start it afresh.
                    self.layout.reset_slot(k);
                    *ring = self.layout.result_channel(k)?.1;
                    self.spawn(k, items, f)?;
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(Error::Closed))).collect()
    }
}

/// A forked worker's view.
struct Worker<'a> {
    layout: &'a Layout,
    slot: usize,
    bell: BorrowedFd<'a>,
    parent_bell: BorrowedFd<'a>,
}

impl Worker<'_> {
    /// Claim, run, send, until the items run out.
    fn work<T, R: Wire, F: Fn(&T) -> R>(&self, items: &[T], f: &F) -> Result<()> {
        let (mut ring, _) = self.layout.result_channel(self.slot)?;
        let mut out = Vec::new();
        loop {
            // Relaxed: the counter only hands out distinct numbers; the
            // items themselves were copied at fork and never change.
            let i = self.layout.claim_counter().fetch_add(1, Ordering::Relaxed) as usize;
            if i >= items.len() {
                return Ok(());
            }
            // Relaxed: read by the parent only after our death (waitpid).
            self.layout.running_item(self.slot).store(i as u64 + 1, Ordering::Relaxed);
            out.clear();
            out.extend_from_slice(&(i as u64).to_le_bytes());
            // A panic is that item's outcome; the child goes on with the next.
            let _ = outcome::run(|| f(&items[i]), &mut out);
            let mut sent = 0;
            while !ring.try_send_partial(&out, &mut sent)? {
                shared::wake(self.layout.parent_sleeping_in(self.slot), self.parent_bell);
                let sleeper = self.layout.worker_sleeping(self.slot);
                if shared::sleep(&[sleeper], self.bell, &[], None, || ring.has_room())? == Woke::BellClosed {
                    return Err(Error::Closed); // the parent is gone
                }
            }
            shared::wake(self.layout.parent_sleeping_in(self.slot), self.parent_bell);
        }
    }
}

/// Files one result message (`index u64 | tag | payload`, see
/// [`outcome`]); returns 1 if it filled a new slot.
fn file<R: Wire>(results: &mut [Option<Result<R>>], msg: &[u8]) -> usize {
    let Some((index, record)) = msg.split_first_chunk::<8>() else { return 0 };
    let Some(slot) = results.get_mut(u64::from_le_bytes(*index) as usize) else { return 0 };
    if slot.is_some() {
        return 0;
    }
    *slot = Some(outcome::decode(record));
    1
}
