//! A response body, checked as JSON once and split in two: the records, kept
//! as text for the record reader, and the rest (the envelope), parsed for
//! pagination. Parsing every record into a `serde_json::Value` only to read
//! its key and hash cost more than anything else in a re-sync.

use std::ops::Range;

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
    /// `None` when the records pointer finds no array in the body.
    pub records: Option<RawRecords>,
}

impl ResponseBody {
    /// Checks `body` as JSON and finds the array at `records_pointer` (as
    /// segments) in it.
    ///
    /// # Errors
    /// serde_json's error for a body that is not JSON, with the body back
    /// (for the error excerpt).
    pub fn parse(
        body: Vec<u8>,
        records_pointer: &[String],
    ) -> Result<Self, (serde_json::Error, Vec<u8>)> {
        if let Err(e) = raw_json::check_document(&body) {
            return Err((e, body));
        }
        let array = raw_json::pointer(&body, records_pointer)
            .filter(|found| found.first() == Some(&b'['))
            .map(|found| raw_json::span_in(&body, found));
        let Some(array) = array else {
            return match serde_json::from_slice(&body) {
                Ok(envelope) => Ok(Self {
                    envelope,
                    records: None,
                }),
                Err(e) => Err((e, body)),
            };
        };
        // The body was checked, so the array splits; were it ever not to,
        // its records come from a full parse rather than being cut short.
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
        match serde_json::from_slice(&envelope_text) {
            Ok(envelope) => Ok(Self {
                envelope,
                records: Some(RawRecords { body, spans }),
            }),
            Err(e) => Err((e, body)),
        }
    }
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
            Some(Value::Array(items)) => Some(RawRecords::from_values(&std::mem::take(items))),
            _ => None,
        };
        Ok(Self { envelope, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(body.records.is_none());
        assert_eq!(body.envelope, json!({"data": {"id": 1}}));
        assert!(parse(r#"{"items": []}"#, "/data").records.is_none());
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
}
