//! Incremental sync: ask the API only for what changed since the watermark.
//!
//! The watermark is the highest value of `field` among the records of the
//! last run that read every page; it comes from the data, never from our
//! clock. It is promoted in the same transaction as that run's last page, not
//! page by page: an API that does not return records in `field` order would
//! otherwise let a run killed half-way move the watermark past records it
//! never read, and the next run would skip them for good.
//!
//! Values are RFC 3339 timestamps or numbers: epoch seconds, or, told apart
//! by size, milliseconds (above 10^11, which as seconds would be past the
//! year 5000), microseconds (above 10^14) and nanoseconds (above 10^17).
//! Integers are computed with integers, so no precision is lost.
//!
//! The API must filter with "at or after" (`>=`) and `lookback` should cover
//! the records it makes visible late (and, for page or offset pagination,
//! how long a run takes): what is re-read is unchanged and costs no write.

use std::cmp::Ordering;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::Value;

use crate::config::IncrementalSettings;
use crate::record::KeyField;

/// Ticks per second of an epoch number, told apart by its size.
fn ticks_per_second(magnitude: f64) -> i128 {
    match magnitude {
        m if m > 1e17 => 1_000_000_000,
        m if m > 1e14 => 1_000_000,
        m if m > 1e11 => 1_000,
        _ => 1,
    }
}

/// A job's incremental settings, checked.
#[derive(Debug, Clone)]
pub struct Incremental {
    pointer: String,
    /// The configured spelling of `field`, for messages.
    field: String,
    param: String,
    lookback: Duration,
}

/// A comparable reading of a record's `field`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mark {
    Time(DateTime<FixedOffset>),
    /// Integers stay exact (epoch nanoseconds exceed f64's 2^53).
    Integer(i128),
    Float(f64),
}

impl Mark {
    fn of(value: &Value) -> Option<Mark> {
        match value {
            Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(Mark::Time),
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
}

impl Incremental {
    /// # Errors
    /// When `field` is not a field name or JSON pointer, or `param` is empty.
    pub fn new(settings: &IncrementalSettings) -> Result<Self, (&'static str, String)> {
        // The same spelling rules as key fields: `updated_at` or `/meta/updated`.
        let field =
            KeyField::parse_pointer(&settings.field).map_err(|e| ("incremental.field", e))?;
        if settings.param.trim().is_empty() {
            return Err(("incremental.param", "must not be empty".to_owned()));
        }
        Ok(Self {
            pointer: field,
            field: settings.field.clone(),
            param: settings.param.clone(),
            lookback: settings.lookback,
        })
    }

    /// The query parameter for a run that starts from `watermark`:
    /// `(param, watermark - lookback)`, in the watermark's own format.
    pub fn since(&self, watermark: &Value) -> Option<(String, String)> {
        let mark = Mark::of(watermark)?;
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
                    (t.with_timezone(&Utc) - lookback).to_rfc3339_opts(SecondsFormat::AutoSi, true)
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
    pub fn tracker(&self, watermark: Option<Value>) -> WatermarkTracker {
        let best = watermark.and_then(|v| Mark::of(&v).map(|m| (m, v)));
        WatermarkTracker {
            segments: crate::json_pointer::segments(&self.pointer),
            field: self.field.clone(),
            best,
            unreadable: 0,
        }
    }
}

/// The highest `field` seen so far in a run (or stored before it).
#[derive(Debug)]
pub struct WatermarkTracker {
    /// The field's pointer, as segments.
    segments: Vec<String>,
    field: String,
    best: Option<(Mark, Value)>,
    /// Records whose `field` was missing or not a timestamp or number.
    unreadable: u64,
}

impl WatermarkTracker {
    /// Sees one record, as JSON text.
    pub fn observe(&mut self, record: &[u8]) {
        self.observe_field(self.field_of(record).as_ref());
    }

    /// The incremental field of a record (JSON text), if it has one.
    pub fn field_of(&self, record: &[u8]) -> Option<Value> {
        let field = crate::raw_json::pointer(record, &self.segments)?;
        serde_json::from_slice(field).ok()
    }

    /// Like [`WatermarkTracker::observe`], given the record's field.
    pub fn observe_field(&mut self, field: Option<&Value>) {
        let Some(value) = field else {
            self.unreadable += 1;
            return;
        };
        let Some(mark) = Mark::of(value) else {
            self.unreadable += 1;
            return;
        };
        let higher = match &self.best {
            None => true,
            Some((best, _)) => mark.cmp(best) == Some(Ordering::Greater),
        };
        if higher {
            self.best = Some((mark, value.clone()));
        }
    }

    /// The watermark to store: the highest value seen, as the API wrote it.
    pub fn watermark(&self) -> Option<&Value> {
        self.best.as_ref().map(|(_, value)| value)
    }

    /// Logs once per run when records could not move the watermark.
    pub fn warn_if_unreadable(&self) {
        if self.unreadable > 0 {
            tracing::warn!(
                field = %self.field,
                records = self.unreadable,
                "Records without a readable incremental field (an RFC 3339 timestamp or a \
                 number) were stored but do not move the watermark."
            );
        }
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
            lookback: Duration::from_secs(lookback),
        })
        .unwrap()
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
            let (param, value) = incremental(lookback).since(&watermark).unwrap();
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
}
