//! Drop-behind for a handle that writes a file front to back through the page cache.
//!
//! Why: a write through a handle that can also read (fio, databases, editors open
//! read-write) copies the bytes into page cache pages of the mounted file, and the
//! kernel keeps them after the write is answered. Writing a large file that way
//! fills the page cache with the whole file, pushing out what other programs
//! cached, and takes a fresh page from the allocator for every 4 KiB written. On
//! the VMs this project runs on (virtio free page reporting) a fresh page costs a
//! host fault on first touch: fio writing 1 GiB spent 46–65% of its time in the
//! kernel, against 18–22% when pages it had written 32 MiB earlier were dropped
//! (docs/performance.md, "Drop-behind for writes through the page cache").
//!
//! What: once a handle has written `KEEP` bytes past a point in one sequential run,
//! the pages before `KEEP` behind its write front are dropped, `STEP` bytes at a
//! time. A writer that reads back what it just wrote still finds the last `KEEP`
//! cached; anything else reads it from the node again. Write-only handles bypass
//! the page cache altogether where the kernel allows it (`FOPEN_DIRECT_IO`, Linux
//! 6.6 and later); on older kernels they write through it and drop behind too.

/// Bytes behind the write front that stay cached.
const KEEP: u64 = 32 << 20;
/// Pages are dropped this many bytes at a time (one kernel notification each).
const STEP: u64 = 8 << 20;

/// One handle's sequential run and how much of it has been dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct WriteBehind {
    /// Where the last write ended: the next sequential write starts here.
    end: u64,
    /// Pages before this offset (within the run) have been dropped.
    dropped_to: u64,
}

impl WriteBehind {
    /// Notes a write of `len` bytes at `offset`; returns `(offset, len)` of pages
    /// that may leave the page cache now, if any. A write elsewhere than at `end`
    /// starts a new run there: pages before a run are never dropped for it (nor
    /// those up to the next `STEP` boundary).
    pub fn wrote(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        if offset != self.end {
            self.dropped_to = offset.div_ceil(STEP) * STEP;
        }
        self.end = offset.saturating_add(len);
        let upto = self.end.saturating_sub(KEEP) / STEP * STEP;
        if upto < self.dropped_to.saturating_add(STEP) {
            return None;
        }
        let range = (self.dropped_to, upto - self.dropped_to);
        self.dropped_to = upto;
        Some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Writes `total` bytes front to back in `block`-byte writes from `start`,
    /// returning every range dropped.
    fn run(w: &mut WriteBehind, start: u64, total: u64, block: u64) -> Vec<(u64, u64)> {
        let mut off = start;
        let mut dropped = Vec::new();
        while off < start + total {
            dropped.extend(w.wrote(off, block));
            off += block;
        }
        dropped
    }

    #[test]
    fn a_sequential_writer_keeps_the_last_32_mib_cached() {
        let mut w = WriteBehind::default();
        assert!(run(&mut w, 0, 39 * MIB, MIB).is_empty(), "nothing before KEEP + STEP");
        let dropped = run(&mut w, 39 * MIB, 25 * MIB, MIB);
        assert_eq!(
            dropped,
            vec![
                (0, 8 * MIB),
                (8 * MIB, 8 * MIB),
                (16 * MIB, 8 * MIB),
                (24 * MIB, 8 * MIB)
            ]
        );
        // Every byte before the front minus KEEP is dropped exactly once, in order.
        let mut w = WriteBehind::default();
        let dropped = run(&mut w, 0, 1024 * MIB, 128 * 1024);
        let mut next = 0;
        for (off, len) in &dropped {
            assert_eq!(*off, next);
            next += len;
        }
        assert_eq!(next, 1024 * MIB - KEEP);
    }

    #[test]
    fn a_write_elsewhere_starts_a_new_run_there() {
        let mut w = WriteBehind::default();
        run(&mut w, 0, 64 * MIB, MIB);
        // Back to the start (a rewrite): nothing is dropped until this run has
        // gone KEEP + STEP past its own start.
        assert_eq!(w.wrote(0, MIB), None);
        assert!(run(&mut w, MIB, 38 * MIB, MIB).is_empty());
        assert_eq!(w.wrote(39 * MIB, MIB), Some((0, 8 * MIB)));
        // An append-only handle whose first write is at 100 MiB + 5 never drops
        // pages it did not write.
        let mut w = WriteBehind::default();
        let dropped = run(&mut w, 100 * MIB + 5, 48 * MIB, MIB);
        assert_eq!(dropped, vec![(104 * MIB, 8 * MIB)]);
        // Small scattered writes drop nothing.
        let mut w = WriteBehind::default();
        for i in 0..1000u64 {
            assert_eq!(w.wrote((i * 7919) % 4096 * 4096, 4096), None);
        }
    }
}
