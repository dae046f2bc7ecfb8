//! The `Wire` encoding: how values cross a process boundary as bytes.
//!
//! A forked child sends its result to the parent through a pipe, and pool
//! workers exchange tasks and results through shared memory. Both ends run
//! the same binary, so the format needs no schema and no versioning. It must
//! be exact (a NaN payload comes back as it went), compact, and safe to
//! decode when the bytes are cut short or garbled — a worker killed in the
//! middle of a write, or a bug on the other side.
//!
//! # Format
//!
//! Fixed-width little-endian on every host, no padding, no field names:
//!
//! | Type | Bytes |
//! |---|---|
//! | `u8` … `u128`, `i8` … `i128` | `size_of` bytes, little-endian, two's complement |
//! | `usize`, `isize` | 8 bytes, as `u64` / `i64` (decoding a value that does not fit is an error) |
//! | `f32`, `f64` | the IEEE 754 bits (`to_bits`) as `u32` / `u64`: NaN payloads and `-0.0` survive |
//! | `bool` | 1 byte, `0` or `1`; any other byte is an error |
//! | `char` | 4 bytes, the scalar value as `u32`; surrogates and values above `0x10FFFF` are errors |
//! | `()` | nothing |
//! | `String` | the length in bytes as `u64`, then the UTF-8 bytes (validated on decode) |
//! | `Vec<T>` | the element count as `u64`, then each element |
//! | `[T; N]` | the `N` elements; no length |
//! | `Option<T>` | `0`; or `1`, then the value |
//! | `Result<T, E>` | `0`, then the `Ok` value; or `1`, then the `Err` value |
//! | `Box<T>` | the same as `T` |
//! | `(A,)` … `(A, B, C, D, E, F)` | each element in order |
//!
//! ```
//! use mproc::Wire;
//!
//! let bytes = (7u16, Some("hé".to_string())).to_bytes();
//! assert_eq!(bytes, [7, 0, /* Some */ 1, /* length */ 3, 0, 0, 0, 0, 0, 0, 0, b'h', 0xc3, 0xa9]);
//! assert_eq!(<(u16, Option<String>)>::from_bytes(&bytes)?, (7, Some("hé".to_string())));
//! # Ok::<(), mproc::DecodeError>(())
//! ```
//!
//! Every value has exactly one encoding, and [`Wire::from_bytes`] accepts
//! only that: a `bool` byte of `2`, an `Option` tag of `7`, or a byte left
//! over after the value are all errors.
//!
//! # Decoding hostile bytes
//!
//! Truncated or malformed input gives a [`DecodeError`], never a panic, and
//! the module has no `unsafe`. A length prefix is checked against the bytes
//! that are left before anything is allocated: a `Vec<u64>` claiming 2⁶⁰
//! elements with 16 bytes left fails at once (each type declares, in
//! [`Wire::MIN_ENCODED_LEN`], the fewest bytes a value can take). Elements
//! that encode to no bytes at all, such as in `Vec<()>`, leave the length
//! prefix as the only evidence, so such a vector may hold at most
//! [`MAX_ZERO_WIDTH_LEN`] elements.
//!
//! The rule, exactly: **memory reserved up front while decoding is bounded
//! by the input's length** (a lying length prefix costs nothing); **what the
//! type's in-memory size makes of the input is not**. A decoded value takes
//! its in-memory size, whatever it took on the wire: an `Option<[u64; 64]>`
//! is 1 byte on the wire when `None` and 520 bytes in memory, so 1 MiB of
//! zero bytes (after the length prefix) decoded as
//! `Vec<Option<[u64; 64]>>` is a valid vector of 1,048,576 `None`s: 545 MB
//! of elements, in an allocation that reaches about 1 GiB as the vector
//! grows by doubling. The
//! ratio is the type's: in-memory size over [`Wire::MIN_ENCODED_LEN`] per
//! element, nested vectors multiplying it. A receiver of untrusted bytes
//! bounds what it can cost by the types it decodes into (close to 1 for
//! `Vec<u8>`, `String`, numbers), or by decoding with
//! [`from_bytes_within`], which counts the memory of every `Vec`, `String`
//! and `Box` before allocating it and refuses past a limit (the pool
//! decodes every result that way, within its `max_result_size`).
//!
//! Decoding recurses once per level of nesting in the *type*; a recursive
//! type of your own (a linked list through `Box`) lets the input choose the
//! depth, and deep enough input overflows the stack.
//!
//! # Why not serde
//!
//! serde and a format crate would be two more dependencies (mproc has four:
//! libc, nix, errno and clap) for a small job: what crosses a process
//! boundary here is task arguments and results — numbers, strings, vectors,
//! tuples — between two copies of the same binary. A few hundred
//! lines written for it are also easy to audit for the property that matters
//! most: garbage in gives an error out, not a panic or a gigabyte allocation.
//!
//! # Your own types
//!
//! Encode the fields in order; decode them in the same order. An enum writes
//! a tag first and rejects tags it does not know:
//!
//! ```
//! use mproc::{DecodeError, Wire};
//!
//! #[derive(Debug, PartialEq)]
//! enum Shape {
//!     Circle { radius: f64 },
//!     Polygon { name: String, corners: Vec<(i32, i32)> },
//! }
//!
//! impl Wire for Shape {
//!     fn encode(&self, out: &mut Vec<u8>) {
//!         match self {
//!             Shape::Circle { radius } => {
//!                 0u8.encode(out);
//!                 radius.encode(out);
//!             }
//!             Shape::Polygon { name, corners } => {
//!                 1u8.encode(out);
//!                 name.encode(out);
//!                 corners.encode(out);
//!             }
//!         }
//!     }
//!
//!     fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
//!         match u8::decode(input)? {
//!             0 => Ok(Shape::Circle { radius: f64::decode(input)? }),
//!             1 => Ok(Shape::Polygon { name: String::decode(input)?, corners: Vec::decode(input)? }),
//!             _ => Err(DecodeError::new("unknown Shape tag").for_type::<Shape>()),
//!         }
//!     }
//! }
//!
//! let square = Shape::Polygon { name: "square".into(), corners: vec![(0, 0), (0, 1), (1, 1), (1, 0)] };
//! assert_eq!(Shape::from_bytes(&square.to_bytes())?, square);
//! assert_eq!(Shape::from_bytes(&[9]).unwrap_err().reason(), "unknown Shape tag");
//! # Ok::<(), DecodeError>(())
//! ```
//!
//! The default [`Wire::MIN_ENCODED_LEN`] of 1 is right for any type that
//! always writes at least one byte; a type that can encode to nothing must
//! set it to 0.
//!
//! A type whose every value encodes to the same number of bytes (a point of
//! two `f64`s, an RGB triple) may say so in [`Wire::FIXED_LEN`]: the pool
//! then moves its values as columns, with no length in front of each, and
//! a worker runs a whole column of tasks through one call (for tasks of a
//! few nanoseconds, several times faster). Its `decode` must accept every
//! encoding its `encode` writes, as always; the pool checks each value's
//! length as it encodes it.
//!
//! ```
//! use mproc::{DecodeError, Wire};
//!
//! struct Point { x: f64, y: f64 }
//!
//! impl Wire for Point {
//!     const MIN_ENCODED_LEN: usize = 16;
//!     const FIXED_LEN: Option<usize> = Some(16);
//!
//!     fn encode(&self, out: &mut Vec<u8>) {
//!         (self.x, self.y).encode(out);
//!     }
//!
//!     fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
//!         let (x, y) = <(f64, f64)>::decode(input)?;
//!         Ok(Point { x, y })
//!     }
//! }
//! assert_eq!(Point { x: 1.0, y: 2.0 }.to_bytes().len(), 16);
//! assert_eq!(<(f64, f64)>::FIXED_LEN, Some(16));
//! ```

use std::fmt;

/// The most elements a `Vec` may hold when its element type can encode to
/// no bytes (`Vec<()>`, `Vec<[u8; 0]>`); a longer one fails to decode.
///
/// Such a vector's length prefix is the only evidence of its length, so
/// without a limit eight hostile bytes could make the decoder loop 2⁶⁴ times.
pub const MAX_ZERO_WIDTH_LEN: usize = 1 << 16;

const TRUNCATED: &str = "input ends early";
const LENGTH_EXCEEDS_INPUT: &str = "length prefix exceeds the remaining input";
const TOO_MANY_ZERO_WIDTH: &str = "too many zero-byte elements";
const TRAILING_BYTES: &str = "trailing bytes after the value";
const OVER_LIMIT: &str = "the decoded value would exceed its memory limit";

std::thread_local! {
    /// Bytes of memory the value being decoded on this thread may still
    /// take, while [`from_bytes_within`] runs (`usize::MAX` otherwise).
    static DECODE_BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Counts `bytes` of memory a value being decoded is about to take against
/// the limit of [`from_bytes_within`], if one is in force.
fn charge<T: ?Sized>(bytes: usize) -> Result<(), DecodeError> {
    DECODE_BUDGET.with(|budget| match budget.get() {
        // No limit in force: nothing to count.
        usize::MAX => Ok(()),
        left => match left.checked_sub(bytes) {
            Some(left) => {
                budget.set(left);
                Ok(())
            }
            None => Err(DecodeError::new(OVER_LIMIT).for_type::<T>()),
        },
    })
}

/// [`Wire::from_bytes`], refusing with a [`DecodeError`] a value that would
/// take more than `limit` bytes of memory once decoded: the elements of
/// every `Vec`, the bytes of every `String`, every `Box`'s contents. The
/// check comes before the allocation, so bytes that would decode into
/// gigabytes (`None`s decoded as `Vec<Option<[u64; 64]>>`, 520 bytes each)
/// cost nothing. Memory a type of your own allocates in its `decode` is
/// not counted (use the crate's types inside it, and it is). A vector that
/// grows as it decodes may briefly hold up to twice its elements' size.
///
/// ```
/// use mproc::wire::{from_bytes_within, Wire};
/// let bytes = vec![None::<[u64; 64]>; 1000].to_bytes(); // 8 + 1000 bytes
/// assert!(from_bytes_within::<Vec<Option<[u64; 64]>>>(&bytes, 100_000).is_err());
/// assert_eq!(from_bytes_within::<Vec<Option<[u64; 64]>>>(&bytes, 1 << 20).unwrap().len(), 1000);
/// ```
pub fn from_bytes_within<T: Wire>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    /// Gives the outer limit back, less what this call used, however
    /// decoding ends (a panic in a `decode` of the caller's included): a
    /// nested call cannot hand back what it spent.
    struct Restore {
        outer: usize,
        start: usize,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODE_BUDGET.with(|budget| {
                let used = self.start.saturating_sub(budget.get());
                // Outside every limit (usize::MAX) nothing is counted.
                let left =
                    if self.outer == usize::MAX { usize::MAX } else { self.outer.saturating_sub(used) };
                budget.set(left);
            });
        }
    }
    let start = DECODE_BUDGET.with(|budget| {
        let outer = budget.get();
        budget.set(limit.min(outer));
        Restore { outer, start: limit.min(outer) }
    });
    let _restore = start;
    T::from_bytes(bytes)
}

/// Why bytes did not decode.
///
/// Carries a short fixed reason, the type being decoded when the problem was
/// found (the innermost one), and — when the error comes from
/// [`Wire::from_bytes`] — a byte offset: how far decoding had got when it
/// gave up. The built-in types fail without consuming the bad value, so for
/// them the offset is where that value starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    reason: &'static str,
    type_name: Option<&'static str>,
    offset: Option<usize>,
}

impl DecodeError {
    /// An error with only a reason, such as `"unknown Shape tag"`.
    pub fn new(reason: &'static str) -> DecodeError {
        DecodeError { reason, type_name: None, offset: None }
    }

    /// Records the type being decoded (as [`std::any::type_name`] spells it).
    pub fn for_type<T: ?Sized>(mut self) -> DecodeError {
        self.type_name = Some(std::any::type_name::<T>());
        self
    }

    /// The short reason, for example `"input ends early"`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The full name of the type being decoded, if recorded.
    pub fn type_name(&self) -> Option<&'static str> {
        self.type_name
    }

    /// How far into the input decoding had got when it failed, if known.
    pub fn offset(&self) -> Option<usize> {
        self.offset
    }

    /// Records the offset unless a more precise one is already there.
    fn at(mut self, offset: usize) -> DecodeError {
        self.offset.get_or_insert(offset);
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)?;
        if let Some(name) = self.type_name {
            write!(f, " while decoding {}", short_type_name(name))?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// `alloc::vec::Vec<alloc::string::String>` → `Vec<String>`: a person wants
/// the type as they wrote it, not the paths of the standard library.
fn short_type_name(name: &str) -> String {
    let mut short = String::with_capacity(name.len());
    let mut segment_start = 0;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            short.truncate(segment_start);
        } else {
            short.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                segment_start = short.len();
            }
        }
    }
    short
}

/// A value that can be written to bytes and read back, in the format
/// described in the [module documentation](self).
pub trait Wire: Sized {
    /// The fewest bytes any value of this type encodes to.
    ///
    /// Decoding a `Vec` uses it to reject, before allocating, a length
    /// prefix that the remaining input cannot hold. It must never exceed the
    /// true minimum, or valid input is rejected. The default, 1, is right for
    /// a type that always writes at least one byte.
    const MIN_ENCODED_LEN: usize = 1;

    /// `Some(n)` if every value of this type encodes to exactly `n` bytes.
    ///
    /// The pool sends the arguments and results of such types as one
    /// column per batch, with no length in front of each value, and runs a
    /// column of tasks through one call (see [`Pool::map`](crate::Pool::map)):
    /// numbers, `bool`, `char`, `()`, and tuples, arrays and boxes of them
    /// say so. The default, `None`, is right for every type. A type that
    /// says `Some(n)` and then encodes a value to another length costs
    /// speed (that result travels alone) or, for an argument, fails the
    /// call with [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// (each argument's length is checked as it is encoded); never a wrong
    /// answer. `()` says `Some(0)`: its results travel in runs, but
    /// arguments of no bytes run one call per task.
    const FIXED_LEN: Option<usize> = None;

    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes one value from the front of `input` and advances `input` past it.
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError>;

    /// The encoding of `self` as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a value that must occupy all of `bytes`; on error, the
    /// [`DecodeError::offset`] says how far decoding got.
    #[inline]
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut rest = bytes;
        let value = Self::decode(&mut rest).map_err(|e| e.at(bytes.len() - rest.len()))?;
        if !rest.is_empty() {
            let consumed = bytes.len() - rest.len();
            return Err(DecodeError::new(TRAILING_BYTES).for_type::<Self>().at(consumed));
        }
        Ok(value)
    }

    /// Encodes each item in turn (the elements of a `Vec` or an array).
    ///
    /// A hook for bulk copies: `u8` overrides it with one `memcpy`. The
    /// default is right for every type.
    fn encode_slice(items: &[Self], out: &mut Vec<u8>) {
        for item in items {
            item.encode(out);
        }
    }

    /// Decodes exactly `len` values (the elements of a `Vec` or an array).
    ///
    /// A hook for bulk copies: `u8` overrides it with one `memcpy`. For a
    /// `Vec`, `len` has already been checked against
    /// [`MIN_ENCODED_LEN`](Wire::MIN_ENCODED_LEN) and the remaining input.
    fn decode_vec(input: &mut &[u8], len: usize) -> Result<Vec<Self>, DecodeError> {
        // Reserve no more memory than the input has bytes: a type can be
        // far larger in memory than on the wire (`Option<[u64; 64]>` is one
        // byte when `None`), and `len` may still be a lie.
        let capacity = len.min(input.len() / std::mem::size_of::<Self>().max(1));
        let mut items = Vec::with_capacity(capacity);
        for _ in 0..len {
            items.push(Self::decode(input)?);
        }
        Ok(items)
    }
}

/// Splits `n` bytes off the front of `input`; `T` names the type in the error.
#[inline]
fn take<'a, T: ?Sized>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if input.len() < n {
        return Err(DecodeError::new(TRUNCATED).for_type::<T>());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// Reads `N` bytes and converts them with `convert`, which returns `None`
/// for a byte pattern that is not a valid `T`. On any error `input` is left
/// where it was, so [`Wire::from_bytes`] reports where the value starts.
#[inline]
fn read_fixed<T, const N: usize>(
    input: &mut &[u8],
    invalid: &'static str,
    convert: impl FnOnce([u8; N]) -> Option<T>,
) -> Result<T, DecodeError> {
    let mut rest = *input;
    let head = take::<T>(&mut rest, N)?;
    let bytes = <[u8; N]>::try_from(head).map_err(|_| DecodeError::new(TRUNCATED).for_type::<T>())?;
    let value = convert(bytes).ok_or_else(|| DecodeError::new(invalid).for_type::<T>())?;
    *input = rest;
    Ok(value)
}

/// Reads the tag byte of `Seq` (an `Option` or `Result`): `false` for 0, `true` for 1.
fn read_tag<Seq>(input: &mut &[u8], invalid: &'static str) -> Result<bool, DecodeError> {
    let mut rest = *input;
    let tag = read_fixed::<u8, 1>(&mut rest, "", |[b]| Some(b)).map_err(|e| e.for_type::<Seq>())?;
    let is_second = match tag {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::new(invalid).for_type::<Seq>()),
    };
    *input = rest;
    Ok(is_second)
}

/// Reads a `u64` length prefix for `Seq`.
fn read_len<Seq>(input: &mut &[u8]) -> Result<usize, DecodeError> {
    read_fixed::<usize, 8>(input, "length does not fit in usize", |b| {
        usize::try_from(u64::from_le_bytes(b)).ok()
    })
    .map_err(|e| e.for_type::<Seq>())
}

/// Rejects a `Vec<T>` length that the remaining input cannot hold.
fn check_count<T: Wire>(len: usize, remaining: usize) -> Result<(), DecodeError> {
    let (fits, reason) = match T::MIN_ENCODED_LEN {
        0 => (len <= MAX_ZERO_WIDTH_LEN, TOO_MANY_ZERO_WIDTH),
        min => (len <= remaining / min, LENGTH_EXCEEDS_INPUT),
    };
    if fits {
        Ok(())
    } else {
        Err(DecodeError::new(reason).for_type::<Vec<T>>())
    }
}

/// The fixed length of two values written one after the other.
const fn fixed_sum(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => a.checked_add(b),
        _ => None,
    }
}

impl Wire for u8 {
    const MIN_ENCODED_LEN: usize = 1;
    const FIXED_LEN: Option<usize> = Some(1);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "", |[b]: [u8; 1]| Some(b))
    }

    fn encode_slice(items: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(items);
    }

    fn decode_vec(input: &mut &[u8], len: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(take::<[u8]>(input, len)?.to_vec())
    }
}

/// Decodes `len` fixed-width values with one bounds check for the whole
/// run instead of one per element (seven times faster for `Vec<u32>`).
fn decode_fixed_run<T, const N: usize>(
    input: &mut &[u8],
    len: usize,
    convert: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>, DecodeError> {
    let total = len.checked_mul(N).ok_or_else(|| DecodeError::new(LENGTH_EXCEEDS_INPUT).for_type::<[T]>())?;
    let bytes = take::<[T]>(input, total)?;
    let values = bytes.chunks_exact(N).map(|chunk| {
        let mut raw = [0; N];
        raw.copy_from_slice(chunk);
        convert(raw)
    });
    Ok(values.collect())
}

macro_rules! wire_int {
    ($($int:ty),*) => {$(
        impl Wire for $int {
            const MIN_ENCODED_LEN: usize = std::mem::size_of::<$int>();
            const FIXED_LEN: Option<usize> = Some(std::mem::size_of::<$int>());

            #[inline]
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            #[inline]
            fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
                read_fixed(input, "", |b| Some(<$int>::from_le_bytes(b)))
            }

            fn encode_slice(items: &[Self], out: &mut Vec<u8>) {
                out.reserve(std::mem::size_of_val(items));
                for item in items {
                    out.extend_from_slice(&item.to_le_bytes());
                }
            }

            fn decode_vec(input: &mut &[u8], len: usize) -> Result<Vec<Self>, DecodeError> {
                decode_fixed_run(input, len, <$int>::from_le_bytes)
            }
        }
    )*};
}

wire_int!(u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl Wire for usize {
    const MIN_ENCODED_LEN: usize = 8;
    const FIXED_LEN: Option<usize> = Some(8);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        // Lossless: mproc supports only targets where usize is at most 64 bits.
        (*self as u64).encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "value does not fit in usize", |b| usize::try_from(u64::from_le_bytes(b)).ok())
    }
}

impl Wire for isize {
    const MIN_ENCODED_LEN: usize = 8;
    const FIXED_LEN: Option<usize> = Some(8);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        // Lossless: mproc supports only targets where isize is at most 64 bits.
        (*self as i64).encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "value does not fit in isize", |b| isize::try_from(i64::from_le_bytes(b)).ok())
    }
}

impl Wire for f32 {
    const MIN_ENCODED_LEN: usize = 4;
    const FIXED_LEN: Option<usize> = Some(4);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.to_bits().encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "", |b| Some(f32::from_bits(u32::from_le_bytes(b))))
    }

    fn decode_vec(input: &mut &[u8], len: usize) -> Result<Vec<Self>, DecodeError> {
        decode_fixed_run(input, len, |b| f32::from_bits(u32::from_le_bytes(b)))
    }
}

impl Wire for f64 {
    const MIN_ENCODED_LEN: usize = 8;
    const FIXED_LEN: Option<usize> = Some(8);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        self.to_bits().encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "", |b| Some(f64::from_bits(u64::from_le_bytes(b))))
    }

    fn decode_vec(input: &mut &[u8], len: usize) -> Result<Vec<Self>, DecodeError> {
        decode_fixed_run(input, len, |b| f64::from_bits(u64::from_le_bytes(b)))
    }
}

impl Wire for bool {
    const MIN_ENCODED_LEN: usize = 1;
    const FIXED_LEN: Option<usize> = Some(1);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "invalid bool (not 0 or 1)", |[b]: [u8; 1]| match b {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
    }
}

impl Wire for char {
    const MIN_ENCODED_LEN: usize = 4;
    const FIXED_LEN: Option<usize> = Some(4);

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        u32::from(*self).encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        read_fixed(input, "invalid char (not a Unicode scalar value)", |b| {
            char::from_u32(u32::from_le_bytes(b))
        })
    }
}

impl Wire for () {
    const MIN_ENCODED_LEN: usize = 0;
    const FIXED_LEN: Option<usize> = Some(0);

    #[inline]
    fn encode(&self, _out: &mut Vec<u8>) {}

    #[inline]
    fn decode(_input: &mut &[u8]) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Wire for String {
    const MIN_ENCODED_LEN: usize = 8;

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u64).encode(out);
        out.extend_from_slice(self.as_bytes());
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let mut rest = *input;
        let len = read_len::<Self>(&mut rest)?;
        if len > rest.len() {
            return Err(DecodeError::new(LENGTH_EXCEEDS_INPUT).for_type::<Self>());
        }
        let bytes = take::<Self>(&mut rest, len)?;
        charge::<Self>(len)?;
        // Validate before copying, so garbage costs no allocation.
        let text =
            std::str::from_utf8(bytes).map_err(|_| DecodeError::new("invalid UTF-8").for_type::<Self>())?;
        *input = rest;
        Ok(text.to_owned())
    }
}

impl<T: Wire> Wire for Vec<T> {
    const MIN_ENCODED_LEN: usize = 8;

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u64).encode(out);
        T::encode_slice(self, out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let mut rest = *input;
        let len = read_len::<Self>(&mut rest)?;
        check_count::<T>(len, rest.len())?;
        charge::<Self>(len.saturating_mul(std::mem::size_of::<T>()))?;
        *input = rest;
        T::decode_vec(input, len)
    }
}

impl<T: Wire, const N: usize> Wire for [T; N] {
    const MIN_ENCODED_LEN: usize = N.saturating_mul(T::MIN_ENCODED_LEN);
    const FIXED_LEN: Option<usize> = match T::FIXED_LEN {
        Some(n) => n.checked_mul(N),
        None => None,
    };

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        T::encode_slice(self, out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        // Through a Vec because building an array element by element, with
        // an early return on error, needs either unstable APIs or unsafe.
        let items = T::decode_vec(input, N)?;
        <[T; N]>::try_from(items).map_err(|_| {
            DecodeError::new("decode_vec returned the wrong number of elements").for_type::<Self>()
        })
    }
}

impl<T: Wire> Wire for Option<T> {
    const MIN_ENCODED_LEN: usize = 1;

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.encode(out);
            }
        }
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        if read_tag::<Self>(input, "invalid Option tag (not 0 or 1)")? {
            Ok(Some(T::decode(input)?))
        } else {
            Ok(None)
        }
    }
}

impl<T: Wire, E: Wire> Wire for Result<T, E> {
    const MIN_ENCODED_LEN: usize = 1usize.saturating_add(if T::MIN_ENCODED_LEN < E::MIN_ENCODED_LEN {
        T::MIN_ENCODED_LEN
    } else {
        E::MIN_ENCODED_LEN
    });

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Ok(value) => {
                out.push(0);
                value.encode(out);
            }
            Err(error) => {
                out.push(1);
                error.encode(out);
            }
        }
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        if read_tag::<Self>(input, "invalid Result tag (not 0 or 1)")? {
            Ok(Err(E::decode(input)?))
        } else {
            Ok(Ok(T::decode(input)?))
        }
    }
}

impl<T: Wire> Wire for Box<T> {
    const MIN_ENCODED_LEN: usize = T::MIN_ENCODED_LEN;
    const FIXED_LEN: Option<usize> = T::FIXED_LEN;

    #[inline]
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }

    #[inline]
    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        charge::<Self>(std::mem::size_of::<T>())?;
        T::decode(input).map(Box::new)
    }
}

macro_rules! wire_tuple {
    ($($name:ident $index:tt),+) => {
        impl<$($name: Wire),+> Wire for ($($name,)+) {
            const MIN_ENCODED_LEN: usize = 0usize $(.saturating_add($name::MIN_ENCODED_LEN))+;
            const FIXED_LEN: Option<usize> = {
                let mut len = Some(0);
                $(len = fixed_sum(len, $name::FIXED_LEN);)+
                len
            };

            #[inline]
            fn encode(&self, out: &mut Vec<u8>) {
                $(self.$index.encode(out);)+
            }

            #[inline]
            fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
                // Tuple expressions evaluate left to right: the fields are
                // read in the order they were written.
                Ok(($($name::decode(input)?,)+))
            }
        }
    };
}

wire_tuple!(A 0);
wire_tuple!(A 0, B 1);
wire_tuple!(A 0, B 1, C 2);
wire_tuple!(A 0, B 1, C 2, D 3);
wire_tuple!(A 0, B 1, C 2, D 3, E 4);
wire_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn short_type_name_drops_paths_at_every_depth() {
        assert_eq!(short_type_name("alloc::vec::Vec<alloc::string::String>"), "Vec<String>");
        assert_eq!(
            short_type_name("core::option::Option<alloc::vec::Vec<(u8, alloc::string::String)>>"),
            "Option<Vec<(u8, String)>>"
        );
        assert_eq!(short_type_name("[u8; 4]"), "[u8; 4]");
        assert_eq!(short_type_name("my_crate::Shape"), "Shape");
    }
}
