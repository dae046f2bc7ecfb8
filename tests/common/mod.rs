//! Helpers shared by the integration tests that run programs.
#![allow(dead_code)]

pub mod pools;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `mproc` binary built for these tests.
pub fn mproc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mproc"))
}

/// Runs a command with stdout and stderr piped (so the program's output
/// goes through a pipe, as in `mproc ... | cat`).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The path of a C twin from `c-compare/`: the one `make` built (in
/// `$MPROC_C_DIR`) when there is one, else compiled here with the
/// project's flags.
pub fn c_program(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MPROC_C_DIR") {
        let built = Path::new(&dir).join(name);
        if built.is_file() {
            return built;
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c-compare").join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&dir).expect("create the C build dir");
    // One output name per test process, then renamed: tests run in
    // parallel processes and must not see a half-written binary.
    let out = dir.join(name);
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-pthread")
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("move the C binary into place");
    out
}

/// Whether CI runs us (`CI=true`: set by GitHub Actions and `.ci/run`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether an executable named `tool` is on `PATH`.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether `tool`, which `needed_for` needs, is installed. When it is not,
/// the caller skips that check and passes, after one line saying so;
/// under CI, which installs every tool the tests use, a missing tool
/// fails the test instead.
pub fn require_tool(tool: &str, needed_for: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    assert!(!under_ci(), "{tool} is not installed, and CI=true requires it ({needed_for})");
    eprintln!("skipped: {needed_for}: {tool} is not installed (CI installs it)");
    false
}

/// Stdout as lines.
pub fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Polls `done` every 10 ms until it holds or `limit` has passed; its
/// last answer.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Whether any process of group `pgid` is alive (a zombie is not: one
/// orphaned by the kill waits for init, which may never reap it). Linux:
/// read from `/proc`.
pub fn group_alive(pgid: impl Into<i64>) -> bool {
    let pgid = pgid.into();
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // After the command in parentheses: state, ppid, pgrp, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return false };
        let fields: Vec<&str> = rest.split(' ').collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2].parse() == Ok(pgid)
    })
}
