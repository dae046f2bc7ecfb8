//! `mproc`: the classic multiprocessing lessons, side by side with numbers,
//! plus benchmarks and a parallel command runner.
//!
//! This file only parses arguments and dispatches; each subcommand lives in
//! its own module and returns the process exit status.

/// `outln!(out, "format", args...)`: one line through an [`Out`].
macro_rules! outln {
    ($out:expr) => {
        $out.line(format_args!(""))
    };
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

mod bench;
mod demos;
mod run;
mod speedup;
mod timeline;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for bad command-line arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when a library call fails at run time.
pub const EXIT_FAILURE: u8 = 1;
/// Returned by a subcommand whose output was cut short by a closed stdout
/// (`| head -1`), typically seen as a child killed by `SIGPIPE`: `main`
/// then dies of `SIGPIPE` itself, quietly — 141 in a shell.
pub const EXIT_SIGPIPE: u8 = 141;

#[derive(Parser, Debug)]
#[command(
    name = "mproc",
    version,
    about = "Python's multiprocessing lessons on raw fork, waitpid, pipes and shared memory",
    long_about = None,
    propagate_version = true
)]
struct Cli {
    /// Print every POSIX call (fork, waitpid, pipe, mmap, kill, ...) to stderr as it happens;
    /// with a LIST, only the calls of its categories: process, ipc, fd, signal, all (comma-separated)
    #[arg(long, global = true, value_name = "LIST", num_args = 0..=1, require_equals = true,
          default_missing_value = "all")]
    trace: Option<mproc::TraceCategories>,

    /// When the command ends, draw its processes, forks, exits, kills and pool batches
    /// to FILE: an SVG picture for FILE.svg (for -, on stdout), text for FILE.txt.
    /// For square, numbers, cube, speedup, run and bench pool
    #[arg(long, global = true, value_name = "FILE", value_parser = parse_timeline)]
    timeline: Option<timeline::Destination>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One child process prints the square of N; the parent joins it
    Square(demos::SquareArgs),
    /// N child processes each print their own number
    Numbers(demos::NumbersArgs),
    /// A pool of worker processes prints the cube of each number
    Cube(demos::CubeArgs),
    /// Shows that a forked child has its own copy of memory while a thread shares it
    Isolation(demos::IsolationArgs),
    /// Times CPU-bound work sequentially, on processes and on threads
    Speedup(speedup::SpeedupArgs),
    /// Measures processes, pipes, the ring, the pool and the runner against baselines
    Bench(bench::BenchArgs),
    /// Runs a command once per input, in parallel, with grouped output
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    mproc::set_trace_categories(cli.trace.unwrap_or(mproc::TraceCategories::empty()));
    // Ctrl-C or SIGTERM: kill and reap every pool's workers, exit 130/143.
    // A closed stdout (`| head -1`): die quietly of SIGPIPE, like a C
    // filter. `mproc run` handles both itself, reaping its jobs first.
    if !matches!(cli.command, Command::Run(_)) {
        if let Err(e) = mproc::exit_cleanly_on_signals().and_then(|()| mproc::restore_default_sigpipe()) {
            return ExitCode::from(fail("signals", &e));
        }
    }
    let is_run = matches!(cli.command, Command::Run(_));
    let recording = match cli.timeline.map(|d| start_timeline(d, &cli.command)).transpose() {
        Ok(recording) => recording,
        Err(code) => return ExitCode::from(code),
    };
    let code = match cli.command {
        Command::Square(args) => demos::square(args),
        Command::Numbers(args) => demos::numbers(args),
        Command::Cube(args) => demos::cube(args),
        Command::Isolation(args) => demos::isolation(args),
        Command::Speedup(args) => speedup::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Run(args) => run::main(args),
    };
    let code = match recording {
        Some(recording) => finish_timeline(recording, code, is_run),
        None => code,
    };
    if code == EXIT_SIGPIPE && !is_run {
        // SIGPIPE's default action was restored above: this ends the
        // process as the signal would have on our own next write.
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGPIPE);
    }
    ExitCode::from(code)
}

fn parse_timeline(arg: &str) -> Result<timeline::Destination, String> {
    timeline::parse_destination(std::ffi::OsStr::new(arg))
}

/// Starts `--timeline` for `command`; `Err`: the exit status, the reason
/// said (a command that draws no timeline is a usage error; a FILE that
/// cannot be created, a failure).
fn start_timeline(destination: timeline::Destination, command: &Command) -> Result<timeline::Recording, u8> {
    let draws = match command {
        Command::Square(_)
        | Command::Numbers(_)
        | Command::Cube(_)
        | Command::Speedup(_)
        | Command::Run(_) => true,
        Command::Bench(args) => args.is_pool(),
        Command::Isolation(_) => false,
    };
    if !draws {
        complain("--timeline is for square, numbers, cube, speedup, run and bench pool");
        return Err(EXIT_USAGE);
    }
    timeline::Recording::start(destination).map_err(|message| {
        complain(&message);
        if matches!(command, Command::Run(_)) {
            run::EXIT_RUNNER_FAILED
        } else {
            EXIT_FAILURE
        }
    })
}

/// Writes the timeline once the command has ended with `code`. A picture
/// that cannot be written turns a success into a failure (1; `mproc run`:
/// 255, the runner's own failure); a failed command keeps its status.
fn finish_timeline(recording: timeline::Recording, code: u8, is_run: bool) -> u8 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let to_stdout = recording.goes_to_stdout();
    match recording.finish(&timeline::Title::new(&args)) {
        Ok(()) => code,
        // `| head`: as quiet as without --timeline (the lessons die of
        // that SIGPIPE before they get here).
        Err(timeline::Unwritten::StdoutClosed) => run::EXIT_BROKEN_PIPE,
        // The command failed already and said why; a picture for the same
        // stdout (`> /dev/full`) failing too is no second error to report.
        Err(timeline::Unwritten::Failed(_)) if to_stdout && code != 0 => code,
        Err(timeline::Unwritten::Failed(message)) => {
            complain(&message);
            match code {
                0 if is_run => run::EXIT_RUNNER_FAILED,
                0 => EXIT_FAILURE,
                code => code,
            }
        }
    }
}

/// Whether a child's death is the closing of our stdout (`| head -1`):
/// killed by `SIGPIPE` while our stdout is a pipe nobody reads. That is
/// our own SIGPIPE, to end on quietly, not a failure to report.
pub fn died_of_our_sigpipe(status: Option<mproc::ExitStatus>) -> bool {
    matches!(status, Some(mproc::ExitStatus::Signaled { signal, .. }) if signal == libc::SIGPIPE)
        && mproc::stdout_is_broken_pipe()
}

/// Help and version go to stdout with status 0 (1, with one line on
/// stderr, if stdout cannot be written); anything else, a missing
/// subcommand too, is a usage error: one line on stderr, status 2.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            use std::io::Write;
            match err.print().and_then(|()| std::io::stdout().flush()) {
                Ok(()) => ExitCode::SUCCESS,
                // Into a pipe nobody reads: end quietly, killed by SIGPIPE,
                // as every subcommand's output does.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    if mproc::restore_default_sigpipe().is_ok() {
                        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGPIPE);
                    }
                    ExitCode::from(EXIT_SIGPIPE)
                }
                Err(e) => {
                    complain(&format!("cannot write to stdout: {e}"));
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            complain(&missing_subcommand());
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            complain(first.strip_prefix("error: ").unwrap_or(first));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// "A subcommand is required", naming those of the command that lacks one:
/// the deepest subcommand named on the command line (`mproc bench`), or
/// `mproc` itself.
fn missing_subcommand() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = vec![cmd.get_name().to_string()];
    // Options and their values are passed over: only names of
    // subcommands lead deeper.
    for arg in std::env::args_os().skip(1) {
        let Some(sub) = arg.to_str().and_then(|a| cmd.find_subcommand(a)).cloned() else { continue };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).filter(|&n| n != "help").collect();
    let list = match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    format!("a subcommand is required: {list} (see {} --help)", path.join(" "))
}

/// A subcommand's standard output. Every line goes through a write that
/// reports errors (`println!` would panic on `> /dev/full`); after the
/// first error the rest is dropped, and [`Out::finish`] turns it into one
/// line on stderr and status 1.
#[derive(Default)]
pub struct Out {
    error: Option<std::io::Error>,
}

impl Out {
    pub fn new() -> Out {
        Out::default()
    }

    /// Writes one line (use the `outln!` macro).
    pub fn line(&mut self, args: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if self.error.is_some() {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n")) {
            self.error = Some(e);
        }
    }

    /// Flushes; returns 0, or reports the first write error for `what`
    /// and returns [`EXIT_FAILURE`].
    pub fn finish(mut self, what: &str) -> u8 {
        use std::io::Write;
        if self.error.is_none() {
            self.error = std::io::stdout().flush().err();
        }
        match self.error {
            None => 0,
            Some(e) => {
                complain(&format!("{what}: cannot write to stdout: {e}"));
                EXIT_FAILURE
            }
        }
    }
}

/// Prints a library error as one line and returns the failure status.
pub fn fail(context: &str, err: &mproc::Error) -> u8 {
    complain(&format!("{context}: {err}"));
    EXIT_FAILURE
}

/// Writes `mproc: <message>` on stderr with one `write`, so lines from
/// concurrent children never interleave mid-line.
pub fn complain(message: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("mproc: {message}\n").as_bytes());
}
