//! The byte-level JSON lexer, a transition table equivalent to QEMU's `qobject/json-lexer.c`.
//!
//! QEMU's lexer is deliberately lenient (it accepts `[a-z]+` keywords, single-quoted strings,
//! any non-control byte after a backslash) and leaves rejecting those to the parser. After a
//! lexical error it skips input until a structural character, a control character or one of
//! the impossible UTF-8 bytes `\xFE` `\xFF`, which is how clients resynchronise.
//! Reproducing the table exactly is what makes our error replies match QEMU's byte for byte.

/// A complete token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `{`
    LCurly,
    /// `}`
    RCurly,
    /// `[`
    LSquare,
    /// `]`
    RSquare,
    /// `:`
    Colon,
    /// `,`
    Comma,
    /// An integer literal.
    Integer,
    /// A literal with a fraction or an exponent.
    Float,
    /// `[a-z]+`: `true`, `false`, `null`, or garbage the parser rejects.
    Keyword,
    /// A single- or double-quoted string, quotes included.
    String,
}

/// The lexer's states (QEMU's `enum json_lexer_state`, minus interpolation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Recovery,
    DqEscape,
    Dq,
    SqEscape,
    Sq,
    Zero,
    ExpDigits,
    ExpSign,
    ExpE,
    Mantissa,
    MantissaDigits,
    Digits,
    Sign,
    Keyword,
    Start,
}

/// What one byte does in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Consume the byte and move to the state (`Start` and `Recovery` drop the pending text).
    Go(State),
    /// Consume the byte, which completes a token.
    Token(TokenKind),
    /// The pending text is a complete token; look at the byte again from `Start`.
    TokenBefore(TokenKind),
    /// Consume the byte: lexical error; the pending text plus the byte is the stray text.
    Error,
    /// Leave recovery; look at the byte again from `Start`.
    Resync,
}

/// The transition function.
pub(crate) fn step(state: State, b: u8) -> Step {
    use State as S;
    use Step::*;
    match state {
        S::Recovery => match b {
            b'\t' => Go(S::Recovery),
            0..=0x1F | 0xFE | 0xFF | b'[' | b']' | b'{' | b'}' | b':' | b',' => Resync,
            _ => Go(S::Recovery),
        },
        S::DqEscape => string_byte(b, S::Dq),
        S::SqEscape => string_byte(b, S::Sq),
        S::Dq => match b {
            b'\\' => Go(S::DqEscape),
            b'"' => Token(TokenKind::String),
            _ => string_byte(b, S::Dq),
        },
        S::Sq => match b {
            b'\\' => Go(S::SqEscape),
            b'\'' => Token(TokenKind::String),
            _ => string_byte(b, S::Sq),
        },
        S::Zero => match b {
            b'0'..=b'9' => Error,
            b'.' => Go(S::Mantissa),
            _ => TokenBefore(TokenKind::Integer),
        },
        S::ExpDigits => match b {
            b'0'..=b'9' => Go(S::ExpDigits),
            _ => TokenBefore(TokenKind::Float),
        },
        S::ExpSign => match b {
            b'0'..=b'9' => Go(S::ExpDigits),
            _ => Error,
        },
        S::ExpE => match b {
            b'-' | b'+' => Go(S::ExpSign),
            b'0'..=b'9' => Go(S::ExpDigits),
            _ => Error,
        },
        S::Mantissa => match b {
            b'0'..=b'9' => Go(S::MantissaDigits),
            _ => Error,
        },
        S::MantissaDigits => match b {
            b'0'..=b'9' => Go(S::MantissaDigits),
            b'e' | b'E' => Go(S::ExpE),
            _ => TokenBefore(TokenKind::Float),
        },
        S::Digits => match b {
            b'0'..=b'9' => Go(S::Digits),
            b'e' | b'E' => Go(S::ExpE),
            b'.' => Go(S::Mantissa),
            _ => TokenBefore(TokenKind::Integer),
        },
        S::Sign => match b {
            b'0' => Go(S::Zero),
            b'1'..=b'9' => Go(S::Digits),
            _ => Error,
        },
        S::Keyword => match b {
            b'a'..=b'z' => Go(S::Keyword),
            _ => TokenBefore(TokenKind::Keyword),
        },
        S::Start => match b {
            b'"' => Go(S::Dq),
            b'\'' => Go(S::Sq),
            b'0' => Go(S::Zero),
            b'1'..=b'9' => Go(S::Digits),
            b'-' => Go(S::Sign),
            b'{' => Token(TokenKind::LCurly),
            b'}' => Token(TokenKind::RCurly),
            b'[' => Token(TokenKind::LSquare),
            b']' => Token(TokenKind::RSquare),
            b',' => Token(TokenKind::Comma),
            b':' => Token(TokenKind::Colon),
            b'a'..=b'z' => Go(S::Keyword),
            b' ' | b'\t' | b'\r' | b'\n' => Go(S::Start),
            _ => Error,
        },
    }
}

/// Inside a string QEMU's lexer accepts 0x20..=0xFD and nothing else.
fn string_byte(b: u8, stay: State) -> Step {
    if (0x20..=0xFD).contains(&b) {
        Step::Go(stay)
    } else {
        Step::Error
    }
}
