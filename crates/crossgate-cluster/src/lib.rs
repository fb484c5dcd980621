//! What broker replicas share through Redis (the `[cluster]` section of
//! broker.toml): each partner's rate limit, held across all replicas, and
//! notices of changes (an operator's limit, a reload) so that a change made
//! through one replica is in force at every replica within a second.
//!
//! - [`SharedLimits`]: GCRA state lives in Redis, one key per partner and
//!   mode, updated by one Lua script per round trip (in the manner of
//!   redis-cell). A replica takes a few tokens at a time and spends them
//!   in-process, so most calls never wait for Redis; tokens are counted in
//!   Redis before they are spent, so replicas together never let a partner
//!   through above its limit. When Redis cannot be reached, each partner
//!   either fails open to a local limit of its quota ÷ replicas or fails
//!   closed (`UNAVAILABLE`), as configured.
//! - [`Redis::announce`] / [`Redis::notices`]: change notices over Redis
//!   pub/sub, with operators' overrides kept in one Redis hash so that a
//!   replica that missed a notice (or started later) reads them all.
#![forbid(unsafe_code)]

mod limits;
mod store;

pub use limits::{Decision, SharedLimits};
pub use store::{Notice, Redis, Taken};

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[cluster]` of broker.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`: limits and change notices shared by replicas.
    pub redis: String,
    /// The prefix of this deployment's keys and channel: replicas of one
    /// deployment share it, other deployments on the same Redis do not.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How many replicas run: a partner that fails open gets its quota ÷
    /// this on each replica while Redis cannot be reached.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// What a partner's calls meet while Redis cannot be reached: `open`
    /// (a local limit of quota ÷ replicas) or `closed` (refused, UNAVAILABLE).
    #[serde(default)]
    pub on_redis_down: FailMode,
    /// Per partner, over `on_redis_down`.
    #[serde(default)]
    pub on_redis_down_for: BTreeMap<String, FailMode>,
    /// Connections to Redis kept open (each multiplexes many calls).
    #[serde(default = "default_pool")]
    pub pool: usize,
}

fn default_namespace() -> String {
    "crossgate".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_pool() -> usize {
    2
}

/// What a partner's calls meet while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// A local limit of the partner's quota ÷ replicas.
    #[default]
    Open,
    /// Refused with UNAVAILABLE until Redis answers again.
    Closed,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

impl ClusterConfig {
    /// The configuration's own faults, named for the operator.
    pub fn check(&self, partners: &[&str]) -> Result<(), String> {
        if self.redis.starts_with("rediss://") {
            return Err(
                "[cluster] redis: TLS to Redis (rediss://) is not built in; reach Redis over a \
                 private network (or a TLS tunnel such as stunnel) with redis://"
                    .into(),
            );
        }
        if !self.redis.starts_with("redis://") {
            return Err(format!(
                "[cluster] redis = {:?}: write redis://host:port",
                crossgate_config::redact_url(&self.redis)
            ));
        }
        if self.namespace.is_empty()
            || !self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "[cluster] namespace = {:?}: letters, digits, '-', '_' and '.' only",
                self.namespace
            ));
        }
        if self.replicas == 0 {
            return Err("[cluster] replicas must be at least 1".into());
        }
        if self.pool == 0 || self.pool > 64 {
            return Err("[cluster] pool: between 1 and 64 connections".into());
        }
        for partner in self.on_redis_down_for.keys() {
            if !partners.contains(&partner.as_str()) {
                return Err(format!(
                    "[cluster.on_redis_down_for] {partner:?} is not a party of partners.toml"
                ));
            }
        }
        Ok(())
    }

    /// The fail mode of `partner`.
    pub fn fail_mode(&self, partner: &str) -> FailMode {
        self.on_redis_down_for
            .get(partner)
            .copied()
            .unwrap_or(self.on_redis_down)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis at {url}: {message}")]
    Redis { url: String, message: String },
    /// One call took longer than its timeout (Redis busy, a fork, a
    /// network hiccup): that call only is decided by the fail mode.
    #[error("Redis at {url} did not answer in time")]
    Slow { url: String },
}
