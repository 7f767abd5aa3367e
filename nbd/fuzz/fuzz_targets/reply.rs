//! Client-side reply parsing: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmirror_nbd::parse::{parse_block_status, parse_error_chunk, parse_reply_header};

fuzz_target!(|data: &[u8]| {
    let _ = parse_reply_header(data);
    let _ = parse_block_status(data);
    let _ = parse_error_chunk(data);
});
