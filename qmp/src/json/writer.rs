//! Serialises values the way QEMU's `qobject/json-writer.c` does: `", "` and `": "`
//! separators, members in QDict order, non-ASCII escaped as `\uXXXX`.

use std::fmt::Write;

use serde_json::Value;

use super::order::qdict_order;
use super::utf8::is_valid_codepoint;

/// Serialises `value` in QEMU's compact style.
pub fn to_qemu_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// Appends the QEMU serialisation of `value` to `out`.
pub fn write_value(out: &mut String, value: &Value) {
    // Iterative, so that echoing a deeply nested `id` needs no deep stack.
    enum Work<'a> {
        Value(&'a Value),
        Text(&'static str),
        Key(&'a str),
    }
    let mut work = vec![Work::Value(value)];
    while let Some(item) = work.pop() {
        match item {
            Work::Text(t) => out.push_str(t),
            Work::Key(k) => {
                write_str(out, k);
                out.push_str(": ");
            }
            Work::Value(v) => match v {
                Value::Null => out.push_str("null"),
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Value::Number(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::String(s) => write_str(out, s),
                Value::Array(items) => {
                    out.push('[');
                    work.push(Work::Text("]"));
                    for (i, item) in items.iter().enumerate().rev() {
                        work.push(Work::Value(item));
                        if i > 0 {
                            work.push(Work::Text(", "));
                        }
                    }
                }
                Value::Object(map) => {
                    out.push('{');
                    work.push(Work::Text("}"));
                    // The map forgot the insertion order that QEMU uses to break ties within a
                    // bucket; feeding the keys in reverse makes ties come out alphabetically,
                    // which is QEMU's order for the version triple (micro, minor: bucket 225).
                    let keys = qdict_order(map.keys().rev().map(String::as_str));
                    for (i, key) in keys.iter().enumerate().rev() {
                        if let Some(member) = map.get(*key) {
                            work.push(Work::Value(member));
                            work.push(Work::Key(key));
                            if i > 0 {
                                work.push(Work::Text(", "));
                            }
                        }
                    }
                }
            },
        }
    }
}

/// A quoted string with QEMU's escapes.
pub(crate) fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let mut cp = u32::from(ch);
                if !is_valid_codepoint(i64::from(cp)) {
                    cp = 0xFFFD;
                }
                if cp > 0xFFFF {
                    let c = cp - 0x10000;
                    let _ = write!(
                        out,
                        "\\u{:04X}\\u{:04X}",
                        0xD800 + (c >> 10),
                        0xDC00 + (c & 0x3FF)
                    );
                } else if !(0x20..0x7F).contains(&cp) {
                    let _ = write!(out, "\\u{cp:04X}");
                } else {
                    out.push(ch);
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_qemu_greeting_bytes() {
        let greeting = json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
            "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}});
        assert_eq!(
            to_qemu_string(&greeting),
            r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#
        );
    }

    #[test]
    fn escapes_like_qemu() {
        let v = json!(["a\"\\/\u{1}\u{7f}é\u{1F600}\u{FFFF}\0", [], {}]);
        assert_eq!(
            to_qemu_string(&v),
            r#"["a\"\\/\u0001\u007F\u00E9\uD83D\uDE00\uFFFD\u0000", [], {}]"#
        );
    }
}
