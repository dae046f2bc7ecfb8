//! Shared memory that survives `fork`: `mmap(MAP_SHARED | MAP_ANONYMOUS)`.
//!
//! Not `memmap2::MmapMut::map_anon`: that maps `MAP_PRIVATE`, so after a
//! `fork` each side writes its own copy-on-write copy and nothing is shared.

use std::ptr::NonNull;

use crate::error::{Error, OsError, Result};
use crate::sys::{os_error, trace};

/// A zero-filled region of memory shared with every process forked after it
/// was made. Unmapped on drop (in each process separately).
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
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
        Ok(SharedMapping { ptr, len })
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
        trace!("munmap({:p}, {})", self.ptr, self.len);
        // SAFETY: ptr/len are exactly what mmap returned, and this handle is
        // the only owner of the range in this process.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
