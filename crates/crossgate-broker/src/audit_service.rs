//! The `Audit` service (auditor role only): search, verify and export the
//! log. Reads open their own connection to the store; every reading is
//! itself written to the log.

use crate::audit::{Decision, Kind};
use crate::pipeline::{Call, entry};
use crate::{Broker, Caller};
use crossgate_audit::entry::{hex, unhex32};
use crossgate_audit::{Entry, Filter, RecordIdKey, StoreError, Stored};
use crossgate_policy::Role;
use crossgate_proto::audit_server::Audit;
use crossgate_proto::{
    AuditEntry, ChainReport, CheckpointRequest, CheckpointResponse, ExportChunk, SearchRequest,
    VerifyRequest, VerifyResponse,
};
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Where the `Audit` service reads: a store spec such as `sqlite:PATH`,
/// and the key of the log's record-id digests.
#[derive(Debug, Clone)]
pub struct AuditReader {
    pub store: String,
    pub ids: RecordIdKey,
}

/// The id a search names, as the reading's own entry names it: its digest
/// (a digest given as entries show it, as it is).
fn logged_search_id(ids: &RecordIdKey, id: &str) -> String {
    if crossgate_audit::is_record_id_digest(id) {
        id.to_owned()
    } else {
        ids.digest(id)
    }
}

fn filter(ids: &RecordIdKey, r: &SearchRequest) -> Filter {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Filter {
        record_id_digest: some(&r.record_id).map(|id| ids.digest(&id)),
        since: some(&r.since),
        until: some(&r.until),
        partner: some(&r.partner),
        consumer: some(&r.consumer),
        provider: some(&r.provider),
        record_type: some(&r.record_type),
        record_id: some(&r.record_id),
        purpose: some(&r.purpose),
        decision: some(&r.decision),
        chain_order: false,
        from_sequence: 0,
        to_sequence: 0,
    }
}

/// The reading as its entry states it: the filters given, the record id
/// as its digest (the log holds no record's id).
fn describe(ids: &RecordIdKey, r: &SearchRequest) -> String {
    let record = if r.record_id.is_empty() {
        String::new()
    } else {
        logged_search_id(ids, &r.record_id)
    };
    let mut parts = Vec::new();
    for (k, v) in [
        ("since", &r.since),
        ("until", &r.until),
        ("partner", &r.partner),
        ("consumer", &r.consumer),
        ("provider", &r.provider),
        ("type", &r.record_type),
        ("record", &record),
        ("purpose", &r.purpose),
        ("decision", &r.decision),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(" ")
}

fn to_message(s: Stored) -> AuditEntry {
    let e = s.entry;
    AuditEntry {
        sequence: s.sequence,
        writer: s.writer,
        time: e.time,
        request_id: e.request_id,
        kind: e.kind.as_str().to_owned(),
        consumer: e.consumer,
        provider: e.provider,
        record_type: e.record_type,
        record_id: e.record_id,
        purpose: e.purpose,
        approval_reference: e.approval_reference,
        decision: e.decision.as_str().to_owned(),
        reason: e.reason,
        released_fields: e.released_fields,
        record_digest: e.record_digest,
        latency_micros: e.latency_micros,
        previous_hash: hex(&s.previous_hash),
        entry_hash: hex(&s.entry_hash),
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Broker {
    fn reader(&self) -> Result<AuditReader, Status> {
        self.inner
            .audit_reader
            .clone()
            .ok_or_else(|| Status::failed_precondition("this broker keeps no readable audit log"))
    }

    /// Every auditor's reading is itself an entry of the log.
    async fn audit_reading(&self, auditor: &Caller, what: String) -> Result<(), Status> {
        let call = Call {
            id: self.request_id(),
            started: Instant::now(),
            deadline: self.inner.config.default_deadline(),
        };
        let mut e = entry(Kind::Audit, Decision::Allowed);
        e.consumer = auditor.id.clone();
        e.reason = what;
        self.audit(&call, e).await
    }
}

/// Scan the store on a blocking thread, sending each matching entry on.
fn scan_into<T: Send + 'static>(
    reader: AuditReader,
    filter: Filter,
    limit: u32,
    map: impl Fn(Stored) -> T + Send + 'static,
) -> mpsc::Receiver<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let mut store = match crossgate_audit::open(&reader.store) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::unavailable(e.to_string())));
                return;
            }
        };
        let mut sent = 0u32;
        let result = store.scan(&filter, &mut |s| {
            sent += 1;
            tx.blocking_send(Ok(map(s))).is_ok() && (limit == 0 || sent < limit)
        });
        if let Err(e) = result {
            // Damage is not a passing outage: retrying will not mend it.
            let status = match e {
                crossgate_audit::StoreError::Damaged { .. } => Status::data_loss(e.to_string()),
                crossgate_audit::StoreError::Failed(_)
                | crossgate_audit::StoreError::WriterInUse(_) => Status::unavailable(e.to_string()),
            };
            let _ = tx.blocking_send(Err(status));
        }
    });
    rx
}

#[tonic::async_trait]
impl Audit for Broker {
    type SearchStream = Streamed<AuditEntry>;
    type ExportStream = Streamed<ExportChunk>;

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<Self::SearchStream>, Status> {
        let auditor = self.authenticate(&request, Role::Auditor)?;
        let reader = self.reader()?;
        let r = request.into_inner();
        self.audit_reading(&auditor, format!("search {}", describe(&reader.ids, &r)))
            .await?;
        let f = filter(&reader.ids, &r);
        let rx = scan_into(reader, f, r.limit, to_message);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let auditor = self.authenticate(&request, Role::Auditor)?;
        let reader = self.reader()?;
        let range = request.into_inner();
        let (from, to) = (range.from_sequence, range.to_sequence);
        let vouched = vouched_heads(range.vouched, from, to)?;
        let what = match vouched.len() {
            0 => format!("verify {from}..{to}"),
            n => format!("verify {from}..{to} against a checkpoint of {n} chains"),
        };
        self.audit_reading(&auditor, what).await?;
        let reports = tokio::task::spawn_blocking(move || {
            let mut store = crossgate_audit::open(&reader.store)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            if vouched.is_empty() {
                crossgate_audit::verify_range(store.as_mut(), from, to)
            } else {
                crossgate_audit::verify_vouched(store.as_mut(), &vouched)
            }
            .map_err(|e| Status::unavailable(e.to_string()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let chains: Vec<ChainReport> = reports
            .into_iter()
            .map(|r| ChainReport {
                ok: r.broken.is_none(),
                first_bad_sequence: r.broken.as_ref().map_or(0, |b| b.0),
                reason: r.broken.map(|b| b.1).unwrap_or_default(),
                entries_checked: r.checked,
                writer: r.writer,
            })
            .collect();
        Ok(Response::new(VerifyResponse {
            ok: chains.iter().all(|c| c.ok),
            entries_checked: chains.iter().map(|c| c.entries_checked).sum(),
            chains,
        }))
    }

    async fn export(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let auditor = self.authenticate(&request, Role::Auditor)?;
        let reader = self.reader()?;
        let r = request.into_inner();
        self.audit_reading(&auditor, format!("export {}", describe(&reader.ids, &r)))
            .await?;
        let f = filter(&reader.ids, &r);
        // Count first, so that the client can show progress.
        let total = count(reader.clone(), f.clone()).await?;
        let lines = scan_into(reader, f, r.limit, |s| s.to_json_line());
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(chunked(lines, tx, total));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        let auditor = self.authenticate(&request, Role::Auditor)?;
        let c = Broker::checkpoint(self).await?;
        let heads: Vec<String> = c
            .heads
            .iter()
            .map(|h| format!("{}@{}", h.writer, h.sequence))
            .collect();
        self.audit_reading(&auditor, format!("checkpoint of {}", heads.join(", ")))
            .await?;
        Ok(Response::new(CheckpointResponse {
            checkpoint: c.to_json(),
        }))
    }
}

/// The heads a checkpoint vouches for, checked for shape: whole range only,
/// a bounded number, each hash 64 hex digits.
fn vouched_heads(
    heads: Vec<crossgate_proto::VouchedHead>,
    from: u64,
    to: u64,
) -> Result<Vec<crossgate_audit::checkpoint::Head>, Status> {
    const MOST: usize = 1024;
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    if from != 0 || to != 0 {
        return Err(Status::invalid_argument(
            "a checkpoint is checked against the whole log: leave from and to at 0",
        ));
    }
    if heads.len() > MOST {
        return Err(Status::invalid_argument(format!(
            "{} vouched heads; at most {MOST}",
            heads.len()
        )));
    }
    heads
        .into_iter()
        .map(|h| {
            let well_formed = h.entry_hash.len() == 64
                && h.entry_hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !h.writer.is_empty()
                && h.writer.len() <= 128
                && h.sequence >= 1
                && h.sequence <= i64::MAX as u64;
            if !well_formed {
                return Err(Status::invalid_argument(
                    "a vouched head needs a writer (at most 128 bytes), a sequence from 1 and a 64-hex-digit entry_hash",
                ));
            }
            Ok(crossgate_audit::checkpoint::Head {
                writer: h.writer,
                sequence: h.sequence,
                hash: h.entry_hash.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// How many entries `filter` selects.
async fn count(reader: AuditReader, filter: Filter) -> Result<u64, Status> {
    tokio::task::spawn_blocking(move || {
        let mut store =
            crossgate_audit::open(&reader.store).map_err(|e| Status::unavailable(e.to_string()))?;
        let mut n = 0u64;
        store
            .scan(&filter, &mut |_| {
                n += 1;
                true
            })
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok::<u64, Status>(n)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

/// Entries in one export chunk at most.
const CHUNK_ENTRIES: u64 = 500;
/// Bytes in one export chunk at most, well under the 4 MiB a gRPC client
/// takes by default: a chunk ends before the entry that would pass it (an
/// entry is bounded far below it, see `Broker::bounds`).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// JSON lines gathered into chunks of at most 500 entries and 1 MiB, each
/// saying how far the export has come; an error ends the stream.
async fn chunked(
    mut lines: mpsc::Receiver<Result<String, Status>>,
    tx: mpsc::Sender<Result<ExportChunk, Status>>,
    total: u64,
) {
    let (mut chunk, mut sent) = (String::new(), 0u64);
    let send = |chunk: &mut String, sent| {
        let jsonl = std::mem::take(chunk).into_bytes();
        tx.send(Ok(ExportChunk {
            jsonl,
            entries_sent: sent,
            entries_total: total,
        }))
    };
    while let Some(line) = lines.recv().await {
        match line {
            Ok(l) => {
                if !chunk.is_empty()
                    && chunk.len() + l.len() + 1 > CHUNK_BYTES
                    && send(&mut chunk, sent).await.is_err()
                {
                    return;
                }
                chunk.push_str(&l);
                chunk.push('\n');
                sent += 1;
                if sent.is_multiple_of(CHUNK_ENTRIES) && send(&mut chunk, sent).await.is_err() {
                    return;
                }
            }
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    }
    if !chunk.is_empty() || sent == 0 {
        let _ = send(&mut chunk, sent).await;
    }
}

/// An entry as the broker sends it, back in the log's own shape (the
/// inverse of `to_message`). A value the broker never sends (an unknown
/// decision, a hash that is not 64 hex digits) is damage, not a default.
pub fn from_message(e: crossgate_proto::AuditEntry) -> Result<Stored, StoreError> {
    let damaged = |what: String| StoreError::Damaged {
        writer: e.writer.clone(),
        sequence: e.sequence,
        what,
    };
    let hash = |text: &str, name: &str| {
        unhex32(text).ok_or_else(|| damaged(format!("{name} is not 64 hex digits")))
    };
    let previous_hash = hash(&e.previous_hash, "previous_hash")?;
    let entry_hash = hash(&e.entry_hash, "entry_hash")?;
    let kind = Kind::parse(&e.kind)
        .ok_or_else(|| damaged(format!("kind {:?} is not one crossgate writes", e.kind)))?;
    let decision = Decision::parse(&e.decision).ok_or_else(|| {
        damaged(format!(
            "decision {:?} is not one crossgate writes",
            e.decision
        ))
    })?;
    Ok(Stored {
        writer: e.writer,
        sequence: e.sequence,
        previous_hash,
        entry_hash,
        entry: Entry {
            time: e.time,
            request_id: e.request_id,
            kind,
            consumer: e.consumer,
            provider: e.provider,
            record_type: e.record_type,
            record_id: e.record_id,
            purpose: e.purpose,
            approval_reference: e.approval_reference,
            decision,
            reason: e.reason,
            released_fields: e.released_fields,
            record_digest: e.record_digest,
            latency_micros: e.latency_micros,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn export_chunks_stay_under_their_byte_bound_and_lose_no_line() {
        let (lines_tx, lines) = mpsc::channel(2000);
        let (tx, mut rx) = mpsc::channel(2000);
        // 40 KB lines: 25 fit in a chunk by bytes, long before 500 by count.
        let line = "x".repeat(40_000);
        for _ in 0..100 {
            lines_tx.send(Ok(line.clone())).await.unwrap();
        }
        drop(lines_tx);
        chunked(lines, tx, 100).await;
        let (mut total, mut chunks) = (0, 0);
        while let Some(Ok(c)) = rx.recv().await {
            assert!(c.jsonl.len() <= CHUNK_BYTES, "{}", c.jsonl.len());
            total += c.jsonl.iter().filter(|b| **b == b'\n').count();
            chunks += 1;
            assert_eq!(c.entries_sent as usize, total);
        }
        assert_eq!(total, 100);
        assert_eq!(chunks, 4);
    }
}
