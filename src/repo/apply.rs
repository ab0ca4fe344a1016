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
    /// The kernel's caches already show these changes: made through the mount, or
    /// nothing a listing or a read shows (gc). Peers' versions and local changes
    /// made by the CLI or the API (restore, resolve) are not, so the mount drops
    /// what the kernel cached of them.
    pub kernel_knows: bool,
    pub changes: Vec<Change>,
    /// Its place in the order batches are published (set by `Repo::publish`).
    pub seq: u64,
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

/// Orders moves: the later HLC wins, then the higher author, then the version id.
type CycleKey = (crate::model::Hlc, crate::model::NodeId, VersionId);

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
    /// Purge marks this batch adds (see `gc`).
    pub(super) purged: Vec<(VersionId, EntryId)>,
    /// Cycle breaks as changed by this batch (None: untouched).
    breaks: Option<HashMap<EntryId, (VersionId, Vec<Link>)>>,
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
            breaks: None,
            purged: Vec::new(),
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
        let state = Arc::new(merge::resolve(entry, heads.clone(), &self.versions_of(entry))?);
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

    /// Lists an entry among this batch's changes without changing it (a purge: the
    /// network announcer hears of it like of any commit).
    pub(super) fn touch(&mut self, entry: EntryId) -> Result<()> {
        if let Some(s) = self.current(entry)? {
            self.set_state((*s).clone())?;
        }
        Ok(())
    }

    /// Shows `state` for its entry from now on without a new version (a rule that
    /// looks beyond the entry changed what it shows).
    fn set_state(&mut self, state: EntryState) -> Result<()> {
        let prev = self.current(state.id)?;
        if !self.before.iter().any(|(e, _, _)| *e == state.id) {
            let old = visible_links(prev.as_deref());
            self.before.push((state.id, old, prev.as_ref().map(|p| p.head.id)));
        }
        self.states.push(Arc::new(state));
        Ok(())
    }

    fn versions_of(&self, entry: EntryId) -> BatchVersions<'_, 'a> {
        BatchVersions {
            apply: self,
            stored: StoredVersions::new(self.repo, entry),
        }
    }

    /// Applies the rules that look beyond one entry until nothing changes: a deleted
    /// directory still holding a live entry stays visible (and goes once it holds
    /// none), and a directory move that would close a cycle is skipped.
    fn settle(&mut self) -> Result<()> {
        // Each pass settles one more level of revived directories.
        for pass in 0.. {
            if pass == 100_000 {
                tracing::error!("settling the tree did not finish; some directories may show wrongly until restart");
                break;
            }
            let (removed, added) = self.link_changes();
            let mut dirs: Vec<EntryId> = removed.iter().chain(&added).map(|(l, _)| l.parent).collect();
            dirs.extend(self.before.iter().map(|(e, _, _)| *e));
            dirs.sort();
            dirs.dedup();
            let mut changed = false;
            for d in dirs {
                let Some(st) = self.current(d)? else { continue };
                if st.is_alive() && !st.is_revived() {
                    continue;
                }
                let holds = self.holds_entries(d, &removed, &added)?;
                if holds && !st.is_alive() {
                    if let Some(r) = merge::revive(&st, &self.versions_of(d))? {
                        self.set_state(r)?;
                        changed = true;
                    }
                } else if !holds && st.is_revived() {
                    let dead = merge::resolve(d, st.heads.clone(), &self.versions_of(d))?;
                    self.set_state(dead)?;
                    changed = true;
                }
            }
            changed |= self.recompute_cycle_breaks(&added)?;
            if !changed {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether `dir` holds any entry once this batch's link changes are applied.
    fn holds_entries(&self, dir: EntryId, removed: &[(Link, EntryId)], added: &[(Link, EntryId)]) -> Result<bool> {
        if added.iter().any(|(l, _)| l.parent == dir) {
            return Ok(true);
        }
        for (name, e) in self.repo.store.list_children(dir)? {
            if !removed
                .iter()
                .any(|(l, r)| l.parent == dir && l.name == name && *r == e)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The directory an entry is shown in (None for the root or a dead entry).
    fn parent_of(&self, e: EntryId) -> Result<Option<EntryId>> {
        Ok(self
            .current(e)?
            .filter(|s| s.is_alive())
            .and_then(|s| s.record().location.first().map(|l| l.parent)))
    }

    /// DESIGN's move rule, recomputed from scratch for every directory this batch
    /// moved and every directory moved aside before, so the result depends only on
    /// the records: while the directories' merged locations form a cycle, the one
    /// whose move is latest by (HLC, author) on that cycle falls back one step — to
    /// its location before that move, then to the root — and the search repeats.
    fn recompute_cycle_breaks(&mut self, added: &[(Link, EntryId)]) -> Result<bool> {
        let mut cands: Vec<EntryId> = added.iter().map(|(_, e)| *e).collect();
        // Read without copying the repo's map into this batch: most batches move
        // nothing and must not rewrite the cycle breaks.
        match &self.breaks {
            Some(b) => cands.extend(b.keys().copied()),
            None => cands.extend(self.repo.cycle_breaks.lock().keys().copied()),
        }
        cands.sort();
        cands.dedup();
        let mut dirs = Vec::new();
        for e in cands {
            if let Some(st) = self.current(e)? {
                if st.is_alive() && st.record().content.is_dir() {
                    dirs.push(st);
                }
            }
        }
        if dirs.is_empty() {
            return Ok(false);
        }
        // Each candidate's merged location and its fallbacks, most preferred first.
        let mut options: HashMap<EntryId, (CycleKey, Vec<Vec<Link>>)> = HashMap::new();
        for st in &dirs {
            options.insert(st.id, self.move_options(st)?);
        }
        let mut level: HashMap<EntryId, usize> = options.keys().map(|e| (*e, 0)).collect();
        for _ in 0..100_000 {
            let parent_of = |this: &Self, e: EntryId| -> Result<Option<EntryId>> {
                match (options.get(&e), level.get(&e)) {
                    (Some((_, opts)), Some(l)) => Ok(opts[*l].first().map(|x| x.parent)),
                    _ => this.parent_of(e),
                }
            };
            // Every cycle through a candidate, as the entries on it.
            let mut on_cycle: Vec<EntryId> = Vec::new();
            for start in options.keys() {
                let mut path = vec![*start];
                let mut cur = parent_of(self, *start)?;
                while let Some(c) = cur {
                    if c == *start {
                        on_cycle.extend(path.iter().copied());
                        break;
                    }
                    if c == self.repo.root || path.contains(&c) || path.len() > 4096 {
                        break;
                    }
                    path.push(c);
                    cur = parent_of(self, c)?;
                }
            }
            // A directory on a cycle that this batch did not move competes too.
            let mut grew = false;
            for e in &on_cycle {
                if options.contains_key(e) {
                    continue;
                }
                if let Some(st) = self.current(*e)? {
                    if st.is_alive() && st.record().content.is_dir() {
                        options.insert(*e, self.move_options(&st)?);
                        level.insert(*e, 0);
                        dirs.push(st);
                        grew = true;
                    }
                }
            }
            if grew {
                continue;
            }
            let loser = on_cycle
                .iter()
                .filter_map(|e| options.get(e).map(|(k, o)| (k, e, o.len())))
                .filter(|(_, e, n)| level[*e] + 1 < *n)
                .max_by_key(|(k, _, _)| **k)
                .map(|(_, e, _)| *e);
            match loser {
                Some(e) => *level.get_mut(&e).expect("a candidate") += 1,
                None => break,
            }
        }
        let mut changed = false;
        for st in dirs {
            let (key, opts) = &options[&st.id];
            let l = level[&st.id];
            let want = &opts[l];
            let now = (key.2, want.clone());
            let had = match &self.breaks {
                Some(b) => b.get(&st.id).cloned(),
                None => self.repo.cycle_breaks.lock().get(&st.id).cloned(),
            };
            if l == 0 && had.is_some() {
                self.breaks().remove(&st.id);
            } else if l > 0 && had.as_ref() != Some(&now) {
                tracing::info!(entry = %st.id, skipped = %key.2, "a move would close a directory cycle; skipped");
                self.breaks().insert(st.id, now);
            }
            if st.record().location != *want {
                self.set_state(merge::relocated(&st, want.clone()))?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Where a directory may be shown, most preferred first: its merged location,
    /// its location before the move that set that, the root; with the move's key.
    fn move_options(&self, st: &EntryState) -> Result<(CycleKey, Vec<Vec<Link>>)> {
        let from = st.record().location_from.unwrap_or(st.head.id);
        let rec = self.record(from)?;
        let mut opts = vec![rec.record.location.clone()];
        if let Some(p) = rec.record.parents.first() {
            let before = self.record(*p)?.record.location;
            if !before.is_empty() {
                opts.push(before);
            }
        }
        let name = rec.record.location.first().map(|l| l.name.clone()).unwrap_or_default();
        opts.push(vec![Link {
            parent: self.repo.root,
            name,
        }]);
        Ok(((rec.record.hlc, rec.record.author, from), opts))
    }

    /// This batch's copy of the repo's cycle breaks (written back by `finish`).
    fn breaks(&mut self) -> &mut HashMap<EntryId, (VersionId, Vec<Link>)> {
        self.breaks.get_or_insert_with(|| self.repo.cycle_breaks.lock().clone())
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
        self.settle()?;
        let breaks = self.breaks.take();
        if let Some(b) = &breaks {
            let list: Vec<(EntryId, VersionId, Vec<Link>)> = b.iter().map(|(e, (v, l))| (*e, *v, l.clone())).collect();
            let bytes = bincode::serde::encode_to_vec(&list, bincode::config::standard())
                .expect("encoding into a Vec cannot fail");
            self.batch.put_meta(super::META_CYCLE_BREAKS, &bytes);
        }
        let (removed, added) = self.link_changes();
        for (l, e) in &removed {
            self.batch.delete_child(l.parent, &l.name, *e);
        }
        for (l, e) in &added {
            self.batch.put_child(l.parent, &l.name, *e);
        }
        // An entry left with no link is deleted: remember the names it had.
        for (l, e) in &removed {
            let deleted = self
                .states
                .iter()
                .rev()
                .find(|s| s.id == *e)
                .is_some_and(|s| !s.is_alive());
            if deleted {
                self.batch.put_gone(l.parent, &l.name, *e);
            }
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
        // Before the cache's epoch moves: a state resolved after that must see
        // the cycle breaks it is resolved with.
        if let Some(b) = breaks {
            *repo.cycle_breaks.lock() = b;
        }
        repo.entries
            .lock()
            .committed(self.states.iter().map(|s| (s.id, s.clone())));
        repo.conflict_index.lock().changed(&self.states);
        repo.purged.lock().extend(self.purged.drain(..));
        repo.dir_times
            .lock()
            .committed(new_dir_times.into_iter().map(|(dir, t)| (dir, Some(t))));
        Ok((self.states, changes))
    }
}
