//! Per-entry caches of what the store holds: resolved entry states, so a `stat` or
//! a path walk does not re-read and re-merge an entry's records each time,
//! directories' mtime events, and (for the mount) directories' subdirectory counts.
//!
//! Bounded, because a node runs for weeks: every file ever created (a build's
//! object files, an editor's swap files) would otherwise keep its state here long
//! after it was deleted (~400 bytes each, measured as the difference in resident
//! memory between a 4Ki and a 32Ki cache).

use crate::model::EntryId;
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;

/// Entry states kept: a tree of this many files walked again and again stays in
/// memory (~13 MiB); a larger one is re-read from the store, which holds everything.
pub const CACHED_ENTRIES: usize = 32 * 1024;
/// Directories' mtime events kept (a few dozen bytes each).
pub const CACHED_DIR_TIMES: usize = 8 * 1024;
/// Directories' subdirectory counts kept (the mount's nlink of a directory).
pub const CACHED_SUBDIR_COUNTS: usize = 8 * 1024;

pub struct EntryCache<S> {
    states: LruCache<EntryId, S>,
    /// Counts commits, so a reader that resolved an entry from the store can tell
    /// whether a commit landed meanwhile (see `resolved`).
    epoch: u64,
}

impl<S: Clone> EntryCache<S> {
    pub fn new(cap: usize) -> Self {
        EntryCache {
            states: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
            epoch: 0,
        }
    }

    pub fn get(&mut self, entry: &EntryId) -> Option<S> {
        self.states.get(entry).cloned()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The value cached for `entry`, else `load`'s, read without the lock held
    /// and cached unless a change landed meanwhile (`committed`, `forget`). A
    /// value a change cached meanwhile is newer than the loaded one and wins.
    pub fn get_or_load<E>(cache: &Mutex<Self>, entry: EntryId, load: impl FnOnce() -> Result<S, E>) -> Result<S, E> {
        let read_at = {
            let mut c = cache.lock();
            if let Some(s) = c.get(&entry) {
                return Ok(s);
            }
            c.epoch()
        };
        let loaded = load()?;
        let mut c = cache.lock();
        if let Some(newer) = c.get(&entry) {
            return Ok(newer);
        }
        c.resolved(entry, loaded.clone(), read_at);
        Ok(loaded)
    }

    /// Where changes stand: pass it to `resolved` for a value read after this.
    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The states a commit made, once its batch is written.
    pub fn committed(&mut self, states: impl IntoIterator<Item = (EntryId, S)>) {
        for (entry, s) in states {
            self.states.put(entry, s);
        }
        self.epoch += 1;
    }

    /// Drops what is cached for `entries` (they changed), so a value computed
    /// before cannot be cached after.
    pub fn forget(&mut self, entries: &[EntryId]) {
        for e in entries {
            self.states.pop(e);
        }
        self.epoch += 1;
    }

    /// A state resolved from the store, read after `epoch()` returned `read_at`.
    /// Kept only if no commit landed since: the commit's newer state may have been
    /// evicted already, and this one would then stand in for it.
    fn resolved(&mut self, entry: EntryId, state: S, read_at: u64) {
        if self.epoch == read_at {
            self.states.put(entry, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_read_before_a_commit_does_not_replace_the_commits() {
        let (a, b) = (EntryId([1; 16]), EntryId([2; 16]));
        let mut c = EntryCache::new(1);
        let read_at = c.epoch();
        // The commit's state for `a` is evicted by `b` before the reader is back.
        c.committed([(a, "new")]);
        c.committed([(b, "other")]);
        c.resolved(a, "old", read_at);
        assert_eq!(c.get(&a), None, "the next reader goes to the store");
        let read_at = c.epoch();
        c.resolved(a, "new", read_at);
        assert_eq!(c.get(&a), Some("new"));
        assert_eq!(c.get(&b), None, "one state kept");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_value_computed_before_a_forget_is_not_cached() {
        let a = EntryId([1; 16]);
        let mut c = EntryCache::new(4);
        let read_at = c.epoch();
        c.forget(&[a]);
        c.resolved(a, 3, read_at);
        assert_eq!(c.get(&a), None);
        c.resolved(a, 4, c.epoch());
        assert_eq!(c.get(&a), Some(4));
        c.forget(&[a]);
        assert_eq!(c.get(&a), None, "forgotten");
    }
}
