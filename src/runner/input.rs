//! Where the jobs' arguments come from: one or more input sources, read as
//! the jobs need them.
//!
//! A source is a list of values (the words after `:::`) or a stream of
//! records (the lines of stdin or of a `::::` file). With one source each
//! value is one job. With several, each job takes one value from every
//! source: every combination, the first source changing slowest (GNU
//! parallel's order), or, linked, the n-th value of each (a shorter source
//! starts over).
//!
//! Only the first source streams: a record is read when a job slot is free
//! for it, so jobs start as lines arrive and read-ahead stays within one
//! read buffer. The other sources are read whole first — every combination
//! goes through all of their values.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::sys;

/// One job's arguments: one value per input source.
pub type Args = Vec<Vec<u8>>;

/// Bytes read from a stream at a time: the most read ahead of the jobs
/// (plus the record being assembled).
const READ_CHUNK: usize = 64 * 1024;

/// What [`Inputs::next`] has.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// The next job's arguments.
    Args(Args),
    /// Nothing yet: the stream has no whole record buffered; poll
    /// [`Inputs::wait_fd`] for reading, then ask again.
    Pending,
    /// Every input has been handed out.
    End,
}

/// The descriptor a stream reads from.
enum StreamFd {
    Stdin(std::io::Stdin),
    File(File),
}

impl StreamFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StreamFd::Stdin(stdin) => stdin.as_fd(),
            StreamFd::File(file) => file.as_fd(),
        }
    }
}

/// Records separated by one byte, read from a descriptor in chunks.
struct Records {
    fd: StreamFd,
    separator: u8,
    /// Bytes read and not yet handed out start at `buf[start]`.
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl Records {
    fn new(fd: StreamFd, separator: u8) -> Records {
        Records { fd, separator, buf: Vec::new(), start: 0, eof: false }
    }

    /// The next record from the buffer, reading at most once, and only if
    /// `may_read`. A final separator ends the last record rather than
    /// starting an empty one.
    fn next(&mut self, may_read: bool) -> Result<Option<Option<Vec<u8>>>> {
        if let Some(record) = self.take_record() {
            return Ok(Some(Some(record)));
        }
        if !self.eof && may_read {
            self.read_once()?;
            if let Some(record) = self.take_record() {
                return Ok(Some(Some(record)));
            }
        }
        if !self.eof {
            return Ok(None);
        }
        if self.start < self.buf.len() {
            let last = self.buf[self.start..].to_vec();
            self.start = self.buf.len();
            return Ok(Some(Some(last)));
        }
        Ok(Some(None))
    }

    fn take_record(&mut self) -> Option<Vec<u8>> {
        let rest = &self.buf[self.start..];
        let end = rest.iter().position(|&b| b == self.separator)?;
        let record = rest[..end].to_vec();
        self.start += end + 1;
        Some(record)
    }

    fn read_once(&mut self) -> Result<()> {
        // Drop what was handed out, so the buffer holds one chunk plus the
        // record being assembled, however long the stream.
        self.buf.drain(..self.start);
        self.start = 0;
        let old_len = self.buf.len();
        self.buf.resize(old_len + READ_CHUNK, 0);
        let read = sys::read(self.fd.as_fd(), &mut self.buf[old_len..]);
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(old_len + n);
        // A long record grew the buffer; give the memory back after it.
        if self.buf.capacity() > 4 * READ_CHUNK.max(self.buf.len()) {
            self.buf.shrink_to(2 * READ_CHUNK.max(self.buf.len()));
        }
        self.eof = read? == 0;
        Ok(())
    }

    /// The records not handed out yet, once the end of file is reached.
    fn remaining(&self) -> Option<u64> {
        if !self.eof {
            return None;
        }
        let rest = &self.buf[self.start..];
        let whole = rest.iter().filter(|&&b| b == self.separator).count();
        let unfinished = !rest.is_empty() && rest.last() != Some(&self.separator);
        Some((whole + unfinished as usize) as u64)
    }

    /// Every record, blocking until end of file.
    fn read_all(mut self) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        loop {
            match self.next(true)? {
                Some(Some(record)) => all.push(record),
                Some(None) => return Ok(all),
                None => {} // a short read without a whole record: read again
            }
        }
    }
}

/// One input source, as given on the command line.
pub struct Source(SourceKind);

enum SourceKind {
    Values(VecDeque<Vec<u8>>),
    Records(Records),
}

impl Source {
    /// A list of values (`::: a b c`).
    pub fn values(values: impl IntoIterator<Item = Vec<u8>>) -> Source {
        Source(SourceKind::Values(values.into_iter().collect()))
    }

    /// The records of standard input, separated by `separator`.
    pub fn stdin(separator: u8) -> Source {
        Source(SourceKind::Records(Records::new(StreamFd::Stdin(std::io::stdin()), separator)))
    }

    /// The records of an open file (`:::: FILE`), separated by `separator`.
    pub fn file(file: File, separator: u8) -> Source {
        Source(SourceKind::Records(Records::new(StreamFd::File(file), separator)))
    }

    fn read_all(self) -> Result<Vec<Vec<u8>>> {
        match self.0 {
            SourceKind::Values(values) => Ok(values.into()),
            SourceKind::Records(records) => records.read_all(),
        }
    }
}

/// How values of several sources are put together.
enum Shape {
    /// One source: each value is a job.
    Single,
    /// Every combination; `rest` holds the sources after the first, read
    /// whole, and `odometer` the index into each for the current value of
    /// the first (`None` before the first value).
    Product { rest: Vec<Vec<Vec<u8>>>, current: Option<Vec<u8>>, odometer: Vec<usize> },
    /// The n-th value of each (all read whole); the longest sets the count.
    Linked { all: Vec<Vec<Vec<u8>>>, next: usize },
}

/// The jobs' arguments, handed out one job at a time; see the module docs.
pub struct Inputs {
    first: SourceKind,
    shape: Shape,
}

impl Inputs {
    /// One job per value of `source`.
    pub fn single(source: Source) -> Inputs {
        Inputs { first: source.0, shape: Shape::Single }
    }

    /// Jobs from several sources: every combination (`link` false) or the
    /// values paired up (`link` true). Every source but the first is read
    /// whole here (all of them when linked), blocking until end of file.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no source at all; [`Error::Os`] when
    /// reading a source fails.
    pub fn combine(sources: Vec<Source>, link: bool) -> Result<Inputs> {
        let mut sources = sources.into_iter();
        let Some(first) = sources.next() else {
            return Err(Error::InvalidArgument("no input source".into()));
        };
        let rest = sources.map(Source::read_all).collect::<Result<Vec<_>>>().map_err(reading)?;
        if rest.is_empty() {
            return Ok(Inputs::single(first));
        }
        if link {
            let mut all = vec![first.read_all().map_err(reading)?];
            all.extend(rest);
            return Ok(Inputs {
                first: SourceKind::Values(VecDeque::new()),
                shape: Shape::Linked { all, next: 0 },
            });
        }
        let odometer = vec![0; rest.len()];
        Ok(Inputs { first: first.0, shape: Shape::Product { rest, current: None, odometer } })
    }

    /// The descriptor to poll before asking again after [`Next::Pending`].
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.first {
            SourceKind::Records(records) if !records.eof => Some(records.fd.as_fd()),
            _ => None,
        }
    }

    /// The next job's arguments. Reads from the stream at most once, and
    /// only when `may_read` (the caller saw [`Inputs::wait_fd`] readable,
    /// or does not mind blocking), so it never blocks otherwise.
    ///
    /// # Errors
    /// [`Error::Os`] when reading the stream fails.
    pub fn next(&mut self, may_read: bool) -> Result<Next> {
        match &mut self.shape {
            Shape::Single => Ok(match first_value(&mut self.first, may_read)? {
                Some(Some(value)) => Next::Args(vec![value]),
                Some(None) => Next::End,
                None => Next::Pending,
            }),
            Shape::Product { rest, current, odometer } => {
                if rest.iter().any(Vec::is_empty) {
                    return Ok(Next::End);
                }
                if current.is_none() {
                    match first_value(&mut self.first, may_read)? {
                        Some(Some(value)) => *current = Some(value),
                        Some(None) => return Ok(Next::End),
                        None => return Ok(Next::Pending),
                    }
                }
                let mut args = Vec::with_capacity(rest.len() + 1);
                args.extend(current.clone());
                args.extend(rest.iter().zip(odometer.iter()).map(|(values, &i)| values[i].clone()));
                // Advance the odometer, last source fastest; when it wraps
                // around, the next job takes the first source's next value.
                let mut wrapped = true;
                for (i, values) in odometer.iter_mut().zip(rest.iter()).rev() {
                    *i += 1;
                    if *i < values.len() {
                        wrapped = false;
                        break;
                    }
                    *i = 0;
                }
                if wrapped {
                    *current = None;
                }
                Ok(Next::Args(args))
            }
            Shape::Linked { all, next } => {
                let count = all.iter().map(Vec::len).max().unwrap_or(0);
                if *next >= count || all.iter().any(Vec::is_empty) {
                    return Ok(Next::End);
                }
                let args = all.iter().map(|values| values[*next % values.len()].clone()).collect();
                *next += 1;
                Ok(Next::Args(args))
            }
        }
    }

    /// Reads the first source whole too (blocking until its end of file),
    /// and returns the number of jobs: for a `--halt` percentage, which
    /// needs the total. Call it before handing out any job.
    ///
    /// # Errors
    /// [`Error::Os`] when reading the stream fails.
    pub fn read_whole(&mut self) -> Result<u64> {
        let first = std::mem::replace(&mut self.first, SourceKind::Values(VecDeque::new()));
        let values = Source(first).read_all().map_err(reading)?;
        self.first = SourceKind::Values(values.into());
        Ok(self.remaining().unwrap_or(0))
    }

    /// The number of jobs not handed out yet, when it is known: every
    /// input is in memory, or the stream has reached its end (for a
    /// progress display, and a `--halt` percentage).
    pub fn remaining(&self) -> Option<u64> {
        let first_left = match &self.first {
            SourceKind::Values(values) => values.len() as u64,
            SourceKind::Records(records) => records.remaining()?,
        };
        Some(match &self.shape {
            Shape::Single => first_left,
            Shape::Product { rest, current, odometer } => {
                let per_value = rest.iter().map(|values| values.len() as u64).product::<u64>();
                // The current first value's combinations not handed out yet.
                let done_of_current = odometer
                    .iter()
                    .zip(rest)
                    .fold(0u64, |n, (&i, values)| n * values.len() as u64 + i as u64);
                let current_left = if current.is_some() { per_value - done_of_current } else { 0 };
                first_left * per_value + current_left
            }
            Shape::Linked { all, next } => match all.iter().any(Vec::is_empty) {
                true => 0,
                false => {
                    all.iter().map(|values| values.len()).max().unwrap_or(0).saturating_sub(*next) as u64
                }
            },
        })
    }

    /// Every remaining job's arguments, blocking on the stream as needed:
    /// for callers that need no `poll` (`--dry-run`, a list in memory).
    pub fn next_blocking(&mut self) -> Result<Option<Args>> {
        loop {
            match self.next(true)? {
                Next::Args(args) => return Ok(Some(args)),
                Next::End => return Ok(None),
                Next::Pending => {
                    if let Some(fd) = self.wait_fd() {
                        sys::poll(&[(fd, true, false)], None)?;
                    }
                }
            }
        }
    }
}

/// The first source's next value: `Some(Some(v))`, `Some(None)` at the
/// end, `None` when the stream has nothing whole yet.
fn first_value(first: &mut SourceKind, may_read: bool) -> Result<Option<Option<Vec<u8>>>> {
    match first {
        SourceKind::Values(values) => Ok(Some(values.pop_front())),
        SourceKind::Records(records) => records.next(may_read).map_err(reading),
    }
}

/// Names what failed: reading an input, not the jobs' pipes.
fn reading(err: Error) -> Error {
    match err {
        Error::Os(os) if os.call == "read" => {
            Error::Os(crate::error::OsError { call: "read (inputs)", ..os })
        }
        other => other,
    }
}

impl<T: Into<Vec<u8>>> FromIterator<T> for Inputs {
    /// One job per value.
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Inputs {
        Inputs::single(Source::values(values.into_iter().map(Into::into)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn words(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn all(mut inputs: Inputs) -> Vec<Vec<String>> {
        let mut jobs = Vec::new();
        while let Some(args) = inputs.next_blocking().unwrap() {
            jobs.push(args.into_iter().map(|v| String::from_utf8(v).unwrap()).collect());
        }
        jobs
    }

    fn temp_file(contents: &[u8]) -> File {
        let path =
            std::env::temp_dir().join(format!("mproc-input-test-{}-{}", std::process::id(), contents.len()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(contents).unwrap();
        file.rewind().unwrap();
        file
    }

    #[test]
    fn combinations_come_in_gnu_parallels_order() {
        let sources = vec![Source::values(words(&["A", "B"])), Source::values(words(&["D", "E", "F"]))];
        let jobs = all(Inputs::combine(sources, false).unwrap());
        let expected = [["A", "D"], ["A", "E"], ["A", "F"], ["B", "D"], ["B", "E"], ["B", "F"]];
        assert_eq!(jobs, expected.map(|p| p.map(String::from).to_vec()));
    }

    #[test]
    fn three_sources_turn_like_an_odometer() {
        let sources = vec![
            Source::values(words(&["1", "2"])),
            Source::values(words(&["a", "b"])),
            Source::values(words(&["x", "y"])),
        ];
        let jobs: Vec<String> =
            all(Inputs::combine(sources, false).unwrap()).iter().map(|j| j.concat()).collect();
        assert_eq!(jobs, ["1ax", "1ay", "1bx", "1by", "2ax", "2ay", "2bx", "2by"]);
    }

    #[test]
    fn linked_sources_pair_up_and_shorter_ones_start_over() {
        let sources = vec![Source::values(words(&["A", "B", "C"])), Source::values(words(&["D", "E"]))];
        let jobs: Vec<String> =
            all(Inputs::combine(sources, true).unwrap()).iter().map(|j| j.concat()).collect();
        assert_eq!(jobs, ["AD", "BE", "CD"]);
    }

    #[test]
    fn an_empty_source_makes_no_combination() {
        let sources = vec![Source::values(words(&["A"])), Source::values(Vec::new())];
        assert!(all(Inputs::combine(sources, false).unwrap()).is_empty());
    }

    #[test]
    fn records_split_at_the_separator_and_a_final_one_ends_the_last() {
        let file = temp_file(b"a\nb c\n\nd");
        let jobs = all(Inputs::single(Source::file(file, b'\n')));
        assert_eq!(jobs, [["a"], ["b c"], [""], ["d"]].map(|j| j.map(String::from).to_vec()));
        let file = temp_file(b"x\0y\n\0");
        let jobs = all(Inputs::single(Source::file(file, 0)));
        assert_eq!(jobs, [["x"], ["y\n"]].map(|j| j.map(String::from).to_vec()));
    }

    #[test]
    fn a_stream_is_read_only_when_allowed() {
        let mut inputs = Inputs::single(Source::file(temp_file(b"1\n2\n"), b'\n'));
        assert_eq!(inputs.next(false).unwrap(), Next::Pending);
        assert!(inputs.wait_fd().is_some());
        assert_eq!(inputs.next(true).unwrap(), Next::Args(words(&["1"])));
        // Buffered already: no read needed.
        assert_eq!(inputs.next(false).unwrap(), Next::Args(words(&["2"])));
        assert_eq!(inputs.next(false).unwrap(), Next::Pending);
        assert_eq!(inputs.next(true).unwrap(), Next::End);
        assert!(inputs.wait_fd().is_none());
    }

    #[test]
    fn read_whole_counts_the_jobs() {
        let mut inputs = Inputs::single(Source::file(temp_file(b"1\n2\n3\n"), b'\n'));
        assert_eq!(inputs.read_whole().unwrap(), 3);
        assert_eq!(all(inputs).len(), 3);
        let sources =
            vec![Source::file(temp_file(b"a\nb\n"), b'\n'), Source::values(words(&["x", "y", "z"]))];
        let mut inputs = Inputs::combine(sources, false).unwrap();
        assert_eq!(inputs.read_whole().unwrap(), 6);
        assert_eq!(all(inputs).len(), 6);
    }

    #[test]
    fn the_jobs_left_are_known_once_the_stream_has_ended() {
        let mut inputs = Inputs::single(Source::file(temp_file(b"1\n2\n3"), b'\n'));
        assert_eq!(inputs.remaining(), None);
        assert_eq!(inputs.next(true).unwrap(), Next::Args(words(&["1"])));
        assert_eq!(inputs.remaining(), None, "not at the end of file yet");
        inputs.next(true).unwrap();
        assert_eq!(inputs.next(true).unwrap(), Next::Args(words(&["3"])));
        assert_eq!(inputs.remaining(), Some(0));
        let sources = vec![Source::values(words(&["a", "b"])), Source::values(words(&["x", "y", "z"]))];
        let mut inputs = Inputs::combine(sources, false).unwrap();
        assert_eq!(inputs.remaining(), Some(6));
        inputs.next(false).unwrap();
        inputs.next(false).unwrap();
        assert_eq!(inputs.remaining(), Some(4));
        let sources = vec![Source::values(words(&["a", "b", "c"])), Source::values(words(&["x"]))];
        let mut inputs = Inputs::combine(sources, true).unwrap();
        inputs.next(false).unwrap();
        assert_eq!(inputs.remaining(), Some(2));
    }

    #[test]
    fn a_long_stream_keeps_one_chunk_buffered() {
        let line = [b'y'; 999].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let data: Vec<u8> = line.iter().copied().cycle().take(line.len() * 1000).collect();
        let mut inputs = Inputs::single(Source::file(temp_file(&data), b'\n'));
        let mut count = 0;
        while inputs.next_blocking().unwrap().is_some() {
            count += 1;
            let SourceKind::Records(records) = &inputs.first else { unreachable!() };
            assert!(records.buf.capacity() <= 4 * READ_CHUNK, "{}", records.buf.capacity());
        }
        assert_eq!(count, 1000);
    }
}
