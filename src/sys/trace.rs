//! `--trace`: one strace-style line per POSIX call, filtered by category
//! as strace's `-e trace=` filters them.
//!
//! As in strace's own table of system calls, a call's category follows
//! from its name ([`category_of`]), so every `trace!` line is filed by the
//! call it names, and a traced call cannot be given two different
//! categories in two places.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Error;

bitflags::bitflags! {
    /// Which calls `--trace` prints: a set of categories, as in strace's
    /// `-e trace=process,ipc`. Parse one from such a list with
    /// [`str::parse`] (`"all"` is every category).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TraceCategories: u32 {
        /// Process lifecycle: `fork` (and `clone`), `waitpid`, `_exit`, `kill`, `setpgid`.
        const PROCESS = 1;
        /// Talking between processes: `pipe`, shared mappings (`mmap`,
        /// `munmap`, `memfd_create`, `shm_open`, `ftruncate`), rings and
        /// their doorbells.
        const IPC = 1 << 1;
        /// Descriptors: `close`, `dup2`, `open`, spill files.
        const FD = 1 << 2;
        /// Signals: `sigaction`, signals caught, and `kill` (which is
        /// also a process call).
        const SIGNAL = 1 << 3;
    }
}

/// The names [`TraceCategories`] parses, in the order the help lists them.
const NAMES: [(&str, TraceCategories); 5] = [
    ("process", TraceCategories::PROCESS),
    ("ipc", TraceCategories::IPC),
    ("fd", TraceCategories::FD),
    ("signal", TraceCategories::SIGNAL),
    ("all", TraceCategories::all()),
];

impl FromStr for TraceCategories {
    type Err = Error;

    /// A comma-separated list of `process`, `ipc`, `fd`, `signal` and
    /// `all`. An empty item or an unknown name is
    /// [`Error::InvalidArgument`] naming it.
    fn from_str(list: &str) -> Result<Self, Error> {
        list.split(',').try_fold(TraceCategories::empty(), |set, item| {
            let (_, category) = NAMES.iter().find(|(name, _)| *name == item).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown trace category {item:?} (expected process, ipc, fd, signal or all)"
                ))
            })?;
            Ok(set | *category)
        })
    }
}

impl fmt::Display for TraceCategories {
    /// The list that parses back to `self`: `all`, `process,ipc`, or the
    /// empty string for no category.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let names: Vec<&str> = NAMES
            .iter()
            .filter(|(_, c)| *c != TraceCategories::all() && self.contains(*c))
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// The call names of each category, as they begin a trace line (and
/// `caught`, for a signal caught). `kill` is in two, as in strace. A name
/// missing here is printed only under `all` (a unit test checks that every
/// `trace!` in the crate is listed).
const CALLS: [(&str, TraceCategories); 22] = [
    ("fork", TraceCategories::PROCESS),
    ("clone", TraceCategories::PROCESS),
    ("waitpid", TraceCategories::PROCESS),
    ("pidfd_open", TraceCategories::PROCESS),
    ("_exit", TraceCategories::PROCESS),
    ("kill", TraceCategories::PROCESS.union(TraceCategories::SIGNAL)),
    ("setpgid", TraceCategories::PROCESS),
    ("pipe", TraceCategories::IPC),
    ("mmap", TraceCategories::IPC),
    ("munmap", TraceCategories::IPC),
    ("memfd_create", TraceCategories::IPC),
    ("shm_open", TraceCategories::IPC),
    ("ftruncate", TraceCategories::IPC),
    ("ring", TraceCategories::IPC),
    ("doorbell", TraceCategories::IPC),
    ("close", TraceCategories::FD),
    ("dup2", TraceCategories::FD),
    ("open", TraceCategories::FD),
    ("spill", TraceCategories::FD),
    ("setrlimit", TraceCategories::FD),
    ("sigaction", TraceCategories::SIGNAL),
    ("caught", TraceCategories::SIGNAL),
];

/// The categories of a trace line's text (after `[pid] `), from the call
/// name it starts with; empty for a name not listed.
pub(crate) fn category_of(text: &str) -> TraceCategories {
    let name = text.split(['(', ' ']).next().unwrap_or_default();
    CALLS.iter().find(|(call, _)| *call == name).map_or(TraceCategories::empty(), |(_, c)| *c)
}

/// The categories being traced; empty when `--trace` is off.
static TRACE: AtomicU32 = AtomicU32::new(0);

/// Turns `--trace` on (every category) or off for this process and the
/// children it forks.
pub fn set_trace(on: bool) {
    set_trace_categories(if on { TraceCategories::all() } else { TraceCategories::empty() });
}

/// Traces only the calls of `categories` (none: tracing off), in this
/// process and the children it forks.
pub fn set_trace_categories(categories: TraceCategories) {
    // Relaxed: a plain flag word; no other memory is published through it.
    TRACE.store(categories.bits(), Ordering::Relaxed);
}

/// The categories being traced.
pub fn trace_categories() -> TraceCategories {
    TraceCategories::from_bits_truncate(TRACE.load(Ordering::Relaxed))
}

/// Whether `--trace` is on for any category.
pub fn tracing() -> bool {
    TRACE.load(Ordering::Relaxed) != 0
}

/// Prints one strace-style line, `[pid] call(args) = result`, to stderr,
/// if its call's category is traced (every line, names not listed too,
/// under `all`).
///
/// Written with one `write(2)` on fd 2, not through `std::io::stderr()`: that
/// lock may be held by another thread at `fork`, and a child must never wait
/// on it. One write per line keeps lines from different processes whole.
/// A stderr whose reader is gone (`EPIPE`) ends tracing in this process,
/// without a `SIGPIPE`.
pub(crate) fn trace_line(args: fmt::Arguments<'_>) {
    let traced = trace_categories();
    if traced.is_empty() {
        return;
    }
    let mut line = Vec::with_capacity(96);
    // Writing into a Vec cannot fail.
    let _ = write!(line, "[{}] ", super::getpid());
    let text_start = line.len();
    let _ = writeln!(line, "{args}");
    if !traced.is_all() {
        let text = std::str::from_utf8(&line[text_start..]).unwrap_or_default();
        if !traced.intersects(category_of(text)) {
            return;
        }
    }
    // SAFETY: fd 2 is only borrowed for this write; if it is closed the
    // write fails with EBADF, which is ignored like any other failure.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    // Without SIGPIPE: a trace piped into `head` must not kill a parent in
    // the middle of forking or joining its children (it would leave them
    // behind). Once the reader is gone, this process traces no more.
    if let Err(crate::error::Error::Os(e)) = super::bell::write_all_without_sigpipe(stderr, &line) {
        if e.errno == libc::EPIPE {
            set_trace_categories(TraceCategories::empty());
        }
    }
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::sys::tracing() {
            $crate::sys::trace_line(format_args!($($arg)*))
        }
    };
}
pub(crate) use trace;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_to_the_union_of_their_categories() {
        let parse = |s: &str| s.parse::<TraceCategories>();
        assert_eq!(parse("process"), Ok(TraceCategories::PROCESS));
        assert_eq!(parse("process,ipc"), Ok(TraceCategories::PROCESS | TraceCategories::IPC));
        assert_eq!(parse("fd,signal,fd"), Ok(TraceCategories::FD | TraceCategories::SIGNAL));
        assert_eq!(parse("all"), Ok(TraceCategories::all()));
        assert_eq!(parse("signal,all"), Ok(TraceCategories::all()));
        for bad in ["", "proc", "process,", "Process", "process ipc", "none"] {
            assert!(matches!(parse(bad), Err(Error::InvalidArgument(_))), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_set_prints_as_the_list_that_parses_back_to_it() {
        for set in [
            TraceCategories::all(),
            TraceCategories::PROCESS,
            TraceCategories::IPC | TraceCategories::SIGNAL,
            TraceCategories::FD | TraceCategories::PROCESS,
        ] {
            assert_eq!(set.to_string().parse::<TraceCategories>(), Ok(set), "{set}");
        }
        assert_eq!((TraceCategories::IPC | TraceCategories::PROCESS).to_string(), "process,ipc");
    }

    #[test]
    fn lines_are_filed_by_the_call_they_name() {
        assert_eq!(category_of("fork() = 42"), TraceCategories::PROCESS);
        assert_eq!(category_of("waitpid(-1) = 42 exited 0"), TraceCategories::PROCESS);
        assert_eq!(category_of("kill(42, SIGTERM)"), TraceCategories::PROCESS | TraceCategories::SIGNAL);
        assert_eq!(category_of("doorbell wait(fd 5)"), TraceCategories::IPC);
        assert_eq!(category_of("close(3)"), TraceCategories::FD);
        assert_eq!(category_of("caught SIGINT"), TraceCategories::SIGNAL);
        // A prefix of a listed name is not that name.
        assert_eq!(category_of("forking()"), TraceCategories::empty());
    }

    /// The first word of the format string of every `trace!(` in `src/`.
    fn traced_names() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let source = std::fs::read_to_string(&path).expect("read a source file");
                    // Spelt in two, or this line would be found too.
                    let needle = concat!("trace", "!(");
                    for (i, _) in source.match_indices(needle) {
                        let after = &source[i + needle.len()..];
                        // The format string is the first literal after the
                        // opening parenthesis (possibly on the next line).
                        let Some(literal) = after.trim_start().strip_prefix('"') else { continue };
                        out.push((path.display().to_string(), literal.chars().take(40).collect()));
                    }
                }
            }
        }
        let mut names = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut names);
        names
    }

    #[test]
    fn every_traced_call_in_the_crate_has_a_category() {
        let names = traced_names();
        assert!(names.len() > 10, "found too few trace! calls: {names:?}");
        for (file, text) in names {
            assert!(!category_of(&text).is_empty(), "{file}: trace line {text:?} has no category");
        }
    }
}
