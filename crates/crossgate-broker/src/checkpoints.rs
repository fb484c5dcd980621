//! Signed checkpoints of the log's chain heads (see
//! `crossgate_audit::checkpoint`): on demand through `Audit.Checkpoint`, and
//! every `[audit] checkpoint_every` into the `[audit] checkpoints` folder,
//! outside the store, where a truncation of the store cannot reach them.

use crate::Broker;
use crate::audit_service::AuditReader;
use crossgate_audit::checkpoint::{Checkpoint, Signer};
use std::path::{Path, PathBuf};
use tonic::Status;

/// Periodic checkpoints kept in the folder; older ones are removed (the
/// auditor is expected to collect them).
pub const KEEP: usize = 1000;

impl Broker {
    /// Sign every chain's head as the store holds it now.
    pub async fn checkpoint(&self) -> Result<Checkpoint, Status> {
        let signer = self.inner.checkpoints.clone().ok_or_else(|| {
            Status::failed_precondition("this broker has no checkpoint signing key")
        })?;
        let reader = self.inner.audit_reader.clone().ok_or_else(|| {
            Status::failed_precondition("this broker keeps no readable audit log")
        })?;
        let dir = self.inner.config.audit.checkpoints.clone();
        let broker = self.clone();
        tokio::task::spawn_blocking(move || {
            // One signing at a time, each after the one before it.
            let mut last = broker
                .inner
                .last_checkpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_none() {
                *last = newest_in(&dir, &signer.public_key());
            }
            let c = sign_heads(&reader, &signer, last.as_ref())?;
            *last = Some(c.clone());
            Ok(c)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Write a checkpoint into the folder every `[audit] checkpoint_every`
    /// until the task is aborted; `None` when there is nothing to sign or
    /// the period is zero.
    pub(crate) fn spawn_checkpoints(&self) -> Option<tokio::task::JoinHandle<()>> {
        let audit = &self.inner.config.audit;
        let every = audit.checkpoint_every;
        if every.is_zero() || self.inner.checkpoints.is_none() || self.inner.audit_reader.is_none()
        {
            return None;
        }
        let (broker, dir) = (self.clone(), audit.checkpoints.clone());
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match broker.checkpoint().await {
                    Ok(c) => {
                        let dir = dir.clone();
                        let written =
                            tokio::task::spawn_blocking(move || keep_in(&dir, &c, KEEP)).await;
                        match written {
                            Ok(Ok(path)) => {
                                tracing::debug!(file = %path.display(), "checkpoint signed")
                            }
                            Ok(Err(e)) => tracing::warn!("checkpoint not kept: {e}"),
                            Err(e) => tracing::warn!("checkpoint not kept: {e}"),
                        }
                    }
                    Err(status) => tracing::warn!("no checkpoint: {}", status.message()),
                }
            }
        }))
    }
}

/// Sign the heads the store holds now — but only a log that still holds
/// what the broker's previous checkpoint vouched for: a log cut short or
/// rewritten since is refused (`DATA_LOSS`), never vouched for.
fn sign_heads(
    reader: &AuditReader,
    signer: &Signer,
    last: Option<&Checkpoint>,
) -> Result<Checkpoint, Status> {
    let mut store =
        crossgate_audit::open(&reader.store).map_err(|e| Status::unavailable(e.to_string()))?;
    if let Some(last) = last {
        let short = crossgate_audit::checkpoint::vouched(store.as_mut(), &last.heads)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(s) = short.first() {
            let why = format!(
                "the log no longer holds what this broker's checkpoint of {} vouched for: chain {}, entry {}: {}; not signing it — run crossgate audit verify --checkpoint",
                last.signed_at, s.writer, s.sequence, s.why
            );
            tracing::error!("{why}");
            return Err(Status::data_loss(why));
        }
    }
    let heads = store
        .heads()
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    Ok(signer.sign(&heads, &now))
}

/// The checkpoint files in `dir`, oldest first: the names sort as their
/// times do (fixed-width RFC 3339, UTC).
fn checkpoint_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The newest checkpoint in `dir` this broker's key signed, if any.
fn newest_in(dir: &Path, key: &str) -> Option<Checkpoint> {
    checkpoint_files(dir).ok()?.iter().rev().find_map(|f| {
        let c = Checkpoint::parse(&std::fs::read_to_string(f).ok()?).ok()?;
        c.check_signature(key).ok()?;
        Some(c)
    })
}

/// Write `c` as `checkpoint-<time>.json` in `dir` (created if missing),
/// whole or not at all, and remove all but the newest `keep`.
pub fn keep_in(dir: &Path, c: &Checkpoint, keep: usize) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp: String = c
        .signed_at
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect();
    let path = dir.join(format!("checkpoint-{stamp}.json"));
    let partial = dir.join(format!(".checkpoint-{stamp}.partial"));
    std::fs::write(&partial, c.to_json())?;
    std::fs::rename(&partial, &path)?;
    let kept = checkpoint_files(dir)?;
    let surplus = kept.len().saturating_sub(keep);
    for old in &kept[..surplus] {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_folder_keeps_the_newest_checkpoints_each_whole() {
        let dir = crossgate_testing::TempDir::new("checkpoints-kept");
        let signer = Signer::from_seed(&[3; 32], "broker").unwrap();
        let heads = BTreeMap::from([("broker-1".to_owned(), (1, [0u8; 32]))]);
        for second in 0..5 {
            let c = signer.sign(&heads, &format!("2026-11-23T00:00:0{second}.000000Z"));
            keep_in(dir.path(), &c, 3).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint-2026-11-23T00-00-02-000000Z.json",
                "checkpoint-2026-11-23T00-00-03-000000Z.json",
                "checkpoint-2026-11-23T00-00-04-000000Z.json"
            ]
        );
        let newest = std::fs::read_to_string(dir.path().join(&names[2])).unwrap();
        Checkpoint::parse(&newest)
            .unwrap()
            .check_signature(&signer.public_key())
            .unwrap();
    }
}
