//! `blockdev-mirror`, `drive-mirror`, the `block-job-*` and `job-*` verbs,
//! `query-block-jobs`, `query-jobs`.
//!
//! Verbs are looked up under the state lock and run after releasing it: a
//! verb waits for the job's thread, which emits events as it works.

use std::sync::Arc;

use parking_lot::Mutex;
use ringmirror_engine::{BlockDevice, OpenOptions};
use ringmirror_mirror::{
    CopyMode, ErrorPolicy, GuestShare, JobError, JobEvent, JobStatus, MirrorError, MirrorJob,
    MirrorOptions, SyncMode,
};
use ringmirror_qmp::{Args, Emitter, QmpError};
use serde_json::Value;

use super::nodes::valid_node_name;
use super::state::{Emitted, JobEntry, Node, State};

const POLICIES: &[&str] = &["report", "ignore", "enospc", "stop", "auto"];

fn policy(s: Option<&str>) -> ErrorPolicy {
    s.and_then(ErrorPolicy::parse)
        .unwrap_or(ErrorPolicy::Report)
}

/// The options both mirror commands share, read in QAPI order after the
/// command-specific ones.
struct Common {
    speed: Option<i64>,
    granularity: Option<u64>,
    buf_size: Option<i64>,
    on_source_error: ErrorPolicy,
    on_target_error: ErrorPolicy,
    copy_mode: CopyMode,
    auto_finalize: bool,
    auto_dismiss: bool,
    target_is_zero: bool,
    guest_share: Option<i64>,
}

/// ringmirror's guest share (`x-guest-share`, and `share` of
/// `x-block-job-set-guest-share`): 0 (no pacing) or a percentage; absent,
/// the automatic share. Checked after the arguments' names and types, as
/// QEMU checks values.
fn guest_share(name: &str, v: Option<i64>) -> Result<GuestShare, QmpError> {
    match v {
        None => Ok(GuestShare::Auto),
        Some(p) => u64::try_from(p)
            .ok()
            .and_then(GuestShare::from_percent)
            .ok_or_else(|| QmpError::invalid_parameter_value(name, "a percentage from 0 to 100")),
    }
}

fn mirror_common(args: &mut Args) -> Result<Common, QmpError> {
    let speed = args.opt_i64("speed")?;
    let granularity = match args.opt("granularity") {
        None => None,
        Some(f) => {
            let v = f.clone().i64()?;
            if !(0..=u32::MAX as i64).contains(&v) {
                return Err(QmpError::generic(
                    "Parameter 'granularity' expects uint32_t",
                ));
            }
            Some(v as u64)
        }
    };
    let buf_size = args.opt_i64("buf-size")?;
    let on_source_error = policy(args.opt_enum("on-source-error", POLICIES)?);
    let on_target_error = policy(args.opt_enum("on-target-error", POLICIES)?);
    let _ = args.opt_bool("unmap")?;
    let copy_mode = match args.opt_enum("copy-mode", &["background", "write-blocking"])? {
        Some("write-blocking") => CopyMode::WriteBlocking,
        _ => CopyMode::Background,
    };
    let auto_finalize = args.opt_bool("auto-finalize")?.unwrap_or(true);
    let auto_dismiss = args.opt_bool("auto-dismiss")?.unwrap_or(true);
    let _ = args.opt_str("filter-node-name")?;
    let target_is_zero = args.opt_bool("target-is-zero")?.unwrap_or(false);
    let guest_share = args.opt_i64("x-guest-share")?;
    Ok(Common {
        speed,
        granularity,
        buf_size,
        on_source_error,
        on_target_error,
        copy_mode,
        auto_finalize,
        auto_dismiss,
        target_is_zero,
        guest_share,
    })
}

fn sync_mode(s: &str) -> Result<SyncMode, QmpError> {
    SyncMode::parse(s).ok_or_else(|| QmpError::generic(format!("Sync mode '{s}' not supported")))
}

/// Validate and start a mirror of node `device` onto node `target`.
fn start(
    state: &Mutex<State>,
    emitter: &Emitter,
    job_id: Option<String>,
    device: String,
    target: String,
    sync: SyncMode,
    c: Common,
) -> Result<Value, QmpError> {
    let job_id = job_id.unwrap_or_else(|| device.clone());
    if let Some(speed) = c.speed.filter(|s| *s < 0) {
        let _ = speed;
        return Err(QmpError::invalid_parameter_value(
            "speed",
            "a non-negative value",
        ));
    }
    if c.buf_size.is_some_and(|b| b < 0) {
        return Err(QmpError::generic("Invalid parameter 'buf-size'"));
    }
    let mut opts = MirrorOptions::new(job_id.clone());
    opts.sync = sync;
    opts.speed = c.speed.unwrap_or(0) as u64;
    if let Some(g) = c.granularity.filter(|&g| g != 0) {
        if !(512..=64 << 20).contains(&g) {
            return Err(QmpError::generic(
                "Parameter 'granularity' expects a value in range [512B, 64MB]",
            ));
        }
        if !g.is_power_of_two() {
            return Err(QmpError::generic(
                "Parameter 'granularity' expects a power of 2",
            ));
        }
        opts.granularity = g;
    }
    if let Some(b) = c.buf_size.filter(|&b| b > 0) {
        opts.buf_size = (b as u64).max(opts.granularity);
    }
    opts.on_source_error = c.on_source_error;
    opts.on_target_error = c.on_target_error;
    opts.copy_mode = c.copy_mode;
    opts.auto_finalize = c.auto_finalize;
    opts.auto_dismiss = c.auto_dismiss;
    opts.target_is_zero = c.target_is_zero;
    opts.guest_share = guest_share("x-guest-share", c.guest_share)?;

    let (disk, target_dev) = {
        let mut st = state.lock();
        st.refresh();
        if job_id.is_empty() || !valid_node_name(&job_id) {
            return Err(QmpError::generic(format!("Invalid job ID '{job_id}'")));
        }
        if st.jobs.contains_key(&job_id) {
            return Err(QmpError::generic(format!(
                "Job ID '{job_id}' already in use"
            )));
        }
        st.node(&device)?;
        let tgt = st.node(&target)?;
        if device == target || Arc::ptr_eq(&st.nodes[&device].dev, &tgt.dev) {
            return Err(QmpError::generic("Can't mirror node into itself"));
        }
        // QEMU: a job's source sits under its mirror_top filter and its
        // target under the job, so neither is a root node any more.
        let dev = &st.nodes[&device].dev;
        if st.jobs.values().any(|j| {
            !j.job.is_finished() && (j.target_node == device || Arc::ptr_eq(&j.disk.current(), dev))
        }) {
            return Err(QmpError::generic("Need a root block node"));
        }
        if let Some(user) = st.node_user(&target) {
            return Err(QmpError::generic(user));
        }
        let target_dev = tgt.dev.clone();
        (st.disk_for(&device)?, target_dev)
    };
    // QSD emits `running` (and, when there is nothing to copy, `ready` and
    // BLOCK_JOB_READY) before the blockdev-mirror reply: the job coroutine
    // runs until its first yield inside the command. Here the job's thread
    // emits them, so the reply waits until they have been emitted.
    let instant_ready = sync == SyncMode::None || disk.size() == 0;
    let emitted = Arc::new(Emitted::default());
    let (sink_emitter, seen) = (emitter.clone(), emitted.clone());
    let sink = Arc::new(move |ev: &JobEvent| {
        sink_emitter.emit(ev.name(), ev.data());
        seen.note(ev);
    });
    let job = MirrorJob::start(&disk, target_dev, opts, Some(sink)).map_err(|e| match e {
        MirrorError::InvalidOption(m) | MirrorError::Busy(m) | MirrorError::Start(m) => {
            QmpError::generic(m)
        }
        other => QmpError::generic(other.to_string()),
    })?;
    emitted.wait(|status, ready| match status {
        None | Some(JobStatus::Created) => false,
        Some(JobStatus::Running | JobStatus::Ready) => ready || !instant_ready,
        Some(_) => true,
    });
    state.lock().jobs.insert(
        job_id,
        JobEntry {
            job,
            disk,
            target_node: target,
            emitted,
        },
    );
    Ok(Value::Null)
}

pub fn blockdev_mirror(
    state: &Mutex<State>,
    emitter: &Emitter,
    mut args: Args,
) -> Result<Value, QmpError> {
    let job_id = args.opt_str("job-id")?;
    let device = args.req_str("device")?;
    let target = args.req_str("target")?;
    let _replaces = args.opt_str("replaces")?;
    let sync = args.req_enum("sync", &["top", "full", "none", "incremental", "bitmap"])?;
    let c = mirror_common(&mut args)?;
    args.finish()?;
    start(state, emitter, job_id, device, target, sync_mode(sync)?, c)
}

pub fn drive_mirror(
    state: &Mutex<State>,
    emitter: &Emitter,
    mut args: Args,
) -> Result<Value, QmpError> {
    let job_id = args.opt_str("job-id")?;
    let device = args.req_str("device")?;
    let target = args.req_str("target")?;
    let format = args.opt_str("format")?;
    let node_name = args.opt_str("node-name")?;
    let _replaces = args.opt_str("replaces")?;
    let sync = args.req_enum("sync", &["top", "full", "none", "incremental", "bitmap"])?;
    let mode = args
        .opt_enum("mode", &["existing", "absolute-paths"])?
        .unwrap_or("absolute-paths");
    let c = mirror_common(&mut args)?;
    args.finish()?;
    if format.as_deref().is_some_and(|f| f != "raw") {
        return Err(QmpError::generic(format!(
            "Image format '{}' is not supported (only raw)",
            format.unwrap_or_default()
        )));
    }
    let sync = sync_mode(sync)?;
    // Open (or create) the target file as an implicit node.
    let node = {
        let mut st = state.lock();
        st.refresh();
        let src = st.node(&device)?;
        let (size, direct) = (src.dev.size(), src.cache_direct);
        if mode == "absolute-paths" {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&target)
                .map_err(|e| QmpError::generic(format!("Could not create '{target}': {e}")))?;
            f.set_len(size)
                .map_err(|e| QmpError::generic(format!("Could not resize '{target}': {e}")))?;
        }
        let dev: Arc<dyn BlockDevice> = st
            .opener
            .open(
                &target,
                &OpenOptions {
                    write: true,
                    direct,
                },
            )
            .map_err(|e| QmpError::generic(format!("Could not open '{target}': {e}")))?;
        let name = match node_name {
            Some(n) => {
                if !valid_node_name(&n) {
                    return Err(QmpError::generic(format!("Invalid node-name: '{n}'")));
                }
                if st.nodes.contains_key(&n) {
                    return Err(QmpError::generic(format!(
                        "Duplicate nodes with node-name='{n}'"
                    )));
                }
                n
            }
            None => {
                st.implicit_nodes += 1;
                format!("#block{:03}", st.implicit_nodes)
            }
        };
        st.nodes.insert(
            name.clone(),
            Node {
                name: name.clone(),
                driver: "file",
                filename: target.clone(),
                dev,
                read_only: false,
                cache_direct: direct,
                no_flush: false,
                child: None,
            },
        );
        name
    };
    let res = start(state, emitter, job_id, device, node.clone(), sync, c);
    if res.is_err() {
        state.lock().nodes.remove(&node);
    }
    res
}

/// How a verb names its job, and how "not found" reads.
#[derive(Clone, Copy)]
enum Family {
    BlockJob,
    Job,
}

fn find(state: &Mutex<State>, id: &str, fam: Family) -> Result<MirrorJob, QmpError> {
    let mut st = state.lock();
    st.refresh();
    st.jobs
        .get(id)
        .map(|j| j.job.clone())
        .ok_or_else(|| match fam {
            Family::BlockJob => QmpError::block_job_not_found(id),
            Family::Job => QmpError::job_not_found(),
        })
}

fn emitted_of(state: &Mutex<State>, id: &str) -> Option<Arc<Emitted>> {
    state.lock().jobs.get(id).map(|j| j.emitted.clone())
}

fn verb_err(e: JobError) -> QmpError {
    QmpError::generic(e.to_string())
}

fn run(
    job: MirrorJob,
    f: impl FnOnce(&MirrorJob) -> Result<(), JobError>,
) -> Result<Value, QmpError> {
    f(&job).map(|()| Value::Null).map_err(verb_err)
}

/// The `block-job-*` and `job-*` verbs.
pub fn verb(state: &Mutex<State>, command: &str, mut args: Args) -> Result<Value, QmpError> {
    let (fam, key) = if (command.starts_with("block-job-")
        || command == "x-block-job-set-guest-share")
        && !matches!(
            command,
            "block-job-finalize" | "block-job-dismiss" | "block-job-change"
        ) {
        (Family::BlockJob, "device")
    } else if command.starts_with("block-job-") {
        (Family::BlockJob, "id")
    } else {
        (Family::Job, "id")
    };
    let id = args.req_str(key)?;
    match command {
        "block-job-set-speed" => {
            let speed = args.req_i64("speed")?;
            args.finish()?;
            let job = find(state, &id, fam)?;
            if speed < 0 {
                return Err(QmpError::invalid_parameter_value(
                    "speed",
                    "a non-negative value",
                ));
            }
            run(job, |j| j.set_speed(speed as u64))
        }
        "x-block-job-set-guest-share" => {
            // Without `share`: back to the automatic share.
            let share = args.opt_i64("share")?;
            args.finish()?;
            let job = find(state, &id, fam)?;
            let share = guest_share("share", share)?;
            run(job, |j| j.set_guest_share(share))
        }
        "block-job-cancel" => {
            let force = args.opt_bool("force")?.unwrap_or(false);
            args.finish()?;
            run(find(state, &id, fam)?, |j| j.cancel(force))
        }
        "block-job-change" => {
            let _ty = args.req_enum(
                "type",
                &[
                    "mirror",
                    "commit",
                    "stream",
                    "backup",
                    "create",
                    "amend",
                    "snapshot-load",
                    "snapshot-save",
                    "snapshot-delete",
                ],
            )?;
            let mode = args.req_enum("copy-mode", &["background", "write-blocking"])?;
            args.finish()?;
            let mode = CopyMode::parse(mode).unwrap_or(CopyMode::Background);
            run(find(state, &id, fam)?, |j| j.change_copy_mode(mode))
        }
        _ => {
            args.finish()?;
            let job = find(state, &id, fam)?;
            match command.rsplit('-').next().unwrap_or_default() {
                "pause" => run(job, MirrorJob::pause),
                "resume" => run(job, MirrorJob::resume),
                // job-cancel always forces, as in QEMU.
                "cancel" => run(job, |j| j.cancel(true)),
                "complete" => run(job, MirrorJob::complete),
                "finalize" => {
                    // QSD sends COMPLETED and `concluded` before the reply
                    // (a client may dismiss right after it).
                    run(job, MirrorJob::finalize)?;
                    if let Some(e) = emitted_of(state, &id) {
                        e.wait(|s, _| matches!(s, Some(JobStatus::Concluded | JobStatus::Null)));
                    }
                    Ok(Value::Null)
                }
                "dismiss" => run(job, MirrorJob::dismiss),
                _ => Err(QmpError::unknown_command(command)),
            }
        }
    }
}

pub fn query_block_jobs(state: &Mutex<State>, args: Args) -> Result<Value, QmpError> {
    args.finish()?;
    let mut st = state.lock();
    st.refresh();
    Ok(Value::Array(
        st.jobs.values().map(|j| j.job.query().to_qmp()).collect(),
    ))
}

pub fn query_jobs(state: &Mutex<State>, args: Args) -> Result<Value, QmpError> {
    args.finish()?;
    let mut st = state.lock();
    st.refresh();
    Ok(Value::Array(
        st.jobs
            .values()
            .map(|j| j.job.query().to_qmp_job_info())
            .collect(),
    ))
}

/// `quit`: force-cancel every job and wait (briefly) until each has ended
/// and its events have been emitted (QSD sends them before the quit reply).
pub fn cancel_all(state: &Mutex<State>) {
    let jobs: Vec<(MirrorJob, Arc<Emitted>)> = state
        .lock()
        .jobs
        .values()
        .map(|j| (j.job.clone(), j.emitted.clone()))
        .collect();
    for (j, _) in &jobs {
        let _ = j.cancel(true);
    }
    for (j, emitted) in &jobs {
        let dismiss = j.options().auto_dismiss;
        emitted.wait(|s, _| match s {
            Some(JobStatus::Null) => true,
            Some(JobStatus::Concluded) => !dismiss,
            _ => false,
        });
    }
}
