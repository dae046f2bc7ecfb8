//! `--timeline`: the SVG is well-formed, self-contained XML with one lane
//! per process that existed (counted against `--trace=process`), labels
//! are escaped, the text rendition fits 80 columns, bad arguments fail in
//! one line; and the library's recording of a pool shows its batches,
//! panics, timeouts and every worker's end.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{mproc, run};
use mproc::timeline::{Outcome, Role};
use mproc::ExitStatus;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("timeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One lane of the picture: its pid, role and name (the label's text).
#[derive(Debug)]
struct SvgLane {
    pid: i32,
    role: String,
    name: String,
    exit: Option<String>,
    batches: Vec<String>,
}

/// Parses the SVG (failing the test if it is not well-formed XML) and
/// checks that it is self-contained; returns its lanes.
fn lanes_of(svg: &str) -> Vec<SvgLane> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    for node in doc.descendants().filter(|n| n.is_element()) {
        let tag = node.tag_name().name();
        assert!(!["script", "image", "a", "foreignObject", "style"].contains(&tag), "<{tag}> in the picture");
        for attr in node.attributes() {
            let (name, value) = (attr.name(), attr.value());
            assert!(!name.starts_with("on") && name != "href", "attribute {name}={value:?}");
            assert!(
                !value.contains("http") && !value.contains("url(#") || value == "url(#arrow)",
                "{value:?}"
            );
        }
    }
    let class = |n: &roxmltree::Node<'_, '_>, c: &str| n.attribute("class") == Some(c);
    doc.descendants()
        .filter(|n| n.has_tag_name("g") && class(n, "lane"))
        .map(|g| {
            let label = g.children().find(|n| n.has_tag_name("text")).expect("a lane has a label");
            let name =
                label.children().find(|n| n.has_tag_name("title")).and_then(|t| t.text()).unwrap_or_default();
            let exit = g
                .children()
                .filter(|n| n.has_tag_name("text"))
                .nth(1)
                .and_then(|t| t.text())
                .map(str::to_string);
            let batches = g
                .children()
                .filter(|n| n.has_tag_name("rect") && class(n, "batch"))
                .filter_map(|r| r.children().find(|n| n.has_tag_name("title")).and_then(|t| t.text()))
                .map(str::to_string)
                .collect();
            SvgLane {
                pid: g.attribute("data-pid").and_then(|p| p.parse().ok()).expect("a lane names its pid"),
                role: g.attribute("data-role").unwrap_or_default().to_string(),
                name: name.to_string(),
                exit,
                batches,
            }
        })
        .collect()
}

/// Every pid a `--trace=process` log shows: the processes that traced a
/// line, and every child a `fork()` returned.
fn traced_pids(trace: &str) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for line in trace.lines() {
        let Some(rest) = line.strip_prefix('[') else { continue };
        let Some((pid, text)) = rest.split_once("] ") else { continue };
        pids.extend(pid.parse::<i32>().ok());
        if let Some(child) = text.strip_prefix("fork() = ") {
            pids.extend(child.trim().parse::<i32>().ok().filter(|&c| c > 0));
        }
    }
    pids
}

/// How many tasks a bar's hover text counts: `batch of 3 tasks: ok, ...`,
/// or `4 batches, 9 tasks: ok, ...` for bars drawn as one.
fn tasks_in(bar: &str) -> u32 {
    let count = match bar.strip_prefix("batch of ") {
        Some(rest) => rest.split(' ').next(),
        None => bar.split_once(", ").and_then(|(_, rest)| rest.split(' ').next()),
    };
    count.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unexpected bar text {bar:?}"))
}

#[test]
fn cube_draws_one_lane_per_process_the_trace_shows() {
    let dir = scratch("cube");
    let svg_path = dir.join("cube.svg");
    let out = run(mproc().arg("--trace=process").arg("--timeline").arg(&svg_path).arg("cube"));
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG was written");
    let lanes = lanes_of(&svg);
    let pids: BTreeSet<i32> = lanes.iter().map(|l| l.pid).collect();
    assert_eq!(pids.len(), lanes.len(), "one lane per process: {lanes:?}");
    assert_eq!(pids, traced_pids(&stderr(&out)), "lanes against the trace");
    let roles: Vec<&str> = lanes.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker", "worker", "worker"]);
    // Every worker was reaped and exited 0; the five tasks ran, all ok.
    for lane in &lanes[1..] {
        assert_eq!(lane.exit.as_deref(), Some("exit 0"), "{lane:?}");
    }
    let batches: Vec<&String> = lanes.iter().flat_map(|l| &l.batches).collect();
    assert_eq!(batches.iter().map(|b| tasks_in(b)).sum::<u32>(), 5, "{batches:?}");
    assert!(batches.iter().all(|b| b.contains(": ok,")), "{batches:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn numbers_draws_the_parent_and_each_child() {
    let dir = scratch("numbers");
    let svg_path = dir.join("n.svg");
    let out = run(mproc()
        .arg("--trace=process")
        .arg("--timeline")
        .arg(&svg_path)
        .args(["numbers", "--count", "6"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let lanes = lanes_of(&std::fs::read_to_string(&svg_path).expect("the SVG was written"));
    let pids: BTreeSet<i32> = lanes.iter().map(|l| l.pid).collect();
    assert_eq!(pids, traced_pids(&stderr(&out)));
    assert_eq!(lanes.iter().filter(|l| l.role == "child").count(), 6, "{lanes:?}");
    assert_eq!(lanes[0].role, "parent");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn speedup_draws_each_task_on_a_worker_lane() {
    let dir = scratch("speedup");
    let svg_path = dir.join("s.svg");
    let args = ["speedup", "--workers", "2", "--tasks", "6", "--work", "2000"];
    let out = run(mproc().arg("--trace=process").arg("--timeline").arg(&svg_path).args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    let lanes = lanes_of(&std::fs::read_to_string(&svg_path).expect("the SVG was written"));
    let pids: BTreeSet<i32> = lanes.iter().map(|l| l.pid).collect();
    assert_eq!(pids, traced_pids(&stderr(&out)));
    let roles: Vec<&str> = lanes.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["parent", "zygote", "worker", "worker"]);
    // Six tasks on the workers' lanes only (batches that meet on screen
    // are drawn as one), every one ok.
    let batches: Vec<&String> = lanes.iter().flat_map(|l| &l.batches).collect();
    assert_eq!(batches.iter().map(|b| tasks_in(b)).sum::<u32>(), 6, "{batches:?}");
    assert!(batches.iter().all(|b| b.contains(": ok,")), "{batches:?}");
    assert!(lanes[..2].iter().all(|l| l.batches.is_empty()));
    // The pool is dropped, not joined: its workers die of SIGKILL.
    for worker in &lanes[2..] {
        assert_eq!(worker.exit.as_deref(), Some("SIGKILL"), "{worker:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn job_commands_are_escaped_in_the_picture() {
    let dir = scratch("escape");
    let svg_path = dir.join("t.svg");
    let out = run(mproc().arg("--timeline").arg(&svg_path).args(["run", "echo", ":::", r#"<a&"b>"#]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<a&\"b>\n");
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG was written");
    assert!(svg.contains("&lt;a&amp;&quot;b&gt;"), "the raw label is escaped:\n{svg}");
    let lanes = lanes_of(&svg);
    let jobs: Vec<&SvgLane> = lanes.iter().filter(|l| l.role == "job").collect();
    assert_eq!(jobs.len(), 1, "{lanes:?}");
    assert_eq!(jobs[0].name, format!("{} job echo '<a&\"b>'", jobs[0].pid));
    assert_eq!(jobs[0].exit.as_deref(), Some("exit 0"));
    assert_eq!(jobs[0].batches.len(), 1, "one bar for the job");
    assert!(jobs[0].batches[0].starts_with("job: ok, "), "{:?}", jobs[0].batches);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_dash_writes_the_svg_to_stdout_after_the_output() {
    let out = run(mproc().args(["--timeline", "-", "square", "4"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let (before, svg) = stdout.split_once("<?xml").expect("an SVG on stdout");
    assert_eq!(before, "The square of 4 is 16\nMain process completed\n");
    let lanes = lanes_of(&format!("<?xml{svg}"));
    let roles: Vec<&str> = lanes.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles, ["parent", "child"]);
}

#[test]
fn the_text_rendition_fits_80_columns_with_a_line_per_process() {
    let dir = scratch("text");
    let txt = dir.join("n.txt");
    let out = run(mproc().arg("--timeline").arg(&txt).args(["numbers", "--count", "3"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&txt).expect("the text was written");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line:?}");
    }
    let lane_lines: Vec<&str> = text.lines().filter(|l| l.contains(" │") && l.contains('░')).collect();
    assert_eq!(lane_lines.len(), 4, "{text}");
    assert_eq!(lane_lines.iter().filter(|l| l.ends_with("│ exit 0")).count(), 3, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_timeline_arguments_fail_in_one_line() {
    let dir = scratch("bad");
    // A name that is neither .svg nor .txt: a usage error, nothing run.
    let out = run(mproc().arg("--timeline").arg(dir.join("t.png")).arg("square"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(out.stdout.is_empty() && !dir.join("t.png").exists());
    // A command that draws no timeline.
    let out = run(mproc().arg("--timeline").arg(dir.join("t.svg")).arg("isolation"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out), "mproc: --timeline is for square, numbers, cube, speedup, run and bench pool\n");
    // A file that cannot be created: status 1 before anything runs.
    let out = run(mproc().arg("--timeline").arg(dir.join("no/such/dir/t.svg")).arg("square"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("mproc: --timeline ") && stderr(&out).lines().count() == 1);
    assert!(out.stdout.is_empty());
    // ...and for `mproc run`, the runner's own failure status.
    let out = run(mproc().arg("--timeline").arg(dir.join("no/t.svg")).args(["run", "true", ":::", "1"]));
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[cfg(target_os = "linux")]
fn a_picture_that_cannot_be_written_turns_success_into_status_1() {
    let dir = scratch("full");
    let full = dir.join("full.svg");
    std::os::unix::fs::symlink("/dev/full", &full).expect("symlink to /dev/full");
    let out = run(mproc().arg("--timeline").arg(&full).arg("square"));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "The square of 5 is 25\nMain process completed\n");
    let err = stderr(&out);
    assert!(
        err.starts_with("mproc: --timeline ") && err.contains("cannot write") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn square_or_fail(n: u64) -> u64 {
    match n {
        1 => panic!("task 1 panics"),
        3 => {
            std::thread::sleep(Duration::from_secs(60));
            n
        }
        n => n * n,
    }
}

/// The one test that records in this process (a process records once).
#[test]
fn a_recorded_pool_shows_batches_panics_timeouts_and_every_end() {
    mproc::timeline::start().expect("start recording");
    assert!(mproc::timeline::start().is_err(), "a second start is refused");
    let mut child = mproc::Process::new(|| std::process::exit(3));
    child.start().expect("start a child");
    assert_eq!(child.join().expect("join"), 3);
    let pool =
        mproc::Pool::builder().processes(2).task_timeout(Duration::from_secs(1)).build().expect("a pool");
    let pids = pool.pids();
    let results: Vec<_> = pool.imap_chunked(square_or_fail, 0..5u64, 1).collect();
    assert!(matches!(results[1], Err(mproc::Error::Panicked { .. })), "{results:?}");
    assert_eq!(results[3], Err(mproc::Error::Timeout));
    assert_eq!(results[4], Ok(16));
    pool.close();
    pool.join().expect("join the pool");
    drop(pool);
    let timeline = mproc::timeline::finish().expect("a recording");
    assert!(mproc::timeline::finish().is_none(), "finished once");
    assert_eq!(timeline.dropped, 0);
    let lanes = timeline.lanes();

    assert_eq!((lanes[0].role, lanes[0].pid), (Role::Parent, std::process::id() as i32));
    assert_eq!((lanes[1].role, lanes[1].status), (Role::Child, Some(ExitStatus::Exited(3))));
    let zygote = lanes.iter().find(|l| l.role == Role::Zygote).expect("a zygote lane");
    assert_eq!(zygote.status, Some(ExitStatus::Exited(0)));
    let workers: Vec<_> = lanes.iter().filter(|l| l.role == Role::Worker).collect();
    // Two, and the one that replaced the worker killed for its time.
    assert_eq!(workers.len(), 3, "{workers:?}");
    assert!(pids.iter().all(|p| workers.iter().any(|w| w.pid == *p)), "{pids:?} {workers:?}");
    for w in &workers {
        assert_eq!(w.parent, Some(zygote.pid));
        assert!(w.end.is_some() && w.start < w.end.unwrap_or(0), "every worker was reaped: {w:?}");
        assert!(w.start >= zygote.start && w.end <= zygote.end, "inside the zygote's life: {w:?}");
    }
    let timed_out: Vec<_> = workers.iter().filter(|w| w.timeout.is_some()).collect();
    assert_eq!(timed_out.len(), 1, "{workers:?}");
    assert!(matches!(timed_out[0].status, Some(ExitStatus::Signaled { .. })), "{:?}", timed_out[0]);
    let bars: Vec<_> = workers.iter().flat_map(|w| &w.bars).collect();
    let count = |o: Outcome| bars.iter().filter(|b| b.outcome == o).map(|b| b.tasks).sum::<u32>();
    // Each task is a batch: three ok, one panicked, one cut short by its
    // timeout (a task queued behind it runs again elsewhere, drawn there).
    assert_eq!(
        (count(Outcome::Ok), count(Outcome::Panicked), count(Outcome::Timeout)),
        (3, 1, 1),
        "{bars:?}"
    );
    assert_eq!(count(Outcome::WorkerDied), 0, "{bars:?}");
    assert!(bars.iter().all(|b| b.start <= b.end));
}

#[test]
fn run_with_a_dash_into_a_closed_pipe_ends_quietly_with_141() {
    use std::io::BufRead;
    // `mproc --timeline - run ... | head -1`: the reader is gone by the
    // time the picture is written.
    let mut child = mproc()
        .args(["--timeline", "-", "run", "sh", "-c", "echo hi; sleep 0.3", "sh", ":::", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mproc");
    {
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("read one line");
        assert_eq!(first, "hi\n");
    }
    let out = child.wait_with_output().expect("wait for mproc");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

/// `mproc --timeline SVG speedup` sent `signal` 300 ms in: its exit code.
fn interrupted_speedup(svg: &std::path::Path, signal: i32) -> Option<i32> {
    let mut child = mproc()
        .arg("--timeline")
        .arg(svg)
        .args(["speedup", "--work", "2000000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn mproc");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill takes integers only; the child is ours and unreaped.
    unsafe { libc::kill(child.id() as i32, signal) };
    child.wait().expect("wait").code()
}

#[test]
fn an_interrupted_command_leaves_the_last_picture_whole() {
    let dir = scratch("interrupted");
    let svg = dir.join("keep.svg");
    let out = run(mproc().arg("--timeline").arg(&svg).args(["square", "3"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read_to_string(&svg).expect("the first picture");
    assert_eq!(interrupted_speedup(&svg, libc::SIGTERM), Some(143));
    assert_eq!(std::fs::read_to_string(&svg).expect("still there"), before);
    let _ = std::fs::remove_dir_all(dir);
}

/// "A command stopped by SIGINT or SIGTERM draws nothing": a FILE that
/// did not exist is not left behind empty (an SVG of 0 bytes is not a
/// picture), while a bad path still fails before the command runs.
#[test]
fn an_interrupted_command_leaves_no_new_empty_file() {
    let dir = scratch("interrupted-new");
    for (i, signal, code) in [(0, libc::SIGINT, 130), (1, libc::SIGTERM, 143)] {
        let svg = dir.join(format!("new{i}.svg"));
        assert_eq!(interrupted_speedup(&svg, signal), Some(code));
        assert!(!svg.exists(), "{} left behind after signal {signal}", svg.display());
    }
    let out = run(mproc().arg("--timeline").arg(dir.join("missing/x.svg")).args(["square", "3"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot create") && out.stdout.is_empty(), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

/// A picture for stdout, and stdout full: the command's own write fails
/// first and says so; the picture's write, failing for the same reason,
/// adds no second line.
#[test]
fn a_full_stdout_is_one_error_line_with_a_picture_for_it_too() {
    for args in [&["square", "3"][..], &["run", "echo", ":::", "a"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
        let out = mproc()
            .args(["--timeline", "-"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(full)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run mproc");
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(stderr(&out).lines().count(), 1, "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_picture_goes_into_a_fifo_too() {
    let dir = scratch("fifo");
    let fifo = dir.join("pipe.svg");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("a UTF-8 path")).expect("no NUL");
    // SAFETY: a valid C string and a mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::read_to_string(fifo).expect("read the FIFO")
    });
    let out = run(mproc().arg("--timeline").arg(&fifo).args(["square", "3"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(reader.join().unwrap().starts_with("<?xml"));
    let _ = std::fs::remove_dir_all(dir);
}
