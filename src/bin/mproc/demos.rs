//! The seed lessons: one process, four processes, a pool of three, and the
//! proof that processes do not share memory while threads do.
//!
//! Each demo's C twin lives in `c-compare/` under the same name and prints
//! the same lines.

use std::sync::atomic::{AtomicI64, Ordering};

use clap::Args;
use mproc::{Error, Process};

use crate::fail;

#[derive(Args, Debug)]
pub struct SquareArgs {
    /// The number to square
    #[arg(default_value_t = 5, allow_negative_numbers = true)]
    n: i64,
}

#[derive(Args, Debug)]
pub struct NumbersArgs {
    /// How many child processes to start (0 to 1000)
    #[arg(long, default_value_t = 4, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    count: u32,
}

#[derive(Args, Debug)]
pub struct CubeArgs {
    /// How many worker processes the pool has (1 to 256)
    #[arg(long, default_value_t = 3, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    processes: u32,
    /// The numbers to cube
    #[arg(default_values_t = [1, 2, 3, 4, 5], allow_negative_numbers = true)]
    numbers: Vec<i64>,
}

#[derive(Args, Debug)]
pub struct IsolationArgs {}

/// Prints one line on stdout and flushes it.
fn write_line(line: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush())
}

/// Prints one line on stdout; a write error (`> /dev/full`) becomes a
/// one-line message and `Err(exit status)`, never a panic.
fn say(line: std::fmt::Arguments<'_>) -> Result<(), u8> {
    write_line(line).map_err(|e| {
        crate::complain(&format!("cannot write to stdout: {e}"));
        crate::EXIT_FAILURE
    })
}

/// A child's exit status for "my stdout could not be written":
/// `EX_IOERR` from sysexits(3). The parent says so, once for all children.
const CHILD_STDOUT_FAILED: i32 = 74;

/// In a child: prints one line, or ends the child with
/// [`CHILD_STDOUT_FAILED`] if stdout cannot be written. The child says
/// nothing itself: its parent reports it, in one line however many
/// children fail the same way.
fn child_say(line: std::fmt::Arguments<'_>) {
    if write_line(line).is_err() {
        std::process::exit(CHILD_STDOUT_FAILED);
    }
}

/// Whether the one line about children that could not write stdout was
/// said already.
static STDOUT_FAILURE_SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Joins `p`; a child that did not exit 0 is a failure of the demo.
fn join_ok(what: &str, p: &Process) -> Result<(), u8> {
    match p.join() {
        Ok(0) => Ok(()),
        Ok(_) if crate::died_of_our_sigpipe(p.exit_status()) => Err(crate::EXIT_SIGPIPE),
        Ok(CHILD_STDOUT_FAILED) => {
            use std::sync::atomic::Ordering;
            if !STDOUT_FAILURE_SAID.swap(true, Ordering::Relaxed) {
                crate::complain(&format!("{what}: cannot write to stdout (a child's write failed)"));
            }
            Err(crate::EXIT_FAILURE)
        }
        Ok(_) => {
            let status = p.exit_status().map_or("ended badly".to_string(), |s| s.to_string());
            crate::complain(&format!("{what}: child {} {status}", p.pid().unwrap_or(-1)));
            Err(crate::EXIT_FAILURE)
        }
        Err(e) => Err(fail(what, &e)),
    }
}

/// `mproc square`: the seed's first program. Twin: `c-compare/square.c`.
pub fn square(args: SquareArgs) -> u8 {
    let n = args.n;
    let mut process = Process::new(move || {
        // i128: the square of any i64 fits, so no input can overflow.
        let result = i128::from(n) * i128::from(n);
        child_say(format_args!("The square of {n} is {result}"));
    });
    if let Err(e) = process.start() {
        return fail("square", &e);
    }
    join_ok("square", &process).and_then(|()| say(format_args!("Main process completed"))).err().unwrap_or(0)
}

/// `mproc numbers`: N processes, each printing its own number. Their lines
/// come in whatever order the scheduler runs them. Twin: `c-compare/numbers.c`.
pub fn numbers(args: NumbersArgs) -> u8 {
    let mut processes = Vec::new();
    let mut failure = None;
    for i in 1..=args.count {
        let mut p = Process::new(move || child_say(format_args!("Process {i}: {i}")));
        match p.start() {
            Ok(()) => processes.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Join everything that did start, even after a failed fork.
    let mut status = 0;
    for p in &processes {
        if let Err(code) = join_ok("numbers", p) {
            // A real failure wins over a closed stdout.
            if status == 0 || status == crate::EXIT_SIGPIPE {
                status = code;
            }
        }
    }
    if let Some(e) = failure {
        return fail("numbers", &e);
    }
    if status != 0 {
        return status;
    }
    say(format_args!("Main process completed")).err().unwrap_or(0)
}

/// `mproc cube`: the seed's pool of three. Twin: `c-compare/cube_pool.c`.
pub fn cube(args: CubeArgs) -> u8 {
    let pool = match mproc::Pool::new(args.processes as usize) {
        Ok(pool) => pool,
        Err(e) => return fail("cube", &e),
    };
    let numbers = args.numbers.clone();
    match pool.map(print_cube, args.numbers) {
        Ok(cubes) => {
            // The first problem in input order: a line the worker could not
            // write, or a cube too large (printed nowhere: no false number).
            for (n, cube) in numbers.iter().zip(cubes) {
                let problem = match cube {
                    Ok(Some(_)) => continue,
                    Ok(None) => format!("overflow: the cube of {n} does not fit in 128 bits"),
                    Err(write_error) => write_error,
                };
                crate::complain(&format!("cube: {problem}"));
                return crate::EXIT_FAILURE;
            }
        }
        Err(Error::WorkerDied { exitcode, core_dumped, .. })
            if crate::died_of_our_sigpipe(Some(mproc::ExitStatus::Signaled {
                signal: -exitcode,
                core_dumped,
            })) =>
        {
            // The pool is killed and reaped as it drops, before we go.
            return crate::EXIT_SIGPIPE;
        }
        Err(e) => return fail("cube", &e),
    }
    pool.close();
    if let Err(e) = pool.join() {
        return fail("cube", &e);
    }
    say(format_args!("Main process completed")).err().unwrap_or(0)
}

/// Runs in a worker: prints one line and returns the cube to the parent;
/// `Ok(None)`, and nothing printed, when the cube does not fit in an i128
/// (|n| above 5541191377756); `Err` when stdout cannot be written
/// (`> /dev/full`). The parent reports either in one line.
fn print_cube(n: i64) -> Result<Option<i128>, String> {
    use std::io::Write;
    let wide = i128::from(n);
    let Some(result) = wide.checked_mul(wide).and_then(|square| square.checked_mul(wide)) else {
        return Ok(None);
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "The cube of {n} is {result}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(Some(result))
}

/// The counter on a page of its own: nothing else the program writes
/// shares its page, so a write to it faults (or not) for its own sake.
/// 64 KiB covers every page size in use (4, 16 and 64 KiB).
#[repr(C, align(65536))]
struct OwnPage(AtomicI64);

/// One variable with one address in every process forked from us.
static COUNTER: OwnPage = OwnPage(AtomicI64::new(0));

/// `mproc isolation`: same virtual address, different values after `fork`;
/// same address, same value with a thread; and what each write cost the
/// kernel. Twin: `c-compare/isolation.c`.
pub fn isolation(_args: IsolationArgs) -> u8 {
    isolation_steps().err().unwrap_or(0)
}

/// Minor faults taken by `write` alone (`None` if `getrusage` fails). A
/// first call touches the stack pages the measuring calls use, so that
/// copying them on write is not counted against `write`.
fn faults_of(write: impl FnOnce()) -> Option<u64> {
    mproc::minor_faults().ok()?;
    let before = mproc::minor_faults().ok()?;
    write();
    let after = mproc::minor_faults().ok()?;
    Some(after.saturating_sub(before))
}

/// The line saying what `who`'s one write cost: `n` minor faults.
fn fault_line(who: &str, n: u64) -> String {
    let kib = mproc::page_size() / 1024;
    match n {
        0 => format!("{who}'s one write cost 0 minor faults: no page was copied"),
        1 => format!("{who}'s one write cost 1 minor fault: the kernel copied one {kib} KiB page"),
        n => format!(
            "{who}'s one write cost {n} minor faults: the kernel copied its {kib} KiB page, and more faulted"
        ),
    }
}

/// This process's `Private_Dirty` memory in KiB, from
/// `/proc/self/smaps_rollup`; `None` where there is no such file (not
/// Linux, or before 4.14). Reads into `buf`, whose pages the caller has
/// touched already, so that reading does not itself dirty new pages.
fn private_dirty_kib(buf: &mut Vec<u8>) -> Option<u64> {
    use std::io::Read;
    buf.clear();
    let mut file = std::fs::File::open("/proc/self/smaps_rollup").ok()?;
    file.read_to_end(buf).ok()?;
    let text = std::str::from_utf8(buf).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Private_Dirty:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// In the child: writes 200 into its copy of the counter, and prints what
/// that cost: the faults, and its private dirty memory before and after
/// (where the system tells).
fn child_writes() {
    let mut buf = Vec::with_capacity(64 * 1024);
    // Once for nothing: the buffer's and the stack's pages become the
    // child's own before anything is measured.
    private_dirty_kib(&mut buf);
    let dirty_before = private_dirty_kib(&mut buf);
    let faults = faults_of(|| COUNTER.0.store(200, Ordering::Relaxed));
    let dirty_after = private_dirty_kib(&mut buf);
    let addr = &COUNTER.0 as *const AtomicI64;
    child_say(format_args!("fork: child sets counter = {} at {addr:p}", COUNTER.0.load(Ordering::Relaxed)));
    if let Some(n) = faults {
        child_say(format_args!("fork: {}", fault_line("the child", n)));
    }
    if let (Some(before), Some(after)) = (dirty_before, dirty_after) {
        child_say(format_args!(
            "fork: the child's private dirty memory: {before} KiB before the write, {after} KiB after"
        ));
    }
}

fn isolation_steps() -> Result<(), u8> {
    let addr = &COUNTER.0 as *const AtomicI64;
    // Relaxed throughout: each step is ordered by fork/waitpid or by
    // thread spawn/join, which synchronise memory on their own.
    COUNTER.0.store(100, Ordering::Relaxed);
    say(format_args!("fork: parent sets counter = 100 at {addr:p}"))?;
    let mut child = Process::new(child_writes);
    child.start().map_err(|e| fail("isolation", &e))?;
    join_ok("isolation", &child)?;
    say(format_args!(
        "fork: parent after join sees counter = {} at {addr:p}",
        COUNTER.0.load(Ordering::Relaxed)
    ))?;
    say(format_args!(
        "fork: same address, different values: the child changed its own copy-on-write copy, not the parent's."
    ))?;

    COUNTER.0.store(100, Ordering::Relaxed);
    say(format_args!("thread: main sets counter = 100 at {addr:p}"))?;
    let thread = std::thread::spawn(|| {
        let faults = faults_of(|| COUNTER.0.store(200, Ordering::Relaxed));
        let addr = &COUNTER.0 as *const AtomicI64;
        say(format_args!("thread: thread sets counter = {} at {addr:p}", COUNTER.0.load(Ordering::Relaxed)))?;
        match faults {
            Some(n) => say(format_args!("thread: {}", fault_line("the thread", n))),
            None => Ok(()),
        }
    });
    match thread.join() {
        Ok(written) => written?,
        Err(_) => return Err(fail("isolation", &Error::InvalidState("the thread panicked"))),
    }
    say(format_args!(
        "thread: main after join sees counter = {} at {addr:p}",
        COUNTER.0.load(Ordering::Relaxed)
    ))?;
    say(format_args!("thread: same address, same value: threads share one address space."))
}
