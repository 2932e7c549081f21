//! Turning one JSON value from an API into a `Record`: its natural key, a
//! fingerprint of that key, and a content hash over a canonical form.
//!
//! The canonical form sorts object keys, leaves out the `hash_exclude`
//! pointers and ignores the whitespace and key order of the response, so only
//! a real change of content changes the hash. A value that cannot be stored is
//! a [`Rejected`] with a reason, never a panic or an error that stops the run.

mod canonical;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128;

use crate::json_pointer;
use crate::raw_json::{self, Flaw, Invalid};
use crate::store::ident::Ident;
use canonical::ExcludeTree;

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
        Self::parse_entry(&KeyEntry::from(entry))
    }

    /// Like [`KeyField::parse`], with the column named when the entry names
    /// one.
    pub fn parse_entry(entry: &KeyEntry) -> Result<Self, String> {
        let KeyEntry {
            field: entry,
            column,
        } = entry;
        let pointer = Self::parse_pointer(entry)?;
        let column = match column {
            Some(column) => column.clone(),
            None if entry.starts_with('/') => json_pointer::segments(entry).join("_"),
            None => entry.clone(),
        };
        let column = Ident::column(&column).map_err(|e| {
            if entry.as_str() == column {
                e
            } else {
                format!("key field `{entry}`: {e}")
            }
        })?;
        Ok(Self {
            name: entry.to_owned(),
            pointer,
            column,
        })
    }
}

/// One entry of a job's `key`: a field name or JSON pointer (`"id"`,
/// `"/meta/id"`), whose column is derived from it, or a field with the
/// column named (`{ field = "/@id", column = "at_id" }`), for field names
/// that are not identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub field: String,
    pub column: Option<String>,
}

impl From<&str> for KeyEntry {
    fn from(field: &str) -> Self {
        Self {
            field: field.to_owned(),
            column: None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeyEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Mapped {
            field: String,
            column: String,
        }
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Field(String),
            Mapped(Mapped),
        }
        match Raw::deserialize(deserializer) {
            Ok(Raw::Field(field)) => Ok(Self {
                field,
                column: None,
            }),
            Ok(Raw::Mapped(Mapped { field, column })) => Ok(Self {
                field,
                column: Some(column),
            }),
            Err(_) => Err(serde::de::Error::custom(
                "expected a field name (\"id\"), a JSON pointer (\"/meta/id\") or a field \
                 with its column ({ field = \"/@id\", column = \"at_id\" })",
            )),
        }
    }
}

/// How the records of one job are read: which fields make the key and which
/// are left out of the content hash.
#[derive(Debug, Clone)]
pub struct RecordShape {
    key: Vec<KeyField>,
    /// Each key field's pointer, split into segments once.
    key_segments: Vec<Vec<String>>,
    exclude: ExcludeTree,
    /// The segments of the `tombstone` pointer, if the job has one.
    tombstone: Option<Vec<String>>,
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
    /// It holds a number beyond what PostgreSQL's `numeric` holds (see
    /// [`raw_json::fits_numeric`]); the store decides.
    pub wide_number: bool,
    /// The record is the deletion of its key (its `tombstone` field is
    /// `true`), not content.
    pub tombstone: bool,
}

/// Why serde_json cannot read a record on its own, for the reject: what
/// [`raw_json::check_strict`] finds, in words, or serde_json's error.
fn unreadable(text: &[u8], error: &serde_json::Error) -> String {
    let Err(Invalid { offset, flaw }) = raw_json::check_strict(text) else {
        return format!("the record is not valid JSON: {error}");
    };
    match flaw {
        Flaw::InvalidUtf8 { byte } => {
            format!("the record is not valid UTF-8 (byte 0x{byte:02x} at offset {offset})")
        }
        Flaw::LoneSurrogate { escape } => format!(
            "the record holds a lone UTF-16 surrogate escape `{}` at offset {offset} (half of \
             a pair, no character on its own)",
            String::from_utf8_lossy(&escape)
        ),
        Flaw::TooDeep => format!(
            "the record nests deeper than {} levels (level {} opens at offset {offset})",
            raw_json::MAX_DEPTH,
            raw_json::MAX_DEPTH + 1
        ),
        Flaw::Syntax => format!("the record is not valid JSON: {error}"),
    }
}

/// A value that cannot be stored as a record, with the reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub json: Value,
    pub reason: String,
    /// xxh3-128 of the canonical value (`hash_exclude` left out) and the
    /// reason: a reject is stored once per job and content, so a re-run
    /// over the same bad record writes nothing.
    pub content_hash: ContentHash,
}

impl Rejected {
    /// A record refused as JSON text: kept as its value, or, if it is not
    /// even JSON to serde_json, as a string of the text.
    pub fn of_text(text: &[u8], reason: String) -> Self {
        Self::new(Self::value_of(text), reason, None)
    }

    /// The record as its value, or, if serde_json cannot read it (not UTF-8,
    /// a lone surrogate escape, too deep, not JSON), as a string of its text,
    /// so it stays recognisable. Either way it is written out
    /// (`json.to_string()`) as UTF-8 without a NUL byte, which PostgreSQL's
    /// `text` needs: a byte that is not UTF-8 becomes U+FFFD, the rest is
    /// kept, `\ud800` as written, NUL and control characters escaped.
    fn value_of(text: &[u8]) -> Value {
        serde_json::from_slice(text)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(text).into_owned()))
    }

    fn new(json: Value, reason: String, exclude: Option<&ExcludeTree>) -> Self {
        Self::hashed_as(json, None, reason, exclude)
    }

    /// A reject whose hash is taken over `hashed` (a reading of the record
    /// that could be parsed) rather than `json`, when given.
    fn hashed_as(
        json: Value,
        hashed: Option<&Value>,
        reason: String,
        exclude: Option<&ExcludeTree>,
    ) -> Self {
        let (mut canonical, _) = canonical::of_value(hashed.unwrap_or(&json), exclude);
        // A byte no JSON text holds keeps record and reason apart.
        canonical.push(0xff);
        canonical.extend_from_slice(reason.as_bytes());
        Self {
            content_hash: xxh3_128(&canonical).to_be_bytes(),
            json,
            reason,
        }
    }
}

impl RecordShape {
    /// # Errors
    /// The configuration key at fault (`key` or `hash_exclude`) and why: a key
    /// field or an exclusion is not a valid name or pointer, or two key fields
    /// map to one column.
    pub fn new(key: &[String], hash_exclude: &[String]) -> Result<Self, (&'static str, String)> {
        let key: Vec<KeyEntry> = key
            .iter()
            .map(|field| KeyEntry::from(field.as_str()))
            .collect();
        Self::with_key_entries(&key, hash_exclude)
    }

    /// Like [`RecordShape::new`], from the configuration's key entries
    /// (which may name their columns).
    ///
    /// # Errors
    /// As [`RecordShape::new`].
    pub fn with_key_entries(
        key: &[KeyEntry],
        hash_exclude: &[String],
    ) -> Result<Self, (&'static str, String)> {
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
        let key_segments = key
            .iter()
            .map(|field| json_pointer::segments(&field.pointer))
            .collect();
        Ok(Self {
            key,
            key_segments,
            exclude,
            tombstone: None,
        })
    }

    /// Records where `pointer` is `true` are read as tombstones.
    pub fn with_tombstone(self, pointer: &str) -> Self {
        Self {
            tombstone: Some(json_pointer::segments(pointer)),
            ..self
        }
    }

    pub fn key_fields(&self) -> &[KeyField] {
        &self.key
    }

    /// A record refused for `reason`, hashed with this job's `hash_exclude`
    /// left out, so a volatile field does not make it a new reject on every
    /// run.
    ///
    /// A record that is not JSON to serde_json (bytes that are not UTF-8, a
    /// lone surrogate escape) is kept as a string of its text; its hash is
    /// taken over the record read with those replaced by U+FFFD, so that
    /// `hash_exclude` still applies to it.
    pub fn reject(&self, text: &[u8], reason: String) -> Rejected {
        let json = Rejected::value_of(text);
        let readable = match &json {
            Value::String(_) => serde_json::from_str::<Value>(
                &raw_json::replace_surrogate_escapes(&String::from_utf8_lossy(text)),
            )
            .ok(),
            _ => None,
        };
        Rejected::hashed_as(json, readable.as_ref(), reason, Some(&self.exclude))
    }

    /// Reads one record from its JSON text (one element of a response whose
    /// syntax was checked): its key, its content hash and the text to store.
    /// `Err` holds the reason it cannot be stored.
    ///
    /// Most records are read straight from the text; the few the text
    /// reader declines (see [`canonical::of_members`]), and every record with a
    /// problem, go through a `serde_json::Value`, which gives the reason.
    ///
    /// The text need not be UTF-8, free of lone surrogate escapes or nested
    /// within serde_json's limit: a body with such a record was checked for
    /// its syntax alone (see `ResponseBody::parse`), and the text reader
    /// checks the rest of what a `Value` would refuse as it goes (see
    /// `read_text_directly`), so such a record is refused with the reason
    /// and its neighbours are read as usual.
    pub fn read_text(&self, text: &[u8]) -> Result<Record, String> {
        let mut record = match self.read_text_directly(text) {
            Some(record) => record,
            None => {
                let value: Value =
                    serde_json::from_slice(text).map_err(|e| unreadable(text, &e))?;
                self.read(&value)?
            }
        };
        // Only the JSON literal `true` makes a tombstone: `"true"`, `1` or
        // a missing field are content.
        record.tombstone = self.tombstone.as_ref().is_some_and(|segments| {
            raw_json::pointer(text, segments).is_some_and(|v| raw_json::trim(v) == b"true")
        });
        Ok(record)
    }

    /// The text reader: `None` for whatever it leaves to the `Value`.
    ///
    /// **Invariant:** it accepts nothing a `Value` refuses, given text whose
    /// syntax is checked (all it takes on trust). It checks the rest itself,
    /// since a record of a body that went the tolerant way was not checked
    /// for them: every escape is undone by serde_json (a lone surrogate
    /// fails there), the nesting is counted against [`raw_json::MAX_DEPTH`],
    /// and the text it stores and the key it reads are checked as UTF-8 (not
    /// taken unchecked: that is where a stray byte is refused). A
    /// randomized test feeds it records holding each of these.
    fn read_text_directly(&self, text: &[u8]) -> Option<Record> {
        // The record's members are read once, for the key and the hash.
        let text = raw_json::trim(text);
        let members: Vec<(&[u8], &[u8])> = raw_json::members(text)?.collect::<Option<_>>()?;
        let key = self.key_from_members(&members)?;
        let exclude = (!self.exclude.is_empty()).then_some(&self.exclude);
        let canonical = canonical::of_members(&members, exclude, text.len())?;
        let content_hash = xxh3_128(&canonical).to_be_bytes();
        // Without exclusions the canonical form is what is stored.
        let stored = match exclude {
            None => canonical,
            Some(_) => canonical::of_members(&members, None, text.len())?,
        };
        Some(Record {
            key_fingerprint: key_fingerprint(&key),
            content_hash,
            key,
            // Checked, not `from_utf8_unchecked`: every string of the record
            // is in `stored`, and this is where a byte that is not UTF-8 sends
            // the record to the `Value`, which refuses it.
            text: String::from_utf8(stored).ok()?,
            // The text reader declines such numbers.
            wide_number: false,
            tombstone: false,
        })
    }

    /// The key of a record refused for something else than its key (a NUL,
    /// bytes that are not UTF-8, a lone surrogate, deep nesting), when its
    /// text still yields one: the API returns that key, so a deletion step
    /// must not take it for gone.
    pub fn key_of_refused(&self, text: &[u8]) -> Option<Vec<String>> {
        let members: Vec<(&[u8], &[u8])> =
            raw_json::members(raw_json::trim(text))?.collect::<Option<_>>()?;
        self.key_from_members(&members)
    }

    /// The key as [`RecordShape::read`] finds it in a record object's
    /// members, or `None` for any key it would refuse (it says why).
    fn key_from_members(&self, members: &[(&[u8], &[u8])]) -> Option<Vec<String>> {
        self.key_segments
            .iter()
            .map(|segments| {
                let (first, rest) = segments.split_first()?;
                // The last of repeated keys, as in a Value (such a record
                // goes the slow way anyway).
                let (_, member) = members
                    .iter()
                    .rev()
                    .find(|(key, _)| *key == first.as_bytes())?;
                let value = raw_json::pointer(member, rest)?;
                let part = match *value.first()? {
                    b'"' => {
                        let inner = value.get(1..value.len() - 1)?;
                        if inner.contains(&b'\\') {
                            raw_json::unescape(inner)?
                        } else {
                            std::str::from_utf8(inner).ok()?.to_owned()
                        }
                    }
                    // Null, object, array: refused.
                    b'n' | b'{' | b'[' => return None,
                    b't' | b'f' => std::str::from_utf8(value).ok()?.to_owned(),
                    _ => {
                        let mut number = Vec::with_capacity(value.len() + 1);
                        raw_json::push_number(&mut number, value);
                        String::from_utf8(number).ok()?
                    }
                };
                (!part.is_empty() && !part.contains('\0')).then_some(part)
            })
            .collect()
    }

    /// Reads one record from a parsed value, as [`RecordShape::read_text`].
    pub fn read(&self, json: &Value) -> Result<Record, String> {
        let key = self.extract_key(json)?;
        let (canonical, saw_nul) = canonical::of_value(json, Some(&self.exclude));
        if saw_nul {
            return Err(
                "the record contains a NUL character (\\u0000), which PostgreSQL \
                        cannot store"
                    .to_owned(),
            );
        }
        let content_hash = xxh3_128(&canonical).to_be_bytes();
        // Without exclusions the canonical form is the record itself, written
        // as serde_json writes it (its maps are sorted): no second pass.
        let text = if self.exclude.is_empty() {
            String::from_utf8(canonical).expect("JSON written from a Value is UTF-8")
        } else {
            json.to_string()
        };
        Ok(Record {
            key_fingerprint: key_fingerprint(&key),
            content_hash,
            key,
            text,
            wide_number: holds_wide_number(json),
            tombstone: false,
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

fn parse_key(key: &[KeyEntry]) -> Result<Vec<KeyField>, String> {
    if key.is_empty() {
        return Err("at least one key field is needed".to_owned());
    }
    let key: Vec<KeyField> = key
        .iter()
        .map(KeyField::parse_entry)
        .collect::<Result<_, _>>()?;
    for (i, field) in key.iter().enumerate() {
        if let Some(other) = key[..i].iter().find(|other| other.column == field.column) {
            return Err(format!(
                "key fields `{}` and `{}` map to one column, `{}`",
                other.name, field.name, field.column
            ));
        }
        // SQLite compares column names without case and PostgreSQL (quoted)
        // with it: one rule for both, so a configuration works on either.
        if let Some(other) = key[..i].iter().find(|other| {
            other
                .column
                .as_str()
                .eq_ignore_ascii_case(field.column.as_str())
        }) {
            return Err(format!(
                "key columns `{}` and `{}` differ only by case; SQLite takes them for one \
                 column, so apisync refuses them on every store: name one column otherwise \
                 ({{ field = \"{}\", column = \"...\" }})",
                other.column, field.column, field.name
            ));
        }
    }
    Ok(key)
}

/// Whether a number in `value` is beyond PostgreSQL's `numeric`.
fn holds_wide_number(value: &Value) -> bool {
    match value {
        Value::Number(n) => !raw_json::fits_numeric(n.to_string().as_bytes()),
        Value::Array(items) => items.iter().any(holds_wide_number),
        Value::Object(map) => map.values().any(holds_wide_number),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
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

/// Length-prefixed parts, so `["ab", "c"]` and `["a", "bc"]` differ. The
/// same for a key read from a record and for one read back from the table.
pub fn key_fingerprint(key: &[String]) -> u128 {
    let mut bytes = Vec::with_capacity(key.iter().map(|k| k.len() + 8).sum());
    for part in key {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    xxh3_128(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::Fuzz;
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

    /// JSON text for a random record, spelled in random ways: whitespace,
    /// key order, escapes that need not be, numbers as written.
    struct RandomJson {
        rng: fastrand::Rng,
        text: String,
        /// Now and then a [`RandomJson::FLAW`] in a string or key, and
        /// nesting around serde_json's limit.
        flaws: bool,
    }

    impl RandomJson {
        /// Stands for a flaw, put in by [`spoil`] once the text is written.
        const FLAW: &str = "\u{e000}";
        const KEYS: [&str; 9] = ["id", "name", "a", "B", "é", "meta", "items", "x y", "_"];
        const CHARS: [&str; 12] = [
            "a", "Z", " ", "\"", "\\", "/", "\n", "\u{1}", "é", "😀", "\u{7f}", "\u{0}",
        ];
        const NUMBERS: [&str; 11] = [
            "0",
            "-0",
            "1.50",
            "1E+5",
            "-2.5E-3",
            "3e7",
            "12345678901234567890123",
            "7",
            "0.0",
            "1e400",
            "42",
        ];

        fn space(&mut self) {
            for _ in 0..self.rng.usize(0..3) {
                self.text
                    .push([' ', '\n', '\t', '\r'][self.rng.usize(0..4)]);
            }
        }

        fn string(&mut self, content: &str) {
            self.text.push('"');
            for c in content.chars() {
                match c {
                    '"' => self.text.push_str("\\\""),
                    '\\' => self.text.push_str("\\\\"),
                    c if (c as u32) < 0x20 => self.text.push_str(&format!("\\u{:04x}", c as u32)),
                    '/' if self.rng.bool() => self.text.push_str("\\/"),
                    c if self.rng.u8(0..40) == 0 => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            self.text.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }

        fn random_string(&mut self) {
            let content: String = (0..self.rng.usize(0..6))
                .map(|_| {
                    if self.flaws && self.rng.u8(0..10) == 0 {
                        return Self::FLAW;
                    }
                    // NUL is rare, so most records are storable.
                    let pick = self.rng.usize(0..Self::CHARS.len() * 8);
                    Self::CHARS.get(pick).copied().unwrap_or("k")
                })
                .collect();
            self.string(&content);
        }

        fn value(&mut self, depth: usize) {
            self.space();
            match self.rng.usize(0..if depth > 3 { 6 } else { 8 }) {
                0 => self.text.push_str("null"),
                1 => self.text.push_str(["true", "false"][self.rng.usize(0..2)]),
                2 | 3 => self
                    .text
                    .push_str(Self::NUMBERS[self.rng.usize(0..Self::NUMBERS.len())]),
                4 | 5 => self.random_string(),
                6 => {
                    self.text.push('[');
                    for i in 0..self.rng.usize(0..4) {
                        if i > 0 {
                            self.text.push(',');
                        }
                        self.value(depth + 1);
                    }
                    self.space();
                    self.text.push(']');
                }
                _ => self.object(depth + 1),
            }
            self.space();
        }

        fn object(&mut self, depth: usize) {
            self.text.push('{');
            for i in 0..self.rng.usize(0..6) {
                if i > 0 {
                    self.text.push(',');
                }
                self.space();
                // Now and then a key twice: the last one counts.
                let key = if self.flaws && self.rng.u8(0..12) == 0 {
                    Self::FLAW
                } else {
                    Self::KEYS[self.rng.usize(0..Self::KEYS.len())]
                };
                self.string(key);
                self.space();
                self.text.push(':');
                self.value(depth);
            }
            self.space();
            self.text.push('}');
        }

        /// Mostly records with a usable key, so the direct reader is
        /// exercised; sometimes anything at all.
        fn record(&mut self) -> String {
            self.text.clear();
            self.space();
            if self.rng.u8(0..4) == 0 {
                self.object(0);
            } else {
                let id = self.rng.u32(1..1000);
                let flaw = if self.flaws && self.rng.u8(0..8) == 0 {
                    Self::FLAW
                } else {
                    ""
                };
                self.text.push_str(&format!(
                    "{{\"id\": {id}, \"meta\": {{\"a\": \"r{id}{flaw}\"}},"
                ));
                if self.flaws && self.rng.u8(0..8) == 0 {
                    // The record is one level: 121 to 131 in all.
                    let levels = self.rng.usize(120..=130);
                    self.text.push_str("\"deep\": ");
                    self.text.push_str(&"[".repeat(levels));
                    self.text.push_str(&"]".repeat(levels));
                    self.text.push(',');
                }
                self.string("rest");
                self.text.push(':');
                self.object(1);
                self.text.push('}');
            }
            std::mem::take(&mut self.text)
        }
    }

    fn outcome(
        result: Result<Record, String>,
    ) -> Result<(Vec<String>, u128, ContentHash, String), String> {
        result.map(|r| (r.key, r.key_fingerprint, r.content_hash, r.text))
    }

    #[test]
    fn reading_the_text_gives_what_reading_the_value_gives() {
        let shapes = [
            shape(&["id"], &[]),
            shape(&["id", "/meta/a"], &["/meta/B", "/items/1", "/é"]),
        ];
        let fuzz = Fuzz::new(
            "reading_the_text_gives_what_reading_the_value_gives",
            7,
            20_000,
        );
        let mut random = RandomJson {
            rng: fuzz.rng.clone(),
            text: String::new(),
            flaws: false,
        };
        let (mut direct, mut total) = (0, 0);
        for _ in 0..fuzz.iterations {
            let text = random.record();
            let value: Value = match serde_json::from_str(&text) {
                Ok(value) => value,
                // 1e400 and friends: not JSON serde_json accepts either way.
                Err(_) => continue,
            };
            for s in &shapes {
                total += 1;
                direct += usize::from(s.read_text_directly(text.as_bytes()).is_some());
                assert_eq!(
                    outcome(s.read_text(text.as_bytes())),
                    outcome(s.read(&value)),
                    "record {text}"
                );
            }
        }
        // Most records take the direct way: the comparison is not all fallbacks.
        assert!(direct * 3 >= total, "{direct} of {total} read directly");
    }

    #[test]
    fn ordinary_records_are_read_without_a_value() {
        let s = shape(&["id"], &["/meta/request_id"]);
        let text = br#"{"id": 7, "name": "caf\u00e9", "meta": {"request_id": "r1", "v": 2}}"#;
        let record = s.read_text_directly(text).expect("read directly");
        assert_eq!(record.key, vec!["7"]);
        assert_eq!(
            record.text,
            r#"{"id":7,"meta":{"request_id":"r1","v":2},"name":"café"}"#
        );
        for declined in [
            &br#"{"id": 1, "a": 1, "a": 2}"#[..],
            br#"{"id": 1, "\u0061": 1}"#,
            br#"{"id": 1, "note": "a\u0000b"}"#,
            br#"{"id": null}"#,
        ] {
            assert!(s.read_text_directly(declined).is_none(), "{declined:?}");
        }
    }

    /// `text` with each [`RandomJson::FLAW`] replaced by something a body
    /// checked only for its syntax may hold in a string: mostly what
    /// serde_json refuses, sometimes what only looks like it.
    fn spoil(text: &str, rng: &mut fastrand::Rng) -> Vec<u8> {
        const FLAWS: [&[u8]; 11] = [
            b"\xff",
            b"\xc3",
            b"a\xc3(",
            b"\xed\xa0\x80",
            b"\xc0\x80",
            br"\ud800",
            br"\uDFFF",
            br"\ud800\u0041",
            br"\\ud800",
            br"\ud83d\ude00",
            "😀".as_bytes(),
        ];
        let mut out = Vec::with_capacity(text.len());
        for (i, piece) in text.split(RandomJson::FLAW).enumerate() {
            if i > 0 {
                out.extend_from_slice(FLAWS[rng.usize(0..FLAWS.len())]);
            }
            out.extend_from_slice(piece.as_bytes());
        }
        out
    }

    #[test]
    fn the_text_reader_accepts_nothing_a_value_refuses() {
        // Records as a body that went the tolerant way holds them: the syntax
        // checked, nothing else.
        let shapes = [
            shape(&["id"], &[]),
            shape(&["id", "/meta/a"], &["/meta/B", "/items/1", "/é", "/deep"]),
        ];
        let mut fuzz = Fuzz::new(
            "the_text_reader_accepts_nothing_a_value_refuses",
            11,
            10_000,
        );
        let mut random = RandomJson {
            rng: fastrand::Rng::with_seed(fuzz.rng.u64(..)),
            text: String::new(),
            flaws: true,
        };
        let rng = &mut fuzz.rng;
        let (mut refused, mut read) = (0, 0);
        for _ in 0..fuzz.iterations {
            let text = spoil(&random.record(), rng);
            let shown = String::from_utf8_lossy(&text);
            assert_eq!(raw_json::check_syntax(&text), Ok(()), "{shown}");
            let value = serde_json::from_slice::<Value>(&text);
            for s in &shapes {
                let outcome_of_text = outcome(s.read_text(&text));
                let Ok(value) = &value else {
                    refused += 1;
                    let reason = outcome_of_text.expect_err(&shown);
                    assert!(
                        [
                            "the record is not valid UTF-8 (byte 0x",
                            "the record holds a lone UTF-16 surrogate escape `\\",
                            "the record nests deeper than 127 levels (level 128 opens at offset ",
                        ]
                        .iter()
                        .any(|start| reason.starts_with(start)),
                        "{reason}: {shown}"
                    );
                    // Kept as a string of its text, which PostgreSQL's `text` takes.
                    let kept = s.reject(&text, reason).json.to_string();
                    assert!(!kept.contains('\0'), "{kept}");
                    let kept: Value = serde_json::from_str(&kept).unwrap();
                    assert_eq!(kept, Value::String(shown.clone().into_owned()));
                    continue;
                };
                read += usize::from(outcome_of_text.is_ok());
                assert_eq!(outcome_of_text, outcome(s.read(value)), "record {shown}");
            }
        }
        // Both verdicts are common: the test is not all refusals.
        let enough = fuzz.iterations / 5;
        assert!(
            refused >= enough && read >= enough,
            "{refused} refused, {read} read"
        );
    }

    /// Arbitrary bytes, mostly spoilt records: the text reader never
    /// panics, and on text whose syntax is checked (all `ResponseBody`
    /// hands it) it gives what the `Value` reader gives, or refuses
    /// where serde_json refuses.
    #[test]
    fn fuzz_arbitrary_bytes_read_the_same_both_ways_or_are_refused() {
        let shapes = [
            shape(&["id"], &[]),
            shape(&["id", "/meta/a"], &["/meta/B", "/items/1", "/é", "/deep"]),
            shape(&["/rest/a"], &["/id"]),
        ];
        let mut fuzz = Fuzz::new(
            "fuzz_arbitrary_bytes_read_the_same_both_ways_or_are_refused",
            13,
            20_000,
        );
        let mut random = RandomJson {
            rng: fastrand::Rng::with_seed(fuzz.rng.u64(..)),
            text: String::new(),
            flaws: true,
        };
        let (mut compared, mut read) = (0, 0);
        for _ in 0..fuzz.iterations {
            let text = match fuzz.rng.u8(0..10) {
                0 => fuzz.bytes(48),
                1 => spoil(&random.record(), &mut fuzz.rng),
                _ => {
                    let record = spoil(&random.record(), &mut fuzz.rng);
                    fuzz.mutate(&record)
                }
            };
            let shown = String::from_utf8_lossy(&text);
            let checked = raw_json::check_syntax(&text).is_ok();
            let value = serde_json::from_slice::<Value>(&text);
            for s in &shapes {
                let by_text = outcome(s.read_text(&text));
                let rejected = s.reject(&text, "fuzz".into());
                assert!(!rejected.json.to_string().contains('\0'), "{shown}");
                if !checked {
                    continue;
                }
                compared += 1;
                match &value {
                    Ok(value) => {
                        read += usize::from(by_text.is_ok());
                        assert_eq!(by_text, outcome(s.read(value)), "record {shown}");
                    }
                    Err(e) => assert!(by_text.is_err(), "serde_json refuses ({e}): {shown}"),
                }
            }
        }
        // The comparison is not vacuous: many inputs stay JSON.
        assert!(
            compared >= fuzz.iterations / 4 && read >= fuzz.iterations / 10,
            "{compared} compared, {read} read"
        );
    }

    /// Found by the fuzz test above: a number whose exponent holds a byte
    /// below `0` panicked (`attempt to subtract with overflow`) in
    /// `raw_json::fits_numeric` in debug builds when the text had not been
    /// checked first.
    #[test]
    fn an_exponent_with_a_stray_byte_is_not_a_panic() {
        let s = shape(&["id"], &[]);
        for text in [
            &br#"{"id": 1, "n": 1e-+5}"#[..],
            br#"{"id": 1, "n": 2E+"}"#,
            br#"{"id": 1, "n": 3e-,"x": 1}"#,
        ] {
            let _ = s.read_text(text);
        }
        assert!(crate::raw_json::fits_numeric(b"1e-+5"));
    }
}
