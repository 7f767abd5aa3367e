//! `nbd-server-start`, `nbd-server-stop`, `block-export-add`,
//! `nbd-server-add`, `block-export-del`, `nbd-server-remove`,
//! `query-block-exports`.

use ringmirror_nbd::{NbdServer, RemoveMode, ServerConfig};
use ringmirror_qmp::{Args, Emitter, QmpError};
use serde_json::{json, Value};

use super::state::{Export, State};

pub fn nbd_server_start(st: &mut State, mut args: Args) -> Result<Value, QmpError> {
    // QEMU's legacy SocketAddressLegacy: {type, data: {...}}.
    let mut addr = args.req_obj("addr")?;
    let ty = addr.req_enum("type", &["inet", "unix", "vsock", "fd"])?;
    let mut data = addr.req_obj("data")?;
    enum Listen {
        Unix(String),
        Tcp(String, String),
    }
    let listen = match ty {
        "unix" => {
            let path = data.req_str("path")?;
            let _ = data.opt_bool("abstract")?;
            let _ = data.opt_bool("tight")?;
            Listen::Unix(path)
        }
        "inet" => {
            let host = data.req_str("host")?;
            let port = data.req_str("port")?;
            let _ = data.opt_bool("numeric")?;
            let _ = data.opt_u16("to")?;
            let _ = data.opt_bool("ipv4")?;
            let _ = data.opt_bool("ipv6")?;
            Listen::Tcp(host, port)
        }
        other => {
            return Err(QmpError::generic(format!(
                "NBD over '{other}' sockets is not supported"
            )))
        }
    };
    data.finish()?;
    addr.finish()?;
    if args.opt_str("tls-creds")?.is_some() {
        return Err(QmpError::generic("TLS is not supported"));
    }
    let _ = args.opt_str("tls-authz")?;
    let max_connections = args.opt_u32("max-connections")?;
    args.finish()?;
    if st.nbd.is_some() {
        return Err(QmpError::generic("NBD server already running"));
    }
    let mut cfg = ServerConfig::default();
    if let Some(n) = max_connections.filter(|&n| n > 0) {
        cfg.max_connections = n as usize;
    }
    let server = NbdServer::new(cfg);
    let res = match &listen {
        Listen::Unix(path) => server.listen_unix(path).map(|_| ()),
        Listen::Tcp(host, port) => server.listen_tcp(format!("{host}:{port}")).map(|_| ()),
    };
    res.map_err(|e| QmpError::generic(format!("Failed to start the NBD server: {e}")))?;
    st.nbd = Some(server);
    Ok(Value::Null)
}

pub fn nbd_server_stop(st: &mut State, emitter: &Emitter, args: Args) -> Result<Value, QmpError> {
    args.finish()?;
    let Some(server) = st.nbd.take() else {
        return Err(QmpError::generic("NBD server not running"));
    };
    server.stop();
    for id in std::mem::take(&mut st.exports).into_keys() {
        emitter.emit("BLOCK_EXPORT_DELETED", json!({ "id": id }));
    }
    Ok(Value::Null)
}

fn add(
    st: &mut State,
    id: String,
    node: String,
    name: Option<String>,
    writable: bool,
    description: String,
) -> Result<(), QmpError> {
    let Some(server) = st.nbd.clone() else {
        return Err(QmpError::generic("NBD server not running"));
    };
    if st.exports.contains_key(&id) {
        return Err(QmpError::generic(format!(
            "Block export id '{id}' is already in use"
        )));
    }
    if !st.nodes.contains_key(&node) {
        return Err(QmpError::generic(format!(
            "Cannot find device='' nor node-name='{node}'"
        )));
    }
    let name = name.unwrap_or_else(|| node.clone());
    if st.exports.values().any(|e| e.name == name) {
        return Err(QmpError::generic(format!(
            "NBD server already has export named '{name}'"
        )));
    }
    if writable && st.nodes[&node].read_only {
        return Err(QmpError::generic(format!(
            "Block node is read-only: '{node}'"
        )));
    }
    let disk = st.disk_for(&node)?;
    server
        .add_export(&name, disk.clone(), writable, &description)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    st.exports.insert(id.clone(), Export { id, name, disk });
    Ok(())
}

pub fn block_export_add(st: &mut State, mut args: Args) -> Result<Value, QmpError> {
    let ty = args.req_enum("type", &["nbd", "vhost-user-blk", "fuse", "vduse-blk"])?;
    let id = args.req_str("id")?;
    let _ = args.opt_bool("fixed-iothread")?;
    let _ = args.opt_str("iothread")?;
    let node = args.req_str("node-name")?;
    let writable = args.opt_bool("writable")?.unwrap_or(false);
    let _ = args.opt_bool("writethrough")?;
    let _ = args.opt_bool("allow-inactive")?;
    if ty != "nbd" {
        return Err(QmpError::generic(format!(
            "Export type '{ty}' is not supported"
        )));
    }
    let name = args.opt_str("name")?;
    let description = args.opt_str("description")?.unwrap_or_default();
    if args.opt_any("bitmaps").is_some() {
        return Err(QmpError::generic(
            "Exporting dirty bitmaps is not supported yet",
        ));
    }
    let _ = args.opt_bool("allocation-depth")?;
    let _ = args.opt_u32("multi-conn")?;
    args.finish()?;
    add(st, id, node, name, writable, description)?;
    Ok(Value::Null)
}

pub fn nbd_server_add(st: &mut State, mut args: Args) -> Result<Value, QmpError> {
    let device = args.req_str("device")?;
    let name = args.opt_str("name")?;
    let description = args.opt_str("description")?.unwrap_or_default();
    let writable = args.opt_bool("writable")?.unwrap_or(false);
    if args.opt_any("bitmap").is_some() {
        return Err(QmpError::generic(
            "Exporting dirty bitmaps is not supported yet",
        ));
    }
    args.finish()?;
    add(st, device.clone(), device, name, writable, description)?;
    Ok(Value::Null)
}

fn remove(st: &mut State, emitter: &Emitter, id: &str, mode: RemoveMode) -> Result<(), QmpError> {
    let Some(e) = st.exports.get(id) else {
        return Err(QmpError::generic(format!("Export '{id}' is not found")));
    };
    if let Some(server) = &st.nbd {
        server
            .remove_export(&e.name, mode)
            .map_err(|err| match err {
                ringmirror_nbd::NbdError::ExportInUse { .. } => {
                    QmpError::generic(format!("export '{id}' still in use"))
                }
                other => QmpError::generic(other.to_string()),
            })?;
    }
    st.exports.remove(id);
    emitter.emit("BLOCK_EXPORT_DELETED", json!({ "id": id }));
    Ok(())
}

fn mode(args: &mut Args) -> Result<RemoveMode, QmpError> {
    Ok(match args.opt_enum("mode", &["safe", "hard"])? {
        Some("hard") => RemoveMode::Hard,
        _ => RemoveMode::Safe,
    })
}

pub fn block_export_del(
    st: &mut State,
    emitter: &Emitter,
    mut args: Args,
) -> Result<Value, QmpError> {
    let id = args.req_str("id")?;
    let mode = mode(&mut args)?;
    args.finish()?;
    remove(st, emitter, &id, mode)?;
    Ok(Value::Null)
}

pub fn nbd_server_remove(
    st: &mut State,
    emitter: &Emitter,
    mut args: Args,
) -> Result<Value, QmpError> {
    let name = args.req_str("name")?;
    let mode = mode(&mut args)?;
    args.finish()?;
    let id = st
        .exports
        .values()
        .find(|e| e.name == name)
        .map(|e| e.id.clone())
        .ok_or_else(|| QmpError::generic(format!("Export '{name}' is not found")))?;
    remove(st, emitter, &id, mode)?;
    Ok(Value::Null)
}

pub fn query_block_exports(st: &State, args: Args) -> Result<Value, QmpError> {
    args.finish()?;
    Ok(Value::Array(
        st.exports
            .values()
            .map(|e| {
                json!({
                    "type": "nbd",
                    "id": e.id,
                    "node-name": st.node_of_disk(&e.disk),
                    "shutting-down": false,
                })
            })
            .collect(),
    ))
}
