//! Bounded output buffers that spill to one shared, unlinked temporary file.
//!
//! A job that may not print yet (it is not at the head of the order, or it
//! has not finished) keeps its output in a [`Spool`]. The first bytes stay
//! in memory, up to a per-stream bound and a bound on the whole run; the
//! rest goes to the [`SpillFile`] as segments. One file serves every spool,
//! so a thousand waiting jobs cost one descriptor, not a thousand; it is
//! unlinked as soon as it is created (nothing is left behind, even after
//! SIGKILL) and truncated whenever no segment in it is still waiting.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{Error, OsError, Result};
use crate::sys::trace;

/// Turns an I/O error from `std::fs` into the crate's error, naming the call.
pub(crate) fn io_error(call: &'static str, err: std::io::Error) -> Error {
    Error::Os(OsError { call, pid: None, errno: err.raw_os_error().unwrap_or(libc::EIO) })
}

/// How much output may wait in memory.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes one stream of one job may hold in memory.
    pub per_stream: usize,
    /// Bytes all spools together may hold in memory.
    pub total: usize,
    /// Bytes they hold now. Invariant: `used <= total`.
    pub used: usize,
}

/// The shared temporary file; created on first use.
#[derive(Default)]
pub(crate) struct SpillFile {
    file: Option<File>,
    /// Where the next segment goes.
    end: u64,
    /// Segments written and not yet drained or discarded. At 0 the file is
    /// truncated, so its size tracks only what is still waiting.
    live_segments: usize,
}

impl SpillFile {
    fn open(&mut self) -> Result<&File> {
        let file = match self.file.take() {
            Some(file) => file,
            None => create_unlinked()?,
        };
        Ok(self.file.insert(file))
    }

    fn append(&mut self, data: &[u8]) -> Result<u64> {
        let offset = self.end;
        self.open()?.write_all_at(data, offset).map_err(|e| io_error("write", e))?;
        self.end += data.len() as u64;
        Ok(offset)
    }

    fn release(&mut self, segments: usize) -> Result<()> {
        self.live_segments -= segments;
        if self.live_segments == 0 && self.end > 0 {
            if let Some(file) = &self.file {
                file.set_len(0).map_err(|e| io_error("ftruncate", e))?;
            }
            self.end = 0;
        }
        Ok(())
    }
}

/// Creates a file no other process can find: a fresh name in `$TMPDIR`
/// (std opens it close-on-exec), readable by us only for the moment it has
/// a name, unlinked at once.
fn create_unlinked() -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path: PathBuf = dir.join(format!(".mproc-run-{pid}-{nanos:x}-{attempt}"));
        match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(file) => {
                std::fs::remove_file(&path).map_err(|e| io_error("unlink", e))?;
                trace!("spill file {:?} (unlinked)", path);
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
            // The message names where: "... failed: No such file or directory".
            Err(e) => return Err(io_error("creating a spill file in $TMPDIR", e)),
        }
    }
}

/// One stream's waiting output: `mem`, then the `segments` of the spill
/// file, in that order. Once anything has spilled, everything after it
/// spills too, so the order of bytes is kept.
#[derive(Default, Debug)]
pub(crate) struct Spool {
    mem: Vec<u8>,
    /// `(offset, length)` in the spill file.
    segments: Vec<(u64, u64)>,
}

impl Spool {
    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.segments.is_empty()
    }

    /// Adds bytes at the end.
    pub(crate) fn push(&mut self, data: &[u8], budget: &mut Budget, spill: &mut SpillFile) -> Result<()> {
        let fits = self.segments.is_empty()
            && self.mem.len() + data.len() <= budget.per_stream
            && budget.used + data.len() <= budget.total;
        if fits {
            self.mem.extend_from_slice(data);
            budget.used += data.len();
            return Ok(());
        }
        let offset = spill.append(data)?;
        match self.segments.last_mut() {
            // The previous segment ends exactly here: grow it.
            Some((start, len)) if *start + *len == offset => *len += data.len() as u64,
            _ => {
                self.segments.push((offset, data.len() as u64));
                spill.live_segments += 1;
            }
        }
        Ok(())
    }

    /// Hands every waiting byte, in order, to `sink`, and empties the spool.
    pub(crate) fn drain(
        &mut self,
        budget: &mut Budget,
        spill: &mut SpillFile,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        if !self.mem.is_empty() {
            sink(&self.mem)?;
        }
        if !self.segments.is_empty() {
            let file = spill.open()?;
            let mut chunk = vec![0u8; 64 * 1024];
            for &(start, len) in &self.segments {
                let mut done = 0u64;
                while done < len {
                    let want = chunk.len().min((len - done) as usize);
                    file.read_exact_at(&mut chunk[..want], start + done).map_err(|e| io_error("pread", e))?;
                    sink(&chunk[..want])?;
                    done += want as u64;
                }
            }
        }
        self.discard(budget, spill)
    }

    /// Drops every waiting byte.
    pub(crate) fn discard(&mut self, budget: &mut Budget, spill: &mut SpillFile) -> Result<()> {
        budget.used -= self.mem.len();
        // A fresh Vec, not clear(): give the memory back.
        self.mem = Vec::new();
        let segments = std::mem::take(&mut self.segments).len();
        spill.release(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(spool: &mut Spool, budget: &mut Budget, spill: &mut SpillFile) -> Vec<u8> {
        let mut out = Vec::new();
        spool
            .drain(budget, spill, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn small_output_stays_in_memory() {
        let mut budget = Budget { per_stream: 16, total: 64, used: 0 };
        let mut spill = SpillFile::default();
        let mut spool = Spool::default();
        spool.push(b"hello ", &mut budget, &mut spill).unwrap();
        spool.push(b"world", &mut budget, &mut spill).unwrap();
        assert_eq!(budget.used, 11);
        assert!(spill.file.is_none());
        assert_eq!(collect(&mut spool, &mut budget, &mut spill), b"hello world");
        assert_eq!(budget.used, 0);
        assert!(spool.is_empty());
    }

    #[test]
    fn overflow_spills_in_order_and_the_file_is_reclaimed() {
        let mut budget = Budget { per_stream: 8, total: 12, used: 0 };
        let mut spill = SpillFile::default();
        let (mut a, mut b) = (Spool::default(), Spool::default());
        a.push(b"aaaa", &mut budget, &mut spill).unwrap();
        b.push(b"bbbbbbbb", &mut budget, &mut spill).unwrap(); // hits the total bound: b is in memory
        a.push(b"AAAAAA", &mut budget, &mut spill).unwrap(); // over per-stream bound: spills
        b.push(b"BB", &mut budget, &mut spill).unwrap(); // over total: spills
        a.push(b"aa", &mut budget, &mut spill).unwrap(); // after a spill, stays in the file
        assert_eq!(budget.used, 12);
        assert_eq!(spill.live_segments, 3);
        assert_eq!(collect(&mut a, &mut budget, &mut spill), b"aaaaAAAAAAaa");
        assert_eq!(spill.live_segments, 1);
        assert_eq!(collect(&mut b, &mut budget, &mut spill), b"bbbbbbbbBB");
        assert_eq!((spill.live_segments, spill.end, budget.used), (0, 0, 0));
        assert_eq!(spill.file.as_ref().unwrap().metadata().unwrap().len(), 0);
    }
}
