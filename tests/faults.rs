//! Crash isolation and fault handling (issue 4): a pool never hangs and
//! never loses a task, whatever its workers do.
//!
//! Run with `cargo nextest run --test faults` (one process per test: these
//! tests fork, kill and drop privileges), or `cargo test`, which runs them
//! one at a time (`.cargo/config.toml`). Each test reaps what it forks;
//! orphans (a killed worker's children, a killed helper's pool) come back
//! to the test process, which makes itself a child subreaper for that.
//! Tests that look processes up in `/proc` are ignored outside Linux.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mproc::{DecodeError, Error, Pool, Wire};

mod common;
use common::pools::{assert_no_children, children_of, full_pids, pipe, shared_mappings, stat, watchdog};

// ---------------------------------------------------------------------------
// task functions

fn abort_on_7(n: u64) -> u64 {
    if n == 7 {
        // SAFETY: abort never returns; it kills this worker with SIGABRT.
        unsafe { libc::abort() };
    }
    n
}

fn segfault_on_7(n: u64) -> u64 {
    if n == 7 {
        // SAFETY: deliberately not: a write through a null pointer, to die
        // of SIGSEGV as a buggy task would. Volatile, so it is not removed.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(n) };
    }
    n
}

fn exit_3_on_7(n: u64) -> u64 {
    if n == 7 {
        std::process::exit(3);
    }
    n
}

fn cube(n: u64) -> u64 {
    n * n * n
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Kills its own worker (SIGKILL) when told to; else returns `3 * i`.
fn maybe_die((i, die): (u64, bool)) -> u64 {
    if die {
        // SAFETY: kill takes integers; SIGKILL to ourselves ends us here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    3 * i
}

/// Writes its pid to `fd`, then sleeps `ms`.
fn report_pid_then_sleep((fd, ms): (i32, u64)) -> u64 {
    write_i32(fd, std::process::id() as i32);
    sleep_ms(ms)
}

/// Writes its pid to `fd`, ignores SIGTERM, then sleeps `ms`.
fn ignore_term_then_sleep((fd, ms): (i32, u64)) -> u64 {
    // SAFETY: SIG_IGN is a valid disposition for SIGTERM.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    write_i32(fd, std::process::id() as i32);
    sleep_ms(ms)
}

/// Starts `sh -c script` (a process in the worker's process group), writes
/// its pid to `fd`, and waits for it.
fn start_child_and_wait((fd, script): (i32, String)) -> i32 {
    let mut child = Command::new("sh").arg("-c").arg(script).spawn().expect("spawn sh");
    write_i32(fd, child.id() as i32);
    child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-2)
}

fn panicking_initializer() {
    panic!("the initializer fails");
}

/// A result type whose odd values never decode (a corrupted result).
#[derive(Debug, PartialEq)]
struct EvenOnly(u64);

impl Wire for EvenOnly {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let v = u64::decode(input)?;
        if v % 2 == 1 {
            return Err(DecodeError::new("odd values do not decode"));
        }
        Ok(EvenOnly(v))
    }
}

fn even_only(n: u64) -> EvenOnly {
    EvenOnly(n)
}

fn take_even_only(v: EvenOnly) -> u64 {
    v.0
}

// ---------------------------------------------------------------------------
// helpers

fn write_i32(fd: RawFd, v: i32) {
    let bytes = v.to_le_bytes();
    // SAFETY: 4 valid bytes; below PIPE_BUF, so one atomic write.
    assert_eq!(unsafe { libc::write(fd, bytes.as_ptr().cast(), 4) }, 4);
}

/// Reads one i32 from `fd`, waiting at most 30 s.
fn read_i32(fd: RawFd) -> i32 {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 30_000) }, 1, "nothing to read within 30 s");
    let mut buf = [0u8; 4];
    // SAFETY: valid 4-byte buffer.
    assert_eq!(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 4) }, 4);
    i32::from_le_bytes(buf)
}

/// Orphans of processes we forked become our children, so we can reap them
/// (and a test does not depend on what `init` does in a container).
/// Linux only; the tests that call it read `/proc` and are ignored elsewhere.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: integer arguments only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
}

/// No core files, and `core_dumped` is false whatever `core_pattern` says:
/// a limit of 1 byte disables dumps both to files and to pipes.
fn no_core_dumps() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_CORE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(1);
        assert_eq!(libc::setrlimit(libc::RLIMIT_CORE, &lim), 0);
    }
}

/// A process, told apart from a later one that reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Proc {
    pid: i32,
    start: u64,
}

/// Whether this test runs as root; if not, says that it is skipped and why
/// it needs root.
fn root_or_skip(why: &str) -> bool {
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    if !root {
        eprintln!("skipped: needs root {why}");
    }
    root
}

fn proc_of(pid: i32) -> Proc {
    Proc { pid, start: stat(pid).map_or(0, |s| s.2) }
}

/// `root` and everything below it, now.
fn descendants(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// Whether `p` has ended and been reaped: no such process, or its pid
/// reused (a zombie of ours is reaped here). A zombie is not gone yet: in
/// a test that is a subreaper, a zombie whose parent is itself exiting (a
/// worker of a dying zygote) is handed to us a moment later, and counting
/// it gone then would leave it unreaped for `assert_no_children` to find.
/// Its parent or we reap it on a later turn.
fn is_gone(p: Proc) -> bool {
    // SAFETY: WNOHANG on one pid; ECHILD if it is not ours.
    unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), libc::WNOHANG) };
    match stat(p.pid) {
        None => true,
        Some((_, _, start)) => start != p.start,
    }
}

/// Waits (polling /proc) until every process in `procs` has ended.
fn wait_gone(procs: &[Proc], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<&Proc> = procs.iter().filter(|p| !is_gone(**p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `task` over 0..20 (item 7 kills its worker) through `imap` with
/// several chunk sizes and through `map`, checking every outcome, the
/// message, and that the pool goes on with a replaced worker.
fn check_death_of_item_7(task: fn(u64) -> u64, exitcode: i32, shell_says: &str) {
    no_core_dumps();
    let fds = mproc::open_fd_count();
    let pool = Pool::new(2).unwrap();
    let mut dead = HashSet::new();
    for chunk in [1, 3, 20] {
        let before = full_pids(&pool);
        let out: Vec<Result<u64, Error>> = pool.imap_chunked(task, 0..20u64, chunk).collect();
        assert_eq!(out.len(), 20);
        for (i, r) in out.iter().enumerate() {
            if i != 7 {
                assert_eq!(r, &Ok(i as u64), "item {i}, chunksize {chunk}");
                continue;
            }
            let Err(err @ Error::WorkerDied { pid, exitcode: code, core_dumped, task: Some(7) }) = r else {
                panic!("item 7, chunksize {chunk}: {r:?}");
            };
            assert_eq!((*code, *core_dumped), (exitcode, false));
            assert!(before.contains(pid), "{pid} was not a worker");
            assert_eq!(err.to_string(), format!("worker {pid} {shell_says}, while running task 7"));
            dead.insert(*pid);
        }
        let after = full_pids(&pool);
        assert!(dead.iter().all(|p| !after.contains(p)), "a dead worker is still listed");
    }
    let err = pool.map(task, 0..20u64).unwrap_err();
    assert!(matches!(err, Error::WorkerDied { exitcode: c, task: Some(7), .. } if c == exitcode), "{err:?}");
    // Usable afterwards, with both workers.
    assert_eq!(pool.map(cube, 0..1_000u64).unwrap(), (0..1_000u64).map(cube).collect::<Vec<_>>());
    assert_eq!(full_pids(&pool).len(), 2);
    drop(pool);
    assert_no_children();
    assert_eq!(mproc::open_fd_count(), fds);
}

// ---------------------------------------------------------------------------
// worker death mid-task

#[test]
fn a_task_that_aborts_fails_with_worker_died_minus_6() {
    check_death_of_item_7(abort_on_7, -6, "killed by signal 6 (Aborted)");
}

#[test]
fn a_task_that_writes_through_null_fails_with_worker_died_minus_11() {
    check_death_of_item_7(segfault_on_7, -11, "killed by signal 11 (Segmentation fault)");
}

#[test]
fn a_task_that_exits_fails_with_worker_died_and_its_exit_code() {
    check_death_of_item_7(exit_3_on_7, 3, "exited with status 3");
}

#[test]
fn worker_died_reads_like_a_shell_and_says_when_a_core_was_dumped() {
    let err = Error::WorkerDied { pid: 4242, exitcode: -11, core_dumped: true, task: Some(7) };
    assert_eq!(
        err.to_string(),
        "worker 4242 killed by signal 11 (Segmentation fault), core dumped, while running task 7"
    );
    let err = Error::WorkerDied { pid: 4242, exitcode: -9, core_dumped: false, task: Some(0) };
    assert_eq!(err.to_string(), "worker 4242 killed by signal 9 (Killed), while running task 0");
}

#[test]
fn a_worker_killed_between_tasks_costs_no_task() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(cube, 0..100u64).unwrap().len(), 100);
    let victim = pool.pids()[0];
    // SAFETY: kill takes integers; the victim is our pool's idle worker.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    // Whatever the pool was doing when it learned of the death, no task
    // of this call ran on the dead worker: all succeed.
    assert_eq!(pool.map_chunked(cube, 0..1_000u64, 10).unwrap(), (0..1_000u64).map(cube).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.pids().contains(&victim) || pool.pids().len() < 2 {
        assert!(Instant::now() < deadline, "the killed worker was not replaced");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.apply(cube, 3).unwrap(), 27);
}

#[test]
fn a_failing_initializer_fails_tasks_instead_of_hanging() {
    let t = Instant::now();
    match Pool::builder().processes(2).initializer(panicking_initializer).build() {
        // The workers died before the pool was ready.
        Err(err) => assert!(matches!(err, Error::WorkerDied { exitcode: 1, .. }), "{err:?}"),
        // Or after: each task fails in turn; nothing waits forever.
        Ok(pool) => {
            let out: Vec<_> = pool.imap(cube, 0..5u64).collect();
            assert_eq!(out.len(), 5);
            assert!(out.iter().all(|r| matches!(r, Err(Error::WorkerDied { exitcode: 1, .. }))), "{out:?}");
        }
    }
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_no_children();
}

// ---------------------------------------------------------------------------
// per-task timeout

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_task_past_its_timeout_fails_with_timeout_and_its_worker_is_replaced() {
    let (pids_r, pids_w) = pipe();
    let pool = Pool::builder().processes(2).task_timeout(Duration::from_millis(300)).build().unwrap();
    let t = Instant::now();
    let mut slow = pool.apply_async(report_pid_then_sleep, (pids_w.as_raw_fd(), 30_000)).unwrap();
    let victim = proc_of(read_i32(pids_r.as_raw_fd()));
    let quick: Vec<u64> = pool.map_chunked(sleep_ms, vec![10u64; 10], 1).unwrap();
    assert_eq!(quick, vec![10; 10]);
    assert_eq!(slow.get(), Err(Error::Timeout));
    assert!(t.elapsed() < Duration::from_secs(10), "the timeout took {:?}", t.elapsed());
    wait_gone(&[victim], Duration::from_secs(5));
    let pids = full_pids(&pool);
    assert!(!pids.contains(&victim.pid));
    // Quick tasks are not touched by the limit.
    assert_eq!(pool.map(cube, 0..1_000u64).unwrap().len(), 1_000);
    assert_eq!(full_pids(&pool), pids);
    // A worker that ignores SIGTERM gets SIGKILL after the grace period.
    let t = Instant::now();
    let mut stubborn = pool.apply_async(ignore_term_then_sleep, (pids_w.as_raw_fd(), 30_000)).unwrap();
    let victim = proc_of(read_i32(pids_r.as_raw_fd()));
    assert_eq!(stubborn.get(), Err(Error::Timeout));
    assert!(t.elapsed() < Duration::from_secs(10));
    wait_gone(&[victim], Duration::from_secs(5));
    drop(stubborn);
    drop(slow);
    drop(pool);
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_timed_out_task_takes_the_processes_it_started_with_it() {
    become_subreaper();
    let (pids_r, pids_w) = pipe();
    let pool = Pool::builder().processes(1).task_timeout(Duration::from_millis(300)).build().unwrap();
    // One child that dies of SIGTERM, one that ignores it (so the group
    // needs the SIGKILL that follows the grace period).
    for script in ["exec sleep 30", "trap '' TERM; exec sleep 30"] {
        // The engine moves work only inside pool calls: wait until the
        // worker replacing the last timed-out one is there to take it.
        full_pids(&pool);
        let mut task =
            pool.apply_async(start_child_and_wait, (pids_w.as_raw_fd(), script.to_string())).unwrap();
        let grandchild = proc_of(read_i32(pids_r.as_raw_fd()));
        assert_eq!(task.get(), Err(Error::Timeout), "{script}");
        wait_gone(&[grandchild], Duration::from_secs(5));
    }
    assert_eq!(pool.apply(cube, 2).unwrap(), 8);
    drop(pool);
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "writes /proc/sys/kernel/ns_last_pid")]
fn the_kill_after_a_timeout_grace_never_reaches_a_process_that_reused_the_workers_pid() {
    if !root_or_skip("to choose the next pid (/proc/sys/kernel/ns_last_pid)") {
        return;
    }
    let pool = Pool::builder().processes(1).task_timeout(Duration::from_millis(100)).build().unwrap();
    let worker = full_pids(&pool)[0];
    let victim = proc_of(worker);
    // The worker dies of the SIGTERM at once; the SIGKILL to its process
    // group is due 200 ms (the grace period) after that SIGTERM.
    assert_eq!(pool.apply(sleep_ms, 30_000), Err(Error::Timeout));
    // Its replacement is forked before the worker's pid is offered again.
    assert!(!full_pids(&pool).contains(&worker));
    // The next process made gets the dead worker's pid, if it is free, and
    // leads a process group of that number, as a shell's job would.
    if let Err(e) = std::fs::write("/proc/sys/kernel/ns_last_pid", (worker - 1).to_string()) {
        // A read-only /proc/sys (a container): the pid cannot be chosen.
        eprintln!("skipped: cannot write /proc/sys/kernel/ns_last_pid: {e}");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut bystander = Command::new("sleep").arg("30").process_group(0).spawn().expect("spawn sleep");
    std::thread::sleep(Duration::from_millis(600));
    let ended = bystander.try_wait().expect("try_wait");
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_eq!(
        ended,
        None,
        "pid {} (the timed-out worker's was {worker}) was killed by the pool's delayed group kill",
        bystander.id()
    );
    // The dead worker, kept a zombie through the grace period, is reaped
    // after it.
    wait_gone(&[victim], Duration::from_secs(5));
    assert_eq!(pool.apply(cube, 3).unwrap(), 27);
    drop(pool);
    assert_no_children();
}

// ---------------------------------------------------------------------------
// chaos

/// Seeded xorshift: the same "random" 5% on every run.
fn killers(n: u64) -> Vec<(u64, bool)> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (i, x.is_multiple_of(20))
        })
        .collect()
}

/// After chaos: the pool is back to its 3 workers and answers right, and
/// dropping it leaves no child, descriptor or shared mapping behind.
fn assert_healthy_then_clean(pool: Pool, fds: usize, maps: usize) {
    assert_eq!(full_pids(&pool).len(), 3);
    assert_eq!(pool.map(cube, 0..3_000u64).unwrap(), (0..3_000u64).map(cube).collect::<Vec<_>>());
    drop(pool);
    assert_no_children();
    assert_eq!(mproc::open_fd_count(), fds);
    assert_eq!(shared_mappings(), maps);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn chaos_every_task_is_accounted_for_exactly_once() {
    // Interleavings targeted: deaths in the middle of a batch (the rest is
    // re-queued), deaths while other workers' results are in flight,
    // replacements racing new dispatches, results packed in a worker when
    // it dies (they run again: each task still gets one outcome).
    let fds = mproc::open_fd_count();
    let maps = shared_mappings();
    let items = killers(2_000);
    let doomed: HashSet<u64> = items.iter().filter(|t| t.1).map(|t| t.0).collect();
    assert!((60..=140).contains(&doomed.len()), "about 5% should die: {}", doomed.len());
    let pool = Pool::new(3).unwrap();

    // In order, in chunks: each task's outcome at its position.
    let out: Vec<Result<u64, Error>> = pool.imap_chunked(maybe_die, items.clone(), 8).collect();
    assert_eq!(out.len(), 2_000);
    for (i, r) in out.iter().enumerate() {
        let i = i as u64;
        if doomed.contains(&i) {
            assert!(
                matches!(r, Err(Error::WorkerDied { exitcode: -9, task: Some(t), .. }) if *t == i),
                "{i}: {r:?}"
            );
        } else {
            assert_eq!(r, &Ok(3 * i));
        }
    }

    // In completion order: every index exactly once, from its value or
    // from the error's task number.
    let mut seen = vec![0u32; 2_000];
    for r in pool.imap_unordered(maybe_die, items.clone()) {
        let i = match r {
            Ok(v) => v / 3,
            Err(Error::WorkerDied { exitcode: -9, task: Some(t), .. }) => {
                assert!(doomed.contains(&t));
                t
            }
            Err(e) => panic!("unexpected outcome {e:?}"),
        };
        seen[i as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "some task was lost or duplicated");

    // map: the first error in input order.
    let first = *doomed.iter().min().unwrap();
    assert!(matches!(pool.map(maybe_die, items), Err(Error::WorkerDied { task: Some(t), .. }) if t == first));

    // Healthy afterwards.
    assert_healthy_then_clean(pool, fds, maps);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn chaos_with_four_submitting_threads_every_task_is_accounted_for_once() {
    // The same deaths, with four threads submitting to one pool at once:
    // a death re-queues tasks of several callers, results for one thread
    // arrive while another pumps, callers park and take the pump over.
    let fds = mproc::open_fd_count();
    let maps = shared_mappings();
    let pool = std::sync::Arc::new(Pool::new(3).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                // Each thread its own range of indices, the same 5% doomed.
                let items: Vec<(u64, bool)> =
                    killers(600).into_iter().map(|(i, die)| (t * 10_000 + i, die)).collect();
                let doomed: HashSet<u64> = items.iter().filter(|x| x.1).map(|x| x.0).collect();
                let check = |i: u64, r: &Result<u64, Error>| {
                    if doomed.contains(&i) {
                        assert!(matches!(r, Err(Error::WorkerDied { exitcode: -9, .. })), "{i}: {r:?}");
                    } else {
                        assert_eq!(r, &Ok(3 * i), "{i}");
                    }
                };
                match t {
                    0 => {
                        let out: Vec<_> = pool.imap_chunked(maybe_die, items.clone(), 8).collect();
                        assert_eq!(out.len(), items.len());
                        for (x, r) in items.iter().zip(&out) {
                            check(x.0, r);
                        }
                    }
                    1 => {
                        let mut seen = HashSet::new();
                        for r in pool.imap_unordered(maybe_die, items.clone()) {
                            let i = match r {
                                Ok(v) => v / 3,
                                Err(Error::WorkerDied { task: Some(k), .. }) => t * 10_000 + k,
                                Err(e) => panic!("unexpected outcome {e:?}"),
                            };
                            assert!(seen.insert(i), "{i} twice");
                        }
                        assert_eq!(seen.len(), items.len());
                    }
                    2 => {
                        let mut rs: Vec<_> =
                            items.iter().map(|&x| pool.apply_async(maybe_die, x).unwrap()).collect();
                        for (x, r) in items.iter().zip(rs.iter_mut()) {
                            check(x.0, &r.get());
                        }
                    }
                    _ => {
                        let first = items.iter().find(|x| x.1).unwrap().0 - t * 10_000;
                        let r = pool.map(maybe_die, items.clone());
                        assert!(
                            matches!(r, Err(Error::WorkerDied { task: Some(k), .. }) if k == first),
                            "{r:?}"
                        );
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let pool = std::sync::Arc::try_unwrap(pool).unwrap_or_else(|_| panic!("every thread is joined"));
    assert_healthy_then_clean(pool, fds, maps);
}

// ---------------------------------------------------------------------------
// parent death

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn workers_and_zygote_die_with_a_killed_parent() {
    become_subreaper();
    let (pids_r, pids_w) = pipe();
    let mut helper = mproc::Process::new(move || {
        let pool = Pool::new(2).expect("pool in the helper");
        assert_eq!(pool.apply(cube, 3).expect("a task"), 27);
        for pid in pool.pids() {
            write_i32(pids_w.as_raw_fd(), pid);
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    helper.start().unwrap();
    let helper_pid = helper.pid().unwrap();
    let workers: Vec<Proc> = (0..2).map(|_| proc_of(read_i32(pids_r.as_raw_fd()))).collect();
    let zygote_pid = stat(workers[0].pid).expect("worker alive").1;
    assert_eq!(
        stat(workers[1].pid).expect("worker alive").1,
        zygote_pid,
        "both workers come from the zygote"
    );
    assert_eq!(stat(zygote_pid).expect("zygote alive").1, helper_pid, "the zygote is the helper's child");
    let zygote = proc_of(zygote_pid);

    helper.kill().unwrap();
    assert_eq!(helper.join().unwrap(), -9);
    let mut all = workers.clone();
    all.push(zygote);
    wait_gone(&all, Duration::from_secs(5));
    assert_no_children();
}

// ---------------------------------------------------------------------------
// signals to the binary

/// Starts `mproc bench pool`, waits until it runs a pool (a child with
/// children), sends `signal`, and checks the exit status and that every
/// process it had is gone.
fn signal_a_running_bench(signal: i32, expected_code: i32) {
    become_subreaper();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_mproc"))
        .args(["bench", "pool", "--items", "3000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = bench.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(60);
    let family = loop {
        let family = descendants(pid);
        // The bench, a zygote, and its workers.
        if family.len() >= 4 {
            break family;
        }
        assert!(Instant::now() < deadline, "the bench never started a pool");
        std::thread::sleep(Duration::from_millis(2));
    };
    let family: Vec<Proc> = family.into_iter().map(proc_of).collect();
    // SAFETY: kill takes integers; `pid` is our unreaped child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let status = bench.wait().unwrap();
    let mut stderr = String::new();
    bench.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(expected_code), "stderr: {stderr}");
    wait_gone(&family, Duration::from_secs(5));
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn sigint_stops_the_binary_with_130_and_leaves_no_process() {
    signal_a_running_bench(libc::SIGINT, 130);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn sigterm_stops_the_binary_with_143_and_leaves_no_process() {
    signal_a_running_bench(libc::SIGTERM, 143);
}

// ---------------------------------------------------------------------------
// resource exhaustion

/// Tasks (threads) of processes whose real uid is `uid`: what
/// RLIMIT_NPROC counts. (`rlim_t` is `u64` on Linux, `i64` on FreeBSD.)
fn tasks_of_uid(uid: u32) -> libc::rlim_t {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        // Numeric entries only (not /proc/self, /proc/thread-self).
        if !entry.file_name().to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1))
        };
        if field("Uid:").and_then(|v| v.parse::<u32>().ok()) == Some(uid) {
            n += field("Threads:").and_then(|v| v.parse::<libc::rlim_t>().ok()).unwrap_or(1);
        }
    }
    n
}

fn is_fork_eagain(r: &Result<Pool, Error>) -> bool {
    matches!(r, Err(Error::Os(e)) if e.call == "fork" && e.errno == libc::EAGAIN)
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn pool_new_fails_cleanly_naming_fork_when_rlimit_nproc_is_reached() {
    if !root_or_skip("to switch to an unprivileged uid (RLIMIT_NPROC does not bind root)") {
        return;
    }
    // In a helper, so that the privileges and the limit die with it. The
    // result comes back as its exit code.
    let mut helper = mproc::Process::new(|| {
        const NOBODY: u32 = 65534;
        // SAFETY: integer arguments; a failure is reported by exit code.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0
        };
        if !dropped {
            std::process::exit(20);
        }
        let fds = mproc::open_fd_count();
        let maps = shared_mappings();
        let set_limit = |n: libc::rlim_t| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: valid rlimit pointers. Only the soft limit changes
            // (within the hard one), so it may go down and up again.
            unsafe {
                libc::getrlimit(libc::RLIMIT_NPROC, &mut lim) == 0 && {
                    lim.rlim_cur = n.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NPROC, &lim) == 0
                }
            }
        };
        // No fork at all is possible: the zygote cannot start.
        let now = tasks_of_uid(NOBODY);
        if !set_limit(now) {
            std::process::exit(21);
        }
        let r = Pool::new(2);
        if !is_fork_eagain(&r) {
            eprintln!("limit {now}: {r:?}");
            std::process::exit(10);
        }
        // One fork is possible: the zygote starts, its workers cannot. The
        // half-built pool must be taken down completely.
        if !set_limit(tasks_of_uid(NOBODY) + 1) {
            std::process::exit(21);
        }
        let r = Pool::new(2);
        if !is_fork_eagain(&r) {
            eprintln!("limit +1: {r:?}");
            std::process::exit(11);
        }
        drop(r);
        // SAFETY: waitpid with a null status pointer is allowed.
        let w = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if w != -1 {
            std::process::exit(12);
        }
        if mproc::open_fd_count() != fds {
            std::process::exit(13);
        }
        if shared_mappings() != maps {
            std::process::exit(14);
        }
        std::process::exit(0);
    });
    helper.start().unwrap();
    assert_eq!(
        helper.join().unwrap(),
        0,
        "10/11: wrong error, 12: child left, 13: fd leak, 14: mapping leak, 2x: setup"
    );
    assert_no_children();
}

// ---------------------------------------------------------------------------
// bad data

#[test]
fn a_result_that_does_not_decode_fails_that_task_only() {
    let pool = Pool::new(2).unwrap();
    let pids = pool.pids();
    let out: Vec<Result<EvenOnly, Error>> = pool.imap_chunked(even_only, 0..20u64, 3).collect();
    for (i, r) in out.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r, Ok(EvenOnly(i as u64)));
        } else {
            assert!(
                matches!(&r, Err(Error::Decode(e)) if e.reason() == "odd values do not decode"),
                "{i}: {r:?}"
            );
        }
    }
    assert!(matches!(pool.map(even_only, 0..20u64), Err(Error::Decode(_))));
    assert_eq!(pool.apply(even_only, 4), Ok(EvenOnly(4)));
    // An argument that does not decode in the worker fails its task too.
    assert!(matches!(pool.apply(take_even_only, EvenOnly(3)), Err(Error::Decode(_))));
    assert_eq!(pool.apply(take_even_only, EvenOnly(2)), Ok(2));
    // Bad data is not a crash: nobody died.
    assert_eq!(pool.pids(), pids);
}

// ---------------------------------------------------------------------------
// a worker that corrupts shared memory (isolation)

/// The writable shared mappings this process can see: `(start, end)` of
/// each line of `/proc/self/maps` with permissions `rw?s`.
fn writable_shared_mappings() -> Vec<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            if !(perms.starts_with("rw") && perms.ends_with('s')) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

fn shared_mappings_seen(_: u64) -> usize {
    writable_shared_mappings().len()
}

/// Task 100 fills every shared mapping its worker can reach with
/// pseudo-random bytes (a wild write everywhere at once); every other task
/// triples its number.
fn scribble_at_100(i: u64) -> u64 {
    if i == 100 {
        // Again and again for 100 ms, while the other workers work.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            for (start, end) in writable_shared_mappings() {
                for addr in (start..end).step_by(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // SAFETY: a mapping of this process, writable and
                    // shared, 8-aligned (page-aligned start); clobbering it
                    // is the test.
                    unsafe { std::ptr::write_volatile(addr as *mut u64, x) };
                }
            }
        }
    } else {
        std::thread::sleep(Duration::from_micros(200));
    }
    3 * i
}

/// Keeps its own results ring "full" of empty messages for `ms`: the data
/// zeroed (a run of zero-length frames) and the tail a whole ring ahead of
/// the head the parent publishes, again and again. Each message is valid
/// as a frame and carries no result.
fn flood_with_empty_messages(ms: u64) -> u64 {
    let (start, end) = writable_shared_mappings()[0];
    // The slot: a 256-byte header, then the task ring and the result ring,
    // each a 512-byte header and a power-of-two data area.
    let capacity = ((end - start - 256 - 1024) / 2 + 1).next_power_of_two() / 2;
    let ring = start + 256 + 512 + capacity;
    // SAFETY: words of this process's own shared mapping, 8-aligned;
    // writing them is the attack.
    let (tail, head) = unsafe { (&*(ring as *const AtomicU64), &*((ring + 128) as *const AtomicU64)) };
    // SAFETY: the data area lies inside the mapping (see above).
    unsafe { std::ptr::write_bytes((ring + 512) as *mut u8, 0, capacity) };
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        tail.store(head.load(Ordering::SeqCst) + capacity as u64, Ordering::SeqCst);
    }
    0
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_worker_flooding_its_ring_with_empty_messages_holds_up_no_other_task() {
    let _dog = watchdog(Duration::from_secs(60), "a pool with a worker that floods its ring");
    let pool = Pool::new(2).unwrap();
    full_pids(&pool);
    let mut flood = pool.apply_async(flood_with_empty_messages, 4_000).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The other worker is idle: its task takes a millisecond.
    let t = Instant::now();
    let mut quick = pool.apply_async(cube, 5).unwrap();
    assert_eq!(quick.get_timeout(Duration::from_secs(2)), Ok(125));
    assert!(t.elapsed() < Duration::from_secs(2), "the other worker's task took {:?}", t.elapsed());
    // An empty result message is no honest worker's: that worker is ended.
    assert!(matches!(flood.get(), Err(Error::Decode(_))), "{:?}", flood.get());
    assert_eq!(pool.map(cube, 0..100u64).unwrap(), (0..100u64).map(cube).collect::<Vec<_>>());
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_worker_maps_only_its_own_rings() {
    let pool = Pool::new(3).unwrap();
    let in_parent = writable_shared_mappings().len();
    assert!(in_parent > 3, "the parent maps a control block and one region per worker: {in_parent}");
    // Each worker: its own slot only (no other worker's, no control block).
    for seen in pool.map_chunked(shared_mappings_seen, 0..30u64, 1).unwrap() {
        assert_eq!(seen, 1);
    }
    // A second pool's workers see none of the first pool's memory, and a
    // fork_map child sees only its own slot and its call's control block.
    let second = Pool::new(1).unwrap();
    assert_eq!(second.map(shared_mappings_seen, 0..5u64).unwrap(), vec![1; 5]);
    let seen = mproc::fork_map(2, &[0u8; 6], |_| writable_shared_mappings().len()).unwrap();
    assert_eq!(seen, vec![2; 6]);
    assert_eq!(pool.map(shared_mappings_seen, 0..5u64).unwrap(), vec![1; 5]);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_worker_that_scribbles_on_shared_memory_fails_only_its_own_tasks() {
    let _dog = watchdog(Duration::from_secs(60), "a pool with a worker that scribbles on shared memory");
    for round in 0..3 {
        let pool = Pool::new(4).unwrap();
        let before = pool.pids();
        let outcomes: Vec<Result<u64, Error>> = pool.imap(scribble_at_100, 0..300u64).collect();
        assert_eq!(outcomes.len(), 300, "round {round}: every task gets one outcome");
        // The scribble may be caught (the ring fails its checks: Decode, or
        // the worker dies) or healed (the worker rewrites its indices
        // before anyone reads them): either is one outcome for the task.
        assert!(
            matches!(&outcomes[100], Ok(300) | Err(Error::Decode(_) | Error::WorkerDied { .. })),
            "round {round}: {:?}",
            outcomes[100]
        );
        // At worst the scribbler's own worker's tasks fail with it (a
        // result packed with its own, run again beside it once more).
        let mut failed = 0;
        for (i, outcome) in outcomes.iter().enumerate().filter(|&(i, _)| i != 100) {
            match outcome {
                Ok(v) => assert_eq!(*v, 3 * i as u64),
                Err(Error::Decode(_) | Error::WorkerDied { .. }) => failed += 1,
                Err(e) => panic!("round {round}: task {i}: {e}"),
            }
        }
        assert!(failed <= 8, "round {round}: {failed} other tasks failed");
        // The other workers were not touched: the scribbler's worker, and
        // the one that ran it again, are the most that were replaced.
        let after = full_pids(&pool);
        let survivors = before.iter().filter(|p| after.contains(p)).count();
        assert!(survivors >= 2, "round {round}: only {survivors} of {before:?} survive ({after:?})");
        // The parent and the pool go on.
        let expected: Vec<u64> = (0..2000).filter(|&i| i != 100).map(|i| 3 * i).collect();
        assert_eq!(pool.map(scribble_at_100, (0..2000u64).filter(|&i| i != 100)).unwrap(), expected);
    }
    assert_no_children();
}

/// The argument [`corrupt_next_task`] looks for in the task ring.
const VICTIM_ARG: u64 = 0x5EED_0F15_5A5A_0001;

fn victim(n: u64) -> u64 {
    n
}

/// Runs in a worker: waits for the task message of `victim(VICTIM_ARG)` to
/// arrive in this worker's task ring (a shared mapping), flips one bit of
/// its argument there (a wild write of the worker's own), and returns
/// whether it found it. The message is `kind, entry, func, check, count,
/// arg_width, result_width, arg` (a `u64` argument travels in a column,
/// with no length): the argument lies 28 bytes after `func`.
fn corrupt_next_task(_: u64) -> bool {
    let func = (victim as fn(u64) -> u64 as usize as u64).to_le_bytes();
    let arg = VICTIM_ARG.to_le_bytes();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for line in maps.lines().filter(|l| l.split_whitespace().nth(1) == Some("rw-s")) {
            let Some((start, end)) = line.split_whitespace().next().and_then(|r| r.split_once('-')) else {
                continue;
            };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            else {
                continue;
            };
            // SAFETY: a mapping of this process, readable and writable per
            // /proc/self/maps; the parent only writes the part of the
            // ring past the published tail, never the message we look for.
            let bytes = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
            for at in 0..bytes.len().saturating_sub(36) {
                if bytes[at..at + 8] == func && bytes[at + 28..at + 36] == arg {
                    bytes[at + 28] ^= 1;
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_task_message_corrupted_in_the_ring_fails_its_task_and_replaces_the_worker() {
    let pool = Pool::new(1).unwrap();
    let pids = pool.pids();
    let mut corrupter = pool.apply_async(corrupt_next_task, 0).unwrap();
    let mut hit = pool.apply_async(victim, VICTIM_ARG).unwrap();
    assert_eq!(corrupter.get(), Ok(true), "the victim's message never showed up in the ring");
    // Without a check over the arguments, the worker would have run
    // victim(VICTIM_ARG ^ 1).
    let got = hit.get();
    assert!(matches!(got, Err(Error::Decode(_))), "{got:?}");
    // The worker that read it left and was replaced; the pool goes on.
    assert_ne!(pool.pids(), pids);
    assert_eq!(pool.map(cube, 0..10u64), Ok((0..10u64).map(|n| n * n * n).collect()));
    assert_eq!(pool.apply(victim, VICTIM_ARG), Ok(VICTIM_ARG));
}

/// In a pool worker, for arguments starting with 1: writes a misaligned
/// value into the `head` word of its own task ring for 200 ms (slot
/// mapping: two 128-byte flag lines, then the task ring, whose `head` is
/// the second 128-byte line of its header), while the parent streams big
/// arguments into that ring.
fn scribble_on_own_task_head(arg: Vec<u8>) -> usize {
    if arg.first() == Some(&1) {
        let mine = writable_shared_mappings();
        assert_eq!(mine.len(), 1, "a pool worker maps its own slot only");
        let head = (mine[0].0 + 256 + 128) as *mut u64;
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            // SAFETY: inside this worker's own shared mapping; clobbering
            // the ring's head word is the test.
            unsafe { std::ptr::write_volatile(head, 1) };
        }
    }
    arg.len()
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_worker_that_corrupts_its_own_ring_head_fails_its_tasks_not_the_pool() {
    let _dog = watchdog(Duration::from_secs(60), "a worker scribbling on its task ring's head");
    let pool = Pool::new(2).unwrap();
    // Arguments bigger than the ring, so they stream while it scribbles.
    let args: Vec<Vec<u8>> = (0..12u8).map(|i| vec![u8::from(i == 0); 200_000]).collect();
    let outcomes: Vec<Result<usize, Error>> = pool.imap(scribble_on_own_task_head, args.clone()).collect();
    assert_eq!(outcomes.len(), 12, "one outcome per task, not a stream of errors");
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            matches!(outcome, Ok(200_000) | Err(Error::Decode(_) | Error::WorkerDied { .. })),
            "task {i}: {outcome:?}"
        );
    }
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(ok >= 6, "the other worker's tasks succeed: {outcomes:?}");
    // The pool is not broken by one worker's ring.
    let small: Vec<Vec<u8>> = (0..50).map(|_| vec![2u8; 10]).collect();
    assert_eq!(pool.map(scribble_on_own_task_head, small).unwrap(), vec![10; 50]);
    drop(pool);
    assert_no_children();
}
