//! `ringmirror serve`: a daemon with a QMP monitor on a unix socket, in the
//! place of qemu-storage-daemon. Everything else (nodes, the NBD server,
//! exports, mirror jobs) is set up over QMP with QSD's command names.

mod exports;
mod jobs;
mod nodes;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args as ClapArgs;
use parking_lot::Mutex;
use ringmirror_engine::{DeviceOpener, EngineConfig};
use ringmirror_qmp::{Args, CallCtx, Handler, Monitor, QmpError};
use serde_json::Value;

use crate::CliError;
use state::State;

/// Arguments of `ringmirror serve`.
#[derive(ClapArgs, Debug)]
#[command(
    after_help = "Everything else is done over QMP, as with qemu-storage-daemon:\n  \
blockdev-add, nbd-server-start, block-export-add, blockdev-mirror, block-job-complete, ...\n\
See the README for a walk-through."
)]
pub struct ServeArgs {
    /// Unix socket for the QMP monitor (created with mode 0600).
    #[arg(long)]
    pub qmp: PathBuf,
    /// Reactor threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// io_uring operations in flight per reactor.
    #[arg(long, default_value_t = 256)]
    pub queue_depth: u32,
    /// Write the daemon's PID here once the monitor listens.
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
}

/// The QMP command layer.
pub struct Daemon {
    state: Mutex<State>,
}

const COMMANDS: &[&str] = &[
    "blockdev-add",
    "blockdev-del",
    "query-named-block-nodes",
    "nbd-server-start",
    "nbd-server-stop",
    "nbd-server-add",
    "nbd-server-remove",
    "block-export-add",
    "block-export-del",
    "query-block-exports",
    "blockdev-mirror",
    "drive-mirror",
    "block-job-set-speed",
    "x-block-job-set-guest-share",
    "block-job-pause",
    "block-job-resume",
    "block-job-cancel",
    "block-job-complete",
    "block-job-finalize",
    "block-job-dismiss",
    "block-job-change",
    "job-pause",
    "job-resume",
    "job-cancel",
    "job-complete",
    "job-finalize",
    "job-dismiss",
    "query-block-jobs",
    "query-jobs",
];

impl Daemon {
    /// A daemon opening devices with `opener`.
    pub fn new(opener: DeviceOpener) -> Daemon {
        Daemon {
            state: Mutex::new(State::new(opener)),
        }
    }

    /// What `quit` does before the monitor stops, in QSD's order (its
    /// events come in this order): delete every export and stop the NBD
    /// server, then force-cancel every job.
    pub fn shutdown(&self, emitter: &ringmirror_qmp::Emitter) {
        {
            let mut st = self.state.lock();
            if st.nbd.is_some() {
                let _ = exports::nbd_server_stop(&mut st, emitter, Args::new(Default::default()));
            }
        }
        jobs::cancel_all(&self.state);
    }
}

impl Handler for Daemon {
    fn commands(&self) -> Vec<&'static str> {
        COMMANDS.to_vec()
    }

    fn call(&self, ctx: &CallCtx, command: &str, args: Args) -> Result<Value, QmpError> {
        let emitter = ctx.emitter();
        // Job commands lock the state themselves (never across a verb).
        match command {
            "blockdev-mirror" => return jobs::blockdev_mirror(&self.state, emitter, args),
            "drive-mirror" => return jobs::drive_mirror(&self.state, emitter, args),
            "query-block-jobs" => return jobs::query_block_jobs(&self.state, args),
            "query-jobs" => return jobs::query_jobs(&self.state, args),
            c if c.starts_with("block-job-")
                || c.starts_with("job-")
                || c == "x-block-job-set-guest-share" =>
            {
                return jobs::verb(&self.state, c, args)
            }
            _ => {}
        }
        let mut st = self.state.lock();
        st.refresh();
        match command {
            "blockdev-add" => nodes::blockdev_add(&mut st, args),
            "blockdev-del" => nodes::blockdev_del(&mut st, args),
            "query-named-block-nodes" => nodes::query_named_block_nodes(&st, args),
            "nbd-server-start" => exports::nbd_server_start(&mut st, args),
            "nbd-server-stop" => exports::nbd_server_stop(&mut st, emitter, args),
            "nbd-server-add" => exports::nbd_server_add(&mut st, args),
            "nbd-server-remove" => exports::nbd_server_remove(&mut st, emitter, args),
            "block-export-add" => exports::block_export_add(&mut st, args),
            "block-export-del" => exports::block_export_del(&mut st, emitter, args),
            "query-block-exports" => exports::query_block_exports(&st, args),
            other => Err(QmpError::unknown_command(other)),
        }
    }
}

/// Run `ringmirror serve` until a client sends `quit` (or SIGINT/SIGTERM).
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let opener = DeviceOpener::new(EngineConfig {
        threads: args
            .threads
            .unwrap_or_else(|| EngineConfig::default().threads),
        queue_depth: args.queue_depth,
        ..EngineConfig::default()
    });
    let daemon = Arc::new(Daemon::new(opener));
    let emitter = ringmirror_qmp::Emitter::new();
    let (d2, e2) = (daemon.clone(), emitter.clone());
    let monitor = Monitor::builder(&args.qmp)
        .package(format!("ringmirror {}", env!("CARGO_PKG_VERSION")))
        .emitter(emitter.clone())
        .on_quit(move || d2.shutdown(&e2))
        .bind(daemon.clone())
        .map_err(|e| CliError::msg(format!("cannot listen on {}: {e}", args.qmp.display())))?;
    let monitor = Arc::new(monitor);
    if let Some(p) = &args.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| CliError::msg(format!("cannot write {}: {e}", p.display())))?;
    }
    eprintln!(
        "ringmirror serve: QMP monitor on {} ({} engine)",
        args.qmp.display(),
        daemon.state.lock().opener.label()
    );
    let stopper = monitor.clone();
    crate::signals::on_interrupt(move |_| stopper.stop());
    monitor.wait();
    daemon.shutdown(&emitter);
    Ok(())
}
