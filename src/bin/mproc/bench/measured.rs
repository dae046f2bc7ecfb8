//! The commands a benchmark runs (`bench run`'s runners, `bench compare`'s
//! C, mproc and Python programs), stopped with it.
//!
//! Ctrl-C reaches the whole foreground process group, the command too. A
//! `SIGINT` or `SIGTERM` sent to mproc alone (`kill PID`, a test harness,
//! a supervisor) used to end mproc and leave the command running,
//! re-parented to init: `bench run --count 100000` went on starting
//! `/bin/true` for another minute, skewing whatever was measured next.
//! Here those signals are blocked in every thread and taken by one thread
//! (`sigwait`), which passes each on to the command running, if any; the
//! benchmark waits for that command (so it is reaped) and then ends with
//! the signal's status, 130 or 143.

use std::io;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// The command running now (0: none).
static RUNNING: AtomicI32 = AtomicI32::new(0);
/// The signal taken, if any (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// Takes `SIGINT` and `SIGTERM` from now on (see the module). Call before
/// the process has other threads: threads started later inherit the block.
pub fn forward_signals() -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::Builder::new().name("bench-signals".into()).spawn(move || {
        // sigwait fails only for an invalid set.
        while let Ok(signal) = set.wait() {
            // SeqCst, with `wait_for`'s store and load: whichever of the
            // two comes second sees the other's and sends the signal.
            CAUGHT.store(signal as i32, Ordering::SeqCst);
            let pid = RUNNING.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    })?;
    Ok(())
}

/// The status mproc ends with if a signal was taken: 128 + its number.
pub fn stopped() -> Option<u8> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(128u8.saturating_add(u8::try_from(signal).unwrap_or(0))),
    }
}

/// Waits for `child`, which a signal taken meanwhile reaches too.
fn wait_for<T>(child: Child, wait: impl FnOnce(Child) -> io::Result<T>) -> io::Result<T> {
    let pid = i32::try_from(child.id()).unwrap_or(0);
    RUNNING.store(pid, Ordering::SeqCst);
    let caught = CAUGHT.load(Ordering::SeqCst);
    if caught != 0 && pid > 0 {
        // Taken before the command was known: pass it on now.
        if let Ok(signal) = Signal::try_from(caught) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
    let waited = wait(child);
    RUNNING.store(0, Ordering::SeqCst);
    waited
}

/// Refuses to start a command once a signal was taken.
fn not_stopped() -> io::Result<()> {
    match stopped() {
        Some(_) => Err(io::Error::new(io::ErrorKind::Interrupted, "stopped by a signal")),
        None => Ok(()),
    }
}

/// `cmd.status()`, stopped with the benchmark.
pub fn status(cmd: &mut Command) -> io::Result<ExitStatus> {
    not_stopped()?;
    wait_for(cmd.spawn()?, |mut child| child.wait())
}

/// `cmd.output()`: stdin empty, stdout and stderr captured; stopped with
/// the benchmark.
pub fn output(cmd: &mut Command) -> io::Result<Output> {
    not_stopped()?;
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wait_for(child, Child::wait_with_output)
}
