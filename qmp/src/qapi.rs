//! Decoders for QAPI types that several commands share, with QEMU's member order (so errors
//! name the member QEMU names). Checked against qemu-storage-daemon 10.0.2 by
//! `tests/qemu_compare.rs` (`nbd-server-start` and NBD `blockdev-add` cases).

use crate::args::Args;
use crate::error::QmpError;

const SOCKET_ADDRESS_TYPES: &[&str] = &["inet", "unix", "vsock", "fd"];

/// QAPI `SocketAddress` (`qapi/sockets.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// `inet`: a TCP host and port.
    Inet(InetSocketAddress),
    /// `unix`: a unix domain socket.
    Unix(UnixSocketAddress),
    /// `vsock`: a VSOCK context id and port.
    Vsock {
        /// Context id.
        cid: String,
        /// Port.
        port: String,
    },
    /// `fd`: the name of a file descriptor passed earlier (`str` on the wire).
    Fd {
        /// The descriptor's name or number.
        name: String,
    },
}

/// QAPI `InetSocketAddress` (the members qemu-storage-daemon 10.0 knows).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InetSocketAddress {
    /// Host name or address.
    pub host: String,
    /// Port number or service name.
    pub port: String,
    /// Whether host and port are numeric (no name resolution).
    pub numeric: Option<bool>,
    /// Try ports from `port` up to this one.
    pub to: Option<u16>,
    /// Allow IPv4.
    pub ipv4: Option<bool>,
    /// Allow IPv6.
    pub ipv6: Option<bool>,
    /// Enable TCP keep-alive.
    pub keep_alive: Option<bool>,
    /// Use Multipath TCP.
    pub mptcp: Option<bool>,
}

/// QAPI `UnixSocketAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixSocketAddress {
    /// The socket path (or abstract name).
    pub path: String,
    /// Linux abstract namespace.
    pub abstract_socket: Option<bool>,
    /// Abstract address length is the name's, not the whole `sun_path`.
    pub tight: Option<bool>,
}

impl SocketAddress {
    /// The flat form, e.g. `blockdev-add` NBD `server`: `{"type": "unix", "path": "/s"}`.
    /// Call it with the object (`SocketAddress::from_flat(args.req_obj("server")?)`).
    pub fn from_flat(mut obj: Args) -> Result<Self, QmpError> {
        let kind = obj.req_enum("type", SOCKET_ADDRESS_TYPES)?;
        let addr = Self::members(kind, &mut obj)?;
        obj.finish()?;
        Ok(addr)
    }

    /// The legacy form, e.g. `nbd-server-start` `addr`:
    /// `{"type": "unix", "data": {"path": "/s"}}`.
    pub fn from_legacy(mut obj: Args) -> Result<Self, QmpError> {
        let kind = obj.req_enum("type", SOCKET_ADDRESS_TYPES)?;
        let mut data = obj.req_obj("data")?;
        let addr = Self::members(kind, &mut data)?;
        data.finish()?;
        obj.finish()?;
        Ok(addr)
    }

    fn members(kind: &str, a: &mut Args) -> Result<Self, QmpError> {
        Ok(match kind {
            "inet" => SocketAddress::Inet(InetSocketAddress {
                host: a.req_str("host")?,
                port: a.req_str("port")?,
                numeric: a.opt_bool("numeric")?,
                to: a.opt_u16("to")?,
                ipv4: a.opt_bool("ipv4")?,
                ipv6: a.opt_bool("ipv6")?,
                keep_alive: a.opt_bool("keep-alive")?,
                mptcp: a.opt_bool("mptcp")?,
            }),
            "unix" => SocketAddress::Unix(UnixSocketAddress {
                path: a.req_str("path")?,
                abstract_socket: a.opt_bool("abstract")?,
                tight: a.opt_bool("tight")?,
            }),
            "vsock" => SocketAddress::Vsock {
                cid: a.req_str("cid")?,
                port: a.req_str("port")?,
            },
            _ => SocketAddress::Fd {
                name: a.req_str("str")?,
            },
        })
    }
}
