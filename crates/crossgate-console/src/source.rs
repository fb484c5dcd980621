//! Where the console reads the log: a store, or the broker's Audit service
//! with an auditor's certificate (where every page's reading is itself
//! written to the log by the broker).

use crossgate_audit::ChainReport;
use crossgate_audit::entry::unhex32;
use crossgate_audit::{Decision, Entry, Filter, Kind, RecordIdKey, Store, StoreError, Stored};
use crossgate_proto::audit_client::AuditClient;
use crossgate_proto::{SearchRequest, VerifyRequest};
use tonic::transport::Channel;

/// What a page reads.
pub trait Log {
    /// Visit matching entries in order until `visit` returns false.
    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError>;
    /// Every chain checked from its start to its head.
    fn verify(&mut self) -> Result<Vec<ChainReport>, StoreError>;
}

/// A store read directly. The log holds record ids as keyed digests: with
/// the key, a search by id finds them; without it, only a digest as
/// entries show it (`id:…`) and entries written before digests are found.
pub struct StoreLog {
    pub store: Box<dyn Store>,
    pub ids: Option<RecordIdKey>,
}

impl Log for StoreLog {
    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        match (&self.ids, filter.record_id.as_deref()) {
            (Some(ids), Some(id)) if !id.is_empty() => {
                let filter = Filter {
                    record_id_digest: Some(ids.digest(id)),
                    ..filter.clone()
                };
                self.store.scan(&filter, visit)
            }
            _ => self.store.scan(filter, visit),
        }
    }

    fn verify(&mut self) -> Result<Vec<ChainReport>, StoreError> {
        crossgate_audit::verify_range(self.store.as_mut(), 0, 0)
    }
}

/// The broker's Audit service, called from a blocking thread of `runtime`.
pub struct BrokerLog {
    pub client: AuditClient<Channel>,
    pub runtime: tokio::runtime::Handle,
}

fn unreadable(status: tonic::Status) -> StoreError {
    StoreError::Failed(format!(
        "the broker's Audit service answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

impl Log for BrokerLog {
    fn scan(
        &mut self,
        filter: &Filter,
        visit: &mut dyn FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let request = SearchRequest {
            since: text(&filter.since),
            until: text(&filter.until),
            partner: text(&filter.partner),
            consumer: text(&filter.consumer),
            provider: text(&filter.provider),
            record_type: text(&filter.record_type),
            record_id: text(&filter.record_id),
            purpose: text(&filter.purpose),
            decision: text(&filter.decision),
            limit: 0,
        };
        let mut client = self.client.clone();
        self.runtime.block_on(async {
            let mut stream = client
                .search(request)
                .await
                .map_err(unreadable)?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(unreadable)? {
                // The service has no sequence filter: applied here.
                if (filter.from_sequence > 0 && e.sequence < filter.from_sequence)
                    || (filter.to_sequence > 0 && e.sequence > filter.to_sequence)
                {
                    continue;
                }
                if !visit(stored(e)?) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn verify(&mut self) -> Result<Vec<ChainReport>, StoreError> {
        let mut client = self.client.clone();
        let answer = self
            .runtime
            .block_on(client.verify(VerifyRequest::default()))
            .map_err(unreadable)?
            .into_inner();
        Ok(answer
            .chains
            .into_iter()
            .map(|c| ChainReport {
                writer: c.writer,
                checked: c.entries_checked,
                broken: (!c.ok).then_some((c.first_bad_sequence, c.reason)),
            })
            .collect())
    }
}

/// An entry as the service sends it, back into the log's own form.
fn stored(e: crossgate_proto::AuditEntry) -> Result<Stored, StoreError> {
    let damaged = |why: &str| StoreError::Failed(format!("the broker sent an entry with {why}"));
    Ok(Stored {
        writer: e.writer,
        sequence: e.sequence,
        previous_hash: unhex32(&e.previous_hash).ok_or_else(|| damaged("a bad previous hash"))?,
        entry_hash: unhex32(&e.entry_hash).ok_or_else(|| damaged("a bad entry hash"))?,
        entry: Entry {
            time: e.time,
            request_id: e.request_id,
            kind: Kind::parse(&e.kind).ok_or_else(|| damaged("an unknown kind"))?,
            consumer: e.consumer,
            provider: e.provider,
            record_type: e.record_type,
            record_id: e.record_id,
            purpose: e.purpose,
            approval_reference: e.approval_reference,
            decision: Decision::parse(&e.decision).ok_or_else(|| damaged("an unknown decision"))?,
            reason: e.reason,
            released_fields: e.released_fields,
            record_digest: e.record_digest,
            latency_micros: e.latency_micros,
        },
    })
}
