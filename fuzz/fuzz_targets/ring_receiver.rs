//! Fuzz target: see `mproc::fuzzing::ring_receiver`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mproc::fuzzing::ring_receiver(data));
