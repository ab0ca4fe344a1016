//! Inode numbers for the kernel: a stable (per mount) mapping between FUSE inode
//! numbers and what they show — a live entry, or one historical version (`name@vN`).
//!
//! Numbers are never reused during a mount, so a stale kernel reference can never
//! reach a different file.

use crate::model::{EntryId, VersionId};
use std::collections::HashMap;

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Entry(EntryId),
    /// A read-only historical version of an entry.
    Version(EntryId, VersionId),
}

pub struct InodeTable {
    by_ino: HashMap<u64, Target>,
    by_entry: HashMap<EntryId, u64>,
    by_version: HashMap<VersionId, u64>,
    next: u64,
}

impl InodeTable {
    pub fn new(root: EntryId) -> Self {
        let mut t = InodeTable {
            by_ino: HashMap::new(),
            by_entry: HashMap::new(),
            by_version: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.by_ino.insert(ROOT_INO, Target::Entry(root));
        t.by_entry.insert(root, ROOT_INO);
        t
    }

    pub fn get(&self, ino: u64) -> Option<Target> {
        self.by_ino.get(&ino).copied()
    }

    pub fn entry_ino(&mut self, entry: EntryId) -> u64 {
        if let Some(&i) = self.by_entry.get(&entry) {
            return i;
        }
        let i = self.alloc(Target::Entry(entry));
        self.by_entry.insert(entry, i);
        i
    }

    /// The inode the kernel may know for an entry (None: never handed out).
    pub fn known_ino(&self, entry: EntryId) -> Option<u64> {
        self.by_entry.get(&entry).copied()
    }

    pub fn version_ino(&mut self, entry: EntryId, version: VersionId) -> u64 {
        if let Some(&i) = self.by_version.get(&version) {
            return i;
        }
        let i = self.alloc(Target::Version(entry, version));
        self.by_version.insert(version, i);
        i
    }

    /// After an atomic save (rename of `from_ino`'s file over `entry`), the kernel
    /// believes `from_ino` now lives at the target name: make it the entry's inode so
    /// kernel caches and later lookups agree. The entry's old inode keeps pointing at
    /// the entry for handles still open on it. The source entry loses its inode: if
    /// it comes back (a peer edited it concurrently: delete loses to edit), it gets
    /// a fresh one rather than the number that now means the target.
    pub fn adopt(&mut self, entry: EntryId, from_ino: u64) {
        if let Some(Target::Entry(src)) = self.by_ino.insert(from_ino, Target::Entry(entry)) {
            if self.by_entry.get(&src) == Some(&from_ino) {
                self.by_entry.remove(&src);
            }
        }
        self.by_entry.insert(entry, from_ino);
    }

    fn alloc(&mut self, target: Target) -> u64 {
        let i = self.next;
        self.next += 1;
        self.by_ino.insert(i, target);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_inode_is_not_the_source_entrys_any_more() {
        let (root, src, dst) = (EntryId([0; 16]), EntryId([1; 16]), EntryId([2; 16]));
        let mut t = InodeTable::new(root);
        let src_ino = t.entry_ino(src);
        let dst_ino = t.entry_ino(dst);
        t.adopt(dst, src_ino);
        assert_eq!(t.get(src_ino), Some(Target::Entry(dst)));
        assert_eq!(t.entry_ino(dst), src_ino);
        assert_eq!(t.get(dst_ino), Some(Target::Entry(dst)), "handles on the old inode");
        let again = t.entry_ino(src);
        assert!(
            again != src_ino && again != dst_ino,
            "a revived source gets a fresh inode"
        );
        assert_eq!(t.get(again), Some(Target::Entry(src)));
    }
}
