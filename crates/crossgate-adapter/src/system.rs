//! The reference department system: a small `DepartmentSystem` service over
//! native JSON records held in memory, seeded from JSON Lines files and
//! appending what it receives to an inbox file. It keeps everything it is
//! handed, repeats included, so tests can count what reached a department. Tests and the demo use it in
//! place of a real department's database.

use crossgate_proto::department_system_server::DepartmentSystem;
use crossgate_proto::{FindRequest, FindResponse, NativeRecord, ReceiveRequest, ReceiveResponse};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// One record the system received from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub provider: String,
    pub record_type: String,
    pub native_type: String,
    /// The id the broker gave the record: the grant's key field or an opaque reference.
    pub record_id: String,
    /// The broker's delivery id (the same if the record is ever handed over again).
    pub delivery_id: String,
    pub document: Value,
}

/// How many received records the system keeps in memory.
pub const KEPT: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, Vec<Value>>,
    /// The newest `KEPT` records received (the inbox file, when set, has all).
    received: std::collections::VecDeque<Received>,
}

/// How long a department takes to answer one kind of call (a slow
/// department), in microseconds; read without the state's lock, as every
/// call of that kind reads it.
#[derive(Debug, Clone, Default)]
struct Delay(Arc<AtomicU64>);

impl Delay {
    fn set(&self, delay: std::time::Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.0.store(micros, Ordering::Relaxed);
    }

    /// Wait out the delay, if one is set, counted in `slow` while it waits
    /// (until it ends or its caller is gone).
    async fn wait(&self, slow: &Slow) {
        let micros = self.0.load(Ordering::Relaxed);
        if micros > 0 {
            slow.begun.fetch_add(1, Ordering::AcqRel);
            slow.waiting.fetch_add(1, Ordering::AcqRel);
            let _left = Left(&slow.waiting);
            tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
        }
    }
}

/// Calls that met a delay: how many began, and how many wait now.
#[derive(Debug, Default)]
struct Slow {
    begun: AtomicU64,
    waiting: AtomicU64,
}

/// Counts a waiting call out however its wait ends.
struct Left<'a>(&'a AtomicU64);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An in-memory department system.
#[derive(Debug, Clone, Default)]
pub struct ReferenceSystem {
    state: Arc<Mutex<State>>,
    inbox: Option<PathBuf>,
    /// How long a find waits before it answers.
    find_delay: Delay,
    /// How long a receive waits before it takes the record.
    receive_delay: Delay,
    /// Finds and receives that met a delay.
    slow_answers: Arc<Slow>,
}

impl ReferenceSystem {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append every received record to this JSON Lines file as well.
    pub fn with_inbox(mut self, path: PathBuf) -> Self {
        self.inbox = Some(path);
        self
    }

    /// Load `*.valid.jsonl` files of a folder: `persons.valid.jsonl` seeds
    /// native type `persons`. Returns how many records were loaded.
    pub fn seed_dir(&self, dir: &Path) -> std::io::Result<usize> {
        let mut count = 0;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".valid.jsonl"))
            .collect();
        files.sort();
        for path in files {
            let Some(native_type) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').next())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path)?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let doc: Value = serde_json::from_str(line).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}:{}: {e}", path.display(), i + 1),
                    )
                })?;
                self.insert(native_type, doc);
                count += 1;
            }
        }
        Ok(count)
    }

    pub fn insert(&self, native_type: &str, doc: Value) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .records
            .entry(native_type.to_owned())
            .or_default()
            .push(doc);
    }

    /// Answer every find only after `delay`, as a slow department system
    /// would (for tests of callers that give up meanwhile).
    pub fn answer_finds_after(&self, delay: std::time::Duration) {
        self.find_delay.set(delay);
    }

    /// Take every receive only after `delay`, as a slow receiving system
    /// would (for tests of publishers that give up meanwhile).
    pub fn answer_receives_after(&self, delay: std::time::Duration) {
        self.receive_delay.set(delay);
    }

    /// How many finds and receives began while a delay was set for them:
    /// a test knows its slow calls reached the system.
    pub fn slow_answers_begun(&self) -> u64 {
        self.slow_answers.begun.load(Ordering::Acquire)
    }

    /// How many of them wait now: a call whose caller went away stops
    /// waiting (its server drops it at the reset).
    pub fn slow_answers_waiting(&self) -> u64 {
        self.slow_answers.waiting.load(Ordering::Acquire)
    }

    /// What was received, oldest first: everything, or the newest
    /// [`KEPT`] once more have come (a long-running `crossgate up` under
    /// load must not keep every record in memory).
    pub fn received(&self) -> Vec<Received> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.received.iter().cloned().collect()
    }
}

#[tonic::async_trait]
impl DepartmentSystem for ReferenceSystem {
    async fn receive(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        self.receive_delay.wait(&self.slow_answers).await;
        let req = request.into_inner();
        let record = req
            .record
            .ok_or_else(|| Status::invalid_argument("record is required"))?;
        let document: Value = serde_json::from_slice(&record.json)
            .map_err(|e| Status::invalid_argument(format!("record is not JSON: {e}")))?;
        // One receive at a time: lines of concurrent deliveries never interleave.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.inbox {
            let mut line = serde_json::json!({
                "provider": req.provider, "record_type": req.record_type,
                "native_type": record.native_type, "record_id": record.record_id,
                "delivery_id": req.delivery_id, "record": document,
            })
            .to_string();
            line.push('\n');
            // The inbox holds whole records: its owner's only.
            let written = crossgate_tls::open_owner_only(path, crossgate_tls::Opening::Append)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            written.map_err(|e| Status::unavailable(format!("cannot write the inbox: {e}")))?;
        }
        if state.received.len() >= KEPT {
            state.received.pop_front();
        }
        state.received.push_back(Received {
            provider: req.provider,
            record_type: req.record_type,
            native_type: record.native_type,
            record_id: record.record_id,
            delivery_id: req.delivery_id,
            document,
        });
        Ok(Response::new(ReceiveResponse {}))
    }

    async fn find(&self, request: Request<FindRequest>) -> Result<Response<FindResponse>, Status> {
        let req = request.into_inner();
        self.find_delay.wait(&self.slow_answers).await;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let records = state
            .records
            .get(&req.native_type)
            .map(|docs| {
                docs.iter()
                    .filter(|doc| {
                        req.criteria.iter().all(|c| match doc.pointer(&c.path) {
                            Some(Value::String(s)) => s.eq_ignore_ascii_case(&c.value),
                            Some(Value::Number(n)) => n.to_string() == c.value,
                            _ => false,
                        })
                    })
                    .take(match req.limit {
                        0 => usize::MAX,
                        n => n as usize,
                    })
                    .map(|doc| NativeRecord {
                        native_type: req.native_type.clone(),
                        record_id: String::new(),
                        json: serde_json::to_vec(doc).unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(FindResponse { records }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_newest_records_are_kept_in_memory() {
        let system = ReferenceSystem::new();
        for i in 0..KEPT + 5 {
            let request = ReceiveRequest {
                provider: "customs".into(),
                record_type: "declaration".into(),
                record: Some(NativeRecord {
                    native_type: "declaration".into(),
                    record_id: format!("r{i}"),
                    json: br#"{"n": 1}"#.to_vec(),
                }),
                delivery_id: format!("d{i}"),
            };
            system.receive(Request::new(request)).await.unwrap();
        }
        let received = system.received();
        assert_eq!(received.len(), KEPT);
        assert_eq!(received[0].delivery_id, "d5", "the oldest go first");
        assert_eq!(received[KEPT - 1].delivery_id, format!("d{}", KEPT + 4));
    }
}
