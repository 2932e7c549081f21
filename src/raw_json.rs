//! Finding one's way in JSON text that has already been checked, without
//! building a tree of it: where a value ends, the members of an object, the
//! elements of an array, what a pointer finds.
//!
//! A response body is checked once, as a whole, by serde_json
//! ([`check_document`]); after that, reading a record's key and content from
//! its bytes costs no allocation per field, where a `serde_json::Value` costs
//! a map node, a string per key and a string per number (arbitrary
//! precision). Every function here returns `None` on anything it does not
//! expect instead of panicking, so a caller can fall back to the tree.

use std::ops::Range;

use serde::de::IgnoredAny;

/// How deep a document may nest: serde_json's own limit (127 arrays or
/// objects inside one another), so a body that would fail to parse as a
/// `Value` fails here too.
pub const MAX_DEPTH: usize = 127;

/// Checks that `bytes` are one JSON document, UTF-8, nested at most
/// [`MAX_DEPTH`] deep. The error is serde_json's, with line and column.
///
/// # Errors
/// What serde_json says is wrong with the document.
pub fn check_document(bytes: &[u8]) -> Result<(), serde_json::Error> {
    // `IgnoredAny` checks the syntax without building anything, but not the
    // UTF-8 of strings, the depth, or that a `\uD800`-`\uDFFF` escape is half
    // of a pair: a document that fails those checks, or holds such an
    // escape at all, is parsed as a `Value`, which has the last word (and
    // serde_json's error).
    let checked = serde_json::from_slice::<IgnoredAny>(bytes).is_ok_and(|_| {
        std::str::from_utf8(bytes).is_ok()
            && !nested_deeper_than(bytes, MAX_DEPTH)
            && !holds_surrogate_escape(bytes)
    });
    if checked {
        return Ok(());
    }
    serde_json::from_slice::<serde_json::Value>(bytes).map(|_| ())
}

/// Whether the text may hold a `\uD800` to `\uDFFF` escape (half of a
/// UTF-16 surrogate pair); `\\uD800` (an escaped backslash) is a false
/// alarm, which only costs a full parse.
fn holds_surrogate_escape(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', bytes).any(|i| {
        matches!(
            bytes.get(i + 1..i + 4),
            Some([b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'])
        )
    })
}

/// Whether any value in the (checked) document nests more than `limit` deep.
fn nested_deeper_than(bytes: &[u8], limit: usize) -> bool {
    let start = skip_ws(bytes, 0);
    matches!(bytes.get(start), Some(b'{' | b'[')) && container_end(bytes, start, limit).is_none()
}

/// Index of the first byte after whitespace from `i`.
fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string whose opening quote is at `i`.
fn string_end(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', bytes.get(j..)?)?;
        if bytes[j] == b'"' {
            return Some(j + 1);
        }
        // A backslash escapes the next byte (`\"`, `\\`, `\u…`).
        j += 2;
    }
}

/// The bytes a scan through an array or object must stop at.
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    table[b'"' as usize] = true;
    table[b'{' as usize] = true;
    table[b'[' as usize] = true;
    table[b'}' as usize] = true;
    table[b']' as usize] = true;
    table
};

/// The end (exclusive) of the array or object starting at `i`; `None` if it
/// nests more than `limit` deep or does not close.
fn container_end(bytes: &[u8], i: usize, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    loop {
        j += bytes
            .get(j..)?
            .iter()
            .position(|&b| STRUCTURAL[usize::from(b)])?;
        match bytes[j] {
            b'"' => {
                j = string_end(bytes, j)?;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return None;
                }
            }
            _ => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
        }
        j += 1;
    }
}

/// The end (exclusive) of the value starting at `i` (no whitespace before it).
fn value_end(bytes: &[u8], i: usize) -> Option<usize> {
    match *bytes.get(i)? {
        b'"' => string_end(bytes, i),
        b'{' | b'[' => container_end(bytes, i, usize::MAX),
        // A number or a literal runs to the next delimiter.
        _ => {
            let len = bytes[i..]
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(bytes.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

/// `bytes` without the whitespace around it.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = skip_ws(bytes, 0);
    let mut end = bytes.len();
    while end > start && matches!(bytes[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    &bytes[start..end]
}

/// The members of an object, in document order: each key as written
/// between its quotes (escapes not undone) and its value, trimmed. `None` if
/// `object` is not an object.
pub fn members(object: &[u8]) -> Option<Members<'_>> {
    (object.first() == Some(&b'{')).then_some(Members(Items::new(object, b'}')))
}

/// The elements of an array, trimmed. `None` if `array` is not an array.
pub fn elements(array: &[u8]) -> Option<Elements<'_>> {
    (array.first() == Some(&b'[')).then_some(Elements(Items::new(array, b']')))
}

/// A walk through the items of an array or object, shared by [`Members`]
/// and [`Elements`].
struct Items<'a> {
    bytes: &'a [u8],
    at: usize,
    close: u8,
    done: bool,
}

impl<'a> Items<'a> {
    fn new(bytes: &'a [u8], close: u8) -> Self {
        Self {
            bytes,
            at: 1,
            close,
            done: false,
        }
    }

    /// Where the next item starts, past the comma; `None` at the end.
    fn next_start(&mut self) -> Option<usize> {
        if self.done {
            return None;
        }
        let i = skip_ws(self.bytes, self.at);
        match self.bytes.get(i) {
            Some(&b) if b == self.close => {
                self.done = true;
                None
            }
            Some(b',') if self.at > 1 => Some(skip_ws(self.bytes, i + 1)),
            _ => Some(i),
        }
    }

    /// Moves past an item that ended at `end`, or stops at one that could
    /// not be read.
    fn advance<T>(&mut self, item: Option<(T, usize)>) -> Option<T> {
        match item {
            Some((item, end)) => {
                self.at = end;
                Some(item)
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

pub struct Members<'a>(Items<'a>);

impl<'a> Iterator for Members<'a> {
    /// `None` inside marks text that is not an object after all.
    type Item = Option<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.0.next_start()?;
        let bytes = self.0.bytes;
        let member = (|| {
            if bytes.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(bytes, i)?;
            let colon = skip_ws(bytes, key_end);
            if bytes.get(colon) != Some(&b':') {
                return None;
            }
            let value_start = skip_ws(bytes, colon + 1);
            let end = value_end(bytes, value_start)?;
            Some(((&bytes[i + 1..key_end - 1], &bytes[value_start..end]), end))
        })();
        Some(self.0.advance(member))
    }
}

pub struct Elements<'a>(Items<'a>);

impl<'a> Iterator for Elements<'a> {
    /// `None` inside marks text that is not an array after all.
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.0.next_start()?;
        let bytes = self.0.bytes;
        let element = value_end(bytes, i).map(|end| (&bytes[i..end], end));
        Some(self.0.advance(element))
    }
}

/// A key as written (between its quotes) equals `name`, once unescaped.
fn key_is(raw: &[u8], name: &str) -> bool {
    if raw.contains(&b'\\') {
        unescape(raw).is_some_and(|key| key == name)
    } else {
        raw == name.as_bytes()
    }
}

/// The text of a string written between quotes, escapes undone.
pub fn unescape(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// What the pointer's `segments` find in `value` (trimmed), as serde_json's
/// `Value::pointer` would: the last of repeated keys, array indices without
/// a sign or leading zero.
pub fn pointer<'a>(value: &'a [u8], segments: &[String]) -> Option<&'a [u8]> {
    let mut current = trim(value);
    for segment in segments {
        current = match current.first()? {
            b'{' => {
                let mut found = None;
                for member in members(current)? {
                    let (key, item) = member?;
                    if key_is(key, segment) {
                        found = Some(item);
                    }
                }
                found?
            }
            b'[' => {
                let index = array_index(segment)?;
                elements(current)?.nth(index)??
            }
            _ => return None,
        };
    }
    Some(current)
}

/// `segment` as an array index, by RFC 6901's rules (as serde_json reads them).
fn array_index(segment: &str) -> Option<usize> {
    if segment.starts_with('+') || (segment.starts_with('0') && segment.len() != 1) {
        return None;
    }
    segment.parse().ok()
}

/// Appends a number (checked JSON) as serde_json writes it back with
/// `arbitrary_precision`: as spelled, except that the exponent is written
/// `e` and always has a sign (`1E5` becomes `1e+5`).
pub fn push_number(out: &mut Vec<u8>, number: &[u8]) {
    let Some(e) = number.iter().position(|&b| b == b'e' || b == b'E') else {
        out.extend_from_slice(number);
        return;
    };
    out.extend_from_slice(&number[..e]);
    out.push(b'e');
    let exponent = &number[e + 1..];
    if !matches!(exponent.first(), Some(b'+' | b'-')) {
        out.push(b'+');
    }
    out.extend_from_slice(exponent);
}

/// The span of `inner` within `outer`, which it borrows from.
pub fn span_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(pointer: &str) -> Vec<String> {
        crate::json_pointer::segments(pointer)
    }

    #[test]
    fn pointers_find_what_serde_json_finds() {
        let text = r#" { "data" : [ {"id": 1}, {"id": "two", "a\/b": [true, null]} ],
            "next": "x\"y", "n": -1.5e3, "dup": 1, "dup": 2, "": {"~": 0} } "#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        for pointer in [
            "",
            "/data",
            "/data/0",
            "/data/1/id",
            "/data/1/a~1b",
            "/data/1/a~1b/1",
            "/next",
            "/n",
            "/dup",
            "/",
            "//~0",
            "/data/2",
            "/data/01",
            "/data/+1",
            "/missing",
            "/n/x",
        ] {
            let expected = value.pointer(pointer).map(|v| v.to_string());
            let found = pointer_text(text, pointer);
            assert_eq!(found, expected, "pointer {pointer:?}");
        }
    }

    fn pointer_text(text: &str, pointer: &str) -> Option<String> {
        let raw = super::pointer(text.as_bytes(), &segments(pointer))?;
        let value: serde_json::Value = serde_json::from_slice(raw).unwrap();
        Some(value.to_string())
    }

    #[test]
    fn elements_are_split_whole() {
        let text = br#"[ 1 , "a,]" ,{"b":[1,{}]}, [] ,true]"#;
        let parts: Vec<&[u8]> = elements(text).unwrap().map(Option::unwrap).collect();
        assert_eq!(
            parts,
            [&b"1"[..], b"\"a,]\"", br#"{"b":[1,{}]}"#, b"[]", b"true"]
        );
        assert_eq!(elements(b"[ ]").unwrap().count(), 0);
        assert!(elements(b"{}").is_none());
    }

    #[test]
    fn documents_are_checked_as_serde_json_would() {
        assert!(check_document(br#"{"a": [1, "x"]}"#).is_ok());
        assert!(check_document(br#"{"a": "\ud83d\ude00 \\ud800"}"#).is_ok());
        for (bad, message) in [
            (&b"{\"a\": [1, }"[..], "expected value"),
            (b"{\"a\": \"\xff\"}", "invalid unicode code point"),
            (b"[1] [2]", "trailing characters"),
            (br#"{"a": "\ud800"}"#, "unexpected end of hex escape"),
        ] {
            let error = check_document(bad).unwrap_err().to_string();
            assert!(error.contains(message), "{error}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let error = check_document(deep.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("recursion limit exceeded"), "{error}");
        let limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(serde_json::from_str::<serde_json::Value>(&limit).is_ok());
        assert!(check_document(limit.as_bytes()).is_ok());
    }
}
