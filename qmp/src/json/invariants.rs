//! The decoder's invariants as one checking function, shared by the `qmp_decode` fuzz target
//! (`qmp/fuzz`) and the test suite.

use super::{to_qemu_string, Decoder, Limits};

/// Decodes `data` and panics if an invariant breaks:
///
/// 1. splitting the input anywhere (here: at a point chosen by the first byte, and byte by
///    byte) yields the same items as feeding it whole;
/// 2. every decoded value, written in QEMU's style, decodes back to itself;
/// 3. after any input, `\xFF` followed by a valid message yields that message.
///
/// Small limits are used so that the limit paths are reached with small inputs.
#[doc(hidden)]
pub fn check_decoder_invariants(data: &[u8]) {
    let limits = Limits {
        max_message_bytes: 4096,
        max_tokens: 512,
        max_nesting: 32,
    };
    let whole = Decoder::with_limits(limits).feed_vec(data);

    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut d = Decoder::with_limits(limits);
    let mut split = d.feed_vec(&data[..cut]);
    d.feed(&data[cut..], &mut split);
    assert_eq!(split, whole, "split at {cut} changed the result");

    let mut d = Decoder::with_limits(limits);
    let mut bytewise = Vec::new();
    for b in data {
        d.feed(std::slice::from_ref(b), &mut bytewise);
    }
    assert_eq!(bytewise, whole, "byte-by-byte feeding changed the result");

    for value in whole.iter().flatten() {
        let text = to_qemu_string(value);
        // A top-level scalar needs a byte after it to end.
        let again = Decoder::new().feed_vec(format!("{text} ").as_bytes());
        assert_eq!(again.len(), 1, "{text} decoded to {again:?}");
        assert_eq!(again[0].as_ref().ok(), Some(value), "round trip of {text}");
    }

    d.feed(b"\xff{\"execute\": \"x\"}", &mut bytewise);
    let last = bytewise.last().and_then(|r| r.as_ref().ok());
    assert_eq!(
        last,
        Some(&serde_json::json!({"execute": "x"})),
        "no resync after \\xff"
    );
}
