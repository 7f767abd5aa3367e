//! `ringmirror copy SRC DST`: the standalone copy tool.

mod job;
mod verify;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringmirror_engine::{
    ArenaClass, DeviceKind, DeviceOpener, EngineConfig, ExtentKind, OpenOptions,
};

use crate::progress::{summary_line, Progress};
use crate::units::{fmt_bytes, fmt_rate, parse_size};
use crate::CliError;

pub use job::{copy, CopyParams, CopyStats};
pub use verify::{verify, VerifyError};

/// Arguments of `ringmirror copy`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  ringmirror copy disk.raw /var/lib/images/copy.raw --verify\n  \
ringmirror copy --speed 100M --json disk.raw /dev/vdb"
)]
pub struct CopyArgs {
    /// Source: a raw image file or a block device.
    pub src: String,
    /// Destination: created with the source's size if missing; an existing one
    /// must have the same size (see --resize).
    pub dst: String,
    /// Bytes in flight (split into requests of --request-size); also about the
    /// memory the copy uses. Many large writes in flight is what makes O_DIRECT
    /// into a new file fast (DESIGN.md, "The copy tool"). At most the source
    /// file's size, and an eighth of its allocated bytes (at least 4 requests).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub buf_size: u64,
    /// Bytes per read/write request.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub request_size: u64,
    /// io_uring operations in flight per reactor thread.
    #[arg(long, default_value_t = 64)]
    pub queue_depth: u32,
    /// Reactor threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Maximum copy rate in bytes per second (e.g. 100M); 0 = unlimited.
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub speed: u64,
    /// Write holes and zero blocks as data (the destination is fully allocated).
    #[arg(long)]
    pub no_sparse: bool,
    /// The destination already reads as zeroes: do not zero its holes.
    #[arg(long)]
    pub target_is_zero: bool,
    /// Resize an existing destination file to the source's size.
    #[arg(long)]
    pub resize: bool,
    /// Preallocate a new destination's data ranges (fallocate) before writing
    /// them. Off by default: measured slower here than delayed allocation.
    #[arg(long)]
    pub preallocate: bool,
    /// Compare source and destination after the copy; fail on any difference.
    #[arg(long)]
    pub verify: bool,
    /// `direct`: O_DIRECT on both sides (the default: predictable, and no
    /// page-cache pollution). `buffered`: the destination is written through
    /// the page cache, its writeback started as each write completes, and
    /// fsync'd at the end (can be faster into a new file on filesystems where
    /// direct writes pay for allocation; see DESIGN.md). The source is read
    /// with O_DIRECT either way.
    #[arg(long, value_parser = ["direct", "buffered"], default_value = "direct")]
    pub cache: String,
    /// Progress and summary as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            x.dev() == y.dev() && x.ino() == y.ino() || (x.rdev() != 0 && x.rdev() == y.rdev())
        }
        _ => false,
    }
}

fn free_space(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Run `work` on its own thread, calling `tick` every `period` until it is
/// done (and not a tick longer).
fn with_progress<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
    period: Duration,
    tick: impl Fn(),
) -> Result<T, CliError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("rm-{what}"))
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| CliError::msg(format!("cannot start the {what} thread: {e}")))?;
    loop {
        tick();
        match rx.recv_timeout(period) {
            Ok(v) => return Ok(v),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(CliError::msg(format!("the {what} thread panicked")))
            }
        }
    }
}

/// Run `ringmirror copy`.
pub fn run(args: CopyArgs) -> Result<(), CliError> {
    let (src_path, dst_path) = (Path::new(&args.src), Path::new(&args.dst));
    if args.request_size == 0
        || args.request_size > (256 << 20)
        || !args.request_size.is_multiple_of(4096)
    {
        return Err(CliError::usage(
            "--request-size must be a multiple of 4 KiB between 4K and 256M",
        ));
    }
    if args.buf_size < args.request_size {
        return Err(CliError::usage(
            "--buf-size must be at least --request-size",
        ));
    }
    if args.queue_depth == 0 || args.queue_depth > 4096 {
        return Err(CliError::usage("--queue-depth must be between 1 and 4096"));
    }
    if !src_path.exists() {
        return Err(CliError::msg(format!(
            "cannot open source {}: No such file or directory",
            args.src
        )));
    }
    if dst_path.exists() && same_file(src_path, dst_path) {
        return Err(CliError::msg(format!(
            "source and destination are the same file ({}); refusing to copy onto itself",
            args.src
        )));
    }
    let mut lanes = (args.buf_size / args.request_size).max(1) as usize;
    if let Ok(m) = std::fs::metadata(src_path) {
        if m.is_file() {
            // A small source file needs no more buffers (registered, so
            // locked memory) than it has requests.
            lanes = lanes.min(m.len().div_ceil(args.request_size).max(1) as usize);
            // Nor a mostly sparse one more than an eighth of its data (at
            // least 4): setting buffers up costs about 0.4 ms per MiB, the
            // copy about 1 ms per MiB of data, so this keeps the set-up
            // under ~5% of the copy (DESIGN.md, "The copy tool").
            let data = m.blocks().saturating_mul(512).min(m.len());
            lanes = lanes.min((data / 8).div_ceil(args.request_size).max(4) as usize);
        }
    }
    let opener = DeviceOpener::new(EngineConfig {
        threads: args
            .threads
            .unwrap_or_else(|| EngineConfig::default().threads),
        queue_depth: args.queue_depth,
        arenas: vec![
            ArenaClass {
                chunk_size: 64 << 10,
                count: 32,
            },
            ArenaClass {
                chunk_size: args.request_size as usize,
                count: lanes,
            },
        ],
        ..EngineConfig::default()
    });
    let src = opener
        .open(
            src_path,
            &OpenOptions {
                write: false,
                // Read once: O_DIRECT in both modes (see `cache`).
                direct: true,
            },
        )
        .map_err(|e| CliError::msg(format!("cannot open source: {e}")))?;
    let size = src.size();

    // The destination: create it, or check the existing one's size.
    let mut created = false;
    if !dst_path.exists() {
        let parent = dst_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let need: u64 = if args.no_sparse {
            size
        } else {
            src.extents(0, size)
                .map_err(|e| CliError::msg(format!("cannot map source: {e}")))?
                .iter()
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.len)
                .sum()
        };
        if let Some(avail) = free_space(parent) {
            if need > avail {
                return Err(CliError::msg(format!(
                    "not enough space for {}: the copy needs up to {} and {} has {} available; \
                     nothing was written",
                    args.dst,
                    fmt_bytes(need),
                    parent.display(),
                    fmt_bytes(avail)
                )));
            }
        }
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst_path)
            .map_err(|e| CliError::msg(format!("cannot create destination {}: {e}", args.dst)))?;
        if let Err(e) = f.set_len(size) {
            let _ = fs::remove_file(dst_path);
            return Err(CliError::msg(format!(
                "cannot size destination {}: {e}",
                args.dst
            )));
        }
        created = true;
    }
    let cleanup = |created: bool| {
        if created {
            let _ = fs::remove_file(dst_path);
        }
    };
    let dst_direct = args.cache != "buffered";
    let dst = match opener.open(
        dst_path,
        &OpenOptions {
            write: true,
            direct: dst_direct,
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            cleanup(created);
            return Err(CliError::msg(format!("cannot open destination: {e}")));
        }
    };
    if dst.size() != size {
        if args.resize && dst.info().kind == DeviceKind::File {
            dst.resize(size)
                .map_err(|e| CliError::msg(format!("cannot resize destination: {e}")))?;
        } else {
            return Err(CliError::msg(format!(
                "destination {} is {} ({} bytes) but the source is {} ({} bytes); {}",
                args.dst,
                fmt_bytes(dst.size()),
                dst.size(),
                fmt_bytes(size),
                size,
                if dst.info().kind == DeviceKind::File {
                    "use --resize to change its size"
                } else {
                    "a block device cannot be resized"
                }
            )));
        }
    }

    let params = CopyParams {
        request_size: args.request_size as usize,
        lanes,
        sparse: !args.no_sparse,
        target_is_zero: created || args.target_is_zero,
        speed: args.speed,
        preallocate: args.preallocate && created && dst.info().kind == DeviceKind::File,
    };
    let stats = Arc::new(CopyStats::default());
    let cancel = Arc::new(AtomicBool::new(false));
    crate::signals::on_interrupt({
        let cancel = cancel.clone();
        move |_n| cancel.store(true, Ordering::Relaxed)
    });

    let progress = Progress::new("copy", size, args.json, args.quiet);
    let start = Instant::now();
    let tick = Duration::from_millis(if args.json { 500 } else { 100 });
    let res = {
        let (src, dst, st, cancel, params) = (
            src.clone(),
            dst.clone(),
            stats.clone(),
            cancel.clone(),
            params.clone(),
        );
        with_progress(
            "copy",
            move || copy(&src, &dst, &params, &st, &cancel),
            tick,
            || progress.update(stats.done.load(Ordering::Relaxed), size, "copying"),
        )?
    };
    let secs = start.elapsed().as_secs_f64();
    progress.finish();
    if let Err(e) = res {
        drop((src, dst));
        cleanup(created);
        let what = if cancel.load(Ordering::Relaxed) {
            "interrupted"
        } else {
            "failed"
        };
        return Err(CliError::msg(format!(
            "copy {what}: {e}{}",
            if created {
                " (the new destination was removed)"
            } else {
                ""
            }
        )));
    }
    if cancel.load(Ordering::Relaxed) {
        cleanup(created);
        return Err(CliError::msg(format!(
            "copy interrupted after {}{}",
            fmt_bytes(stats.done.load(Ordering::Relaxed)),
            if created {
                " (the new destination was removed)"
            } else {
                ""
            }
        )));
    }

    let mut verified = None;
    if args.verify {
        let done = Arc::new(AtomicU64::new(0));
        let vprog = Progress::new("verify", size, args.json, args.quiet);
        let vstart = Instant::now();
        let res = {
            let (src, dst, d) = (src.clone(), dst.clone(), done.clone());
            let (req, lanes) = (params.request_size, lanes);
            with_progress(
                "verify",
                move || verify(&src, &dst, req, lanes, &d),
                tick,
                || vprog.update(done.load(Ordering::Relaxed), size, "verifying"),
            )?
        };
        vprog.finish();
        match res {
            Ok(()) => verified = Some(vstart.elapsed().as_secs_f64()),
            Err(VerifyError::Differ(at)) => {
                return Err(CliError::msg(format!(
                    "VERIFY FAILED: {} and {} differ at offset {at}",
                    args.src, args.dst
                )))
            }
            Err(VerifyError::Io(e)) => return Err(CliError::msg(format!("verify failed: {e}"))),
        }
    }

    let s = |a: &AtomicU64| a.load(Ordering::Relaxed);
    if args.json {
        let line = serde_json::json!({
            "event": "done",
            "size": size,
            "seconds": secs,
            "bytes_per_sec": (size as f64 / secs.max(1e-9)) as u64,
            "read": s(&stats.read),
            "written": s(&stats.written),
            "holes_skipped": s(&stats.holes),
            "zero_data_skipped": s(&stats.zero_data),
            "zeroed": s(&stats.zeroed),
            "verified": verified.is_some(),
            "engine": opener.label(),
        });
        println!("{line}");
    } else {
        eprintln!(
            "copied {} ({}): read {}, wrote {}, skipped {} of holes and {} of zero data, zeroed {} on the target",
            summary_line(size, secs),
            opener.label(),
            fmt_bytes(s(&stats.read)),
            fmt_bytes(s(&stats.written)),
            fmt_bytes(s(&stats.holes)),
            fmt_bytes(s(&stats.zero_data)),
            fmt_bytes(s(&stats.zeroed)),
        );
        if let Some(v) = verified {
            eprintln!(
                "verified: identical ({} in {v:.2} s, {})",
                fmt_bytes(size),
                fmt_rate(size, v)
            );
        }
    }
    Ok(())
}
