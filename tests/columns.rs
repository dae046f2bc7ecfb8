//! The pool's fixed-width path: arguments and results of types with a
//! `Wire::FIXED_LEN` travel as columns and runs, not one framed value at a
//! time. Every way a task can end other than returning (a panic, an
//! argument that does not decode, a result too large, a timeout, a `Wire`
//! impl that lies about its width, a worker's task limit) must still give
//! that task, and only that task, its own outcome.

use std::time::Duration;

use mproc::{DecodeError, Error, Pool, Wire};

mod common;
use common::pools::{assert_no_children, watchdog};

fn mix(n: u64) -> u64 {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (n >> 7)
}

fn pair((a, b): (u32, f64)) -> [u16; 3] {
    [a as u16, (a >> 16) as u16, b as u16]
}

fn flag_char(on: bool) -> char {
    if on {
        'é'
    } else {
        'x'
    }
}

fn nothing(_: u64) {}

fn from_unit(_: ()) -> u64 {
    7
}

fn length(s: String) -> u64 {
    s.len() as u64
}

fn spelled(n: u64) -> String {
    format!("<{n}>")
}

#[test]
fn fixed_len_is_the_encoded_length_of_every_value() {
    fn check<T: Wire>(values: &[T]) {
        for v in values {
            assert_eq!(T::FIXED_LEN, Some(v.to_bytes().len()), "{}", std::any::type_name::<T>());
        }
    }
    check(&[0u8, 255]);
    check(&[1u16]);
    check(&[u32::MAX]);
    check(&[u64::MAX]);
    check(&[1u128]);
    check(&[-1i8]);
    check(&[-1i64]);
    check(&[usize::MAX]);
    check(&[isize::MIN]);
    check(&[f32::NAN]);
    check(&[-0.0f64]);
    check(&[true, false]);
    check(&['a', '😀']);
    check(&[()]);
    check(&[(1u8, 2u64)]);
    check(&[[1u16, 2, 3]]);
    check(&[Box::new(5u32)]);
    check(&[((1u32, true), ['z'; 2], ())]);
    assert_eq!(String::FIXED_LEN, None);
    assert_eq!(<Vec<u8>>::FIXED_LEN, None);
    assert_eq!(<Option<u8>>::FIXED_LEN, None);
    assert_eq!(<Result<u8, u8>>::FIXED_LEN, None);
    assert_eq!(<(u8, String)>::FIXED_LEN, None);
    assert_eq!(<[String; 2]>::FIXED_LEN, None);
}

#[test]
fn maps_of_fixed_and_variable_types_match_a_plain_loop() {
    let pool = Pool::new(2).unwrap();
    let numbers: Vec<u64> = (0..20_000).collect();
    assert_eq!(pool.map(mix, numbers.clone()).unwrap(), numbers.iter().map(|&n| mix(n)).collect::<Vec<_>>());
    let pairs: Vec<(u32, f64)> =
        (0..5_000u32).map(|i| (i.wrapping_mul(70_001), f64::from(i) * 1.5)).collect();
    assert_eq!(pool.map(pair, pairs.clone()).unwrap(), pairs.into_iter().map(pair).collect::<Vec<_>>());
    let flags: Vec<bool> = (0..3_000).map(|i| i % 3 == 0).collect();
    assert_eq!(
        pool.map(flag_char, flags.clone()).unwrap(),
        flags.into_iter().map(flag_char).collect::<Vec<_>>()
    );
    // Results of no bytes at all, and arguments of none.
    assert_eq!(pool.map(nothing, 0..4_000u64).unwrap().len(), 4_000);
    assert_eq!(pool.map(from_unit, vec![(); 3_000]).unwrap(), vec![7; 3_000]);
    // A column of arguments with framed results, and the other way round.
    assert_eq!(pool.map(spelled, 0..2_000u64).unwrap(), (0..2_000).map(spelled).collect::<Vec<_>>());
    let words: Vec<String> = (0..2_000).map(|i| "w".repeat(i % 40)).collect();
    assert_eq!(pool.map(length, words.clone()).unwrap(), words.into_iter().map(length).collect::<Vec<_>>());
    drop(pool);
    assert_no_children();
}

fn panics_on_13_mod_997(n: u64) -> u64 {
    if n % 997 == 13 {
        panic!("unlucky {n}");
    }
    n * 3
}

#[test]
fn a_panic_inside_a_column_fails_only_its_own_task() {
    let _dog = watchdog(Duration::from_secs(60), "panics inside a column");
    let pool = Pool::new(2).unwrap();
    // Big chunks: each panic lands in the middle of a slice of tasks.
    let outcomes: Vec<Result<u64, Error>> =
        pool.imap_chunked(panics_on_13_mod_997, 0..6_000u64, 2_500).collect();
    assert_eq!(outcomes.len(), 6_000);
    for (n, outcome) in (0u64..).zip(&outcomes) {
        if n % 997 == 13 {
            assert_eq!(outcome, &Err(Error::Panicked { message: format!("unlucky {n}") }), "task {n}");
        } else {
            assert_eq!(outcome, &Ok(n * 3), "task {n}");
        }
    }
    // `map` gives the first error in input order.
    assert_eq!(
        pool.map(panics_on_13_mod_997, 0..6_000u64),
        Err(Error::Panicked { message: "unlucky 13".into() })
    );
    // No worker died for it, and the pool goes on.
    assert_eq!(pool.map(mix, 0..100u64).unwrap(), (0..100).map(mix).collect::<Vec<_>>());
}

/// A fixed-width type whose decoding refuses one value: an argument the
/// worker cannot read back.
#[derive(Debug, Clone, Copy, PartialEq)]
struct NotSeven(u32);

impl Wire for NotSeven {
    const MIN_ENCODED_LEN: usize = 4;
    const FIXED_LEN: Option<usize> = Some(4);

    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        match u32::decode(input)? {
            7 => Err(DecodeError::new("seven")),
            n => Ok(NotSeven(n)),
        }
    }
}

fn unwrap_not_seven(n: NotSeven) -> u32 {
    n.0
}

#[test]
fn an_argument_that_does_not_decode_fails_only_its_own_task() {
    let pool = Pool::new(1).unwrap();
    let outcomes: Vec<Result<u32, Error>> =
        pool.imap_chunked(unwrap_not_seven, (0..50).map(NotSeven), 50).collect();
    for (n, outcome) in (0u32..).zip(&outcomes) {
        if n == 7 {
            assert!(matches!(outcome, Err(Error::Decode(_))), "task 7: {outcome:?}");
        } else {
            assert_eq!(outcome, &Ok(n), "task {n}");
        }
    }
    assert_eq!(outcomes.len(), 50);
}

/// Says it is always 8 bytes, but odd values encode to 12: a `Wire` impl
/// with a wrong `FIXED_LEN` (its `encode` and `decode` agree with each
/// other).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Liar(u64);

impl Wire for Liar {
    const MIN_ENCODED_LEN: usize = 8;
    const FIXED_LEN: Option<usize> = Some(8);

    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        if self.0 % 2 == 1 {
            out.extend_from_slice(&[0xee; 4]);
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let n = u64::decode(input)?;
        if n % 2 == 1 {
            u32::decode(input)?;
        }
        Ok(Liar(n))
    }
}

fn make_liar(n: u64) -> Liar {
    Liar(n * 5)
}

fn from_liar(l: Liar) -> u64 {
    l.0
}

#[test]
fn a_wire_impl_with_a_wrong_fixed_len_costs_no_wrong_answer() {
    let pool = Pool::new(2).unwrap();
    // Results: the odd ones leave the run and travel framed, in place.
    assert_eq!(pool.map(make_liar, 0..5_000u64).unwrap(), (0..5_000).map(make_liar).collect::<Vec<_>>());
    // Arguments: the parent sees the wrong length before anything is sent.
    let r = pool.map(from_liar, (0..100).map(Liar));
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("FIXED_LEN")), "{r:?}");
    assert!(matches!(pool.apply(from_liar, Liar(3)), Err(Error::InvalidArgument(_))));
    assert_eq!(
        pool.map(from_liar, (0..100).map(|n| Liar(2 * n))).unwrap(),
        (0..100).map(|n| 2 * n).collect::<Vec<_>>()
    );
}

#[test]
fn results_wider_than_max_result_size_fail_each_task_and_no_worker() {
    let pool = Pool::builder().processes(1).max_result_size(4).build().unwrap();
    let before = pool.pids();
    let outcomes: Vec<Result<u64, Error>> = pool.imap_chunked(mix, 0..300u64, 100).collect();
    assert_eq!(outcomes.len(), 300);
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(Error::Decode(e)) if e.reason().contains("max_result_size")),
            "{outcome:?}"
        );
    }
    // Four bytes fit.
    assert_eq!(pool.map(|n: u32| n + 1, 0..300u32).unwrap(), (1..301).collect::<Vec<_>>());
    assert_eq!(pool.pids(), before);
}

fn sleep_on_5(n: u64) -> u64 {
    if n == 5 {
        std::thread::sleep(Duration::from_secs(30));
    }
    n + 1
}

#[test]
fn a_timeout_inside_a_column_fails_only_the_task_that_overran() {
    let _dog = watchdog(Duration::from_secs(60), "a timeout inside a column");
    let pool = Pool::builder().processes(1).task_timeout(Duration::from_millis(300)).build().unwrap();
    let outcomes: Vec<Result<u64, Error>> = pool.imap_chunked(sleep_on_5, 0..20u64, 20).collect();
    for (n, outcome) in (0u64..).zip(&outcomes) {
        if n == 5 {
            assert_eq!(outcome, &Err(Error::Timeout), "task 5");
        } else {
            assert_eq!(outcome, &Ok(n + 1), "task {n}");
        }
    }
    assert_eq!(outcomes.len(), 20);
    drop(pool);
    assert_no_children();
}

fn my_pid(_: u64) -> i32 {
    std::process::id() as i32
}

#[test]
fn max_tasks_per_child_cuts_a_column_where_it_says() {
    let pool = Pool::builder().processes(2).max_tasks_per_child(7).build().unwrap();
    let pids = pool.map(my_pid, 0..200u64).unwrap();
    assert_eq!(pids.len(), 200);
    let mut counts = std::collections::HashMap::new();
    for pid in pids {
        *counts.entry(pid).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&n| n <= 7), "a worker ran more than 7 tasks: {counts:?}");
    assert!(counts.len() >= 200 / 7, "{} workers for 200 tasks", counts.len());
    drop(pool);
    assert_no_children();
}

fn triple(n: u64) -> u64 {
    3 * n
}

#[test]
fn one_maps_buffers_serve_the_next_without_its_results() {
    let pool = Pool::new(2).unwrap();
    for (i, len) in [20_000u64, 5_000, 40_000, 4_096, 4_095, 20_000].into_iter().enumerate() {
        let f = if i % 2 == 0 { mix } else { triple };
        assert_eq!(pool.map(f, 0..len).unwrap(), (0..len).map(f).collect::<Vec<_>>(), "map {i} of {len}");
        // A map that fails in between leaves nothing behind either.
        assert!(pool.map(panics_on_13_mod_997, 0..5_000u64).is_err());
    }
    // Results of another width in the same buffers.
    assert_eq!(
        pool.map(|n: u32| n ^ 1, 0..30_000u32).unwrap(),
        (0..30_000u32).map(|n| n ^ 1).collect::<Vec<_>>()
    );
}

/// The fuzz targets' entry points (see `fuzz/`) on pseudo-random bytes,
/// with the column and run layouts among them: no panic, whatever the
/// widths, counts and lengths say.
#[test]
fn the_message_decoders_take_any_bytes() {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..20_000 {
        let len = (next() % 120) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && len >= 37 {
            // Widths of 1 to 8 bytes, or "variable", and a small count.
            data[25..29].copy_from_slice(&((next() % 12) as u32).to_le_bytes());
            data[29..33].copy_from_slice(&[(next() % 9) as u8 + 1, 0, 0, 0]);
            if round % 4 == 0 {
                data[29..33].copy_from_slice(&u32::MAX.to_le_bytes());
            }
            data[33..37].copy_from_slice(&[(next() % 9) as u8, 0, 0, 0]);
        }
        mproc::fuzzing::task_message(&data);
        if round % 3 == 0 && data.len() >= 9 {
            // One whole run record: its tag, its length, then `n` and values
            // of whatever length.
            data[0] = 5;
            let rest = (data.len() - 5) as u32;
            data[1..5].copy_from_slice(&rest.to_le_bytes());
            data[5..9].copy_from_slice(&((next() % 20) as u32).to_le_bytes());
        }
        mproc::fuzzing::result_message(&data);
    }
}

fn low_byte(n: u32) -> u8 {
    n as u8
}

fn page_of(n: u32) -> [u8; 4096] {
    [n as u8; 4096]
}

#[test]
fn a_map_after_a_bigger_one_reserves_for_itself_not_for_the_last() {
    let _dog = watchdog(Duration::from_secs(60), "a wide map after a long one");
    let pool = Pool::new(2).unwrap();
    // 16 M one-byte results: their buffers (16 MiB of task states among
    // them) are kept for the next big map...
    assert_eq!(pool.map(low_byte, 0..16_000_000u32).unwrap().len(), 16_000_000);
    // ...which must size its results by its own 4,096 tasks (16 MiB), not
    // by the last map's 16 M (64 GB: the allocation would abort us).
    let pages = pool.map(page_of, 0..4096u32).unwrap();
    assert!(pages.iter().enumerate().all(|(i, p)| p.iter().all(|&b| b == i as u8)));
}

/// Says it is always 4 bytes, but encodes its bytes as they are: values of
/// 2 and 6 bytes, in turn, add up to 4 a value.
#[derive(Debug, Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Wire for Blob {
    const MIN_ENCODED_LEN: usize = 0;
    const FIXED_LEN: Option<usize> = Some(4);

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, DecodeError> {
        let all = input.to_vec();
        *input = &[];
        Ok(Blob(all))
    }
}

fn byte_sum(b: Blob) -> u64 {
    b.0.iter().map(|&x| u64::from(x)).sum()
}

#[test]
fn arguments_whose_lengths_only_add_up_are_refused_not_misread() {
    let pool = Pool::new(1).unwrap();
    let blobs: Vec<Blob> =
        (0..8).map(|i| if i % 2 == 0 { Blob(vec![1, 2]) } else { Blob((3..=8).collect()) }).collect();
    let r = pool.map(byte_sum, blobs);
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("FIXED_LEN")), "{r:?}");
}
