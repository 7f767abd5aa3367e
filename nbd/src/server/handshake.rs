//! The fixed-newstyle handshake: greeting, client flags, then options until
//! `OPT_GO` / `OPT_EXPORT_NAME` enters transmission or the client leaves.
//!
//! Oldstyle is never offered; a client that does not set
//! `FLAG_C_FIXED_NEWSTYLE` (or sets unknown flags) is disconnected, as the
//! specification requires for flags the server did not advertise.

use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use super::{conn, AttachGuard, Export, ServerInner};
use crate::parse::{parse_option, parse_option_header, ClientOption, InfoRequest, MetaRequest};
use crate::parse::{InvalidOption, TransmissionCtx};
use crate::proto::*;
use crate::sock::Stream;

/// Metadata context id of `base:allocation` on this server.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// Bytes the reader buffers from the socket (many small requests per syscall).
const READ_BUF: usize = 128 << 10;

/// Everything transmission needs, fixed at `OPT_GO`.
pub(crate) struct Session {
    pub(crate) attach: AttachGuard,
    pub(crate) ctx: TransmissionCtx,
}

struct State {
    structured: bool,
    /// Export name `base:allocation` was selected for by the last
    /// `OPT_SET_META_CONTEXT`.
    meta_export: Option<String>,
    no_zeroes: bool,
}

/// Run one connection from greeting to close.
pub(crate) fn serve(inner: &Arc<ServerInner>, id: u64, stream: Stream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let _ = stream.set_read_timeout(Some(inner.cfg.handshake_timeout));
    let mut input = BufReader::with_capacity(READ_BUF, stream);
    match negotiate(inner, id, &mut input, &mut out) {
        Ok(Some(session)) => {
            if out.set_read_timeout(None).is_ok() {
                conn::run(inner, input, out, session);
            }
        }
        _ => out.shutdown(Shutdown::Both),
    }
}

/// Transmission flags for `export` (the same for INFO and GO, as required).
pub(crate) fn tx_flags(export: &Export, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
    // Every connection goes straight to the same device and FLUSH is a
    // flush of the whole device, so a flush on one connection makes the
    // writes completed on all of them durable: multi-conn is safe.
    f |= FLAG_CAN_MULTI_CONN;
    if export.writable {
        f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    } else {
        f |= FLAG_READ_ONLY;
    }
    if structured {
        // Reads are always answered with a single data chunk.
        f |= FLAG_SEND_DF;
    }
    f
}

/// `(minimum, preferred, maximum)` block sizes advertised for `export`.
///
/// Minimum 1: the engine's devices accept any offset and length (unaligned
/// requests become read-modify-write inside the engine, under its range
/// lock), so clients need not do their own RMW, which could race between
/// connections. Preferred: the device's alignment, at least 4 KiB.
pub(crate) fn block_sizes(export: &Export) -> (u32, u32, u32) {
    let align = export
        .device
        .info()
        .offset_align
        .clamp(1, u64::from(MAX_PAYLOAD));
    let preferred = (align.next_power_of_two() as u32).max(4096);
    (1, preferred, MAX_PAYLOAD)
}

fn negotiate(
    inner: &ServerInner,
    id: u64,
    input: &mut BufReader<Stream>,
    out: &mut Stream,
) -> io::Result<Option<Session>> {
    let mut greet = Vec::with_capacity(18);
    greet.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greet.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greet.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out.write_all(&greet)?;
    let mut cf = [0u8; 4];
    input.read_exact(&mut cf)?;
    let cflags = u32::from_be_bytes(cf);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0
        || cflags & FLAG_C_FIXED_NEWSTYLE == 0
    {
        return Ok(None);
    }
    let mut st = State {
        structured: false,
        meta_export: None,
        no_zeroes: cflags & FLAG_C_NO_ZEROES != 0,
    };
    let mut reply = Vec::with_capacity(256);
    loop {
        let mut hdr = [0u8; 16];
        input.read_exact(&mut hdr)?;
        let Ok((opt, len)) = parse_option_header(&hdr) else {
            return Ok(None);
        };
        if len > MAX_OPTION_LEN {
            return Ok(None);
        }
        let mut data = vec![0u8; len as usize];
        input.read_exact(&mut data)?;
        reply.clear();
        if inner.stopping.load(std::sync::atomic::Ordering::Acquire) && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                return Ok(None);
            }
            err_reply(
                &mut reply,
                opt,
                REP_ERR_SHUTDOWN,
                "the server is shutting down",
            );
            out.write_all(&reply)?;
            continue;
        }
        let parsed = match parse_option(opt, &data) {
            Ok(o) => o,
            Err(InvalidOption(why)) => {
                if opt == OPT_EXPORT_NAME {
                    return Ok(None);
                }
                err_reply(&mut reply, opt, REP_ERR_INVALID, why);
                out.write_all(&reply)?;
                continue;
            }
        };
        let done = handle_option(inner, id, &mut st, opt, parsed, &mut reply);
        out.write_all(&reply)?;
        match done {
            Next::Continue => {}
            Next::Close => return Ok(None),
            Next::Go(session) => return Ok(Some(session)),
        }
    }
}

enum Next {
    Continue,
    Close,
    Go(Session),
}

fn err_reply(reply: &mut Vec<u8>, opt: u32, rep: u32, msg: &str) {
    put_option_reply(reply, opt, rep, msg.as_bytes());
}

fn handle_option(
    inner: &ServerInner,
    id: u64,
    st: &mut State,
    opt: u32,
    parsed: ClientOption,
    reply: &mut Vec<u8>,
) -> Next {
    match parsed {
        ClientOption::ExportName(name) => {
            let Some(attach) = inner.attach(id, &name) else {
                // No error reply exists for EXPORT_NAME: hard disconnect.
                return Next::Close;
            };
            let ctx = context(st, &attach.export);
            reply.extend_from_slice(&attach.export.device.size().to_be_bytes());
            reply.extend_from_slice(&ctx.tx_flags.to_be_bytes());
            if !st.no_zeroes {
                reply.extend_from_slice(&[0u8; 124]);
            }
            Next::Go(Session { attach, ctx })
        }
        ClientOption::Abort => {
            put_option_reply(reply, opt, REP_ACK, &[]);
            Next::Close
        }
        ClientOption::List => {
            for (name, desc) in inner.export_list() {
                let mut d = Vec::with_capacity(4 + name.len() + desc.len());
                d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                d.extend_from_slice(name.as_bytes());
                d.extend_from_slice(desc.as_bytes());
                put_option_reply(reply, opt, REP_SERVER, &d);
            }
            put_option_reply(reply, opt, REP_ACK, &[]);
            Next::Continue
        }
        ClientOption::StartTls => {
            err_reply(
                reply,
                opt,
                REP_ERR_UNSUP,
                "TLS is not supported by this server",
            );
            Next::Continue
        }
        ClientOption::Info(req) => {
            match inner.find_export(&req.name) {
                Some(export) => {
                    put_info(reply, opt, st, &export, &req);
                    put_option_reply(reply, opt, REP_ACK, &[]);
                }
                None => unknown_export(reply, opt, &req.name),
            }
            Next::Continue
        }
        ClientOption::Go(req) => match inner.attach(id, &req.name) {
            Some(attach) => {
                put_info(reply, opt, st, &attach.export, &req);
                put_option_reply(reply, opt, REP_ACK, &[]);
                let ctx = context(st, &attach.export);
                Next::Go(Session { attach, ctx })
            }
            None => {
                unknown_export(reply, opt, &req.name);
                Next::Continue
            }
        },
        ClientOption::StructuredReply => {
            st.structured = true;
            put_option_reply(reply, opt, REP_ACK, &[]);
            Next::Continue
        }
        ClientOption::ListMetaContext(req) => {
            meta_context(inner, st, opt, &req, false, reply);
            Next::Continue
        }
        ClientOption::SetMetaContext(req) => {
            meta_context(inner, st, opt, &req, true, reply);
            Next::Continue
        }
        ClientOption::ExtendedHeaders => {
            err_reply(
                reply,
                opt,
                REP_ERR_UNSUP,
                "extended headers are not supported",
            );
            Next::Continue
        }
        ClientOption::Unknown(_) => {
            err_reply(reply, opt, REP_ERR_UNSUP, "unknown option");
            Next::Continue
        }
    }
}

fn unknown_export(reply: &mut Vec<u8>, opt: u32, name: &str) {
    let msg = format!("export '{}' not found", truncate_str(name, 256));
    err_reply(reply, opt, REP_ERR_UNKNOWN, &msg);
}

fn context(st: &State, export: &Export) -> TransmissionCtx {
    TransmissionCtx {
        export_size: export.device.size(),
        tx_flags: tx_flags(export, st.structured),
        structured: st.structured,
        block_status: st.structured && st.meta_export.as_deref() == Some(export.name.as_str()),
    }
}

fn put_info(reply: &mut Vec<u8>, opt: u32, st: &State, export: &Export, req: &InfoRequest) {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&export.device.size().to_be_bytes());
    d.extend_from_slice(&tx_flags(export, st.structured).to_be_bytes());
    put_option_reply(reply, opt, REP_INFO, &d);
    if req.requests.contains(&INFO_NAME) {
        d.clear();
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(export.name.as_bytes());
        put_option_reply(reply, opt, REP_INFO, &d);
    }
    if req.requests.contains(&INFO_DESCRIPTION) && !export.description.is_empty() {
        d.clear();
        d.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
        d.extend_from_slice(export.description.as_bytes());
        put_option_reply(reply, opt, REP_INFO, &d);
    }
    // Sent even unasked: our constraints are the defaults a client must
    // assume anyway, and telling them costs one reply.
    let (min, pref, max) = block_sizes(export);
    d.clear();
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&min.to_be_bytes());
    d.extend_from_slice(&pref.to_be_bytes());
    d.extend_from_slice(&max.to_be_bytes());
    put_option_reply(reply, opt, REP_INFO, &d);
}

fn meta_context(
    inner: &ServerInner,
    st: &mut State,
    opt: u32,
    req: &MetaRequest,
    set: bool,
    reply: &mut Vec<u8>,
) {
    if set {
        // SET replaces the selection even when it fails.
        st.meta_export = None;
    }
    if !st.structured {
        let msg = "structured replies must be negotiated first";
        return err_reply(reply, opt, REP_ERR_INVALID, msg);
    }
    if inner.find_export(&req.export).is_none() {
        return unknown_export(reply, opt, &req.export);
    }
    let matches = if set {
        req.queries.iter().any(|q| q == BASE_ALLOCATION)
    } else {
        req.queries.is_empty()
            || req
                .queries
                .iter()
                .any(|q| q == "base:" || q == BASE_ALLOCATION)
    };
    if matches {
        let id = if set { BASE_ALLOCATION_ID } else { 0 };
        let mut d = Vec::with_capacity(4 + BASE_ALLOCATION.len());
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        put_option_reply(reply, opt, REP_META_CONTEXT, &d);
        if set {
            st.meta_export = Some(req.export.clone());
        }
    }
    put_option_reply(reply, opt, REP_ACK, &[]);
}
