//! Process-wide registries that a signal handler reads: the live pools'
//! zygotes, and the live [`crate::Process`] children, with what the
//! handler does to each (async-signal-safe, so the raw calls live here).
//!
//! `fork` copies every static into the child. A table of "my children" or
//! "my pools" copied that way describes the *parent's* children, and a
//! child acting on it (its own exit handler killing them, or writing a kill
//! order into a descriptor number that now names one of the child's own
//! files) would act on another process's behalf. So each table records the
//! pid of the process its entries belong to, and:
//!
//! - a reader ([`OwnedTable::for_each`]) in any other process sees an empty
//!   table;
//! - the first [`OwnedTable::insert`] in a new process adopts the table:
//!   it clears the inherited entries, then claims it;
//! - an [`Entry`] made by another process (a handle that reached a child
//!   inside a closure) is not removed by that child: its slot there may
//!   already hold one of the child's own entries.
//!
//! This costs nothing at `fork` (no page is written until the child
//! registers something of its own), and it holds for any fork through the
//! C library, not only mproc's (the pid is `getpid`'s, or the cache that
//! libc's fork hook clears: see `sys::current_pid`). Everything is a
//! lock-free atomic, so a signal handler may read a table at any moment,
//! even one that interrupted an insert; the handler asks `getpid` itself.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use super::getpid;

/// A fixed-size table of non-zero `u64` values owned by one process.
pub(crate) struct OwnedTable<const N: usize> {
    /// The pid whose entries these are; `-pid` while that process clears
    /// inherited entries (adopting); 0 before any insert.
    owner: AtomicI32,
    /// 0 marks a free entry.
    entries: [AtomicU64; N],
}

/// One registered value: remove it with [`OwnedTable::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    slot: usize,
    owner: i32,
}

impl<const N: usize> OwnedTable<N> {
    pub(crate) const fn new() -> Self {
        OwnedTable { owner: AtomicI32::new(0), entries: [const { AtomicU64::new(0) }; N] }
    }

    /// Makes `me` the owner, clearing entries inherited from another
    /// process first. Runs its slow path once per process.
    fn adopt(&self, me: i32) {
        loop {
            // Acquire: pairs with the Release below, so once we see `me`
            // the clearing is visible too.
            let owner = self.owner.load(Ordering::Acquire);
            if owner == me {
                return;
            }
            if owner == -me {
                // Another thread of this process is clearing: a few loads.
                std::hint::spin_loop();
                continue;
            }
            // 0, another pid, or another pid's "adopting" mark (a thread
            // of the parent was adopting when it forked us): inherited.
            // AcqRel: claims the clearing exactly once.
            if self.owner.compare_exchange(owner, -me, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            for entry in &self.entries {
                // Load first: an untouched page stays shared with the parent.
                if entry.load(Ordering::Relaxed) != 0 {
                    entry.store(0, Ordering::Relaxed);
                }
            }
            // Release: the clearing happens before anyone sees us as owner.
            self.owner.store(me, Ordering::Release);
            return;
        }
    }

    /// Registers `value` (non-zero) for this process. `None` when the
    /// table is full: registration is best effort, and a caller then just
    /// lacks what the table gives (a signal handler will not see it).
    pub(crate) fn insert(&self, value: u64) -> Option<Entry> {
        self.insert_as(super::pid_if_cached_else_getpid(), value)
    }

    /// [`OwnedTable::insert`] for a caller that knows its pid `me`.
    fn insert_as(&self, me: i32, value: u64) -> Option<Entry> {
        debug_assert_ne!(value, 0, "0 marks a free entry");
        self.adopt(me);
        // AcqRel/Acquire: the entry is visible to a handler on this thread
        // at once; other threads only need the slot claimed exactly once.
        (0..N)
            .find(|&i| {
                self.entries[i].compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire).is_ok()
            })
            .map(|slot| Entry { slot, owner: me })
    }

    /// Unregisters `entry`, if this process made it (see the module docs).
    pub(crate) fn remove(&self, entry: Entry) {
        if entry.owner == super::pid_if_cached_else_getpid() {
            self.entries[entry.slot].store(0, Ordering::Release);
        }
    }

    /// Calls `f` with every value this process registered. Async-signal-
    /// safe: `getpid` and atomic loads.
    pub(crate) fn for_each(&self, f: impl FnMut(u64)) {
        self.for_each_of(getpid(), f);
    }

    /// Calls `f` with every value process `owner` registered, if this table
    /// (this process's copy of it) holds that process's entries.
    fn for_each_of(&self, owner: i32, mut f: impl FnMut(u64)) {
        if self.owner.load(Ordering::Acquire) != owner {
            // Never registered anything there, or inherited: not its.
            return;
        }
        for entry in &self.entries {
            let value = entry.load(Ordering::Acquire);
            if value != 0 {
                f(value);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// pools' shared memory

/// The shared mappings of this process's pools (and `fork_map` calls), so
/// that a process forked for one pool can unmap every other pool's: a
/// worker's wild write must not reach another pool's rings either.
static POOL_MAPPINGS: OwnedTable<1024> = OwnedTable::new();

/// Page numbers fit 35 bits (47-bit addresses) and lengths in pages 29 bits
/// (2 TiB): one `u64` per mapping.
const LEN_BITS: u32 = 29;

/// Registers a pool's mapping at `ptr` (page-aligned) of `len` bytes.
/// `None` (not registered) if the table is full or the numbers do not fit.
pub(crate) fn register_pool_mapping(ptr: *mut u8, len: usize) -> Option<Entry> {
    let page = (ptr as usize as u64) >> 12;
    let pages = (len as u64).div_ceil(4096);
    if page >> (64 - LEN_BITS) != 0 || pages >> LEN_BITS != 0 {
        return None;
    }
    POOL_MAPPINGS.insert(page << LEN_BITS | pages)
}

/// Unregisters a pool's mapping (before it is unmapped).
pub(crate) fn forget_pool_mapping(entry: Entry) {
    POOL_MAPPINGS.remove(entry);
}

/// In a child right after `fork`: calls `f(start, len)` for every pool
/// mapping the parent had registered. Nothing if the table's entries are
/// not the parent's own (never registered there, or inherited from further
/// up: those ranges may since have been unmapped and reused).
pub(crate) fn parents_pool_mappings(mut f: impl FnMut(*mut u8, usize)) {
    POOL_MAPPINGS.for_each_of(super::getppid(), |value| {
        let (page, pages) = (value >> LEN_BITS, value & ((1 << LEN_BITS) - 1));
        f((page << 12) as usize as *mut u8, (pages as usize) * 4096);
    });
}

// ---------------------------------------------------------------------------
// live pools

/// Live zygotes of this process, for the exit-signal handler: `pid << 32 |
/// fd` of the pool's request pipe.
static POOLS: OwnedTable<64> = OwnedTable::new();

/// Registers a pool's zygote `pid` and the write end `fd` of its request
/// pipe (which must stay open until [`forget_pool`]).
pub(crate) fn register_pool(pid: i32, fd: i32) -> Option<Entry> {
    POOLS.insert((pid as u32 as u64) << 32 | fd as u32 as u64)
}

/// Unregisters a pool (before its request pipe is closed).
pub(crate) fn forget_pool(entry: Entry) {
    POOLS.remove(entry);
}

/// For the exit handler: writes `order` (one request record, shorter than
/// `PIPE_BUF`) to every registered pool's request pipe, then reaps each
/// zygote, giving it [`ZYGOTE_GRACE_NS`] to exit before it gets `SIGKILL`
/// (a stopped zygote must not hold the program's exit forever). Async-
/// signal-safe: `write`, `waitpid`, `clock_gettime`, `nanosleep` and `kill`
/// on values read from atomics. A zygote that already died gives `EPIPE`
/// (the handler blocks `SIGPIPE`) and is reaped all the same.
pub(crate) fn order_pools_and_reap(order: &[u8]) {
    POOLS.for_each(|e| {
        let fd = e as u32 as i32;
        // SAFETY: `order` is a valid buffer; `fd` stays open while it is
        // registered (the pool unregisters before it closes it).
        unsafe { libc::write(fd, order.as_ptr().cast(), order.len()) };
    });
    let give_up = super::monotonic_ns().saturating_add(ZYGOTE_GRACE_NS);
    POOLS.for_each(|e| {
        let pid = (e >> 32) as i32;
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid, writable int. The zygote is our
            // unreaped child while registered, so the pid is still its own.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if got != 0 && !(got == -1 && super::last_errno() == libc::EINTR) {
                break; // reaped, or not ours to reap (ECHILD)
            }
            if super::monotonic_ns() >= give_up {
                // SAFETY: as above, the pid is our unreaped child's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
                    && super::last_errno() == libc::EINTR
                {}
                break;
            }
            let nap = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            // SAFETY: nanosleep reads a valid timespec; a null remainder is allowed.
            unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        }
    });
}

/// How long the exit handler waits for the pools' zygotes, all together.
const ZYGOTE_GRACE_NS: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------
// live Process children

/// What every `Process::start` and reap writes, in one place: the count
/// of starts in progress first, then the table's owner and first entries.
/// Each page the parent writes while a child lives is copied (copy-on-write),
/// so the two share their first cache line, and with it one page.
#[repr(C, align(64))]
struct Children {
    /// `pid << 32 | n`: process `pid` has `n` `Process::start`s between
    /// `fork` and registering the child (see [`ChildStart`]). One word, so
    /// that a child, which inherits a copy, tells at once that the count is
    /// not its.
    starting: AtomicU64,
    /// The pids of this process's running [`crate::Process`] children:
    /// started and not yet reaped. The exit handler kills and reaps them.
    table: OwnedTable<1024>,
}

static CHILDREN: Children = Children { starting: AtomicU64::new(0), table: OwnedTable::new() };

fn starting_split(word: u64) -> (i32, u64) {
    ((word >> 32) as i32, word & 0xffff_ffff)
}

/// Brackets one `fork` of a `Process` and the registration of its pid, so
/// that the exit handler, if it runs on another thread meanwhile, waits for
/// the registration instead of missing the child. (On the starting thread
/// itself the caller blocks SIGINT and SIGTERM over the same stretch.)
pub(crate) struct ChildStart {
    /// This process's pid, asked once per start.
    me: i32,
}

impl ChildStart {
    pub(crate) fn begin() -> ChildStart {
        let me = super::pid_if_cached_else_getpid();
        // AcqRel: the handler on another thread sees the count before the fork.
        let _ = CHILDREN.starting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (owner, n) = starting_split(word);
            let n = if owner == me { n + 1 } else { 1 };
            Some((me as u32 as u64) << 32 | n)
        });
        ChildStart { me }
    }

    /// The pid of the process that began this start (the parent-to-be).
    pub(crate) fn owner(&self) -> i32 {
        self.me
    }

    /// After `fork`, in the parent: registers the child and ends the start.
    pub(crate) fn register(self, pid: i32) -> Option<Entry> {
        CHILDREN.table.insert_as(self.me, pid as u32 as u64)
        // `self` drops here: the count goes down after the insert.
    }
}

impl Drop for ChildStart {
    fn drop(&mut self) {
        // Dropped only in the process that began it (the child forgets its copy).
        let me = self.me;
        // AcqRel: the registration above is visible before the count drops.
        let _ = CHILDREN.starting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (owner, n) = starting_split(word);
            // Another owner: a copy of a guard in a child; not counted here.
            (owner == me && n > 0).then(|| word - 1)
        });
    }
}

/// Unregisters a child (before it is reaped: see `Process`).
pub(crate) fn forget_child(entry: Entry) {
    CHILDREN.table.remove(entry);
}

/// For the exit handler: `SIGKILL` to every registered child of this
/// process, then reaps each. Waits up to a second for starts in progress
/// on other threads to register their child first. Async-signal-safe:
/// `getpid`, `clock_gettime`, `nanosleep`, `kill`, `waitpid`, atomics.
pub(crate) fn kill_and_reap_children() {
    let me = getpid();
    let starting = || {
        let (owner, n) = starting_split(CHILDREN.starting.load(Ordering::Acquire));
        owner == me && n > 0
    };
    if starting() {
        let give_up = super::monotonic_ns().saturating_add(1_000_000_000);
        // Bounded: the other thread may be waiting for a lock the thread
        // this handler interrupted holds (stdout's, at fork).
        while starting() && super::monotonic_ns() < give_up {
            let nap = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
            // SAFETY: nanosleep reads a valid timespec; a null remainder is allowed.
            unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        }
    }
    CHILDREN.table.for_each(|pid| {
        // SAFETY: kill takes integers. The pid is registered only while
        // the child is unreaped (it is removed before `waitpid` reaps it),
        // so it cannot name a recycled process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    CHILDREN.table.for_each(|pid| {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int. ECHILD (another thread
        // reaped it meanwhile) ends the loop like success.
        while unsafe { libc::waitpid(pid as i32, &mut status, 0) } == -1 && super::last_errno() == libc::EINTR
        {
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_ignores_entries_of_another_process() {
        let table: OwnedTable<4> = OwnedTable::new();
        let a = table.insert(7).expect("room");
        let mut seen = Vec::new();
        table.for_each(|v| seen.push(v));
        assert_eq!(seen, [7]);
        // Pretend the entries were inherited from a parent.
        table.owner.store(getpid() + 1, Ordering::Release);
        table.for_each(|_| panic!("a parent's entry must not be visible"));
        // The first insert adopts: the inherited entry is gone.
        let b = table.insert(9).expect("room");
        let mut seen = Vec::new();
        table.for_each(|v| seen.push(v));
        assert_eq!(seen, [9]);
        // An entry made by another process is not removed here.
        table.remove(Entry { owner: getpid() + 1, ..b });
        let _ = a;
        let mut seen = Vec::new();
        table.for_each(|v| seen.push(v));
        assert_eq!(seen, [9]);
        table.remove(b);
        table.for_each(|_| panic!("removed"));
    }
}
