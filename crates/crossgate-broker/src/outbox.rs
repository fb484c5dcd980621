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

use crate::audit::{
    AuditSink, Commit, Decision, Entry, Item, Kind, Op, OutboxFilter, State, record_ids,
};
use crate::config::DeliveryConfig;
use crate::delivery::Adapters;
use crate::pipeline::entry;
use crossgate_proto::DeliverRequest;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use prost::Message;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

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
    /// and takes the store's attempts and times for items already held (an
    /// operator's replay: try now, the schedule starts over).
    Reload {
        reset: bool,
    },
    Purged(Vec<String>),
}

struct Pending {
    item: Item,
    notify: Option<oneshot::Sender<Attempt>>,
    /// The publish's trace, when it was accepted by this process.
    trace: crossgate_telemetry::TraceParent,
}

impl Pending {
    fn tell(&mut self, attempt: Attempt) {
        if let Some(n) = self.notify.take() {
            let _ = n.send(attempt);
        }
    }
}

/// One receiver's lane, as the broker sees it.
struct LaneHandle {
    tx: mpsc::Sender<Msg>,
    /// New items did not fit the channel: they wait in the store, and the
    /// lane reads them back when it has caught up.
    overflow: Arc<AtomicBool>,
}

/// Every receiver's lane.
#[derive(Clone)]
pub struct Outbox {
    lanes: Arc<HashMap<String, LaneHandle>>,
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
        leases: Option<String>,
        metrics: Option<Arc<crossgate_metrics::Metrics>>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let config = Arc::new(config);
        // Shared by replicas: items are leased, and lanes look for items
        // whose holder's lease ran out (a replica died) every half lease.
        let sweep = match &leases {
            Some(_) => (config.lease / 2).clamp(Duration::from_millis(100), SWEEP),
            None => SWEEP,
        };
        let hold = leases.map(|owner| {
            Arc::new(Hold {
                owner,
                renewed_ms: AtomicI64::new(0),
                lease: config.lease,
                margin: timeout + Duration::from_secs(1),
                turns: watch::channel(0).0,
            })
        });
        let mut lanes = HashMap::new();
        let mut tasks = Vec::new();
        for receiver in receivers {
            let (tx, rx) = mpsc::channel(config.memory_items.get());
            let overflow = Arc::new(AtomicBool::new(false));
            let lane = Lane {
                receiver: receiver.clone(),
                adapters: adapters.clone(),
                journal: journal.clone(),
                config: config.clone(),
                timeout,
                queue: VecDeque::new(),
                known: HashSet::new(),
                busy: HashSet::new(),
                purged: HashSet::new(),
                failures: 0,
                retry_at: None,
                spilled: true,
                overflow: overflow.clone(),
                jitter: std::collections::hash_map::RandomState::new(),
                draws: 0,
                hold: hold.clone(),
                sweep,
                take_over_due: false,
                turn: 0,
                held: metrics.as_ref().map(|m| m.outbox_items(&receiver, "held")),
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(lane.run(rx, stopped.clone())));
            lanes.insert(receiver, LaneHandle { tx, overflow });
        }
        let outbox = Outbox {
            lanes: Arc::new(lanes),
            stop: Arc::new(stop),
            tasks: Arc::new(Mutex::new(tasks)),
        };
        outbox.prune_daily(journal.clone(), config.keep_delivered);
        if let Some(hold) = hold {
            outbox.renew_lease(journal, hold);
        }
        outbox
    }

    /// While this replica lives, the items it holds stay its own: its lease
    /// is renewed at once and then every third of a lease.
    fn renew_lease(&self, journal: Arc<dyn AuditSink>, hold: Arc<Hold>) {
        let mut stopped = self.stop.subscribe();
        let every = (hold.lease / 3).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                let issued = chrono::Utc::now();
                let commit = Commit {
                    ops: vec![Op::Renew {
                        owner: hold.owner.clone(),
                        until: rfc3339(after(issued, hold.lease)),
                    }],
                    ..Commit::default()
                };
                match journal.commit(commit).await {
                    Ok(_) => {
                        let issued = issued.timestamp_millis();
                        let before = hold.renewed_ms.swap(issued, Ordering::SeqCst);
                        // After a lapse (or the first): a new turn. Lanes
                        // let go of what they held in the last one, then
                        // claim again.
                        if issued.saturating_sub(before) >= hold.safe_ms() {
                            hold.turns.send_modify(|t| *t += 1);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew this replica's lease on its deliveries")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
    }

    /// Hand committed items to their lanes; each answer says how its first
    /// attempt went.
    pub fn submit(&self, items: Vec<Item>) -> Vec<oneshot::Receiver<Attempt>> {
        items
            .into_iter()
            .map(|item| {
                let (notify, wait) = oneshot::channel();
                let receiver = item.receiver.clone();
                let Some(lane) = self.lanes.get(&receiver) else {
                    let _ =
                        notify.send(Attempt::Queued(format!("{receiver} has no delivery lane")));
                    return wait;
                };
                let pending = Box::new(Pending {
                    item,
                    notify: Some(notify),
                    trace: crossgate_telemetry::TraceParent::current(),
                });
                if let Err(e) = lane.tx.try_send(Msg::New(pending)) {
                    // The item is in the store; the lane reads it back.
                    lane.overflow.store(true, Ordering::SeqCst);
                    if let mpsc::error::TrySendError::Full(Msg::New(mut p))
                    | mpsc::error::TrySendError::Closed(Msg::New(mut p)) = e
                    {
                        p.tell(Attempt::Queued(format!(
                            "{receiver} has a backlog; delivered in order"
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
                lane.overflow.store(true, Ordering::SeqCst);
                let _ = lane.tx.try_send(Msg::Reload { reset: true });
            }
        }
    }

    /// After an operator's purge: the lanes drop these items, in flight or not.
    pub fn purged(&self, receiver: &str, ids: Vec<String>) {
        if let Some(lane) = self.lanes.get(receiver) {
            let _ = lane.tx.try_send(Msg::Purged(ids));
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
                let before = rfc3339(ago(keep));
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

/// `d` before now (the epoch when that is before it).
pub(crate) fn ago(d: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
}

/// `d` after `t` (far in the future when that overflows).
pub(crate) fn after(
    t: chrono::DateTime<chrono::Utc>,
    d: Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The outcome of one attempt: a delivered item's result is already
/// committed (`kept`); a failed one is the lane's to record.
struct Sent {
    pending: Pending,
    result: Result<(), Status>,
    kept: Result<(), crate::audit::StoreError>,
}

/// How often an idle lane looks for items the store owes it that it was
/// never handed (a commit that went through while it was reported failed).
const SWEEP: Duration = Duration::from_secs(30);

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
    busy: HashSet<u64>,
    /// Ids an operator purged while they were in flight.
    purged: HashSet<String>,
    /// Failed attempts in a row.
    failures: u32,
    retry_at: Option<Instant>,
    /// Items wait in the store that are not in memory.
    spilled: bool,
    overflow: Arc<AtomicBool>,
    jitter: std::collections::hash_map::RandomState,
    draws: u64,
    /// This replica's lease, when items are leased (a store shared by replicas).
    hold: Option<Arc<Hold>>,
    /// How often an idle lane looks for items it was not handed (and a
    /// lane on a shared store for items a dead replica held).
    sweep: Duration,
    /// A look for a dead replica's items is due, busy or not.
    take_over_due: bool,
    /// The turn of this replica's lease the lane holds its items in.
    turn: u64,
    /// Delivery attempts counted by outcome.
    metrics: Option<Arc<crossgate_metrics::Metrics>>,
    /// `crossgate_outbox_items{state="held"}`: waiting, in backoff or being sent.
    held: Option<crossgate_metrics::Level>,
}

/// This replica's lease on the items it holds (a store shared by replicas).
struct Hold {
    owner: String,
    /// When the last renewal that was kept was issued (ms since 1970; 0: none yet).
    renewed_ms: AtomicI64,
    lease: Duration,
    /// Room kept before the lease runs out: an attempt's longest time and a
    /// second (for the clocks of replicas, which must be kept in step).
    margin: Duration,
    /// Turns of the lease: a new one starts with the first renewal kept
    /// after a lapse. A lane that held items in an older turn lets go.
    turns: watch::Sender<u64>,
}

impl Hold {
    /// How old the last kept renewal may be while items held are safe.
    fn safe_ms(&self) -> i64 {
        self.lease.saturating_sub(self.margin).as_millis() as i64
    }

    /// Whether this replica may no longer count on its lease: the last
    /// renewal kept is so old that an attempt started now might outlive it
    /// (the store is slow or unreachable), and other replicas may take its
    /// items. It then lets go of what it holds in memory rather than send
    /// what another replica may be sending too.
    fn lapsing(&self) -> bool {
        let renewed = self.renewed_ms.load(Ordering::SeqCst);
        chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(renewed)
            >= self.safe_ms()
    }

    /// When the lease starts lapsing, from now.
    fn lapses_in(&self) -> Duration {
        let renewed = self.renewed_ms.load(Ordering::SeqCst);
        let left = renewed
            .saturating_add(self.safe_ms())
            .saturating_sub(chrono::Utc::now().timestamp_millis());
        Duration::from_millis(left.max(0) as u64)
    }
}

/// Which record an item is a version of (a hash: two records sharing one
/// only wait for each other).
fn record_key(item: &Item) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (&item.provider, &item.record_type, &item.record_id).hash(&mut h);
    h.finish()
}

/// An attempt under way: its delivery id, its record, and how it went
/// (`None`: the attempt's task failed; the item is read back from the store).
type Flight = (String, u64, Option<Sent>);

/// Whether a failure says the receiver refuses this item for good (retrying
/// cannot help: it is dead-lettered at once and the lane goes on) rather
/// than that the receiver is unreachable or unwell (the lane backs off).
fn refused_for_good(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::DataLoss
    )
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut stop: watch::Receiver<bool>) {
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Flight>> = FuturesUnordered::new();
        let mut sweep = tokio::time::interval_at(Instant::now() + self.sweep, self.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turns = match &self.hold {
            Some(hold) => hold.turns.subscribe(),
            None => watch::channel(0).1,
        };
        loop {
            let stopping = *stop.borrow();
            if stopping {
                if in_flight.is_empty() {
                    return;
                }
            } else if self.lost_hold() {
                self.let_go();
                if self.hold.as_ref().is_some_and(|h| !h.lapsing()) {
                    // A new turn of a healthy lease: claim again at once.
                    continue;
                }
            } else {
                if self.queue.is_empty()
                    && in_flight.is_empty()
                    && (self.spilled || self.overflow.swap(false, Ordering::SeqCst))
                {
                    self.reload(false, false).await;
                } else if self.take_over_due && self.queue.len() < self.config.memory_items.get() {
                    // Under steady load too: a dead replica's items are
                    // taken over (they queue behind what is in memory).
                    self.take_over_due = false;
                    self.reload(false, true).await;
                }
                // A slow store may have cost the lease meanwhile.
                if self.lost_hold() {
                    self.let_go();
                } else {
                    self.dispatch(&mut in_flight);
                }
            }
            let backoff = self.retry_at;
            if let Some(held) = &self.held {
                held.set(self.queue.len() + in_flight.len());
            }
            let idle = self.queue.is_empty() && in_flight.is_empty();
            // Wake when the lease starts lapsing, to let go in time.
            let lapse = self
                .hold
                .as_ref()
                .filter(|_| !self.queue.is_empty())
                .map(|h| Instant::now() + h.lapses_in());
            tokio::select! {
                _ = sleep_until(lapse), if lapse.is_some() && !stopping => {}
                // Without a lease (one broker) there are no turns; the
                // sender is gone and `changed` would answer at once, spinning.
                _ = turns.changed(), if self.hold.is_some() && !stopping => {}
                msg = rx.recv(), if !stopping => match msg {
                    Some(msg) => self.receive(msg).await,
                    None => return,
                },
                Some(sent) = in_flight.next(), if !in_flight.is_empty() => self.finish(sent).await,
                _ = sleep_until(backoff), if backoff.is_some() && !stopping => self.retry_at = None,
                _ = sweep.tick(), if !stopping => {
                    if idle {
                        self.spilled = true;
                    }
                    self.take_over_due = self.hold.is_some();
                }
                _ = stop.changed(), if !stopping => {}
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
                self.reload(reset, false).await;
            }
            Msg::Purged(ids) => {
                let ids: HashSet<String> = ids.into_iter().collect();
                self.queue.retain(|p| !ids.contains(&p.item.delivery_id));
                for id in ids {
                    // One in flight is dropped when its attempt ends.
                    if self.known.remove(&id) {
                        self.purged.insert(id);
                    }
                }
            }
        }
    }

    /// Whether this lane may no longer send what it holds: the lease is
    /// lapsing, or a new turn began (the lease lapsed and came back, and
    /// another replica may have taken items meanwhile).
    fn lost_hold(&mut self) -> bool {
        let Some(hold) = &self.hold else {
            return false;
        };
        let turn = *hold.turns.borrow();
        if turn != self.turn {
            self.turn = turn;
            return true;
        }
        hold.lapsing()
    }

    /// This replica's lease is lapsing: what waits in memory goes back to
    /// the store (attempts under way finish), to be read back by whichever
    /// replica holds it once the lease is sure again.
    fn let_go(&mut self) {
        if self.queue.is_empty() && self.spilled {
            return;
        }
        tracing::warn!(receiver = %self.receiver, "this replica's lease on its deliveries is lapsing (the store is slow or unreachable); they wait in the store");
        for mut p in self.queue.drain(..) {
            self.known.remove(&p.item.delivery_id);
            p.tell(Attempt::Queued(
                "kept in the store; this replica cannot renew its hold on it".into(),
            ));
        }
        self.spilled = true;
    }

    /// What a publisher hears while the lane backs off.
    fn waiting(&self) -> Attempt {
        Attempt::Queued(format!(
            "{}'s adapter is not taking deliveries; retried with backoff",
            self.receiver
        ))
    }

    /// Read back what the store owes this receiver and memory lacks; with
    /// `refresh`, items already held take the store's attempts and times
    /// (a replay restarted their schedule).
    ///
    /// `take_over`: a look for a dead replica's items while the lane is
    /// busy: what does not fit in memory stays in the store for later, and
    /// new items keep coming straight to the lane.
    async fn reload(&mut self, refresh: bool, take_over: bool) {
        let limit = self.config.memory_items.get();
        let filter = OutboxFilter {
            receiver: Some(self.receiver.clone()),
            state: Some(State::Queued),
            limit,
            lease: self.hold.as_ref().map(|hold| crate::audit::Lease {
                owner: hold.owner.clone(),
                now: rfc3339(chrono::Utc::now()),
            }),
            ..OutboxFilter::default()
        };
        match self.journal.outbox(filter).await {
            Ok(items) => {
                let full = items.len() >= limit;
                let mut left_out = false;
                let mut fresh: HashMap<String, Item> = HashMap::new();
                for item in items {
                    if self.known.contains(&item.delivery_id) {
                        if refresh {
                            fresh.insert(item.delivery_id.clone(), item);
                        }
                    } else if self.queue.len() >= limit {
                        left_out = true;
                    } else {
                        self.known.insert(item.delivery_id.clone());
                        self.queue.push_back(Pending {
                            item,
                            notify: None,
                            trace: Default::default(),
                        });
                    }
                }
                self.spilled = left_out || (full && !take_over);
                for p in &mut self.queue {
                    if let Some(item) = fresh.remove(&p.item.delivery_id) {
                        p.item.attempts = item.attempts;
                        p.item.created = item.created;
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
    fn dispatch(&mut self, in_flight: &mut FuturesUnordered<BoxFuture<'static, Flight>>) {
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
            let id = pending.item.delivery_id.clone();
            // Each attempt is a task of its own, so a lane's attempts spread
            // over the runtime's threads; the lane only keeps the books.
            let attempt = tokio::spawn(send(
                self.adapters.clone(),
                self.journal.clone(),
                self.receiver.clone(),
                self.timeout,
                pending,
            ));
            in_flight.push(Box::pin(async move { (id, key, attempt.await.ok()) }));
        }
    }

    async fn finish(&mut self, (id, key, sent): Flight) {
        self.busy.remove(&key);
        let Some(Sent {
            mut pending,
            result,
            kept,
        }) = sent
        else {
            tracing::error!(receiver = %self.receiver, delivery = %id, "a delivery attempt failed inside the broker; read back from the store");
            self.known.remove(&id);
            self.purged.remove(&id);
            self.spilled = true;
            return;
        };
        let attempts = pending.item.attempts.saturating_add(1);
        if self.purged.remove(&id) {
            // Purged while in flight: its attempt is recorded (if it was
            // delivered, in `send`), and it is not tried again.
            pending.tell(Attempt::Queued("purged by an operator".into()));
            return;
        }
        if let Some(m) = &self.metrics {
            m.delivery(
                &self.receiver,
                match &result {
                    Ok(()) => crossgate_metrics::DeliveryOutcome::Delivered,
                    Err(s) if refused_for_good(s.code()) => {
                        crossgate_metrics::DeliveryOutcome::Dead
                    }
                    Err(_) => crossgate_metrics::DeliveryOutcome::Failed,
                },
            );
        }
        let status = match result {
            Ok(()) => {
                if let Err(e) = kept {
                    // Delivered but not recorded: tried again (the receiver
                    // acknowledges a repeat without passing it on).
                    tracing::error!(receiver = %self.receiver, error = %e, "cannot record a delivery");
                    pending.item.attempts = attempts;
                    self.queue.push_front(pending);
                    self.back_off();
                    return;
                }
                self.known.remove(&id);
                self.failures = 0;
                return;
            }
            Err(status) => status,
        };
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.lapsing() || *h.turns.borrow() != self.turn)
        {
            // Another replica may hold it now: this lane neither records
            // the failure nor tries again; the store has it.
            self.known.remove(&id);
            self.spilled = true;
            pending.tell(Attempt::Queued(
                "kept in the store; this replica cannot renew its hold on it".into(),
            ));
            return;
        }
        // The receiver's own words stay at the broker: they may quote its records.
        let error = format!("{}'s adapter answered {:?}", self.receiver, status.code());
        let now = chrono::Utc::now();
        let item = &pending.item;
        let give_up =
            refused_for_good(status.code()) || created_age(item, now) >= self.config.give_up_after;
        let (op, decision, reason, told) = if give_up {
            (
                Op::Update {
                    delivery_id: id.clone(),
                    state: State::Dead,
                    attempts,
                    next_attempt: String::new(),
                    last_error: error.clone(),
                },
                Decision::Dead,
                format!(
                    "grant {}; delivery {id} dead-lettered after {attempts} attempt(s): {error}",
                    item.grant
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
                    delivery_id: id.clone(),
                    state: State::Queued,
                    attempts,
                    next_attempt: rfc3339(after(now, delay)),
                    last_error: error.clone(),
                },
                Decision::Failed,
                format!(
                    "grant {}; delivery {id} attempt {attempts}: {error}; next in {} ms",
                    item.grant,
                    delay.as_millis()
                ),
                Attempt::Queued(error),
            )
        };
        let commit = Commit {
            entries: vec![delivery_entry(item, decision, reason)],
            ops: vec![op],
            claim: None,
        };
        let kept = self.journal.commit(commit).await;
        pending.tell(told.clone());
        match kept {
            Ok(_) if matches!(told, Attempt::Dead(_)) => {
                self.known.remove(&id);
                tracing::warn!(receiver = %self.receiver, delivery = %id, "dead-lettered");
            }
            kept => {
                if let Err(e) = kept {
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
        self.retry_at = Some(
            Instant::now()
                .checked_add(delay)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600)),
        );
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
        Duration::try_from_secs_f64(base.as_secs_f64() * (0.8 + spread))
            .unwrap_or(Duration::from_secs(24 * 3600))
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

/// One attempt, bounded by `timeout`. A delivered item is recorded here,
/// so that lanes' records of their deliveries share commits; the publisher
/// hears of the delivery first (the receiver has it either way).
async fn send(
    adapters: Adapters,
    journal: Arc<dyn AuditSink>,
    receiver: String,
    timeout: Duration,
    mut pending: Pending,
) -> Sent {
    let result = match DeliverRequest::decode(pending.item.payload.as_slice()) {
        Ok(request) => {
            let span = pending.trace.client_step("deliver");
            let traceparent = span.in_scope(crossgate_telemetry::traceparent);
            let attempt = adapters.deliver(&receiver, request, timeout, traceparent);
            match tokio::time::timeout(timeout, attempt.instrument(span)).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded("no answer in time")),
            }
        }
        Err(_) => Err(Status::data_loss("the stored delivery cannot be read")),
    };
    let kept = match &result {
        Ok(()) => {
            pending.tell(Attempt::Delivered);
            let item = &pending.item;
            let attempts = item.attempts.saturating_add(1);
            let commit = Commit {
                entries: vec![delivery_entry(
                    item,
                    Decision::Delivered,
                    format!(
                        "grant {}; delivery {} (attempt {attempts})",
                        item.grant, item.delivery_id
                    ),
                )],
                ops: vec![Op::Update {
                    delivery_id: item.delivery_id.clone(),
                    state: State::Delivered,
                    attempts,
                    next_attempt: String::new(),
                    last_error: String::new(),
                }],
                claim: None,
            };
            journal.commit(commit).await.map(|_| ())
        }
        Err(_) => Ok(()),
    };
    Sent {
        pending,
        result,
        kept,
    }
}

/// The entry recording one attempt at one delivery.
pub(crate) fn delivery_entry(item: &Item, decision: Decision, reason: String) -> Entry {
    let mut e = entry(Kind::Publish, decision);
    e.request_id = item.request_id.clone();
    e.consumer = item.receiver.clone();
    e.provider = item.provider.clone();
    e.record_type = item.record_type.clone();
    e.record_id = record_ids([item.record_id.as_str()]);
    e.purpose = item.purpose.clone();
    e.released_fields = item.released_fields.clone();
    e.record_digest = item.record_digest.clone();
    e.reason = reason;
    e
}
