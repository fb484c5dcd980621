//! Approvals with a use count: each answer released under one spends a use.
//!
//! A use is reserved when the query is authorised and spent only when the
//! answer is released (its `allowed` entry is in the audit log); a query that
//! fails or is refused later gives its reservation back. The audit log is the
//! durable record of spent uses: at start the broker counts the `allowed`
//! query entries that name each counted approval.
//!
//! Replicas (`[cluster]`) count uses together in Redis, each never below
//! its own count (the log's at start, and its own answers since): an
//! approval opens as many answers as it allows across all of them. While
//! Redis cannot be reached, a counted approval opens nothing (it fails
//! closed: `UNAVAILABLE`).

use crossgate_policy::{Approval, Denial, Policy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Uses spent or reserved, per approval reference (counted approvals only).
#[derive(Debug, Default)]
pub struct ApprovalUses {
    spent: Mutex<HashMap<String, u32>>,
}

impl ApprovalUses {
    /// Start from uses already spent (e.g. counted from the audit log).
    pub fn with_spent(spent: HashMap<String, u32>) -> Self {
        ApprovalUses {
            spent: Mutex::new(spent),
        }
    }

    /// Reserve one use of `approval`; `None` when it is not counted.
    pub fn reserve(self: &Arc<Self>, approval: &Approval) -> Result<Option<Reservation>, Denial> {
        let Some(limit) = approval.uses else {
            return Ok(None);
        };
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let used = spent.entry(approval.reference.clone()).or_default();
        if *used >= limit {
            return Err(used_up(approval, limit));
        }
        *used += 1;
        Ok(Some(Reservation {
            uses: self.clone(),
            reference: approval.reference.clone(),
            spent: false,
            shared: None,
        }))
    }

    /// Reserve one use of `approval` counted across replicas in `redis`.
    /// `Ok(Err(denial))`: all are used; `Err(why)`: Redis cannot say.
    pub async fn reserve_shared(
        self: &Arc<Self>,
        approval: &Approval,
        redis: &Arc<crossgate_cluster::Redis>,
    ) -> Result<Result<Option<Reservation>, Denial>, String> {
        let Some(limit) = approval.uses else {
            return Ok(Ok(None));
        };
        let floor = self.spent(&approval.reference);
        match redis.reserve_use(&approval.reference, limit, floor).await {
            Ok(true) => {
                // This replica's own count (a floor for the shared one).
                *self
                    .spent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(approval.reference.clone())
                    .or_default() += 1;
                Ok(Ok(Some(Reservation {
                    uses: self.clone(),
                    reference: approval.reference.clone(),
                    spent: false,
                    shared: Some(redis.clone()),
                })))
            }
            Ok(false) => Ok(Err(used_up(approval, limit))),
            Err(e) => Err(format!(
                "approval {}'s uses are counted across replicas in Redis, which cannot be reached ({e}); retry later",
                approval.reference
            )),
        }
    }

    /// After a catalog reload: no count below what the log shows spent.
    pub fn at_least(&self, spent: HashMap<String, u32>) {
        let mut counts = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for (reference, n) in spent {
            let count = counts.entry(reference).or_default();
            *count = (*count).max(n);
        }
    }

    pub fn spent(&self, reference: &str) -> u32 {
        self.spent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
            .copied()
            .unwrap_or_default()
    }
}

/// One reserved use: [`Reservation::spend`] keeps it, dropping gives it back.
#[derive(Debug)]
pub struct Reservation {
    uses: Arc<ApprovalUses>,
    reference: String,
    spent: bool,
    /// Counted across replicas: given back there too.
    shared: Option<Arc<crossgate_cluster::Redis>>,
}

impl Reservation {
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        let mut spent = self.uses.spent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = spent.get_mut(&self.reference) {
            *n = n.saturating_sub(1);
        }
        drop(spent);
        if let (Some(redis), Ok(runtime)) =
            (self.shared.take(), tokio::runtime::Handle::try_current())
        {
            let reference = std::mem::take(&mut self.reference);
            runtime.spawn(async move {
                if let Err(e) = redis.return_use(&reference).await {
                    // Kept as used: an approval may open one answer fewer.
                    tracing::warn!(%reference, error = %e, "a reserved approval use could not be given back");
                }
            });
        }
    }
}

/// Count the uses already spent of every counted approval from the audit log
/// at `store` (a spec such as `sqlite:PATH`).
pub fn spent_in_log(
    policy: &Policy,
    store: &str,
) -> Result<HashMap<String, u32>, crossgate_audit::StoreError> {
    let counted: Vec<&Approval> = policy.approvals().filter(|a| a.uses.is_some()).collect();
    let mut spent = HashMap::new();
    if counted.is_empty() {
        return Ok(spent);
    }
    let mut store = crossgate_audit::open(store)?;
    for approval in counted {
        let filter = crossgate_audit::Filter {
            consumer: Some(approval.consumer.clone()),
            provider: Some(approval.provider.clone()),
            record_type: Some(approval.record_type.clone()),
            decision: Some(crossgate_audit::Decision::Allowed.as_str().to_owned()),
            ..Default::default()
        };
        let mut n = 0u32;
        store.scan(&filter, &mut |stored| {
            if stored.entry.kind == crossgate_audit::Kind::Query
                && stored.entry.approval_reference == approval.reference
            {
                n = n.saturating_add(1);
            }
            true
        })?;
        spent.insert(approval.reference.clone(), n);
    }
    Ok(spent)
}

/// The refusal of an approval whose uses are all spent.
fn used_up(approval: &Approval, limit: u32) -> Denial {
    Denial::new(
        format!("approval:{}", approval.reference),
        format!(
            "approval {} has been used {limit} time(s), all it allows",
            approval.reference
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn approval(uses: Option<u32>) -> Approval {
        let day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        Approval {
            reference: "A-1".into(),
            consumer: "education".into(),
            provider: "public-security".into(),
            record_type: "household.v1".into(),
            purpose: "school-enrolment".into(),
            subject: vec![("/household_id".into(), "1".into())],
            uses,
            authority: None,
            valid_from: day,
            valid_until: day,
        }
    }

    #[test]
    fn a_counted_approval_opens_as_many_answers_as_it_allows() {
        let uses = Arc::new(ApprovalUses::default());
        let a = approval(Some(2));
        uses.reserve(&a).unwrap().unwrap().spend();
        // A reservation that is not spent (the query failed) is given back.
        drop(uses.reserve(&a).unwrap());
        assert_eq!(uses.spent("A-1"), 1);
        let second = uses.reserve(&a).unwrap().unwrap();
        let denial = uses.reserve(&a).unwrap_err();
        assert_eq!(denial.rule, "approval:A-1");
        assert_eq!(
            denial.reason,
            "approval A-1 has been used 2 time(s), all it allows"
        );
        second.spend();
        assert_eq!(uses.spent("A-1"), 2);
        // Uncounted approvals are never refused for use.
        assert!(uses.reserve(&approval(None)).unwrap().is_none());
    }

    #[test]
    fn uses_spent_before_a_restart_still_count() {
        let uses = Arc::new(ApprovalUses::with_spent(HashMap::from([(
            "A-1".to_owned(),
            2,
        )])));
        assert!(uses.reserve(&approval(Some(2))).is_err());
    }
}
