//! The delivery lanes: the broker's side of the outbox. A Publish commits
//! its items (see `service.rs`); then one lane per receiver delivers them,
//! in order, without holding up other receivers:
//!
//! - up to `concurrency` deliveries in flight, but never two versions of one
//!   record at once (the later waits for the earlier);
//! - after a failure the lane backs off (the `retry` schedule with ±20 %
//!   jitter) and probes with its oldest item alone until the receiver takes
//!   it; every attempt's result is committed with its audit entry;
//! - an item still failing `give_up_after` its acceptance is dead-lettered:
//!   audited, kept, listed for operators, replayed or purged by them;
//! - at most `memory_items` wait in memory; the rest wait in the store and
//!   are read back in order, as they are after a restart.

use crate::audit::{AuditSink, Commit, Decision, Entry, Item, Kind, Op, OutboxFilter, State};
use crate::config::DeliveryConfig;
use crate::delivery::Adapters;
use crate::pipeline::entry;
use crossgate_proto::DeliverRequest;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

/// What a publisher hears of its delivery within its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver's adapter took it.
    Delivered,
    /// Owed and retried; the detail says why it waits.
    Queued(String),
    /// Given up (dead-lettered).
    Dead(String),
}

enum Msg {
    New(Box<Pending>),
    /// Read undelivered items back from the store; `reset` ends a backoff
    /// (an operator's replay: try now).
    Reload {
        reset: bool,
    },
    Purged(Vec<String>),
}

struct Pending {
    item: Item,
    notify: Option<oneshot::Sender<Attempt>>,
}

impl Pending {
    fn tell(&mut self, attempt: Attempt) {
        if let Some(n) = self.notify.take() {
            let _ = n.send(attempt);
        }
    }
}

/// Every receiver's lane.
#[derive(Clone)]
pub struct Outbox {
    lanes: Arc<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    stop: Arc<watch::Sender<bool>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Outbox {
    /// Start a lane for each receiver; each first reads what the store
    /// still owes it (a restart picks up where the last run stopped).
    pub fn start(
        receivers: impl IntoIterator<Item = String>,
        adapters: Adapters,
        journal: Arc<dyn AuditSink>,
        config: DeliveryConfig,
        timeout: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(config);
        let mut lanes = HashMap::new();
        let mut tasks = Vec::new();
        for receiver in receivers {
            let (tx, rx) = mpsc::unbounded_channel();
            let lane = Lane {
                receiver: receiver.clone(),
                adapters: adapters.clone(),
                journal: journal.clone(),
                config: config.clone(),
                timeout,
                queue: VecDeque::new(),
                known: HashSet::new(),
                busy: HashSet::new(),
                failures: 0,
                retry_at: None,
                spilled: true,
                jitter: std::collections::hash_map::RandomState::new(),
                draws: 0,
            };
            tasks.push(tokio::spawn(lane.run(rx, stopped.clone())));
            lanes.insert(receiver, tx);
        }
        let outbox = Outbox {
            lanes: Arc::new(lanes),
            stop: Arc::new(stop),
            tasks: Arc::new(Mutex::new(tasks)),
        };
        outbox.prune_daily(journal, config.keep_delivered);
        outbox
    }

    /// Hand committed items to their lanes; each answer says how its first
    /// attempt went.
    pub fn submit(&self, items: Vec<Item>) -> Vec<oneshot::Receiver<Attempt>> {
        items
            .into_iter()
            .map(|item| {
                let (notify, wait) = oneshot::channel();
                match self.lanes.get(&item.receiver) {
                    Some(lane) => {
                        let _ = lane.send(Msg::New(Box::new(Pending {
                            item,
                            notify: Some(notify),
                        })));
                    }
                    None => {
                        let _ = notify.send(Attempt::Queued(format!(
                            "{} has no delivery lane",
                            item.receiver
                        )));
                    }
                }
                wait
            })
            .collect()
    }

    /// After an operator's replay: the lanes read their items back and try at once.
    pub fn replayed(&self, receivers: &HashSet<String>) {
        for r in receivers {
            if let Some(lane) = self.lanes.get(r) {
                let _ = lane.send(Msg::Reload { reset: true });
            }
        }
    }

    /// After an operator's purge: the lanes drop these items.
    pub fn purged(&self, receiver: &str, ids: Vec<String>) {
        if let Some(lane) = self.lanes.get(receiver) {
            let _ = lane.send(Msg::Purged(ids));
        }
    }

    /// Stop: no new attempts; attempts in flight finish and their results
    /// are committed. Items not yet tried stay in the store for the next run.
    pub async fn drain(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Forget delivered items and idempotency keys older than `keep`, once
    /// at start and then daily.
    fn prune_daily(&self, journal: Arc<dyn AuditSink>, keep: Duration) {
        let mut stopped = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let before = rfc3339(chrono::Utc::now() - chrono_duration(keep));
                let commit = Commit {
                    ops: vec![Op::Prune { before }],
                    ..Commit::default()
                };
                if let Err(e) = journal.commit(commit).await {
                    tracing::warn!(error = %e, "cannot prune delivered outbox items");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    }
}

pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The outcome of one attempt.
type Sent = (Pending, Result<(), Status>);

struct Lane {
    receiver: String,
    adapters: Adapters,
    journal: Arc<dyn AuditSink>,
    config: Arc<DeliveryConfig>,
    timeout: Duration,
    /// Waiting, oldest first (an item that failed goes back to the front).
    queue: VecDeque<Pending>,
    /// Ids waiting or in flight.
    known: HashSet<String>,
    /// Records with a version in flight.
    busy: HashSet<(String, String, String)>,
    /// Failed attempts in a row.
    failures: u32,
    retry_at: Option<Instant>,
    /// Items wait in the store that are not in memory.
    spilled: bool,
    jitter: std::collections::hash_map::RandomState,
    draws: u64,
}

fn record_key(item: &Item) -> (String, String, String) {
    (
        item.provider.clone(),
        item.record_type.clone(),
        item.record_id.clone(),
    )
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Sent>> = FuturesUnordered::new();
        let mut stopping = *stop.borrow();
        loop {
            if stopping {
                if in_flight.is_empty() {
                    return;
                }
            } else {
                if self.spilled && self.queue.is_empty() && in_flight.is_empty() {
                    self.reload().await;
                }
                self.dispatch(&mut in_flight);
            }
            let backoff = self.retry_at;
            tokio::select! {
                msg = rx.recv(), if !stopping => match msg {
                    Some(msg) => self.receive(msg).await,
                    None => stopping = true,
                },
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => self.finish(sent).await,
                _ = sleep_until(backoff), if backoff.is_some() && !stopping => self.retry_at = None,
                changed = stop.changed(), if !stopping => {
                    stopping = changed.is_err() || *stop.borrow();
                }
            }
        }
    }

    async fn receive(&mut self, msg: Msg) {
        match msg {
            Msg::New(mut pending) => {
                if self.known.contains(&pending.item.delivery_id) {
                    pending.tell(Attempt::Queued("already on its way".into()));
                } else if self.spilled || self.queue.len() >= self.config.memory_items.get() {
                    // Kept in the store; read back in order when the lane catches up.
                    self.spilled = true;
                    pending.tell(Attempt::Queued(format!(
                        "{} has a backlog; delivered in order",
                        self.receiver
                    )));
                } else {
                    if self.failures > 0 {
                        pending.tell(self.waiting());
                    }
                    self.known.insert(pending.item.delivery_id.clone());
                    self.queue.push_back(*pending);
                }
            }
            Msg::Reload { reset } => {
                if reset {
                    self.failures = 0;
                    self.retry_at = None;
                }
                self.reload().await;
            }
            Msg::Purged(ids) => {
                let ids: HashSet<String> = ids.into_iter().collect();
                self.queue.retain(|p| !ids.contains(&p.item.delivery_id));
                self.known.retain(|id| !ids.contains(id));
            }
        }
    }

    /// What a publisher hears while the lane backs off.
    fn waiting(&self) -> Attempt {
        Attempt::Queued(format!(
            "{}'s adapter is not taking deliveries; retried with backoff",
            self.receiver
        ))
    }

    /// Read back what the store owes this receiver and memory lacks.
    async fn reload(&mut self) {
        let limit = self.config.memory_items.get();
        let filter = OutboxFilter {
            receiver: Some(self.receiver.clone()),
            state: Some(State::Queued),
            limit,
            ..OutboxFilter::default()
        };
        match self.journal.outbox(filter).await {
            Ok(items) => {
                self.spilled = items.len() >= limit;
                for item in items {
                    if self.known.insert(item.delivery_id.clone()) {
                        self.queue.push_back(Pending { item, notify: None });
                    }
                }
            }
            Err(e) => {
                tracing::error!(receiver = %self.receiver, error = %e, "cannot read the outbox");
                self.spilled = true;
                self.back_off();
            }
        }
    }

    /// Start attempts: up to `concurrency` normally, one (the oldest) while
    /// backing off; never two versions of one record at once.
    fn dispatch(&mut self, in_flight: &mut FuturesUnordered<BoxFuture<'static, Sent>>) {
        if self.retry_at.is_some() {
            return;
        }
        let limit = if self.failures > 0 {
            1
        } else {
            self.config.concurrency.get()
        };
        let mut blocked = HashSet::new();
        let mut i = 0;
        while in_flight.len() < limit && i < self.queue.len() && i < 256 {
            let key = record_key(&self.queue[i].item);
            if self.busy.contains(&key) || blocked.contains(&key) {
                blocked.insert(key);
                i += 1;
                continue;
            }
            let Some(pending) = self.queue.remove(i) else {
                break;
            };
            self.busy.insert(key);
            in_flight.push(Box::pin(send(
                self.adapters.clone(),
                self.receiver.clone(),
                self.timeout,
                pending,
            )));
        }
    }

    async fn finish(&mut self, (mut pending, result): Sent) {
        self.busy.remove(&record_key(&pending.item));
        let now = chrono::Utc::now();
        let item = &pending.item;
        let attempts = item.attempts.saturating_add(1);
        let (op, decision, reason, told) = match &result {
            Ok(()) => (
                Op::Update {
                    delivery_id: item.delivery_id.clone(),
                    state: State::Delivered,
                    attempts,
                    next_attempt: String::new(),
                    last_error: String::new(),
                },
                Decision::Delivered,
                format!(
                    "grant {}; delivery {} (attempt {attempts})",
                    item.grant, item.delivery_id
                ),
                Attempt::Delivered,
            ),
            Err(status) => {
                // The receiver's own words stay at the broker: they may
                // quote its records.
                let error = format!("{}'s adapter answered {:?}", self.receiver, status.code());
                let age = created_age(item, now);
                if age >= self.config.give_up_after {
                    (
                        Op::Update {
                            delivery_id: item.delivery_id.clone(),
                            state: State::Dead,
                            attempts,
                            next_attempt: String::new(),
                            last_error: error.clone(),
                        },
                        Decision::Dead,
                        format!(
                            "grant {}; delivery {} dead-lettered after {attempts} attempts: {error}",
                            item.grant, item.delivery_id
                        ),
                        Attempt::Dead(error),
                    )
                } else {
                    self.back_off();
                    let delay = self
                        .retry_at
                        .map(|t| t.saturating_duration_since(Instant::now()))
                        .unwrap_or_default();
                    (
                        Op::Update {
                            delivery_id: item.delivery_id.clone(),
                            state: State::Queued,
                            attempts,
                            next_attempt: rfc3339(now + chrono_duration(delay)),
                            last_error: error.clone(),
                        },
                        Decision::Failed,
                        format!(
                            "grant {}; delivery {} attempt {attempts}: {error}; next in {} ms",
                            item.grant,
                            item.delivery_id,
                            delay.as_millis()
                        ),
                        Attempt::Queued(error),
                    )
                }
            }
        };
        let commit = Commit {
            entries: vec![delivery_entry(item, decision, reason)],
            ops: vec![op],
            claim: None,
        };
        let kept = self.journal.commit(commit).await;
        pending.tell(told.clone());
        match (result, kept) {
            (Ok(()), Ok(_)) => {
                self.known.remove(&pending.item.delivery_id);
                self.failures = 0;
            }
            (_, Ok(_)) if matches!(told, Attempt::Dead(_)) => {
                self.known.remove(&pending.item.delivery_id);
                tracing::warn!(receiver = %self.receiver, delivery = %pending.item.delivery_id, "dead-lettered");
            }
            (_, kept) => {
                if let Err(e) = kept {
                    // Not recorded: tried again (the receiver dedupes by id).
                    tracing::error!(receiver = %self.receiver, error = %e, "cannot record a delivery attempt");
                }
                pending.item.attempts = attempts;
                self.queue.push_front(pending);
                self.back_off();
                let waiting = self.waiting();
                for p in &mut self.queue {
                    p.tell(waiting.clone());
                }
            }
        }
    }

    /// One more failure in a row, unless the lane already waits for one
    /// (attempts in flight together fail together: that is one failure).
    fn back_off(&mut self) {
        if self.retry_at.is_some() {
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self.delay(self.failures);
        self.retry_at = Some(Instant::now() + delay);
    }

    /// The wait after `failures` failures in a row, spread by ±20 %.
    fn delay(&mut self, failures: u32) -> Duration {
        let schedule = &self.config.retry;
        let step = (failures.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
        let base = schedule
            .get(step)
            .copied()
            .unwrap_or(Duration::from_secs(1));
        self.draws += 1;
        let mut h = self.jitter.build_hasher();
        h.write_u64(self.draws);
        let spread = (h.finish() % 4001) as f64 / 10_000.0; // 0.0 ..= 0.4
        base.mul_f64(0.8 + spread)
    }
}

fn created_age(item: &Item, now: chrono::DateTime<chrono::Utc>) -> Duration {
    chrono::DateTime::parse_from_rfc3339(&item.created)
        .ok()
        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok())
        // An unreadable time is treated as old: the item is kept as dead, not lost.
        .unwrap_or(Duration::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One attempt, bounded by `timeout`.
async fn send(adapters: Adapters, receiver: String, timeout: Duration, pending: Pending) -> Sent {
    let result = match DeliverRequest::decode(pending.item.payload.as_slice()) {
        Ok(request) => match adapters.get(&receiver) {
            Ok(mut client) => {
                let mut req = tonic::Request::new(request);
                req.set_timeout(timeout);
                match tokio::time::timeout(timeout, client.deliver(req)).await {
                    Ok(result) => result.map(|_| ()),
                    Err(_) => Err(Status::deadline_exceeded("no answer in time")),
                }
            }
            Err(status) => Err(status),
        },
        Err(_) => Err(Status::data_loss("the stored delivery cannot be read")),
    };
    (pending, result)
}

/// The entry recording one attempt at one delivery.
pub(crate) fn delivery_entry(item: &Item, decision: Decision, reason: String) -> Entry {
    let mut e = entry(Kind::Publish, decision);
    e.request_id = item.request_id.clone();
    e.consumer = item.receiver.clone();
    e.provider = item.provider.clone();
    e.record_type = item.record_type.clone();
    e.record_id = item.record_id.clone();
    e.purpose = item.purpose.clone();
    e.released_fields = item.released_fields.clone();
    e.record_digest = item.record_digest.clone();
    e.reason = reason;
    e
}
