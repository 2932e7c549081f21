//! Finding one's way in JSON text without building a tree of it: where a
//! value ends, the members of an object, the elements of an array, what a
//! pointer finds; and checking such text.
//!
//! A response body is checked once, as a whole, by serde_json
//! ([`check_document`]); after that, reading a record's key and content from
//! its bytes costs no allocation per field, where a `serde_json::Value` costs
//! a map node, a string per key and a string per number (arbitrary
//! precision). A body that fails that check for what one record holds (a
//! byte that is not UTF-8, a lone surrogate escape, nesting too deep) is
//! checked again for its syntax alone ([`check_syntax`]): that is all the
//! walking functions here rely on, so its records can still be told apart.
//! Every function here returns `None` on anything it does not expect instead
//! of panicking, so a caller can fall back to the tree, and none recurses.

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

/// Why a text is not JSON, or not JSON serde_json reads into a `Value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// Where the problem is, in bytes from the start of the text (its
    /// length, for a text cut short).
    pub offset: usize,
    pub flaw: Flaw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Not JSON: a byte out of place, or the text ends too soon.
    Syntax,
    /// A string holds this byte where no UTF-8 character can start or go on.
    InvalidUtf8 { byte: u8 },
    /// A `\uD800` to `\uDFFF` escape, as written, that is not half of a
    /// pair: it stands for no character (JavaScript leaves one when it cuts
    /// a string between the halves of a pair).
    LoneSurrogate { escape: [u8; 6] },
    /// An array or object opens here inside [`MAX_DEPTH`] others.
    TooDeep,
}

/// Checks that `bytes` are one JSON value as far as its structure goes:
/// what [`members`], [`elements`] and [`pointer`] need to find their way.
/// The contents of strings are opaque bytes (raw control characters and
/// malformed escapes are still refused, since they make a string's end
/// uncertain), and there is no depth limit. The same texts as serde_json's
/// `IgnoredAny` accepts, but a rule of ours rather than a detail of its
/// implementation (its comment says it does not look at escapes "at this
/// point").
///
/// # Errors
/// Where the first byte out of place is (only [`Flaw::Syntax`]).
pub fn check_syntax(bytes: &[u8]) -> Result<(), Invalid> {
    validate(bytes, false)
}

/// Checks that serde_json reads `bytes` into a `Value`, saying where and why
/// it would not: [`check_syntax`], and strings that are UTF-8 without lone
/// surrogate escapes, nested at most [`MAX_DEPTH`] deep. For reasons: where
/// it only matters whether a text reads, serde_json has the last word.
///
/// # Errors
/// The first problem, in the order of the text.
pub fn check_strict(bytes: &[u8]) -> Result<(), Invalid> {
    validate(bytes, true)
}

fn syntax(offset: usize) -> Invalid {
    Invalid {
        offset,
        flaw: Flaw::Syntax,
    }
}

/// [`check_syntax`], or with `strict` [`check_strict`]: a loop over the
/// text with the open arrays and objects on a stack of bits, so no input,
/// however deep, can exhaust the call stack.
fn validate(bytes: &[u8], strict: bool) -> Result<(), Invalid> {
    let mut open = Nesting::default();
    let mut i = skip_ws(bytes, 0);
    loop {
        // A value starts at `i`; `end` is where it ends, once read whole.
        let mut end = match bytes.get(i) {
            Some(&open_byte @ (b'{' | b'[')) => {
                if strict && open.len() >= MAX_DEPTH {
                    return Err(Invalid {
                        offset: i,
                        flaw: Flaw::TooDeep,
                    });
                }
                let object = open_byte == b'{';
                let close = if object { b'}' } else { b']' };
                let inner = skip_ws(bytes, i + 1);
                if bytes.get(inner) == Some(&close) {
                    inner + 1
                } else {
                    open.push(object);
                    i = if object {
                        member_value(bytes, inner, strict)?
                    } else {
                        inner
                    };
                    continue;
                }
            }
            Some(b'"') => checked_string_end(bytes, i, strict)?,
            Some(b'-' | b'0'..=b'9') => number_end(bytes, i).ok_or_else(|| syntax(i))?,
            Some(b't') => literal_end(bytes, i, b"true")?,
            Some(b'f') => literal_end(bytes, i, b"false")?,
            Some(b'n') => literal_end(bytes, i, b"null")?,
            _ => return Err(syntax(i)),
        };
        // After a value: a comma and the next one, the ends of the arrays
        // and objects it closes, or the end of the text.
        loop {
            end = skip_ws(bytes, end);
            let Some(object) = open.last() else {
                return if end == bytes.len() {
                    Ok(())
                } else {
                    Err(syntax(end))
                };
            };
            match bytes.get(end) {
                Some(b',') => {
                    let next = skip_ws(bytes, end + 1);
                    i = if object {
                        member_value(bytes, next, strict)?
                    } else {
                        next
                    };
                    break;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return Err(syntax(end)),
            }
            open.pop();
            end += 1;
        }
    }
}

/// Reads an object member's key at `i` and the colon after it; where its
/// value starts.
fn member_value(bytes: &[u8], i: usize, strict: bool) -> Result<usize, Invalid> {
    if bytes.get(i) != Some(&b'"') {
        return Err(syntax(i));
    }
    let colon = skip_ws(bytes, checked_string_end(bytes, i, strict)?);
    if bytes.get(colon) != Some(&b':') {
        return Err(syntax(colon));
    }
    Ok(skip_ws(bytes, colon + 1))
}

/// The end (exclusive) of the string whose opening quote is at `i`, every
/// escape read; with `strict`, its text checked as UTF-8 and its surrogate
/// escapes as pairs too.
fn checked_string_end(bytes: &[u8], i: usize, strict: bool) -> Result<usize, Invalid> {
    let mut j = i + 1;
    // Where the text since the last escape starts (escapes are ASCII, so
    // the runs between them are checked as UTF-8 on their own).
    let mut run = j;
    loop {
        match *bytes.get(j).ok_or_else(|| syntax(bytes.len()))? {
            b @ (b'"' | b'\\') => {
                if strict && let Err(e) = std::str::from_utf8(&bytes[run..j]) {
                    let offset = run + e.valid_up_to();
                    return Err(Invalid {
                        offset,
                        flaw: Flaw::InvalidUtf8 {
                            byte: bytes[offset],
                        },
                    });
                }
                if b == b'"' {
                    return Ok(j + 1);
                }
                j = escape_end(bytes, j, strict)?;
                run = j;
            }
            0x00..=0x1f => return Err(syntax(j)),
            _ => j += 1,
        }
    }
}

/// The end (exclusive) of the escape whose backslash is at `j`; with
/// `strict`, a surrogate escape must be the first half of a pair, and the
/// pair is read whole.
fn escape_end(bytes: &[u8], j: usize, strict: bool) -> Result<usize, Invalid> {
    match bytes.get(j + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(j + 2),
        Some(b'u') => {
            let unit = hex4(bytes, j + 2).ok_or_else(|| syntax(j))?;
            if !strict || !(0xD800..=0xDFFF).contains(&unit) {
                return Ok(j + 6);
            }
            let paired = unit <= 0xDBFF
                && bytes.get(j + 6..j + 8) == Some(&b"\\u"[..])
                && hex4(bytes, j + 8).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low));
            if paired {
                return Ok(j + 12);
            }
            let mut escape = [0; 6];
            escape.copy_from_slice(&bytes[j..j + 6]);
            Err(Invalid {
                offset: j,
                flaw: Flaw::LoneSurrogate { escape },
            })
        }
        None => Err(syntax(bytes.len())),
        Some(_) => Err(syntax(j)),
    }
}

/// The four hex digits at `i` as a UTF-16 code unit.
fn hex4(bytes: &[u8], i: usize) -> Option<u16> {
    let digits = bytes.get(i..i + 4)?;
    digits.iter().try_fold(0u16, |unit, &b| {
        let digit = char::from(b).to_digit(16)?;
        // Four digits of at most 15 fit in a u16.
        Some(unit << 4 | u16::try_from(digit).ok()?)
    })
}

/// The end (exclusive) of the number starting at `i`, by JSON's grammar:
/// `-`, then `0` or digits not starting with `0`, then optionally `.` and
/// digits, then optionally `e` or `E`, a sign, and digits.
fn number_end(bytes: &[u8], i: usize) -> Option<usize> {
    let digits_from = |from: usize| {
        from + bytes.get(from..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };
    let mut j = i + usize::from(bytes.get(i) == Some(&b'-'));
    j = match bytes.get(j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits_from(j + 1),
        _ => return None,
    };
    if bytes.get(j) == Some(&b'.') {
        let end = digits_from(j + 1);
        if end == j + 1 {
            return None;
        }
        j = end;
    }
    if matches!(bytes.get(j), Some(b'e' | b'E')) {
        j += 1;
        j += usize::from(matches!(bytes.get(j), Some(b'+' | b'-')));
        let end = digits_from(j);
        if end == j {
            return None;
        }
        j = end;
    }
    Some(j)
}

/// The end (exclusive) of `literal` (`true`, `false`, `null`) at `i`.
fn literal_end(bytes: &[u8], i: usize, literal: &[u8]) -> Result<usize, Invalid> {
    if bytes.get(i..i + literal.len()) == Some(literal) {
        Ok(i + literal.len())
    } else {
        Err(syntax(i))
    }
}

/// The arrays and objects open around a point of the text, innermost last,
/// one bit each (`true` for an object): the validator's stack, 125 kB for a
/// body nested a million deep.
#[derive(Default)]
struct Nesting {
    words: Vec<u64>,
    len: usize,
}

impl Nesting {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, object: bool) {
        let (word, bit) = (self.len / 64, self.len % 64);
        if word == self.words.len() {
            self.words.push(0);
        }
        if object {
            self.words[word] |= 1 << bit;
        } else {
            self.words[word] &= !(1 << bit);
        }
        self.len += 1;
    }

    /// Whether the innermost open value is an object; `None` at the top.
    fn last(&self) -> Option<bool> {
        let top = self.len.checked_sub(1)?;
        Some(self.words[top / 64] >> (top % 64) & 1 == 1)
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
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

/// The end (exclusive) of the value starting at `i` (no whitespace before
/// it); `None` if it nests more than `levels` deep.
fn value_end(bytes: &[u8], i: usize, levels: usize) -> Option<usize> {
    match *bytes.get(i)? {
        b'"' => string_end(bytes, i),
        b'{' | b'[' => container_end(bytes, i, levels),
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
    members_within(object, usize::MAX)
}

/// The elements of an array, trimmed. `None` if `array` is not an array.
pub fn elements(array: &[u8]) -> Option<Elements<'_>> {
    elements_within(array, usize::MAX)
}

/// Like [`members`], for a reader that refuses values nesting more than
/// `levels` deep (arrays and objects inside one another, counting the
/// value's own): such a value is a `None` item, found without reading to
/// its end. Otherwise a reader going down a record nested a million deep
/// would read what is left of it once per level it goes down.
pub fn members_within(object: &[u8], levels: usize) -> Option<Members<'_>> {
    (object.first() == Some(&b'{')).then_some(Members(Items::new(object, b'}', levels)))
}

/// Like [`elements`], with a limit as [`members_within`].
pub fn elements_within(array: &[u8], levels: usize) -> Option<Elements<'_>> {
    (array.first() == Some(&b'[')).then_some(Elements(Items::new(array, b']', levels)))
}

/// A walk through the items of an array or object, shared by [`Members`]
/// and [`Elements`].
struct Items<'a> {
    bytes: &'a [u8],
    at: usize,
    close: u8,
    /// How deep an item may nest.
    levels: usize,
    done: bool,
}

impl<'a> Items<'a> {
    fn new(bytes: &'a [u8], close: u8, levels: usize) -> Self {
        Self {
            bytes,
            at: 1,
            close,
            levels,
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
            let end = value_end(bytes, value_start, self.0.levels)?;
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
        let element = value_end(bytes, i, self.0.levels).map(|end| (&bytes[i..end], end));
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

/// Whether PostgreSQL's `numeric`, which `jsonb` stores numbers as, holds
/// the number (checked JSON text): at most 131,072 digits before the
/// decimal point and 16,383 after, once the exponent is applied (found by
/// trying PostgreSQL 15: `1e131071` and `1e-16383` fit, one more does not,
/// and `0e-20000` does not either). A record with a number beyond that fails
/// the whole page's write, on every run.
pub fn fits_numeric(number: &[u8]) -> bool {
    const MAX_BEFORE: i64 = 131_072;
    const MAX_AFTER: i64 = 16_383;
    let unsigned = number.strip_prefix(b"-").unwrap_or(number);
    let (mantissa, exponent) = match unsigned.iter().position(|&b| b == b'e' || b == b'E') {
        None => (unsigned, 0i64),
        Some(e) => {
            let digits = &unsigned[e + 1..];
            let (negative, digits) = match digits.split_first() {
                Some((b'-', rest)) => (true, rest),
                Some((b'+', rest)) => (false, rest),
                _ => (false, digits),
            };
            // Saturates: an exponent of 20 digits is far past either limit.
            // A byte that is no digit (text not checked after all) counts
            // as one rather than overflowing.
            let magnitude = digits.iter().fold(0i64, |n, &d| {
                n.saturating_mul(10)
                    .saturating_add(i64::from(d.saturating_sub(b'0')))
            });
            (
                &unsigned[..e],
                if negative { -magnitude } else { magnitude },
            )
        }
    };
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        None => (mantissa, &b""[..]),
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
    };
    let significant_int = int.iter().skip_while(|&&b| b == b'0').count() as i64;
    let zero = significant_int == 0 && frac.iter().all(|&b| b == b'0');
    let before = if zero {
        0
    } else {
        significant_int.saturating_add(exponent)
    };
    let after = (frac.len() as i64).saturating_sub(exponent);
    before <= MAX_BEFORE && after <= MAX_AFTER
}

/// `text` with every `\uD800`-`\uDFFF` escape written `\uFFFD`: for hashing
/// or reading text serde_json refuses, never for storing it (a paired
/// escape is replaced too: both halves).
pub fn replace_surrogate_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i..i + 6).filter(|e| {
            e[0] == b'\\'
                && e[1] == b'u'
                && matches!(e[2], b'd' | b'D')
                && matches!(e[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                && e[4].is_ascii_hexdigit()
                && e[5].is_ascii_hexdigit()
        });
        if escape.is_some() {
            out.push_str("\\ufffd");
            i += 6;
        } else {
            let c = text[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `bytes` (syntax checked) with every array or object nested deeper than
/// `max` written `null`: for reading an envelope serde_json refuses.
pub fn truncate_depth(bytes: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i).unwrap_or(bytes.len());
                out.extend_from_slice(&bytes[i..end]);
                i = end;
                continue;
            }
            b'{' | b'[' if depth >= max => {
                out.extend_from_slice(b"null");
                i = container_end(bytes, i, usize::MAX).unwrap_or(bytes.len());
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The span of `inner` within `outer`, which it borrows from.
pub fn span_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_that_postgresql_numeric_holds() {
        let long_int = format!("1{}", "0".repeat(131_071));
        let longer_int = format!("1{}", "0".repeat(131_072));
        let long_frac = format!("0.{}1", "0".repeat(16_382));
        let longer_frac = format!("0.{}1", "0".repeat(16_383));
        let cases: [(&str, bool); 16] = [
            ("12", true),
            ("-0.5e-3", true),
            ("1e131071", true),
            ("1.5e131071", true),
            ("15e131070", true),
            ("1e131072", false),
            ("1e-16383", true),
            ("1e-16384", false),
            ("0e2000", true),
            ("0e-20000", false),
            ("1E+999999", false),
            ("1e99999999999999999999999", false),
            (&long_int, true),
            (&longer_int, false),
            (&long_frac, true),
            (&longer_frac, false),
        ];
        for (number, fits) in cases {
            assert_eq!(
                fits_numeric(number.as_bytes()),
                fits,
                "{}",
                &number[..number.len().min(20)]
            );
        }
    }

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

    #[test]
    fn the_syntax_check_treats_strings_as_bytes_and_the_strict_one_does_not() {
        use Flaw::*;
        type Verdict = Result<(), Invalid>;
        let bad = |offset, flaw| -> Verdict { Err(Invalid { offset, flaw }) };
        let lone = |escape: &[u8; 6]| LoneSurrogate { escape: *escape };
        // (text, syntax check, strict check)
        let cases: [(&[u8], Verdict, Verdict); 25] = [
            (
                br#"{"a": [1, -0.5e+3, "x", true, null, {}]}"#,
                Ok(()),
                Ok(()),
            ),
            (b" [] ", Ok(()), Ok(())),
            (br#""\ud83d\ude00 \\ud800 \/\b\f\n\r\t\"""#, Ok(()), Ok(())),
            ("\"é😀\"".as_bytes(), Ok(()), Ok(())),
            (b"\"\xff\"", Ok(()), bad(1, InvalidUtf8 { byte: 0xff })),
            (b"{\"\xc3\": 1}", Ok(()), bad(2, InvalidUtf8 { byte: 0xc3 })),
            // A surrogate written as UTF-8 is not UTF-8.
            (
                b"[\"ab\xed\xa0\x80\"]",
                Ok(()),
                bad(4, InvalidUtf8 { byte: 0xed }),
            ),
            (br#"["\ud800"]"#, Ok(()), bad(2, lone(br"\ud800"))),
            (br#""x\uDC00""#, Ok(()), bad(2, lone(br"\uDC00"))),
            (br#""\ud800\u0041""#, Ok(()), bad(1, lone(br"\ud800"))),
            (br#""\ud800\ud800""#, Ok(()), bad(1, lone(br"\ud800"))),
            (b"", Err(syntax(0)), Err(syntax(0))),
            (b"  ", Err(syntax(2)), Err(syntax(2))),
            (b"[1, 2", Err(syntax(5)), Err(syntax(5))),
            (b"[1 2]", Err(syntax(3)), Err(syntax(3))),
            (b"[1,]", Err(syntax(3)), Err(syntax(3))),
            (b"{\"a\" 1}", Err(syntax(5)), Err(syntax(5))),
            (b"{1: 2}", Err(syntax(1)), Err(syntax(1))),
            (b"[01]", Err(syntax(2)), Err(syntax(2))),
            (b"[1.]", Err(syntax(1)), Err(syntax(1))),
            (b"[tru]", Err(syntax(1)), Err(syntax(1))),
            (b"[1] [2]", Err(syntax(4)), Err(syntax(4))),
            (b"\"a\x01\"", Err(syntax(2)), Err(syntax(2))),
            (br#""\x""#, Err(syntax(1)), Err(syntax(1))),
            (br#""\u12""#, Err(syntax(1)), Err(syntax(1))),
        ];
        for (text, syntax_verdict, strict_verdict) in cases {
            let shown = String::from_utf8_lossy(text);
            assert_eq!(check_syntax(text), syntax_verdict, "syntax of {shown}");
            assert_eq!(
                check_strict(text),
                strict_verdict,
                "strict check of {shown}"
            );
        }
    }

    #[test]
    fn a_million_levels_are_checked_without_recursion() {
        let levels = 1_000_000;
        let arrays = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(check_syntax(arrays.as_bytes()), Ok(()));
        let too_deep = Err(Invalid {
            offset: MAX_DEPTH,
            flaw: Flaw::TooDeep,
        });
        assert_eq!(check_strict(arrays.as_bytes()), too_deep);
        let open = "[".repeat(levels);
        assert_eq!(check_syntax(open.as_bytes()), Err(syntax(levels)));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert_eq!(check_syntax(objects.as_bytes()), Ok(()));
        assert_eq!(
            check_strict(objects.as_bytes()).map_err(|e| e.flaw),
            Err(Flaw::TooDeep)
        );
        let limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check_strict(limit.as_bytes()), Ok(()));
    }

    /// Random JSON-ish bytes: valid documents (some nested around
    /// [`MAX_DEPTH`]), mutations of them, and soups of JSON's tokens.
    struct Fuzz {
        rng: fastrand::Rng,
    }

    impl Fuzz {
        /// Pieces of JSON, whole and broken: what mutations insert and
        /// soups are made of.
        const TOKENS: [&[u8]; 46] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"\"a\"",
            b"\"k\":",
            b"\\",
            b"\\u",
            b"d800",
            b"\\ud800",
            b"\\uDBFF\\uDFFF",
            b"\\udc00",
            b"\\ud83d\\ude00",
            b"\\\\ud800",
            b"\\n",
            b"\\x",
            b"\\u12",
            b"0",
            b"-",
            b"7",
            b".",
            b"e",
            b"E+",
            b"01",
            b"1.5",
            b"true",
            b"tru",
            b"null",
            b"false",
            b" ",
            b"\n",
            b"\t",
            b"\r",
            b"\x01",
            b"\x00",
            b"\x1f",
            b"\x7f",
            b"\xff",
            b"\xc3",
            b"\xa9",
            b"\xc3\xa9",
            b"\xed\xa0\x80",
            b"\xf0\x9f\x98\x80",
        ];
        /// Strings' contents, a few of them what only the strict check refuses.
        const STRINGS: [&[u8]; 12] = [
            b"",
            b"a",
            b"id",
            b"x y",
            b"\\\"",
            b"\\u00e9",
            b"\xc3\xa9",
            b"\\ud83d\\ude00",
            b"\\/",
            b"a\xffb",
            b"\\ud800",
            b"\xed\xa0\x80",
        ];
        const NUMBERS: [&[u8]; 8] = [
            b"0",
            b"-0",
            b"12",
            b"1.50",
            b"-2.5E-3",
            b"1e400",
            b"3e+7",
            b"12345678901234567890123",
        ];

        fn pick<'t>(&mut self, from: &[&'t [u8]]) -> &'t [u8] {
            from[self.rng.usize(0..from.len())]
        }

        fn space(&mut self, out: &mut Vec<u8>) {
            for _ in 0..self.rng.usize(0..2) {
                out.push(b" \n\t\r"[self.rng.usize(0..4)]);
            }
        }

        fn value(&mut self, out: &mut Vec<u8>, depth: usize) {
            self.space(out);
            match self.rng.usize(0..if depth > 3 { 5 } else { 7 }) {
                0 => out.extend_from_slice(self.pick(&[b"true", b"false", b"null"])),
                1 | 2 => out.extend_from_slice(self.pick(&Self::NUMBERS)),
                3 | 4 => {
                    out.push(b'"');
                    out.extend_from_slice(self.pick(&Self::STRINGS));
                    out.push(b'"');
                }
                5 => {
                    out.push(b'[');
                    for i in 0..self.rng.usize(0..4) {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.value(out, depth + 1);
                    }
                    out.push(b']');
                }
                _ => {
                    out.push(b'{');
                    for i in 0..self.rng.usize(0..4) {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.space(out);
                        out.push(b'"');
                        out.extend_from_slice(self.pick(&Self::STRINGS));
                        out.extend_from_slice(b"\":");
                        self.value(out, depth + 1);
                    }
                    out.push(b'}');
                }
            }
            self.space(out);
        }

        /// A document, valid but for what some strings hold, now and then
        /// nested around the depth limit.
        fn document(&mut self) -> Vec<u8> {
            let mut inner = Vec::new();
            self.value(&mut inner, 0);
            if self.rng.u8(0..4) != 0 {
                return inner;
            }
            let levels = self.rng.usize(MAX_DEPTH - 8..MAX_DEPTH + 4);
            let (open, close): (&[u8], &[u8]) = if self.rng.bool() {
                (b"[", b"]")
            } else {
                (br#"{"k":"#, b"}")
            };
            let mut out = open.repeat(levels);
            out.extend_from_slice(&inner);
            out.extend_from_slice(&close.repeat(levels));
            out
        }

        fn mutate(&mut self, text: &mut Vec<u8>) {
            for _ in 0..self.rng.usize(1..4) {
                let at = self.rng.usize(0..=text.len());
                match self.rng.u8(0..5) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 => {
                        let token = self.pick(&Self::TOKENS);
                        text.splice(at..at, token.iter().copied());
                    }
                    2 if at < text.len() => {
                        let token = self.pick(&Self::TOKENS);
                        text.splice(at..at + 1, token.iter().copied());
                    }
                    3 if self.rng.u8(0..4) == 0 => text.truncate(at),
                    _ => {
                        let end = self.rng.usize(at..=text.len().min(at + 8));
                        let copy = text[at..end].to_vec();
                        text.splice(at..at, copy);
                    }
                }
            }
        }

        fn soup(&mut self) -> Vec<u8> {
            (0..self.rng.usize(0..12))
                .flat_map(|_| self.pick(&Self::TOKENS).to_vec())
                .collect()
        }

        fn case(&mut self) -> Vec<u8> {
            match self.rng.u8(0..4) {
                0 => self.document(),
                1 => self.soup(),
                _ => {
                    let mut text = self.document();
                    self.mutate(&mut text);
                    text
                }
            }
        }
    }

    #[test]
    fn the_checks_agree_with_serde_json_on_random_texts() {
        let mut fuzz = Fuzz {
            rng: fastrand::Rng::with_seed(2024),
        };
        let (mut valid, mut compared, mut flaws) = (0, 0, [0usize; 4]);
        for _ in 0..40_000 {
            let text = fuzz.case();
            let shown = String::from_utf8_lossy(&text).into_owned();
            let value = serde_json::from_slice::<serde_json::Value>(&text).is_ok();
            let strict = check_strict(&text);
            let syntax = check_syntax(&text);
            valid += usize::from(value);
            assert_eq!(
                strict.is_ok(),
                value,
                "strict check of {shown:?}: {strict:?}"
            );
            if let Err(e) = strict {
                flaws[match e.flaw {
                    Flaw::Syntax => 0,
                    Flaw::InvalidUtf8 { .. } => 1,
                    Flaw::LoneSurrogate { .. } => 2,
                    Flaw::TooDeep => 3,
                }] += 1;
                // The two walk alike up to the first problem only the
                // strict check sees.
                if e.flaw == Flaw::Syntax {
                    assert_eq!(syntax, strict, "{shown:?}");
                }
            }
            if let Err(e) = syntax {
                assert!(
                    strict.is_err_and(|first| first.offset <= e.offset),
                    "{shown:?}"
                );
            }
            // Where serde_json's extra rules cannot apply, the verdict is its own.
            let plain = std::str::from_utf8(&text).is_ok()
                && !holds_surrogate_escape(&text)
                && text.iter().filter(|&&b| b == b'[' || b == b'{').count() <= MAX_DEPTH;
            if plain {
                compared += 1;
                assert_eq!(
                    syntax.is_ok(),
                    value,
                    "syntax check of {shown:?}: {syntax:?}"
                );
            }
            // serde_json's `IgnoredAny` reads strings as bytes too: the fast
            // path leans on the two agreeing (a failure here after an upgrade
            // of serde_json means `check_document` needs a look).
            let ignored = serde_json::from_slice::<IgnoredAny>(&text).is_ok();
            assert_eq!(
                syntax.is_ok(),
                ignored,
                "IgnoredAny and the syntax check on {shown:?}"
            );
        }
        // Neither side of any comparison is a handful of cases.
        assert!(valid > 8_000 && valid < 32_000, "{valid} valid");
        assert!(
            compared > 10_000,
            "{compared} compared without serde_json's extra rules"
        );
        assert!(
            flaws.iter().all(|&n| n > 1_000),
            "refusals by flaw: {flaws:?}"
        );
    }
}
