//! The table of a pool's open submissions: ids that index straight into a
//! vector, and are never given twice.
//!
//! Why not a hash map keyed by a counter: an `imap` at chunksize 1 or a
//! loop of `apply_async` opens and closes a submission per task, and
//! 20,000 `apply_async` queued at once are 20,000 live entries. The map
//! hashed on every look-up, and each time it doubled it moved every
//! 200-byte entry into fresh memory: 72 % of the 3,760 page faults of a
//! process running one such round (1,890 with the entries boxed, 1,650
//! with this table). Here an id is a position, and a freed entry is the
//! next one used, its memory already warm.

use std::time::{Duration, Instant};

/// Values by id. An id's low 32 bits are the entry's index, its high 32
/// bits the entry's generation, which grows each time the entry is freed:
/// an id kept after its value was removed (a dropped `AsyncResult` whose
/// results still come in) finds nothing, never a newer value. An entry
/// whose generation is spent is not used again, so no id repeats.
///
/// A table emptied a while after a burst (a million `apply_async` queued,
/// then taken) gives its memory back (see [`Burst`]): it drops all entries
/// but the first [`KEEP_WHEN_EMPTY`], and entries made afterwards start at
/// a generation above every one dropped, so no id repeats across that
/// either.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Free entries' indices, the last freed on top (its memory is warm).
    free: Vec<u32>,
    /// Values stored.
    live: usize,
    /// The generation new entries start at: above every id given by an
    /// entry since dropped.
    floor: u32,
    burst: Burst,
    /// Whether [`Slab::shrink`] may still drop entries.
    shrinks: bool,
}

/// Entries an empty table keeps (about 200 bytes each for the pool's
/// submissions): what a steady load reuses without growing again.
pub(crate) const KEEP_WHEN_EMPTY: usize = 1024;

/// How long after it last held a burst a collection keeps its size.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// When a collection that grows with bursts may give its memory back: once
/// it is empty, bigger than [`KEEP_WHEN_EMPTY`], and has not held more
/// than that for [`SHRINK_AFTER`]. A loop of bursts keeps its warm memory:
/// rebuilt at each drain, 20,000 `apply_async` a round took 20 times the
/// page faults (45,500 against 2,170 over 50 rounds) and 28 % more CPU.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    grown_at: Option<Instant>,
}

impl Burst {
    /// The collection now holds `in_use` items (called as the count
    /// changes): the time is noted each time the count passes a multiple of
    /// [`KEEP_WHEN_EMPTY`], up or down, so the last note is when it last
    /// held more than that (and the clock, which costs as much as a quick
    /// task's bookkeeping, is read once in that many changes).
    pub(crate) fn holds(&mut self, in_use: usize) {
        if in_use >= KEEP_WHEN_EMPTY && in_use.is_multiple_of(KEEP_WHEN_EMPTY) {
            self.grown_at = Some(Instant::now());
        }
    }

    /// Whether an empty collection of `size` (entries, or capacity) may
    /// shrink now.
    pub(crate) fn may_shrink(&self, size: usize) -> bool {
        size > KEEP_WHEN_EMPTY && self.grown_at.is_none_or(|t| t.elapsed() >= SHRINK_AFTER)
    }

    /// When an empty collection of `size` that [`Burst::may_shrink`] just
    /// refused may shrink (a time that may have passed since that look: the
    /// next one then says yes); `None` if it holds nothing to give back.
    pub(crate) fn shrink_due(&self, size: usize) -> Option<Instant> {
        if size <= KEEP_WHEN_EMPTY {
            return None;
        }
        Some(self.grown_at? + SHRINK_AFTER)
    }
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            floor: 0,
            burst: Burst::default(),
            shrinks: true,
        }
    }

    /// Stores `value`; its id. `None` with 2^32 entries in use (or
    /// retired), when it is not stored.
    pub(crate) fn insert(&mut self, value: T) -> Option<u64> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.entries.len()).ok()?;
                self.entries.push(Entry { generation: self.floor, value: None });
                index
            }
        };
        let entry = &mut self.entries[index as usize];
        entry.value = Some(value);
        self.live += 1;
        self.burst.holds(self.live);
        Some(u64::from(entry.generation) << 32 | u64::from(index))
    }

    /// The entry `id` names, if its value is still there.
    fn entry(&self, id: u64) -> Option<&Entry<T>> {
        let entry = self.entries.get((id & u64::from(u32::MAX)) as usize)?;
        (u64::from(entry.generation) == id >> 32).then_some(entry)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&T> {
        self.entry(id)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.entry(id)?;
        self.entries[(id & u64::from(u32::MAX)) as usize].value.as_mut()
    }

    /// Takes `id`'s value out; the id is spent.
    pub(crate) fn remove(&mut self, id: u64) -> Option<T> {
        self.entry(id)?;
        let index = (id & u64::from(u32::MAX)) as u32;
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take()?;
        // An entry all of whose ids were given is retired, not freed.
        if let Some(next) = entry.generation.checked_add(1) {
            entry.generation = next;
            self.free.push(index);
        }
        self.live -= 1;
        self.burst.holds(self.live);
        if self.live == 0 && self.shrinks && self.burst.may_shrink(self.entries.len()) {
            self.shrink();
        }
        Some(value)
    }

    /// Shrinks an empty table that held a burst, if that is due (see
    /// [`Burst`]); otherwise, when to look again: when it is due (see
    /// [`Burst::shrink_due`]), or, for a table whose values are still in
    /// use, a [`SHRINK_AFTER`] from now (a removal that empties it before
    /// it is due shrinks nothing, and nothing else would look). `None`
    /// once there is nothing to give back. For an idle pool, which removes
    /// nothing.
    pub(crate) fn shrink_when_due(&mut self) -> Option<Instant> {
        if !self.shrinks || self.entries.len() <= KEEP_WHEN_EMPTY {
            return None;
        }
        if self.live != 0 {
            return Some(Instant::now() + SHRINK_AFTER);
        }
        if self.burst.may_shrink(self.entries.len()) {
            self.shrink();
            return None;
        }
        self.burst.shrink_due(self.entries.len())
    }

    /// Drops every entry of an empty table but the first
    /// [`KEEP_WHEN_EMPTY`] (and any whose generations are spent), and their
    /// memory. New entries past those start above every generation dropped.
    /// That floor is shared by all of them: once it would pass half the
    /// generations, the table stops shrinking for good (as it was before it
    /// could), rather than let new entries retire after a few uses.
    fn shrink(&mut self) {
        let spent = self.entries.iter().rposition(|e| e.generation == u32::MAX).map_or(0, |i| i + 1);
        let keep = KEEP_WHEN_EMPTY.max(spent);
        let top = self.entries.get(keep..).and_then(|dropped| dropped.iter().map(|e| e.generation).max());
        let Some(top) = top.filter(|&top| top <= u32::MAX / 2) else {
            self.shrinks = false;
            return;
        };
        self.floor = self.floor.max(top);
        self.entries.truncate(keep);
        self.entries.shrink_to_fit();
        self.free.retain(|&i| (i as usize) < keep);
        self.free.shrink_to_fit();
    }

    /// Every value stored.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;
    use std::time::Instant;

    #[test]
    fn an_id_finds_its_value_until_removed_and_never_a_later_one() {
        let mut slab = Slab::new();
        let a = slab.insert("a").unwrap();
        let b = slab.insert("b").unwrap();
        assert_eq!((slab.get(a), slab.get(b)), (Some(&"a"), Some(&"b")));
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(a), None);
        // The freed entry is reused under a new id; the old id stays dead.
        let c = slab.insert("c").unwrap();
        assert_ne!(c, a);
        assert_eq!((slab.get(a), slab.get(c)), (None, Some(&"c")));
        *slab.get_mut(c).unwrap() = "c2";
        assert_eq!(slab.values().copied().collect::<Vec<_>>(), vec!["c2", "b"]);
        assert_eq!(slab.get_mut(a), None);
    }

    #[test]
    fn an_entry_whose_generations_are_spent_is_retired() {
        let mut slab = Slab::new();
        let first = slab.insert(1).unwrap();
        slab.entries[0].generation = u32::MAX;
        let last = u64::from(u32::MAX) << 32 | (first & 0xffff_ffff);
        assert_eq!(slab.get(first), None);
        assert_eq!(slab.remove(last), Some(1));
        // Not reused: the next value gets a fresh entry, and no id repeats.
        let next = slab.insert(2).unwrap();
        assert_eq!(next & 0xffff_ffff, 1);
        assert_eq!((slab.get(last), slab.get(next)), (None, Some(&2)));
    }

    #[test]
    fn an_emptied_table_gives_its_memory_back_and_still_never_repeats_an_id() {
        let mut slab = Slab::new();
        let n = 10 * super::KEEP_WHEN_EMPTY;
        let ids: Vec<u64> = (0..n).map(|i| slab.insert(i).unwrap()).collect();
        // Some entries freed and used again, so that generations differ.
        for &id in &ids[n - 10..] {
            slab.remove(id);
        }
        let again: Vec<u64> = (0..10).map(|i| slab.insert(i).unwrap()).collect();
        let (last, rest) = again.split_last().unwrap();
        for &id in ids[..n - 10].iter().chain(rest) {
            assert!(slab.remove(id).is_some());
        }
        // Emptied right after the burst: kept, for the next burst.
        assert!(slab.remove(*last).is_some());
        assert_eq!(slab.entries.len(), n);
        // Emptied again a while after the burst: given back.
        let one = slab.insert(0).unwrap();
        slab.burst.grown_at = Some(Instant::now() - super::SHRINK_AFTER);
        assert!(slab.remove(one).is_some());
        let again = [again, vec![one]].concat();
        assert!(
            slab.entries.capacity() <= super::KEEP_WHEN_EMPTY,
            "{} entries kept",
            slab.entries.capacity()
        );
        assert!(slab.free.iter().all(|&i| (i as usize) < slab.entries.len()));
        // Entries made again at the dropped positions give new ids.
        let fresh: Vec<u64> = (0..n).map(|i| slab.insert(i).unwrap()).collect();
        for old in ids.iter().chain(&again) {
            assert!(!fresh.contains(old), "id {old:#x} given twice");
            assert_eq!(slab.get(*old), None);
        }
        assert_eq!(
            fresh.iter().map(|&id| slab.get(id).copied()).collect::<Option<Vec<_>>>(),
            Some((0..n).collect())
        );
    }

    #[test]
    fn a_burst_that_drains_slowly_is_timed_from_its_end() {
        let mut slab = Slab::new();
        let n = 4 * super::KEEP_WHEN_EMPTY;
        let ids: Vec<u64> = (0..n).map(|i| slab.insert(i).unwrap()).collect();
        // Most of the burst drains, then more than a second passes with
        // the table still holding more than it keeps...
        for &id in &ids[..n - super::KEEP_WHEN_EMPTY - 1] {
            slab.remove(id);
        }
        slab.burst.grown_at = Some(Instant::now() - super::SHRINK_AFTER);
        // ...and the rest drains: the table held a burst a moment ago.
        for &id in &ids[n - super::KEEP_WHEN_EMPTY - 1..] {
            slab.remove(id);
        }
        assert_eq!(slab.entries.len(), n);
    }

    #[test]
    fn an_idle_owner_is_told_when_to_look_again_never_a_time_past() {
        let mut slab = Slab::new();
        let n = 2 * super::KEEP_WHEN_EMPTY;
        let ids: Vec<u64> = (0..n).map(|i| slab.insert(i).unwrap()).collect();
        // In use, its burst long over: look again a while from now (a
        // time already past would have the driver spin).
        slab.burst.grown_at = Some(Instant::now() - 2 * super::SHRINK_AFTER);
        let again = slab.shrink_when_due().expect("a time to look again");
        assert!(again > Instant::now() + super::SHRINK_AFTER / 2);
        // Emptied right after the burst: due a second after it.
        for &id in &ids {
            slab.remove(id);
        }
        assert_eq!(slab.entries.len(), n);
        let due = slab.shrink_when_due().expect("a time it is due");
        assert!(due > Instant::now() && due <= Instant::now() + super::SHRINK_AFTER);
        // Then given back, and nothing more to look for.
        slab.burst.grown_at = Some(Instant::now() - super::SHRINK_AFTER);
        assert_eq!(slab.shrink_when_due(), None);
        assert_eq!(slab.entries.len(), super::KEEP_WHEN_EMPTY);
        assert_eq!(slab.shrink_when_due(), None);
    }

    #[test]
    fn a_table_whose_generations_run_high_stops_shrinking() {
        let mut slab = Slab::new();
        let n = 2 * super::KEEP_WHEN_EMPTY;
        let ids: Vec<u64> = (0..n).map(|i| slab.insert(i).unwrap()).collect();
        // An entry past those kept has been used 2^31 times.
        slab.entries[n - 1].generation = u32::MAX / 2 + 1;
        let last = u64::from(u32::MAX / 2 + 1) << 32 | (n as u64 - 1);
        slab.burst.grown_at = Some(Instant::now() - super::SHRINK_AFTER);
        for &id in &ids[..n - 1] {
            slab.remove(id);
        }
        slab.burst.grown_at = Some(Instant::now() - super::SHRINK_AFTER);
        assert!(slab.remove(last).is_some());
        assert_eq!((slab.entries.len(), slab.shrinks, slab.floor), (n, false, 0));
        // Every id still finds nothing, and new ones work.
        assert!(ids.iter().all(|&id| slab.get(id).is_none()));
        let next = slab.insert(7).unwrap();
        assert_eq!(slab.get(next), Some(&7));
    }

    #[test]
    fn ids_that_name_no_entry_find_nothing() {
        let mut slab: Slab<u8> = Slab::new();
        assert_eq!(slab.get(0), None);
        assert_eq!(slab.get(u64::MAX), None);
        assert_eq!(slab.remove(7), None);
    }
}
