//! Option parsing: never panics on any option code and data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmirror_nbd::parse::{parse_option, parse_option_header};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let mut hdr = [0u8; 16];
    hdr.copy_from_slice(&data[..16]);
    let _ = parse_option_header(&hdr);
    let opt = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) % 16;
    let _ = parse_option(opt, &data[16..]);
});
