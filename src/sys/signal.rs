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
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // `handler` is SIG_DFL, SIG_IGN or an extern "C" fn of the right type.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
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
