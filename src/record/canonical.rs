//! The canonical form of a record, what its content hash covers: compact
//! JSON, object keys sorted, the `hash_exclude` pointers left out. Two ways
//! to it that give the same bytes: from the record's text ([`of_members`], the
//! fast way, no tree) and from a `serde_json::Value` ([`of_value`], for
//! whatever the fast way declines: escaped or repeated keys, NUL characters).

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;

use crate::raw_json;

/// The `hash_exclude` pointers as a tree of segments, walked alongside the
/// record so each exclusion costs a map lookup instead of a copy of the record.
#[derive(Debug, Clone, Default)]
pub(super) struct ExcludeTree {
    /// The value at this path is left out entirely.
    excluded: bool,
    children: HashMap<String, ExcludeTree>,
}

impl ExcludeTree {
    pub(super) fn insert(&mut self, segments: &[String]) {
        match segments.split_first() {
            None => self.excluded = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn child(&self, segment: &str) -> Option<&ExcludeTree> {
        self.children.get(segment)
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.excluded && self.children.is_empty()
    }
}

/// Whether any string (or object key) in `value` holds a NUL character.
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The canonical bytes of `value`, and whether any of its strings or keys
/// (excluded ones too: they are stored all the same) holds a NUL character.
pub(super) fn of_value(value: &Value, exclude: Option<&ExcludeTree>) -> (Vec<u8>, bool) {
    // Room for a typical record up front: growing from empty would
    // reallocate half a dozen times per record.
    let mut canonical = Canonical {
        bytes: Vec::with_capacity(512),
        saw_nul: false,
    };
    canonical.value(value, exclude);
    (canonical.bytes, canonical.saw_nul)
}

/// Built in one buffer and hashed in one call, which is several times faster
/// than feeding a streaming hasher the many small pieces.
struct Canonical {
    bytes: Vec<u8>,
    saw_nul: bool,
}

impl Canonical {
    fn value(&mut self, value: &Value, exclude: Option<&ExcludeTree>) {
        match value {
            Value::Null => self.bytes.extend_from_slice(b"null"),
            Value::Bool(true) => self.bytes.extend_from_slice(b"true"),
            Value::Bool(false) => self.bytes.extend_from_slice(b"false"),
            // Written straight into the buffer: no string per number.
            Value::Number(n) => {
                let _ = write!(self.bytes, "{n}");
            }
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.bytes.extend_from_slice(b"[");
                let mut first = true;
                for (index, item) in items.iter().enumerate() {
                    let sub = exclude.and_then(|tree| tree.child(&index.to_string()));
                    if sub.is_some_and(|tree| tree.excluded) {
                        self.saw_nul |= contains_nul(item);
                        continue;
                    }
                    if !first {
                        self.bytes.extend_from_slice(b",");
                    }
                    first = false;
                    self.value(item, sub);
                }
                self.bytes.extend_from_slice(b"]");
            }
            Value::Object(map) => {
                // Sorted here rather than trusting the map's order: serde_json
                // keeps insertion order when any crate in the build enables its
                // `preserve_order` feature.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                self.bytes.extend_from_slice(b"{");
                let mut first = true;
                for (key, item) in entries {
                    let sub = exclude.and_then(|tree| tree.child(key));
                    if sub.is_some_and(|tree| tree.excluded) {
                        // Left out of the hash, but stored all the same.
                        self.saw_nul |= key.contains('\0') || contains_nul(item);
                        continue;
                    }
                    if !first {
                        self.bytes.extend_from_slice(b",");
                    }
                    first = false;
                    self.string(key);
                    self.bytes.extend_from_slice(b":");
                    self.value(item, sub);
                }
                self.bytes.extend_from_slice(b"}");
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.saw_nul |= s.contains('\0');
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.bytes, s);
    }
}

/// The canonical bytes of a record object given as its members (key as
/// written between quotes, value), as [`raw_json::members`] reads them from
/// checked JSON: the same bytes [`of_value`] writes for it. `None` when the
/// text holds what only the tree handles: a key with an escape, a key twice
/// in one object, a NUL character, nesting beyond serde_json's limit.
pub(super) fn of_members(
    members: &[(&[u8], &[u8])],
    exclude: Option<&ExcludeTree>,
    size_hint: usize,
) -> Option<Vec<u8>> {
    let mut canonical = TextCanonical {
        bytes: Vec::with_capacity(size_hint),
        members: Vec::with_capacity(16),
    };
    canonical.members.extend_from_slice(members);
    canonical.write_members(0, exclude, 1)?;
    Some(canonical.bytes)
}

struct TextCanonical<'a> {
    bytes: Vec<u8>,
    /// The members of the objects being written, innermost last: one buffer
    /// for the whole record instead of one per object.
    members: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> TextCanonical<'a> {
    fn value(&mut self, text: &'a [u8], exclude: Option<&ExcludeTree>, depth: usize) -> Option<()> {
        match *text.first()? {
            b'{' => self.object(text, exclude, depth + 1),
            b'[' => self.array(text, exclude, depth + 1),
            b'"' => self.string(text),
            b't' | b'f' | b'n' => {
                self.bytes.extend_from_slice(text);
                Some(())
            }
            // A number PostgreSQL cannot hold: the `Value` path marks it.
            _ if !raw_json::fits_numeric(text) => None,
            _ => {
                raw_json::push_number(&mut self.bytes, text);
                Some(())
            }
        }
    }

    fn object(
        &mut self,
        text: &'a [u8],
        exclude: Option<&ExcludeTree>,
        depth: usize,
    ) -> Option<()> {
        if depth > raw_json::MAX_DEPTH {
            return None;
        }
        let base = self.members.len();
        for member in raw_json::members_within(text, raw_json::MAX_DEPTH - depth)? {
            self.members.push(member?);
        }
        self.write_members(base, exclude, depth)
    }

    /// Writes the object whose members are `self.members[base..]`, and
    /// takes them off.
    fn write_members(
        &mut self,
        base: usize,
        exclude: Option<&ExcludeTree>,
        depth: usize,
    ) -> Option<()> {
        let end = self.members.len();
        if self.members[base..end]
            .iter()
            .any(|(key, _)| key.contains(&b'\\'))
        {
            return None;
        }
        // Byte order of UTF-8 is the order of `String`s, a Value's order.
        let members = &mut self.members[base..end];
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return None;
        }
        self.bytes.push(b'{');
        let mut first = true;
        for i in base..end {
            let (key, item) = self.members[i];
            let sub = match exclude {
                Some(tree) => tree.child(std::str::from_utf8(key).ok()?),
                None => None,
            };
            if left_out(item, sub)? {
                continue;
            }
            if !first {
                self.bytes.push(b',');
            }
            first = false;
            // No escape, so nothing serde_json would escape either: JSON
            // text cannot hold a bare quote or control character in a string.
            self.bytes.push(b'"');
            self.bytes.extend_from_slice(key);
            self.bytes.extend_from_slice(b"\":");
            self.value(item, sub, depth)?;
        }
        self.members.truncate(base);
        self.bytes.push(b'}');
        Some(())
    }

    fn array(&mut self, text: &'a [u8], exclude: Option<&ExcludeTree>, depth: usize) -> Option<()> {
        if depth > raw_json::MAX_DEPTH {
            return None;
        }
        self.bytes.push(b'[');
        let mut first = true;
        for (index, item) in
            raw_json::elements_within(text, raw_json::MAX_DEPTH - depth)?.enumerate()
        {
            let item = item?;
            let sub = exclude.and_then(|tree| tree.child(&index.to_string()));
            if left_out(item, sub)? {
                continue;
            }
            if !first {
                self.bytes.push(b',');
            }
            first = false;
            self.value(item, sub, depth)?;
        }
        self.bytes.push(b']');
        Some(())
    }

    /// A string without escapes is written as it came; one with escapes is
    /// decoded and written as serde_json writes it.
    fn string(&mut self, text: &[u8]) -> Option<()> {
        if !text.contains(&b'\\') {
            self.bytes.extend_from_slice(text);
            return Some(());
        }
        let decoded = raw_json::unescape(text.get(1..text.len() - 1)?)?;
        if decoded.contains('\0') {
            return None;
        }
        serde_json::to_writer(&mut self.bytes, &decoded).ok()
    }
}

/// Whether an item is left out of the hash by the exclusions at its path.
/// An excluded item is stored all the same, so one that may hide a NUL
/// character gives `None`: the tree must say whether it can be stored.
fn left_out(item: &[u8], exclusions: Option<&ExcludeTree>) -> Option<bool> {
    if !exclusions.is_some_and(|tree| tree.excluded) {
        return Some(false);
    }
    (!holds_nul_escape(item)).then_some(true)
}

/// Whether `text` may hold an escaped NUL (`\u0000`); a false alarm
/// (`\\u0000`) only sends the record the slow way.
fn holds_nul_escape(text: &[u8]) -> bool {
    text.windows(6).any(|window| window == b"\\u0000")
}
