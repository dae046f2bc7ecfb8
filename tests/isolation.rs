//! `mproc isolation` and its C twin count what the kernel did: a forked
//! child's one write to a page it shares with its parent costs at least
//! one minor fault (the copy), and the same write from a thread costs none;
//! where `/proc/self/smaps_rollup` exists, the child's private dirty memory
//! grows by at least the copied page.

mod common;

use std::process::Command;

use common::{c_program, lines, mproc, run};

/// The number after "cost " on the one line starting with `prefix`.
fn cost(out: &[String], prefix: &str) -> u64 {
    let matching: Vec<&String> = out.iter().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(matching.len(), 1, "lines starting {prefix:?} in {out:?}");
    let (_, after) = matching[0].split_once(" cost ").expect("a cost");
    after.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{:?}", matching[0]))
}

/// (before, after) in KiB from the private dirty line, if there is one.
fn private_dirty(out: &[String]) -> Option<(u64, u64)> {
    let line = out.iter().find(|l| l.contains("private dirty"))?;
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "{line:?}");
    Some((numbers[0], numbers[1]))
}

fn check(program: &mut Command, name: &str) {
    let out = run(program);
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let out = lines(&out);
    let child = cost(&out, "fork: the child's one write");
    let thread = cost(&out, "thread: the thread's one write");
    assert!(child >= 1, "{name}: the child's write to a shared page took no fault: {out:?}");
    assert_eq!(thread, 0, "{name}: the thread's write took a fault: {out:?}");
    let page_kib = mproc::page_size() as u64 / 1024;
    match private_dirty(&out) {
        Some((before, after)) => {
            assert!(after >= before + page_kib, "{name}: private dirty {before} -> {after} KiB: {out:?}")
        }
        None => assert!(
            !std::path::Path::new("/proc/self/smaps_rollup").exists(),
            "{name}: no private dirty line, yet smaps_rollup exists: {out:?}"
        ),
    }
}

#[test]
fn a_childs_write_costs_a_fault_and_a_threads_costs_none() {
    check(mproc().arg("isolation"), "mproc isolation");
}

#[test]
fn the_c_twin_counts_the_same_faults() {
    check(&mut Command::new(c_program("isolation")), "isolation.c");
}

#[test]
fn minor_faults_count_pages_touched_for_the_first_time() {
    let pages = 64;
    let page = mproc::page_size();
    // A fresh anonymous mapping, untouched: each page faults in on its
    // first write (transparent huge pages can only make it fewer, never 0).
    let mut memory = Vec::<u8>::with_capacity(pages * page);
    let before = mproc::minor_faults().unwrap();
    for i in 0..pages {
        // SAFETY: within the capacity; the bytes are never read as a Vec's.
        unsafe { memory.as_mut_ptr().add(i * page).write_volatile(1) };
    }
    let after = mproc::minor_faults().unwrap();
    assert!(after > before, "{pages} fresh pages touched, {before} -> {after} faults");
    // Touched again: no new fault.
    let again = mproc::minor_faults().unwrap();
    for i in 0..pages {
        // SAFETY: as above.
        unsafe { memory.as_mut_ptr().add(i * page).write_volatile(2) };
    }
    assert_eq!(mproc::minor_faults().unwrap(), again);
}
