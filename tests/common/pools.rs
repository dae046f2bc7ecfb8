//! Helpers for the pool and fault tests.

use std::os::fd::{FromRawFd, OwnedFd};
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

/// Shared anonymous mappings of this process (what a pool maps): lines of
/// `/proc/self/maps` that are shared (`s`) and backed by `/dev/zero`.
pub fn shared_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.ends_with('s')) && l.contains("/dev/zero"))
        .count()
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
