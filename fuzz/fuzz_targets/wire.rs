//! Fuzz target: `Wire::from_bytes` for a few types. The first byte picks
//! the type. Decoding must not panic, and whatever decodes must encode back
//! to the same bytes (every value has exactly one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mproc::Wire;

fn round_trip<T: Wire>(bytes: &[u8]) {
    if let Ok(value) = T::from_bytes(bytes) {
        assert_eq!(value.to_bytes(), bytes, "a value with two encodings");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 8 {
        0 => round_trip::<Vec<u8>>(bytes),
        1 => round_trip::<String>(bytes),
        2 => round_trip::<Vec<u64>>(bytes),
        3 => round_trip::<(u32, Option<String>, bool)>(bytes),
        4 => round_trip::<Vec<Vec<(char, i16)>>>(bytes),
        5 => round_trip::<Result<Vec<f64>, String>>(bytes),
        6 => round_trip::<Vec<Option<[u64; 4]>>>(bytes),
        _ => round_trip::<Box<(usize, isize, [u8; 3], ())>>(bytes),
    }
});
