//! Deterministic corruption of a ring across a real fork (issue 15): one
//! process uses its half of a ring normally while the process on the other
//! side scribbles on the shared header (head, tail, both sleep words) and
//! on the frames. The honest side must never panic, take a signal, hang or
//! touch memory outside the ring; every message it receives is one that
//! was sent (it checks each one whole), or fails its own checksum (the
//! corrupter wrote it), or the ring reports an error.
//!
//! Both directions: the corrupter produces (the receiver is the victim) or
//! consumes (the sender is). A quarter of the episodes scribble only the
//! sleep words, which decide nothing but wake-ups: there, every message
//! must arrive, whole and in order.
//!
//! The seed is fixed, so a failure repeats; `RING_CORRUPTION_SEED` picks
//! another. Iterations: 100,000 corrupter steps in a release build, fewer
//! in a debug build. Run with `cargo nextest run --test ring_corruption`.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use mproc::ring::{channel, Receiver, Sender};
use mproc::Error;

const CAPACITY: usize = 1024;
/// Corrupter steps (a send or receive, sometimes a scribble) per episode.
const STEPS: usize = 400;
/// Shared header words, as byte offsets (see the layout in ring.rs).
const TAIL: usize = 0;
const HEAD: usize = 128;
const CONSUMER_SLEEPING: usize = 256;
const PRODUCER_SLEEPING: usize = 384;
const DATA: usize = 512;
/// How long the honest side waits in one call.
const WAIT: Duration = Duration::from_millis(20);
/// An episode that takes longer has hung.
const EPISODE_LIMIT: Duration = Duration::from_secs(10);

fn total_steps() -> usize {
    if cfg!(debug_assertions) {
        24_000
    } else {
        100_000
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Message `seq` of `len` payload bytes: `seq u64, len u32, payload,
/// fnv64 of everything before`. The payload is derived from `seq`.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + len);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&(len as u32).to_le_bytes());
    let salt = seq.wrapping_mul(0x2545_F491_4F6C_DD1D);
    m.extend((0..len).map(|i| (salt >> (i % 57)) as u8 ^ i as u8));
    let sum = fnv(&m);
    m.extend_from_slice(&sum.to_le_bytes());
    m
}

/// Payload length of message `seq` in an episode with seed `seed`: mostly
/// small, some up to the ring, a few streamed in fragments.
fn message_len(seed: u64, seq: u64) -> usize {
    let mut r = Rng(seed ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    match r.below(100) {
        0..=4 => r.below(3 * CAPACITY as u64) as usize,
        5..=29 => r.below(CAPACITY as u64) as usize,
        _ => r.below(64) as usize,
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    /// A message that was sent: its sequence number.
    Sent(u64),
    /// Fails its checksum: bytes the corrupter made.
    Garbage,
}

/// Checks a received message. A message that passes its checksum must be
/// exactly the one sent with its number (and that number must exist).
fn check(seed: u64, sent: u64, msg: &[u8]) -> Seen {
    if msg.len() < 20 {
        return Seen::Garbage;
    }
    let (body, sum) = msg.split_at(msg.len() - 8);
    if fnv(body).to_le_bytes() != sum {
        return Seen::Garbage;
    }
    let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
    assert!(seq < sent, "message {seq} received, only {sent} exist");
    assert_eq!(msg, message(seq, message_len(seed, seq)), "message {seq} passed its checksum but is wrong");
    Seen::Sent(seq)
}

/// Where to scribble.
#[derive(Clone, Copy)]
enum Scope {
    /// Only the two sleep words.
    SleepWords,
    /// Any header word or frame byte.
    Anything,
}

fn word(base: *mut u8, offset: usize) -> &'static AtomicU64 {
    // SAFETY: `offset` is one of the header words: 8-aligned (the region is
    // page-aligned) and inside the ring's region, which stays mapped until
    // the test's process exits (the halves are leaked or outlive the uses).
    // Both processes access it atomically or by plain copies.
    unsafe { &*base.add(offset).cast::<AtomicU64>() }
}

fn byte(base: *mut u8, offset: usize) -> &'static AtomicU8 {
    // SAFETY: as in `word`, for one byte of the data area.
    unsafe { &*base.add(offset).cast::<AtomicU8>() }
}

/// A value for a header word that a corrupter might leave there.
fn bad_value(r: &mut Rng, current: u64) -> u64 {
    match r.below(7) {
        0 => r.next(),
        1 => current.wrapping_add(r.below(128)).wrapping_sub(64),
        2 => current ^ (1 << r.below(64)),
        3 => current.wrapping_add(8 * r.below(4 * CAPACITY as u64 / 8)),
        4 => current.wrapping_sub(8 * r.below(4 * CAPACITY as u64 / 8)),
        5 => 0,
        _ => u64::MAX - r.below(16),
    }
}

/// One scribble on the ring at `base`.
fn scribble(r: &mut Rng, base: *mut u8, scope: Scope) {
    let words = match scope {
        Scope::SleepWords => &[CONSUMER_SLEEPING, PRODUCER_SLEEPING][..],
        Scope::Anything => &[TAIL, HEAD, CONSUMER_SLEEPING, PRODUCER_SLEEPING][..],
    };
    if matches!(scope, Scope::Anything) && r.chance(40) {
        // Frame bytes: a frame header that lies, or a stray byte.
        if r.chance(50) {
            let at = DATA + 8 * r.below(CAPACITY as u64 / 8) as usize;
            let len = match r.below(4) {
                0 => r.below(64) as u32,
                1 => r.below(4 * CAPACITY as u64) as u32,
                2 => u32::MAX - r.below(16) as u32,
                _ => r.next() as u32,
            };
            let flags = if r.chance(70) { r.below(2) as u32 } else { r.next() as u32 };
            for (i, b) in len.to_ne_bytes().iter().chain(flags.to_ne_bytes().iter()).enumerate() {
                byte(base, at + i).store(*b, Ordering::Relaxed);
            }
        } else {
            let at = DATA + r.below(CAPACITY as u64) as usize;
            byte(base, at).store(r.next() as u8, Ordering::Relaxed);
        }
        return;
    }
    let w = word(base, words[r.below(words.len() as u64) as usize]);
    let value = bad_value(r, w.load(Ordering::Relaxed));
    w.store(value, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// processes

fn fork() -> libc::pid_t {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: nextest runs each test in its own process; the child runs only
    // the episode's code and ends with _exit (run_child).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Runs the child's side and ends the child: 0 if `body` returned, 101 if
/// it panicked. SIGALRM ends a child that hangs.
fn run_child(body: impl FnOnce()) -> ! {
    // SAFETY: alarm takes an integer.
    unsafe { libc::alarm(30) };
    let code = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    let _ = std::io::stderr().flush();
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// Reaps `pid`, killing it first if `kill`; its wait status.
fn reap(pid: libc::pid_t, kill: bool) -> i32 {
    if kill {
        // SAFETY: our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return status;
        }
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EINTR));
    }
}

fn assert_exited_cleanly(status: i32, what: &str) {
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what}: the corrupting child ended with status {status:#x} (101: it panicked; a signal: it crashed or hung)"
    );
}

/// The bytes right after the ring's region up to the end of its page are
/// never written: a sender that wrote past the data area would show here.
fn assert_nothing_past(base: *mut u8, len: usize) {
    let end = base as usize + len;
    let page_end = end.next_multiple_of(4096);
    for at in end..page_end {
        // SAFETY: inside the ring's mapping (rounded up to whole pages).
        let b = unsafe { std::ptr::read_volatile(at as *const u8) };
        assert_eq!(b, 0, "a byte past the ring's data area was written (offset {})", at - base as usize);
    }
}

// ---------------------------------------------------------------------------
// the corrupter produces: the receiver is the victim

/// The corrupting producer: sends the episode's messages, scribbling now
/// and then; keeps going whatever its own half reports (a sender whose
/// head it corrupted reports Decode), and finally tries to flush.
fn corrupt_producer(tx: &mut Sender, seed: u64, scope: Scope, scribble_percent: u64) {
    let mut r = Rng(seed);
    let base = tx.raw_region().0;
    for seq in 0..STEPS as u64 {
        if r.chance(scribble_percent) {
            scribble(&mut r, base, scope);
        }
        match tx.send_timeout(&message(seq, message_len(seed, seq)), WAIT) {
            Ok(()) | Err(Error::Timeout) | Err(Error::Decode(_)) => {}
            Err(Error::Closed) => return,
            Err(e) => panic!("send: {e:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match tx.flush() {
            Ok(true) | Err(_) => return,
            Ok(false) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn receiver_victim_episode(seed: u64) {
    let scope = if seed.is_multiple_of(4) { Scope::SleepWords } else { Scope::Anything };
    let scribble_percent = 1 + seed % 5;
    let (mut tx, mut rx) = channel(CAPACITY).unwrap();
    let pid = fork();
    if pid == 0 {
        drop(rx);
        run_child(|| corrupt_producer(&mut tx, seed, scope, scribble_percent));
    }
    drop(tx);
    let started = Instant::now();
    let mut next = 0u64;
    let mut hung = false;
    let end = loop {
        if started.elapsed() > EPISODE_LIMIT {
            hung = true;
            break None;
        }
        match rx.recv_timeout(WAIT) {
            Ok(Some(msg)) => match check(seed, STEPS as u64, &msg) {
                Seen::Sent(seq) => {
                    if let Scope::SleepWords = scope {
                        assert_eq!(seq, next, "seed {seed}: a sleep word made a message go missing");
                    }
                    next = seq + 1;
                }
                Seen::Garbage => {
                    assert!(
                        matches!(scope, Scope::Anything),
                        "seed {seed}: a sleep word corrupted a message"
                    );
                }
            },
            Ok(None) => {}
            Err(e) => break Some(e),
        }
    };
    // Closing our half ends the producer's waits at once.
    drop(rx);
    let status = reap(pid, hung);
    assert!(!hung, "seed {seed}: the receiver neither finished nor failed within {EPISODE_LIMIT:?}");
    assert_exited_cleanly(status, &format!("seed {seed}"));
    match end {
        Some(Error::Closed) => {}
        Some(Error::Decode(_)) => {
            assert!(matches!(scope, Scope::Anything), "seed {seed}: Decode from sleep words")
        }
        other => panic!("seed {seed}: the receiver ended with {other:?}"),
    }
    if let Scope::SleepWords = scope {
        assert_eq!(next, STEPS as u64, "seed {seed}: messages lost to sleep-word scribbles");
    }
}

// ---------------------------------------------------------------------------
// the corrupter consumes: the sender is the victim

/// The corrupting consumer: receives, scribbling now and then; checks what
/// it gets only for panics (its own scribbles make garbage). Once its own
/// scribbles have poisoned its receiver, it goes on as a fake consumer:
/// moves `head` up to `tail` itself (so the sender keeps sending), or to a
/// bad value.
fn corrupt_consumer(rx: &mut Receiver, seed: u64, scope: Scope, scribble_percent: u64) {
    let mut r = Rng(seed ^ 0xC0);
    let base = rx.raw_region().0;
    let mut poisoned = false;
    for _ in 0..STEPS {
        if r.chance(scribble_percent) {
            scribble(&mut r, base, scope);
        }
        if poisoned {
            let tail = word(base, TAIL).load(Ordering::Acquire);
            let head = if r.chance(80) { tail } else { bad_value(&mut r, tail) };
            word(base, HEAD).store(head, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        match rx.recv_timeout(WAIT) {
            Ok(Some(msg)) => {
                check(seed, STEPS as u64, &msg);
            }
            Ok(None) => {}
            Err(Error::Decode(_)) => poisoned = true,
            Err(Error::Closed) => return,
            Err(e) => panic!("recv: {e:?}"),
        }
    }
}

fn sender_victim_episode(seed: u64) {
    let scope = if seed.is_multiple_of(4) { Scope::SleepWords } else { Scope::Anything };
    let scribble_percent = 1 + seed % 5;
    let (mut tx, mut rx) = channel(CAPACITY).unwrap();
    let pid = fork();
    if pid == 0 {
        drop(tx);
        run_child(|| corrupt_consumer(&mut rx, seed, scope, scribble_percent));
    }
    drop(rx);
    let (base, len) = tx.raw_region();
    let started = Instant::now();
    let mut hung = false;
    for seq in 0..STEPS as u64 {
        if started.elapsed() > EPISODE_LIMIT {
            hung = true;
            break;
        }
        match tx.send_timeout(&message(seq, message_len(seed, seq)), WAIT) {
            Ok(()) | Err(Error::Timeout) => {}
            Err(Error::Decode(_)) => {
                assert!(matches!(scope, Scope::Anything), "seed {seed}: Decode from sleep words")
            }
            Err(Error::Closed) => break,
            Err(e) => panic!("seed {seed}: send: {e:?}"),
        }
        // A Decode is not sticky on the sender: it keeps trying, and must
        // keep refusing to write outside the ring.
    }
    assert_nothing_past(base, len);
    // `base` points into the mapping `tx` holds: no use after this.
    drop(tx);
    let status = reap(pid, hung);
    assert!(!hung, "seed {seed}: the sender took longer than {EPISODE_LIMIT:?}");
    assert_exited_cleanly(status, &format!("seed {seed}"));
}

fn seed() -> u64 {
    std::env::var("RING_CORRUPTION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x15_0F15)
}

fn run_episodes(episode: fn(u64)) {
    let started = Instant::now();
    let mut r = Rng(seed());
    let episodes = total_steps().div_ceil(STEPS);
    for _ in 0..episodes {
        let s = r.next();
        episode(s);
    }
    eprintln!("{episodes} episodes of {STEPS} steps in {:?}", started.elapsed());
}

#[test]
fn a_corrupting_producer_cannot_crash_hang_or_fool_the_receiver() {
    run_episodes(receiver_victim_episode);
}

#[test]
fn a_corrupting_consumer_cannot_crash_hang_or_misdirect_the_sender() {
    run_episodes(sender_victim_episode);
}

/// A producer that never ends its message: fragments of one byte flagged
/// MORE, the tail kept a whole ring ahead of the published head for 4 s
/// (no honest sender cuts a message that fine). A receiver waiting 100 ms
/// must return after about that long, with no message, or an error: not
/// once the flood stops. With a zero-length fragment, the same.
#[test]
fn an_endless_message_does_not_hold_a_receiver_past_its_deadline() {
    for payload in [1u64, 0] {
        let (tx, mut rx) = channel(1 << 16).unwrap();
        let (base, _) = tx.raw_region();
        let capacity = rx.capacity();
        let pid = fork();
        if pid == 0 {
            run_child(|| {
                drop(rx);
                // Frame header: length in the low half, flags (MORE) in the
                // high half; one byte of payload takes a frame of 16.
                let frame = if payload == 0 { 8 } else { 16 };
                for at in (0..capacity).step_by(frame) {
                    word(base, DATA + at).store(payload | 1 << 32, Ordering::Relaxed);
                }
                let (tail, head) = (word(base, TAIL), word(base, HEAD));
                let until = Instant::now() + Duration::from_secs(4);
                while Instant::now() < until {
                    tail.store(head.load(Ordering::SeqCst) + capacity as u64, Ordering::SeqCst);
                }
            });
        }
        drop(tx);
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let got = rx.recv_timeout(Duration::from_millis(100));
        let took = t.elapsed();
        reap(pid, true);
        assert!(matches!(got, Ok(None) | Err(Error::Decode(_))), "payload {payload}: {got:?}");
        assert!(took < Duration::from_secs(2), "payload {payload}: recv_timeout(100 ms) took {took:?}");
    }
}
