//! The outbox: deliveries the broker has accepted and owes its receivers.
//!
//! Outbox changes are committed in the same transaction as the audit entries
//! that record them (see [`Commit`]), so the log and the outbox never
//! disagree: a Publish is accepted exactly when its entries and its items are
//! both kept, and a delivery is done exactly when its `delivered` entry is.
//! A delivered item's payload (the released record) and its record id are
//! erased in the same transaction; only its metadata stays, for repeated
//! publishes and listings.

use crate::entry::Entry;

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted and owed to the receiver; retried until delivered or dead.
    Queued,
    /// The receiver's adapter took it.
    Delivered,
    /// Gave up after the retry schedule; kept until an operator replays or purges it.
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => State::Queued,
            "delivered" => State::Delivered,
            "dead" => State::Dead,
            _ => return None,
        })
    }
}

/// One delivery owed to one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Stable across attempts and broker restarts; receivers dedupe by it.
    pub delivery_id: String,
    /// The Publish that accepted it.
    pub request_id: String,
    pub receiver: String,
    pub provider: String,
    pub record_type: String,
    /// The provider's own id (as in the audit log; never sent to the receiver).
    pub record_id: String,
    /// The grant that routes it.
    pub grant: String,
    pub purpose: String,
    pub released_fields: Vec<String>,
    pub record_digest: String,
    /// What is sent (the encoded delivery); empty once delivered.
    pub payload: Vec<u8>,
    pub state: State,
    pub attempts: u32,
    /// RFC 3339, UTC.
    pub created: String,
    /// RFC 3339, UTC: when it is tried next (queued items).
    pub next_attempt: String,
    /// The last failure, without the receiver's words (they may quote records).
    pub last_error: String,
    /// The replica (its writer id) whose lane holds the item while it is
    /// queued. Another replica takes it over once the holder's own lease
    /// ([`Op::Renew`]) has run out. Empty: anyone's to take.
    pub lease_owner: String,
}

/// A lane's claim on what it reads: queued items that are its own, or whose
/// holder's lease has run out by `now`, become its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    /// RFC 3339, UTC.
    pub now: String,
}

/// A change to the outbox, committed with the entries that record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new item; an item with the same delivery id is kept, not doubled.
    Enqueue(Box<Item>),
    /// An attempt's result or an operator's replay. Never changes a
    /// delivered item; `Delivered` erases the payload.
    Update {
        delivery_id: String,
        state: State,
        attempts: u32,
        next_attempt: String,
        last_error: String,
    },
    /// An operator's replay of an undelivered item: queued again from `at`
    /// as if just accepted (its retry schedule starts over).
    Requeue {
        delivery_id: String,
        at: String,
        note: String,
    },
    /// An operator's purge of an undelivered item (a delivered one stays).
    Purge { delivery_id: String },
    /// Forget delivered items and idempotency keys created before this time.
    Prune { before: String },
    /// A replica lives: its lease (on every item it holds) runs to `until`.
    Renew { owner: String, until: String },
}

/// An idempotency key claimed by a Publish: the first request under a key
/// wins; later ones are repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Keys are scoped to the publishing partner.
    pub provider: String,
    pub key: String,
    pub request_id: String,
    pub record_digest: String,
    /// RFC 3339, UTC.
    pub created: String,
}

/// The request that first claimed a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prior {
    pub request_id: String,
    pub record_digest: String,
}

/// What a repeat writes to the log instead of the commit's own entries.
pub type OnRepeat = Box<dyn FnOnce(&Prior) -> Vec<Entry> + Send>;

/// Entries and outbox changes committed together, in one transaction.
#[derive(Default)]
pub struct Commit {
    pub entries: Vec<Entry>,
    pub ops: Vec<Op>,
    /// When set and the key was claimed before, nothing of `ops` is applied
    /// and `on_repeat`'s entries are written instead of `entries`.
    pub claim: Option<(Claim, OnRepeat)>,
}

impl Commit {
    pub fn entries(entries: Vec<Entry>) -> Self {
        Commit {
            entries,
            ..Commit::default()
        }
    }
}

/// How a commit was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Applied,
    /// The key was claimed before, by `Prior`: nothing of the commit's
    /// outbox changes was applied.
    Repeat(Prior),
}

/// Which outbox items to read.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    pub receiver: Option<String>,
    pub state: Option<State>,
    pub request_id: Option<String>,
    pub delivery_id: Option<String>,
    /// RFC 3339 bounds on `created`: `since` inclusive, `before` exclusive.
    pub since: Option<String>,
    pub before: Option<String>,
    /// Leave out delivered items.
    pub undelivered: bool,
    /// At most this many (0: all), oldest first.
    pub limit: usize,
    /// Read queued items as a lane that leases them (stores shared by
    /// replicas: items leased by another replica are skipped, and those
    /// read become this lane's).
    pub lease: Option<Lease>,
}
