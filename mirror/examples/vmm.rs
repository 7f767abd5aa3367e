//! A VMM-like program that writes to its disk while mirroring it to a new
//! image, then pivots to the new image without losing a write.
//!
//! ```text
//! cargo run --release -p ringmirror-mirror --example vmm -- [DIR]
//! ```
//!
//! It creates a 256 MiB source image in DIR (default: the current
//! directory), runs a "guest" thread that writes random 4 KiB blocks through
//! the disk handle, mirrors the disk to a new image, completes the job once
//! READY, keeps writing to the (now switched) disk, and finally checks that
//! every acknowledged write is on the new image.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringmirror_engine::{BlockDeviceExt, Engine, EngineConfig, OpenOptions};
use ringmirror_mirror::{Disk, JobEvent, MirrorJob, MirrorOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let (src_path, dst_path) = (dir.join("vmm-source.img"), dir.join("vmm-target.img"));
    let size: u64 = 256 << 20;
    std::fs::File::create(&src_path)?.set_len(size)?;
    std::fs::File::create(&dst_path)?.set_len(size)?;

    // The VMM's disk: the guest only ever sees `disk`.
    let engine = Engine::new(EngineConfig::default())?;
    let source = engine.open(&src_path, &OpenOptions::read_write())?;
    let disk = Disk::new("vda", source);

    // The guest: random 4 KiB writes, remembering what it wrote where.
    let written: Arc<Mutex<HashMap<u64, u8>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let (disk, written, stop) = (disk.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64, ringmirror_engine::IoError> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let block = rng.gen_range(0..size / 4096);
                let byte: u8 = rng.gen_range(1..=255);
                disk.write_at(block * 4096, &[byte; 4096], false)?;
                written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(block, byte);
                n += 1;
            }
            Ok(n)
        })
    };

    // Mirror while the guest writes.
    let target = engine.open(&dst_path, &OpenOptions::read_write())?;
    let job = MirrorJob::start(&disk, target.clone(), MirrorOptions::new("job0"), None)?;
    let events = job.subscribe();
    loop {
        match events.recv_timeout(Duration::from_secs(120))? {
            JobEvent::Ready { progress, .. } => {
                println!(
                    "READY: {} bytes copied; the dirty rate is {:?}",
                    progress.offset,
                    job.rates()
                );
                job.complete()?;
            }
            JobEvent::Completed { error: None, .. } => break,
            JobEvent::Completed { error: Some(e), .. } => return Err(e.into()),
            _ => {}
        }
    }
    println!(
        "pivoted: the disk is now backed by {}",
        disk.current().info().name
    );
    std::thread::sleep(Duration::from_millis(200)); // the guest keeps writing, to the target
    stop.store(true, Ordering::Relaxed);
    let writes = guest.join().map_err(|_| "guest panicked")??;

    // Every acknowledged write is on the new image.
    let written = written.lock().unwrap_or_else(|e| e.into_inner());
    for (&block, &byte) in written.iter() {
        let data = target.read_at(block * 4096, 4096)?;
        if data.iter().any(|&b| b != byte) {
            return Err(format!("block {block} lost its write").into());
        }
    }
    println!(
        "{writes} guest writes, {} distinct blocks, all on the target",
        written.len()
    );
    std::fs::remove_file(&src_path)?;
    std::fs::remove_file(&dst_path)?;
    Ok(())
}
