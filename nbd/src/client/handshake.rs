//! Client side of the fixed-newstyle handshake: structured replies,
//! `base:allocation`, then `OPT_GO` asking for block sizes (falling back to
//! `OPT_EXPORT_NAME` on servers without `OPT_GO`).

use std::io::{Read, Write};

use crate::parse::{be16, be32, be64};
use crate::proto::*;

/// What the handshake settled.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    pub(crate) size: u64,
    pub(crate) flags: u16,
    pub(crate) structured: bool,
    /// Context id of `base:allocation`, when selected.
    pub(crate) meta_id: Option<u32>,
    pub(crate) min_block: u32,
    pub(crate) pref_block: u32,
    pub(crate) max_payload: u32,
}

/// Option replies longer than this are refused (ours are tiny).
const MAX_OPTION_REPLY: u32 = 1 << 20;

struct OptReply {
    rep: u32,
    data: Vec<u8>,
}

fn send_option(s: &mut (impl Read + Write), opt: u32, data: &[u8]) -> Result<(), String> {
    let mut v = Vec::with_capacity(16 + data.len());
    put_option(&mut v, opt, data);
    s.write_all(&v)
        .map_err(|e| format!("sending option {opt}: {e}"))
}

fn read_reply(s: &mut (impl Read + Write), opt: u32) -> Result<OptReply, String> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)
        .map_err(|e| format!("reading the reply to option {opt}: {e}"))?;
    if be64(&h[0..8]) != OPT_REPLY_MAGIC {
        return Err("bad option reply magic: not an NBD server?".into());
    }
    if be32(&h[8..12]) != opt {
        return Err(format!(
            "server replied to option {} instead of {opt}",
            be32(&h[8..12])
        ));
    }
    let (rep, len) = (be32(&h[12..16]), be32(&h[16..20]));
    if len > MAX_OPTION_REPLY {
        return Err(format!("option reply of {len} bytes is too large"));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)
        .map_err(|e| format!("reading the reply to option {opt}: {e}"))?;
    Ok(OptReply { rep, data })
}

fn rep_error(opt: &str, r: &OptReply) -> String {
    let what = match r.rep {
        REP_ERR_UNSUP => "unsupported",
        REP_ERR_POLICY => "refused by policy",
        REP_ERR_INVALID => "invalid",
        REP_ERR_TLS_REQD => "TLS required",
        REP_ERR_UNKNOWN => "export not found",
        REP_ERR_SHUTDOWN => "server shutting down",
        REP_ERR_BLOCK_SIZE_REQD => "block size required",
        REP_ERR_TOO_BIG => "too big",
        _ => "error",
    };
    let msg = String::from_utf8_lossy(&r.data);
    if msg.is_empty() {
        format!("{opt}: {what}")
    } else {
        format!("{opt}: {what}: {msg}")
    }
}

/// Run the handshake for `export` on a fresh connection.
pub(crate) fn negotiate(s: &mut (impl Read + Write), export: &str) -> Result<Negotiated, String> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g[..16])
        .map_err(|e| format!("reading the server greeting: {e}"))?;
    if be64(&g[0..8]) != NBDMAGIC {
        return Err("the peer is not an NBD server (no NBDMAGIC)".into());
    }
    match be64(&g[8..16]) {
        IHAVEOPT => {}
        CLISERV_MAGIC => {
            return Err("the server speaks oldstyle NBD, which is not supported".into())
        }
        _ => return Err("bad NBD greeting magic".into()),
    }
    s.read_exact(&mut g[16..18])
        .map_err(|e| format!("reading handshake flags: {e}"))?;
    let hflags = be16(&g[16..18]);
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err("the server does not speak fixed newstyle NBD".into());
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
    s.write_all(&cflags.to_be_bytes())
        .map_err(|e| format!("sending client flags: {e}"))?;

    send_option(s, OPT_STRUCTURED_REPLY, &[])?;
    let structured = read_reply(s, OPT_STRUCTURED_REPLY)?.rep == REP_ACK;

    let mut meta_id = None;
    if structured {
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
        send_option(s, OPT_SET_META_CONTEXT, &d)?;
        loop {
            let r = read_reply(s, OPT_SET_META_CONTEXT)?;
            match r.rep {
                REP_META_CONTEXT if r.data.len() >= 4 => {
                    if &r.data[4..] == BASE_ALLOCATION.as_bytes() {
                        meta_id = Some(be32(&r.data[0..4]));
                    }
                }
                REP_ACK => break,
                rep if is_rep_err(rep) => {
                    meta_id = None;
                    break;
                }
                _ => return Err("malformed reply to SET_META_CONTEXT".into()),
            }
        }
    }

    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &d)?;
    let mut size_flags = None;
    let mut blocks = (1u32, 4096u32, MAX_PAYLOAD);
    loop {
        let r = read_reply(s, OPT_GO)?;
        match r.rep {
            REP_INFO if r.data.len() >= 2 => match (be16(&r.data[0..2]), r.data.len()) {
                (INFO_EXPORT, 12) => {
                    size_flags = Some((be64(&r.data[2..10]), be16(&r.data[10..12])))
                }
                (INFO_BLOCK_SIZE, 14) => {
                    blocks = (
                        be32(&r.data[2..6]),
                        be32(&r.data[6..10]),
                        be32(&r.data[10..14]),
                    )
                }
                _ => {}
            },
            REP_ACK => break,
            REP_ERR_UNSUP => return export_name(s, export, structured, meta_id, no_zeroes),
            rep if is_rep_err(rep) => return Err(rep_error(&format!("export '{export}'"), &r)),
            _ => return Err("malformed reply to OPT_GO".into()),
        }
    }
    let (size, flags) = size_flags.ok_or("the server accepted OPT_GO without NBD_INFO_EXPORT")?;
    let (min, pref, max) = blocks;
    if !min.is_power_of_two() || min > 1 << 16 || max < min {
        return Err(format!(
            "the server sent invalid block sizes {min}/{pref}/{max}"
        ));
    }
    Ok(Negotiated {
        size,
        flags,
        structured,
        meta_id,
        min_block: min,
        pref_block: pref.max(min),
        max_payload: max.min(MAX_PAYLOAD).max(min),
    })
}

/// The pre-`OPT_GO` way into transmission.
fn export_name(
    s: &mut (impl Read + Write),
    export: &str,
    structured: bool,
    meta_id: Option<u32>,
    no_zeroes: bool,
) -> Result<Negotiated, String> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
    let mut b = [0u8; 10 + 124];
    let n = if no_zeroes { 10 } else { b.len() };
    s.read_exact(&mut b[..n])
        .map_err(|_| format!("the server closed the connection: export '{export}' not found?"))?;
    Ok(Negotiated {
        size: be64(&b[0..8]),
        flags: be16(&b[8..10]),
        structured,
        meta_id,
        min_block: 1,
        pref_block: 4096,
        max_payload: MAX_PAYLOAD,
    })
}
