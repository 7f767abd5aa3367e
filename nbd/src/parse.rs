//! Pure parsers for everything a peer sends: request headers and their
//! validation (server), option requests (server), reply headers (client).
//!
//! They take byte slices and plain values, never sockets, so they can be
//! fuzzed (`nbd/fuzz/`) and tested over corpora of hostile inputs. None of
//! them panics or allocates more than its input justifies.

use crate::proto::*;

/// A transmission request header as sent by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`CMD_*`).
    pub kind: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u32,
}

/// A request header whose magic is wrong: the stream is out of sync and the
/// connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadMagic(pub u32);

/// Parse a 28-byte request header.
pub fn parse_request_header(b: &[u8; REQUEST_LEN]) -> Result<RequestHeader, BadMagic> {
    let magic = be32(&b[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(BadMagic(magic));
    }
    Ok(RequestHeader {
        flags: be16(&b[4..6]),
        kind: be16(&b[6..8]),
        cookie: be64(&b[8..16]),
        offset: be64(&b[16..24]),
        len: be32(&b[24..28]),
    })
}

/// What was negotiated for a connection: everything request validation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmissionCtx {
    /// Export size in bytes.
    pub export_size: u64,
    /// Transmission flags sent to the client.
    pub tx_flags: u16,
    /// Structured replies negotiated.
    pub structured: bool,
    /// `base:allocation` selected for this export.
    pub block_status: bool,
}

/// A validated command, ready to run against the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length (1..=MAX_PAYLOAD).
        len: u32,
    },
    /// Write the `len`-byte payload that follows the header.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload length (1..=MAX_PAYLOAD).
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Flush the device.
    Flush,
    /// Discard a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Flush before replying.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Flush before replying.
        fua: bool,
        /// Keep the range allocated.
        no_hole: bool,
        /// Fail with `ENOTSUP` unless fast.
        fast: bool,
    },
    /// Report the allocation status of a range.
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// One descriptor only.
        req_one: bool,
    },
    /// Advisory prefetch: validated, then acknowledged without I/O.
    Cache,
    /// Finish in-flight requests and close.
    Disc,
}

/// The server's decision about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Run(Command),
    /// Reply with `errno`, after reading and dropping `discard` payload bytes.
    Reject {
        /// Wire error value.
        errno: u32,
        /// Payload bytes to skip before the next header.
        discard: u32,
        /// Why, for the structured error message.
        reason: &'static str,
    },
    /// The request cannot be answered without losing stream sync (a huge
    /// write payload): close the connection.
    Close(&'static str),
}

/// Largest rejected write payload the server reads and drops to keep the
/// connection; anything larger closes it.
pub const MAX_DISCARD: u32 = 2 * MAX_PAYLOAD;

const KNOWN_FLAGS: u16 =
    CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;

fn in_range(offset: u64, len: u32, size: u64) -> bool {
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= size)
}

/// Validate a request against what was negotiated. Pure: decides only.
pub fn classify_request(h: &RequestHeader, ctx: &TransmissionCtx) -> Verdict {
    let payload = if h.kind == CMD_WRITE { h.len } else { 0 };
    let reject = |errno: u32, reason: &'static str| {
        if payload > MAX_DISCARD {
            Verdict::Close("write payload too large to skip")
        } else {
            Verdict::Reject {
                errno,
                discard: payload,
                reason,
            }
        }
    };
    if h.flags & !KNOWN_FLAGS != 0 {
        return reject(EINVAL, "unknown command flags");
    }
    let allowed = match h.kind {
        CMD_READ if ctx.tx_flags & FLAG_SEND_DF != 0 => CMD_FLAG_FUA | CMD_FLAG_DF,
        CMD_WRITE_ZEROES if ctx.tx_flags & FLAG_SEND_FAST_ZERO != 0 => {
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO
        }
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        // FUA is accepted (and ignored where nothing is written) on every
        // command: the spec notes existing clients set it everywhere.
        _ => CMD_FLAG_FUA,
    };
    if h.flags & !allowed != 0 {
        return reject(EINVAL, "command flag not valid for this command");
    }
    let read_only = ctx.tx_flags & FLAG_READ_ONLY != 0;
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let size = ctx.export_size;
    match h.kind {
        CMD_READ => {
            if h.len == 0 {
                reject(EINVAL, "zero-length read")
            } else if h.len > MAX_PAYLOAD {
                let errno = if ctx.structured { EOVERFLOW } else { EINVAL };
                reject(errno, "read larger than the 32 MiB maximum payload")
            } else if !in_range(h.offset, h.len, size) {
                reject(EINVAL, "read beyond the end of the export")
            } else {
                Verdict::Run(Command::Read {
                    offset: h.offset,
                    len: h.len,
                })
            }
        }
        CMD_WRITE => {
            if h.len > MAX_PAYLOAD {
                reject(EINVAL, "write larger than the 32 MiB maximum payload")
            } else if read_only {
                reject(EPERM, "the export is read-only")
            } else if h.len == 0 {
                reject(EINVAL, "zero-length write")
            } else if !in_range(h.offset, h.len, size) {
                reject(ENOSPC, "write beyond the end of the export")
            } else {
                Verdict::Run(Command::Write {
                    offset: h.offset,
                    len: h.len,
                    fua,
                })
            }
        }
        CMD_DISC => Verdict::Run(Command::Disc),
        CMD_FLUSH => Verdict::Run(Command::Flush),
        CMD_TRIM | CMD_WRITE_ZEROES => {
            let zero = h.kind == CMD_WRITE_ZEROES;
            if read_only {
                reject(EPERM, "the export is read-only")
            } else if h.len == 0 {
                reject(EINVAL, "zero-length request")
            } else if !in_range(h.offset, h.len, size) {
                if zero {
                    reject(ENOSPC, "write zeroes beyond the end of the export")
                } else {
                    reject(EINVAL, "trim beyond the end of the export")
                }
            } else if zero {
                Verdict::Run(Command::WriteZeroes {
                    offset: h.offset,
                    len: h.len,
                    fua,
                    no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                    fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
                })
            } else {
                Verdict::Run(Command::Trim {
                    offset: h.offset,
                    len: h.len,
                    fua,
                })
            }
        }
        CMD_CACHE => {
            if in_range(h.offset, h.len, size) {
                Verdict::Run(Command::Cache)
            } else {
                reject(EINVAL, "cache beyond the end of the export")
            }
        }
        CMD_BLOCK_STATUS => {
            if !ctx.block_status {
                reject(EINVAL, "no metadata context was negotiated")
            } else if h.len == 0 {
                reject(EINVAL, "zero-length block status")
            } else if !in_range(h.offset, h.len, size) {
                reject(EINVAL, "block status beyond the end of the export")
            } else {
                Verdict::Run(Command::BlockStatus {
                    offset: h.offset,
                    len: h.len,
                    req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
                })
            }
        }
        _ => reject(EINVAL, "unknown command"),
    }
}

/// An option request header is 16 bytes; this says whether its magic is right.
pub fn parse_option_header(b: &[u8; 16]) -> Result<(u32, u32), BadMagic> {
    if be64(&b[0..8]) != IHAVEOPT {
        return Err(BadMagic(be32(&b[0..4])));
    }
    Ok((be32(&b[8..12]), be32(&b[12..16])))
}

/// `OPT_INFO` / `OPT_GO` data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name ("" = default export).
    pub name: String,
    /// Information types requested (`INFO_*`).
    pub requests: Vec<u16>,
}

/// `OPT_LIST_META_CONTEXT` / `OPT_SET_META_CONTEXT` data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRequest {
    /// Export name.
    pub export: String,
    /// Queries, e.g. `base:allocation`.
    pub queries: Vec<String>,
}

/// A parsed option request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOption {
    /// `OPT_EXPORT_NAME`.
    ExportName(String),
    /// `OPT_ABORT`.
    Abort,
    /// `OPT_LIST`.
    List,
    /// `OPT_STARTTLS`.
    StartTls,
    /// `OPT_INFO`.
    Info(InfoRequest),
    /// `OPT_GO`.
    Go(InfoRequest),
    /// `OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaRequest),
    /// `OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaRequest),
    /// `OPT_EXTENDED_HEADERS`.
    ExtendedHeaders,
    /// Anything else.
    Unknown(u32),
}

/// A syntactically invalid option (`REP_ERR_INVALID`), with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOption(pub &'static str);

struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidOption> {
        if n > self.data.len() {
            return Err(InvalidOption("option data shorter than its fields"));
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, InvalidOption> {
        self.take(2).map(be16)
    }
    fn u32(&mut self) -> Result<u32, InvalidOption> {
        self.take(4).map(be32)
    }
    fn string(&mut self, len: u32) -> Result<String, InvalidOption> {
        let bytes = self.take(len as usize)?;
        parse_string(bytes)
    }
    fn end(&self) -> Result<(), InvalidOption> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(InvalidOption("trailing bytes after the option fields"))
        }
    }
}

/// A protocol string: UTF-8, no NUL, at most 4096 bytes.
pub fn parse_string(bytes: &[u8]) -> Result<String, InvalidOption> {
    if bytes.len() > MAX_STRING {
        return Err(InvalidOption("string longer than 4096 bytes"));
    }
    if bytes.contains(&0) {
        return Err(InvalidOption("string contains NUL"));
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| InvalidOption("string is not UTF-8"))
}

fn parse_info(data: &[u8]) -> Result<InfoRequest, InvalidOption> {
    let mut c = Cursor { data };
    let name_len = c.u32()?;
    let name = c.string(name_len)?;
    let n = c.u16()?;
    let mut requests = Vec::with_capacity(usize::from(n).min(c.data.len() / 2));
    for _ in 0..n {
        requests.push(c.u16()?);
    }
    c.end()?;
    Ok(InfoRequest { name, requests })
}

fn parse_meta(data: &[u8]) -> Result<MetaRequest, InvalidOption> {
    let mut c = Cursor { data };
    let name_len = c.u32()?;
    let export = c.string(name_len)?;
    let n = c.u32()?;
    // Each query takes at least 4 bytes: bound the allocation by the data.
    if n as usize > c.data.len() / 4 {
        return Err(InvalidOption("more queries than the option data can hold"));
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = c.u32()?;
        queries.push(c.string(len)?);
    }
    c.end()?;
    Ok(MetaRequest { export, queries })
}

/// Parse the data of option `opt`.
pub fn parse_option(opt: u32, data: &[u8]) -> Result<ClientOption, InvalidOption> {
    let empty = |o: ClientOption| {
        if data.is_empty() {
            Ok(o)
        } else {
            Err(InvalidOption("this option takes no data"))
        }
    };
    match opt {
        OPT_EXPORT_NAME => parse_string(data).map(ClientOption::ExportName),
        // The spec asks servers to ignore data sent with ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => empty(ClientOption::List),
        OPT_STARTTLS => empty(ClientOption::StartTls),
        OPT_INFO => parse_info(data).map(ClientOption::Info),
        OPT_GO => parse_info(data).map(ClientOption::Go),
        OPT_STRUCTURED_REPLY => empty(ClientOption::StructuredReply),
        OPT_LIST_META_CONTEXT => parse_meta(data).map(ClientOption::ListMetaContext),
        OPT_SET_META_CONTEXT => parse_meta(data).map(ClientOption::SetMetaContext),
        OPT_EXTENDED_HEADERS => empty(ClientOption::ExtendedHeaders),
        other => Ok(ClientOption::Unknown(other)),
    }
}

/// A reply header as seen by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply (16 bytes).
    Simple {
        /// Wire error value (0 = success).
        errno: u32,
        /// Cookie of the request.
        cookie: u64,
    },
    /// A structured reply chunk (20 bytes).
    Chunk {
        /// `REPLY_FLAG_*`.
        flags: u16,
        /// `REPLY_TYPE_*`.
        kind: u16,
        /// Cookie of the request.
        cookie: u64,
        /// Payload length that follows.
        len: u32,
    },
}

/// Length of the header that starts with `magic`, or `None` for a bad magic.
pub fn reply_header_len(magic: u32) -> Option<usize> {
    match magic {
        SIMPLE_REPLY_MAGIC => Some(SIMPLE_REPLY_LEN),
        STRUCTURED_REPLY_MAGIC => Some(CHUNK_HEADER_LEN),
        _ => None,
    }
}

/// Parse a reply header (16 or 20 bytes, magic included).
pub fn parse_reply_header(b: &[u8]) -> Result<ReplyHeader, BadMagic> {
    if b.len() < 4 {
        return Err(BadMagic(0));
    }
    let magic = be32(&b[0..4]);
    match (magic, b.len()) {
        (SIMPLE_REPLY_MAGIC, SIMPLE_REPLY_LEN) => Ok(ReplyHeader::Simple {
            errno: be32(&b[4..8]),
            cookie: be64(&b[8..16]),
        }),
        (STRUCTURED_REPLY_MAGIC, CHUNK_HEADER_LEN) => Ok(ReplyHeader::Chunk {
            flags: be16(&b[4..6]),
            kind: be16(&b[6..8]),
            cookie: be64(&b[8..16]),
            len: be32(&b[16..20]),
        }),
        _ => Err(BadMagic(magic)),
    }
}

/// Parse a `REPLY_TYPE_BLOCK_STATUS` payload into `(context id, [(len, flags)])`.
pub fn parse_block_status(payload: &[u8]) -> Option<(u32, Vec<(u32, u32)>)> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return None;
    }
    let id = be32(&payload[0..4]);
    let descs = payload[4..]
        .chunks_exact(8)
        .map(|d| (be32(&d[0..4]), be32(&d[4..8])))
        .collect();
    Some((id, descs))
}

/// Parse an error chunk payload into `(errno, message)`.
pub fn parse_error_chunk(payload: &[u8]) -> Option<(u32, String)> {
    if payload.len() < 6 {
        return None;
    }
    let errno = be32(&payload[0..4]);
    let mlen = usize::from(be16(&payload[4..6]));
    let msg = payload.get(6..6 + mlen)?;
    Some((errno, String::from_utf8_lossy(msg).into_owned()))
}

/// Big-endian u16 from the first two bytes (callers pass exact slices).
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Big-endian u32 from the first four bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Big-endian u64 from the first eight bytes.
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    u64::from_be_bytes(a)
}
