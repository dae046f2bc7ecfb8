//! `mproc run`: runs a command once per input, in parallel, with grouped
//! output. Parses arguments, reads the inputs, calls
//! [`mproc::runner::run`], writes the job log, maps the result to an exit
//! status.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mproc::runner::input::Next;
use mproc::runner::{
    self, joblog, Halt, Inputs, JobArgs, JobStdin, Options, Order, Output, Source, Template,
};

use crate::EXIT_USAGE;

/// Exit status cap for failed jobs (GNU parallel's convention).
const EXIT_MAX_FAILED: u8 = 101;
/// Exit status when the runner itself failed (fork, pipe, spill file, job
/// log), as distinct from failed jobs.
pub const EXIT_RUNNER_FAILED: u8 = 255;
/// Exit status when our stdout was closed under us (a shell's 128 + SIGPIPE).
pub const EXIT_BROKEN_PIPE: u8 = 141;

const AFTER_HELP: &str = "\
Inputs come after ::: (words), after :::: (files, one input per line; - is stdin) or, with \
neither, one per line from stdin. Several ::: and :::: sources give every combination (the \
first changing slowest), or with --link the n-th input of each. In COMMAND and ARGS, \
{} is the input, {.} the input without extension, {/} its basename, {//} its directory, \
{/.} its basename without extension, {1} {2} ... (and {1.} {2/} ...) the input of one source, \
{#} the job number, {%} the job slot; with none of these, the inputs are appended.

Exit status: 0 all jobs succeeded; 1-100 that many jobs failed; 101 more than 100 failed; \
2 usage error; 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP; 141 output closed; \
255 the runner itself failed. With --halt, GNU parallel's status (see mproc(1)).

Examples:
  mproc run gzip -k ::: *.txt
  find . -name '*.png' | mproc run -j 4 convert {} {.}.jpg
  mproc run echo {1}-{2} ::: a b ::: 1 2
  mproc run --timeout 30s --joblog log.tsv ./test.sh ::: 1 2 3";

/// Runs a command once per input, in parallel, with grouped output.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// Run N jobs at once: N, 0 (as many as possible), N% of the CPUs, +N or -N CPUs [default: the number of CPUs]
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = parse_jobs, allow_hyphen_values = true)]
    jobs: Option<Jobs>,

    /// Print each job's output in input order (the default)
    #[arg(short = 'k', long, overrides_with = "unordered")]
    keep_order: bool,

    /// Print each job's output as soon as the job completes
    #[arg(long, overrides_with = "keep_order")]
    unordered: bool,

    /// Kill a job running longer than DURATION (500ms, 2s, 1.5, 1m, 1h): SIGTERM to its process group, SIGKILL 200ms later
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Run a failing job up to N times in all (as GNU parallel counts); only the last run is printed and logged
    #[arg(long, value_name = "N", value_parser = parse_retries)]
    retries: Option<u32>,

    /// Stop early, as GNU parallel reads it: WHEN now (kill the running jobs) or soon (let them finish, start no more), WHY fail, success or done, N a count or a share such as 10%; so now,fail=1 stops at the first failure, soon,fail=3 after the third; never (the default) runs every job; GNU's old forms: 0 (never), 1 (soon,fail=1), 2 (now,fail=1), -1 and -2 (the same for success), N% (soon,fail=N%)
    #[arg(long, value_name = "WHEN,WHY=N", value_parser = parse_halt, allow_hyphen_values = true)]
    halt: Option<HaltArg>,

    /// After the first failed job, start no new jobs; running ones complete (--halt soon,fail=1)
    #[arg(long, conflicts_with = "halt")]
    halt_on_error: bool,

    /// Print the commands, one per line, shell-quoted, without running them
    #[arg(long)]
    dry_run: bool,

    /// Write a line per completed job to FILE, in GNU parallel's job log format
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,

    /// Skip the jobs the --joblog FILE lists (their numbers); append to it
    #[arg(long, conflicts_with = "resume_failed")]
    resume: bool,

    /// Like --resume, but run again the jobs the log lists as failed
    #[arg(long)]
    resume_failed: bool,

    /// Inputs on stdin are separated by NUL bytes instead of newlines
    #[arg(short = '0', long)]
    null: bool,

    /// Show a progress bar (done/total, percent, ETA) on stderr when it is a terminal
    #[arg(long)]
    bar: bool,

    /// Show GNU parallel's ETA line (ETA, jobs left, average time) on stderr when it is a terminal
    #[arg(long)]
    eta: bool,

    /// Put the job's inputs and a tab before each line it prints
    #[arg(long)]
    tag: bool,

    /// Print whole lines as jobs write them, not each job's output whole when it completes
    #[arg(long)]
    line_buffer: bool,

    /// With several input sources, take their values in step (the n-th of each) instead of every combination
    #[arg(long)]
    link: bool,

    /// COMMAND [ARGS...] [::: INPUT... | :::: FILE...]...
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    command: Vec<OsString>,
}

pub fn main(args: RunArgs) -> u8 {
    let dry_run = args.dry_run;
    match plan(args) {
        Err(status) => status,
        Ok(mut plan) if dry_run => {
            dry_run_jobs(&plan.template, &mut plan.inputs, plan.options.jobs, &plan.options.skip)
        }
        Ok(plan) => execute(plan),
    }
}

/// What to run, read from the command line and the job log.
struct Plan {
    template: Template,
    inputs: Inputs,
    options: Options,
    joblog: Option<PathBuf>,
    /// Append to the job log (`--resume`, `--resume-failed`).
    resume: bool,
}

/// Reads the arguments, opens the inputs and reads back the job log; an
/// error is one line on stderr and the exit status.
fn plan(args: RunArgs) -> Result<Plan, u8> {
    let (words, sources) = split_command(args.command).map_err(|msg| usage(&msg))?;
    let template = Template::new(words).map_err(|err| usage(&err.to_string()))?;
    let source_count = sources.len().max(1);
    if template.max_source() > source_count {
        let n = template.max_source();
        return Err(usage(&format!("{{{n}}} names input source {n}, but there are {source_count}")));
    }
    let resume = match (args.resume, args.resume_failed) {
        (true, _) => Some(joblog::Resume::Logged),
        (false, true) => Some(joblog::Resume::Succeeded),
        (false, false) => None,
    };
    if args.joblog.as_deref() == Some(std::path::Path::new("-")) {
        // GNU parallel writes the log to stdout then; ours would go in a
        // file named `-`, which nobody means. Say so instead.
        return Err(usage(
            "--joblog - (the log on standard output, as GNU parallel writes it) is not supported: \
             give a file name (/dev/stdout, when standard output is a pipe, mixes the log into the output)",
        ));
    }
    let skip = match (args.joblog.as_deref(), resume) {
        (None, Some(_)) => return Err(usage("--resume and --resume-failed need --joblog FILE")),
        (Some(path), Some(which)) => read_joblog(path, which).map_err(|msg| runner_failed(&msg))?,
        _ => joblog::SeqSet::default(),
    };
    let stdin_inputs = sources.is_empty() || sources.iter().any(SourceArg::is_stdin);
    let separator = if args.null { b'\0' } else { b'\n' };
    let inputs = open_sources(sources, separator, args.link).map_err(|msg| runner_failed(&msg))?;
    let cpus = Options::default().jobs;
    let options = Options {
        jobs: args.jobs.map_or(cpus, |jobs| jobs.resolve(cpus)),
        order: if args.unordered { Order::Unordered } else { Order::Keep },
        timeout: args.timeout,
        halt: if args.halt_on_error { Some(Halt::ON_ERROR) } else { args.halt.and_then(|h| h.0) },
        retries: args.retries.unwrap_or(1),
        skip,
        tag: args.tag,
        bar: args.bar,
        eta: args.eta,
        line_buffer: args.line_buffer,
        stdin: if stdin_inputs { JobStdin::Null } else { JobStdin::Inherit },
        handle_signals: true,
        ..Options::default()
    };
    Ok(Plan { template, inputs, options, joblog: args.joblog, resume: resume.is_some() })
}

/// Runs the jobs, writes the job log, and maps the result to the exit
/// status.
fn execute(mut plan: Plan) -> u8 {
    let mut joblog = match plan.joblog.as_deref().map(|path| open_joblog(path, plan.resume)).transpose() {
        Ok(log) => log,
        Err(msg) => return runner_failed(&msg),
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let output = Output { stdout: stdout.as_fd(), stderr: stderr.as_fd() };
    let mut log_error: Option<std::io::Error> = None;
    let result = runner::run(&plan.template, &mut plan.inputs, &plan.options, output, &mut |report| {
        if let (Some(log), None) = (joblog.as_mut(), log_error.as_ref()) {
            if let Err(err) = log.write_all(&joblog::line(report)) {
                log_error = Some(err);
            }
        }
    });
    let summary = match result {
        Err(mproc::Error::Os(e)) if e.errno == libc::EPIPE => return EXIT_BROKEN_PIPE,
        // With jobs running, the runner runs fewer at once instead: here
        // not even one could start.
        Err(err @ mproc::Error::Os(mproc::OsError { errno: libc::EMFILE, .. })) => {
            return runner_failed(&format!(
                "{err}: the open files limit (ulimit -n) is too low to run even one job"
            ))
        }
        Err(err) => return runner_failed(&err.to_string()),
        Ok(summary) => summary,
    };
    if let Some(signal) = summary.interrupted {
        return (128 + signal) as u8;
    }
    if let Some(err) = log_error {
        return runner_failed(&format!("writing the job log: {err}"));
    }
    match summary.halt_status {
        // --halt: GNU parallel's status (0-101, or 128 + a signal).
        Some(status) => status.clamp(0, 255) as u8,
        None => summary.failed.min(u64::from(EXIT_MAX_FAILED)) as u8,
    }
}

/// Words of a command line, or inputs, as bytes.
type Words = Vec<Vec<u8>>;

/// An input source as the command line gives it.
#[derive(Debug, PartialEq, Eq)]
enum SourceArg {
    /// `::: WORD...`
    Words(Words),
    /// One file after `::::` (`-`: standard input).
    File(Vec<u8>),
}

impl SourceArg {
    fn is_stdin(&self) -> bool {
        matches!(self, SourceArg::File(name) if name == b"-")
    }
}

const LIST_MARKER: &[u8] = b":::";
const FILE_MARKER: &[u8] = b"::::";

/// Splits `COMMAND [ARGS...] [::: INPUT... | :::: FILE...]...`; no source
/// at all: read stdin.
fn split_command(words: Vec<OsString>) -> Result<(Words, Vec<SourceArg>), String> {
    let mut words = words.into_iter().map(OsString::into_vec);
    let is_marker = |w: &[u8]| w == LIST_MARKER || w == FILE_MARKER;
    let mut command = Vec::new();
    let mut marker = None;
    for word in words.by_ref() {
        if is_marker(&word) {
            marker = Some(word);
            break;
        }
        command.push(word);
    }
    if command.is_empty() {
        return Err("missing COMMAND (usage: mproc run [OPTIONS] COMMAND [ARGS...] [::: INPUT...])".into());
    }
    let mut sources = Vec::new();
    while let Some(current) = marker.take() {
        let mut items = Vec::new();
        for word in words.by_ref() {
            if is_marker(&word) {
                marker = Some(word);
                break;
            }
            items.push(word);
        }
        if current == LIST_MARKER {
            sources.push(SourceArg::Words(items));
        } else if items.is_empty() {
            return Err("missing FILE after ::::".into());
        } else {
            sources.extend(items.into_iter().map(SourceArg::File));
        }
    }
    if sources.iter().filter(|s| s.is_stdin()).count() > 1 {
        return Err("standard input can be only one input source".into());
    }
    Ok((command, sources))
}

/// Opens every source; none: standard input.
fn open_sources(sources: Vec<SourceArg>, separator: u8, link: bool) -> Result<Inputs, String> {
    if sources.is_empty() {
        return Ok(Inputs::single(Source::stdin(separator)));
    }
    let mut opened = Vec::with_capacity(sources.len());
    for source in sources {
        opened.push(match source {
            SourceArg::Words(words) => Source::values(words),
            SourceArg::File(name) if name == b"-" => Source::stdin(separator),
            SourceArg::File(name) => {
                let path = PathBuf::from(OsString::from_vec(name));
                let file = File::open(&path)
                    .map_err(|e| format!("cannot open input file {}: {e}", path.display()))?;
                Source::file(file, separator)
            }
        });
    }
    Inputs::combine(opened, link).map_err(|e| format!("reading the inputs: {e}"))
}

/// Prints each job's command line as inputs arrive, flushing whenever the
/// input stream has nothing more yet (so `tail -f | mproc run --dry-run`
/// shows each command at once).
fn dry_run_jobs(template: &Template, inputs: &mut Inputs, jobs: usize, skip: &joblog::SeqSet) -> u8 {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seq = 0u64;
    let written = loop {
        let args = match inputs.next(false) {
            Ok(Next::Args(args)) => Ok(Some(args)),
            Ok(Next::End) => Ok(None),
            Ok(Next::Pending) => match out.flush() {
                Ok(()) => inputs.next_blocking(),
                Err(err) => break Err(err),
            },
            Err(err) => Err(err),
        };
        let args = match args {
            Ok(Some(args)) => args,
            Ok(None) => break Ok(()),
            Err(err) => return runner_failed(&err.to_string()),
        };
        seq += 1;
        if skip.contains(seq) {
            continue;
        }
        // No job runs, so `{%}` counts round the slots, as GNU parallel's does.
        let slot = ((seq - 1) % jobs as u64) as usize + 1;
        let line = runner::shell_line(&template.expand(JobArgs { values: &args, seq, slot }));
        if let Err(err) = out.write_all(&line).and_then(|()| out.write_all(b"\n")) {
            break Err(err);
        }
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => EXIT_BROKEN_PIPE,
        Err(err) => runner_failed(&format!("writing: {err}")),
    }
}

/// The jobs an earlier run's log lists as done (none if there is no log).
fn read_joblog(path: &Path, which: joblog::Resume) -> Result<joblog::SeqSet, String> {
    match std::fs::read(path) {
        Ok(log) => joblog::read_done(&log, which).map_err(|e| format!("job log {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(joblog::SeqSet::default()),
        Err(e) => Err(format!("cannot read job log {}: {e}", path.display())),
    }
}

/// Creates the job log with its header or, when resuming, appends to it
/// (the header only if it is empty), after cutting off an incomplete last
/// line.
fn open_joblog(path: &Path, append: bool) -> Result<File, String> {
    let mut options = std::fs::OpenOptions::new();
    match append {
        true => options.read(true).append(true).create(true),
        false => options.write(true).create(true).truncate(true),
    };
    let mut file =
        options.open(path).map_err(|e| format!("cannot create job log {}: {e}", path.display()))?;
    if append {
        drop_incomplete_last_line(&file).map_err(|e| format!("writing job log {}: {e}", path.display()))?;
    }
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
    if empty {
        file.write_all(joblog::HEADER.as_bytes())
            .map_err(|e| format!("writing job log {}: {e}", path.display()))?;
    }
    Ok(file)
}

/// Removes a last line without its newline (its write was cut short, by a
/// crash): `--resume` counted no job in it (see [`joblog::complete_len`]),
/// and the lines appended next must start on a line of their own.
fn drop_incomplete_last_line(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let (mut end, mut buf) = (len, [0u8; 4096]);
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        file.set_len(end)?;
    }
    Ok(())
}

fn usage(msg: &str) -> u8 {
    crate::complain(&format!("run: {msg}"));
    EXIT_USAGE
}

fn runner_failed(msg: &str) -> u8 {
    crate::complain(&format!("run: {msg}"));
    EXIT_RUNNER_FAILED
}

/// `--halt`'s value: a condition, or `None` for `never`.
#[derive(Clone, Debug)]
struct HaltArg(Option<Halt>);

fn parse_halt(s: &str) -> Result<HaltArg, String> {
    Halt::parse(s).map(HaltArg).map_err(|e| e.to_string())
}

fn parse_retries(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        // GNU parallel reads 0 as "retry forever": a failing command would
        // then never end the run.
        Ok(0) => Err("must be at least 1 (it counts runs in all)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of runs")),
    }
}

/// `-j`, as GNU parallel reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Jobs {
    /// `N`.
    Count(usize),
    /// `0`: as many as the open-files limit allows.
    AsManyAsPossible,
    /// `N%`: that share of the CPUs, rounded up.
    PercentOfCpus(f64),
    /// `+N`.
    CpusPlus(usize),
    /// `-N`: at least 1.
    CpusMinus(usize),
}

impl Jobs {
    fn resolve(self, cpus: usize) -> usize {
        match self {
            Jobs::Count(n) => n,
            Jobs::AsManyAsPossible => usize::MAX,
            Jobs::PercentOfCpus(p) => ((cpus as f64 * p / 100.0).ceil() as usize).max(1),
            Jobs::CpusPlus(n) => cpus.saturating_add(n),
            Jobs::CpusMinus(n) => cpus.saturating_sub(n).max(1),
        }
    }
}

fn parse_jobs(s: &str) -> Result<Jobs, String> {
    let bad = || format!("'{s}' is not a number of jobs (examples: 4, 0, 50%, +2, -1)");
    let count = |digits: &str| match digits.bytes().all(|b| b.is_ascii_digit()) {
        true => digits.parse::<usize>().map_err(|_| bad()),
        false => Err(bad()),
    };
    if let Some(percent) = s.strip_suffix('%') {
        let valid = !percent.is_empty() && percent.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        return match percent.parse::<f64>() {
            Ok(p) if valid && p > 0.0 && p.is_finite() => Ok(Jobs::PercentOfCpus(p)),
            _ => Err(bad()),
        };
    }
    if let Some(n) = s.strip_prefix('+') {
        return count(n).map(Jobs::CpusPlus);
    }
    if let Some(n) = s.strip_prefix('-') {
        return count(n).map(Jobs::CpusMinus);
    }
    match count(s)? {
        0 => Ok(Jobs::AsManyAsPossible),
        n => Ok(Jobs::Count(n)),
    }
}

/// `500ms`, `2s`, `1.5` (seconds), `1m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (examples: 500ms, 2s, 1.5, 1m)");
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("'{s}': the timeout must be positive"));
    }
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "x", "2x", "0", "-1", "nan", "inf", "1.5.2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn jobs_read_as_gnu_parallel_reads_them() {
        assert_eq!(parse_jobs("4"), Ok(Jobs::Count(4)));
        assert_eq!(parse_jobs("0"), Ok(Jobs::AsManyAsPossible));
        assert_eq!(parse_jobs("+2"), Ok(Jobs::CpusPlus(2)));
        assert_eq!(parse_jobs("-1"), Ok(Jobs::CpusMinus(1)));
        assert_eq!(parse_jobs("12.5%"), Ok(Jobs::PercentOfCpus(12.5)));
        for bad in ["", "x", "%", "0%", "-x", "+", "1e3%", "-2%", "inf%", "4.5"] {
            assert!(parse_jobs(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(Jobs::PercentOfCpus(50.0).resolve(3), 2);
        assert_eq!(Jobs::PercentOfCpus(1.0).resolve(3), 1);
        assert_eq!(Jobs::CpusMinus(5).resolve(3), 1);
        assert_eq!(Jobs::CpusPlus(2).resolve(3), 5);
        assert_eq!(Jobs::AsManyAsPossible.resolve(3), usize::MAX);
    }

    #[test]
    fn command_and_inputs_split_at_the_marker() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let b = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let words = |v: &[&str]| SourceArg::Words(b(v));
        let file = |name: &str| SourceArg::File(name.as_bytes().to_vec());
        assert_eq!(
            split_command(os(&["echo", "{}", ":::", "a", "b"])),
            Ok((b(&["echo", "{}"]), vec![words(&["a", "b"])]))
        );
        assert_eq!(split_command(os(&["echo", ":::"])), Ok((b(&["echo"]), vec![words(&[])])));
        assert_eq!(split_command(os(&["echo"])), Ok((b(&["echo"]), vec![])));
        assert!(split_command(os(&[":::", "a"])).is_err());
        assert_eq!(
            split_command(os(&["echo", ":::", "a", "::::", "f", "-", ":::", "b"])),
            Ok((b(&["echo"]), vec![words(&["a"]), file("f"), file("-"), words(&["b"])]))
        );
        assert!(split_command(os(&["echo", "::::"])).is_err());
    }
}
