//! Signal dispositions, in one place: the self-pipe handler (used by the
//! command runner and by the pool's zygote), installing and restoring
//! handlers, masks, resets for children, and the exit handler behind
//! [`crate::exit_cleanly_on_signals`].

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

use crate::error::Result;
use crate::sys::{os_error, retry, trace};

// ---------------------------------------------------------------------------
// the self-pipe handler

/// Write end of the self-pipe the handler wakes a poll loop with; -1 when
/// none is installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// One bit per signal number below 32 (SIGCHLD excepted) that arrived
/// since the last [`take_pending_signals`].
static PENDING: AtomicU32 = AtomicU32::new(0);

/// The handler: records the signal, then writes one byte to the self-pipe.
/// Only async-signal-safe operations: lock-free atomics and `write(2)`.
extern "C" fn on_signal(sig: c_int) {
    let saved = errno::errno();
    // SIGCHLD needs no record (its users reap after every wake-up), and
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
/// The fd must be non-blocking.
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

/// The signals received since the last [`take_pending_signals`], left
/// pending (bit `n` = signal `n`).
pub(crate) fn peek_pending_signals() -> u32 {
    PENDING.load(Ordering::SeqCst)
}

/// Makes every `SIGCHLD` write one byte to `write_fd` (a non-blocking pipe
/// whose read end the caller polls): the self-pipe handler, for
/// single-threaded processes (the pool's zygote).
pub(crate) fn sigchld_to_pipe(write_fd: RawFd) -> Result<()> {
    set_wake_fd(write_fd);
    install_handler(libc::SIGCHLD).map(drop)
}

// ---------------------------------------------------------------------------
// installing and restoring dispositions

/// A signal's previous disposition, to put back with [`restore_handler`].
pub(crate) struct SavedAction {
    signal: c_int,
    action: libc::sigaction,
}

/// Whether a blocking call the handler interrupts resumes (`SA_RESTART`)
/// or fails with `EINTR`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    Yes,
    No,
}

/// The one `sigaction` installer: `handler` (SIG_DFL, SIG_IGN or an
/// `extern "C" fn(c_int)`) with `SA_RESTART` unless `Restart::No` (and
/// `SA_NOCLDSTOP` for SIGCHLD), `blocked` masked while it runs. Returns the
/// old disposition.
fn set_action(signal: c_int, handler: libc::sighandler_t, blocked: &[c_int]) -> Result<SavedAction> {
    set_action_with(signal, handler, blocked, Restart::Yes)
}

fn set_action_with(
    signal: c_int,
    handler: libc::sighandler_t,
    blocked: &[c_int],
    restart: Restart,
) -> Result<SavedAction> {
    // SAFETY: sigaction is plain old data; all-zero is a valid empty value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = if restart == Restart::Yes { libc::SA_RESTART } else { 0 }
        | if signal == libc::SIGCHLD { libc::SA_NOCLDSTOP } else { 0 };
    // SAFETY: `sa_mask` is a valid sigset_t, initialised by sigemptyset
    // before sigaddset.
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        for &b in blocked {
            libc::sigaddset(&mut action.sa_mask, b);
        }
    }
    let mut old = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: `action` is initialised; `old` is writable.
    retry("sigaction", None, || unsafe { libc::sigaction(signal, &action, old.as_mut_ptr()) })?;
    // SAFETY: sigaction succeeded, so it filled `old`.
    Ok(SavedAction { signal, action: unsafe { old.assume_init() } })
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

/// Installs the self-pipe handler for `signal` and returns the previous
/// disposition.
pub(crate) fn install_handler(signal: c_int) -> Result<SavedAction> {
    let saved = set_action(signal, on_signal as extern "C" fn(c_int) as libc::sighandler_t, &[])?;
    trace!("sigaction({}, handler)", crate::status::signal_abbrev(signal));
    Ok(saved)
}

/// Installs the self-pipe handler for `signal` without `SA_RESTART`: a
/// blocking call it interrupts (a `write` into a pipe nobody reads) fails
/// with `EINTR` instead of resuming, so the caller can act on the signal.
/// Returns the previous disposition.
pub(crate) fn install_interrupting_handler(signal: c_int) -> Result<SavedAction> {
    let handler = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
    let saved = set_action_with(signal, handler, &[], Restart::No)?;
    trace!("sigaction({}, handler, no SA_RESTART)", crate::status::signal_abbrev(signal));
    Ok(saved)
}

/// Puts back a disposition saved by [`install_handler`].
pub(crate) fn restore_handler(saved: &SavedAction) -> Result<()> {
    // SAFETY: `saved.action` came from the kernel.
    retry("sigaction", None, || unsafe { libc::sigaction(saved.signal, &saved.action, std::ptr::null_mut()) })
        .map(drop)
}

/// Ignores `signal` (`SIG_IGN`).
pub(crate) fn ignore(signal: c_int) -> Result<()> {
    set_action(signal, libc::SIG_IGN, &[]).map(drop)
}

/// Restores `SIGPIPE`'s default action (die quietly). Rust's runtime ignores
/// it, which turns `mproc numbers | head -1` into a panic on the next
/// `println!`; a filter-style program wants the Unix default.
pub(crate) fn default_sigpipe() -> Result<()> {
    set_action(libc::SIGPIPE, libc::SIG_DFL, &[]).map(drop)
}

/// Restores the default action of the signals a parent may have changed,
/// and unblocks every signal: a fresh child starts from a clean slate.
pub(crate) fn reset_for_child() -> Result<()> {
    for signal in [libc::SIGCHLD, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
        set_action(signal, libc::SIG_DFL, &[])?;
    }
    set_wake_fd(-1);
    // SAFETY: an empty set, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// Sets `signals` back to `SIG_DFL` (and forgets the self-pipe): for a
/// child whose parent changed only these since its own
/// [`reset_for_child`] (a pool worker, forked by the zygote), so the mask
/// and the other dispositions are clean already.
pub(crate) fn restore_defaults(signals: &[c_int]) -> Result<()> {
    for &signal in signals {
        set_action(signal, libc::SIG_DFL, &[])?;
    }
    set_wake_fd(-1);
    Ok(())
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

// ---------------------------------------------------------------------------
// masks

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

    /// Blocks `signals` in the calling thread; returns the old mask.
    pub(crate) fn block(signals: &[c_int]) -> Result<SigMask> {
        SigMask::change(libc::SIG_BLOCK, Some(signals))
    }

    /// Unblocks `signals` in the calling thread; returns the old mask.
    pub(crate) fn unblock(signals: &[c_int]) -> Result<SigMask> {
        SigMask::change(libc::SIG_UNBLOCK, Some(signals))
    }

    /// Makes this the calling thread's mask again. Inlined: a freshly
    /// forked child calls it, and each distinct page of code a child runs
    /// is a page fault there.
    #[inline(always)]
    pub(crate) fn restore(&self) {
        // SAFETY: `self.0` came from pthread_sigmask. Restoring a mask we
        // read cannot fail (EINVAL is only for a bad `how`).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

// ---------------------------------------------------------------------------
// exit on SIGINT / SIGTERM

/// The process that installed the exit handlers; children that inherit
/// them (forked before they could reset) must not act on its behalf.
static HANDLER_OWNER: AtomicI32 = AtomicI32::new(0);
/// A cleanup routine the handler runs after killing the registered
/// children (async-signal-safe only).
static CLEANUP: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_exit_signal(signal: c_int) {
    // SAFETY: getpid is async-signal-safe.
    let me = unsafe { libc::getpid() };
    if HANDLER_OWNER.load(Ordering::Relaxed) != me {
        // An inherited handler in a child: die of the signal as if no
        // handler had been installed, so the parent sees -signal.
        // SAFETY: signal/raise are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    // Every live `Process` child of this process: SIGKILL, then reap.
    crate::sys::registry::kill_and_reap_children();
    let cleanup = CLEANUP.load(Ordering::Relaxed);
    if cleanup != 0 {
        // SAFETY: CLEANUP only ever holds a `fn()` stored by
        // `exit_on_signals`, whose contract is async-signal safety.
        let f = unsafe { std::mem::transmute::<usize, fn()>(cleanup) };
        f();
    }
    // SAFETY: _exit is async-signal-safe; 128 + signal is the shell's code.
    unsafe { libc::_exit(128 + signal) };
}

/// On `SIGINT` and `SIGTERM`: kills (`SIGKILL`) and reaps every registered
/// child of this process (see [`super::registry`]), runs `cleanup` (which
/// must be async-signal-safe), and exits with status 128 + signal (130, 143).
pub(crate) fn exit_on_signals(cleanup: fn()) -> Result<()> {
    CLEANUP.store(cleanup as usize, Ordering::Relaxed);
    HANDLER_OWNER.store(crate::sys::getpid(), Ordering::Relaxed);
    let handler = on_exit_signal as extern "C" fn(c_int) as libc::sighandler_t;
    // While the handler runs: no second exit signal (no nested cleanup), and
    // no SIGPIPE — telling a zygote that already died must return EPIPE, not
    // kill us with status 141 before the other pools are told.
    let blocked = [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE];
    set_action(libc::SIGINT, handler, &blocked)?;
    set_action(libc::SIGTERM, handler, &blocked).map(drop)
}
