//! Property tests of the canonical key (`tim_gateway::body::canonical`, issue 7): the key
//! depends on the document and on nothing else.
//!
//! Documents are `serde_json::Value` trees of bounded depth and size, with numbers that
//! serde_json keeps exact (integers, and decimals it writes back as they were read) and strings
//! full of characters that need escaping. Each property compares keys with the key of the
//! compact serde_json serialisation of the same `Value`.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Number, Value};
use tim_gateway::body::{canonical, Canonical};

/// Characters that JSON must, may or need not escape, weighted towards the awkward ones.
const AWKWARD: &[char] = &[
    '"', '\\', '/', '\u{0}', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}', '\u{7f}', 'é', 'ß',
    '\u{2028}', '\u{fffd}', '\u{ffff}', '😀', '𝄞',
];

/// The canonical key of a body that must have one.
fn key(body: &[u8]) -> Vec<u8> {
    match canonical(body) {
        Ok(Canonical::Key(key)) => key.to_vec(),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
    }
}

fn compact_key(value: &Value) -> Vec<u8> {
    key(&serde_json::to_vec(value).expect("a Value serialises"))
}

fn string() -> impl Strategy<Value = String> {
    let char = prop_oneof![
        3 => proptest::char::range('a', 'e'),
        2 => proptest::sample::select(AWKWARD),
        1 => any::<char>(),
    ];
    proptest::collection::vec(char, 0..6).prop_map(|chars| chars.into_iter().collect())
}

/// `mantissa / 10^scale × 10^exponent` as decimal text, read by serde_json, if serde_json
/// keeps it exact: it writes it back as text that it reads as the same `f64` (its default
/// float parser is fast, not always correctly rounded, so some texts do not survive).
fn decimal(mantissa: i32, scale: usize, exponent: Option<i8>) -> Option<Number> {
    let digits = format!("{:0>width$}", mantissa.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    // No "-0.0": it equals 0.0 as a Value, yet is written differently.
    let sign = if mantissa < 0 { "-" } else { "" };
    let text = match exponent {
        Some(e) => format!("{sign}{int}.{frac}e{e}"),
        None => format!("{sign}{int}.{frac}"),
    };
    let number: Number = serde_json::from_str(&text).expect("a decimal parses");
    let written = serde_json::to_string(&number).expect("a finite number serialises");
    let reread: Number = serde_json::from_str(&written).expect("serde_json reads its own output");
    (reread == number).then_some(number)
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        (any::<i32>(), 1..6usize, proptest::option::of(-30..30i8))
            .prop_filter_map("serde_json rounds it", |(m, scale, e)| decimal(m, scale, e)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        string().prop_map(Value::String),
    ]
}

fn object_of(member: impl Strategy<Value = Value> + 'static, size: usize) -> BoxedStrategy<Value> {
    proptest::collection::btree_map(string(), member, 0..size)
        .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>()))
        .boxed()
}

/// A body: an object whose members nest at most 5 levels, about 30 nodes in all.
fn document() -> BoxedStrategy<Value> {
    let value = leaf().prop_recursive(4, 30, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            object_of(inner, 5),
        ]
    });
    object_of(value, 6)
}

/// A few leaves and keys, so that two documents drawn from them are often equal or nearly so.
fn small_leaf(rng: &mut StdRng) -> Value {
    let leaves = [
        "null",
        "true",
        "false",
        "0",
        "1",
        "-1",
        "1.0",
        "1.5",
        "10",
        "\"\"",
        "\"1\"",
        "\"a\"",
        "\"\\\"\"",
        "\"\\u0000\"",
        "\"é\"",
        "[]",
        "{}",
        "[1]",
    ];
    serde_json::from_str(leaves.choose(rng).expect("non-empty")).expect("valid JSON")
}

fn small_key(rng: &mut StdRng) -> String {
    ["a", "b", "A", "é", "\u{0}", "\"", ""]
        .choose(rng)
        .expect("non-empty")
        .to_string()
}

/// Changes one leaf, key or member of `value`; the result may equal the original.
fn mutate(value: &mut Value, rng: &mut StdRng, is_top: bool) {
    match value {
        Value::Object(members) if is_top || (!members.is_empty() && rng.random_bool(0.7)) => {
            let names: Vec<String> = members.keys().cloned().collect();
            match (names.choose(rng), rng.random_range(0..4)) {
                (Some(name), 0) => {
                    let moved = members.remove(name).expect("present");
                    members.insert(small_key(rng), moved);
                }
                (Some(name), 1) => {
                    members.remove(name);
                }
                (Some(name), _) => {
                    mutate(members.get_mut(name).expect("present"), rng, false);
                }
                (None, _) => {
                    members.insert(small_key(rng), small_leaf(rng));
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..items.len());
            mutate(&mut items[i], rng, false);
        }
        other => *other = small_leaf(rng),
    }
}

/// `value` as JSON text with members in a random order, random whitespace between tokens and
/// each string character written raw or escaped, as the seeded `rng` decides.
fn scrambled(value: &Value, rng: &mut StdRng) -> String {
    let mut out = String::new();
    whitespace(rng, &mut out);
    write_value(value, rng, &mut out);
    whitespace(rng, &mut out);
    out
}

fn whitespace(rng: &mut StdRng, out: &mut String) {
    for _ in 0..rng.random_range(0..3) {
        out.push(*[' ', '\t', '\n', '\r'].choose(rng).expect("non-empty"));
    }
}

fn write_value(value: &Value, rng: &mut StdRng, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            out.push_str(&serde_json::to_string(value).expect("a leaf serialises"));
        }
        Value::String(s) => write_string(s, rng, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                whitespace(rng, out);
                write_value(item, rng, out);
                whitespace(rng, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut members: Vec<(&String, &Value)> = members.iter().collect();
            members.shuffle(rng);
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                whitespace(rng, out);
                write_string(name, rng, out);
                whitespace(rng, out);
                out.push(':');
                whitespace(rng, out);
                write_value(member, rng, out);
                whitespace(rng, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, rng: &mut StdRng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let must_escape = c == '"' || c == '\\' || c < '\u{20}';
        match (short, must_escape || rng.random_bool(0.3)) {
            (_, false) => out.push(c),
            (Some(short), true) if rng.random_bool(0.5) => out.push_str(short),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if rng.random_bool(0.5) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
        }
    }
    out.push('"');
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any member order, whitespace and choice of escapes give the compact form's key, and
    /// the key reads back as the same document.
    #[test]
    fn layout_does_not_change_the_key(value in document(), seed in any::<u64>()) {
        let expected = compact_key(&value);
        let text = scrambled(&value, &mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(key(text.as_bytes()), expected.clone(), "{}", text);
        let reread: Value = serde_json::from_slice(&expected).expect("the key is JSON");
        prop_assert_eq!(reread, value);
    }

    /// Two independent documents have equal keys exactly when they are equal.
    #[test]
    fn distinct_documents_have_distinct_keys(a in document(), b in document()) {
        prop_assert_eq!(a == b, compact_key(&a) == compact_key(&b));
    }

    /// A document and a small change of it (which may undo itself) have equal keys exactly
    /// when they are equal: 1 and 1.0, "1" and 1, [] and {} all stay apart.
    #[test]
    fn a_small_change_changes_the_key(value in document(), seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut changed = value.clone();
        for _ in 0..rng.random_range(1..3) {
            mutate(&mut changed, &mut rng, true);
        }
        prop_assert_eq!(value == changed, compact_key(&value) == compact_key(&changed));
    }
}
