//! The streaming decoder: bytes in, complete JSON values (or errors) out.
//!
//! ```text
//!  bytes ──► lexer (lexer.rs) ──tokens──► streamer (here) ──token list──► parser (parser.rs)
//!            QEMU's table                 counts {} and [],               one value or
//!            + error recovery             enforces the limits             "JSON parse error, ..."
//! ```
//!
//! This is a state machine over bytes with no I/O: feed it any split of a stream and the same
//! items come out. It mirrors QEMU's `json-streamer.c` so that message boundaries, error
//! replies and resynchronisation after bad input behave as qemu-storage-daemon's do:
//!
//! * a message ends when its braces and brackets balance (a top-level scalar is a message on
//!   its own; a number needs the next byte to know it has ended);
//! * a lexical error yields `JSON parse error, stray '...'` and the lexer skips to the next
//!   structural or control character;
//! * a message over [`Limits`] yields a limit error and the streamer starts afresh;
//! * a syntax error yields `JSON parse error, ...` once the brackets balance.

use serde_json::Value;

use super::lexer::{step, State, Step, TokenKind};
use super::parser::{parse, Token};
use super::utf8::lossy_text;

/// Bounds on one message; QEMU's values are the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the tokens of one message (QEMU: 64 MiB).
    pub max_message_bytes: usize,
    /// Number of tokens in one message (QEMU: 2 Mi).
    pub max_tokens: usize,
    /// Open brackets and braces at any point (QEMU: 1024).
    pub max_nesting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_tokens: 2 << 20,
            max_nesting: 1 << 10,
        }
    }
}

/// Why a message could not be decoded. `Display` gives QEMU's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A byte sequence that is no JSON token (the bytes are the offending partial token).
    #[error("JSON parse error, stray '{}'", lossy_text(.0))]
    Stray(Vec<u8>),
    /// The tokens do not form a JSON value.
    #[error("JSON parse error, {0}")]
    Syntax(String),
    /// The message is larger than [`Limits::max_message_bytes`].
    #[error("JSON token size limit exceeded")]
    TooLarge,
    /// The message has more than [`Limits::max_tokens`] tokens.
    #[error("JSON token count limit exceeded")]
    TooManyTokens,
    /// The message nests deeper than [`Limits::max_nesting`].
    #[error("JSON nesting depth limit exceeded")]
    TooDeep,
}

/// One decoded item: a JSON value, or the error QEMU would report for that stretch of input.
pub type Decoded = Result<Value, DecodeError>;

/// Incremental decoder for a stream of JSON values.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Text of the message so far: completed tokens, then the token being lexed.
    buf: Vec<u8>,
    /// Length of `buf` covered by completed tokens.
    committed: usize,
    tokens: Vec<Token>,
    brace_count: i64,
    bracket_count: i64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with QEMU's limits.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A decoder with custom limits.
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Start,
            buf: Vec::new(),
            committed: 0,
            tokens: Vec::new(),
            brace_count: 0,
            bracket_count: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Feeds bytes, appending every item they complete to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Decoded>) {
        for &b in input {
            self.feed_byte(b, out);
        }
    }

    /// Feeds bytes and returns the items they complete.
    pub fn feed_vec(&mut self, input: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        self.feed(input, &mut out);
        out
    }

    /// Decodes a whole buffer with a fresh decoder. Like QEMU, input after the last complete
    /// message (an unfinished object, a trailing number with nothing after it) yields nothing.
    pub fn decode_all(input: &[u8]) -> Vec<Decoded> {
        Decoder::new().feed_vec(input)
    }

    /// Whether the decoder holds the start of a message that is not complete yet.
    pub fn is_mid_message(&self) -> bool {
        !self.buf.is_empty() || !matches!(self.state, State::Start | State::Recovery)
    }

    fn feed_byte(&mut self, b: u8, out: &mut Vec<Decoded>) {
        loop {
            match step(self.state, b) {
                Step::Go(next) => {
                    self.state = next;
                    if matches!(next, State::Start | State::Recovery) {
                        self.buf.truncate(self.committed);
                    } else {
                        self.buf.push(b);
                    }
                    break;
                }
                Step::Token(kind) => {
                    self.buf.push(b);
                    self.state = State::Start;
                    self.token(kind, out);
                    break;
                }
                Step::TokenBefore(kind) => {
                    self.state = State::Start;
                    self.token(kind, out);
                }
                Step::Error => {
                    self.buf.push(b);
                    let stray = self.buf[self.committed..].to_vec();
                    self.reset();
                    self.state = State::Recovery;
                    out.push(Err(DecodeError::Stray(stray)));
                    break;
                }
                Step::Resync => self.state = State::Start,
            }
        }
        // QEMU: "Do not let a single token grow to an arbitrarily large size".
        if self.buf.len() - self.committed > self.limits.max_message_bytes {
            self.reset();
            self.state = State::Start;
            out.push(Err(DecodeError::TooLarge));
        }
    }

    /// A token completed: its text is `buf[committed..]`.
    fn token(&mut self, kind: TokenKind, out: &mut Vec<Decoded>) {
        match kind {
            TokenKind::LCurly => self.brace_count += 1,
            TokenKind::RCurly => self.brace_count -= 1,
            TokenKind::LSquare => self.bracket_count += 1,
            TokenKind::RSquare => self.bracket_count -= 1,
            _ => {}
        }
        let len = self.buf.len() - self.committed;
        let error = if self.committed + len + 1 > self.limits.max_message_bytes {
            Some(DecodeError::TooLarge)
        } else if self.tokens.len() + 1 > self.limits.max_tokens {
            Some(DecodeError::TooManyTokens)
        } else if self.bracket_count + self.brace_count > self.limits.max_nesting as i64 {
            Some(DecodeError::TooDeep)
        } else {
            None
        };
        if let Some(e) = error {
            self.reset();
            out.push(Err(e));
            return;
        }
        self.tokens.push(Token {
            kind,
            start: self.committed,
            end: self.buf.len(),
        });
        self.committed = self.buf.len();
        // Wait while something is open and nothing was closed too often (then parse, which
        // reports the stray closer): QEMU 10.0's exact test.
        if (self.brace_count > 0 || self.bracket_count > 0)
            && self.brace_count >= 0
            && self.bracket_count >= 0
        {
            return;
        }
        let item = parse(&self.buf, &self.tokens).map_err(DecodeError::Syntax);
        self.reset();
        out.push(item);
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.committed = 0;
        self.tokens.clear();
        self.brace_count = 0;
        self.bracket_count = 0;
        // Do not keep a 64 MiB buffer around after a huge message.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        if self.tokens.capacity() > 1 << 16 {
            self.tokens = Vec::new();
        }
    }
}
