//! What travels through the pool's rings.
//!
//! Task message (parent -> worker), built in place by the parent:
//!
//! ```text
//! kind u8 = 1 | entry u64 | func u64 | check u64 | count u32 | arg_width u32 | result_width u32 | args
//! kind u8 = 2                                                                      (exit now)
//! ```
//! The arguments are `count x (len u32, arg bytes)`, or, when the argument
//! type has a fixed length ([`Wire::FIXED_LEN`]) and `arg_width` says it,
//! one column of `count x arg_width` bytes with no lengths. `result_width`
//! is the result type's fixed length ([`VARIABLE`] if it has none): the
//! worker then packs consecutive results in one run record.
//!
//! Result message (worker -> parent): one or more records, one per task, in
//! task order; a worker packs the results of quick tasks together (see
//! `worker`), so the parent pays one ring message for many tasks:
//!
//! ```text
//! (tag u8 | len u32 | payload) ...
//! ```
//! where the payload is the encoded result, or the panic message for
//! `Panicked`; or, for tag `OkRun` (results of a fixed width `w`), `n u32`
//! then `n x w` bytes: the values of the next `n` tasks of one batch, which
//! all returned (one record where there were `n`, so the parent files them
//! with one copy).
//!
//! `entry` and `func` are code addresses. They are valid in the worker
//! because the worker is a `fork` of the parent's program image (through
//! the zygote), never an `exec` of a new one: the same function sits at the
//! same address. `check` guards against acting on a corrupted message:
//! see [`CheckKey`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::Error;
use crate::wire::{DecodeError, Wire};

const KIND_BATCH: u8 = 1;
const KIND_EXIT: u8 = 2;
/// Where `check` sits in a task message (after `kind`, `entry`, `func`).
const CHECK_AT: usize = 1 + 8 + 8;
/// Where `count` sits in a task message (after `check`).
pub(crate) const COUNT_AT: usize = CHECK_AT + 8;
/// An `arg_width` or `result_width` that says "no fixed width".
pub(crate) const VARIABLE: u32 = u32::MAX;

/// The key of the task-message check: a keyed, non-linear hash of the
/// whole sealed task message — kind, `entry`, `func`, `count`, the two
/// widths and every argument, everything but the `check` field itself.
///
/// Why keyed and non-linear: the worker calls `entry` and `func` through
/// `transmute`, so a message with a flipped bit must never pass. A linear
/// check (XORs and rotations of the fields) lets some flips cancel out — a
/// bit of `func` together with the matching bit of `check` — and a wild
/// write need only be unlucky once. Here every 16 bytes of the message go
/// through a 64 × 64 → 128-bit multiply of key-masked words whose halves are
/// folded together (the "mum" step of wyhash), so every output bit depends
/// non-linearly on every input bit: a corrupted message passes with
/// probability about 2^-64 whatever bits changed, and the random key keeps a
/// wild write from aiming at a value it cannot know. (It is no MAC against
/// a hostile worker: every worker holds the key. What keeps a hostile
/// worker from forging its siblings' messages is that it has no sibling's
/// ring mapped.) SipHash-1-3 did the same job at about a tenth of the
/// parent's speed on `Pool::map` of trivial tasks, where the parent hashes
/// ~12 bytes per task.
///
/// Why the parent and its workers agree without sending the key anywhere:
/// the keys are drawn from `RandomState` (keys from the OS) and held in a
/// static made by [`prepare_check_key`] before the pool forks its zygote,
/// which forks the workers, so each worker has a byte-identical copy.
pub(crate) struct CheckKey([u64; 4]);

/// The wide multiply, folded: every bit of the result depends on every bit
/// of both operands.
fn mum(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl CheckKey {
    /// A fresh random key.
    fn new() -> CheckKey {
        let random = RandomState::new();
        CheckKey([0u64, 1, 2, 3].map(|i| random.hash_one(i)))
    }

    /// Mixes one part of a message into `h`: 32 bytes a step in two
    /// independent lanes (so the multiplies overlap), then 16 bytes a step,
    /// the last step zero-padded (the part's length, mixed in too, tells
    /// the padding from real zeros).
    fn mix(&self, h: u64, part: &[u8]) -> u64 {
        let [k0, k1, k2, k3] = self.0;
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let (mut a, mut b) = (h, h ^ k3);
        let mut wide = part.chunks_exact(32);
        for c in wide.by_ref() {
            a = mum(word(&c[..8]) ^ k1 ^ a, word(&c[8..16]) ^ k2);
            b = mum(word(&c[16..24]) ^ k2 ^ b, word(&c[24..]) ^ k1);
        }
        let mut h = mum(a ^ k0, b ^ k3);
        let mut narrow = wide.remainder().chunks(16);
        for c in narrow.by_ref() {
            let (lo, hi) = c.split_at(c.len().min(8));
            h = mum(word(lo) ^ k1 ^ h, word(hi) ^ k2);
        }
        mum(h ^ k0, part.len() as u64 ^ k1)
    }

    /// The check of a task message: a keyed hash of everything but the
    /// check field. `msg` must be at least [`BATCH_HEADER_LEN`] bytes.
    fn check(&self, msg: &[u8]) -> u64 {
        let [k0, _, _, k3] = self.0;
        let h = self.mix(k0, &msg[..CHECK_AT]);
        let h = self.mix(h ^ k3, &msg[CHECK_AT + 8..]);
        mum(h ^ k3, k0 ^ 0x9e37_79b9_7f4a_7c15)
    }
}

/// The process's check key, made on first use.
static CHECK_KEY: OnceLock<CheckKey> = OnceLock::new();

/// Makes the process's check key now, if it does not exist yet. Must run
/// before a pool forks (its zygote and workers inherit the key): a worker
/// that made its own key would refuse every task message.
pub(crate) fn prepare_check_key() {
    check_key();
}

fn check_key() -> &'static CheckKey {
    CHECK_KEY.get_or_init(CheckKey::new)
}

/// How a task ended, as the first byte of its result record: the one
/// outcome format of the crate (see `crate::outcome`).
pub(crate) use crate::outcome::Tag as ResultTag;

/// The type-erased entry point: decode the argument, call the function,
/// encode the result.
type Entry = fn(func: usize, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError>;

/// A type's fixed width for a task message: [`VARIABLE`] unless it has
/// one that fits (a width of `u32::MAX` bytes or more travels framed).
const fn width_of(fixed: Option<usize>) -> u32 {
    match fixed {
        Some(n) if n < VARIABLE as usize => n as u32,
        _ => VARIABLE,
    }
}

fn entry<A: Wire, R: Wire>(func: usize, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    // SAFETY: `func` was produced by `Call::new::<A, R>` from a value of
    // type `fn(A) -> R` (the message passed its keyed check), in this same
    // program image,
    // and this instantiation of `entry` is the one paired with it there.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let arg = A::from_bytes(arg)?;
    f(arg).encode(out);
    Ok(())
}

/// The type-erased entry point for a column of tasks whose arguments and
/// results both have fixed widths: runs the tasks of `args` (whole
/// arguments, one after the other) in order, appending each result to
/// `out`. Before each task it publishes `2 * done + 1` in `progress`, and
/// after it `2 * done` with `done` counted up, as the worker does for one
/// task (see `worker`). It stops early, after the task, at a result that
/// is not the result type's fixed width (a `Wire` impl whose `FIXED_LEN`
/// is wrong), and, with the error, at an argument that does not decode.
/// One call for many tasks: a trivial task costs a few nanoseconds, as
/// much as the calls around it did.
type ColumnEntry = fn(
    func: usize,
    args: &[u8],
    out: &mut Vec<u8>,
    progress: &AtomicU64,
    done: &mut u64,
) -> Result<(), DecodeError>;

fn column_entry<A: Wire, R: Wire>(
    func: usize,
    args: &[u8],
    out: &mut Vec<u8>,
    progress: &AtomicU64,
    done: &mut u64,
) -> Result<(), DecodeError> {
    // SAFETY: as in `entry`: `func` came from `Call::new::<A, R>`, paired
    // with this instantiation, in this program image.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let (Some(arg_width), Some(width)) = (A::FIXED_LEN, R::FIXED_LEN) else {
        return Err(DecodeError::new("a column of a type without a fixed width"));
    };
    for arg in args.chunks_exact(arg_width.max(1)) {
        // Release: see the worker's per-task stores.
        progress.store(2 * *done + 1, Ordering::Release);
        let arg = A::from_bytes(arg)?;
        let before = out.len();
        f(arg).encode(out);
        *done += 1;
        progress.store(2 * *done, Ordering::Release);
        if out.len() - before != width {
            break;
        }
    }
    Ok(())
}

/// A function to run, with its entry point: what a batch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    entry: usize,
    func: usize,
    /// `A`'s fixed width, or [`VARIABLE`].
    arg_width: u32,
    /// `R`'s fixed width, or [`VARIABLE`].
    result_width: u32,
}

impl Call {
    pub(crate) fn new<A: Wire, R: Wire>(f: fn(A) -> R) -> Call {
        let (arg_width, result_width) = (width_of(A::FIXED_LEN), width_of(R::FIXED_LEN));
        let entry = if is_column(arg_width, result_width) {
            column_entry::<A, R> as ColumnEntry as usize
        } else {
            entry::<A, R> as Entry as usize
        };
        Call { entry, func: f as usize, arg_width, result_width }
    }

    /// The width of every argument, if they travel as a column.
    pub(crate) fn arg_width(&self) -> Option<usize> {
        (self.arg_width != VARIABLE).then_some(self.arg_width as usize)
    }

    /// The width of every result, if the worker may pack them in runs.
    pub(crate) fn result_width(&self) -> Option<usize> {
        (self.result_width != VARIABLE).then_some(self.result_width as usize)
    }
}

/// Whether a batch of these widths runs through a [`ColumnEntry`] (else
/// an [`Entry`] per task): arguments of a fixed width of at least one
/// byte, and results of a fixed width.
const fn is_column(arg_width: u32, result_width: u32) -> bool {
    arg_width != VARIABLE && arg_width > 0 && result_width != VARIABLE
}

/// Bytes before the first argument of a task message.
pub(crate) const BATCH_HEADER_LEN: usize = COUNT_AT + 4 + 4 + 4;

/// Starts a task message for `call` in `out` (cleared first), with a count
/// of 0 and no check yet; append arguments with [`push_arg`], then seal it
/// with [`set_batch_count`].
pub(crate) fn begin_batch(call: Call, out: &mut Vec<u8>) {
    out.clear();
    out.push(KIND_BATCH);
    out.extend_from_slice(&(call.entry as u64).to_le_bytes());
    out.extend_from_slice(&(call.func as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // check: set_batch_count
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&call.arg_width.to_le_bytes());
    out.extend_from_slice(&call.result_width.to_le_bytes());
}

/// Appends one encoded argument to a task message of `call` (its column,
/// or length and bytes). An argument whose encoding does not fit the `u32`
/// length prefix (4 GiB), or whose type's fixed width it does not have, is
/// refused, and the message is left as it was.
#[inline]
pub(crate) fn push_arg<A: Wire>(call: Call, out: &mut Vec<u8>, arg: &A) -> Result<(), Error> {
    let at = out.len();
    if let Some(width) = call.arg_width() {
        arg.encode(out);
        if out.len() - at != width {
            return Err(not_fixed::<A>(out, at, width));
        }
        return Ok(());
    }
    out.extend_from_slice(&[0; 4]);
    arg.encode(out);
    let Ok(len) = u32::try_from(out.len() - at - 4) else {
        return Err(argument_too_large(out, at));
    };
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// [`push_arg`]'s rare path, kept out of line: the per-task path stays small
/// enough to inline (a trivial task costs a few nanoseconds).
#[cold]
#[inline(never)]
fn argument_too_large(out: &mut Vec<u8>, at: usize) -> Error {
    let len = out.len() - at - 4;
    out.truncate(at);
    Error::InvalidArgument(format!("an argument of {len} bytes: one must encode to under 4 GiB"))
}

/// [`push_arg`]'s rare path for a `Wire` impl whose `FIXED_LEN` is wrong.
#[cold]
#[inline(never)]
fn not_fixed<A>(out: &mut Vec<u8>, at: usize, width: usize) -> Error {
    let len = out.len() - at;
    out.truncate(at);
    Error::InvalidArgument(format!(
        "a {} encoded to {len} bytes, but its Wire::FIXED_LEN says {width}",
        std::any::type_name::<A>()
    ))
}

/// Appends one already-encoded argument (length prefix and bytes).
#[cfg(test)]
fn push_raw_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.extend_from_slice(&(arg.len() as u32).to_le_bytes());
    out.extend_from_slice(arg);
}

/// Writes the task count into a message begun by [`begin_batch`] and
/// seals it: computes the check over the whole message as it now stands.
/// Call it last, after every change to the message (a message changed
/// afterwards fails its check in the worker); calling it again after a
/// change (as `Batch::split_off` does) re-seals.
pub(crate) fn set_batch_count(msg: &mut [u8], count: u32) {
    seal_with(check_key(), msg, count);
}

fn seal_with(key: &CheckKey, msg: &mut [u8], count: u32) {
    msg[COUNT_AT..COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
    let check = key.check(msg);
    msg[CHECK_AT..CHECK_AT + 8].copy_from_slice(&check.to_le_bytes());
}

/// Where the arguments after the first `skip` ones start in a task message
/// of `call` that the parent built (so its lengths are trusted).
pub(crate) fn arg_offset(call: Call, msg: &[u8], skip: u32) -> usize {
    if let Some(width) = call.arg_width() {
        return BATCH_HEADER_LEN + skip as usize * width;
    }
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
        match call.arg_width() {
            Some(_) => out.extend_from_slice(arg),
            None => push_raw_arg(out, arg),
        }
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
/// everything appended since. A payload longer than `max_payload` (the
/// pool's `max_result_size`; never more than the `u32` length prefix
/// holds, 4 GiB) becomes a `TooLarge` record saying how large it was: the
/// task fails, the parent never receives the bytes, and the records after
/// it keep their places.
#[inline]
pub(crate) fn finish_result(out: &mut Vec<u8>, at: usize, tag: ResultTag, max_payload: usize) {
    let payload = out.len() - at - 5;
    let tag = if payload > max_payload.min(u32::MAX as usize) { result_too_large(out, at) } else { tag };
    let len = (out.len() - at - 5) as u32;
    out[at] = tag as u8;
    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
}

/// [`finish_result`]'s rare path, out of line (see [`argument_too_large`]).
#[cold]
#[inline(never)]
fn result_too_large(out: &mut Vec<u8>, at: usize) -> ResultTag {
    let payload = out.len() - at - 5;
    out.truncate(at + 5);
    out.extend_from_slice(format!("{payload} bytes").as_bytes());
    ResultTag::TooLarge
}

/// The widest result a run record carries: a run grows only while it is
/// under a quarter of the ring (at most 256 MiB) and then takes one more
/// value, so with values of at most 2 GiB its length fits the record's
/// `u32`. Wider results travel as records of their own.
pub(crate) const MAX_RUN_WIDTH: usize = 1 << 31;

/// Starts a run record (tag `OkRun`) at the end of `out`; returns where it
/// starts, for [`finish_run`]. The values are appended after it.
pub(crate) fn begin_run(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 9]);
    at
}

/// Completes the run record begun at `at`, holding `n` values; a run of
/// none is removed.
pub(crate) fn finish_run(out: &mut Vec<u8>, at: usize, n: u32) {
    if n == 0 {
        out.truncate(at);
        return;
    }
    let len = (out.len() - at - 5) as u32;
    out[at] = ResultTag::OkRun as u8;
    out[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
    out[at + 5..at + 9].copy_from_slice(&n.to_le_bytes());
}

/// The values of a run record's payload, for results of `width` bytes:
/// how many, and their bytes. An error if the payload is not `n` values.
pub(crate) fn run_values(payload: &[u8], width: usize) -> Result<(u32, &[u8]), DecodeError> {
    let bad = || DecodeError::new("corrupt result run");
    let (n, values) = payload.split_first_chunk::<4>().ok_or_else(bad)?;
    let n = u32::from_le_bytes(*n);
    if n == 0 || (n as usize).checked_mul(width) != Some(values.len()) {
        return Err(bad());
    }
    Ok((n, values))
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
        let width = self.call.arg_width();
        (0..self.count).map(move |_| {
            let len = match width {
                Some(width) => width,
                None => {
                    let (len, tail) = rest.split_at(4);
                    rest = tail;
                    u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize
                }
            };
            let (arg, tail) = rest.split_at(len);
            rest = tail;
            arg
        })
    }

    /// The width of every result, if they may travel in runs.
    pub(crate) fn result_width(&self) -> Option<usize> {
        self.call.result_width()
    }

    /// Runs the batch's function on one argument.
    /// Only for a batch that is not a [`Batch::column`].
    pub(crate) fn call(&self, arg: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        if self.column().is_some() {
            return Err(DecodeError::new("a column batch run one task at a time"));
        }
        // SAFETY: `entry` passed the check in `decode_task_message`: it is the
        // address of an `Entry` written by our parent (see module docs), as
        // the widths (checked with it) say.
        let entry = unsafe { std::mem::transmute::<usize, Entry>(self.call.entry) };
        entry(self.call.func, arg, out)
    }

    /// For a batch whose tasks run as a column (see [`ColumnEntry`]): its
    /// arguments, and the width of each argument and of each result.
    pub(crate) fn column(&self) -> Option<(&'a [u8], usize, usize)> {
        let (arg, result) = (self.call.arg_width, self.call.result_width);
        is_column(arg, result).then_some((self.body, arg as usize, result as usize))
    }

    /// Runs the tasks of `args` (a slice of whole arguments of this
    /// column batch) through its [`ColumnEntry`].
    pub(crate) fn run_column(
        &self,
        args: &[u8],
        out: &mut Vec<u8>,
        progress: &AtomicU64,
        done: &mut u64,
    ) -> Result<(), DecodeError> {
        if self.column().is_none() {
            return Err(DecodeError::new("a batch of tasks run as a column"));
        }
        // SAFETY: `entry` passed the check in `decode_task_message`: it is
        // the address of a `ColumnEntry` written by our parent, as the
        // widths (checked with it) say.
        let entry = unsafe { std::mem::transmute::<usize, ColumnEntry>(self.call.entry) };
        entry(self.call.func, args, out, progress, done)
    }
}

/// Decodes a task message: `Ok(None)` is the exit order. A batch whose
/// check fails (any change since the parent sealed it) is an error.
pub(crate) fn decode_task_message(msg: &[u8]) -> Result<Option<Batch<'_>>, DecodeError> {
    decode_with(check_key(), msg)
}

fn decode_with<'a>(key: &CheckKey, msg: &'a [u8]) -> Result<Option<Batch<'a>>, DecodeError> {
    let bad = || DecodeError::new("corrupt task message");
    let (&kind, rest) = msg.split_first().ok_or_else(bad)?;
    match kind {
        KIND_EXIT => return Ok(None),
        KIND_BATCH => {}
        _ => return Err(bad()),
    }
    if rest.len() < BATCH_HEADER_LEN - 1 {
        return Err(bad());
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&rest[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let call = Call {
        entry: u64_at(0) as usize,
        func: u64_at(8) as usize,
        arg_width: u32_at(28),
        result_width: u32_at(32),
    };
    // `msg` is at least BATCH_HEADER_LEN bytes (checked above).
    if key.check(msg) != u64_at(16) || call.entry == 0 || call.func == 0 {
        return Err(bad());
    }
    let count = u32_at(24);
    let body = &rest[BATCH_HEADER_LEN - 1..];
    // Validate every length before running anything.
    if let Some(width) = call.arg_width() {
        if (count as usize).checked_mul(width) != Some(body.len()) {
            return Err(bad());
        }
        return Ok(Some(Batch { call, count, body }));
    }
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

    fn length(s: String) -> u64 {
        s.len() as u64
    }

    #[test]
    fn batch_round_trip_runs_the_function() {
        let args: Vec<Vec<u8>> = ["a", "bb", "ccc"].iter().map(|s| s.to_string().to_bytes()).collect();
        let mut msg = Vec::new();
        encode_batch(Call::new(length as fn(String) -> u64), args.iter().map(|a| a.as_slice()), &mut msg);
        let batch = decode_task_message(&msg).unwrap().unwrap();
        assert!(batch.column().is_none(), "a String argument has no fixed width");
        let mut out = Vec::new();
        let results: Vec<u64> = batch
            .args()
            .map(|a| {
                out.clear();
                batch.call(a, &mut out).unwrap();
                u64::from_bytes(&out).unwrap()
            })
            .collect();
        assert_eq!(results, vec![1, 2, 3]);
    }

    #[test]
    fn a_column_batch_runs_as_one_call_and_counts_its_tasks() {
        let args: Vec<Vec<u8>> = (1..=3u64).map(|n| n.to_bytes()).collect();
        let mut msg = Vec::new();
        encode_batch(Call::new(double as fn(u64) -> u64), args.iter().map(|a| a.as_slice()), &mut msg);
        assert_eq!(msg.len(), BATCH_HEADER_LEN + 3 * 8, "a column has no lengths");
        let batch = decode_task_message(&msg).unwrap().unwrap();
        let Some((column, 8, 8)) = batch.column() else { panic!("u64 -> u64 is a column of 8-byte values") };
        assert!(batch.call(&column[..8], &mut Vec::new()).is_err(), "a column has no per-task entry");
        let (progress, mut done, mut out) = (AtomicU64::new(0), 10u64, Vec::new());
        batch.run_column(column, &mut out, &progress, &mut done).unwrap();
        assert_eq!((done, progress.load(Ordering::Relaxed)), (13, 26));
        let results: Vec<u64> = out.chunks(8).map(|v| u64::from_bytes(v).unwrap()).collect();
        assert_eq!(results, vec![2, 4, 6]);
        // A column whose length is not a whole number of arguments is refused.
        let mut cut = msg.clone();
        cut.pop();
        set_batch_count(&mut cut, 3);
        assert!(decode_task_message(&cut).is_err());
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

    fn triple(x: u64) -> u64 {
        x * 3
    }

    /// A sealed task message of three arguments.
    fn sealed() -> Vec<u8> {
        let args: Vec<Vec<u8>> = [7u64, 1 << 40, u64::MAX].iter().map(|n| n.to_bytes()).collect();
        let mut msg = Vec::new();
        encode_batch(Call::new(triple as fn(u64) -> u64), args.iter().map(|a| a.as_slice()), &mut msg);
        msg
    }

    fn flipped(msg: &[u8], bits: &[usize]) -> Vec<u8> {
        let mut m = msg.to_vec();
        for &bit in bits {
            m[bit / 8] ^= 1 << (bit % 8);
        }
        m
    }

    /// Whether the worker would run anything from `msg` (the exit order,
    /// which a flip of the kind byte can make, runs nothing).
    fn would_run(msg: &[u8]) -> bool {
        matches!(decode_task_message(msg), Ok(Some(_)))
    }

    #[test]
    fn every_one_and_two_bit_flip_of_the_header_is_refused() {
        let msg = sealed();
        assert!(would_run(&msg));
        let bits = BATCH_HEADER_LEN * 8;
        for i in 0..bits {
            assert!(!would_run(&flipped(&msg, &[i])), "flip of header bit {i} passed");
            for j in i + 1..bits {
                assert!(!would_run(&flipped(&msg, &[i, j])), "flip of header bits {i} and {j} passed");
            }
        }
    }

    #[test]
    fn bit_flips_in_the_arguments_are_refused() {
        let msg = sealed();
        let (start, bits) = (BATCH_HEADER_LEN * 8, msg.len() * 8);
        // Every single flip, and a deterministic sample of pairs (one in
        // the arguments, one anywhere).
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for i in start..bits {
            assert!(!would_run(&flipped(&msg, &[i])), "flip of argument bit {i} passed");
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let j = (x % bits as u64) as usize;
                if j != i {
                    assert!(!would_run(&flipped(&msg, &[i, j])), "flip of bits {i} and {j} passed");
                }
            }
        }
    }

    #[test]
    fn a_fresh_key_gives_another_check_and_refuses_the_old_seal() {
        let (a, b) = (CheckKey::new(), CheckKey::new());
        let mut msg = sealed();
        seal_with(&a, &mut msg, 3);
        let with_a = msg[CHECK_AT..CHECK_AT + 8].to_vec();
        assert!(matches!(decode_with(&a, &msg), Ok(Some(_))));
        assert!(decode_with(&b, &msg).is_err(), "another key accepted the message");
        seal_with(&b, &mut msg, 3);
        assert_ne!(msg[CHECK_AT..CHECK_AT + 8], with_a[..], "two keys, one check");
        assert!(matches!(decode_with(&b, &msg), Ok(Some(_))));
    }

    #[test]
    fn the_check_covers_the_count_set_last() {
        // A count patched in without resealing (what split_off must never
        // do) is refused; resealing with the new count is accepted.
        let mut msg = sealed();
        msg[COUNT_AT] = 2;
        assert!(!would_run(&msg));
        let cut = arg_offset(Call::new(triple as fn(u64) -> u64), &msg, 2);
        msg.truncate(cut);
        assert!(!would_run(&msg));
        set_batch_count(&mut msg, 2);
        assert_eq!(decode_task_message(&msg).map(|b| b.map(|b| b.args().count())), Ok(Some(2)));
    }
}
