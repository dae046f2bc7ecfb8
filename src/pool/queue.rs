//! The parent's queue of task batches not yet handed to a worker: fair
//! between calls, so that one thread's big `map` does not starve another
//! thread's `apply`.
//!
//! Batches of one submission (one `map`, one `apply_async`, one `imap`
//! chunk) keep their order; submissions take turns, one batch each, round
//! robin. Batches taken back from a dead worker go first: they were sent
//! before anything still queued.

use std::collections::VecDeque;
use std::time::Instant;

use super::engine::Batch;
use super::slab::{Burst, KEEP_WHEN_EMPTY};

#[derive(Debug, Default)]
pub(crate) struct TaskQueue {
    /// Taken back from a worker (or split off by `max_tasks_per_child`):
    /// sent before anything else.
    first: VecDeque<Batch>,
    /// One run of batches per submission with work queued, in turn order.
    turns: VecDeque<VecDeque<Batch>>,
    /// Tasks queued, for [`TaskQueue::tasks`].
    tasks: usize,
    /// When the queue last held a burst (see [`Burst`]).
    burst: Burst,
}

impl TaskQueue {
    /// Queues a new batch behind its submission's earlier ones.
    pub(crate) fn push_back(&mut self, batch: Batch) {
        self.tasks += batch.count as usize;
        // Batches of one call arrive together: its run is the last one. A
        // call whose encoding interleaved with another's gets a second run,
        // a second turn; only order within a submission matters.
        match self.turns.back_mut() {
            Some(run) if run.front().is_some_and(|b| b.sub == batch.sub) => run.push_back(batch),
            _ => {
                self.turns.push_back(VecDeque::from([batch]));
                self.burst.holds(self.turns.len());
            }
        }
    }

    /// Puts a batch back at the very front (it was sent once already).
    pub(crate) fn push_front(&mut self, batch: Batch) {
        self.tasks += batch.count as usize;
        self.first.push_front(batch);
        self.burst.holds(self.first.len());
    }

    /// The next batch to send: retried ones first, then the submission
    /// whose turn it is.
    pub(crate) fn pop_front(&mut self) -> Option<Batch> {
        let batch = match self.first.pop_front() {
            Some(b) => {
                self.burst.holds(self.first.len());
                b
            }
            None => {
                let mut run = self.turns.pop_front()?;
                let b = run.pop_front()?;
                if run.is_empty() {
                    self.burst.holds(self.turns.len());
                } else {
                    self.turns.push_back(run);
                }
                b
            }
        };
        self.tasks -= batch.count as usize;
        // A queue drained a while after a burst (a million `apply_async`,
        // a turn each) gives its memory back, as the submissions' table
        // does.
        if self.is_empty() && self.burst.may_shrink(self.turns.capacity().max(self.first.capacity())) {
            self.turns.shrink_to(KEEP_WHEN_EMPTY);
            self.first.shrink_to(KEEP_WHEN_EMPTY);
        }
        Some(batch)
    }

    /// Gives an empty queue's burst memory back if that is due (see
    /// [`Burst`]); if it is not due yet, when it will be (possibly passed
    /// a moment ago: the next look gives it back). For a queue left empty
    /// while nothing pops (an idle pool).
    pub(crate) fn shrink_when_due(&mut self) -> Option<Instant> {
        if !self.is_empty() {
            return None;
        }
        let size = self.turns.capacity().max(self.first.capacity());
        if self.burst.may_shrink(size) {
            self.turns.shrink_to(KEEP_WHEN_EMPTY);
            self.first.shrink_to(KEEP_WHEN_EMPTY);
            return None;
        }
        self.burst.shrink_due(size)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_empty() && self.turns.is_empty()
    }

    /// Tasks queued and not yet sent.
    pub(crate) fn tasks(&self) -> usize {
        self.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::message::Call;

    fn batch(sub: u64, first: u32) -> Batch {
        fn f(x: u8) -> u8 {
            x
        }
        Batch { sub, first, count: 1, call: Call::new(f), msg: Vec::new(), reruns: 0 }
    }

    fn order(q: &mut TaskQueue) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| q.pop_front()).map(|b| (b.sub, b.first)).collect()
    }

    #[test]
    fn submissions_take_turns_and_keep_their_own_order() {
        let mut q = TaskQueue::default();
        for i in 0..3 {
            q.push_back(batch(1, i));
        }
        q.push_back(batch(2, 0));
        q.push_back(batch(3, 0));
        q.push_back(batch(3, 1));
        assert_eq!(q.tasks(), 6);
        assert_eq!(order(&mut q), vec![(1, 0), (2, 0), (3, 0), (1, 1), (3, 1), (1, 2)]);
        assert!(q.is_empty());
        assert_eq!(q.tasks(), 0);
    }

    #[test]
    fn a_queue_drained_after_a_burst_gives_its_memory_back() {
        let mut q = TaskQueue::default();
        let n = 10 * KEEP_WHEN_EMPTY as u64;
        for sub in 0..n {
            q.push_back(batch(sub, 0));
            q.push_front(batch(sub, 1));
        }
        assert_eq!(order(&mut q).len(), 2 * n as usize);
        // Drained right after the burst: kept, for the next burst.
        assert!(q.turns.capacity() > KEEP_WHEN_EMPTY);
        // Drained again a while after it: given back.
        q.push_back(batch(0, 0));
        q.burst = Burst::default();
        assert_eq!(order(&mut q).len(), 1);
        assert!(q.turns.capacity() <= KEEP_WHEN_EMPTY && q.first.capacity() <= KEEP_WHEN_EMPTY);
    }

    #[test]
    fn an_idle_queue_after_a_burst_says_when_and_then_gives_its_memory_back() {
        let mut q = TaskQueue::default();
        let n = 4 * KEEP_WHEN_EMPTY as u64;
        for sub in 0..n {
            q.push_back(batch(sub, 0));
        }
        assert_eq!(q.shrink_when_due(), None, "a queue with work is not idle");
        assert_eq!(order(&mut q).len(), n as usize);
        // Drained right after the burst: due a second after it.
        let due = q.shrink_when_due().expect("a time it is due");
        assert!(due > std::time::Instant::now() && q.turns.capacity() > KEEP_WHEN_EMPTY);
        // Then given back, and nothing more to look for.
        q.burst = Burst::default();
        assert_eq!(q.shrink_when_due(), None);
        assert!(q.turns.capacity() <= KEEP_WHEN_EMPTY);
        assert_eq!(q.shrink_when_due(), None);
    }

    #[test]
    fn batches_put_back_go_first() {
        let mut q = TaskQueue::default();
        q.push_back(batch(1, 0));
        q.push_back(batch(2, 0));
        q.push_front(batch(7, 5));
        q.push_front(batch(7, 4));
        assert_eq!(order(&mut q), vec![(7, 4), (7, 5), (1, 0), (2, 0)]);
    }
}
