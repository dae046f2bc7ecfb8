//! Shared memory that survives `fork`, with a name: a memory file mapped
//! `MAP_SHARED` through `memmap2`.
//!
//! The file is `memfd_create(2)` on Linux, `shm_open(3)` + `shm_unlink`
//! elsewhere; it is sized with `ftruncate` and closed once mapped, so no
//! descriptor is left to leak into children, and nothing is left in any
//! file system. What the name buys: `grep mproc /proc/PID/maps` shows a
//! pool's memory in each of its processes (`/memfd:mproc-pool (deleted)`),
//! where `MAP_SHARED | MAP_ANONYMOUS` would say only `/dev/zero`.
//! Not `memmap2::MmapMut::map_anon`: that maps `MAP_PRIVATE`, so after a
//! `fork` each side would write its own copy-on-write copy.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use memmap2::MmapMut;

use crate::error::{Error, OsError, Result};
use crate::sys::registry::{self, Entry};
use crate::sys::{page_size, retry, trace};

/// The name of a pool's mappings (its control block and its slots), and
/// of a `fork_map` call's.
pub(crate) const POOL_NAME: &CStr = c"mproc-pool";
/// The name of a ring made on its own ([`crate::ring::channel`]).
pub(crate) const RING_NAME: &CStr = c"mproc-ring";

/// A zero-filled region of memory shared with every process forked after it
/// was made. Unmapped on drop (in each process separately).
#[derive(Debug)]
pub(crate) struct SharedMapping {
    /// Owns the range: unmaps it on drop. Never dereferenced: other
    /// processes write this memory, so it is reached only through `ptr`
    /// (raw pointers and atomics), never through a `&[u8]`.
    map: MmapMut,
    /// The first byte of `map`.
    ptr: NonNull<u8>,
    /// The length asked for (the mapping is that, rounded up to pages).
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

/// An `Error::Os` for `call` from an `io::Error` (`memmap2` reports that way).
fn io_os_error(call: &'static str, err: &std::io::Error) -> Error {
    Error::Os(OsError { call, pid: None, errno: err.raw_os_error().unwrap_or(libc::EIO) })
}

impl SharedMapping {
    /// Maps `len` bytes (rounded up to whole pages), zero-filled, backed by
    /// a memory file called `name` that `/proc/PID/maps` shows.
    pub(crate) fn new(name: &CStr, len: usize) -> Result<SharedMapping> {
        let len = len.max(1);
        // The whole of every page: a write past the file's end, even
        // within the mapping's last page, would be SIGBUS.
        let mapped_len = len.checked_next_multiple_of(page_size()).ok_or_else(|| {
            Error::InvalidArgument(format!("a shared mapping of {len} bytes does not fit in memory"))
        })?;
        let file = memory_file(name, mapped_len)?;
        // SAFETY: the file is ours alone (unnamed or already unlinked), was
        // sized above and is never truncated, so the mapping can never
        // lose its pages under us (no SIGBUS).
        let mapped = unsafe { MmapMut::map_mut(&file) };
        let fd = file.as_raw_fd();
        let mut map = match mapped {
            Ok(map) => map,
            Err(e) => {
                trace!("mmap({mapped_len}, MAP_SHARED, fd {fd}) = -1 ({e})");
                return Err(io_os_error("mmap", &e));
            }
        };
        // A fresh mapping nobody else can reach yet: taking its address
        // through `&mut [u8]` this once aliases nothing.
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or(Error::Os(OsError {
            call: "mmap",
            pid: None,
            errno: libc::ENOMEM,
        }))?;
        trace!("mmap({mapped_len}, MAP_SHARED, fd {fd}) = {ptr:p}");
        // The mapping holds the file now; the descriptor would only leak.
        trace!("close({fd})");
        drop(file);
        Ok(SharedMapping { map, ptr, len, pool_entry: None })
    }

    /// [`SharedMapping::new`] for a pool's (or a `fork_map` call's) own
    /// memory, named [`POOL_NAME`]: registered, so that the processes of
    /// every other pool can unmap it ([`unmap_parents_pool_mappings`]).
    pub(crate) fn new_for_pool(len: usize) -> Result<SharedMapping> {
        let mut mapping = SharedMapping::new(POOL_NAME, len)?;
        mapping.pool_entry = registry::register_pool_mapping(mapping.as_ptr(), mapping.map.len());
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
        let len = self.map.len();
        trace!("munmap({:p}, {len})", self.ptr);
        // SAFETY: ptr/len are the mapping's; per the contract above no
        // reference into the range is used after this, and the `MmapMut`
        // that would unmap it again is never dropped in this process.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), len) };
    }

    /// The length asked for.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        if let Some(entry) = self.pool_entry.take() {
            // Before the unmap (when `map` drops, after this): a fork in
            // between must not unmap a range that may already be someone
            // else's.
            registry::forget_pool_mapping(entry);
        }
        trace!("munmap({:p}, {})", self.ptr, self.map.len());
    }
}

/// A memory file of `len` zero bytes called `name`, close-on-exec, that no
/// other process can open.
fn memory_file(name: &CStr, len: usize) -> Result<File> {
    let file = File::from(open_memory_file(name)?);
    let fd = file.as_raw_fd();
    let size = libc::off_t::try_from(len).map_err(|_| {
        Error::InvalidArgument(format!("a shared mapping of {len} bytes does not fit in a file"))
    })?;
    // SAFETY: `fd` is the open file we own; ftruncate takes integers.
    match retry("ftruncate", None, || unsafe { libc::ftruncate(fd, size) }) {
        Ok(_) => trace!("ftruncate({fd}, {len})"),
        Err(e) => {
            trace!("ftruncate({fd}, {len}) = -1 ({e})");
            return Err(e);
        }
    }
    Ok(file)
}

/// `memfd_create(name, MFD_CLOEXEC)`: an unnamed memory file whose name
/// shows in `/proc/PID/maps` as `/memfd:NAME (deleted)`. Asks for
/// `MFD_NOEXEC_SEAL` too, which kernels with `vm.memfd_noexec = 2` require
/// (and older kernels refuse with `EINVAL`: then without it).
#[cfg(target_os = "linux")]
fn open_memory_file(name: &CStr) -> Result<OwnedFd> {
    let shown = name.to_string_lossy();
    let create = |flags, flag_names| {
        // SAFETY: `name` is a valid C string that outlives the call.
        let created = retry("memfd_create", None, || unsafe { libc::memfd_create(name.as_ptr(), flags) });
        match &created {
            Ok(fd) => trace!("memfd_create(\"{shown}\", {flag_names}) = {fd}"),
            Err(e) => trace!("memfd_create(\"{shown}\", {flag_names}) = -1 ({e})"),
        }
        created
    };
    let fd = match create(libc::MFD_CLOEXEC | libc::MFD_NOEXEC_SEAL, "MFD_CLOEXEC|MFD_NOEXEC_SEAL") {
        Err(Error::Os(OsError { errno: libc::EINVAL, .. })) => create(libc::MFD_CLOEXEC, "MFD_CLOEXEC"),
        other => other,
    }?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shm_open` of a fresh name (`/NAME-PID-N`, created exclusively, owner
/// only; `FD_CLOEXEC` is set by `shm_open` itself), then `shm_unlink` at
/// once, so that the memory lives only as long as its mappings.
#[cfg(not(target_os = "linux"))]
fn open_memory_file(name: &CStr) -> Result<OwnedFd> {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Makes each name of this process new (another process has another pid).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let shown = name.to_string_lossy();
    loop {
        // Relaxed: only uniqueness matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: macOS allows 31 bytes.
        let path = format!("/{shown}-{}-{n:x}", super::getpid());
        let path = std::ffi::CString::new(path).map_err(|_| {
            Error::InvalidArgument(format!("shared memory name {shown:?} contains a NUL byte"))
        })?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        // macOS declares shm_open variadic: the mode travels as an
        // unsigned int there, as a mode_t elsewhere.
        #[cfg(target_vendor = "apple")]
        let mode: libc::c_uint = 0o600;
        #[cfg(not(target_vendor = "apple"))]
        let mode: libc::mode_t = 0o600;
        // SAFETY: `path` is a valid C string that outlives the call.
        let opened = retry("shm_open", None, || unsafe { libc::shm_open(path.as_ptr(), flags, mode) });
        let fd = match opened {
            Err(Error::Os(OsError { errno: libc::EEXIST, .. })) => continue,
            Err(e) => {
                trace!("shm_open({path:?}) = -1 ({e})");
                return Err(e);
            }
            Ok(fd) => fd,
        };
        // SAFETY: a fresh descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Unlinked before anything else (even the trace line, whose write
        // may kill us with SIGPIPE): a name left behind outlives us.
        // SAFETY: `path` is a valid C string; the name is ours (O_EXCL).
        retry("shm_unlink", None, || unsafe { libc::shm_unlink(path.as_ptr()) })?;
        trace!("shm_open({path:?}) = {fd}, unlinked");
        return Ok(owned);
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
