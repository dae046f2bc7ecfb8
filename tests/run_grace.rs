//! The grace period between a killed job's SIGTERM and its group's SIGKILL,
//! when the job's main process dies at once (mproc(1), `--timeout`): what
//! the job left in its group keeps its grace and then gets the SIGKILL,
//! and a job that left nothing does not hold the run up for it. Checked
//! against the runner library, whose grace can be long enough to tell
//! "waited for it" from "did not" without timing anything finely.
#![cfg(target_os = "linux")]

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mproc::runner::{self, Inputs, Options, Output, Summary, Template};

mod common;

/// Whether `pid` is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    common::pools::stat(pid).is_some_and(|(state, _, _)| state != 'Z')
}

/// Runs `sh -c script` once with a 100 ms timeout and `grace`; returns the
/// summary and how long the run took.
fn run_timed_out(script: &str, grace: Duration) -> (Summary, Duration) {
    let template = Template::new(vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()]).unwrap();
    let mut inputs: Inputs = vec!["x".to_string()].into_iter().collect();
    let null = std::fs::File::options().write(true).open("/dev/null").unwrap();
    let output = Output { stdout: null.as_fd(), stderr: null.as_fd() };
    let options = Options {
        jobs: 1,
        timeout: Some(Duration::from_millis(100)),
        kill_grace: grace,
        ..Options::default()
    };
    let start = Instant::now();
    let summary = runner::run(&template, &mut inputs, &options, output, &mut |_| {}).unwrap();
    (summary, start.elapsed())
}

/// A fresh directory, the file the job writes its leftover's pid to, and
/// the job: its shell dies of the SIGTERM, while the background sleep it
/// started ignores SIGTERM and holds none of the job's pipes.
fn job_leaving_a_leftover(name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("mproc-run-grace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("bg");
    let script = format!(
        "(trap '' TERM; exec sleep 30) </dev/null >/dev/null 2>&1 & echo $! >{}; exec sleep 30",
        pidfile.display()
    );
    (dir, pidfile, script)
}

#[test]
fn a_job_that_leaves_nothing_in_its_group_does_not_hold_the_run_for_the_grace() {
    let (summary, took) = run_timed_out("exec sleep 30", Duration::from_secs(30));
    assert_eq!(summary.failed, 1);
    assert!(took < Duration::from_secs(10), "the run waited {took:?} for a grace period nobody needed");
}

#[test]
fn what_a_job_leaves_in_its_group_keeps_its_grace_then_gets_sigkill() {
    let (dir, pidfile, script) = job_leaving_a_leftover("keeps");
    let grace = Duration::from_secs(2);
    let watcher = std::thread::spawn({
        let pidfile = pidfile.clone();
        move || {
            // Half-way through the grace period the leftover must still run.
            let deadline = Instant::now() + Duration::from_secs(10);
            let pid = loop {
                let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
                if let Some(Ok(pid)) = text.strip_suffix('\n').map(str::parse::<i32>) {
                    break pid;
                }
                assert!(Instant::now() < deadline, "the job never wrote its leftover's pid");
                std::thread::sleep(Duration::from_millis(5));
            };
            std::thread::sleep(Duration::from_millis(100) + grace / 2);
            (pid, alive(pid))
        }
    });
    let (summary, took) = run_timed_out(&script, grace);
    let (leftover, alive_in_grace) = watcher.join().unwrap();
    // SIGKILL takes effect once the leftover is next scheduled.
    let gone_by = Instant::now() + Duration::from_secs(2);
    while alive(leftover) && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(5));
    }
    let alive_after = alive(leftover);
    if alive_after {
        // SAFETY: kill takes integers only; do not leave it behind.
        unsafe { libc::kill(leftover, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary.failed, 1);
    assert!(alive_in_grace, "the leftover was killed before its grace period ended");
    assert!(took >= grace, "the run returned after {took:?}, before the grace period's SIGKILL");
    assert!(!alive_after, "the leftover survived the SIGKILL due after the grace period");
}

#[test]
fn the_timeline_shows_the_job_ending_at_its_sigterm_not_at_the_later_sigkill() {
    let (dir, _, script) = job_leaving_a_leftover("timeline");
    mproc::timeline::start().unwrap();
    let (summary, _) = run_timed_out(&script, Duration::from_millis(500));
    let timeline = mproc::timeline::finish().expect("a recording");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(summary.failed, 1);
    let lanes = timeline.lanes();
    let job = lanes.iter().find(|l| !l.kills.is_empty()).expect("the killed job's lane");
    let sigkill = job.kills.iter().find(|k| k.signal == libc::SIGKILL).expect("the SIGKILL after the grace");
    let end = job.end.expect("the job's end");
    // It died of the SIGTERM at once; the SIGKILL came 500 ms later.
    assert!(
        end + 300_000_000 < sigkill.at,
        "the job is drawn ending at {end} ns, its group's SIGKILL at {}",
        sigkill.at
    );
}
