//! Replacing a child's program image.
//!
//! Two groups of raw calls live here, both used by the command runner (its
//! signal plumbing — the self-pipe handler, saved dispositions, masks —
//! lives in [`super::signal`], shared with the pool's zygote):
//!
//! - [`Argv`]: a command line as the NULL-terminated `char *argv[]` that
//!   `execvp` wants, built *before* `fork` so the child never allocates.
//! - [`spawn`]: `clone(CLONE_VM | CLONE_VFORK)` on Linux, as
//!   `posix_spawn` does (`fork` elsewhere), then in the child only
//!   async-signal-safe calls
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

/// Memory for the child of [`spawn`] to run on until it execs, on systems
/// where it shares the parent's memory (Linux): a private mapping whose
/// lowest [`GUARD`](Self::GUARD) bytes are inaccessible, so a child that
/// outgrew it would fault rather than write over the parent's memory (a
/// frame bigger than the guard could skip it; glibc's largest here is about
/// 4.5 KiB, and the stack is sized with room to spare). Kept by the caller
/// across jobs, so it is mapped and its pages touched once, not once per
/// job.
pub(crate) struct ChildStack {
    /// Start of the mapping (its guard page); null when nothing is mapped.
    base: *mut libc::c_void,
    /// Length of the mapping in bytes, guard page included.
    len: usize,
}

impl Default for ChildStack {
    fn default() -> Self {
        ChildStack { base: std::ptr::null_mut(), len: 0 }
    }
}

impl ChildStack {
    /// Bytes the child needs besides its argv: glibc's `execvp` keeps a
    /// PATH_MAX buffer on the stack, and its ENOEXEC fallback (running a
    /// script without `#!` through `/bin/sh`) a copy of the argv pointers.
    /// glibc's own `posix_spawn` reserves 32 KiB plus the argv for the same
    /// code; we reserve twice that, and twice the argv.
    const BASE: usize = 64 * 1024;

    /// The inaccessible bytes below the stack. They cost no memory, so
    /// there are many: a frame up to this size cannot jump over them.
    const GUARD: usize = 64 * 1024;

    /// One past the end of a stack big enough for an argv of `argc` words
    /// (stacks grow down on every architecture we build for), mapping a
    /// bigger one first when needed.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn top(&mut self, argc: usize) -> Result<*mut u8> {
        let page = super::page_size();
        let guard = Self::GUARD.next_multiple_of(page);
        let usable = Self::BASE.saturating_add(argc.saturating_mul(2 * std::mem::size_of::<usize>()));
        let len = usable.next_multiple_of(page).saturating_add(guard);
        if self.len < len {
            self.unmap();
            // SAFETY: a fresh anonymous private mapping; no existing memory
            // is named.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(os_error("mmap", None));
            }
            self.base = base;
            self.len = len;
            // SAFETY: the first `guard` bytes of the mapping just made.
            if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } == -1 {
                let err = os_error("mprotect", None);
                self.unmap();
                return Err(err);
            }
        }
        Ok(self.base.cast::<u8>().wrapping_add(self.len))
    }

    /// Gives the mapping back, if there is one.
    fn unmap(&mut self) {
        if !self.base.is_null() {
            // SAFETY: `base`/`len` are exactly a mapping made by `top`, and no
            // child runs on it (`spawn` returns only once its child has
            // exec'd or exited).
            unsafe { libc::munmap(self.base, self.len) };
            self.base = std::ptr::null_mut();
            self.len = 0;
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// Starts a child that runs `plan` in a new process group of its own (its
/// pgid is its pid), and returns the child's pid. Call
/// [`ensure_process_group`] before signalling that group.
///
/// On Linux the child is made the way glibc's `posix_spawn` makes it:
/// `clone` with `CLONE_VM | CLONE_VFORK`, so that it runs in the parent's
/// memory, on `stack`, and the parent waits until it has exec'd (or
/// exited). No memory is copied (the kernel still copies the descriptor
/// table and the signal dispositions), so the cost does not grow with the
/// parent's size; `fork` copies the page tables, and the parent then takes
/// a copy-on-write fault for each page it writes while the child lives.
/// (`posix_spawn` itself cannot restore the open-files limit, nor report a
/// failed exec the way a shell does.) Elsewhere it is a plain `fork`.
///
/// All signals are blocked across the `clone` or `fork`, so no handler of
/// ours can run in the child before it has reset them; the parent's mask is
/// restored right after.
///
/// Unlike [`super::fork`], this does not flush stdio first: the child only
/// execs or `_exit`s, so whatever sits in its copy of a stdio buffer is
/// discarded, never printed twice. (Callers flush once before their first
/// job, so earlier output comes first.)
pub(crate) fn spawn(plan: &ChildPlan<'_>, stack: &mut ChildStack) -> Result<i32> {
    let old_mask = SigMask::block_all()?;
    let started = start_child(plan, stack);
    old_mask.restore();
    let pid = started?;
    crate::timeline::forked(pid);
    Ok(pid)
}

/// The system call [`spawn`] makes, as its errors name it: `clone` on
/// Linux, `fork` elsewhere.
#[cfg(target_os = "linux")]
pub(crate) const START_CALL: &str = "clone";
/// The system call [`spawn`] makes, as its errors name it: `clone` on
/// Linux, `fork` elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) const START_CALL: &str = "fork";

/// The child of [`start_child`]'s `clone`: runs the plan at `plan`.
#[cfg(target_os = "linux")]
extern "C" fn clone_child(plan: *mut libc::c_void) -> c_int {
    // SAFETY: `plan` is the `&ChildPlan` `start_child` passed to clone; it
    // stays alive, because the parent is suspended (CLONE_VFORK) until this
    // child execs or exits. We are a freshly cloned child, as `exec_child`
    // requires, and it never returns.
    unsafe { exec_child(&*plan.cast::<ChildPlan<'_>>()) }
}

/// `clone(CLONE_VM | CLONE_VFORK)` running [`exec_child`] on `stack`;
/// returns the child's pid.
#[cfg(target_os = "linux")]
fn start_child(plan: &ChildPlan<'_>, stack: &mut ChildStack) -> Result<i32> {
    let top = stack.top(plan.argv.ptrs.len())?;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: the child runs `clone_child` on `stack`, which is ours alone
    // (`&mut`) and big enough (see `ChildStack::BASE`). It shares our memory
    // but not our descriptors, signal handlers or limits (no CLONE_FILES,
    // CLONE_SIGHAND or CLONE_THREAD), so what it changes there is its own.
    // It makes only async-signal-safe calls on memory prepared before the
    // clone, writes no memory of ours but its stack and errno (which we
    // read only when clone itself fails, when no child ran), takes no lock,
    // and ends in execve or _exit; until then this thread is suspended. All
    // signals stay blocked in this thread; the child unblocks them only
    // after it has set every handler back to SIG_DFL, so no handler of ours
    // runs in it. This is what glibc's posix_spawn does.
    let pid =
        unsafe { libc::clone(clone_child, top.cast(), flags, std::ptr::from_ref(plan).cast_mut().cast()) };
    if pid == -1 {
        let err = os_error(START_CALL, None);
        trace!("clone(CLONE_VM|CLONE_VFORK) = -1 ({err})");
        return Err(err);
    }
    trace!("clone(CLONE_VM|CLONE_VFORK) = {pid}");
    Ok(pid)
}

/// `fork`, with the child running [`exec_child`]; returns the child's pid.
#[cfg(not(target_os = "linux"))]
fn start_child(plan: &ChildPlan<'_>, _stack: &mut ChildStack) -> Result<i32> {
    // SAFETY: the child branch calls only `exec_child`, which makes
    // async-signal-safe calls on memory prepared before the fork and ends in
    // execvp or _exit; it never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child (see above).
        unsafe { exec_child(plan) }
    }
    if pid == -1 {
        let err = os_error(START_CALL, None);
        trace!("fork() = -1 ({err})");
        return Err(err);
    }
    trace!("fork() = {pid}");
    Ok(pid)
}

/// Makes sure the child `pid` of [`spawn`] leads its own process group
/// before the group is signalled: the child does it itself before `exec`,
/// but after a `fork` it may not have run yet (after Linux's `clone` it
/// has: `spawn` returns once it has exec'd). Called only when about to signal, to keep the
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
/// Must be called only in a child just made by [`start_child`] (a `fork`,
/// or a `clone` sharing the parent's memory while the parent waits).
/// Everything it calls is async-signal-safe, writes nothing but the stack
/// and errno, and it never returns, so it is sound even if the parent had
/// other threads holding locks. (`execvp` is missing from
/// older editions of POSIX's async-signal-safe list for its PATH search;
/// glibc and musl do that search in stack buffers, without malloc or locks;
/// `setrlimit`, not on the list either, is a bare system call in both.)
unsafe fn exec_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY (whole function): each call below takes integers, pointers to
    // this frame's locals, or pointers into memory the parent prepared
    // before the fork or clone (`plan`, `argv`), which stays valid (a copy
    // after fork; the parent's own memory, not freed while it waits, after
    // the clone); none allocates or locks. `sigaction` fills `old` whenever
    // it returns 0.
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
        // In the parent's memory (Linux), no handler may run here, also one
        // that another thread installed after `reset_signals` was made:
        // check every signal, as glibc's posix_spawn does. (This child's
        // table of handlers is its own copy, made by the clone.)
        #[cfg(target_os = "linux")]
        for sig in 1..=libc::SIGRTMAX() {
            let mut old = MaybeUninit::<libc::sigaction>::uninit();
            if libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) == 0 {
                let handler = old.assume_init_ref().sa_sigaction;
                if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
        }
        // A terminal stop signal (Ctrl-Z) sent to the parent's group before
        // the `setpgid` above is pending here, blocked. Delivered, it would
        // stop the job in a group of its own, which `fg` never continues
        // (and on Linux the parent, waiting for the exec, with it): discard
        // it, by ignoring the signal for a moment.
        let mut ignore: libc::sigaction = std::mem::zeroed();
        ignore.sa_sigaction = libc::SIG_IGN;
        for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            let mut old = MaybeUninit::<libc::sigaction>::uninit();
            if libc::sigaction(sig, &ignore, old.as_mut_ptr()) == 0 {
                libc::sigaction(sig, old.as_ptr(), std::ptr::null_mut());
            }
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
