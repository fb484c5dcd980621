//! How a call ends. Every step of the request path returns
//! `Result<_, Refusal>`; the handler's last step, [`Broker::finish`], is the
//! one exit: it writes the call's audit entries and then answers — whatever
//! happened, in the same way.

use crate::Broker;
use crate::approvals::Reservation;
use crate::audit::{Decision, Entry};
use crate::pipeline::Call;
use crossgate_policy::Denial;
use tonic::{Code, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Why a call is refused; each kind is one audit decision and one gRPC status.
#[derive(Debug)]
pub enum Refusal {
    /// Over the partner's rate limit: `RESOURCE_EXHAUSTED` with `RetryInfo`.
    Throttled(Status),
    /// Over the partner's calls under way (`in_flight.rs`): the same answer,
    /// and a throttled entry of its own.
    Busy(Status),
    /// A malformed request or record: `status` is for the sender and may
    /// quote its own values; `logged` says the same without values.
    Invalid { status: Status, logged: String },
    /// The catalog says no: `PERMISSION_DENIED` with the rule in `ErrorInfo`.
    Denied(Denial),
    /// The next hop failed: `status` says so without its words; `logged`
    /// names the grant and the code.
    Failed { status: Status, logged: String },
    /// Answered as is: the call's entries are already committed (or the log
    /// cannot take any), so `finish` writes nothing more.
    Recorded(Status),
}

impl Refusal {
    /// A request the caller can fix, in words that quote only its own values.
    pub fn invalid(message: impl Into<String>) -> Self {
        let message = message.into();
        Refusal::Invalid {
            status: Status::invalid_argument(message.clone()),
            logged: message,
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            Refusal::Throttled(_) | Refusal::Busy(_) => Decision::Throttled,
            Refusal::Invalid { .. } => Decision::Invalid,
            Refusal::Denied(_) => Decision::Denied,
            Refusal::Failed { .. } | Refusal::Recorded(_) => Decision::Failed,
        }
    }

    /// What the audit log keeps: never a value of anybody's record.
    pub fn logged(&self) -> String {
        match self {
            Refusal::Throttled(status) | Refusal::Busy(status) | Refusal::Recorded(status) => {
                status.message().to_owned()
            }
            Refusal::Invalid { logged, .. } | Refusal::Failed { logged, .. } => logged.clone(),
            Refusal::Denied(denial) => denial.logged(),
        }
    }

    pub fn into_status(self) -> Status {
        match self {
            Refusal::Throttled(status)
            | Refusal::Busy(status)
            | Refusal::Recorded(status)
            | Refusal::Invalid { status, .. }
            | Refusal::Failed { status, .. } => status,
            Refusal::Denied(denial) => Status::with_error_details(
                Code::PermissionDenied,
                denial.reason.clone(),
                ErrorDetails::with_error_info(
                    denial.rule,
                    "crossgate",
                    std::collections::HashMap::new(),
                ),
            ),
        }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        Refusal::Denied(denial)
    }
}

/// What a call that was not refused answers, and the entries that record it.
pub struct Answer<T> {
    pub reply: T,
    pub entries: Vec<Entry>,
    /// An approval use, spent once the entries are kept.
    pub reservation: Option<Reservation>,
}

impl Broker {
    /// Write the throttled calls counted since the last time, one entry per
    /// partner and kind.
    pub(crate) async fn write_throttles(&self) {
        let entries = self.inner.throttles.take();
        if entries.is_empty() {
            return;
        }
        let call = self.admin_call();
        let entries = entries
            .into_iter()
            .map(|mut e| {
                e.request_id = call.id.clone();
                e
            })
            .collect();
        if let Err(e) = self
            .inner
            .audit
            .commit(crate::audit::Commit::entries(entries))
            .await
        {
            tracing::error!(error = %e, "cannot write the throttled calls to the audit log");
        }
    }

    /// The one exit. A refusal is written as `entry` with its decision and
    /// reason; an answer writes its own entries. Only then does the caller
    /// hear back; if the log cannot be written, the answer is `UNAVAILABLE`.
    pub(crate) async fn finish<T>(
        &self,
        call: &Call,
        mut entry: Entry,
        outcome: Result<Answer<T>, Refusal>,
    ) -> Result<Response<T>, Status> {
        match outcome {
            Ok(answer) => {
                for e in answer.entries {
                    self.audit(call, e).await?;
                }
                if let Some(reservation) = answer.reservation {
                    reservation.spend();
                }
                Ok(Response::new(answer.reply))
            }
            Err(Refusal::Recorded(status)) => Err(status),
            // Answered at once; counted into one entry per partner and second.
            Err(refusal @ (Refusal::Throttled(_) | Refusal::Busy(_))) => {
                let cause = match refusal {
                    Refusal::Busy(_) => crate::throttle_log::Cause::CallsUnderWay,
                    _ => crate::throttle_log::Cause::Rate,
                };
                let status = refusal.into_status();
                if let Some(m) = &self.inner.metrics {
                    let mode = match entry.kind {
                        crate::audit::Kind::Publish => "publish",
                        _ => "query",
                    };
                    m.throttled(&entry.consumer, mode, cause.as_str());
                    m.decision(
                        &entry.consumer,
                        &entry.provider,
                        &entry.record_type,
                        crate::audit::Decision::Throttled.as_str(),
                    );
                }
                self.inner
                    .throttles
                    .count(&entry.consumer, entry.kind, cause, status.message());
                Err(status)
            }
            Err(refusal) => {
                entry.decision = refusal.decision();
                entry.reason = refusal.logged();
                self.audit(call, entry).await?;
                Err(refusal.into_status())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_is_one_decision_and_one_status() {
        let denial = Denial::new("grant:g", "no");
        let r = Refusal::from(denial);
        assert_eq!(r.decision(), Decision::Denied);
        assert_eq!(r.logged(), "no (rule grant:g)");
        let status = r.into_status();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "no");
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason).as_deref(),
            Some("grant:g")
        );

        let r = Refusal::Invalid {
            status: Status::invalid_argument("/name: \"x\" is too short"),
            logged: "/name: is too short".into(),
        };
        assert_eq!(r.decision(), Decision::Invalid);
        assert_eq!(r.logged(), "/name: is too short");
        assert_eq!(r.into_status().message(), "/name: \"x\" is too short");

        let r = Refusal::Failed {
            status: Status::unavailable("p's adapter cannot be reached (Unavailable)"),
            logged: "grant g; provider answered Unavailable".into(),
        };
        assert_eq!(r.decision(), Decision::Failed);
        assert_eq!(r.into_status().code(), Code::Unavailable);
        assert_eq!(
            Refusal::Throttled(Status::resource_exhausted("slow")).decision(),
            Decision::Throttled
        );
    }
}
