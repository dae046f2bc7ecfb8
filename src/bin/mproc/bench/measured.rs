//! The commands a benchmark runs for long (`bench run`'s runners, `bench
//! compare`'s C, mproc and Python benchmarks), stopped with it.
//!
//! A `SIGINT` or `SIGTERM` sent to mproc alone (`kill PID`, a test harness,
//! a supervisor) used to end mproc and leave the command it was measuring
//! running, re-parented to init: `bench run --count 100000` went on
//! starting `/bin/true` for another minute, skewing whatever was measured
//! next. Each command now runs as an [`mproc::Process`] that execs it, so
//! the exit handler `main` installs ([`mproc::exit_cleanly_on_signals`])
//! kills it (`SIGKILL`) and reaps it before mproc exits with 130 or 143.
//! What the command started itself is not signalled: Python's pool workers
//! and the C programs' children end when their parent's pipes close, and
//! `mproc run`'s jobs (here `/bin/true` and `echo`) end on their own.
//!
//! A bench killed outright (`SIGKILL`) runs no handler. On Linux each
//! command is then sent `SIGTERM` by the kernel (`PR_SET_PDEATHSIG`, set
//! between the fork and the exec): an `mproc run` being measured kills its
//! jobs and ends, and so does one under a `bench run` that `bench compare`
//! itself killed.
//!
//! (`std::process::Command` children could not be reached by that handler;
//! and a `sigwait` thread forwarding the signals would have needed them
//! blocked, a mask that `Command`'s children inherit: a Python child then
//! could not be stopped by either signal.)

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use mproc::ExitStatus;

/// Runs `cmd` as a child the exit handler knows, and waits for it. Its
/// stdio is what `cmd` says (inherited where it says nothing). A command
/// that cannot be run is `Error::Os` naming `execvp`.
pub fn status(cmd: Command) -> mproc::Result<ExitStatus> {
    let (child, exec_failed) = start(cmd)?;
    let refused = exec_error(exec_failed);
    let status = ended(&child)?;
    refused.map_or(Ok(status), Err)
}

/// Like [`status`], with stdin empty, stdout captured and stderr
/// discarded: the command's status and what it printed.
pub fn output(mut cmd: Command) -> mproc::Result<(ExitStatus, Vec<u8>)> {
    let (mut read, write) = pipe()?;
    cmd.stdin(Stdio::null()).stdout(write).stderr(Stdio::null());
    let (child, exec_failed) = start(cmd)?;
    let refused = exec_error(exec_failed);
    let mut printed = Vec::new();
    // A read error leaves what was read; the status says whether it ran.
    let _ = read.read_to_end(&mut printed);
    let status = ended(&child)?;
    refused.map_or(Ok((status, printed)), Err)
}

/// Waits for `child`; how it ended.
fn ended(child: &mproc::Process) -> mproc::Result<ExitStatus> {
    child.join()?;
    child.exit_status().ok_or(mproc::Error::InvalidState("a joined child has no status"))
}

fn pipe() -> mproc::Result<(std::io::PipeReader, std::io::PipeWriter)> {
    std::io::pipe().map_err(|e| os_error("pipe", &e))
}

fn os_error(call: &'static str, e: &std::io::Error) -> mproc::Error {
    mproc::Error::Os(mproc::OsError { call, pid: None, errno: e.raw_os_error().unwrap_or(0) })
}

/// Forks a child that becomes `cmd`; with the read end of a pipe that
/// stays empty if it does (the write end is close-on-exec) and carries
/// `execvp`'s errno if it does not (the command's own stderr may be
/// `/dev/null` by then, so the reason comes back this way, as
/// `std::process::Command` brings it back).
fn start(mut cmd: Command) -> mproc::Result<(mproc::Process, std::io::PipeReader)> {
    let (exec_failed, mut tell) = pipe()?;
    #[cfg(target_os = "linux")]
    let bench = nix::unistd::getpid();
    let mut child = mproc::Process::new(move || {
        // Killed outright (SIGKILL, the OOM killer), the bench runs no
        // handler: the command is told by the kernel instead (`SIGTERM`
        // when the thread that forked it, here the bench's only caller of
        // this, ends), and is not started at all if that already happened.
        #[cfg(target_os = "linux")]
        if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
            || nix::unistd::getppid() != bench
        {
            return;
        }
        let err = cmd.exec();
        let _ = tell.write_all(&err.raw_os_error().unwrap_or(0).to_ne_bytes());
        // Ends the child with status 1.
        panic!("cannot run {:?}: {err}", cmd.get_program());
    });
    // The parent's copies of the write ends go with the closure, at start.
    child.start()?;
    Ok((child, exec_failed))
}

/// What the child reported through `start`'s pipe: `None` once it ran
/// its command (end of file at the exec).
fn exec_error(mut exec_failed: std::io::PipeReader) -> Option<mproc::Error> {
    let mut errno = [0u8; 4];
    match exec_failed.read_exact(&mut errno) {
        Ok(()) => Some(os_error("execvp", &std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))),
        Err(_) => None,
    }
}
