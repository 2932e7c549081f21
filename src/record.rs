//! Turning one JSON value from an API into a `Record`: its natural key, a
//! fingerprint of that key, and a content hash over a canonical form.
//!
//! The canonical form sorts object keys, leaves out the `hash_exclude`
//! pointers and ignores the whitespace and key order of the response, so only
//! a real change of content changes the hash. A value that cannot be stored is
//! a [`Rejected`] with a reason, never a panic or an error that stops the run.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128;

use crate::json_pointer;
use crate::store::ident::Ident;

/// xxh3-128 of the canonical record: stable across versions and platforms,
/// and wide enough that two contents of one key never collide in practice.
pub type ContentHash = [u8; 16];

/// One natural-key field: where it is in a record and the column it fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyField {
    /// The configured spelling, used in messages (`id`, `/meta/id`).
    pub name: String,
    pub pointer: String,
    pub column: Ident,
}

impl KeyField {
    /// The JSON pointer a field is read from: `id` means `/id`; an entry
    /// starting with `/` is a pointer already.
    pub fn parse_pointer(entry: &str) -> Result<String, String> {
        if entry.is_empty() {
            return Err("an empty field name".to_owned());
        }
        if entry.starts_with('/') {
            json_pointer::validate(entry)?;
            Ok(entry.to_owned())
        } else {
            Ok(format!("/{}", entry.replace('~', "~0").replace('/', "~1")))
        }
    }

    /// `id` is the top-level field `id`, in column `id`; `/meta/id` is a JSON
    /// pointer, in column `meta_id` (segments joined with `_`).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let pointer = Self::parse_pointer(entry)?;
        let column = if entry.starts_with('/') {
            json_pointer::segments(entry).join("_")
        } else {
            entry.to_owned()
        };
        let column = Ident::column(&column)?;
        Ok(Self {
            name: entry.to_owned(),
            pointer,
            column,
        })
    }
}

/// How the records of one job are read: which fields make the key and which
/// are left out of the content hash.
#[derive(Debug, Clone)]
pub struct RecordShape {
    key: Vec<KeyField>,
    exclude: ExcludeTree,
}

/// A record ready to be stored.
#[derive(Debug, Clone)]
pub struct Record {
    /// The key values in key order, as text (numbers in their JSON spelling).
    pub key: Vec<String>,
    /// A fixed-size stand-in for `key`, to count repeats within a run.
    pub key_fingerprint: u128,
    pub content_hash: ContentHash,
    /// The record as compact JSON, what the `record` column receives.
    pub text: String,
}

/// A value that cannot be stored as a record, with the reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub json: Value,
    pub reason: String,
}

impl RecordShape {
    /// # Errors
    /// The configuration key at fault (`key` or `hash_exclude`) and why: a key
    /// field or an exclusion is not a valid name or pointer, or two key fields
    /// map to one column.
    pub fn new(key: &[String], hash_exclude: &[String]) -> Result<Self, (&'static str, String)> {
        let key = parse_key(key).map_err(|e| ("key", e))?;
        let mut exclude = ExcludeTree::default();
        for pointer in hash_exclude {
            json_pointer::validate(pointer).map_err(|e| ("hash_exclude", e))?;
            if pointer.is_empty() {
                let message = "`\"\"` would leave the whole record out of the hash";
                return Err(("hash_exclude", message.to_owned()));
            }
            exclude.insert(&json_pointer::segments(pointer));
        }
        Ok(Self { key, exclude })
    }

    pub fn key_fields(&self) -> &[KeyField] {
        &self.key
    }

    /// Reads one value from the records array: its key, its content hash and
    /// the text to store. `Err` holds the reason it cannot be stored.
    pub fn read(&self, json: &Value) -> Result<Record, String> {
        let key = self.extract_key(json)?;
        // Room for a typical record up front: growing from empty would
        // reallocate half a dozen times per record.
        let mut canonical = Canonical {
            bytes: Vec::with_capacity(512),
            saw_nul: false,
        };
        canonical.value(json, Some(&self.exclude));
        if canonical.saw_nul {
            return Err(
                "the record contains a NUL character (\\u0000), which PostgreSQL \
                        cannot store"
                    .to_owned(),
            );
        }
        let content_hash = xxh3_128(&canonical.bytes).to_be_bytes();
        // Without exclusions the canonical form is the record itself, written
        // as serde_json writes it (its maps are sorted): no second pass.
        let text = if self.exclude.is_empty() {
            String::from_utf8(canonical.bytes).expect("JSON written from a Value is UTF-8")
        } else {
            json.to_string()
        };
        Ok(Record {
            key_fingerprint: key_fingerprint(&key),
            content_hash,
            key,
            text,
        })
    }

    fn extract_key(&self, json: &Value) -> Result<Vec<String>, String> {
        self.key
            .iter()
            .map(|field| {
                let name = &field.name;
                let text = match json.pointer(&field.pointer) {
                    None if !json.is_object() => {
                        return Err(format!(
                            "key field `{name}` is missing: the record is {}, not an object",
                            kind_of(json)
                        ));
                    }
                    None => return Err(format!("key field `{name}` is missing")),
                    Some(Value::Null) => return Err(format!("key field `{name}` is null")),
                    Some(Value::String(s)) if s.is_empty() => {
                        return Err(format!("key field `{name}` is an empty string"));
                    }
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    Some(other) => {
                        return Err(format!(
                            "key field `{name}` is {}, not a string, number or boolean",
                            kind_of(other)
                        ));
                    }
                };
                if text.contains('\0') {
                    return Err(format!("key field `{name}` contains a NUL character"));
                }
                Ok(text)
            })
            .collect()
    }
}

fn parse_key(key: &[String]) -> Result<Vec<KeyField>, String> {
    if key.is_empty() {
        return Err("at least one key field is needed".to_owned());
    }
    let key: Vec<KeyField> = key
        .iter()
        .map(|k| KeyField::parse(k))
        .collect::<Result<_, _>>()?;
    for (i, field) in key.iter().enumerate() {
        if key[..i].iter().any(|other| other.column == field.column) {
            return Err(format!(
                "two key fields map to the column `{}`",
                field.column
            ));
        }
    }
    Ok(key)
}

/// "an object", "a string", … for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Length-prefixed parts, so `["ab", "c"]` and `["a", "bc"]` differ.
fn key_fingerprint(key: &[String]) -> u128 {
    let mut bytes = Vec::with_capacity(key.iter().map(|k| k.len() + 8).sum());
    for part in key {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    xxh3_128(&bytes)
}

/// The `hash_exclude` pointers as a tree of segments, walked alongside the
/// record so each exclusion costs a map lookup instead of a copy of the record.
#[derive(Debug, Clone, Default)]
struct ExcludeTree {
    /// The value at this path is left out entirely.
    excluded: bool,
    children: HashMap<String, ExcludeTree>,
}

impl ExcludeTree {
    fn insert(&mut self, segments: &[String]) {
        match segments.split_first() {
            None => self.excluded = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn child(&self, segment: &str) -> Option<&ExcludeTree> {
        self.children.get(segment)
    }

    fn is_empty(&self) -> bool {
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

/// The canonical form of a record, what its content hash covers: compact
/// JSON, keys sorted, exclusions left out. Built in one buffer and hashed in
/// one call, which is several times faster than feeding a streaming hasher
/// the many small pieces.
#[derive(Default)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(key: &[&str], exclude: &[&str]) -> RecordShape {
        let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        RecordShape::new(&key, &exclude).unwrap()
    }

    fn hash(shape: &RecordShape, text: &str) -> ContentHash {
        shape
            .read(&serde_json::from_str(text).unwrap())
            .unwrap()
            .content_hash
    }

    #[test]
    fn hash_ignores_key_order_and_whitespace() {
        let s = shape(&["id"], &[]);
        let a = hash(&s, r#"{"id":1,"name":"x","tags":[{"b":1,"a":2}]}"#);
        let b = hash(
            &s,
            "{ \"tags\" : [ {\"a\":2, \"b\":1} ],\n \"name\":\"x\", \"id\": 1 }",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn hash_changes_with_content() {
        let s = shape(&["id"], &[]);
        assert_ne!(
            hash(&s, r#"{"id":1,"name":"x"}"#),
            hash(&s, r#"{"id":1,"name":"y"}"#)
        );
        assert_ne!(
            hash(&s, r#"{"id":1,"tags":[1,2]}"#),
            hash(&s, r#"{"id":1,"tags":[2,1]}"#),
            "array order is content"
        );
    }

    #[test]
    fn excluded_fields_do_not_count() {
        let s = shape(&["id"], &["/meta/request_id", "/items/0/seen"]);
        let a = hash(
            &s,
            r#"{"id":1,"meta":{"request_id":"a","v":1},"items":[{"seen":1,"x":1}]}"#,
        );
        let b = hash(
            &s,
            r#"{"id":1,"meta":{"request_id":"b","v":1},"items":[{"seen":2,"x":1}]}"#,
        );
        let c = hash(
            &s,
            r#"{"id":1,"meta":{"request_id":"b","v":2},"items":[{"seen":2,"x":1}]}"#,
        );
        assert_eq!(a, b);
        assert_ne!(b, c);
    }

    #[test]
    fn the_stored_text_is_the_record_as_serde_json_writes_it() {
        let value: Value = serde_json::from_str(
            r#"{ "id": 7, "b": [1.50, "x\"y", null], "a": {"z": true, "y": 12345678901234567890123} }"#,
        )
        .unwrap();
        let plain = shape(&["id"], &[]).read(&value).unwrap();
        assert_eq!(plain.text, serde_json::to_string(&value).unwrap());
        assert_eq!(
            plain.content_hash,
            xxh3_128(plain.text.as_bytes()).to_be_bytes()
        );
        let excluding = shape(&["id"], &["/b"]).read(&value).unwrap();
        assert_eq!(
            excluding.text, plain.text,
            "exclusions are stored all the same"
        );
        assert_ne!(excluding.content_hash, plain.content_hash);
    }

    #[test]
    fn keys_come_from_fields_and_pointers() {
        let s = shape(&["id", "/meta/region"], &[]);
        let record = s
            .read(&json!({"id": 42, "meta": {"region": "eu"}}))
            .unwrap();
        assert_eq!(record.key, vec!["42", "eu"]);
        let columns: Vec<&str> = s.key_fields().iter().map(|f| f.column.as_str()).collect();
        assert_eq!(columns, vec!["id", "meta_region"]);
    }

    #[test]
    fn unusable_keys_are_rejected_with_a_reason() {
        // The exclusion must not hide a NUL from the check: it is still stored.
        let s = shape(&["id"], &["/meta/request_id"]);
        let cases = [
            (json!({"name": "x"}), "key field `id` is missing"),
            (json!({"id": null}), "key field `id` is null"),
            (json!({"id": ""}), "key field `id` is an empty string"),
            (
                json!({"id": {"a": 1}}),
                "key field `id` is an object, not a string, number or boolean",
            ),
            (
                json!({"id": [1]}),
                "key field `id` is an array, not a string, number or boolean",
            ),
            (
                json!("just a string"),
                "key field `id` is missing: the record is a string, not an object",
            ),
            (
                json!({"id": 1, "note": "a\u{0}b"}),
                "the record contains a NUL character (\\u0000), which PostgreSQL cannot store",
            ),
            (
                json!({"id": 1, "meta": {"request_id": "a\u{0}b"}}),
                "the record contains a NUL character (\\u0000), which PostgreSQL cannot store",
            ),
        ];
        for (value, reason) in cases {
            assert_eq!(s.read(&value).unwrap_err(), reason, "case {value}");
        }
    }

    #[test]
    fn fingerprints_separate_key_parts() {
        let ab_c = key_fingerprint(&["ab".into(), "c".into()]);
        let a_bc = key_fingerprint(&["a".into(), "bc".into()]);
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(RecordShape::new(&[], &[]).is_err());
        assert!(RecordShape::new(&["record".into()], &[]).is_err());
        assert!(RecordShape::new(&["a_b".into(), "/a/b".into()], &[]).is_err());
        assert!(RecordShape::new(&["id".into()], &["nope".into()]).is_err());
    }
}
