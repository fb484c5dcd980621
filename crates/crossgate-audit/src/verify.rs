//! Checking the chains: every entry's hash matches its contents, links to the
//! one before, sequences run without gaps or repeats, and each chain ends
//! where its recorded head says.

use crate::entry::{Stored, entry_hash, hex};
use std::collections::BTreeMap;

/// One chain's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub writer: String,
    pub checked: u64,
    /// The first sequence number that does not verify, and why.
    pub broken: Option<(u64, String)>,
}

/// Verifies entries fed in chain order (writer, then sequence).
#[derive(Debug, Default)]
pub struct Verifier {
    chains: BTreeMap<String, State>,
    /// The first sequence expected (1 for a whole chain).
    start: u64,
    /// Each chain's head when the verify began: entries past it are newer.
    stop: Option<BTreeMap<String, u64>>,
    /// The last sequence seen past that head, per chain.
    beyond: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct State {
    expected: u64,
    previous: [u8; 32],
    report: ChainReport,
}

impl Verifier {
    pub fn new() -> Self {
        Self::starting_at(1)
    }

    /// Verify from sequence `start` on; the first entry's link is taken as given.
    pub fn starting_at(start: u64) -> Self {
        Verifier {
            chains: BTreeMap::new(),
            start: start.max(1),
            stop: None,
            beyond: BTreeMap::new(),
        }
    }

    /// Verify each chain only up to its head in `heads` (read before the
    /// scan): entries committed since are left for the next verify.
    pub fn stop_at(&mut self, heads: &BTreeMap<String, (u64, [u8; 32])>) {
        self.stop = Some(heads.iter().map(|(w, (s, _))| (w.clone(), *s)).collect());
    }

    /// Settle what happened while the scan ran, given the heads read before
    /// and after it: a chain begun meanwhile is left for the next verify;
    /// entries past the head before the scan must be covered by the head
    /// after it (committed meanwhile), or they lie beyond every recorded
    /// head — the head was moved back over them. (A chain with entries but
    /// no head in either read lost its head row, and stays to be reported.)
    pub fn settle(
        &mut self,
        before: &BTreeMap<String, (u64, [u8; 32])>,
        after: &BTreeMap<String, (u64, [u8; 32])>,
    ) {
        self.chains
            .retain(|writer, _| before.contains_key(writer) || !after.contains_key(writer));
        for (writer, last) in &self.beyond {
            let head = after.get(writer).map_or(0, |h| h.0);
            if let Some(state) = self.chains.get_mut(writer)
                && *last > head
                && state.report.broken.is_none()
            {
                state.report.broken =
                    Some((head + 1, format!("entries after the recorded head {head}")));
            }
        }
    }

    /// Feed the next stored entry of its chain.
    pub fn feed(&mut self, s: &Stored) {
        if let Some(stop) = &self.stop
            && stop.get(&s.writer).is_some_and(|head| s.sequence > *head)
        {
            let last = self.beyond.entry(s.writer.clone()).or_default();
            *last = (*last).max(s.sequence);
            return;
        }
        let start = self.start;
        let state = self
            .chains
            .entry(s.writer.clone())
            .or_insert_with(|| State {
                expected: start,
                // A range after the first entry starts from its first entry's link.
                previous: if start > 1 { s.previous_hash } else { [0; 32] },
                report: ChainReport {
                    writer: s.writer.clone(),
                    checked: 0,
                    broken: None,
                },
            });
        if state.report.broken.is_some() {
            return;
        }
        state.report.checked += 1;
        let fault = if s.sequence < state.expected {
            Some((
                s.sequence,
                format!("sequence {} appears again: an inserted entry", s.sequence),
            ))
        } else if s.sequence > state.expected {
            Some((
                state.expected,
                format!(
                    "sequence {} is missing: an entry was deleted",
                    state.expected
                ),
            ))
        } else if s.previous_hash != state.previous {
            Some((
                s.sequence,
                "does not link to the entry before it: entries were removed, inserted or reordered"
                    .into(),
            ))
        } else if entry_hash(&s.writer, s.sequence, &s.previous_hash, &s.entry) != s.entry_hash {
            Some((
                s.sequence,
                "its hash does not match its contents: the entry was edited".into(),
            ))
        } else {
            None
        };
        match fault {
            Some(f) => state.report.broken = Some(f),
            None => {
                state.expected += 1;
                state.previous = s.entry_hash;
            }
        }
    }

    /// A row of `writer`'s chain at `sequence` could not be read as written.
    pub fn damaged(&mut self, writer: &str, sequence: u64, what: String) {
        let start = self.start;
        let state = self
            .chains
            .entry(writer.to_owned())
            .or_insert_with(|| State {
                expected: start,
                previous: [0; 32],
                report: ChainReport {
                    writer: writer.to_owned(),
                    checked: 0,
                    broken: None,
                },
            });
        if state.report.broken.is_none() {
            state.report.checked += 1;
            state.report.broken = Some((sequence, format!("the entry is damaged: {what}")));
        }
    }

    /// Finish: each chain must end at its recorded head (writer → (sequence, hash)).
    pub fn finish(self, heads: &BTreeMap<String, (u64, [u8; 32])>) -> Vec<ChainReport> {
        self.finish_against(heads, true)
    }

    /// Finish a range that stops short of the heads: no head is checked.
    pub fn finish_range(self) -> Vec<ChainReport> {
        self.finish_against(&BTreeMap::new(), false)
    }

    fn finish_against(
        mut self,
        heads: &BTreeMap<String, (u64, [u8; 32])>,
        whole: bool,
    ) -> Vec<ChainReport> {
        if whole {
            // Entries whose chain has no recorded head: the head's row was
            // deleted (every commit writes one).
            for (writer, state) in &mut self.chains {
                if !heads.contains_key(writer) && state.report.broken.is_none() {
                    state.report.broken = Some((
                        state.expected.saturating_sub(1),
                        "the chain has no recorded head: its head was deleted".into(),
                    ));
                }
            }
        }
        for (writer, (sequence, hash)) in heads {
            if *sequence < self.start {
                // A range that starts after this chain's end: nothing to check.
                continue;
            }
            let state = self.chains.entry(writer.clone()).or_insert_with(|| State {
                expected: 1,
                previous: [0; 32],
                report: ChainReport {
                    writer: writer.clone(),
                    checked: 0,
                    broken: None,
                },
            });
            if state.report.broken.is_some() {
                continue;
            }
            let last = state.expected - 1;
            if last < *sequence {
                state.report.broken = Some((
                    last + 1,
                    format!(
                        "the chain ends at {last} but its head records {sequence}: entries were cut off the end"
                    ),
                ));
            } else if last == *sequence && state.previous != *hash {
                state.report.broken = Some((
                    last,
                    format!(
                        "the last entry's hash differs from the head's {}",
                        hex(hash)
                    ),
                ));
            } else if last > *sequence {
                state.report.broken = Some((
                    sequence + 1,
                    format!("entries after the recorded head {sequence}"),
                ));
            }
        }
        self.chains.into_values().map(|s| s.report).collect()
    }
}
