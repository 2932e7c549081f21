//! When a job is due: a cron line read in a time zone.
//!
//! Pure time arithmetic, no sleeping: the loop that waits lives in
//! `scheduler`. DST is croner's to handle: a fixed-time job runs once on the
//! day the clock jumps forward (its time does not exist, so it runs at the
//! next valid instant) and once on the day it falls back.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A job's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// # Errors
    /// The configuration key at fault (`schedule` or `timezone`) and why.
    pub fn new(line: &str, zone: Option<&str>) -> Result<Self, (&'static str, String)> {
        let cron = parse_cron(line).map_err(|e| ("schedule", e))?;
        let zone = match zone {
            Some(name) => parse_timezone(name).map_err(|e| ("timezone", e))?,
            None => Tz::UTC,
        };
        Ok(Self { cron, zone })
    }

    /// The first due instant strictly after `after`, or `None` if the line
    /// never matches again (a date that does not exist, say).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// How many due instants fall in `(after, until]`, counting at most `cap`.
    pub fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, cap: u64) -> u64 {
        let mut count = 0;
        let mut cursor = after;
        while count < cap {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    count += 1;
                    cursor = next;
                }
                _ => break,
            }
        }
        count
    }
}

/// Standard 5-field cron, or 6 fields with seconds first.
pub fn parse_cron(line: &str) -> Result<Cron, String> {
    let trimmed = line.trim();
    let expanded = if trimmed.starts_with('@') {
        NICKNAMES
            .iter()
            .find(|(nickname, _)| nickname.eq_ignore_ascii_case(trimmed))
            .map(|(_, expanded)| *expanded)
            .ok_or_else(|| {
                let names: Vec<&str> = NICKNAMES.iter().map(|(name, _)| *name).collect();
                format!(
                    "`{line}` is not a cron nickname; the nicknames are {}",
                    names.join(", ")
                )
            })?
    } else {
        trimmed
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if !(fields.len() == 5 || fields.len() == 6) {
        return Err(format!(
            "`{line}` is not a cron line: expected 5 fields (minute hour day month weekday) \
             or 6 (with seconds first), or a nickname such as @hourly; found {}",
            fields.len()
        ));
    }
    check_ranges(&fields).map_err(|e| format!("`{line}` is not a valid cron line: {e}"))?;
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expanded)
        .map_err(|e| format!("`{line}` is not a valid cron line: {e}"))
}

/// The cron nicknames and the lines they stand for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Each field's numbers within its range, so a mistake names the field and
/// the range (`minute 60: 0–59`) rather than a parser's position. Names
/// (`MON`, `JAN`) and specials (`L`, `W`, `#`) are left to the parser.
fn check_ranges(fields: &[&str]) -> Result<(), String> {
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let ranges: Vec<(&str, u32, u32)> = if fields.len() == 6 {
        std::iter::once(("second", 0, 59)).chain(FIVE).collect()
    } else {
        FIVE.to_vec()
    };
    for (field, (name, low, high)) in fields.iter().zip(ranges) {
        for part in field.split(',') {
            let (values, step) = match part.split_once('/') {
                Some((values, step)) => (values, Some(step)),
                None => (part, None),
            };
            if let Some(step) = step
                && step.parse::<u32>().is_ok_and(|step| step == 0)
            {
                return Err(format!("{name} step 0: a step is at least 1"));
            }
            for bound in values.split('-') {
                if let Ok(n) = bound.parse::<u32>()
                    && !(low..=high).contains(&n)
                {
                    return Err(format!("{name} {n}: {low}–{high}"));
                }
            }
        }
    }
    Ok(())
}

/// An IANA time zone name such as `Europe/Berlin` or `UTC`.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone such as Europe/Berlin or UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// Every due instant in `[from, to)`.
    fn occurrences(
        schedule: &Schedule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = from - chrono::Duration::seconds(1);
        while let Some(next) = schedule.next_after(cursor) {
            if next >= to {
                break;
            }
            out.push(next);
            cursor = next;
        }
        out
    }

    #[test]
    fn nicknames_stand_for_their_lines_and_ranges_name_the_field() {
        let hourly = Schedule::new("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(utc(2026, 1, 1, 10, 30, 0)),
            Some(utc(2026, 1, 1, 11, 0, 0))
        );
        let daily = Schedule::new("@DAILY", None).unwrap();
        assert_eq!(
            daily.next_after(utc(2026, 1, 1, 10, 30, 0)),
            Some(utc(2026, 1, 2, 0, 0, 0))
        );
        let error = |line: &str| Schedule::new(line, None).unwrap_err().1;
        assert!(
            error("60 0 * * *").contains("minute 60: 0–59"),
            "{}",
            error("60 0 * * *")
        );
        assert!(error("0 0 24 * * *").contains("hour 24: 0–23"));
        assert!(error("0 0 0 * *").contains("day of month 0: 1–31"));
        assert!(error("0 0 1 13 *").contains("month 13: 1–12"));
        assert!(error("0 0 * * 1-9").contains("day of week 9: 0–7"));
        assert!(error("*/0 * * * *").contains("minute step 0"));
        assert!(error("@fortnightly").contains("the nicknames are @yearly"));
    }

    #[test]
    fn cron_lines_with_five_or_six_fields_parse() {
        for ok in [
            "*/15 * * * *",
            "0 0 * * FRI",
            "*/5 * * * * *",
            "0 30 2 * * *",
        ] {
            assert!(parse_cron(ok).is_ok(), "{ok:?} should parse");
        }
        for bad in ["* * * *", "61 * * * *", "every minute", "* * * * * * *", ""] {
            assert!(parse_cron(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn five_fields_are_minutes_and_six_start_with_seconds() {
        let minutely = Schedule::new("*/15 * * * *", None).unwrap();
        assert_eq!(
            minutely.next_after(utc(2026, 3, 1, 10, 7, 30)),
            Some(utc(2026, 3, 1, 10, 15, 0))
        );
        let secondly = Schedule::new("*/20 * * * * *", None).unwrap();
        assert_eq!(
            secondly.next_after(utc(2026, 3, 1, 10, 7, 30)),
            Some(utc(2026, 3, 1, 10, 7, 40))
        );
    }

    #[test]
    fn unknown_time_zones_are_refused() {
        let error = Schedule::new("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(error.0, "timezone");
        assert!(error.1.contains("Mars/Olympus"));
    }

    #[test]
    fn a_daily_job_runs_once_on_the_spring_forward_day() {
        // Europe/Berlin skips 02:00–03:00 local on 2026-03-29.
        let schedule = Schedule::new("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let runs = occurrences(
            &schedule,
            utc(2026, 3, 28, 0, 0, 0),
            utc(2026, 3, 31, 0, 0, 0),
        );
        assert_eq!(runs.len(), 3, "one run per day, none skipped: {runs:?}");
        assert_eq!(runs[0], utc(2026, 3, 28, 1, 30, 0), "02:30 CET");
        assert_eq!(runs[2], utc(2026, 3, 30, 0, 30, 0), "02:30 CEST");
    }

    #[test]
    fn a_daily_job_runs_once_on_the_fall_back_day() {
        // Europe/Berlin passes 02:00–03:00 local twice on 2026-10-25.
        let schedule = Schedule::new("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let runs = occurrences(
            &schedule,
            utc(2026, 10, 24, 0, 0, 0),
            utc(2026, 10, 27, 0, 0, 0),
        );
        assert_eq!(runs.len(), 3, "one run per day, none doubled: {runs:?}");
    }

    #[test]
    fn an_hourly_job_follows_real_hours_across_dst() {
        let schedule = Schedule::new("0 * * * *", Some("Europe/Berlin")).unwrap();
        let spring = occurrences(
            &schedule,
            utc(2026, 3, 28, 23, 0, 0),
            utc(2026, 3, 29, 22, 0, 0),
        );
        let fall = occurrences(
            &schedule,
            utc(2026, 10, 24, 22, 0, 0),
            utc(2026, 10, 25, 23, 0, 0),
        );
        assert_eq!(spring.len(), 23, "the local day has 23 hours");
        assert_eq!(fall.len(), 25, "the local day has 25 hours");
        for runs in [&spring, &fall] {
            for pair in runs.windows(2) {
                assert_eq!(pair[1] - pair[0], chrono::Duration::hours(1), "{runs:?}");
            }
        }
    }

    #[test]
    fn missed_ticks_are_counted() {
        let schedule = Schedule::new("* * * * * *", None).unwrap();
        let start = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(
            schedule.count_between(start, start + chrono::Duration::seconds(3), 100),
            3
        );
        assert_eq!(
            schedule.count_between(start, start + chrono::Duration::seconds(3), 2),
            2
        );
        assert_eq!(schedule.count_between(start, start, 100), 0);
    }
}
