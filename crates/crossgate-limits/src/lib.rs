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
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Publish or query: limited separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Query,
}

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
        let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
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
            text: text.trim().to_owned(),
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

/// A refused call: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

/// A config that cannot be used: `<file>:<line>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

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

/// Every partner's limiters.
pub struct Limits<C: Clock = DefaultClock> {
    config: RwLock<LimitsConfig>,
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

impl<C: Clock + Clone> Limits<C> {
    /// Injected clocks: `clock` for the GCRA, `wall` for schedule windows.
    pub fn with_clocks(config: LimitsConfig, clock: C, wall: WallClock) -> Self {
        Limits {
            config: RwLock::new(config),
            slots: RwLock::new(HashMap::new()),
            clock,
            wall,
        }
    }

    fn local_time(&self, config: &LimitsConfig) -> NaiveTime {
        (self.wall)().with_timezone(&config.offset).time()
    }

    /// The limits that apply to `partner` (its own or the default).
    pub fn partner_limits(&self, partner: &str) -> PartnerLimits {
        let config = self.config.read().unwrap_or_else(|p| p.into_inner());
        config
            .partners
            .get(partner)
            .unwrap_or(&config.default)
            .clone()
    }

    /// The limit in force now for `partner` and `mode`, and its window's text.
    pub fn effective(&self, partner: &str, mode: Mode) -> (Limit, Option<String>) {
        let config = self.config.read().unwrap_or_else(|p| p.into_inner());
        let t = self.local_time(&config);
        let limits = config.partners.get(partner).unwrap_or(&config.default);
        let (limit, window) = limits.effective(mode, t);
        (limit.clone(), window.map(|w| w.text.clone()))
    }

    /// One call by `partner`: `Ok` if within its limit, else how long to wait.
    pub fn check(&self, partner: &str, mode: Mode) -> Result<(), Throttled> {
        let (limit, _) = self.effective(partner, mode);
        let index = mode as usize;
        {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = slots.get(partner).and_then(|s| s[index].as_ref())
                && slot.limit == limit
            {
                return self.decide(&slot.gcra);
            }
        }
        // First call, or the limit changed (a window edge, an operator's
        // change): a fresh limiter with the new quota.
        let gcra = Arc::new(Gcra::direct_with_clock(
            limit
                .quota()
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)),
            self.clock.clone(),
        ));
        {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            let entry = slots.entry(partner.to_owned()).or_insert([None, None]);
            match &entry[index] {
                Some(slot) if slot.limit == limit => {
                    let existing = slot.gcra.clone();
                    drop(slots);
                    return self.decide(&existing);
                }
                _ => {
                    entry[index] = Some(Slot {
                        limit,
                        gcra: gcra.clone(),
                    })
                }
            }
        }
        self.decide(&gcra)
    }

    fn decide(&self, gcra: &Gcra<C>) -> Result<(), Throttled> {
        gcra.check().map_err(|not_until| Throttled {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Replace a partner's limit for one mode (or both): in force for the next call.
    pub fn set(&self, partner: &str, mode: Option<Mode>, limit: Limit) {
        let mut config = self.config.write().unwrap_or_else(|p| p.into_inner());
        let current = config
            .partners
            .get(partner)
            .unwrap_or(&config.default)
            .clone();
        let mut updated = current;
        match mode {
            Some(Mode::Publish) => updated.publish = limit,
            Some(Mode::Query) => updated.query = limit,
            None => {
                updated.publish = limit.clone();
                updated.query = limit;
            }
        }
        config.partners.insert(partner.to_owned(), updated);
    }

    /// Replace the whole configuration (a reloaded file).
    pub fn replace(&self, new: LimitsConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
    }
}

#[cfg(test)]
mod tests;
