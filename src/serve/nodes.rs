//! `blockdev-add`, `blockdev-del`, `query-named-block-nodes`.

use std::sync::Arc;

use ringmirror_engine::{BlockDevice, DeviceKind, OpenOptions};
use ringmirror_nbd::NbdDevice;
use ringmirror_qmp::{Args, QmpError};
use serde_json::{json, Value};

use super::state::{Node, State};

/// QEMU's node-name rule: a letter first, then letters, digits, `-`, `.`, `_`.
pub fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && name.len() < 32
}

/// Open a file node's device.
fn open_file(
    st: &State,
    filename: &str,
    read_only: bool,
    direct: bool,
) -> Result<Arc<dyn BlockDevice>, QmpError> {
    st.opener
        .open(
            filename,
            &OpenOptions {
                write: !read_only,
                direct,
            },
        )
        .map_err(|e| {
            let why = match e.errno {
                Some(n) => {
                    let s = std::io::Error::from_raw_os_error(n).to_string();
                    s.split(" (os error").next().unwrap_or(&s).to_string()
                }
                None => e.detail.clone(),
            };
            QmpError::generic(format!("Could not open '{filename}': {why}"))
        })
}

/// The common options of every driver, read in QAPI order.
struct Common {
    node_name: Option<String>,
    read_only: bool,
    direct: bool,
    no_flush: bool,
}

fn common(args: &mut Args) -> Result<Common, QmpError> {
    let node_name = args.opt_str("node-name")?;
    let _discard = args.opt_enum("discard", &["ignore", "unmap", "off", "on"])?;
    let (mut direct, mut no_flush) = (false, false);
    if let Some(mut cache) = args.opt_obj("cache")? {
        direct = cache.opt_bool("direct")?.unwrap_or(false);
        no_flush = cache.opt_bool("no-flush")?.unwrap_or(false);
        cache.finish()?;
    }
    let read_only = args.opt_bool("read-only")?.unwrap_or(false);
    let _ = args.opt_bool("auto-read-only")?;
    let _ = args.opt_bool("force-share")?;
    let _ = args.opt_enum("detect-zeroes", &["off", "on", "unmap"])?;
    Ok(Common {
        node_name,
        read_only,
        direct,
        no_flush,
    })
}

/// Build a node from a `BlockdevOptions` object (also used for inline children).
fn build(st: &mut State, mut args: Args, root: bool) -> Result<String, QmpError> {
    let driver = args.req_enum("driver", &["file", "host_device", "raw", "nbd"])?;
    let c = common(&mut args)?;
    let name = match &c.node_name {
        Some(n) => n.clone(),
        None if root => {
            return Err(QmpError::generic(
                "'node-name' must be specified for the root node",
            ))
        }
        None => {
            st.implicit_nodes += 1;
            format!("#block{:03}", st.implicit_nodes)
        }
    };
    if c.node_name.is_some() && !valid_node_name(&name) {
        return Err(QmpError::generic(format!("Invalid node-name: '{name}'")));
    }
    if st.nodes.contains_key(&name) {
        return Err(QmpError::generic(format!(
            "Duplicate nodes with node-name='{name}'"
        )));
    }
    let node = match driver {
        "file" | "host_device" => {
            let filename = args.req_str("filename")?;
            let _ = args.opt_enum("aio", &["threads", "native", "io_uring"])?;
            let _ = args.opt_u32("aio-max-batch")?;
            let _ = args.opt_enum("locking", &["auto", "on", "off"])?;
            let _ = args.opt_bool("drop-cache")?;
            args.finish()?;
            let dev = open_file(st, &filename, c.read_only, c.direct)?;
            if driver == "host_device" && dev.info().kind != DeviceKind::BlockDevice {
                return Err(QmpError::generic(format!(
                    "'{filename}' is not a block device"
                )));
            }
            Node {
                name: name.clone(),
                driver,
                filename,
                dev,
                read_only: c.read_only,
                cache_direct: c.direct,
                no_flush: c.no_flush,
                child: None,
            }
        }
        "raw" => {
            let file = args.req("file")?;
            let child = match file.value() {
                Value::String(_) => file.str()?,
                Value::Object(_) => build(st, file.obj()?, false)?,
                _ => return Err(file.type_error("BlockdevRef")),
            };
            let _ = args.opt_u64("offset")?;
            let _ = args.opt_u64("size")?;
            args.finish()?;
            let ch = st.node(&child)?;
            let (dev, filename) = (ch.dev.clone(), ch.filename.clone());
            Node {
                name: name.clone(),
                driver,
                filename,
                dev,
                read_only: c.read_only,
                cache_direct: c.direct,
                no_flush: c.no_flush,
                child: Some(child),
            }
        }
        _ => {
            // nbd: the flat SocketAddress form.
            let mut server = args.req_obj("server")?;
            let ty = server.req_enum("type", &["inet", "unix", "vsock", "fd"])?;
            let uri_base = match ty {
                "unix" => {
                    let path = server.req_str("path")?;
                    let _ = server.opt_bool("abstract")?;
                    let _ = server.opt_bool("tight")?;
                    server.finish()?;
                    Err(path)
                }
                "inet" => {
                    let host = server.req_str("host")?;
                    let port = server.req_str("port")?;
                    let _ = server.opt_bool("numeric")?;
                    let _ = server.opt_u16("to")?;
                    let _ = server.opt_bool("ipv4")?;
                    let _ = server.opt_bool("ipv6")?;
                    let _ = server.opt_bool("keep-alive")?;
                    server.finish()?;
                    Ok((host, port))
                }
                other => {
                    return Err(QmpError::generic(format!(
                        "NBD over '{other}' sockets is not supported"
                    )))
                }
            };
            let export = args.opt_str("export")?.unwrap_or_default();
            if args.opt_str("tls-creds")?.is_some() {
                return Err(QmpError::generic("TLS is not supported for NBD nodes"));
            }
            let _ = args.opt_u32("reconnect-delay")?;
            let _ = args.opt_u32("open-timeout")?;
            args.finish()?;
            let uri = match &uri_base {
                Err(path) => format!("nbd+unix:///{export}?socket={path}"),
                Ok((host, port)) => format!("nbd://{host}:{port}/{export}"),
            };
            let dev = NbdDevice::connect(&uri).map_err(|e| {
                let target = match &uri_base {
                    Err(path) => path.clone(),
                    Ok((h, p)) => format!("{h}:{p}"),
                };
                let why = e.errno.map(|n| {
                    let s = std::io::Error::from_raw_os_error(n).to_string();
                    s.split(" (os error").next().unwrap_or(&s).to_string()
                });
                QmpError::generic(format!(
                    "Failed to connect to '{target}': {}",
                    why.unwrap_or_else(|| e.to_string())
                ))
            })?;
            Node {
                name: name.clone(),
                driver: "nbd",
                filename: uri,
                dev: dev as Arc<dyn BlockDevice>,
                read_only: c.read_only,
                cache_direct: false,
                no_flush: false,
                child: None,
            }
        }
    };
    st.nodes.insert(name.clone(), node);
    Ok(name)
}

pub fn blockdev_add(st: &mut State, args: Args) -> Result<Value, QmpError> {
    build(st, args, true)?;
    Ok(Value::Null)
}

pub fn blockdev_del(st: &mut State, mut args: Args) -> Result<Value, QmpError> {
    let name = args.req_str("node-name")?;
    args.finish()?;
    if !st.nodes.contains_key(&name) {
        return Err(QmpError::generic(format!(
            "Failed to find node with node-name='{name}'"
        )));
    }
    // QEMU's wording for a job's target (held by the job's BlockBackend).
    if st
        .jobs
        .values()
        .any(|j| j.target_node == name && !j.job.is_finished())
    {
        return Err(QmpError::generic(format!("Node {name} is in use")));
    }
    if let Some(user) = st.node_user(&name) {
        return Err(QmpError::generic(user));
    }
    st.nodes.remove(&name);
    Ok(Value::Null)
}

/// QEMU's `BlockDeviceInfo` for one node.
pub fn node_info(n: &Node) -> Value {
    let size = n.dev.size();
    let format = if n.child.is_some() { "raw" } else { n.driver };
    json!({
        "node-name": n.name,
        "drv": n.driver,
        "file": n.filename,
        "ro": n.read_only,
        "encrypted": false,
        "detect_zeroes": "off",
        "backing_file_depth": 0,
        "active": true,
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": 0,
        "cache": {"writeback": true, "direct": n.cache_direct, "no-flush": n.no_flush},
        "image": {
            "filename": n.filename,
            "format": format,
            "virtual-size": size,
            "dirty-flag": false,
        },
    })
}

pub fn query_named_block_nodes(st: &State, mut args: Args) -> Result<Value, QmpError> {
    let _ = args.opt_bool("flat")?;
    args.finish()?;
    Ok(Value::Array(st.nodes.values().map(node_info).collect()))
}
