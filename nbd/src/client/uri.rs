//! NBD URIs (`doc/uri.md` of the NetworkBlockDevice/nbd repository):
//! `nbd://host[:port]/export` and `nbd+unix:///export?socket=PATH`.
//! TLS schemes (`nbds`, `nbds+unix`) are refused: this client has no TLS.

use std::fmt;
use std::path::PathBuf;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP to `host:port` (host may be a name, an IPv4 or an IPv6 address).
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix-domain socket.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    /// How to reach the server.
    pub transport: Transport,
    /// Export name ("" = the server's default export).
    pub export: String,
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            Transport::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            Transport::Unix { path } => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, path.display())
            }
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode `%XX` escapes (RFC 3986); the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (h, l) = match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(format!("bad percent escape in '{s}'")),
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}

impl NbdUri {
    /// Parse an NBD URI; the error says what is wrong with it.
    pub fn parse(uri: &str) -> Result<NbdUri, String> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| format!("'{uri}' is not a URI (expected nbd://host/export or nbd+unix:///export?socket=PATH)"))?;
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "nbd" | "nbd+tcp" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" | "nbds+tcp" => {
                return Err(format!(
                    "'{uri}': TLS (scheme {scheme}) is not supported by this client"
                ))
            }
            _ => {
                return Err(format!(
                    "'{uri}': unknown scheme '{scheme}' (expected nbd or nbd+unix)"
                ))
            }
        };
        let rest = match rest.split_once('#') {
            Some((r, _fragment)) => r,
            None => rest,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let export = percent_decode(path.strip_prefix('/').unwrap_or(path))?;
        let mut socket = None;
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "socket" => socket = Some(percent_decode(v)?),
                k if k.starts_with("tls") => {
                    return Err(format!(
                        "'{uri}': TLS parameter '{k}' is not supported by this client"
                    ))
                }
                k if k.starts_with("x-") => {}
                k => return Err(format!("'{uri}': unknown query parameter '{k}'")),
            }
        }
        let transport = if unix {
            if !authority.is_empty() {
                return Err(format!(
                    "'{uri}': a nbd+unix URI takes no host (use nbd+unix:///export?socket=PATH)"
                ));
            }
            let path = socket.ok_or_else(|| format!("'{uri}': nbd+unix needs ?socket=PATH"))?;
            if path.is_empty() {
                return Err(format!("'{uri}': empty socket path"));
            }
            Transport::Unix {
                path: PathBuf::from(path),
            }
        } else {
            if socket.is_some() {
                return Err(format!("'{uri}': socket= is only valid with nbd+unix"));
            }
            let hostport = authority
                .rsplit_once('@')
                .map_or(authority, |(_user, hp)| hp);
            let (host, port) = split_host_port(hostport).map_err(|e| format!("'{uri}': {e}"))?;
            if host.is_empty() {
                return Err(format!("'{uri}': missing host"));
            }
            Transport::Tcp { host, port }
        };
        Ok(NbdUri { transport, export })
    }
}

fn split_host_port(hp: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(r) = hp.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unterminated IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after IPv6 address")?),
        };
        (h.to_string(), port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hp.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?,
    };
    Ok((percent_decode(&host)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            transport: Transport::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            NbdUri::parse("nbd://example.com/disk").unwrap(),
            tcp("example.com", 10809, "disk")
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com/").unwrap(),
            tcp("example.com", 10809, "")
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com").unwrap(),
            tcp("example.com", 10809, "")
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com//disk").unwrap(),
            tcp("example.com", 10809, "/disk")
        );
        assert_eq!(
            NbdUri::parse("nbd://example.com/hello%20world").unwrap(),
            tcp("example.com", 10809, "hello world")
        );
        assert_eq!(
            NbdUri::parse("nbd://127.0.0.1:1234/x").unwrap(),
            tcp("127.0.0.1", 1234, "x")
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]:99/x").unwrap(),
            tcp("::1", 99, "x")
        );
        assert_eq!(
            NbdUri::parse("nbd://user@h/x").unwrap(),
            tcp("h", 10809, "x")
        );
        let u = NbdUri::parse("nbd+unix:///disk?socket=/tmp/a%20b.sock").unwrap();
        assert_eq!(
            u,
            NbdUri {
                transport: Transport::Unix {
                    path: "/tmp/a b.sock".into()
                },
                export: "disk".into()
            }
        );
        assert_eq!(NbdUri::parse(&u.to_string()).unwrap().export, "disk");
    }

    #[test]
    fn rejects() {
        for bad in [
            "disk.raw",
            "http://x/y",
            "nbds://x/y",
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd://x:99999/y",
            "nbd://x/y?socket=/s",
            "nbd://x/y?tls-type=anon",
            "nbd://x/y?bogus=1",
            "nbd:///y",
            "nbd://x/%zz",
            "nbd://[::1/x",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
