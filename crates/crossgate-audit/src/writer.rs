//! Group commit: entries reach one writer thread through a bounded channel;
//! it seals each onto the chain and commits whatever has queued up in one
//! transaction, then answers every waiting caller.

use crate::entry::{Entry, Stored};
use crate::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Whether a caller waits for its entry to be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The reply is sent only after the entry is committed (the default).
    Durable,
    /// The entry is queued and the reply sent at once.
    Async,
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Appends entries to a store through the group-commit thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Entry, Option<Reply>)>,
    durability: Durability,
    failed: Arc<AtomicBool>,
}

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 4096;

impl Writer {
    /// Start the writer thread for chain `writer` (this broker's id) on `store`.
    pub fn start(
        mut store: Box<dyn Store>,
        writer: String,
        durability: Durability,
        queue: usize,
    ) -> Result<Self, StoreError> {
        let (mut sequence, mut previous) = store.head(&writer)?.unwrap_or((0, [0; 32]));
        let (tx, mut rx) = mpsc::channel::<(Entry, Option<Reply>)>(queue.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name(format!("audit-{writer}"))
            .spawn(move || {
                let mut batch: Vec<Stored> = Vec::with_capacity(MAX_BATCH);
                let mut replies: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some((entry, reply)) = next.take() {
                        sequence += 1;
                        let sealed = Stored::seal(&writer, sequence, previous, entry);
                        previous = sealed.entry_hash;
                        batch.push(sealed);
                        replies.extend(reply);
                        if batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    let result = store.append(&batch);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "audit log write failed");
                        // The chain in memory ran ahead of the store: re-read its head.
                        match store.head(&writer) {
                            Ok(head) => (sequence, previous) = head.unwrap_or((0, [0; 32])),
                            Err(_) => flag.store(true, Ordering::SeqCst),
                        }
                    }
                    flag.store(result.is_err(), Ordering::SeqCst);
                    for reply in replies.drain(..) {
                        let _ = reply.send(result.clone());
                    }
                    batch.clear();
                }
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the audit writer: {e}")))?;
        Ok(Writer {
            tx,
            durability,
            failed,
        })
    }

    /// Append one entry: in durable mode, returns once it is committed.
    pub async fn append(&self, entry: Entry) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) && self.durability == Durability::Async {
            return Err(StoreError::Failed(
                "the audit log is failing; refusing new work".into(),
            ));
        }
        match self.durability {
            Durability::Async => self
                .tx
                .send((entry, None))
                .await
                .map_err(|_| StoreError::Failed("the audit writer has stopped".into())),
            Durability::Durable => {
                let (reply, wait) = oneshot::channel();
                self.tx
                    .send((entry, Some(reply)))
                    .await
                    .map_err(|_| StoreError::Failed("the audit writer has stopped".into()))?;
                wait.await
                    .map_err(|_| StoreError::Failed("the audit writer has stopped".into()))?
            }
        }
    }
}
