//! Applying new versions to the tree: the one place that turns "this version joins
//! its entry" into head, name-index and directory-time updates.
//!
//! Local commits and records received from peers both go through `Apply`, so the
//! visible tree is the same function of the record set however the records arrived:
//! an entry's heads are its versions no other version names as parent, what it
//! shows is their merge (`merge::resolve`), and the `children` index holds exactly
//! the shown links of each entry while it is alive.

use super::merge::{self, Versions};
use super::{EntryState, Repo, RepoError, Result, StoredVersions};
use crate::model::Timestamp;
use crate::model::{EntryId, Link, SignedRecord, VersionId};
use crate::store::{Batch, DirTime, EntryHeads};
use std::collections::HashMap;
use std::sync::Arc;

/// One entry whose visible state changed, with every name it had or has now (what a
/// kernel cache of the old and new names must forget).
#[derive(Clone, Debug)]
pub struct Change {
    pub entry: EntryId,
    pub links: Vec<Link>,
    /// The head shown before the change (what a writer with the file open saw).
    pub head_before: Option<VersionId>,
}

/// Changes from one atomic write; `remote` when they came from a peer.
#[derive(Clone, Debug)]
pub struct ChangeBatch {
    pub remote: bool,
    pub changes: Vec<Change>,
}

/// An entry's versions: this batch's, then the store's.
struct BatchVersions<'a, 'b> {
    apply: &'a Apply<'b>,
    stored: StoredVersions<'b>,
}

impl Versions for BatchVersions<'_, '_> {
    fn record(&self, v: VersionId) -> Result<Option<SignedRecord>> {
        match self.apply.records.get(&v) {
            Some(r) => Ok(Some(r.clone())),
            None => self.stored.record(v),
        }
    }
    fn generation(&self, v: VersionId) -> Result<Option<u64>> {
        match self.apply.gens.get(&v) {
            Some(g) => Ok(Some(*g)),
            None => self.stored.generation(v),
        }
    }
}

/// (link, entry) pairs leaving and entering the `children` index.
pub(super) type LinkChanges = (Vec<(Link, EntryId)>, Vec<(Link, EntryId)>);

pub(super) struct Apply<'a> {
    repo: &'a Repo,
    pub batch: Batch<'a>,
    /// New states in the order they were made (an entry may appear twice).
    pub states: Vec<Arc<EntryState>>,
    /// Records added by this batch, not in the store yet, with their generations.
    records: HashMap<VersionId, SignedRecord>,
    gens: HashMap<VersionId, u64>,
    /// Each touched entry's visible links before this batch: the `children` index
    /// is updated from these to the entry's final links, so an entry changed
    /// several times in one batch (a rename and back) nets out correctly.
    before: Vec<(EntryId, Vec<Link>, Option<VersionId>)>,
    dir_events: Vec<(EntryId, DirTime)>,
}

fn visible_links(s: Option<&EntryState>) -> Vec<Link> {
    match s {
        Some(s) if s.is_alive() => s.record().location.clone(),
        _ => Vec::new(),
    }
}

impl<'a> Apply<'a> {
    pub fn new(repo: &'a Repo) -> Self {
        Apply {
            repo,
            batch: repo.store.batch(),
            states: Vec::new(),
            records: HashMap::new(),
            gens: HashMap::new(),
            before: Vec::new(),
            dir_events: Vec::new(),
        }
    }

    /// An entry's state including this batch's changes; None if it never existed.
    pub fn current(&self, entry: EntryId) -> Result<Option<Arc<EntryState>>> {
        if let Some(s) = self.states.iter().rev().find(|s| s.id == entry) {
            return Ok(Some(s.clone()));
        }
        match self.repo.get(entry) {
            Ok(s) => Ok(Some(s)),
            Err(RepoError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn record(&self, v: VersionId) -> Result<SignedRecord> {
        match self.records.get(&v) {
            Some(r) => Ok(r.clone()),
            None => self.repo.record(v),
        }
    }

    /// Makes `signed` (generation `generation`) a head of its entry: its parents stop
    /// being heads. The record itself must already be in the batch or the store.
    pub fn add_version(&mut self, signed: SignedRecord, new_gen: u64) -> Result<Arc<EntryState>> {
        let entry = signed.record.entry;
        let new_id = signed.id;
        let prev = self.current(entry)?;
        let mut heads: Vec<(VersionId, u64)> = prev.as_ref().map(|p| p.heads.clone()).unwrap_or_default();
        heads.retain(|(v, _)| !signed.record.parents.contains(v) && *v != signed.id);
        heads.push((signed.id, new_gen));
        heads.sort();
        let hlc = signed.record.hlc;
        let own_times = signed.record.content.is_dir() && signed.record.attrs_from.is_none();
        let mtime = signed.record.attrs.mtime;
        self.records.insert(signed.id, signed);
        self.gens.insert(new_id, new_gen);
        let state = Arc::new(merge::resolve(
            entry,
            heads.clone(),
            &BatchVersions {
                apply: self,
                stored: StoredVersions::new(self.repo, entry),
            },
        )?);
        let (old, new) = (visible_links(prev.as_deref()), visible_links(Some(&state)));
        if !self.before.iter().any(|(e, _, _)| *e == entry) {
            self.before.push((entry, old.clone(), prev.as_ref().map(|p| p.head.id)));
        }
        let name_event = DirTime {
            hlc,
            mtime: Timestamp::from_system(hlc.system_time()),
        };
        for l in old
            .iter()
            .filter(|l| !new.contains(l))
            .chain(new.iter().filter(|l| !old.contains(l)))
        {
            self.dir_events.push((l.parent, name_event));
        }
        if own_times {
            self.dir_events.push((entry, DirTime { hlc, mtime }));
        }
        self.batch.put_heads(entry, &EntryHeads { heads });
        self.batch.put_entry_version(entry, new_gen, new_id);
        self.states.push(state.clone());
        Ok(state)
    }

    /// Each touched entry with its visible links before the batch and after it.
    fn before_and_after(&self) -> impl Iterator<Item = (EntryId, &[Link], Vec<Link>)> + '_ {
        self.before.iter().map(|(entry, old, _)| {
            let last = self.states.iter().rev().find(|s| s.id == *entry);
            (*entry, old.as_slice(), visible_links(last.map(|s| s.as_ref())))
        })
    }

    /// (link, entry) pairs this batch removes from / adds to the `children` index:
    /// each touched entry's links before the batch against its final links.
    pub fn link_changes(&self) -> LinkChanges {
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (entry, old, new) in self.before_and_after() {
            removed.extend(old.iter().filter(|l| !new.contains(l)).map(|l| (l.clone(), entry)));
            added.extend(new.iter().filter(|l| !old.contains(l)).map(|l| (l.clone(), entry)));
        }
        (removed, added)
    }

    /// Writes the batch and updates the caches. Returns the new states and what
    /// changed, for subscribers.
    pub fn finish(mut self) -> Result<(Vec<Arc<EntryState>>, Vec<Change>)> {
        let (removed, added) = self.link_changes();
        for (l, e) in &removed {
            self.batch.delete_child(l.parent, &l.name, *e);
        }
        for (l, e) in &added {
            self.batch.put_child(l.parent, &l.name, *e);
        }
        let mut new_dir_times: Vec<(EntryId, DirTime)> = Vec::new();
        for (dir, ev) in std::mem::take(&mut self.dir_events) {
            let cur = match new_dir_times.iter().find(|(d, _)| *d == dir) {
                Some((_, t)) => Some(*t),
                None => self.repo.dir_time(dir)?,
            };
            if cur.map(|c| ev.hlc > c.hlc).unwrap_or(true) {
                new_dir_times.retain(|(d, _)| *d != dir);
                new_dir_times.push((dir, ev));
            }
        }
        for (dir, t) in &new_dir_times {
            self.batch.put_dir_time(*dir, t);
        }
        let changes: Vec<Change> = self
            .before_and_after()
            .zip(&self.before)
            .map(|((entry, old, new), (_, _, head_before))| {
                let mut links = old.to_vec();
                links.extend(new.into_iter().filter(|l| !old.contains(l)));
                Change {
                    entry,
                    links,
                    head_before: *head_before,
                }
            })
            .collect();
        let repo = self.repo;
        repo.store.write(self.batch)?;
        let mut cache = repo.entries.lock();
        for s in &self.states {
            cache.insert(s.id, s.clone());
        }
        drop(cache);
        let mut dt = repo.dir_times.lock();
        for (dir, t) in new_dir_times {
            dt.insert(dir, Some(t));
        }
        Ok((self.states, changes))
    }
}
