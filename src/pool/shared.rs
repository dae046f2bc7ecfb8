//! The pool's shared memory and doorbells.
//!
//! `MAP_SHARED` mappings, made before the zygote is forked, so the zygote
//! and every worker it forks see the same pages: one control block (the
//! zygote's report word for the parent; `fork_map`'s claim counter), and
//! one mapping per slot. A worker keeps only its own slot: right after it
//! is forked it unmaps the other slots and (in a pool) the control block,
//! and a pool's zygote unmaps every other pool's memory, so a wild write in
//! a worker reaches its own rings and nothing else:
//!
//! ```text
//! control (1 page)    slot 0 (one mapping)                                          slot 1 ...
//! +-----------------+ +-----------------+-----------------+--------------+--------------+
//! | reports_pending | | worker_sleeping | parent_sleeping | tasks ring:  | results ring:|
//! | (fork_map:      | | lifecycle       | (this worker's  | parent ->    | worker ->    |
//! |  claim counter) | | progress, stamp |  copy)          | worker       | parent       |
//! +-----------------+ +-----------------+-----------------+--------------+--------------+
//! ```
//!
//! Each side sleeps on exactly one pipe, its doorbell: the parent on
//! `parent_bell` (any worker may ring it), worker k on `worker_bell[k]`
//! (only the parent rings it). A waker writes a byte only when the sleeper's
//! flag says it is asleep, so a busy pool makes no doorbell syscalls.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ring::{self, Receiver, Sender};
use crate::sys::{self, bell, shm::SharedMapping};

/// One cache-line-sized (two lines: adjacent-line prefetch) sleep flag,
/// with the words its owner publishes about its progress.
#[repr(C, align(128))]
struct SleepFlag {
    /// 1 while its owner is asleep (or about to be) on its doorbell, else 0.
    /// Only the owner writes it: a waker that cleared it could lose a later
    /// wake-up and deadlock both sides.
    sleeping: AtomicU32,
    /// In a slot, pool: how far the worker got before its first task
    /// ([`WORKER_FORKED`], [`WORKER_INITIALIZING`], [`WORKER_READY`]);
    /// written only by the worker. Tells a failed initializer (blame a
    /// task) from a worker killed from outside while idle (blame none).
    lifecycle: AtomicU32,
    /// In the control block, pool: 1 while the zygote has written reports
    /// the parent has not read (the zygote sets it, the parent clears it).
    /// In a slot, written only by the slot's worker. Pool: the worker's progress,
    /// `2 × tasks finished + 1` while a task runs (`2 × tasks finished`
    /// between tasks), counted since the worker was forked. `fork_map`: in
    /// the control block, the next item to claim; in a slot, 1 + the item
    /// its worker is running (0: none).
    counter: AtomicU64,
    /// Pool with a task timeout only: when the running task started, in
    /// `CLOCK_MONOTONIC` nanoseconds (one clock for every process).
    stamp: AtomicU64,
    /// Pool, in a slot: 1 + the CPU the worker ran on when it took its
    /// latest batch (0: not known). Written only by the worker; the parent
    /// only compares it with its own CPU, to pick among idle workers, so a
    /// worker that scribbles on it changes nothing but which idle worker
    /// gets a task.
    cpu: AtomicU32,
}

/// A worker's [`SleepFlag::lifecycle`]: forked, nothing run yet.
pub(crate) const WORKER_FORKED: u32 = 0;
/// Running the pool's initializer.
pub(crate) const WORKER_INITIALIZING: u32 = 1;
/// Initialized: from now on only its tasks can fail it.
pub(crate) const WORKER_READY: u32 = 2;

const FLAG: usize = std::mem::size_of::<SleepFlag>();
const _: () = assert!(FLAG == 128 && std::mem::align_of::<SleepFlag>() == 128);
/// A slot's mapping starts with two flag lines: the worker's own, and the
/// parent's sleep flag as this worker sees it (a copy per slot, so a worker
/// that scribbles on it loses only its own wake-ups). Its rings follow.
const SLOT_HEADER: usize = 2 * FLAG;

/// The pool's shared memory: a control mapping (the zygote's report word;
/// `fork_map`'s parent flag and claim counter) and one mapping per slot
/// (the worker's flag, its copy of the parent's, and its two rings). A pool
/// worker unmaps every slot but its own, and the control block, right after
/// it is forked ([`Layout::unmap_all_but`]), so a wild write in one worker
/// cannot reach another's tasks or results, nor the parent's bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    control: Arc<SharedMapping>,
    slots: Vec<Arc<SharedMapping>>,
    ring_capacity: usize,
}

impl Layout {
    /// Bytes one slot's mapping takes, `None` past `usize`.
    fn slot_len(ring_capacity: usize) -> Option<usize> {
        ring::region_size(ring_capacity).checked_mul(2)?.checked_add(SLOT_HEADER)
    }

    /// Maps room for `slots` workers with rings of `ring_capacity` bytes
    /// (a power of two). The memory starts zeroed: every flag 0, every ring
    /// empty.
    ///
    /// A size past what the address space holds is
    /// [`Error::InvalidArgument`]; one the kernel refuses is `Error::Os`
    /// naming the call that refused it (`ftruncate`, `mmap`).
    pub(crate) fn new(slots: usize, ring_capacity: usize) -> Result<Layout> {
        let slot_len = Self::slot_len(ring_capacity)
            .filter(|&len| slots.checked_mul(len).is_some_and(|all| all <= isize::MAX as usize))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{slots} workers with rings of {ring_capacity} bytes do not fit in memory"
                ))
            })?;
        let control = Arc::new(SharedMapping::new_for_pool(FLAG)?);
        let slots =
            (0..slots).map(|_| SharedMapping::new_for_pool(slot_len).map(Arc::new)).collect::<Result<_>>()?;
        let layout = Layout { control, slots, ring_capacity };
        for slot in 0..layout.slots.len() {
            layout.reset_slot(slot);
        }
        Ok(layout)
    }

    /// How many worker slots.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// In a child just forked to work for slot `keep`: unmaps every other
    /// slot, and the control block unless `keep_control` (`fork_map`'s
    /// children share its claim counter), so that nothing this process
    /// does, however wild, can write there.
    ///
    /// # Safety
    /// The calling process must never use what it unmapped again and never
    /// drop a copy of this layout (a worker ends in `_exit`): the handles
    /// still name the unmapped ranges, which a later mapping may reuse.
    pub(crate) unsafe fn unmap_all_but(&self, keep: usize, keep_control: bool) {
        for (j, slot) in self.slots.iter().enumerate() {
            if j != keep {
                // SAFETY: forwarded from the caller: slot j is never touched
                // (nor its handle dropped) in this process again.
                unsafe { slot.unmap_in_forked_child() };
            }
        }
        if !keep_control {
            // SAFETY: as above, for the control block.
            unsafe { self.control.unmap_in_forked_child() };
        }
    }

    /// Where each of this layout's mappings starts.
    pub(crate) fn addresses(&self) -> Vec<*mut u8> {
        std::iter::once(&self.control).chain(&self.slots).map(|m| m.as_ptr()).collect()
    }

    /// In a child just forked for this layout's pool (its zygote, or a
    /// `fork_map` child): unmaps every other pool's memory, so a wild write
    /// here or in the workers it forks cannot reach another pool's rings.
    ///
    /// # Safety
    /// As for [`sys::shm::unmap_parents_pool_mappings`]: call right after
    /// the fork, in a process that ends in `_exit`.
    pub(crate) unsafe fn unmap_other_pools(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { sys::shm::unmap_parents_pool_mappings(&self.addresses()) };
    }

    fn slot_base(&self, slot: usize) -> *mut u8 {
        self.slots[slot].as_ptr()
    }

    fn flag(&self, base: *mut u8) -> &AtomicU32 {
        // SAFETY: `base` points at a SleepFlag-sized, 128-aligned region of
        // the mapping (page-aligned base + multiples of 128), which lives as
        // long as `self`. Atomics are the one sound way to share a word with
        // another process.
        unsafe { &(*base.cast::<SleepFlag>()).sleeping }
    }

    fn counter(&self, base: *mut u8) -> &AtomicU64 {
        // SAFETY: as in `flag`.
        unsafe { &(*base.cast::<SleepFlag>()).counter }
    }

    fn stamp(&self, base: *mut u8) -> &AtomicU64 {
        // SAFETY: as in `flag`.
        unsafe { &(*base.cast::<SleepFlag>()).stamp }
    }

    /// Pool: how far worker `slot` got before its first task (see
    /// [`SleepFlag::lifecycle`]).
    pub(crate) fn lifecycle(&self, slot: usize) -> &AtomicU32 {
        let base = self.slot_base(slot);
        // SAFETY: as in `flag`.
        unsafe { &(*base.cast::<SleepFlag>()).lifecycle }
    }

    /// Pool: where worker `slot` last ran (see [`SleepFlag::cpu`]).
    pub(crate) fn worker_cpu(&self, slot: usize) -> &AtomicU32 {
        let base = self.slot_base(slot);
        // SAFETY: as in `flag`.
        unsafe { &(*base.cast::<SleepFlag>()).cpu }
    }

    /// Pool: worker `slot`'s progress word (see [`SleepFlag`]).
    pub(crate) fn progress(&self, slot: usize) -> &AtomicU64 {
        self.counter(self.slot_base(slot))
    }

    /// Pool: when worker `slot`'s running task started (task timeouts only).
    pub(crate) fn task_started_ns(&self, slot: usize) -> &AtomicU64 {
        self.stamp(self.slot_base(slot))
    }

    /// Each ring's capacity in bytes.
    pub(crate) fn ring_capacity(&self) -> usize {
        self.ring_capacity
    }

    /// `fork_map`'s shared claim counter.
    pub(crate) fn claim_counter(&self) -> &AtomicU64 {
        self.counter(self.control.as_ptr())
    }

    /// Pool: non-zero while the zygote has written reports the parent has
    /// not read yet. Spares the parent a `read` on the report pipe at each
    /// step of its loop.
    pub(crate) fn reports_pending(&self) -> &AtomicU64 {
        self.counter(self.control.as_ptr())
    }

    /// `fork_map`: 1 + the item worker `slot` is running, 0 when none.
    pub(crate) fn running_item(&self, slot: usize) -> &AtomicU64 {
        self.counter(self.slot_base(slot))
    }

    /// The parent's sleep flag as worker `slot` sees it: the parent raises
    /// every slot's copy before it sleeps (see [`sleep`]), so a worker that
    /// clears its own copy loses only its own wake-ups.
    pub(crate) fn parent_sleeping_in(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: the second flag line of the slot's mapping (SLOT_HEADER
        // bytes at its start), 128-aligned, alive as long as `self`.
        self.flag(unsafe { self.slot_base(slot).add(FLAG) })
    }

    /// Every slot's copy of the parent's sleep flag.
    pub(crate) fn parent_flags(&self) -> Vec<&AtomicU32> {
        (0..self.slots.len()).map(|k| self.parent_sleeping_in(k)).collect()
    }

    /// Worker `slot`'s sleep flag.
    pub(crate) fn worker_sleeping(&self, slot: usize) -> &AtomicU32 {
        self.flag(self.slot_base(slot))
    }

    /// The parent-to-worker ring of `slot`: the parent keeps the sender,
    /// the worker the receiver. No doorbells: the pool rings its own.
    pub(crate) fn task_channel(&self, slot: usize) -> Result<(Sender, Receiver)> {
        ring::attach(self.slots[slot].clone(), SLOT_HEADER, self.ring_capacity)
    }

    /// The worker-to-parent ring of `slot`: the worker keeps the sender.
    pub(crate) fn result_channel(&self, slot: usize) -> Result<(Sender, Receiver)> {
        let offset = SLOT_HEADER + ring::region_size(self.ring_capacity);
        ring::attach(self.slots[slot].clone(), offset, self.ring_capacity)
    }

    /// Empties both rings of `slot` and clears its flags. Only while no
    /// worker is attached to the slot (before the first, after a death).
    pub(crate) fn reset_slot(&self, slot: usize) {
        ring::reset(&self.slots[slot], SLOT_HEADER);
        ring::reset(&self.slots[slot], SLOT_HEADER + ring::region_size(self.ring_capacity));
        self.worker_sleeping(slot).store(0, Ordering::SeqCst);
        self.lifecycle(slot).store(WORKER_FORKED, Ordering::SeqCst);
        self.running_item(slot).store(0, Ordering::SeqCst);
        self.task_started_ns(slot).store(0, Ordering::SeqCst);
        self.worker_cpu(slot).store(0, Ordering::SeqCst);
    }
}

/// Wakes a sleeper if its flag is up. Call after publishing the data it
/// waits for. A sleeper that is gone (its bell's read end closed) is not an
/// error here, and never raises `SIGPIPE` ([`bell::ring`]): its death
/// reaches the pool through the zygote's report.
pub(crate) fn wake(flag: &AtomicU32, bell: BorrowedFd<'_>) {
    // SeqCst fence: orders our earlier publish (ring index store) before the
    // flag load, pairing with the fence in `sleep` between the sleeper's
    // flag store and its re-check. One of the two sides must see the other.
    fence(Ordering::SeqCst);
    // Relaxed is enough after the fence.
    if flag.load(Ordering::Relaxed) != 0 {
        // Rung, already pending, or nobody left to wake: all fine here.
        let _ = bell::ring(bell);
    }
}

/// Why `sleep` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// `ready()` was already true, or something rang.
    Ready,
    /// The doorbell's write ends are all closed: the peer is gone.
    BellClosed,
    /// The timeout passed, or one of `extra` fds became readable (or hung up).
    Other,
}

/// Spin-then-sleep: spins briefly re-checking `ready` (the ring's policy,
/// [`ring::spin`]), then raises `flags` (every copy of the sleeper's flag
/// a waker may read), re-checks, and sleeps in `poll` on `bell` (plus
/// `extra` fds) for at most `timeout`. The flags are cleared by us, the
/// sleeper, and only by us.
pub(crate) fn sleep(
    flags: &[&AtomicU32],
    bell: BorrowedFd<'_>,
    extra: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    ready: impl Fn() -> bool,
) -> Result<Woke> {
    if ring::spin(|| Ok(ready()))? {
        return Ok(Woke::Ready);
    }
    sleep_without_spin(flags, bell, extra, timeout, ready)
}

/// [`sleep`] without the spin: for a sleeper that has nothing to catch in
/// the next microseconds (and must not take a CPU from the workers).
pub(crate) fn sleep_without_spin(
    flags: &[&AtomicU32],
    bell: BorrowedFd<'_>,
    extra: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    ready: impl Fn() -> bool,
) -> Result<Woke> {
    let raise = |on: u32| flags.iter().for_each(|flag| flag.store(on, Ordering::Relaxed));
    raise(1);
    // Pairs with the fence in `wake`: after this, a waker that publishes
    // later must see the flag, and we must see anything published before.
    fence(Ordering::SeqCst);
    if ready() {
        raise(0);
        return Ok(Woke::Ready);
    }
    sys::trace!("doorbell wait(fd {})", std::os::fd::AsRawFd::as_raw_fd(&bell));
    let mut fds = Vec::with_capacity(1 + extra.len());
    fds.push((bell, true, false));
    fds.extend(extra.iter().map(|&fd| (fd, true, false)));
    let polled = sys::poll(&fds, timeout);
    let woke = match &polled {
        // Another fd's news comes first: a bell that hung up because the
        // peer died is often the echo of what the extra fd says (the
        // zygote's report pipe reads EOF when the whole pool is gone).
        Ok(ready) if ready[1..].iter().any(|r| r.readable || r.hangup) => {
            bell::drain(bell).map(|_| Woke::Other)
        }
        Ok(ready) if ready[0].readable || ready[0].hangup => {
            bell::drain(bell).map(|open| if open { Woke::Ready } else { Woke::BellClosed })
        }
        _ => Ok(Woke::Other),
    };
    // Relaxed: the next `ready()` check by the owner re-reads the ring with
    // acquire loads of its own; clearing only stops wakers' syscalls.
    raise(0);
    polled?;
    woke
}
