//! `mproc run`, end to end: the binary is run as a user would run it.
//!
//! Run with `cargo nextest run --test run` (one process per test: the
//! resource-usage and child-process checks look at the test's own children).
//! Checks that read `/proc` (children, descriptors, memory) are Linux-only.

use std::collections::BTreeSet;
#[cfg(target_os = "linux")]
use std::fs::File;
#[cfg(target_os = "linux")]
use std::io::Read;
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(target_os = "linux")]
use std::process::Child;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
#[cfg(target_os = "linux")]
use common::{group_alive, wait_until};

const MPROC: &str = env!("CARGO_BIN_EXE_mproc");

fn mproc(args: &[&str]) -> Command {
    let mut cmd = Command::new(MPROC);
    cmd.arg("run").args(args).stdin(Stdio::null());
    cmd
}

/// Runs `mproc run ARGS` with `stdin` as its input.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(MPROC)
        .arg("run")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    mproc(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch directory for one test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mproc-run-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pids whose parent is `pid` (from /proc/*/stat).
#[cfg(target_os = "linux")]
fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // The fields after the command, which is in parentheses and may
        // contain spaces: state, ppid, ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        if rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            kids.push(child);
        }
    }
    kids
}

/// Whether `pid` is still a live (not zombie) process.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').map(|i| &stat[i + 2..i + 3]) != Some("Z"),
        Err(_) => false,
    }
}

/// Polls `ended` every 10 ms until it returns the child's end; kills the
/// child and fails if that takes longer than `limit`.
#[cfg(target_os = "linux")]
fn poll_with_limit<T>(
    child: &mut Child,
    limit: Duration,
    mut ended: impl FnMut(&mut Child) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(end) = ended(child) {
            return end;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mproc did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child with a time limit; kills it and fails if it hangs.
#[cfg(target_os = "linux")]
fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    poll_with_limit(child, limit, |c| c.try_wait().unwrap())
}

#[cfg(target_os = "linux")]
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

// ---------------------------------------------------------------------------
// inputs and substitution

#[test]
fn replacement_strings_are_substituted_in_every_word() {
    let out = run(&["-j2", "echo", "{}", "{.}", "{/}", "{//}", "{/.}", "x{}y", ":::", "dir.d/a.tar.gz", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "dir.d/a.tar.gz dir.d/a.tar a.tar.gz dir.d a.tar xdir.d/a.tar.gzy\nb b b . b xby\n"
    );
}

/// `{//}` is dirname(1); `{/}`, `{.}` and `{/.}` are GNU parallel's
/// regular expressions (`s:^.*/::`, `s:\.[^/.]*$::`), also on odd paths.
#[test]
fn path_replacements_follow_dirname_and_gnu_parallel_on_odd_paths() {
    let cases = [
        ("/abs", "[/] [abs] [/abs] [abs]"),
        ("/", "[/] [] [/] []"),
        ("a/b/", "[a] [] [a/b/] []"),
        ("a//b", "[a] [b] [a//b] [b]"),
        ("/a.b/", "[/] [] [/a.b/] []"),
        ("a.b/c.d/", "[a.b] [] [a.b/c.d/] []"),
        ("//x//", "[/] [] [//x//] []"),
        (".bashrc", "[.] [.bashrc] [] []"),
        ("a/.x", "[a] [.x] [a/] []"),
        ("./a", "[.] [a] [./a] [a]"),
        ("", "[.] [] [] []"),
    ];
    let mut args = vec!["echo", "[{//}] [{/}] [{.}] [{/.}]", ":::"];
    args.extend(cases.iter().map(|(input, _)| *input));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected: String = cases.iter().map(|(_, line)| format!("{line}\n")).collect();
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn input_is_appended_when_there_is_no_replacement_string() {
    let out = run(&["echo", "-n", "[", ":::", "a b", "c"]);
    assert_eq!(text(&out.stdout), "[ a b[ c");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn inputs_come_from_stdin_one_per_line_and_jobs_read_dev_null() {
    // `cat` reads the job's stdin: /dev/null, not the rest of the inputs.
    let out = run_with_stdin(&["-j3", "sh", "-c", "cat; echo \"<$1>\"", "sh"], b"a\nb c\n\nd");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "<a>\n<b c>\n<>\n<d>\n");
}

/// Reads `child`'s stdout line by line on a thread; lines arrive on the
/// returned channel (so a test can wait for one with a time limit).
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Bug: stdin was read to its end before the first job started.
#[test]
fn stdin_inputs_start_jobs_as_lines_arrive() {
    let mut child = mproc(&["echo", "got"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = stdout_lines(&mut child);
    for input in ["1", "2", "3"] {
        // The writing end stays open: the job must run without end of file.
        stdin.write_all(format!("{input}\n").as_bytes()).unwrap();
        let line = lines.recv_timeout(Duration::from_secs(10));
        assert_eq!(line.as_deref(), Ok(format!("got {input}").as_str()), "no job ran for input {input}");
    }
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(lines.recv().is_err(), "more output than expected");
}

/// `while :; do echo x; sleep .05; done | mproc run echo | head -3` ends.
#[cfg(target_os = "linux")]
#[test]
fn an_endless_input_stream_runs_jobs_until_the_reader_leaves() {
    use std::os::unix::process::CommandExt;
    let pipeline = format!("while :; do echo x; sleep 0.05; done | '{MPROC}' run echo | head -3");
    let mut child = Command::new("sh")
        .args(["-c", &pipeline])
        .process_group(0)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Whatever happens, nothing of the pipeline outlives the test.
    struct KillGroup(i32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            // SAFETY: kill takes integers only; the group is the pipeline's.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
    let _group = KillGroup(child.id() as i32);
    let lines = stdout_lines(&mut child);
    let got: Vec<String> = (0..3).filter_map(|_| lines.recv_timeout(Duration::from_secs(10)).ok()).collect();
    assert_eq!(got, ["x", "x", "x"]);
    let status = wait_with_limit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

/// Ctrl-Z then `fg`, again and again, while jobs start: the terminal's
/// stop signal goes to the runner's process group, which includes a job
/// that has not yet moved to its own group. That job must not stay
/// stopped (`fg` continues the runner's group, not the job's), and the
/// runner (on Linux it waits for each job to exec) must not hang with it.
#[cfg(target_os = "linux")]
#[test]
fn stop_and_continue_signals_to_the_runners_group_strand_no_job() {
    use std::os::unix::process::CommandExt;
    let inputs: Vec<String> = (0..4000).map(|i| i.to_string()).collect();
    let mut child = Command::new(MPROC)
        .args(["run", "-j", "2", "true", ":::"])
        .args(&inputs)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = child.id() as i32;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(3) {
        // SAFETY: kill takes integers only; the group is the runner's.
        unsafe { libc::kill(-group, libc::SIGTSTP) };
        std::thread::sleep(Duration::from_millis(3));
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(2));
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let stranded: Vec<String> = children_of(child.id())
                .into_iter()
                .map(|kid| {
                    let stat = std::fs::read_to_string(format!("/proc/{kid}/stat")).unwrap_or_default();
                    // SAFETY: kill takes integers only; the pid is our grandchild.
                    unsafe { libc::kill(kid as i32, libc::SIGKILL) };
                    stat
                })
                .collect();
            let _ = child.kill();
            let _ = child.wait();
            panic!("mproc hung; its children: {stranded:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// Read-ahead is bounded: 64 MB of input lines go through in a few MiB.
#[cfg(target_os = "linux")]
#[test]
fn a_large_input_is_read_in_bounded_memory() {
    let mut child =
        mproc(&["--dry-run", "echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let line = format!("{}\n", "y".repeat(1023));
        for _ in 0..(64 << 10) {
            stdin.write_all(line.as_bytes()).unwrap();
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let (mut lines, mut buf) = (0usize, vec![0u8; 1 << 16]);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    writer.join().unwrap();
    assert!(wait_with_limit(&mut child, Duration::from_secs(60)).success());
    assert_eq!(lines, 64 << 10);
    let peak = children_peak_rss();
    assert!(peak < 24 << 20, "runner peak RSS {} MiB for 64 MiB of input", peak >> 20);
}

/// Waits for `child` with a time limit (killing it if it hangs) and returns
/// its wait status and peak RSS in bytes, from wait4: the largest of the
/// child's and its own waited-for children's, whatever other children this
/// test process has.
#[cfg(target_os = "linux")]
fn wait_with_peak_rss(mut child: Child, limit: Duration) -> (i32, u64) {
    let pid = child.id() as i32;
    poll_with_limit(&mut child, limit, |_| {
        let mut raw = 0;
        // SAFETY: a plain C struct, zeroes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 fills the status and the struct we pass.
        let reaped = unsafe { libc::wait4(pid, &mut raw, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        (reaped == pid).then(|| (raw, usage.ru_maxrss as u64 * 1024))
    })
}

/// The same with real jobs: 4,000 lines of 16 KiB (64 MiB) on stdin, each
/// the argument of a job, go through the runner in a few MiB — inputs are
/// read as jobs start, not ahead, and nothing of a finished job is kept.
#[cfg(target_os = "linux")]
#[test]
fn a_large_input_feeding_real_jobs_is_read_in_bounded_memory() {
    const LINES: usize = 4000;
    // Reaped by wait4, for the runner's peak RSS (its jobs, `true`, are tiny).
    let mut child = mproc(&["-j2", "true"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..LINES {
            // Distinct lines, so no input is like the one before.
            let line = format!("{i:05}{}\n", "y".repeat((16 << 10) - 6));
            if stdin.write_all(line.as_bytes()).is_err() {
                return i; // mproc is gone; its status says why
            }
        }
        LINES
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut printed = Vec::new();
        stdout.read_to_end(&mut printed).unwrap();
        printed
    });
    let (raw, peak) = wait_with_peak_rss(child, Duration::from_secs(60));
    assert_eq!(writer.join().unwrap(), LINES, "mproc stopped reading its input");
    assert!(libc::WIFEXITED(raw) && libc::WEXITSTATUS(raw) == 0, "wait status {raw:#x}");
    assert_eq!(text(&reader.join().unwrap()), "");
    assert!(peak < 24 << 20, "runner peak RSS {} MiB for 64 MiB of input", peak >> 20);
}

#[test]
fn null_separated_inputs_may_hold_newlines() {
    let out = run_with_stdin(&["-0", "printf", "[%s]"], b"a\nb\0c\0");
    assert_eq!(text(&out.stdout), "[a\nb][c]");
}

#[test]
fn an_input_with_a_nul_byte_fails_its_job_only() {
    let out = run_with_stdin(&["echo"], b"a\nb\0c\nd\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "a\nd\n");
    assert!(
        text(&out.stderr).contains("mproc: job 2: invalid argument: argument contains a NUL byte"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_empty_input_list_runs_nothing_and_succeeds() {
    let out = run(&["echo", "x", ":::"]);
    assert_eq!((out.status.code(), out.stdout.len(), out.stderr.len()), (Some(0), 0, 0));
    let out = run_with_stdin(&["echo", "x"], b"");
    assert_eq!((out.status.code(), out.stdout.len(), out.stderr.len()), (Some(0), 0, 0));
}

// ---------------------------------------------------------------------------
// several input sources

fn lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn several_sources_give_every_combination_in_gnu_parallels_order() {
    let out = run(&["-j3", "echo", ":::", "A", "B", "C", ":::", "D", "E", "F"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected: Vec<String> =
        ["A", "B", "C"].iter().flat_map(|a| ["D", "E", "F"].map(|d| format!("{a} {d}"))).collect();
    assert_eq!(lines(&out), expected);
}

#[test]
fn four_colons_read_inputs_from_files_mixed_with_lists() {
    let dir = TempDir::new("argfiles");
    let (nums, letters) = (dir.path("nums"), dir.path("letters"));
    std::fs::write(&nums, "1\n2\n").unwrap();
    std::fs::write(&letters, "x\ny").unwrap();
    let out = run(&["echo", ":::", "a", "::::", &nums, ":::", "b", "c"]);
    assert_eq!(lines(&out), ["a 1 b", "a 1 c", "a 2 b", "a 2 c"]);
    // Each file after :::: is a source of its own.
    let out = run(&["echo", "::::", &nums, &letters]);
    assert_eq!(lines(&out), ["1 x", "1 y", "2 x", "2 y"]);
    // `-` is standard input (and the jobs then get /dev/null).
    let out = run_with_stdin(&["sh", "-c", "cat; echo $1 $2", "sh", "::::", "-", ":::", "a", "b"], b"s\nt\n");
    assert_eq!(lines(&out), ["s a", "s b", "t a", "t b"]);
}

/// mproc(1), COMPATIBILITY: unlike GNU parallel, a `:::` word with a
/// newline is one input.
#[test]
fn a_list_word_with_a_newline_is_one_input() {
    let out = run(&["echo", "{#}:{}", ":::", "a\nb"]);
    assert_eq!(text(&out.stdout), "1:a\nb\n");
}

#[test]
fn link_pairs_the_sources_and_a_shorter_one_starts_over() {
    let out = run(&["--link", "echo", ":::", "A", "B", "C", ":::", "D", "E"]);
    assert_eq!(lines(&out), ["A D", "B E", "C D"]);
}

#[test]
fn positional_replacement_strings_pick_a_source() {
    let out = run(&["echo", "{2}-{1}", "{1.}", "{2/}", "{1//}", "{2/.}", ":::", "a/b.c", ":::", "d/e.f"]);
    assert_eq!(lines(&out), ["d/e.f-a/b.c a/b e.f a e"]);
}

#[test]
fn job_numbers_and_slots() {
    // `{#}` and `{%}` are replacement strings: the input is not appended.
    let out = run(&[
        "-j2",
        "sh",
        "-c",
        "sleep 0.$1; echo $1 $2",
        "sh",
        "{#}",
        "{%}",
        ":::",
        "a",
        "b",
        "c",
        "d",
        "e",
    ]);
    let rows: Vec<(u32, u32)> = lines(&out)
        .iter()
        .map(|l| {
            let (seq, slot) = l.split_once(' ').unwrap();
            (seq.parse().unwrap(), slot.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(rows.iter().all(|&(_, slot)| slot == 1 || slot == 2), "{rows:?}");
    assert_eq!(rows[..2].iter().map(|r| r.1).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2]));
}

#[test]
fn the_first_source_streams_while_the_others_are_read_whole() {
    let mut child = mproc(&["echo", "::::", "-", ":::", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = stdout_lines(&mut child);
    stdin.write_all(b"1\n").unwrap();
    assert_eq!(lines.recv_timeout(Duration::from_secs(10)).as_deref(), Ok("1 x"));
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn bad_input_sources_are_one_line_errors() {
    let out = run(&["echo", "::::", "/nonexistent/inputs"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        "mproc: run: cannot open input file /nonexistent/inputs: No such file or directory (os error 2)\n"
    );
    for (args, message) in [
        (&["echo", "{3}", ":::", "a", ":::", "b"][..], "{3} names input source 3, but there are 2"),
        (&["echo", "::::"][..], "missing FILE after ::::"),
        (&["echo", "::::", "-", "-"][..], "standard input can be only one input source"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stderr), format!("mproc: run: {message}\n"), "{args:?}");
    }
}

// ---------------------------------------------------------------------------
// output order and grouping

/// Writes binary files; returns inputs `DELAY:FILE` for [`BINARY_JOB`].
fn binary_inputs(dir: &TempDir) -> Vec<String> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect(); // > a pipe buffer
    let contents =
        [("0.3", all_bytes.clone()), ("0.1", big), ("0.2", b"\0\0\r\n\xff".to_vec()), ("0", all_bytes)];
    let mut inputs = Vec::new();
    for (i, (delay, data)) in contents.iter().enumerate() {
        let file = dir.path(&format!("f{i}"));
        std::fs::write(&file, data).unwrap();
        inputs.push(format!("{delay}:{file}"));
    }
    inputs
}

/// Sleeps DELAY, copies FILE to stdout, names FILE on stderr.
const BINARY_JOB: &str = r#"sleep "${1%%:*}"; cat "${1#*:}"; echo "err ${1##*/}" >&2"#;

/// `--joblog -` is refused with a clear line, rather than writing a file
/// named `-` (GNU parallel writes the log to stdout then); `/dev/stdout`
/// does that when stdout is a pipe.
#[cfg(target_os = "linux")]
#[test]
fn joblog_dash_is_refused_and_dev_stdout_works() {
    let dir = TempDir::new("joblog-dash");
    let out = mproc(&["--joblog", "-", "echo", ":::", "a"]).current_dir(&dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--joblog - "), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(!dir.0.join("-").exists(), "a file named - was made");
    let out = run(&["--joblog", "/dev/stdout", "echo", "hi", ":::", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("Seq\tHost\tStarttime"), "{stdout}");
    assert!(stdout.contains("hi a\n"), "{stdout}");
}

/// `-k` and `--unordered` are opposites: the last one given wins (an alias
/// with one can be overridden), never an error.
#[test]
fn of_keep_order_and_unordered_the_last_one_wins() {
    // Job 3 sleeps longer than job 1: input order is 3, 1; finishing
    // order is 1, 3.
    let job = ["sh", "-c", "sleep 0.$1; echo $1", "sh", ":::", "3", "1"];
    let with = |flags: &[&str]| {
        let out = run(&[flags, &["-j2"], &job[..]].concat());
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(with(&["-k", "--unordered"]), "1\n3\n");
    assert_eq!(with(&["--unordered", "-k"]), "3\n1\n");
}

#[test]
fn keep_order_output_equals_sequential_output_byte_for_byte() {
    let dir = TempDir::new("keep");
    let inputs = binary_inputs(&dir);
    // The reference: the same jobs, one after the other, without mproc.
    let (mut seq_out, mut seq_err) = (Vec::new(), Vec::new());
    for input in &inputs {
        let o = Command::new("sh").args(["-c", BINARY_JOB, "sh", input]).output().unwrap();
        seq_out.extend(o.stdout);
        seq_err.extend(o.stderr);
    }
    // In parallel they finish in another order (the 0.1 s job first), and
    // the 300 KB one must wait behind the head.
    let mut args = vec!["-j4", "sh", "-c", BINARY_JOB, "sh", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout == seq_out,
        "stdout differs from the sequential run ({} vs {} bytes)",
        out.stdout.len(),
        seq_out.len()
    );
    assert_eq!(text(&out.stderr), text(&seq_err));
}

#[test]
fn unordered_prints_each_job_whole_as_it_completes() {
    let out = run(&[
        "--unordered",
        "-j3",
        "sh",
        "-c",
        "sleep $1; echo out $1; echo err $1 >&2",
        "sh",
        ":::",
        "1.6",
        "0",
        "0.8",
    ]);
    // (Apart by 0.8 s: a loaded machine keeps them in completion order.)
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "out 0\nout 0.8\nout 1.6\n");
    assert_eq!(text(&out.stderr), "err 0\nerr 0.8\nerr 1.6\n");
}

/// Checks that `output` is made of whole blocks, one per job, each holding
/// exactly that job's `lines` lines in order; returns the jobs' order.
fn whole_blocks(output: &str, stream: &str, lines: usize) -> Vec<String> {
    let mut order = Vec::new();
    let all: Vec<&str> = output.lines().collect();
    assert_eq!(all.len() % lines, 0, "{stream}: {} lines", all.len());
    for block in all.chunks(lines) {
        let job = block[0].split(' ').next().unwrap().to_string();
        for (n, line) in block.iter().enumerate() {
            assert_eq!(*line, format!("{job} {stream} {}", n + 1), "{stream}: interleaved output");
        }
        order.push(job);
    }
    order
}

#[test]
fn concurrent_writers_never_interleave() {
    // 6 jobs at once, each writing 20,000 lines (~250 KB, several pipe
    // buffers) to stdout and to stderr, alternating: the interleaving this
    // targets is one job's bytes landing inside another's.
    let job = r#"seq -f "$1 out %g" 20000 & seq -f "$1 err %g" 20000 >&2; wait"#;
    let inputs = ["j1", "j2", "j3", "j4", "j5", "j6"];
    for order in ["--keep-order", "--unordered"] {
        let mut args = vec![order, "-j6", "sh", "-c", job, "sh", ":::"];
        args.extend(inputs);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0));
        let out_order = whole_blocks(&text(&out.stdout), "out", 20000);
        let err_order = whole_blocks(&text(&out.stderr), "err", 20000);
        assert_eq!(out_order, err_order, "{order}: stdout and stderr groups in the same order");
        let mut sorted = out_order.clone();
        sorted.sort();
        assert_eq!(sorted, inputs, "{order}: every job exactly once");
        if order == "--keep-order" {
            assert_eq!(out_order, inputs);
        }
    }
}

/// The largest resident set of any waited-for child of this test process
/// (the runner; its jobs are tiny), in bytes.
#[cfg(target_os = "linux")]
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

/// Runs mproc with stdout read in chunks (never all held in memory);
/// returns (number of leading zero bytes, the bytes after them, status).
#[cfg(target_os = "linux")]
fn count_zero_stream(args: &[&str]) -> (u64, Vec<u8>, std::process::ExitStatus) {
    let mut child = mproc(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut zeros, mut tail) = (0u64, Vec::new());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == 0 && tail.is_empty() {
                zeros += 1;
            } else {
                tail.push(b);
            }
        }
    }
    (zeros, tail, wait_with_limit(&mut child, Duration::from_secs(60)))
}

#[cfg(target_os = "linux")]
#[test]
fn a_200_mb_job_at_the_head_streams_through_in_bounded_memory() {
    let (zeros, tail, status) = count_zero_stream(&[
        "-j3",
        "sh",
        "-c",
        "eval \"$1\"",
        "sh",
        ":::",
        "head -c 200000000 /dev/zero",
        "echo two",
        "sleep 0.2; echo three",
    ]);
    assert!(status.success());
    assert_eq!(zeros, 200_000_000);
    assert_eq!(text(&tail), "two\nthree\n");
    let peak = children_peak_rss();
    assert!(peak < 40 << 20, "runner peak RSS {} MiB", peak >> 20);
}

#[cfg(target_os = "linux")]
#[test]
fn a_large_job_waiting_its_turn_spills_instead_of_growing() {
    // Job 2 writes 100 MB while job 1 (the head) still sleeps: it must wait,
    // in at most 1 MiB of memory, the rest in the spill file.
    let (zeros, tail, status) = count_zero_stream(&[
        "-j2",
        "sh",
        "-c",
        "eval \"$1\"",
        "sh",
        ":::",
        "sleep 0.5",
        "head -c 100000000 /dev/zero; echo end",
    ]);
    assert!(status.success());
    assert_eq!((zeros, text(&tail).as_str()), (100_000_000, "end\n"));
    let peak = children_peak_rss();
    assert!(peak < 40 << 20, "runner peak RSS {} MiB", peak >> 20);
}

// ---------------------------------------------------------------------------
// --tag, --line-buffer, -j forms

#[test]
fn tag_prefixes_every_line_of_both_streams_with_the_inputs() {
    let out = run(&["--tag", "echo", ":::", "a", "b", ":::", "c"]);
    assert_eq!(text(&out.stdout), "a c\ta c\nb c\tb c\n");
    // A last line without a newline is tagged and left without one.
    let out = run(&["--tag", "printf", "x\\n\\ny", ":::", "a"]);
    assert_eq!(text(&out.stdout), "a\tx\na\t\na\ty");
    let out = run(&["--tag", "sh", "-c", "echo out; echo err >&2", "sh", ":::", "in"]);
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("in\tout\n", "in\terr\n"));
    // No output, no tag.
    let out = run(&["--tag", "true", ":::", "a"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn tag_applies_to_a_job_streaming_at_the_head() {
    // 300 kB: more than a pipe holds, so the head streams in many reads.
    let out = run(&["--tag", "sh", "-c", "seq 50000", "sh", ":::", "t"]);
    let expected: String = (1..=50000).map(|i| format!("t\t{i}\n")).collect();
    assert!(text(&out.stdout) == expected, "tagged output differs");
}

#[test]
fn line_buffer_prints_lines_of_running_jobs_as_they_come() {
    let mut child = mproc(&[
        "--unordered",
        "--line-buffer",
        "-j2",
        "sh",
        "-c",
        "echo start $1; sleep 5; echo end $1",
        "sh",
        ":::",
        "1",
        "2",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = stdout_lines(&mut child);
    let mut first: Vec<String> =
        (0..2).filter_map(|_| lines.recv_timeout(Duration::from_secs(4)).ok()).collect();
    first.sort();
    assert_eq!(first, ["start 1", "start 2"], "lines of running jobs were held back");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn line_buffer_never_mixes_half_lines_of_two_jobs() {
    // Each job writes each line in 10 separate writes, apart in time, so
    // the four jobs' writes interleave.
    let script = "for l in 1 2 3 4 5; do for c in $(seq 10); do printf %s $1; sleep 0.01; done; echo; done";
    let out =
        run(&["--unordered", "--line-buffer", "-j4", "sh", "-c", script, "sh", ":::", "a", "b", "c", "d"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 20, "{stdout}");
    for line in stdout.lines() {
        let first = line.chars().next().unwrap();
        assert!(line.len() == 10 && line.chars().all(|c| c == first), "mixed line {line:?}");
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

/// The highest `{%}` `--dry-run` shows for 200 jobs: the number of jobs at once.
fn slots_for(jobs: &str) -> usize {
    let inputs: Vec<String> = (1..=200).map(|i| i.to_string()).collect();
    let mut args = vec!["--dry-run", "-j", jobs, "echo", "{%}", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "-j {jobs}: {}", text(&out.stderr));
    text(&out.stdout).lines().map(|l| l.trim_start_matches("echo ").parse::<usize>().unwrap()).max().unwrap()
}

#[test]
fn jobs_accept_gnu_parallels_relative_forms() {
    let n = cpus();
    assert_eq!(slots_for("3"), 3);
    assert_eq!(slots_for("+2"), n + 2);
    assert_eq!(slots_for("-1"), (n - 1).max(1));
    assert_eq!(slots_for("-1000"), 1);
    assert_eq!(slots_for("50%"), n.div_ceil(2));
    assert_eq!(slots_for("250%"), (n * 5).div_ceil(2));
    assert_eq!(slots_for("0"), 200, "-j 0: as many as possible");
}

#[test]
fn jobs_zero_runs_everything_at_once() {
    // 20 jobs of 2 s each: together in well under 20 s.
    let inputs: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let mut args = vec!["-j", "0", "sh", "-c", "sleep 2; echo $1", "sh", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let start = Instant::now();
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 20);
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------
// --bar, --eta: what a person sees on a terminal

/// Runs `sh -c SHELL_LINE` with stdin, stdout and stderr on a fresh
/// pseudo-terminal (`script`), and returns everything drawn on it.
#[cfg(target_os = "linux")]
fn on_a_terminal(shell_line: &str) -> Option<String> {
    if !common_script_available() {
        return None;
    }
    let out =
        Command::new("script").args(["-qec", shell_line, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{shell_line}: {:?} {}", out.status, text(&out.stderr));
    Some(text(&out.stdout))
}

/// util-linux's `script`, which gives a command a pseudo-terminal.
#[cfg(target_os = "linux")]
fn common_script_available() -> bool {
    let ok = Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: the pseudo-terminal check: util-linux script is not installed");
    }
    ok
}

#[cfg(target_os = "linux")]
#[test]
fn bar_is_redrawn_in_place_on_a_terminal_and_ends_on_its_own_line() {
    let line = format!("'{MPROC}' run --bar -j2 sh -c 'sleep 0.3; echo job $1' sh ::: 1 2 3 4");
    let Some(screen) = on_a_terminal(&line) else { return };
    // Drawn over itself (carriage return, erase line), never scrolled.
    let draws: Vec<&str> = screen.split("\r\x1b[K").filter(|d| d.starts_with('[')).collect();
    assert!(draws.len() >= 2, "{screen:?}");
    assert!(draws.iter().all(|d| d.contains("/4 ") && d.contains("% ETA ")), "{screen:?}");
    // The last state stays, with a newline (the terminal shows \r\n).
    assert!(screen.ends_with("[####################] 4/4 100% ETA 0:00\r\n"), "{screen:?}");
    // Job output is whole lines, each erasing the bar first.
    for i in 1..=4 {
        assert!(
            screen.contains(&format!("\r\x1b[Kjob {i}\r\n")) || screen.contains(&format!("\njob {i}\r\n")),
            "{screen:?}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn bar_on_streaming_input_shows_the_count_and_rate_until_the_total_is_known() {
    let line = format!("(echo 0.2; sleep 1.5; echo 0.1) | '{MPROC}' run --bar sleep");
    let Some(screen) = on_a_terminal(&line) else { return };
    assert!(screen.contains("1 done, 0 running, "), "{screen:?}");
    assert!(screen.ends_with("] 2/2 100% ETA 0:00\r\n"), "{screen:?}");
}

/// `--bar --eta`: one line, redrawn in place, holds both, from the first
/// draw (the estimate unknown, `?`) to the last.
#[cfg(target_os = "linux")]
#[test]
fn bar_and_eta_share_one_line_on_a_terminal() {
    let line = format!("'{MPROC}' run --bar --eta -j1 sleep ::: 0.2 0.2 0.2");
    let Some(screen) = on_a_terminal(&line) else { return };
    let draws: Vec<&str> = screen.split("\r\x1b[K").filter(|d| !d.is_empty()).collect();
    assert!(draws.len() >= 3, "{screen:?}");
    for draw in &draws {
        assert!(draw.starts_with('[') && draw.contains("/3 ") && draw.contains(" Left: "), "{screen:?}");
        assert!(!draw.trim_end().contains('\n'), "a draw took two lines: {screen:?}");
    }
    assert!(draws[0].contains("0/3 ") && draws[0].contains("ETA: ? Left: 3"), "{screen:?}");
    assert!(screen.ends_with("\r\n") && draws.last().unwrap().contains("3/3 100%"), "{screen:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn eta_is_gnu_parallels_line_on_a_terminal() {
    let line = format!("'{MPROC}' run --eta -j1 sleep ::: 0.2 0.2 0.2");
    let Some(screen) = on_a_terminal(&line) else { return };
    // Drawn first before any job is done, then over itself as they are.
    // (The times depend on the machine's load: only their form is checked.)
    assert!(screen.starts_with("\r\x1b[KETA: ? Left: 3 AVG: 0.00s"), "{screen:?}");
    let draws: Vec<&str> = screen.split("\r\x1b[K").filter(|d| !d.is_empty()).collect();
    assert!(
        draws.iter().all(|d| d.starts_with("ETA: ") && d.contains(" Left: ") && d.contains(" AVG: ")),
        "{screen:?}"
    );
    let last = draws.last().unwrap();
    assert!(last.starts_with("ETA: 0s Left: 0 AVG: ") && last.ends_with("s\r\n"), "{screen:?}");
}

#[test]
fn nothing_is_drawn_when_stderr_is_not_a_terminal() {
    let out = run(&["--bar", "--eta", "-j2", "sh", "-c", "echo $1", "sh", ":::", "a", "b"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("a\nb\n", ""));
}

// ---------------------------------------------------------------------------
// exit status and failures

#[test]
fn exit_status_is_the_number_of_failed_jobs() {
    let out = run(&["sh", "-c", "exit $1", "sh", ":::", "0", "1", "2", "0", "127"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn exit_status_is_capped_at_101() {
    let inputs: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    let mut args = vec!["-j4", "false", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    assert_eq!(run(&args).status.code(), Some(101));
}

#[test]
fn a_missing_command_fails_with_127_and_says_why() {
    let dir = TempDir::new("missing");
    let log = dir.path("log");
    let out = run(&["--joblog", &log, "mproc-no-such-command", ":::", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "mproc: mproc-no-such-command: No such file or directory\n");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().nth(1).unwrap().split('\t').nth(6), Some("127"));
}

/// As in a shell: 127 for a command not found, 126 for one found but not
/// executable.
#[test]
fn a_command_that_is_not_executable_fails_with_126() {
    let dir = TempDir::new("noexec");
    let (log, script) = (dir.path("log"), dir.path("script"));
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let out = run(&["--joblog", &log, &script, ":::", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("mproc: {script}: Permission denied\n"));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().nth(1).unwrap().split('\t').nth(6), Some("126"));
}

/// A script without `#!` is run by `/bin/sh`, as `execvp` and a shell run
/// it, however long its command line: on Linux the job's child runs on a
/// stack of ours until it execs, and glibc copies the whole argv onto it for
/// this fallback (a stack sized without the argv faults here).
#[test]
fn a_script_without_a_shebang_runs_through_sh_with_a_long_command_line() {
    let dir = TempDir::new("noshebang");
    let script = dir.path("script");
    std::fs::write(&script, "echo \"$# $1 ${40001}\"\n").unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let many: Vec<String> = (0..40_000).map(|i| i.to_string()).collect();
    let mut args = vec![script.as_str()];
    args.extend(many.iter().map(String::as_str));
    args.extend([":::", "x", "y"]);
    let out = run(&["-k"].iter().copied().chain(args).collect::<Vec<_>>());
    let stderr = text(&out.stderr);
    assert!(stderr.is_empty(), "stderr: {}", stderr.chars().take(200).collect::<String>());
    assert_eq!(text(&out.stdout), "40001 0 x\n40001 0 y\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_job_killed_by_a_signal_is_reported() {
    let out = run(&["sh", "-c", "kill -KILL $$", "sh", ":::", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "mproc: job 1 killed by signal 9 (Killed): sh -c 'kill -KILL $$' sh a\n");
}

// ---------------------------------------------------------------------------
// timeouts, halting

#[test]
fn timeout_kills_a_job_that_runs_too_long() {
    let dir = TempDir::new("timeout");
    let log = dir.path("log");
    let start = Instant::now();
    let out = run(&["--timeout", "300ms", "--joblog", &log, "sleep", "{}", ":::", "30", "0"]);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "mproc: job 1 timed out after 300ms: sleep 30\n");
    let log = std::fs::read_to_string(&log).unwrap();
    // GNU parallel's columns: Exitval -1 and the signal for a timeout.
    let mut exits: Vec<(&str, &str)> = log
        .lines()
        .skip(1)
        .map(|l| {
            let row: Vec<&str> = l.split('\t').collect();
            (row[0], row[6])
        })
        .collect();
    exits.sort();
    assert_eq!(exits, [("1", "-1"), ("2", "0")], "{log}");
    assert!(log.lines().any(|l| l.starts_with("1\t") && l.split('\t').nth(7) == Some("15")), "{log}");
}

#[cfg(target_os = "linux")]
#[test]
fn timeout_kills_the_jobs_children_too() {
    // The job's shell starts a background sleep (which keeps stdout open)
    // and waits: both are in the job's process group, both must die.
    let start = Instant::now();
    let out = run(&["--timeout", "0.3", "sh", "-c", "sleep 30 & echo $!; wait", "sh", ":::", "a"]);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let grandchild: u32 = text(&out.stdout).trim().parse().unwrap();
    assert!(wait_until(Duration::from_secs(2), || !alive(grandchild)), "the background sleep survived");
}

#[cfg(target_os = "linux")]
#[test]
fn the_sigkill_after_the_grace_reaches_the_group_of_a_job_whose_main_process_died() {
    // The job's shell dies of the SIGTERM at once; a background process
    // in its group ignores SIGTERM and holds none of the job's pipes, so
    // the job is over as soon as the shell is. The SIGKILL promised 200 ms
    // later must still reach that process, for a timeout and for a stop
    // signal alike.
    let dir = TempDir::new("grace-kill");
    let pidfile = dir.path("bg");
    let job =
        format!("(trap '' TERM; exec sleep 30) </dev/null >/dev/null 2>&1 & echo $! >{pidfile}; sleep 30");
    let read_pid = || -> u32 {
        assert!(wait_until(Duration::from_secs(5), || std::fs::read_to_string(&pidfile)
            .is_ok_and(|s| s.ends_with('\n'))));
        std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap()
    };
    let out = run(&["--timeout", "300ms", "sh", "-c", &job, ":::", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let background = read_pid();
    assert!(
        wait_until(Duration::from_secs(2), || !alive(background)),
        "--timeout: the background sleep survived"
    );

    std::fs::remove_file(&pidfile).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mproc"))
        .args(["run", "sh", "-c", &job, ":::", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let background = read_pid();
    // SAFETY: kill takes only integers; the child is ours and unreaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(143));
    assert!(
        wait_until(Duration::from_secs(2), || !alive(background)),
        "SIGTERM: the background sleep survived"
    );
}

#[test]
fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() {
    let start = Instant::now();
    let out = run(&["--timeout", "200ms", "sh", "-c", "trap '' TERM; sleep 30", "sh", ":::", "a"]);
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("timed out after 200ms"));
}

#[test]
fn halt_on_error_starts_no_new_jobs() {
    let out =
        run(&["-j1", "--halt-on-error", "sh", "-c", "echo $1; [ $1 != 2 ]", "sh", ":::", "1", "2", "3", "4"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "1\n2\n");
}

#[test]
fn halt_on_error_lets_running_jobs_finish() {
    let job = "if [ $1 = fail ]; then exit 1; fi; sleep 0.4; echo $1";
    let out = run(&["-j2", "--halt-on-error", "sh", "-c", job, "sh", ":::", "slow", "fail", "never"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "slow\n");
}

/// `sh -c 'sleep 0.$1; echo $1; exit $1'`: job N prints N and exits N.
const EXIT_AS_INPUT: [&str; 4] = ["sh", "-c", "sleep 0.$1; echo $1; exit $1", "sh"];

fn run_halt(halt: &str, jobs: &str, inputs: &[&str]) -> Output {
    let mut args = vec!["-j", jobs, "--halt", halt];
    args.extend(EXIT_AS_INPUT);
    args.push(":::");
    args.extend(inputs);
    run(&args)
}

/// `--halt HALT` over a job that would sleep 30 s and jobs exiting `exit`
/// (`$1`: the input): the run must end long before the sleeper would.
fn halt_with_a_slow_job(halt: &str, exit: &str, inputs: [&str; 2]) -> Output {
    let script = format!("[ $1 = slow ] && exec sleep 30; exit {exit}");
    let start = Instant::now();
    let out = run(&["-j2", "--halt", halt, "sh", "-c", &script, "sh", ":::", "slow", inputs[0], inputs[1]]);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    out
}

#[test]
fn halt_now_kills_the_running_jobs_at_the_first_failure() {
    let out = halt_with_a_slow_job("now,fail=1", "3", ["fail", "never"]);
    // fail=1: the exit status is the failed job's, as GNU parallel gives it.
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
}

#[test]
fn halt_soon_lets_running_jobs_finish_and_exits_as_gnu_parallel_does() {
    // Jobs 1 and 3 fail (after 0.1 s and 0.3 s): soon,fail=2 halts then;
    // job 2, running, still completes (and fails), nothing after starts.
    let out = run_halt("soon,fail=2", "2", &["1", "3", "2", "4", "0", "5"]);
    assert_eq!(text(&out.stdout), "1\n3\n2\n");
    assert_eq!(out.status.code(), Some(2), "the failed jobs when it was met");
    // A share of all the jobs: 3 of 6 failed is 50%.
    let out = run_halt("soon,fail=50%", "2", &["1", "3", "2", "4", "0", "5"]);
    assert_eq!(out.status.code(), Some(50));
    // Not met: the share of failed jobs (1 of 6, rounded up).
    let out = run_halt("soon,fail=50%", "2", &["0", "0", "7", "0", "0", "0"]);
    assert_eq!(out.status.code(), Some(17));
    let out = run_halt("never", "2", &["1", "0", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Bug: a job that timed out and met `fail=1` gave 143 (128 + SIGTERM);
/// GNU parallel gives 255 (its exit value for a timed-out job is -1),
/// whether the job died of the SIGTERM or needed the SIGKILL.
#[test]
fn a_timed_out_job_that_halts_the_run_gives_255_as_in_gnu_parallel() {
    for (halt, script) in [
        ("now,fail=1", "exec sleep $1"),
        ("soon,fail=1", "exec sleep $1"),
        ("now,fail=1", "trap '' TERM; sleep $1"),
        ("now,done=1", "exec sleep $1"),
    ] {
        let out =
            run(&["-j1", "--timeout", "0.2", "--halt", halt, "sh", "-c", script, "sh", ":::", "3", "0"]);
        assert_eq!(out.status.code(), Some(255), "--halt {halt}, job `{script}`: {}", text(&out.stderr));
    }
}

#[test]
fn halt_now_on_success_exits_0_at_the_first_success() {
    let out = halt_with_a_slow_job("now,success=1", "$1", ["0", "1"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn halt_rejects_what_gnu_parallel_would_not_read() {
    for bad in ["sometime,fail=1", "now,fail=0", "now", "now,fail=200%"] {
        let out = run(&["--halt", bad, "echo", ":::", "a"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(text(&out.stderr).contains("is not a halt condition"), "{}", text(&out.stderr));
    }
}

// ---------------------------------------------------------------------------
// dry run, job log

#[test]
fn dry_run_prints_quoted_commands_and_runs_nothing() {
    let dir = TempDir::new("dry");
    let target = dir.path("it's here");
    let out = run(&["--dry-run", "touch", "{}", ":::", &target, "plain"]);
    assert_eq!(out.status.code(), Some(0));
    let quoted = format!("'{}'", target.replace('\'', r"'\''"));
    assert_eq!(text(&out.stdout), format!("touch {quoted}\ntouch plain\n"));
    assert!(!Path::new(&target).exists() && !Path::new("plain").exists());
}

#[test]
fn dry_run_output_runs_the_same_commands_in_a_shell() {
    let inputs = ["it's", "a b", "$HOME", "*", "", "x\\y", "é"];
    let mut args = vec!["printf", "[%s]\\n", ":::"];
    args.extend(inputs);
    let real = run(&args);
    let mut dry_args = vec!["--dry-run"];
    dry_args.extend(&args);
    let dry = run(&dry_args);
    assert_eq!(text(&dry.stdout).lines().count(), inputs.len());
    let replayed = Command::new("sh").arg("-c").arg(text(&dry.stdout)).output().unwrap();
    assert_eq!(text(&replayed.stdout), text(&real.stdout));
    assert_eq!(text(&real.stdout), "[it's]\n[a b]\n[$HOME]\n[*]\n[]\n[x\\y]\n[é]\n");
    // Control characters use $'...', which bash (not every sh) reads.
    if Path::new("/bin/bash").exists() {
        let dry = run(&["--dry-run", "printf", "[%s]", ":::", "tab\there\nnewline"]);
        assert_eq!(text(&dry.stdout), "printf '[%s]' $'tab\\there\\nnewline'\n");
        let replayed = Command::new("bash").arg("-c").arg(text(&dry.stdout)).output().unwrap();
        assert_eq!(text(&replayed.stdout), "[tab\there\nnewline]");
    }
}

/// mproc(1), MOVING TO MORE MACHINES: `--dry-run`'s lines, and the job
/// log's Command column, run unchanged under `parallel --sshlogin` (here
/// `-S :`, GNU parallel's name for this host over its remote machinery).
#[test]
fn dry_run_and_job_log_commands_run_unchanged_under_gnu_parallel_sshlogin() {
    if !gnu_parallel("replaying commands with parallel -S :") {
        return;
    }
    let dir = TempDir::new("sshlogin");
    let log = dir.path("log");
    let inputs = ["it's", "a b", "$HOME", "*", "", "x\\y", "é", "tab\there"];
    let mut args = vec!["printf", "[%s]\\n", ":::"];
    args.extend(inputs);
    let mut logged = vec!["--joblog", &log];
    logged.extend(&args);
    let real = run(&logged);
    assert_eq!(real.status.code(), Some(0));
    let mut dry_args = vec!["--dry-run"];
    dry_args.extend(&args);
    let dry = run(&dry_args);
    let joblog = std::fs::read_to_string(&log).unwrap();
    let mut from_log: Vec<&str> = joblog.lines().skip(1).map(|l| l.splitn(9, '\t').nth(8).unwrap()).collect();
    from_log.sort_by_key(|cmd| text(&dry.stdout).lines().position(|l| l == *cmd));
    for commands in [text(&dry.stdout), from_log.iter().map(|c| format!("{c}\n")).collect::<String>()] {
        let mut gnu = Command::new("parallel")
            .args(["--will-cite", "-k", "-S", ":"])
            // `$'...'` (the tab) needs bash, zsh or ksh, not every sh.
            .env("PARALLEL_SHELL", "bash")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        gnu.stdin.take().unwrap().write_all(commands.as_bytes()).unwrap();
        let gnu = gnu.wait_with_output().unwrap();
        assert_eq!(text(&gnu.stdout), text(&real.stdout), "{commands}\n{}", text(&gnu.stderr));
        assert_eq!(gnu.status.code(), Some(0));
    }
}

/// GNU parallel's job log, column for column: `Seq Host Starttime
/// JobRuntime Send Receive Exitval Signal Command`, `%.3f` and `%10.3f`.
#[test]
fn joblog_has_gnu_parallels_columns_and_number_formats() {
    let dir = TempDir::new("joblog");
    let log = dir.path("log");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let script = "sleep 0.1; printf %s $1; [ $1 = kill ] && kill -9 $$; exit $1";
    let out = run(&["--joblog", &log, "sh", "-c", script, "sh", ":::", "0", "3", "kill"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand");
    let mut rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split('\t').collect()).collect();
    rows.sort();
    assert_eq!(rows.len(), 3);
    for (row, (seq, input, exitval, signal)) in
        rows.iter().zip([("1", "0", "0", "0"), ("2", "3", "3", "0"), ("3", "kill", "0", "9")])
    {
        assert_eq!(row.len(), 9, "{row:?}");
        // Receive: the bytes the job wrote on stdout, as GNU counts them.
        let received = input.len().to_string();
        assert_eq!((row[0], row[1], row[4], row[5]), (seq, ":", "0", received.as_str()));
        assert_eq!((row[6], row[7]), (exitval, signal));
        let start: f64 = row[2].parse().unwrap();
        assert!(start >= before - 1.0 && start < before + 10.0, "start {start}");
        assert!(row[2].split('.').nth(1).is_some_and(|ms| ms.len() == 3), "{row:?}");
        // `%10.3f`: right-aligned in ten columns.
        assert_eq!(row[3].len(), 10, "{row:?}");
        let runtime: f64 = row[3].trim_start().parse().unwrap();
        assert!((0.1..5.0).contains(&runtime), "runtime {runtime}");
        assert_eq!(row[8], format!("sh -c '{script}' sh {input}"));
    }
}

// ---------------------------------------------------------------------------
// --retries

fn joblog_rows(path: &str) -> Vec<Vec<String>> {
    let log = std::fs::read_to_string(path).unwrap();
    log.lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect()).collect()
}

#[test]
fn retries_rerun_a_failing_job_and_print_only_the_attempt_that_counts() {
    let dir = TempDir::new("retries");
    let (tries, log) = (dir.path("tries"), dir.path("log"));
    // Fails twice, then succeeds: three runs, one line of output, one row.
    let script = "echo x >> \"$1\"; n=$(wc -l < \"$1\"); echo run $n; echo oops $n >&2; [ $n -ge 3 ]";
    let out = run(&["--retries", "3", "--joblog", &log, "sh", "-c", script, "sh", ":::", &tries]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("run 3\n", "oops 3\n"));
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 3);
    let rows = joblog_rows(&log);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0][0].as_str(), rows[0][6].as_str()), ("1", "0"));
}

#[test]
fn retries_count_every_run_as_gnu_parallel_does() {
    let dir = TempDir::new("retries-fail");
    let (tries, log) = (dir.path("tries"), dir.path("log"));
    let script = "echo x >> \"$1\"; echo out; exit 4";
    let out = run(&[
        "-j2",
        "--retries",
        "3",
        "--joblog",
        &log,
        "sh",
        "-c",
        script,
        "sh",
        ":::",
        &tries,
        "/dev/null",
    ]);
    // `--retries 3`: three runs in all, then it counts as failed.
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "out\nout\n");
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 3);
    let mut rows = joblog_rows(&log);
    rows.sort();
    assert_eq!(
        rows.iter().map(|r| (r[0].as_str(), r[6].as_str())).collect::<Vec<_>>(),
        [("1", "4"), ("2", "4")]
    );
    // --retries 1 runs once.
    std::fs::remove_file(&tries).unwrap();
    let out = run(&["--retries", "1", "sh", "-c", script, "sh", ":::", &tries]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 1);
}

#[test]
fn a_retried_job_keeps_its_place_in_the_output_order() {
    let dir = TempDir::new("retries-order");
    let tries = dir.path("tries");
    // Job 1 fails once (after the others are done), then succeeds.
    let script = "case $1 in 1) echo x >> \"$2\"; sleep 0.3; echo one; [ $(wc -l < \"$2\") -ge 2 ];; *) echo $1;; esac";
    let out = run(&["-j3", "--retries", "2", "sh", "-c", script, "sh", "{}", &tries, ":::", "1", "2", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n2\n3\n");
}

// ---------------------------------------------------------------------------
// --resume, --resume-failed

/// Whether GNU parallel is installed (not moreutils' `parallel`); says so
/// when it is not, for the test to skip the comparison.
fn gnu_parallel(needed_for: &str) -> bool {
    let version = Command::new("parallel").arg("--version").stdin(Stdio::null()).output();
    let gnu = version.is_ok_and(|out| text(&out.stdout).starts_with("GNU parallel"));
    if !gnu {
        eprintln!("skipped: {needed_for}: GNU parallel is not installed");
    }
    gnu
}

/// Job `c` fails while the file `$2` (the marker) does not exist; every
/// job prints its input.
const MARKER_JOB: &str = "echo $1; [ $1 != c ] || [ -e \"$2\" ]";

/// `mproc run OPTIONS --joblog LOG sh -c MARKER_JOB sh {} MARKER ::: INPUTS`.
fn run_marker_jobs(options: &[&str], log: &str, marker: &str, inputs: &[&str]) -> Output {
    let mut args = options.to_vec();
    args.extend(["--joblog", log, "sh", "-c", MARKER_JOB, "sh", "{}", marker, ":::"]);
    args.extend(inputs);
    run(&args)
}

const FIVE: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A run that stops after job 3 fails (`--halt-on-error`, one at a time):
/// jobs 1-3 are in the log, 4 and 5 never ran.
fn interrupted_run(log: &str, marker: &str) -> Output {
    run_marker_jobs(&["-j1", "--halt-on-error"], log, marker, &FIVE)
}

/// The job numbers a log lists, in order (jobs complete in any order).
fn logged_seqs(log: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = joblog_rows(log).into_iter().map(|row| row[0].parse().unwrap()).collect();
    seqs.sort();
    seqs
}

#[test]
fn resume_runs_only_the_jobs_the_log_does_not_list() {
    let dir = TempDir::new("resume");
    let (log, marker) = (dir.path("log"), dir.path("marker"));
    let first = interrupted_run(&log, &marker);
    assert_eq!((first.status.code(), text(&first.stdout).as_str()), (Some(1), "a\nb\nc\n"));
    let out = run_marker_jobs(&["--resume"], &log, &marker, &FIVE);
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "d\ne\n"));
    assert_eq!(logged_seqs(&log), [1, 2, 3, 4, 5]);
    let header_lines =
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.starts_with("Seq\t")).count();
    assert_eq!(header_lines, 1);
    // Everything is done: nothing runs.
    let out = run_marker_jobs(&["--resume"], &log, &marker, &FIVE);
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0));
}

/// Ctrl-C in the middle of a run, then `--resume`: every job has run, and
/// the log lists each once (a job killed by the stop is not logged).
#[cfg(target_os = "linux")]
#[test]
fn a_run_stopped_by_sigint_resumes_where_it_stopped() {
    let dir = TempDir::new("resume-sigint");
    let log = dir.path("log");
    let inputs: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    let mut args = vec!["-j2", "--joblog", &log, "sh", "-c", "sleep 0.3; echo $1", "sh", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let mut child = mproc(&args).stdout(Stdio::piped()).spawn().unwrap();
    // Some jobs done (logged), most not: stop it there.
    let some_done = || std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() > 2);
    assert!(wait_until(Duration::from_secs(20), some_done), "no job completed");
    signal(child.id(), libc::SIGINT);
    assert_eq!(wait_with_limit(&mut child, Duration::from_secs(10)).code(), Some(130));
    let mut first = String::new();
    child.stdout.take().unwrap().read_to_string(&mut first).unwrap();
    let done_first = logged_seqs(&log).len();
    assert!((2..20).contains(&done_first), "{done_first} jobs done before the signal");
    let mut resume = vec!["--resume"];
    resume.extend(&args);
    let out = run(&resume);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(logged_seqs(&log), (1..=20).collect::<Vec<u64>>());
    let printed: BTreeSet<String> =
        first.lines().chain(text(&out.stdout).lines()).map(str::to_string).collect();
    assert_eq!(printed, inputs.iter().cloned().collect::<BTreeSet<_>>());
}

#[test]
fn resume_failed_runs_the_failed_jobs_again_and_the_rest() {
    let dir = TempDir::new("resume-failed");
    let (log, marker) = (dir.path("log"), dir.path("marker"));
    interrupted_run(&log, &marker);
    std::fs::write(&marker, "").unwrap(); // job c succeeds now
    let out = run_marker_jobs(&["--resume-failed"], &log, &marker, &FIVE);
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "c\nd\ne\n"));
    // Job 3's failed run stays in the log; its new run is added.
    assert_eq!(logged_seqs(&log), [1, 2, 3, 3, 4, 5]);
}

#[test]
fn resume_needs_a_job_log_in_gnu_parallels_format() {
    let out = run(&["--resume", "echo", ":::", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "mproc: run: --resume and --resume-failed need --joblog FILE\n");
    let dir = TempDir::new("resume-bad");
    let log = dir.path("log");
    std::fs::write(&log, "Seq\tStarttime\tRuntime\tExitval\tCommand\n1\t1.0\t0.1\t0\techo a\n").unwrap();
    let out = run(&["--resume", "--joblog", &log, "echo", ":::", "a"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        format!("mproc: run: job log {log}: line 2 is not in GNU parallel's job log format\n")
    );
    assert!(out.stdout.is_empty());
}

/// `--resume` on a first run, before any log exists: every job runs and
/// the log is created, header first, then read back by the next run.
#[test]
fn resume_without_a_log_file_yet_runs_every_job_and_writes_the_log() {
    for option in ["--resume", "--resume-failed"] {
        let dir = TempDir::new(&format!("resume-new{option}"));
        let (log, marker) = (dir.path("log"), dir.path("marker"));
        std::fs::write(&marker, "").unwrap(); // every job succeeds
        let out = run_marker_jobs(&[option], &log, &marker, &FIVE);
        assert_eq!(out.status.code(), Some(0), "{option}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "a\nb\nc\nd\ne\n", "{option}");
        assert!(std::fs::read_to_string(&log).unwrap().starts_with("Seq\tHost\t"), "{option}");
        assert_eq!(logged_seqs(&log), [1, 2, 3, 4, 5], "{option}");
        let again = run_marker_jobs(&[option], &log, &marker, &FIVE);
        assert_eq!((again.status.code(), again.stdout.len()), (Some(0), 0), "{option}");
    }
}

/// A log whose last line was cut off in the middle of its write (a crash,
/// a full disk): that job did not finish, so `--resume` runs it again, and
/// the log is left whole. A bad line before the last is still an error.
#[test]
fn resume_runs_again_the_job_of_a_last_line_cut_off_mid_write() {
    let dir = TempDir::new("resume-cut");
    let (log, marker) = (dir.path("log"), dir.path("marker"));
    std::fs::write(&marker, "").unwrap();
    let full = run_marker_jobs(&["-j1"], &log, &marker, &FIVE);
    assert_eq!(full.status.code(), Some(0), "{}", text(&full.stderr));
    // Header and jobs 1-2 whole, job 3's line cut inside its third field.
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert!(lines[3].starts_with("3\t:\t"), "{lines:?}");
    let cut = &lines[3][..lines[3].find('.').unwrap()];
    std::fs::write(&log, format!("{}\n{}\n{}\n{cut}", lines[0], lines[1], lines[2])).unwrap();

    let out = run_marker_jobs(&["--resume"], &log, &marker, &FIVE);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "c\nd\ne\n");
    // The cut line is gone, every job is logged once, and the next run
    // reads the log back: nothing left to do.
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.ends_with('\n') && after.lines().all(|l| l.split('\t').count() == 9), "{after}");
    assert_eq!(logged_seqs(&log), [1, 2, 3, 4, 5]);
    let again = run_marker_jobs(&["--resume"], &log, &marker, &FIVE);
    assert_eq!((again.status.code(), again.stdout.len()), (Some(0), 0), "{}", text(&again.stderr));

    // The same cut line with a whole line after it is not a crash's trace.
    let middle = format!("{}\n{}\n{cut}\n{}\n", lines[0], lines[1], lines[2]);
    std::fs::write(&log, &middle).unwrap();
    let out = run_marker_jobs(&["--resume"], &log, &marker, &FIVE);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        format!("mproc: run: job log {log}: line 3 is not in GNU parallel's job log format\n")
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), middle, "the log was changed");
}

/// The log is GNU parallel's own: `parallel --resume` continues a run mproc
/// began, and mproc continues one GNU parallel began.
#[test]
fn gnu_parallel_and_mproc_resume_each_others_runs() {
    if !gnu_parallel("resuming across GNU parallel and mproc") {
        return;
    }
    let dir = TempDir::new("resume-gnu");
    let (log, marker) = (dir.path("log"), dir.path("marker"));
    interrupted_run(&log, &marker);
    // GNU parallel runs a shell line; these words make the same command.
    let script = MARKER_JOB;
    let gnu = Command::new("parallel")
        .args([
            "--will-cite",
            "-k",
            "-j1",
            "--resume",
            "--joblog",
            &log,
            "sh",
            "-c",
            &format!("'{script}'"),
            "sh",
        ])
        .args(["{}", &marker, ":::", "a", "b", "c", "d", "e"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&gnu.stdout), "d\ne\n", "{}", text(&gnu.stderr));
    assert_eq!(logged_seqs(&log), [1, 2, 3, 4, 5]);

    // And the other way round: GNU parallel stops after a failure, mproc resumes.
    let log2 = dir.path("log2");
    let gnu = Command::new("parallel")
        .args(["--will-cite", "-k", "-j1", "--halt", "now,fail=1", "--joblog", &log2, "sh", "-c"])
        .args([&format!("'{script}'"), "sh", "{}", &marker, ":::", "a", "c", "d"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&gnu.stdout), "a\nc\n", "{}", text(&gnu.stderr));
    std::fs::write(&marker, "").unwrap();
    let out = run_marker_jobs(&["--resume-failed"], &log2, &marker, &["a", "c", "d"]);
    assert_eq!(text(&out.stdout), "c\nd\n", "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------
// signals, fds, usage

/// Starts `mproc run ARGS` and waits until it has `jobs` children. The stop
/// signals are at their default action in mproc, as under an interactive
/// shell, whatever the test inherited (`nohup` ignores SIGHUP, `&` in a
/// script SIGINT), for mproc to act on them.
#[cfg(target_os = "linux")]
fn start_and_wait_for_jobs(args: &[&str], jobs: usize) -> (Child, Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = mproc(args);
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    };
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut kids = Vec::new();
    let started = wait_until(Duration::from_secs(5), || {
        kids = children_of(pid);
        kids.len() >= jobs
    });
    assert!(started, "jobs did not start: {kids:?}");
    // Let them exec, so the signal reaches `sleep`, not the child before exec.
    std::thread::sleep(Duration::from_millis(100));
    (child, kids)
}

#[cfg(target_os = "linux")]
fn stop_with(sig: i32, expected: i32) {
    // Job 2 has printed a line by then, held back behind job 1: it must not
    // appear once the run is stopped.
    let args = ["-j2", "sh", "-c", "echo partial $1; exec sleep 30", "sh", ":::", "1", "2", "3"];
    let (mut child, kids) = start_and_wait_for_jobs(&args, 2);
    signal(child.id(), sig);
    let status = wait_with_limit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(expected));
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(!stdout.contains("partial 2"), "{stdout}");
    assert_jobs_ended(kids);
}

#[cfg(target_os = "linux")]
#[test]
fn sigint_stops_the_jobs_and_exits_130() {
    stop_with(libc::SIGINT, 130);
}

#[cfg(target_os = "linux")]
#[test]
fn sigterm_stops_the_jobs_and_exits_143() {
    stop_with(libc::SIGTERM, 143);
}

#[cfg(target_os = "linux")]
#[test]
fn sighup_stops_the_jobs_and_exits_129() {
    stop_with(libc::SIGHUP, 129);
}

/// Kills what is left of these process groups when dropped: a failing test
/// leaves no job behind.
#[cfg(target_os = "linux")]
struct KillGroupsOnDrop(Vec<u32>);

#[cfg(target_os = "linux")]
impl Drop for KillGroupsOnDrop {
    fn drop(&mut self) {
        for &pgid in &self.0 {
            if group_alive(pgid) {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
        }
    }
}

/// Jobs that ignore SIGTERM, each with a child (`sleep`): SIGTERM, then a
/// second one, kills both processes of every job (SIGKILL to the group)
/// and mproc exits 143. (That the second signal, not the grace period, is
/// what kills them is checked against the library, with a long grace, in
/// tests/run_second_signal.rs: mproc's grace is a fixed 200 ms.)
#[cfg(target_os = "linux")]
#[test]
fn sigterm_twice_kills_jobs_that_ignore_it_with_their_children_and_exits_143() {
    let args = ["-j2", "sh", "-c", "trap '' TERM; sleep 30; :", "sh", ":::", "1", "2", "3"];
    let (mut child, leaders) = start_and_wait_for_jobs(&args, 2);
    let _cleanup = KillGroupsOnDrop(leaders.clone());
    // Each job's `sleep` has started: its trap is set.
    let sleeping =
        wait_until(Duration::from_secs(10), || leaders.iter().all(|&l| !children_of(l).is_empty()));
    if !sleeping {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the jobs' sleep did not start");
    }
    signal(child.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    signal(child.id(), libc::SIGTERM);
    assert_eq!(wait_with_limit(&mut child, Duration::from_secs(10)).code(), Some(143));
    // Job leaders are their groups' ids; mproc reaped them, and the
    // `sleep`s, orphaned, must be dead too.
    let gone = wait_until(Duration::from_secs(10), || !leaders.iter().any(|&pgid| group_alive(pgid)));
    assert!(gone, "a job's process outlived the run: groups {leaders:?}");
}

/// `mproc run yes ::: a | less`, then Ctrl-C (or SIGTERM): the runner is
/// blocked writing into a full pipe nobody reads, and must still stop at
/// once — job killed and reaped, exit 128 + signal.
#[cfg(target_os = "linux")]
fn stop_while_stdout_is_blocked(sig: i32, expected: i32) {
    let (mut child, kids) = start_and_wait_for_jobs(&["yes", "{}", ":::", "a"], 1);
    // Hold the read end open, never read: the pipe fills, the runner blocks.
    let _unread = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(500)); // the pipe is full by now
    signal(child.id(), sig);
    let status = wait_with_limit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(expected));
    assert_jobs_ended(kids);
}

/// Waiting for the next input line (the input stays open, nothing comes):
/// SIGTERM ends the run at once with 143.
#[cfg(target_os = "linux")]
#[test]
fn a_stop_signal_acts_while_waiting_for_input() {
    let mut child = mproc(&["echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    let lines = stdout_lines(&mut child);
    assert_eq!(lines.recv_timeout(Duration::from_secs(10)).as_deref(), Ok("first"));
    signal(child.id(), libc::SIGTERM);
    assert_eq!(wait_with_limit(&mut child, Duration::from_secs(10)).code(), Some(143));
    drop(stdin);
}

/// Every job (by pid) has ended and been reaped.
#[cfg(target_os = "linux")]
fn assert_jobs_ended(kids: Vec<u32>) {
    for kid in kids {
        assert!(!alive(kid), "job {kid} still running");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn sigint_and_sigterm_act_at_once_while_stdout_is_blocked() {
    stop_while_stdout_is_blocked(libc::SIGINT, 130);
    stop_while_stdout_is_blocked(libc::SIGTERM, 143);
}

/// The same as a person does it: `mproc run yes ::: a | less`, Ctrl-C
/// typed on the terminal (a real pseudo-terminal whose line discipline
/// turns ^C into SIGINT for the foreground group: the runner's, not the
/// job's, which has a group of its own), while stdout is a full pipe
/// nobody reads. The runner must stop the job and exit 130 at once.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_on_a_terminal_stops_the_run_while_stdout_is_blocked() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    // SAFETY (the block): posix_openpt returns a new descriptor or -1;
    // grantpt/unlockpt/ptsname_r take it and a buffer we own.
    let (master, slave_path) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        (master, std::ffi::CStr::from_ptr(name.as_ptr()).to_owned())
    };
    let mut cmd = mproc(&["yes", "{}", ":::", "a"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: setsid, open, ioctl and dup2 are async-signal-safe system
    // calls on memory made before the fork (`slave_path`).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let tty = libc::open(slave_path.as_ptr(), libc::O_RDWR);
            if tty == -1 || libc::ioctl(tty, libc::TIOCSCTTY, 0) == -1 || libc::dup2(tty, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(tty);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    // Hold the read end open, never read: the pipe fills, the runner blocks.
    let _unread = child.stdout.take().unwrap();
    let mut kids = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        kids = children_of(pid);
        !kids.is_empty()
    }));
    std::thread::sleep(Duration::from_millis(500)); // the pipe is full by now
    let mut master = File::from(master);
    master.write_all(b"\x03").unwrap(); // Ctrl-C
    let status = wait_with_limit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(130));
    assert_jobs_ended(kids);
}

#[cfg(target_os = "linux")]
#[test]
fn a_closed_stdout_ends_the_run_without_hanging() {
    let mut child = mproc(&["-j2", "seq", "{}", ":::", "1000000", "1000000", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 2];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"1\n");
    drop(child.stdout.take());
    let pid = child.id();
    let status = wait_with_limit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(141));
    assert!(children_of(pid).is_empty());
}

/// Runs `mproc run ARGS` with its open-files limit set to `soft`/`hard`.
fn run_with_nofile_limit(soft: u64, hard: u64, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = mproc(args);
    let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    cmd.output().unwrap()
}

fn hundred_slow_echoes() -> (Vec<String>, String) {
    let inputs: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let expected: String = inputs.iter().map(|i| format!("{i}\n")).collect();
    (inputs, expected)
}

/// Bug: `-j` above what the open-files limit allows threw the run away
/// ("pipe failed: Too many open files", exit 255, nothing printed).
#[test]
fn jobs_above_the_open_files_limit_are_lowered_with_one_warning() {
    let (inputs, expected) = hundred_slow_echoes();
    let mut args = vec!["-j", "100", "sh", "-c", "sleep 0.3; echo $1", "sh", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = run_with_nofile_limit(128, 128, &args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("mproc: run: warning: -j 100 lowered to "), "{err}");
    assert!(err.contains("open files"), "{err}");
}

/// The soft limit is raised to the hard one first, as most runners do.
#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one_quietly() {
    let (inputs, expected) = hundred_slow_echoes();
    let mut args = vec!["-j", "100", "sh", "-c", "sleep 0.3; echo $1", "sh", ":::"];
    args.extend(inputs.iter().map(String::as_str));
    let out = run_with_nofile_limit(64, 1024, &args);
    assert_eq!((out.status.code(), text(&out.stderr).as_str()), (Some(0), ""));
    assert_eq!(text(&out.stdout), expected);
}

/// Jobs get the limit mproc was started with, not the raised one.
#[cfg(target_os = "linux")]
#[test]
fn jobs_keep_the_original_open_files_limit() {
    let out = run_with_nofile_limit(64, 1024, &["sh", "-c", "ulimit -Sn; ulimit -Hn", "sh", ":::", "x"]);
    assert_eq!(text(&out.stdout), "64\n1024\n", "{}", text(&out.stderr));
}

/// Bug: under `RLIMIT_NPROC`, a job that could not start (EAGAIN) threw
/// the run away once jobs were started with `clone` rather than `fork`; it
/// lowers `-j` with one warning, as for descriptors. The limit binds only a
/// user without privileges, so the runner runs as `nobody` (uid 65534, which
/// runs nothing else): the test needs root to switch to it, and skips,
/// saying so, without.
#[cfg(target_os = "linux")]
#[test]
fn jobs_above_the_process_limit_are_lowered_with_one_warning() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching to uid 65534 for RLIMIT_NPROC needs root");
        return;
    }
    // A copy of the binary that `nobody` may execute wherever the build is.
    let dir = TempDir::new("nproc");
    let binary = dir.path("mproc");
    std::fs::copy(MPROC, &binary).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (inputs, expected) =
        (1..=6).map(|i| (i.to_string(), format!("{i}\n"))).unzip::<_, _, Vec<_>, String>();
    let mut cmd = Command::new(&binary);
    // Jobs that fork nothing more: each holds one process of the limit.
    cmd.args(["run", "-j", "4", "sh", "-c", "echo $1; exec sleep 0.3", "sh", ":::"]).args(&inputs);
    cmd.stdin(Stdio::null()).current_dir("/");
    // Three processes for uid 65534: the runner and two jobs.
    let limit = libc::rlimit { rlim_cur: 3, rlim_max: 3 };
    // SAFETY: setrlimit, setgroups, setgid and setuid are async-signal-safe
    // system calls that touch only the child.
    unsafe {
        cmd.pre_exec(move || {
            let ok = libc::setrlimit(libc::RLIMIT_NPROC, &limit) == 0
                && libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(65534) == 0
                && libc::setuid(65534) == 0;
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("mproc: run: warning: -j 4 lowered to 2 "), "{err}");
}

/// A program that embeds the runner and keeps SIGPIPE's default action (a
/// C or Python host does) is not killed when the runner's output pipe has
/// no reader: the run fails with EPIPE instead.
#[test]
fn the_library_never_dies_of_sigpipe_writing_to_a_closed_pipe() {
    use mproc::runner::{self, Inputs, Options, Output, Template};
    use std::os::fd::AsFd;
    // SAFETY: signal() with SIG_DFL; put back below.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let template = Template::new(vec![b"echo".to_vec(), b"hi".to_vec()]).unwrap();
    let mut inputs: Inputs = ["a"].into_iter().collect();
    let stderr = std::io::stderr();
    let output = Output { stdout: writer.as_fd(), stderr: stderr.as_fd() };
    let options = Options { jobs: 1, ..Options::default() };
    let result = runner::run(&template, &mut inputs, &options, output, &mut |_| {});
    // SAFETY: puts back the disposition saved above.
    unsafe { libc::signal(libc::SIGPIPE, old) };
    match result {
        Err(mproc::Error::Os(e)) => assert_eq!(e.errno, libc::EPIPE),
        other => panic!("expected EPIPE, got {other:?}"),
    }
}

#[cfg(target_os = "linux")]
fn fd_numbers(listing: &str) -> BTreeSet<String> {
    listing.split_whitespace().map(str::to_string).collect()
}

#[test]
fn jobs_start_with_default_signal_dispositions() {
    // mproc (a Rust program) ignores SIGPIPE and handles SIGINT/SIGTERM/
    // SIGCHLD; a job must see none of that. `yes` dies quietly of SIGPIPE
    // only if SIGPIPE is back to its default.
    let out = run(&["sh", "-c", "yes | head -n1", "sh", ":::", "a"]);
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("y\n", ""));
    // All dispositions and the mask as a job sees them, against the same
    // command started directly (std resets SIGPIPE for its children too):
    // whatever the test harness passes down shows up in both.
    #[cfg(target_os = "linux")]
    {
        let grep = ["grep", "-hE", "^Sig(Ign|Blk|Cgt)", "/proc/self/status"];
        let direct = Command::new(grep[0]).args(&grep[1..]).output().unwrap();
        let mut args = grep.to_vec();
        args.extend([":::", "/dev/null"]);
        let out = run(&args);
        assert_eq!(text(&out.stdout), text(&direct.stdout));
        assert_eq!(text(&direct.stdout).lines().count(), 3);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn jobs_see_no_descriptor_of_the_runner() {
    // The reference: the same listing without mproc in between. Anything
    // the test harness itself passes down shows up in both.
    let list = "exec ls /proc/self/fd";
    let direct = Command::new("sh").args(["-c", list]).stdin(Stdio::null()).output().unwrap();
    let expected = fd_numbers(&text(&direct.stdout));
    assert!(["0", "1", "2"].iter().all(|fd| expected.contains(*fd)));
    // Several jobs at once, so other jobs' pipes exist while each forks.
    let out = run(&["-j4", "sh", "-c", list, "sh", ":::", "a", "b", "c", "d", "e", "f"]);
    assert_eq!(out.status.code(), Some(0));
    // The union of what every job saw: one extra fd in any job shows up.
    assert_eq!(fd_numbers(&text(&out.stdout)), expected);
}

/// mproc(1): `run` exits 255 (not 1, which would mean one failed job)
/// when its standard output cannot be written.
#[test]
fn an_unwritable_stdout_exits_255_with_one_line() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = mproc(&["echo", ":::", "a"]).stdout(full).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("mproc: run: ") && err.contains("No space left on device"), "{err}");
}

/// A `$TMPDIR` that cannot hold the spill file: 255, with a message that
/// says what was being made where (not a bare "open failed").
#[test]
fn an_unusable_tmpdir_is_named_when_output_must_spill() {
    // Two jobs at once, each writing more than the 1 MiB a stream may
    // keep in memory while the first one holds the output.
    let out = mproc(&["-j2", "sh", "-c", "head -c 3000000 /dev/zero; sleep 0.2", "sh", ":::", "1", "2", "3"])
        .env("TMPDIR", "/nonexistent/mproc-test")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("spill file in $TMPDIR") && err.contains("No such file or directory"), "{err}");
}

/// An open-files limit too low for a single job: a clear failure (255)
/// saying so, not a silent partial run.
#[test]
fn an_open_files_limit_too_low_for_one_job_fails_saying_so() {
    use std::os::unix::process::CommandExt;
    let mut cmd = mproc(&["-j", "4", "echo", ":::", "1", "2", "3"]);
    // SAFETY: between fork and exec, setrlimit only (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 7, rlim_max: 7 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = cmd.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.lines().last().is_some_and(|l| l.contains("too low to run even one job")), "{err}");
}

/// An unwritable standard error never panics (Rust's exit status for a
/// panic, 101, would read "more than 100 jobs failed"): each of these gets
/// its documented status although its message is lost.
#[test]
fn an_unwritable_stderr_never_panics_and_keeps_the_documented_statuses() {
    for (args, code) in [
        (&["sh", "-c", "echo err >&2", "sh", ":::", "a"][..], 255),
        (&["no-such-command-anywhere", ":::", "a"], 255),
        (&["--timeout", "1ms", "sleep", ":::", "1"], 255),
        (&["--joblog", "/nonexistent/dir/log", "true", ":::", "1"], 255),
        (&[], 2),
        (&["-j", "many", "echo"], 2),
        (&["true", ":::", "1"], 0),
    ] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = mproc(args).stderr(full).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "mproc run {args:?} 2>/dev/full");
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &[][..],
        &[":::", "a"],
        &["--no-such-option", "echo"],
        &["-j", "many", "echo"],
        &["-j", "5%%", "echo"],
        &["-j", "+", "echo"],
        &["--timeout", "5x", "echo"],
        &["--timeout", "0", "echo"],
        &["echo", "::::"],
        &["--retries", "0", "echo"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("mproc: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}
