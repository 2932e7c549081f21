//! RFC 6901 JSON pointers as they appear in the configuration (`/data`,
//! `/meta/request_id`, `""` for the whole document).

/// Checks the syntax: empty, or `/`-separated segments where `~` is only
/// followed by `0` or `1`.
pub fn validate(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() {
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err(format!(
            "`{pointer}` is not a JSON pointer: it must be empty or start with `/`"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "`{pointer}` is not a JSON pointer: `~` must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

/// The unescaped segments of a valid pointer; none for `""`.
pub fn segments(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer[1..]
        .split('/')
        .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The pointer of `segments`, escaped: the inverse of [`segments`].
pub fn join(segments: &[String]) -> String {
    segments
        .iter()
        .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Sets the member `pointer` names in `document` to `value`, creating the
/// objects on the way (a request body template, a cursor or `since` put
/// into it). A segment that meets something other than an object replaces
/// it with one: the configuration said that member holds the value.
pub fn set(document: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut at = document;
    for segment in segments(pointer) {
        if !at.is_object() {
            *at = serde_json::Value::Object(serde_json::Map::new());
        }
        at = at
            .as_object_mut()
            .expect("made an object above")
            .entry(segment)
            .or_insert(serde_json::Value::Null);
    }
    *at = value;
}

/// A field name (`cursor`) or a pointer (`/page/cursor`) as a pointer, the
/// way `key` entries are read.
pub fn of_field(field: &str) -> String {
    if field.starts_with('/') {
        field.to_owned()
    } else {
        join(&[field.to_owned()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_the_members_on_the_way() {
        let mut body = serde_json::json!({ "query": { "status": "open" }, "page": 3 });
        set(&mut body, "/page/cursor", serde_json::json!("c2"));
        set(&mut body, "/query/updated_at", serde_json::json!("gte.x"));
        set(&mut body, &of_field("limit"), serde_json::json!(50));
        assert_eq!(
            body,
            serde_json::json!({
                "query": { "status": "open", "updated_at": "gte.x" },
                "page": { "cursor": "c2" },
                "limit": 50,
            })
        );
        let mut whole = serde_json::Value::Null;
        set(&mut whole, "", serde_json::json!(1));
        assert_eq!(whole, serde_json::json!(1));
        assert_eq!(of_field("/a/b"), "/a/b");
        assert_eq!(of_field("a/b"), "/a~1b");
    }

    #[test]
    fn pointers_are_validated() {
        for ok in ["", "/", "/data", "/a~1b/c~0d", "/items/0"] {
            assert!(validate(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in ["data", "/a~2", "/a~"] {
            assert!(validate(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn segments_are_unescaped() {
        assert_eq!(segments("/a~1b/c~0d"), vec!["a/b", "c~d"]);
        assert!(segments("").is_empty());
        assert_eq!(segments("/"), vec![""]);
        for pointer in ["", "/", "/a~1b/c~0d", "/items/0"] {
            assert_eq!(join(&segments(pointer)), pointer);
        }
    }
}
