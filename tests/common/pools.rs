//! Helpers for the pool and fault tests.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mproc::Pool;

/// A pipe (both ends non-blocking off), made before the pool so workers
/// inherit it: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: room for two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The pool mappings of this process: lines of `/proc/self/maps` that
/// are shared (`s`) and backed by a memory file named `mproc-pool`.
pub fn shared_mappings() -> usize {
    pool_mappings(&std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps")).len()
}

/// The lines of a `/proc/PID/maps` text that are pool mappings (see
/// [`shared_mappings`]).
pub fn pool_mappings(maps: &str) -> Vec<&str> {
    maps.lines()
        .filter(|l| {
            l.split_whitespace().nth(1).is_some_and(|p| p.ends_with('s')) && l.contains("/memfd:mproc-pool")
        })
        .collect()
}

/// The pool's pids once every slot has a worker again (replacements are
/// asynchronous).
pub fn full_pids(pool: &Pool) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = pool.pids();
        if pids.len() == pool.processes() {
            return pids;
        }
        assert!(Instant::now() < deadline, "the pool never got back to {} workers", pool.processes());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// (state, ppid, start time in clock ticks) of a process, from
/// /proc/PID/stat; `None` when it is gone.
pub fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split_whitespace().collect();
    // After the name: state(3) ppid(4) ... starttime(22).
    Some((fields.first()?.chars().next()?, fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Pids of processes whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            if stat(pid).is_some_and(|s| s.1 == parent) {
                out.push(pid);
            }
        }
    }
    out
}

/// No child of ours exists, running or zombie. Outside Linux (no `/proc`)
/// only `waitpid` is asked.
pub fn assert_no_children() {
    // SAFETY: waitpid with a null status pointer is allowed.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert!(
        r == -1 && errno == Some(libc::ECHILD),
        "waitpid(-1, WNOHANG) = {r} ({errno:?}): a child is left"
    );
    #[cfg(target_os = "linux")]
    assert_eq!(children_of(std::process::id() as i32), Vec::<i32>::new());
}

/// Aborts the whole test process if it is still running after `limit`: a
/// hang becomes a failure that names what hung (the pool's zygote and
/// workers die with us).
pub struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

pub fn watchdog(limit: Duration, what: &'static str) -> Watchdog {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = done.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if seen.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("watchdog: {what} hung for {limit:?}");
        std::process::abort();
    });
    Watchdog(done)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
