//! Parity: each C twin in `c-compare/` and its `mproc` subcommand print the
//! same thing. Concurrent lines compare as sorted sets, the last line
//! exactly, isolation by structure (addresses and the kernel's counts
//! differ between runs). A test fails if either side changes alone.

mod common;

use common::{c_program, lines, mproc, run};
use std::process::Command;

fn both(name: &str, sub: &str, args: &[&str]) -> (Vec<String>, Vec<String>) {
    let c = run(Command::new(c_program(name)).args(args));
    let m = run(mproc().arg(sub).args(args));
    assert!(c.status.success(), "{name} {args:?} failed: {}", String::from_utf8_lossy(&c.stderr));
    assert!(m.status.success(), "mproc {sub} {args:?} failed: {}", String::from_utf8_lossy(&m.stderr));
    (lines(&c), lines(&m))
}

/// Sorted lines but the last, and the last.
fn split(mut v: Vec<String>) -> (Vec<String>, Option<String>) {
    let last = v.pop();
    v.sort();
    (v, last)
}

#[test]
fn square_matches_its_c_twin_exactly() {
    for args in [&[][..], &["12"], &["-3"], &["3037000499"]] {
        let (c, m) = both("square", "square", args);
        assert_eq!(c, m, "args {args:?}");
        assert_eq!(m.last().map(String::as_str), Some("Main process completed"));
    }
}

#[test]
fn numbers_prints_the_same_set_and_ends_the_same() {
    for args in [&[][..], &["--count", "7"], &["--count", "0"]] {
        let (c, m) = both("numbers", "numbers", args);
        assert_eq!(split(c), split(m), "args {args:?}");
    }
}

#[test]
fn cube_pool_prints_the_same_set_and_ends_the_same() {
    for args in [&[][..], &["--processes", "2", "3", "4", "5", "6", "-7"]] {
        let (c, m) = both("cube_pool", "cube", args);
        let (c_set, c_last) = split(c);
        let (m_set, m_last) = split(m);
        assert_eq!(c_set, m_set, "args {args:?}");
        assert_eq!(c_last, m_last);
        assert_eq!(m_last.as_deref(), Some("Main process completed"));
    }
}

/// Replaces every `0x...` address with `ADDR`; on a line that counts what
/// the kernel did, keeps only what it counts: the faults of one write are
/// the kernel's to count (checked in tests/isolation.rs), and the two
/// programs have different amounts of private memory.
fn mask(line: &str) -> String {
    if let Some((what, _)) = line.split_once(" cost ") {
        return format!("{what} cost N");
    }
    line.split(' ')
        .map(|w| {
            if w.starts_with("0x") {
                "ADDR"
            } else if w.parse::<u64>().is_ok() && line.contains("private dirty") {
                "N"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn isolation_has_the_same_structure_in_c_and_rust() {
    let (c, m) = both("isolation", "isolation", &[]);
    let c_masked: Vec<String> = c.iter().map(|l| mask(l)).collect();
    let m_masked: Vec<String> = m.iter().map(|l| mask(l)).collect();
    assert_eq!(c_masked, m_masked);
    // Ten lines, and the private dirty memory where the system tells it.
    let smaps = std::path::Path::new("/proc/self/smaps_rollup").exists();
    assert_eq!(m.len(), 10 + usize::from(smaps), "{m:?}");
    assert_eq!(m.iter().filter(|l| l.contains("private dirty")).count(), usize::from(smaps), "{m:?}");
    // Within each program, every line names the same address.
    for out in [&c, &m] {
        let addrs: std::collections::HashSet<&str> =
            out.iter().flat_map(|l| l.split(' ')).filter(|w| w.starts_with("0x")).collect();
        assert_eq!(addrs.len(), 1, "addresses in {out:?}");
    }
}
