//! `mproc bench run`: jobs per second of `mproc run` against `xargs -P N
//! -n 1` and, when installed, GNU `parallel -j N`, all measured in this run.
//!
//! Every tool runs as its own process, reads the same inputs from a file on
//! stdin, and writes to `/dev/null`, so each pays for its own start-up as a
//! user would. Rounds are interleaved (mproc, xargs, parallel, mproc, ...)
//! so drift on a shared machine hits every tool alike; the median round is
//! reported. Two workloads: `/bin/true` (pure fork/exec cost) and `echo`
//! (each job prints a line, so mproc's output grouping is exercised, while
//! xargs lets lines mix freely). `mproc run --bar` runs the `/bin/true`
//! workload once more with its stderr on a pseudo-terminal, so the status
//! line is really drawn (on a pipe or `/dev/null` it is not), and the
//! drawing's cost shows as the difference between the two mproc rows.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{median, Table};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs running at once [default: the number of CPUs]
    #[arg(short = 'j', long, value_name = "N")]
    jobs: Option<usize>,
    /// Jobs per measurement (GNU parallel, being slower, gets a fifth of them)
    #[arg(long, value_name = "N", default_value_t = 5000)]
    count: usize,
    /// Measurements per tool; the median is reported
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
    /// Print `name<TAB>value<TAB>unit` lines (for `make compare`) instead of the table
    #[arg(long)]
    tsv: bool,
}

/// One command line to measure.
struct Contender {
    label: &'static str,
    tsv_name: &'static str,
    argv: Vec<String>,
    jobs: usize,
    /// Give the command a pseudo-terminal as stderr (for `--bar`).
    on_terminal: bool,
    rates: Vec<f64>,
}

pub fn main(args: Args) -> u8 {
    let mut out = crate::Out::new();
    if args.count == 0 || args.rounds == 0 || args.jobs == Some(0) {
        crate::complain("bench run: --count, --rounds and --jobs must be at least 1");
        return crate::EXIT_USAGE;
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mproc = match std::env::current_exe() {
        Ok(path) => path.to_string_lossy().into_owned(),
        Err(err) => return failed(&format!("cannot find the mproc binary: {err}")),
    };
    let parallel = gnu_parallel_installed();
    // A container without /dev/pts has no pseudo-terminal to draw on.
    let terminal = Terminal::open().map(Terminal::close).is_ok();
    let n = jobs.to_string();
    let mut contenders = vec![
        Contender::new(
            "mproc run /bin/true",
            "run_jobs",
            &[&mproc, "run", "-j", &n, "/bin/true"],
            args.count,
        ),
        Contender::new(
            "xargs -P N -n 1 /bin/true",
            "run_jobs_xargs",
            &["xargs", "-P", &n, "-n", "1", "/bin/true"],
            args.count,
        ),
    ];
    if terminal {
        contenders.push(
            Contender::new(
                "mproc run --bar /bin/true (stderr a terminal)",
                "run_jobs_bar",
                &[&mproc, "run", "--bar", "-j", &n, "/bin/true"],
                args.count,
            )
            .on_terminal(),
        );
    }
    if parallel {
        let fifth = (args.count / 5).max(1);
        contenders.push(Contender::new(
            "parallel -j N /bin/true",
            "run_jobs_parallel",
            &["parallel", "--will-cite", "-j", &n, "/bin/true"],
            fifth,
        ));
    }
    contenders.push(Contender::new(
        "mproc run echo",
        "run_jobs_echo",
        &[&mproc, "run", "-j", &n, "echo"],
        args.count,
    ));
    contenders.push(Contender::new(
        "xargs -P N -n 1 echo",
        "run_jobs_echo_xargs",
        &["xargs", "-P", &n, "-n", "1", "echo"],
        args.count,
    ));

    let inputs = match InputFile::create(args.count) {
        Ok(f) => f,
        Err(err) => return failed(&format!("cannot write the input file: {err}")),
    };
    if !args.tsv {
        outln!(out, "mproc bench run: jobs/s, {} rounds (median), -j {jobs}", args.rounds);
    }
    for _ in 0..args.rounds {
        for c in &mut contenders {
            match c.measure(&inputs) {
                Ok(rate) => c.rates.push(rate),
                Err(msg) => return failed(&msg),
            }
        }
    }
    let rates: Vec<f64> = contenders.iter_mut().map(|c| median(&mut c.rates)).collect();

    if args.tsv {
        for (c, rate) in contenders.iter().zip(&rates) {
            outln!(out, "{}\t{rate:.0}\tjobs/s", c.tsv_name);
        }
        return out.finish("bench run");
    }
    let echo_row = contenders.iter().position(|c| c.tsv_name == "run_jobs_echo").unwrap_or(0);
    let mut table = Table::new(&["command", "jobs", "jobs/s", "mproc run ÷ this"]);
    for (i, (c, rate)) in contenders.iter().zip(&rates).enumerate() {
        // Compare like with like: each /bin/true row against mproc's
        // /bin/true row, each echo row against mproc's echo row.
        let base = if i >= echo_row { rates[echo_row] } else { rates[0] };
        table.row(&[
            c.label.to_string(),
            c.jobs.to_string(),
            format!("{rate:.0}"),
            format!("{:.2}×", base / rate),
        ]);
    }
    table.print(&mut out);
    if !terminal {
        outln!(out, "  (no pseudo-terminal could be opened: the --bar row is skipped)");
    }
    if !parallel {
        outln!(out, "  (GNU parallel is not installed: skipped)");
    }
    out.finish("bench run")
}

impl Contender {
    fn new(label: &'static str, tsv_name: &'static str, argv: &[&str], jobs: usize) -> Contender {
        Contender {
            label,
            tsv_name,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            jobs,
            on_terminal: false,
            rates: Vec::new(),
        }
    }

    fn on_terminal(mut self) -> Contender {
        self.on_terminal = true;
        self
    }

    /// Jobs/s of one run: `jobs` inputs on stdin, output discarded.
    fn measure(&self, inputs: &InputFile) -> Result<f64, String> {
        let stdin = inputs.first(self.jobs).map_err(|e| format!("reading the input file: {e}"))?;
        let terminal = match self.on_terminal {
            true => Some(Terminal::open().map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?),
            false => None,
        };
        let stderr = match &terminal {
            Some(t) => t.stderr().map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?,
            None => Stdio::null(),
        };
        let start = Instant::now();
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).stdin(stdin).stdout(Stdio::null()).stderr(stderr);
        let status = super::measured::status(cmd).map_err(|e| format!("{}: {e}", self.argv[0]))?;
        let secs = start.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("`{}` failed: {status}", self.argv.join(" ")));
        }
        if let Some(terminal) = terminal {
            // The row means something only if the line was drawn.
            let drawn = terminal.close();
            if !drawn.ends_with(b"100% ETA 0:00\r\n") {
                return Err(format!(
                    "`{}` drew no final status line on the terminal (got {} bytes)",
                    self.argv.join(" "),
                    drawn.len()
                ));
            }
        }
        Ok(self.jobs as f64 / secs)
    }
}

/// A pseudo-terminal whose output is drained by a thread (so a command
/// drawing on it never blocks) and kept for a check at the end.
struct Terminal {
    slave: std::os::fd::OwnedFd,
    drain: std::thread::JoinHandle<Vec<u8>>,
}

impl Terminal {
    fn open() -> std::io::Result<Terminal> {
        let pty = nix::pty::openpty(None, None)?;
        let mut master = File::from(pty.master);
        let drain = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // Ends with EIO once every slave descriptor is closed.
            let _ = std::io::Read::read_to_end(&mut master, &mut seen);
            seen
        });
        Ok(Terminal { slave: pty.slave, drain })
    }

    /// A copy of the slave side, for a child's stderr.
    fn stderr(&self) -> std::io::Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone()?))
    }

    /// Closes our side and returns all that was drawn (the terminal turns
    /// each `\n` into `\r\n`).
    fn close(self) -> Vec<u8> {
        drop(self.slave);
        self.drain.join().unwrap_or_default()
    }
}

/// The inputs `1`..`count`, one per line. Each run reads them from an
/// unlinked temporary file of its own, so that nothing is left in
/// `$TMPDIR` however the benchmark ends (Ctrl-C included).
struct InputFile {
    text: Vec<u8>,
    /// Byte offset just after line `i + 1`.
    line_ends: Vec<usize>,
}

impl InputFile {
    fn create(count: usize) -> std::io::Result<InputFile> {
        let mut text = Vec::new();
        let mut line_ends = Vec::with_capacity(count);
        for i in 1..=count {
            writeln!(text, "{i}")?;
            line_ends.push(text.len());
        }
        Ok(InputFile { text, line_ends })
    }

    /// The first `n` lines as a stdin, at offset 0 of a file of their own.
    fn first(&self, n: usize) -> std::io::Result<Stdio> {
        let len =
            n.checked_sub(1).and_then(|last| self.line_ends.get(last)).map_or(self.text.len(), |&end| end);
        let mut file = unlinked_temp_file()?;
        file.write_all(&self.text[..len])?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Stdio::from(file))
    }
}

/// A new file in the temporary directory, readable and writable by us
/// only, already unlinked. Made with `O_EXCL` under a name nobody else
/// chose, so a file or symbolic link planted there is never opened.
fn unlinked_temp_file() -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    loop {
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!(".mproc-bench-run-{}-{made}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            // Someone took the name: try the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && made < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// True when `parallel` is GNU parallel (moreutils ships a different one).
fn gnu_parallel_installed() -> bool {
    let mut cmd = Command::new("parallel");
    cmd.arg("--version");
    super::measured::output(cmd)
        .is_ok_and(|(_, printed)| String::from_utf8_lossy(&printed).contains("GNU parallel"))
}

fn failed(msg: &str) -> u8 {
    crate::complain(&format!("bench run: {msg}"));
    crate::EXIT_FAILURE
}
