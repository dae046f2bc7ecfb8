//! The POSIX layer: every raw call mproc makes lives below this module.
//!
//! Each wrapper does three things and nothing else: retries `EINTR`, turns a
//! `-1` into an [`OsError`] that names the call (and the pid, if any), and
//! reports itself to `--trace`. File descriptors are [`OwnedFd`] from the
//! moment they exist, so a forgotten close is impossible.
//!
//! Submodules group the calls that belong to one later concept:
//! [`shm`] (shared mappings) and [`exec`] (replacing a child's image);
//! [`trace`](mod@trace) prints the `--trace` lines.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, OsError, Result};
use crate::status::{signal_abbrev, ExitStatus};

pub(crate) mod bell;
pub(crate) mod exec;
pub(crate) mod registry;
pub(crate) mod shm;
pub(crate) mod signal;
pub(crate) mod trace;

pub use trace::{set_trace, set_trace_categories, trace_categories, tracing, TraceCategories};
pub(crate) use trace::{trace, trace_line};

// ---------------------------------------------------------------------------
// errors, EINTR

/// The calling thread's `errno`.
pub(crate) fn last_errno() -> i32 {
    errno::errno().0
}

/// Makes the `Error` for a call that just failed, from `errno`.
pub(crate) fn os_error(call: &'static str, pid: Option<i32>) -> Error {
    Error::Os(OsError { call, pid, errno: last_errno() })
}

/// Runs `f` until it returns something other than `-1`/`EINTR`; turns the
/// remaining `-1` into an error naming `call`. The one place EINTR is handled.
fn retry<T: Copy + PartialEq + From<i8>>(
    call: &'static str,
    pid: Option<i32>,
    mut f: impl FnMut() -> T,
) -> Result<T> {
    loop {
        let ret = f();
        if ret != T::from(-1) {
            return Ok(ret);
        }
        if last_errno() != libc::EINTR {
            return Err(os_error(call, pid));
        }
    }
}

// ---------------------------------------------------------------------------
// processes

/// What `fork` returned, on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Flushes Rust's stdout and C's (a child calls this before `_exit`, so
/// what it printed is not lost). Rust's stderr has no buffer, nor has C's,
/// so they are left alone: taking Rust's stderr lock would gain nothing and
/// could wait on a lock another thread held at `fork`.
///
/// In a child of [`fork`] this never waits on a lock another thread held:
/// `fork` held Rust's stdout lock itself across the call (the child's copy
/// is free), and glibc resets every C stdio lock in a child.
// Inlined (as are the helpers it calls, and exit_now): see `fork`.
#[inline(always)]
pub(crate) fn flush_stdio() {
    // An error is dropped only when there is one: a fresh child would fault
    // in the drop glue's code for the `Ok` too.
    if let Err(e) = std::io::stdout().flush() {
        drop(e);
    }
    flush_c_stdout();
}

/// C's `stdout` stream: what `printf` writes to (a macro over
/// `__stdoutp` on the BSDs and macOS).
mod c_stdio {
    #[cfg(not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")))]
    extern "C" {
        #[link_name = "stdout"]
        pub(super) static STDOUT: *mut libc::FILE;
    }
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    extern "C" {
        #[link_name = "__stdoutp"]
        pub(super) static STDOUT: *mut libc::FILE;
    }
    #[cfg(all(target_os = "linux", target_env = "musl"))]
    extern "C" {
        /// stdio_ext(3): bytes waiting in the stream's output buffer.
        pub(super) fn __fpending(stream: *mut libc::FILE) -> libc::size_t;
    }

    /// The head of glibc's `struct _IO_FILE`, as `<bits/types/struct_FILE.h>`
    /// publishes it, up to `_mode`. A frozen ABI: glibc's own
    /// `putc_unlocked` macro compiles `_IO_write_ptr` into programs.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[repr(C)]
    pub(super) struct GlibcFile {
        flags: libc::c_int,
        read: [*mut libc::c_char; 3],
        pub(super) write_base: *mut libc::c_char,
        pub(super) write_ptr: *mut libc::c_char,
        rest: [*mut libc::c_char; 8],
        fileno: libc::c_int,
        flags2: libc::c_int,
        old_offset: libc::off_t,
        cur_column: libc::c_ushort,
        vtable_offset: libc::c_schar,
        shortbuf: [libc::c_char; 1],
        lock: *mut libc::c_void,
        offset: libc::off64_t,
        codecvt: *mut libc::c_void,
        wide_data: *mut libc::c_void,
        freeres_list: *mut libc::c_void,
        freeres_buf: *mut libc::c_void,
        pad5: libc::size_t,
        /// Above 0: wide-oriented, its bytes are counted elsewhere.
        pub(super) mode: libc::c_int,
    }

    // The offsets `offsetof` gives in C on every 64-bit glibc target.
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    const _: () = assert!(
        std::mem::offset_of!(GlibcFile, write_base) == 32
            && std::mem::offset_of!(GlibcFile, write_ptr) == 40
            && std::mem::offset_of!(GlibcFile, mode) == 192
    );
}

/// Whether C's stdout may hold bytes not yet written: what `__fpending`
/// says, read without a call (glibc), or asked (musl); elsewhere
/// always true.
#[inline(always)]
fn c_stdout_pending(stream: *mut libc::FILE) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `stream` is glibc's stdout, a live `struct _IO_FILE`
        // (GlibcFile is its published head). Two pointers and a word are
        // read, no lock taken: the same race as __fpending's, where a print
        // on another thread makes the answer stale, as it would a flush.
        unsafe {
            let file = stream.cast::<c_stdio::GlibcFile>();
            std::ptr::read_volatile(&raw const (*file).mode) > 0
                || std::ptr::read_volatile(&raw const (*file).write_ptr)
                    != std::ptr::read_volatile(&raw const (*file).write_base)
        }
    }
    #[cfg(all(target_os = "linux", target_env = "musl"))]
    {
        // SAFETY: `stream` is C's stdout; __fpending only reads it.
        unsafe { c_stdio::__fpending(stream) != 0 }
    }
    #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
    {
        let _ = stream;
        true
    }
}

/// Flushes C's stdout if it holds anything. Only stdout: the other C
/// streams a child inherits are flushed by nobody in the child (`_exit`
/// does not), so their buffered bytes are never written twice either.
/// On Linux an empty buffer costs a few loads ([`c_stdout_pending`]):
/// `fflush` would take the stream's lock, a write that is one more
/// copy-on-write page fault in a fresh child (and in the parent after it);
/// on glibc not even a call, whose code would be one more page for a fresh
/// child to fault in.
#[inline(always)]
fn flush_c_stdout() {
    // SAFETY: reading the C library's `stdout` pointer, which it sets up
    // before `main` and never frees.
    let stream = unsafe { c_stdio::STDOUT };
    if c_stdout_pending(stream) {
        // SAFETY: fflush on C's own stdout stream.
        unsafe { libc::fflush(stream) };
    }
}

/// `fork(2)`, with stdio flushed and Rust's stdio locks held across it.
///
/// `fork` copies only the calling thread. Had another thread been inside a
/// `println!` at that instant, the child's copy of stdout's lock would
/// stay locked forever, and the child's first print — or mproc's own
/// flush before `_exit` — would hang. So the calling thread takes stdout's
/// lock first (waiting for any print in progress to finish), flushes it,
/// forks, and releases it on both sides. Why that is sound in the child:
/// the lock is reentrant and records its owner by thread id; the child's
/// only thread is the copy of the forking thread, with the same thread id,
/// so it owns it and its release unlocks it. Only stdout's: stderr has no
/// buffer to flush, and holding both would deadlock against a thread that
/// holds stderr's lock while it prints to stdout (the other order, stdout
/// held while printing to stderr, is the common one, so no order of the two
/// is safe). mproc itself never takes stderr's lock in a child (`--trace`
/// writes with one `write(2)`).
/// Holding them also means no other thread can buffer text between the
/// flush and the fork: the child's buffers start empty, and nothing the
/// parent printed is printed twice. C's stdout is flushed first (when it
/// holds anything: see [`flush_stdio`]); glibc's `fork` takes and resets
/// its own stdio locks.
///
/// # Safety
/// In the child, only the calling thread exists. If the parent had other
/// threads, any other lock they held (a user's `Mutex`) stays locked
/// forever in the child; the child must not wait on such locks and must end
/// with [`exit_now`], never by returning into the parent's code.
// Inlined into each caller: a child runs the rest of it, and every
// distinct 64 KiB of code a fresh child runs is one more page fault there
// (file-backed code is not copied by fork; fault-around maps 64 KiB).
#[inline(always)]
pub(crate) unsafe fn fork() -> Result<Forked> {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.flush();
    flush_c_stdout();
    // SAFETY: the caller upholds the post-fork rules above.
    let pid = unsafe { libc::fork() };
    drop(stdout);
    match pid {
        -1 => {
            let err = os_error("fork", None);
            trace!("fork() = -1 ({err})");
            Err(err)
        }
        0 => {
            close_parent_only();
            Ok(Forked::Child)
        }
        child => {
            trace!("fork() = {child}");
            crate::timeline::forked(child);
            Ok(Forked::Parent(child))
        }
    }
}

/// Descriptors that only this process may hold: the read end of a child's
/// sentinel, the parent's end of a pool's pipes. A child forked later would
/// otherwise inherit them all — a thousand children, a thousand copies of
/// each other's sentinels — and a pipe whose write end a sibling holds never
/// reads end of file. -1 marks a free entry. Lock-free, because the child
/// reads it right after `fork`, when a lock another thread held would stay
/// held. Registration is best effort: with the table full, a descriptor is
/// merely inherited, as any other would be.
static PARENT_ONLY: [std::sync::atomic::AtomicI32; 1024] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; 1024];
/// One past the highest entry of PARENT_ONLY ever claimed: the child scans
/// only that far (every fork pays for the scan, and most processes hold a
/// handful of such descriptors).
static PARENT_ONLY_END: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An owned descriptor that `fork` closes in every child (see
/// [`PARENT_ONLY`]). Only the process that made it closes it: a copy that
/// reaches a child (a `Process` moved into another child's closure, say) is
/// dropped there without a `close`, since the number may by then name one
/// of the child's own files.
#[derive(Debug)]
pub(crate) struct ParentOnlyFd {
    fd: std::mem::ManuallyDrop<OwnedFd>,
    slot: Option<usize>,
    owner: i32,
}

impl ParentOnlyFd {
    pub(crate) fn new(fd: OwnedFd) -> ParentOnlyFd {
        let raw = fd.as_raw_fd();
        // AcqRel: claim a free entry exactly once; a fork on this thread
        // afterwards sees it.
        let slot = (0..PARENT_ONLY.len())
            .find(|&i| PARENT_ONLY[i].compare_exchange(-1, raw, Ordering::AcqRel, Ordering::Acquire).is_ok());
        if let Some(i) = slot {
            // AcqRel: ordered after the claim above, so a fork that sees the
            // new end also sees the entry.
            PARENT_ONLY_END.fetch_max(i + 1, Ordering::AcqRel);
        }
        ParentOnlyFd { fd: std::mem::ManuallyDrop::new(fd), slot, owner: pid_if_cached_else_getpid() }
    }
}

impl std::os::fd::AsFd for ParentOnlyFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ParentOnlyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for ParentOnlyFd {
    fn drop(&mut self) {
        if pid_if_cached_else_getpid() != self.owner {
            // In a child: `fork` closed (or, unregistered, left) the number;
            // either way it is not this copy's to close.
            return;
        }
        // Unregister before the OwnedFd closes the number, so a fork in
        // between never closes a descriptor that reused it.
        if let Some(slot) = self.slot {
            PARENT_ONLY[slot].store(-1, Ordering::Release);
        }
        // SAFETY: dropped exactly once, here, and `self.fd` is not used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.fd) };
    }
}

/// In a fresh child: closes every parent-only descriptor and empties the
/// table (the child's own copy).
fn close_parent_only() {
    let end = PARENT_ONLY_END.load(Ordering::Acquire).min(PARENT_ONLY.len());
    for entry in &PARENT_ONLY[..end] {
        // Load first: writing every entry would copy the page (copy-on-write)
        // in every child for nothing.
        if entry.load(Ordering::Acquire) < 0 {
            continue;
        }
        let fd = entry.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            trace!("close({fd})");
            // SAFETY: the fd was registered by a ParentOnlyFd of the parent;
            // that object's copy in the child never closes it (its Drop
            // checks the owner pid), so closing the number here cannot make
            // a live owner close someone else's descriptor later.
            unsafe { libc::close(fd) };
        }
    }
}

/// Whether this kernel makes pidfds (`pidfd_open(2)`, Linux 5.3): 0 not
/// known yet, 1 yes, 2 no (an older kernel, or a seccomp filter that
/// refuses it). Asked once per process.
#[cfg(target_os = "linux")]
static PIDFD: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether [`pidfd_open`] works here: always false off Linux.
pub(crate) fn have_pidfd() -> bool {
    #[cfg(target_os = "linux")]
    {
        // Relaxed: every thread that asks gets the same answer from the kernel.
        match PIDFD.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                // Not traced: a question to the kernel, not a step of the lesson.
                let works = pidfd_open_untraced(getpid()).is_ok();
                PIDFD.store(if works { 1 } else { 2 }, Ordering::Relaxed);
                works
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// `pidfd_open(2)` (Linux): a close-on-exec descriptor that `poll` reports
/// readable once process `pid` has ended. For our own unreaped child the
/// pid cannot have been reused, so the descriptor names that child.
/// Elsewhere there is none (ask [`have_pidfd`] first): `ENOSYS`.
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        let fd = pidfd_open_untraced(pid)?;
        trace!("pidfd_open({pid}) = {}", fd.as_raw_fd());
        Ok(fd)
    }
    #[cfg(not(target_os = "linux"))]
    Err(Error::Os(OsError { call: "pidfd_open", pid: Some(pid), errno: libc::ENOSYS }))
}

#[cfg(target_os = "linux")]
fn pidfd_open_untraced(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (0: close-on-exec is implied).
    let fd = retry("pidfd_open", Some(pid), || unsafe {
        libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long)
    })?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `waitpid(2)` for one child. With `nohang`, `Ok(None)` means still running.
pub(crate) fn waitpid(pid: i32, nohang: bool) -> Result<Option<ExitStatus>> {
    let status = waitpid_untimed(pid, nohang)?;
    if let Some(status) = status {
        crate::timeline::reaped(pid, status);
    }
    Ok(status)
}

/// Reaps a child whose end [`peek_ended`] already recorded (the timeline
/// shows it ending then, not when its zombie was reaped).
pub(crate) fn reap_peeked(pid: i32) -> Result<Option<ExitStatus>> {
    waitpid_untimed(pid, true)
}

fn waitpid_untimed(pid: i32, nohang: bool) -> Result<Option<ExitStatus>> {
    let flags = if nohang { libc::WNOHANG } else { 0 };
    let mut raw: libc::c_int = 0;
    // SAFETY: `raw` is a valid, writable int for the duration of the call.
    let ret = retry("waitpid", Some(pid), || unsafe { libc::waitpid(pid, &mut raw, flags) })?;
    if ret == 0 {
        return Ok(None);
    }
    let status = ExitStatus::from_raw(raw);
    trace!("waitpid({pid}) = {status}");
    Ok(Some(status))
}

/// `waitid(P_PID, pid, WEXITED | WNOWAIT)`: whether the child `pid` has
/// ended, leaving it unreaped (a zombie) so that its pid cannot be reused
/// yet. With `nohang`, `Ok(false)` means still running; without, it waits.
/// Not traced: the `waitpid` that reaps it next is.
pub(crate) fn wait_ended(pid: i32, nohang: bool) -> Result<bool> {
    Ok(waitid_nowait(pid, nohang)?.is_some())
}

/// `waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)`: how the child `pid`
/// ended, if it has, leaving it unreaped: while it stays a zombie, neither
/// its pid nor its process group id can be given to another process, so a
/// signal to its group still reaches only what it started. `Ok(None)`: it
/// still runs. Not traced: the `waitpid` that reaps it later is; the
/// timeline records its end here.
pub(crate) fn peek_ended(pid: i32) -> Result<Option<ExitStatus>> {
    let Some(info) = waitid_nowait(pid, true)? else { return Ok(None) };
    // SAFETY: waitid filled `info`; si_status reads the field of the
    // SIGCHLD layout that waitid writes.
    let code = unsafe { info.si_status() };
    // Packed as waitpid packs it: `code << 8` for an exit, the signal
    // (with 0x80 for a core) for a kill.
    let raw = match info.si_code {
        libc::CLD_EXITED => (code & 0xff) << 8,
        libc::CLD_DUMPED => (code & 0x7f) | 0x80,
        _ => code & 0x7f,
    };
    let status = ExitStatus::from_raw(raw);
    // Its end is now, for the timeline (it is reaped later: `reap_peeked`).
    crate::timeline::reaped(pid, status);
    Ok(Some(status))
}

/// `waitid(P_PID, pid, WEXITED | WNOWAIT)` (and `WNOHANG` with `nohang`):
/// the child's end, unreaped; `None` while it runs.
fn waitid_nowait(pid: i32, nohang: bool) -> Result<Option<libc::siginfo_t>> {
    let flags = libc::WEXITED | libc::WNOWAIT | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: siginfo_t is plain old data; all-zero is valid, and si_pid
    // stays 0 when WNOHANG finds no ended child.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    retry("waitid", Some(pid), || unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) })?;
    // SAFETY: waitid filled `info` (or left it zeroed); si_pid reads the
    // field of the SIGCHLD layout that waitid writes.
    Ok((unsafe { info.si_pid() } != 0).then_some(info))
}

/// A process id that names one process: never 0, -1 or a negated group,
/// which `kill(2)` would read as "my group", "everyone" or a whole group.
/// Every signal mproc sends goes through [`kill`], [`kill_group`] or
/// [`kill_orphaned_group`], which take this type and check it.
pub(crate) use nix::unistd::Pid;

/// `kill(2)` to one process. A process that is already gone (`ESRCH`) is
/// not an error: every caller wants it gone. A pid below 1 is refused
/// ([`Error::InvalidArgument`]): it would name a group or every process.
pub(crate) fn kill(pid: Pid, signal: i32) -> Result<()> {
    if pid.as_raw() < 1 {
        return Err(Error::InvalidArgument(format!("kill: {pid} is not a process")));
    }
    raw_kill(pid.as_raw(), signal)
}

/// `kill(2)` to the process group led by `leader`, then to `leader` itself
/// (it may have left its group, or not have made it yet). For a leader that
/// is not yet reaped, so that neither id can have been reused. Leaders 0
/// and 1 are refused ([`Error::InvalidArgument`]): `kill(-1)` signals every
/// process, and group 1 is init's.
pub(crate) fn kill_group(leader: Pid, signal: i32) -> Result<()> {
    let group = kill_orphaned_group(leader, signal);
    let own = kill(leader, signal);
    group.and(own)
}

/// `kill(2)` to process group `group` only, not to its leader by pid. The
/// caller keeps the leader unreaped (running, or a zombie): once it is
/// reaped and the group's last member is gone, the id is free and may name
/// someone else's group. Groups 0 and 1 are refused.
pub(crate) fn kill_orphaned_group(group: Pid, signal: i32) -> Result<()> {
    if group.as_raw() <= 1 {
        return Err(Error::InvalidArgument(format!("kill: {group} is not a group mproc made")));
    }
    raw_kill(-group.as_raw(), signal)
}

fn raw_kill(pid: i32, signal: i32) -> Result<()> {
    trace!("kill({pid}, {})", signal_abbrev(signal));
    if signal != 0 {
        crate::timeline::killed(pid, signal);
    }
    // SAFETY: kill takes only integers.
    if unsafe { libc::kill(pid, signal) } == -1 && last_errno() != libc::ESRCH {
        return Err(os_error("kill", Some(pid)));
    }
    Ok(())
}

/// `_exit(2)`: ends the process now, without running atexit handlers or
/// destructors (they belong to the parent's copy of the program).
#[inline(always)]
pub(crate) fn exit_now(code: i32) -> ! {
    trace!("_exit({code})");
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `getpid(2)`.
pub(crate) fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// This process's pid, cached (0: not known yet). A `fork(3)` through libc
/// (ours, `libc::fork`, nix's) clears it in the child through the
/// `pthread_atfork` hook installed by the first call. A raw `clone(2)`
/// system call or glibc's `_Fork` skips the hook: a child made that way and
/// then using a pool would pass the owner check (`posix_spawn` and `vfork`
/// are fine: such a child only `exec`s).
static CACHED_PID: AtomicI32 = AtomicI32::new(0);
/// 0: no hook yet; 1: being installed; 2: installed (only then is the pid
/// cached, so a child forked before the hook exists never inherits a cache).
static ATFORK_STATE: AtomicI32 = AtomicI32::new(0);

extern "C" fn forget_cached_pid() {
    // Relaxed: the child has one thread; nothing else is published.
    CACHED_PID.store(0, Ordering::Relaxed);
}

/// The CPU the calling thread runs on, as `sched_getcpu(3)` says (no
/// system call on Linux: glibc reads the kernel's per-thread `rseq` area,
/// or the vDSO); `None` where it cannot say. A hint: the thread may be
/// moved the next instant.
pub(crate) fn current_cpu() -> Option<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
        u32::try_from(unsafe { libc::sched_getcpu() }).ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

/// This process's pid, as `getpid(2)`, without a system call after the first
/// time: objects that belong to one process (a pool, its results) check it
/// on every call, and a forked child must see its own pid at once.
pub(crate) fn current_pid() -> i32 {
    // Relaxed: a pid is one word, and every thread of a process agrees on it.
    let cached = CACHED_PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    if ATFORK_STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        // SAFETY: registers a child hook that only stores to an atomic,
        // which is async-signal-safe (as a post-fork child hook must be).
        // It can fail only with ENOMEM; then the pid is never cached.
        let installed = unsafe { libc::pthread_atfork(None, None, Some(forget_cached_pid)) } == 0;
        ATFORK_STATE.store(if installed { 2 } else { 1 }, Ordering::Release);
    }
    let pid = getpid();
    if ATFORK_STATE.load(Ordering::Acquire) == 2 {
        CACHED_PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// This process's pid: [`current_pid`]'s cache if it holds one, else
/// `getpid(2)`. Unlike `current_pid` it never installs the fork hook that
/// keeps the cache right, which writes a page in every child forked after
/// it (one more copy-on-write fault each): a program that made a pool has
/// the hook already and saves the system call; one that only starts
/// processes pays it, as before.
pub(crate) fn pid_if_cached_else_getpid() -> i32 {
    // Relaxed: see current_pid.
    match CACHED_PID.load(Ordering::Relaxed) {
        0 => getpid(),
        pid => pid,
    }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds. Every process on the
/// machine reads the same clock, so a time stamp one process writes into
/// shared memory means the same instant to another.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// `getppid(2)`.
pub(crate) fn getppid() -> i32 {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

/// `setpgid(0, 0)`: puts the caller in a new process group named after
/// itself, so one `kill(-pid, …)` reaches everything it starts.
pub(crate) fn new_process_group() -> Result<()> {
    // SAFETY: integers only.
    let done = retry("setpgid", None, || unsafe { libc::setpgid(0, 0) }).map(drop);
    trace!("setpgid(0, 0) = {}", if done.is_ok() { "0" } else { "-1" });
    done
}

/// Asks the kernel to send `signal` to the caller when its parent dies.
/// Linux only; elsewhere children notice a dead parent by pipe EOF.
pub(crate) fn set_parent_death_signal(signal: i32) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_PDEATHSIG takes an integer signal number.
        retry("prctl", None, || unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0)
        })?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = signal;
    Ok(())
}

// ---------------------------------------------------------------------------
// pipes and file descriptors

/// `pipe(2)` with both ends close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe_with(false)
}

/// [`pipe`] with both ends non-blocking as well (a doorbell): one system
/// call where `pipe2` exists, instead of five.
pub(crate) fn pipe_nonblocking() -> Result<(OwnedFd, OwnedFd)> {
    pipe_with(true)
}

fn pipe_with(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "freebsd", target_os = "netbsd", target_os = "openbsd"))]
    {
        let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        retry("pipe", None, || unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd"
    )))]
    {
        // No pipe2 (macOS): set FD_CLOEXEC right after. A concurrent fork+exec
        // in another thread could leak these two; documented in the crate docs.
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        retry("pipe", None, || unsafe { libc::pipe(fds.as_mut_ptr()) })?;
        for fd in fds {
            // SAFETY: fd was just returned by pipe and is open.
            retry("fcntl", None, || unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
            if nonblocking {
                // SAFETY: as above; a fresh pipe end has no other status flag.
                retry("fcntl", None, || unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) })?;
            }
        }
    }
    trace!("pipe() = [{}, {}]", fds[0], fds[1]);
    // SAFETY: pipe returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `read(2)` into `buf`; `Ok(0)` is end of file.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n =
        retry("read", None, || unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// Reads what the non-blocking `fd` holds now, appending to `out`:
/// `Ok(true)` at end of file, `Ok(false)` once a read would block.
pub(crate) fn read_available(fd: BorrowedFd<'_>, out: &mut Vec<u8>) -> Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        match read(fd, &mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(Error::Os(e)) if e.errno == libc::EAGAIN || e.errno == libc::EWOULDBLOCK => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn write_all_raw(fd: RawFd, mut buf: &[u8]) -> Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let n = retry("write", None, || unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })?;
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Writes all of `buf`, retrying short writes.
pub(crate) fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<()> {
    write_all_raw(fd.as_raw_fd(), buf)
}

/// `write(2)` once; returns how many bytes went (for non-blocking fds).
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = retry("write", None, || unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })?;
    Ok(n as usize)
}

/// `write(2)` once, without retrying `EINTR`: for a caller that must act on
/// a signal that arrives while the write is blocked (handlers installed
/// without `SA_RESTART`). Returns how many bytes went.
pub(crate) fn write_interruptible(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n == -1 {
        return Err(os_error("write", None));
    }
    Ok(n as usize)
}

/// Whether `fd` is a pipe, FIFO or socket (`fstat`): a descriptor whose
/// writes wait for a reader. `false` if it cannot be told.
pub(crate) fn is_pipe_or_socket(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: all-zero is a valid `stat`; fstat fills it for an open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; a bad fd is reported as EBADF.
    let rc = retry("fstat", None, || unsafe { libc::fstat(fd.as_raw_fd(), &mut st) });
    let kind = st.st_mode & libc::S_IFMT;
    rc.is_ok() && (kind == libc::S_IFIFO || kind == libc::S_IFSOCK)
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we borrow; F_GETFL/F_SETFL take integers.
    let flags = retry("fcntl", None, || unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    // SAFETY: as above.
    retry("fcntl", None, || unsafe { libc::fcntl(raw, libc::F_SETFL, flags) }).map(drop)
}

/// What `poll` reported for one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Data to read (or EOF: read to find out).
    pub readable: bool,
    /// Room to write.
    pub writable: bool,
    /// The other end is closed (`POLLHUP`/`POLLERR`).
    pub hangup: bool,
}

/// The instant `d` from now, or `None` when `d` reaches past what an
/// [`Instant`] can represent (`Duration::MAX`, say): "no limit". Every
/// timeout the crate takes goes through here instead of `Instant + d`,
/// which panics on overflow.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// `poll(2)` on `fds` with `(fd, want_read, want_write)`; `None` waits forever.
/// A signal does not shorten the wait: EINTR restarts it with the time left.
pub(crate) fn poll(fds: &[(BorrowedFd<'_>, bool, bool)], timeout: Option<Duration>) -> Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, r, w)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: (if r { libc::POLLIN } else { 0 }) | (if w { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    poll_in_place(&mut pfds, timeout)?;
    Ok(pfds.iter().map(ready_of).collect())
}

/// A `pollfd` asking whether `fd` is readable, for [`poll_in_place`].
pub(crate) fn pollfd_in(fd: BorrowedFd<'_>) -> libc::pollfd {
    libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }
}

/// What [`poll_in_place`] reported for one entry (nothing for an entry
/// left out of the call: its `revents` keeps the last answer, so clear
/// or ignore it).
pub(crate) fn ready_of(p: &libc::pollfd) -> Ready {
    Ready {
        readable: p.revents & libc::POLLIN != 0,
        writable: p.revents & libc::POLLOUT != 0,
        hangup: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
    }
}

/// `poll(2)` on a caller-owned array, for a loop that polls at every
/// wake-up: no allocation per call, so no heap page written per wake-up
/// (each costs a copy-on-write fault after a fork). EINTR restarts the wait
/// with the time left; returns the number of entries with events.
pub(crate) fn poll_in_place(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<usize> {
    // A timeout too large for an Instant waits forever, like `None`.
    let deadline = timeout.and_then(deadline_after);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                // Round up, so a 0.5 ms wait does not become a busy 0 ms poll.
                let left = d.saturating_duration_since(Instant::now());
                left.as_nanos().div_ceil(1_000_000).min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if last_errno() != libc::EINTR {
            return Err(os_error("poll", None));
        }
    }
}

/// Whether fd 1 is a pipe whose every read end is closed (`| head -1`
/// after head exited): a zero-timeout `poll` for writing reports `POLLERR`
/// on such a pipe, and on nothing else we write to.
pub(crate) fn stdout_is_broken_pipe() -> bool {
    let mut pfd = [libc::pollfd { fd: 1, events: libc::POLLOUT, revents: 0 }];
    matches!(poll_in_place(&mut pfd, Some(Duration::ZERO)), Ok(1)) && pfd[0].revents & libc::POLLERR != 0
}

/// `dup2(2)`: makes `target` a copy of `fd` (used to wire up a child's stdio).
pub(crate) fn dup2(fd: RawFd, target: RawFd) -> Result<()> {
    // SAFETY: integers only; an invalid fd is reported as EBADF.
    retry("dup2", None, || unsafe { libc::dup2(fd, target) }).map(drop)
}

/// Minor page faults of this process so far, all its threads together
/// (`getrusage(RUSAGE_SELF)`'s `ru_minflt`): faults the kernel served
/// without I/O, such as a page touched for the first time or copied on
/// write after `fork`. The difference across one write says whether the
/// write cost the kernel a copy (the isolation lesson).
pub fn minor_faults() -> Result<u64> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the duration of the call.
    retry("getrusage", None, || unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) })?;
    // A count is never negative; c_long only because C has no better type.
    Ok(u64::try_from(usage.ru_minflt).unwrap_or(0))
}

/// The size of a page of memory in bytes (`sysconf(_SC_PAGESIZE)`): the
/// unit the kernel maps, faults in and copies on write.
pub fn page_size() -> usize {
    // SAFETY: sysconf takes an integer; _SC_PAGESIZE always has a value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// The width in columns of the terminal on `fd` (`ioctl(TIOCGWINSZ)`);
/// `None` when `fd` is not a terminal (or says 0 columns).
pub fn terminal_columns(fd: RawFd) -> Option<usize> {
    // SAFETY: winsize is plain old data; all-zero is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which is valid and
    // writable for the duration of the call; a bad fd is an error, not UB.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Counts this process's open file descriptors (for leak checks in tests
/// and the CLI's self-checks). Linux reads `/proc/self/fd`; elsewhere
/// `/dev/fd`.
pub fn open_fd_count() -> usize {
    let dir = if cfg!(target_os = "linux") { "/proc/self/fd" } else { "/dev/fd" };
    // One entry is the directory handle read_dir itself holds open.
    std::fs::read_dir(dir).map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}

/// The process groups that have a member that is not a zombie, from
/// `/proc` (Linux); `None` elsewhere, or if `/proc` cannot be read. A group
/// whose leader is an unreaped zombie and that is missing here has nobody
/// left to signal.
pub(crate) fn groups_with_live_members() -> Option<std::collections::HashSet<i32>> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let mut groups = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        // A process that ended since the listing has no stat: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // After the command, in parentheses (which may hold anything):
        // state, ppid, pgrp, ...
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { continue };
        let mut fields = rest.split(' ');
        let (state, pgrp) = (fields.next(), fields.nth(1));
        if let (Some(state), Some(Ok(pgrp))) = (state, pgrp.map(str::parse::<i32>)) {
            if state != "Z" && state != "X" {
                groups.insert(pgrp);
            }
        }
    }
    Some(groups)
}

/// The open-files limit (`RLIMIT_NOFILE`): soft and hard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

impl FileLimit {
    /// This process's limit.
    pub(crate) fn current() -> Result<FileLimit> {
        // SAFETY: all-zero is a valid rlimit, which getrlimit fills.
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `lim` is writable.
        retry("getrlimit", None, || unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
        Ok(FileLimit { soft: lim.rlim_cur as u64, hard: lim.rlim_max as u64 })
    }

    /// Makes this the process's limit.
    pub(crate) fn apply(&self) -> Result<()> {
        let lim = self.as_rlimit();
        // SAFETY: `lim` is a valid rlimit.
        retry("setrlimit", None, || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
        trace!("setrlimit(RLIMIT_NOFILE, {}, {})", self.soft, self.hard);
        Ok(())
    }

    pub(crate) fn as_rlimit(&self) -> libc::rlimit {
        libc::rlimit { rlim_cur: self.soft as libc::rlim_t, rlim_max: self.hard as libc::rlim_t }
    }
}

/// Closes a descriptor this process inherited through `fork` but must not
/// keep (the parent's end of a pipe, say).
///
/// Only for a freshly forked child: the `OwnedFd` that owns `fd` lives in
/// the parent's copy of memory, and the child never touches that object
/// again, so closing the number here cannot invalidate a live owner.
pub(crate) fn close_inherited(fd: RawFd) {
    trace!("close({fd})");
    // SAFETY: per the rule above, no live OwnedFd in this process will use
    // `fd` after this point; a failure (EBADF) changes nothing.
    unsafe { libc::close(fd) };
}

/// `setpgid(pid, pid)` from the parent's side (the child does the same for
/// itself; whichever runs first wins the race, so a signal to the group
/// never misses). `EACCES` (the child already exec'd) and `ESRCH` are fine.
pub(crate) fn set_child_process_group(pid: i32) {
    // SAFETY: integers only.
    let ret = unsafe { libc::setpgid(pid, pid) };
    trace!(
        "setpgid({pid}, {pid}) = {}",
        if ret == 0 { "0".to_string() } else { format!("-1 ({})", std::io::Error::last_os_error()) }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn peek_ended_reads_the_end_as_waitpid_does_and_leaves_the_zombie() {
        // Each child is killed or exits at once, core-less (SIGKILL dumps
        // no core; rlimits are not touched here).
        for (end, expected) in [
            (Some(libc::SIGKILL), ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false }),
            (None, ExitStatus::Exited(3)),
        ] {
            // SAFETY: the child only calls async-signal-safe functions.
            let pid = match unsafe { fork() }.unwrap() {
                Forked::Child => {
                    if let Some(sig) = end {
                        // SAFETY: raise is async-signal-safe.
                        unsafe { libc::raise(sig) };
                    }
                    exit_now(3)
                }
                Forked::Parent(pid) => pid,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let peeked = loop {
                if let Some(status) = peek_ended(pid).unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "child {pid} never ended");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(peeked, expected);
            // Still a zombie: seen again, then reaped with the same end.
            assert_eq!(peek_ended(pid).unwrap(), Some(expected));
            assert_eq!(waitpid(pid, false).unwrap(), Some(expected));
        }
    }

    #[test]
    fn kill_never_signals_a_group_everyone_or_init() {
        // Each of these, let through, would signal this test's own group,
        // every process we may signal, or init's group.
        for raw in [0, -1, -42] {
            assert!(matches!(kill(Pid::from_raw(raw), 0), Err(Error::InvalidArgument(_))), "kill({raw})");
        }
        for raw in [0, 1, -1] {
            assert!(matches!(kill_group(Pid::from_raw(raw), 0), Err(Error::InvalidArgument(_))));
            assert!(matches!(kill_orphaned_group(Pid::from_raw(raw), 0), Err(Error::InvalidArgument(_))));
        }
        // Signal 0 to ourselves: allowed, and only checks that we exist.
        assert_eq!(kill(Pid::from_raw(getpid()), 0), Ok(()));
    }

    #[test]
    fn current_pid_is_getpid_and_a_forked_child_sees_its_own() {
        assert_eq!(current_pid(), getpid());
        assert_eq!(current_pid(), getpid());
        let (r, w) = pipe().unwrap();
        // SAFETY: the child only writes to a pipe and `_exit`s.
        match unsafe { fork() }.unwrap() {
            Forked::Child => {
                let same = current_pid() == getpid();
                let _ = write_all(w.as_fd(), &[same as u8]);
                exit_now(0)
            }
            Forked::Parent(child) => {
                drop(w);
                let mut out = [9u8; 2];
                assert_eq!(read(r.as_fd(), &mut out).unwrap(), 1);
                assert_eq!(waitpid(child, false).unwrap(), Some(ExitStatus::Exited(0)));
                let out = &out[..1];
                assert_eq!(out, [1], "the child's current_pid() must be its own pid");
            }
        }
    }
}
