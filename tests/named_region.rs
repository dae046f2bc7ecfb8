//! The shared region has a name: a pool's memory is a memory file called
//! `mproc-pool`, so `grep mproc /proc/PID/maps` finds it in the parent, the
//! zygote and every worker (each worker keeping only its own slot), and a
//! ring made alone is `mproc-ring`. No descriptor stays open for it.

use std::time::{Duration, Instant};

use mproc::Pool;

mod common;
use common::pools::{assert_no_children, children_of, pool_mappings};

/// The address range (first field) of each pool mapping of process `pid`.
fn pool_ranges(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    pool_mappings(&maps).iter().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

/// Runs in a worker: the pool mappings it sees in its own maps.
fn my_pool_mappings(_: u64) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    pool_mappings(&maps).into_iter().map(str::to_string).collect()
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn every_process_of_a_pool_shows_the_region_by_name_in_its_maps() {
    let workers = 3;
    let pool = Pool::new(workers).unwrap();
    // The parent: the control block and one mapping per slot.
    let parents = pool_ranges(std::process::id() as i32);
    assert_eq!(parents.len(), 1 + workers, "parent's pool mappings: {parents:?}");
    // The zygote forked before any unmapping: it sees them all.
    let zygotes = children_of(std::process::id() as i32);
    assert_eq!(zygotes.len(), 1, "one zygote: {zygotes:?}");
    assert_eq!(pool_ranges(zygotes[0]), parents);
    // Each worker, read from outside: exactly one, its own slot, at the
    // parent's address. A worker unmaps the rest right after its fork,
    // which may not have happened yet when the pool hands out its pid.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut slots = Vec::new();
    for pid in pool.pids() {
        let seen = loop {
            let seen = pool_ranges(pid);
            if seen.len() == 1 || Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(seen.len(), 1, "worker {pid}'s pool mappings: {seen:?}");
        assert!(parents.contains(&seen[0]), "worker {pid}: {seen:?} is not one of the parent's {parents:?}");
        slots.push(seen[0].clone());
    }
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), workers, "two workers share a slot: {slots:?}");
    // And from inside a worker: its one mapping, shared and writable.
    let inside = pool.apply(my_pool_mappings, 0).unwrap();
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert!(inside[0].split_whitespace().nth(1) == Some("rw-s"), "{inside:?}");
    assert!(inside[0].ends_with("/memfd:mproc-pool (deleted)"), "{inside:?}");
    drop(pool);
    assert_eq!(pool_ranges(std::process::id() as i32), Vec::<String>::new());
    assert_no_children();
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc")]
fn a_ring_is_named_and_keeps_no_descriptor_for_its_memory() {
    let named = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().filter(|l| l.contains("/memfd:mproc-ring")).count()
    };
    let fds = mproc::open_fd_count();
    let (tx, rx) = mproc::ring::channel(4096).unwrap();
    assert_eq!(named(), 1);
    // Two doorbell pipes, and nothing for the memory file: it was closed
    // once mapped.
    assert_eq!(mproc::open_fd_count(), fds + 4);
    drop((tx, rx));
    assert_eq!(named(), 0);
    assert_eq!(mproc::open_fd_count(), fds);
}
