//! The measuring subcommands run end to end and print every figure they
//! promise (values vary; names, shapes and the checked counts do not).

mod common;

use common::{lines, mproc, run};
use std::collections::HashMap;

fn tsv(args: &[&str]) -> HashMap<String, (f64, String)> {
    let out = run(mproc().args(args));
    assert!(out.status.success(), "mproc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    lines(&out)
        .into_iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "not name<TAB>value<TAB>unit: {l:?}");
            (f[0].to_string(), (f[1].parse().expect("a number"), f[2].to_string()))
        })
        .collect()
}

fn primes_below(n: u64) -> u64 {
    (2..n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u64
}

#[test]
fn speedup_times_three_variants_that_agree() {
    let out = run(mproc().args(["speedup", "--workers", "2", "--tasks", "4", "--work", "2000"]));
    assert!(out.status.success());
    let text = lines(&out);
    assert!(text[0].contains("2 workers"), "{text:?}");
    assert!(text[1].trim_start().starts_with("sequential"));
    assert!(text[2].contains("2 processes (Pool)"));
    assert!(text[3].contains("2 threads"));
    assert_eq!(text[4].trim(), format!("all three found {} primes", primes_below(8000)));
    assert!(text[5].contains("no GIL"));
}

#[test]
fn speedup_rejects_zero_workers_with_usage_status() {
    let out = run(mproc().args(["speedup", "--workers", "0"]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn bench_process_reports_every_figure() {
    let figures = tsv(&["bench", "process", "--count", "5", "--tsv"]);
    for name in ["process_start_join", "spawn_join", "pipe_pingpong"] {
        let (value, unit) = &figures[name];
        assert!(*value > 0.0, "{name} = {value}");
        assert_eq!(unit, "us");
    }
}

#[test]
fn bench_pool_reports_every_figure() {
    let figures = tsv(&["bench", "pool", "--items", "20000", "--tsv"]);
    for name in [
        "pool_map_trivial",
        "pool_map_trivial_first",
        "sequential_trivial",
        "sequential_trivial_first",
        "threads_channel_trivial",
        "imap_chunksize_1",
        "imap_chunksize_1_first",
        "apply_8_threads",
        "apply_8_threads_first",
        "apply_async_one_by_one",
        "apply_async_one_by_one_first",
        "handoff_8_threads",
        "pool_map_large_input",
        "fork_map_large_input",
        "pool_cpu_speedup",
    ] {
        assert!(figures.get(name).is_some_and(|(v, _)| *v > 0.0), "{name} missing in {figures:?}");
    }
    // What explains the 8-thread `apply` rate: sleeps per task, a ratio
    // (a count not divided by the tasks would be in the thousands).
    let (sleeps, unit) = &figures["apply_8_threads_sleeps"];
    assert!((0.0..50.0).contains(sleeps), "apply_8_threads_sleeps = {sleeps}");
    assert_eq!(unit, "per task");
}

#[test]
fn bench_compare_without_c_programs_says_how_to_build_them() {
    // Not a usage error (the arguments are fine): one line, status 1.
    let out = run(mproc().args(["bench", "compare", "--c-dir", "/nonexistent"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("make compare"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `mproc ARGS > /dev/full`: status 1 and one `mproc: ...` line on
/// stderr, never a panic (exit 101).
fn assert_full_stdout_is_one_line_and_status_1(args: &[&str]) {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
    let out = run(mproc().args(args).stdout(full));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "mproc {args:?} > /dev/full: {err}");
    assert_eq!(err.lines().count(), 1, "mproc {args:?} > /dev/full: {err}");
    assert!(err.starts_with("mproc: ") && err.contains("stdout"), "mproc {args:?} > /dev/full: {err}");
}

#[test]
fn speedup_into_a_full_disk_is_one_line_and_status_1() {
    assert_full_stdout_is_one_line_and_status_1(&[
        "speedup",
        "--workers",
        "1",
        "--tasks",
        "1",
        "--work",
        "10",
    ]);
}

#[test]
fn bench_process_into_a_full_disk_is_one_line_and_status_1() {
    assert_full_stdout_is_one_line_and_status_1(&["bench", "process", "--count", "1"]);
    assert_full_stdout_is_one_line_and_status_1(&["bench", "process", "--count", "1", "--tsv"]);
}

#[test]
fn bench_ring_into_a_full_disk_is_one_line_and_status_1() {
    assert_full_stdout_is_one_line_and_status_1(&["bench", "ring", "--count", "1", "--runs", "1"]);
    assert_full_stdout_is_one_line_and_status_1(&["bench", "ring", "--count", "1", "--runs", "1", "--tsv"]);
}

#[test]
fn bench_pool_into_a_full_disk_is_one_line_and_status_1() {
    assert_full_stdout_is_one_line_and_status_1(&["bench", "pool", "--items", "1", "--workers", "1"]);
}

#[test]
fn bench_run_into_a_full_disk_is_one_line_and_status_1() {
    let args = ["bench", "run", "--count", "1", "--rounds", "1", "-j", "1"];
    assert_full_stdout_is_one_line_and_status_1(&args);
}

#[test]
fn bench_run_measures_every_row_and_draws_the_bar_on_a_terminal() {
    // The --bar row fails the whole command unless the status line really
    // reached its pseudo-terminal, so success here means it was drawn.
    let rows = tsv(&["bench", "run", "--count", "20", "--rounds", "1", "-j", "2", "--tsv"]);
    // Where no pseudo-terminal can be opened (a container without
    // /dev/pts), the bench leaves the --bar row out, and says so.
    let pty = nix::pty::openpty(None, None).is_ok();
    let bar = if pty { &["run_jobs_bar"][..] } else { &[][..] };
    for &name in ["run_jobs", "run_jobs_xargs", "run_jobs_echo", "run_jobs_echo_xargs"].iter().chain(bar) {
        let (rate, unit) = rows.get(name).unwrap_or_else(|| panic!("no {name} row in {rows:?}"));
        assert!(*rate > 0.0, "{name}: {rate}");
        assert_eq!(unit, "jobs/s");
    }
}

/// `mproc bench run` stopped by SIGINT or SIGTERM sent to it alone (as
/// `kill` does) leaves no input file in `$TMPDIR` (its files are unlinked
/// as soon as they are made) and, on Linux where `/proc` shows it, no
/// command it was measuring: the `mproc run` under way stops too, instead
/// of running its 100,000 jobs on, re-parented to init.
#[test]
fn an_interrupted_bench_run_leaves_nothing_behind() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let dir = std::env::temp_dir().join(format!("mproc-bench-tmpdir-{}-{signal}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = mproc()
            .args(["bench", "run", "--count", "100000", "--rounds", "1"])
            .env("TMPDIR", &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The first measurement under way: `mproc run` reading its input.
        let measured = measured_runner(child.id());
        // SAFETY: kill takes integers only; the child is ours and unreaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(status.code(), Some(code), "signal {signal}");
        assert!(left.is_empty(), "left in TMPDIR after signal {signal}: {left:?}");
        // Ended, and reaped by the bench: not running on under init.
        let running: Vec<i32> = measured
            .into_iter()
            .filter(|&(pid, started)| common::pools::stat(pid).is_some_and(|s| s.0 != 'Z' && s.2 == started))
            .map(|(pid, _)| pid)
            .collect();
        assert!(running.is_empty(), "after signal {signal}, still running: {running:?}");
    }
}

/// `mproc bench run` killed outright (`SIGKILL`: no handler runs, as when
/// the OOM killer or a supervisor ends it) does not leave the `mproc run`
/// it was measuring starting its 100,000 jobs under init for a minute:
/// on Linux the runner is told (`SIGTERM`) when its parent dies.
#[cfg(target_os = "linux")]
#[test]
fn a_bench_run_killed_outright_stops_the_runner_it_measured() {
    let mut child = mproc()
        .args(["bench", "run", "--count", "100000", "--rounds", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let measured = measured_runner(child.id());
    // SAFETY: kill takes integers only; the child is ours and unreaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // Re-parented and then reaped by init once it ends.
    let running = || {
        measured
            .iter()
            .filter(|&&(pid, started)| common::pools::stat(pid).is_some_and(|s| s.0 != 'Z' && s.2 == started))
            .count()
    };
    let ended = common::wait_until(std::time::Duration::from_secs(5), || running() == 0);
    assert!(ended, "5 s after the bench was killed, {} of its runners still run: {measured:?}", running());
}

/// Waits until `bench`'s `mproc run` has been running a while (not a
/// command the bench runs first to see what is installed); its pid and
/// start time. Without `/proc`, only waits.
fn measured_runner(bench: u32) -> Vec<(i32, u64)> {
    let mut measured = Vec::new();
    if cfg!(target_os = "linux") {
        let found = common::wait_until(std::time::Duration::from_secs(10), || {
            measured = common::pools::children_of(bench as i32)
                .into_iter()
                .filter(|pid| {
                    // `mproc run ...` itself, not the bench's own copy
                    // between fork and exec (`mproc bench run ...`).
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"run"))
                })
                .filter_map(|pid| Some((pid, common::pools::stat(pid)?.2)))
                .collect();
            !measured.is_empty()
        });
        assert!(found, "bench run started no command");
        std::thread::sleep(std::time::Duration::from_millis(200));
    } else {
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    measured
}
