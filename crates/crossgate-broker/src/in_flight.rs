//! Step 1b — hold: how many Query and Publish calls of one partner are
//! under way at once, counted from admission until their work ends.
//!
//! The server's own caps count calls per connection, and a call whose
//! client hangs up leaves that count at once while its work goes on
//! (`detached`). Without this count, a partner resetting every call could
//! pile up work without end, bounded only by its rate limit and the
//! deadline. The slot is held by the work itself, so work left behind by a
//! caller who went away still counts until it ends.

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// One counter per partner, made at start from partners.toml: lookups take
/// no lock, and a name no configured party has is never a key.
pub(crate) struct InFlight {
    counts: HashMap<String, AtomicUsize>,
    max: usize,
}

/// Why a call got no slot.
#[derive(Debug)]
pub(crate) enum NoSlot {
    /// The partner's calls under way are at the cap: `RESOURCE_EXHAUSTED`
    /// with a `RetryInfo`.
    Full(Status),
    /// A party without a counter, which cannot happen: both come from
    /// partners.toml at start.
    NotCounted,
}

/// A call under way; its partner's count goes down when it is dropped.
#[must_use]
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    pub(crate) fn new<'a>(partners: impl Iterator<Item = &'a str>, max: usize) -> Self {
        let mut counts = HashMap::new();
        for id in partners {
            counts.insert(id.to_owned(), AtomicUsize::new(0));
        }
        InFlight { counts, max }
    }

    /// A slot for one more call of `partner`, unless its calls under way
    /// are at the cap already.
    pub(crate) fn hold(&self, partner: &str) -> Result<Slot<'_>, NoSlot> {
        // Only a party of partners.toml gets past authenticate, and every
        // one has a counter: a miss is the broker's own fault.
        let count = self.counts.get(partner).ok_or(NoSlot::NotCounted)?;
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(count);
        if before >= self.max {
            drop(slot);
            return Err(NoSlot::Full(Status::with_error_details(
                tonic::Code::ResourceExhausted,
                format!(
                    "{partner} has {} calls under way, the most it may have at once \
                     (calls_in_flight_per_partner); retry when one has ended",
                    self.max
                ),
                ErrorDetails::with_retry_info(Some(std::time::Duration::from_millis(100))),
            )));
        }
        Ok(slot)
    }

    /// Calls of `partner` under way now.
    #[cfg(test)]
    pub(crate) fn under_way(&self, partner: &str) -> usize {
        self.counts
            .get(partner)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_at_its_cap_is_refused_until_a_call_ends() {
        let in_flight = InFlight::new(["a", "b"].into_iter(), 2);
        let first = in_flight.hold("a").unwrap();
        let _second = in_flight.hold("a").unwrap();
        let Err(NoSlot::Full(refused)) = in_flight.hold("a") else {
            panic!("the third is over the cap")
        };
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("a has 2 calls under way"),
            "{}",
            refused.message()
        );
        assert!(refused.get_details_retry_info().is_some());
        // A refusal holds nothing; another partner is not held back.
        assert_eq!(in_flight.under_way("a"), 2);
        let _other = in_flight.hold("b").unwrap();
        drop(first);
        assert_eq!(in_flight.under_way("a"), 1);
        let _third = in_flight.hold("a").expect("a slot was freed");
    }

    #[tokio::test]
    async fn work_that_panics_gives_its_slot_back() {
        let in_flight = std::sync::Arc::new(InFlight::new(["a"].into_iter(), 1));
        let held = in_flight.clone();
        let answer = crate::detached::detached(&tokio_util::task::TaskTracker::new(), async move {
            let _slot = held.hold("a").map_err(|_| Status::internal("no slot"))?;
            tokio::task::yield_now().await;
            if held.under_way("a") == 1 {
                panic!("a bug while the slot is held");
            }
            Ok::<(), Status>(())
        })
        .await;
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(in_flight.under_way("a"), 0);
        let _again = in_flight.hold("a").expect("the partner is not locked out");
    }

    #[test]
    fn a_name_no_party_has_gets_no_slot_and_no_counter() {
        let in_flight = InFlight::new(["a"].into_iter(), 2);
        assert!(matches!(in_flight.hold("mallory"), Err(NoSlot::NotCounted)));
        assert_eq!(in_flight.counts.len(), 1);
    }
}
