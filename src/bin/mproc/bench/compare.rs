//! `mproc bench compare` (`make compare`): the same operations in C, in
//! mproc and, when `python3` is there, in Python's `multiprocessing`, all
//! measured in this one run, in one table with the ratios.
//!
//! Each side runs as its own process (the C programs from `c-compare/`,
//! `mproc bench ... --tsv` for mproc, `python3 -c` for Python), so no side
//! measures with another's memory already grown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args as ClapArgs;

use super::Table;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory holding the built C programs (bench, cube_pool)
    #[arg(long, value_name = "DIR", default_value = "build/c")]
    c_dir: PathBuf,
    /// The Python interpreter to compare with (skipped when missing)
    #[arg(long, value_name = "PATH", default_value = "python3")]
    python: String,
}

/// `program` with `args`.
fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Each figure's median over several runs' figures (a figure missing
/// from a run is left out of its median).
fn medians(runs: Vec<HashMap<String, f64>>) -> HashMap<String, f64> {
    let mut all: HashMap<String, Vec<f64>> = HashMap::new();
    for (name, value) in runs.into_iter().flatten() {
        all.entry(name).or_default().push(value);
    }
    all.into_iter().map(|(name, mut values)| (name, super::median(&mut values))).collect()
}

/// Runs a command that prints `name<TAB>value<TAB>unit` lines: its
/// figures, if it ended well. Otherwise none, and a line on stderr saying
/// why: its row is then left out, or another run's median stands for it
/// (a Python that printed half its figures and then crashed is not
/// measured by that half).
fn tsv(cmd: Command) -> HashMap<String, f64> {
    let what = format!("{:?}", cmd.get_program());
    let (status, printed) = match super::measured::output(cmd) {
        Ok(ran) => ran,
        Err(e) => {
            crate::complain(&format!("bench compare: {what}: {e}"));
            return HashMap::new();
        }
    };
    if !status.success() {
        crate::complain(&format!("bench compare: {what} {status}: its figures are left out"));
        return HashMap::new();
    }
    let figures: HashMap<String, f64> = String::from_utf8_lossy(&printed)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect();
    if figures.is_empty() {
        crate::complain(&format!("bench compare: {what} printed no figures"));
    }
    figures
}

/// Wall seconds of one run of each command (made by `make`), with their
/// output discarded: the medians of `runs` runs, the commands taking turns
/// so that a noisy stretch of the machine falls on all of them alike (3
/// runs of the C program alone measured 1.0 ms in one set, 1.5 ms in the
/// next). Started by `Command` (`posix_spawn`), not as a
/// [`super::measured`] child: each run takes milliseconds, and forking
/// this process first would add a fork to every time measured. (A run cut
/// short by a signal ends on its own within those milliseconds.) `None`
/// for a command that cannot be run or fails.
fn walls(makes: &[&dyn Fn() -> Command], runs: usize) -> Vec<Option<f64>> {
    let mut times: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); makes.len()];
    for _ in 0..runs {
        for (make, slot) in makes.iter().zip(&mut times) {
            let Some(list) = slot else { continue };
            let mut cmd = make();
            cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
            let t = Instant::now();
            match cmd.status() {
                Ok(status) if status.success() => list.push(t.elapsed().as_secs_f64()),
                _ => *slot = None,
            }
        }
    }
    times.into_iter().map(|t| t.map(|mut t| super::median(&mut t))).collect()
}

const PY_PROCESS: &str = r#"
import multiprocessing as mp, time
def nothing(): pass
if __name__ == "__main__":
    mp.set_start_method("fork")
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(100):
            p = mp.Process(target=nothing); p.start(); p.join()
        rounds.append((time.perf_counter() - t) / 100 * 1e6)
    rounds.sort()
    print("process_start_join\t%.1f\tus" % rounds[2])
"#;

/// Python's side of the pool rows, on the same trivial function and the
/// same counts as `mproc bench pool`: `map` of 1,000,000 items at the
/// default chunksize, 20,000 `apply_async` then `get` each, and `imap` at
/// chunksize 1; each the median of 3 (mproc's: of 5).
const PY_POOL: &str = r#"
import multiprocessing as mp, time
def trivial(x): return (x * 2654435761) >> 3
if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            out = pool.map(trivial, range(1000000))
            rates.append(1000000 / (time.perf_counter() - t))
            assert out[-1] == trivial(999999)
        rates.sort()
        print("pool_map\t%.0f\ttasks/s" % rates[1])
        n = 20000
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            handles = [pool.apply_async(trivial, (x,)) for x in range(n)]
            total = sum(h.get() for h in handles)
            rates.append(n / (time.perf_counter() - t))
        rates.sort()
        print("apply_async_one_by_one\t%.0f\ttasks/s" % rates[1])
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            total = sum(pool.imap(trivial, range(n), chunksize=1))
            rates.append(n / (time.perf_counter() - t))
        rates.sort()
        print("imap_chunksize_1\t%.0f\ttasks/s" % rates[1])
"#;

const PY_CUBE: &str = r#"
import multiprocessing
def print_cube(number):
    result = number * number * number
    print(f"The cube of {number} is {result}")
if __name__ == "__main__":
    with multiprocessing.Pool(processes=3) as pool:
        pool.map(print_cube, [1, 2, 3, 4, 5])
    print("Main process completed")
"#;

fn fmt(v: Option<f64>, unit: &str) -> String {
    v.map_or(
        "-".to_string(),
        |v| if v >= 1000.0 { format!("{v:.0} {unit}") } else { format!("{v:.1} {unit}") },
    )
}

/// mproc's figure over another's; for rates (higher is better) pass the
/// rate, for times the inverse is taken so > 1 always means "mproc faster".
fn ratio(mproc: Option<f64>, other: Option<f64>, higher_is_better: bool) -> String {
    match (mproc, other) {
        (Some(m), Some(o)) if m > 0.0 && o > 0.0 => {
            let r = if higher_is_better { m / o } else { o / m };
            format!("{r:.2}x")
        }
        _ => "-".to_string(),
    }
}

pub fn main(args: Args) -> u8 {
    let mut out = crate::Out::new();
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            crate::complain(&format!("bench compare: cannot find my own binary: {e}"));
            return crate::EXIT_FAILURE;
        }
    };
    let c = |name: &str| args.c_dir.join(name);
    let have = |p: &Path| p.is_file();
    if !have(&c("bench")) {
        crate::complain(&format!(
            "bench compare: {} not found: run `make compare` (it builds the C programs)",
            c("bench").display()
        ));
        return crate::EXIT_FAILURE;
    }
    let python_ok = super::measured::output(command(&args.python, &["-c", "pass"]))
        .is_ok_and(|(ended, _)| ended.success());

    // C's fork and pipe and ours, three runs each in turn, medians: the
    // fork ratio is near 0.9, and one run of each, seconds apart, moved it
    // by 0.06 as the machine's noise fell on one side or the other.
    let mut c_procs = Vec::new();
    let mut m_procs = Vec::new();
    for _ in 0..3 {
        c_procs.push(tsv(command(c("bench"), &["fork", "300"])));
        c_procs.push(tsv(command(c("bench"), &["pipe", "20000"])));
        m_procs.push(tsv(command(&me, &["bench", "process", "--tsv"])));
    }
    let c_proc = medians(c_procs);
    let (c_fork, c_pipe) = (c_proc.get("fork_wait").copied(), c_proc.get("pipe_pingpong").copied());
    let m_proc = medians(m_procs);
    // The same 64 KiB ring on both sides.
    let c_ring = tsv(command(c("bench"), &["ring", "65536", "2000000"])).get("ring_msgs").copied();
    let m_ring = tsv(command(&me, &["bench", "ring", "--tsv", "--capacity", "65536"]));
    let m_pool = tsv(command(&me, &["bench", "pool", "--tsv", "--items", "1000000"]));
    let m_run = tsv(command(&me, &["bench", "run", "--tsv", "--count", "1000"]));
    let (py_proc, py_pool) = if python_ok {
        (
            tsv(command(&args.python, &["-c", PY_PROCESS])).get("process_start_join").copied(),
            tsv(command(&args.python, &["-c", PY_POOL])),
        )
    } else {
        outln!(out, "({} cannot be run: the Python column is empty)", args.python);
        (None, HashMap::new())
    };
    // The seed's program: C's and ours in turn, 11 runs each; Python's
    // takes 100 ms a run, so 3.
    let (cube_c, cube_m) = if have(&c("cube_pool")) {
        let times = walls(&[&|| command(c("cube_pool"), &[]), &|| command(&me, &["cube"])], 11);
        (times[0], times[1])
    } else {
        (None, walls(&[&|| command(&me, &["cube"])], 11)[0])
    };
    let cube_py = python_ok.then(|| walls(&[&|| command(&args.python, &["-c", PY_CUBE])], 3)[0]).flatten();

    let m = |set: &HashMap<String, f64>, name: &str| set.get(name).copied();
    let m_fork = m(&m_proc, "process_start_join");
    let m_map = m(&m_pool, "pool_map_trivial");
    let m_seq = m(&m_pool, "sequential_trivial");
    let m_async = m(&m_pool, "apply_async_one_by_one");
    let m_imap = m(&m_pool, "imap_chunksize_1");

    let mut table = Table::new(&["operation", "C", "mproc", "Python", "mproc vs C", "mproc vs Python"]);
    let row = |t: &mut Table,
               name: &str,
               cv: Option<f64>,
               mv: Option<f64>,
               pv: Option<f64>,
               unit: &str,
               rate: bool| {
        t.row(&[
            name.to_string(),
            fmt(cv, unit),
            fmt(mv, unit),
            fmt(pv, unit),
            ratio(mv, cv, rate),
            ratio(mv, pv, rate),
        ]);
    };
    row(&mut table, "fork + _exit + waitpid (Process start+join)", c_fork, m_fork, py_proc, "µs", false);
    row(
        &mut table,
        "pipe ping-pong, 1 byte round trip",
        c_pipe,
        m(&m_proc, "pipe_pingpong"),
        None,
        "µs",
        false,
    );
    row(&mut table, "ring, 8-byte messages", c_ring, m(&m_ring, "ring_msgs_8"), None, "msg/s", true);
    row(
        &mut table,
        "Pool(2).map, trivial fn, 1,000,000 items",
        None,
        m_map,
        m(&py_pool, "pool_map"),
        "task/s",
        true,
    );
    row(
        &mut table,
        "apply_async x 20,000, then get each",
        None,
        m_async,
        m(&py_pool, "apply_async_one_by_one"),
        "task/s",
        true,
    );
    row(&mut table, "imap, chunksize 1", None, m_imap, m(&py_pool, "imap_chunksize_1"), "task/s", true);
    row(
        &mut table,
        "seed pool-of-three program (wall)",
        cube_c.map(|s| s * 1e3),
        cube_m.map(|s| s * 1e3),
        cube_py.map(|s| s * 1e3),
        "ms",
        false,
    );
    outln!(
        out,
        "Measured in one run; ratios > 1 mean mproc is faster. Pool rows: medians (mproc's of 5 runs, Python's of 3)."
    );
    table.print(&mut out);
    outln!(out);

    // Each target, as the ratio it is judged by, all from this run.
    let over =
        |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|&(a, b)| a > 0.0 && b > 0.0).map(|(a, b)| a / b);
    let mut targets = Table::new(&["target", "measured", "met"]);
    let mut target = |name: &str, measured: Option<f64>, at_least: f64| {
        let (value, met) = match measured {
            Some(r) => (format!("{r:.2}x"), if r >= at_least { "yes" } else { "no" }),
            None => ("-".to_string(), "-"),
        };
        targets.row(&[name.to_string(), value, met.to_string()]);
    };
    target("1. Pool(2).map >= 20x Python's map", over(m_map, m(&py_pool, "pool_map")), 20.0);
    target(
        "1. Pool(2).map >= 0.5x a sequential loop, first runs",
        over(m(&m_pool, "pool_map_trivial_first"), m(&m_pool, "sequential_trivial_first")),
        0.5,
    );
    target("1. Pool(2).map >= 0.5x a sequential loop, medians of 5 (warm)", over(m_map, m_seq), 0.5);
    target(
        "2. apply_async one by one >= 50x Python's",
        over(m_async, m(&py_pool, "apply_async_one_by_one")),
        50.0,
    );
    target("2. imap at chunksize 1 >= 50x Python's", over(m_imap, m(&py_pool, "imap_chunksize_1")), 50.0);
    target("3. Process start+join >= 0.9x C (time ratio)", over(c_fork, m_fork), 0.9);
    target("4. seed pool-of-three <= 1.3x C's wall (C/mproc >= 0.77)", over(cube_c, cube_m), 1.0 / 1.3);
    target("5. pipe ping-pong within 1.2x of C (>= 0.83)", over(c_pipe, m(&m_proc, "pipe_pingpong")), 0.83);
    target("5. ring msgs/s within 1.2x of C (>= 0.83)", over(m(&m_ring, "ring_msgs_8"), c_ring), 0.83);
    // No regression: the ratio each had at the last landing (Pool::map
    // 1.34x fork_map's time, mproc run 0.95x xargs's rate), less 10 %.
    target(
        "5. Pool::map, 200,000 strings: fork_map's time / its (>= 0.67, was 0.75)",
        over(m(&m_pool, "fork_map_large_input"), m(&m_pool, "pool_map_large_input")),
        0.67,
    );
    target(
        "5. mproc run, jobs/s vs xargs -P (>= 0.86, was 0.95)",
        over(m(&m_run, "run_jobs"), m(&m_run, "run_jobs_xargs")),
        0.86,
    );
    target(
        "mproc run, jobs/s >= 1.0x xargs -P, grouping output (issue 11)",
        over(m(&m_run, "run_jobs"), m(&m_run, "run_jobs_xargs")),
        1.0,
    );
    target(
        "apply from 8 threads >= 0.8x imap at chunksize 1, medians of 5 (issue 12)",
        over(m(&m_pool, "apply_8_threads"), m_imap),
        0.8,
    );
    outln!(out, "Targets (ratios from the table above and from `mproc bench pool`/`bench run` in this run):");
    targets.print(&mut out);
    out.finish("bench compare")
}
