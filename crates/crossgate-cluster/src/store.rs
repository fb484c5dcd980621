//! Redis: a small pool of multiplexed connections, the GCRA script, the
//! overrides hash and the change channel.

use crate::ClusterError;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Take up to `want` tokens of a GCRA whose state (the theoretical arrival
/// time, in microseconds of Redis's clock) is KEYS[1]. ARGV: the interval
/// between calls (µs), the burst, `want`. Answers {granted, wait µs}: the
/// tokens granted now, or none and how long until one is due. Redis's own
/// clock is used, so replicas' clocks do not matter. Numbers stay below
/// 2^53 (µs since 1970), exact in Lua's doubles; they are stored as
/// integers written with %.0f, never in exponent form.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local room = math.floor((now + interval * burst - tat) / interval)
local granted = math.min(want, room)
if granted <= 0 then
  return {0, tat - now - interval * (burst - 1)}
end
local new = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {granted, 0}
"#;

/// Reserve one use of a counted approval (KEYS[1]: its uses spent or
/// reserved across replicas). ARGV: the uses it allows, and the replica's
/// own count (from the log and its own answers), below which the shared
/// count never goes (a Redis restarted empty starts from what the log
/// shows). Answers the count after the reservation, or -1: all used.
const RESERVE_USE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local floor = tonumber(ARGV[2])
if n < floor then n = floor end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], string.format('%d', n))
  return -1
end
redis.call('SET', KEYS[1], string.format('%d', n + 1))
return n + 1
"#;

/// Give one reserved use back (the answer was not released).
const RETURN_USE: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if n > 0 then redis.call('SET', KEYS[1], string.format('%d', n - 1)) end
return 0
"#;

/// What Redis granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// This many tokens (at least one).
    Tokens(u32),
    /// None; the next is due after this long.
    Wait(Duration),
}

/// A change another replica made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Operators' overrides changed: read them again ([`Redis::overrides`]).
    Overrides,
    /// A file was reloaded somewhere: compare [`Redis::files`] with what is
    /// in force here.
    Files,
    /// An operator replayed deliveries to these receivers: their lanes try
    /// at once.
    Replayed { receivers: Vec<String> },
    /// An operator purged these deliveries: a replica holding one drops it.
    Purged { receiver: String, ids: Vec<String> },
    /// The subscription was (re)made, or it is time to look again: notices
    /// may have been missed.
    Resync,
}

impl Notice {
    /// `what from [payload]`, as sent on the channel.
    fn message(&self, from: &str) -> String {
        match self {
            Notice::Overrides => format!("overrides {from}"),
            Notice::Files => format!("files {from}"),
            Notice::Replayed { receivers } => format!("replayed {from} {}", receivers.join(",")),
            Notice::Purged { receiver, ids } => {
                format!("purged {from} {receiver} {}", ids.join(","))
            }
            Notice::Resync => format!("resync {from}"),
        }
    }

    /// A message back into (notice, sender); `None` for anything else.
    fn parse(text: &str) -> Option<(Notice, &str)> {
        let mut words = text.split(' ');
        let (what, from) = (words.next()?, words.next()?);
        let list = |w: Option<&str>| -> Vec<String> {
            w.unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let notice = match what {
            "overrides" => Notice::Overrides,
            "files" => Notice::Files,
            "replayed" => Notice::Replayed {
                receivers: list(words.next()),
            },
            "purged" => Notice::Purged {
                receiver: words.next()?.to_owned(),
                ids: list(words.next()),
            },
            _ => return None,
        };
        Some((notice, from))
    }
}

/// One slot of the pool: a connection once made, and when to try again
/// after a failure to make one.
#[derive(Default)]
struct Slot {
    conn: Option<ConnectionManager>,
    retry_at: Option<Instant>,
}

/// The replicas' shared Redis.
pub struct Redis {
    client: redis::Client,
    url: String,
    namespace: String,
    /// This replica, so that it skips its own notices.
    replica: String,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    /// How long a call may take (a limit decision waits this long at most).
    timeout: Duration,
    script: redis::Script,
    reserve_use: redis::Script,
    return_use: redis::Script,
}

/// How long making a connection may take (a Redis across a network, a
/// name to resolve), apart from a call's own timeout.
const CONNECT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Redis {
    /// Nothing is connected yet: the first call connects, and a Redis that
    /// is down at start is not a reason for the broker not to start.
    pub fn new(
        url: &str,
        namespace: &str,
        replica: &str,
        pool: usize,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let shown = crossgate_config::redact_url(url);
        let client = redis::Client::open(url).map_err(|e| ClusterError::Redis {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(Redis {
            client,
            url: shown,
            namespace: namespace.to_owned(),
            replica: replica.to_owned(),
            slots: (0..pool.max(1)).map(|_| Mutex::default()).collect(),
            next: AtomicUsize::new(0),
            timeout,
            script: redis::Script::new(GCRA),
            reserve_use: redis::Script::new(RESERVE_USE),
            return_use: redis::Script::new(RETURN_USE),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Redis {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// A connection of the pool, made if need be (at most once a second
    /// per slot after a failure).
    async fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        {
            let slot = lock(&self.slots[i]);
            if let Some(c) = &slot.conn {
                return Ok(c.clone());
            }
            if slot.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(self.error("not reachable (tried less than a second ago)"));
            }
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let made = tokio::time::timeout(
            CONNECT,
            self.client.get_connection_manager_with_config(config),
        )
        .await;
        let mut slot = lock(&self.slots[i]);
        match made {
            Ok(Ok(c)) => {
                slot.conn = Some(c.clone());
                slot.retry_at = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                slot.retry_at = Some(Instant::now() + Duration::from_secs(1));
                Err(self.error(e))
            }
            Err(_) => {
                slot.retry_at = Some(Instant::now() + Duration::from_secs(1));
                Err(self.error("no connection in time"))
            }
        }
    }

    /// Run one command or script call within the timeout.
    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_timeout() => Err(ClusterError::Slow {
                url: self.url.clone(),
            }),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(ClusterError::Slow {
                url: self.url.clone(),
            }),
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.namespace.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Take up to `want` tokens of `partner`'s limit for `mode`.
    pub async fn take(
        &self,
        partner: &str,
        mode: &str,
        interval_micros: u64,
        burst: u32,
        want: u32,
    ) -> Result<Taken, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.key(&["limit", partner, mode]);
        let (granted, wait): (i64, i64) = self
            .within(
                self.script
                    .key(key)
                    .arg(interval_micros)
                    .arg(burst)
                    .arg(want.max(1))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(if granted > 0 {
            Taken::Tokens(u32::try_from(granted).unwrap_or(u32::MAX))
        } else {
            Taken::Wait(Duration::from_micros(wait.max(1) as u64))
        })
    }

    /// Reserve one of the `allows` uses of approval `reference`, counted
    /// across replicas, never below `floor`: `false` when all are used.
    pub async fn reserve_use(
        &self,
        reference: &str,
        allows: u32,
        floor: u32,
    ) -> Result<bool, ClusterError> {
        let mut conn = self.conn().await?;
        let n: i64 = self
            .within(
                self.reserve_use
                    .key(self.key(&["approval", reference]))
                    .arg(allows)
                    .arg(floor)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(n >= 0)
    }

    /// Give back a use reserved by [`Redis::reserve_use`].
    pub async fn return_use(&self, reference: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        self.within(
            self.return_use
                .key(self.key(&["approval", reference]))
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    /// Operators' overrides, partner → line (see `PartnerLimits::to_line`);
    /// `None` when none were ever shared.
    pub async fn overrides(&self) -> Result<Option<BTreeMap<String, String>>, ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.key(&["overrides"]);
        let (exists, map): (bool, BTreeMap<String, String>) = self
            .within(
                redis::pipe()
                    .cmd("EXISTS")
                    .arg(&key)
                    .cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn),
            )
            .await?;
        let mut map = map;
        // The marker that tells "none" from "never shared".
        map.remove("");
        Ok(exists.then_some(map))
    }

    /// Share one partner's override (`None`: removed) and tell the others.
    /// The hash also holds a marker, so "no overrides" is told apart from
    /// "never shared".
    pub async fn share_override(
        &self,
        partner: &str,
        line: Option<&str>,
    ) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let key = self.key(&["overrides"]);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match line {
            Some(line) => pipe.cmd("HSET").arg(&key).arg(partner).arg(line).ignore(),
            None => pipe.cmd("HDEL").arg(&key).arg(partner).ignore(),
        };
        pipe.cmd("HSET").arg(&key).arg("").arg("").ignore();
        pipe.cmd("PUBLISH")
            .arg(self.key(&["changes"]))
            .arg(Notice::Overrides.message(&self.replica))
            .ignore();
        self.within(pipe.query_async::<()>(&mut conn)).await
    }

    /// Put a replica's overrides where none were ever shared (Redis new,
    /// or restarted empty): each partner's is kept if another replica put
    /// one first. Nothing is marked shared for an empty set, so that a
    /// replica that has overrides can still give them.
    pub async fn seed_overrides(&self, all: &BTreeMap<String, String>) -> Result<(), ClusterError> {
        if all.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let key = self.key(&["overrides"]);
        let mut pipe = redis::pipe();
        pipe.cmd("HSETNX").arg(&key).arg("").arg("").ignore();
        for (partner, line) in all {
            pipe.cmd("HSETNX").arg(&key).arg(partner).arg(line).ignore();
        }
        self.within(pipe.query_async::<()>(&mut conn)).await
    }

    /// Tell the other replicas of a change.
    pub async fn announce(&self, notice: &Notice) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        self.within(
            redis::cmd("PUBLISH")
                .arg(self.key(&["changes"]))
                .arg(notice.message(&self.replica))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// A file reloaded here (`kind`: catalog or limits) and the digest now
    /// in force, kept for replicas that look later, and announced.
    pub async fn announce_file(&self, kind: &str, digest: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.key(&["files"]))
            .arg(kind)
            .arg(digest)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.key(&["changes"]))
            .arg(Notice::Files.message(&self.replica))
            .ignore();
        self.within(pipe.query_async::<()>(&mut conn)).await
    }

    /// The digest of each file last reloaded through any replica.
    pub async fn files(&self) -> Result<BTreeMap<String, String>, ClusterError> {
        let mut conn = self.conn().await?;
        self.within(
            redis::cmd("HGETALL")
                .arg(self.key(&["files"]))
                .query_async(&mut conn),
        )
        .await
    }

    /// Other replicas' notices, for as long as the receiver is kept: the
    /// subscription is made again after Redis comes back (then `Resync`).
    pub fn notices(self: &std::sync::Arc<Self>) -> mpsc::Receiver<Notice> {
        let (tx, rx) = mpsc::channel(64);
        let redis = self.clone();
        tokio::spawn(async move {
            let channel = redis.key(&["changes"]);
            loop {
                match redis.subscribe(&channel).await {
                    Ok(mut pubsub) => {
                        if tx.send(Notice::Resync).await.is_err() {
                            return;
                        }
                        let mut stream = pubsub.on_message();
                        while let Some(msg) = stream.next().await {
                            let text: String = msg.get_payload().unwrap_or_default();
                            let Some((notice, from)) = Notice::parse(&text) else {
                                continue;
                            };
                            // A replica's own changes are made already.
                            if from == redis.replica {
                                continue;
                            }
                            if tx.send(notice).await.is_err() {
                                return;
                            }
                        }
                        tracing::warn!("the Redis change channel closed; subscribing again");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to change notices; trying again");
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        rx
    }

    async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, ClusterError> {
        let mut pubsub = match tokio::time::timeout(CONNECT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(self.error(e)),
            Err(_) => return Err(self.error("no connection in time")),
        };
        match tokio::time::timeout(CONNECT, pubsub.subscribe(channel)).await {
            Ok(Ok(())) => Ok(pubsub),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.error("no answer in time")),
        }
    }
}
