//! Fuzz target: see `mproc::fuzzing::result_message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mproc::fuzzing::result_message(data));
