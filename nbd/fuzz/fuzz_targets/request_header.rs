//! Request header parsing and validation: never panics, and whatever it
//! lets run lies inside the export and the payload limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmirror_nbd::parse::{
    classify_request, parse_request_header, Command, TransmissionCtx, Verdict,
};
use ringmirror_nbd::proto::{FLAG_READ_ONLY, MAX_PAYLOAD, REQUEST_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < REQUEST_LEN + 11 {
        return;
    }
    let mut hdr = [0u8; REQUEST_LEN];
    hdr.copy_from_slice(&data[..REQUEST_LEN]);
    let rest = &data[REQUEST_LEN..];
    let mut size = [0u8; 8];
    size.copy_from_slice(&rest[..8]);
    let ctx = TransmissionCtx {
        export_size: u64::from_le_bytes(size),
        tx_flags: u16::from_le_bytes([rest[8], rest[9]]),
        structured: rest[10] & 1 != 0,
        block_status: rest[10] & 2 != 0,
    };
    let Ok(h) = parse_request_header(&hdr) else {
        return;
    };
    let inside = |o: u64, l: u32| {
        o.checked_add(u64::from(l))
            .is_some_and(|e| e <= ctx.export_size)
    };
    match classify_request(&h, &ctx) {
        Verdict::Run(Command::Read { offset, len }) => {
            assert!(len <= MAX_PAYLOAD && inside(offset, len))
        }
        Verdict::Run(Command::Write { offset, len, .. }) => {
            assert!(len <= MAX_PAYLOAD && inside(offset, len) && ctx.tx_flags & FLAG_READ_ONLY == 0)
        }
        Verdict::Run(Command::Trim { offset, len, .. })
        | Verdict::Run(Command::WriteZeroes { offset, len, .. })
        | Verdict::Run(Command::BlockStatus { offset, len, .. }) => assert!(inside(offset, len)),
        _ => {}
    }
});
