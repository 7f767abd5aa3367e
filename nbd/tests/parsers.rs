//! The pure parsers over a corpus of hostile inputs: they never panic, and
//! what they accept is within the export and the payload limits. The same
//! properties are what the cargo-fuzz targets in `nbd/fuzz/` check.

use rand::{Rng, SeedableRng};
use ringmirror_nbd::parse::*;
use ringmirror_nbd::proto::*;

fn ctxs() -> Vec<TransmissionCtx> {
    let mut v = Vec::new();
    for size in [0u64, 1, 4096, 1 << 30, u64::MAX] {
        for ro in [false, true] {
            for structured in [false, true] {
                let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FAST_ZERO | FLAG_SEND_WRITE_ZEROES;
                if ro {
                    f |= FLAG_READ_ONLY;
                }
                if structured {
                    f |= FLAG_SEND_DF;
                }
                v.push(TransmissionCtx {
                    export_size: size,
                    tx_flags: f,
                    structured,
                    block_status: structured,
                });
            }
        }
    }
    v
}

/// The invariants every verdict must satisfy.
fn check(h: &RequestHeader, ctx: &TransmissionCtx) {
    let end = |o: u64, l: u32| o.checked_add(u64::from(l));
    let inside = |o: u64, l: u32| end(o, l).is_some_and(|e| e <= ctx.export_size);
    let ro = ctx.tx_flags & FLAG_READ_ONLY != 0;
    match classify_request(h, ctx) {
        Verdict::Run(Command::Read { offset, len }) => {
            assert!(
                len > 0 && len <= MAX_PAYLOAD && inside(offset, len),
                "{h:?}"
            );
        }
        Verdict::Run(Command::Write { offset, len, .. }) => {
            assert!(
                !ro && len > 0 && len <= MAX_PAYLOAD && inside(offset, len),
                "{h:?}"
            );
            assert_eq!(h.kind, CMD_WRITE);
        }
        Verdict::Run(Command::Trim { offset, len, .. })
        | Verdict::Run(Command::WriteZeroes { offset, len, .. }) => {
            assert!(!ro && len > 0 && inside(offset, len), "{h:?}");
        }
        Verdict::Run(Command::BlockStatus { offset, len, .. }) => {
            assert!(ctx.block_status && len > 0 && inside(offset, len), "{h:?}");
        }
        Verdict::Run(Command::Flush | Command::Disc | Command::Cache) => {}
        Verdict::Reject { errno, discard, .. } => {
            assert!([EPERM, EINVAL, ENOSPC, EOVERFLOW].contains(&errno), "{h:?}");
            assert!(discard <= MAX_DISCARD);
            if h.kind == CMD_WRITE {
                assert_eq!(discard, h.len, "a rejected write's payload is skipped");
            } else {
                assert_eq!(discard, 0);
            }
        }
        Verdict::Close(_) => assert!(h.kind == CMD_WRITE && h.len > MAX_DISCARD, "{h:?}"),
    }
}

#[test]
fn request_headers_edge_corpus() {
    let offsets = [
        0u64,
        1,
        511,
        4095,
        4096,
        (1 << 30) - 1,
        1 << 30,
        u64::MAX - 1,
        u64::MAX,
    ];
    let lens = [
        0u32,
        1,
        512,
        MAX_PAYLOAD,
        MAX_PAYLOAD + 1,
        MAX_DISCARD,
        MAX_DISCARD + 1,
        u32::MAX,
    ];
    for ctx in ctxs() {
        for kind in 0..=12u16 {
            for bit in 0..16 {
                for &offset in &offsets {
                    for &len in &lens {
                        let h = RequestHeader {
                            flags: 1 << bit,
                            kind,
                            cookie: u64::MAX,
                            offset,
                            len,
                        };
                        check(&h, &ctx);
                        check(&RequestHeader { flags: 0, ..h }, &ctx);
                    }
                }
            }
        }
    }
}

#[test]
fn request_header_bytes_random_corpus() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ctxs = ctxs();
    for i in 0..200_000 {
        let mut b = [0u8; REQUEST_LEN];
        rng.fill(&mut b[..]);
        if i % 2 == 0 {
            b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            b[6] = 0;
            b[7] %= 10;
        }
        match parse_request_header(&b) {
            Ok(h) => {
                assert_eq!(
                    encode_request(h.flags, h.kind, h.cookie, h.offset, h.len),
                    b
                );
                check(&h, &ctxs[i % ctxs.len()]);
            }
            Err(BadMagic(m)) => assert_ne!(m, REQUEST_MAGIC),
        }
    }
}

fn option_corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 3],
        vec![0, 0, 0, 0],
        vec![0, 0, 0, 0, 0, 0],
        vec![0, 0, 0, 0, 0, 1],
        vec![0, 0, 0, 0, 0xff, 0xff],
        vec![0xff, 0xff, 0xff, 0xff, 0, 0],
        vec![0, 0, 0, 1, 0, 0, 0],
        vec![0, 0, 0, 1, b'a', 0, 0, 0, 0],
        vec![0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 2, 0xc3, 0x28, 0, 0],
        vec![0, 0, 0, 2, b'a', 0, 0, 0],
        b"base:allocation".to_vec(),
        vec![0, 0, 0x10, 0x01],
    ];
    // A 5000-byte name (over the 4096 limit) and a valid GO.
    let mut long = (5000u32).to_be_bytes().to_vec();
    long.extend(std::iter::repeat_n(b'x', 5000));
    long.extend_from_slice(&[0, 0]);
    v.push(long);
    let mut go = 1u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"d");
    go.extend_from_slice(&2u16.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    go.extend_from_slice(&INFO_NAME.to_be_bytes());
    v.push(go.clone());
    for cut in 0..go.len() {
        v.push(go[..cut].to_vec());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..20_000 {
        let n = rng.gen_range(0..64);
        let mut b = vec![0u8; n];
        rng.fill(&mut b[..]);
        // Small length prefixes make the fields line up more often.
        if n >= 4 && rng.gen_bool(0.5) {
            b[0..3].fill(0);
            b[3] %= 8;
        }
        v.push(b);
    }
    v
}

#[test]
fn options_corpus_never_panics_and_round_trips() {
    let corpus = option_corpus();
    for opt in 0..=12u32 {
        for data in &corpus {
            match parse_option(opt, data) {
                Ok(ClientOption::Go(r)) | Ok(ClientOption::Info(r)) => {
                    assert!(r.name.len() <= MAX_STRING && !r.name.contains('\0'));
                    assert_eq!(data.len(), 4 + r.name.len() + 2 + 2 * r.requests.len());
                }
                Ok(ClientOption::SetMetaContext(m)) | Ok(ClientOption::ListMetaContext(m)) => {
                    let used: usize =
                        8 + m.export.len() + m.queries.iter().map(|q| 4 + q.len()).sum::<usize>();
                    assert_eq!(used, data.len());
                }
                Ok(ClientOption::ExportName(n)) => assert_eq!(n.as_bytes(), &data[..]),
                Ok(ClientOption::List | ClientOption::StructuredReply | ClientOption::StartTls) => {
                    assert!(data.is_empty())
                }
                Ok(ClientOption::Unknown(o)) => assert!(o == 0 || o == 4 || o > 11),
                Ok(_) | Err(InvalidOption(_)) => {}
            }
        }
    }
    let mut hdr = [0u8; 16];
    assert!(parse_option_header(&hdr).is_err());
    hdr[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hdr[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(parse_option_header(&hdr), Ok((0, u32::MAX)));
}

#[test]
fn reply_parsers_corpus() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..50_000 {
        let n = rng.gen_range(0..48);
        let mut b = vec![0u8; n];
        rng.fill(&mut b[..]);
        if n >= 4 && rng.gen_bool(0.5) {
            let m = if rng.gen_bool(0.5) {
                SIMPLE_REPLY_MAGIC
            } else {
                STRUCTURED_REPLY_MAGIC
            };
            b[0..4].copy_from_slice(&m.to_be_bytes());
        }
        let _ = parse_reply_header(&b);
        if let Some((_, d)) = parse_block_status(&b) {
            assert_eq!(4 + 8 * d.len(), b.len());
        }
        if let Some((_, msg)) = parse_error_chunk(&b) {
            assert!(msg.len() <= 3 * b.len());
        }
    }
}
