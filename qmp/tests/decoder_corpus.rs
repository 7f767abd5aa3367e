//! The streaming decoder on nasty inputs, and properties: any split of a stream decodes to the
//! same items; garbage followed by `\xFF` always resynchronises.

use proptest::prelude::*;
use ringmirror_qmp::json::{
    check_decoder_invariants, to_qemu_string, DecodeError, Decoded, Decoder, Limits,
};
use serde_json::{json, Value};

fn ok(v: Value) -> Decoded {
    Ok(v)
}

fn syntax(msg: &str) -> Decoded {
    Err(DecodeError::Syntax(msg.to_owned()))
}

fn stray(bytes: &[u8]) -> Decoded {
    Err(DecodeError::Stray(bytes.to_vec()))
}

/// (input, the items QEMU's parser yields for it)
fn corpus() -> Vec<(&'static [u8], Vec<Decoded>)> {
    vec![
        (b"", vec![]),
        (b" \t\r\n ", vec![]),
        (br#"{"a":"}{]["}"#, vec![ok(json!({"a": "}{]["}))]),
        (br#"{}{}"#, vec![ok(json!({})), ok(json!({}))]),
        (b"{\n  \"a\" :\t[ 1 ,2 ] \r\n}", vec![ok(json!({"a": [1, 2]}))]),
        (
            br#"{"s": "\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\u0000'"}"#,
            vec![ok(json!({"s": "\"\\/\u{8}\u{c}\n\r\té😀\0'"}))],
        ),
        (br#"{'single': 'it''s'}"#, vec![syntax("expected separator in dict")]),
        (br#"{'single': "dq'", "sq": '\'"'}"#, vec![ok(json!({"single": "dq'", "sq": "'\""}))]),
        // A top-level number needs the next byte to end.
        (b"1", vec![]),
        (b"1 ", vec![ok(json!(1))]),
        (b"\"s\"", vec![ok(json!("s"))]),
        (b"[1]true", vec![ok(json!([1]))]),
        (b"[1]true ", vec![ok(json!([1])), ok(json!(true))]),
        // Unfinished messages yield nothing yet.
        (br#"{"execute": "x", "arguments": {"#, vec![]),
        (b"{{", vec![]),
        // Numbers: int64, then uint64, then double; 0e5 is not a number in QEMU's lexer.
        (
            b"[-0, 9223372036854775807, 9223372036854775808, 18446744073709551616, -9223372036854775809, 1.5e3]",
            vec![ok(json!([0, i64::MAX, 9223372036854775808u64, 18446744073709551616.0, -9223372036854775809.0, 1500.0]))],
        ),
        (b"[1e400]", vec![ok(json!([f64::MAX]))]),
        (b"[0e5]", vec![syntax("expected separator in list")]),
        (b"[01]", vec![stray(b"01"), syntax("expecting value")]),
        (b"[1.]", vec![stray(b"1.]")]),
        (b"[-x]", vec![stray(b"-x"), syntax("expecting value")]),
        // Syntax errors, reported when the brackets balance.
        (b"}", vec![syntax("expecting value")]),
        (b"]", vec![syntax("expecting value")]),
        (b":", vec![syntax("expecting value")]),
        (br#"{"a" 1}"#, vec![syntax("missing : in object pair")]),
        (br#"{"a": }"#, vec![syntax("expecting value")]),
        (br#"{"a": 1,}"#, vec![syntax("expecting value")]),
        (br#"{"a": 1 "b": 2}"#, vec![syntax("expected separator in dict")]),
        (br#"{1: 2}"#, vec![syntax("key is not a string in object")]),
        (br#"{"a": 1, "a": 2}"#, vec![syntax("duplicate key")]),
        (br#"[1 2]"#, vec![syntax("expected separator in list")]),
        (br#"[nul]"#, vec![syntax("invalid keyword 'nul'")]),
        (br#"{"a": [}]"#, vec![syntax("expecting value")]),
        (br#"{"a": 1]"#, vec![syntax("expected separator in dict")]),
        // A closer too many ends the message at once, even with a bracket open.
        (br#"[}"#, vec![syntax("expecting value")]),
        (br#"[}]"#, vec![syntax("expecting value"), syntax("expecting value")]),
        // String contents.
        (br#"["\x"]"#, vec![syntax("invalid escape sequence in string")]),
        (br#"["\uD800"]"#, vec![syntax("\\uD800 is not a valid Unicode character")]),
        (br#"["\uD800\u0041"]"#, vec![syntax("\\uD800 is not a valid Unicode character")]),
        (br#"["\uFFFF"]"#, vec![syntax("\\uFFFF is not a valid Unicode character")]),
        (br#"["\u12"]"#, vec![syntax("\\u12\" is not a valid Unicode character")]),
        (b"[\"\xC3\"]", vec![syntax("invalid UTF-8 sequence in string")]),
        (b"[\"\xC0\x80\"]", vec![ok(json!(["\0"]))]),
        (b"[\"\xC1\x81\"]", vec![syntax("invalid UTF-8 sequence in string")]),
        // Lexical errors, recovery at the next structural or control character.
        (b"@{\"a\": 1}", vec![stray(b"@"), ok(json!({"a": 1}))]),
        (b"{\"a\": @}{\"b\": 2}", vec![stray(b"@"), syntax("expecting value"), ok(json!({"b": 2}))]),
        (b"{\"a\": \"x\ny\"}", vec![stray(b"\"x\n"), syntax("expecting value")]),
        (b"\xff\xfe{}", vec![stray(b"\xff"), stray(b"\xfe"), ok(json!({}))]),
        (b"{\"a\": \"\xff\"}", vec![stray(b"\"\xff"), syntax("expecting value")]),
        (b"%d", vec![stray(b"%"), ]),
        (b"\x00{}", vec![stray(b"\0"), ok(json!({}))]),
    ]
}

#[test]
fn nasty_inputs_decode_like_qemu() {
    for (input, expected) in corpus() {
        let got = Decoder::decode_all(input);
        assert_eq!(got, expected, "input {:?}", String::from_utf8_lossy(input));
        // The same, one byte at a time.
        let mut d = Decoder::new();
        let mut bytewise = Vec::new();
        for b in input {
            d.feed(std::slice::from_ref(b), &mut bytewise);
        }
        assert_eq!(
            bytewise,
            expected,
            "bytewise {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn fuzz_invariants_hold_on_the_corpus_and_the_fuzz_seeds() {
    for (input, _) in corpus() {
        check_decoder_invariants(input);
    }
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");
    let mut n = 0;
    for entry in std::fs::read_dir(seeds).expect("fuzz seeds") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        check_decoder_invariants(&data);
        n += 1;
    }
    assert!(n >= 5, "fuzz seeds missing");
}

#[test]
fn error_wording() {
    assert_eq!(
        DecodeError::Stray(b"\"a\xff".to_vec()).to_string(),
        "JSON parse error, stray '\"a\u{FFFD}'"
    );
    assert_eq!(
        DecodeError::Syntax("duplicate key".into()).to_string(),
        "JSON parse error, duplicate key"
    );
    assert_eq!(
        DecodeError::TooLarge.to_string(),
        "JSON token size limit exceeded"
    );
    assert_eq!(
        DecodeError::TooManyTokens.to_string(),
        "JSON token count limit exceeded"
    );
    assert_eq!(
        DecodeError::TooDeep.to_string(),
        "JSON nesting depth limit exceeded"
    );
}

#[test]
fn nesting_limit_is_qemus() {
    let at_limit = format!("{}{}", "[".repeat(1024), "]".repeat(1024));
    assert_eq!(Decoder::decode_all(at_limit.as_bytes()).len(), 1);
    assert!(Decoder::decode_all(at_limit.as_bytes())[0].is_ok());
    let over = format!("{}{}", "[".repeat(1025), "]".repeat(1025));
    let items = Decoder::decode_all(over.as_bytes());
    assert_eq!(items[0], Err(DecodeError::TooDeep));
    // After the reset the rest is read afresh: every ']' is one too many.
    assert_eq!(items.len(), 1 + 1025);
    assert!(items[1..].iter().all(|i| *i == syntax("expecting value")));
}

#[test]
fn size_and_token_limits() {
    let limits = Limits {
        max_message_bytes: 64,
        max_tokens: 8,
        max_nesting: 4,
    };
    // One long token: the lexer's own check.
    let mut d = Decoder::with_limits(limits);
    let long = format!("[\"{}\"] {{}}", "A".repeat(100));
    let items = d.feed_vec(long.as_bytes());
    assert_eq!(items[0], Err(DecodeError::TooLarge));
    // Then the rest of the string is lexed from scratch, as in QEMU.
    assert_eq!(items[1], stray(b"A"));
    assert_eq!(items[2], syntax("expecting value"));
    assert_eq!(items.last(), Some(&ok(json!({}))));
    // Many small tokens.
    let mut d = Decoder::with_limits(limits);
    let items = d.feed_vec(b"[1,2,3,4,5] {}");
    assert_eq!(items[0], Err(DecodeError::TooManyTokens));
    assert_eq!(items.last(), Some(&ok(json!({}))));
    let mut d = Decoder::with_limits(limits);
    let items = d.feed_vec(b"[[[[[1]]]]] {}");
    assert_eq!(items[0], Err(DecodeError::TooDeep));
    assert_eq!(items.last(), Some(&ok(json!({}))));
}

#[test]
fn huge_string_is_refused_once_and_memory_is_released() {
    let mut d = Decoder::new();
    let mut msg = b"{\"execute\": \"x\", \"arguments\": {\"b\": \"".to_vec();
    msg.resize(msg.len() + (65 << 20), b'A');
    msg.extend_from_slice(b"\"}}{\"execute\": \"y\"}");
    let items = d.feed_vec(&msg);
    assert_eq!(items[0], Err(DecodeError::TooLarge));
    assert_eq!(items.last(), Some(&ok(json!({"execute": "y"}))));
    assert!(!d.is_mid_message());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        "\\PC{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z{}\\[\\]\"\\\\ -]{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_message() -> impl Strategy<Value = Value> {
    (arb_json(), "[a-z-]{1,12}").prop_map(
        |(args, cmd)| json!({"execute": cmd, "arguments": {"v": args}, "id": "__qmp#00001"}),
    )
}

/// Serialises a message in one of the styles clients use.
fn render(v: &Value, style: u8) -> String {
    match style % 3 {
        0 => v.to_string(),
        1 => serde_json::to_string_pretty(v).unwrap(),
        _ => to_qemu_string(v),
    }
}

fn float_tolerant_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p == q || ((p - q) / p.abs().max(1.0)).abs() < 1e-12,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| float_tolerant_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| float_tolerant_eq(p, q)))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_decodes_to_the_same_messages(
        msgs in prop::collection::vec((arb_message(), any::<u8>(), "[ \t\r\n]{0,3}"), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut stream = String::new();
        for (m, style, ws) in &msgs {
            stream.push_str(&render(m, *style));
            stream.push_str(ws);
        }
        let bytes = stream.as_bytes();
        let whole = Decoder::decode_all(bytes);
        prop_assert_eq!(whole.len(), msgs.len());
        for (item, (m, _, _)) in whole.iter().zip(&msgs) {
            let v = item.as_ref().expect("valid message decodes");
            prop_assert!(float_tolerant_eq(v, m), "{} != {}", v, m);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut d = Decoder::new();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([bytes.len()]) {
            d.feed(&bytes[last..p], &mut pieces);
            last = p;
        }
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn garbage_then_0xff_resynchronises(
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        msg in arb_message(),
    ) {
        let mut d = Decoder::new();
        let mut items = d.feed_vec(&garbage);
        items.clear();
        d.feed(b"\xff", &mut items);
        items.clear();
        d.feed(render(&msg, 0).as_bytes(), &mut items);
        let last = items.last().cloned();
        prop_assert!(matches!(&last, Some(Ok(v)) if float_tolerant_eq(v, &msg)), "{:?}", last);
    }

    #[test]
    fn fuzz_invariants_hold_on_random_input(
        data in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(b"{}[]:,\"'\\ \n0123456789.eE-+truefalsnu\xff".to_vec()),
        ], 0..300),
    ) {
        check_decoder_invariants(&data);
    }

    #[test]
    fn garbage_never_panics_and_the_decoder_stays_bounded(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let limits = Limits { max_message_bytes: 256, max_tokens: 64, max_nesting: 8 };
        let mut d = Decoder::with_limits(limits);
        let mut out = Vec::new();
        for c in &chunks {
            d.feed(c, &mut out);
        }
        // And a valid message after a resync still comes through.
        out.clear();
        d.feed(b"\xff{\"execute\": \"ok\"}", &mut out);
        prop_assert_eq!(out.last(), Some(&ok(json!({"execute": "ok"}))));
    }
}
