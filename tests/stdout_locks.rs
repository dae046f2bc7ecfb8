//! `fork` while other threads hold Rust's stdout and stderr locks (or
//! print with them held): the child must never hang on a lock held at the
//! fork (hardening item 7).
//!
//! A test binary of its own: the printers write as fast as they can, so
//! each test points the process's stdout and stderr at `/dev/null` while
//! it runs. Under plain `cargo test` every test of a binary shares one
//! process, and these redirections used to silence the rest of
//! `tests/process.rs`'s report, summary included. Here they take turns
//! ([`Silenced`]) and put the descriptors back when they end, failing or
//! not.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The process's stdout and stderr on `/dev/null` until dropped, when the
/// originals come back. One at a time: two overlapping would put back
/// each other's `/dev/null`.
struct Silenced {
    saved: Vec<(i32, OwnedFd)>,
    _turn: MutexGuard<'static, ()>,
}

impl Silenced {
    fn new(fds: &[i32]) -> Silenced {
        static TURN: Mutex<()> = Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let null = fs::OpenOptions::new().write(true).open("/dev/null").expect("open /dev/null");
        let saved = fds
            .iter()
            .map(|&fd| {
                // SAFETY: dup of a descriptor the test harness keeps open;
                // the copy is owned here and closed after it is put back.
                let copy = unsafe { libc::dup(fd) };
                assert!(copy >= 0, "dup({fd})");
                // SAFETY: `copy` is a fresh descriptor nothing else owns.
                let copy = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) };
                nix::unistd::dup2(null.as_raw_fd(), fd).expect("dup2 /dev/null");
                (fd, copy)
            })
            .collect();
        Silenced { saved, _turn: turn }
    }
}

impl Drop for Silenced {
    fn drop(&mut self) {
        // Whatever the printers left in Rust's buffer goes to /dev/null.
        let _ = std::io::stdout().flush();
        for (fd, copy) in &self.saved {
            let _ = nix::unistd::dup2(copy.as_raw_fd(), *fd);
        }
    }
}

#[test]
fn spawn_from_eight_threads_while_a_ninth_prints_never_hangs_a_child() {
    let silenced = Silenced::new(&[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let printer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut lines = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Through stdout's lock, not `println!`: under a harness
                // that captures output, `println!` bypasses the lock.
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "the printer thread's line {lines}, long enough to take a moment to format"
                );
                lines += 1;
            }
        })
    };
    let spawners: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                let mut hung = Vec::new();
                for i in 0..25u64 {
                    let x = t * 1000 + i;
                    let h = mproc::spawn(move || x * 3).expect("spawn");
                    // Watchdog: a child that cannot finish in 10 s is stuck
                    // on a lock (nothing else here takes time). Kill it so
                    // the test fails instead of hanging.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while h.is_alive() && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(1));
                    }
                    if h.is_alive() {
                        let _ = h.kill();
                        hung.push(x);
                    }
                    match h.join() {
                        Ok(v) => assert_eq!(v, x * 3),
                        Err(e) => assert!(hung.contains(&x), "spawn {x}: {e}"),
                    }
                }
                hung
            })
        })
        .collect();
    let joined: Vec<_> = spawners.into_iter().map(|s| s.join()).collect();
    // The printer stops, and stdout comes back, before any assertion: a
    // failing spawner must not leave it printing to the real stdout.
    stop.store(true, Ordering::Relaxed);
    printer.join().expect("printer thread");
    drop(silenced);
    let mut hung = Vec::new();
    for spawner in joined {
        match spawner {
            Ok(stuck) => hung.extend(stuck),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    assert!(hung.is_empty(), "children stuck on a lock held at fork: {hung:?}");
}

#[test]
fn spawn_while_another_thread_prints_to_stdout_holding_stderr_never_deadlocks() {
    // The other lock order: a thread that holds stderr's lock while it
    // prints to stdout. A fork that held both locks would wait for stdout
    // while that thread waits for stderr, forever.
    let silenced = Silenced::new(&[1, 2]);
    let stop = Arc::new(AtomicBool::new(false));
    let printer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(std::io::stdout().lock(), "printed to stdout while holding stderr's lock");
                let _ = writeln!(err, "and to stderr");
            }
        })
    };
    // The spawner reports instead of asserting: stderr is /dev/null while
    // it runs, and a panic's message printed there would be lost.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    thread::spawn(move || {
        let spawned =
            (0..200u64).try_for_each(|x| match mproc::spawn(move || x * 3).and_then(|h| h.join()) {
                Ok(v) if v == x * 3 => Ok(()),
                other => Err(format!("spawn {x}: {other:?}")),
            });
        let _ = done_tx.send(spawned);
    });
    // A deadlock shows as no answer within 30 s: report it as a failure
    // (with stderr back), not as a hung test.
    let finished = done_rx.recv_timeout(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let Ok(spawned) = finished else {
        // The printer may be the thread that is stuck: not joined.
        drop(silenced);
        panic!("spawn deadlocked while another thread held stderr's lock and printed to stdout");
    };
    // Before the descriptors come back: its last line goes to /dev/null.
    printer.join().expect("printer thread");
    drop(silenced);
    if let Err(msg) = spawned {
        panic!("{msg}");
    }
}
