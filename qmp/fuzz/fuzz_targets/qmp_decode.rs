//! Fuzzes the QMP stream decoder: `cargo +nightly fuzz run qmp_decode` (from `qmp/`).
//! Seeds: `qmp/fuzz/seeds/` (`cargo +nightly fuzz run qmp_decode fuzz/seeds`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmirror_qmp::json::check_decoder_invariants(data);
});
