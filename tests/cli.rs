//! The `mproc` binary, run the way a user runs it, with stdout a pipe (or a
//! file): the seed demos' exact output, usage errors, help, and `--trace`.
//!
//! `Command::output` waits for (reaps) every process it starts.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output, Stdio};

fn mproc_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mproc"));
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs `mproc ARGS` with stdout and stderr through pipes.
fn mproc(args: &[&str]) -> Output {
    mproc_command(args).output().expect("run mproc")
}

/// Runs `mproc ARGS` with stdout redirected to a file; returns the exit
/// code and the file's contents.
fn mproc_to_file(args: &[&str], name: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("mproc-cli-{}-{name}.out", std::process::id()));
    let file = fs::File::create(&path).expect("create output file");
    let out = mproc_command(args).stdout(file).output().expect("run mproc");
    let text = fs::read_to_string(&path).expect("read output file");
    let _ = fs::remove_file(&path);
    (out.status.code(), text)
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

/// Runs a command that must succeed and returns its stdout.
fn success_stdout(args: &[&str]) -> String {
    let out = mproc(args);
    assert_eq!(out.status.code(), Some(0), "mproc {args:?} failed; stderr: {}", stderr_of(&out));
    stdout_of(&out)
}

// ---------------------------------------------------------------------------
// square

#[test]
fn square_prints_the_seed_lines_exactly() {
    assert_eq!(success_stdout(&["square"]), "The square of 5 is 25\nMain process completed\n");
}

#[test]
fn square_takes_a_number() {
    assert_eq!(success_stdout(&["square", "12"]), "The square of 12 is 144\nMain process completed\n");
    assert_eq!(success_stdout(&["square", "-3"]), "The square of -3 is 9\nMain process completed\n");
}

#[test]
fn square_of_the_largest_i64_does_not_overflow() {
    let n = i64::MAX;
    let expected =
        format!("The square of {n} is {}\nMain process completed\n", i128::from(n) * i128::from(n));
    assert_eq!(success_stdout(&["square", &n.to_string()]), expected);
}

#[test]
fn square_into_a_file_is_the_same_as_into_a_pipe() {
    let (code, text) = mproc_to_file(&["square"], "square");
    assert_eq!(code, Some(0));
    assert_eq!(text, "The square of 5 is 25\nMain process completed\n");
}

// ---------------------------------------------------------------------------
// numbers

/// Checks `numbers` output: one `Process i: i` line for each i in 1..=count,
/// in any order, no duplicates, then `Main process completed` last.
fn assert_numbers_output(text: &str, count: u32) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), count as usize + 1, "{text:?}");
    assert_eq!(lines.last(), Some(&"Main process completed"), "{text:?}");
    let got: BTreeSet<&str> = lines[..count as usize].iter().copied().collect();
    let expected: Vec<String> = (1..=count).map(|i| format!("Process {i}: {i}")).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(got, expected, "{text:?}");
    assert!(text.ends_with('\n'), "{text:?}");
}

#[test]
fn numbers_prints_four_lines_then_completion() {
    assert_numbers_output(&success_stdout(&["numbers"]), 4);
}

#[test]
fn numbers_takes_a_count() {
    assert_numbers_output(&success_stdout(&["numbers", "--count", "7"]), 7);
}

#[test]
fn numbers_with_count_zero_only_completes() {
    assert_eq!(success_stdout(&["numbers", "--count", "0"]), "Main process completed\n");
}

#[test]
fn numbers_into_a_file_is_the_same_as_into_a_pipe() {
    let (code, text) = mproc_to_file(&["numbers", "--count", "6"], "numbers");
    assert_eq!(code, Some(0));
    assert_numbers_output(&text, 6);
}

// ---------------------------------------------------------------------------
// isolation

/// One `... counter = VALUE at ADDRESS` line.
#[derive(Debug)]
struct CounterLine<'a> {
    /// `"fork"` or `"thread"`: the part of the demo.
    part: &'a str,
    /// The words between the part and `counter`, e.g. `"child sets"`.
    who: &'a str,
    value: i64,
    address: &'a str,
}

fn parse_counter_line(line: &str) -> Option<CounterLine<'_>> {
    let (part, rest) = line.split_once(": ")?;
    let (who, rest) = rest.split_once(" counter = ")?;
    let (value, address) = rest.split_once(" at ")?;
    Some(CounterLine { part, who, value: value.parse().ok()?, address })
}

/// Checks the isolation demo: 8 lines, the six counter lines with the
/// values a fork and a thread must show and one address throughout, and a
/// plain-words conclusion after each half; and, after each write, the
/// lines counting what it cost the kernel (the counts themselves are
/// checked in tests/isolation.rs).
fn assert_isolation_output(text: &str) {
    let is_cost = |l: &&str| l.contains(" minor fault") || l.contains("private dirty");
    let costs: Vec<&str> = text.lines().filter(is_cost).collect();
    assert!(costs.len() == 2 || costs.len() == 3, "{text:?}");
    assert!(costs[0].starts_with("fork: the child's one write cost "), "{costs:?}");
    assert!(costs.last().is_some_and(|l| l.starts_with("thread: the thread's one write cost ")), "{costs:?}");
    if costs.len() == 3 {
        assert!(costs[1].starts_with("fork: the child's private dirty memory: "), "{costs:?}");
    }
    let lines: Vec<&str> = text.lines().filter(|l| !is_cost(l)).collect();
    assert_eq!(lines.len(), 8, "{text:?}");
    let counters: Vec<CounterLine> = [0, 1, 2, 4, 5, 6]
        .iter()
        .map(|&i| parse_counter_line(lines[i]).unwrap_or_else(|| panic!("line {i}: {:?}", lines[i])))
        .collect();
    // (part, a word naming who speaks, the value it must report)
    let expected = [
        ("fork", "parent", 100),
        ("fork", "child", 200),
        ("fork", "parent", 100),
        ("thread", "main", 100),
        ("thread", "thread", 200),
        ("thread", "main", 200),
    ];
    for (line, (part, who, value)) in counters.iter().zip(expected) {
        assert_eq!((line.part, line.value), (part, value), "{line:?}");
        assert!(line.who.contains(who), "{line:?} should name the {who}");
    }
    assert!(counters[2].who.contains("after join"), "{:?}", counters[2]);
    assert!(counters[5].who.contains("after join"), "{:?}", counters[5]);

    let address = counters[0].address;
    assert!(address.starts_with("0x") && address.len() > 2, "{address:?}");
    assert!(u64::from_str_radix(&address[2..], 16).is_ok(), "{address:?}");
    for line in &counters {
        assert_eq!(line.address, address, "every line shows the same address");
    }

    for (i, part) in [(3, "fork: "), (7, "thread: ")] {
        assert!(lines[i].starts_with(part), "{:?}", lines[i]);
        assert!(parse_counter_line(lines[i]).is_none(), "{:?}", lines[i]);
        assert!(lines[i].contains("same address"), "{:?}", lines[i]);
    }
}

#[test]
fn isolation_shows_a_copy_for_fork_and_sharing_for_threads() {
    assert_isolation_output(&success_stdout(&["isolation"]));
}

#[test]
fn isolation_into_a_file_is_the_same_as_into_a_pipe() {
    let (code, text) = mproc_to_file(&["isolation"], "isolation");
    assert_eq!(code, Some(0));
    assert_isolation_output(&text);
}

// ---------------------------------------------------------------------------
// bad input

/// A usage error: status 2, nothing on stdout, one `mproc: ` line on stderr.
fn assert_usage_error(args: &[&str]) {
    let out = mproc(args);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "mproc {args:?}; stderr: {stderr}");
    assert_eq!(stdout_of(&out), "", "mproc {args:?} wrote to stdout");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "mproc {args:?}: want one line, got {stderr:?}");
    assert!(lines[0].starts_with("mproc: ") && lines[0].len() > "mproc: ".len(), "{stderr:?}");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
}

#[test]
fn square_rejects_a_non_number() {
    assert_usage_error(&["square", "abc"]);
}

#[test]
fn square_rejects_a_number_too_large_for_i64() {
    assert_usage_error(&["square", "9223372036854775808"]);
}

#[test]
fn numbers_rejects_a_negative_count() {
    assert_usage_error(&["numbers", "--count", "-1"]);
}

#[test]
fn numbers_rejects_a_non_numeric_count() {
    assert_usage_error(&["numbers", "--count", "x"]);
}

#[test]
fn numbers_rejects_a_count_above_the_limit() {
    assert_usage_error(&["numbers", "--count", "1001"]);
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    assert_usage_error(&["frobnicate"]);
}

#[test]
fn unknown_option_is_a_usage_error() {
    assert_usage_error(&["square", "--bogus"]);
}

#[test]
fn usage_error_names_the_bad_value() {
    let out = mproc(&["square", "abc"]);
    assert!(stderr_of(&out).contains("abc"), "{:?}", stderr_of(&out));
}

// ---------------------------------------------------------------------------
// help

/// `mproc ARGS --help`: status 0, nothing on stderr, and every `word` in it.
fn assert_help_mentions(args: &[&str], words: &[&str]) {
    let out = mproc(args);
    let help = stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "mproc {args:?}");
    assert_eq!(stderr_of(&out), "", "mproc {args:?}");
    for word in words {
        assert!(help.contains(word), "mproc {args:?} does not mention {word:?}:\n{help}");
    }
}

#[test]
fn help_lists_every_subcommand_and_global_option() {
    assert_help_mentions(
        &["--help"],
        &[
            "square",
            "numbers",
            "cube",
            "isolation",
            "speedup",
            "bench",
            "run",
            "--trace",
            "--help",
            "--version",
        ],
    );
}

#[test]
fn square_help_describes_its_argument() {
    assert_help_mentions(&["square", "--help"], &["[N]", "default: 5", "--trace", "--help"]);
}

#[test]
fn numbers_help_describes_count() {
    assert_help_mentions(&["numbers", "--help"], &["--count <N>", "default: 4", "--trace", "--help"]);
}

#[test]
fn isolation_help_is_available() {
    assert_help_mentions(&["isolation", "--help"], &["--trace", "--help"]);
}

// ---------------------------------------------------------------------------
// --trace

/// Splits a trace line `[pid] call...` into the pid and the call.
fn parse_trace_line(line: &str) -> Option<(i32, &str)> {
    let rest = line.strip_prefix('[')?;
    let (pid, call) = rest.split_once("] ")?;
    Some((pid.parse().ok()?, call))
}

#[test]
fn trace_shows_fork_and_waitpid_of_the_same_child_on_stderr() {
    let out = mproc(&["--trace", "square"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_of(&out), "The square of 5 is 25\nMain process completed\n", "stdout is unchanged");

    let stderr = stderr_of(&out);
    let calls: Vec<(i32, &str)> = stderr
        .lines()
        .map(|l| parse_trace_line(l).unwrap_or_else(|| panic!("not a trace line: {l:?}")))
        .collect();
    let forks: Vec<(i32, i32)> = calls
        .iter()
        .filter_map(|&(pid, call)| Some((pid, call.strip_prefix("fork() = ")?.parse().ok()?)))
        .collect();
    assert_eq!(forks.len(), 1, "one fork: {stderr}");
    let (parent, child) = forks[0];
    assert!(child > 0 && child != parent, "{stderr}");
    assert!(calls.contains(&(parent, &format!("waitpid({child}) = exited 0"))), "no waitpid line: {stderr}");
    assert!(calls.contains(&(child, "_exit(0)")), "the child traces its own _exit: {stderr}");

    // Order: the fork happens before the wait that reaps it.
    let fork_at = calls.iter().position(|&(_, c)| c.starts_with("fork() = ")).unwrap_or(usize::MAX);
    let wait_at = calls.iter().position(|&(_, c)| c.starts_with("waitpid(")).unwrap_or(0);
    assert!(fork_at < wait_at, "{stderr}");
}

#[test]
fn trace_after_the_subcommand_works_too() {
    let out = mproc(&["numbers", "--count", "2", "--trace"]);
    assert_eq!(out.status.code(), Some(0));
    assert_numbers_output(&stdout_of(&out), 2);
    let stderr = stderr_of(&out);
    let forks = stderr.lines().filter(|l| l.contains("] fork() = ")).count();
    let waits = stderr.lines().filter(|l| l.contains("] waitpid(") && l.ends_with(") = exited 0")).count();
    assert_eq!((forks, waits), (2, 2), "{stderr}");
}

#[test]
fn without_trace_stderr_is_empty() {
    let out = mproc(&["square"]);
    assert_eq!(stderr_of(&out), "");
}

#[test]
fn a_full_stdout_is_one_line_on_stderr_and_status_1_never_a_panic() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { return };
    for args in [&["square"][..], &["numbers", "--count", "2"], &["isolation"], &["cube"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mproc"))
            .args(args)
            .stdout(full.try_clone().expect("dup /dev/full"))
            .output()
            .expect("run mproc");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked at"), "{args:?} panicked:\n{err}");
        assert!(err.lines().all(|l| l.starts_with("mproc: ")), "{args:?}:\n{err}");
        assert_eq!(err.lines().count(), 1, "one line, as mproc(1) says: {args:?}:\n{err}");
        assert!(err.contains("cannot write to stdout"), "{args:?}:\n{err}");
    }
}

// ---------------------------------------------------------------------------
// signals while children are running (hardening item 10)

/// The children of `pid`, from `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> Vec<i32> {
    let mut kids = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return kids };
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        kids.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    kids
}

/// Whether `pid` sleeps in a pipe write (`/proc/PID/wchan`).
fn blocked_in_pipe_write(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("pipe_write"))
}

/// A pipe whose buffer is already full, so that the next write blocks:
/// `{ head -c 65536 /dev/zero; mproc ...; } | sleep 4`. Returns both ends;
/// keep the read end open and unread.
fn full_pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe().expect("pipe");
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
    let chunk = [0u8; 4096];
    while nix::unistd::write(&w, &chunk).is_ok() {}
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).expect("blocking again");
    (r, w)
}

/// Runs `mproc ARGS` into a full pipe, waits until `children` children of
/// it are blocked writing, sends `signal` to mproc alone, and checks that
/// mproc exits 128 + signal with every child killed and reaped.
fn signal_with_children_blocked_in_write(args: &[&str], children: usize, signal: nix::sys::signal::Signal) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (read_end, write_end) = full_pipe();
    let mut mproc =
        mproc_command(args).stdout(write_end).stderr(Stdio::piped()).spawn().expect("spawn mproc");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let kids = loop {
        let kids = children_of(mproc.id());
        if kids.len() == children && kids.iter().all(|&k| blocked_in_pipe_write(k)) {
            break kids;
        }
        assert!(std::time::Instant::now() < deadline, "mproc {args:?}: children {kids:?} never blocked");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    kill(Pid::from_raw(mproc.id() as i32), signal).expect("signal mproc");
    let status = mproc.wait().expect("wait for mproc");
    let survivors: Vec<i32> =
        kids.iter().copied().filter(|&k| kill(Pid::from_raw(k), None).is_ok()).collect();
    for &k in &survivors {
        let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
    }
    drop(read_end);
    assert_eq!(status.code(), Some(128 + signal as i32), "mproc {args:?}: {status:?}");
    assert_eq!(survivors, Vec::<i32>::new(), "mproc {args:?} left children running after {signal}");
}

#[test]
fn sigint_kills_and_reaps_a_square_child_blocked_in_write() {
    signal_with_children_blocked_in_write(&["square"], 1, nix::sys::signal::Signal::SIGINT);
}

#[test]
fn sigterm_kills_and_reaps_a_square_child_blocked_in_write() {
    signal_with_children_blocked_in_write(&["square"], 1, nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn sigint_kills_and_reaps_every_numbers_child_blocked_in_write() {
    signal_with_children_blocked_in_write(&["numbers", "--count", "5"], 5, nix::sys::signal::Signal::SIGINT);
}

#[test]
fn sigterm_kills_and_reaps_every_numbers_child_blocked_in_write() {
    signal_with_children_blocked_in_write(&["numbers", "--count", "5"], 5, nix::sys::signal::Signal::SIGTERM);
}

// ---------------------------------------------------------------------------
// `| head -1` (hardening item 8)

/// Runs `mproc ARGS | head -1` 20 times: reads one line, closes the pipe,
/// and expects every run to end quietly as if killed by SIGPIPE (141 in a
/// shell), with nothing on stderr.
fn assert_head_1_ends_quietly_with_141(args: &[&str]) {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    for run in 0..20 {
        let mut child =
            mproc_command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mproc");
        let mut first = String::new();
        {
            let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            reader.read_line(&mut first).expect("read one line");
            // The reader (the only read end) closes here, as head's does.
        }
        let out = child.wait_with_output().expect("wait for mproc");
        assert!(!first.is_empty(), "mproc {args:?}: no first line");
        let status = out.status;
        let shell_code = status.code().or(status.signal().map(|s| 128 + s));
        let stderr = stderr_of(&out);
        assert!(
            // Quiet success is fine too: mproc may finish before the close.
            (shell_code == Some(141) || shell_code == Some(0)) && stderr.is_empty(),
            "run {run} of mproc {args:?} | head -1: status {status:?}, stderr {stderr:?}"
        );
    }
}

#[test]
fn numbers_into_head_1_ends_quietly() {
    assert_head_1_ends_quietly_with_141(&["numbers"]);
}

#[test]
fn isolation_into_head_1_ends_quietly() {
    assert_head_1_ends_quietly_with_141(&["isolation"]);
}

#[test]
fn cube_into_head_1_ends_quietly() {
    assert_head_1_ends_quietly_with_141(&["cube"]);
}

#[test]
fn square_into_head_1_ends_quietly() {
    assert_head_1_ends_quietly_with_141(&["square"]);
}

/// `mproc --trace LESSON 2>&1 >/dev/null | head -1`: the trace's reader
/// goes away while the parent forks and joins. No process may die of that
/// SIGPIPE halfway, leaving its children behind: the lesson runs to its
/// end, untraced from then on, and reaps every child.
#[cfg(target_os = "linux")]
#[test]
fn a_trace_into_a_pipe_that_closes_leaves_no_child_behind() {
    use std::io::BufRead;
    // Orphans come back to this process, to be seen (and reaped) here.
    // SAFETY: prctl with integer arguments only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    for args in [&["--trace", "numbers", "--count", "200"][..], &["--trace", "cube"]] {
        for _ in 0..3 {
            let mut child = mproc_command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn mproc");
            {
                let mut reader = std::io::BufReader::new(child.stderr.take().expect("stderr"));
                let mut first = String::new();
                reader.read_line(&mut first).expect("read one trace line");
                assert!(first.starts_with('['), "{first:?}");
            }
            let status = child.wait().expect("wait for mproc");
            std::thread::sleep(std::time::Duration::from_millis(200));
            let left = common::pools::children_of(std::process::id() as i32);
            for &pid in &left {
                // SAFETY: kill and waitpid on our own (adopted) children.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            assert!(left.is_empty(), "mproc {args:?} ({status:?}) left {} processes behind", left.len());
            assert_eq!(status.code(), Some(0), "mproc {args:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// help, version and no subcommand (hardening items 9 and 11)

#[test]
fn help_and_version_into_a_full_disk_are_one_line_and_status_1() {
    for args in [&["--help"][..], &["--version"], &["square", "--help"], &["help"]] {
        let full = fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
        let out = mproc_command(args).stdout(full).output().expect("run mproc");
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "mproc {args:?} > /dev/full: {err}");
        assert_eq!(err.lines().count(), 1, "mproc {args:?} > /dev/full: {err}");
        assert!(err.starts_with("mproc: ") && err.contains("stdout"), "{err}");
    }
}

#[test]
fn no_subcommand_is_a_one_line_usage_error() {
    assert_usage_error(&[]);
    assert_usage_error(&["--trace"]);
}

// ---------------------------------------------------------------------------
// cube overflow (hardening item 11)

#[test]
fn cube_of_a_number_whose_cube_overflows_says_overflow_and_fails() {
    let out = mproc(&["cube", "--", "2", "-9223372036854775808"]);
    let stdout = stdout_of(&out);
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "The cube of 2 is 8\n", "no false cube is printed");
    assert_eq!(stderr, "mproc: cube: overflow: the cube of -9223372036854775808 does not fit in 128 bits\n");
}

#[test]
fn cube_of_the_largest_exact_number_is_exact() {
    // 5541191377756^3 < 2^127 <= 5541191377757^3 (in magnitude).
    let n: i128 = 5_541_191_377_756;
    let out = success_stdout(&["cube", "--", "-5541191377756"]);
    assert_eq!(out, format!("The cube of -{n} is {}\nMain process completed\n", -(n * n * n)));
}

// ---------------------------------------------------------------------------
// the documented --trace example (hardening item 11)

#[test]
fn trace_shows_the_child_closing_the_sentinels_read_end_or_no_pipe_with_pidfds() {
    let out = mproc(&["--trace", "square", "7"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = stderr_of(&out);
    let calls: Vec<(i32, &str)> = stderr.lines().filter_map(parse_trace_line).collect();
    let pipe = calls.iter().find(|(_, c)| c.starts_with("pipe() = ["));
    if cfg!(target_os = "linux") {
        // A pidfd is opened only when someone polls the child: `square`
        // only joins it, so it makes no descriptor at all (mproc(1)).
        assert_eq!(pipe, None, "no sentinel pipe where the kernel makes pidfds: {stderr}");
        assert!(!stderr.contains("pidfd_open("), "nobody polls: {stderr}");
        return;
    }
    let (parent, pipe) = pipe.expect("a pipe line");
    let read_end = pipe.trim_start_matches("pipe() = [").split(',').next().expect("read end");
    let child: i32 = calls
        .iter()
        .find_map(|&(pid, c)| (pid == *parent).then(|| c.strip_prefix("fork() = ")?.parse().ok()).flatten())
        .expect("a fork line");
    assert!(
        calls.contains(&(child, &format!("close({read_end})"))),
        "as in mproc(1) and the README: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// a pool whose zygote dies (hardening item 1)

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "finds the zygote in /proc")]
fn speedup_with_its_zygote_killed_fails_in_one_line_instead_of_hanging() {
    use std::time::{Duration, Instant};
    let mut child = mproc_command(&["speedup", "--workers", "2", "--tasks", "40", "--work", "300000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mproc");
    // The zygote: the child of mproc that has the two workers as children.
    let deadline = Instant::now() + Duration::from_secs(60);
    let zygote = loop {
        let found = children_of(child.id()).into_iter().find(|&c| children_of(c as u32).len() == 2);
        if let Some(z) = found {
            break z;
        }
        assert!(Instant::now() < deadline, "no pool appeared");
        assert!(child.try_wait().expect("try_wait").is_none(), "mproc ended before its pool started");
        std::thread::sleep(Duration::from_millis(2));
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mproc speedup still runs 10 s after its zygote was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("zygote {zygote} killed by signal 9")), "{stderr}");
}

/// Every shared library is four or five more mappings that each `fork`
/// copies and each child's exit tears down: libgcc_s cost a `Process`
/// start+join about 10 µs (8 %). `build.rs` links the binary's unwinder
/// statically, as `gcc -static-libgcc` does, where the linking compiler
/// has it (and then sets `mproc_static_unwinder`). The dynamic loader
/// lists what it would load (what `ldd` prints) when
/// `LD_TRACE_LOADED_OBJECTS` is set.
#[cfg(mproc_static_unwinder)]
#[test]
fn the_binary_maps_no_shared_unwinder() {
    let out = mproc_command(&[]).env("LD_TRACE_LOADED_OBJECTS", "1").output().expect("run mproc");
    let listed = stdout_of(&out);
    assert!(out.status.success() && listed.contains("libc.so"), "the loader listed nothing: {listed}");
    assert!(!listed.contains("libgcc_s"), "mproc loads the shared unwinder:\n{listed}");
}

/// `mproc bench` with no benchmark named lists the benchmarks, not the
/// top-level subcommands.
#[test]
fn a_missing_benchmark_names_the_benchmarks() {
    let out = mproc(&["bench"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("process, ring, pool, run or compare") && err.contains("mproc bench --help"),
        "{err}"
    );
    let out = mproc(&["--trace", "bench"]);
    assert!(stderr_of(&out).contains("process, ring, pool, run or compare"), "{}", stderr_of(&out));
    let out = mproc(&[]);
    assert!(
        stderr_of(&out).contains("square, numbers, cube, isolation, speedup, bench or run"),
        "{}",
        stderr_of(&out)
    );
}

/// Help and version text into a pipe nobody reads end the program quietly,
/// killed by SIGPIPE, as every subcommand's output does (`mproc --help |
/// true`), not with an error line and status 1.
#[test]
fn help_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["--help"][..], &["--version"], &["help", "square"], &["run", "--help"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = mproc_command(args).stdout(writer).stderr(Stdio::piped()).output().expect("run mproc");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}, {}",
            out.status,
            stderr_of(&out)
        );
        assert_eq!(stderr_of(&out), "", "{args:?}");
    }
}
