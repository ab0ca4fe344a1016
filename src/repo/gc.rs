//! Retention: which old versions' data to let go, recording that decision so every
//! node agrees, and sweeping the chunks no kept version needs.
//!
//! Version records are never deleted (they are small and convergence needs them).
//! A `Content::Purge` record names versions of one entry whose data may go; it
//! travels like any record. A purge never touches what an entry shows: a version
//! that is a head, or whose content a head shows (the plain name or a conflict
//! entry), stays readable whatever a purge says. Reading a purged version fails with
//! ENODATA and a log line saying it was purged.

use super::apply::Apply;
use super::{Repo, RepoError, Result};
use crate::chunking::chunk_ids_of;
use crate::model::{ChunkId, Content, EntryId, NodeId, SignedRecord, VersionId, VersionRecord};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What `distribox gc` keeps. A file version's data goes only if it is neither among
/// the last `keep_last` versions of its file nor younger than `keep_days`; saves
/// superseded by the same author within `coalesce_secs` do not count towards
/// `keep_last` (an editor's autosaves should not push real versions out).
/// `only_deleted` applies the policy to files deleted now and to nothing else: the
/// way to win space back from deleted files without touching the history of the
/// files that stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_days: u64,
    pub coalesce_secs: u64,
    #[serde(default)]
    pub only_deleted: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_last: 10,
            keep_days: 30,
            coalesce_secs: 10,
            only_deleted: false,
        }
    }
}

/// What a gc run did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub versions_purged: usize,
    pub files: usize,
    /// False when chunks were not swept (files were being written).
    pub swept: bool,
    pub chunks_freed: u64,
    pub bytes_freed: u64,
    /// The freed chunks' disk space is being given back in the background
    /// (`Store::reclaim_space`).
    #[serde(default)]
    pub reclaiming: bool,
}

/// How old a chunk must be before a sweep may take it for an orphan: a chunk a
/// member hinted while writing a file belongs to a record that comes only when the
/// writer closes the file.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Marks in the chunk key sequence (keys are handed out in write order) with the
/// time each was taken, so a sweep can tell which chunks are at least
/// `ORPHAN_MIN_AGE` old. Chunks stored by an earlier run of the node count as old
/// at once: whatever they were waiting for, this run does not wait with them.
#[derive(Debug)]
pub(crate) struct OrphanWatch {
    /// Oldest first; the first is the mark in force.
    marks: std::collections::VecDeque<(u64, Instant)>,
}

impl OrphanWatch {
    pub(crate) fn new(first_key: u64) -> Self {
        let long_ago = Instant::now().checked_sub(ORPHAN_MIN_AGE).unwrap_or_else(Instant::now);
        OrphanWatch {
            marks: [(first_key, long_ago)].into(),
        }
    }

    /// Records `key` as the next key at `now` and returns the mark in force: every
    /// chunk with a lower key was stored at least `ORPHAN_MIN_AGE` before `now`.
    fn mark_at(&mut self, key: u64, now: Instant) -> u64 {
        if self
            .marks
            .back()
            .is_none_or(|(_, t)| now.saturating_duration_since(*t) >= ORPHAN_MIN_AGE / 24)
        {
            self.marks.push_back((key, now));
        }
        while self.marks.len() > 1 && now.saturating_duration_since(self.marks[1].1) >= ORPHAN_MIN_AGE {
            self.marks.pop_front();
        }
        self.marks.front().map_or(0, |(k, _)| *k)
    }
}

/// What a sweep found to delete, from a walk without locks; `Repo::sweep` checks it
/// against what changed since and deletes.
pub struct SweepPlan {
    /// Each author's last seq when the walk began: records after it were not walked.
    walked: HashMap<NodeId, u64>,
    /// (orphan mark, tree epoch) the walk saw, if it saw every kept manifest: once
    /// swept, a sweep that finds both unchanged has nothing to do (see `sweep_plan`).
    seen: Option<(u64, u64)>,
    /// Purged versions whose chunks no kept version needs.
    gone: HashSet<VersionId>,
    purged_chunks: HashSet<ChunkId>,
    orphans: HashSet<ChunkId>,
}

/// One version of an entry as the policy sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: VersionId,
    pub wall_ns: u64,
    pub author: NodeId,
    pub parents: Vec<VersionId>,
    pub is_file: bool,
}

/// The versions of one entry `policy` lets go (pure). `keep` holds the versions
/// that must stay readable (heads and the contents they show).
pub fn expire(versions: &[Candidate], keep: &HashSet<VersionId>, now_ns: u64, policy: &Policy) -> Vec<VersionId> {
    let coalesced = |v: &Candidate| {
        versions.iter().any(|w| {
            w.author == v.author
                && w.parents.contains(&v.id)
                && w.wall_ns.saturating_sub(v.wall_ns) <= policy.coalesce_secs.saturating_mul(1_000_000_000)
        })
    };
    let mut files: Vec<&Candidate> = versions.iter().filter(|v| v.is_file).collect();
    files.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.id.cmp(&a.id)));
    let counted: HashSet<VersionId> = files
        .iter()
        .filter(|v| !coalesced(v))
        .take(policy.keep_last)
        .map(|v| v.id)
        .collect();
    let max_age = policy.keep_days.saturating_mul(86_400 * 1_000_000_000);
    files
        .into_iter()
        .filter(|v| !keep.contains(&v.id) && !counted.contains(&v.id))
        .filter(|v| now_ns.saturating_sub(v.wall_ns) > max_age)
        .map(|v| v.id)
        .collect()
}

pub(super) const PURGED_PREFIX: &str = "purged/";

impl Apply<'_> {
    /// Records that `purge`'s versions may lose their data (see the module doc).
    pub(super) fn purge(&mut self, purge: &SignedRecord) -> Vec<VersionId> {
        let Content::Purge { versions } = &purge.record.content else {
            return Vec::new();
        };
        for v in versions {
            let key = format!("{PURGED_PREFIX}{}", v.to_hex());
            self.batch.put_meta(&key, purge.record.entry.as_bytes());
        }
        self.purged.extend(versions.iter().map(|v| (*v, purge.record.entry)));
        versions.clone()
    }
}

impl Repo {
    /// Loads the purge marks (version → entry) kept in `meta`.
    pub(super) fn load_purged(store: &crate::store::Store) -> Result<HashMap<VersionId, EntryId>> {
        let mut out = HashMap::new();
        for (k, v) in store.meta_with_prefix(PURGED_PREFIX)? {
            let version = std::str::from_utf8(&k).ok().and_then(VersionId::from_hex);
            let entry = EntryId::from_slice(&v);
            if let (Some(version), Some(entry)) = (version, entry) {
                out.insert(version, entry);
            }
        }
        Ok(out)
    }

    /// True if a purge let `v`'s data go and nothing shown still needs it.
    pub fn is_purged(&self, v: VersionId) -> Result<bool> {
        let Some(entry) = self.purged.lock().get(&v).copied() else {
            return Ok(false);
        };
        // A purge speaks only for file versions of its own entry (a peer's purge
        // naming anything else is ignored).
        match self.stored_record(v)? {
            Some(r) => {
                if r.record.entry != entry || !matches!(r.record.content, Content::File { .. }) {
                    return Ok(false);
                }
            }
            None => return Ok(false),
        }
        match self.get(entry) {
            Ok(s) => Ok(!s.shows(v)),
            Err(RepoError::NotFound { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Applies `policy` to every file: records purges for the versions it lets go
    /// (unless `dry_run`). `sweep` then frees their chunks.
    ///
    /// One entry at a time (its versions from the `entry_versions` index): holding
    /// every version of the folder at once cost ~330 bytes each, 130 MiB for
    /// 400,000 versions, every hour.
    pub fn gc(&self, policy: &Policy, dry_run: bool) -> Result<GcReport> {
        let pending: HashSet<VersionId> = self.pending_ids().into_iter().collect();
        let now = crate::model::hlc::now_ns();
        let already: HashSet<VersionId> = self.purged.lock().keys().copied().collect();
        let mut purges = Vec::new();
        let mut report = GcReport::default();
        for entry in self.store.all_entries()? {
            let listed = self.store.entry_versions(entry)?;
            if listed.len() <= policy.keep_last {
                continue; // fewer versions of any kind than the policy keeps files
            }
            let mut versions = Vec::with_capacity(listed.len());
            for (_, v) in listed {
                if pending.contains(&v) {
                    continue;
                }
                let r = self.record(v)?;
                if r.record.content.is_purge() || r.record.entry != entry {
                    continue;
                }
                versions.push(Candidate {
                    id: v,
                    wall_ns: r.record.hlc.wall_ns,
                    author: r.record.author,
                    parents: r.record.parents.clone(),
                    is_file: matches!(r.record.content, Content::File { .. }),
                });
            }
            if versions.iter().filter(|v| v.is_file).count() <= policy.keep_last {
                continue;
            }
            let state = self.get(entry)?;
            if policy.only_deleted && state.is_alive() {
                continue;
            }
            let keep: HashSet<VersionId> = versions.iter().map(|v| v.id).filter(|v| state.shows(*v)).collect();
            let expired: Vec<VersionId> = expire(&versions, &keep, now, policy)
                .into_iter()
                .filter(|v| !already.contains(v))
                .collect();
            if !expired.is_empty() {
                report.versions_purged += expired.len();
                report.files += 1;
                purges.push((entry, expired));
            }
        }
        if !dry_run && !purges.is_empty() {
            self.record_purges(purges)?;
        }
        Ok(report)
    }

    /// Commits one purge record per entry (signed and announced like any version).
    fn record_purges(&self, purges: Vec<(EntryId, Vec<VersionId>)>) -> Result<()> {
        let mut cs = self.commit_state.lock();
        let mut tx = Apply::new(self);
        let mut seq = cs.next_seq;
        let mut hlc = cs.hlc;
        let mut made = Vec::new();
        for (entry, versions) in purges {
            hlc = crate::model::Hlc::tick(hlc, crate::model::hlc::now_ns());
            let signed = SignedRecord::unsigned(VersionRecord {
                entry,
                parents: Vec::new(),
                author: self.node,
                seq,
                hlc,
                location: Vec::new(),
                attrs: Default::default(),
                content: Content::Purge { versions },
                content_from: None,
                location_from: None,
                attrs_from: None,
            });
            tx.batch.put_record(signed.id, self.node, seq, &signed.bytes);
            tx.purge(&signed);
            tx.touch(entry)?;
            made.push(signed.id);
            seq += 1;
        }
        tx.batch.put_meta(super::META_HLC, &super::hlc_bytes(hlc));
        let (_, changes) = tx.finish()?;
        cs.next_seq = seq;
        cs.hlc = hlc;
        self.vector.lock().insert(self.node, seq - 1);
        self.unsigned.lock().extend(made);
        drop(cs);
        self.publish(super::ChangeBatch {
            remote: false,
            kernel_knows: true,
            changes,
            seq: 0,
        });
        Ok(())
    }

    /// Finds what a sweep would delete, without holding any lock (it reads every
    /// kept version's manifest): the chunks only purged versions reach, and
    /// *orphans* — chunks no record names that are at least a day old (or from an
    /// earlier run of the node). Orphans are what a node killed in the middle of a
    /// large write leaves (background chunking had stored part of a file that never
    /// got a version), and chunks a member hinted for a file that never arrived.
    /// While a kept version's manifest is not all here (a pending record whose
    /// manifest has not arrived), the chunks below the missing node are unknown and
    /// no orphan is taken.
    ///
    /// Chunks become garbage only when the tree changes (a purge, or a purged
    /// version no longer shown), when a record a purge names arrives, or when the
    /// orphan mark moves on (chunks no record named turn a day old). If none of
    /// that happened since the last complete sweep (one that stored no record
    /// during its walk, see `sweep`), the walk is skipped: an idle node, most
    /// hours of most nodes, reads nothing.
    pub fn sweep_plan(&self) -> Result<SweepPlan> {
        let epoch = self.epoch();
        let walked = self.vector();
        let mark = self
            .orphan_watch
            .lock()
            .mark_at(self.store.chunk_key_mark(), Instant::now());
        if *self.last_sweep.lock() == Some((mark, epoch)) {
            tracing::debug!(mark, epoch, "gc sweep: nothing changed since the last one");
            return Ok(SweepPlan {
                walked,
                seen: Some((mark, epoch)),
                gone: HashSet::new(),
                purged_chunks: HashSet::new(),
                orphans: HashSet::new(),
            });
        }
        let mut gone = HashSet::new();
        let marked: Vec<VersionId> = self.purged.lock().keys().copied().collect();
        for v in marked {
            if self.is_purged(v)? {
                gone.insert(v);
            }
        }
        let mut kept: Vec<ChunkId> = Vec::new();
        let mut roots = HashSet::new();
        let mut complete = true;
        self.store.for_each_version(|_, _, v| -> Result<()> {
            if !gone.contains(&v) {
                complete &= self.walk_into(v, &mut roots, &mut kept)?;
            }
            Ok(())
        })?;
        kept.sort_unstable();
        kept.dedup();
        let is_kept = |c: &ChunkId| kept.binary_search(c).is_ok();
        let mut purged_chunks = HashSet::new();
        for v in &gone {
            if let Some(r) = self.stored_record(*v)? {
                purged_chunks.extend(self.chunks_of(&r.record.content).into_iter().filter(|c| !is_kept(c)));
            }
        }
        let mut orphans = HashSet::new();
        if complete {
            self.store.for_each_chunk_before(mark, |c| {
                if !is_kept(&c) && !purged_chunks.contains(&c) {
                    orphans.insert(c);
                }
                Ok(())
            })?;
        } else {
            tracing::info!("gc leaves unnamed chunks for later: a version's manifest is not all here");
        }
        Ok(SweepPlan {
            walked,
            seen: complete.then_some((mark, epoch)),
            gone,
            purged_chunks,
            orphans,
        })
    }

    /// Adds the chunks version `v` needs to `into` (once per manifest root, `roots`
    /// remembers them); false if a manifest node of it is missing or unreadable.
    fn walk_into(&self, v: VersionId, roots: &mut HashSet<ChunkId>, into: &mut Vec<ChunkId>) -> Result<bool> {
        let Some(r) = self.stored_record(v)? else {
            return Ok(true);
        };
        let Content::File {
            manifest: Some(root), ..
        } = r.record.content
        else {
            return Ok(true);
        };
        if !roots.insert(root) {
            return Ok(true);
        }
        let mut complete = true;
        into.extend(self.manifest_chunks(root, &mut complete));
        Ok(complete)
    }

    /// Deletes what `plan` found, less what changed since: chunks that records
    /// stored after its walk need, and those of a purged version that is shown
    /// again. Returns (chunks, bytes).
    ///
    /// The caller makes sure no file is being written meanwhile: chunks of a write
    /// not yet committed are named by no record.
    pub fn sweep(&self, plan: SweepPlan) -> Result<(u64, u64)> {
        // No version joins, arrives or is committed meanwhile: a record stored now
        // could need a chunk we are about to delete.
        let _cs = self.commit_state.lock();
        let SweepPlan {
            walked,
            mut seen,
            gone,
            mut purged_chunks,
            mut orphans,
        } = plan;
        let mut since: Vec<ChunkId> = Vec::new();
        let mut roots = HashSet::new();
        // Only the records stored since the walk: one range per author, not a scan
        // of every record while writes wait.
        for (author, last) in self.store.last_seqs()? {
            let from = walked.get(&author).copied().unwrap_or(0) + 1;
            for (_, v) in self.store.versions_of_author(author, from, last, usize::MAX)? {
                // Records can arrive without a change to the tree (a peer's record
                // waiting for its data, or one a purge already names): what they
                // keep now may be garbage later with the epoch unchanged, so the
                // next sweep must look again.
                seen = None;
                if !self.walk_into(v, &mut roots, &mut since)? {
                    // Below a missing manifest node could be any chunk.
                    orphans.clear();
                }
            }
        }
        for v in &gone {
            if !self.is_purged(*v)? {
                if let Some(r) = self.stored_record(*v)? {
                    since.extend(self.chunks_of(&r.record.content));
                }
            }
        }
        for c in &since {
            purged_chunks.remove(c);
            orphans.remove(c);
        }
        let mut batch = self.store.batch();
        let (mut n, mut bytes) = (0, 0);
        for c in purged_chunks.iter().chain(&orphans) {
            if let Some(len) = self.store.chunk_len(*c)? {
                batch.delete_chunk(*c)?;
                n += 1;
                bytes += len;
            }
        }
        if n > 0 {
            self.store.write(batch)?;
            // Before the clear: a manifest loaded before the delete must not be
            // cached after it (see `chunk_list`).
            self.sweeps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.chunks.lock().clear();
            self.manifests.lock().clear();
        }
        tracing::info!(
            chunks = n,
            bytes,
            orphans = orphans.len(),
            "gc swept the chunks of purged versions and chunks no version names"
        );
        *self.last_sweep.lock() = seen;
        Ok((n, bytes))
    }

    /// Chunk ids a content needs: its manifest nodes and data chunks (as far as the
    /// manifest is present).
    fn chunks_of(&self, content: &Content) -> Vec<ChunkId> {
        let Content::File {
            manifest: Some(root), ..
        } = content
        else {
            return Vec::new();
        };
        self.manifest_chunks(*root, &mut true)
    }

    /// Every chunk id a manifest reaches (its nodes and data chunks) as far as its
    /// nodes are here; clears `complete` where one is missing or unreadable.
    fn manifest_chunks(&self, root: ChunkId, complete: &mut bool) -> Vec<ChunkId> {
        chunk_ids_of(root, |id| {
            let node = self.store.get_chunk(id).ok();
            *complete &= node.is_some();
            node
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400 * 1_000_000_000;
    const SEC: u64 = 1_000_000_000;

    /// A chain of file versions by one author at the given times (ns), oldest first.
    fn chain(times: &[u64]) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        for (i, t) in times.iter().enumerate() {
            out.push(Candidate {
                id: VersionId([i as u8 + 1; 32]),
                wall_ns: *t,
                author: NodeId([1; 32]),
                parents: out.last().map(|p| vec![p.id]).into_iter().flatten().collect(),
                is_file: true,
            });
        }
        out
    }

    fn policy(keep_last: usize, keep_days: u64, coalesce_secs: u64) -> Policy {
        Policy {
            keep_last,
            keep_days,
            coalesce_secs,
            only_deleted: false,
        }
    }

    #[test]
    fn only_chunks_a_day_old_or_from_an_earlier_run_count_as_orphans() {
        let t0 = Instant::now();
        let h = Duration::from_secs(3600);
        // Keys below 100 are from an earlier run: old at once.
        let mut w = OrphanWatch::new(100);
        assert_eq!(w.mark_at(150, t0), 100);
        assert_eq!(w.mark_at(200, t0 + 2 * h), 100);
        // A day after key 150 was the next key, everything below it is a day old.
        assert_eq!(w.mark_at(300, t0 + 25 * h), 150);
        assert_eq!(w.mark_at(400, t0 + 27 * h), 200);
        // Sweeps in quick succession add no marks and never move past a day.
        assert_eq!(w.mark_at(410, t0 + 27 * h + Duration::from_secs(1)), 200);
        assert!(w.marks.len() <= 4);
    }

    #[test]
    fn keeps_the_last_k_and_everything_recent() {
        let now = 100 * DAY;
        let vs = chain(&[DAY, 2 * DAY, 3 * DAY, 99 * DAY]);
        let keep: HashSet<VersionId> = [vs[3].id].into();
        // Keep 2: the two newest stay, the recent one would anyway.
        let mut e = expire(&vs, &keep, now, &policy(2, 30, 0));
        e.sort();
        assert_eq!(e, vec![vs[0].id, vs[1].id]);
        // Everything younger than 200 days stays.
        assert!(expire(&vs, &keep, now, &policy(1, 200, 0)).is_empty());
    }

    #[test]
    fn heads_and_shown_contents_are_never_expired() {
        let vs = chain(&[DAY, 2 * DAY]);
        let keep: HashSet<VersionId> = vs.iter().map(|v| v.id).collect();
        assert!(expire(&vs, &keep, 100 * DAY, &policy(0, 0, 0)).is_empty());
    }

    #[test]
    fn rapid_saves_do_not_use_up_keep_last() {
        // Three saves within seconds, then a real edit a day later.
        let vs = chain(&[DAY, DAY + SEC, DAY + 2 * SEC, 2 * DAY]);
        let keep: HashSet<VersionId> = [vs[3].id].into();
        let e = expire(&vs, &keep, 100 * DAY, &policy(2, 0, 10));
        // Counted: v4 (head) and v3 (the last of the burst); v1 and v2 were superseded
        // within 10 s and go.
        assert_eq!(e.len(), 2);
        assert!(e.contains(&vs[0].id) && e.contains(&vs[1].id));
    }
}
