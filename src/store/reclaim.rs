//! Giving the disk space of deleted chunks back.
//!
//! Chunks live in RocksDB blob files, which are written once and never changed. A
//! deleted chunk (gc swept it) is a tombstone next to its key; its bytes stay in
//! the blob file until (1) a compaction drops the key, which makes the bytes
//! garbage, and (2) no key points into the file any more, which deletes it, or a
//! compaction with blob GC copies the file's live chunks into a new one. RocksDB's
//! automatic blob GC stays off (`Store::open`): it rewrote old blob files during
//! every compaction, which cost ~40% of the CPU of a large write. Instead a gc
//! sweep that deleted chunks asks for it once, here.

use super::{db_err, Result, Store, CF_CHUNKS, CF_CHUNK_INDEX};
use rocksdb::{BottommostLevelCompaction, CompactOptions};

/// The share of garbage in the blob files from which their live chunks are copied
/// into new files: copying costs at most 3 bytes written per byte given back.
const REWRITE_FROM_GARBAGE_PERCENT: u64 = 25;

/// What `Store::reclaim_space` did (bytes of SST and blob files, `disk_usage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub before: u64,
    pub after: u64,
    /// Live chunks were copied out of files that were mostly garbage.
    pub rewrote: bool,
    /// A step was skipped: the disk had no room for what it would write.
    pub no_room: bool,
}

impl Store {
    /// Drops the keys of deleted chunks so blob files holding only those go away,
    /// then, where at least a quarter of what the blob files hold is garbage,
    /// copies their live chunks into new files. Each step runs only if the disk
    /// has room for what it writes above the reserve (`SpaceGuard`). Runs
    /// alongside reads and writes; it can take a while (a rewrite reads and writes
    /// every live chunk).
    pub fn reclaim_space(&self) -> Result<Reclaimed> {
        // Memtables on disk first: the room check below then sees real files
        // rather than memtable sizes, which count allocation, not data.
        self.flush()?;
        let before = self.disk_usage();
        let chunks = self.cf(CF_CHUNKS);
        let index = self.cf(CF_CHUNK_INDEX);
        let prop = |cf, name: &str| self.db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
        // A compaction writes its tables anew before it deletes the old ones (and
        // first flushes the memtables), and a RocksDB flush that hits a full disk
        // stops every write: the space it needs is held from writers meanwhile.
        let tables = prop(chunks, "rocksdb.total-sst-files-size") + prop(index, "rocksdb.total-sst-files-size");
        let Some(held) = self.space.hold(tables, self.memtable_bytes()) else {
            return Ok(Reclaimed {
                before,
                after: before,
                rewrote: false,
                no_room: true,
            });
        };
        let mut all = CompactOptions::default();
        // The default skips the last level, where most chunk keys are.
        all.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        // An exclusive one would hold back every automatic compaction meanwhile,
        // and with them, soon, every flush.
        all.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(chunks, None::<&[u8]>, None::<&[u8]>, &all);
        self.db.compact_range_cf_opt(index, None::<&[u8]>, None::<&[u8]>, &all);
        drop(held);
        let total = prop(chunks, "rocksdb.live-blob-file-size");
        let garbage = prop(chunks, "rocksdb.live-blob-file-garbage-size");
        let worth = garbage > 0 && garbage * 100 >= total * REWRITE_FROM_GARBAGE_PERCENT;
        let held = match worth && !self.is_stopping() {
            true => self
                .space
                .hold(total.saturating_sub(garbage) + tables, self.memtable_bytes()),
            false => None,
        };
        let room = held.is_some();
        if room {
            self.db
                .set_options_cf(
                    chunks,
                    &[
                        ("enable_blob_garbage_collection", "true"),
                        ("blob_garbage_collection_age_cutoff", "1.0"),
                    ],
                )
                .map_err(db_err("turn blob GC on"))?;
            self.db.compact_range_cf_opt(chunks, None::<&[u8]>, None::<&[u8]>, &all);
            self.db
                .set_options_cf(chunks, &[("enable_blob_garbage_collection", "false")])
                .map_err(db_err("turn blob GC off"))?;
        }
        drop(held);
        Ok(Reclaimed {
            before,
            after: self.disk_usage(),
            rewrote: room,
            no_room: worth && !room && !self.is_stopping(),
        })
    }
}
