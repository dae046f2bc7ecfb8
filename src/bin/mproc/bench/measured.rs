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
//! (`std::process::Command` children could not be reached by that handler;
//! and a `sigwait` thread forwarding the signals would have needed them
//! blocked, a mask that `Command`'s children inherit: a Python child then
//! could not be stopped by either signal.)

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// How a command ended: its exit code, or minus the signal that killed it
/// (as [`mproc::Process::join`] says).
pub struct Ended {
    pub code: i32,
}

impl Ended {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            code if code < 0 => write!(f, "killed by signal {}", -code),
            code => write!(f, "exit status {code}"),
        }
    }
}

/// Runs `cmd` as a child the exit handler knows, and waits for it. Its
/// stdio is what `cmd` says (inherited where it says nothing).
pub fn status(cmd: Command) -> mproc::Result<Ended> {
    let mut child = mproc::Process::new(move || exec(cmd));
    child.start()?;
    Ok(Ended { code: child.join()? })
}

/// Like [`status`], with stdin empty, stdout captured and stderr
/// discarded: the command's status and what it printed.
pub fn output(mut cmd: Command) -> mproc::Result<(Ended, Vec<u8>)> {
    let (mut read, write) = std::io::pipe().map_err(|e| {
        mproc::Error::Os(mproc::OsError { call: "pipe", pid: None, errno: e.raw_os_error().unwrap_or(0) })
    })?;
    cmd.stdin(Stdio::null()).stdout(write).stderr(Stdio::null());
    let mut child = mproc::Process::new(move || exec(cmd));
    // The parent's copy of the write end goes with the closure, at start.
    child.start()?;
    let mut printed = Vec::new();
    // A read error leaves what was read; the status says whether it ran.
    let _ = read.read_to_end(&mut printed);
    Ok((Ended { code: child.join()? }, printed))
}

/// In the child: becomes `cmd`. Returns only if that fails, by a panic,
/// which ends the child with status 1 and the reason on its stderr.
fn exec(mut cmd: Command) {
    let err = cmd.exec();
    panic!("cannot run {:?}: {err}", cmd.get_program());
}
