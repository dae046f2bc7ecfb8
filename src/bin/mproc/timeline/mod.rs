//! `--timeline FILE`: records the command's processes and pool batches
//! (see [`mproc::timeline`]) and, when it ends, draws them: an SVG picture
//! for `FILE.svg` (or `-`, on stdout), Unicode block characters for
//! `FILE.txt`.

mod svg;
mod text;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use mproc::timeline::{Lane, Role, Timeline};

/// Where the picture goes, and which kind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// SVG on standard output, after the command's own output.
    Stdout,
    Svg(PathBuf),
    Text(PathBuf),
}

/// Parses `--timeline`'s FILE: `-`, or a name ending in `.svg` or `.txt`.
pub fn parse_destination(arg: &OsStr) -> Result<Destination, String> {
    if arg == "-" {
        return Ok(Destination::Stdout);
    }
    use std::os::unix::ffi::OsStrExt;
    let path = PathBuf::from(arg);
    match arg.as_bytes() {
        name if name.ends_with(b".svg") => Ok(Destination::Svg(path)),
        name if name.ends_with(b".txt") => Ok(Destination::Text(path)),
        _ => Err("FILE must end in .svg (a picture) or .txt (text), or be - (SVG on stdout)".into()),
    }
}

/// A recording in progress, and where it will be written.
pub struct Recording {
    destination: Destination,
    file: Target,
}

/// Where the picture goes.
enum Target {
    Stdout,
    /// A FILE that existed (a picture from before, a FIFO, a device), open.
    Existing(File),
    /// A FILE that did not exist: made at the end (see [`Recording::start`]).
    New(PathBuf),
}

/// What the pictures print above the lanes.
pub struct Title {
    /// The command line, as typed.
    pub command: String,
    /// The date and time the command started, UTC.
    pub date: String,
    pub cpus: usize,
}

impl Recording {
    /// Checks that FILE can be written, so that a bad path fails before the
    /// command runs, and starts recording. An existing FILE is opened now
    /// and truncated only when the picture is written: an interrupted
    /// command leaves the last one whole. A new FILE is created to check,
    /// removed at once, and made again at the end: an interrupted command
    /// (whose exit handler ends the process) leaves no empty file behind.
    /// `Err`: the one-line message.
    pub fn start(destination: Destination) -> Result<Recording, String> {
        let file = match &destination {
            Destination::Stdout => Target::Stdout,
            Destination::Svg(path) | Destination::Text(path) => {
                let cannot = |e: std::io::Error| format!("--timeline {}: cannot create: {e}", path.display());
                match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                    Ok(_) => {
                        std::fs::remove_file(path).map_err(cannot)?;
                        Target::New(path.clone())
                    }
                    // (A dangling symbolic link "exists" too: its target
                    // is made now, as before.)
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Target::Existing(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(path)
                            .map_err(cannot)?,
                    ),
                    Err(e) => return Err(cannot(e)),
                }
            }
        };
        mproc::timeline::start().map_err(|e| format!("--timeline: {e}"))?;
        Ok(Recording { destination, file })
    }

    /// Whether the picture goes to standard output (`--timeline -`).
    pub fn goes_to_stdout(&self) -> bool {
        matches!(self.file, Target::Stdout)
    }

    /// Ends the recording and writes the picture. `Err`: the one-line
    /// message, or [`Unwritten::StdoutClosed`] when standard output's
    /// reader has gone (`| head`).
    pub fn finish(self, title: &Title) -> Result<(), Unwritten> {
        let timeline = mproc::timeline::finish().ok_or("--timeline: nothing was recorded".to_string())?;
        let lanes = timeline.lanes();
        let (picture, name) = match &self.destination {
            Destination::Stdout => (svg::render(&timeline, &lanes, title), "-".to_string()),
            Destination::Svg(path) => (svg::render(&timeline, &lanes, title), path.display().to_string()),
            Destination::Text(path) => {
                (text::render(&timeline, &lanes, title, text_width()), path.display().to_string())
            }
        };
        let written = match self.file {
            // Truncated now, not at the start; only a regular file can be
            // (a FIFO or a device is written as it is).
            Target::Existing(mut file) => file
                .metadata()
                .and_then(|m| if m.is_file() { file.set_len(0) } else { Ok(()) })
                .and_then(|()| file.write_all(picture.as_bytes())),
            Target::New(path) => File::create(path).and_then(|mut file| file.write_all(picture.as_bytes())),
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(picture.as_bytes()).and_then(|()| out.flush())
            }
        };
        written.map_err(|e| match (&self.destination, e.kind()) {
            (Destination::Stdout, std::io::ErrorKind::BrokenPipe) => Unwritten::StdoutClosed,
            _ => Unwritten::Failed(format!("--timeline {name}: cannot write: {e}")),
        })
    }
}

/// Why a picture was not written.
#[derive(Debug)]
pub enum Unwritten {
    /// Standard output's reader has gone: not a failure to report.
    StdoutClosed,
    /// The one-line message.
    Failed(String),
}

impl From<String> for Unwritten {
    fn from(message: String) -> Unwritten {
        Unwritten::Failed(message)
    }
}

/// The width of the text picture: the terminal's (standard output's, else
/// standard error's), 80 columns when neither is a terminal.
fn text_width() -> usize {
    mproc::terminal_columns(1).or_else(|| mproc::terminal_columns(2)).unwrap_or(80)
}

impl Title {
    /// The title of this run: `args` as a shell would read them back, now,
    /// and the machine's CPU count.
    pub fn new(args: &[std::ffi::OsString]) -> Title {
        use std::os::unix::ffi::OsStrExt;
        let words: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut command = String::from_utf8_lossy(&mproc::runner::shell_line(&words)).into_owned();
        if let Some(first) = args.first() {
            // The program as its name, not the path it was started by.
            let shown = std::path::Path::new(first).file_name().unwrap_or(first.as_os_str());
            let quoted_first = String::from_utf8_lossy(&mproc::runner::shell_line(&words[..1])).into_owned();
            command = format!("{}{}", shown.to_string_lossy(), &command[quoted_first.len()..]);
        }
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Title {
            command,
            date: utc_date(secs),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// `mproc cube  ·  2026-11-30 07:12:05 UTC  ·  2 CPUs`
    pub fn line(&self) -> String {
        format!("{}  ·  {}", self.command, self.machine())
    }

    /// `2026-11-30 07:12:05 UTC  ·  2 CPUs`
    pub fn machine(&self) -> String {
        let cpus = if self.cpus == 1 { "1 CPU".to_string() } else { format!("{} CPUs", self.cpus) };
        format!("{}  ·  {cpus}", self.date)
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the epoch (Howard Hinnant's
/// days-to-civil algorithm, so no date library is needed).
fn utc_date(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
}

/// A lane's name: `4242 worker`, or `4243 job echo hi` for a job.
fn lane_name(lane: &Lane) -> String {
    if lane.label.is_empty() {
        format!("{} {}", lane.pid, lane.role.name())
    } else {
        format!("{} {} {}", lane.pid, lane.role.name(), lane.label)
    }
}

/// How a lane's process ended, in a few characters: `exit 0`, `SIGKILL`,
/// `SIGSEGV core`; empty if it was not reaped while recording.
fn end_label(lane: &Lane) -> String {
    match lane.status {
        Some(mproc::ExitStatus::Exited(code)) => format!("exit {code}"),
        Some(mproc::ExitStatus::Signaled { signal, core_dumped }) => {
            let name = mproc::status::signal_abbrev(signal);
            if core_dumped {
                format!("{name} core")
            } else {
                name.to_string()
            }
        }
        None => String::new(),
    }
}

/// The note under the title: how many processes, over how long, and what a
/// bar is.
fn summary(timeline: &Timeline, lanes: &[Lane]) -> String {
    let mut line =
        format!("{} processes over {} ms", lanes.len(), format_ms(timeline.duration as f64 / 1e6, 3));
    if lanes.iter().any(|l| l.role == Role::Worker && !l.bars.is_empty()) {
        line.push_str("; bars on worker lanes are pool batches, from their turn to their last result");
    }
    if lanes.iter().any(|l| l.role == Role::Job) {
        line.push_str("; a job's bar is coloured by how it ended");
    }
    if timeline.dropped > 0 {
        line.push_str(&format!(
            "; {} events not recorded (buffer full; batches stop at three quarters of it)",
            timeline.dropped
        ));
    }
    line
}

/// `ms` with at most `decimals` decimals, trailing zeros dropped.
fn format_ms(ms: f64, decimals: usize) -> String {
    let text = format!("{ms:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Axis ticks for `duration_ns`: the smallest step of 1, 2 or 5 times a
/// power of ten that makes at most `most` ticks. Returns the step in ns,
/// the unit to label ticks in (`ms`, or `s` from 10 s on), its size in ns
/// and the decimals the step needs in that unit.
fn ticks(duration_ns: u64, most: u64) -> (u64, &'static str, f64, usize) {
    let duration = duration_ns.max(1_000);
    let rough = duration.div_ceil(most.max(1));
    let mut power = 1u64;
    while power.saturating_mul(10) <= rough {
        power = power.saturating_mul(10);
    }
    let step = [1, 2, 5, 10].iter().map(|m| power.saturating_mul(*m)).find(|&s| s >= rough).unwrap_or(rough);
    let (unit, size) = if duration >= 10_000_000_000 { ("s", 1e9) } else { ("ms", 1e6) };
    let decimals = (0..9).find(|&d| (step as f64 / size * 10f64.powi(d)).fract().abs() < 1e-9).unwrap_or(9);
    (step, unit, size, decimals as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn destinations_follow_the_extension() {
        assert_eq!(parse_destination(OsStr::new("-")), Ok(Destination::Stdout));
        assert_eq!(parse_destination(OsStr::new("a/t.svg")), Ok(Destination::Svg("a/t.svg".into())));
        assert_eq!(parse_destination(OsStr::new("t.txt")), Ok(Destination::Text("t.txt".into())));
        assert_eq!(parse_destination(OsStr::new(".svg")), Ok(Destination::Svg(".svg".into())));
        for bad in ["t.png", "t", "svg", "t.SVG", "t.svg/", ""] {
            assert!(parse_destination(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ticks_are_one_two_or_five_times_a_power_of_ten() {
        for (duration_ns, step, unit, decimals) in [
            (1_000_000, 200_000, "ms", 1),
            (12_345_678, 2_000_000, "ms", 0),
            (3_000_000_000, 500_000_000, "ms", 0),
            (45_000_000_000, 10_000_000_000, "s", 0),
            (250_000, 50_000, "ms", 2),
            (0, 200, "ms", 4),
        ] {
            let (got_step, got_unit, _, got_decimals) = ticks(duration_ns, 8);
            assert_eq!((got_step, got_unit, got_decimals), (step, unit, decimals), "{duration_ns} ns");
        }
    }

    #[test]
    fn milliseconds_print_without_trailing_zeros() {
        assert_eq!(format_ms(12.5, 3), "12.5");
        assert_eq!(format_ms(3.0, 2), "3");
        assert_eq!(format_ms(0.125, 1), "0.1");
    }
}
