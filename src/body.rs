//! Client request bodies: one pass that validates the JSON and, for cacheable reads, builds
//! its canonical form (the cache key's body).
//!
//! Promises (issue 7, F1 and F8):
//! - **Linear:** every input byte is looked at a constant number of times; the only
//!   super-linear step is sorting an object's keys. Nesting is bounded by [`MAX_DEPTH`], so the
//!   recursion (and the stack) is bounded whatever the input.
//! - **One verdict for every command:** the same rules decide validity for reads and writes:
//!   RFC 8259 JSON, valid UTF-8, no lone surrogate escapes (`"\ud800"`), an object at the top,
//!   at most [`MAX_DEPTH`] levels. Only the canonical form is extra, and only for reads.
//! - **Canonical:** object keys sorted (by their canonical encoding), no insignificant
//!   whitespace, strings decoded and re-encoded the way `serde_json` writes them, numbers
//!   kept exactly as written (never rounded through `f64`, so distinct bodies cannot share a
//!   key). Equal documents give equal bytes; distinct documents give distinct bytes.
//!
//! How it stays linear: the canonical text is written once, in input order, into one buffer.
//! An object whose keys arrive out of order is not moved there; it is recorded as a
//! [`Reorder`] (its span and its members in sorted order), and the final emission copies
//! spans in sorted order. Moving objects as they close would copy deep content once per
//! level (O(depth × size)).

use bytes::Bytes;

/// Deepest nesting accepted: the top-level object is level 1. Tencent's documented bodies
/// nest a handful of levels; 128 is generous and keeps every pass's recursion shallow.
pub const MAX_DEPTH: usize = 128;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not RFC 8259 JSON (including invalid UTF-8 and lone surrogate escapes).
    #[error("{reason} at byte {offset}")]
    Syntax { reason: &'static str, offset: usize },
    /// Valid JSON, but the top level is not an object.
    #[error("the top level is not an object")]
    NotAnObject,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {limit} levels at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
}

/// The canonical form of a valid body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canonical {
    /// The canonical bytes; owned exactly (no slice of a larger buffer).
    Key(Bytes),
    /// An object repeats a key: Tencent might read it differently from us, so such a body
    /// is forwarded as written and never cached.
    RepeatedKey,
}

/// Checks that `body` is one valid JSON object (see the module's rules).
///
/// # Errors
/// The body is not JSON, not an object, or nested too deep.
pub fn validate(body: &[u8]) -> Result<(), BodyError> {
    Parser::<false>::new(body)?.document().map(|_| ())
}

/// Validates `body` like [`validate`] and returns its canonical form. `{}` (with any
/// surrounding whitespace) costs no allocation.
///
/// # Errors
/// The body is not JSON, not an object, or nested too deep.
pub fn canonical(body: &[u8]) -> Result<Canonical, BodyError> {
    if trim_json_whitespace(body) == b"{}" {
        return Ok(Canonical::Key(Bytes::from_static(b"{}")));
    }
    let mut parser = Parser::<true>::new(body)?;
    parser.document()?;
    if parser.has_repeated_key {
        return Ok(Canonical::RepeatedKey);
    }
    if parser.reorders.is_empty() {
        return Ok(Canonical::Key(Bytes::from(exact(parser.out))));
    }
    // Inner objects close first; emission looks them up by start position.
    parser.reorders.sort_unstable_by_key(|r| r.start);
    let mut out = Vec::with_capacity(parser.out.len());
    parser.emit(0, parser.out.len(), &mut out);
    Ok(Canonical::Key(Bytes::from(out)))
}

/// Whether `bytes` holds nothing but JSON whitespace (space, tab, LF, CR): an empty body.
pub fn is_blank(bytes: &[u8]) -> bool {
    trim_json_whitespace(bytes).is_empty()
}

/// `bytes` without JSON's insignificant whitespace (space, tab, LF, CR) at either end. Not
/// `trim_ascii`, which also strips form feed: `{}\x0c` is not JSON (found by `cargo fuzz`).
fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `vec` with no spare capacity, so the `Bytes` made from it owns exactly its bytes.
fn exact(mut vec: Vec<u8>) -> Vec<u8> {
    vec.shrink_to_fit();
    vec
}

/// One object member in the output buffer: `"key":value`.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// Start of the key's quoted string (its `"`).
    start: u32,
    /// End of the key's quoted string (after its `"`).
    key_end: u32,
    /// End of the member's value.
    end: u32,
}

/// An object whose members must be emitted in another order than they were written.
#[derive(Debug)]
struct Reorder {
    /// Span of the members in the output buffer (after `{`, before `}`).
    start: u32,
    end: u32,
    /// Its members, sorted, at `sorted[first..first + len]`.
    first: u32,
    len: u32,
}

/// A recursive-descent parser whose recursion is bounded by [`MAX_DEPTH`]. With `BUILD`
/// false it only validates and writes nothing.
struct Parser<'a, const BUILD: bool> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
    /// The canonical text in input order (members of objects not yet sorted).
    out: Vec<u8>,
    /// Members of the objects being parsed, innermost last (a stack).
    open_members: Vec<Member>,
    /// Sorted members of every reordered object.
    sorted: Vec<Member>,
    reorders: Vec<Reorder>,
    has_repeated_key: bool,
}

impl<'a, const BUILD: bool> Parser<'a, BUILD> {
    fn new(input: &'a [u8]) -> Result<Self, BodyError> {
        // Checked once for the whole body, so strings can be copied in runs afterwards.
        if let Err(error) = std::str::from_utf8(input) {
            return Err(BodyError::Syntax {
                reason: "invalid UTF-8",
                offset: error.valid_up_to(),
            });
        }
        // Offsets are stored as u32; bodies are limited far below 4 GiB by the server.
        if u32::try_from(input.len()).is_err() {
            return Err(BodyError::Syntax {
                reason: "body too large to parse",
                offset: 0,
            });
        }
        Ok(Parser {
            input,
            pos: 0,
            depth: 0,
            out: Vec::with_capacity(if BUILD { input.len() } else { 0 }),
            open_members: Vec::new(),
            sorted: Vec::new(),
            reorders: Vec::new(),
            has_repeated_key: false,
        })
    }

    fn syntax(&self, reason: &'static str) -> BodyError {
        BodyError::Syntax {
            reason,
            offset: self.pos,
        }
    }

    fn push(&mut self, byte: u8) {
        if BUILD {
            self.out.push(byte);
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        if BUILD {
            self.out.extend_from_slice(bytes);
        }
    }

    /// Output position as u32 (fits: the output is never longer than the input).
    fn mark(&self) -> u32 {
        self.out.len() as u32
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// The whole body: one object, surrounded by optional whitespace.
    fn document(&mut self) -> Result<(), BodyError> {
        self.skip_whitespace();
        let is_object = self.peek() == Some(b'{');
        self.value()?;
        self.skip_whitespace();
        if self.pos != self.input.len() {
            return Err(self.syntax("unexpected data after the JSON value"));
        }
        if !is_object {
            return Err(BodyError::NotAnObject);
        }
        Ok(())
    }

    fn value(&mut self) -> Result<(), BodyError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(self.syntax("expected a JSON value")),
            None => Err(self.syntax("unexpected end of body")),
        }
    }

    fn enter(&mut self) -> Result<(), BodyError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(BodyError::TooDeep {
                limit: MAX_DEPTH,
                offset: self.pos,
            });
        }
        Ok(())
    }

    fn object(&mut self) -> Result<(), BodyError> {
        self.enter()?;
        self.pos += 1; // '{'
        self.push(b'{');
        let base = self.open_members.len();
        let content_start = self.mark();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_whitespace();
                if self.peek() != Some(b'"') {
                    return Err(self.syntax("expected a string key"));
                }
                if self.open_members.len() > base {
                    self.push(b',');
                }
                let start = self.mark();
                self.string()?;
                let key_end = self.mark();
                self.skip_whitespace();
                if self.peek() != Some(b':') {
                    return Err(self.syntax("expected ':' after an object key"));
                }
                self.pos += 1;
                self.push(b':');
                self.skip_whitespace();
                self.value()?;
                if BUILD {
                    let end = self.mark();
                    self.open_members.push(Member {
                        start,
                        key_end,
                        end,
                    });
                }
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.syntax("expected ',' or '}' in an object")),
                }
            }
        }
        if BUILD {
            self.close_object(base, content_start);
        }
        self.open_members.truncate(base);
        self.push(b'}');
        self.depth -= 1;
        Ok(())
    }

    /// Records how the object's members (`open_members[base..]`) must be emitted.
    fn close_object(&mut self, base: usize, content_start: u32) {
        let members = &self.open_members[base..];
        let key = |m: &Member| &self.out[m.start as usize..m.key_end as usize];
        if members.windows(2).all(|w| key(&w[0]) < key(&w[1])) {
            return; // Already in order, no repeats: the text is canonical as written.
        }
        let first = self.sorted.len();
        self.sorted.extend_from_slice(members);
        let out = &self.out;
        let key = |m: &Member| &out[m.start as usize..m.key_end as usize];
        self.sorted[first..].sort_unstable_by(|a, b| key(a).cmp(key(b)));
        if self.sorted[first..]
            .windows(2)
            .any(|w| key(&w[0]) == key(&w[1]))
        {
            self.has_repeated_key = true;
        }
        self.reorders.push(Reorder {
            start: content_start,
            end: self.mark(),
            first: first as u32,
            len: (self.sorted.len() - first) as u32,
        });
    }

    fn array(&mut self) -> Result<(), BodyError> {
        self.enter()?;
        self.pos += 1; // '['
        self.push(b'[');
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.skip_whitespace();
                self.value()?;
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.push(b',');
                    }
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.syntax("expected ',' or ']' in an array")),
                }
            }
        }
        self.push(b']');
        self.depth -= 1;
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), BodyError> {
        if !self.input[self.pos..].starts_with(word) {
            return Err(self.syntax("expected true, false or null"));
        }
        self.pos += word.len();
        self.extend(word);
        Ok(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, copied exactly as written.
    fn number(&mut self) -> Result<(), BodyError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("expected a digit after '.'"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("expected a digit in the exponent"));
            }
            self.digits();
        }
        if BUILD {
            self.out.extend_from_slice(&self.input[start..self.pos]);
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// A string, decoded and re-encoded as `serde_json` writes it: `"` and `\` escaped,
    /// control characters as `\b \f \n \r \t` or `\u00xx`, everything else as UTF-8.
    fn string(&mut self) -> Result<(), BodyError> {
        self.pos += 1; // '"'
        self.push(b'"');
        loop {
            // Copy the run of plain bytes up to the next quote, backslash or control byte.
            let run_start = self.pos;
            while let Some(&b) = self.input.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if BUILD {
                self.out.extend_from_slice(&self.input[run_start..self.pos]);
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.push(b'"');
                    return Ok(());
                }
                Some(b'\\') => self.escape()?,
                Some(_) => return Err(self.syntax("control character in a string")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    fn escape(&mut self) -> Result<(), BodyError> {
        let Some(&kind) = self.input.get(self.pos + 1) else {
            return Err(self.syntax("unterminated escape"));
        };
        let simple: Option<&[u8]> = match kind {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'/' => Some(b"/"),
            b'b' => Some(b"\\b"),
            b'f' => Some(b"\\f"),
            b'n' => Some(b"\\n"),
            b'r' => Some(b"\\r"),
            b't' => Some(b"\\t"),
            b'u' => None,
            _ => return Err(self.syntax("invalid escape")),
        };
        if let Some(encoded) = simple {
            self.pos += 2;
            self.extend(encoded);
            return Ok(());
        }
        let high = self.hex4(self.pos + 2)?;
        let code = match high {
            0xD800..=0xDBFF => {
                // A high surrogate must be followed by an escaped low one.
                let next = self.pos + 6;
                if self.input.get(next..next + 2) != Some(b"\\u") {
                    return Err(self.syntax("lone surrogate escape"));
                }
                let low = self.hex4(next + 2)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.syntax("lone surrogate escape"));
                }
                self.pos += 6;
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("lone surrogate escape")),
            _ => high,
        };
        self.pos += 6;
        let c = char::from_u32(code).expect("surrogates were excluded above");
        if BUILD {
            self.write_char(c);
        }
        Ok(())
    }

    fn hex4(&self, at: usize) -> Result<u32, BodyError> {
        let digits = self
            .input
            .get(at..at + 4)
            .ok_or_else(|| self.syntax("unterminated \\u escape"))?;
        digits.iter().try_fold(0u32, |acc, &d| {
            let v = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.syntax("invalid \\u escape"))?;
            Ok(acc * 16 + v)
        })
    }

    fn write_char(&mut self, c: char) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        match c {
            '"' => self.out.extend_from_slice(b"\\\""),
            '\\' => self.out.extend_from_slice(b"\\\\"),
            '\u{08}' => self.out.extend_from_slice(b"\\b"),
            '\u{0C}' => self.out.extend_from_slice(b"\\f"),
            '\n' => self.out.extend_from_slice(b"\\n"),
            '\r' => self.out.extend_from_slice(b"\\r"),
            '\t' => self.out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                self.out.extend_from_slice(b"\\u00");
                self.out.push(HEX[usize::from(b >> 4)]);
                self.out.push(HEX[usize::from(b & 0xF)]);
            }
            c => {
                let mut utf8 = [0u8; 4];
                self.out
                    .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }

    /// Copies `out[start..end]` into `into`, emitting every reordered object inside it in
    /// sorted order. Recursion follows the document's nesting (at most [`MAX_DEPTH`]).
    fn emit(&self, start: usize, end: usize, into: &mut Vec<u8>) {
        let mut cursor = start;
        loop {
            // The outermost reordered object starting after `cursor`, if inside the span.
            // Strictly after: a member's span starts where its parent's content starts.
            let next = self
                .reorders
                .partition_point(|r| (r.start as usize) <= cursor);
            match self.reorders.get(next) {
                Some(r) if (r.start as usize) < end => {
                    into.extend_from_slice(&self.out[cursor..r.start as usize]);
                    let members = &self.sorted[r.first as usize..(r.first + r.len) as usize];
                    for (i, m) in members.iter().enumerate() {
                        if i > 0 {
                            into.push(b',');
                        }
                        self.emit(m.start as usize, m.end as usize, into);
                    }
                    cursor = r.end as usize;
                }
                _ => {
                    into.extend_from_slice(&self.out[cursor..end]);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
