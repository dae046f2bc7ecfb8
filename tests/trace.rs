//! `--trace` tells the truth: under `strace -f`, the forks and waits mproc
//! reports are exactly the ones the kernel saw, with every category traced
//! or only `--trace=process`; and a list of categories keeps only their
//! calls.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

/// (process, other process) pairs: who forked whom, who reaped whom.
type Pairs = BTreeSet<(i32, i32)>;

/// (parent, child) pairs of process-creating clones/forks seen by strace,
/// and (waiter, reaped) pairs of successful wait4/waitid calls.
fn from_strace(log: &str) -> (Pairs, Pairs) {
    let mut forks = BTreeSet::new();
    let mut waits = BTreeSet::new();
    // A call interrupted by another process's output is split in two:
    // `clone(flags... <unfinished ...>` then `<... clone resumed>...) = N`.
    let mut unfinished: std::collections::HashMap<i32, String> = Default::default();
    for line in log.lines() {
        let Some((pid, rest)) = line.trim_start().split_once(' ') else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        let mut rest = rest.trim_start().to_string();
        if rest.ends_with("<unfinished ...>") {
            unfinished.insert(pid, rest);
            continue;
        }
        if rest.starts_with("<... ") {
            let start = unfinished.remove(&pid).unwrap_or_default();
            rest = format!("{start}{rest}");
        }
        let rest = rest.as_str();
        let ret = rest.rsplit_once(" = ").and_then(|(_, r)| r.split_whitespace().next()?.parse::<i32>().ok());
        let Some(ret) = ret else { continue };
        let is_fork = rest.starts_with("fork(") || rest.starts_with("vfork(") || rest.starts_with("clone");
        if is_fork && !rest.contains("CLONE_THREAD") && ret > 0 {
            forks.insert((pid, ret));
        }
        if (rest.starts_with("wait4(") || rest.starts_with("waitid(")) && ret > 0 {
            waits.insert((pid, ret));
        }
    }
    (forks, waits)
}

/// The same pairs from mproc's own `[pid] fork() = child` and
/// `[pid] waitpid(child) = ...` / `[pid] waitpid(-1) = child ...` lines.
fn from_trace(stderr: &str) -> (Pairs, Pairs) {
    let mut forks = BTreeSet::new();
    let mut waits = BTreeSet::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('[') else { continue };
        let Some((pid, call)) = rest.split_once("] ") else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        if let Some(child) = call.strip_prefix("fork() = ") {
            if let Ok(child) = child.parse::<i32>() {
                forks.insert((pid, child));
            }
        } else if let Some(args) = call.strip_prefix("waitpid(") {
            let (target, result) = args.split_once(") = ").expect("waitpid line shape");
            let child = if target == "-1" {
                result.split_whitespace().next().and_then(|c| c.parse().ok()).expect("reaped pid")
            } else {
                target.parse().expect("waited pid")
            };
            waits.insert((pid, child));
        }
    }
    (forks, waits)
}

fn check(args: &[&str]) {
    check_traced_with("--trace", args);
}

/// Runs `mproc <trace_option> <args>` under strace and compares the forks
/// and waits each reports.
fn check_traced_with(trace_option: &str, args: &[&str]) {
    if !common::require_tool("strace", "the check of --trace against strace") {
        return;
    }
    let log = std::env::temp_dir().join(format!(
        "mproc-strace-{}-{}-{}.log",
        std::process::id(),
        trace_option.trim_start_matches('-').replace([',', '='], "_"),
        args.join("_")
    ));
    let out = common::run(
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fork,vfork,clone,clone3,wait4,waitid", "-o"])
            .arg(&log)
            .arg(env!("CARGO_BIN_EXE_mproc"))
            .arg(trace_option)
            .args(args),
    );
    assert!(out.status.success(), "mproc {args:?} under strace: {}", String::from_utf8_lossy(&out.stderr));
    let strace_log = std::fs::read_to_string(&log).expect("strace log");
    let _ = std::fs::remove_file(&log);
    let (k_forks, k_waits) = from_strace(&strace_log);
    let (m_forks, m_waits) = from_trace(&String::from_utf8_lossy(&out.stderr));
    assert!(!m_forks.is_empty(), "no fork traced for {args:?}");
    assert_eq!(m_forks, k_forks, "forks for {args:?}\nstrace log:\n{strace_log}");
    assert_eq!(m_waits, k_waits, "waits for {args:?}\nstrace log:\n{strace_log}");
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "strace is Linux-only")]
fn traced_forks_and_waits_match_strace_for_square() {
    check(&["square"]);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "strace is Linux-only")]
fn traced_forks_and_waits_match_strace_for_numbers() {
    check(&["numbers", "--count", "3"]);
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "strace is Linux-only")]
fn traced_forks_and_waits_match_strace_for_the_pool() {
    check(&["cube"]);
}

#[test]
fn trace_lines_name_the_calls_of_the_lesson() {
    let out = common::run(common::mproc().args(["--trace", "square"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::lines(&out), ["The square of 5 is 25", "Main process completed"]);
    for call in ["fork() = ", "_exit(0)", "waitpid("] {
        assert!(err.contains(call), "no {call:?} in trace:\n{err}");
    }
    // The sentinel pipe, only where there are no pidfds (mproc(7)).
    assert_eq!(err.contains("pipe() = ["), !cfg!(target_os = "linux"), "{err}");
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "strace is Linux-only")]
fn process_only_trace_still_matches_strace_for_square_and_the_pool() {
    check_traced_with("--trace=process", &["square"]);
    check_traced_with("--trace=process", &["cube"]);
}

/// The call each `[pid] call(...)` line of stderr names, in order; panics
/// on any other line (the commands below print nothing else there).
fn traced_calls(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|line| {
            let (_, call) = line.split_once("] ").unwrap_or_else(|| panic!("not a trace line: {line:?}"));
            call.split(['(', ' ']).next().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn trace_process_prints_only_fork_wait_exit_and_kill() {
    let out = common::run(common::mproc().args(["--trace=process", "square"]));
    assert_eq!(common::lines(&out), ["The square of 5 is 25", "Main process completed"]);
    let mut calls = traced_calls(&out);
    calls.sort();
    // One child: one fork, its _exit, one waitpid; no pipe, no close.
    assert_eq!(calls, ["_exit", "fork", "waitpid"]);
    // The pool: more processes, still only their lifecycle.
    let calls = traced_calls(&common::run(common::mproc().args(["--trace=process", "cube"])));
    assert!(calls.iter().any(|c| c == "fork") && calls.iter().any(|c| c == "waitpid"), "{calls:?}");
    let others: Vec<_> = calls
        .iter()
        .filter(|c| !["fork", "waitpid", "pidfd_open", "_exit", "kill", "setpgid"].contains(&c.as_str()))
        .collect();
    assert!(others.is_empty(), "not process calls: {others:?}");
}

#[test]
fn every_worker_process_group_is_traced_from_both_sides() {
    // mproc(1) lists setpgid under `process`: the zygote makes each
    // worker's group, and the worker makes it too (whichever runs first).
    let out = common::run(common::mproc().args(["--trace=process", "cube", "--processes", "3"]));
    let calls = traced_calls(&out);
    let groups = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("] setpgid(") && !l.contains("setpgid(0, 0)"))
        .count();
    assert_eq!(groups, 3, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| *c == "setpgid").count(), 6, "{calls:?}");
}

#[test]
fn a_traced_path_stays_on_its_line() {
    // A $TMPDIR with a newline and an escape in its name: the spill file's
    // trace line is still one line, with the path quoted.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("odd\n\u{1b}[31m-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = common::run(
        common::mproc()
            .args([
                "--trace=all",
                "run",
                "-j2",
                "sh",
                "-c",
                "head -c 3000000 /dev/zero; sleep 0.2",
                "sh",
                ":::",
                "1",
                "2",
            ])
            .env("TMPDIR", &dir),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    let spill: Vec<&str> = err.lines().filter(|l| l.contains("spill file")).collect();
    assert!(!spill.is_empty(), "no spill file traced");
    for line in spill {
        assert!(
            line.starts_with('[') && line.ends_with("(unlinked)") && !line.contains('\u{1b}'),
            "{line:?}"
        );
    }
}

#[test]
fn a_list_of_categories_traces_their_calls_and_nothing_else() {
    let calls = traced_calls(&common::run(common::mproc().args(["--trace=ipc,fd", "cube"])));
    for expected in ["pipe", "mmap", "close"] {
        assert!(calls.iter().any(|c| c == expected), "no {expected} in {calls:?}");
    }
    assert!(!calls.iter().any(|c| c == "fork" || c == "waitpid" || c == "_exit"), "{calls:?}");
    // The option goes after the subcommand too; `all` is every call.
    let mut all = traced_calls(&common::run(common::mproc().args(["square", "--trace=all"])));
    let mut bare = traced_calls(&common::run(common::mproc().args(["--trace", "square"])));
    all.sort();
    bare.sort();
    assert_eq!(all, bare);
    // The sentinel pipe (and the child's close of its read end) only where
    // there are no pidfds.
    let sentinel: &[&str] = if cfg!(target_os = "linux") { &[] } else { &["pipe", "close"] };
    for expected in ["fork", "_exit", "waitpid"].iter().chain(sentinel) {
        assert!(all.iter().any(|c| c == expected), "no {expected} in {all:?}");
    }
}

#[test]
fn an_unknown_trace_category_is_a_one_line_usage_error() {
    for bad in ["--trace=bogus", "--trace=process,", "--trace=", "--trace=PROCESS"] {
        let out = common::run(common::mproc().args([bad, "square"]));
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty(), "{bad}: the command ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("mproc: ") && err.contains("trace category"), "{bad}: {err}");
    }
}
