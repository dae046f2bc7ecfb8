//! `Process` and typed `spawn`: every rule of issue 2, checked from the
//! outside through the public API.
//!
//! These tests fork. Run them one process per test (`cargo nextest run`, as
//! `make test` does): `fork` copies only the calling thread, and libtest's
//! other threads would otherwise be lost mid-lock in the children.
//!
//! Every test reaps what it forks; a child meant to sleep "forever" sleeps
//! 30 s at most, so a failing test cannot leave it behind for long.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mproc::{Error, ExitStatus, OsError, Process};
use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// Long enough to outlive any test; short enough not to linger if one fails.
const FOREVER: Duration = Duration::from_secs(30);

fn sleep_forever() {
    thread::sleep(FOREVER);
}

/// True when `pid` is no child of ours, alive or zombie: `waitpid` says
/// `ECHILD`. (A zombie we failed to reap would still be waitable.)
fn not_our_child(pid: i32) -> bool {
    waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) == Err(Errno::ECHILD)
}

/// True when no process `pid` exists any more (`kill(pid, 0)` fails with
/// `ESRCH`). A zombie still exists, so this also proves it was reaped.
fn process_gone(pid: i32) -> bool {
    signal::kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// A path in the temp dir unique to this test process.
fn scratch_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mproc-test-{}-{name}", std::process::id()))
}

/// Starts a process and returns it (the common first two lines).
fn started<F: FnOnce() + 'static>(target: F) -> Process {
    let mut p = Process::new(target);
    p.start().expect("start");
    p
}

// ---------------------------------------------------------------------------
// exit codes, Python's convention

#[test]
fn target_that_returns_exits_zero() {
    let p = started(|| {});
    assert_eq!(p.join(), Ok(0));
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(0)));
}

#[test]
fn target_calling_exit_n_exits_n() {
    let p = started(|| std::process::exit(42));
    assert_eq!(p.join(), Ok(42));
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(42)));
}

#[test]
fn target_that_panics_exits_one() {
    let p = started(|| panic!("deliberate panic in the child"));
    assert_eq!(p.join(), Ok(1));
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(1)));
}

#[test]
fn terminate_gives_minus_sigterm() {
    let p = started(sleep_forever);
    p.terminate().expect("terminate");
    assert_eq!(p.join(), Ok(-libc::SIGTERM));
    assert_eq!(p.exit_status(), Some(ExitStatus::Signaled { signal: libc::SIGTERM, core_dumped: false }));
}

#[test]
fn kill_gives_minus_sigkill() {
    let p = started(sleep_forever);
    p.kill().expect("kill");
    assert_eq!(p.join(), Ok(-9));
    assert_eq!(p.exit_status(), Some(ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false }));
}

/// Makes the calling (child) process unable to write a core file, on any
/// `core_pattern`: `RLIMIT_CORE = 0` stops file dumps, and on Linux a
/// non-dumpable process is not dumped to a `|handler` pattern either.
fn forbid_core_dumps() {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).expect("setrlimit");
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false).expect("prctl");
}

/// Raises SIGSEGV with its default action. Rust's runtime installs a SIGSEGV
/// handler (to report stack overflows) that, for a fault outside a guard
/// page, restores the default action and *returns*: right for a real fault,
/// which re-executes and faults again, but a raised signal would simply be
/// swallowed. So restore the default first.
fn raise_sigsegv() {
    // SAFETY: installs the default disposition, not a handler: no Rust code
    // runs in signal context.
    unsafe { signal::signal(Signal::SIGSEGV, SigHandler::SigDfl) }.expect("signal");
    signal::raise(Signal::SIGSEGV).expect("raise");
}

#[test]
fn raised_sigsegv_gives_minus_eleven_without_core() {
    let p = started(|| {
        forbid_core_dumps();
        raise_sigsegv();
    });
    assert_eq!(p.join(), Ok(-libc::SIGSEGV));
    assert_eq!(p.exit_status(), Some(ExitStatus::Signaled { signal: libc::SIGSEGV, core_dumped: false }));
    assert_eq!(
        p.exit_status().map(|s| s.to_string()),
        Some("killed by signal 11 (Segmentation fault)".into())
    );
}

#[test]
fn raised_sigsegv_reports_core_dump_consistently() {
    // Whether a core is written depends on this machine's limits and
    // core_pattern; whatever the kernel said, every view must agree.
    let p = started(|| {
        // Do not litter the working directory with a core file.
        let _ = std::env::set_current_dir(std::env::temp_dir());
        raise_sigsegv();
    });
    assert_eq!(p.join(), Ok(-11));
    let Some(ExitStatus::Signaled { signal, core_dumped }) = p.exit_status() else {
        panic!("expected a signal, got {:?}", p.exit_status());
    };
    assert_eq!(signal, libc::SIGSEGV);
    assert_eq!(p.exitcode(), Some(-11));
    let text = p.exit_status().map(|s| s.to_string()).unwrap_or_default();
    assert_eq!(text.ends_with(", core dumped"), core_dumped, "{text:?}");
}

// ---------------------------------------------------------------------------
// lifecycle rules

#[test]
fn start_twice_is_invalid_state() {
    let mut p = started(|| {});
    assert!(matches!(p.start(), Err(Error::InvalidState(_))), "second start must fail");
    assert_eq!(p.join(), Ok(0));
    assert!(matches!(p.start(), Err(Error::InvalidState(_))), "start after join must fail");
}

#[test]
fn join_before_start_is_invalid_state() {
    let p = Process::new(|| {});
    assert!(matches!(p.join(), Err(Error::InvalidState(_))));
}

#[test]
fn join_timeout_before_start_is_invalid_state() {
    let p = Process::new(|| {});
    assert!(matches!(p.join_timeout(Duration::from_millis(10)), Err(Error::InvalidState(_))));
    // A zero timeout must not turn "never started" into "still running".
    assert!(matches!(p.join_timeout(Duration::ZERO), Err(Error::InvalidState(_))));
}

#[test]
fn signals_before_start_are_invalid_state() {
    let p = Process::new(|| {});
    assert!(matches!(p.terminate(), Err(Error::InvalidState(_))));
    assert!(matches!(p.kill(), Err(Error::InvalidState(_))));
}

#[test]
fn pid_is_none_before_start_and_the_child_after() {
    let mut p = Process::new(|| {});
    assert_eq!(p.pid(), None);
    p.start().expect("start");
    let pid = p.pid().expect("pid after start");
    assert!(pid > 0 && pid != std::process::id() as i32, "pid {pid}");
    assert_eq!(p.join(), Ok(0));
    assert_eq!(p.pid(), Some(pid), "pid stays readable after join");
}

#[test]
fn the_pid_is_the_childs_own() {
    // The child reports getpid() through its exit code's low byte.
    let p = started(|| std::process::exit(std::process::id() as i32 & 0x7f));
    let pid = p.pid().expect("pid");
    assert_eq!(p.join(), Ok(pid & 0x7f));
}

#[test]
fn is_alive_while_sleeping_and_not_after_join() {
    let mut p = Process::new(sleep_forever);
    assert!(!p.is_alive(), "not alive before start");
    p.start().expect("start");
    assert!(p.is_alive());
    assert!(p.is_alive(), "asking twice does not change the answer");
    p.kill().expect("kill");
    assert_eq!(p.join(), Ok(-9));
    assert!(!p.is_alive());
}

#[test]
fn is_alive_turns_false_when_the_child_ends_by_itself() {
    let p = started(|| {});
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.is_alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!p.is_alive());
    // is_alive reaped it; join still reports the code.
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(p.join(), Ok(0));
}

#[test]
fn join_twice_returns_the_same_code() {
    let p = started(|| std::process::exit(3));
    assert_eq!(p.join(), Ok(3));
    assert_eq!(p.join(), Ok(3));
    assert_eq!(p.join_timeout(Duration::ZERO), Ok(Some(3)));
    assert_eq!(p.exitcode(), Some(3));
}

#[test]
fn join_timeout_on_a_sleeping_child_returns_none_after_the_timeout() {
    let p = started(sleep_forever);
    let timeout = Duration::from_millis(300);
    let begun = Instant::now();
    assert_eq!(p.join_timeout(timeout), Ok(None));
    let waited = begun.elapsed();
    assert!(waited >= timeout, "returned early, after {waited:?}");
    assert!(waited < timeout + Duration::from_secs(5), "returned late, after {waited:?}");
    assert!(p.is_alive(), "still running after the timeout");
    assert_eq!(p.exitcode(), None);
    p.kill().expect("kill");
    assert_eq!(p.join(), Ok(-9));
}

#[test]
fn join_timeout_on_a_quick_child_returns_its_code() {
    let p = started(|| {});
    let begun = Instant::now();
    assert_eq!(p.join_timeout(Duration::from_secs(20)), Ok(Some(0)));
    // It woke on the child's death, not at the deadline.
    assert!(begun.elapsed() < Duration::from_secs(10), "took {:?}", begun.elapsed());
    assert_eq!(p.join(), Ok(0));
}

#[test]
fn join_timeout_sees_a_death_that_happens_during_the_wait() {
    let p = started(|| {
        thread::sleep(Duration::from_millis(100));
        std::process::exit(5);
    });
    assert_eq!(p.join_timeout(Duration::from_secs(20)), Ok(Some(5)));
}

#[test]
fn exitcode_is_none_until_the_child_is_reaped() {
    let mut p = Process::new(sleep_forever);
    assert_eq!(p.exitcode(), None, "before start");
    p.start().expect("start");
    assert_eq!(p.exitcode(), None, "while running");
    assert_eq!(p.exit_status(), None);
    p.terminate().expect("terminate");
    assert_eq!(p.join(), Ok(-15));
    assert_eq!(p.exitcode(), Some(-15));
}

#[test]
fn terminate_and_kill_after_exit_are_no_ops() {
    let p = started(|| std::process::exit(4));
    let pid = p.pid().expect("pid");
    assert_eq!(p.join(), Ok(4));
    assert_eq!(p.terminate(), Ok(()));
    assert_eq!(p.kill(), Ok(()));
    assert_eq!(p.exitcode(), Some(4), "the recorded code is untouched");
    assert!(not_our_child(pid));
}

#[test]
fn a_copy_of_the_handle_in_another_process_refuses_to_signal() {
    // `a` ends at once; the copy of its handle moved into `q`'s target
    // still says "running" in `q`'s child, while the parent's copy
    // (dropped when `q` starts) waits for `a` and reaps it. From there on
    // `a`'s pid may name anyone's process: the copy must not signal it.
    let a = started(|| {});
    let a_pid = a.pid().expect("pid");
    let mut q = Process::new(move || {
        let refused = |r: mproc::Result<()>| matches!(r, Err(Error::InvalidState(_)));
        let code = match (refused(a.kill()), refused(a.terminate())) {
            (true, true) => 0,
            (false, _) => 10,
            (true, false) => 11,
        };
        std::process::exit(code)
    });
    q.start().expect("start");
    assert!(not_our_child(a_pid), "starting q dropped the parent's copy of a, which reaped it");
    assert_eq!(q.join(), Ok(0), "10: kill() from the copy was let through, 11: terminate() was");
}

#[test]
fn a_spawn_handle_joined_in_another_process_is_refused() {
    // The copy in `q`'s child names a descriptor that `fork` closed there
    // (and that may name one of the child's own files by then).
    let h = mproc::spawn(|| 5u64).expect("spawn");
    let mut q = Process::new(move || {
        let code = match h.join() {
            Err(Error::InvalidState(_)) => 0,
            Ok(_) => 10,
            Err(_) => 11,
        };
        std::process::exit(code)
    });
    q.start().expect("start");
    assert_eq!(q.join(), Ok(0), "10: the copy joined, 11: it failed some other way");
}

#[test]
fn sentinel_is_open_only_while_running() {
    let mut p = Process::new(|| {});
    assert_eq!(p.sentinel(), None);
    p.start().expect("start");
    assert!(p.sentinel().is_some());
    assert_eq!(p.join(), Ok(0));
    assert_eq!(p.sentinel(), None);
}

#[test]
#[cfg(target_os = "linux")]
fn a_child_nobody_polls_costs_no_descriptor_and_its_sentinel_is_a_pidfd() {
    let before = mproc::open_fd_count();
    let mut p = Process::new(|| thread::sleep(Duration::from_millis(50)));
    p.start().expect("start");
    assert_eq!(mproc::open_fd_count(), before, "no sentinel pipe at start");
    let fd = p.sentinel().expect("a sentinel while running");
    assert_eq!(p.sentinel(), Some(fd), "opened once");
    assert_eq!(mproc::open_fd_count(), before + 1);
    // It reads ready once the child has ended, and not before it is reaped.
    let mut pfd = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(pfd.as_mut_ptr(), 1, 10_000) }, 1);
    assert_eq!(p.join_timeout(Duration::ZERO), Ok(Some(0)), "readable means ended");
    assert_eq!(mproc::open_fd_count(), before, "closed when reaped");
}

// ---------------------------------------------------------------------------
// dropping a started process

#[test]
fn dropping_a_daemon_kills_and_reaps_it() {
    let p = started(sleep_forever).daemon(true);
    let pid = p.pid().expect("pid");
    let begun = Instant::now();
    drop(p);
    assert!(begun.elapsed() < Duration::from_secs(10), "drop waited for the sleeper");
    assert!(not_our_child(pid), "no zombie: waitpid({pid}) must say ECHILD");
    assert!(process_gone(pid), "process {pid} still exists");
}

#[test]
fn dropping_a_non_daemon_waits_for_it() {
    let path = scratch_path("non-daemon-drop");
    let _ = fs::remove_file(&path);
    let child_path = path.clone();
    let p = started(move || {
        thread::sleep(Duration::from_millis(200));
        fs::write(&child_path, "done").expect("write");
    });
    let pid = p.pid().expect("pid");
    drop(p);
    let written = fs::read_to_string(&path);
    let _ = fs::remove_file(&path);
    assert_eq!(written.ok().as_deref(), Some("done"), "drop returned before the child finished");
    assert!(not_our_child(pid));
    assert!(process_gone(pid));
}

#[test]
fn dropping_a_never_started_process_does_nothing() {
    let before = mproc::open_fd_count();
    drop(Process::new(|| {}));
    drop(Process::new(|| {}).daemon(true));
    assert_eq!(mproc::open_fd_count(), before);
}

// ---------------------------------------------------------------------------
// buffered output is printed once

/// Runs a helper process whose stdout is a pipe: it calls `leave_unflushed`
/// (which leaves text in a stdout buffer, without a newline), starts a child
/// that prints `child`, joins it, and prints `parent`. Returns everything
/// the pipe carried. Without a flush before `fork`, the child would inherit
/// the buffered text and print it a second time.
fn helper_output(leave_unflushed: fn()) -> String {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let helper = started(move || {
        nix::unistd::dup2(write_end.as_raw_fd(), 1).expect("dup2");
        drop(write_end);
        leave_unflushed();
        let child = started(|| {
            let _ = std::io::stdout().write_all(b"child\n");
        });
        assert_eq!(child.join(), Ok(0));
        let _ = std::io::stdout().write_all(b"parent\n");
    });
    let mut output = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(read_end), &mut output).expect("read");
    assert_eq!(helper.join(), Ok(0));
    String::from_utf8_lossy(&output).into_owned()
}

#[test]
fn buffered_rust_stdout_is_printed_once() {
    // Rust's stdout is line-buffered: without a newline the text stays put.
    let output = helper_output(|| {
        let _ = std::io::stdout().write_all(b"unfinished ");
    });
    assert_eq!(output, "unfinished child\nparent\n");
}

#[test]
fn buffered_c_stdout_is_printed_once() {
    // C stdio on a pipe is fully buffered.
    let output = helper_output(|| {
        // SAFETY: a C string literal (NUL-terminated) without conversions.
        unsafe { libc::printf(c"unfinished ".as_ptr()) };
    });
    assert_eq!(output, "unfinished child\nparent\n");
}

#[test]
fn a_childs_own_unflushed_c_stdout_is_printed_at_its_exit() {
    // The child's text sits in C's buffer (a pipe: fully buffered) when
    // its target returns; `_exit` would drop it without mproc's flush.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let helper = started(move || {
        nix::unistd::dup2(write_end.as_raw_fd(), 1).expect("dup2");
        drop(write_end);
        let child = started(|| {
            // SAFETY: a C string literal (NUL-terminated) without conversions.
            unsafe { libc::printf(c"from C, no newline".as_ptr()) };
        });
        assert_eq!(child.join(), Ok(0));
    });
    let mut output = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(read_end), &mut output).expect("read");
    assert_eq!(helper.join(), Ok(0));
    assert_eq!(String::from_utf8_lossy(&output), "from C, no newline");
}

// ---------------------------------------------------------------------------
// typed spawn

#[test]
fn spawn_returns_an_integer() {
    let base = 40u64;
    let h = mproc::spawn(move || base + 2).expect("spawn");
    assert!(h.pid() > 0);
    assert_eq!(h.join(), Ok(42));
}

#[test]
fn spawn_returns_a_string() {
    let h = mproc::spawn(|| format!("The square of {} is {}", 5, 25)).expect("spawn");
    assert_eq!(h.join(), Ok("The square of 5 is 25".to_string()));
}

#[test]
fn spawn_returns_a_payload_bigger_than_a_pipe_buffer() {
    // 1 MiB: the child blocks on a full pipe unless the parent reads while
    // the child writes.
    let expected: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(31) % 251) as u8).collect();
    let h = mproc::spawn(|| (0..1 << 20).map(|i: u32| (i.wrapping_mul(31) % 251) as u8).collect::<Vec<u8>>())
        .expect("spawn");
    let got = h.join().expect("join");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "payload differs");
}

#[test]
fn spawn_returns_a_vec_of_strings() {
    let h = mproc::spawn(|| (1..=4).map(|i| format!("Process {i}: {i}")).collect::<Vec<String>>())
        .expect("spawn");
    assert_eq!(
        h.join(),
        Ok(vec![
            "Process 1: 1".to_string(),
            "Process 2: 2".to_string(),
            "Process 3: 3".to_string(),
            "Process 4: 4".to_string(),
        ])
    );
}

#[test]
fn spawn_returns_tuples() {
    let h = mproc::spawn(|| (7u8, -3i32, "é".to_string(), true, 2.5f64, 'λ')).expect("spawn");
    assert_eq!(h.join(), Ok((7u8, -3i32, "é".to_string(), true, 2.5f64, 'λ')));
    let h = mproc::spawn(|| (1u64, (2u16, vec![3i64, -4]))).expect("spawn");
    assert_eq!(h.join(), Ok((1u64, (2u16, vec![3i64, -4]))));
}

#[test]
fn spawn_returns_options() {
    let h = mproc::spawn(|| Some("found".to_string())).expect("spawn");
    assert_eq!(h.join(), Ok(Some("found".to_string())));
    let h = mproc::spawn(|| None::<u32>).expect("spawn");
    assert_eq!(h.join(), Ok(None));
}

#[test]
fn spawn_returns_results() {
    let h = mproc::spawn(|| "12".parse::<u32>().map_err(|e| e.to_string())).expect("spawn");
    assert_eq!(h.join(), Ok(Ok(12)));
    let h = mproc::spawn(|| "x".parse::<u32>().map_err(|e| e.to_string())).expect("spawn");
    assert_eq!(h.join(), Ok(Err("invalid digit found in string".to_string())));
}

#[test]
fn spawn_returns_unit() {
    let h = mproc::spawn(|| ()).expect("spawn");
    assert_eq!(h.join(), Ok(()));
}

#[test]
fn spawn_whose_task_panics_reports_the_message() {
    let h = mproc::spawn(|| -> u64 { panic!("task {} failed: {}", 42, "no luck") }).expect("spawn");
    assert_eq!(h.join(), Err(Error::Panicked { message: "task 42 failed: no luck".to_string() }));
}

#[test]
fn spawn_whose_task_exits_reports_the_death() {
    let h = mproc::spawn(|| -> u64 { std::process::exit(7) }).expect("spawn");
    let pid = h.pid();
    assert_eq!(h.join(), Err(Error::ChildDied { pid, exitcode: 7, core_dumped: false }));
    assert!(not_our_child(pid));
}

#[test]
fn spawn_whose_task_exits_zero_without_a_value_is_a_death_too() {
    let h = mproc::spawn(|| -> String { std::process::exit(0) }).expect("spawn");
    let pid = h.pid();
    assert_eq!(h.join(), Err(Error::ChildDied { pid, exitcode: 0, core_dumped: false }));
}

#[test]
fn spawn_killed_reports_minus_nine() {
    let h = mproc::spawn(|| {
        sleep_forever();
        0u64
    })
    .expect("spawn");
    let pid = h.pid();
    assert!(h.is_alive());
    h.kill().expect("kill");
    assert_eq!(h.join(), Err(Error::ChildDied { pid, exitcode: -9, core_dumped: false }));
    assert!(not_our_child(pid));
}

#[test]
fn spawn_terminated_reports_minus_fifteen() {
    let h = mproc::spawn(|| {
        sleep_forever();
        String::new()
    })
    .expect("spawn");
    let pid = h.pid();
    h.terminate().expect("terminate");
    assert_eq!(h.join(), Err(Error::ChildDied { pid, exitcode: -15, core_dumped: false }));
}

#[test]
fn dropping_an_unjoined_handle_leaves_no_zombie() {
    let h = mproc::spawn(|| 5u64).expect("spawn");
    let pid = h.pid();
    drop(h);
    assert!(not_our_child(pid), "waitpid({pid}) must say ECHILD");
    assert!(process_gone(pid));
}

#[test]
fn dropping_a_handle_whose_child_is_blocked_writing_does_not_hang() {
    // The child's 1 MiB result fills the pipe; dropping the handle must close
    // the read end first so the child's write fails and it can exit, rather
    // than both sides waiting on each other. A watchdog kills the child after
    // 10 s so that a regression fails instead of hanging the run.
    let h = mproc::spawn(|| vec![0xabu8; 1 << 20]).expect("spawn");
    let pid = h.pid();
    thread::sleep(Duration::from_millis(50)); // let the child fill the pipe
    let (done, wait_done) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let timed_out = wait_done.recv_timeout(Duration::from_secs(10)).is_err();
        if timed_out {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        timed_out
    });
    drop(h);
    let _ = done.send(());
    assert!(!watchdog.join().expect("watchdog"), "drop hung until the watchdog killed {pid}");
    assert!(not_our_child(pid));
}

// ---------------------------------------------------------------------------
// resources

#[test]
fn no_fd_leaks_after_100_spawn_join_cycles() {
    let before = mproc::open_fd_count();
    for i in 0..100u64 {
        assert_eq!(mproc::spawn(move || i * i).expect("spawn").join(), Ok(i * i));
    }
    assert_eq!(mproc::open_fd_count(), before, "fds after 100 spawn/join cycles");
}

#[test]
fn no_fd_leaks_after_process_cycles_of_every_kind() {
    let before = mproc::open_fd_count();
    for _ in 0..20 {
        assert_eq!(started(|| {}).join(), Ok(0));
        assert_eq!(started(|| std::process::exit(2)).join(), Ok(2));
        let p = started(sleep_forever);
        p.kill().expect("kill");
        assert_eq!(p.join(), Ok(-9));
        drop(started(|| {}));
        drop(started(sleep_forever).daemon(true));
        let h = mproc::spawn(|| -> u8 { panic!("counted") }).expect("spawn");
        assert!(matches!(h.join(), Err(Error::Panicked { .. })));
        drop(mproc::spawn(|| 1u8).expect("spawn"));
    }
    assert_eq!(mproc::open_fd_count(), before);
}

// ---------------------------------------------------------------------------
// error messages

#[test]
fn worker_died_by_signal_reads_like_a_sentence() {
    let e = Error::WorkerDied { pid: 4242, exitcode: -11, core_dumped: true, task: Some(7) };
    assert_eq!(
        e.to_string(),
        "worker 4242 killed by signal 11 (Segmentation fault), core dumped, while running task 7"
    );
}

#[test]
fn worker_died_by_exit_reads_like_a_sentence() {
    let e = Error::WorkerDied { pid: 31, exitcode: 7, core_dumped: false, task: None };
    assert_eq!(e.to_string(), "worker 31 exited with status 7 without a result");
}

#[test]
fn panicked_and_os_errors_read_like_sentences() {
    let e = Error::Panicked { message: "index out of bounds".to_string() };
    assert_eq!(e.to_string(), "task panicked: index out of bounds");
    let e = Error::Os(OsError { call: "waitpid", pid: Some(12), errno: libc::ECHILD });
    assert!(e.to_string().starts_with("waitpid(12) failed: No child processes"), "{e}");
}

#[test]
fn errors_from_a_real_death_carry_the_pid() {
    let h = mproc::spawn(|| -> u64 { std::process::exit(9) }).expect("spawn");
    let pid = h.pid();
    let e = h.join().expect_err("the task exited");
    // A spawn's child is no pool worker: the message says "child".
    assert_eq!(e.to_string(), format!("child {pid} exited with status 9 without a result"));
}

#[test]
fn a_process_moved_into_another_child_is_dropped_there_without_harm() {
    // p1 runs in its own child; p2's closure owns p1's handle, so p2's
    // child drops a copy of it. That copy must not close a descriptor of
    // p2's that reused p1's sentinel number (fork already closed the
    // sentinel there), nor signal or wait for p1.
    let mut p1 = Process::new(|| std::thread::sleep(Duration::from_millis(300)));
    p1.start().expect("start p1");
    let p1_pid = p1.pid().expect("p1 pid");
    let mut p2 = Process::new(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = file.as_raw_fd();
        drop(p1);
        // SAFETY: fcntl(F_GETFD) on a number; -1 means it was closed.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        std::process::exit(if open { 0 } else { 3 });
    });
    p2.start().expect("start p2");
    assert_eq!(p2.join().expect("join p2"), 0, "the copy closed p2's own file");
    // In the parent, the closure (and p1 with it) was dropped at p2.start():
    // a non-daemon drop joins, so p1 has already been waited for — by us.
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer; ECHILD means reaped.
    assert_eq!(unsafe { libc::waitpid(p1_pid, &mut status, libc::WNOHANG) }, -1);
}

#[test]
fn join_timeout_on_a_child_that_exec_d_waits_without_spinning_and_then_joins() {
    // The sentinel is close-on-exec: after exec it hangs up while the
    // child lives on. join_timeout must still report "running", then join.
    let mut p = Process::new(|| {
        let err = std::os::unix::process::CommandExt::exec(std::process::Command::new("sleep").arg("0.5"));
        panic!("exec failed: {err}");
    });
    p.start().expect("start");
    let t = std::time::Instant::now();
    assert_eq!(p.join_timeout(Duration::from_millis(200)).expect("join_timeout"), None);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(p.is_alive());
    assert_eq!(p.join_timeout(Duration::from_secs(10)).expect("join_timeout"), Some(0));
}

// ---------------------------------------------------------------------------
// fork while other threads hold stdout's and stderr's locks: in
// tests/stdout_locks.rs, a test binary of their own (they point the
// process's stdout and stderr at /dev/null while they run)

// ---------------------------------------------------------------------------
// process-wide registries belong to one process (hardening item 2)

/// In a child: puts `file` on every descriptor number below 256 that is
/// not open (the numbers `fork` closed, such as a pool's request pipe),
/// makes this child own the exit handlers, and sends itself SIGTERM.
/// Returns only if the handler failed to exit.
fn sigterm_self_with_closed_fds_on(file: &fs::File) {
    for fd in 3..256 {
        // SAFETY: F_GETFD on a number; -1/EBADF means it is closed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            nix::unistd::dup2(file.as_raw_fd(), fd).expect("dup2");
        }
    }
    mproc::exit_cleanly_on_signals().expect("install the exit handlers");
    signal::kill(nix::unistd::getpid(), Signal::SIGTERM).expect("SIGTERM myself");
    thread::sleep(FOREVER);
}

#[test]
fn a_childs_exit_handler_ignores_the_parents_pools() {
    let pool = mproc::Pool::new(1).expect("pool");
    let path = scratch_path("kill-order");
    let file = fs::File::create(&path).expect("create");
    let p = started(move || sigterm_self_with_closed_fds_on(&file));
    assert_eq!(p.join(), Ok(128 + libc::SIGTERM), "the child's handler exits 143");
    let written = fs::read(&path).expect("read");
    let _ = fs::remove_file(&path);
    assert!(written.is_empty(), "the child wrote the parent's kill order into its own file: {written:?}");
    // And the parent's pool is untouched.
    assert_eq!(pool.map(|n: u32| n + 1, vec![1, 2]), Ok(vec![2, 3]));
}

#[test]
fn a_childs_exit_handler_ignores_the_parents_process_children() {
    let sibling = started(sleep_forever);
    let sibling_pid = sibling.pid().expect("pid");
    let path = scratch_path("sibling");
    let file = fs::File::create(&path).expect("create");
    let p = started(move || sigterm_self_with_closed_fds_on(&file));
    assert_eq!(p.join(), Ok(128 + libc::SIGTERM));
    let _ = fs::remove_file(&path);
    assert!(sibling.is_alive(), "the child's handler killed its parent's other child");
    sibling.kill().expect("kill");
    assert_eq!(sibling.join(), Ok(-libc::SIGKILL));
    assert!(process_gone(sibling_pid));
}

extern "C" fn sigterm_myself() {
    // SAFETY: raise is async-signal-safe and takes an integer.
    unsafe { libc::raise(libc::SIGTERM) };
}

#[test]
fn an_exit_signal_between_fork_and_registration_on_the_same_thread_still_kills_the_child() {
    // A helper that owns the exit handlers makes SIGTERM arrive on its
    // starting thread right after `fork` returns there (a pthread_atfork
    // parent hook), before the child is registered. The handler must not
    // act before the registration (it would wait for it, then miss the
    // child), nor after the helper is gone: the child must die with it.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let helper = started(move || {
        mproc::exit_cleanly_on_signals().expect("install the exit handlers");
        // SAFETY: registers a parent hook that only raises a signal.
        assert_eq!(unsafe { libc::pthread_atfork(None, Some(sigterm_myself), None) }, 0);
        let mut child = Process::new(move || {
            let pid = std::process::id().to_le_bytes();
            let _ = nix::unistd::write(&write_end, &pid);
            drop(write_end);
            sleep_forever();
        });
        let _ = child.start();
        sleep_forever();
    });
    let mut pid = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(read_end), &mut pid).expect("read");
    assert_eq!(helper.join(), Ok(128 + libc::SIGTERM), "the helper's handler exits 143");
    // The child may have died before it could say its pid; if it said
    // it, it must be gone (killed and reaped by the helper's handler).
    if let Ok(pid) = <[u8; 4]>::try_from(pid.as_slice()) {
        let pid = u32::from_le_bytes(pid) as i32;
        let gone = process_gone(pid);
        if !gone {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        assert!(gone, "the child {pid} outlived the helper");
    }
}

// ---------------------------------------------------------------------------
// timeouts too large to represent (hardening item 5)

#[test]
fn join_timeout_with_duration_max_means_no_limit() {
    let p = started(|| thread::sleep(Duration::from_millis(100)));
    assert_eq!(p.join_timeout(Duration::MAX), Ok(Some(0)));
    let p = started(|| std::process::exit(3));
    assert_eq!(p.join_timeout(Duration::from_secs(u64::MAX)), Ok(Some(3)));
}

#[test]
fn a_signal_is_worded_the_same_in_a_status_and_in_an_error() {
    let status = ExitStatus::Signaled { signal: libc::SIGPIPE, core_dumped: false };
    let error = Error::ChildDied { pid: 5, exitcode: -libc::SIGPIPE, core_dumped: false };
    assert_eq!(status.to_string(), "killed by signal 13 (Broken pipe)");
    assert_eq!(error.to_string(), format!("child 5 {status} without a result"));
}
