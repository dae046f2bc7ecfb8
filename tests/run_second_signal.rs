//! A second stop signal kills the jobs at once (mproc(1): "A second signal
//! sends SIGKILL at once"), checked against the runner library: `mproc
//! run`'s grace period is a fixed 200 ms, too short to tell the second
//! signal's SIGKILL from the grace period's, so here the grace is a minute.
//!
//! In a test binary of its own: the test signals its own process, whose
//! stop-signal handlers the runner takes over while it runs (one run per
//! process), and nothing else may run here meanwhile.
#![cfg(target_os = "linux")]

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mproc::runner::{self, Inputs, Options, Output, Summary, Template};

mod common;
use common::{group_alive, wait_until};

/// The job's process group (its shell's pid), once it has written it.
fn pgid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.strip_suffix('\n')?.parse().ok()
}

/// This process's children (the jobs' leaders, each its group's id).
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        if rest.split(' ').nth(1) == Some(me.as_str()) {
            kids.extend(entry.file_name().to_str().and_then(|pid| pid.parse::<i32>().ok()));
        }
    }
    kids
}

/// Kills what is left of the jobs' groups when dropped (so a failing run
/// ends, and leaves nothing behind).
struct KillGroupsOnDrop(Vec<PathBuf>);

impl Drop for KillGroupsOnDrop {
    fn drop(&mut self) {
        let written = self.0.iter().filter_map(|file| pgid_in(file));
        for pgid in written.chain(children()) {
            if group_alive(pgid) {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
        }
    }
}

extern "C" fn do_nothing(_: libc::c_int) {}

#[test]
fn a_second_sigterm_kills_jobs_that_ignore_sigterm_at_once_not_after_the_grace() {
    let dir = std::env::temp_dir().join(format!("mproc-second-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pid_files: Vec<PathBuf> = (1..=2).map(|i| dir.join(format!("job{i}"))).collect();
    let cleanup = KillGroupsOnDrop(pid_files.clone());

    // Outside the run, SIGTERM does nothing here (the runner puts this
    // handler back when it returns): a signal sent just as the run ends
    // must not kill the test.
    // SAFETY: a handler that does nothing is async-signal-safe.
    let old = unsafe { libc::signal(libc::SIGTERM, do_nothing as *const () as libc::sighandler_t) };

    // Each job ignores SIGTERM, says its group once the trap is set, and
    // waits in a child of its own (`:` keeps the shell from exec'ing it).
    let script = b"trap '' TERM; echo $$ > \"$1\"; sleep 120; :".to_vec();
    let template =
        Template::new(vec![b"sh".to_vec(), b"-c".to_vec(), script, b"sh".to_vec(), b"{}".to_vec()]).unwrap();
    let inputs: Vec<String> = pid_files.iter().map(|f| f.to_string_lossy().into_owned()).collect();
    let (done_tx, done_rx) = mpsc::channel::<mproc::Result<Summary>>();
    let runner = std::thread::spawn(move || {
        let mut inputs: Inputs = inputs.into_iter().collect();
        let null = std::fs::File::options().write(true).open("/dev/null").unwrap();
        let output = Output { stdout: null.as_fd(), stderr: null.as_fd() };
        let options = Options {
            jobs: 2,
            kill_grace: Duration::from_secs(60),
            handle_signals: true,
            ..Options::default()
        };
        let _ = done_tx.send(runner::run(&template, &mut inputs, &options, output, &mut |_| {}));
    });

    let started = wait_until(Duration::from_secs(20), || pid_files.iter().all(|f| pgid_in(f).is_some()));
    // A stop signal every 200 ms until the run ends: the first sends
    // SIGTERM (ignored), any later one SIGKILL; only that can end the run
    // within 15 s, a quarter of the grace period.
    let start = Instant::now();
    let result = loop {
        if !started {
            break None;
        }
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(std::process::id() as i32, libc::SIGTERM) };
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => break Some(result),
            Err(_) if start.elapsed() > Duration::from_secs(15) => break None,
            Err(_) => {}
        }
    };
    let elapsed = start.elapsed();
    let groups: Vec<i32> = pid_files.iter().filter_map(|f| pgid_in(f)).collect();
    let all_gone =
        result.is_some() && wait_until(Duration::from_secs(10), || !groups.iter().any(|&g| group_alive(g)));
    drop(cleanup); // on failure: the run ends now
    runner.join().unwrap();
    // SAFETY: puts back the disposition saved above.
    unsafe { libc::signal(libc::SIGTERM, old) };
    let _ = std::fs::remove_dir_all(&dir);

    assert!(started, "the jobs did not start");
    let Some(result) = result else {
        panic!("the run went on {elapsed:?} after the first of several SIGTERMs (grace 60 s)");
    };
    assert_eq!(result.unwrap().interrupted, Some(libc::SIGTERM));
    assert!(all_gone, "a job's process outlived the run: groups {groups:?}");
}
