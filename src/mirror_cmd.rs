//! `ringmirror mirror`: a one-shot live mirror with a progress bar, either
//! on a running daemon (over QMP) or on two images it opens itself.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringmirror_engine::{DeviceOpener, EngineConfig, OpenOptions};
use ringmirror_mirror::{CopyMode, Disk, JobEvent, MirrorJob, MirrorOptions, SyncMode};
use serde_json::{json, Value};

use crate::progress::Progress;
use crate::qmp_client::QmpClient;
use crate::units::{fmt_bytes, fmt_rate, parse_size};
use crate::CliError;

/// Arguments of `ringmirror mirror`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
ringmirror mirror --qmp /run/rm.sock --device src --target tgt --complete-when-ready\n  \
ringmirror mirror --source old.raw --target new.raw --complete-when-ready\n\
Ctrl-C once: cancel (in READY the target stays a consistent copy); twice: force-cancel.")]
pub struct MirrorArgs {
    /// QMP socket of a running `ringmirror serve` (or qemu-storage-daemon).
    #[arg(long, conflicts_with = "source")]
    pub qmp: Option<PathBuf>,
    /// With --qmp: the source node.
    #[arg(long, requires = "qmp")]
    pub device: Option<String>,
    /// With --qmp: the target node; without: the target image path.
    #[arg(long)]
    pub target: String,
    /// Without --qmp: the source image path (mirrored with no guest attached).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Job id.
    #[arg(long, default_value = "mirror0")]
    pub job_id: String,
    /// full, top or none.
    #[arg(long, default_value = "full", value_parser = ["full", "top", "none"])]
    pub sync: String,
    /// Bytes per second (0 = unlimited).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub speed: u64,
    /// Dirty-tracking granularity.
    #[arg(long, value_parser = parse_size)]
    pub granularity: Option<u64>,
    /// Bytes in flight.
    #[arg(long, value_parser = parse_size)]
    pub buf_size: Option<u64>,
    /// background or write-blocking.
    #[arg(long, default_value = "background", value_parser = ["background", "write-blocking"])]
    pub copy_mode: String,
    /// With --qmp (a guest uses the daemon's export): percent of its speed
    /// a busy guest keeps beside the background copy (0-100, 0 = no pacing;
    /// ringmirror serve only, sent as `x-guest-share`). Default: automatic,
    /// about 87%, lending the copy more (down to 50%) if it stops converging.
    #[arg(long, requires = "qmp", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub guest_share: Option<u8>,
    /// Switch to the target as soon as it is in sync.
    #[arg(long)]
    pub complete_when_ready: bool,
    /// Progress as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What the loop learns from either backend.
struct Snapshot {
    status: String,
    len: u64,
    offset: u64,
}

/// Events since the last poll (name, data), and the job's state now.
type Polled = (Vec<(String, Value)>, Option<Snapshot>);

trait Backend {
    fn poll(&mut self, wait: Duration) -> Result<Polled, String>;
    fn complete(&mut self) -> Result<(), String>;
    fn cancel(&mut self, force: bool) -> Result<(), String>;
}

struct Remote {
    qmp: QmpClient,
    id: String,
}

impl Backend for Remote {
    fn poll(&mut self, wait: Duration) -> Result<Polled, String> {
        let mut events = Vec::new();
        let deadline = Instant::now() + wait;
        while let Some(ev) = self
            .qmp
            .next_event(deadline.saturating_duration_since(Instant::now()))?
        {
            let name = ev["event"].as_str().unwrap_or_default().to_string();
            events.push((name, ev["data"].clone()));
            if Instant::now() >= deadline {
                break;
            }
        }
        let jobs = self.qmp.execute("query-block-jobs", json!({}))?;
        let snap = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["device"] == self.id.as_str()))
            .map(|j| Snapshot {
                status: j["status"].as_str().unwrap_or_default().to_string(),
                len: j["len"].as_u64().unwrap_or(0),
                offset: j["offset"].as_u64().unwrap_or(0),
            });
        Ok((events, snap))
    }
    fn complete(&mut self) -> Result<(), String> {
        self.qmp
            .execute("block-job-complete", json!({"device": self.id}))
            .map(|_| ())
    }
    fn cancel(&mut self, force: bool) -> Result<(), String> {
        self.qmp
            .execute(
                "block-job-cancel",
                json!({"device": self.id, "force": force}),
            )
            .map(|_| ())
    }
}

struct Local {
    job: MirrorJob,
    events: crossbeam_channel::Receiver<JobEvent>,
}

impl Backend for Local {
    fn poll(&mut self, wait: Duration) -> Result<Polled, String> {
        let mut out = Vec::new();
        if let Ok(ev) = self.events.recv_timeout(wait) {
            out.push((ev.name().to_string(), ev.data()));
            while let Ok(ev) = self.events.try_recv() {
                out.push((ev.name().to_string(), ev.data()));
            }
        }
        let q = self.job.query();
        let snap = (!q.status.is_finished()).then(|| Snapshot {
            status: q.status.as_str().to_string(),
            len: q.len,
            offset: q.offset,
        });
        Ok((out, snap))
    }
    fn complete(&mut self) -> Result<(), String> {
        self.job.complete().map_err(|e| e.to_string())
    }
    fn cancel(&mut self, force: bool) -> Result<(), String> {
        self.job.cancel(force).map_err(|e| e.to_string())
    }
}

/// Run `ringmirror mirror`.
pub fn run(args: MirrorArgs) -> Result<(), CliError> {
    let interrupts = Arc::new(AtomicUsize::new(0));
    crate::signals::on_interrupt({
        let i = interrupts.clone();
        move |n| i.store(n, Ordering::SeqCst)
    });
    let mut backend: Box<dyn Backend> = if let Some(qmp) = &args.qmp {
        let device = args
            .device
            .clone()
            .ok_or_else(|| CliError::usage("--qmp needs --device (the source node)"))?;
        let mut client = QmpClient::connect(qmp).map_err(CliError::msg)?;
        let mut a = json!({
            "job-id": args.job_id, "device": device, "target": args.target,
            "sync": args.sync, "speed": args.speed, "copy-mode": args.copy_mode,
        });
        if let Some(g) = args.granularity {
            a["granularity"] = json!(g);
        }
        if let Some(b) = args.buf_size {
            a["buf-size"] = json!(b);
        }
        if let Some(p) = args.guest_share {
            a["x-guest-share"] = json!(p);
        }
        client
            .execute("blockdev-mirror", a)
            .map_err(|e| CliError::msg(format!("blockdev-mirror failed: {e}")))?;
        Box::new(Remote {
            qmp: client,
            id: args.job_id.clone(),
        })
    } else {
        let source = args
            .source
            .clone()
            .ok_or_else(|| CliError::usage("give --qmp SOCKET --device NODE, or --source PATH"))?;
        // clap drops `requires = "qmp"` when --source (which conflicts with
        // --qmp) is given: say it here.
        if args.device.is_some() {
            return Err(CliError::usage(
                "--device is for --qmp (with --source, give paths)",
            ));
        }
        if args.guest_share.is_some() {
            return Err(CliError::usage(
                "--guest-share needs --qmp: two images have no guest to share the disk with",
            ));
        }
        let opener = DeviceOpener::new(EngineConfig::default());
        let src = opener
            .open(&source, &OpenOptions::read_write())
            .map_err(|e| CliError::msg(format!("cannot open source: {e}")))?;
        let tgt_path = PathBuf::from(&args.target);
        if !tgt_path.exists() {
            let f = std::fs::File::create(&tgt_path)
                .map_err(|e| CliError::msg(format!("cannot create {}: {e}", args.target)))?;
            f.set_len(src.size())
                .map_err(|e| CliError::msg(format!("cannot size {}: {e}", args.target)))?;
        }
        let tgt = opener
            .open(&tgt_path, &OpenOptions::read_write())
            .map_err(|e| CliError::msg(format!("cannot open target: {e}")))?;
        let disk = Disk::new("source", src);
        let mut o = MirrorOptions::new(args.job_id.clone());
        o.sync = SyncMode::parse(&args.sync).unwrap_or(SyncMode::Full);
        o.speed = args.speed;
        o.copy_mode = CopyMode::parse(&args.copy_mode).unwrap_or(CopyMode::Background);
        if let Some(g) = args.granularity {
            o.granularity = g;
        }
        if let Some(b) = args.buf_size {
            o.buf_size = b;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink: ringmirror_mirror::EventSink = Arc::new(move |e: &JobEvent| {
            let _ = tx.send(e.clone());
        });
        let job = MirrorJob::start(&disk, tgt, o, Some(sink))
            .map_err(|e| CliError::msg(e.to_string()))?;
        Box::new(Local { job, events: rx })
    };

    let progress = Progress::new("mirror", 0, args.json, args.quiet);
    let start = Instant::now();
    let mut ready_at: Option<f64> = None;
    let mut handled_interrupts = 0;
    let mut completed_asked = false;
    let mut missing = 0;
    loop {
        let n = interrupts.load(Ordering::SeqCst);
        if n > handled_interrupts {
            handled_interrupts = n;
            let force = n >= 2;
            eprintln!(
                "\nringmirror mirror: {} cancel requested",
                if force { "force" } else { "soft" }
            );
            if let Err(e) = backend.cancel(force) {
                eprintln!("ringmirror mirror: cancel: {e}");
            }
        }
        let (events, snap) = backend
            .poll(Duration::from_millis(200))
            .map_err(CliError::msg)?;
        for (name, data) in &events {
            if args.json {
                println!("{}", json!({"event": name, "data": data}));
            }
            match name.as_str() {
                "BLOCK_JOB_READY" => {
                    ready_at = Some(start.elapsed().as_secs_f64());
                    if args.complete_when_ready && !completed_asked {
                        completed_asked = true;
                        backend
                            .complete()
                            .map_err(|e| CliError::msg(format!("complete failed: {e}")))?;
                    } else if !args.complete_when_ready && !args.json && !args.quiet {
                        eprintln!("ringmirror mirror: READY: the target is in sync; Ctrl-C to stop (the target stays a consistent copy)");
                    }
                }
                "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => {
                    progress.finish();
                    let secs = start.elapsed().as_secs_f64();
                    let len = data["len"].as_u64().unwrap_or(0);
                    if let Some(err) = data.get("error").and_then(Value::as_str) {
                        return Err(CliError::msg(format!("mirror failed: {err}")));
                    }
                    let what = if name == "BLOCK_JOB_CANCELLED" {
                        "cancelled (the target may be inconsistent)"
                    } else if completed_asked {
                        "completed: the disk now uses the target"
                    } else {
                        "stopped in sync: the target is a consistent copy"
                    };
                    if !args.json {
                        eprintln!(
                            "ringmirror mirror: {what}; {} copied in {secs:.2} s ({}){}",
                            fmt_bytes(len),
                            fmt_rate(len, secs),
                            ready_at
                                .map(|r| format!(", READY after {r:.2} s"))
                                .unwrap_or_default()
                        );
                    }
                    return if name == "BLOCK_JOB_CANCELLED" {
                        Err(CliError::msg("the job was cancelled"))
                    } else {
                        Ok(())
                    };
                }
                "BLOCK_JOB_ERROR" if !args.json => {
                    eprintln!("ringmirror mirror: I/O error: {data}");
                }
                _ => {}
            }
        }
        match snap {
            Some(s) => {
                missing = 0;
                progress.update(s.offset, s.len.max(1), &s.status);
            }
            // Not listed and no end event: once may be the end event still
            // on its way (it is read at the next poll); twice, the job went
            // away unseen (another client dismissed it).
            None => {
                missing += 1;
                if missing >= 2 {
                    progress.finish();
                    return Err(CliError::msg(format!(
                        "job '{}' disappeared without a COMPLETED or CANCELLED event",
                        args.job_id
                    )));
                }
            }
        }
    }
}
