//! Pacing requests: a job's `rate_limit`, and the pauses an API asks for
//! with `X-RateLimit-Remaining: 0` and a reset time.
//!
//! A `Throttle` spaces requests evenly (`10/s` is one request every 100 ms,
//! never a burst of ten) and may be shared: jobs with `rate_limit_scope =
//! "host"` on the same origin get the same one from [`HostThrottles`], the
//! registry of the jobs built together (`Job::all_from_settings`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::config::RateLimit;

#[derive(Debug, Default)]
struct State {
    /// The earliest time the next request may be sent.
    next_slot: Option<Instant>,
    /// Set when the API said its quota is spent: no request before this.
    paused_until: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
pub struct Throttle {
    /// `None` without a `rate_limit`: only API-requested pauses apply.
    interval: Option<Duration>,
    state: Arc<Mutex<State>>,
}

/// The throttles shared by origin and rate, for `rate_limit_scope = "host"`:
/// one registry for the jobs of one configuration, passed to each as it is
/// built.
#[derive(Debug, Default)]
pub struct HostThrottles(Mutex<HashMap<(String, Duration), Throttle>>);

impl HostThrottles {
    /// The throttle shared by every job calling `origin` at this rate.
    pub fn get(&self, origin: &str, limit: RateLimit) -> Throttle {
        let mut registry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        registry
            .entry((origin.to_owned(), limit.interval()))
            .or_insert_with(|| Throttle::new(Some(limit)))
            .clone()
    }
}

impl Throttle {
    /// A throttle of one job's own.
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            interval: limit.map(|l| l.interval()),
            state: Arc::default(),
        }
    }

    /// Waits until the next request may go out, and books its slot.
    pub async fn ready(&self) {
        let at = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let mut at = now;
            if let Some(paused) = state.paused_until {
                at = at.max(paused);
            }
            if let Some(interval) = self.interval {
                if let Some(slot) = state.next_slot {
                    at = at.max(slot);
                }
                // Saturating: a slot beyond what an Instant holds is "never".
                state.next_slot = Some(later(at, interval));
            }
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Whether a `rate_limit` spaces the requests.
    pub fn is_limited(&self) -> bool {
        self.interval.is_some()
    }

    /// No request before `now + wait`.
    pub fn pause_for(&self, wait: Duration) {
        let until = later(Instant::now(), wait);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
    }
}

/// `at + wait`, at most [`crate::config::LONGEST_WAIT`] ahead: a wait too
/// long for an `Instant` (a bound forgotten, a server's absurd reset) must
/// not panic.
fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(crate::config::timer(wait))
        .or_else(|| at.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(at)
}

/// Whether the response tells how much of a quota is left (whatever the
/// amount): such an API is asked one page at a time, so that a spent quota is
/// seen before the next request goes out.
pub fn announces_quota(headers: &HeaderMap) -> bool {
    headers.contains_key("x-ratelimit-remaining") || headers.contains_key("ratelimit-remaining")
}

/// How long the API asks us to wait before its quota resets, when it says
/// the quota is spent: `X-RateLimit-Remaining: 0` (or `RateLimit-Remaining`)
/// with `X-RateLimit-Reset` as epoch seconds (GitHub) or seconds from now.
pub fn quota_reset(headers: &HeaderMap) -> Option<Duration> {
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| headers.get(*name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let remaining = get(&["x-ratelimit-remaining", "ratelimit-remaining"])?;
    if remaining > 0.0 {
        return None;
    }
    let reset = get(&["x-ratelimit-reset", "ratelimit-reset"])?;
    if !reset.is_finite() || reset < 0.0 {
        return None;
    }
    // Values this large are Unix times; smaller ones are seconds from now.
    let seconds = if reset > 1_000_000_000.0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        (reset - now).max(0.0)
    } else {
        reset
    };
    // A reset absurdly far away (or garbage) must not panic; a day is the cap.
    Duration::try_from_secs_f64(seconds.min(86_400.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn quota_resets_in_seconds_or_unix_time() {
        assert_eq!(
            quota_reset(&headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "3")
            ])),
            Some(Duration::from_secs(3))
        );
        let soon = (std::time::SystemTime::now() + Duration::from_secs(30))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let wait = quota_reset(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &soon.to_string()),
        ]))
        .unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(
            quota_reset(&headers(&[
                ("x-ratelimit-remaining", "4"),
                ("x-ratelimit-reset", "3")
            ])),
            None,
            "quota left"
        );
        assert_eq!(
            quota_reset(&headers(&[("x-ratelimit-remaining", "0")])),
            None,
            "no reset time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_evenly() {
        let throttle = Throttle::new(Some("4/s".parse().unwrap()));
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..5 {
            throttle.ready().await;
            sent.push((Instant::now() - start).as_millis());
        }
        assert_eq!(sent, vec![0, 250, 500, 750, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_the_next_request() {
        let throttle = Throttle::new(None);
        let start = Instant::now();
        throttle.pause_for(Duration::from_secs(2));
        throttle.ready().await;
        assert_eq!((Instant::now() - start).as_secs(), 2);
    }

    /// `rate_limit = "1/300000000000y"` panicked with "overflow when adding
    /// duration to instant" when the first request booked the next slot;
    /// the configuration refuses it now, and the throttle saturates anyway.
    #[tokio::test(start_paused = true)]
    async fn waits_too_long_for_an_instant_saturate_instead_of_panicking() {
        let endless = RateLimit {
            count: 1,
            period: Duration::MAX,
        };
        let throttle = Throttle::new(Some(endless));
        let start = Instant::now();
        throttle.ready().await;
        assert_eq!(Instant::now(), start, "the first request goes out at once");
        throttle.pause_for(Duration::MAX);
        let booked = throttle.state.lock().unwrap().next_slot.unwrap();
        assert!(booked - start >= Duration::from_secs(86_400), "{booked:?}");
        let second = tokio::time::timeout(Duration::from_secs(3600), throttle.ready()).await;
        assert!(second.is_err(), "the second request waits");
    }

    #[test]
    fn host_scope_shares_one_throttle_per_origin_and_rate() {
        let limit: RateLimit = "2/s".parse().unwrap();
        let hosts = HostThrottles::default();
        let a = hosts.get("https://api.test", limit);
        let b = hosts.get("https://api.test", limit);
        let c = hosts.get("https://other.test", limit);
        assert!(Arc::ptr_eq(&a.state, &b.state));
        assert!(!Arc::ptr_eq(&a.state, &c.state));
    }

    /// Any quota or Retry-After header: no panic, and the wait asked for
    /// stays a duration a timer can hold.
    #[tokio::test(start_paused = true)]
    async fn fuzz_quota_and_retry_after_headers() {
        // A Retry-After of u64::MAX seconds panicked `pause_for` before it
        // saturated.
        const VALUES: [&str; 15] = [
            "0",
            "-0",
            "0.0",
            "-1",
            "1e308",
            "inf",
            "NaN",
            "18446744073709551616",
            "18446744073709551615",
            "9999999999999",
            "1.5",
            " 3 ",
            "Tue, 01 Dec 2999 00:00:00 GMT",
            "Mon, 01 Jan 1900 00:00:00 GMT",
            "soon",
        ];
        let mut fuzz = crate::fuzz::Fuzz::new("fuzz_quota_and_retry_after_headers", 31, 5_000);
        let throttle = Throttle::new(None);
        for _ in 0..fuzz.iterations {
            let mut value = || match fuzz.rng.u8(0..4) {
                0 => String::from_utf8_lossy(&fuzz.bytes(12)).into_owned(),
                _ => VALUES[fuzz.rng.usize(0..VALUES.len())].to_owned(),
            };
            let (remaining, reset, retry_after) = (value(), value(), value());
            let mut map = HeaderMap::new();
            for (name, value) in [
                ("x-ratelimit-remaining", &remaining),
                ("x-ratelimit-reset", &reset),
            ] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    map.insert(name, value);
                }
            }
            if let Some(wait) = quota_reset(&map) {
                assert!(wait <= Duration::from_secs(86_400), "{remaining} {reset}");
                throttle.pause_for(wait);
            }
            if let Some(wait) = crate::source::http::parse_retry_after(&retry_after) {
                throttle.pause_for(wait);
            }
        }
    }
}
