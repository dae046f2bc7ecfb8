//! `Pool` and `fork_map`: the rules of issue 3 (Python's `Pool` semantics,
//! backpressure, lifecycle, no leaks).
//!
//! Run with `cargo nextest run --test pool` (one process per test: these
//! tests fork). They also pass under plain `cargo test`, which runs them one
//! at a time (`RUST_TEST_THREADS=1` in `.cargo/config.toml`); then every
//! test must leave no child behind for the next one, which each checks.
//! Tests that read `/proc` are ignored outside Linux.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mproc::{Error, Pool};

mod common;
use common::pools::{assert_no_children, full_pids, pipe, shared_mappings, stat, watchdog};

// ---------------------------------------------------------------------------
// task functions (plain `fn`s: they cross as addresses)

fn cube(n: u64) -> u64 {
    n * n * n
}

fn my_pid(_: u64) -> i32 {
    std::process::id() as i32
}

fn panics_on_13(n: u64) -> u64 {
    if n == 13 {
        panic!("thirteen is unlucky");
    }
    n + 1
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v.iter().rev().copied().collect()
}

/// Blocks on the read end `fd` of a gate pipe (inherited by the workers)
/// until the test writes to it, or 30 s pass. True: released by the test.
fn wait_for_gate(fd: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 30_000) == 1 }
}

/// Writes `(index, pid)` to the pipe `fd` (inherited by the workers).
fn record_run((fd, index): (i32, u32)) -> u32 {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&index.to_le_bytes());
    rec[4..].copy_from_slice(&std::process::id().to_le_bytes());
    // SAFETY: writes 8 bytes from a valid buffer; 8 < PIPE_BUF, so atomic.
    let n = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
    assert_eq!(n, 8);
    index
}

static INIT_RUNS: AtomicU64 = AtomicU64::new(0);
static INIT_MARK: AtomicU64 = AtomicU64::new(0);

fn init_worker() {
    INIT_RUNS.fetch_add(1, Ordering::SeqCst);
    INIT_MARK.store(0xfeed, Ordering::SeqCst);
}

/// What the initializer left in this worker: (runs, mark, pid).
fn init_state(_: u64) -> (u64, u64, i32) {
    (INIT_RUNS.load(Ordering::SeqCst), INIT_MARK.load(Ordering::SeqCst), std::process::id() as i32)
}

// ---------------------------------------------------------------------------
// helpers

fn write_bytes(fd: RawFd, n: usize) {
    let buf = vec![1u8; n];
    // SAFETY: valid buffer of n bytes.
    assert_eq!(unsafe { libc::write(fd, buf.as_ptr().cast(), n) }, n as isize);
}

/// Everything that can be read from `fd` now.
fn read_available(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 {
            return out;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Whether `pid` no longer runs (no such process; or a zombie someone
/// else must reap).
fn is_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } == -1 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    matches!(stat(pid), None | Some(('Z', ..)))
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

// ---------------------------------------------------------------------------
// map

/// The signal mask and dispositions of the calling thread, as
/// `/proc/thread-self/status` shows them (blocked, ignored, caught).
#[cfg(target_os = "linux")]
fn signal_state(_: u64) -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    status
        .lines()
        .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:") || l.starts_with("SigCgt:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[cfg(target_os = "linux")]
fn a_worker_has_the_parents_dispositions_and_an_empty_mask() {
    // The zygote ignores SIGINT and SIGQUIT and catches SIGCHLD; none of
    // that may reach a worker, nor a mask of the parent's.
    let ours = signal_state(0);
    let pool = Pool::new(1).expect("pool");
    let theirs = pool.apply(signal_state, 0).expect("apply");
    let blocked = theirs.lines().next().expect("SigBlk line");
    assert_eq!(blocked.split_whitespace().nth(1), Some("0000000000000000"), "{theirs}");
    let dispositions = |s: &str| s.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(dispositions(&theirs), dispositions(&ours), "worker {theirs}\nparent {ours}");
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = Pool::new(3).unwrap();
    assert_eq!(pool.map(cube, vec![1u64, 2, 3, 4, 5]).unwrap(), vec![1, 8, 27, 64, 125]);
    // An iterator without an exact length works too.
    let odd = (0u64..40).filter(|n| n % 2 == 1);
    assert_eq!(pool.map(cube, odd).unwrap(), (0u64..40).filter(|n| n % 2 == 1).map(cube).collect::<Vec<_>>());
}

#[test]
fn map_of_ten_thousand_items_with_default_and_explicit_chunksizes() {
    let pool = Pool::new(2).unwrap();
    let expected: Vec<u64> = (0..10_000u64).map(cube).collect();
    assert_eq!(pool.map(cube, 0..10_000u64).unwrap(), expected);
    for chunk in [1, 7, 100, 1_250, 10_000, 50_000] {
        assert_eq!(pool.map_chunked(cube, 0..10_000u64, chunk).unwrap(), expected, "chunksize {chunk}");
    }
}

#[test]
fn map_spreads_work_over_every_worker() {
    let pool = Pool::new(2).unwrap();
    let pids: HashSet<i32> = pool.map_chunked(sleep_ms_pid, vec![20u64; 8], 1).unwrap().into_iter().collect();
    assert_eq!(pids, pool.pids().into_iter().collect());
}

fn sleep_ms_pid(ms: u64) -> i32 {
    sleep_ms(ms);
    std::process::id() as i32
}

#[test]
fn messages_larger_than_the_ring_pass_both_ways() {
    // One worker, 4 KiB rings, batches and results of hundreds of KiB:
    // both sides stream fragments and must wake each other for each.
    let pool = Pool::builder().processes(1).ring_capacity(4096).build().unwrap();
    let inputs: Vec<Vec<u8>> =
        (0..6u32).map(|i| (0..300_000u32).map(|b| (b * 7 + i) as u8).collect()).collect();
    let expected: Vec<Vec<u8>> = inputs.iter().map(|v| v.iter().rev().copied().collect()).collect();
    assert_eq!(pool.map(echo_bytes, inputs.clone()).unwrap(), expected);
    assert_eq!(pool.map_chunked(echo_bytes, inputs, 1).unwrap(), expected);
    // A big map of small items in one batch per worker (2 MB > 4 KiB ring).
    assert_eq!(pool.map(cube, 0..200_000u64).unwrap(), (0..200_000u64).map(cube).collect::<Vec<_>>());
}

fn big_result(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_sleeping_side_is_woken_for_every_fragment_of_a_big_message() {
    // Interleaving targeted: one side waits in poll for room in a ring
    // that the other side empties fragment by fragment. The waiting side
    // must be woken by each fragment taken, not only by whole messages.
    let pool = Pool::builder().processes(1).ring_capacity(4096).build().unwrap();
    let worker = pool.pids()[0];
    let arg: Vec<u8> = (0..300_000u32).map(|b| b as u8).collect();
    let reversed: Vec<u8> = arg.iter().rev().copied().collect();

    // Parent -> worker: the worker is stopped, so the parent fills the
    // ring and goes to sleep; the worker resumes while the parent sleeps.
    // SAFETY: kill takes integers; the pid is our pool's worker.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGSTOP) }, 0);
    let mut echo = pool.apply_async(echo_bytes, arg).unwrap();
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(worker, libc::SIGCONT) };
    });
    assert_eq!(echo.get_timeout(Duration::from_secs(20)).unwrap(), reversed);
    resume.join().unwrap();

    // Worker -> parent: the parent is away while the worker fills the
    // result ring and goes to sleep; the parent then takes fragments.
    let mut big = pool.apply_async(big_result, 300_000u64).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(big.get_timeout(Duration::from_secs(20)).unwrap(), big_result(300_000));
    assert_eq!(pool.pids(), vec![worker]);
}

#[test]
fn map_of_empty_input_is_empty() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(cube, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
    assert_eq!(pool.map_chunked(cube, Vec::<u64>::new(), 5).unwrap(), Vec::<u64>::new());
    assert_eq!(pool.imap(cube, Vec::<u64>::new()).count(), 0);
    assert_eq!(pool.imap_unordered(cube, Vec::<u64>::new()).count(), 0);
    assert_eq!(pool.map(cube, [4u64]).unwrap(), vec![64]);
}

#[test]
fn bad_arguments_are_invalid_argument_errors() {
    assert!(matches!(Pool::new(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(Pool::builder().processes(0).build(), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        Pool::builder().processes(1).max_tasks_per_child(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Pool::builder().processes(1).task_timeout(Duration::ZERO).build(),
        Err(Error::InvalidArgument(_))
    ));
    let pool = Pool::new(1).unwrap();
    assert!(matches!(pool.map_chunked(cube, [1u64], 0), Err(Error::InvalidArgument(_))));
    // imap_chunked refuses it too: one error, and nothing runs.
    let out: Vec<_> = pool.imap_chunked(cube, [1u64, 2, 3], 0).collect();
    assert!(matches!(out[..], [Err(Error::InvalidArgument(_))]), "{out:?}");
    let out: Vec<_> = pool.imap_unordered_chunked(cube, [1u64, 2, 3], 0).collect();
    assert!(matches!(out[..], [Err(Error::InvalidArgument(_))]), "{out:?}");
    assert!(matches!(mproc::fork_map(0, &[1u64], |&x| x), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_panicking_task_fails_map_with_its_message_and_the_pool_stays_usable() {
    let pool = Pool::new(2).unwrap();
    let pids = pool.pids();
    let err = pool.map(panics_on_13, 0..100u64).unwrap_err();
    assert_eq!(err, Error::Panicked { message: "thirteen is unlucky".into() });
    assert_eq!(pool.apply(panics_on_13, 12).unwrap(), 13);
    assert_eq!(
        pool.apply(panics_on_13, 13).unwrap_err(),
        Error::Panicked { message: "thirteen is unlucky".into() }
    );
    assert_eq!(pool.map(panics_on_13, 0..10u64).unwrap(), (1..=10).collect::<Vec<u64>>());
    // A panic is caught in the worker: nobody died.
    assert_eq!(pool.pids(), pids);
}

// ---------------------------------------------------------------------------
// imap

#[test]
fn imap_yields_an_error_at_its_position_and_goes_on() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 4] {
        let out: Vec<Result<u64, Error>> = pool.imap_chunked(panics_on_13, 0..30u64, chunk).collect();
        assert_eq!(out.len(), 30);
        for (i, r) in out.iter().enumerate() {
            if i == 13 {
                assert_eq!(r, &Err(Error::Panicked { message: "thirteen is unlucky".into() }));
            } else {
                assert_eq!(r, &Ok(i as u64 + 1), "item {i}");
            }
        }
    }
}

#[test]
fn imap_over_an_endless_iterator_takes_what_it_needs() {
    let pool = Pool::new(2).unwrap();
    let firsts: Vec<u64> = pool.imap(cube, 0u64..).take(1_000).collect::<Result<_, _>>().unwrap();
    assert_eq!(firsts, (0u64..1_000).map(cube).collect::<Vec<_>>());
    // The abandoned tasks in flight do not disturb the next call.
    assert_eq!(pool.map(cube, 0..100u64).unwrap(), (0..100u64).map(cube).collect::<Vec<_>>());
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn imap_runs_a_million_items_in_bounded_memory() {
    let pool = Pool::new(2).unwrap();
    // Warm up: the allocator's first growth is not what we measure.
    assert_eq!(pool.imap_chunked(cube, 0..100_000u64, 16).count(), 100_000);
    let before = vm_rss_kib();
    let mut next = 0u64;
    for r in pool.imap_chunked(cube, 0u64..1_000_000, 8) {
        assert_eq!(r.unwrap(), cube(next));
        next += 1;
    }
    assert_eq!(next, 1_000_000);
    let grown = vm_rss_kib().saturating_sub(before);
    // Holding a million tasks (or results) would take tens of MiB; the
    // window keeps a few hundred.
    assert!(grown < 16 * 1024, "VmRSS grew by {grown} KiB over a million items");
    // The default (chunksize 1) path, on fewer items.
    let n = pool
        .imap(cube, 0u64..100_000)
        .enumerate()
        .filter(|(i, r)| r.as_ref().ok() == Some(&cube(*i as u64)))
        .count();
    assert_eq!(n, 100_000);
}

#[test]
fn imap_unordered_returns_every_result_exactly_once() {
    let pool = Pool::new(3).unwrap();
    // Uneven work, so completion order differs from input order.
    let input: Vec<u64> = (0..60).map(|i| if i % 7 == 0 { 30 } else { i % 3 }).collect();
    let mut got: Vec<u64> = pool.imap_unordered(sleep_ms, input.clone()).collect::<Result<_, _>>().unwrap();
    let mut want = input.clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let mut cubes: Vec<u64> = pool.imap_unordered(cube, 0..5_000u64).collect::<Result<_, _>>().unwrap();
    cubes.sort_unstable();
    assert_eq!(cubes, (0..5_000u64).map(cube).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// apply, apply_async

#[test]
fn apply_and_apply_async_return_the_result() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(cube, 7).unwrap(), 343);
    let mut r = pool.apply_async(cube, 5u64).unwrap();
    assert_eq!(r.get().unwrap(), 125);
    assert!(matches!(r.get(), Err(Error::InvalidState(_))), "a result is taken once");
    let mut quick = pool.apply_async(cube, 3u64).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !quick.ready() {
        assert!(Instant::now() < deadline, "a trivial task never became ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(quick.get_timeout(Duration::ZERO).unwrap(), 27);
}

#[test]
fn get_timeout_gives_timeout_then_the_result_and_kills_nothing() {
    let pool = Pool::new(1).unwrap();
    let pids = pool.pids();
    let mut slow = pool.apply_async(sleep_ms, 1_500).unwrap();
    assert!(!slow.ready());
    assert_eq!(slow.get_timeout(Duration::from_millis(20)), Err(Error::Timeout));
    assert_eq!(slow.get_timeout(Duration::from_millis(1)), Err(Error::Timeout));
    assert_eq!(slow.get_timeout(Duration::from_secs(30)).unwrap(), 1_500);
    assert_eq!(pool.pids(), pids, "get_timeout must not kill the worker");
}

#[test]
fn ten_thousand_apply_async_calls_never_block_behind_busy_workers() {
    let (gate_r, gate_w) = pipe();
    let pool = Pool::new(2).unwrap();
    let gates: Vec<_> =
        (0..2).map(|_| pool.apply_async(wait_for_gate, gate_r.as_raw_fd()).unwrap()).collect();
    // Both workers now wait at the gate, which only we open. If queueing
    // waited for them, this loop would take the gate's 30 s time limit.
    let t = Instant::now();
    let mut results: Vec<_> = (0..10_000u64).map(|n| pool.apply_async(cube, n).unwrap()).collect();
    let queued_in = t.elapsed();
    assert!(queued_in < Duration::from_secs(10), "10,000 apply_async calls took {queued_in:?}");
    assert!(!results[0].ready() && !results[9_999].ready());
    write_bytes(gate_w.as_raw_fd(), 2);
    for mut g in gates {
        assert!(g.get().unwrap(), "the gate timed out: apply_async blocked");
    }
    for (n, r) in results.iter_mut().enumerate() {
        assert_eq!(r.get().unwrap(), cube(n as u64));
    }
}

#[test]
fn terminate_with_a_backlog_returns_promptly() {
    let (gate_r, _gate_w) = pipe();
    let fds = mproc::open_fd_count();
    let pool = Pool::new(2).unwrap();
    let pids = pool.pids();
    for _ in 0..2 {
        drop(pool.apply_async(wait_for_gate, gate_r.as_raw_fd()).unwrap());
    }
    for n in 0..10_000u64 {
        drop(pool.apply_async(cube, n).unwrap());
    }
    let t = Instant::now();
    pool.terminate();
    assert!(t.elapsed() < Duration::from_secs(10), "terminate took {:?}", t.elapsed());
    assert!(pids.iter().all(|&p| is_gone(p)));
    assert_eq!(pool.map(cube, [1u64]), Err(Error::Closed));
    drop(pool);
    assert_no_children();
    assert_eq!(mproc::open_fd_count(), fds);
}

// ---------------------------------------------------------------------------
// initializer, max_tasks_per_child

#[test]
fn the_initializer_runs_once_in_each_worker_before_its_first_task() {
    let pool = Pool::builder().processes(3).initializer(init_worker).build().unwrap();
    let states = pool.map_chunked(init_state, 0..300u64, 1).unwrap();
    assert!(states.iter().all(|&(runs, mark, _)| runs == 1 && mark == 0xfeed), "{states:?}");
    // It ran in the workers, not here.
    assert_eq!(INIT_RUNS.load(Ordering::SeqCst), 0);
    // Replacement workers run it too.
    let pool = Pool::builder().processes(2).initializer(init_worker).max_tasks_per_child(2).build().unwrap();
    let states = pool.map_chunked(init_state, 0..20u64, 1).unwrap();
    assert!(states.iter().all(|&(runs, mark, _)| runs == 1 && mark == 0xfeed), "{states:?}");
    assert!(states.iter().map(|s| s.2).collect::<HashSet<_>>().len() >= 10);
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    let pool = Pool::builder().processes(2).max_tasks_per_child(3).build().unwrap();
    let first = pool.pids();
    let pids = pool.map_chunked(my_pid, 0..30u64, 1).unwrap();
    let mut per_pid: HashMap<i32, usize> = HashMap::new();
    for p in &pids {
        *per_pid.entry(*p).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 3), "{per_pid:?}");
    assert_eq!(per_pid.values().sum::<usize>(), 30);
    assert!(per_pid.len() >= 10);
    // Batches bigger than the limit are split, and the results are right.
    assert_eq!(pool.map_chunked(cube, 0..100u64, 25).unwrap(), (0..100u64).map(cube).collect::<Vec<_>>());
    let now = full_pids(&pool);
    assert!(now.iter().all(|p| !first.contains(p)), "{first:?} -> {now:?}");
}

#[test]
fn workers_retired_by_max_tasks_are_replaced_after_close_until_the_queue_is_done() {
    let (runs_r, runs_w) = pipe();
    let pool = Pool::builder().processes(2).max_tasks_per_child(2).build().unwrap();
    for i in 0..20u32 {
        // The handles are dropped: the tasks still run, and join waits.
        drop(pool.apply_async(record_run, (runs_w.as_raw_fd(), i)).unwrap());
    }
    pool.close();
    pool.join().unwrap();
    let bytes = read_available(runs_r.as_raw_fd());
    let runs: Vec<(u32, u32)> = bytes
        .chunks_exact(8)
        .map(|c| {
            (u32::from_le_bytes(c[..4].try_into().unwrap()), u32::from_le_bytes(c[4..].try_into().unwrap()))
        })
        .collect();
    let mut indices: Vec<u32> = runs.iter().map(|r| r.0).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..20).collect::<Vec<_>>(), "every queued task ran once");
    assert!(runs.iter().map(|r| r.1).collect::<HashSet<_>>().len() >= 10);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------
// close, join, terminate, drop

#[test]
fn close_refuses_new_work() {
    let pool = Pool::new(2).unwrap();
    pool.close();
    assert_eq!(pool.map(cube, [1u64, 2]), Err(Error::Closed));
    assert_eq!(pool.apply(cube, 1), Err(Error::Closed));
    assert!(matches!(pool.apply_async(cube, 1u64), Err(Error::Closed)));
    let out: Vec<_> = pool.imap(cube, 0..10u64).collect();
    assert_eq!(out, vec![Err(Error::Closed)]);
    pool.join().unwrap();
    pool.join().unwrap();
}

#[test]
fn join_before_close_is_an_invalid_state() {
    let pool = Pool::new(1).unwrap();
    assert!(matches!(pool.join(), Err(Error::InvalidState(_))));
    assert_eq!(pool.apply(cube, 2).unwrap(), 8);
}

#[test]
fn join_waits_for_queued_work_and_reaps_every_worker() {
    let (runs_r, runs_w) = pipe();
    let pool = Pool::new(3).unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    for i in 0..30u32 {
        drop(pool.apply_async(record_run, (runs_w.as_raw_fd(), i)).unwrap());
    }
    pool.close();
    pool.join().unwrap();
    assert_eq!(read_available(runs_r.as_raw_fd()).len(), 30 * 8, "join returned before the queued work ran");
    assert!(pids.iter().all(|&p| is_gone(p)), "a worker outlived join");
    assert_no_children();
}

#[test]
fn drop_terminates_and_reaps() {
    let pool = Pool::new(3).unwrap();
    let pids = pool.pids();
    let mut busy = pool.apply_async(sleep_ms, 10_000).unwrap();
    assert_eq!(busy.get_timeout(Duration::from_millis(10)), Err(Error::Timeout));
    drop(busy);
    let t = Instant::now();
    drop(pool);
    assert!(t.elapsed() < Duration::from_secs(5), "drop waited for the sleeping task");
    assert!(pids.iter().all(|&p| is_gone(p)));
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_pool_leaks_no_descriptors_and_no_mappings() {
    let fds = mproc::open_fd_count();
    let maps = shared_mappings();
    {
        let pool = Pool::new(2).unwrap();
        assert!(shared_mappings() > maps, "the pool's mapping should show in /proc/self/maps");
        assert_eq!(pool.map(cube, 0..1_000u64).unwrap().len(), 1_000);
        let mut r = pool.apply_async(cube, 2u64).unwrap();
        assert_eq!(r.get().unwrap(), 8);
        assert_eq!(pool.imap(cube, 0u64..).take(10).count(), 10);
    }
    assert_eq!(mproc::open_fd_count(), fds);
    assert_eq!(shared_mappings(), maps);
    {
        let pool = Pool::new(2).unwrap();
        pool.map(cube, 0..100u64).unwrap();
        pool.close();
        pool.join().unwrap();
    }
    assert_eq!(mproc::open_fd_count(), fds);
    assert_eq!(shared_mappings(), maps);
    assert_eq!(mproc::fork_map(2, &[1u64, 2, 3], |&x| x * 2).unwrap(), vec![2, 4, 6]);
    assert_eq!(mproc::open_fd_count(), fds);
    assert_eq!(shared_mappings(), maps);
    assert_no_children();
}

fn fd_count_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_second_pool_holds_nothing_of_the_first() {
    // The parent's ends of a pool's pipes are closed in every later child:
    // a second pool's zygote (or a `Process`) holding them would keep the
    // first pool's workers from reading EOF when the parent dies.
    let first = Pool::new(2).unwrap();
    let second = Pool::new(2).unwrap();
    // Work on both first: a worker reported as started may still be closing
    // what it inherited; one that has answered tasks has finished that.
    assert_eq!(second.map(cube, 0..10u64).unwrap(), first.map(cube, 0..10u64).unwrap());
    let zygote_of = |pool: &Pool| stat(pool.pids()[0]).expect("worker alive").1;
    let (a, b) = (fd_count_of(zygote_of(&first)), fd_count_of(zygote_of(&second)));
    assert!(a > 0);
    assert_eq!(b, a, "the second zygote holds {b} descriptors, the first {a}");
    assert_eq!(fd_count_of(second.pids()[0]), fd_count_of(first.pids()[0]));
}

// ---------------------------------------------------------------------------
// fork_map

#[test]
fn fork_map_sees_captures_and_a_large_slice() {
    let items: Vec<u64> = (0..2_000_000).collect();
    let offsets: HashMap<u64, u64> = (0..10).map(|k| (k, k * 1_000)).collect();
    let label = String::from("x");
    let out = mproc::fork_map(2, &items, |&n| n * 2 + offsets[&(n % 10)] + label.len() as u64).unwrap();
    assert_eq!(out.len(), items.len());
    assert!(out.iter().enumerate().all(|(i, &v)| v == i as u64 * 2 + (i as u64 % 10) * 1_000 + 1));
    // More workers than items, and results that are not numbers.
    let words = ["fork", "exec"];
    assert_eq!(mproc::fork_map(8, &words, |w| w.to_uppercase()).unwrap(), vec!["FORK", "EXEC"]);
    assert_eq!(mproc::fork_map(2, &Vec::<u64>::new(), |&x| x).unwrap(), Vec::<u64>::new());
    assert_no_children();
}

#[test]
fn fork_map_follows_the_map_error_rules() {
    let items: Vec<u64> = (0..50).collect();
    let err = mproc::fork_map(3, &items, |&n| {
        if n == 10 || n == 30 {
            panic!("bad item {n}");
        }
        n
    })
    .unwrap_err();
    assert_eq!(err, Error::Panicked { message: "bad item 10".into() });
    // A worker dying on an item fails that item; the rest still run
    // (the dead worker is replaced).
    let err = mproc::fork_map(2, &items, |&n| {
        if n == 7 {
            // SAFETY: exits this worker process at once, like a crash.
            unsafe { libc::_exit(9) };
        }
        n
    })
    .unwrap_err();
    assert!(matches!(err, Error::WorkerDied { exitcode: 9, task: Some(7), .. }), "{err:?}");
    assert_no_children();
}

#[test]
fn fork_map_balances_uneven_work() {
    // Item 0 takes a second; the 100 others a millisecond each. Claiming
    // items one by one, the worker stuck on item 0 runs almost nothing
    // else; splitting the input in halves would give it 50.
    let items: Vec<u64> = (0..101).collect();
    let out = mproc::fork_map(2, &items, |&n| {
        std::thread::sleep(Duration::from_millis(if n == 0 { 1_000 } else { 1 }));
        std::process::id()
    })
    .unwrap();
    let slow = out[0];
    let ran_by_slow = out.iter().filter(|&&p| p == slow).count();
    assert!(ran_by_slow <= 5, "the worker on the slow item also ran {ran_by_slow} items");
    assert_eq!(out.iter().collect::<HashSet<_>>().len(), 2);
    assert_no_children();
}

// ---------------------------------------------------------------------------
// hardening: misuse and partial failure end in an error, never a hang

fn double(n: u64) -> u64 {
    2 * n
}

fn inc(n: u64) -> u64 {
    n + 1
}

/// The pool's zygote: the one child of this test process.
fn the_zygote() -> i32 {
    let children = common::pools::children_of(std::process::id() as i32);
    assert_eq!(children.len(), 1, "expected one child (the zygote), found {children:?}");
    children[0]
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs after {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_zygote_died(e: &Error, zygote: i32) -> bool {
    matches!(e, Error::ZygoteDied { pid, exitcode: Some(-9) } if *pid == zygote)
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "finds the zygote in /proc; workers die with it by PR_SET_PDEATHSIG"
)]
fn a_killed_zygote_fails_every_call_promptly_without_sigpipe() {
    let _dog = watchdog(Duration::from_secs(30), "a pool whose zygote was killed");
    // The CLI's setting: a write into a pipe nobody reads would kill us.
    mproc::restore_default_sigpipe().unwrap();
    let pool = Pool::new(2).unwrap();
    let workers = pool.pids();
    let zygote = the_zygote();
    signal(zygote, libc::SIGKILL);
    // kill(2) returns before the zygote is dead, and its workers die only
    // after it (PR_SET_PDEATHSIG): until then they would still run the map
    // below, correctly. Wait for the state this test is about — nobody left
    // to run a task — so the answer cannot depend on the scheduler.
    wait_gone(zygote, Duration::from_secs(5));
    for &w in &workers {
        wait_gone(w, Duration::from_secs(5));
    }
    let started = Instant::now();
    let err = pool.map(cube, 0..100u64).unwrap_err();
    assert!(is_zygote_died(&err, zygote), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(err.to_string().contains(&format!("zygote {zygote} killed by signal 9")), "{err}");
    // Every later call says the same at once.
    assert_eq!(pool.apply(cube, 3).unwrap_err(), err);
    assert_eq!(pool.apply_async(cube, 3).unwrap_err(), err);
    assert_eq!(pool.imap(cube, 0..3u64).next(), Some(Err(err.clone())));
    assert_eq!(pool.map(cube, Vec::<u64>::new()).unwrap_err(), err);
    assert_eq!(pool.pids(), Vec::<i32>::new());
    let started = Instant::now();
    drop(pool);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_no_children();
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "finds the zygote in /proc; workers die with it by PR_SET_PDEATHSIG"
)]
fn a_zygote_killed_during_map_fails_the_map_promptly() {
    let _dog = watchdog(Duration::from_secs(30), "map with its zygote killed midway");
    mproc::restore_default_sigpipe().unwrap();
    for _ in 0..4 {
        let pool = Pool::new(2).unwrap();
        let zygote = the_zygote();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            signal(zygote, libc::SIGKILL);
            Instant::now()
        });
        let err = pool.map_chunked(sleep_ms, vec![20u64; 200], 1).unwrap_err();
        let killed_at = killer.join().unwrap();
        assert!(is_zygote_died(&err, zygote), "{err}");
        assert!(killed_at.elapsed() < Duration::from_secs(2));
        let pool = pool;
        pool.close();
        assert_eq!(pool.join().unwrap_err(), err);
        drop(pool);
        assert_no_children();
    }
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "finds the zygote in /proc; workers die with it by PR_SET_PDEATHSIG"
)]
fn dropping_a_pool_whose_zygote_is_stopped_returns_and_leaves_nothing() {
    let _dog = watchdog(Duration::from_secs(30), "dropping a pool with a stopped zygote");
    let pool = Pool::new(2).unwrap();
    let workers = pool.pids();
    assert_eq!(pool.apply(cube, 2).unwrap(), 8);
    let zygote = the_zygote();
    signal(zygote, libc::SIGSTOP);
    let started = Instant::now();
    drop(pool);
    assert!(started.elapsed() < Duration::from_secs(5), "drop took {:?}", started.elapsed());
    assert_no_children();
    for w in workers {
        wait_gone(w, Duration::from_secs(5));
    }
}

#[test]
fn a_pool_used_from_a_forked_child_is_an_error_there_and_unharmed_here() {
    let _dog = watchdog(Duration::from_secs(60), "a pool used from forked children");
    let pool = std::rc::Rc::new(Pool::new(2).unwrap());
    let me = std::process::id() as i32;
    let items: Vec<u64> = (0..8).collect();
    let expected: Vec<u64> = (0..300).map(cube).collect();
    for _ in 0..20 {
        let said = mproc::fork_map(4, &items, |&i| match pool.apply(cube, i) {
            Ok(v) => format!("ok {v}"),
            Err(e) => e.to_string(),
        })
        .unwrap();
        for line in &said {
            assert!(line.starts_with(&format!("the pool belongs to process {me}")), "{line}");
        }
        assert_eq!(pool.map(cube, 0..300u64).unwrap(), expected);
    }
    // A result and an iterator made here, touched there: errors too.
    let mut pending = pool.apply_async(sleep_ms, 200u64).unwrap();
    let pool2 = pool.clone();
    let child = mproc::spawn(move || {
        let apply = pool2.apply(cube, 2).map_err(|e| e.to_string());
        let imap = pool2.imap(cube, 0..2u64).next().map(|r| r.map_err(|e| e.to_string()));
        (apply, imap, pool2.pids())
    })
    .unwrap();
    let (apply, imap, pids) = child.join().unwrap();
    assert!(apply.unwrap_err().contains("belongs to process"));
    assert!(imap.unwrap().unwrap_err().contains("belongs to process"));
    assert_eq!(pids, Vec::<i32>::new());
    assert_eq!(pending.get().unwrap(), 200);
    drop(pending);
    assert_eq!(pool.map(cube, 0..300u64).unwrap(), expected);
    drop(pool);
    assert_no_children();
}

#[test]
fn a_result_taken_in_a_forked_child_is_an_error_there() {
    let pool = Pool::new(1).unwrap();
    let r = std::cell::RefCell::new(pool.apply_async(sleep_ms, 100u64).unwrap());
    let said = mproc::fork_map(1, &[0u8], |_| r.borrow_mut().get().map_err(|e| e.to_string())).unwrap();
    assert!(said[0].as_ref().unwrap_err().contains("belongs to process"), "{said:?}");
    assert_eq!(r.borrow_mut().get().unwrap(), 100);
}

#[test]
fn absurd_sizes_are_errors_or_work_never_a_crash() {
    let _dog = watchdog(Duration::from_secs(60), "a pool with absurd sizes");
    for n in [139_511_314_691_052usize, usize::MAX, mproc::pool::MAX_PROCESSES + 1] {
        match Pool::new(n) {
            Err(Error::InvalidArgument(what)) => assert!(what.contains("processes"), "{what}"),
            other => panic!("Pool::new({n}) gave {other:?}"),
        }
    }
    let few = [1u64, 2, 3];
    for n in [usize::MAX, mproc::pool::MAX_PROCESSES + 1] {
        match mproc::fork_map(n, &few, |&i| i) {
            Err(Error::InvalidArgument(what)) => assert!(what.contains("processes"), "{what}"),
            other => panic!("fork_map({n}) gave {other:?}"),
        }
    }
    let expected: Vec<u64> = (0..50).map(cube).collect();
    // A ring of usize::MAX bytes is clamped to the largest ring.
    let pool = Pool::builder().processes(1).ring_capacity(usize::MAX).build().unwrap();
    assert_eq!(pool.map(cube, 0..50u64).unwrap(), expected);
    drop(pool);
    // Limits past u32 (tasks are counted in u32 per batch) mean "no limit".
    for max in [1usize << 32, usize::MAX] {
        let pool = Pool::builder().processes(2).max_tasks_per_child(max).build().unwrap();
        assert_eq!(pool.map(cube, 0..50u64).unwrap(), expected);
    }
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map_chunked(cube, 0..50u64, usize::MAX).unwrap(), expected);
    let got: Vec<u64> = pool.imap_chunked(cube, 0..50u64, usize::MAX).map(Result::unwrap).collect();
    assert_eq!(got, expected);
    drop(pool);
    assert_no_children();
}

#[test]
fn an_idle_worker_killed_from_outside_fails_no_task() {
    let _dog = watchdog(Duration::from_secs(60), "a pool with a killed idle worker");
    let expected: Vec<u64> = (0..10).map(double).collect();
    for round in 0..20 {
        let pool = Pool::new(2).unwrap();
        let victim = pool.pids()[0];
        signal(victim, libc::SIGKILL);
        if round % 2 == 1 {
            // Also once the death has surely been seen.
            wait_gone(victim, Duration::from_secs(5));
        }
        assert_eq!(pool.map(double, 0..10u64).unwrap(), expected, "round {round}");
    }
    assert_no_children();
}

#[test]
fn durations_too_long_to_represent_mean_no_limit() {
    let _dog = watchdog(Duration::from_secs(30), "pools with huge durations");
    for limit in [Duration::from_secs(18_446_744_074), Duration::MAX] {
        let pool = Pool::builder().processes(1).task_timeout(limit).build().unwrap();
        assert_eq!(pool.apply(sleep_ms, 1000u64), Ok(1000), "task_timeout({limit:?})");
    }
    let pool = Pool::new(1).unwrap();
    let mut r = pool.apply_async(sleep_ms, 100u64).unwrap();
    assert_eq!(r.get_timeout(Duration::MAX), Ok(100));
    drop(r);
    drop(pool);
    assert_no_children();
}

#[test]
fn a_pool_can_be_used_from_inside_its_own_input_iterators() {
    let _dog = watchdog(Duration::from_secs(30), "re-entrant pool calls");
    let pool = Pool::new(2).unwrap();
    // Chained, as Python allows: imap over imap.
    let chained: Vec<u64> =
        pool.imap(inc, pool.imap(double, 0..10u64).map(Result::unwrap)).map(Result::unwrap).collect();
    assert_eq!(chained, (0..10).map(|n| 2 * n + 1).collect::<Vec<_>>());
    let unordered: HashSet<u64> = pool
        .imap_unordered(inc, pool.imap(double, 0..10u64).map(Result::unwrap))
        .map(Result::unwrap)
        .collect();
    assert_eq!(unordered, (0..10).map(|n| 2 * n + 1).collect());
    // A map whose items come from `apply`, and one that asks for `pids`.
    let cubes = pool.map(cube, (0..10u64).map(|i| pool.apply(double, i).unwrap())).unwrap();
    assert_eq!(cubes, (0..10).map(|i| cube(2 * i)).collect::<Vec<_>>());
    let seen = std::cell::Cell::new(0);
    let items = (0..10u64).inspect(|_| seen.set(seen.get() + pool.pids().len()));
    assert_eq!(pool.map(inc, items).unwrap(), (1..11).collect::<Vec<_>>());
    assert_eq!(seen.get(), 20);
    // Results of one call fed into apply_async from inside another's input.
    let handles: Vec<_> =
        pool.imap(double, 0..5u64).map(|r| pool.apply_async(inc, r.unwrap()).unwrap()).collect();
    let got: Vec<u64> = handles.into_iter().map(|mut h| h.get().unwrap()).collect();
    assert_eq!(got, vec![1, 3, 5, 7, 9]);
    drop(pool);
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "finds the zygote in /proc")]
fn join_after_the_zygote_was_killed_is_zygote_died_not_ok() {
    let _dog = watchdog(Duration::from_secs(30), "join after the zygote was killed");
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(cube, 0..4u64).unwrap(), vec![0, 1, 8, 27]);
    let zygote = the_zygote();
    signal(zygote, libc::SIGKILL);
    wait_gone(zygote, Duration::from_secs(5));
    pool.close();
    let err = pool.join().unwrap_err();
    assert!(is_zygote_died(&err, zygote), "{err}");
    drop(pool);
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "finds the zygote in /proc")]
fn join_with_a_stopped_zygote_ends_within_its_limit() {
    let _dog = watchdog(Duration::from_secs(60), "join with a stopped zygote");
    let pool = Pool::new(2).unwrap();
    let workers = pool.pids();
    assert_eq!(pool.map(cube, 0..4u64).unwrap(), vec![0, 1, 8, 27]);
    let zygote = the_zygote();
    signal(zygote, libc::SIGSTOP);
    pool.close();
    let started = Instant::now();
    let err = pool.join().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20), "join took {:?}", started.elapsed());
    assert!(is_zygote_died(&err, zygote), "killed after the limit: {err}");
    drop(pool);
    assert_no_children();
    for w in workers {
        wait_gone(w, Duration::from_secs(5));
    }
}

/// A child (leading a process group of its own if `own_group`) with a
/// 2-worker pool and `exit_cleanly_on_signals`, idle for 30 s; its pool's
/// zygote and workers, the zygote first, once they run.
fn a_child_with_a_pool_and_the_exit_handler(own_group: bool) -> (mproc::Process, Vec<i32>) {
    let (report_r, report_w) = pipe();
    let report_w_fd = report_w.as_raw_fd();
    let mut child = mproc::Process::new(move || {
        // SAFETY: setpgid takes integers only: this process leads a group.
        assert!(!own_group || unsafe { libc::setpgid(0, 0) } == 0);
        let pool = Pool::new(2).unwrap();
        mproc::exit_cleanly_on_signals().unwrap();
        let pids: Vec<i32> = std::iter::once(the_zygote()).chain(pool.pids()).collect();
        let bytes: Vec<u8> = pids.iter().flat_map(|p| p.to_le_bytes()).collect();
        // SAFETY: writes 12 bytes from a valid buffer to an inherited pipe.
        assert_eq!(unsafe { libc::write(report_w_fd, bytes.as_ptr().cast(), 12) }, 12);
        std::thread::sleep(Duration::from_secs(30));
        drop(pool);
    });
    child.start().unwrap();
    drop(report_w);
    let mut bytes = [0u8; 12];
    // SAFETY: reads at most 12 bytes into a valid buffer (blocking until
    // the child's pool runs; 12 < PIPE_BUF, so in one piece).
    assert_eq!(unsafe { libc::read(report_r.as_raw_fd(), bytes.as_mut_ptr().cast(), 12) }, 12);
    (child, bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect())
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "finds the zygote in /proc")]
fn the_exit_handler_does_not_wait_forever_for_a_stopped_zygote() {
    let _dog = watchdog(Duration::from_secs(60), "SIGTERM with a stopped zygote");
    let (child, pids) = a_child_with_a_pool_and_the_exit_handler(false);
    let zygote = pids[0];
    signal(zygote, libc::SIGSTOP);
    signal(child.pid().unwrap(), libc::SIGTERM);
    let started = Instant::now();
    let code = child.join_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(143), "the handler's exit status");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    wait_gone(zygote, Duration::from_secs(5));
    assert_no_children();
}

/// `timeout 5 prog` and a service manager's stop send SIGTERM to the
/// whole process group: the zygote and the workers get it too. The
/// handler's promise still holds: every worker is killed and reaped by
/// the pool (its zygote), none left for init to reap. (The zygote died
/// of the SIGTERM at once, before the handler's order reached it, and its
/// workers ended as zombies under init.)
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "finds the zygote in /proc")]
fn sigterm_to_the_whole_group_leaves_the_workers_reaped_by_the_pool() {
    let _dog = watchdog(Duration::from_secs(60), "SIGTERM to the group");
    let (child, pids) = a_child_with_a_pool_and_the_exit_handler(true);
    let group = child.pid().unwrap();
    signal(-group, libc::SIGTERM);
    let code = child.join_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(143), "the handler's exit status");
    // Reaped by their parents, not left as zombies re-parented to init.
    let orphans: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| common::pools::stat(p).is_some_and(|s| s.0 == 'Z' && s.1 == 1))
        .collect();
    assert!(orphans.is_empty(), "zombies left to init: {orphans:?} (zygote, workers: {pids:?})");
    for p in pids {
        wait_gone(p, Duration::from_secs(5));
    }
    assert_no_children();
}

fn nones(n: u64) -> Vec<Option<[u64; 64]>> {
    vec![None; n as usize]
}

fn sevens(n: u64) -> Vec<u8> {
    vec![7; n as usize]
}

#[test]
fn a_result_over_max_result_size_fails_its_task_and_nothing_else() {
    let _dog = watchdog(Duration::from_secs(60), "results over the size limit");
    let pool = Pool::builder().processes(1).max_result_size(1 << 20).build().unwrap();
    // 100,000 `None` bytes would decode into 52 MB: refused before that.
    let r = pool.apply(nones, 100_000u64);
    assert!(matches!(&r, Err(Error::Decode(e)) if e.reason().contains("memory limit")), "{r:?}");
    assert_eq!(pool.apply(nones, 1000u64).unwrap().len(), 1000);
    // A result far past the limit: the worker sends a short record
    // instead, so only that task fails, and its worker lives on.
    let before = pool.pids();
    let outcomes: Vec<Result<usize, Error>> =
        pool.imap(sevens, [10u64, 8 << 20, 10, 10, 10]).map(|r| r.map(|v| v.len())).collect();
    assert_eq!(outcomes[0], Ok(10));
    assert!(
        matches!(&outcomes[1], Err(Error::Decode(e)) if e.reason().contains("max_result_size")),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2..], [Ok(10), Ok(10), Ok(10)]);
    assert_eq!(pool.map_chunked(sevens, [10u64, 10, 10], 3).unwrap().len(), 3);
    assert!(pool.map_chunked(sevens, [10u64, 8 << 20, 10], 3).is_err());
    assert_eq!(pool.pids(), before, "no worker died for it");
    assert_eq!(pool.map(cube, 0..100u64).unwrap(), (0..100).map(cube).collect::<Vec<_>>());
    // Within the default limit, the same result passes.
    let roomy = Pool::new(1).unwrap();
    assert_eq!(roomy.apply(sevens, 8u64 << 20).unwrap().len(), 8 << 20);
    drop((pool, roomy));
    assert_no_children();
}

#[test]
fn imap_unordered_chunked_yields_every_result_once() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 3, 16, 1000] {
        let mut got: Vec<u64> =
            pool.imap_unordered_chunked(cube, 0..500u64, chunk).map(Result::unwrap).collect();
        got.sort_unstable();
        assert_eq!(got, (0..500u64).map(cube).collect::<Vec<_>>(), "chunksize {chunk}");
    }
}

/// On a machine with two CPUs or more, a task sent alone goes to an idle
/// worker on another CPU than the thread that dispatches it, not to one
/// that would have to share that thread's CPU: sharing one, each task is
/// a sleep and a wake-up on each side (8.7 µs a task on two vCPUs against
/// 0.5 µs with both sides spinning on their own).
#[cfg(target_os = "linux")]
#[test]
fn a_task_sent_alone_goes_to_a_worker_on_another_cpu() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let _w = watchdog(Duration::from_secs(30), "cpu placement");
    let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect();
    if cpus.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let on = |cpu: usize| {
        let mut set = CpuSet::new();
        set.set(cpu).unwrap();
        set
    };
    // This thread dispatches (it pumps for its own `apply`) on cpus[0].
    sched_setaffinity(Pid::from_raw(0), &on(cpus[0])).unwrap();
    let pool = Pool::new(2).unwrap();
    let pids = pool.pids();
    sched_setaffinity(Pid::from_raw(pids[0]), &on(cpus[0])).unwrap();
    sched_setaffinity(Pid::from_raw(pids[1]), &on(cpus[1])).unwrap();
    let ran_on: Vec<i32> = (0..20).map(|_| pool.apply(my_pid, 0).unwrap()).collect();
    let elsewhere = ran_on.iter().filter(|&&p| p == pids[1]).count();
    sched_setaffinity(Pid::from_raw(0), &allowed).unwrap();
    assert!(
        elsewhere >= 19,
        "{elsewhere} of 20 tasks ran on the worker of another CPU: {ran_on:?}, workers {pids:?}"
    );
}

/// This process's resident memory in KiB (`/proc/self/statm`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read statm");
    let pages: u64 = statm.split_whitespace().nth(1).expect("a resident field").parse().expect("a number");
    pages * mproc::page_size() as u64 / 1024
}

/// Resident memory (KiB) before a burst of 100,000 pending `apply_async`
/// on `pool`, during it, and once at least half of what it added is given
/// back (0 if not within 10 s), with `afterwards` run every 100 ms once
/// every result was taken (after `hold`); `task` returns `cube`'s
/// answer. glibc's `malloc_trim` first returns what the
/// allocator itself would keep of the freed memory: only the pool's own
/// holding is measured. Half, not all: in a process that ran other tests
/// first (plain `cargo test`), a quarter of it stayed resident once given
/// back (pages the allocator shares with other memory); while the pool
/// keeps its part, three quarters stay.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_around_a_burst(
    pool: &Pool,
    task: fn(u64) -> u64,
    hold: Duration,
    afterwards: impl Fn(),
) -> (u64, u64, u64) {
    // One small round first: what any use of the pool keeps.
    for x in 0..100 {
        pool.apply_async(cube, x).expect("submit").get().expect("result");
    }
    // SAFETY: malloc_trim only walks glibc's arenas; nothing in use is freed.
    unsafe { libc::malloc_trim(0) };
    let before = resident_kib();
    let pending: Vec<_> = (0..100_000u64).map(|x| pool.apply_async(task, x).expect("submit")).collect();
    let during = resident_kib();
    // Held a while (a service's results are), every task is done before
    // the first is taken, and the pool idles with them still in; taken at
    // once, the caller's `get`s wait for the last ones.
    std::thread::sleep(hold);
    for (x, mut r) in (0..).zip(pending) {
        assert_eq!(r.get().expect("result"), cube(x));
    }
    // Kept for a second in case another burst follows (a loop of them
    // reuses the warm memory), then given back.
    let limit = Instant::now() + Duration::from_secs(10);
    while Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(100));
        afterwards();
        // SAFETY: as above.
        unsafe { libc::malloc_trim(0) };
        let after = resident_kib();
        if after < during - (during - before) / 2 {
            return (before, during, after);
        }
    }
    (before, during, 0)
}

/// A service that once queued a burst keeps running afterwards: what the
/// pool held for 100,000 pending `apply_async` (about 28 MiB, most of it
/// the table of open submissions and the queue's turns) is given back a
/// second after the burst, not kept for the life of the pool; here with
/// calls going on.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_burst_of_apply_async_leaves_no_memory_behind_once_taken() {
    let _dog = watchdog(Duration::from_secs(60), "a burst of 100,000 apply_async");
    let pool = Pool::new(2).expect("pool");
    let (before, during, after) = memory_around_a_burst(&pool, cube, Duration::ZERO, || {
        pool.apply_async(cube, 3).expect("submit").get().expect("result");
    });
    assert!(
        after > 0,
        "resident memory {before} KiB before the burst, {during} KiB during it, not given back"
    );
    drop(pool);
    assert_no_children();
}

/// `cube`, in about 5 µs.
fn cube_slowly(n: u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(5) {
        std::hint::spin_loop();
    }
    cube(n)
}

/// The same burst, and then no call at all (a service whose requests
/// stopped): the pool's driver gives the memory back on its own, whether
/// the results were held until every task was done (the pool idles with
/// them still in) or taken at once, with tasks slow enough that the
/// caller's `get`s wait for the last ones.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn an_idle_pool_gives_a_bursts_memory_back_without_another_call() {
    let _dog = watchdog(Duration::from_secs(60), "an idle pool after a burst");
    let held = (cube as fn(u64) -> u64, Duration::from_millis(500));
    for (task, hold) in [held, (cube_slowly, Duration::ZERO)] {
        let pool = Pool::new(2).expect("pool");
        let (before, during, after) = memory_around_a_burst(&pool, task, hold, || ());
        assert!(
            after > 0,
            "results taken after {hold:?}: resident memory {before} KiB before the burst, {during} KiB during \
             it, not given back within 10 s with no call"
        );
        drop(pool);
        assert_no_children();
    }
}
