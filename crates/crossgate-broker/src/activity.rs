//! What each partner is doing right now, for `crossgate top`: calls,
//! throttled calls and errors per second, and the 99th percentile of the
//! time its answered calls took — kept per second for the last
//! [`SECONDS`] seconds, in memory, per replica.
//!
//! - calls/s, throttled/s and errors/s are those of the last complete second;
//! - errors are failures on the gateway's side or the provider's (internal,
//!   unavailable, deadline exceeded, unknown, aborted, data loss); a denial,
//!   an invalid record or "not found" is an answer, not an error;
//! - p99 is of the calls answered (not throttled) over the last ten seconds,
//!   as the upper bound of its latency bucket ([`BOUNDS_MICROS`]).

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Code;

/// Seconds of history kept.
pub const SECONDS: u64 = 12;
/// Seconds the p99 is taken over.
pub const P99_SECONDS: u64 = 10;

/// Upper bounds of the latency buckets, in microseconds; the last bucket
/// holds everything slower.
pub const BOUNDS_MICROS: [u64; 24] = [
    100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000,
    30_000, 50_000, 75_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

#[derive(Clone, Copy, Default)]
struct Second {
    /// Which second since start this bucket holds.
    at: u64,
    calls: u32,
    throttled: u32,
    errors: u32,
    latency: [u32; BOUNDS_MICROS.len() + 1],
}

/// A partner's recent activity, as [`Activity::now`] reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recent {
    pub calls_per_second: f64,
    pub throttled_per_second: f64,
    pub errors_per_second: f64,
    /// `None` when no call was answered in the last ten seconds;
    /// `Duration::MAX` when it is slower than the last bound (10 s).
    pub p99: Option<Duration>,
    /// Answered calls the p99 is taken over.
    pub answered: u64,
}

/// Per-partner activity; partners are fixed when the broker starts.
pub struct Activity {
    start: Instant,
    partners: HashMap<String, Mutex<[Second; SECONDS as usize]>>,
}

impl Activity {
    pub fn new<'a>(partners: impl IntoIterator<Item = &'a str>) -> Self {
        Activity {
            start: Instant::now(),
            partners: partners
                .into_iter()
                .map(|p| {
                    (
                        p.to_owned(),
                        Mutex::new([Second::default(); SECONDS as usize]),
                    )
                })
                .collect(),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        // From 1, so that an unused bucket (at 0) is never taken as current.
        at.saturating_duration_since(self.start).as_secs() + 1
    }

    /// Count one call of `partner` that ended with `code` after `took`.
    pub fn record(&self, partner: &str, code: Code, took: Duration) {
        self.record_at(partner, code, took, Instant::now());
    }

    fn record_at(&self, partner: &str, code: Code, took: Duration, at: Instant) {
        let Some(ring) = self.partners.get(partner) else {
            return;
        };
        let now = self.second(at);
        let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut ring[(now % SECONDS) as usize];
        if slot.at != now {
            *slot = Second {
                at: now,
                ..Second::default()
            };
        }
        slot.calls += 1;
        match code {
            Code::ResourceExhausted => slot.throttled += 1,
            code => {
                if is_error(code) {
                    slot.errors += 1;
                }
                let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
                let bucket = BOUNDS_MICROS
                    .iter()
                    .position(|&b| micros <= b)
                    .unwrap_or(BOUNDS_MICROS.len());
                slot.latency[bucket] += 1;
            }
        }
    }

    /// `partner`'s activity now; `None` for a partner the broker does not know.
    pub fn now(&self, partner: &str) -> Option<Recent> {
        self.at(partner, Instant::now())
    }

    fn at(&self, partner: &str, at: Instant) -> Option<Recent> {
        let ring = self.partners.get(partner)?;
        let now = self.second(at);
        let ring = *ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut recent = Recent::default();
        let last = now - 1;
        if let Some(s) = ring.iter().find(|s| s.at == last && last > 0) {
            recent.calls_per_second = f64::from(s.calls);
            recent.throttled_per_second = f64::from(s.throttled);
            recent.errors_per_second = f64::from(s.errors);
        }
        let mut latency = [0u64; BOUNDS_MICROS.len() + 1];
        for s in ring
            .iter()
            .filter(|s| s.at > 0 && s.at <= now && now - s.at < P99_SECONDS)
        {
            for (sum, n) in latency.iter_mut().zip(s.latency) {
                *sum += u64::from(n);
            }
        }
        recent.answered = latency.iter().sum();
        if recent.answered > 0 {
            // The smallest bucket holding at least 99 % of the calls.
            let wanted = recent.answered.saturating_mul(99).div_ceil(100);
            let mut seen = 0;
            for (i, n) in latency.iter().enumerate() {
                seen += n;
                if seen >= wanted {
                    // Past the last bound: `Duration::MAX`, "slower than 10 s".
                    recent.p99 = Some(
                        BOUNDS_MICROS
                            .get(i)
                            .map_or(Duration::MAX, |&b| Duration::from_micros(b)),
                    );
                    break;
                }
            }
        }
        Some(recent)
    }
}

/// A failure on the gateway's side or the provider's, not an answer to the
/// caller's request.
fn is_error(code: Code) -> bool {
    matches!(
        code,
        Code::Internal
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_last_complete_second_is_reported_and_the_current_one_is_not() {
        let a = Activity::new(["education", "customs"]);
        let t0 = a.start;
        for _ in 0..7 {
            a.record_at("education", Code::Ok, ms(1), t0 + ms(100));
        }
        a.record_at("education", Code::ResourceExhausted, ms(0), t0 + ms(200));
        a.record_at("education", Code::Unavailable, ms(3), t0 + ms(300));
        a.record_at("education", Code::PermissionDenied, ms(1), t0 + ms(300));
        // Still within the first second: nothing complete yet.
        let now = a.at("education", t0 + ms(900)).unwrap();
        assert_eq!(now.calls_per_second, 0.0);
        // A second later: that second's counts.
        let now = a.at("education", t0 + ms(1500)).unwrap();
        assert_eq!(now.calls_per_second, 10.0);
        assert_eq!(now.throttled_per_second, 1.0);
        assert_eq!(now.errors_per_second, 1.0, "a denial is not an error");
        assert_eq!(now.answered, 9, "throttled calls are not in the p99");
        // Two seconds later: that second had nothing.
        let later = a.at("education", t0 + ms(2500)).unwrap();
        assert_eq!(later.calls_per_second, 0.0);
        assert_eq!(later.answered, 9, "the p99 window is ten seconds");
        // Eleven seconds later the calls have left the p99 window.
        let gone = a.at("education", t0 + ms(11_500)).unwrap();
        assert_eq!(gone.answered, 0);
        assert_eq!(gone.p99, None);
        assert_eq!(
            a.at("customs", t0 + ms(1500)).unwrap(),
            Recent::default(),
            "partners are counted apart"
        );
        assert!(a.now("nobody").is_none());
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_holding_the_99th_percentile() {
        let a = Activity::new(["education"]);
        let t0 = a.start;
        for _ in 0..99 {
            a.record_at("education", Code::Ok, Duration::from_micros(900), t0);
        }
        a.record_at("education", Code::Ok, ms(40), t0);
        let r = a.at("education", t0 + ms(1000)).unwrap();
        assert_eq!(r.p99, Some(ms(1)), "99 of 100 took at most 1 ms");
        a.record_at("education", Code::Ok, ms(40), t0);
        let r = a.at("education", t0 + ms(1000)).unwrap();
        assert_eq!(r.p99, Some(ms(50)), "2 of 101 took 40 ms");
        a.record_at("education", Code::Ok, Duration::from_secs(60), t0);
        let r = a.at("education", t0 + ms(1000)).unwrap();
        assert_eq!(r.answered, 102);
        assert_eq!(r.p99, Some(ms(50)));
        for _ in 0..10 {
            a.record_at("education", Code::Ok, Duration::from_secs(60), t0);
        }
        let r = a.at("education", t0 + ms(1000)).unwrap();
        assert_eq!(r.p99, Some(Duration::MAX), "slower than every bound");
    }

    #[test]
    fn a_slot_reused_after_the_ring_wraps_starts_from_zero() {
        let a = Activity::new(["education"]);
        let t0 = a.start;
        a.record_at("education", Code::Ok, ms(1), t0 + ms(500));
        let wrapped = t0 + Duration::from_secs(SECONDS) + ms(500);
        a.record_at("education", Code::Ok, ms(1), wrapped);
        let r = a.at("education", wrapped + ms(1000)).unwrap();
        assert_eq!(r.calls_per_second, 1.0);
        assert_eq!(r.answered, 1);
    }
}
