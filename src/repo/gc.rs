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

/// What `distribox gc` keeps. A file version's data goes only if it is neither among
/// the last `keep_last` versions of its file nor younger than `keep_days`; saves
/// superseded by the same author within `coalesce_secs` do not count towards
/// `keep_last` (an editor's autosaves should not push real versions out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_days: u64,
    pub coalesce_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_last: 10,
            keep_days: 30,
            coalesce_secs: 10,
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
}

/// Which chunks a sweep checks for orphans. Walking every kept version's manifest
/// costs a read per manifest node under the commit lock, so a sweep does it only
/// when chunks may have been stored that no record names: by an earlier run of the
/// node (it may have died mid-write), or by background chunking and hinted fetches.
/// Chunks are checked one sweep after they were stored (keys below `mark`), since
/// a younger one may belong to a record still on its way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OrphanWatch {
    /// Chunks with a storage key below this were stored before the last sweep.
    mark: u64,
    /// Orphans may be among the chunks below `mark`.
    before_mark: bool,
    /// Orphans may be among the chunks stored since `mark` was taken.
    since_mark: bool,
}

impl OrphanWatch {
    /// The watch for a run whose first chunk key is `first_key`: anything an
    /// earlier run stored is suspect.
    pub(crate) fn new(first_key: u64) -> Self {
        OrphanWatch {
            mark: first_key,
            before_mark: true,
            since_mark: false,
        }
    }

    /// A completed sweep checked everything below `mark`; the next one checks up
    /// to `next`.
    fn advance(&mut self, next: u64) {
        self.mark = next;
        self.before_mark = self.since_mark;
        self.since_mark = false;
    }
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
    pub fn gc(&self, policy: &Policy, dry_run: bool) -> Result<GcReport> {
        let pending: HashSet<VersionId> = self.pending_ids().into_iter().collect();
        let mut by_entry: HashMap<EntryId, Vec<Candidate>> = HashMap::new();
        for (_, _, v) in self.store.all_versions_by_author()? {
            if pending.contains(&v) {
                continue;
            }
            let r = self.record(v)?;
            if r.record.content.is_purge() {
                continue;
            }
            by_entry.entry(r.record.entry).or_default().push(Candidate {
                id: v,
                wall_ns: r.record.hlc.wall_ns,
                author: r.record.author,
                parents: r.record.parents.clone(),
                is_file: matches!(r.record.content, Content::File { .. }),
            });
        }
        let now = crate::model::hlc::now_ns();
        let already: HashSet<VersionId> = self.purged.lock().keys().copied().collect();
        let mut purges = Vec::new();
        let mut report = GcReport::default();
        for (entry, versions) in by_entry {
            if versions.iter().filter(|v| v.is_file).count() <= policy.keep_last {
                continue;
            }
            let state = self.get(entry)?;
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
        self.publish(super::ChangeBatch { remote: false, changes });
        Ok(())
    }

    /// Chunks are about to be stored that no record names yet (background chunking
    /// of a file being written, chunks a member hinted): the sweep after next looks
    /// for orphans among them.
    pub fn note_possible_orphans(&self) {
        self.orphan_watch.lock().since_mark = true;
    }

    /// Deletes every chunk no kept version needs: the chunks of purged versions, and
    /// orphans — chunks that no record names and that were stored before the
    /// previous sweep (or by an earlier run of the node). Orphans come from writes
    /// that never got a version (the node was killed while a large file was being
    /// written, after background chunking had stored part of it) and from chunks a
    /// member hinted while writing a file that then never arrived. A chunk stored
    /// since the previous sweep is never an orphan yet: it may belong to a record
    /// still on its way. Returns (chunks, bytes).
    ///
    /// The caller makes sure no file is being written meanwhile: chunks of a write
    /// not yet committed are named by no record.
    pub fn sweep(&self) -> Result<(u64, u64)> {
        // No version joins, arrives or is committed meanwhile: a record stored now
        // could need a chunk we are about to delete.
        let _cs = self.commit_state.lock();
        let watch = *self.orphan_watch.lock();
        let next_mark = self.store.chunk_key_mark();
        let gone: HashSet<VersionId> = {
            let marks: Vec<VersionId> = self.purged.lock().keys().copied().collect();
            let mut gone = HashSet::new();
            for v in marks {
                if self.is_purged(v)? {
                    gone.insert(v);
                }
            }
            gone
        };
        if gone.is_empty() && !watch.before_mark {
            self.orphan_watch.lock().advance(next_mark);
            return Ok((0, 0));
        }
        // Every chunk a kept record names. Where a manifest node is missing (a
        // pending record whose manifest has not arrived) or unreadable, the chunks
        // below it are unknown: then nothing is swept as an orphan this time.
        let mut kept: Vec<ChunkId> = Vec::new();
        let mut roots = HashSet::new();
        let mut incomplete = None;
        for (_, _, v) in self.store.all_versions_by_author()? {
            if gone.contains(&v) {
                continue;
            }
            let r = self.record(v)?;
            if let Content::File {
                manifest: Some(root), ..
            } = r.record.content
            {
                if roots.insert(root) {
                    kept.extend(chunk_ids_of(root, |id| {
                        let node = self.store.get_chunk(id).ok();
                        if node.is_none() {
                            incomplete = Some(v);
                        }
                        node
                    }));
                }
            }
        }
        kept.sort_unstable();
        kept.dedup();
        let is_kept = |c: &ChunkId| kept.binary_search(c).is_ok();
        let mut doomed: HashSet<ChunkId> = HashSet::new();
        for v in &gone {
            if let Some(r) = self.stored_record(*v)? {
                doomed.extend(self.chunks_of(&r.record.content).into_iter().filter(|c| !is_kept(c)));
            }
        }
        let purged_chunks = doomed.len();
        match incomplete {
            None if !watch.before_mark => {}
            None => self.store.for_each_chunk_before(watch.mark, |c, _| {
                if !is_kept(&c) {
                    doomed.insert(c);
                }
                Ok(())
            })?,
            Some(v) => {
                tracing::info!(version = %v, "gc leaves unnamed chunks for later: a version's manifest is not all here")
            }
        }
        let orphans = doomed.len() - purged_chunks;
        let mut batch = self.store.batch();
        let (mut n, mut bytes) = (0, 0);
        for c in &doomed {
            if let Some(len) = self.store.chunk_len(*c)? {
                batch.delete_chunk(*c)?;
                n += 1;
                bytes += len;
            }
        }
        if n > 0 {
            self.store.write(batch)?;
            self.chunks.lock().clear();
            self.manifests.lock().clear();
        }
        if incomplete.is_none() {
            self.orphan_watch.lock().advance(next_mark);
        }
        tracing::info!(
            chunks = n,
            bytes,
            orphans,
            "gc swept the chunks of purged versions and chunks no version names"
        );
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
        chunk_ids_of(*root, |id| self.store.get_chunk(id).ok())
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
        }
    }

    #[test]
    fn chunks_are_checked_for_orphans_one_sweep_after_they_were_stored() {
        // A new run suspects what earlier runs stored.
        let mut w = OrphanWatch::new(100);
        assert!(w.before_mark && w.mark == 100);
        // A sweep checks below 100; chunks stored ahead since then wait a sweep.
        w.since_mark = true;
        w.advance(250);
        assert!(w.before_mark && !w.since_mark && w.mark == 250);
        // Nothing stored ahead since: the sweep after has nothing to look for.
        w.advance(300);
        assert!(!w.before_mark && w.mark == 300);
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
