//! The pool's shared memory and doorbells.
//!
//! One `MAP_SHARED` mapping, made before the zygote is forked, so the zygote
//! and every worker it forks see the same pages:
//!
//! ```text
//! +-----------------+------------------+----------------+------------------+---
//! | control (128 B) | slot 0 (128 B)   | slot 0 tasks   | slot 0 results   | slot 1 ...
//! | parent_sleeping | worker_sleeping  | ring: parent ->| ring: worker ->  |
//! |                 |                  | worker         | parent           |
//! +-----------------+------------------+----------------+------------------+---
//! ```
//!
//! Each side sleeps on exactly one pipe, its doorbell: the parent on
//! `parent_bell` (any worker may ring it), worker k on `worker_bell[k]`
//! (only the parent rings it). A waker writes a byte only when the sleeper's
//! flag says it is asleep, so a busy pool makes no doorbell syscalls.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::ring::{self, Receiver, Sender};
use crate::sys::{self, shm::SharedMapping};

/// One cache-line-sized (two lines: adjacent-line prefetch) sleep flag,
/// with the words its owner publishes about its progress.
#[repr(C, align(128))]
struct SleepFlag {
    /// 1 while its owner is asleep (or about to be) on its doorbell, else 0.
    /// Only the owner writes it: a waker that cleared it could lose a later
    /// wake-up and deadlock both sides.
    sleeping: AtomicU32,
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
}

const FLAG: usize = std::mem::size_of::<SleepFlag>();
const _: () = assert!(FLAG == 128 && std::mem::align_of::<SleepFlag>() == 128);

/// The shared mapping, carved into the control flag and one region per slot.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    mapping: Arc<SharedMapping>,
    slots: usize,
    ring_capacity: usize,
}

impl Layout {
    fn slot_size(ring_capacity: usize) -> usize {
        FLAG + 2 * ring::region_size(ring_capacity)
    }

    fn slot_offset(&self, slot: usize) -> usize {
        assert!(slot < self.slots, "slot {slot} out of range");
        FLAG + slot * Self::slot_size(self.ring_capacity)
    }

    /// Maps room for `slots` workers with rings of `ring_capacity` bytes
    /// (a power of two). The memory starts zeroed: every flag 0, every ring
    /// empty.
    pub(crate) fn new(slots: usize, ring_capacity: usize) -> Result<Layout> {
        let len = FLAG + slots * Self::slot_size(ring_capacity);
        let layout = Layout { mapping: Arc::new(SharedMapping::new(len)?), slots, ring_capacity };
        for slot in 0..slots {
            layout.reset_slot(slot);
        }
        Ok(layout)
    }

    fn slot_base(&self, slot: usize) -> *mut u8 {
        // SAFETY: the offset stays inside the mapping: FLAG + slot * size +
        // size <= len by construction in `new`.
        unsafe { self.mapping.as_ptr().add(self.slot_offset(slot)) }
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
        self.counter(self.mapping.as_ptr())
    }

    /// Pool: non-zero while the zygote has written reports the parent has
    /// not read yet. Spares the parent a `read` on the report pipe at each
    /// step of its loop.
    pub(crate) fn reports_pending(&self) -> &AtomicU64 {
        self.counter(self.mapping.as_ptr())
    }

    /// `fork_map`: 1 + the item worker `slot` is running, 0 when none.
    pub(crate) fn running_item(&self, slot: usize) -> &AtomicU64 {
        self.counter(self.slot_base(slot))
    }

    /// The parent's sleep flag.
    pub(crate) fn parent_sleeping(&self) -> &AtomicU32 {
        self.flag(self.mapping.as_ptr())
    }

    /// Worker `slot`'s sleep flag.
    pub(crate) fn worker_sleeping(&self, slot: usize) -> &AtomicU32 {
        self.flag(self.slot_base(slot))
    }

    /// The parent-to-worker ring of `slot`: the parent keeps the sender,
    /// the worker the receiver. No doorbells: the pool rings its own.
    pub(crate) fn task_channel(&self, slot: usize) -> Result<(Sender, Receiver)> {
        ring::attach(self.mapping.clone(), self.slot_offset(slot) + FLAG, self.ring_capacity)
    }

    /// The worker-to-parent ring of `slot`: the worker keeps the sender.
    pub(crate) fn result_channel(&self, slot: usize) -> Result<(Sender, Receiver)> {
        let offset = self.slot_offset(slot) + FLAG + ring::region_size(self.ring_capacity);
        ring::attach(self.mapping.clone(), offset, self.ring_capacity)
    }

    /// Empties both rings of `slot` and clears its flags. Only while no
    /// worker is attached to the slot (before the first, after a death).
    pub(crate) fn reset_slot(&self, slot: usize) {
        let offset = self.slot_offset(slot) + FLAG;
        ring::reset(&self.mapping, offset);
        ring::reset(&self.mapping, offset + ring::region_size(self.ring_capacity));
        self.worker_sleeping(slot).store(0, Ordering::SeqCst);
        self.running_item(slot).store(0, Ordering::SeqCst);
        self.task_started_ns(slot).store(0, Ordering::SeqCst);
    }
}

/// A doorbell: a pipe whose bytes mean only "look again". Both ends are
/// non-blocking: a full pipe already holds a pending wake-up.
#[derive(Debug)]
pub(crate) struct Bell {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl Bell {
    pub(crate) fn new() -> Result<Bell> {
        let (read, write) = sys::pipe()?;
        sys::set_nonblocking(read.as_fd(), true)?;
        sys::set_nonblocking(write.as_fd(), true)?;
        Ok(Bell { read, write })
    }
}

/// Wakes a sleeper if its flag is up. Call after publishing the data it
/// waits for.
pub(crate) fn wake(flag: &AtomicU32, bell: BorrowedFd<'_>) {
    // SeqCst fence: orders our earlier publish (ring index store) before the
    // flag load, pairing with the fence in `sleep` between the sleeper's
    // flag store and its re-check. One of the two sides must see the other.
    fence(Ordering::SeqCst);
    // Relaxed is enough after the fence.
    if flag.load(Ordering::Relaxed) != 0 {
        sys::trace!("doorbell ring(fd {})", std::os::fd::AsRawFd::as_raw_fd(&bell));
        // EAGAIN (pipe full) means a wake-up is already pending; EPIPE means
        // the sleeper is gone. Neither needs handling here.
        let _ = sys::write(bell, b"w");
    }
}

/// Why `sleep` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// `ready()` was already true, or something rang.
    Ready,
    /// The doorbell's write ends are all closed: the peer is gone.
    BellClosed,
    /// The timeout passed, or one of `extra` fds became readable.
    Other,
}

/// Spin-then-sleep: spins briefly re-checking `ready`, then raises `flag`,
/// re-checks, and sleeps in `poll` on `bell` (plus `extra` fds) for at most
/// `timeout`. The flag is cleared by us, the sleeper, and only by us.
pub(crate) fn sleep(
    flag: &AtomicU32,
    bell: BorrowedFd<'_>,
    extra: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    ready: impl Fn() -> bool,
) -> Result<Woke> {
    // ~2,000 pauses keep nearly all of the spinning throughput (mproc(7))
    // without burning a core when idle. A pool has one more process than a
    // machine usually has cores (the parent and a worker per core), so the
    // spinner offers its core every 64 pauses: the process it waits for may
    // be the one waiting for that core. (Measured on 2 vCPUs: Pool::map of
    // trivial tasks goes from ~30 to ~40 M tasks/s.)
    for i in 0..2_000u32 {
        if ready() {
            return Ok(Woke::Ready);
        }
        if i % 64 == 63 {
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    flag.store(1, Ordering::Relaxed);
    // Pairs with the fence in `wake`: after this, a waker that publishes
    // later must see the flag, and we must see anything published before.
    fence(Ordering::SeqCst);
    if ready() {
        flag.store(0, Ordering::Relaxed);
        return Ok(Woke::Ready);
    }
    sys::trace!("doorbell wait(fd {})", std::os::fd::AsRawFd::as_raw_fd(&bell));
    let mut fds = Vec::with_capacity(1 + extra.len());
    fds.push((bell, true, false));
    fds.extend(extra.iter().map(|&fd| (fd, true, false)));
    let polled = sys::poll(&fds, timeout);
    let woke = match &polled {
        Ok(ready) if ready[0].readable || ready[0].hangup => drain(bell),
        _ => Ok(Woke::Other),
    };
    // Relaxed: the next `ready()` check by the owner re-reads the ring with
    // acquire loads of its own; clearing only stops wakers' syscalls.
    flag.store(0, Ordering::Relaxed);
    polled?;
    woke
}

/// Reads every pending byte of a doorbell; EOF means its writers are gone.
fn drain(bell: BorrowedFd<'_>) -> Result<Woke> {
    let mut buf = [0u8; 64];
    loop {
        match sys::read(bell, &mut buf) {
            Ok(0) => return Ok(Woke::BellClosed),
            Ok(n) if n < buf.len() => return Ok(Woke::Ready),
            Ok(_) => continue,
            Err(crate::Error::Os(e)) if e.errno == libc::EAGAIN => return Ok(Woke::Ready),
            Err(e) => return Err(e),
        }
    }
}
