//! Differential tests: the io_uring engine (with and without registered
//! buffers and files) and the O_DIRECT pread engine against the oracle, a
//! buffered pread/pwrite device on a second file. Same operations, same
//! results, same bytes.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use ringmirror_engine::{
    BlockDevice, BlockDeviceExt, Engine, EngineConfig, ErrorKind, OpenOptions, SyncFile,
};
use ringmirror_testkit::{assert_files_equal, random_bytes, sparse_file, ScratchDir};

#[derive(Clone, Debug)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
        fua: bool,
    },
    Read {
        off: u64,
        len: u64,
    },
    Zero {
        off: u64,
        len: u64,
        unmap: bool,
    },
    Flush,
}

fn engines() -> Vec<(&'static str, Engine)> {
    vec![
        (
            "io_uring registered",
            Engine::new(EngineConfig {
                threads: 2,
                ..EngineConfig::default()
            })
            .expect("io_uring engine"),
        ),
        (
            "io_uring plain",
            Engine::new(EngineConfig {
                threads: 1,
                register_buffers: false,
                fixed_files: 0,
                queue_depth: 4,
                ..EngineConfig::default()
            })
            .expect("io_uring engine"),
        ),
    ]
}

fn op_strategy(size: u64) -> impl Strategy<Value = Op> {
    // Half the requests aligned to 4 KiB, half anywhere; a few out of range.
    let pos = move |aligned: bool| {
        (0..=size + 8192, 0u64..=(200 << 10)).prop_map(move |(o, l)| {
            if aligned {
                (o / 4096 * 4096, l / 4096 * 4096)
            } else {
                (o, l)
            }
        })
    };
    let aligned = any::<bool>();
    prop_oneof![
        4 => (aligned.prop_flat_map(pos), any::<u64>(), any::<bool>())
            .prop_map(|((off, len), seed, fua)| Op::Write { off, len, seed, fua }),
        3 => aligned.prop_flat_map(pos).prop_map(|(off, len)| Op::Read { off, len }),
        2 => (aligned.prop_flat_map(pos), any::<bool>())
            .prop_map(|((off, len), unmap)| Op::Zero { off, len, unmap }),
        1 => Just(Op::Flush),
    ]
}

fn apply(dev: &dyn BlockDevice, op: &Op) -> Result<Option<Vec<u8>>, ErrorKind> {
    match *op {
        Op::Write {
            off,
            len,
            seed,
            fua,
        } => dev
            .write_at(off, &random_bytes(seed, len as usize), fua)
            .map(|()| None)
            .map_err(|e| e.kind),
        Op::Read { off, len } => dev
            .read_at(off, len as usize)
            .map(|b| Some(b.to_vec()))
            .map_err(|e| e.kind),
        Op::Zero { off, len, unmap } => dev
            .write_zeroes_sync(off, len, unmap)
            .map(|()| None)
            .map_err(|e| e.kind),
        Op::Flush => dev.flush_sync().map(|()| None).map_err(|e| e.kind),
    }
}

fn init(path: &Path, size: u64, seed: u64) {
    ringmirror_testkit::write_file(path, &random_bytes(seed, size as usize));
}

fn run_case(size: u64, ops: &[Op]) {
    let dir = ScratchDir::new("engine-diff");
    let (oracle_path, test_path) = (dir.join("oracle.img"), dir.join("test.img"));
    init(&oracle_path, size, 7);
    let oracle = SyncFile::open_sync(
        &oracle_path,
        &OpenOptions {
            write: true,
            direct: false,
        },
    )
    .unwrap();
    let mut devices: Vec<(String, Arc<dyn BlockDevice>)> = Vec::new();
    for (name, engine) in engines() {
        let p = dir.join(&format!("{}.img", name.replace(' ', "_")));
        init(&p, size, 7);
        devices.push((
            name.into(),
            engine.open(&p, &OpenOptions::read_write()).unwrap(),
        ));
    }
    init(&test_path, size, 7);
    devices.push((
        "pread O_DIRECT".into(),
        SyncFile::open_sync(&test_path, &OpenOptions::read_write()).unwrap(),
    ));
    for op in ops {
        let want = apply(&*oracle, op);
        for (name, dev) in &devices {
            let got = apply(&**dev, op);
            assert_eq!(got, want, "{name} differs from the oracle on {op:?}");
        }
    }
    drop(devices);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        assert_files_equal(&oracle_path, &p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Images whose size is not a multiple of the alignment included.
    #[test]
    fn matches_oracle(size in prop_oneof![Just(1025u64 << 10), Just(1000u64), Just((8 << 20) + 512), Just(64u64 << 10), 1u64..(3 << 20)],
                      ops in proptest::collection::vec(op_strategy(3 << 20), 1..40)) {
        run_case(size, &ops);
    }
}

#[test]
fn zero_length_device() {
    run_case(
        0,
        &[
            Op::Read { off: 0, len: 0 },
            Op::Write {
                off: 0,
                len: 0,
                seed: 1,
                fua: false,
            },
            Op::Read { off: 0, len: 1 },
            Op::Zero {
                off: 0,
                len: 0,
                unmap: true,
            },
            Op::Flush,
        ],
    );
}

#[test]
fn out_of_range_is_an_error_and_changes_nothing() {
    let dir = ScratchDir::new("engine-oor");
    let p = dir.join("a.img");
    init(&p, 1 << 20, 3);
    let before = std::fs::read(&p).unwrap();
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let dev = engine.open(&p, &OpenOptions::read_write()).unwrap();
    for (off, len) in [(1 << 20, 1), ((1 << 20) - 512, 1024), (u64::MAX - 10, 100)] {
        let e = dev.write_at(off, &vec![1u8; len], false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfRange, "{e}");
        assert!(e.to_string().contains("has 1048576 bytes"), "{e}");
        assert_eq!(
            dev.read_at(off, len).unwrap_err().kind,
            ErrorKind::OutOfRange
        );
    }
    drop(dev);
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

/// Many concurrent unaligned writes that share blocks but not bytes: each
/// is a read-modify-write of the same blocks, and none may be lost.
#[test]
fn concurrent_unaligned_writes_sharing_blocks_are_all_kept() {
    let dir = ScratchDir::new("engine-rmw");
    let p = dir.join("a.img");
    sparse_file(&p, 1 << 20);
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let dev = engine.open(&p, &OpenOptions::read_write()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = 400u64;
    for i in 0..n {
        // 100-byte pieces: 41 of them share each 4 KiB block.
        let mut buf = dev.alloc_buf(100);
        buf.fill((i % 251) as u8 + 1);
        let tx = tx.clone();
        dev.write(
            i * 100,
            buf,
            false,
            Box::new(move |_b, r| tx.send(r).unwrap()),
        );
    }
    for _ in 0..n {
        rx.recv().unwrap().unwrap();
    }
    let data = dev.read_at(0, (n * 100) as usize).unwrap();
    for i in 0..n as usize {
        assert!(
            data[i * 100..(i + 1) * 100]
                .iter()
                .all(|&b| b == (i % 251) as u8 + 1),
            "write {i} was lost"
        );
    }
}

#[test]
fn offsets_beyond_4_gib() {
    let dir = ScratchDir::new("engine-4g");
    let p = dir.join("big.img");
    sparse_file(&p, 6 << 30);
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let dev = engine.open(&p, &OpenOptions::read_write()).unwrap();
    let off = (5u64 << 30) + 12345;
    let data = random_bytes(9, 300_000);
    dev.write_at(off, &data, true).unwrap();
    assert_eq!(&dev.read_at(off, data.len()).unwrap()[..], &data[..]);
    let ext = dev.extents(0, 6 << 30).unwrap();
    assert_eq!(ext.len(), 3, "{ext:?}");
    assert_eq!(ext[1].kind, ringmirror_engine::ExtentKind::Data);
    assert!(ext[1].offset <= off && ext[1].offset + ext[1].len >= off + data.len() as u64);
}

#[test]
fn large_buffers_start_zeroed_and_round_trip() {
    // Buffers of 2 MiB and more are anonymous mappings (engine/src/sys.rs):
    // zeroed, writable, aligned, and usable for direct I/O both as heap
    // buffers and as the default engine's registered arenas (8 and 32 MiB,
    // used by every other test here).
    let dir = ScratchDir::new("engine-bigbuf");
    let p = dir.join("big.img");
    sparse_file(&p, 64 << 20);
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let dev = engine.open(&p, &OpenOptions::read_write()).unwrap();
    for len in [2 << 20, (8 << 20) + 4096] {
        let mut buf = ringmirror_engine::DmaBuf::new(len, 4096);
        assert!(buf.is_zero(), "a new {len}-byte buffer must read as zeroes");
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        let data = random_bytes(len as u64, len);
        buf.copy_from_slice(&data);
        let (tx, rx) = crossbeam_channel::bounded(1);
        dev.write(
            4 << 20,
            buf,
            false,
            Box::new(move |b, r| {
                let _ = tx.send((b, r));
            }),
        );
        let (_, r) = rx.recv().unwrap();
        r.unwrap();
        assert_eq!(&dev.read_at(4 << 20, len).unwrap()[..], &data[..]);
    }
}
