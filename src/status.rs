//! Wait statuses, decoded once.
//!
//! The kernel packs a child's end into one `int`; the `W*` macros unpack it.
//! [`ExitStatus`] is that unpacking done once, in the crate's private `sys::waitpid`, so
//! no other code in the crate looks at raw status bits.

use std::fmt;

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// `WIFEXITED`: it called `_exit(code)` (or returned from `main`).
    Exited(i32),
    /// `WIFSIGNALED`: a signal ended it; `WCOREDUMP` says whether a core was written.
    Signaled {
        /// `WTERMSIG`: the signal number.
        signal: i32,
        /// `WCOREDUMP`: whether the kernel wrote a core file.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Decodes a raw status from `waitpid`. Stopped/continued statuses are not
    /// asked for (no `WUNTRACED`), so they never reach here.
    pub(crate) fn from_raw(raw: libc::c_int) -> ExitStatus {
        if libc::WIFSIGNALED(raw) {
            ExitStatus::Signaled { signal: libc::WTERMSIG(raw), core_dumped: libc::WCOREDUMP(raw) }
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(raw))
        }
    }

    /// Python's `Process.exitcode`: the exit code, or `-signal` for a signal.
    pub fn exitcode(&self) -> i32 {
        match *self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled { signal, .. } => -signal,
        }
    }

    /// Whether the kernel wrote a core file (`WCOREDUMP`).
    pub fn core_dumped(&self) -> bool {
        matches!(self, ExitStatus::Signaled { core_dumped: true, .. })
    }

    /// True for `Exited(0)`.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }

    /// The status a shell would report: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exited {code}"),
            ExitStatus::Signaled { signal, core_dumped } => write_killed(f, signal, core_dumped),
        }
    }
}

/// `killed by signal 11 (Segmentation fault), core dumped`: the one wording
/// of a death by signal, shared by [`ExitStatus`] and [`crate::Error`].
pub(crate) fn write_killed(f: &mut fmt::Formatter<'_>, signal: i32, core_dumped: bool) -> fmt::Result {
    write!(f, "killed by signal {signal} ({})", signal_name(signal))?;
    if core_dumped {
        f.write_str(", core dumped")?;
    }
    Ok(())
}

/// The description a shell prints for a signal ("Segmentation fault").
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGILL => "Illegal instruction",
        libc::SIGTRAP => "Trace/breakpoint trap",
        libc::SIGABRT => "Aborted",
        libc::SIGBUS => "Bus error",
        libc::SIGFPE => "Floating point exception",
        libc::SIGKILL => "Killed",
        libc::SIGUSR1 => "User defined signal 1",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGUSR2 => "User defined signal 2",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGALRM => "Alarm clock",
        libc::SIGTERM => "Terminated",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "File size limit exceeded",
        _ => "Unknown signal",
    }
}

/// The C name of a signal ("SIGSEGV"), as used in `--trace` lines.
pub fn signal_abbrev(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "SIG?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exitcode_follows_python() {
        assert_eq!(ExitStatus::Exited(3).exitcode(), 3);
        assert_eq!(ExitStatus::Signaled { signal: 9, core_dumped: false }.exitcode(), -9);
        assert_eq!(ExitStatus::Signaled { signal: 15, core_dumped: false }.shell_code(), 143);
    }

    #[test]
    fn display_reads_like_a_shell() {
        let s = ExitStatus::Signaled { signal: libc::SIGSEGV, core_dumped: true };
        assert_eq!(s.to_string(), "killed by signal 11 (Segmentation fault), core dumped");
        assert_eq!(ExitStatus::Exited(0).to_string(), "exited 0");
    }
}
