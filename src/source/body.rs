//! A response body, checked as JSON once and split in two: the records, kept
//! as text for the record reader, and the rest (the envelope), parsed for
//! pagination. Parsing every record into a `serde_json::Value` only to read
//! its key and hash cost more than anything else in a re-sync.
//!
//! One record serde_json cannot read (a byte that is not UTF-8, a lone
//! surrogate escape, nesting beyond its limit) does not fail the page: such
//! a body is split all the same when its syntax holds, and the record is
//! refused on its own by the record reader, with the reason. Only a body
//! whose records cannot be told apart, or whose envelope is at fault, fails.

use std::ops::Range;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::raw_json;

/// A page's records as the API sent them: the response body and where each
/// record is in it.
#[derive(Debug, Default)]
pub struct RawRecords {
    body: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl RawRecords {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each record's JSON text, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|span| &self.body[span.clone()])
    }

    /// The records in runs of consecutive records, each of at most
    /// `max_records` records and, unless one record is larger on its own,
    /// `max_bytes` of text: how a large page is read and written in parts.
    pub fn parts(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> impl Iterator<Item = impl Iterator<Item = &[u8]>> {
        let mut rest = self.spans.as_slice();
        std::iter::from_fn(move || {
            let first = rest.first()?;
            let end = rest
                .iter()
                .take(max_records.max(1))
                .position(|span| span.end - first.start > max_bytes)
                .map_or(rest.len().min(max_records.max(1)), |past| past.max(1));
            let (part, after) = rest.split_at(end);
            rest = after;
            Some(part.iter().map(|span| &self.body[span.clone()]))
        })
    }

    /// Records given as values (tests, and pages not read from HTTP).
    pub fn from_values(values: &[Value]) -> Self {
        let mut body = b"[".to_vec();
        let mut spans = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut body, value);
            spans.push(start..body.len());
        }
        body.push(b']');
        Self { body, spans }
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct ResponseBody {
    /// The body with the records array emptied: what pagination reads.
    /// When the records pointer finds no array, the whole body.
    pub envelope: Value,
    /// The records; when the records pointer finds no array in the body,
    /// what it found instead ("nothing", "an object", …), for the error.
    pub records: Result<RawRecords, &'static str>,
}

impl ResponseBody {
    /// Checks `body` as JSON and finds the array at `records_pointer` (as
    /// segments) in it.
    ///
    /// A body serde_json refuses only for what its strings hold or how deep
    /// it nests (the tolerant way) still splits: its syntax is checked whole
    /// ([`raw_json::check_syntax`]), which is all the split relies on, and the
    /// envelope is parsed strictly as always. Its records are left to
    /// `RecordShape::read_text`, which checks what the body check did not
    /// and refuses the one at fault. A clean body pays nothing for this: the
    /// syntax check runs only after [`raw_json::check_document`] failed.
    ///
    /// # Errors
    /// serde_json's error for a body that is not JSON (a syntax error, cut
    /// short) or whose envelope (the body but its records) serde_json
    /// cannot read, with the body back (for the error excerpt).
    pub fn parse(
        body: Vec<u8>,
        records_pointer: &[String],
    ) -> Result<Self, (serde_json::Error, Vec<u8>)> {
        if let Err(e) = raw_json::check_document(&body)
            && raw_json::check_syntax(&body).is_err()
        {
            // `e` is about the first problem, which may be a record's: the
            // syntax error, which is what fails the page, is serde_json's
            // word without a tree (it agrees with `check_syntax`, tested).
            let e = serde_json::from_slice::<IgnoredAny>(&body)
                .err()
                .unwrap_or(e);
            return Err((e, body));
        }
        let array = raw_json::pointer(&body, records_pointer)
            .filter(|found| found.first() == Some(&b'['))
            .map(|found| raw_json::span_in(&body, found));
        let Some(array) = array else {
            return match serde_json::from_slice::<Value>(&body) {
                Ok(envelope) => Ok(Self {
                    records: Err(found_instead(&envelope, records_pointer)),
                    envelope,
                }),
                Err(e) => Err((e, body)),
            };
        };
        // The body's syntax was checked, so the array splits; were it ever
        // not to, its records come from a full parse rather than being cut
        // short (which fails the page if the body went the tolerant way).
        let spans: Option<Vec<Range<usize>>> =
            raw_json::elements(&body[array.clone()]).and_then(|elements| {
                elements
                    .map(|element| element.map(|e| raw_json::span_in(&body, e)))
                    .collect()
            });
        let Some(spans) = spans else {
            return Self::parse_whole(body, records_pointer);
        };
        let mut envelope_text = Vec::with_capacity(body.len() - array.len() + 2);
        envelope_text.extend_from_slice(&body[..array.start]);
        envelope_text.extend_from_slice(b"[]");
        envelope_text.extend_from_slice(&body[array.end..]);
        let envelope = serde_json::from_slice(&envelope_text)
            .or_else(|e| readable_envelope(&envelope_text).ok_or(e));
        match envelope {
            Ok(envelope) => Ok(Self {
                envelope,
                records: Ok(RawRecords { body, spans }),
            }),
            Err(e) => Err((e, body)),
        }
    }
}

/// An envelope (syntax checked) that serde_json refuses for what its
/// strings hold or how deep it nests, read with bytes that are not UTF-8
/// and surrogate escapes replaced by U+FFFD and containers deeper than
/// serde_json's limit written `null`. A flaw beside the records (in an
/// echoed query, say) would otherwise fail every run for ever; pagination
/// values are plain text and rarely where such flaws are.
fn readable_envelope(text: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(text);
    let text = raw_json::replace_surrogate_escapes(&text);
    let text = raw_json::truncate_depth(text.as_bytes(), raw_json::MAX_DEPTH - 1);
    let envelope = serde_json::from_slice(&text).ok()?;
    tracing::warn!(
        "The response holds, beside its records, text that is not UTF-8, a lone surrogate \
         escape or nesting beyond 127 levels; read with those replaced."
    );
    Some(envelope)
}

impl ResponseBody {
    /// The slow way: the whole body as a `Value`, its records written back
    /// out one by one.
    fn parse_whole(
        body: Vec<u8>,
        records_pointer: &[String],
    ) -> Result<Self, (serde_json::Error, Vec<u8>)> {
        let mut envelope: Value = match serde_json::from_slice(&body) {
            Ok(envelope) => envelope,
            Err(e) => return Err((e, body)),
        };
        let pointer = crate::json_pointer::join(records_pointer);
        let records = match envelope.pointer_mut(&pointer) {
            Some(Value::Array(items)) => Ok(RawRecords::from_values(&std::mem::take(items))),
            _ => Err(found_instead(&envelope, records_pointer)),
        };
        Ok(Self { envelope, records })
    }

    /// [`ResponseBody::parse`] on the blocking pool. A large page takes
    /// milliseconds to parse; on a runtime worker that would hold up every
    /// task queued behind it there (the writer's COPY among them).
    ///
    /// # Errors
    /// As [`ResponseBody::parse`].
    pub async fn parse_off_the_runtime(
        body: Vec<u8>,
        records_pointer: Arc<[String]>,
    ) -> Result<Self, (serde_json::Error, Vec<u8>)> {
        tokio::task::spawn_blocking(move || Self::parse(body, &records_pointer))
            .await
            .unwrap_or_else(|join| {
                // Only a panic or a runtime shutting down gets here.
                std::panic::resume_unwind(join.try_into_panic().unwrap_or_else(|e| Box::new(e)))
            })
    }
}

/// What the records pointer finds in a body where it finds no array.
fn found_instead(envelope: &Value, records_pointer: &[String]) -> &'static str {
    envelope
        .pointer(&crate::json_pointer::join(records_pointer))
        .map_or("nothing", crate::record::kind_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_bounded_by_records_and_bytes_and_hold_every_record_once() {
        let values: Vec<Value> = (0..10)
            .map(|i| serde_json::json!({"id": i, "pad": "x".repeat(i * 3)}))
            .collect();
        let records = RawRecords::from_values(&values);
        let all: Vec<&[u8]> = records.iter().collect();
        for (max_records, max_bytes) in [(1, 1_000), (3, 1_000), (100, 60), (4, 60), (100, 1)] {
            let parts: Vec<Vec<&[u8]>> = records
                .parts(max_records, max_bytes)
                .map(Iterator::collect)
                .collect();
            assert_eq!(parts.concat(), all, "{max_records} {max_bytes}");
            for part in &parts {
                assert!(!part.is_empty() && part.len() <= max_records);
                let bytes: usize = part.iter().map(|r| r.len()).sum::<usize>() + part.len() - 1;
                assert!(
                    part.len() == 1 || bytes <= max_bytes,
                    "{max_records} {max_bytes}"
                );
            }
        }
        assert_eq!(RawRecords::default().parts(10, 10).count(), 0);
    }
    use serde_json::json;

    fn parse(text: &str, pointer: &str) -> ResponseBody {
        let segments = crate::json_pointer::segments(pointer);
        ResponseBody::parse(text.as_bytes().to_vec(), &segments).unwrap()
    }

    fn texts(records: &RawRecords) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn records_are_split_out_of_the_envelope() {
        let body = parse(
            r#"{"meta": {"next": "c2"}, "data": [ {"id": 1} , {"id": "a]"} ], "total": 2}"#,
            "/data",
        );
        assert_eq!(
            body.envelope,
            json!({"meta": {"next": "c2"}, "data": [], "total": 2})
        );
        assert_eq!(
            texts(&body.records.unwrap()),
            [r#"{"id": 1}"#, r#"{"id": "a]"}"#]
        );

        let whole = parse(r#" [{"id": 1}, 2] "#, "");
        assert_eq!(whole.envelope, json!([]));
        assert_eq!(texts(&whole.records.unwrap()), [r#"{"id": 1}"#, "2"]);
    }

    #[test]
    fn the_slow_way_gives_what_the_split_gives() {
        let text = r#"{"meta": {"n": 2}, "data": [ {"id": 1} , {"id": "a]"} ]}"#;
        let segments = crate::json_pointer::segments("/data");
        let fast = ResponseBody::parse(text.as_bytes().to_vec(), &segments).unwrap();
        let slow = ResponseBody::parse_whole(text.as_bytes().to_vec(), &segments).unwrap();
        assert_eq!(fast.envelope, slow.envelope);
        let values = |records: &RawRecords| -> Vec<Value> {
            records
                .iter()
                .map(|r| serde_json::from_slice(r).unwrap())
                .collect()
        };
        assert_eq!(
            values(&fast.records.unwrap()),
            values(&slow.records.unwrap())
        );
    }

    #[test]
    fn a_pointer_that_finds_no_array_leaves_the_body_whole() {
        let body = parse(r#"{"data": {"id": 1}}"#, "/data");
        assert!(body.records.is_err());
        assert_eq!(body.envelope, json!({"data": {"id": 1}}));
        assert!(parse(r#"{"items": []}"#, "/data").records.is_err());
    }

    #[test]
    fn a_body_that_is_not_json_is_an_error_with_the_body_back() {
        let (error, body) = ResponseBody::parse(b"<html>".to_vec(), &[]).unwrap_err();
        assert!(error.to_string().contains("expected value"), "{error}");
        assert_eq!(body, b"<html>");
    }

    #[test]
    fn records_from_values_read_back() {
        let records = RawRecords::from_values(&[json!({"id": 1}), json!("x")]);
        assert_eq!(texts(&records), [r#"{"id":1}"#, r#""x""#]);
        assert_eq!(records.len(), 2);
    }

    /// Each record's key, or why it is refused.
    fn outcomes(records: &RawRecords) -> Vec<Result<String, String>> {
        let shape = crate::record::RecordShape::new(&["id".to_owned()], &[]).unwrap();
        records
            .iter()
            .map(|text| shape.read_text(text).map(|record| record.key.join(",")))
            .collect()
    }

    fn parse_bytes(body: &[u8], pointer: &str) -> Result<ResponseBody, String> {
        let segments = crate::json_pointer::segments(pointer);
        ResponseBody::parse(body.to_vec(), &segments).map_err(|(e, _)| e.to_string())
    }

    #[test]
    fn a_record_serde_json_cannot_read_is_refused_and_its_neighbours_are_read() {
        // Arrange: a lone surrogate (JavaScript's cut), a byte that is not
        // UTF-8, nesting beyond serde_json's limit, and a pair that is fine.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let records: [&[u8]; 6] = [
            br#"{"id": 1, "name": "caf\u00e9"}"#,
            br#"{"id": 2, "name": "cut \ud800"}"#,
            br#"{"id": 3, "tags": ["a", "b"]}"#,
            b"{\"id\": 4, \"name\": \"a\xffb\"}",
            &[br#"{"id": 5, "deep": "#, deep.as_bytes(), b"}"].concat(),
            br#"{"id": 6, "emoji": "\ud83d\ude00"}"#,
        ];
        let body = [
            &br#"{"meta": {"next": "c2"}, "data": [ "#[..],
            &records.join(&b", "[..]),
            br#" ], "total": 6}"#,
        ]
        .concat();

        // Act
        let parsed = parse_bytes(&body, "/data").expect("the page is read");

        // Assert
        assert_eq!(
            parsed.envelope,
            json!({"meta": {"next": "c2"}, "data": [], "total": 6})
        );
        let split = parsed.records.unwrap();
        assert_eq!(split.iter().collect::<Vec<_>>(), records);
        assert_eq!(
            outcomes(&split),
            [
                Ok("1".to_owned()),
                Err(
                    "the record holds a lone UTF-16 surrogate escape `\\ud800` at offset 23 \
                     (half of a pair, no character on its own)"
                        .to_owned()
                ),
                Ok("3".to_owned()),
                Err("the record is not valid UTF-8 (byte 0xff at offset 20)".to_owned()),
                Err(
                    "the record nests deeper than 127 levels (level 128 opens at offset 144)"
                        .to_owned()
                ),
                Ok("6".to_owned()),
            ]
        );
    }

    #[test]
    fn a_record_nested_a_million_deep_is_refused_without_recursion() {
        let levels = 1_000_000;
        let body = format!(
            r#"[{{"id": 1}}, {{"id": 2, "deep": {}{}}}, {{"id": 3}}]"#,
            "[".repeat(levels),
            "]".repeat(levels)
        );
        let parsed = parse_bytes(body.as_bytes(), "").expect("the page is read");
        let reasons = outcomes(&parsed.records.unwrap());
        assert_eq!(reasons[0], Ok("1".to_owned()));
        assert_eq!(
            reasons[1],
            Err(
                "the record nests deeper than 127 levels (level 128 opens at offset 144)"
                    .to_owned()
            )
        );
        assert_eq!(reasons[2], Ok("3".to_owned()));
    }

    #[test]
    fn records_are_judged_on_their_own_depth() {
        // Arrange: 127 levels in the record, 129 in the body.
        let record = format!(
            r#"{{"id": 1, "deep": {}{}}}"#,
            "[".repeat(126),
            "]".repeat(126)
        );
        let body = format!(r#"{{"data": [{record}]}}"#);
        assert!(raw_json::check_document(body.as_bytes()).is_err());

        // Act
        let parsed = parse_bytes(body.as_bytes(), "/data").expect("the page is read");

        // Assert
        let records = parsed.records.unwrap();
        assert_eq!(outcomes(&records), [Ok("1".to_owned())]);
    }

    #[test]
    fn a_body_whose_records_cannot_be_told_apart_still_fails() {
        let cases: [(&[u8], &str); 4] = [
            // After a bad record, the error is the one that fails the page.
            (
                b"{\"data\": [{\"id\": \"\xff\"} {\"id\": 2}]}",
                "expected `,` or `]` at line 1 column 23",
            ),
            (
                br#"{"data": [{"id": 1}, {"id": "\ud800"}, {"id": 3"#,
                "EOF while parsing an object",
            ),
            (
                br#"{"data": [{"id": "\ud800"}], "#,
                "EOF while parsing an object",
            ),
            // No records array: the whole body is the envelope.
            (
                br#"{"data": {"id": "\ud800"}}"#,
                "unexpected end of hex escape",
            ),
        ];
        for (body, message) in cases {
            let shown = String::from_utf8_lossy(body);
            let error = parse_bytes(body, "/data").err();
            assert!(
                error.as_ref().is_some_and(|e| e.contains(message)),
                "{shown}: {error:?}"
            );
        }
    }

    #[test]
    fn flaws_beside_the_records_are_read_with_replacements() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let cases: [(Vec<u8>, Value); 3] = [
            (
                br#"{"data": [{"id": 1}], "q": "\ud800", "next": "c2"}"#.to_vec(),
                json!({"data": [], "q": "\u{fffd}", "next": "c2"}),
            ),
            (
                b"{\"data\": [{\"id\": 1}], \"q\": \"\xff\", \"next\": \"c2\"}".to_vec(),
                json!({"data": [], "q": "\u{fffd}", "next": "c2"}),
            ),
            (
                format!(r#"{{"data": [{{"id": 1}}], "facets": {deep}, "next": "c2"}}"#)
                    .into_bytes(),
                json!({"data": [], "next": "c2"}),
            ),
        ];
        for (body, envelope) in cases {
            let parsed = ResponseBody::parse(body, &["data".to_owned()]).unwrap();
            assert_eq!(parsed.envelope["next"], envelope["next"]);
            if let Some(q) = envelope.get("q") {
                assert_eq!(&parsed.envelope["q"], q);
            }
            assert_eq!(parsed.records.unwrap().len(), 1);
        }
    }

    /// Arbitrary and spoilt bodies never panic the reader; a body serde_json
    /// reads is split exactly: the records are the array's elements, and
    /// the envelope is the body with that array emptied.
    #[test]
    fn fuzz_bodies_split_as_serde_json_reads_them() {
        let mut fuzz =
            crate::fuzz::Fuzz::new("fuzz_bodies_split_as_serde_json_reads_them", 17, 6_000);
        let pointers = ["", "/data", "/data/0", "/a/b", "/~1", "/é"];
        let (mut split, mut compared) = (0, 0);
        for _ in 0..fuzz.iterations {
            let pointer = if fuzz.rng.bool() {
                "/data"
            } else {
                fuzz.pick(&pointers)
            };
            let mut value = fuzz.json(0);
            if fuzz.rng.bool() {
                let records: Vec<Value> = (0..fuzz.rng.usize(0..5)).map(|_| fuzz.json(1)).collect();
                value = json!({"data": records, "next": value, "count": 3});
            }
            let text = if fuzz.rng.bool() {
                serde_json::to_vec(&value).unwrap()
            } else {
                serde_json::to_vec_pretty(&value).unwrap()
            };
            let body = match fuzz.rng.u8(0..8) {
                0 => fuzz.bytes(64),
                1..=3 => fuzz.mutate(&text),
                _ => text,
            };
            let shown = String::from_utf8_lossy(&body).into_owned();
            let segments = crate::json_pointer::segments(pointer);
            let parsed = ResponseBody::parse(body.clone(), &segments);
            let Ok(whole) = serde_json::from_slice::<Value>(&body) else {
                if let Ok(parsed) = &parsed {
                    for record in parsed.records.iter().flat_map(|r| r.iter()) {
                        assert_eq!(crate::raw_json::check_syntax(record), Ok(()), "{shown}");
                    }
                }
                continue;
            };
            compared += 1;
            let parsed = parsed.unwrap_or_else(|(e, _)| panic!("{e}: {shown}"));
            let mut expected = whole;
            let array = match expected.pointer_mut(pointer) {
                Some(Value::Array(items)) => Some(std::mem::take(items)),
                _ => None,
            };
            assert_eq!(
                parsed.envelope, expected,
                "envelope of {shown} at {pointer:?}"
            );
            match (array, &parsed.records) {
                (None, Err(_)) => {}
                (Some(items), Ok(records)) => {
                    split += 1;
                    let read: Vec<Value> = records
                        .iter()
                        .map(|r| {
                            serde_json::from_slice(r).unwrap_or_else(|e| panic!("{e}: {shown}"))
                        })
                        .collect();
                    assert_eq!(read, items, "records of {shown} at {pointer:?}");
                }
                (items, records) => panic!("{shown} at {pointer:?}: {items:?} vs {records:?}"),
            }
        }
        assert!(
            compared >= fuzz.iterations / 2 && split >= fuzz.iterations / 8,
            "{compared} compared, {split} split"
        );
    }
}
