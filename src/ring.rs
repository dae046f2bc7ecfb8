//! A byte ring in shared memory carrying framed messages from one process to
//! another, with pipes as doorbells and as death detectors.
//!
//! # Tour
//! [`channel`] maps the ring (`MAP_SHARED`, so it survives `fork`) and makes
//! two pipes. Fork, then each process drops the half it does not use:
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! let (mut tx, mut rx) = mproc::ring::channel(64 * 1024)?;
//! // ... fork here; the producer drops `rx`, the consumer drops `tx` ...
//! tx.send(b"hello")?;
//! assert_eq!(rx.recv()?, b"hello");
//! # Ok(()) }
//! ```
//!
//! One [`Sender`] writes, one [`Receiver`] reads (single producer, single
//! consumer). Messages are byte strings of any length, including lengths far
//! beyond the ring's capacity: those are streamed in fragments and put back
//! together by the receiver. The fast path is two plain memory copies and
//! one atomic store on each side; no system call is made while both sides
//! keep up.
//!
//! # Memory layout
//! Everything is native-endian. A ring made by [`channel`] has a
//! page-aligned mapping of its own (inside the crate, the pool carves many
//! rings out of one mapping, each at a multiple of 128 bytes, and wakes its
//! workers with bells of its own). `C` is the capacity, a power of two
//! between 1 KiB and 1 GiB.
//!
//! ```text
//!  offset 0     +-----------------------------+  each row is one 128-byte line,
//!               | tail: u64                   |  so the two writers never share
//!               |   (written by the producer) |  a cache line (false sharing)
//!  offset 128   +-----------------------------+
//!               | head: u64                   |
//!               |   (written by the consumer) |
//!  offset 256   +-----------------------------+
//!               | consumer_sleeping: u64      |  non-zero while the consumer
//!               |   (written by the consumer) |  may be asleep on the data bell
//!  offset 384   +-----------------------------+
//!               | producer_sleeping: u64      |  non-zero while the producer
//!               |   (written by the producer) |  may be asleep on the space bell
//!  offset 512   +-----------------------------+
//!               | data: C bytes               |  byte counter i lives at
//!               |                             |  data[i & (C - 1)]
//!  offset 512+C +-----------------------------+
//! ```
//!
//! `head` and `tail` are byte counters that only grow (they never wrap in
//! practice: 2^64 bytes). `tail - head` bytes are readable, `C - (tail -
//! head)` writable. Every frame starts at a multiple of 8:
//!
//! ```text
//!  +------------+-------------+--------------------------+---------------+
//!  | len: u32   | flags: u32  | payload: len bytes       | 0-7 pad bytes |
//!  +------------+-------------+--------------------------+---------------+
//!  flags bit 0 = MORE: another fragment of the same message follows.
//!  Frame size = 8 + round_up(len, 8). The header never wraps (C is a
//!  multiple of 8); a payload may wrap to data[0].
//! ```
//!
//! A message whose frame fits in `C` goes as one frame once there is room for
//! all of it. A bigger one is streamed: fragments flagged MORE, each as large
//! as the free space (the producer waits for at least `C / 4` free, so
//! fragments stay large), then a last fragment without MORE. The receiver
//! appends fragments until the one without MORE. The producer publishes
//! (stores `tail`) after each fragment and after each message, so `tail`
//! always sits on a frame boundary; the consumer gives each frame back
//! (stores `head`) as soon as it has copied it out.
//!
//! # The protocol
//! Producer: copy the frame in at `tail`, store `tail` (release), then load
//! `consumer_sleeping`; if it is non-zero and not the value it last rang
//! for, write one byte to the data bell. Consumer: load `tail` (acquire),
//! copy the frame out at `head`, store `head` (release) — lazily: once a
//! quarter of the ring has been consumed, when the ring runs dry, or at once
//! when a relaxed peek shows the producer asleep — then load
//! `producer_sleeping`; if it is non-zero and not the value it last rang
//! for, write one byte to the space bell. The store-then-load pairs are
//! sequentially consistent (the orderings are justified at each atomic
//! below).
//!
//! A side that finds nothing to do spins (up to 2,000 `pause`s or 20 µs,
//! whichever is shorter: about one wake-up's cost), then sleeps:
//! store a new sleep number (1, 2, 3, ...: never 0, never reused) in its own
//! `*_sleeping` word, look at the ring once more (so a message published in
//! between is not missed), `poll` its bell, then store 0 and drain the bell.
//! The sleep number lets the peer ring once per sleep instead of once per
//! message while the sleeper wakes up (a wake-up takes ~20 µs, long enough
//! for thousands of messages). Only the sleeper clears its word: a producer
//! that cleared it could miss the consumer's next sleep and never wake it.
//!
//! # Death
//! The data bell's write end is held only by the producer, the space bell's
//! only by the consumer. When one side dies (or drops its half), the other's
//! bell reads end of file: a [`Receiver`] then returns what is left in the
//! ring and after that [`Error::Closed`]; a [`Sender`] that has to wait for
//! space, or whose ring finds the consumer asleep, returns
//! [`Error::Closed`]. A producer never learns of a dead consumer while the
//! ring has room: like data in a socket buffer, those messages are lost.
//!
//! Corrupt memory (a frame longer than the ring, one that runs past the
//! published tail, unknown flags, indices out of range or not a multiple of
//! 8) gives [`Error::Decode`], never a panic and never an access outside
//! the ring, on both sides: each side checks every word it loads from
//! shared memory (the consumer `tail` and each frame header, the producer
//! `head`) before it computes anything from it; the sleep words only decide
//! whether to ring a bell. The receiver then stays in that error. A peer
//! that corrupts the ring can still make its own messages wrong, lose them,
//! or leave the other side waiting (use the timeouts): what it sends is
//! only ever bytes, never memory outside the ring.
//!
//! # Common deadlocks
//! - Keeping both halves after `fork`: a process that still holds a copy of
//!   its peer's half keeps that bell's write end open, so the peer's death
//!   never reads as end of file. Drop the unused half right after `fork`.
//! - One process sending a message that does not fit and receiving it
//!   itself, with the blocking calls: nobody drains the ring. Use
//!   [`Sender::enqueue`]/[`Sender::flush`] with [`Receiver::try_recv_into`].
//! - Two rings in opposite directions where each side blocks in `send` on a
//!   full ring before it reads the other: use the non-blocking interface and
//!   `poll` both [`Sender::wait_fd`] and [`Receiver::wait_fd`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys::bell::{self, Bell, Rang};
use crate::sys::shm::{SharedMapping, RING_NAME};
use crate::sys::{self, trace};
use crate::wire::DecodeError;

/// Smallest ring: smaller requests are rounded up to it.
pub const MIN_CAPACITY: usize = 1024;
/// Largest ring (frame lengths must fit a `u32`).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Bytes in front of the data area: four 128-byte lines.
const HEADER_LEN: usize = 512;
/// Bytes in a frame header: `len: u32, flags: u32`.
const FRAME_HEADER: u64 = 8;
/// Frame flag: another fragment of the same message follows.
const FLAG_MORE: u32 = 1;

/// Bytes of fragments one look at the ring takes at most without finishing
/// a message (less for a smaller ring: one capacity).
const FRAGMENT_BUDGET: u64 = 1 << 20;
/// Busy-wait iterations before sleeping on a bell (~2,000 keeps nearly all
/// the spinning speed without burning a core when idle; the measurements
/// are in mproc(7), "Doorbells: who wakes whom")...
const SPIN_LIMIT: u32 = 2000;
/// ...but no longer than about one wake-up (~20 µs): a `pause` takes ~40 ns
/// on recent AMD and Intel cores, so 2,000 of them would spin for 80 µs,
/// which is wasted whenever the peer is not running at all (both processes
/// sharing one busy CPU).
const SPIN_TIME: Duration = Duration::from_micros(20);

/// One cache line (128 bytes: x86's adjacent-line prefetcher pulls lines in
/// pairs, so 64 would still let the two writers disturb each other).
#[repr(C, align(128))]
struct CacheLine<T>(T);

/// The shared header. Lives at offset 0 of the mapping; see the module doc.
#[repr(C)]
struct Header {
    /// Bytes ever published by the producer. Written only by the producer;
    /// never decreases; `head <= tail <= head + capacity`. Bytes below it
    /// are complete frames.
    tail: CacheLine<AtomicU64>,
    /// Bytes ever consumed. Written only by the consumer; never decreases;
    /// `head <= tail`. Bytes below it may be overwritten by the producer.
    head: CacheLine<AtomicU64>,
    /// 0 while the consumer is awake; while it is about to sleep or asleep
    /// on the data bell, the number of that sleep (counting from 1, so each
    /// sleep has its own value). Set and cleared only by the consumer; read
    /// by the producer after every publish.
    consumer_sleeping: CacheLine<AtomicU64>,
    /// The same for the producer asleep on the space bell. Set and cleared
    /// only by the producer; read by the consumer after it frees space.
    producer_sleeping: CacheLine<AtomicU64>,
}

const _: () = assert!(std::mem::size_of::<CacheLine<AtomicU64>>() == 128);
const _: () = assert!(std::mem::size_of::<Header>() == HEADER_LEN);
const _: () = assert!(std::mem::align_of::<Header>() == 128);
// Page alignment of the mapping (>= 4096) covers the header's alignment.
const _: () = assert!(std::mem::align_of::<Header>() <= 4096);

/// Where one ring lives: `HEADER_LEN + capacity` bytes at `offset` in a
/// shared mapping (each half, in each process, holds its own `Arc`).
///
/// Invariant, checked by [`Region::new`]: `offset` is a multiple of 128 and
/// the whole region lies inside the mapping; `capacity` is a power of two
/// between [`MIN_CAPACITY`] and [`MAX_CAPACITY`].
#[derive(Clone)]
struct Region {
    map: Arc<SharedMapping>,
    offset: usize,
    /// Kept locally, not in shared memory, so corrupt shared memory cannot
    /// change it.
    capacity: u64,
}

impl Region {
    fn new(map: Arc<SharedMapping>, offset: usize, capacity: usize) -> Result<Region> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(Error::InvalidArgument(format!(
                "ring capacity {capacity}: must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}"
            )));
        }
        let fits = offset.checked_add(region_size(capacity)).is_some_and(|end| end <= map.len());
        if !offset.is_multiple_of(128) || !fits {
            return Err(Error::InvalidArgument(format!(
                "ring at offset {offset} of {capacity} bytes does not fit a {}-byte mapping",
                map.len()
            )));
        }
        Ok(Region { map, offset, capacity: capacity as u64 })
    }

    fn header(&self) -> &Header {
        // SAFETY: per the Region invariant, HEADER_LEN bytes at `offset` lie
        // inside the mapping and are 128-aligned (the mapping is
        // page-aligned); every bit pattern is a valid AtomicU64; the mapping
        // outlives `&self` (we hold an Arc). Other processes touch the header
        // only through these atomics, which allow shared mutation.
        unsafe { &*self.map.as_ptr().add(self.offset).cast::<Header>() }
    }

    /// The region's first byte and its length, for test hooks.
    fn raw(&self) -> (*mut u8, usize) {
        // SAFETY: per the Region invariant, `offset` is inside the mapping.
        (unsafe { self.map.as_ptr().add(self.offset) }, region_size(self.capacity as usize))
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: per the Region invariant, offset + HEADER_LEN + capacity
        // is inside the mapping.
        unsafe { self.map.as_ptr().add(self.offset + HEADER_LEN) }
    }

    fn mask(&self) -> u64 {
        self.capacity - 1
    }

    /// Copies `src` into the ring at byte counter `pos`, wrapping at the end.
    ///
    /// # Safety
    /// The caller is the producer and owns `[pos, pos + src.len())`: it lies
    /// between the published tail and `head + capacity`, so the consumer is
    /// not reading it.
    unsafe fn write_at(&self, pos: u64, src: &[u8]) {
        let offset = (pos & self.mask()) as usize;
        let first = src.len().min(self.capacity as usize - offset);
        // SAFETY: offset + first <= capacity and src.len() - first <= offset
        // (src.len() <= capacity), so both ranges are inside the data area;
        // `src` is our own memory, never the ring, so they do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.data().add(offset), first);
            if first < src.len() {
                ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data(), src.len() - first);
            }
        }
    }

    /// Copies `len` bytes at byte counter `pos` out of the ring to `dst`.
    ///
    /// # Safety
    /// The caller is the consumer and `[pos, pos + len)` lies between its
    /// head and the tail it loaded (acquire), so the producer has finished
    /// writing it and will not touch it; `len <= capacity`; `dst` is valid
    /// for `len` bytes of writes and not inside the ring.
    unsafe fn read_at(&self, pos: u64, dst: *mut u8, len: usize) {
        let offset = (pos & self.mask()) as usize;
        let first = len.min(self.capacity as usize - offset);
        // SAFETY: as in write_at, both source ranges are inside the data
        // area; `dst` is the caller's private buffer.
        unsafe {
            ptr::copy_nonoverlapping(self.data().add(offset), dst, first);
            if first < len {
                ptr::copy_nonoverlapping(self.data(), dst.add(first), len - first);
            }
        }
    }

    /// Appends the `len`-byte payload of the frame at `frame_pos` to `out`.
    ///
    /// # Safety
    /// As for [`Region::read_at`], for the frame's `frame_len(len)` bytes:
    /// the consumer validated that they lie between its head and the tail it
    /// loaded, and within the capacity.
    unsafe fn append_payload(&self, frame_pos: u64, len: usize, out: &mut Vec<u8>) {
        out.reserve(len);
        // SAFETY: the source range is the caller's; `reserve` made room for
        // `len` bytes past out.len(), which read_at fills completely before
        // set_len exposes them.
        unsafe {
            self.read_at(frame_pos + FRAME_HEADER, out.as_mut_ptr().add(out.len()), len);
            out.set_len(out.len() + len);
        }
    }

    /// Writes a frame header at `pos` (a multiple of 8, so it never wraps).
    ///
    /// # Safety
    /// As for [`Region::write_at`], for `[pos, pos + 8)`.
    unsafe fn write_frame_header(&self, pos: u64, len: u32, flags: u32) {
        let offset = (pos & self.mask()) as usize;
        // SAFETY: the range is the caller's; offset is a multiple of 8 and
        // at most capacity - 8, and the data area starts 512 bytes into a
        // page-aligned mapping, so the write is in bounds and aligned.
        unsafe { ptr::write(self.data().add(offset).cast::<[u32; 2]>(), [len, flags]) }
    }

    /// Reads the frame header at `pos`: `(len, flags)`.
    ///
    /// # Safety
    /// As for [`Region::read_at`], for `[pos, pos + 8)`.
    unsafe fn read_frame_header(&self, pos: u64) -> (u32, u32) {
        let offset = (pos & self.mask()) as usize;
        // SAFETY: as in write_frame_header: in bounds, aligned, and the
        // caller's to read.
        let [len, flags] = unsafe { ptr::read(self.data().add(offset).cast::<[u32; 2]>()) };
        (len, flags)
    }
}

/// The two ends of the doorbell pipes one half holds: `wake` (a write end)
/// to ring the peer's bell, `wait` (a read end) to sleep on its own.
struct Bells {
    wake: OwnedFd,
    wait: OwnedFd,
}

impl fmt::Debug for Bells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wake fd {}, wait fd {}", self.wake.as_raw_fd(), self.wait.as_raw_fd())
    }
}

/// What the blocking calls of a half made by [`attach`] return when they
/// would have to sleep: such a half has no bell to sleep on.
const NO_BELL: &str = "this ring half has no doorbell: its owner must wait on its own";

/// The fd a half sleeps on; see the `# Panics` of the `wait_fd` methods.
fn wait_end(bells: &Option<Bells>) -> BorrowedFd<'_> {
    match bells {
        Some(bells) => bells.wait.as_fd(),
        None => panic!("{NO_BELL}"),
    }
}

/// Bytes a frame with `len` payload bytes takes in the ring.
fn frame_len(len: usize) -> u64 {
    FRAME_HEADER + (len as u64).div_ceil(8) * 8
}

fn corrupt(reason: &'static str) -> Error {
    Error::Decode(DecodeError::new(reason))
}

/// Makes a ring of at least `capacity` bytes and its two halves.
///
/// The capacity is rounded up to a power of two, at least [`MIN_CAPACITY`];
/// it counts frame headers too (8 bytes per message, payloads padded to 8).
/// Call it before `fork`; afterwards the producer drops the [`Receiver`] and
/// the consumer drops the [`Sender`].
///
/// Errors: [`Error::InvalidArgument`] for 0 or more than [`MAX_CAPACITY`];
/// [`Error::Os`] naming `memfd_create` (`shm_open` outside Linux), `ftruncate`,
/// `mmap`, `pipe` or `fcntl`.
pub fn channel(capacity: usize) -> Result<(Sender, Receiver)> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(Error::InvalidArgument(format!(
            "ring capacity {capacity}: must be between 1 and {MAX_CAPACITY} bytes"
        )));
    }
    let capacity = capacity.max(MIN_CAPACITY).next_power_of_two();
    let region = Region::new(Arc::new(SharedMapping::new(RING_NAME, region_size(capacity))?), 0, capacity)?;
    let Bell { read: data_read, write: data_write } = Bell::new()?;
    let Bell { read: space_read, write: space_write } = Bell::new()?;
    trace!(
        "ring channel({capacity}): data bell {} -> {}, space bell {} -> {}",
        data_write.as_raw_fd(),
        data_read.as_raw_fd(),
        space_write.as_raw_fd(),
        space_read.as_raw_fd()
    );
    let sender_bells = Bells { wake: data_write, wait: space_read };
    let receiver_bells = Bells { wake: space_write, wait: data_read };
    halves(region, Some(sender_bells), Some(receiver_bells))
}

/// Bytes one ring of `capacity` bytes (a power of two) takes in a mapping:
/// its header and its data.
pub(crate) fn region_size(capacity: usize) -> usize {
    HEADER_LEN + capacity
}

/// The two halves of a ring living at `offset` (a multiple of 128) in a
/// mapping made by someone else — the pool carves many rings out of one
/// mapping. They have no doorbells: the owner sleeps and wakes its own
/// way, so only the non-blocking calls are of use ([`Sender::try_send_partial`],
/// [`Sender::has_room`], [`Receiver::try_recv_into`], [`Receiver::has_data`]);
/// a blocking call that would have to sleep returns
/// [`Error::InvalidState`]. The halves start at the ring's current indices.
///
/// Errors: [`Error::InvalidArgument`] if the capacity is not a power of two
/// in range or the ring does not fit in the mapping; [`Error::Decode`] if the
/// indices found there are corrupt.
pub(crate) fn attach(map: Arc<SharedMapping>, offset: usize, capacity: usize) -> Result<(Sender, Receiver)> {
    halves(Region::new(map, offset, capacity)?, None, None)
}

/// Empties the ring at `offset` in `map` (both indices and both sleep words
/// to 0). Only while no half in any process is using it. Does nothing if
/// the header would not lie inside the mapping at a multiple of 128.
pub(crate) fn reset(map: &SharedMapping, offset: usize) {
    let fits = offset.checked_add(HEADER_LEN).is_some_and(|end| end <= map.len());
    if !offset.is_multiple_of(128) || !fits {
        return;
    }
    // SAFETY: HEADER_LEN bytes at a 128-aligned offset inside the mapping
    // (checked above); all access is through the header's atomics.
    let header = unsafe { &*map.as_ptr().add(offset).cast::<Header>() };
    // SeqCst: no half is attached, so there is no peer to order against;
    // whatever later hands the ring to a user (fork, a pipe message) orders
    // these stores before its loads. The strongest ordering is free here.
    for word in [&header.tail, &header.head, &header.consumer_sleeping, &header.producer_sleeping] {
        word.0.store(0, Ordering::SeqCst);
    }
}

/// Makes the two halves of `region`, starting at its current indices.
fn halves(
    region: Region,
    sender_bells: Option<Bells>,
    receiver_bells: Option<Bells>,
) -> Result<(Sender, Receiver)> {
    // Acquire: pairs with the release halves of earlier users' stores.
    let tail = region.header().tail.0.load(Ordering::Acquire);
    let head = region.header().head.0.load(Ordering::Acquire);
    if tail < head || tail - head > region.capacity || !tail.is_multiple_of(8) || !head.is_multiple_of(8) {
        return Err(corrupt("ring indices out of range"));
    }
    let sender = Sender {
        region: region.clone(),
        tail,
        published: tail,
        cached_head: head,
        outbox: VecDeque::new(),
        front_sent: 0,
        wanted: 0,
        bells: sender_bells,
        peer_gone: Cell::new(false),
        sleeps: Cell::new(0),
        rang_for: 0,
    };
    let receiver = Receiver {
        region,
        head,
        released: head,
        cached_tail: head,
        partial: Vec::new(),
        in_message: false,
        max_message: usize::MAX,
        bells: receiver_bells,
        producer_gone: false,
        poisoned: None,
        sleeps: Cell::new(0),
        rang_for: 0,
    };
    Ok((sender, receiver))
}

/// Busy-waits until `ready()`, within the spin budget ([`SPIN_LIMIT`]
/// pauses, [`SPIN_TIME`]). Returns whether it became ready. The one
/// spin-then-sleep policy of the crate: the pool's sleeps spin here too.
///
/// Every 64 pauses the spinner offers its core (`sched_yield`): a pool has
/// one process more than a machine usually has cores (the parent and a
/// worker per core), and the process it waits for may be the one waiting
/// for that core. (Measured on 2 vCPUs: `Pool::map` of trivial tasks goes
/// from ~30 to ~40 M tasks/s.)
pub(crate) fn spin(mut ready: impl FnMut() -> Result<bool>) -> Result<bool> {
    let mut started: Option<Instant> = None;
    for i in 0..SPIN_LIMIT {
        if ready()? {
            return Ok(true);
        }
        // Reading the clock costs about a pause: do it every 64 rounds, and
        // not at all in the common case of a short wait.
        if i % 64 == 63 {
            let start = *started.get_or_insert_with(Instant::now);
            if start.elapsed() >= SPIN_TIME {
                break;
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    Ok(false)
}

/// Time left until `deadline`; `None` (wait forever) without one.
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

// ---------------------------------------------------------------------------
// the producer

/// The writing half of a ring: one per ring, in one process.
///
/// Two interfaces: blocking ([`send`](Sender::send),
/// [`send_timeout`](Sender::send_timeout)) for a process that only produces,
/// and non-blocking ([`enqueue`](Sender::enqueue), [`flush`](Sender::flush),
/// [`prepare_wait`](Sender::prepare_wait), [`wait_fd`](Sender::wait_fd),
/// [`finish_wait`](Sender::finish_wait)) for a `poll` loop driving many
/// rings. Messages queued in the local outbox always go out before later
/// ones, whichever interface sent them. Dropping the sender discards what is
/// still queued (call `flush` first) and closes the data bell, so the
/// receiver sees end of file once it has drained the ring.
pub struct Sender {
    region: Region,
    /// Our tail, including frames written but not yet published.
    tail: u64,
    /// The tail the consumer can see (the last value stored in the header).
    published: u64,
    /// A head loaded earlier: the real head is at least this, so the free
    /// space computed from it is a safe underestimate.
    cached_head: u64,
    /// Messages accepted but not yet (fully) in the ring, oldest first.
    outbox: VecDeque<Vec<u8>>,
    /// Bytes of `outbox[0]` already in the ring as MORE fragments.
    front_sent: usize,
    /// Free bytes the last `try_send_partial` that could not finish needs
    /// (for `has_room`).
    wanted: u64,
    /// Wake: the data bell's write end, rung when the consumer sleeps.
    /// Wait: the space bell's read end; end of file = consumer gone.
    /// `None` for halves made by [`attach`].
    bells: Option<Bells>,
    /// The consumer is known to be gone (set by `finish_wait`, which only
    /// has `&self`).
    peer_gone: Cell<bool>,
    /// Our sleeps on the space bell so far (the last number we announced).
    sleeps: Cell<u64>,
    /// The consumer's sleep number we last rang the data bell for.
    rang_for: u64,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.region.capacity)
            .field("tail", &self.tail)
            .field("queued", &self.outbox.len())
            .field("bells", &self.bells)
            .finish()
    }
}

impl Sender {
    /// The ring's capacity in bytes (frame headers included).
    pub fn capacity(&self) -> usize {
        self.region.capacity as usize
    }

    /// Sends one message, waiting (spinning, then sleeping) for room.
    ///
    /// Messages queued with [`enqueue`](Sender::enqueue) go first.
    /// Errors: [`Error::Closed`] if the receiver is found gone (it is found
    /// when this call has to wait, or when it would wake the receiver: a
    /// message that fits into a ring whose reader died may still return
    /// `Ok`); [`Error::Decode`] if the shared indices are corrupt.
    pub fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.send_until(msg, None)
    }

    /// Like [`send`](Sender::send), giving up after `timeout`.
    ///
    /// On [`Error::Timeout`] the message is *not* lost and must not be sent
    /// again: it (or the part of it not yet in the ring) waits in the outbox
    /// ([`has_pending`](Sender::has_pending) is true) and goes out, before
    /// anything else, on the next `send`, `send_timeout` or `flush`. That
    /// way a partly streamed message is always completed.
    pub fn send_timeout(&mut self, msg: &[u8], timeout: Duration) -> Result<()> {
        self.send_until(msg, sys::deadline_after(timeout))
    }

    fn send_until(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<()> {
        if self.peer_gone.get() {
            return Err(Error::Closed);
        }
        if self.has_pending() {
            self.outbox.push_back(msg.to_vec());
            return self.flush_until(deadline);
        }
        let mut sent = 0;
        loop {
            let done = self.push_some(msg, &mut sent)?;
            self.publish()?;
            if done {
                return Ok(());
            }
            let need = self.need(msg.len(), sent);
            if !self.wait_for_space(need, deadline)? {
                // Keep the whole message; `front_sent` says how much of it
                // is already in the ring.
                self.outbox.push_back(msg.to_vec());
                self.front_sent = sent;
                return Err(Error::Timeout);
            }
        }
    }

    /// Flushes the outbox completely, waiting as needed.
    fn flush_until(&mut self, deadline: Option<Instant>) -> Result<()> {
        while !self.flush()? {
            let need = self.front_need().unwrap_or(0);
            if !self.wait_for_space(need, deadline)? {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    /// Queues a message in the local outbox. Never blocks, never fails;
    /// [`flush`](Sender::flush) moves it into the ring.
    pub fn enqueue(&mut self, msg: Vec<u8>) {
        self.outbox.push_back(msg);
    }

    /// Moves as much of the outbox into the ring as fits now, without
    /// waiting. `Ok(true)` means the outbox is empty.
    ///
    /// Errors: [`Error::Closed`] if the receiver is known to be gone (its
    /// bell hung up, or waking it failed); [`Error::Decode`] for corrupt
    /// shared indices.
    pub fn flush(&mut self) -> Result<bool> {
        if self.peer_gone.get() {
            return Err(Error::Closed);
        }
        while let Some(msg) = self.outbox.pop_front() {
            let mut sent = self.front_sent;
            let pushed = self.push_some(&msg, &mut sent);
            if matches!(pushed, Ok(true)) {
                self.front_sent = 0;
                continue;
            }
            self.front_sent = sent;
            self.outbox.push_front(msg);
            pushed?;
            break;
        }
        // One publish (and at most one wake-up) for everything pushed.
        self.publish()?;
        Ok(self.outbox.is_empty())
    }

    /// Whether the outbox holds messages not yet (fully) in the ring.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Writes as much of `msg[*sent..]` as fits now and publishes it,
    /// advancing `*sent`; `Ok(true)` once the whole message is in the ring.
    /// Call again with the same `msg` and `sent` until it returns true.
    /// Never blocks and never rings a bell of its own: for owners that wake
    /// the receiver their own way. Queued messages go first: while the
    /// outbox cannot be flushed, nothing of `msg` is written.
    pub(crate) fn try_send_partial(&mut self, msg: &[u8], sent: &mut usize) -> Result<bool> {
        if !self.flush()? {
            self.wanted = self.front_need().unwrap_or(0);
            return Ok(false);
        }
        let done = self.push_some(msg, sent)?;
        self.publish()?;
        self.wanted = if done { 0 } else { self.need(msg.len(), *sent) };
        Ok(done)
    }

    /// Whether the message [`try_send_partial`](Sender::try_send_partial)
    /// (or [`flush`](Sender::flush)) last left unfinished can make progress
    /// now; true when nothing is unfinished. For owners that sleep their
    /// own way.
    pub(crate) fn has_room(&self) -> bool {
        let need = self.front_need().unwrap_or(self.wanted);
        // Acquire: pairs with the consumer's release store of head, like
        // `free_space`; a caller that sleeps on the answer orders its own
        // sleep announcement before this load (SeqCst fence or store).
        let head = self.region.header().head.0.load(Ordering::Acquire);
        // A corrupt head counts as room: the next send reports it.
        !self.valid_head(head) || self.region.capacity - (self.tail - head) >= need
    }

    /// The space bell's read end, for an external `poll` (wait for it to be
    /// readable). It becomes readable when the receiver frees space while
    /// [`prepare_wait`](Sender::prepare_wait) is in effect, or hangs up when
    /// the receiver is gone.
    ///
    /// # Panics
    /// Never for a half made by [`channel`]; only the crate's own
    /// bell-less halves (which never call it) have no fd to give.
    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        wait_end(&self.bells)
    }

    /// Announces that this side is about to sleep on
    /// [`wait_fd`](Sender::wait_fd). Returns `false` (and announces
    /// nothing) if sleeping would be wrong: the outbox is empty, the next
    /// piece of it fits now, or the receiver is known to be gone — call
    /// [`flush`](Sender::flush) instead. After `true`, `poll` the fd, then
    /// call [`finish_wait`](Sender::finish_wait).
    pub fn prepare_wait(&self) -> bool {
        match self.front_need() {
            Some(need) if !self.peer_gone.get() && self.bells.is_some() => self.prepare_wait_for(need),
            _ => false,
        }
    }

    /// Ends a wait begun by [`prepare_wait`](Sender::prepare_wait): clears
    /// the sleep announcement and drains the bell. If the bell hung up, the
    /// receiver is gone and the next [`flush`](Sender::flush) returns
    /// [`Error::Closed`].
    pub fn finish_wait(&self) {
        // Relaxed: a receiver that still reads our old number rings once
        // more at most, which costs one spurious wake-up later, never a lost
        // one. Only we, the sleeper, ever clear this word.
        self.region.header().producer_sleeping.0.store(0, Ordering::Relaxed);
        // A read error other than EAGAIN cannot happen on a pipe we own;
        // if it did, the next wait would report the same state again.
        if let Some(bells) = &self.bells {
            if let Ok(false) = bell::drain(bells.wait.as_fd()) {
                self.peer_gone.set(true);
            }
        }
    }

    /// Test hook: publishes a bare frame header with any length and flags,
    /// to check how the receiver handles corrupt frames. Needs 8 free bytes.
    #[doc(hidden)]
    pub fn send_raw_frame_header(&mut self, len: u32, flags: u32) -> Result<()> {
        if self.free_space(FRAME_HEADER)? < FRAME_HEADER {
            return Err(Error::InvalidState("ring full"));
        }
        // SAFETY: 8 free bytes at our tail are ours (checked just above).
        unsafe { self.region.write_frame_header(self.tail, len, flags) };
        self.tail += FRAME_HEADER;
        self.publish()
    }

    /// Test hook, not API: the start and length of this ring's shared
    /// region (header, then data; the layout is in the module docs), so a
    /// test can scribble on it as a corrupting peer would.
    #[doc(hidden)]
    pub fn raw_region(&self) -> (*mut u8, usize) {
        self.region.raw()
    }

    /// Whether `head`, loaded from shared memory, is one the consumer could
    /// have stored: a multiple of 8 (frames start at multiples of 8), no
    /// lower than a head seen before, no higher than the tail we published.
    /// Every free-space computation relies on it: with it, `tail - head` is
    /// a multiple of 8 no larger than the capacity (our `tail` never runs
    /// more than the capacity ahead of `cached_head`).
    fn valid_head(&self, head: u64) -> bool {
        head.is_multiple_of(8) && head >= self.cached_head && head <= self.published
    }

    /// Free bytes `need` must reach before the rest of a message of
    /// `total` bytes, `sent` of which are in the ring, can make progress.
    fn need(&self, total: usize, sent: usize) -> u64 {
        let whole = frame_len(total - sent);
        if frame_len(total) > self.region.capacity {
            // Streamed: wait for a quarter of the ring, so fragments stay
            // large instead of following each small free-up.
            whole.min(self.region.capacity / 4)
        } else {
            whole
        }
    }

    fn front_need(&self) -> Option<u64> {
        self.outbox.front().map(|msg| self.need(msg.len(), self.front_sent))
    }

    /// Writes as much of `msg[*sent..]` as fits now, advancing `*sent`.
    /// Fragments are published at once (the receiver can copy one out while
    /// we write the next); a final frame is left for the caller to publish.
    /// Returns whether the whole message is in the ring.
    fn push_some(&mut self, msg: &[u8], sent: &mut usize) -> Result<bool> {
        loop {
            let rest = &msg[*sent..];
            let whole = frame_len(rest.len());
            let free = self.free_space(whole)?;
            if whole <= free {
                // SAFETY: `whole` free bytes at our tail are ours.
                unsafe { self.write_frame(rest, 0) };
                *sent = msg.len();
                return Ok(true);
            }
            if free < self.need(msg.len(), *sent) {
                return Ok(false);
            }
            // Streaming: free >= capacity / 4 > 8 and is a multiple of 8, so
            // the fragment is non-empty; whole > free makes it shorter than
            // `rest`.
            let fragment = (free - FRAME_HEADER) as usize;
            // SAFETY: `free` bytes at our tail are ours; the frame takes
            // exactly `free`.
            unsafe { self.write_frame(&rest[..fragment], FLAG_MORE) };
            *sent += fragment;
            self.publish()?;
        }
    }

    /// Writes one frame at our (unpublished) tail.
    ///
    /// # Safety
    /// `frame_len(payload.len())` bytes at `self.tail` must be free.
    unsafe fn write_frame(&mut self, payload: &[u8], flags: u32) {
        // Fits a u32: a frame is at most the capacity, at most 1 GiB.
        let len = payload.len() as u32;
        // SAFETY: forwarded from the caller; the payload follows the header
        // inside the same free frame.
        unsafe {
            self.region.write_frame_header(self.tail, len, flags);
            self.region.write_at(self.tail + FRAME_HEADER, payload);
        }
        self.tail += frame_len(payload.len());
    }

    /// Free bytes at our tail; loads the shared head only when the cached
    /// one does not already show `want` free. The result is a multiple of 8
    /// no larger than the capacity, whatever shared memory holds: the head
    /// loaded is checked by [`valid_head`](Sender::valid_head) before use.
    fn free_space(&mut self, want: u64) -> Result<u64> {
        let capacity = self.region.capacity;
        // No overflow: `cached_head` passed valid_head, and we never write
        // more than the free space it showed.
        let free = capacity - (self.tail - self.cached_head);
        if free >= want {
            return Ok(free);
        }
        // Acquire: pairs with the consumer's release store of head, so its
        // copies out of the bytes below head happen before we overwrite them.
        let head = self.region.header().head.0.load(Ordering::Acquire);
        if !self.valid_head(head) {
            return Err(corrupt("ring head index out of range or misaligned"));
        }
        self.cached_head = head;
        Ok(capacity - (self.tail - head))
    }

    /// Makes the frames written so far visible, and wakes the consumer if
    /// it is asleep.
    fn publish(&mut self) -> Result<()> {
        if self.tail == self.published {
            return Ok(());
        }
        let header = self.region.header();
        // SeqCst store: its release half publishes the frame bytes written
        // above to a consumer that loads tail with acquire; its SeqCst half
        // orders it before the load of consumer_sleeping below, against the
        // consumer's SeqCst store of that word followed by its SeqCst load of
        // tail (Receiver::prepare_wait). In the single order of those four
        // operations one side's load comes after the other's store: either
        // we see its sleep number and ring, or the consumer sees our tail
        // and does not sleep. No lost wake-up.
        header.tail.0.store(self.tail, Ordering::SeqCst);
        self.published = self.tail;
        // SeqCst: see above.
        let sleep = header.consumer_sleeping.0.load(Ordering::SeqCst);
        if sleep != 0 && sleep != self.rang_for {
            // One byte per sleep: the consumer re-checks the ring after it
            // wakes, before it can sleep again (with a new number).
            self.rang_for = sleep;
            if let Some(bells) = &self.bells {
                if bell::ring(bells.wake.as_fd())? == Rang::PeerGone {
                    self.peer_gone.set(true);
                    return Err(Error::Closed);
                }
            }
        }
        Ok(())
    }

    /// Announces a sleep unless `need` bytes are already free.
    fn prepare_wait_for(&self, need: u64) -> bool {
        let header = self.region.header();
        let sleep = self.sleeps.get() + 1;
        self.sleeps.set(sleep);
        // SeqCst store then SeqCst load: the mirror of the consumer's head
        // store then producer_sleeping load (Receiver::release): either it
        // sees our number and rings the space bell, or we see its head here.
        header.producer_sleeping.0.store(sleep, Ordering::SeqCst);
        let head = header.head.0.load(Ordering::SeqCst);
        // A corrupt head also ends the wait: flush reports it.
        if !self.valid_head(head) || self.region.capacity - (self.tail - head) >= need {
            // Relaxed: see finish_wait.
            header.producer_sleeping.0.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Spins, then sleeps, until `need` bytes are free. `Ok(false)` on
    /// timeout; [`Error::Closed`] if the receiver is gone.
    fn wait_for_space(&mut self, need: u64, deadline: Option<Instant>) -> Result<bool> {
        if spin(|| Ok(self.free_space(need)? >= need))? {
            return Ok(true);
        }
        loop {
            if self.peer_gone.get() {
                return Err(Error::Closed);
            }
            if expired(deadline) {
                return Ok(false);
            }
            let Some(bells) = &self.bells else {
                return Err(Error::InvalidState(NO_BELL));
            };
            if self.prepare_wait_for(need) {
                trace!("doorbell wait(fd {}) for {need} free bytes", bells.wait.as_raw_fd());
                let polled = sys::poll(&[(bells.wait.as_fd(), true, false)], remaining(deadline));
                self.finish_wait();
                polled?;
            }
            if self.free_space(need)? >= need {
                return Ok(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the consumer

/// The reading half of a ring: one per ring, in one process.
///
/// Blocking calls ([`recv`](Receiver::recv), [`recv_into`](Receiver::recv_into),
/// [`recv_timeout`](Receiver::recv_timeout)) spin, then sleep on the data
/// bell. The non-blocking [`try_recv_into`](Receiver::try_recv_into) with
/// [`prepare_wait`](Receiver::prepare_wait), [`wait_fd`](Receiver::wait_fd)
/// and [`finish_wait`](Receiver::finish_wait) serve a `poll` loop. A message
/// that arrives in fragments is kept inside the receiver until it is whole,
/// across calls. Dropping the receiver closes the space bell, so a waiting
/// sender gets [`Error::Closed`].
pub struct Receiver {
    region: Region,
    /// Our head: bytes consumed.
    head: u64,
    /// The head last stored in shared memory. Frames between it and `head`
    /// are consumed but not yet given back: the store (a locked instruction
    /// and a cache line the producer will want) is made once a quarter of
    /// the ring has been consumed, or when the ring runs dry — never later,
    /// so a producer waiting for space is always answered.
    released: u64,
    /// A tail loaded earlier: frames below it are complete and ours to read.
    cached_tail: u64,
    /// The fragments of a message received so far.
    partial: Vec<u8>,
    /// A MORE fragment has been received: `partial` holds a message start.
    in_message: bool,
    /// The longest message accepted ([`Receiver::set_max_message`]).
    max_message: usize,
    /// Wake: the space bell's write end, rung when the producer sleeps.
    /// Wait: the data bell's read end; end of file = producer gone.
    /// `None` for halves made by [`attach`].
    bells: Option<Bells>,
    /// The data bell hung up: no more frames will come.
    producer_gone: bool,
    /// A corrupt frame was seen; every later call reports it again.
    poisoned: Option<DecodeError>,
    /// Our sleeps on the data bell so far (the last number we announced).
    sleeps: Cell<u64>,
    /// The producer's sleep number we last rang the space bell for.
    rang_for: u64,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.region.capacity)
            .field("head", &self.head)
            .field("partial", &self.partial.len())
            .field("bells", &self.bells)
            .finish()
    }
}

impl Receiver {
    /// The ring's capacity in bytes (frame headers included).
    pub fn capacity(&self) -> usize {
        self.region.capacity as usize
    }

    /// Receives the next message, waiting (spinning, then sleeping) for it.
    ///
    /// Errors: [`Error::Closed`] once the sender is gone and the ring is
    /// drained (also when it died in the middle of a message);
    /// [`Error::Decode`] for a corrupt frame.
    pub fn recv(&mut self) -> Result<Vec<u8>> {
        let mut msg = Vec::new();
        self.recv_into(&mut msg)?;
        Ok(msg)
    }

    /// Like [`recv`](Receiver::recv), into `buf` (cleared first), reusing
    /// its allocation.
    pub fn recv_into(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.recv_until(buf, None).map(drop)
    }

    /// Like [`recv`](Receiver::recv), giving up after `timeout`: `Ok(None)`
    /// then. A message half received stays inside the receiver.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let mut msg = Vec::new();
        Ok(self.recv_until(&mut msg, sys::deadline_after(timeout))?.then_some(msg))
    }

    fn recv_until(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<bool> {
        loop {
            // A bounded look, so that a sender that keeps one message
            // going cannot keep us past the deadline.
            if self.try_recv_some(buf)? {
                return Ok(true);
            }
            // Left in the ring: fragments beyond that look's share.
            let left = self.has_data();
            // The bell hung up before that look at the ring, so the ring
            // held everything the producer ever published.
            if self.producer_gone && !left {
                return Err(Error::Closed);
            }
            if expired(deadline) {
                return Ok(false);
            }
            if !left {
                self.wait_for_data(deadline)?;
            }
        }
    }

    /// Takes the next whole message into `buf` (cleared first) if there is
    /// one, without waiting. `Ok(false)`: none yet (`buf` untouched), and
    /// the ring is empty; the fragments of a message that has begun are
    /// kept inside. A sender that never ends its message could keep this
    /// call taking fragments: [`set_max_message`](Receiver::set_max_message)
    /// bounds that ([`recv_timeout`](Receiver::recv_timeout) is bounded by
    /// its deadline as well).
    ///
    /// Errors: [`Error::Decode`] for a corrupt frame (an empty fragment of
    /// a longer message too: no sender cuts one), and from then on.
    /// A gone sender is not an error here: watch for
    /// [`finish_wait`](Receiver::finish_wait) returning `Ok(false)`.
    pub fn try_recv_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        self.recv_checked(buf, false)
    }

    /// [`try_recv_into`](Receiver::try_recv_into) that takes at most a
    /// capacity (1 MiB at most) of an unfinished message's fragments:
    /// `Ok(false)` may then leave data in the ring (see `has_data`), for a
    /// caller that has other rings, deadlines or callers to see to.
    pub(crate) fn try_recv_some(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        self.recv_checked(buf, true)
    }

    fn recv_checked(&mut self, buf: &mut Vec<u8>, bounded: bool) -> Result<bool> {
        if let Some(err) = &self.poisoned {
            return Err(Error::Decode(err.clone()));
        }
        match self.take_message(buf, bounded) {
            Err(Error::Decode(err)) => {
                self.poisoned = Some(err.clone());
                Err(Error::Decode(err))
            }
            other => other,
        }
    }

    fn take_message(&mut self, buf: &mut Vec<u8>, bounded: bool) -> Result<bool> {
        // Fragments a bounded call may take without finishing a message: a
        // producer that keeps one message going (an honest one streaming a
        // big message as fast as we read, or a hostile one that never ends
        // it) must not keep the caller here past its deadline, or away
        // from its other rings. It comes back for the rest.
        let mut budget = if bounded { self.region.capacity.min(FRAGMENT_BUDGET) } else { u64::MAX };
        loop {
            let available = self.available()?;
            if available == 0 {
                // Dry: give back everything consumed before the caller
                // (perhaps) sleeps, so a waiting producer can go on.
                self.publish_head()?;
                return Ok(false);
            }
            // SAFETY: available() checked that tail - head is a non-zero
            // multiple of 8, so 8 bytes at head are below the loaded tail.
            let (len, flags) = unsafe { self.region.read_frame_header(self.head) };
            let frame = frame_len(len as usize);
            if frame > self.region.capacity {
                return Err(corrupt("frame longer than the ring"));
            }
            if frame > available {
                return Err(corrupt("frame runs past the published tail"));
            }
            if flags & !FLAG_MORE != 0 {
                return Err(corrupt("unknown frame flags"));
            }
            let more = flags & FLAG_MORE != 0;
            if more && len == 0 {
                // Senders cut fragments as large as the room allows.
                return Err(corrupt("empty fragment"));
            }
            if self.partial.len().saturating_add(len as usize) > self.max_message {
                return Err(corrupt("message longer than the receiver's limit"));
            }
            if !self.in_message && !more {
                // The common case: a whole message in one frame.
                buf.clear();
                // SAFETY: the frame at head was validated above.
                unsafe { self.region.append_payload(self.head, len as usize, buf) };
                self.release(frame)?;
                return Ok(true);
            }
            // SAFETY: the frame at head was validated above.
            unsafe { self.region.append_payload(self.head, len as usize, &mut self.partial) };
            self.release(frame)?;
            self.in_message = more;
            if !more {
                // Hand over the message and keep buf's old allocation.
                std::mem::swap(buf, &mut self.partial);
                self.partial.clear();
                return Ok(true);
            }
            budget = budget.saturating_sub(frame);
            if budget == 0 {
                self.publish_head()?;
                return Ok(false);
            }
        }
    }

    /// Refuses messages longer than `bytes` from now on: one that grows past
    /// it, fragment by fragment, is [`Error::Decode`] (and the receiver stays
    /// in that error), before its bytes are gathered. A producer that never
    /// ends a message can then not make this side gather without limit.
    /// Default: no limit.
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes;
    }

    /// Test hook, not API: as [`Sender::raw_region`].
    #[doc(hidden)]
    pub fn raw_region(&self) -> (*mut u8, usize) {
        self.region.raw()
    }

    /// Bytes published and not yet consumed; loads the shared tail only
    /// when everything cached has been consumed.
    fn available(&mut self) -> Result<u64> {
        if self.cached_tail != self.head {
            return Ok(self.cached_tail - self.head);
        }
        // Acquire: pairs with the producer's SeqCst (hence release) store of
        // tail, so the frames below it are fully written before we read them.
        let tail = self.region.header().tail.0.load(Ordering::Acquire);
        if tail < self.head
            || tail - self.head > self.region.capacity
            || !(tail - self.head).is_multiple_of(8)
        {
            return Err(corrupt("ring tail index out of range"));
        }
        self.cached_tail = tail;
        Ok(tail - self.head)
    }

    /// Consumes the frame at head; gives consumed space back to the
    /// producer once a quarter of the ring has piled up, or at once if the
    /// producer is asleep waiting for it.
    fn release(&mut self, frame: u64) -> Result<()> {
        self.head += frame;
        // Relaxed peek at the producer's sleep word: seeing it late only
        // delays the wake-up to the next quarter or to the moment the ring
        // runs dry, where publish_head's SeqCst store-then-load rules out a
        // lost one.
        let producer_waits = self.region.header().producer_sleeping.0.load(Ordering::Relaxed) != 0;
        if producer_waits || self.head - self.released >= self.region.capacity / 4 {
            self.publish_head()?;
        }
        Ok(())
    }

    /// Stores our head for the producer, waking it if it sleeps.
    fn publish_head(&mut self) -> Result<()> {
        if self.released == self.head {
            return Ok(());
        }
        self.released = self.head;
        let header = self.region.header();
        // SeqCst store: its release half orders our copies out of the frame
        // before the producer's reuse of its bytes (it loads head with
        // acquire); its SeqCst half orders it before the load of
        // producer_sleeping below, against the producer's SeqCst store of its
        // sleep number then load of head (Sender::prepare_wait_for): one of
        // us sees the other's store, so a sleeping producer is always woken.
        header.head.0.store(self.head, Ordering::SeqCst);
        // SeqCst: see above.
        let sleep = header.producer_sleeping.0.load(Ordering::SeqCst);
        if sleep != 0 && sleep != self.rang_for {
            // One byte per sleep, as in Sender::publish. A producer gone is
            // not our error: the ring still holds what it sent, and its bell
            // will read end of file.
            self.rang_for = sleep;
            if let Some(bells) = &self.bells {
                bell::ring(bells.wake.as_fd())?;
            }
        }
        Ok(())
    }

    /// Whether [`try_recv_into`](Receiver::try_recv_into) has something to
    /// look at: frames published and not yet taken (perhaps only part of a
    /// message), or an error to report. For owners that sleep their own way.
    pub(crate) fn has_data(&self) -> bool {
        // Acquire: pairs with the producer's release store of tail, like
        // `available`; a caller that sleeps on the answer orders its own
        // sleep announcement before this load (SeqCst fence or store).
        self.poisoned.is_some()
            || self.cached_tail != self.head
            || self.region.header().tail.0.load(Ordering::Acquire) != self.head
    }

    /// The data bell's read end, for an external `poll` (wait for it to be
    /// readable). It becomes readable when the sender publishes while
    /// [`prepare_wait`](Receiver::prepare_wait) is in effect, or hangs up
    /// when the sender is gone.
    ///
    /// # Panics
    /// Never for a half made by [`channel`]; only the crate's own
    /// bell-less halves (which never call it) have no fd to give.
    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        wait_end(&self.bells)
    }

    /// Announces that this side is about to sleep on
    /// [`wait_fd`](Receiver::wait_fd). Returns `false` (and announces
    /// nothing) if there is something to take now, or nothing will ever
    /// come (sender gone, corrupt ring): call
    /// [`try_recv_into`](Receiver::try_recv_into) instead. After `true`,
    /// `poll` the fd, then call [`finish_wait`](Receiver::finish_wait).
    pub fn prepare_wait(&self) -> bool {
        if self.producer_gone || self.poisoned.is_some() || self.bells.is_none() {
            return false;
        }
        let header = self.region.header();
        let sleep = self.sleeps.get() + 1;
        self.sleeps.set(sleep);
        // SeqCst store then SeqCst load: against the producer's SeqCst tail
        // store then consumer_sleeping load (Sender::publish), one of us
        // sees the other's store: either we see the new tail here, or it
        // sees our number and rings the data bell.
        header.consumer_sleeping.0.store(sleep, Ordering::SeqCst);
        if header.tail.0.load(Ordering::SeqCst) != self.head {
            // Relaxed: see finish_wait.
            header.consumer_sleeping.0.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends a wait begun by [`prepare_wait`](Receiver::prepare_wait):
    /// clears the sleep announcement and drains the bell. `Ok(false)` means
    /// the bell hung up: the sender is gone — but frames it published before
    /// dying may still be in the ring, so drain it with
    /// [`try_recv_into`](Receiver::try_recv_into) before treating the peer
    /// as dead.
    pub fn finish_wait(&mut self) -> Result<bool> {
        // Relaxed: a producer that still reads our old number rings once
        // more at most, which costs one spurious wake-up later, never a lost
        // one. Only we, the sleeper, ever clear this word.
        self.region.header().consumer_sleeping.0.store(0, Ordering::Relaxed);
        let Some(bells) = &self.bells else {
            return Ok(true);
        };
        let alive = bell::drain(bells.wait.as_fd())?;
        if !alive {
            self.producer_gone = true;
        }
        Ok(alive)
    }

    /// Spins, then sleeps once on the data bell (until it rings, hangs up or
    /// the deadline passes). The caller looks at the ring again.
    fn wait_for_data(&mut self, deadline: Option<Instant>) -> Result<()> {
        let header = self.region.header();
        // Relaxed is enough to notice a change; try_recv_into loads the tail
        // again with acquire before reading any frame.
        if spin(|| Ok(header.tail.0.load(Ordering::Relaxed) != self.head))? {
            return Ok(());
        }
        let Some(bells) = &self.bells else {
            return Err(Error::InvalidState(NO_BELL));
        };
        if self.prepare_wait() {
            trace!("doorbell wait(fd {})", bells.wait.as_raw_fd());
            let polled = sys::poll(&[(bells.wait.as_fd(), true, false)], remaining(deadline));
            let finished = self.finish_wait();
            polled?;
            finished?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The crate-internal interface the pool uses: rings carved out of one
    //! mapping, without doorbells. (The public interface is tested in
    //! tests/ring.rs.)

    use super::*;

    fn mapping(rings: usize, capacity: usize) -> Arc<SharedMapping> {
        Arc::new(SharedMapping::new(RING_NAME, rings * region_size(capacity)).expect("mmap"))
    }

    #[test]
    fn attach_rejects_regions_that_do_not_fit_or_are_misaligned() {
        let map = mapping(1, 4096);
        for (offset, capacity) in [(0, 8192), (64, 4096), (0, 3000), (0, 512), (usize::MAX - 10, 4096)] {
            assert!(
                matches!(attach(map.clone(), offset, capacity), Err(Error::InvalidArgument(_))),
                "offset {offset}, capacity {capacity} accepted"
            );
        }
        assert!(attach(map, 0, 4096).is_ok());
    }

    #[test]
    fn rings_carved_from_one_mapping_stay_apart() {
        let map = mapping(2, 1024);
        let (mut tx0, mut rx0) = attach(map.clone(), 0, 1024).expect("ring 0");
        let (mut tx1, mut rx1) = attach(map.clone(), region_size(1024), 1024).expect("ring 1");
        let mut sent = 0;
        assert!(tx0.try_send_partial(&[0; 1000], &mut sent).expect("send 0"));
        sent = 0;
        assert!(tx1.try_send_partial(&[1; 1000], &mut sent).expect("send 1"));
        let mut buf = Vec::new();
        assert!(rx1.try_recv_into(&mut buf).expect("recv 1"));
        assert_eq!(buf, [1; 1000]);
        assert!(rx0.try_recv_into(&mut buf).expect("recv 0"));
        assert_eq!(buf, [0; 1000]);
    }

    #[test]
    fn try_send_partial_streams_a_big_message_and_has_room_follows_the_reader() {
        let map = mapping(1, 1024);
        let (mut tx, mut rx) = attach(map, 0, 1024).expect("ring");
        let msg: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let (mut sent, mut buf, mut rounds) = (0, Vec::new(), 0);
        assert!(!rx.has_data());
        while !tx.try_send_partial(&msg, &mut sent).expect("send") {
            assert!(!tx.has_room(), "a stuck sender must see no room");
            assert!(rx.has_data());
            assert!(!rx.try_recv_into(&mut buf).expect("recv"), "message complete too early");
            assert!(tx.has_room(), "the reader freed the ring");
            rounds += 1;
        }
        assert!(rounds >= 4);
        assert!(rx.try_recv_into(&mut buf).expect("recv"));
        assert_eq!(buf, msg);
        assert!(!rx.has_data());
        assert!(tx.has_room());
    }

    #[test]
    fn blocking_calls_on_a_bell_less_half_fail_instead_of_hanging() {
        let map = mapping(1, 1024);
        let (mut tx, mut rx) = attach(map, 0, 1024).expect("ring");
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Err(Error::InvalidState(NO_BELL)));
        tx.send(&[0; 1000]).expect("fits");
        assert_eq!(tx.send(&[0; 1000]), Err(Error::InvalidState(NO_BELL)));
        assert!(!rx.prepare_wait());
    }

    #[test]
    fn reattaching_resumes_at_the_current_indices_and_reset_empties() {
        let map = mapping(1, 1024);
        let (mut tx, _) = attach(map.clone(), 0, 1024).expect("ring");
        let mut sent = 0;
        assert!(tx.try_send_partial(b"kept", &mut sent).expect("send"));
        drop(tx);
        // A new pair (another process, say) sees the message still queued.
        let (_, mut rx) = attach(map.clone(), 0, 1024).expect("ring");
        let mut buf = Vec::new();
        assert!(rx.try_recv_into(&mut buf).expect("recv"));
        assert_eq!(buf, b"kept");
        let (mut tx, _) = attach(map.clone(), 0, 1024).expect("ring");
        sent = 0;
        assert!(tx.try_send_partial(b"dropped", &mut sent).expect("send"));
        reset(&map, 0);
        let (_, mut rx) = attach(map.clone(), 0, 1024).expect("ring");
        assert!(!rx.try_recv_into(&mut buf).expect("recv"));
        // Corrupt indices are refused, not trusted.
        let header = Region::new(map.clone(), 0, 1024).expect("region");
        header.header().tail.0.store(1 << 40, Ordering::SeqCst);
        assert!(matches!(attach(map, 0, 1024), Err(Error::Decode(_))));
    }
}
