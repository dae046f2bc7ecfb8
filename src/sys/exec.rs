//! Replacing a child's program image, and the signal plumbing around it.
//!
//! Three groups of raw calls live here, all used by the command runner:
//!
//! - [`Argv`]: a command line as the NULL-terminated `char *argv[]` that
//!   `execvp` wants, built *before* `fork` so the child never allocates.
//! - [`spawn`]: `fork`, then in the child only async-signal-safe calls
//!   (`setpgid`, `dup2`, `fcntl`, `sigaction`, `sigprocmask`, `execvp`,
//!   `write`, `_exit`) — safe even when the parent has other threads.
//! - Signal handling: a handler that records the signal and writes one byte
//!   to a self-pipe (so a `poll` loop wakes up), saving and restoring the
//!   previous dispositions, and blocking signals around `fork`.

use std::ffi::{c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

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
}

/// Exit status of a child whose `execvp` failed, as a shell reports a
/// command it could not run.
pub(crate) const EXEC_FAILED: c_int = 127;

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
/// glibc and musl do that search in stack buffers, without malloc or locks.)
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
        libc::_exit(EXEC_FAILED)
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

// ---------------------------------------------------------------------------
// signals

/// Write end of the self-pipe the handler wakes the poll loop with; -1 when
/// none is installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// One bit per signal number below 32 (SIGCHLD excepted) that arrived
/// since the last [`take_pending_signals`].
static PENDING: AtomicU32 = AtomicU32::new(0);

/// The handler: records the signal, then writes one byte to the self-pipe.
/// Only async-signal-safe operations: lock-free atomics and `write(2)`.
extern "C" fn on_signal(sig: c_int) {
    let saved = errno::errno();
    // SIGCHLD needs no record (the runner reaps after every wake-up), and
    // not writing one spares a copy-on-write fault per job.
    if (0..32).contains(&sig) && sig != libc::SIGCHLD {
        // SeqCst pairs with the swap in take_pending_signals: the bit is
        // visible before the wake-up byte can be read.
        PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: one byte from a valid local; the fd is non-blocking, so a
        // full pipe (a wake-up is already pending) returns EAGAIN at once.
        unsafe { libc::write(fd, (&byte as *const u8).cast::<c_void>(), 1) };
    }
    // Restore errno only if the write changed it: an unneeded write to the
    // thread's TLS page is one more copy-on-write fault after each fork.
    if errno::errno() != saved {
        errno::set_errno(saved);
    }
}

/// Tells the handler which fd to write its wake-up byte to (`-1`: none).
pub(crate) fn set_wake_fd(fd: RawFd) {
    WAKE_FD.store(fd, Ordering::SeqCst);
}

/// Returns the signals received since the last call (bit `n` = signal `n`)
/// and clears them.
pub(crate) fn take_pending_signals() -> u32 {
    // Load first: swapping a 0 for a 0 still writes the page.
    match PENDING.load(Ordering::SeqCst) {
        0 => 0,
        _ => PENDING.swap(0, Ordering::SeqCst),
    }
}

/// A signal's previous disposition, to put back with [`restore_handler`].
pub(crate) struct SavedAction {
    signal: c_int,
    action: libc::sigaction,
}

fn query_action(signal: c_int) -> Result<libc::sigaction> {
    let mut old = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only queries; `old` is writable.
    retry("sigaction", None, || unsafe { libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) })?;
    // SAFETY: sigaction succeeded, so it filled `old`.
    Ok(unsafe { old.assume_init() })
}

/// Whether `signal` is currently ignored (`SIG_IGN`), e.g. SIGINT in a job
/// started with `&` by a non-interactive shell, or SIGHUP under `nohup`.
pub(crate) fn is_ignored(signal: c_int) -> Result<bool> {
    Ok(query_action(signal)?.sa_sigaction == libc::SIG_IGN)
}

/// Installs [`on_signal`] for `signal` (with `SA_RESTART`, and
/// `SA_NOCLDSTOP` for SIGCHLD) and returns the previous disposition.
pub(crate) fn install_handler(signal: c_int) -> Result<SavedAction> {
    // SAFETY: sigaction is plain old data; all-zero is a valid empty value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART | if signal == libc::SIGCHLD { libc::SA_NOCLDSTOP } else { 0 };
    // SAFETY: `sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let mut old = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: `action` is initialised; `old` is writable.
    retry("sigaction", None, || unsafe { libc::sigaction(signal, &action, old.as_mut_ptr()) })?;
    trace!("sigaction({}, handler)", crate::status::signal_abbrev(signal));
    // SAFETY: sigaction succeeded, so it filled `old`.
    Ok(SavedAction { signal, action: unsafe { old.assume_init() } })
}

/// Puts back a disposition saved by [`install_handler`].
pub(crate) fn restore_handler(saved: &SavedAction) -> Result<()> {
    // SAFETY: `saved.action` came from the kernel.
    retry("sigaction", None, || unsafe { libc::sigaction(saved.signal, &saved.action, std::ptr::null_mut()) })
        .map(drop)
}

/// The signals a child must set back to `SIG_DFL` before `exec`: every
/// signal that has a handler in this process (a handler that ran in the
/// child between fork and exec would act on the parent's behalf), plus
/// `SIGPIPE` when it is ignored (Rust's runtime ignores it; a job expects
/// the default, as `std::process::Command` gives it).
pub(crate) fn signals_to_reset() -> Vec<c_int> {
    #[cfg(target_os = "linux")]
    let last = libc::SIGRTMAX();
    #[cfg(not(target_os = "linux"))]
    let last = 31;
    (1..=last)
        .filter(|&sig| match query_action(sig) {
            Ok(a) => {
                (a.sa_sigaction != libc::SIG_DFL && a.sa_sigaction != libc::SIG_IGN)
                    || (sig == libc::SIGPIPE && a.sa_sigaction == libc::SIG_IGN)
            }
            // Signals the C library reserves for itself (EINVAL): skip.
            Err(_) => false,
        })
        .collect()
}

/// A thread's signal mask, saved to be restored.
pub(crate) struct SigMask(libc::sigset_t);

impl SigMask {
    fn change(how: c_int, signals: Option<&[c_int]>) -> Result<SigMask> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset/sigemptyset/sigaddset initialise `set`;
        // pthread_sigmask reads `set` and fills `old`.
        unsafe {
            match signals {
                None => {
                    libc::sigfillset(set.as_mut_ptr());
                }
                Some(list) => {
                    libc::sigemptyset(set.as_mut_ptr());
                    for &sig in list {
                        libc::sigaddset(set.as_mut_ptr(), sig);
                    }
                }
            }
            let rc = libc::pthread_sigmask(how, set.as_ptr(), old.as_mut_ptr());
            if rc != 0 {
                errno::set_errno(errno::Errno(rc));
                return Err(os_error("pthread_sigmask", None));
            }
            Ok(SigMask(old.assume_init()))
        }
    }

    /// Blocks every signal in the calling thread; returns the old mask.
    pub(crate) fn block_all() -> Result<SigMask> {
        SigMask::change(libc::SIG_SETMASK, None)
    }

    /// Unblocks `signals` in the calling thread; returns the old mask.
    pub(crate) fn unblock(signals: &[c_int]) -> Result<SigMask> {
        SigMask::change(libc::SIG_UNBLOCK, Some(signals))
    }

    /// Makes this the calling thread's mask again.
    pub(crate) fn restore(&self) {
        // SAFETY: `self.0` came from pthread_sigmask. Restoring a mask we
        // read cannot fail (EINVAL is only for a bad `how`).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

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
