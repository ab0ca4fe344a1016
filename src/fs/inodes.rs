//! Inode numbers for the kernel: a stable (per mount) mapping between FUSE inode
//! numbers and what they show — a live entry, or one historical version (`name@vN`).
//!
//! A number lives while the kernel holds it (lookup counts and FORGET, as the FUSE
//! protocol defines them) or a handle is open on it; one the kernel never got lives
//! a while (`UNREFERENCED_KEPT`). An entry seen again later gets a new number.
//! Numbers are never reused during a mount, so a stale kernel reference can never
//! reach a different file.
//!
//! Each number also remembers what the kernel's page cache of it was filled from
//! (`PageCache`), so an open of a file whose content has not changed since can let
//! the kernel keep those pages (FOPEN_KEEP_CACHE) instead of reading it all again.

use crate::model::{ChunkId, EntryId, VersionId};
use std::collections::HashMap;

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Entry(EntryId),
    /// A read-only historical version of an entry.
    Version(EntryId, VersionId),
}

/// One number the table hands out.
struct Slot {
    target: Target,
    /// Replies that gave the kernel this number (LOOKUP, CREATE, MKNOD, MKDIR,
    /// SYMLINK, LINK, each READDIRPLUS entry) minus what it has FORGET since: the
    /// kernel's own count, plus replies still on their way to it.
    lookups: u64,
    /// Open handles on it: RELEASE may reach us after the FORGET that follows it.
    pins: u32,
    pages: PageCache,
}

/// A committed file content as the kernel sees it: its size and manifest root.
/// Equal keys mean equal bytes (the manifest is content-addressed).
pub type ContentKey = (u64, Option<ChunkId>);

/// What the kernel's cached pages of one inode hold, as far as the node can tell.
/// The kernel keeps an inode's pages across opens only if the open says so; the node
/// says so only when the pages can hold nothing but the content the file has now.
#[derive(Default)]
struct PageCache {
    /// The content every page was read from (or written to match), if that is one
    /// committed content; None when unknown (never opened, or changed since).
    filled_from: Option<ContentKey>,
    /// An open that did not keep the pages, and the content it found: the kernel
    /// drops the pages in the opening task after our reply, so other opens may
    /// vouch for that content only once the handle is used (READ or FLUSH come
    /// after the open returned, so after the drop).
    pending: Option<(u64, ContentKey)>,
    /// Changes to the pages other than reads of that content (writes, truncates,
    /// copies into the file, reads of other content): an open that began before
    /// one must not vouch for the pages.
    changes: u64,
}

/// Numbers no reply handed to the kernel (a plain READDIR's `d_ino`, the node's own
/// uses) are kept for this many later such numbers before they are dropped, so a
/// listing and the `stat` calls after it still agree.
const UNREFERENCED_KEPT: usize = 32 * 1024;

/// Maps numbers to what they show for as long as the kernel may use them, and no
/// longer: a node that runs for weeks sees millions of files come and go.
pub struct InodeTable {
    by_ino: HashMap<u64, Slot>,
    by_entry: HashMap<EntryId, u64>,
    by_version: HashMap<VersionId, u64>,
    next: u64,
    /// Numbers allocated without a reference, newest generation first (see
    /// `UNREFERENCED_KEPT`); one may have been handed out since, which `sweep` checks.
    young: Vec<u64>,
    old: Vec<u64>,
}

impl InodeTable {
    pub fn new(root: EntryId) -> Self {
        let mut t = InodeTable {
            by_ino: HashMap::new(),
            by_entry: HashMap::new(),
            by_version: HashMap::new(),
            next: ROOT_INO + 1,
            young: Vec::new(),
            old: Vec::new(),
        };
        t.by_ino.insert(
            ROOT_INO,
            Slot {
                target: Target::Entry(root),
                lookups: 1,
                pins: 0,
                pages: PageCache::default(),
            },
        );
        t.by_entry.insert(root, ROOT_INO);
        t
    }

    pub fn get(&self, ino: u64) -> Option<Target> {
        self.by_ino.get(&ino).map(|s| s.target)
    }

    /// The entry's number, for the node's own use or a plain listing: not counted
    /// as a reference (see `looked_up`).
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

    /// The number of what `target` names, counted as handed to the kernel by the
    /// reply about to be sent. Taken under the same lock as the number itself: a
    /// FORGET in between could otherwise drop it just before the kernel learns it.
    /// If the reply is not sent after all, `forget(ino, 1)` undoes it.
    pub fn looked_up(&mut self, target: Target) -> u64 {
        let ino = match target {
            Target::Entry(entry) => self.entry_ino(entry),
            Target::Version(entry, version) => self.version_ino(entry, version),
        };
        self.looked_up_ino(ino);
        ino
    }

    /// As `looked_up`, for a number the kernel already holds (LINK answers with the
    /// linked inode).
    pub fn looked_up_ino(&mut self, ino: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.lookups += 1;
        }
    }

    /// The kernel let go of `n` references (FORGET); a number nothing refers to any
    /// more is dropped.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.lookups = s.lookups.saturating_sub(n);
        }
        self.drop_if_unused(ino);
    }

    /// An open handle on `ino`: kept until `unpin`, whatever FORGETs come.
    pub fn pin(&mut self, ino: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.pins += 1;
        }
    }

    pub fn unpin(&mut self, ino: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.pins = s.pins.saturating_sub(1);
            if s.lookups == 0 {
                self.drop_if_unused(ino);
            }
        }
    }

    /// After an atomic save (rename of `from_ino`'s file over `entry`), the kernel
    /// believes `from_ino` now lives at the target name: make it the entry's inode so
    /// kernel caches and later lookups agree. The entry's old inode keeps pointing at
    /// the entry for handles still open on it. The source entry loses its inode: if
    /// it comes back (a peer edited it concurrently: delete loses to edit), it gets
    /// a fresh one rather than the number that now means the target.
    pub fn adopt(&mut self, entry: EntryId, from_ino: u64) {
        if let Some(slot) = self.by_ino.get_mut(&from_ino) {
            let was = std::mem::replace(&mut slot.target, Target::Entry(entry));
            if let Target::Entry(src) = was {
                if self.by_entry.get(&src) == Some(&from_ino) {
                    self.by_entry.remove(&src);
                }
            }
            self.by_entry.insert(entry, from_ino);
        }
    }

    /// Changes to `ino`'s pages so far; taken before an open looks at the file,
    /// and handed back to `reopen_pages`.
    pub fn page_changes(&self, ino: u64) -> u64 {
        self.by_ino.get(&ino).map_or(0, |s| s.pages.changes)
    }

    /// Open handle `fh` of `ino` found the file holding `now` (None: unwritten
    /// changes, or an open that truncates), with `changes_seen` from `page_changes`
    /// before it looked: true if the kernel may keep the pages it has. Otherwise
    /// the kernel drops them, and `now` is what they hold once `fh` is used.
    pub fn reopen_pages(&mut self, ino: u64, fh: u64, now: Option<ContentKey>, changes_seen: u64) -> bool {
        let Some(s) = self.by_ino.get_mut(&ino) else {
            return false;
        };
        let p = &mut s.pages;
        if p.changes != changes_seen {
            p.filled_from = None;
            p.pending = None;
            return false;
        }
        if now.is_some() && p.filled_from == now {
            return true;
        }
        p.filled_from = None;
        p.pending = now.map(|c| (fh, c));
        false
    }

    /// Handle `fh` of `ino` is being used (a read or flush): an open that dropped
    /// the pages has returned.
    pub fn handle_used(&mut self, ino: u64, fh: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            let p = &mut s.pages;
            if let Some((pfh, c)) = p.pending {
                if pfh == fh {
                    p.filled_from = Some(c);
                    p.pending = None;
                }
            }
        }
    }

    /// The kernel fills `ino`'s pages from a read of `content` (None: of unwritten
    /// changes) through handle `fh`; pages of anything but the content the next
    /// open would vouch for make it vouch for nothing.
    pub fn pages_read(&mut self, ino: u64, fh: u64, content: Option<ContentKey>) {
        self.handle_used(ino, fh);
        let Some(s) = self.by_ino.get(&ino) else { return };
        let p = &s.pages;
        let fits = content.is_some_and(|c| p.filled_from == Some(c) || p.pending.is_some_and(|(_, k)| k == c));
        if !fits {
            self.pages_changed(ino);
        }
    }

    /// `ino`'s pages may now hold something other than one committed content (see
    /// `PageCache::changes`): the next open must not keep them.
    pub fn pages_changed(&mut self, ino: u64) {
        if let Some(s) = self.by_ino.get_mut(&ino) {
            s.pages.filled_from = None;
            s.pages.pending = None;
            s.pages.changes += 1;
        }
    }

    /// How many numbers are mapped now.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    fn drop_if_unused(&mut self, ino: u64) {
        let Some(s) = self.by_ino.get(&ino) else { return };
        if ino == ROOT_INO || s.lookups > 0 || s.pins > 0 {
            return;
        }
        let target = s.target;
        self.by_ino.remove(&ino);
        match target {
            Target::Entry(e) => {
                if self.by_entry.get(&e) == Some(&ino) {
                    self.by_entry.remove(&e);
                }
            }
            Target::Version(_, v) => {
                if self.by_version.get(&v) == Some(&ino) {
                    self.by_version.remove(&v);
                }
            }
        }
    }

    fn alloc(&mut self, target: Target) -> u64 {
        let i = self.next;
        self.next += 1;
        self.by_ino.insert(
            i,
            Slot {
                target,
                lookups: 0,
                pins: 0,
                pages: PageCache::default(),
            },
        );
        self.young.push(i);
        if self.young.len() >= UNREFERENCED_KEPT {
            for ino in std::mem::take(&mut self.old) {
                self.drop_if_unused(ino);
            }
            self.old = std::mem::take(&mut self.young);
        }
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

    #[test]
    fn a_number_goes_once_the_kernel_forgets_it_and_no_handle_is_open() {
        let (root, a) = (EntryId([0; 16]), EntryId([1; 16]));
        let mut t = InodeTable::new(root);
        let ino = t.looked_up(Target::Entry(a));
        assert_eq!(t.looked_up(Target::Entry(a)), ino);
        t.pin(ino);
        t.forget(ino, 2);
        assert_eq!(t.get(ino), Some(Target::Entry(a)), "a handle is still open");
        t.unpin(ino);
        assert_eq!(t.get(ino), None);
        assert_eq!(t.len(), 1, "only the root is left");
        let again = t.looked_up(Target::Entry(a));
        assert_ne!(again, ino, "numbers are not reused");
        t.forget(ROOT_INO, 1);
        assert!(t.get(ROOT_INO).is_some(), "the root stays");
    }

    #[test]
    fn pages_are_kept_only_for_the_content_they_were_read_from() {
        let mut t = InodeTable::new(EntryId([0; 16]));
        let ino = t.looked_up(Target::Entry(EntryId([1; 16])));
        let (v1, v2) = ((3, Some(ChunkId([1; 32]))), (4, Some(ChunkId([2; 32]))));
        let mut next_fh = 0;
        // An open that is then used (read), as a `cat` does.
        let mut open_read = |t: &mut InodeTable, now: Option<ContentKey>| {
            next_fh += 1;
            let seen = t.page_changes(ino);
            let keep = t.reopen_pages(ino, next_fh, now, seen);
            t.pages_read(ino, next_fh, now);
            keep
        };
        assert!(!open_read(&mut t, Some(v1)), "nothing known at the first open");
        assert!(open_read(&mut t, Some(v1)), "same content: keep");
        assert!(!open_read(&mut t, Some(v2)), "the file changed");
        assert!(open_read(&mut t, Some(v2)));
        // A write through the kernel: even a later return to v2 must not keep.
        t.pages_changed(ino);
        assert!(!open_read(&mut t, Some(v2)));
        assert!(!open_read(&mut t, None), "unwritten changes: never");
        assert!(!open_read(&mut t, Some(v2)));
        // A change while an open was looking: that open must not vouch.
        let seen = t.page_changes(ino);
        t.pages_changed(ino);
        assert!(!t.reopen_pages(ino, 100, Some(v2), seen));
        assert!(!open_read(&mut t, Some(v2)));
        assert!(open_read(&mut t, Some(v2)));
        // A handle opened on v1 reads after the file became v2: its pages are v1's.
        t.pages_read(ino, 1000, Some(v1));
        assert!(!open_read(&mut t, Some(v2)));
    }

    #[test]
    fn an_open_that_dropped_the_pages_vouches_only_once_its_handle_is_used() {
        let mut t = InodeTable::new(EntryId([0; 16]));
        let ino = t.looked_up(Target::Entry(EntryId([1; 16])));
        let (v1, v2) = ((3, Some(ChunkId([1; 32]))), (4, Some(ChunkId([2; 32]))));
        let seen = t.page_changes(ino);
        assert!(!t.reopen_pages(ino, 1, Some(v1), seen));
        t.pages_read(ino, 1, Some(v1));
        // The file becomes v2. Open 2 drops the pages, but in its own task after
        // our reply: open 3, concurrent with it, must not rely on that yet.
        let seen = t.page_changes(ino);
        assert!(!t.reopen_pages(ino, 2, Some(v2), seen));
        let seen = t.page_changes(ino);
        assert!(!t.reopen_pages(ino, 3, Some(v2), seen), "open 2 has not returned yet");
        // A read of v2 by another handle fits what is pending; open 3's flush says
        // it returned (its drop is done).
        t.pages_read(ino, 2, Some(v2));
        t.handle_used(ino, 3);
        let seen = t.page_changes(ino);
        assert!(t.reopen_pages(ino, 4, Some(v2), seen));
        // An open the kernel failed after our reply sends no READ or FLUSH: the
        // content it found never counts.
        let seen = t.page_changes(ino);
        assert!(!t.reopen_pages(ino, 5, Some(v1), seen));
        let seen = t.page_changes(ino);
        assert!(!t.reopen_pages(ino, 6, Some(v1), seen));
    }

    #[test]
    fn numbers_the_kernel_never_got_are_dropped_after_a_generation() {
        let mut t = InodeTable::new(EntryId([0; 16]));
        let listed = t.entry_ino(EntryId([1; 16]));
        let kept = t.entry_ino(EntryId([2; 16]));
        t.looked_up_ino(kept);
        for i in 0..2 * UNREFERENCED_KEPT as u64 {
            let mut id = [3; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            t.entry_ino(EntryId(id));
        }
        assert_eq!(t.get(listed), None, "a listed-only number is dropped");
        assert_eq!(
            t.get(kept),
            Some(Target::Entry(EntryId([2; 16]))),
            "a looked-up one stays"
        );
        assert!(t.len() <= 2 * UNREFERENCED_KEPT + 2);
    }
}
