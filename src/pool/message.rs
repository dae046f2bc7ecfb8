//! What travels through the pool's rings.
//!
//! Task message (parent -> worker), built in place by the parent:
//!
//! ```text
//! kind u8 = 1 | entry u64 | func u64 | check u64 | count u32 | count x (len u32, arg bytes)
//! kind u8 = 2                                                  (exit now)
//! ```
//! Result message (worker -> parent): one or more records, one per task, in
//! task order; a worker packs the results of quick tasks together (see
//! `worker`), so the parent pays one ring message for many tasks:
//!
//! ```text
//! (tag u8 | len u32 | payload) ...
//! ```
//! where the payload is the encoded result, or the panic message for
//! `Panicked`.
//!
//! `entry` and `func` are code addresses. They are valid in the worker
//! because the worker is a `fork` of the parent's program image (through
//! the zygote), never an `exec` of a new one: the same function sits at the
//! same address. `check` guards against acting on a corrupted frame.

use crate::wire::{DecodeError, Wire};

const KIND_BATCH: u8 = 1;
const KIND_EXIT: u8 = 2;
const CHECK_KEY: u64 = 0x6d70_726f_635f_7631; // "mproc_v1"

/// How a task ended, as the first byte of its result message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ResultTag {
    Ok = 0,
    Panicked = 1,
    ArgDecode = 2,
    Corrupt = 3,
}

impl ResultTag {
    pub(crate) fn from_byte(b: u8) -> Option<ResultTag> {
        Some(match b {
            0 => ResultTag::Ok,
            1 => ResultTag::Panicked,
            2 => ResultTag::ArgDecode,
            3 => ResultTag::Corrupt,
            _ => return None,
        })
    }
}

/// The type-erased entry point: decode the argument, call the function,
/// encode the result.
type Entry = fn(func: usize, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError>;

fn entry<A: Wire, R: Wire>(func: usize, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    // SAFETY: `func` was produced by `Call::new::<A, R>` from a value of
    // type `fn(A) -> R` (checked by `check`), in this same program image,
    // and this instantiation of `entry` is the one paired with it there.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let arg = A::from_bytes(arg)?;
    f(arg).encode(out);
    Ok(())
}

/// A function to run, with its entry point: what a batch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    entry: usize,
    func: usize,
}

impl Call {
    pub(crate) fn new<A: Wire, R: Wire>(f: fn(A) -> R) -> Call {
        Call { entry: entry::<A, R> as Entry as usize, func: f as usize }
    }

    fn check(&self) -> u64 {
        (self.entry as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (self.func as u64).rotate_left(17)
            ^ CHECK_KEY
    }
}

/// Bytes before the first argument of a task message.
pub(crate) const BATCH_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 4;

/// Starts a task message for `call` in `out` (cleared first), with a count
/// of 0; append arguments with [`push_arg`], then [`set_batch_count`].
pub(crate) fn begin_batch(call: Call, out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_BATCH);
    out.extend_from_slice(&(call.entry as u64).to_le_bytes());
    out.extend_from_slice(&(call.func as u64).to_le_bytes());
    out.extend_from_slice(&call.check().to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Appends one encoded argument to a task message.
pub(crate) fn push_arg<A: Wire>(out: &mut Vec<u8>, arg: &A) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    arg.encode(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends one already-encoded argument (length prefix and bytes).
#[cfg(test)]
fn push_raw_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.extend_from_slice(&(arg.len() as u32).to_le_bytes());
    out.extend_from_slice(arg);
}

/// Writes the task count into a message begun by [`begin_batch`].
pub(crate) fn set_batch_count(msg: &mut [u8], count: u32) {
    msg[BATCH_HEADER_LEN - 4..BATCH_HEADER_LEN].copy_from_slice(&count.to_le_bytes());
}

/// Where the arguments after the first `skip` ones start in a task message
/// the parent built (so its lengths are trusted).
pub(crate) fn arg_offset(msg: &[u8], skip: u32) -> usize {
    let mut offset = BATCH_HEADER_LEN;
    for _ in 0..skip {
        let mut len = [0u8; 4];
        len.copy_from_slice(&msg[offset..offset + 4]);
        offset += 4 + u32::from_le_bytes(len) as usize;
    }
    offset
}

/// Encodes a whole batch of already-encoded arguments for one function.
#[cfg(test)]
fn encode_batch<'a>(call: Call, args: impl ExactSizeIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    begin_batch(call, out);
    let count = args.len() as u32;
    for arg in args {
        push_raw_arg(out, arg);
    }
    set_batch_count(out, count);
}

/// The message that tells a worker to exit.
pub(crate) fn exit_message() -> Vec<u8> {
    vec![KIND_EXIT]
}

/// Starts a result record at the end of `out`; returns where it starts,
/// for [`finish_result`]. The payload is appended after it.
pub(crate) fn begin_result(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 5]);
    at
}

/// Completes the record begun at `at`: its tag, and the length of
/// everything appended since.
pub(crate) fn finish_result(out: &mut [u8], at: usize, tag: ResultTag) {
    let len = (out.len() - at - 5) as u32;
    out[at] = tag as u8;
    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
}

/// The records of one result message: `(tag byte, payload)` each, or an
/// error if the message is cut short (then iteration ends).
pub(crate) fn result_records(msg: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), DecodeError>> + '_ {
    let mut rest = msg;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let record = (|| {
            let head = rest.get(..5)?;
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let payload = rest.get(5..5usize.checked_add(len)?)?;
            Some((head[0], payload, &rest[5 + len..]))
        })();
        match record {
            Some((tag, payload, tail)) => {
                rest = tail;
                Some(Ok((tag, payload)))
            }
            None => {
                rest = &[];
                Some(Err(DecodeError::new("corrupt result message")))
            }
        }
    })
}

/// A decoded batch, borrowing the message bytes.
pub(crate) struct Batch<'a> {
    call: Call,
    count: u32,
    body: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The arguments, in order. Lengths were validated by the decoder.
    pub(crate) fn args(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let mut rest = self.body;
        (0..self.count).map(move |_| {
            let (len, tail) = rest.split_at(4);
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (arg, tail) = tail.split_at(len);
            rest = tail;
            arg
        })
    }

    /// Runs the batch's function on one argument.
    pub(crate) fn call(&self, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        // SAFETY: `entry` passed the check in `decode_task_message`: it is the
        // address of an `Entry` written by our parent (see module docs).
        let entry = unsafe { std::mem::transmute::<usize, Entry>(self.call.entry) };
        entry(self.call.func, arg, out)
    }
}

/// Decodes a task message: `Ok(None)` is the exit order.
pub(crate) fn decode_task_message(msg: &[u8]) -> Result<Option<Batch<'_>>, DecodeError> {
    let bad = || DecodeError::new("corrupt task message");
    let (&kind, rest) = msg.split_first().ok_or_else(bad)?;
    match kind {
        KIND_EXIT => return Ok(None),
        KIND_BATCH => {}
        _ => return Err(bad()),
    }
    if rest.len() < 28 {
        return Err(bad());
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rest[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let call = Call { entry: u64_at(0) as usize, func: u64_at(8) as usize };
    if call.check() != u64_at(16) || call.entry == 0 || call.func == 0 {
        return Err(bad());
    }
    let count = u32::from_le_bytes([rest[24], rest[25], rest[26], rest[27]]);
    let body = &rest[28..];
    // Validate every length before running anything.
    let mut walk = body;
    for _ in 0..count {
        if walk.len() < 4 {
            return Err(bad());
        }
        let len = u32::from_le_bytes([walk[0], walk[1], walk[2], walk[3]]) as usize;
        walk = walk.get(4 + len..).ok_or_else(bad)?;
    }
    if !walk.is_empty() {
        return Err(bad());
    }
    Ok(Some(Batch { call, count, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u64) -> u64 {
        x * 2
    }

    #[test]
    fn batch_round_trip_runs_the_function() {
        let args: Vec<Vec<u8>> = (1..=3u64).map(|n| n.to_bytes()).collect();
        let mut msg = Vec::new();
        encode_batch(Call::new(double as fn(u64) -> u64), args.iter().map(|a| a.as_slice()), &mut msg);
        let batch = decode_task_message(&msg).unwrap().unwrap();
        let mut out = Vec::new();
        let results: Vec<u64> = batch
            .args()
            .map(|a| {
                out.clear();
                batch.call(a, &mut out).unwrap();
                u64::from_bytes(&out).unwrap()
            })
            .collect();
        assert_eq!(results, vec![2, 4, 6]);
    }

    #[test]
    fn a_corrupted_call_is_refused_not_run() {
        let mut msg = Vec::new();
        encode_batch(Call::new(double as fn(u64) -> u64), std::iter::empty(), &mut msg);
        msg[3] ^= 0x40; // flip a bit of the entry address
        assert!(decode_task_message(&msg).is_err());
        assert!(decode_task_message(&[]).is_err());
        assert!(decode_task_message(&msg[..10]).is_err());
    }
}
