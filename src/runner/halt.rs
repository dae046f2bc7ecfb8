//! `--halt`: when to stop a run early, in GNU parallel's grammar, and the
//! exit status GNU parallel gives for it.
//!
//! `WHEN,WHY=THRESHOLD`: `now` (kill the running jobs) or `soon` (start no
//! new job, let the running ones finish), after `fail`, `success` or `done`
//! jobs reach a count (`fail=3`) or a share of all the jobs (`fail=10%`);
//! `never`; and GNU's old numbers (`1` is `soon,fail=1`, `2` `now,fail=1`,
//! `-1` `soon,success=1`, `-2` `now,success=1`, `0` never, `N%`
//! `soon,fail=N%`).

use std::fmt;

/// What happens to the running jobs when the condition is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltWhen {
    /// Kill them (TERM, then KILL after the grace period).
    Now,
    /// Let them finish; start no new job.
    Soon,
}

/// Which completed jobs count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltOn {
    /// Jobs that failed.
    Fail,
    /// Jobs that succeeded.
    Success,
    /// Every completed job.
    Done,
}

/// How many of them it takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// That many jobs (at least 1).
    Count(u64),
    /// That share of all the jobs, in percent (more than 0, at most 100).
    Percent(f64),
}

/// A `--halt` condition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Halt {
    /// Kill the running jobs, or let them finish.
    pub when: HaltWhen,
    /// Which jobs count.
    pub on: HaltOn,
    /// How many.
    pub threshold: Threshold,
}

/// The value of `--halt` could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadHalt(String);

impl fmt::Display for BadHalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a halt condition (examples: now,fail=1, soon,fail=3, soon,fail=10%, now,success=1, never)", self.0)
    }
}

impl Halt {
    /// `--halt-on-error`: `soon,fail=1`.
    pub const ON_ERROR: Halt =
        Halt { when: HaltWhen::Soon, on: HaltOn::Fail, threshold: Threshold::Count(1) };

    /// Parses GNU parallel's `--halt` value; `Ok(None)` for `never` (and
    /// `0`).
    pub fn parse(text: &str) -> Result<Option<Halt>, BadHalt> {
        let bad = || BadHalt(text.to_string());
        let legacy = |when, on| Ok(Some(Halt { when, on, threshold: Threshold::Count(1) }));
        match text {
            "never" | "0" => return Ok(None),
            "1" => return legacy(HaltWhen::Soon, HaltOn::Fail),
            "2" => return legacy(HaltWhen::Now, HaltOn::Fail),
            "-1" => return legacy(HaltWhen::Soon, HaltOn::Success),
            "-2" => return legacy(HaltWhen::Now, HaltOn::Success),
            _ => {}
        }
        if text.ends_with('%') && !text.contains(',') {
            let threshold = parse_threshold(text).ok_or_else(bad)?;
            return Ok(Some(Halt { when: HaltWhen::Soon, on: HaltOn::Fail, threshold }));
        }
        let (when, why) = text.split_once(',').ok_or_else(bad)?;
        let when = match when {
            "now" => HaltWhen::Now,
            "soon" => HaltWhen::Soon,
            _ => return Err(bad()),
        };
        let (on, threshold) = why.split_once('=').ok_or_else(bad)?;
        let on = match on {
            "fail" => HaltOn::Fail,
            "success" => HaltOn::Success,
            "done" => HaltOn::Done,
            _ => return Err(bad()),
        };
        let threshold = parse_threshold(threshold).ok_or_else(bad)?;
        Ok(Some(Halt { when, on, threshold }))
    }

    /// Whether the jobs' outcomes meet the condition. `total` is the
    /// number of jobs in the run, needed for a percentage (and known then:
    /// the inputs are read whole first).
    pub(crate) fn is_met(&self, tally: &Tally, total: Option<u64>) -> bool {
        let count = match self.on {
            HaltOn::Fail => tally.failed,
            HaltOn::Success => tally.done - tally.failed,
            HaltOn::Done => tally.done,
        };
        match self.threshold {
            Threshold::Count(n) => count >= n,
            Threshold::Percent(p) => match total {
                Some(total) => count as f64 >= total as f64 * p / 100.0,
                None => false,
            },
        }
    }

    /// The exit status GNU parallel gives when the condition is met:
    /// `success` 0; `fail=1` and `done=1` (or a share that comes to exactly
    /// one job) the status of the job that met it (128 + the signal for a
    /// job killed by one); a count, the failed jobs (at most 101); a
    /// percentage, the share of the jobs that failed, rounded up.
    pub(crate) fn exit_status(&self, tally: &Tally, total: Option<u64>, last_status: i32) -> i32 {
        let total = total.unwrap_or(tally.done);
        match (self.on, self.threshold) {
            (HaltOn::Success, _) => 0,
            (_, Threshold::Count(1)) => last_status,
            (_, Threshold::Count(_)) => tally.failed.min(101) as i32,
            // GNU parallel turns the share into a count first, and a count
            // of exactly 1 gives the job's status, as fail=1 does.
            (_, Threshold::Percent(p)) if total as f64 * p / 100.0 == 1.0 => last_status,
            (_, Threshold::Percent(_)) => percent_failed(tally, total),
        }
    }

    /// GNU parallel's exit status for a run with this `--halt` that was
    /// never met: the failed jobs (at most 101), or with a percentage their
    /// share of the jobs started, rounded up.
    pub(crate) fn unmet_exit_status(&self, tally: &Tally, started: u64) -> i32 {
        match self.threshold {
            Threshold::Percent(_) => percent_failed(tally, started),
            Threshold::Count(_) => tally.failed.min(101) as i32,
        }
    }
}

fn percent_failed(tally: &Tally, total: u64) -> i32 {
    (tally.failed as f64 * 100.0 / total.max(1) as f64).ceil() as i32
}

fn parse_threshold(text: &str) -> Option<Threshold> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match text.strip_suffix('%') {
        Some(p) if digits(p) => match p.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Some(Threshold::Percent(p)),
            _ => None,
        },
        Some(_) => None,
        None if text.bytes().all(|b| b.is_ascii_digit()) => match text.parse::<u64>() {
            Ok(n) if n >= 1 => Some(Threshold::Count(n)),
            _ => None,
        },
        None => None,
    }
}

/// Completed jobs so far (the last run of each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub done: u64,
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halt(when: HaltWhen, on: HaltOn, threshold: Threshold) -> Option<Halt> {
        Some(Halt { when, on, threshold })
    }

    #[test]
    fn gnu_parallels_forms_parse() {
        use HaltOn::*;
        use HaltWhen::*;
        assert_eq!(Halt::parse("now,fail=1"), Ok(halt(Now, Fail, Threshold::Count(1))));
        assert_eq!(Halt::parse("soon,fail=3"), Ok(halt(Soon, Fail, Threshold::Count(3))));
        assert_eq!(Halt::parse("soon,fail=10%"), Ok(halt(Soon, Fail, Threshold::Percent(10.0))));
        assert_eq!(Halt::parse("now,success=1"), Ok(halt(Now, Success, Threshold::Count(1))));
        assert_eq!(Halt::parse("now,done=2.5%"), Ok(halt(Now, Done, Threshold::Percent(2.5))));
        assert_eq!(Halt::parse("never"), Ok(None));
        assert_eq!(Halt::parse("0"), Ok(None));
        assert_eq!(Halt::parse("2"), Ok(halt(Now, Fail, Threshold::Count(1))));
        assert_eq!(Halt::parse("-1"), Ok(halt(Soon, Success, Threshold::Count(1))));
        assert_eq!(Halt::parse("20%"), Ok(halt(Soon, Fail, Threshold::Percent(20.0))));
        for bad in
            ["", "now", "now,fail", "now,fail=0", "later,fail=1", "now,oops=1", "now,fail=101%", "now,fail=x"]
        {
            assert!(Halt::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn conditions_and_exit_statuses_follow_gnu_parallel() {
        let fail3 = Halt::parse("soon,fail=3").unwrap().unwrap();
        let two_failed = Tally { done: 5, failed: 2 };
        assert!(!fail3.is_met(&two_failed, None));
        let three_failed = Tally { done: 6, failed: 3 };
        assert!(fail3.is_met(&three_failed, None));
        assert_eq!(fail3.exit_status(&three_failed, None, 7), 3);
        let fail1 = Halt::ON_ERROR;
        assert_eq!(fail1.exit_status(&Tally { done: 1, failed: 1 }, None, 7), 7);
        let half = Halt::parse("soon,fail=50%").unwrap().unwrap();
        assert!(!half.is_met(&three_failed, None), "no total: cannot be met");
        assert!(half.is_met(&three_failed, Some(6)));
        assert_eq!(half.exit_status(&three_failed, Some(6), 1), 50);
        assert_eq!(half.unmet_exit_status(&Tally { done: 6, failed: 1 }, 6), 17);
        let fifth = Halt::parse("soon,fail=20%").unwrap().unwrap();
        assert_eq!(fifth.exit_status(&Tally { done: 2, failed: 1 }, Some(5), 7), 7, "20% of 5 jobs is 1 job");
        let success = Halt::parse("now,success=1").unwrap().unwrap();
        assert!(success.is_met(&Tally { done: 3, failed: 2 }, None));
        assert_eq!(success.exit_status(&Tally { done: 3, failed: 2 }, None, 0), 0);
    }
}
