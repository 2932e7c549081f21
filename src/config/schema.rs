//! The JSON Schema of the configuration (`apisync config-schema`, checked in
//! as `config/apisync.schema.json`), derived from the settings types: their
//! doc comments are the descriptions, `deny_unknown_fields` makes
//! `additionalProperties: false`, serde defaults are the defaults. Editors
//! that read a `#:schema` comment (taplo, Even Better TOML) complete and
//! check `apisync.toml` with it.
//!
//! The types with a hand-written `Deserialize` get a hand-written schema
//! here; durations are written as text (`"30s"`), also in defaults.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::{Pagination, RateLimit, ScalarString, Settings, Threshold};
use crate::record::KeyEntry;

/// The schema, as pretty JSON with a trailing newline.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(Settings).to_value();
    durations_as_text(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// A default that serde wrote as a `Duration` (`{"secs": 30, "nanos": 0}`)
/// becomes the text the configuration takes (`"30s"`).
fn durations_as_text(value: &mut Value) {
    match value {
        Value::Object(members) => {
            if let Some(default) = members.get_mut("default")
                && let Some(duration) = as_duration(default)
            {
                *default = Value::String(humantime::format_duration(duration).to_string());
            }
            members.values_mut().for_each(durations_as_text);
        }
        Value::Array(items) => items.iter_mut().for_each(durations_as_text),
        _ => {}
    }
}

fn as_duration(value: &Value) -> Option<std::time::Duration> {
    let members = value.as_object()?;
    if members.len() != 2 {
        return None;
    }
    let secs = members.get("secs")?.as_u64()?;
    let nanos = u32::try_from(members.get("nanos")?.as_u64()?).ok()?;
    Some(std::time::Duration::new(secs, nanos))
}

/// A duration written as text.
pub(super) fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "A duration such as \"30s\", \"5m\", \"1h 30m\" or \"7d\"."
    })
}

/// A byte count, or a size with a unit.
pub(super) fn byte_size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string", "description": "A size such as \"512KiB\" or \"64MiB\"." }
        ]
    })
}

impl JsonSchema for Threshold {
    fn schema_name() -> Cow<'static, str> {
        "Threshold".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A count (50) or a share (\"10%\").",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*%\\s*$" }
            ]
        })
    }
}

impl JsonSchema for RateLimit {
    fn schema_name() -> Cow<'static, str> {
        "RateLimit".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Requests per period: \"10/s\", \"600/m\", \"5000/h\" or \"1/5s\".",
            "pattern": "^\\s*[0-9]+\\s*/\\s*\\S+\\s*$"
        })
    }
}

impl JsonSchema for ScalarString {
    fn schema_name() -> Cow<'static, str> {
        "ScalarString".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "integer", "number", "boolean"] })
    }
}

impl JsonSchema for KeyEntry {
    fn schema_name() -> Cow<'static, str> {
        "KeyEntry".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A field name (\"id\"), a JSON pointer (\"/meta/id\"), or a field \
                            with its column ({ field = \"/@id\", column = \"at_id\" }).",
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": {
                        "field": { "type": "string" },
                        "column": { "type": "string" }
                    },
                    "required": ["field", "column"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// `[jobs.pagination]` is read flat (every kind's keys in one table, see
/// `pagination.rs`), so its schema is that table's.
impl JsonSchema for Pagination {
    fn schema_name() -> Cow<'static, str> {
        "Pagination".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        super::pagination::RawPagination::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_defaults_are_written_as_text() {
        let schema: Value = serde_json::from_str(&json_schema()).unwrap();
        let timeout = &schema["properties"]["shutdown_timeout"];
        assert_eq!(timeout["default"], "10s", "{timeout}");
        assert_eq!(timeout["type"], "string");
        assert!(
            timeout["description"].as_str().unwrap().contains("SIGTERM"),
            "doc comments are the descriptions: {timeout}"
        );
        assert_eq!(schema["additionalProperties"], false);
    }
}
