//! Properties of the `Wire` encoding: exact bytes, round trips over random
//! and edge values, truncation, garbage, and hostile length prefixes.
//!
//! Random values come from a seeded xorshift generator, so every run checks
//! the same values and a failure reproduces.
#![deny(unsafe_op_in_unsafe_fn)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;

use mproc::wire::MAX_ZERO_WIDTH_LEN;
use mproc::{DecodeError, Wire};

// ---------------------------------------------------------------------------
// Allocation accounting: the hostile-length tests must prove that a lying
// prefix does not reserve gigabytes. Linux overcommit would let such an
// allocation "succeed" untouched, so the test watches the request itself.

/// The system allocator, remembering the largest request per thread (tests
/// run on several threads; each measures only its own allocations).
struct LargestRequest;

thread_local! {
    static LARGEST_REQUEST: Cell<usize> = const { Cell::new(0) };
}

fn note_request(size: usize) {
    // try_with: allocations can happen while the thread-local is torn down.
    let _ = LARGEST_REQUEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the bookkeeping touches only
// a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for LargestRequest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_request(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_request(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_request(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestRequest = LargestRequest;

/// Runs `f` and returns its result with the largest allocation it requested.
fn largest_allocation_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST_REQUEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST_REQUEST.with(Cell::get))
}

// ---------------------------------------------------------------------------
// A tiny deterministic PRNG (xorshift64) and random values with edge cases.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // xorshift has a fixed point at 0.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A random value of a type, with its edge values drawn often.
trait Arb: Sized {
    fn arb(rng: &mut Rng) -> Self;
}

macro_rules! arb_int {
    ($($int:ty),*) => {$(
        impl Arb for $int {
            fn arb(rng: &mut Rng) -> Self {
                if rng.one_in(4) {
                    rng.pick(&[0, 1, <$int>::MIN, <$int>::MAX, <$int>::MIN.wrapping_add(1), <$int>::MAX.wrapping_sub(1)])
                } else {
                    // Truncation keeps the low bits: uniform over the type.
                    ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) as $int
                }
            }
        }
    )*};
}

arb_int!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl Arb for f64 {
    fn arb(rng: &mut Rng) -> Self {
        if rng.one_in(3) {
            rng.pick(&[
                0.0,
                -0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NAN,
                f64::from_bits(0x7ff8_0000_dead_beef), // quiet NaN with a payload
                f64::from_bits(0x7ff0_0000_0000_0001), // signalling NaN
                f64::from_bits(0xfff8_0000_0000_0042), // negative NaN
                f64::from_bits(1),                     // smallest subnormal
                f64::MIN_POSITIVE,
                f64::MAX,
                f64::MIN,
                f64::EPSILON,
            ])
        } else {
            f64::from_bits(rng.next_u64())
        }
    }
}

impl Arb for f32 {
    fn arb(rng: &mut Rng) -> Self {
        if rng.one_in(3) {
            rng.pick(&[
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                f32::from_bits(0x7fc0_beef),
                f32::from_bits(0x7f80_0001),
                f32::from_bits(0xffc0_0042),
                f32::from_bits(1),
                f32::MIN_POSITIVE,
                f32::MAX,
                f32::MIN,
            ])
        } else {
            f32::from_bits(rng.next_u64() as u32)
        }
    }
}

impl Arb for bool {
    fn arb(rng: &mut Rng) -> Self {
        rng.next_u64() & 1 == 1
    }
}

impl Arb for char {
    fn arb(rng: &mut Rng) -> Self {
        if rng.one_in(3) {
            // One- to four-byte UTF-8, and both sides of the surrogate gap.
            return rng.pick(&['\0', 'a', 'é', '€', '𝄞', '\u{D7FF}', '\u{E000}', '\u{FFFF}', '\u{10FFFF}']);
        }
        loop {
            if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                return c;
            }
        }
    }
}

impl Arb for () {
    fn arb(_rng: &mut Rng) -> Self {}
}

impl Arb for String {
    fn arb(rng: &mut Rng) -> Self {
        let len = if rng.one_in(6) { 0 } else { rng.below(12) };
        (0..len)
            .map(|_| if rng.one_in(2) { (b'a' + rng.below(26) as u8) as char } else { char::arb(rng) })
            .collect()
    }
}

impl<T: Arb> Arb for Vec<T> {
    fn arb(rng: &mut Rng) -> Self {
        let len = if rng.one_in(6) { 0 } else { rng.below(6) };
        (0..len).map(|_| T::arb(rng)).collect()
    }
}

impl<T: Arb> Arb for Option<T> {
    fn arb(rng: &mut Rng) -> Self {
        if rng.one_in(3) {
            None
        } else {
            Some(T::arb(rng))
        }
    }
}

impl<T: Arb, E: Arb> Arb for Result<T, E> {
    fn arb(rng: &mut Rng) -> Self {
        if rng.one_in(2) {
            Ok(T::arb(rng))
        } else {
            Err(E::arb(rng))
        }
    }
}

impl<T: Arb> Arb for Box<T> {
    fn arb(rng: &mut Rng) -> Self {
        Box::new(T::arb(rng))
    }
}

impl<T: Arb, const N: usize> Arb for [T; N] {
    fn arb(rng: &mut Rng) -> Self {
        std::array::from_fn(|_| T::arb(rng))
    }
}

macro_rules! arb_tuple {
    ($($name:ident),+) => {
        impl<$($name: Arb),+> Arb for ($($name,)+) {
            fn arb(rng: &mut Rng) -> Self {
                ($($name::arb(rng),)+)
            }
        }
    };
}

arb_tuple!(A);
arb_tuple!(A, B);
arb_tuple!(A, B, C);
arb_tuple!(A, B, C, D);
arb_tuple!(A, B, C, D, E);
arb_tuple!(A, B, C, D, E, F);

// ---------------------------------------------------------------------------
// Checks shared by the properties.

const VALUES_PER_TYPE: usize = 2000;
const TRAILER: [u8; 3] = [0xAB, 0xCD, 0xEF];

/// Encodes `value`, checks that `decode` consumes exactly its bytes and no
/// more, and returns the decoded copy.
fn encode_decode<T: Wire + Debug>(value: &T) -> (Vec<u8>, T) {
    let bytes = value.to_bytes();
    assert!(
        bytes.len() >= T::MIN_ENCODED_LEN,
        "{value:?} encodes to {} bytes, under MIN_ENCODED_LEN {}",
        bytes.len(),
        T::MIN_ENCODED_LEN
    );
    let mut followed = bytes.clone();
    followed.extend_from_slice(&TRAILER);
    let mut input = &followed[..];
    let decoded = T::decode(&mut input).unwrap_or_else(|e| panic!("{value:?} from {bytes:?}: {e}"));
    assert_eq!(input, TRAILER, "decode of {value:?} did not stop at the end of its encoding");
    (bytes, decoded)
}

/// Round trips `VALUES_PER_TYPE` random values through `to_bytes`/`from_bytes`.
fn assert_round_trips<T: Wire + Arb + Debug + PartialEq>(seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..VALUES_PER_TYPE {
        let value = T::arb(&mut rng);
        let (bytes, decoded) = encode_decode(&value);
        assert_eq!(decoded, value, "bytes {bytes:?}");
        assert_eq!(T::from_bytes(&bytes).as_ref(), Ok(&value));
    }
}

/// For types holding floats, where `NaN != NaN`: a value is the same when
/// its bytes are (the exact-bytes tests pin the float encoding itself).
fn assert_round_trips_bitwise<T: Wire + Arb + Debug>(seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..VALUES_PER_TYPE {
        let value = T::arb(&mut rng);
        let (bytes, decoded) = encode_decode(&value);
        assert_eq!(decoded.to_bytes(), bytes, "{value:?} came back as {decoded:?}");
    }
}

/// Every strict prefix of a valid encoding must fail to decode, and fail
/// because the input ended — never with a wrong value.
fn assert_every_prefix_fails<T: Wire + Arb + Debug>(seed: u64, values: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..values {
        let value = T::arb(&mut rng);
        let bytes = value.to_bytes();
        for cut in 0..bytes.len() {
            match T::from_bytes(&bytes[..cut]) {
                Ok(wrong) => panic!("{cut} of {} bytes of {value:?} decoded as {wrong:?}", bytes.len()),
                Err(e) => assert!(
                    ["input ends early", "length prefix exceeds the remaining input"].contains(&e.reason()),
                    "{cut} bytes of {value:?}: {e}"
                ),
            }
        }
    }
}

/// Decoding arbitrary bytes returns, without panicking, either an error
/// that points inside the input or a value whose encoding is exactly those
/// bytes (the format has one encoding per value).
fn assert_garbage_is_handled<T: Wire + Debug>(bytes: &[u8]) {
    match T::from_bytes(bytes) {
        Ok(value) => assert_eq!(value.to_bytes(), bytes, "{bytes:?} decoded as {value:?}"),
        Err(e) => {
            let offset = e.offset().unwrap_or_else(|| panic!("no offset in {e:?}"));
            assert!(offset <= bytes.len(), "{e} for {} bytes", bytes.len());
        }
    }
    let mut input = bytes;
    if let Ok(value) = T::decode(&mut input) {
        let consumed = &bytes[..bytes.len() - input.len()];
        assert_eq!(value.to_bytes(), consumed, "{bytes:?} decoded as {value:?}");
    }
}

macro_rules! garbage_as_each {
    ($bytes:expr; $($t:ty),+ $(,)?) => {
        $(assert_garbage_is_handled::<$t>($bytes);)+
    };
}

fn garbage_as_many_types(bytes: &[u8]) {
    garbage_as_each!(bytes;
        u8, u64, i128, usize, isize, f32, f64, bool, char, (), String, Vec<u8>, Vec<u32>, Vec<String>,
        Vec<()>, Vec<Vec<()>>, Vec<Vec<u8>>, Option<Vec<(u8, String)>>, Result<u32, String>,
        Result<(), Vec<char>>, (u8, char, bool), (u16, (), Option<bool>, String), [u16; 4],
        [String; 2], Box<Option<i128>>, Vec<Option<[u64; 8]>>,
    );
}

/// Displays a decode error the way a user sees it.
fn error_text<T: Wire + Debug>(bytes: &[u8]) -> String {
    match T::from_bytes(bytes) {
        Ok(value) => panic!("{bytes:?} decoded as {value:?}"),
        Err(e) => e.to_string(),
    }
}

fn length_prefix(len: u64) -> Vec<u8> {
    len.to_le_bytes().to_vec()
}

// ---------------------------------------------------------------------------
// The exact format.

#[test]
fn integers_are_fixed_width_little_endian() {
    assert_eq!(0xABu8.to_bytes(), [0xAB]);
    assert_eq!(0x0102u16.to_bytes(), [0x02, 0x01]);
    assert_eq!((-2i32).to_bytes(), [0xFE, 0xFF, 0xFF, 0xFF]);
    assert_eq!(i64::MIN.to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x80]);
    assert_eq!(1u128.to_bytes(), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(5usize.to_bytes(), [5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!((-1isize).to_bytes(), [0xFF; 8]);
    assert_eq!(u32::from_bytes(&[0x78, 0x56, 0x34, 0x12]), Ok(0x1234_5678));
}

#[test]
fn floats_are_their_ieee_bits() {
    assert_eq!(1.0f32.to_bytes(), [0x00, 0x00, 0x80, 0x3F]);
    assert_eq!((-0.0f64).to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x80]);
    assert_eq!(f64::from_bits(0x7ff8_0000_dead_beef).to_bytes(), 0x7ff8_0000_dead_beef_u64.to_le_bytes());
}

#[test]
fn scalars_and_containers_have_the_documented_layout() {
    assert_eq!(true.to_bytes(), [1]);
    assert_eq!(false.to_bytes(), [0]);
    assert_eq!('é'.to_bytes(), [0xE9, 0, 0, 0]);
    assert_eq!(().to_bytes(), []);
    assert_eq!("hé".to_string().to_bytes(), [3, 0, 0, 0, 0, 0, 0, 0, b'h', 0xC3, 0xA9]);
    assert_eq!(String::new().to_bytes(), [0; 8]);
    assert_eq!(vec![1u16, 2].to_bytes(), [2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0]);
    assert_eq!(vec![(), (), ()].to_bytes(), [3, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(None::<u8>.to_bytes(), [0]);
    assert_eq!(Some(7u8).to_bytes(), [1, 7]);
    assert_eq!(Ok::<u8, bool>(9).to_bytes(), [0, 9]);
    assert_eq!(Err::<u8, bool>(true).to_bytes(), [1, 1]);
    assert_eq!(Box::new(0x0102u16).to_bytes(), [2, 1]);
    assert_eq!((1u8, true, 'a').to_bytes(), [1, 1, b'a', 0, 0, 0]);
    assert_eq!([1u8, 2, 3].to_bytes(), [1, 2, 3]);
    assert_eq!([0x0102u16; 2].to_bytes(), [2, 1, 2, 1]);
    assert_eq!(<[u32; 0]>::from_bytes(&[]), Ok([]));
}

#[test]
fn min_encoded_len_is_the_shortest_encoding() {
    assert_eq!(u8::MIN_ENCODED_LEN, 1);
    assert_eq!(u128::MIN_ENCODED_LEN, 16);
    assert_eq!(usize::MIN_ENCODED_LEN, 8);
    assert_eq!(char::MIN_ENCODED_LEN, 4);
    assert_eq!(<()>::MIN_ENCODED_LEN, 0);
    assert_eq!(String::MIN_ENCODED_LEN, String::new().to_bytes().len());
    assert_eq!(Vec::<u64>::MIN_ENCODED_LEN, Vec::<u64>::new().to_bytes().len());
    assert_eq!(Option::<u64>::MIN_ENCODED_LEN, None::<u64>.to_bytes().len());
    assert_eq!(Result::<u64, ()>::MIN_ENCODED_LEN, Err::<u64, ()>(()).to_bytes().len());
    assert_eq!(<[u32; 3]>::MIN_ENCODED_LEN, 12);
    assert_eq!(<[(); 3]>::MIN_ENCODED_LEN, 0);
    assert_eq!(<(u8, u16, ())>::MIN_ENCODED_LEN, 3);
    assert_eq!(Box::<u64>::MIN_ENCODED_LEN, 8);
}

// ---------------------------------------------------------------------------
// Round trips.

#[test]
fn integers_round_trip() {
    assert_round_trips::<u8>(1);
    assert_round_trips::<u16>(2);
    assert_round_trips::<u32>(3);
    assert_round_trips::<u64>(4);
    assert_round_trips::<u128>(5);
    assert_round_trips::<usize>(6);
    assert_round_trips::<i8>(7);
    assert_round_trips::<i16>(8);
    assert_round_trips::<i32>(9);
    assert_round_trips::<i64>(10);
    assert_round_trips::<i128>(11);
    assert_round_trips::<isize>(12);
}

#[test]
fn floats_round_trip_bit_exact() {
    let mut rng = Rng::new(20);
    for _ in 0..VALUES_PER_TYPE {
        let wide = f64::arb(&mut rng);
        assert_eq!(f64::from_bytes(&wide.to_bytes()).map(f64::to_bits), Ok(wide.to_bits()));
        let narrow = f32::arb(&mut rng);
        assert_eq!(f32::from_bytes(&narrow.to_bytes()).map(f32::to_bits), Ok(narrow.to_bits()));
    }
    assert_round_trips_bitwise::<Vec<f64>>(21);
    assert_round_trips_bitwise::<(f32, Option<f64>)>(22);
    assert_round_trips_bitwise::<[f32; 3]>(23);
}

#[test]
fn scalars_round_trip() {
    assert_round_trips::<bool>(30);
    assert_round_trips::<char>(31);
    assert_round_trips::<()>(32);
    assert_round_trips::<String>(33);
}

#[test]
fn containers_round_trip() {
    assert_round_trips::<Vec<u8>>(40);
    assert_round_trips::<Vec<i64>>(41);
    assert_round_trips::<Vec<String>>(42);
    assert_round_trips::<Vec<()>>(43);
    assert_round_trips::<Vec<Vec<u16>>>(44);
    assert_round_trips::<Option<u32>>(45);
    assert_round_trips::<Option<Vec<(u8, String)>>>(46);
    assert_round_trips::<Result<u64, String>>(47);
    assert_round_trips::<Result<(), Vec<char>>>(48);
    assert_round_trips::<Box<i128>>(49);
    assert_round_trips::<Box<Option<String>>>(50);
}

#[test]
fn tuples_and_arrays_round_trip() {
    assert_round_trips::<(u8,)>(60);
    assert_round_trips::<(u8, bool)>(61);
    assert_round_trips::<(i16, char, String)>(62);
    assert_round_trips::<(u32, (), Option<bool>, Vec<u8>)>(63);
    assert_round_trips::<(u64, i8, String, bool, Vec<u16>)>(64);
    assert_round_trips::<(u8, u16, u32, u64, u128, (i8, char))>(65);
    assert_round_trips::<[u8; 0]>(66);
    assert_round_trips::<[u8; 4]>(67);
    assert_round_trips::<[String; 3]>(68);
    assert_round_trips::<[(u8, bool); 2]>(69);
    assert_round_trips::<[(); 5]>(70);
}

#[test]
fn large_values_round_trip() {
    let bytes: Vec<u8> = Rng::new(80).bytes(1 << 20);
    assert_eq!(Vec::<u8>::from_bytes(&bytes.to_bytes()), Ok(bytes));
    let text = "héllo, wörld 𝄞 ".repeat(10_000);
    assert_eq!(String::from_bytes(&text.to_bytes()), Ok(text));
    let units = vec![(); MAX_ZERO_WIDTH_LEN];
    assert_eq!(Vec::<()>::from_bytes(&units.to_bytes()), Ok(units));
}

// ---------------------------------------------------------------------------
// Truncated, malformed and random input.

#[test]
fn every_strict_prefix_of_an_encoding_fails() {
    assert_every_prefix_fails::<u64>(100, 200);
    assert_every_prefix_fails::<i128>(101, 200);
    assert_every_prefix_fails::<f64>(102, 200);
    assert_every_prefix_fails::<char>(103, 200);
    assert_every_prefix_fails::<String>(104, 500);
    assert_every_prefix_fails::<Vec<u8>>(105, 500);
    assert_every_prefix_fails::<Vec<()>>(106, 200);
    assert_every_prefix_fails::<Option<Vec<(u8, String)>>>(107, 500);
    assert_every_prefix_fails::<Result<u32, String>>(108, 500);
    assert_every_prefix_fails::<(u8, char, bool, Box<u16>, Vec<i32>, [u8; 3])>(109, 500);
    assert_every_prefix_fails::<[String; 2]>(110, 500);
}

#[test]
fn random_bytes_decode_to_an_error_or_their_exact_value() {
    let mut rng = Rng::new(200);
    for _ in 0..3000 {
        let len = rng.below(48);
        garbage_as_many_types(&rng.bytes(len));
    }
}

#[test]
fn small_number_bytes_decode_to_an_error_or_their_exact_value() {
    // Mostly 0s and 1s: tags are valid and lengths plausible, so decoding
    // goes deep instead of failing on the first byte.
    let mut rng = Rng::new(201);
    for _ in 0..3000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| if rng.one_in(2) { 0 } else { rng.pick(&[1, 2, 3, 0xFF, 0xC3, 0xA9]) })
            .collect();
        garbage_as_many_types(&bytes);
    }
}

#[test]
fn mutated_encodings_decode_to_an_error_or_their_exact_value() {
    let mut rng = Rng::new(202);
    for _ in 0..3000 {
        let mut bytes =
            <(Option<Vec<(u8, String)>>, Result<u32, String>, [u16; 4])>::arb(&mut rng).to_bytes();
        match rng.below(4) {
            0 => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(bytes.len() + 1);
                bytes.insert(at, rng.next_u64() as u8);
            }
            _ => {
                bytes.remove(rng.below(bytes.len()));
            }
        }
        garbage_as_many_types(&bytes);
        assert_garbage_is_handled::<(Option<Vec<(u8, String)>>, Result<u32, String>, [u16; 4])>(&bytes);
    }
}

#[test]
fn bool_accepts_only_zero_and_one() {
    assert_eq!(bool::from_bytes(&[0]), Ok(false));
    assert_eq!(bool::from_bytes(&[1]), Ok(true));
    for byte in 2..=u8::MAX {
        let err = bool::from_bytes(&[byte]).unwrap_err();
        assert_eq!(err.reason(), "invalid bool (not 0 or 1)");
        assert_eq!(err.offset(), Some(0));
    }
    assert_eq!(
        error_text::<(u32, bool)>(&[0, 0, 0, 0, 5]),
        "invalid bool (not 0 or 1) while decoding bool at byte 4"
    );
}

#[test]
fn char_rejects_surrogates_and_values_past_unicode() {
    for valid in [0, 0xD7FF, 0xE000, 0x10_FFFF] {
        assert_eq!(char::from_bytes(&u32::to_le_bytes(valid)), Ok(char::from_u32(valid).unwrap()));
    }
    for invalid in [0xD800, 0xDBFF, 0xDFFF, 0x11_0000, u32::MAX] {
        assert_eq!(
            error_text::<char>(&u32::to_le_bytes(invalid)),
            "invalid char (not a Unicode scalar value) while decoding char at byte 0",
            "{invalid:#x}"
        );
    }
}

#[test]
fn string_rejects_invalid_utf8() {
    let invalid: [&[u8]; 6] = [
        &[0xFF],                   // never valid
        &[b'a', 0xC3],             // sequence cut short
        &[0xC0, 0x80],             // overlong NUL
        &[0xED, 0xA0, 0x80],       // an encoded surrogate
        &[0xF4, 0x90, 0x80, 0x80], // past U+10FFFF
        &[0x80, b'a'],             // lone continuation byte
    ];
    for text in invalid {
        let mut bytes = length_prefix(text.len() as u64);
        bytes.extend_from_slice(text);
        assert_eq!(error_text::<String>(&bytes), "invalid UTF-8 while decoding String at byte 0", "{text:?}");
    }
    // The offset names the bad string inside a larger value.
    let mut list = vec!["ok".to_string(), "fine".to_string()].to_bytes();
    list[0] = 3;
    list.extend_from_slice(&length_prefix(1));
    list.push(0xFF);
    assert_eq!(error_text::<Vec<String>>(&list), "invalid UTF-8 while decoding String at byte 30");
}

#[test]
fn option_and_result_reject_unknown_tags() {
    assert_eq!(
        error_text::<Option<u8>>(&[2, 7]),
        "invalid Option tag (not 0 or 1) while decoding Option<u8> at byte 0"
    );
    assert_eq!(
        error_text::<Result<u8, String>>(&[0xFF, 7]),
        "invalid Result tag (not 0 or 1) while decoding Result<u8, String> at byte 0"
    );
    assert_eq!(
        error_text::<(u8, Option<bool>)>(&[1, 1, 2]),
        "invalid bool (not 0 or 1) while decoding bool at byte 2"
    );
}

#[test]
fn from_bytes_rejects_trailing_bytes_but_decode_leaves_them() {
    assert_eq!(error_text::<bool>(&[1, 0]), "trailing bytes after the value while decoding bool at byte 1");
    let mut bytes = "ab".to_string().to_bytes();
    bytes.push(b'c');
    assert_eq!(
        error_text::<String>(&bytes),
        "trailing bytes after the value while decoding String at byte 10"
    );
    assert_eq!(error_text::<()>(&[0]), "trailing bytes after the value while decoding () at byte 0");

    let mut input = &bytes[..];
    assert_eq!(String::decode(&mut input), Ok("ab".to_string()));
    assert_eq!(input, b"c");
}

#[test]
fn truncated_input_names_the_type_and_where_it_starts() {
    assert_eq!(error_text::<u64>(&[1, 2, 3]), "input ends early while decoding u64 at byte 0");
    assert_eq!(error_text::<(u8, u32)>(&[1, 2, 3]), "input ends early while decoding u32 at byte 1");
    assert_eq!(error_text::<Vec<u16>>(&[1, 0, 0]), "input ends early while decoding Vec<u16> at byte 0");
}

#[test]
fn decode_error_is_a_comparable_std_error() {
    fn assert_traits<E: Clone + Debug + PartialEq + Eq + std::fmt::Display + std::error::Error>() {}
    assert_traits::<DecodeError>();
    let made = DecodeError::new("unknown Shape tag").for_type::<Vec<Option<String>>>();
    assert_eq!(made.to_string(), "unknown Shape tag while decoding Vec<Option<String>>");
    assert_eq!(made.type_name(), Some(std::any::type_name::<Vec<Option<String>>>()));
    assert_eq!(made.offset(), None);
    assert_eq!(DecodeError::new("x").to_string(), "x");
    assert_ne!(made, DecodeError::new("unknown Shape tag"));
}

// ---------------------------------------------------------------------------
// Hostile length prefixes.

#[test]
fn a_huge_length_prefix_fails_without_a_large_allocation() {
    // (type, claimed length, bytes after the prefix)
    let cases: [(&str, u64, usize); 4] = [
        ("Vec<u8>", u64::MAX, 0),
        ("Vec<u64>", 1 << 40, 16),
        ("String", 1 << 62, 100),
        ("Vec<String>", 1 << 61, 1000),
    ];
    for (name, claimed, tail) in cases {
        let mut bytes = length_prefix(claimed);
        bytes.extend(std::iter::repeat_n(0, tail));
        let (text, largest) = largest_allocation_during(|| match name {
            "Vec<u8>" => Vec::<u8>::from_bytes(&bytes).map(drop),
            "Vec<u64>" => Vec::<u64>::from_bytes(&bytes).map(drop),
            "String" => String::from_bytes(&bytes).map(drop),
            _ => Vec::<String>::from_bytes(&bytes).map(drop),
        });
        let err = text.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("length prefix exceeds the remaining input while decoding {name} at byte 0")
        );
        assert!(
            largest <= bytes.len(),
            "{name}: a {largest}-byte allocation for {} bytes of input",
            bytes.len()
        );
    }
}

#[test]
fn a_length_is_checked_against_the_smallest_possible_elements() {
    // Sixteen bytes hold two u64s: a prefix of 3 is refused before decoding
    // anything, not after running out.
    let mut bytes = length_prefix(2);
    bytes.extend_from_slice(&[1; 16]);
    assert_eq!(Vec::<u64>::from_bytes(&bytes), Ok(vec![0x0101_0101_0101_0101; 2]));
    bytes[0] = 3;
    assert_eq!(
        error_text::<Vec<u64>>(&bytes),
        "length prefix exceeds the remaining input while decoding Vec<u64> at byte 0"
    );
    // A string claiming one byte more than is left.
    let mut text = length_prefix(3);
    text.extend_from_slice(b"ab");
    assert_eq!(
        error_text::<String>(&text),
        "length prefix exceeds the remaining input while decoding String at byte 0"
    );
}

#[test]
fn a_huge_inner_length_fails_without_a_large_allocation() {
    // One inner vector that claims 2^50 bytes, inside a well-formed outer one.
    let mut bytes = length_prefix(1);
    bytes.extend_from_slice(&length_prefix(1 << 50));
    bytes.extend_from_slice(&[7; 32]);
    let (result, largest) = largest_allocation_during(|| Vec::<Vec<u8>>::from_bytes(&bytes));
    assert_eq!(
        result.unwrap_err().to_string(),
        "length prefix exceeds the remaining input while decoding Vec<u8> at byte 8"
    );
    assert!(largest <= bytes.len(), "a {largest}-byte allocation for {} bytes of input", bytes.len());
}

#[test]
fn reserved_memory_is_capped_by_the_input_even_for_large_elements() {
    // Option<[u64; 64]> is 520 bytes in memory but 1 byte on the wire when
    // None: a length that the input can hold must still not reserve
    // 520 × length bytes up front. The elements here are all Some and cut
    // short, so nothing legitimate needs the memory.
    let mut bytes = length_prefix(4096);
    bytes.extend(std::iter::repeat_n(1, 4096));
    let (result, largest) = largest_allocation_during(|| Vec::<Option<[u64; 64]>>::from_bytes(&bytes));
    assert_eq!(result.unwrap_err().reason(), "input ends early");
    assert!(largest <= bytes.len(), "a {largest}-byte allocation for {} bytes of input", bytes.len());
}

#[test]
fn zero_width_elements_are_limited_in_number() {
    let at_limit = length_prefix(MAX_ZERO_WIDTH_LEN as u64);
    assert_eq!(Vec::<()>::from_bytes(&at_limit).map(|units| units.len()), Ok(MAX_ZERO_WIDTH_LEN));
    for claimed in [MAX_ZERO_WIDTH_LEN as u64 + 1, u64::MAX] {
        assert_eq!(
            error_text::<Vec<()>>(&length_prefix(claimed)),
            "too many zero-byte elements while decoding Vec<()> at byte 0"
        );
        assert_eq!(
            error_text::<Vec<[u8; 0]>>(&length_prefix(claimed)),
            "too many zero-byte elements while decoding Vec<[u8; 0]> at byte 0"
        );
    }
}

#[test]
fn memory_reserved_up_front_is_bounded_by_the_input_but_not_what_the_type_makes_of_it() {
    // The documented rule (wire.rs, mproc(7)), first half: a declared
    // length of 2^63 bytes with 64 bytes of input fails without asking for
    // the declared length (an attempt would abort the process).
    let mut bytes = length_prefix(u64::MAX / 2);
    bytes.extend_from_slice(&[0xAB; 64]);
    let (result, largest) = largest_allocation_during(|| Vec::<u8>::from_bytes(&bytes));
    assert!(result.is_err());
    assert!(largest <= bytes.len(), "a {largest}-byte allocation for {} bytes of input", bytes.len());
    // Second half, what the rule does not promise: valid input of 4 KiB of
    // `None`s decodes into 4,096 × 520 bytes. The type, not the decoder,
    // sets that ratio.
    let n = 4096;
    let mut nones = length_prefix(n as u64);
    nones.extend(std::iter::repeat_n(0, n));
    let (result, largest) = largest_allocation_during(|| Vec::<Option<[u64; 64]>>::from_bytes(&nones));
    assert_eq!(result.map(|v| v.len()), Ok(n));
    let in_memory = n * std::mem::size_of::<Option<[u64; 64]>>();
    assert!(largest >= in_memory, "largest allocation {largest}, the value takes {in_memory}");
    assert!(largest > 100 * nones.len());
}

#[test]
fn from_bytes_within_refuses_a_value_that_would_outgrow_its_limit_before_allocating() {
    use mproc::wire::from_bytes_within;
    // 1 MiB of `None` bytes: 1 MiB on the wire, 545 MB as elements.
    let bytes = vec![None::<[u64; 64]>; 1 << 20].to_bytes();
    let err = from_bytes_within::<Vec<Option<[u64; 64]>>>(&bytes, 64 << 20).unwrap_err();
    assert_eq!(err.reason(), "the decoded value would exceed its memory limit");
    // The same limit holds inside nesting, for strings, and for boxes.
    let nested = vec![vec![7u64; 1000]; 10].to_bytes();
    assert!(from_bytes_within::<Vec<Vec<u64>>>(&nested, 70_000).is_err());
    assert_eq!(from_bytes_within::<Vec<Vec<u64>>>(&nested, 90_000).unwrap(), vec![vec![7u64; 1000]; 10]);
    let text = "x".repeat(5000).to_bytes();
    assert!(from_bytes_within::<String>(&text, 4999).is_err());
    assert_eq!(from_bytes_within::<String>(&text, 5000).unwrap().len(), 5000);
    assert!(from_bytes_within::<Box<[u64; 64]>>(&Box::new([1u64; 64]).to_bytes(), 511).is_err());
    // Outside the call, no limit is left behind.
    assert_eq!(
        Vec::<Option<[u64; 64]>>::from_bytes(&vec![None::<[u64; 64]>; 1000].to_bytes()).unwrap().len(),
        1000
    );
}
