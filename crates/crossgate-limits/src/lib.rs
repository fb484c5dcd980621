//! Per-partner rate limits: GCRA (governor) per partner and mode, with a
//! default for partners without their own, and time-of-day windows in the
//! operator's time zone that take effect at the window's edge.
//!
//! Both clocks are injected — governor's for the GCRA, a wall clock for the
//! windows — so tests drive time by hand and never sleep.
#![forbid(unsafe_code)]

mod config;

pub use config::{LimitsConfig, parse_config};

use chrono::{DateTime, NaiveTime, Utc};
use foldhash::{HashMap, HashMapExt};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Publish or query: limited separately.
pub use crossgate_config::Mode;

/// `200/s`, `12000/min`, `3600/h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub text: String,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("rate {text:?} is not N/s, N/min or N/h (e.g. \"200/s\")");
        let text = text.trim();
        // Exactly digits, a slash and a unit: nothing between, nothing hidden.
        if text.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u32 = n.parse().map_err(|_| bad())?;
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "m" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("rate {text:?} allows nothing; use at least 1"));
        }
        Ok(Rate {
            count,
            per,
            text: text.to_owned(),
        })
    }
}

/// A rate and a burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub rate: Rate,
    pub burst: u32,
}

impl Limit {
    fn quota(&self) -> Option<Quota> {
        let period = self.rate.per / self.rate.count;
        Quota::with_period(period)
            .map(|q| q.allow_burst(NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN)))
    }
}

/// A time-of-day window with its own limit (both modes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub text: String,
    pub limit: Limit,
}

impl Window {
    /// `start <= t < end`; a window may run past midnight (`22:00-02:00`).
    fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// One partner's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerLimits {
    pub publish: Limit,
    pub query: Limit,
    pub schedule: Vec<Window>,
}

impl PartnerLimits {
    pub fn uniform(limit: Limit) -> Self {
        PartnerLimits {
            publish: limit.clone(),
            query: limit,
            schedule: Vec::new(),
        }
    }

    /// An operator's override as one line (`publish 100/s 10 query 200/s 20`),
    /// as replicas share it; an override has no schedule.
    pub fn to_line(&self) -> String {
        format!(
            "publish {} {} query {} {}",
            self.publish.rate.text, self.publish.burst, self.query.rate.text, self.query.burst
        )
    }

    /// Read back [`PartnerLimits::to_line`].
    pub fn from_line(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split(' ').collect();
        let bad = || format!("{line:?} is not `publish RATE BURST query RATE BURST`");
        let [p, p_rate, p_burst, q, q_rate, q_burst] = words.as_slice() else {
            return Err(bad());
        };
        if *p != "publish" || *q != "query" {
            return Err(bad());
        }
        let limit = |rate: &str, burst: &str| -> Result<Limit, String> {
            let burst: u32 = burst.parse().map_err(|_| bad())?;
            if burst == 0 {
                return Err(bad());
            }
            Ok(Limit {
                rate: Rate::parse(rate)?,
                burst,
            })
        };
        Ok(PartnerLimits {
            publish: limit(p_rate, p_burst)?,
            query: limit(q_rate, q_burst)?,
            schedule: Vec::new(),
        })
    }

    /// The limit in force for `mode` at local time `t`, and the window it comes from.
    pub fn effective(&self, mode: Mode, t: NaiveTime) -> (&Limit, Option<&Window>) {
        if let Some(w) = self.schedule.iter().find(|w| w.contains(t)) {
            return (&w.limit, Some(w));
        }
        match mode {
            Mode::Publish => (&self.publish, None),
            Mode::Query => (&self.query, None),
        }
    }
}

/// A limit as numbers: `count` calls per `per`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota3 {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Quota3 {
    /// The time between two calls at the steady rate, in microseconds (at least 1).
    pub fn interval_micros(&self) -> u64 {
        (self.per.as_micros() as u64 / u64::from(self.count.max(1))).max(1)
    }
}

/// A refused call: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

pub use crossgate_config::ConfigError;

type Gcra<C> = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    C,
    governor::middleware::NoOpMiddleware<<C as Clock>::Instant>,
>;

/// The limiter in use for one partner and mode, and the limit it enforces.
struct Slot<C: Clock> {
    limit: Limit,
    gcra: Arc<Gcra<C>>,
}

type WallClock = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Calls over the last minute, in one-second buckets of wall-clock time.
#[derive(Debug)]
struct Counts {
    /// (second, allowed, throttled)
    buckets: [(i64, u64, u64); 60],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: [(i64::MIN, 0, 0); 60],
        }
    }
}

impl Counts {
    fn add(&mut self, second: i64, allowed: bool) {
        let slot = &mut self.buckets[second.rem_euclid(60) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        if allowed {
            slot.1 += 1;
        } else {
            slot.2 += 1;
        }
    }

    fn last_minute(&self, now: i64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(s, _, _)| *s <= now && now.saturating_sub(*s) < 60)
            .fold((0, 0), |(a, t), (_, sa, st)| (a + sa, t + st))
    }
}

/// Where a partner's limits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Set live by an operator.
    Override,
    /// Its own section of limits.toml.
    Config,
    /// limits.toml's `[default]`.
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Override => "override",
            Source::Config => "config",
            Source::Default => "default",
        }
    }
}

/// Every partner's limiters.
pub struct Limits<C: Clock = DefaultClock> {
    config: RwLock<LimitsConfig>,
    /// Limits set live by operators, over the file's.
    overrides: RwLock<BTreeMap<String, PartnerLimits>>,
    counts: Mutex<HashMap<String, Counts>>,
    /// partner → [publish, query]
    slots: RwLock<HashMap<String, [Option<Slot<C>>; 2]>>,
    clock: C,
    wall: WallClock,
}

impl Limits<DefaultClock> {
    /// Real clocks.
    pub fn new(config: LimitsConfig) -> Self {
        Self::with_clocks(config, DefaultClock::default(), Box::new(Utc::now))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl<C: Clock + Clone> Limits<C> {
    /// Injected clocks: `clock` for the GCRA, `wall` for schedule windows.
    pub fn with_clocks(config: LimitsConfig, clock: C, wall: WallClock) -> Self {
        Limits {
            config: RwLock::new(config),
            overrides: RwLock::new(BTreeMap::new()),
            counts: Mutex::new(HashMap::new()),
            slots: RwLock::new(HashMap::new()),
            clock,
            wall,
        }
    }

    /// The limits that apply to `partner` (an operator's override, its own
    /// section, or the default) and where they come from.
    pub fn partner_limits(&self, partner: &str) -> (PartnerLimits, Source) {
        if let Some(o) = read(&self.overrides).get(partner) {
            return (o.clone(), Source::Override);
        }
        let config = read(&self.config);
        match config.partners.get(partner) {
            Some(own) => (own.clone(), Source::Config),
            None => (config.default.clone(), Source::Default),
        }
    }

    /// The limit in force now for `partner` and `mode`, and its window's text.
    pub fn effective(&self, partner: &str, mode: Mode) -> (Limit, Option<String>) {
        self.with_effective(partner, mode, |limit, window| {
            (limit.clone(), window.map(|w| w.text.clone()))
        })
    }

    /// Look at the limit in force now without copying it (the hot path).
    fn with_effective<R>(
        &self,
        partner: &str,
        mode: Mode,
        f: impl FnOnce(&Limit, Option<&Window>) -> R,
    ) -> R {
        let overrides = read(&self.overrides);
        let config = read(&self.config);
        let limits = overrides
            .get(partner)
            .or_else(|| config.partners.get(partner))
            .unwrap_or(&config.default);
        let t = (self.wall)().with_timezone(&config.offset).time();
        let (limit, window) = limits.effective(mode, t);
        f(limit, window)
    }

    /// Calls of `partner` allowed and throttled over the last minute.
    pub fn last_minute(&self, partner: &str) -> (u64, u64) {
        let now = (self.wall)().timestamp();
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(partner).map_or((0, 0), |c| c.last_minute(now))
    }

    /// The limit in force now for `partner` and `mode` as numbers, without
    /// copying it (for limiters that keep their own state, e.g. a shared one).
    pub fn quota_now(&self, partner: &str, mode: Mode) -> Quota3 {
        self.with_effective(partner, mode, |limit, _| Quota3 {
            count: limit.rate.count,
            per: limit.rate.per,
            burst: limit.burst.max(1),
        })
    }

    /// Count one call of `partner` decided elsewhere, for [`Limits::last_minute`].
    pub fn count(&self, partner: &str, allowed: bool) {
        let now = (self.wall)().timestamp();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(partner) {
            Some(c) => c.add(now, allowed),
            None => {
                let mut c = Counts::default();
                c.add(now, allowed);
                counts.insert(partner.to_owned(), c);
            }
        }
    }

    /// Every operator's override.
    pub fn overrides(&self) -> BTreeMap<String, PartnerLimits> {
        read(&self.overrides).clone()
    }

    /// One call by `partner`: `Ok` if within its limit, else how long to wait.
    pub fn check(&self, partner: &str, mode: Mode) -> Result<(), Throttled> {
        let result = self.check_uncounted(partner, mode);
        let now = (self.wall)().timestamp();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(partner) {
            Some(c) => c.add(now, result.is_ok()),
            None => {
                let mut c = Counts::default();
                c.add(now, result.is_ok());
                counts.insert(partner.to_owned(), c);
            }
        }
        result
    }

    fn check_uncounted(&self, partner: &str, mode: Mode) -> Result<(), Throttled> {
        let index = mode as usize;
        // The usual case: the limiter in place enforces the limit in force.
        let current = self.with_effective(partner, mode, |limit, _| {
            let slots = read(&self.slots);
            match slots.get(partner).and_then(|s| s[index].as_ref()) {
                Some(slot) if slot.limit == *limit => Ok(slot.gcra.clone()),
                _ => Err(limit.clone()),
            }
        });
        let limit = match current {
            Ok(gcra) => return self.decide(&gcra),
            Err(limit) => limit,
        };
        // First call, or the limit changed (a window edge, an operator's
        // change): a fresh limiter with the new quota.
        let mut slots = write(&self.slots);
        let entry = slots.entry(partner.to_owned()).or_insert([None, None]);
        let gcra = match &entry[index] {
            Some(slot) if slot.limit == limit => slot.gcra.clone(),
            _ => {
                let quota = limit
                    .quota()
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
                let gcra = Arc::new(Gcra::direct_with_clock(quota, self.clock.clone()));
                entry[index] = Some(Slot {
                    limit,
                    gcra: gcra.clone(),
                });
                gcra
            }
        };
        drop(slots);
        self.decide(&gcra)
    }

    fn decide(&self, gcra: &Gcra<C>) -> Result<(), Throttled> {
        gcra.check().map_err(|not_until| Throttled {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Set a partner's limit for one mode (or both) as an operator's
    /// override, in force for the next call; it replaces any schedule.
    /// Returns the limits before.
    pub fn set(&self, partner: &str, mode: Option<Mode>, limit: Limit) -> PartnerLimits {
        let (current, _) = self.partner_limits(partner);
        let mut updated = current.clone();
        updated.schedule.clear();
        match mode {
            Some(Mode::Publish) => updated.publish = limit,
            Some(Mode::Query) => updated.query = limit,
            None => {
                updated.publish = limit.clone();
                updated.query = limit;
            }
        }
        write(&self.overrides).insert(partner.to_owned(), updated);
        current
    }

    /// The operator's override of a partner, if any.
    pub fn override_of(&self, partner: &str) -> Option<PartnerLimits> {
        read(&self.overrides).get(partner).cloned()
    }

    /// Put back an override as it was (`None`: no override).
    pub fn restore(&self, partner: &str, previous: Option<PartnerLimits>) {
        let mut overrides = write(&self.overrides);
        match previous {
            Some(p) => overrides.insert(partner.to_owned(), p),
            None => overrides.remove(partner),
        };
    }

    /// Drop an operator's override: back to limits.toml. Whether there was one.
    pub fn reset(&self, partner: &str) -> bool {
        write(&self.overrides).remove(partner).is_some()
    }

    /// Install overrides read back from their file (at start).
    pub fn set_overrides(&self, overrides: BTreeMap<String, PartnerLimits>) {
        *write(&self.overrides) = overrides;
    }

    /// Replace the file's configuration (a reload); overrides stay.
    pub fn replace(&self, new: LimitsConfig) {
        *write(&self.config) = new;
    }

    /// The overrides as a limits file, to store beside the config.
    pub fn overrides_toml(&self) -> Result<String, toml::ser::Error> {
        #[derive(serde::Serialize)]
        struct Pair<'a> {
            rate: &'a str,
            burst: u32,
        }
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            rate: &'a str,
            burst: u32,
            publish: Pair<'a>,
            query: Pair<'a>,
        }
        #[derive(serde::Serialize)]
        struct File<'a> {
            partner: std::collections::BTreeMap<&'a str, Entry<'a>>,
        }
        let overrides = read(&self.overrides);
        let file = File {
            partner: overrides
                .iter()
                .map(|(partner, l)| {
                    (
                        partner.as_str(),
                        Entry {
                            rate: &l.publish.rate.text,
                            burst: l.publish.burst,
                            publish: Pair {
                                rate: &l.publish.rate.text,
                                burst: l.publish.burst,
                            },
                            query: Pair {
                                rate: &l.query.rate.text,
                                burst: l.query.burst,
                            },
                        },
                    )
                })
                .collect(),
        };
        // Written by serde: whatever a rate's text holds, the file stays TOML.
        let body = toml::to_string(&file)?;
        Ok(format!(
            "# Limits set live by operators (crossgate limits set), written by the broker.\n\
             # `crossgate limits reset <partner>` removes an entry.\n\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests;
