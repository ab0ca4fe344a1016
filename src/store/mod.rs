//! RocksDB layout: chunks, records and the indexes derived from them.
//!
//! Owns: the column families, atomic write batches, integrity checks on read, the data
//! dir's format marker and lock. Uses: nothing above it (ids come from `model`, which
//! is a leaf module of plain types).
//!
//! Column families (keys big-endian so prefix scans are ordered):
//! - `chunks`: storage key → chunk bytes (BlobDB: large values live in blob files).
//!   The storage key is a u64 (BE) handed out in write order, so a flush lays a
//!   file's chunks out in the blob files in the order they were written and a
//!   sequential read of the file is a sequential read of the disk (keyed by hash,
//!   a flush sorted them randomly and a cold read was ~10,000 small disk reads per
//!   GiB instead of ~300). Chunks stored before format 3 are keyed by their id.
//! - `chunk_index`: chunk id → length (u32 LE) ‖ storage key (u64 BE; absent for
//!   chunks stored before format 3). A small CF that answers "do we have it?"
//!   without reading a blob; written in the same batch as the chunk.
//! - `versions`: version id → signed record bytes
//! - `by_author`: author ‖ seq → version id
//! - `entries`: entry id → `EntryHeads`
//! - `children`: parent entry id ‖ name ‖ 0 ‖ child entry id → (). Several entries
//!   may hold one name (two nodes created it at once); names never contain NUL, so
//!   the 0 byte ends the name
//! - `gone`: parent entry id ‖ name ‖ 0 ‖ entry id → (), same layout as `children`:
//!   the names deleted entries held when they were deleted, so that `name@vN` and
//!   `distribox restore` still find a file after `rm` (a row stays when the entry
//!   comes back; readers check that it is still deleted)
//! - `pending`: version id → (): records received from peers but not yet part of
//!   the tree (a parent or a chunk is still missing)
//! - `entry_versions`: entry id ‖ generation ‖ version id → () (history, `@vN` lookup)
//! - `meta`: node identity, sequence counter, clock
//! - `dir_times`: directory entry id → `DirTime`, the latest event that sets a
//!   directory's mtime (a name added/removed in it, or its own utimens), derived from
//!   records so that directory timestamps need no version of their own
//!
//! Write path (DESIGN.md): chunks first, each in its own small write (idempotent, order
//! does not matter), then one atomic batch with the record and every index it touches.
//! A crash between the two leaves unreferenced chunks (gc sweeps them later), never a
//! record without data.
//! The WAL is on for everything, so whatever a write call returned survives a process
//! kill; `sync()` (fsync) makes it survive power loss too.

mod datadir;
mod drop_behind;
mod reclaim;
mod space;

pub use datadir::{DataDir, DataDirError, GroupKey, FORMAT_VERSION};
pub use reclaim::Reclaimed;
pub use space::SpaceGuard;

use crate::model::{ChunkId, EntryId, NodeId, VersionId};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::path::Path;

const CF_CHUNKS: &str = "chunks";
const CF_CHUNK_INDEX: &str = "chunk_index";
const CF_VERSIONS: &str = "versions";
const CF_BY_AUTHOR: &str = "by_author";
const CF_ENTRIES: &str = "entries";
const CF_CHILDREN: &str = "children";
const CF_ENTRY_VERSIONS: &str = "entry_versions";
const CF_META: &str = "meta";
const CF_DIR_TIMES: &str = "dir_times";
const CF_PENDING: &str = "pending";
const CF_GONE: &str = "gone";
const ALL_CFS: [&str; 11] = [
    CF_CHUNKS,
    CF_CHUNK_INDEX,
    CF_VERSIONS,
    CF_BY_AUTHOR,
    CF_ENTRIES,
    CF_CHILDREN,
    CF_ENTRY_VERSIONS,
    CF_META,
    CF_DIR_TIMES,
    CF_PENDING,
    CF_GONE,
];

/// Leading byte of every value we bincode into the store.
const VALUE_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the disk holding the data dir is full ({0})")]
    NoSpace(String),
    #[error("store I/O error during {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("chunk {chunk} is corrupt on disk (hash mismatch)")]
    CorruptChunk { chunk: ChunkId },
    #[error("chunk {chunk} is missing from the store")]
    MissingChunk { chunk: ChunkId },
    #[error("stored value under {what} does not decode: {detail}")]
    CorruptValue { what: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

fn db_err(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| {
        let msg = source.to_string();
        if msg.contains("No space left") || msg.contains("ENOSPC") {
            StoreError::NoSpace(msg)
        } else {
            StoreError::Db { op, source }
        }
    }
}

/// Heads of an entry: its versions no other version names as parent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeads {
    /// (version, its generation): the generation is kept here so `@vN` of a head
    /// needs no history scan.
    pub heads: Vec<(VersionId, u64)>,
}

/// Bytes RocksDB holds in memory (see `Store::memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMemory {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
}

/// Latest mtime-setting event of a directory: (when, by HLC; the mtime it set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirTime {
    pub hlc: crate::model::Hlc,
    pub mtime: crate::model::Timestamp,
}

fn encode_value<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_FORMAT];
    out.extend(bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("encoding into a Vec cannot fail"));
    out
}

fn decode_value<T: for<'de> Deserialize<'de>>(what: &'static str, b: &[u8]) -> Result<T> {
    let bad = |detail: String| StoreError::CorruptValue { what, detail };
    match b.split_first() {
        Some((&VALUE_FORMAT, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map(|(v, _)| v)
            .map_err(|e| bad(e.to_string())),
        Some((f, _)) => Err(bad(format!("unknown value format {f}"))),
        None => Err(bad("empty value".into())),
    }
}

/// One key and its value, as RocksDB's iterators hand them out.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// How a scan's prefix relates to the column family's prefix extractor.
#[derive(Clone, Copy)]
enum Prefix {
    /// The prefix is what the extractor returns for every key scanned.
    Extracted,
    /// Anything else (or no extractor).
    Any,
}

/// The least key greater than every key starting with `prefix` (None: no such key,
/// the prefix is all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The (parent, name) part of a `children` key (parent id, name, NUL, child id):
/// the prefix extractor of that column family. Names never hold a NUL.
fn child_name_prefix(key: &[u8]) -> &[u8] {
    match key.get(16..).and_then(|rest| rest.iter().position(|&b| b == 0)) {
        Some(i) => &key[..16 + i + 1],
        None => key,
    }
}

fn child_name_in_domain(key: &[u8]) -> bool {
    key.get(16..).is_some_and(|rest| rest.contains(&0))
}

fn child_prefix(parent: EntryId, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len() + 17);
    k.extend_from_slice(parent.as_bytes());
    k.extend_from_slice(name);
    k.push(0);
    k
}

fn child_key(parent: EntryId, name: &[u8], child: EntryId) -> Vec<u8> {
    let mut k = child_prefix(parent, name);
    k.extend_from_slice(child.as_bytes());
    k
}

/// Splits a `children` key after its 16-byte parent into (name, child).
fn split_child_key(k: &[u8]) -> Result<(Vec<u8>, EntryId)> {
    let bad = || StoreError::CorruptValue {
        what: "children",
        detail: "bad key".into(),
    };
    let rest = k.get(16..).ok_or_else(bad)?;
    if rest.len() < 17 || rest[rest.len() - 17] != 0 {
        return Err(bad());
    }
    let (name, child) = rest.split_at(rest.len() - 17);
    Ok((name.to_vec(), EntryId::from_slice(&child[1..]).ok_or_else(bad)?))
}

fn entry_version_key(entry: EntryId, generation: u64, v: VersionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + 8 + 32);
    k.extend_from_slice(entry.as_bytes());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(v.as_bytes());
    k
}

fn author_key(author: NodeId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(author.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The open RocksDB store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    db: DB,
    /// Keeps chunk data out of the disk's last reserve (see `space`).
    space: SpaceGuard,
    /// Count of chunk writes that skipped the WAL, and how many of them the last
    /// flush covered: `write` flushes first whenever they differ, so no record can
    /// become durable before a chunk it might name.
    unlogged_writes: std::sync::atomic::AtomicU64,
    flushed_writes: parking_lot::Mutex<u64>,
    /// Set by `stop_background_work`: long optional work (`reclaim_space`) ends.
    stopping: std::sync::atomic::AtomicBool,
    /// Next chunk storage key, and the range this run reserved.
    next_chunk_key: std::sync::atomic::AtomicU64,
    first_chunk_key: u64,
    chunk_keys_end: u64,
    /// Moves on after every write that landed: `chunk_stats` answers from its last
    /// walk while this stayed the same (the web GUI asks every few seconds, and the
    /// walk reads the whole chunk index).
    writes: std::sync::atomic::AtomicU64,
    chunk_stats: parking_lot::Mutex<Option<(u64, (u64, u64))>>,
    /// Drops blob files' pages once reads have moved on (None if its thread could
    /// not start: reads then leave their pages cached, as the kernel would).
    drop_behind: Option<drop_behind::DropBehind>,
}

/// Chunk storage keys each open of the store reserves (in `meta`, synced before
/// the first is used, so no run hands out a key an earlier one used).
const CHUNK_KEYS_PER_OPEN: u64 = 1 << 40;
const META_CHUNK_KEYS: &str = "chunk_keys_reserved_to";

/// A stored chunk's length and where its bytes are, from its `chunk_index` value.
fn chunk_location(id: ChunkId, index_value: &[u8]) -> (u32, Vec<u8>) {
    match index_value.get(4..12) {
        Some(key) => (index_len(index_value), key.to_vec()),
        None => (index_len(index_value), id.as_bytes().to_vec()),
    }
}

fn index_len(index_value: &[u8]) -> u32 {
    index_value
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// A set of index/record updates applied atomically by [`Store::write`].
pub struct Batch<'a> {
    store: &'a Store,
    batch: WriteBatch,
}

/// New chunks of a small commit, held back to go into the same write as the
/// record that names them (`Batch::put_staged`). A 4 KiB file then costs one
/// RocksDB write on close instead of three (chunk, manifest node, record); the
/// closing process waits for that write.
#[derive(Default)]
pub struct StagedChunks {
    chunks: Vec<(ChunkId, Vec<u8>)>,
    bytes: u64,
}

impl StagedChunks {
    pub fn contains(&self, id: ChunkId) -> bool {
        self.chunks.iter().any(|(c, _)| *c == id)
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl Batch<'_> {
    /// Adds staged chunks (see `Store::stage_chunk`).
    pub fn put_staged(&mut self, staged: StagedChunks) -> Result<()> {
        for (id, data) in staged.chunks {
            self.store.put_chunk_into(&mut self.batch, id, &data)?;
        }
        Ok(())
    }

    pub fn put_record(&mut self, id: VersionId, author: NodeId, seq: u64, bytes: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_VERSIONS), id.as_bytes(), bytes);
        self.batch
            .put_cf(self.store.cf(CF_BY_AUTHOR), author_key(author, seq), id.as_bytes());
    }
    pub fn put_heads(&mut self, entry: EntryId, heads: &EntryHeads) {
        self.batch
            .put_cf(self.store.cf(CF_ENTRIES), entry.as_bytes(), encode_value(heads));
    }
    pub fn put_child(&mut self, parent: EntryId, name: &[u8], child: EntryId) {
        self.batch
            .put_cf(self.store.cf(CF_CHILDREN), child_key(parent, name, child), []);
    }
    pub fn delete_child(&mut self, parent: EntryId, name: &[u8], child: EntryId) {
        self.batch
            .delete_cf(self.store.cf(CF_CHILDREN), child_key(parent, name, child));
    }
    /// Remembers that `child`, now deleted, was last at `name` in `parent`.
    pub fn put_gone(&mut self, parent: EntryId, name: &[u8], child: EntryId) {
        self.batch
            .put_cf(self.store.cf(CF_GONE), child_key(parent, name, child), []);
    }
    pub fn put_pending(&mut self, v: VersionId) {
        self.batch.put_cf(self.store.cf(CF_PENDING), v.as_bytes(), []);
    }
    pub fn delete_pending(&mut self, v: VersionId) {
        self.batch.delete_cf(self.store.cf(CF_PENDING), v.as_bytes());
    }
    pub fn put_entry_version(&mut self, entry: EntryId, generation: u64, v: VersionId) {
        self.batch.put_cf(
            self.store.cf(CF_ENTRY_VERSIONS),
            entry_version_key(entry, generation, v),
            [],
        );
    }
    pub fn put_meta(&mut self, key: &str, value: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_META), key.as_bytes(), value);
    }
    pub fn put_dir_time(&mut self, dir: EntryId, t: &DirTime) {
        self.batch
            .put_cf(self.store.cf(CF_DIR_TIMES), dir.as_bytes(), encode_value(t));
    }
    /// Drops a chunk (garbage collection of purged versions).
    pub fn delete_chunk(&mut self, id: ChunkId) -> Result<()> {
        if let Some((_, key)) = self.store.chunk_location(id)? {
            self.batch.delete_cf(self.store.cf(CF_CHUNKS), key);
        }
        self.batch.delete_cf(self.store.cf(CF_CHUNK_INDEX), id.as_bytes());
        Ok(())
    }
    /// Replaces a stored record's bytes (same id: only the signature changes).
    pub fn replace_record(&mut self, id: VersionId, bytes: &[u8]) {
        self.batch.put_cf(self.store.cf(CF_VERSIONS), id.as_bytes(), bytes);
    }
}

/// Whether files in `dir` can be written with O_DIRECT (tmpfs on older kernels,
/// and some FUSE and network file systems, refuse it; RocksDB would then fail
/// every flush).
fn direct_io_works(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join("direct-io-probe");
    let buf = vec![0u8; 2 * 4096];
    let at = buf.as_ptr().align_offset(4096);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut f| f.write_all(&buf[at..at + 4096]));
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

/// The process's open-files limit (soft, hard), None if it cannot be read.
fn open_files_limit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Lifts the soft open-files limit to the hard one (as Go programs such as
/// Syncthing do at start): desktop sessions start processes at 1024, and the store
/// keeps a descriptor per table and blob file it reads (`open_files_budget` takes
/// half of what is allowed then). Called by `main` before any thread starts.
pub fn raise_open_files_limit() {
    let Some(mut lim) = open_files_limit() else { return };
    // An unlimited hard limit is not a valid soft one for descriptors.
    let want = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < want {
        lim.rlim_cur = want;
        // SAFETY: setrlimit reads only `lim`.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Table and blob files RocksDB may keep open: half the process's open-files
/// limit, leaving the rest to the mount, peers, spill files and RocksDB's own
/// writes.
fn open_files_budget() -> i32 {
    let soft = open_files_limit().map_or(1024, |lim| lim.rlim_cur);
    (soft / 2).clamp(32, i32::MAX as u64) as i32
}

impl Store {
    /// Opens (creating if needed) the RocksDB store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bound memtables across all CFs so the node's RSS stays small even while a
        // multi-GiB file streams in.
        opts.set_db_write_buffer_size(32 << 20);
        opts.set_max_background_jobs(2);
        // Chunks of one file sit next to each other in blob files; with RocksDB's
        // default FADV_RANDOM the kernel would not read ahead for sequential reads.
        opts.set_advise_random_on_open(false);
        opts.set_keep_log_file_num(3);
        // By default RocksDB keeps a descriptor open for every table and blob file
        // it has opened (a blob file per memtable flush: ~64 per GiB written), and
        // past the process's limit every write and read fails with EMFILE.
        opts.set_max_open_files(open_files_budget());
        // Flushes write gigabytes of chunk data into blob files once; through the
        // page cache that copy cost as much CPU as cutting the chunks.
        opts.set_use_direct_io_for_flush_and_compaction(direct_io_works(path));
        // Chunks and their index entries are written together without the WAL; a
        // flush must persist both CFs as of one point, or a crash could leave an
        // index entry ("we have it") for a chunk whose bytes were still in the
        // other CF's memtable — a version would then land with data missing.
        opts.set_atomic_flush(true);
        // One block cache for every column family (each would otherwise get its
        // own 32 MiB one), and Bloom filters: without them every lookup of a key
        // that is not there (a new chunk's dedup check, a new file's name) read an
        // index and a data block of every table file.
        let cache = rocksdb::Cache::new_lru_cache(32 << 20);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            o.set_memtable_prefix_bloom_ratio(0.05);
            if *name == CF_CHILDREN || *name == CF_GONE {
                // Filters by (parent, name): `get_children_named` is a seek, and
                // a whole-key filter cannot answer a seek.
                table.set_whole_key_filtering(false);
                o.set_prefix_extractor(rocksdb::SliceTransform::create(
                    "distribox.parent-name",
                    child_name_prefix,
                    Some(child_name_in_domain),
                ));
            } else {
                o.set_memtable_whole_key_filtering(true);
            }
            o.set_block_based_table_factory(&table);
            if *name == CF_CHUNKS {
                o.set_enable_blob_files(true);
                o.set_min_blob_size(4096);
                o.set_write_buffer_size(16 << 20);
                // No automatic blob GC: it made every compaction rewrite old blob
                // files (~40% of CPU during a 1 GiB write). A gc sweep asks for it
                // once instead (`reclaim`).
                o.set_enable_blob_gc(false);
            } else {
                o.set_write_buffer_size(8 << 20);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(db_err("open"))?;
        let meta = db.cf_handle(CF_META).expect("every column family is created at open");
        let reserved = db
            .get_cf(meta, META_CHUNK_KEYS)
            .map_err(db_err("read chunk keys"))?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        let chunk_keys_end = reserved
            .checked_add(CHUNK_KEYS_PER_OPEN)
            .ok_or_else(|| StoreError::CorruptValue {
                what: META_CHUNK_KEYS,
                detail: format!("{reserved} leaves no chunk keys"),
            })?;
        db.put_cf(meta, META_CHUNK_KEYS, chunk_keys_end.to_le_bytes())
            .map_err(db_err("reserve chunk keys"))?;
        db.flush_wal(true).map_err(db_err("reserve chunk keys"))?;
        Ok(Store {
            db,
            space: SpaceGuard::new(path),
            unlogged_writes: std::sync::atomic::AtomicU64::new(0),
            flushed_writes: parking_lot::Mutex::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            next_chunk_key: std::sync::atomic::AtomicU64::new(reserved),
            first_chunk_key: reserved,
            chunk_keys_end,
            writes: std::sync::atomic::AtomicU64::new(0),
            chunk_stats: parking_lot::Mutex::new(None),
            drop_behind: drop_behind::DropBehind::start(path)
                .inspect_err(|e| tracing::warn!(error = %e, "cannot start the drop-behind thread; chunk reads stay in the page cache"))
                .ok(),
        })
    }

    /// Adds a chunk and its index entry under a fresh storage key to `batch`.
    fn put_chunk_into(&self, batch: &mut WriteBatch, id: ChunkId, data: &[u8]) -> Result<()> {
        let key = self.next_chunk_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if key >= self.chunk_keys_end {
            return Err(StoreError::CorruptValue {
                what: META_CHUNK_KEYS,
                detail: "this run used up its chunk keys; restart the node".into(),
            });
        }
        let key = key.to_be_bytes();
        batch.put_cf(self.cf(CF_CHUNKS), key, data);
        let mut index = (data.len() as u32).to_le_bytes().to_vec();
        index.extend_from_slice(&key);
        batch.put_cf(self.cf(CF_CHUNK_INDEX), id.as_bytes(), index);
        Ok(())
    }

    /// A stored chunk's length and storage key, None if absent.
    fn chunk_location(&self, id: ChunkId) -> Result<Option<(u32, Vec<u8>)>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_CHUNK_INDEX), id.as_bytes())
            .map_err(db_err("chunk lookup"))?
            .map(|v| chunk_location(id, &v)))
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("every column family is created at open")
    }

    /// Keys (and values) of `cf` that start with `prefix`, in key order. The upper
    /// bound stops RocksDB at the end of the prefix: without it a lookup of a name
    /// that is not there (every create) skipped the delete markers of whatever
    /// followed the prefix, e.g. a directory just emptied by `rm -r`.
    ///
    /// `Prefix::Extracted` says `prefix` is exactly what the column family's prefix
    /// extractor returns for its keys, so the prefix Bloom filters may skip files
    /// and memtables; otherwise the scan ignores them (total order).
    fn scan<'a>(&'a self, cf: &str, prefix: &'a [u8], whole: Prefix) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        let mut ro = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        match whole {
            Prefix::Extracted => ro.set_prefix_same_as_start(true),
            Prefix::Any => ro.set_total_order_seek(true),
        }
        self.db
            .iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(prefix, Direction::Forward))
            .map(|item| item.map_err(db_err("scan")))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            batch: WriteBatch::default(),
        }
    }

    /// Applies a batch atomically (WAL on, not synced: survives a process kill).
    /// Chunks written without the WAL are flushed first.
    pub fn write(&self, batch: Batch<'_>) -> Result<()> {
        self.flush_chunks()?;
        self.db.write(batch.batch).map_err(db_err("write batch"))?;
        self.wrote();
        Ok(())
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Makes everything written so far durable against power loss.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err("sync"))
    }

    /// A stored chunk's length, None if absent.
    pub fn chunk_len(&self, id: ChunkId) -> Result<Option<u64>> {
        Ok(self.chunk_location(id)?.map(|(len, _)| len as u64))
    }

    pub fn has_chunk(&self, id: ChunkId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_CHUNK_INDEX), id.as_bytes())
            .map_err(db_err("chunk lookup"))?
            .is_some())
    }

    /// Stores a chunk unless it is already present (dedup). Returns true if new bytes
    /// were written.
    pub fn put_chunk(&self, id: ChunkId, data: &[u8]) -> Result<bool> {
        self.put_chunk_opt(id, data, true)
    }

    /// Stores small chunks through the WAL in one write (a member receiving
    /// thousands of small files would otherwise pay a write per chunk); those
    /// already present are skipped. All or none are stored.
    pub fn put_chunks_logged(&self, chunks: &[(ChunkId, &[u8])]) -> Result<()> {
        let mut staged = StagedChunks::default();
        for (id, data) in chunks {
            self.stage_chunk(&mut staged, *id, data)?;
        }
        if staged.is_empty() {
            return Ok(());
        }
        let mut b = self.batch();
        b.put_staged(staged)?;
        self.db.write(b.batch).map_err(db_err("put chunks"))?;
        self.wrote();
        Ok(())
    }

    /// Holds a chunk the store lacks in `staged`, to be written with the record
    /// that names it; true if it was new. The disk's reserve is checked now, as
    /// `put_chunk` does.
    pub fn stage_chunk(&self, staged: &mut StagedChunks, id: ChunkId, data: &[u8]) -> Result<bool> {
        if staged.contains(id) || self.has_chunk(id)? {
            return Ok(false);
        }
        self.admit_chunk(id, staged.bytes + data.len() as u64)?;
        staged.bytes += data.len() as u64;
        staged.chunks.push((id, data.to_vec()));
        Ok(true)
    }

    /// Refuses `bytes` of new chunk data (chunk `id` and what is held with it)
    /// that would use the disk's reserve.
    fn admit_chunk(&self, id: ChunkId, bytes: u64) -> Result<()> {
        if !self.space.admit(bytes, || self.memtable_bytes()) {
            return Err(StoreError::NoSpace(format!(
                "storing chunk {id} would use the disk's reserve"
            )));
        }
        Ok(())
    }

    /// As `put_chunk`; with `wal == false` the bytes skip the write-ahead log (half the
    /// disk writes for bulk data) and are durable only after `flush_chunks`, which
    /// must happen before any record names them.
    pub fn put_chunk_opt(&self, id: ChunkId, data: &[u8], wal: bool) -> Result<bool> {
        if self.has_chunk(id)? {
            return Ok(false);
        }
        self.admit_chunk(id, data.len() as u64)?;
        let mut b = WriteBatch::default();
        self.put_chunk_into(&mut b, id, data)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        wo.disable_wal(!wal);
        self.db.write_opt(b, &wo).map_err(db_err("put chunk"))?;
        self.wrote();
        if !wal {
            self.unlogged_writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(true)
    }

    /// Persists chunks written without the WAL (memtable → blob/SST files), if any
    /// were written since the last flush.
    pub fn flush_chunks(&self) -> Result<()> {
        let mut flushed = self.flushed_writes.lock();
        let upto = self.unlogged_writes.load(std::sync::atomic::Ordering::Acquire);
        if upto == *flushed {
            return Ok(());
        }
        let mut fo = rocksdb::FlushOptions::default();
        fo.set_wait(true);
        self.db
            .flush_cfs_opt(&[self.cf(CF_CHUNKS), self.cf(CF_CHUNK_INDEX)], &fo)
            .map_err(db_err("flush chunks"))?;
        *flushed = upto;
        Ok(())
    }

    /// Bytes held in memtables, which flushes will write to disk: chunks written
    /// without the WAL, and also those written with it, whose WAL file stays
    /// until the flush has written them again into blob files. The space guard
    /// counts them as used; RocksDB must not meet a full disk in a flush (that
    /// stops every write until RocksDB finds room again: 64 MiB by its log).
    fn memtable_bytes(&self) -> u64 {
        self.sum_property(&["rocksdb.cur-size-all-mem-tables"])
    }

    /// A RocksDB integer property summed over every column family.
    fn sum_property(&self, props: &[&str]) -> u64 {
        let mut total = 0;
        for name in ALL_CFS {
            for prop in props {
                if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(name), *prop) {
                    total += v;
                }
            }
        }
        total
    }

    /// What RocksDB holds in memory: memtables, table readers (the index and filter
    /// blocks of every table file, which grow with the store), the block cache.
    pub fn memory(&self) -> StoreMemory {
        StoreMemory {
            memtables: self.memtable_bytes(),
            table_readers: self.sum_property(&["rocksdb.estimate-table-readers-mem"]),
            // One cache shared by every column family but `default`, which has its own.
            block_cache: self
                .db
                .property_int_value_cf(self.cf(CF_META), "rocksdb.block-cache-usage")
                .ok()
                .flatten()
                .unwrap_or(0),
        }
    }

    /// True if `bytes` of optional work (background chunking) fit comfortably.
    pub fn room_for(&self, bytes: u64) -> bool {
        self.space.room_for(bytes + self.memtable_bytes())
    }

    /// Admits `bytes` of user data outside the store (spill files) against the
    /// same free-space reserve.
    pub fn admit_bytes(&self, bytes: u64) -> bool {
        self.space.admit(bytes, || self.memtable_bytes())
    }

    /// Reads a chunk and checks it against its hash: a mismatch is an error, never
    /// wrong bytes handed to a reader.
    pub fn get_chunk(&self, id: ChunkId) -> Result<Vec<u8>> {
        // RocksDB's own CRC check would be redundant with the BLAKE3 check below, and
        // it is the costliest step of a read (software CRC32C in this build).
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_verify_checksums(false);
        let (_, key) = self.chunk_location(id)?.ok_or(StoreError::MissingChunk { chunk: id })?;
        let data = self
            .db
            .get_cf_opt(self.cf(CF_CHUNKS), &key, &ro)
            .map_err(db_err("get chunk"))?
            .ok_or(StoreError::MissingChunk { chunk: id })?;
        if ChunkId::of(&data) != id {
            tracing::error!(chunk = %id, bytes = data.len(), "chunk failed its hash check");
            return Err(StoreError::CorruptChunk { chunk: id });
        }
        if let (Some(d), Ok(key)) = (&self.drop_behind, <[u8; 8]>::try_from(&key[..])) {
            d.note(u64::from_be_bytes(key));
        }
        Ok(data)
    }

    /// Overwrites a chunk's bytes without any check. Only for tests that simulate
    /// on-disk corruption.
    #[doc(hidden)]
    pub fn corrupt_chunk_for_test(&self, id: ChunkId, data: &[u8]) -> Result<()> {
        let (_, key) = self.chunk_location(id)?.ok_or(StoreError::MissingChunk { chunk: id })?;
        self.db
            .put_cf(self.cf(CF_CHUNKS), key, data)
            .map_err(db_err("put chunk"))
    }

    pub fn get_record(&self, id: VersionId) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_VERSIONS), id.as_bytes())
            .map_err(db_err("get record"))
    }

    /// Reads and decodes one bincode value (see `encode_value`).
    fn get_value<T: for<'de> Deserialize<'de>>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key).map_err(db_err("get value"))? {
            Some(v) => Ok(Some(decode_value(cf, &v)?)),
            None => Ok(None),
        }
    }

    pub fn get_heads(&self, entry: EntryId) -> Result<Option<EntryHeads>> {
        self.get_value(CF_ENTRIES, entry.as_bytes())
    }

    pub fn get_dir_time(&self, dir: EntryId) -> Result<Option<DirTime>> {
        self.get_value(CF_DIR_TIMES, dir.as_bytes())
    }

    /// Entries holding `name` in `parent` (usually one; several after concurrent
    /// creates on different nodes), in entry id order.
    pub fn get_children_named(&self, parent: EntryId, name: &[u8]) -> Result<Vec<EntryId>> {
        let prefix = child_prefix(parent, name);
        self.scan(CF_CHILDREN, &prefix, Prefix::Extracted)
            .map(|item| Ok(split_child_key(&item?.0)?.1))
            .collect()
    }

    /// Entries that held `name` in `parent` when they were deleted (some may have
    /// come back since), in entry id order.
    pub fn get_gone_named(&self, parent: EntryId, name: &[u8]) -> Result<Vec<EntryId>> {
        let prefix = child_prefix(parent, name);
        self.scan(CF_GONE, &prefix, Prefix::Extracted)
            .map(|item| Ok(split_child_key(&item?.0)?.1))
            .collect()
    }

    /// (name, entry) of every entry deleted directly in `parent` (some may have
    /// come back since), in name order.
    pub fn list_gone(&self, parent: EntryId) -> Result<Vec<(Vec<u8>, EntryId)>> {
        self.scan(CF_GONE, parent.as_bytes(), Prefix::Any)
            .map(|item| split_child_key(&item?.0))
            .collect()
    }

    /// Every entry id with heads, in id order (one pass over the `entries` CF).
    pub fn all_entries(&self) -> Result<Vec<EntryId>> {
        self.scan(CF_ENTRIES, &[], Prefix::Any)
            .map(|item| {
                let (k, _) = item?;
                EntryId::from_slice(&k).ok_or_else(|| StoreError::CorruptValue {
                    what: "entries",
                    detail: "bad key".into(),
                })
            })
            .collect()
    }

    /// Children of a directory in name order (a name held by several entries appears
    /// once per entry).
    pub fn list_children(&self, parent: EntryId) -> Result<Vec<(Vec<u8>, EntryId)>> {
        self.scan(CF_CHILDREN, parent.as_bytes(), Prefix::Any)
            .map(|item| split_child_key(&item?.0))
            .collect()
    }

    /// True if the directory has at least one child (cheaper than listing it).
    pub fn has_children(&self, parent: EntryId) -> Result<bool> {
        Ok(self
            .scan(CF_CHILDREN, parent.as_bytes(), Prefix::Any)
            .next()
            .transpose()?
            .is_some())
    }

    /// All (generation, version) pairs recorded for an entry, oldest generation first.
    pub fn entry_versions(&self, entry: EntryId) -> Result<Vec<(u64, VersionId)>> {
        let mut out = Vec::new();
        for item in self.scan(CF_ENTRY_VERSIONS, entry.as_bytes(), Prefix::Any) {
            let (k, _) = item?;
            let bad = || StoreError::CorruptValue {
                what: "entry_versions",
                detail: "bad key".into(),
            };
            let generation = u64::from_be_bytes(k.get(16..24).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            let v = VersionId::from_slice(k.get(24..).ok_or_else(bad)?).ok_or_else(bad)?;
            out.push((generation, v));
        }
        Ok(out)
    }

    /// Highest sequence number recorded for `author` (0 if none).
    pub fn last_seq(&self, author: NodeId) -> Result<u64> {
        let mut upper = author.as_bytes().to_vec();
        upper.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut it = self
            .db
            .iterator_cf(self.cf(CF_BY_AUTHOR), IteratorMode::From(&upper, Direction::Reverse));
        if let Some(item) = it.next() {
            let (k, _) = item.map_err(db_err("seq"))?;
            if k.starts_with(author.as_bytes()) && k.len() == 40 {
                return Ok(u64::from_be_bytes(k[32..40].try_into().expect("length checked")));
            }
        }
        Ok(0)
    }

    /// Record ids of `author` with seq in `from..=to`, in seq order, at most `limit`.
    pub fn versions_of_author(
        &self,
        author: NodeId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, VersionId)>> {
        let mut out = Vec::new();
        let start = author_key(author, from);
        let it = self
            .db
            .iterator_cf(self.cf(CF_BY_AUTHOR), IteratorMode::From(&start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(db_err("records by author"))?;
            if k.len() != 40 || !k.starts_with(author.as_bytes()) {
                break;
            }
            let seq = u64::from_be_bytes(k[32..40].try_into().expect("length checked"));
            if seq > to || out.len() >= limit {
                break;
            }
            let bad = || StoreError::CorruptValue {
                what: "by_author",
                detail: "bad version id".into(),
            };
            out.push((seq, VersionId::from_slice(&v).ok_or_else(bad)?));
        }
        Ok(out)
    }

    /// Highest seq per author: one seek per author, not a scan of every record.
    pub fn last_seqs(&self) -> Result<Vec<(NodeId, u64)>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_BY_AUTHOR));
        it.seek_to_first();
        while it.valid() {
            let k = it.key().unwrap_or_default();
            let author = NodeId::from_slice(k.get(..32).unwrap_or_default()).ok_or(StoreError::CorruptValue {
                what: "by_author",
                detail: "bad key".into(),
            })?;
            let mut upper = author.as_bytes().to_vec();
            upper.extend_from_slice(&u64::MAX.to_be_bytes());
            it.seek_for_prev(&upper);
            let k = it.key().unwrap_or_default();
            let seq = u64::from_be_bytes(k.get(32..40).unwrap_or(&[0; 8]).try_into().expect("8 bytes"));
            out.push((author, seq));
            it.next();
        }
        it.status().map_err(db_err("seq scan"))?;
        Ok(out)
    }

    /// Received records waiting to join the tree.
    pub fn pending_versions(&self) -> Result<Vec<VersionId>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_PENDING), IteratorMode::Start) {
            let (k, _) = item.map_err(db_err("pending"))?;
            out.push(VersionId::from_slice(&k).ok_or(StoreError::CorruptValue {
                what: "pending",
                detail: "bad key".into(),
            })?);
        }
        Ok(out)
    }

    /// Calls `f` with every record id, its author and seq, in (author, seq) order.
    /// One pass that holds nothing: a walk over the whole history (gc, `log` of the
    /// folder) must not cost memory in proportion to it.
    pub fn for_each_version<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(NodeId, u64, VersionId) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for item in self.db.iterator_cf(self.cf(CF_BY_AUTHOR), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err("log"))?;
            let bad = || StoreError::CorruptValue {
                what: "by_author",
                detail: "bad key".into(),
            };
            if k.len() != 40 {
                return Err(bad().into());
            }
            let author = NodeId::from_slice(&k[..32]).ok_or_else(bad)?;
            let seq = u64::from_be_bytes(k[32..40].try_into().map_err(|_| bad())?);
            f(author, seq, VersionId::from_slice(&v).ok_or_else(bad)?)?;
        }
        Ok(())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(self.cf(CF_META), key.as_bytes())
            .map_err(db_err("get meta"))
    }

    /// Every `meta` entry whose key starts with `prefix` (key without the prefix).
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan(CF_META, prefix.as_bytes(), Prefix::Any)
            .map(|item| {
                let (k, v) = item?;
                Ok((k[prefix.len()..].to_vec(), v.to_vec()))
            })
            .collect()
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_META), key.as_bytes(), value)
            .map_err(db_err("put meta"))
    }

    /// The first chunk key this run of the store hands out: every chunk with a
    /// lower key was stored by an earlier run.
    pub fn first_chunk_key(&self) -> u64 {
        self.first_chunk_key
    }

    /// A key no chunk stored so far has reached: chunks stored from now on get
    /// this one or higher.
    pub fn chunk_key_mark(&self) -> u64 {
        self.next_chunk_key.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls `f(id)` for every chunk stored with a key below `mark`, i.e.
    /// before `chunk_key_mark` returned it (chunks of format-2 data dirs have no
    /// key and count as older than any mark).
    pub fn for_each_chunk_before(&self, mark: u64, mut f: impl FnMut(ChunkId) -> Result<()>) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_CHUNK_INDEX), IteratorMode::Start) {
            let (k, v) = item.map_err(db_err("chunk scan"))?;
            let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                continue;
            };
            let key = v
                .get(4..12)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
            if key < mark {
                f(ChunkId(id))?;
            }
        }
        Ok(())
    }

    /// (number of chunks, total bytes of chunk data) — each distinct chunk once.
    pub fn chunk_stats(&self) -> Result<(u64, u64)> {
        // Read before the walk: a write landing during it leaves the answer
        // cached under an older count, so the next call walks again.
        let at = self.writes.load(std::sync::atomic::Ordering::Acquire);
        if let Some((walked_at, stats)) = *self.chunk_stats.lock() {
            if walked_at == at {
                return Ok(stats);
            }
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for item in self.db.iterator_cf(self.cf(CF_CHUNK_INDEX), IteratorMode::Start) {
            let (_, v) = item.map_err(db_err("chunk stats"))?;
            n += 1;
            bytes += index_len(&v) as u64;
        }
        *self.chunk_stats.lock() = Some((at, (n, bytes)));
        Ok((n, bytes))
    }

    /// Approximate bytes the store occupies on disk (SST + blob files).
    pub fn disk_usage(&self) -> u64 {
        self.sum_property(&["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"])
    }

    /// Ends RocksDB's background work (a running compaction stops, its output is
    /// dropped) and `reclaim_space`, once everything is flushed at shutdown:
    /// otherwise the process's exit waits for a compaction that can rewrite the
    /// whole store, with RocksDB's lock still held.
    pub fn stop_background_work(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.db.cancel_all_background_work(true);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes memtables so `disk_usage` reflects everything written (tests, stats).
    pub fn flush(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)).map_err(db_err("flush"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_least_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn child_key_prefix_is_parent_and_name() {
        let (p, c) = (EntryId::random(), EntryId::random());
        let key = child_key(p, b"notes.txt", c);
        assert_eq!(child_name_prefix(&key), &child_prefix(p, b"notes.txt")[..]);
        assert!(child_name_in_domain(&key));
        assert!(child_name_in_domain(&child_prefix(p, b"x")));
        assert!(!child_name_in_domain(p.as_bytes()));
    }

    /// Pages of a blob file that reads are done with leave the page cache
    /// (`drop_behind`); without it they stay until memory runs short.
    #[test]
    fn blob_pages_leave_the_page_cache_once_reads_moved_on() {
        // A disk, not tmpfs (/tmp is tmpfs on many systems): tmpfs pages cannot be
        // dropped.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let chunks: Vec<Vec<u8>> = (0..32u8)
            .map(|i| (0..65536u32).map(|j| (j as u8) ^ i.wrapping_mul(31)).collect())
            .collect();
        for c in &chunks {
            store.put_chunk_opt(ChunkId::of(c), c, false).unwrap();
        }
        store.flush_chunks().unwrap();
        let blobs = drop_behind::blob_files(dir.path()).unwrap();
        assert!(!blobs.is_empty(), "the flush wrote the chunks into a blob file");
        for c in &chunks {
            assert_eq!(&store.get_chunk(ChunkId::of(c)).unwrap(), c);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let cached = || blobs.iter().map(|b| resident_pages(b)).sum::<usize>();
        while cached() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} pages of {blobs:?} still cached",
                cached()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Pages of `path` in the page cache (mincore over a mapping of it).
    fn resident_pages(path: &Path) -> usize {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        if len == 0 {
            return 0;
        }
        let page = 4096;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: a read-only shared mapping of a file we hold open, unmapped below;
        // mincore writes one byte per page into `vec`, which has that many.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
            libc::munmap(addr, len);
        }
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    /// `chunk_stats` answers from its last walk only while nothing was written.
    #[test]
    fn chunk_stats_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (b"first".to_vec(), b"second!".to_vec());
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        assert_eq!(store.chunk_stats().unwrap(), (0, 0));
        store.put_chunk(ia, &a).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (1, 5));
        assert_eq!(store.chunk_stats().unwrap(), (1, 5), "answered again unchanged");
        store.put_chunks_logged(&[(ib, &b)]).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (2, 12));
        let mut batch = store.batch();
        batch.delete_chunk(ia).unwrap();
        store.write(batch).unwrap();
        assert_eq!(store.chunk_stats().unwrap(), (1, 7));
    }
    /// Chunks are keyed in write order, across reopenings (each reserves a fresh
    /// range), and chunks stored by format 2 (keyed by id, length-only index) still
    /// read, count and delete.
    #[test]
    fn chunks_of_both_layouts_read_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, old) = (b"first".to_vec(), b"second".to_vec(), b"format 2".to_vec());
        let (ia, ib, iold) = (ChunkId::of(&a), ChunkId::of(&b), ChunkId::of(&old));
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_chunk(ia, &a).unwrap();
            store.db.put_cf(store.cf(CF_CHUNKS), iold.as_bytes(), &old).unwrap();
            let len = (old.len() as u32).to_le_bytes();
            store.db.put_cf(store.cf(CF_CHUNK_INDEX), iold.as_bytes(), len).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        store.put_chunk(ib, &b).unwrap();
        let key = |id: ChunkId| store.chunk_location(id).unwrap().unwrap().1;
        assert!(key(ia) < key(ib), "a later write gets a later key");
        assert_eq!(key(ia).len(), 8);
        assert_eq!(key(iold), iold.as_bytes().to_vec());
        for (id, bytes) in [(ia, &a), (ib, &b), (iold, &old)] {
            assert_eq!(&store.get_chunk(id).unwrap(), bytes);
            assert_eq!(store.chunk_len(id).unwrap(), Some(bytes.len() as u64));
        }
        assert_eq!(
            store.chunk_stats().unwrap(),
            (3, (a.len() + b.len() + old.len()) as u64)
        );
        let mut batch = store.batch();
        batch.delete_chunk(ia).unwrap();
        batch.delete_chunk(iold).unwrap();
        store.write(batch).unwrap();
        assert!(matches!(store.get_chunk(ia), Err(StoreError::MissingChunk { .. })));
        assert!(matches!(store.get_chunk(iold), Err(StoreError::MissingChunk { .. })));
        let left: Vec<_> = store.db.iterator_cf(store.cf(CF_CHUNKS), IteratorMode::Start).collect();
        assert_eq!(left.len(), 1, "the deleted chunks' bytes are gone too");
    }

    /// Name lookups go through the prefix Bloom filters, listings ignore them: both
    /// must see every child, whether it sits in a memtable or in table files, and
    /// not see a removed one.
    #[test]
    fn children_are_found_in_memtables_and_table_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (root, sub) = (EntryId::random(), EntryId::random());
        let kids: Vec<EntryId> = (0..3).map(|_| EntryId::random()).collect();
        let mut b = store.batch();
        b.put_child(root, b"a", kids[0]);
        b.put_child(root, b"ab", kids[1]);
        b.put_child(sub, b"a", kids[2]);
        store.write(b).unwrap();
        let check = |stage: &str| {
            assert_eq!(store.get_children_named(root, b"a").unwrap(), vec![kids[0]], "{stage}");
            assert_eq!(store.get_children_named(root, b"ab").unwrap(), vec![kids[1]], "{stage}");
            assert!(store.get_children_named(root, b"b").unwrap().is_empty(), "{stage}");
            assert_eq!(store.list_children(root).unwrap().len(), 2, "{stage}");
            assert!(store.has_children(sub).unwrap(), "{stage}");
        };
        check("memtable");
        store.flush().unwrap();
        check("table files");
        let mut b = store.batch();
        b.delete_child(sub, b"a", kids[2]);
        store.write(b).unwrap();
        store.flush().unwrap();
        assert!(store.get_children_named(sub, b"a").unwrap().is_empty());
        assert!(!store.has_children(sub).unwrap());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_children_named(root, b"a").unwrap(), vec![kids[0]], "reopened");
        assert_eq!(store.list_children(root).unwrap().len(), 2, "reopened");
    }
}
