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

#[cfg(test)]
mod tests {
    use super::*;

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
