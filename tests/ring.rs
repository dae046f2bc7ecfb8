//! The shared-memory ring: smoke → capacity → fragments → across fork →
//! stress → peer death → corrupt frames → leaks.
//!
//! Forking tests: run them with `cargo nextest run` (one process per test),
//! so `fork` never copies a half-finished sibling test.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use mproc::ring::{channel, Receiver, Sender};
use mproc::Error;

// ---------------------------------------------------------------------------
// helpers

enum Forked {
    Parent(libc::pid_t),
    Child,
}

fn fork() -> Forked {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: nextest runs each test in its own process; the child only runs
    // the test's code for it and ends with _exit (run_child).
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => Forked::Child,
        pid => Forked::Parent(pid),
    }
}

/// Runs the child's side of a test and ends the child: status 0 if `body`
/// returned, 101 if it panicked (an assertion in the child failed).
fn run_child(body: impl FnOnce()) -> ! {
    watchdog();
    let code = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    let _ = std::io::stderr().flush();
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(code) }
}

/// A hang fails the test instead of stalling the run: SIGALRM ends the
/// process after 30 s (each process sets its own; alarms are not
/// inherited across fork).
fn watchdog() {
    // SAFETY: alarm takes an integer.
    unsafe { libc::alarm(30) };
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

fn reap(pid: libc::pid_t) -> Ended {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid to fill in.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR), "waitpid({pid}): {err}");
    }
    if libc::WIFEXITED(status) {
        Ended::Exited(libc::WEXITSTATUS(status))
    } else {
        Ended::Signaled(libc::WTERMSIG(status))
    }
}

fn kill(pid: libc::pid_t) {
    // SAFETY: `pid` is our unreaped child, so it cannot have been recycled.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// Asserts that no child is left (every one was reaped) and that the fd
/// count is back to `fds_before`.
fn assert_clean(fds_before: usize) {
    let mut status = 0;
    // SAFETY: as in reap.
    let ret = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    assert_eq!(ret, -1, "a child was left unreaped");
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ECHILD));
    assert_eq!(mproc::open_fd_count(), fds_before, "file descriptors leaked");
}

/// Waits for the fd to become readable (or hang up), at most `timeout`.
fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n == 1
}

/// A message of `len` bytes that can only be message number `seq`: the
/// sequence number first (as much of it as fits), then bytes derived from
/// both. The receiver rebuilds the expected message and compares it whole,
/// so a lost, duplicated, reordered, truncated or corrupted message fails.
fn fill(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let seq_bytes = seq.to_le_bytes();
    let salt = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    out.extend((0..len).map(|i| if i < 8 { seq_bytes[i] } else { (salt >> (i % 64)) as u8 ^ i as u8 }));
}

/// xorshift64: the same seed gives both processes the same sizes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// 1 byte to 3 × capacity: mostly small, so millions of messages fit in
    /// a few seconds, with enough large ones to stream fragments often.
    fn message_len(&mut self, capacity: usize) -> usize {
        let span = match self.next() % 100 {
            0 => 3 * capacity,
            1..=9 => capacity,
            _ => 64,
        };
        1 + (self.next() % span as u64) as usize
    }
}

/// FNV-1a, folded over every message in order.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    hash
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

// ---------------------------------------------------------------------------
// one process

#[test]
fn messages_arrive_whole_and_in_order_in_one_process() {
    watchdog();
    let (mut tx, mut rx) = channel(4096).unwrap();
    tx.send(b"hello").unwrap();
    tx.send(b"").unwrap();
    tx.send(&[7u8; 300]).unwrap();
    assert_eq!(rx.recv().unwrap(), b"hello");
    assert_eq!(rx.recv().unwrap(), b"");
    assert_eq!(rx.recv().unwrap(), vec![7u8; 300]);
    let mut buf = b"untouched".to_vec();
    assert!(!rx.try_recv_into(&mut buf).unwrap());
    assert_eq!(buf, b"untouched");
    assert_eq!(rx.recv_timeout(Duration::from_millis(20)).unwrap(), None);
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two() {
    watchdog();
    let (tx, rx) = channel(5000).unwrap();
    assert_eq!((tx.capacity(), rx.capacity()), (8192, 8192));
    assert_eq!(channel(1).unwrap().0.capacity(), mproc::ring::MIN_CAPACITY);
    assert!(matches!(channel(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(channel(mproc::ring::MAX_CAPACITY + 1), Err(Error::InvalidArgument(_))));
}

#[test]
fn ring_fills_exactly_to_capacity_then_queues_the_next_message() {
    watchdog();
    let (mut tx, mut rx) = channel(4096).unwrap();
    // 56 payload bytes + 8 header bytes = 64: 64 frames fill 4096 exactly.
    for seq in 0..64u8 {
        tx.send_timeout(&[seq; 56], Duration::from_millis(100)).unwrap();
    }
    assert!(!tx.has_pending());
    // One more does not fit: it times out, and waits in the outbox.
    assert_eq!(tx.send_timeout(&[64; 56], Duration::from_millis(10)), Err(Error::Timeout));
    assert!(tx.has_pending());
    assert!(!tx.flush().unwrap());
    assert_eq!(rx.recv().unwrap(), vec![0u8; 56]);
    // Space comes back in quarters of the ring (or when it runs dry), not
    // frame by frame: one frame taken is not yet room for the queued one.
    assert!(!tx.flush().unwrap());
    for seq in 1..16u8 {
        assert_eq!(rx.recv().unwrap(), vec![seq; 56]);
    }
    // 16 frames of 64 bytes: a quarter of 4096 given back at once.
    assert!(tx.flush().unwrap());
    assert!(!tx.has_pending());
    for seq in 16..=64u8 {
        assert_eq!(rx.recv().unwrap(), vec![seq; 56]);
    }
    assert_eq!(rx.recv_timeout(Duration::from_millis(10)).unwrap(), None);
}

#[test]
fn queued_messages_go_out_before_later_sends() {
    watchdog();
    let (mut tx, mut rx) = channel(1024).unwrap();
    tx.enqueue(b"first".to_vec());
    tx.enqueue(b"second".to_vec());
    assert!(tx.has_pending());
    tx.send(b"third").unwrap();
    assert!(!tx.has_pending());
    for want in [&b"first"[..], b"second", b"third"] {
        assert_eq!(rx.recv().unwrap(), want);
    }
}

#[test]
fn message_larger_than_the_ring_is_streamed_and_reassembled() {
    watchdog();
    let (mut tx, mut rx) = channel(1024).unwrap();
    let mut big = Vec::new();
    fill(42, 10 * 1024 + 3, &mut big);
    tx.enqueue(big.clone());
    tx.enqueue(b"after".to_vec());
    let mut buf = Vec::new();
    let mut rounds = 0;
    // One process plays both sides: each flush fills the ring with a
    // fragment, each try_recv takes it; the message is whole only at the end.
    while !rx.try_recv_into(&mut buf).unwrap() {
        tx.flush().unwrap();
        rounds += 1;
        assert!(rounds < 1000, "no progress");
    }
    assert!(rounds > 10, "a 10 KiB message should need many fragments through a 1 KiB ring");
    assert_eq!(buf, big);
    tx.flush().unwrap();
    assert!(rx.try_recv_into(&mut buf).unwrap());
    assert_eq!(buf, b"after");
}

#[test]
fn prepare_wait_refuses_to_sleep_when_there_is_work() {
    watchdog();
    let (mut tx, mut rx) = channel(1024).unwrap();
    // Nothing queued: the sender has nothing to wait for.
    assert!(!tx.prepare_wait());
    // Empty ring: the receiver may sleep; after a send it may not.
    assert!(rx.prepare_wait());
    assert!(rx.finish_wait().unwrap());
    tx.send(b"x").unwrap();
    assert!(!rx.prepare_wait());
    // The sender's frame 8 + 8 = 16 bytes; fill the rest, then one more
    // queued message must wait for space.
    tx.send(&[0u8; 1024 - 16 - 8]).unwrap();
    tx.enqueue(vec![1]);
    assert!(!tx.flush().unwrap());
    assert!(tx.prepare_wait());
    // Freeing space while the sender is announced rings its bell.
    assert_eq!(rx.recv().unwrap(), b"x");
    assert!(poll_readable(tx.wait_fd(), Duration::from_secs(5)));
    tx.finish_wait();
    assert!(tx.flush().unwrap());
}

#[test]
fn corrupt_frames_are_decode_errors_not_panics() {
    watchdog();
    // (length, flags) of a frame header that lies.
    let lies = [(1u32 << 31, 0u32), (4096, 0), (100, 0), (0, 0x80)];
    for (len, flags) in lies {
        let (mut tx, mut rx) = channel(1024).unwrap();
        tx.send_raw_frame_header(len, flags).unwrap();
        let mut buf = Vec::new();
        assert!(
            matches!(rx.try_recv_into(&mut buf), Err(Error::Decode(_))),
            "frame header ({len}, {flags:#x}) was accepted"
        );
        // The receiver stays in the error rather than reading garbage later.
        tx.send(b"good").unwrap();
        assert!(matches!(rx.recv(), Err(Error::Decode(_))));
        assert!(!rx.prepare_wait());
    }
}

#[test]
fn dropping_both_halves_closes_every_descriptor() {
    watchdog();
    let before = mproc::open_fd_count();
    let (tx, rx) = channel(4096).unwrap();
    assert_eq!(mproc::open_fd_count(), before + 4);
    drop(tx);
    drop(rx);
    assert_eq!(mproc::open_fd_count(), before);
}

// ---------------------------------------------------------------------------
// across fork

#[test]
fn large_messages_cross_fork_intact() {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(4096).unwrap();
    let lens = [3 * 4096 + 5, 10 * 4096, 4096, 4096 - 8, 0, 1, 100_000];
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx); // the parent's half
            let mut msg = Vec::new();
            for (seq, &len) in lens.iter().enumerate() {
                fill(seq as u64, len, &mut msg);
                tx.send(&msg).unwrap();
            }
        }),
        Forked::Parent(pid) => {
            drop(tx); // the child's half: its bell must close when the child ends
            let mut want = Vec::new();
            for (seq, &len) in lens.iter().enumerate() {
                fill(seq as u64, len, &mut want);
                assert_eq!(rx.recv().unwrap(), want, "message {seq}");
            }
            assert_eq!(rx.recv(), Err(Error::Closed));
            assert_eq!(reap(pid), Ended::Exited(0));
            drop(rx);
            assert_clean(fds);
        }
    }
}

/// Messages for the stress tests: many in release, fewer in debug builds
/// (where filling and checking every byte is slow), a few seconds each.
const STRESS_MESSAGES: u64 = if cfg!(debug_assertions) { 150_000 } else { 1_000_000 };
const STRESS_CAPACITY: usize = 4096;
const STRESS_SEED: u64 = 0x2545_F491_4F6C_DD1D;

/// Producer of the stress tests. Pauses now and then so that the consumer
/// drains the ring and goes to sleep on the data bell.
fn stress_produce(tx: &mut Sender, poll_loop: bool) -> u64 {
    let mut rng = XorShift(STRESS_SEED);
    let mut msg = Vec::new();
    let mut hash = FNV_START;
    for seq in 0..STRESS_MESSAGES {
        fill(seq, rng.message_len(STRESS_CAPACITY), &mut msg);
        hash = fnv(hash, &msg);
        if poll_loop {
            tx.enqueue(msg.clone());
            while !tx.flush().unwrap() {
                if tx.prepare_wait() {
                    poll_readable(tx.wait_fd(), Duration::from_secs(10));
                    tx.finish_wait();
                }
            }
        } else {
            tx.send(&msg).unwrap();
        }
        if seq % 20_011 == 7_000 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    hash
}

/// Consumer of the stress tests. Pauses now and then so that the producer
/// fills the ring and goes to sleep on the space bell.
fn stress_consume(rx: &mut Receiver, poll_loop: bool) -> u64 {
    let mut rng = XorShift(STRESS_SEED);
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let mut hash = FNV_START;
    for seq in 0..STRESS_MESSAGES {
        if poll_loop {
            while !rx.try_recv_into(&mut got).unwrap() {
                if rx.prepare_wait() {
                    poll_readable(rx.wait_fd(), Duration::from_secs(10));
                    assert!(rx.finish_wait().unwrap(), "producer died");
                }
            }
        } else {
            rx.recv_into(&mut got).unwrap();
        }
        fill(seq, rng.message_len(STRESS_CAPACITY), &mut want);
        if got != want {
            panic!(
                "message {seq}: got {} bytes {:?}..., want {} bytes",
                got.len(),
                &got[..got.len().min(16)],
                want.len()
            );
        }
        hash = fnv(hash, &got);
        if seq % 19_997 == 100 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    hash
}

/// Targets: frames wrapping at every offset of a small ring, fragments
/// interleaved with whole frames, and both sides falling asleep and being
/// woken (the pauses), with the spin-then-sleep of the blocking calls.
#[test]
fn stress_blocking_calls_lose_duplicate_reorder_or_corrupt_nothing() {
    stress_across_fork(false);
}

/// The same traffic through the non-blocking interface a poll loop uses:
/// enqueue/flush, try_recv_into, prepare_wait/poll/finish_wait.
#[test]
fn stress_poll_loop_interface_loses_duplicate_reorder_or_corrupt_nothing() {
    stress_across_fork(true);
}

fn stress_across_fork(poll_loop: bool) {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(STRESS_CAPACITY).unwrap();
    let (mut hash_tx, mut hash_rx) = channel(1024).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx);
            drop(hash_tx);
            let hash = stress_produce(&mut tx, poll_loop);
            // The checksum travels back on a second ring, after the last
            // message: the parent compares it with its own.
            assert_eq!(hash_rx.recv().unwrap(), hash.to_le_bytes());
        }),
        Forked::Parent(pid) => {
            drop(tx);
            drop(hash_rx);
            let hash = stress_consume(&mut rx, poll_loop);
            hash_tx.send(&hash.to_le_bytes()).unwrap();
            // Nothing after the last message: the next thing is the end.
            assert_eq!(rx.recv(), Err(Error::Closed));
            assert_eq!(reap(pid), Ended::Exited(0));
            drop((rx, hash_tx));
            assert_clean(fds);
        }
    }
}

#[test]
fn recv_returns_closed_when_the_producer_is_killed_mid_stream() {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(4096).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx);
            let mut msg = Vec::new();
            for seq in 0.. {
                fill(seq, 1 + (seq as usize * 977) % 12_000, &mut msg);
                if tx.send(&msg).is_err() {
                    break;
                }
            }
        }),
        Forked::Parent(pid) => {
            drop(tx);
            for _ in 0..100 {
                rx.recv().unwrap();
            }
            kill(pid);
            let killed = Instant::now();
            // Whatever is left in the ring comes out, then Closed: bounded
            // waits, so a hang fails the test instead of stalling it.
            let end = loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Some(_)) => assert!(killed.elapsed() < Duration::from_secs(10), "endless stream"),
                    Ok(None) => panic!("recv hung after the producer was killed"),
                    Err(e) => break e,
                }
            };
            assert_eq!(end, Error::Closed);
            assert_eq!(reap(pid), Ended::Signaled(libc::SIGKILL));
            drop(rx);
            assert_clean(fds);
        }
    }
}

#[test]
fn recv_returns_closed_when_the_producer_dies_mid_message() {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(4096).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx);
            tx.send(b"started").unwrap();
            // Fills the ring with fragments, then blocks: it never finishes.
            tx.send(&vec![9u8; 100 * 4096]).unwrap();
        }),
        Forked::Parent(pid) => {
            drop(tx);
            assert_eq!(rx.recv().unwrap(), b"started");
            std::thread::sleep(Duration::from_millis(50));
            kill(pid);
            assert_eq!(reap(pid), Ended::Signaled(libc::SIGKILL));
            // Fragments of the unfinished message are in the ring; they
            // must not come out as a message, and recv must not hang.
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Err(Error::Closed));
            drop(rx);
            assert_clean(fds);
        }
    }
}

#[test]
fn send_returns_closed_when_the_receiver_is_dropped() {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(4096).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx);
            let msg = [5u8; 200];
            let started = Instant::now();
            loop {
                match tx.send_timeout(&msg, Duration::from_secs(10)) {
                    Ok(()) => assert!(started.elapsed() < Duration::from_secs(10)),
                    Err(e) => {
                        assert_eq!(e, Error::Closed);
                        break;
                    }
                }
            }
            // Known gone: later calls say so at once.
            assert_eq!(tx.send(b"x"), Err(Error::Closed));
        }),
        Forked::Parent(pid) => {
            drop(tx);
            assert_eq!(rx.recv().unwrap(), [5u8; 200]);
            drop(rx);
            assert_eq!(reap(pid), Ended::Exited(0));
            assert_clean(fds);
        }
    }
}

/// The consumer dies while asleep (its flag still set), so the producer's
/// next publish rings a bell nobody reads: that must be `Closed`, not a
/// `SIGPIPE` — even with `SIGPIPE` at its default action (death).
#[test]
fn send_returns_closed_not_sigpipe_when_a_sleeping_consumer_is_killed() {
    watchdog();
    let fds = mproc::open_fd_count();
    // SAFETY: resetting a signal disposition; no handler involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (mut tx, mut rx) = channel(4096).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(tx);
            assert_eq!(rx.recv().unwrap(), b"one");
            // Goes to sleep on the data bell and is killed there.
            let _ = rx.recv();
        }),
        Forked::Parent(pid) => {
            drop(rx);
            tx.send(b"one").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            kill(pid);
            assert_eq!(reap(pid), Ended::Signaled(libc::SIGKILL));
            assert_eq!(tx.send(b"two"), Err(Error::Closed));
            assert_eq!(tx.flush(), Err(Error::Closed));
            drop(tx);
            assert_clean(fds);
        }
    }
}

#[test]
fn external_poll_wakes_on_data_and_hangs_up_on_death() {
    watchdog();
    let fds = mproc::open_fd_count();
    let (mut tx, mut rx) = channel(4096).unwrap();
    let (mut go_tx, mut go_rx) = channel(1024).unwrap();
    match fork() {
        Forked::Child => run_child(|| {
            drop(rx);
            drop(go_tx);
            // Send only once the parent is asleep, so the bell must ring.
            go_rx.recv().unwrap();
            tx.send(b"wake up").unwrap();
            go_rx.recv().unwrap();
        }),
        Forked::Parent(pid) => {
            drop(tx);
            drop(go_rx);
            let mut buf = Vec::new();
            assert!(rx.prepare_wait());
            go_tx.send(b"go").unwrap();
            assert!(poll_readable(rx.wait_fd(), Duration::from_secs(10)), "the data bell never rang");
            assert!(rx.finish_wait().unwrap());
            assert!(rx.try_recv_into(&mut buf).unwrap());
            assert_eq!(buf, b"wake up");
            // Now let the child exit: the bell hangs up.
            assert!(rx.prepare_wait());
            go_tx.send(b"exit").unwrap();
            assert!(poll_readable(rx.wait_fd(), Duration::from_secs(10)), "no hang-up");
            assert!(!rx.finish_wait().unwrap());
            assert!(!rx.try_recv_into(&mut buf).unwrap());
            assert_eq!(rx.recv(), Err(Error::Closed));
            assert_eq!(reap(pid), Ended::Exited(0));
            drop((rx, go_tx));
            assert_clean(fds);
        }
    }
}

// ---------------------------------------------------------------------------
// a corrupt head (issue 15, item 1)

/// Byte offset of `head` in a ring's shared header (see the layout in
/// ring.rs: `tail` fills the first 128-byte line, `head` the second).
const HEAD_OFFSET: usize = 128;

/// Writes `value` into the shared head word of `tx`'s ring, as a
/// corrupting consumer would.
fn scribble_head(tx: &Sender, value: u64) {
    let (base, len) = tx.raw_region();
    assert!(len >= HEAD_OFFSET + 8);
    // SAFETY: the head word lies inside the ring's region, 8-aligned; the
    // ring is shared memory that both halves only access atomically or by
    // plain copies, and nobody else touches it during the test.
    unsafe { std::ptr::write_volatile(base.add(HEAD_OFFSET).cast::<u64>(), value) };
}

#[test]
fn a_misaligned_head_is_a_decode_error_not_a_wild_write() {
    watchdog();
    let (mut tx, _rx) = channel(1024).unwrap();
    tx.send(&[0xAB; 24]).unwrap(); // tail = 32
    scribble_head(&tx, 1);
    tx.enqueue(vec![0x5A; 100_000]);
    let flushed = std::panic::catch_unwind(AssertUnwindSafe(|| tx.flush()));
    assert!(
        matches!(flushed, Ok(Err(Error::Decode(_)))),
        "flush after a misaligned head: {:?}",
        flushed.map_err(|_| "panicked")
    );
}

#[test]
fn a_misaligned_head_does_not_let_the_sender_overwrite_unread_frames() {
    watchdog();
    let (mut tx, mut rx) = channel(1024).unwrap();
    tx.send(&[0xAB; 24]).unwrap();
    scribble_head(&tx, 1);
    tx.enqueue(vec![0x5A; 2000]);
    let flushed = std::panic::catch_unwind(AssertUnwindSafe(|| tx.flush()));
    assert!(
        matches!(flushed, Ok(Err(Error::Decode(_)))),
        "flush after a misaligned head: {:?}",
        flushed.map_err(|_| "panicked")
    );
    // Whatever the sender did, the unread frame is intact.
    scribble_head(&tx, 0);
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv_into(&mut buf), Ok(true));
    assert_eq!(buf, [0xAB; 24]);
}

#[test]
fn every_bad_head_is_refused_by_every_sender_path() {
    watchdog();
    // Misaligned, behind the cached head, past the published tail, huge.
    for bad in [1u64, 7, 36, 40, 1 << 40, u64::MAX, u64::MAX - 7] {
        let (mut tx, _rx) = channel(1024).unwrap();
        tx.send(&[1; 24]).unwrap(); // tail = 32
        let (base, _) = tx.raw_region();
        // SAFETY: as in scribble_head.
        let tail = unsafe { std::ptr::read_volatile(base.cast::<u64>()) };
        assert_eq!(tail, 32);
        scribble_head(&tx, bad);
        tx.enqueue(vec![2; 1020]);
        assert!(!tx.prepare_wait(), "head {bad}: a corrupt head must end the wait");
        let flushed = std::panic::catch_unwind(AssertUnwindSafe(|| tx.flush()));
        assert!(
            matches!(flushed, Ok(Err(Error::Decode(_)))),
            "head {bad}: {:?}",
            flushed.map_err(|_| "panicked")
        );
        let sent = std::panic::catch_unwind(AssertUnwindSafe(|| {
            tx.send_timeout(&[3; 8], Duration::from_millis(10))
        }));
        assert!(matches!(sent, Ok(Err(Error::Decode(_)))), "head {bad}: {:?}", sent.map_err(|_| "panicked"));
    }
}

#[test]
fn a_receiver_with_a_message_limit_refuses_a_longer_message_as_it_streams_in() {
    let (mut tx, mut rx) = mproc::ring::channel(4096).expect("channel");
    rx.set_max_message(10_000);
    tx.enqueue(vec![1u8; 9_000]);
    tx.enqueue(vec![2u8; 50_000]);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let err = loop {
        let _ = tx.flush();
        match rx.try_recv_into(&mut buf) {
            Ok(true) => got.push(buf.len()),
            Ok(false) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(got, vec![9_000], "the message under the limit arrives whole");
    assert!(matches!(err, mproc::Error::Decode(_)), "{err}");
    // The receiver stays in that error.
    assert!(matches!(rx.try_recv_into(&mut buf), Err(mproc::Error::Decode(_))));
}

/// After the sender is gone, everything it published is still received:
/// by a loop of `try_recv_into`, and by `recv`, also when a message bigger
/// than a look's share (1 MiB) was left half taken.
#[test]
fn what_a_gone_sender_left_is_all_received() {
    let (a, b) = (vec![1u8; 2_500_000], vec![2u8; 5_000_000]);
    for drain_with_recv in [false, true] {
        let (mut tx, mut rx) = channel(4 << 20).unwrap();
        tx.enqueue(a.clone());
        tx.enqueue(b.clone());
        let _ = tx.flush().unwrap();
        let mut buf = Vec::new();
        assert!(rx.try_recv_into(&mut buf).unwrap());
        assert!(buf == a);
        // The second message is streamed: fragments, taken as they come.
        let _ = tx.flush().unwrap();
        assert!(!rx.try_recv_into(&mut buf).unwrap());
        while !tx.flush().unwrap() {}
        drop(tx);
        let got = if drain_with_recv {
            rx.recv().unwrap()
        } else {
            assert!(rx.try_recv_into(&mut buf).unwrap(), "the last message was left in the ring");
            std::mem::take(&mut buf)
        };
        assert!(got == b, "a message of {} bytes, not the {} sent", got.len(), b.len());
    }
}
