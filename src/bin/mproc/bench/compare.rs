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

/// Runs a command that prints `name<TAB>value<TAB>unit` lines.
fn tsv(cmd: &mut Command) -> HashMap<String, f64> {
    let Ok(out) = cmd.output() else { return HashMap::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

/// Wall seconds of one run of a command with its output discarded (median of 3).
fn wall(cmd: &mut Command) -> Option<f64> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let status = cmd.stdout(std::process::Stdio::null()).status().ok()?;
        if !status.success() {
            return None;
        }
        runs.push(t.elapsed().as_secs_f64());
    }
    Some(super::median(&mut runs))
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

const PY_POOL: &str = r#"
import multiprocessing as mp, time
def trivial(x): return (x * 2654435761) >> 3
if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        t = time.perf_counter()
        out = pool.map(trivial, range(100000))
        secs = time.perf_counter() - t
    assert len(out) == 100000
    print("pool_map_100k\t%.0f\ttasks/s" % (100000 / secs))
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
            eprintln!("mproc: bench compare: cannot find my own binary: {e}");
            return crate::EXIT_FAILURE;
        }
    };
    let c = |name: &str| args.c_dir.join(name);
    let have = |p: &Path| p.is_file();
    if !have(&c("bench")) {
        eprintln!(
            "mproc: bench compare: {} not found: run `make compare` (it builds the C programs)",
            c("bench").display()
        );
        return crate::EXIT_FAILURE;
    }
    let python_ok = Command::new(&args.python).arg("-c").arg("pass").status().is_ok_and(|s| s.success());

    let c_fork = tsv(Command::new(c("bench")).args(["fork", "300"])).get("fork_wait").copied();
    let c_pipe = tsv(Command::new(c("bench")).args(["pipe", "20000"])).get("pipe_pingpong").copied();
    // The same 64 KiB ring on both sides.
    let c_ring = tsv(Command::new(c("bench")).args(["ring", "65536", "2000000"])).get("ring_msgs").copied();
    let m_proc = tsv(Command::new(&me).args(["bench", "process", "--tsv"]));
    let m_ring = tsv(Command::new(&me).args(["bench", "ring", "--tsv", "--capacity", "65536"]));
    let m_pool = tsv(Command::new(&me).args(["bench", "pool", "--tsv", "--items", "100000"]));
    let (py_proc, py_pool) = if python_ok {
        (
            tsv(Command::new(&args.python).args(["-c", PY_PROCESS])).get("process_start_join").copied(),
            tsv(Command::new(&args.python).args(["-c", PY_POOL])).get("pool_map_100k").copied(),
        )
    } else {
        outln!(out, "(python3 not found: the Python column is empty)");
        (None, None)
    };
    let cube_c = have(&c("cube_pool")).then(|| wall(&mut Command::new(c("cube_pool")))).flatten();
    let cube_m = wall(Command::new(&me).arg("cube"));
    let cube_py = python_ok.then(|| wall(Command::new(&args.python).args(["-c", PY_CUBE]))).flatten();

    let m_fork = m_proc.get("process_start_join").copied();
    let m_pipe = m_proc.get("pipe_pingpong").copied();
    let m_ring8 = m_ring.get("ring_msgs_8").copied();
    let m_pool100k = m_pool.get("pool_map_trivial").copied();

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
    row(&mut table, "pipe ping-pong, 1 byte round trip", c_pipe, m_pipe, None, "µs", false);
    row(&mut table, "ring, 8-byte messages", c_ring, m_ring8, None, "msg/s", true);
    row(&mut table, "Pool(2).map, trivial fn, 100,000 items", None, m_pool100k, py_pool, "task/s", true);
    row(
        &mut table,
        "seed pool-of-three program (wall)",
        cube_c.map(|s| s * 1e3),
        cube_m.map(|s| s * 1e3),
        cube_py.map(|s| s * 1e3),
        "ms",
        false,
    );
    outln!(out, "Measured in one run; ratios > 1 mean mproc is faster.");
    table.print(&mut out);
    outln!(out);
    outln!(out, "Targets: within 1.2x of C (ratio >= 0.83) on fork+wait, pipe ping-pong and ring msgs/s;");
    outln!(out, "Pool.map >= 20x Python's on tiny tasks.");
    out.finish("bench compare")
}
