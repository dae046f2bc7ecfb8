//! Signal dispositions: a self-pipe for `SIGCHLD`, and resets for children.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::Result;
use crate::sys::{os_error, trace};

/// The write end of the self-pipe the `SIGCHLD` handler writes to.
/// -1 while no handler is installed.
static SIGCHLD_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    // Only async-signal-safe work here: one write(2), errno preserved.
    // Relaxed: the fd was stored before the handler was installed, and
    // sigaction orders that store before any delivery.
    let fd = SIGCHLD_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let saved = crate::sys::last_errno();
        // SAFETY: writing one byte from a static to an fd we own. A full
        // (non-blocking) pipe already holds a pending wake-up: ignore EAGAIN.
        unsafe { libc::write(fd, b"c".as_ptr().cast(), 1) };
        errno::set_errno(errno::Errno(saved));
    }
}

fn set_handler(signal: i32, handler: libc::sighandler_t) -> Result<()> {
    set_handler_blocking(signal, handler, &[])
}

/// Installs `handler` with `blocked` signals masked while it runs.
fn set_handler_blocking(signal: i32, handler: libc::sighandler_t, blocked: &[i32]) -> Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // `handler` is SIG_DFL, SIG_IGN or an extern "C" fn of the right type;
    // the mask is initialised by sigemptyset before sigaddset.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for &b in blocked {
            libc::sigaddset(&mut action.sa_mask, b);
        }
        if libc::sigaction(signal, &action, std::ptr::null_mut()) == -1 {
            return Err(os_error("sigaction", None));
        }
    }
    Ok(())
}

/// Makes every `SIGCHLD` write one byte to `write_fd` (a non-blocking pipe
/// whose read end the caller polls). For single-threaded processes only
/// (the pool's zygote).
pub(crate) fn sigchld_to_pipe(write_fd: RawFd) -> Result<()> {
    SIGCHLD_PIPE.store(write_fd, Ordering::Relaxed);
    trace!("sigaction(SIGCHLD, -> fd {write_fd})");
    set_handler(libc::SIGCHLD, on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t)
}

/// Ignores `signal` (`SIG_IGN`).
pub(crate) fn ignore(signal: i32) -> Result<()> {
    set_handler(signal, libc::SIG_IGN)
}

/// Restores the default action of the signals a parent may have changed,
/// and unblocks every signal: a fresh child starts from a clean slate.
pub(crate) fn reset_for_child() -> Result<()> {
    for signal in [libc::SIGCHLD, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
        set_handler(signal, libc::SIG_DFL)?;
    }
    SIGCHLD_PIPE.store(-1, Ordering::Relaxed);
    // SAFETY: an empty set, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// The process that installed the exit handlers; children that inherit
/// them (forked before they could reset) must not act on its behalf.
static HANDLER_OWNER: AtomicI32 = AtomicI32::new(0);
/// A cleanup routine the handler runs first (async-signal-safe only).
static CLEANUP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_exit_signal(signal: libc::c_int) {
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

/// On `SIGINT` and `SIGTERM`, runs `cleanup` (which must be
/// async-signal-safe) and exits with status 128 + signal (130, 143).
pub(crate) fn exit_on_signals(cleanup: fn()) -> Result<()> {
    CLEANUP.store(cleanup as usize, Ordering::Relaxed);
    HANDLER_OWNER.store(crate::sys::getpid(), Ordering::Relaxed);
    let handler = on_exit_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // While the handler runs: no second exit signal (no nested cleanup), and
    // no SIGPIPE — telling a zygote that already died must return EPIPE, not
    // kill us with status 141 before the other pools are told.
    let blocked = [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE];
    set_handler_blocking(libc::SIGINT, handler, &blocked)?;
    set_handler_blocking(libc::SIGTERM, handler, &blocked)
}

/// Restores `SIGPIPE`'s default action (die quietly). Rust's runtime ignores
/// it, which turns `mproc numbers | head -1` into a panic on the next
/// `println!`; a filter-style program wants the Unix default.
pub(crate) fn default_sigpipe() -> Result<()> {
    set_handler(libc::SIGPIPE, libc::SIG_DFL)
}
