//! Incremental sync: ask the API only for what changed since the watermark.
//!
//! The watermark is the highest value of `field` among the records of the
//! last run that read every page; it comes from the data, never from our
//! clock. It is promoted in the same transaction as that run's last page, not
//! page by page: an API that does not return records in `field` order would
//! otherwise let a run killed half-way move the watermark past records it
//! never read, and the next run would skip them for good.
//!
//! Values are RFC 3339 timestamps (or times in a strftime `format`, in a
//! `timezone` when they carry no offset) or numbers: epoch seconds, or, told
//! apart by size, milliseconds (above 10^11, which as seconds would be past
//! the year 5000), microseconds (above 10^14) and nanoseconds (above 10^17).
//! Integers are computed with integers, so no precision is lost.
//!
//! Two ways a watermark could make every later run succeed with nothing, or
//! read everything for ever, are refused: a record time beyond
//! `max_future` of the local clock never moves the watermark (one
//! `9999-12-31` would pin it), and a run in which no record had a readable
//! field fails, naming the field and a value.
//!
//! The API must filter with "at or after" (`>=`) and `lookback` should cover
//! the records it makes visible late (and, for page or offset pagination,
//! how long a run takes): what is re-read is unchanged and costs no write.

use std::cmp::Ordering;
use std::time::Duration;

use chrono::format::{Item, StrftimeItems};
use chrono::{
    DateTime, FixedOffset, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde_json::Value;

use crate::config::{IncrementalSettings, ValueIn};
use crate::record::KeyField;
use crate::source::Since;

/// Ticks per second of an epoch number, told apart by its size.
fn ticks_per_second(magnitude: f64) -> i128 {
    match magnitude {
        m if m > 1e17 => 1_000_000_000,
        m if m > 1e14 => 1_000_000,
        m if m > 1e11 => 1_000,
        _ => 1,
    }
}

/// How the field's times are written.
#[derive(Debug, Clone)]
struct TimeFormat {
    /// A strftime pattern; `None` is RFC 3339.
    pattern: Option<String>,
    /// Whether `pattern` holds an offset (`%z` and its kin).
    pattern_has_offset: bool,
    /// The zone of times without an offset, when configured.
    zone: Option<Tz>,
}

impl TimeFormat {
    fn parse(&self, text: &str) -> Option<DateTime<FixedOffset>> {
        let zone = self.zone.unwrap_or(Tz::UTC);
        // A time the clocks skipped (a DST gap) is still a time the API
        // wrote: read it with the offset in force at that moment in UTC.
        // Of a time that occurs twice, the earlier.
        let in_zone = |naive: NaiveDateTime| {
            zone.from_local_datetime(&naive)
                .earliest()
                .map(|t| t.fixed_offset())
                .or_else(|| {
                    let offset = zone.offset_from_utc_datetime(&naive).fix();
                    offset.from_local_datetime(&naive).single()
                })
        };
        match &self.pattern {
            Some(pattern) if self.pattern_has_offset => {
                DateTime::parse_from_str(text, pattern).ok()
            }
            Some(pattern) => match NaiveDateTime::parse_from_str(text, pattern) {
                Ok(naive) => in_zone(naive),
                // A pattern of a date alone: midnight.
                Err(_) => in_zone(NaiveDate::parse_from_str(text, pattern).ok()?.into()),
            },
            None => DateTime::parse_from_rfc3339(text).ok().or_else(|| {
                // With a zone configured, ISO 8601 without an offset too.
                self.zone?;
                ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                    .iter()
                    .find_map(|p| NaiveDateTime::parse_from_str(text, p).ok())
                    .and_then(in_zone)
            }),
        }
    }

    /// `time` written the way the API writes it.
    fn render(&self, time: DateTime<Utc>) -> String {
        match &self.pattern {
            Some(pattern) => time
                .with_timezone(&self.zone.unwrap_or(Tz::UTC))
                .format(pattern)
                .to_string(),
            None if self.zone.is_some() => time
                .with_timezone(&self.zone.unwrap_or(Tz::UTC))
                .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            None => time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }
}

/// A job's incremental settings, checked.
#[derive(Debug, Clone)]
pub struct Incremental {
    pointer: String,
    /// The configured spelling of `field`, for messages.
    field: String,
    param: String,
    /// Query or body.
    param_in: ValueIn,
    /// What is sent, `{since}` standing for the time.
    template: String,
    lookback: Duration,
    max_future: Duration,
    format: TimeFormat,
}

/// What `{since}` stands for in `incremental.value`.
const SINCE: &str = "{since}";

/// A comparable reading of a record's `field`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    Time(DateTime<FixedOffset>),
    /// Integers stay exact (epoch nanoseconds exceed f64's 2^53).
    Integer(i128),
    Float(f64),
}

impl Mark {
    fn of(value: &Value, format: &TimeFormat) -> Option<Mark> {
        match value {
            Value::String(s) => format.parse(s).map(Mark::Time),
            Value::Number(n) => {
                // With arbitrary precision the text is exact: parse it.
                let text = n.to_string();
                if let Ok(i) = text.parse::<i128>() {
                    Some(Mark::Integer(i))
                } else {
                    n.as_f64().filter(|f| f.is_finite()).map(Mark::Float)
                }
            }
            _ => None,
        }
    }

    fn cmp(&self, other: &Mark) -> Option<Ordering> {
        match (self, other) {
            (Mark::Time(a), Mark::Time(b)) => Some(a.cmp(b)),
            (Mark::Integer(a), Mark::Integer(b)) => Some(a.cmp(b)),
            (Mark::Integer(a), Mark::Float(b)) => (*a as f64).partial_cmp(b),
            (Mark::Float(a), Mark::Integer(b)) => a.partial_cmp(&(*b as f64)),
            (Mark::Float(a), Mark::Float(b)) => a.partial_cmp(b),
            _ => None,
        }
    }

    /// Whether the mark lies after `limit` (epoch numbers read in the unit
    /// their size tells).
    fn is_after(&self, limit: DateTime<Utc>) -> bool {
        let limit_seconds = limit.timestamp() as f64;
        match *self {
            Mark::Time(t) => t > limit,
            Mark::Integer(n) => {
                let ticks = ticks_per_second(n.unsigned_abs() as f64);
                n / ticks > limit.timestamp() as i128
            }
            Mark::Float(f) => f / ticks_per_second(f.abs()) as f64 > limit_seconds,
        }
    }
}

impl Incremental {
    /// # Errors
    /// When `field` is not a field name or JSON pointer, `param` is empty,
    /// `format` is not a strftime pattern or `timezone` not an IANA zone.
    pub fn new(settings: &IncrementalSettings) -> Result<Self, (&'static str, String)> {
        // The same spelling rules as key fields: `updated_at` or `/meta/updated`.
        let field =
            KeyField::parse_pointer(&settings.field).map_err(|e| ("incremental.field", e))?;
        if settings.param.trim().is_empty() {
            return Err(("incremental.param", "must not be empty".to_owned()));
        }
        let template = settings.value.clone().unwrap_or_else(|| SINCE.to_owned());
        if !template.contains(SINCE) {
            return Err((
                "incremental.value",
                format!(
                    "`{template}` does not hold {SINCE}, where the time goes (as in \"gte.{SINCE}\")"
                ),
            ));
        }
        if settings.param_in == ValueIn::Body && settings.param.starts_with('/') {
            crate::json_pointer::validate(&settings.param).map_err(|e| ("incremental.param", e))?;
        }
        let zone = settings
            .timezone
            .as_deref()
            .map(crate::schedule::parse_timezone)
            .transpose()
            .map_err(|e| ("incremental.timezone", e))?;
        let mut pattern_has_offset = false;
        if let Some(pattern) = &settings.format {
            let items: Vec<Item> = StrftimeItems::new(pattern).collect();
            if pattern.trim().is_empty() || items.iter().any(|item| matches!(item, Item::Error)) {
                return Err((
                    "incremental.format",
                    format!("`{pattern}` is not a strftime pattern such as \"%Y-%m-%d %H:%M:%S\""),
                ));
            }
            pattern_has_offset = items.iter().any(|item| {
                matches!(
                    item,
                    Item::Fixed(
                        chrono::format::Fixed::TimezoneOffset
                            | chrono::format::Fixed::TimezoneOffsetColon
                            | chrono::format::Fixed::TimezoneOffsetDoubleColon
                            | chrono::format::Fixed::TimezoneOffsetTripleColon
                            | chrono::format::Fixed::TimezoneOffsetColonZ
                            | chrono::format::Fixed::TimezoneOffsetZ
                            | chrono::format::Fixed::RFC3339
                            | chrono::format::Fixed::RFC2822
                    )
                )
            });
        }
        Ok(Self {
            pointer: field,
            field: settings.field.clone(),
            param: settings.param.clone(),
            param_in: settings.param_in,
            template,
            lookback: settings.lookback,
            max_future: settings.max_future,
            format: TimeFormat {
                pattern: settings.format.clone(),
                pattern_has_offset,
                zone,
            },
        })
    }

    /// What a run that starts from `watermark` sends: `watermark - lookback`
    /// in the watermark's own format, written into `incremental.value`.
    pub fn since(&self, watermark: &Value) -> Option<Since> {
        let (param, value) = self.since_value(watermark)?;
        Some(Since {
            param,
            value: self.template.replace(SINCE, &value),
            placement: self.param_in,
            is_number: self.template == SINCE && watermark.is_number(),
        })
    }

    /// `(param, watermark - lookback)`, in the watermark's own format.
    fn since_value(&self, watermark: &Value) -> Option<(String, String)> {
        let mark = Mark::of(watermark, &self.format)?;
        let value = if self.lookback.is_zero() {
            // Exactly as the API wrote it.
            match watermark {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        } else {
            match mark {
                Mark::Time(t) => {
                    let lookback = chrono::Duration::from_std(self.lookback).ok()?;
                    self.format
                        .render(t.with_timezone(&Utc).checked_sub_signed(lookback)?)
                }
                Mark::Integer(n) => {
                    let ticks = ticks_per_second(n.unsigned_abs() as f64);
                    let back = self.lookback.as_nanos() as i128 * ticks / 1_000_000_000;
                    (n - back).to_string()
                }
                Mark::Float(f) => {
                    let ticks = ticks_per_second(f.abs()) as f64;
                    format!("{}", f - self.lookback.as_secs_f64() * ticks)
                }
            }
        };
        Some((self.param.clone(), value))
    }

    /// Starts tracking a run's highest `field` from the stored watermark.
    /// A stored watermark beyond `max_future` (left by an earlier version,
    /// or by hand) is set aside with a warning: the run reads everything.
    pub fn tracker(&self, watermark: Option<Value>) -> WatermarkTracker {
        let future_limit = chrono::Duration::from_std(self.max_future)
            .ok()
            .and_then(|ahead| Utc::now().checked_add_signed(ahead))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let best = watermark
            .and_then(|v| Mark::of(&v, &self.format).map(|m| (m, v)))
            .filter(|(mark, value)| {
                let future = mark.is_after(future_limit);
                if future {
                    tracing::warn!(
                        field = %self.field,
                        watermark = %value,
                        "The stored watermark lies further in the future than \
                         incremental.max_future; setting it aside and reading everything."
                    );
                }
                !future
            });
        WatermarkTracker {
            segments: crate::json_pointer::segments(&self.pointer),
            field: self.field.clone(),
            format: self.format.clone(),
            future_limit,
            best,
            readable: 0,
            unreadable: 0,
            unreadable_example: None,
            future: 0,
            future_example: None,
            redactor: crate::redact::Redactor::default(),
        }
    }
}

/// The highest `field` seen so far in a run (or stored before it).
#[derive(Debug)]
pub struct WatermarkTracker {
    /// The field's pointer, as segments.
    segments: Vec<String>,
    field: String,
    format: TimeFormat,
    /// A record time after this does not move the watermark.
    future_limit: DateTime<Utc>,
    best: Option<(Mark, Value)>,
    /// Records whose `field` could be read.
    readable: u64,
    /// Records whose `field` was missing or not a time or number, and the
    /// first such value, for messages.
    unreadable: u64,
    unreadable_example: Option<String>,
    /// Records whose `field` lies beyond `future_limit`, and the first
    /// one's key and value.
    future: u64,
    future_example: Option<(String, String)>,
    /// Examples are redacted before they are cut.
    redactor: crate::redact::Redactor,
}

/// A value for a message: its JSON text, redacted, then cut to a readable
/// length.
fn example(value: Option<&Value>, redactor: &crate::redact::Redactor) -> String {
    let text = value.map_or_else(|| "(absent)".to_owned(), Value::to_string);
    redactor.excerpt(&text, 0, 60)
}

impl WatermarkTracker {
    /// Examples of values in messages are redacted by `redactor` before
    /// they are cut.
    pub fn with_redactor(mut self, redactor: crate::redact::Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Sees one record, as JSON text.
    pub fn observe(&mut self, record: &[u8]) {
        self.observe_field(self.field_of(record).as_ref(), &[]);
    }

    /// The incremental field of a record (JSON text), if it has one.
    pub fn field_of(&self, record: &[u8]) -> Option<Value> {
        let field = crate::raw_json::pointer(record, &self.segments)?;
        serde_json::from_slice(field).ok()
    }

    /// Like [`WatermarkTracker::observe`], given the record's field and key.
    pub fn observe_field(&mut self, field: Option<&Value>, key: &[String]) {
        let Some(mark) = field.and_then(|value| Mark::of(value, &self.format)) else {
            self.unreadable += 1;
            if self.unreadable_example.is_none() {
                self.unreadable_example = Some(example(field, &self.redactor));
            }
            return;
        };
        self.readable += 1;
        if mark.is_after(self.future_limit) {
            self.future += 1;
            if self.future_example.is_none() {
                self.future_example = Some((key.join(", "), example(field, &self.redactor)));
            }
            return;
        }
        let higher = match &self.best {
            None => true,
            Some((best, _)) => mark.cmp(best) == Some(Ordering::Greater),
        };
        if higher {
            self.best = field.map(|value| (mark, value.clone()));
        }
    }

    /// The watermark to store: the highest value seen, as the API wrote it.
    pub fn watermark(&self) -> Option<&Value> {
        self.best.as_ref().map(|(_, value)| value)
    }

    /// Once the run has read everything: an error when records came and
    /// none had a readable field (the watermark can never move, so every
    /// run would read everything again while looking fine), and warnings
    /// for some unreadable or far-future records.
    ///
    /// # Errors
    /// The message for the run's error.
    pub fn verdict(&self) -> Result<(), String> {
        if self.readable == 0 && self.unreadable > 0 {
            return Err(format!(
                "none of the {} records read has a readable incremental field `{}` (one has \
                 {}): expected an RFC 3339 timestamp or an epoch number; set \
                 incremental.format (and incremental.timezone) for other forms",
                self.unreadable,
                self.field,
                self.unreadable_example.as_deref().unwrap_or("(absent)")
            ));
        }
        if self.unreadable > 0 {
            tracing::warn!(
                field = %self.field,
                records = self.unreadable,
                example = self.unreadable_example.as_deref().unwrap_or_default(),
                "Records without a readable incremental field were stored but do not move \
                 the watermark."
            );
        }
        if let Some((key, value)) = &self.future_example {
            tracing::warn!(
                field = %self.field,
                records = self.future,
                key = %key,
                value = %value,
                "Records with an incremental field further ahead of the clock than \
                 incremental.max_future were stored but do not move the watermark."
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn incremental(lookback: u64) -> Incremental {
        Incremental::new(&IncrementalSettings {
            field: "updated_at".into(),
            param: "updated_since".into(),
            param_in: ValueIn::Query,
            value: None,
            lookback: Duration::from_secs(lookback),
            max_future: Duration::from_secs(86_400),
            format: None,
            timezone: None,
        })
        .unwrap()
    }

    #[test]
    fn the_value_template_wraps_the_time_and_must_hold_it() {
        let mut settings = IncrementalSettings {
            field: "updated_at".into(),
            param: "updated_at".into(),
            param_in: ValueIn::Query,
            value: Some("gte.{since}".into()),
            lookback: Duration::ZERO,
            max_future: Duration::from_secs(86_400),
            format: None,
            timezone: None,
        };
        let since = Incremental::new(&settings)
            .unwrap()
            .since(&json!("2026-01-02T03:04:05Z"))
            .unwrap();
        assert_eq!(
            since,
            Since {
                param: "updated_at".into(),
                value: "gte.2026-01-02T03:04:05Z".into(),
                placement: ValueIn::Query,
                is_number: false,
            }
        );
        settings.value = Some("gte.".into());
        let (key, message) = Incremental::new(&settings).unwrap_err();
        assert_eq!(key, "incremental.value");
        assert!(message.contains("{since}"), "{message}");
    }

    #[test]
    fn examples_in_messages_are_redacted_before_they_are_cut() {
        // A value that is no time, with a secret where the cut at 60
        // characters falls.
        let secret = "tok-0123456789abcdefghij";
        let redactor = crate::redact::Redactor::new([secret.to_owned()], None);
        let mut tracker = incremental(0).tracker(None).with_redactor(redactor);
        let value = format!("{}{secret}", "x".repeat(45));
        tracker.observe(json!({"id": 1, "updated_at": value}).to_string().as_bytes());

        let error = tracker.verdict().unwrap_err();

        assert!(!error.contains("tok-0123"), "{error}");
        assert!(error.contains("[redacted]"), "{error}");
    }

    #[test]
    fn since_subtracts_the_lookback_in_the_watermarks_format() {
        let cases = [
            (
                0,
                json!("2026-03-01T10:00:00+01:00"),
                "2026-03-01T10:00:00+01:00",
            ),
            (
                60,
                json!("2026-03-01T10:00:00+01:00"),
                "2026-03-01T08:59:00Z",
            ),
            (300, json!("2026-03-01T10:00:00Z"), "2026-03-01T09:55:00Z"),
            (
                300,
                json!("2026-03-01T10:00:00.250Z"),
                "2026-03-01T09:55:00.250Z",
            ),
            (60, json!(1_700_000_000), "1699999940"),
            (60, json!(1_700_000_000_000u64), "1699999940000"),
            (60, json!(1_700_000_000_000_000u64), "1699999940000000"),
            (
                1,
                json!(1_700_000_000_123_456_789u64),
                "1699999999123456789",
            ),
            (
                0,
                serde_json::from_str::<Value>("1700000000.50").unwrap(),
                "1700000000.50",
            ),
            (
                30,
                serde_json::from_str::<Value>("1700000000.5").unwrap(),
                "1699999970.5",
            ),
        ];
        for (lookback, watermark, expected) in cases {
            let (param, value) = incremental(lookback).since_value(&watermark).unwrap();
            assert_eq!(param, "updated_since");
            assert_eq!(value, expected, "watermark {watermark} lookback {lookback}");
        }
        assert_eq!(incremental(0).since(&json!("yesterday")), None);
    }

    #[test]
    fn the_tracker_keeps_the_highest_value_and_never_goes_back() {
        let inc = incremental(0);
        let mut tracker = inc.tracker(Some(json!("2026-03-01T10:00:00Z")));
        tracker.observe(
            json!({"updated_at": "2026-02-01T00:00:00Z"})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(tracker.watermark(), Some(&json!("2026-03-01T10:00:00Z")));
        tracker.observe(
            json!({"updated_at": "2026-03-01T10:30:00+01:00"})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(
            tracker.watermark(),
            Some(&json!("2026-03-01T10:00:00Z")),
            "09:30Z is earlier"
        );
        tracker.observe(
            json!({"updated_at": "2026-03-02T00:00:00Z"})
                .to_string()
                .as_bytes(),
        );
        tracker.observe(json!({"updated_at": "not a time"}).to_string().as_bytes());
        tracker.observe(json!({"no_field": 1}).to_string().as_bytes());
        assert_eq!(tracker.watermark(), Some(&json!("2026-03-02T00:00:00Z")));
        assert_eq!(tracker.unreadable, 2);
    }

    /// Any watermark (edge times, numbers beyond every unit, text), any
    /// lookback and max_future (also beyond their bounds), every format:
    /// `since`, the tracker and its verdict never panic.
    #[test]
    fn fuzz_watermarks_and_lookbacks_never_panic() {
        const WATERMARKS: [&str; 16] = [
            "\"2026-03-01T10:00:00Z\"",
            "\"0000-01-01T00:03:00Z\"",
            "\"+262142-12-31T23:59:59Z\"",
            "\"-262143-01-01T00:00:00Z\"",
            "\"9999-12-31 23:59:59\"",
            "\"2026-03-29 02:30:00\"",
            "\"\"",
            "\"1700000000\"",
            "1700000000",
            "1700000000123456789",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "1e300",
            "-0.0",
            "null",
        ];
        let lookbacks = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_secs(300),
            Duration::from_secs(3650 * 86_400),
            Duration::from_secs(31_557_600 * 1_000_000),
            Duration::MAX,
        ];
        let formats = [
            None,
            Some("%Y-%m-%d %H:%M:%S"),
            Some("%s"),
            Some("%Y"),
            Some("%d.%m.%Y %z"),
        ];
        let mut fuzz =
            crate::fuzz::Fuzz::new("fuzz_watermarks_and_lookbacks_never_panic", 37, 3_000);
        let mut built = 0;
        for _ in 0..fuzz.iterations {
            let settings = IncrementalSettings {
                field: "updated_at".into(),
                param: "since".into(),
                param_in: ValueIn::Query,
                value: None,
                lookback: lookbacks[fuzz.rng.usize(0..lookbacks.len())],
                max_future: lookbacks[fuzz.rng.usize(0..lookbacks.len())],
                format: formats[fuzz.rng.usize(0..formats.len())].map(str::to_owned),
                timezone: fuzz.rng.bool().then(|| "Europe/Berlin".to_owned()),
            };
            let Ok(incremental) = Incremental::new(&settings) else {
                continue;
            };
            built += 1;
            let watermark: Value =
                serde_json::from_str(WATERMARKS[fuzz.rng.usize(0..WATERMARKS.len())]).unwrap();
            let _ = incremental.since(&watermark);
            let mut tracker = incremental.tracker(Some(watermark));
            for _ in 0..fuzz.rng.usize(0..4) {
                let value = WATERMARKS[fuzz.rng.usize(0..WATERMARKS.len())];
                tracker.observe(format!("{{\"id\": 1, \"updated_at\": {value}}}").as_bytes());
            }
            let _ = tracker.verdict();
            if let Some(mark) = tracker.watermark() {
                let _ = incremental.since(mark);
            }
        }
        assert!(built * 2 >= fuzz.iterations, "{built} built");
    }
}
