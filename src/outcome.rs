//! A task's outcome as bytes: the one format in which a result crosses
//! from a child to its parent, whether as a pool worker's result record, a
//! `fork_map` child's message or a `spawn` child's pipe.
//!
//! ```text
//! tag u8 | payload
//! ```
//! where the payload is the value's [`Wire`] encoding for [`Tag::Ok`], the
//! panic message's UTF-8 bytes for [`Tag::Panicked`], and empty otherwise.
//! (The pool frames each record with a length as well; see `pool::message`.)

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use crate::error::{Error, Result};
use crate::wire::{DecodeError, Wire};

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// It returned; the payload is its value.
    Ok = 0,
    /// It panicked; the payload is the message.
    Panicked = 1,
    /// Its argument did not decode in the worker (pool only).
    ArgDecode = 2,
    /// The worker could not read its task message (pool only).
    Corrupt = 3,
    /// The result was larger than the pool's `max_result_size` (or 4 GiB);
    /// the payload says how large (pool only).
    TooLarge = 4,
    /// A run of results of one fixed width, each of a task that returned
    /// (pool only; see `pool::message`).
    OkRun = 5,
}

impl Tag {
    #[inline]
    pub(crate) fn from_byte(b: u8) -> Option<Tag> {
        Some(match b {
            0 => Tag::Ok,
            1 => Tag::Panicked,
            2 => Tag::ArgDecode,
            3 => Tag::Corrupt,
            4 => Tag::TooLarge,
            5 => Tag::OkRun,
            _ => return None,
        })
    }
}

/// Runs `f`, catching a panic, and appends `tag | payload` to `out`.
/// Returns the panic's payload, for a caller that must re-raise it.
pub(crate) fn run<R: Wire>(f: impl FnOnce() -> R, out: &mut Vec<u8>) -> Option<Box<dyn Any + Send>> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => {
            out.push(Tag::Ok as u8);
            value.encode(out);
            None
        }
        Err(payload) => {
            out.push(Tag::Panicked as u8);
            out.extend_from_slice(panic_message(payload.as_ref()).as_bytes());
            Some(payload)
        }
    }
}

/// The outcome a tag and its payload stand for: the value's bytes, still
/// encoded, or the error the caller gets.
#[inline]
pub(crate) fn bytes_or_error(tag: u8, payload: &[u8]) -> Result<&[u8]> {
    match Tag::from_byte(tag) {
        Some(Tag::Ok) => Ok(payload),
        Some(Tag::Panicked) => {
            Err(Error::Panicked { message: String::from_utf8_lossy(payload).into_owned() })
        }
        Some(Tag::ArgDecode) => {
            Err(Error::Decode(DecodeError::new("the task's argument did not decode in the worker")))
        }
        Some(Tag::TooLarge) => Err(Error::Decode(DecodeError::new(
            "the result is larger than the pool's max_result_size (or 4 GiB)",
        ))),
        // A run is unpacked by the pool before it gets here.
        Some(Tag::Corrupt | Tag::OkRun) | None => {
            Err(Error::Decode(DecodeError::new("corrupt result frame")))
        }
    }
}

/// Decodes `tag | payload` (the whole record) into the task's value or
/// its error. An empty record is [`Error::Decode`].
pub(crate) fn decode<R: Wire>(record: &[u8]) -> Result<R> {
    let Some((&tag, payload)) = record.split_first() else {
        return Err(Error::Decode(DecodeError::new("empty result record")));
    };
    bytes_or_error(tag, payload).and_then(|bytes| R::from_bytes(bytes).map_err(Error::Decode))
}

/// The message of a caught panic: the `&str` or `String` it carried.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_and_a_panic_survive_the_round_trip() {
        let mut out = Vec::new();
        assert!(run(|| 343u64, &mut out).is_none());
        assert_eq!(decode::<u64>(&out), Ok(343));
        out.clear();
        let prev = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let payload = run(|| -> u64 { panic!("thirteen") }, &mut out);
        panic::set_hook(prev);
        assert!(payload.is_some());
        assert_eq!(decode::<u64>(&out), Err(Error::Panicked { message: "thirteen".into() }));
    }

    #[test]
    fn unknown_tags_and_empty_records_are_decode_errors() {
        assert!(matches!(decode::<u64>(&[]), Err(Error::Decode(_))));
        assert!(matches!(decode::<u64>(&[9, 1, 2]), Err(Error::Decode(_))));
        assert!(matches!(decode::<u64>(&[Tag::ArgDecode as u8]), Err(Error::Decode(_))));
    }
}
