//! Limits held across replicas: GCRA in Redis, tokens spent in-process.

use crate::store::{Redis, Taken};
use crate::{ClusterConfig, FailMode};
use crossgate_limits::{Limits, Mode, Quota3};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long tokens taken from Redis may be spent here. Tokens left over
/// then are dropped, never carried: a partner gets at most its limit, and
/// at low rates a little less.
const LEASE: Duration = Duration::from_millis(100);

/// How long after a failed Redis call decisions stay local (the fail mode)
/// before Redis is tried again.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// What one call of a partner meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over its limit: retry after this long.
    Throttled(Duration),
    /// Redis cannot be reached and the partner fails closed.
    Unavailable(String),
}

/// Tokens taken from Redis for one partner and mode.
#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    quota: Option<Quota3>,
    tokens: u32,
    expires: Option<Instant>,
}

/// The local GCRA used while Redis is down (failing open).
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    quota: Option<Quota3>,
    /// Theoretical arrival time of the next call.
    tat: Option<Instant>,
}

/// A partner's limits, held across every replica sharing one Redis.
pub struct SharedLimits {
    /// The limits in force (files, overrides, windows): what the limit *is*.
    pub limits: Arc<Limits>,
    redis: Arc<Redis>,
    config: ClusterConfig,
    leases: Mutex<HashMap<String, [Lease; 2]>>,
    fallback: Mutex<HashMap<String, [Local; 2]>>,
    down_until: Mutex<Option<Instant>>,
    /// Slow answers in a row: (how many, since when).
    slow: Mutex<(u32, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens to take at once: about 20 ms of the partner's rate, at least one,
/// never more than its burst.
fn batch(q: &Quota3) -> u32 {
    let per_second = f64::from(q.count) / q.per.as_secs_f64().max(1e-9);
    ((per_second * 0.02).ceil() as u32).clamp(1, q.burst.clamp(1, 1000))
}

impl SharedLimits {
    pub fn new(limits: Arc<Limits>, redis: Arc<Redis>, config: ClusterConfig) -> Self {
        SharedLimits {
            limits,
            redis,
            config,
            leases: Mutex::default(),
            fallback: Mutex::default(),
            down_until: Mutex::default(),
            slow: Mutex::new((0, Instant::now())),
        }
    }

    /// The decision when it can be made in-process: a token taken before
    /// is spent, or Redis is known to be down (the fail mode decides).
    /// `None`: ask Redis ([`SharedLimits::check_shared`]).
    pub fn check_local(&self, partner: &str, mode: Mode) -> Option<Decision> {
        let quota = self.limits.quota_now(partner, mode);
        let now = Instant::now();
        {
            let mut leases = lock(&self.leases);
            if let Some(lease) = leases.get_mut(partner).map(|l| &mut l[mode as usize])
                && lease.quota == Some(quota)
                && lease.tokens > 0
                && lease.expires.is_some_and(|t| now < t)
            {
                lease.tokens -= 1;
                drop(leases);
                self.limits.count(partner, true);
                return Some(Decision::Allowed);
            }
        }
        if lock(&self.down_until).is_some_and(|t| now < t) {
            return Some(self.redis_down(partner, mode, quota, now));
        }
        None
    }

    /// Take tokens from Redis and spend one.
    pub async fn check_shared(&self, partner: &str, mode: Mode) -> Decision {
        let quota = self.limits.quota_now(partner, mode);
        let want = batch(&quota);
        let taken = self
            .redis
            .take(
                partner,
                mode.as_str(),
                quota.interval_micros(),
                quota.burst,
                want,
            )
            .await;
        let now = Instant::now();
        match taken {
            Ok(Taken::Tokens(n)) => {
                {
                    let mut leases = lock(&self.leases);
                    let lease = &mut leases.entry(partner.to_owned()).or_default()[mode as usize];
                    // Tokens still held keep their own deadline (they are
                    // spent first, none outlives its 100 ms); fresh ones get
                    // one of their own.
                    let carried =
                        if lease.quota == Some(quota) && lease.expires.is_some_and(|t| now < t) {
                            lease.tokens
                        } else {
                            0
                        };
                    *lease = if carried > 0 {
                        Lease {
                            tokens: carried.saturating_add(n - 1),
                            ..*lease
                        }
                    } else {
                        Lease {
                            quota: Some(quota),
                            tokens: n - 1,
                            expires: Some(now + LEASE),
                        }
                    };
                }
                self.limits.count(partner, true);
                Decision::Allowed
            }
            Ok(Taken::Wait(wait)) => {
                self.limits.count(partner, false);
                Decision::Throttled(wait)
            }
            // A slow answer: this call follows the fail mode, the next asks
            // Redis again; three within a second, and Redis counts as down
            // (it hangs, or the network drops what it sends).
            Err(crate::ClusterError::Slow { .. }) => {
                let mut slow = lock(&self.slow);
                *slow = match *slow {
                    (n, since) if now.duration_since(since) < DOWN_FOR => (n + 1, since),
                    _ => (1, now),
                };
                if slow.0 >= 3 {
                    *slow = (0, now);
                    drop(slow);
                    tracing::warn!(
                        "Redis answers too slowly: partners' limits follow their fail mode for a second"
                    );
                    *lock(&self.down_until) = Some(now + DOWN_FOR);
                }
                self.redis_down(partner, mode, quota, now)
            }
            Err(e) => {
                let mut down = lock(&self.down_until);
                if down.is_none_or(|t| now >= t) {
                    tracing::warn!(error = %e, "Redis cannot be reached: partners' limits follow their fail mode for a second");
                }
                *down = Some(now + DOWN_FOR);
                drop(down);
                self.redis_down(partner, mode, quota, now)
            }
        }
    }

    /// The fail mode's decision.
    fn redis_down(&self, partner: &str, mode: Mode, quota: Quota3, now: Instant) -> Decision {
        if self.config.fail_mode(partner) == FailMode::Closed {
            self.limits.count(partner, false);
            return Decision::Unavailable(format!(
                "{partner}'s rate limit is held in Redis, which cannot be reached; \
                 {partner} fails closed: retry when it answers"
            ));
        }
        // Open: this replica's share of the quota.
        let replicas = self.config.replicas.max(1);
        let interval =
            Duration::from_micros(quota.interval_micros().saturating_mul(u64::from(replicas)));
        let burst = (quota.burst / replicas).max(1);
        let decision = {
            let mut fallback = lock(&self.fallback);
            let local = &mut fallback.entry(partner.to_owned()).or_default()[mode as usize];
            if local.quota != Some(quota) {
                *local = Local {
                    quota: Some(quota),
                    tat: None,
                };
            }
            let tat = local.tat.map_or(now, |t| t.max(now));
            let ahead = tat - now;
            let tolerance = interval * (burst - 1);
            if ahead <= tolerance {
                local.tat = Some(tat + interval);
                Decision::Allowed
            } else {
                Decision::Throttled(ahead - tolerance)
            }
        };
        self.limits.count(partner, decision == Decision::Allowed);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(count: u32, secs: u64, burst: u32) -> Quota3 {
        Quota3 {
            count,
            per: Duration::from_secs(secs),
            burst,
        }
    }

    #[test]
    fn a_batch_is_about_twenty_milliseconds_of_the_rate_within_the_burst() {
        assert_eq!(batch(&q(100, 1, 10)), 2);
        assert_eq!(batch(&q(10_000, 1, 50)), 50);
        assert_eq!(batch(&q(10_000, 1, 500)), 200);
        assert_eq!(batch(&q(5, 1, 1)), 1);
        assert_eq!(batch(&q(60, 3600, 5)), 1);
    }
}
