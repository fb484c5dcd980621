//! Group commit: entries and outbox changes reach one writer thread through
//! a bounded channel; it seals each entry onto the chain and commits
//! whatever has queued up in one transaction, then answers every waiting
//! caller. Reads of the outbox run on the same thread, after the commits
//! queued before them, so a caller reads what it wrote.

use crate::entry::Stored;
use crate::outbox::{Claim, Commit, Committed, Op, Prior};
use crate::{Entry, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Whether a caller waits for its entry to be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The reply is sent only after the entry is committed (the default).
    Durable,
    /// The entry is queued and the reply sent at once. Commits carrying
    /// outbox changes or a claim always wait.
    Async,
}

type Reply = oneshot::Sender<Result<Committed, StoreError>>;
type Read = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Job {
    Commit(Commit, Option<Reply>),
    Read(Read),
}

/// Appends entries to a store through the group-commit thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    durability: Durability,
    failed: Arc<AtomicBool>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 4096;

/// The writer thread's state: the chain's head and the batch being built.
struct Chain {
    store: Box<dyn Store>,
    writer: String,
    sequence: u64,
    previous: [u8; 32],
    /// False after a failed commit whose head could not be read back: the
    /// chain in memory may be ahead of the store, so nothing is sealed
    /// until the head is read again.
    head_known: bool,
    batch: Vec<Stored>,
    ops: Vec<Op>,
    claims: Vec<Claim>,
    /// Keys claimed in this batch, not yet in the store.
    claimed: HashMap<(String, String), Prior>,
    replies: Vec<(Reply, Committed)>,
}

impl Chain {
    /// Add one commit to the batch; a repeated claim writes its repeat
    /// entries and none of its changes.
    fn add(&mut self, commit: Commit, reply: Option<Reply>) {
        if !self.head_known {
            match self.store.head(&self.writer) {
                Ok(head) => {
                    (self.sequence, self.previous) = head.unwrap_or((0, [0; 32]));
                    self.head_known = true;
                }
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    return;
                }
            }
        }
        let mut outcome = Committed::Applied;
        let entries = match commit.claim {
            None => {
                self.ops.extend(commit.ops);
                commit.entries
            }
            Some((claim, on_repeat)) => {
                let key = (claim.provider.clone(), claim.key.clone());
                let prior = match self.claimed.get(&key) {
                    Some(prior) => Ok(Some(prior.clone())),
                    None => self.store.find_claim(&claim.provider, &claim.key),
                };
                match prior {
                    Err(e) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        return;
                    }
                    Ok(Some(prior)) => {
                        let entries = on_repeat(&prior);
                        outcome = Committed::Repeat(prior);
                        entries
                    }
                    Ok(None) => {
                        self.claimed.insert(
                            key,
                            Prior {
                                request_id: claim.request_id.clone(),
                                record_digest: claim.record_digest.clone(),
                            },
                        );
                        self.claims.push(claim);
                        self.ops.extend(commit.ops);
                        commit.entries
                    }
                }
            }
        };
        for entry in entries {
            self.seal(entry);
        }
        if let Some(reply) = reply {
            self.replies.push((reply, outcome));
        }
    }

    fn seal(&mut self, entry: Entry) {
        self.sequence += 1;
        let sealed = Stored::seal(&self.writer, self.sequence, self.previous, entry.bounded());
        self.previous = sealed.entry_hash;
        self.batch.push(sealed);
    }

    /// Commit the batch and answer its callers.
    fn flush(&mut self, failed: &AtomicBool) {
        let result = self.store.commit(&self.batch, &self.ops, &self.claims);
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit log write failed");
            // The chain in memory ran ahead of the store: re-read its head.
            match self.store.head(&self.writer) {
                Ok(head) => (self.sequence, self.previous) = head.unwrap_or((0, [0; 32])),
                Err(_) => self.head_known = false,
            }
        }
        failed.store(result.is_err(), Ordering::SeqCst);
        for (reply, outcome) in self.replies.drain(..) {
            let _ = reply.send(result.clone().map(|()| outcome));
        }
        self.batch.clear();
        self.ops.clear();
        self.claims.clear();
        self.claimed.clear();
    }
}

fn stopped() -> StoreError {
    StoreError::Failed("the audit writer has stopped".into())
}

impl Writer {
    /// Start the writer thread for chain `writer` (this broker's id) on `store`.
    pub fn start(
        mut store: Box<dyn Store>,
        writer: String,
        durability: Durability,
        queue: usize,
    ) -> Result<Self, StoreError> {
        store.lock_writer(&writer)?;
        let (sequence, previous) = store.head(&writer)?.unwrap_or((0, [0; 32]));
        let (tx, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let mut chain = Chain {
            store,
            writer: writer.clone(),
            sequence,
            previous,
            head_known: true,
            batch: Vec::with_capacity(MAX_BATCH),
            ops: Vec::new(),
            claims: Vec::new(),
            claimed: HashMap::new(),
            replies: Vec::with_capacity(MAX_BATCH),
        };
        let thread = std::thread::Builder::new()
            .name(format!("audit-{writer}"))
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    let mut read = None;
                    while let Some(job) = next.take() {
                        match job {
                            Job::Commit(commit, reply) => chain.add(commit, reply),
                            // A read runs after the commits queued before it.
                            Job::Read(r) => {
                                read = Some(r);
                                break;
                            }
                        }
                        if chain.batch.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    if !chain.batch.is_empty() || !chain.ops.is_empty() || !chain.replies.is_empty()
                    {
                        chain.flush(&flag);
                    }
                    if let Some(read) = read {
                        read(chain.store.as_mut());
                    }
                    if rx.is_empty() {
                        chain.store.rest();
                    }
                }
            })
            .map_err(|e| StoreError::Failed(format!("cannot start the audit writer: {e}")))?;
        Ok(Writer {
            tx,
            durability,
            failed,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        })
    }

    /// Commit what is queued, close the store and let go of the chain.
    /// Returns once every clone of this writer is gone and the thread ended.
    /// Entries (and other jobs) waiting for the writer thread.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn close(self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(self);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
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
                .send(Job::Commit(Commit::entries(vec![entry]), None))
                .await
                .map_err(|_| stopped()),
            Durability::Durable => self.commit(Commit::entries(vec![entry])).await.map(|_| ()),
        }
    }

    /// Commit entries and outbox changes together; returns once they are
    /// committed (whatever the durability), or why not.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Job::Commit(commit, Some(reply)))
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// Run `read` on the writer's store after every commit queued before it.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, wait) = oneshot::channel();
        let job: Read = Box::new(move |store| {
            let _ = reply.send(read(store));
        });
        self.tx.send(Job::Read(job)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}
