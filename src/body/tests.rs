use super::*;

fn key(body: &str) -> Bytes {
    match canonical(body.as_bytes()) {
        Ok(Canonical::Key(key)) => key,
        other => panic!("{body:?}: {other:?}"),
    }
}

/// A body nested `depth` levels deep: `{"a":[[…]]}` (the object is level 1).
fn nested(depth: usize) -> Vec<u8> {
    let mut body = br#"{"a":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth - 1));
    body.extend(std::iter::repeat_n(b']', depth - 1));
    body.push(b'}');
    body
}

/// Key order and whitespace do not change the canonical body; values do.
#[test]
fn canonical_ignores_order_and_whitespace() {
    assert_eq!(key(" {} "), Bytes::from_static(b"{}"));
    assert_eq!(key("{ }"), Bytes::from_static(b"{}"));
    let a = key(r#"{"b":1,"a":{"y":[1,{"d":2,"c":3}],"x":"é"}}"#);
    let b = key("{\n \"a\" : {\"x\":\"é\", \"y\":[1, {\"c\":3,\"d\":2}]},\t\"b\":1}");
    assert_eq!(a, b);
    assert_eq!(
        a,
        Bytes::from(r#"{"a":{"x":"é","y":[1,{"c":3,"d":2}]},"b":1}"#)
    );
    assert_ne!(key(r#"{"a":[1,2]}"#), key(r#"{"a":[2,1]}"#));
}

/// Strings are decoded and re-encoded as serde_json writes them; numbers stay as written.
#[test]
fn canonical_strings_and_numbers() {
    let cases: [(&str, &str); 10] = [
        (r#"{"s":"\u00e9"}"#, r#"{"s":"é"}"#),
        (r#"{"s":"\/"}"#, r#"{"s":"/"}"#),
        (r#"{"s":"\u0041\u0022\u005c"}"#, r#"{"s":"A\"\\"}"#),
        (
            r#"{"s":"\u0008\u000c\u000a\u000d\u0009"}"#,
            r#"{"s":"\b\f\n\r\t"}"#,
        ),
        (r#"{"s":"\u001F\u0000"}"#, r#"{"s":"\u001f\u0000"}"#),
        (r#"{"s":"\ud83d\ude00"}"#, "{\"s\":\"\u{1F600}\"}"),
        (
            r#"{"n":12345678901234567890123}"#,
            r#"{"n":12345678901234567890123}"#,
        ),
        (
            r#"{"n":-0.30000000000000001e+10}"#,
            r#"{"n":-0.30000000000000001e+10}"#,
        ),
        (r#"{"\u0062":1,"a":2}"#, r#"{"a":2,"b":1}"#),
        (r#"{"t":[true,false,null]}"#, r#"{"t":[true,false,null]}"#),
    ];
    for (body, expected) in cases {
        assert_eq!(key(body), Bytes::from(expected), "{body}");
        if !body.contains("\"n\"") {
            // Strings come out exactly as serde_json writes them (its numbers would round).
            let value: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(serde_json::to_string(&value).unwrap(), expected, "{body}");
        }
    }
    assert_ne!(key(r#"{"x":0.30000000000000001}"#), key(r#"{"x":0.3}"#));
}

/// An object that repeats a key (after decoding escapes) has no canonical form.
#[test]
fn repeated_keys_are_not_cacheable() {
    for body in [
        r#"{"a":1,"b":{"c":1,"c":2}}"#,
        r#"{"a":1,"a":1}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"b":[{"x":1,"y":2,"x":3}],"a":0}"#,
    ] {
        assert_eq!(
            canonical(body.as_bytes()),
            Ok(Canonical::RepeatedKey),
            "{body}"
        );
        assert_eq!(validate(body.as_bytes()), Ok(()), "{body}");
    }
}

/// Every malformed body is refused with the same verdict by `validate` and `canonical`,
/// including invalid UTF-8 and lone surrogate escapes (issue 7, F8).
#[test]
fn malformed_bodies_are_refused_the_same_way() {
    let syntax = |reason: &'static str, offset: usize| Err(BodyError::Syntax { reason, offset });
    let cases: Vec<(&[u8], Result<(), BodyError>)> = vec![
        (b"{", syntax("expected a string key", 1)),
        (b"{\"a\"}", syntax("expected ':' after an object key", 4)),
        (b"{\"a\":}", syntax("expected a JSON value", 5)),
        (b"{\"a\":1,}", syntax("expected a string key", 7)),
        (
            b"{\"a\":1 \"b\":2}",
            syntax("expected ',' or '}' in an object", 7),
        ),
        (
            b"{\"a\":[1 2]}",
            syntax("expected ',' or ']' in an array", 8),
        ),
        (b"{\"a\":01}", syntax("expected ',' or '}' in an object", 6)),
        (b"{\"a\":1.}", syntax("expected a digit after '.'", 7)),
        (b"{\"a\":1e}", syntax("expected a digit in the exponent", 7)),
        (b"{\"a\":-}", syntax("expected a digit", 6)),
        (b"{\"a\":tru}", syntax("expected true, false or null", 5)),
        (
            b"{\"a\":\"x\ty\"}",
            syntax("control character in a string", 7),
        ),
        (b"{\"a\":\"\\x\"}", syntax("invalid escape", 6)),
        (b"{\"a\":\"\\u12g4\"}", syntax("invalid \\u escape", 6)),
        (b"{\"a\":\"\\ud800\"}", syntax("lone surrogate escape", 6)),
        (b"{\"a\":\"\\udc00\"}", syntax("lone surrogate escape", 6)),
        (
            b"{\"a\":\"\\ud800\\u0041\"}",
            syntax("lone surrogate escape", 6),
        ),
        (b"{\"a\":\"\xff\"}", syntax("invalid UTF-8", 6)),
        (b"{\"a\":\"\xed\xa0\x80\"}", syntax("invalid UTF-8", 6)),
        (b"{\"a\":\"abc", syntax("unterminated string", 9)),
        (b"{} {}", syntax("unexpected data after the JSON value", 3)),
        (b"\xef\xbb\xbf{}", syntax("expected a JSON value", 0)),
        // Found by `cargo fuzz`: form feed is not JSON whitespace, even around `{}`.
        (
            b"  \n{}\t\t\x0c",
            syntax("unexpected data after the JSON value", 7),
        ),
        (b"\x0c\x0c\x0c{}\x0c", syntax("expected a JSON value", 0)),
        (b"", syntax("unexpected end of body", 0)),
        (b"[]", Err(BodyError::NotAnObject)),
        (b"\"s\"", Err(BodyError::NotAnObject)),
        (b" 12 ", Err(BodyError::NotAnObject)),
    ];
    for (body, expected) in cases {
        let shown = String::from_utf8_lossy(body);
        assert_eq!(validate(body), expected, "validate {shown}");
        assert_eq!(canonical(body).map(|_| ()), expected, "canonical {shown}");
    }
}

/// 128 levels are accepted; 129 and the 7,000 levels that used to overflow the stack get
/// `TooDeep`, from both passes (issue 7, F1).
#[test]
fn nesting_is_bounded() {
    assert_eq!(validate(&nested(MAX_DEPTH)), Ok(()));
    assert!(matches!(
        canonical(&nested(MAX_DEPTH)),
        Ok(Canonical::Key(_))
    ));
    let too_deep = Err(BodyError::TooDeep {
        limit: MAX_DEPTH,
        offset: 5 + MAX_DEPTH - 1,
    });
    assert_eq!(validate(&nested(MAX_DEPTH + 1)), too_deep);
    assert_eq!(canonical(&nested(MAX_DEPTH + 1)).map(|_| ()), too_deep);
    // Reproduces issue 7, F1: this body aborted the whole process.
    assert!(matches!(
        validate(&nested(7_000)),
        Err(BodyError::TooDeep {
            limit: MAX_DEPTH,
            ..
        })
    ));
    assert!(matches!(
        canonical(&nested(7_000)),
        Err(BodyError::TooDeep {
            limit: MAX_DEPTH,
            ..
        })
    ));
}

/// Only JSON's whitespace makes a body blank: form feed does not (the proxy reads a blank
/// body as `{}` for reads).
#[test]
fn blank_means_json_whitespace_only() {
    assert!(is_blank(b""));
    assert!(is_blank(b" \t\r\n"));
    assert!(!is_blank(b"\x0c"));
    assert!(!is_blank(b" {} "));
}

/// Reordered objects nested in reordered objects come out fully sorted.
#[test]
fn nested_reorders_are_emitted_in_order() {
    let body = r#"{"z":{"q":[{"y":1,"x":{"c":3,"b":2}}],"p":0},"m":"v","a":{"k":1,"j":2}}"#;
    assert_eq!(
        key(body),
        Bytes::from(r#"{"a":{"j":2,"k":1},"m":"v","z":{"p":0,"q":[{"x":{"b":2,"c":3},"y":1}]}}"#)
    );
}

/// The canonical key owns exactly its bytes (issue 7, F13): no spare capacity is kept.
#[test]
fn canonical_key_is_exactly_sized() {
    let body = format!("{{ \"a\" : \"{}\" ,  \"b\" : 1 }}", "x".repeat(1000));
    let Ok(Canonical::Key(key)) = canonical(body.as_bytes()) else {
        panic!("valid body")
    };
    // A `Bytes` made from a Vec without spare capacity converts back without copying and
    // with capacity == len.
    let vec = Vec::from(key);
    assert_eq!(vec.capacity(), vec.len());
}
