//! Keeps secrets out of everything that leaves the process.
//!
//! Values expanded from `${VAR}` references and the database password are
//! replaced by `[redacted]` in errors before they are logged, printed or stored
//! in the runs table. This is the safety net; the first line of defence is not
//! printing URLs with their query strings or header values at all.

use std::fmt;

const MASK: &str = "[redacted]";

/// Values shorter than this are not treated as secrets: masking every `1` or
/// `eu` in a message would make it unreadable and protect nothing.
const MIN_SECRET_LEN: usize = 4;

#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>, password: Option<String>) -> Self {
        let mut secrets: Vec<String> = values
            .into_iter()
            .chain(password)
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .flat_map(|secret| {
                // Also as it travels in a query string or a URL path, where an
                // API may echo it back.
                let form: String =
                    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                let mut path_url = url::Url::parse("http://h/").expect("a valid base URL");
                path_url
                    .path_segments_mut()
                    .expect("an http URL has path segments")
                    .push(&secret);
                let path = path_url.path()[1..].to_owned();
                [secret, form, path]
            })
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.sort();
        secrets.dedup();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

/// Never prints the secrets themselves.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_longest_first() {
        let redactor = Redactor::new(
            vec![
                "token-123".to_owned(),
                "token-123-extended".to_owned(),
                "ab".to_owned(),
            ],
            Some("hunter22".to_owned()),
        );
        assert_eq!(
            redactor.redact("sent token-123-extended and token-123 with hunter22 to ab"),
            "sent [redacted] and [redacted] with [redacted] to ab"
        );
        assert_eq!(format!("{redactor:?}"), "Redactor(3 secrets)");
    }

    #[test]
    fn encoded_forms_are_masked_too() {
        let redactor = Redactor::new(vec!["ab+c/d= e".to_owned()], None);
        for echoed in ["ab%2Bc%2Fd%3D+e", "ab+c%2Fd=%20e", "ab+c/d= e"] {
            assert_eq!(
                redactor.redact(&format!("uri={echoed}")),
                "uri=[redacted]",
                "{echoed}"
            );
        }
    }
}
