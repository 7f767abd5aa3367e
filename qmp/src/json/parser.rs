//! Turns the token list of one message into a [`serde_json::Value`], with the error messages of
//! QEMU's `qobject/json-parser.c` ("expecting value", "duplicate key", ...).
//!
//! QEMU parses recursively and keeps only the first error; this parser is iterative (a deep
//! message cannot overflow a small thread stack) and stops at the first error, which yields
//! the same message.

use serde_json::{Map, Number, Value};

use super::lexer::TokenKind;
use super::utf8::{codepoint, is_valid_codepoint, lossy_text};

/// A token: its kind and its text `buf[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// A container being filled.
enum Frame {
    Array(Vec<Value>),
    /// An object, and the key whose value is being parsed (None: the key is being parsed).
    Object(Map<String, Value>, Option<String>),
}

struct Cursor<'a> {
    buf: &'a [u8],
    tokens: &'a [Token],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn pop(&mut self) -> Result<Token, String> {
        let t = self.peek().ok_or_else(eoi)?;
        self.pos += 1;
        Ok(t)
    }

    fn text(&self, t: Token) -> &'a [u8] {
        &self.buf[t.start..t.end]
    }
}

fn eoi() -> String {
    "premature EOI".to_owned()
}

/// Parses one message. The error is the text after "JSON parse error, ".
pub(crate) fn parse(buf: &[u8], tokens: &[Token]) -> Result<Value, String> {
    let mut c = Cursor {
        buf,
        tokens,
        pos: 0,
    };
    let mut stack: Vec<Frame> = Vec::new();
    'value: loop {
        // Parse the start of a value: a scalar completes at once, a non-empty container
        // pushes a frame and goes on with its first element.
        let tok = c.peek().ok_or_else(eoi)?;
        let mut value = match tok.kind {
            TokenKind::LCurly => {
                c.pos += 1;
                let next = c.peek().ok_or_else(eoi)?;
                if next.kind == TokenKind::RCurly {
                    c.pos += 1;
                    Value::Object(Map::new())
                } else {
                    stack.push(Frame::Object(Map::new(), None));
                    continue 'value;
                }
            }
            TokenKind::LSquare => {
                c.pos += 1;
                let next = c.peek().ok_or_else(eoi)?;
                if next.kind == TokenKind::RSquare {
                    c.pos += 1;
                    Value::Array(Vec::new())
                } else {
                    stack.push(Frame::Array(Vec::new()));
                    continue 'value;
                }
            }
            TokenKind::Integer | TokenKind::Float => {
                c.pos += 1;
                Value::Number(number(c.text(tok), tok.kind))
            }
            TokenKind::String => {
                c.pos += 1;
                Value::String(string(c.text(tok))?)
            }
            TokenKind::Keyword => {
                c.pos += 1;
                keyword(c.text(tok))?
            }
            _ => return Err("expecting value".to_owned()),
        };
        // A value is complete: hand it to the enclosing containers until one wants more.
        loop {
            match stack.last_mut() {
                None => return Ok(value),
                Some(Frame::Array(items)) => {
                    items.push(value);
                    let t = c.pop()?;
                    match t.kind {
                        TokenKind::Comma => continue 'value,
                        TokenKind::RSquare => {
                            let Some(Frame::Array(items)) = stack.pop() else {
                                unreachable!("the top frame is an array")
                            };
                            value = Value::Array(items);
                        }
                        _ => return Err("expected separator in list".to_owned()),
                    }
                }
                Some(Frame::Object(map, slot)) => match slot.take() {
                    None => {
                        let Value::String(key) = value else {
                            return Err("key is not a string in object".to_owned());
                        };
                        if c.pop()?.kind != TokenKind::Colon {
                            return Err("missing : in object pair".to_owned());
                        }
                        *slot = Some(key);
                        continue 'value;
                    }
                    Some(key) => {
                        if map.contains_key(&key) {
                            return Err("duplicate key".to_owned());
                        }
                        map.insert(key, value);
                        let t = c.pop()?;
                        match t.kind {
                            TokenKind::Comma => {
                                c.peek().ok_or_else(eoi)?;
                                continue 'value;
                            }
                            TokenKind::RCurly => {
                                let Some(Frame::Object(map, _)) = stack.pop() else {
                                    unreachable!("the top frame is an object")
                                };
                                value = Value::Object(map);
                            }
                            _ => return Err("expected separator in dict".to_owned()),
                        }
                    }
                },
            }
        }
    }
}

fn keyword(text: &[u8]) -> Result<Value, String> {
    match text {
        b"true" => Ok(Value::Bool(true)),
        b"false" => Ok(Value::Bool(false)),
        b"null" => Ok(Value::Null),
        _ => Err(format!(
            "invalid keyword '{}'",
            String::from_utf8_lossy(text)
        )),
    }
}

/// QEMU keeps an integer as int64 if it fits, else uint64, else double; a float is a double.
fn number(text: &[u8], kind: TokenKind) -> Number {
    // The lexer only lets ASCII digits, signs, '.', 'e' and 'E' through.
    let s = std::str::from_utf8(text).unwrap_or("0");
    if kind == TokenKind::Integer {
        if let Ok(i) = s.parse::<i64>() {
            return Number::from(i);
        }
        if !s.starts_with('-') {
            if let Ok(u) = s.parse::<u64>() {
                return Number::from(u);
            }
        }
    }
    let f = s.parse::<f64>().unwrap_or(0.0);
    // QEMU would hold an infinity here; JSON (and serde_json) cannot, so saturate.
    let f = if f.is_finite() {
        f
    } else if f > 0.0 {
        f64::MAX
    } else {
        f64::MIN
    };
    Number::from_f64(f).unwrap_or_else(|| Number::from(0))
}

/// Four hex digits at `s[at..]`, or None (QEMU's `cvt4hex`).
fn hex4(s: &[u8], at: usize) -> Option<u32> {
    let mut cp = 0;
    for i in 0..4 {
        let d = char::from(*s.get(at + i)?).to_digit(16)?;
        cp = (cp << 4) | d;
    }
    Some(cp)
}

/// Decodes a string token (quotes included) with QEMU's escapes and its UTF-8 checks.
fn string(tok: &[u8]) -> Result<String, String> {
    let quote = tok[0];
    let mut out = String::with_capacity(tok.len());
    let mut i = 1;
    while i < tok.len() && tok[i] != quote {
        if tok[i] != b'\\' {
            let (cp, used) = codepoint(&tok[i..]);
            match cp.and_then(char::from_u32) {
                Some(ch) => out.push(ch),
                None => return Err("invalid UTF-8 sequence in string".to_owned()),
            }
            i += used.max(1);
            continue;
        }
        let beg = i;
        let esc = tok.get(i + 1).copied().unwrap_or(0);
        i += 2;
        let ch = match esc {
            b'"' => '"',
            b'\'' => '\'',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut cp = hex4(tok, i).map_or(-1, i64::from);
                i += 4;
                if (0xD800..=0xDBFF).contains(&cp)
                    && tok.get(i) == Some(&b'\\')
                    && tok.get(i + 1) == Some(&b'u')
                {
                    cp = 0x10000 + ((cp & 0x3FF) << 10);
                    match hex4(tok, i + 2) {
                        Some(t @ 0xDC00..=0xDFFF) => {
                            cp |= i64::from(t & 0x3FF);
                            i += 6;
                        }
                        _ => cp = -1,
                    }
                }
                match u32::try_from(cp).ok().filter(|_| is_valid_codepoint(cp)) {
                    Some(cp) => char::from_u32(cp).unwrap_or('\u{FFFD}'),
                    None => {
                        let shown = &tok[beg..i.min(tok.len())];
                        return Err(format!(
                            "{} is not a valid Unicode character",
                            lossy_text(shown)
                        ));
                    }
                }
            }
            _ => return Err("invalid escape sequence in string".to_owned()),
        };
        out.push(ch);
    }
    Ok(out)
}
