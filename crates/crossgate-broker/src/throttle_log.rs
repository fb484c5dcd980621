//! Throttled calls, and calls of a known party to a service its role may not
//! use, are answered at once and counted; one audit entry per party, kind of
//! call, cause and second records them (how many, first and last time), so
//! that a flood cannot grow the log by an entry per refused call.

use crate::audit::{Decision, Entry, Kind};
use crate::pipeline::entry;
use std::collections::HashMap;
use std::sync::Mutex;

/// Why calls were throttled: each cause has entries of its own, so that
/// an entry's words (the last refusal's) speak for every call it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cause {
    /// Over the partner's rate limit.
    Rate,
    /// Over the partner's calls under way (`calls_in_flight_per_partner`).
    CallsUnderWay,
    /// A known party calling a service of another role (a partner reading
    /// the log, an auditor changing limits): denied, not throttled.
    WrongRole,
}

impl Cause {
    /// The `cause` label of `crossgate_throttled_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Rate => "rate",
            Cause::CallsUnderWay => "calls_under_way",
            Cause::WrongRole => "wrong_role",
        }
    }
}

struct Tally {
    count: u64,
    first: String,
    last: String,
    /// The last refusal's words (the limit and when to retry).
    said: String,
}

/// Throttled calls not yet in the log.
#[derive(Default)]
pub(crate) struct ThrottleLog {
    counts: Mutex<HashMap<(String, Kind, Cause), Tally>>,
}

impl ThrottleLog {
    /// One more throttled call of `partner`.
    pub(crate) fn count(&self, partner: &str, kind: Kind, cause: Cause, said: &str) {
        let now = crate::outbox::rfc3339(chrono::Utc::now());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let tally = counts
            .entry((partner.to_owned(), kind, cause))
            .or_insert_with(|| Tally {
                count: 0,
                first: now.clone(),
                last: String::new(),
                said: String::new(),
            });
        tally.count += 1;
        tally.last = now;
        if tally.said != said {
            tally.said = said.to_owned();
        }
    }

    /// An entry for each partner, kind and cause throttled since the last call,
    /// oldest first.
    pub(crate) fn take(&self) -> Vec<Entry> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        let mut tallies: Vec<((String, Kind, Cause), Tally)> = counts.into_iter().collect();
        tallies.sort_by(|a, b| a.1.first.cmp(&b.1.first));
        tallies
            .into_iter()
            .map(|((partner, kind, cause), t)| {
                let (decision, what) = match cause {
                    Cause::WrongRole => (Decision::Denied, "refused"),
                    Cause::Rate | Cause::CallsUnderWay => (Decision::Throttled, "throttled"),
                };
                let mut e = entry(kind, decision);
                e.consumer = partner;
                e.reason = format!(
                    "{} call(s) {what} from {} to {}: {}",
                    t.count, t.first, t.last, t.said
                );
                e
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_entry_per_partner_and_kind() {
        let log = ThrottleLog::default();
        for _ in 0..10_000 {
            log.count("education", Kind::Query, Cause::Rate, "over its rate limit");
        }
        log.count("tax", Kind::Publish, Cause::Rate, "over its rate limit");
        log.count(
            "tax",
            Kind::Publish,
            Cause::CallsUnderWay,
            "tax has 3 calls under way",
        );
        log.count(
            "tax",
            Kind::Publish,
            Cause::Rate,
            "over its rate limit again",
        );
        let entries = log.take();
        assert_eq!(entries.len(), 3);
        // Each cause keeps its own count and words.
        let tax: Vec<&str> = entries[1..].iter().map(|e| e.reason.as_str()).collect();
        assert!(
            tax.iter()
                .any(|r| r.starts_with("2 call(s)") && r.ends_with(": over its rate limit again")),
            "{tax:?}"
        );
        assert!(
            tax.iter()
                .any(|r| r.starts_with("1 call(s)") && r.ends_with(": tax has 3 calls under way")),
            "{tax:?}"
        );
        assert_eq!(entries[0].consumer, "education");
        assert!(
            entries[0]
                .reason
                .starts_with("10000 call(s) throttled from "),
            "{}",
            entries[0].reason
        );
        assert!(log.take().is_empty(), "counted once");
    }

    #[test]
    fn calls_refused_for_their_role_are_counted_as_denials() {
        let log = ThrottleLog::default();
        for _ in 0..3 {
            log.count(
                "tax",
                Kind::Audit,
                Cause::WrongRole,
                "tax has the role partner; this call needs the role auditor",
            );
        }
        let entries = log.take();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(
            (e.kind, e.decision, e.consumer.as_str()),
            (Kind::Audit, Decision::Denied, "tax")
        );
        assert!(
            e.reason.starts_with("3 call(s) refused from ")
                && e.reason
                    .ends_with(": tax has the role partner; this call needs the role auditor"),
            "{}",
            e.reason
        );
    }
}
