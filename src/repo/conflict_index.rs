//! Which entries are in conflict, kept up to date by every applied batch.
//!
//! Why: the GUI asks for the conflicts after every change (its badge), and finding
//! them meant resolving every entry of the tree: 0.9 s per call for 100,000 files,
//! again and again while files were being written or synced. The index is built by
//! one such walk the first time it is asked for (nothing is stored, so no format
//! change) and from then on follows each batch's new states.

use super::{EntryState, Repo, Result};
use crate::model::EntryId;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Default)]
pub(super) enum ConflictIndex {
    /// Nobody asked yet: batches need not report.
    #[default]
    Unknown,
    /// A walk is under way: the entries batches changed meanwhile, to look at
    /// again when it ends (the walk may have read them before the change).
    Building(HashSet<EntryId>),
    Ready(HashSet<EntryId>),
}

impl ConflictIndex {
    /// Follows a batch's new states (in order: the last one of an entry counts).
    /// Called after the entry cache holds them.
    pub(super) fn changed(&mut self, states: &[Arc<EntryState>]) {
        match self {
            ConflictIndex::Unknown => {}
            ConflictIndex::Building(touched) => touched.extend(states.iter().map(|s| s.id)),
            ConflictIndex::Ready(set) => {
                for s in states {
                    if s.conflicts.is_empty() {
                        set.remove(&s.id);
                    } else {
                        set.insert(s.id);
                    }
                }
            }
        }
    }
}

impl Repo {
    /// Entries that have conflicts now, in no particular order (reachable or not:
    /// `display_path` says where, if anywhere, each is shown).
    pub fn conflicted(&self) -> Result<Vec<EntryId>> {
        if let ConflictIndex::Ready(set) = &*self.conflict_index.lock() {
            return Ok(set.iter().copied().collect());
        }
        // One walk at a time; a caller that waited here finds the index ready.
        let _building = self.conflict_walk.lock();
        {
            let mut index = self.conflict_index.lock();
            if let ConflictIndex::Ready(set) = &*index {
                return Ok(set.iter().copied().collect());
            }
            *index = ConflictIndex::Building(HashSet::new());
        }
        let mut set = match self.walk_conflicted() {
            Ok(set) => set,
            Err(e) => {
                *self.conflict_index.lock() = ConflictIndex::Unknown;
                return Err(e);
            }
        };
        // Look again at what batches changed during the walk, without the lock
        // (batches take it while holding the commit lock), until none did since.
        loop {
            let touched = {
                let mut index = self.conflict_index.lock();
                match &mut *index {
                    ConflictIndex::Building(t) if !t.is_empty() => std::mem::take(t),
                    _ => {
                        let out = set.iter().copied().collect();
                        *index = ConflictIndex::Ready(std::mem::take(&mut set));
                        return Ok(out);
                    }
                }
            };
            for entry in touched {
                set.remove(&entry);
                match self.get(entry) {
                    Ok(st) if !st.conflicts.is_empty() => {
                        set.insert(entry);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *self.conflict_index.lock() = ConflictIndex::Unknown;
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Every entry with conflicts, reachable from the root or not: batches report
    /// every entry they change, and one not in the tree now may be once a batch
    /// brings back a directory above it.
    fn walk_conflicted(&self) -> Result<HashSet<EntryId>> {
        let mut found = HashSet::new();
        for entry in self.store.all_entries()? {
            // A conflict needs two heads; most entries have one, and reading the
            // heads is much cheaper than resolving the entry.
            if self.store.get_heads(entry)?.is_none_or(|h| h.heads.len() < 2) {
                continue;
            }
            if !self.get(entry)?.conflicts.is_empty() {
                found.insert(entry);
            }
        }
        Ok(found)
    }

    /// The path the mount shows `entry` under (its first name; a name several
    /// entries hold carries the entry's id, as in a listing), or None if it is not
    /// in the tree (deleted, or under a deleted directory).
    pub fn display_path(&self, entry: EntryId) -> Option<String> {
        let (mut parts, mut cur) = (Vec::new(), entry);
        while cur != self.root {
            let st = self.get(cur).ok()?;
            if !st.is_alive() {
                return None;
            }
            let l = st.record().location.first()?.clone();
            let holders = self.store.get_children_named(l.parent, &l.name).ok()?;
            let mut name = String::from_utf8_lossy(&l.name).into_owned();
            match holders.iter().position(|e| *e == cur)? {
                0 => {}
                _ => {
                    name.push('@');
                    name.push_str(&cur.to_hex()[..8]);
                }
            }
            parts.push(name);
            cur = l.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join("/"))
    }
}
