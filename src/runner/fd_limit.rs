//! How many jobs the open-files limit allows.
//!
//! Each running job holds two descriptors in the runner (the read ends of
//! its stdout and stderr pipes), and two more for a moment while it is
//! started. When `-j` asks for more than the soft limit allows, the soft
//! limit is raised to the hard one (as most runners do; the jobs get the
//! original limit back), and if that is still not enough, fewer jobs run at
//! once — all of them still run — with one warning.

use crate::error::Result;
use crate::sys::{self, FileLimit};

/// Descriptors kept aside besides those open now and the jobs' pipes: the
/// spill file, a starting job's two write ends, and a margin for the
/// caller (a job log, an input file opened later).
const SPARE_FDS: u64 = 8;

/// Descriptors each running job holds.
const FDS_PER_JOB: u64 = 2;

/// What fits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JobFit {
    /// Jobs to run at once: at most the number asked for, at least 1.
    pub jobs: usize,
    /// The limit to give back to jobs, when the soft limit was raised.
    pub job_limit: Option<FileLimit>,
    /// One line for stderr when `jobs` had to be lowered.
    pub warning: Option<String>,
}

/// Fits `requested` jobs under this process's open-files limit, raising
/// the soft limit when that helps. `usize::MAX` asks for as many as fit.
pub(crate) fn fit_jobs(requested: usize) -> Result<JobFit> {
    let limit = FileLimit::current()?;
    let open_now = sys::open_fd_count() as u64;
    let needed = (open_now + SPARE_FDS).saturating_add(FDS_PER_JOB.saturating_mul(requested as u64));
    let mut job_limit = None;
    let mut soft = limit.soft;
    if needed > soft && limit.hard > soft {
        // No limit at all (RLIM_INFINITY, all ones) cannot be a soft limit on every
        // system: ask for what is needed then.
        let raised = if limit.hard == u64::MAX { needed } else { limit.hard };
        // Should raising fail, the old limit stands and -j is fitted to it.
        if (FileLimit { soft: raised, hard: limit.hard }).apply().is_ok() {
            soft = raised;
            job_limit = Some(limit);
        }
    }
    Ok(fit(requested, open_now, soft, job_limit))
}

fn fit(requested: usize, open_now: u64, soft: u64, job_limit: Option<FileLimit>) -> JobFit {
    let room = soft.saturating_sub(open_now + SPARE_FDS) / FDS_PER_JOB;
    let jobs = (requested as u64).min(room).max(1) as usize;
    // `usize::MAX` asks for as many as fit: no warning for getting them.
    let warning = (jobs < requested && requested != usize::MAX).then(|| {
        format!("mproc: run: warning: -j {requested} lowered to {jobs} (open files limit {soft})\n")
    });
    JobFit { jobs, job_limit, warning }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_lowered_to_what_the_limit_holds() {
        let lowered = fit(100, 10, 128, None);
        assert_eq!(lowered.jobs, (128 - 10 - 8) / 2);
        assert_eq!(
            lowered.warning.as_deref(),
            Some("mproc: run: warning: -j 100 lowered to 55 (open files limit 128)\n")
        );
        assert_eq!(fit(10, 10, 128, None), JobFit { jobs: 10, job_limit: None, warning: None });
        assert_eq!(fit(usize::MAX, 10, 128, None), JobFit { jobs: 55, job_limit: None, warning: None });
        // Never below one job, even with no room at all.
        assert_eq!(fit(4, 100, 64, None).jobs, 1);
    }
}
