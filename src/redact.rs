//! Keeps secrets out of everything that leaves the process, and control
//! characters off the terminal.
//!
//! The first line of defence is structural: header values, query values, the
//! userinfo of URLs and the request body are never printed ([`display_url`]
//! shows a URL without userinfo and with its query values masked). The
//! [`Redactor`] is the safety net on every path out of the process (stdout,
//! stderr through the log writer, `apisync.runs.error`, `apisync.rejects.reason`,
//! `check`, `runs`, `rejects`): it replaces the secrets by `[redacted]`.
//!
//! The secrets are the values of `${VAR}` references, header values written in
//! the file (and the credential after `Bearer `, `Basic ` …, with a `Basic`
//! credential's decoded `user:password` and password), the userinfo of
//! `request.url` (and its `Basic` form, which is how it travels), and the
//! database password.
//!
//! An API may echo a secret escaped, so a text is searched as it stands and
//! also decoded: JSON escapes (`\/`, `\uXXXX`, surrogate pairs), `\xHH`,
//! percent-encoding (with `+` read both as itself and as a space), and HTML
//! character references (`&#x2F;`, `&#47;`, `&sol;`, `&amp;` …), one and two
//! layers deep. A match in decoded text masks the original characters it
//! came from.
//!
//! Values of at least four characters are masked wherever they occur.
//! Shorter ones (`${REGION}` = `eu`) are masked only where they stand as a
//! whole token: with a text boundary, whitespace, a quote, a bracket, `,` or
//! `;` on each side. So `"eu"` and `Bearer eu` are masked, but `europe`,
//! `pages=1` and `eu-west` are not: masking every `1` would make every
//! message unreadable and protect nothing.
//!
//! Where a text is cut (excerpts of bodies, of a `Link` header, of a value),
//! it is redacted first and cut after ([`Redactor::excerpt`]), so that a cut
//! never leaves the prefix of a secret.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

const MASK: &str = "[redacted]";

/// Values shorter than this are masked only as whole tokens (see the module doc).
const MIN_ANYWHERE_LEN: usize = 4;

/// How many secrets learned at run time (tokens) are kept: a token
/// renewed every few minutes must not grow the list for the life of a
/// daemon, and an old token is expired anyway.
const MAX_LEARNED: usize = 64;

#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
    /// Secrets met at run time (access tokens, rotated refresh tokens),
    /// shared by every clone of this redactor: the log writer, the runs
    /// table and `check` all hold clones of the configuration's one.
    learned: std::sync::Arc<std::sync::RwLock<std::collections::VecDeque<Secret>>>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Secret {
    text: String,
    /// Masked only where it stands as a whole token.
    whole_token: bool,
}

impl Redactor {
    pub fn new(values: impl IntoIterator<Item = String>, password: Option<String>) -> Self {
        let mut secrets: Vec<Secret> = values
            .into_iter()
            .chain(password)
            .filter(|s| !s.is_empty())
            .map(|text| Secret {
                whole_token: text.chars().count() < MIN_ANYWHERE_LEN,
                text,
            })
            .collect();
        secrets.sort();
        secrets.dedup();
        Self {
            secrets,
            learned: Default::default(),
        }
    }

    /// Masks `value` from now on, here and in every clone of this redactor.
    pub fn learn(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        let secret = Secret {
            whole_token: value.chars().count() < MIN_ANYWHERE_LEN,
            text: value.to_owned(),
        };
        let mut learned = self
            .learned
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A secret learned again moves to the back: the ones in use stay.
        if let Some(at) = learned.iter().position(|known| *known == secret) {
            if at + 1 == learned.len() {
                return;
            }
            learned.remove(at);
        }
        if learned.len() >= MAX_LEARNED {
            learned.pop_front();
        }
        learned.push_back(secret);
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let ranges = self.ranges(text);
        splice(text, &ranges, 0)
    }

    /// [`Redactor::redact`], then [`printable`]: for a terminal or a log line.
    pub fn clean(&self, text: &str) -> String {
        printable(&self.redact(text)).into_owned()
    }

    /// At most `chars` characters of `text` from byte `start` on, redacted
    /// before it is cut (a secret that begins before `start` or runs past
    /// the cut is still masked whole, and the mask itself is not cut), with
    /// `…` when something was cut.
    pub fn excerpt(&self, text: &str, start: usize, chars: usize) -> String {
        let start = floor_char_boundary(text, start);
        let ranges = self.ranges(text);
        let redacted = splice(text, &ranges, start);
        let mut cut: String = redacted.chars().take(chars).collect();
        // A mask is not cut in two.
        let rest = &redacted[cut.len()..];
        if let Some(k) =
            (1..MASK.len()).find(|&k| cut.ends_with(&MASK[..k]) && rest.starts_with(&MASK[k..]))
        {
            cut.push_str(&MASK[k..]);
        }
        if cut.len() < redacted.len() {
            cut.push('…');
        }
        cut
    }

    /// The byte ranges of `text` to mask, sorted and merged.
    fn ranges(&self, text: &str) -> Vec<Range<usize>> {
        let learned = self
            .learned
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if (self.secrets.is_empty() && learned.is_empty()) || text.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        let secrets: Vec<&Secret> = self.secrets.iter().chain(learned.iter()).collect();
        let raw = Decoded::identity(text);
        find_in(&secrets, &raw, &mut found);
        if text.contains(['\\', '%', '&', '+']) {
            let once = raw.decode(false);
            find_in(&secrets, &once, &mut found);
            find_in(&secrets, &once.decode(false), &mut found);
            if text.contains('+') {
                find_in(&secrets, &raw.decode(true), &mut found);
            }
        }
        found.sort_by_key(|r| (r.start, r.end));
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
        for range in found {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        merged
    }
}

fn find_in(secrets: &[&Secret], decoded: &Decoded, found: &mut Vec<Range<usize>>) {
    for secret in secrets {
        for (at, _) in decoded.text.match_indices(secret.text.as_str()) {
            let end = at + secret.text.len();
            if secret.whole_token
                && !(decoded.text[..at]
                    .chars()
                    .next_back()
                    .is_none_or(is_delimiter)
                    && decoded.text[end..].chars().next().is_none_or(is_delimiter))
            {
                continue;
            }
            found.push(decoded.original(at..end));
        }
    }
}

/// Never prints the secrets themselves.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// What ends a token, for short secrets.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '(' | ')' | '<' | '>' | '[' | ']' | '{' | '}' | ',' | ';'
        )
}

/// `text` from byte `start` on, with `ranges` replaced by the mask; a range
/// that began before `start` is masked from `start`.
fn splice(text: &str, ranges: &[Range<usize>], start: usize) -> String {
    let mut out = String::with_capacity(text.len() - start);
    let mut at = start;
    for range in ranges {
        if range.end <= at {
            continue;
        }
        out.push_str(&text[at..range.start.max(at)]);
        out.push_str(MASK);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A text with escapes decoded, and where each of its characters came from.
struct Decoded {
    text: String,
    /// Per character: its byte offset in `text` and the byte range of the
    /// original text it was decoded from.
    spans: Vec<(usize, Range<usize>)>,
}

impl Decoded {
    fn identity(text: &str) -> Self {
        let spans = text
            .char_indices()
            .map(|(i, c)| (i, i..i + c.len_utf8()))
            .collect();
        Self {
            text: text.to_owned(),
            spans,
        }
    }

    /// The original byte range of the decoded bytes `range`.
    fn original(&self, range: Range<usize>) -> Range<usize> {
        let first = self.spans.partition_point(|(at, _)| *at < range.start);
        let last = self.spans.partition_point(|(at, _)| *at < range.end) - 1;
        self.spans[first].1.start..self.spans[last].1.end
    }

    /// One more layer of escapes decoded; `plus_is_space` reads `+` as a
    /// space (form encoding).
    fn decode(&self, plus_is_space: bool) -> Self {
        let chars: Vec<char> = self.text.chars().collect();
        let mut text = String::with_capacity(self.text.len());
        let mut spans = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let (c, used) = decode_one(&chars[i..], plus_is_space).unwrap_or((chars[i], 1));
            let span = self.spans[i].1.start..self.spans[i + used - 1].1.end;
            spans.push((text.len(), span));
            text.push(c);
            i += used;
        }
        Self { text, spans }
    }
}

/// The character an escape at the start of `s` stands for, and how many
/// characters the escape takes; `None` if `s` does not start with one.
fn decode_one(s: &[char], plus_is_space: bool) -> Option<(char, usize)> {
    let hex = |from: usize, len: usize| -> Option<u32> {
        let digits = s.get(from..from + len)?;
        digits
            .iter()
            .try_fold(0u32, |n, c| Some(n * 16 + c.to_digit(16)?))
    };
    match s[0] {
        '+' if plus_is_space => Some((' ', 1)),
        '\\' => match s.get(1)? {
            'u' => {
                let unit = hex(2, 4)?;
                if (0xD800..0xDC00).contains(&unit)
                    && s.get(6) == Some(&'\\')
                    && s.get(7) == Some(&'u')
                    && let Some(low) = hex(8, 4).filter(|low| (0xDC00..0xE000).contains(low))
                {
                    let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    return Some((char::from_u32(c)?, 12));
                }
                Some((char::from_u32(unit).unwrap_or('\u{fffd}'), 6))
            }
            'x' => Some((char::from_u32(hex(2, 2)?)?, 4)),
            'n' => Some(('\n', 2)),
            'r' => Some(('\r', 2)),
            't' => Some(('\t', 2)),
            'b' => Some(('\u{8}', 2)),
            'f' => Some(('\u{c}', 2)),
            c @ ('/' | '\\' | '"' | '\'') => Some((*c, 2)),
            _ => None,
        },
        '%' => {
            // A UTF-8 sequence of one to four `%XX`.
            let first = hex(1, 2)? as u8;
            let len = match first {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => return None,
            };
            let mut bytes = vec![first];
            for k in 1..len {
                if s.get(3 * k) != Some(&'%') {
                    return None;
                }
                bytes.push(hex(3 * k + 1, 2)? as u8);
            }
            let c = std::str::from_utf8(&bytes).ok()?.chars().next()?;
            Some((c, 3 * len))
        }
        '&' => {
            let end = s.iter().take(12).position(|c| *c == ';')?;
            let body: String = s[1..end].iter().collect();
            let c = if let Some(hex) = body.strip_prefix("#x").or(body.strip_prefix("#X")) {
                char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
            } else if let Some(decimal) = body.strip_prefix('#') {
                char::from_u32(decimal.parse().ok()?)?
            } else {
                match body.as_str() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    "sol" => '/',
                    "plus" => '+',
                    "equals" => '=',
                    "percnt" => '%',
                    "colon" => ':',
                    "num" => '#',
                    "dollar" => '$',
                    "lowbar" => '_',
                    "period" => '.',
                    "bsol" => '\\',
                    _ => return None,
                }
            };
            Some((c, end + 1))
        }
        _ => None,
    }
}

/// `text` with the characters that would act on a terminal written as
/// escapes instead: control characters (C0, DEL, C1: ESC, BEL, CR, a newline
/// inside a one-line message …) and the Unicode bidirectional overrides,
/// which reorder what a reader sees.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_printable(&mut out, c);
    }
    Cow::Owned(out)
}

/// Whether [`printable`] escapes `c`.
pub fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Pushes `c`, escaped when [`needs_escape`] says so.
pub fn push_printable(out: &mut String, c: char) {
    use std::fmt::Write;
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && needs_escape(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A URL for messages and logs: no userinfo, no fragment, and each query
/// value replaced by `*` (names kept: `?page=*&api_key=*`). A text that is
/// not a URL is cut at its `?` or `#`, and anything up to an `@` in its
/// authority is dropped.
pub fn display_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && parsed.has_host()
    {
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_fragment(None);
        let names: Vec<String> = parsed.query_pairs().map(|(n, _)| n.into_owned()).collect();
        let mut out = parsed
            .as_str()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !names.is_empty() {
            out.push('?');
            let pairs: Vec<String> = names
                .iter()
                .map(|name| {
                    let name: String =
                        url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
                    format!("{name}=*")
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        return out;
    }
    let mut out = url.split(['?', '#']).next().unwrap_or_default().to_owned();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..]
            .find('/')
            .map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            out.replace_range(authority_start..authority_start + at + 1, "");
        }
    }
    out
}

/// Standard base64 with padding, for the `Basic` form of a credential.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard or URL-safe base64, padded or not; `None` if it is not.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        Redactor::new(values.iter().map(|s| s.to_string()), None)
    }

    #[test]
    fn learned_secrets_are_masked_by_every_clone_and_bounded() {
        let config = redactor(&["configured-secret"]);
        let log_writer = config.clone();
        config.learn("eyJ-access-token-1");
        assert_eq!(
            log_writer.redact("token eyJ-access-token-1 and configured-secret"),
            "token [redacted] and [redacted]"
        );
        config.learn("in-use-token-kept");
        for n in 0..MAX_LEARNED {
            config.learn(&format!("later-token-{n}"));
            // A token in use is learned again on every request.
            config.learn("in-use-token-kept");
        }
        assert_eq!(log_writer.redact("in-use-token-kept"), "[redacted]");
        assert_eq!(
            log_writer.redact("eyJ-access-token-1"),
            "eyJ-access-token-1",
            "the oldest learned secret makes room"
        );
        assert_eq!(log_writer.redact("later-token-3"), "[redacted]");
        assert_eq!(log_writer.redact("configured-secret"), "[redacted]");
    }

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
            "sent [redacted] and [redacted] with [redacted] to [redacted]"
        );
        assert_eq!(format!("{redactor:?}"), "Redactor(4 secrets)");
    }

    #[test]
    fn encoded_forms_are_masked_too() {
        let redactor = redactor(&["ab+c/d= e"]);
        for echoed in ["ab%2Bc%2Fd%3D+e", "ab+c%2Fd=%20e", "ab+c/d= e"] {
            assert_eq!(
                redactor.redact(&format!("uri={echoed}")),
                "uri=[redacted]",
                "{echoed}"
            );
        }
    }

    #[test]
    fn escaped_echoes_are_masked() {
        let secret = "aB3+/xYz/9Q==";
        let redactor = redactor(&[secret]);
        let echoes = [
            // PHP and Java escape `/`.
            r"aB3+\/xYz\/9Q==",
            // Encoders that escape any character as `\uXXXX`.
            r"\u0061B3\u002b\u002fxYz/9Q\u003d\u003D",
            "aB3+&#x2F;xYz&#47;9Q&#61;&equals;",
            "aB3&plus;&sol;xYz/9Q==",
            "aB3%2B%2FxYz%2F9Q%3D%3D",
            "aB3%2b/xYz/9Q%3d=",
            // Percent-encoded, then put in JSON or HTML.
            "aB3%252B%252FxYz%252F9Q%253D%253D",
            "aB3+&amp;#47;xYz/9Q==",
            r"aB3+\x2fxYz/9Q==",
        ];
        for echo in echoes {
            let text = format!("{{\"you_sent\":\"{echo}\"}}");
            assert_eq!(
                redactor.redact(&text),
                "{\"you_sent\":\"[redacted]\"}",
                "{echo}"
            );
        }
        // Characters beyond the BMP, as a surrogate pair.
        let redactor = Redactor::new(["k€y-😀-x".to_owned()], None);
        assert_eq!(
            redactor.redact(r#"k\u20acy-\ud83d\ude00-x!"#),
            "[redacted]!"
        );
    }

    #[test]
    fn short_values_are_masked_as_whole_tokens_only() {
        let redactor = redactor(&["eu", "1"]);
        assert_eq!(
            redactor.redact(r#"region "eu", Bearer eu; europe eu-west pages=1 (1) 10"#),
            r#"region "[redacted]", Bearer [redacted]; europe eu-west pages=1 ([redacted]) 10"#
        );
        assert_eq!(redactor.redact("eu"), "[redacted]");
        assert_eq!(
            redactor.redact(r#"{"k":"\u0065u"}"#),
            r#"{"k":"[redacted]"}"#
        );
    }

    #[test]
    fn excerpts_are_redacted_before_they_are_cut() {
        let secret = "sk-live-0123456789abcdef";
        let redactor = redactor(&[secret]);
        let text = format!("<https://api/x?key={secret}>; rel=next");
        // The cut at 30 characters falls inside the secret.
        let cut = redactor.excerpt(&text, 0, 29);
        assert_eq!(cut, "<https://api/x?key=[redacted]…");
        // Starting inside the secret does not show its tail.
        let from = text.find("0123").unwrap();
        assert_eq!(redactor.excerpt(&text, from, 12), "[redacted]>;…");
        assert_eq!(redactor.excerpt("short", 0, 40), "short");
        assert_eq!(
            redactor.excerpt(&text, 0, 22),
            "<https://api/x?key=[redacted]…",
            "the mask is not cut"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("a\u{1b}[31mb\u{7}c\r\nd\u{9b}e\u{202e}f\tg"),
            "a\\x1b[31mb\\x07c\\r\\nd\\u{9b}e\\u{202e}f\\tg"
        );
        assert!(matches!(printable("plain €"), Cow::Borrowed(_)));
    }

    #[test]
    fn urls_are_shown_without_userinfo_or_query_values() {
        assert_eq!(
            display_url("https://user:p%40ss@api.test:8443/v1/items?page=2&api_key=abc#frag"),
            "https://api.test:8443/v1/items?page=*&api_key=*"
        );
        assert_eq!(display_url("https://api.test/x"), "https://api.test/x");
        assert_eq!(
            display_url("http://tok@bad host/x?key=v"),
            "http://bad host/x"
        );
        assert_eq!(display_url("/relative?cursor=abc"), "/relative");
    }

    #[test]
    fn base64_round_trips() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:p@ss/w+rd", "dXNlcjpwQHNzL3crcmQ="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert_eq!(unbase64(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(unbase64("not base64!"), None);
    }

    #[test]
    fn random_texts_never_panic_and_never_keep_a_secret() {
        let mut rng = fastrand::Rng::with_seed(13);
        let alphabet: Vec<char> = "ab/+=%\\u&#x;2F0\"é😀 \u{1b}".chars().collect();
        for _ in 0..2_000 {
            let secret: String = (0..rng.usize(4..10))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let noise = |rng: &mut fastrand::Rng| -> String {
                (0..rng.usize(0..12))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            };
            let text = format!("{}{secret}{}", noise(&mut rng), noise(&mut rng));
            let redactor = Redactor::new([secret.clone()], None);
            let out = redactor.redact(&text);
            assert!(
                !out.contains(&secret),
                "{secret:?} in {text:?} gave {out:?}"
            );
            for start in 0..=text.len() {
                let _ = redactor.excerpt(&text, start, 5);
            }
        }
    }
}
