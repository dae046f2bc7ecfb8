//! The job log, in GNU parallel's format, so that either tool can read the
//! other's: a header, then one line per completed job with nine
//! tab-separated columns.
//!
//! ```text
//! Seq  Host  Starttime       JobRuntime  Send  Receive  Exitval  Signal  Command
//! 1    :     1700000000.123       2.045  0     0        3        0       echo 'a b'
//! ```
//!
//! Read back ([`read_done`]), a log says which jobs need not run again:
//! `--resume` skips every job it lists, `--resume-failed` only those that
//! succeeded (exit 0, no signal), as GNU parallel reads it.

use std::time::SystemTime;

use super::{shell_line, JobReport, Outcome};
use crate::status::ExitStatus;

/// The header line.
pub const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n";

/// GNU parallel's name for the local host.
const LOCAL_HOST: &str = ":";

/// The `Exitval` and `Signal` columns, as GNU parallel fills them: the exit
/// code and 0; 0 and the signal that killed the job; -1 and the signal (or
/// 0) for a job killed for running past its timeout.
pub fn exit_columns(outcome: Outcome) -> (i32, i32) {
    let signal_of = |status: ExitStatus| match status {
        ExitStatus::Signaled { signal, .. } => signal,
        ExitStatus::Exited(_) => 0,
    };
    match outcome {
        Outcome::Completed(ExitStatus::Exited(code)) => (code, 0),
        Outcome::Completed(status) => (0, signal_of(status)),
        Outcome::TimedOut(status) => (-1, signal_of(status)),
    }
}

/// One job's line: `Seq`, `Host` (`:`, this host), `Starttime` (seconds
/// since the epoch, `%.3f`: rounded, as GNU parallel prints it),
/// `JobRuntime` (seconds, `%10.3f`, truncated to the millisecond), `Send`
/// (0: nothing is sent to the job's stdin), `Receive` (the bytes the job
/// wrote on stdout, as GNU parallel counts), `Exitval` and `Signal`
/// ([`exit_columns`]), `Command` (shell-quoted, so always one line), ended
/// by a newline.
pub fn line(report: &JobReport<'_>) -> Vec<u8> {
    let start = report.started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let runtime_ms = report.runtime.as_millis();
    let runtime = format!("{}.{:03}", runtime_ms / 1000, runtime_ms % 1000);
    let (exitval, signal) = exit_columns(report.outcome);
    let mut line = format!(
        "{}\t{LOCAL_HOST}\t{:.3}\t{runtime:>10}\t0\t{}\t{exitval}\t{signal}\t",
        report.seq,
        start.as_secs_f64(),
        report.stdout_bytes,
    )
    .into_bytes();
    line.extend_from_slice(&shell_line(report.command));
    line.push(b'\n');
    line
}

/// Job numbers, as a bit set: a million jobs cost 125 kB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqSet {
    bits: Vec<u64>,
}

impl SeqSet {
    /// Adds `seq`.
    pub fn insert(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << bit;
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.bits.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

/// Which logged jobs count as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Every job in the log (`--resume`).
    Logged,
    /// Only jobs that succeeded: `Exitval` and `Signal` both 0
    /// (`--resume-failed`).
    Succeeded,
}

/// The length of `log` up to the end of its last complete line: a last line
/// without its newline was cut off mid-write (a crash), and lists no job.
pub fn complete_len(log: &[u8]) -> usize {
    log.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// Reads a job log (GNU parallel's or ours) and returns the jobs done, as
/// `which` counts them. An empty log (or only a header) lists none, nor
/// does an incomplete last line ([`complete_len`]).
///
/// # Errors
/// A line that is not a job log line, as one message naming the line.
pub fn read_done(log: &[u8], which: Resume) -> Result<SeqSet, String> {
    let mut done = SeqSet::default();
    for (i, line) in log[..complete_len(log)].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() || (i == 0 && line.starts_with(b"Seq\t")) {
            continue;
        }
        let fields: Vec<&[u8]> = line.splitn(9, |&b| b == b'\t').collect();
        let number = |f: &[u8]| std::str::from_utf8(f).ok().and_then(|s| s.trim().parse::<f64>().ok());
        let numeric = fields.len() == 9 && [2, 3, 4, 5, 6, 7].iter().all(|&k| number(fields[k]).is_some());
        let seq = std::str::from_utf8(fields[0]).ok().and_then(|s| s.parse::<u64>().ok());
        let (Some(seq), true) = (seq, numeric) else {
            return Err(format!("line {} is not in GNU parallel's job log format", i + 1));
        };
        let succeeded = fields[6] == b"0" && fields[7] == b"0";
        if which == Resume::Logged || succeeded {
            done.insert(seq);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_line_has_gnu_parallels_nine_columns() {
        let command = [b"echo".to_vec(), b"a b".to_vec()];
        let report = JobReport {
            seq: 7,
            command: &command,
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            runtime: Duration::from_micros(2_045_999),
            stdout_bytes: 12,
            outcome: Outcome::Completed(ExitStatus::Exited(3)),
        };
        assert_eq!(line(&report), b"7\t:\t1700000000.123\t     2.045\t0\t12\t3\t0\techo 'a b'\n");
        // The start is rounded to the millisecond (GNU's `%.3f`), the
        // runtime truncated (GNU's too).
        let report = JobReport {
            started: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_999_600),
            ..report
        };
        assert!(line(&report).starts_with(b"7\t:\t1700000001.000\t     2.045\t"));
        assert_eq!(HEADER.split('\t').count(), 9);
    }

    #[test]
    fn a_log_read_back_lists_the_jobs_done() {
        let log = format!(
            "{HEADER}1\t:\t1.000\t     0.100\t0\t0\t0\t0\tok\n2\t:\t1.0\t0.1\t0\t0\t3\t0\tfails\n\
                           4\t:\t1.0\t0.1\t0\t7\t0\t9\tkilled\twith\ttabs\n70\t:\t1.0\t0.1\t0\t0\t0\t0\t\n"
        );
        let logged = read_done(log.as_bytes(), Resume::Logged).unwrap();
        assert_eq!((1..=80).filter(|&s| logged.contains(s)).collect::<Vec<_>>(), [1, 2, 4, 70]);
        let succeeded = read_done(log.as_bytes(), Resume::Succeeded).unwrap();
        assert_eq!((1..=80).filter(|&s| succeeded.contains(s)).collect::<Vec<_>>(), [1, 70]);
        assert!(read_done(b"", Resume::Logged).unwrap().is_empty());
        assert!(read_done(HEADER.as_bytes(), Resume::Logged).unwrap().is_empty());
    }

    #[test]
    fn a_line_in_another_format_is_an_error() {
        let old = b"Seq\tStarttime\tRuntime\tExitval\tCommand\n1\t1.0\t0.1\t0\techo\n";
        assert_eq!(
            read_done(old, Resume::Logged),
            Err("line 2 is not in GNU parallel's job log format".into())
        );
        let bad = b"x\t:\t1.0\t0.1\t0\t0\t0\t0\techo\n";
        assert_eq!(
            read_done(bad, Resume::Logged),
            Err("line 1 is not in GNU parallel's job log format".into())
        );
    }

    #[test]
    fn an_incomplete_last_line_lists_no_job_but_a_bad_line_before_it_is_an_error() {
        let cut = format!("{HEADER}1\t:\t1.0\t0.1\t0\t0\t0\t0\techo a\n2\t:\t1.0\t0.1\t0\t0\t0\t0\techo b");
        let logged = read_done(cut.as_bytes(), Resume::Logged).unwrap();
        assert_eq!((1..=3).filter(|&s| logged.contains(s)).collect::<Vec<_>>(), [1]);
        assert_eq!(complete_len(cut.as_bytes()), cut.rfind('\n').unwrap() + 1);
        let cut_in_the_middle = format!("{HEADER}2\t:\t1.0\n3\t:\t1.0\t0.1\t0\t0\t0\t0\techo c\n");
        assert_eq!(
            read_done(cut_in_the_middle.as_bytes(), Resume::Logged),
            Err("line 2 is not in GNU parallel's job log format".into())
        );
        assert!(read_done(b"Seq\tHo", Resume::Logged).unwrap().is_empty());
        assert_eq!(complete_len(b"Seq\tHo"), 0);
    }

    #[test]
    fn signals_and_timeouts_fill_exitval_and_signal_as_gnu_parallel_does() {
        let killed = ExitStatus::Signaled { signal: libc::SIGKILL, core_dumped: false };
        assert_eq!(exit_columns(Outcome::Completed(killed)), (0, 9));
        assert_eq!(exit_columns(Outcome::TimedOut(killed)), (-1, 9));
        assert_eq!(exit_columns(Outcome::TimedOut(ExitStatus::Exited(0))), (-1, 0));
        assert_eq!(exit_columns(Outcome::Completed(ExitStatus::Exited(127))), (127, 0));
    }
}
