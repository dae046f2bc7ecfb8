//! Shared memory that survives `fork`: `mmap(MAP_SHARED | MAP_ANONYMOUS)`.
//!
//! Not `memmap2::MmapMut::map_anon`: that maps `MAP_PRIVATE`, so after a
//! `fork` each side writes its own copy-on-write copy and nothing is shared.

use std::ptr::NonNull;

use crate::error::{Error, OsError, Result};
use crate::sys::registry::{self, Entry};
use crate::sys::{os_error, trace};

/// A zero-filled region of memory shared with every process forked after it
/// was made. Unmapped on drop (in each process separately).
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Registered as a pool's (see [`SharedMapping::new_for_pool`]).
    pool_entry: Option<Entry>,
}

// SAFETY: the mapping is plain memory; all access to it goes through raw
// pointers and atomics in the modules that use it (ring, pool), which state
// their own synchronisation. Moving the handle between threads is harmless.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only hands out a raw pointer.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes (rounded up by the kernel to whole pages), zero-filled.
    pub(crate) fn new(len: usize) -> Result<SharedMapping> {
        let len = len.max(1);
        // SAFETY: a fresh anonymous mapping: no address hint, no fd; the
        // kernel picks a range that aliases nothing in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANON,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let err = os_error("mmap", None);
            trace!("mmap({len}, MAP_SHARED) = -1 ({err})");
            return Err(err);
        }
        trace!("mmap({len}, MAP_SHARED) = {ptr:p}");
        // A hint-less mmap never returns NULL on success; treat it as ENOMEM.
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::Os(OsError {
            call: "mmap",
            pid: None,
            errno: libc::ENOMEM,
        }))?;
        Ok(SharedMapping { ptr, len, pool_entry: None })
    }

    /// [`SharedMapping::new`] for a pool's (or a `fork_map` call's) own
    /// memory: registered, so that the processes of every other pool can
    /// unmap it ([`unmap_parents_pool_mappings`]).
    pub(crate) fn new_for_pool(len: usize) -> Result<SharedMapping> {
        let mut mapping = SharedMapping::new(len)?;
        mapping.pool_entry = registry::register_pool_mapping(mapping.as_ptr(), mapping.len);
        Ok(mapping)
    }

    /// The first byte. Page-aligned.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Unmaps the range in this process without giving up the handle.
    ///
    /// # Safety
    /// For a freshly forked child that keeps its copy of the handle but
    /// never touches the memory again and never drops a copy of the handle
    /// (it ends in `_exit`): otherwise a later mapping that reuses the range
    /// would be read, written or unmapped through this handle.
    pub(crate) unsafe fn unmap_in_forked_child(&self) {
        trace!("munmap({:p}, {})", self.ptr, self.len);
        // SAFETY: ptr/len are what mmap returned; per the contract above no
        // reference into the range is used after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }

    /// The length asked for.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if let Some(entry) = self.pool_entry.take() {
            // Before the unmap: a fork in between must not unmap a range
            // that may already be someone else's.
            registry::forget_pool_mapping(entry);
        }
        trace!("munmap({:p}, {})", self.ptr, self.len);
        // SAFETY: ptr/len are exactly what mmap returned, and this handle is
        // the only owner of the range in this process.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// In a child right after `fork`, made for one pool: unmaps every pool
/// mapping the parent had (see [`SharedMapping::new_for_pool`]) except
/// those starting at an address in `keep` (its own pool's), so that a wild
/// write in this process, or in the workers it forks, cannot reach another
/// pool's rings.
///
/// # Safety
/// The calling process must never touch another pool's memory again nor
/// drop a copy of its handles (it ends in `_exit`), and must call this
/// before it maps anything of its own (the ranges are the parent's).
pub(crate) unsafe fn unmap_parents_pool_mappings(keep: &[*mut u8]) {
    registry::parents_pool_mappings(|ptr, len| {
        if !keep.contains(&ptr) {
            trace!("munmap({ptr:p}, {len})");
            // SAFETY: per the contract above: the parent's pool mapping,
            // inherited by this fresh child, which never uses it.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    });
}
