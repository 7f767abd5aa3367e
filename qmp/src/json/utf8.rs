//! QEMU's "modified UTF-8" rules (`util/unicode.c`): which code points a string may hold and
//! how a byte sequence is decoded. Needed so that string errors and replacement characters
//! come out exactly as QEMU's do.

/// Whether QEMU accepts `cp` in a string: inside Unicode, not a surrogate, not a noncharacter.
pub(crate) fn is_valid_codepoint(cp: i64) -> bool {
    if !(0..=0x10FFFF).contains(&cp) {
        return false;
    }
    if (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE {
        return false;
    }
    !(0xD800..=0xDFFF).contains(&cp)
}

/// Decodes one code point from the start of `s` (which must not be empty) the way QEMU's
/// `mod_utf8_codepoint` does, reading as if the slice were NUL-terminated.
///
/// Returns the code point (`None` when invalid) and how many bytes were consumed (at least 1).
/// `\xC0\x80` decodes to U+0000, overlong forms otherwise are invalid.
pub(crate) fn codepoint(s: &[u8]) -> (Option<u32>, usize) {
    const MIN_CP: [i64; 5] = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let first = at(0);
    if first == 0 {
        return (None, 0);
    }
    if first < 0x80 {
        return (Some(u32::from(first)), 1);
    }
    if first >= 0xFE || first & 0x40 == 0 {
        // Impossible byte, or a continuation byte where a sequence should start.
        return (None, 1);
    }
    let len = first.leading_ones() as usize; // 2..=6 for 0xC0..=0xFD
    let mut cp = i64::from(first & (0x7F >> len));
    let mut used = 1;
    for i in 1..len {
        let byte = at(i);
        if byte & 0xC0 != 0x80 {
            return (None, used);
        }
        used += 1;
        cp = (cp << 6) | i64::from(byte & 0x3F);
    }
    if !is_valid_codepoint(cp) || (cp < MIN_CP[len - 2] && !(cp == 0 && len == 2)) {
        return (None, used);
    }
    (u32::try_from(cp).ok(), used)
}

/// Converts bytes to text the way QEMU prints a C string it did not validate: stops at the
/// first NUL, and every invalid sequence becomes U+FFFD.
pub(crate) fn lossy_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut rest = &bytes[..end];
    let mut out = String::with_capacity(rest.len());
    while !rest.is_empty() {
        let (cp, used) = codepoint(rest);
        out.push(cp.and_then(char::from_u32).unwrap_or('\u{FFFD}'));
        rest = &rest[used.max(1)..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_qemu() {
        assert_eq!(codepoint(b"a"), (Some(0x61), 1));
        assert_eq!(codepoint("é".as_bytes()), (Some(0xE9), 2));
        assert_eq!(codepoint(b"\xC0\x80"), (Some(0), 2));
        assert_eq!(codepoint(b"\xC1\x81").0, None); // overlong
        assert_eq!(codepoint(b"\xED\xA0\x80").0, None); // surrogate
        assert_eq!(codepoint("\u{FFFF}".as_bytes()).0, None); // noncharacter
        assert_eq!(codepoint(b"\xE2\x82"), (None, 3 - 1));
        assert_eq!(codepoint(b"\x80"), (None, 1));
        assert_eq!(lossy_text(b"ab\xFFc\0d"), "ab\u{FFFD}c");
    }
}
