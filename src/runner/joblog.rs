//! The job log, in GNU parallel's format, so that either tool can read the
//! other's: a header, then one line per completed job with nine
//! tab-separated columns.
//!
//! ```text
//! Seq  Host  Starttime       JobRuntime  Send  Receive  Exitval  Signal  Command
//! 1    :     1700000000.123       2.045  0     0        3        0       echo 'a b'
//! ```

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
/// since the epoch, `%.3f`), `JobRuntime` (seconds, `%10.3f`, truncated to
/// the millisecond), `Send` (0: nothing is sent to the job's stdin),
/// `Receive` (the bytes the job wrote on stdout, as GNU parallel counts),
/// `Exitval` and `Signal` ([`exit_columns`]), `Command` (shell-quoted, so
/// always one line), ended by a newline.
pub fn line(report: &JobReport<'_>) -> Vec<u8> {
    let start = report.started.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let runtime_ms = report.runtime.as_millis();
    let runtime = format!("{}.{:03}", runtime_ms / 1000, runtime_ms % 1000);
    let (exitval, signal) = exit_columns(report.outcome);
    let mut line = format!(
        "{}\t{LOCAL_HOST}\t{}.{:03}\t{runtime:>10}\t0\t{}\t{exitval}\t{signal}\t",
        report.seq,
        start.as_secs(),
        start.subsec_millis(),
        report.stdout_bytes,
    )
    .into_bytes();
    line.extend_from_slice(&shell_line(report.command));
    line.push(b'\n');
    line
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
        assert_eq!(HEADER.split('\t').count(), 9);
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
