//! From events to lanes: one per process, with its batches and markers,
//! ready to draw.

use std::collections::HashMap;

use super::{Event, Outcome, Role, Timeline};
use crate::status::ExitStatus;

/// Two kills of one process with one signal this close together are one
/// marker (`kill_group` signals the group, then the leader).
const SAME_KILL_NS: u64 = 1_000_000;

/// One process's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// The process's id.
    pub pid: i32,
    /// What it was to the recording process.
    pub role: Role,
    /// A job's command line; empty otherwise.
    pub label: String,
    /// The process that forked it (`None` for the recording process).
    pub parent: Option<i32>,
    /// When it was forked (0 for the recording process), in nanoseconds.
    pub start: u64,
    /// When it was reaped; `None`: not while the timeline recorded.
    pub end: Option<u64>,
    /// How it ended, when it was reaped.
    pub status: Option<ExitStatus>,
    /// Signals the recording process sent it, in order.
    pub kills: Vec<Kill>,
    /// When it was found past its time limit.
    pub timeout: Option<u64>,
    /// Its pool batches, in the order they ended (a batch cut short by
    /// the worker's death is one task long); for a job that ended,
    /// one bar: the job, [`Outcome::Ok`] for exit 0, [`Outcome::Timeout`]
    /// when it was killed for its time, [`Outcome::Failed`] otherwise.
    pub bars: Vec<Bar>,
}

/// A signal sent to a lane's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// When, in nanoseconds.
    pub at: u64,
    /// Which signal.
    pub signal: i32,
}

/// A batch of pool tasks on its worker's lane, or a job on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// When the parent handed the batch to the worker, in nanoseconds.
    pub start: u64,
    /// When the parent had its last result (or the worker's end).
    pub end: u64,
    /// How many tasks the batch carries.
    pub tasks: u32,
    /// How it ended.
    pub outcome: Outcome,
}

impl Lane {
    fn new(pid: i32, role: Role, parent: Option<i32>, start: u64) -> Lane {
        Lane {
            pid,
            role,
            label: String::new(),
            parent,
            start,
            end: None,
            status: None,
            kills: Vec::new(),
            timeout: None,
            bars: Vec::new(),
        }
    }
}

impl Timeline {
    /// One lane per process that existed while recording, the recording
    /// process first, the others in the order they were forked. A pool
    /// batch is drawn on the lane of the worker that ran it; no bar
    /// reaches past its lane's end.
    pub fn lanes(&self) -> Vec<Lane> {
        let mut events: Vec<&Event> = self.events.iter().collect();
        // Stable: events of one instant keep the order they were recorded in.
        events.sort_by_key(|e| e.at());
        let mut lanes = vec![Lane::new(self.owner, Role::Parent, None, 0)];
        // The latest lane of each pid (a pid may be reused for a new process).
        let mut current: HashMap<i32, usize> = HashMap::from([(self.owner, 0)]);
        // Each pool slot's worker now, and the worst failure of the batch it
        // runs, keyed by (zygote, slot).
        let mut slots: HashMap<(i32, u32), (usize, Outcome)> = HashMap::new();
        for event in events {
            match *event {
                Event::Forked { at, parent, child } => {
                    current.insert(child, lanes.len());
                    lanes.push(Lane::new(child, Role::Child, Some(parent), at));
                }
                Event::Role { at, pid, role, ref label } => {
                    let i = *current.entry(pid).or_insert_with(|| {
                        lanes.push(Lane::new(pid, role, None, at));
                        lanes.len() - 1
                    });
                    lanes[i].role = role;
                    lanes[i].label.clone_from(label);
                }
                Event::Ended { at, pid, status } => {
                    if let Some(&i) = current.get(&pid) {
                        lanes[i].end = Some(at);
                        lanes[i].status = Some(status);
                    }
                }
                Event::Killed { at, pid, signal } => {
                    let Some(&i) = current.get(&pid) else { continue };
                    let kills = &mut lanes[i].kills;
                    let repeat =
                        kills.last().is_some_and(|k| k.signal == signal && at - k.at.min(at) < SAME_KILL_NS);
                    if !repeat {
                        kills.push(Kill { at, signal });
                    }
                }
                Event::TimedOut { at, pid } => {
                    if let Some(&i) = current.get(&pid) {
                        lanes[i].timeout.get_or_insert(at);
                    }
                }
                Event::Slot { zygote, slot, pid, .. } => {
                    if let Some(&i) = current.get(&pid) {
                        slots.insert((zygote, slot), (i, Outcome::Ok));
                    }
                }
                Event::TaskFailed { zygote, slot, outcome, .. } => {
                    if let Some((_, worst)) = slots.get_mut(&(zygote, slot)) {
                        *worst = (*worst).max(outcome);
                    }
                }
                Event::BatchRan { at, start, zygote, slot, tasks } => {
                    if let Some((i, worst)) = slots.get_mut(&(zygote, slot)) {
                        let outcome = std::mem::replace(worst, Outcome::Ok);
                        lanes[*i].bars.push(Bar { start, end: at, tasks, outcome });
                    }
                }
                Event::BatchCut { at, start, pid, outcome } => {
                    if let Some(&i) = current.get(&pid) {
                        lanes[i].bars.push(Bar { start, end: at, tasks: 1, outcome });
                    }
                }
            }
        }
        for lane in &mut lanes {
            // The parent reads results (and learns of deaths) after the
            // fact: nothing of a worker is drawn past its end.
            if let Some(end) = lane.end {
                for bar in &mut lane.bars {
                    bar.end = bar.end.min(end);
                    bar.start = bar.start.min(bar.end);
                }
            }
            if lane.role == Role::Job {
                job_bar(lane);
            }
        }
        // Stable: the parent (start 0) stays first; pids forked at one
        // instant keep their order.
        lanes.sort_by_key(|l| l.start);
        lanes
    }
}

/// A job is one bar, coloured by how it ended.
fn job_bar(lane: &mut Lane) {
    let (Some(end), Some(status)) = (lane.end, lane.status) else { return };
    let outcome = match status {
        _ if lane.timeout.is_some() => Outcome::Timeout,
        ExitStatus::Exited(0) => Outcome::Ok,
        _ => Outcome::Failed,
    };
    lane.bars.push(Bar { start: lane.start, end, tasks: 1, outcome });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(events: Vec<Event>) -> Timeline {
        Timeline { owner: 100, duration: 1_000, events, dropped: 0 }
    }

    #[test]
    fn each_fork_makes_a_lane_that_ends_where_it_was_reaped() {
        let lanes = timeline(vec![
            Event::Forked { at: 10, parent: 100, child: 101 },
            Event::Forked { at: 20, parent: 100, child: 102 },
            Event::Role { at: 21, pid: 102, role: Role::Zygote, label: String::new() },
            Event::Ended { at: 50, pid: 101, status: ExitStatus::Exited(3) },
        ])
        .lanes();
        let summary: Vec<_> =
            lanes.iter().map(|l| (l.pid, l.role, l.parent, l.start, l.end, l.status)).collect();
        assert_eq!(
            summary,
            vec![
                (100, Role::Parent, None, 0, None, None),
                (101, Role::Child, Some(100), 10, Some(50), Some(ExitStatus::Exited(3))),
                (102, Role::Zygote, Some(100), 20, None, None),
            ]
        );
    }

    #[test]
    fn a_reused_pid_gets_a_lane_of_its_own() {
        let lanes = timeline(vec![
            Event::Forked { at: 10, parent: 100, child: 101 },
            Event::Ended { at: 20, pid: 101, status: ExitStatus::Exited(0) },
            Event::Forked { at: 30, parent: 100, child: 101 },
            Event::Ended { at: 40, pid: 101, status: ExitStatus::Exited(1) },
        ])
        .lanes();
        let ends: Vec<_> = lanes.iter().skip(1).map(|l| (l.start, l.end, l.status)).collect();
        assert_eq!(
            ends,
            vec![(10, Some(20), Some(ExitStatus::Exited(0))), (30, Some(40), Some(ExitStatus::Exited(1)))]
        );
    }

    #[test]
    fn batches_go_to_the_worker_of_their_slot_with_their_worst_outcome() {
        let lanes = timeline(vec![
            Event::Forked { at: 1, parent: 100, child: 50 },
            Event::Forked { at: 2, parent: 50, child: 7 },
            Event::Slot { at: 2, zygote: 50, slot: 0, pid: 7 },
            Event::TaskFailed { at: 12, zygote: 50, slot: 0, outcome: Outcome::Panicked },
            Event::TaskFailed { at: 13, zygote: 50, slot: 0, outcome: Outcome::Failed },
            Event::BatchRan { at: 15, start: 10, zygote: 50, slot: 0, tasks: 4 },
            // The next batch starts clean.
            Event::BatchRan { at: 18, start: 15, zygote: 50, slot: 0, tasks: 1 },
            // Slot 0 of another pool is another worker's.
            Event::BatchRan { at: 19, start: 15, zygote: 51, slot: 0, tasks: 9 },
            Event::TimedOut { at: 30, pid: 7 },
            Event::Ended { at: 30, pid: 7, status: ExitStatus::Signaled { signal: 15, core_dumped: false } },
            // Seen by the parent after the death: drawn up to it.
            Event::BatchCut { at: 31, start: 18, pid: 7, outcome: Outcome::Timeout },
            // A replacement in the same slot.
            Event::Forked { at: 32, parent: 50, child: 8 },
            Event::Slot { at: 32, zygote: 50, slot: 0, pid: 8 },
            Event::BatchRan { at: 40, start: 33, zygote: 50, slot: 0, tasks: 2 },
        ])
        .lanes();
        assert_eq!(
            lanes[2].bars,
            vec![
                Bar { start: 10, end: 15, tasks: 4, outcome: Outcome::Panicked },
                Bar { start: 15, end: 18, tasks: 1, outcome: Outcome::Ok },
                Bar { start: 18, end: 30, tasks: 1, outcome: Outcome::Timeout },
            ]
        );
        assert_eq!(lanes[3].bars, vec![Bar { start: 33, end: 40, tasks: 2, outcome: Outcome::Ok }]);
    }

    #[test]
    fn a_job_is_one_bar_coloured_by_its_end() {
        let sigterm = ExitStatus::Signaled { signal: 15, core_dumped: false };
        let mut events = Vec::new();
        for (pid, status, timed_out) in
            [(1, ExitStatus::Exited(0), false), (2, ExitStatus::Exited(3), false), (3, sigterm, true)]
        {
            events.push(Event::Forked { at: 10, parent: 100, child: pid });
            events.push(Event::Role { at: 11, pid, role: Role::Job, label: "sleep 1".into() });
            if timed_out {
                events.push(Event::TimedOut { at: 40, pid });
            }
            events.push(Event::Ended { at: 50, pid, status });
        }
        let outcomes: Vec<_> = timeline(events).lanes().iter().flat_map(|l| l.bars.clone()).collect();
        let bar = |outcome| Bar { start: 10, end: 50, tasks: 1, outcome };
        assert_eq!(outcomes, vec![bar(Outcome::Ok), bar(Outcome::Failed), bar(Outcome::Timeout)]);
    }

    #[test]
    fn a_group_kill_and_its_leader_kill_are_one_marker() {
        let lanes = timeline(vec![
            Event::Forked { at: 1, parent: 100, child: 7 },
            Event::Killed { at: 10, pid: 7, signal: 15 },
            Event::Killed { at: 11, pid: 7, signal: 15 },
            Event::Killed { at: 5_000_000, pid: 7, signal: 9 },
        ])
        .lanes();
        assert_eq!(lanes[1].kills, vec![Kill { at: 10, signal: 15 }, Kill { at: 5_000_000, signal: 9 }]);
    }
}
