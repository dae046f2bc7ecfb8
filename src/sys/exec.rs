//! Replacing a child's program image.
//!
//! Two groups of raw calls live here, both used by the command runner (its
//! signal plumbing — the self-pipe handler, saved dispositions, masks —
//! lives in [`super::signal`], shared with the pool's zygote):
//!
//! - [`Argv`]: a command line as the NULL-terminated `char *argv[]` that
//!   `execvp` wants, built *before* `fork` so the child never allocates.
//! - [`spawn`]: `fork`, then in the child only async-signal-safe calls
//!   (`setpgid`, `dup2`, `fcntl`, `setrlimit`, `sigaction`, `sigprocmask`,
//!   `execvp`, `write`, `_exit`) — safe even when the parent has other threads.

use std::ffi::{c_char, c_int};
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use super::signal::SigMask;
use super::{os_error, retry, trace};
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// argv

/// A command line ready for `execvp`: every word, NUL-terminated, in one
/// buffer, and the NULL-terminated array of pointers into it.
///
/// Invariant: `bytes` is never changed after `new`, so the pointers in
/// `ptrs` (into `bytes`'s heap buffer, which moving `Argv` does not move)
/// stay valid for as long as `self` lives; `ptrs` ends with a null.
pub(crate) struct Argv {
    bytes: Vec<u8>,
    ptrs: Vec<*const c_char>,
    program_len: usize,
}

impl Argv {
    /// Builds the argv; fails when it is empty or a word holds a NUL byte
    /// (a C string cannot carry one).
    pub(crate) fn new(words: &[Vec<u8>]) -> Result<Argv> {
        if words.is_empty() {
            return Err(Error::InvalidArgument("empty command".into()));
        }
        if let Some(bad) = words.iter().find(|w| w.contains(&0)) {
            return Err(Error::InvalidArgument(format!(
                "argument contains a NUL byte: {:?}",
                String::from_utf8_lossy(bad)
            )));
        }
        let mut bytes = Vec::with_capacity(words.iter().map(|w| w.len() + 1).sum());
        for word in words {
            bytes.extend_from_slice(word);
            bytes.push(0);
        }
        let mut ptrs = Vec::with_capacity(words.len() + 1);
        let mut offset = 0;
        for word in words {
            ptrs.push(bytes.as_ptr().wrapping_add(offset).cast::<c_char>());
            offset += word.len() + 1;
        }
        ptrs.push(std::ptr::null());
        Ok(Argv { bytes, ptrs, program_len: words[0].len() })
    }

    /// The program name, `argv[0]`.
    pub(crate) fn program(&self) -> &[u8] {
        &self.bytes[..self.program_len]
    }
}

/// Everything the child does between `fork` and `exec`, decided in the parent.
pub(crate) struct ChildPlan<'a> {
    /// The command to run.
    pub argv: &'a Argv,
    /// Made the child's fd 0 when set; otherwise fd 0 is inherited.
    pub stdin: Option<RawFd>,
    /// Made the child's fd 1.
    pub stdout: RawFd,
    /// Made the child's fd 2.
    pub stderr: RawFd,
    /// Signals to set back to `SIG_DFL` (those with a handler in the parent,
    /// and `SIGPIPE` when the parent ignores it, as Rust programs do).
    pub reset_signals: &'a [c_int],
    /// The open-files limit to give back to the child, when the parent
    /// raised its own (the child gets what the parent was started with).
    pub file_limit: Option<libc::rlimit>,
}

/// Exit status of a child whose `execvp` failed because there is no such
/// command, as a shell reports it.
pub(crate) const EXEC_FAILED: c_int = 127;
/// Exit status of a child whose command exists but could not be executed
/// (permission denied, not an executable, ...), as a shell reports it.
pub(crate) const EXEC_REFUSED: c_int = 126;

/// Forks a child that runs `plan` in a new process group of its own (its
/// pgid is its pid), and returns the child's pid. Call
/// [`ensure_process_group`] before signalling that group.
///
/// All signals are blocked across the `fork`, so no handler of ours can run
/// in the child before it has reset them; the parent's mask is restored
/// right after.
///
/// Unlike [`super::fork`], this does not flush stdio first: the child only
/// execs or `_exit`s, so whatever sits in its copy of a stdio buffer is
/// discarded, never printed twice. (Callers flush once before their first
/// job, so earlier output comes first.) Skipping the flush also spares the
/// parent writes to the stdio locks — each page the parent writes after a
/// fork costs a copy-on-write fault, once per job.
pub(crate) fn spawn(plan: &ChildPlan<'_>) -> Result<i32> {
    let old_mask = SigMask::block_all()?;
    // SAFETY: the child branch calls only `exec_child`, which makes
    // async-signal-safe calls on memory prepared before the fork and ends in
    // execvp or _exit; it never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child (see above).
        unsafe { exec_child(plan) }
    }
    let err = (pid == -1).then(|| os_error("fork", None));
    old_mask.restore();
    match err {
        Some(err) => {
            trace!("fork() = -1 ({err})");
            Err(err)
        }
        None => {
            trace!("fork() = {pid}");
            crate::timeline::forked(pid);
            Ok(pid)
        }
    }
}

/// Makes sure the child `pid` of [`spawn`] leads its own process group
/// before the group is signalled: the child does it itself before `exec`,
/// but may not have run yet. Called only when about to signal, to keep the
/// syscall off the path of every job. EACCES (the child has exec'd, so it
/// made the group) and ESRCH (it is gone) leave nothing to do.
pub(crate) fn ensure_process_group(pid: i32) {
    // SAFETY: integers only.
    if unsafe { libc::setpgid(pid, pid) } == -1 {
        let errno = super::last_errno();
        if errno != libc::EACCES && errno != libc::ESRCH {
            trace!("setpgid({pid}, {pid}) = -1 (errno {errno})");
        }
    }
}

/// The child's side of [`spawn`].
///
/// # Safety
/// Must be called only in a child just returned from `fork`. Everything it
/// calls is async-signal-safe, and it never returns, so it is sound even if
/// the parent had other threads holding locks. (`execvp` is missing from
/// older editions of POSIX's async-signal-safe list for its PATH search;
/// glibc and musl do that search in stack buffers, without malloc or locks;
/// `setrlimit`, not on the list either, is a bare system call in both.)
unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY (whole function): each call below takes integers or pointers
    // into memory the parent prepared before fork (`plan`, `argv`), which the
    // child's copy of the address space keeps valid; none allocates or locks.
    unsafe {
        libc::setpgid(0, 0);
        let wired =
            plan.stdin.is_none_or(|fd| move_fd(fd, 0)) && move_fd(plan.stdout, 1) && move_fd(plan.stderr, 2);
        if !wired {
            write_raw(2, b"mproc: cannot set up the job's standard streams\n");
            libc::_exit(EXEC_FAILED);
        }
        if let Some(limit) = &plan.file_limit {
            // Lowering the soft limit cannot fail; were it to, the job would
            // only see a higher limit.
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for &sig in plan.reset_signals {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());

        libc::execvp(plan.argv.ptrs[0], plan.argv.ptrs.as_ptr());

        // Still here: execvp failed. Say so the way a shell does:
        // `mproc: CMD: No such file or directory`.
        let errno = super::last_errno();
        write_raw(2, b"mproc: ");
        write_raw(2, plan.argv.program());
        write_raw(2, b": ");
        write_raw(2, exec_error_text(errno).as_bytes());
        write_raw(2, b"\n");
        libc::_exit(if errno == libc::ENOENT { EXEC_FAILED } else { EXEC_REFUSED })
    }
}

/// Makes `target` a copy of `fd`, without close-on-exec. Async-signal-safe.
///
/// # Safety
/// Only integers are passed; safe in a forked child.
unsafe fn move_fd(fd: RawFd, target: RawFd) -> bool {
    if fd == target {
        // dup2 onto itself would keep FD_CLOEXEC, and exec would close it.
        // SAFETY: integers only.
        return unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != -1;
    }
    // dup2 clears FD_CLOEXEC on the new fd. The wrapper only retries EINTR
    // and builds an allocation-free error: async-signal-safe.
    super::dup2(fd, target).is_ok()
}

/// `write(2)` until done or an error; async-signal-safe, for the child.
fn write_raw(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n == -1 && super::last_errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// The text a shell prints for an `execvp` failure. A fixed table, because
/// `strerror` may consult the locale and is not async-signal-safe.
fn exec_error_text(errno: c_int) -> &'static str {
    match errno {
        libc::ENOENT => "No such file or directory",
        libc::EACCES => "Permission denied",
        libc::ENOEXEC => "Exec format error",
        libc::ENOTDIR => "Not a directory",
        libc::E2BIG => "Argument list too long",
        libc::ENOMEM => "Cannot allocate memory",
        libc::ELOOP => "Too many levels of symbolic links",
        libc::ENAMETOOLONG => "File name too long",
        libc::ETXTBSY => "Text file busy",
        libc::EISDIR => "Is a directory",
        libc::EPERM => "Operation not permitted",
        libc::EIO => "Input/output error",
        libc::EMFILE => "Too many open files",
        libc::ENFILE => "Too many open files in system",
        _ => "Cannot execute",
    }
}

/// Makes sure fds 0, 1 and 2 are open (on `/dev/null` if they were closed),
/// so that no pipe we create later lands on them and gets clobbered when a
/// child wires up its standard streams.
pub(crate) fn ensure_standard_fds() -> Result<()> {
    for fd in 0..=2 {
        // SAFETY: F_GETFD on any integer is harmless; EBADF means closed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 && super::last_errno() == libc::EBADF {
            // open returns the lowest free descriptor, which is `fd`.
            // SAFETY: the path is a C string literal.
            let got = retry("open", None, || unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) })?;
            trace!("open(/dev/null) = {got}");
        }
    }
    Ok(())
}

pub(crate) use super::poll_in_place;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_null_terminated_and_rejects_nul() {
        let argv = Argv::new(&[b"echo".to_vec(), b"hi".to_vec(), Vec::new()]).unwrap();
        assert_eq!(argv.ptrs.len(), 4);
        assert!(argv.ptrs[3].is_null());
        // SAFETY: the pointers are NUL-terminated strings inside `argv`.
        let words: Vec<&[u8]> =
            argv.ptrs[..3].iter().map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes()).collect();
        assert_eq!(words, [&b"echo"[..], b"hi", b""]);
        assert_eq!(argv.program(), b"echo");
        assert!(Argv::new(&[b"a\0b".to_vec()]).is_err());
        assert!(Argv::new(&[]).is_err());
    }

    #[test]
    fn exec_errors_read_like_a_shell() {
        assert_eq!(exec_error_text(libc::ENOENT), "No such file or directory");
        assert_eq!(exec_error_text(libc::EACCES), "Permission denied");
    }
}
