//! The one API for "the tree": lookups, reads, write-back, committing versions.
//!
//! Owns: the entry-state cache, local commit serialisation (sequence numbers and the
//! clock), the chunk read cache, and turning dirty file state into chunks + a record.
//! Uses: `store`, `chunking`, `model`.
//!
//! Invariants: local commits are serialised by `commit` (so one node never forks its
//! own history and its seq numbers are gap-free); every commit is one atomic store
//! batch holding the records and every index they touch; chunks are stored before the
//! record that names them.
//!
//! `Repo` is synchronous: RocksDB and FUSE callbacks block anyway. Async code (the
//! network, later) calls it through `spawn_blocking`.

mod apply;
pub mod cache;
mod conflict_index;
mod gc;
mod merge;
mod remote;
mod writeback;

pub use apply::{Change, ChangeBatch};
pub use gc::{GcReport, Policy, SweepPlan};
pub use merge::Conflict;
pub use remote::{Received, Rejected};
pub use writeback::{DirtyFile, NewContent, PrechunkPlan, TailPressure};

use crate::chunking::{self, ChunkList, ChunkingError};
use crate::model::{
    names, Attrs, ChunkId, Content, EntryId, Hlc, Link, NodeId, RecordError, SignedRecord, VersionId, VersionRecord,
};
use crate::store::{DataDir, DataDirError, DirTime, EntryHeads, GroupKey, StagedChunks, Store, StoreError};
use apply::Apply;
use cache::EntryCache;
use ed25519_dalek::SigningKey;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no such entry {entry}")]
    NotFound { entry: EntryId },
    #[error("{name:?} already exists")]
    Exists { name: String },
    #[error("directory is not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("moving a directory into itself")]
    Cycle,
    #[error("version {version}'s data was purged by gc (retention policy); it cannot be used")]
    Purged { version: VersionId },
    #[error("version {version} is not a head of the entry (it changed meanwhile)")]
    NotHead { version: VersionId },
    #[error("{name}: no such conflicting version (see `distribox versions`)")]
    NotConflict { name: String },
    #[error("{what}: {why}")]
    CannotRestore { what: String, why: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Chunking(#[from] ChunkingError),
    #[error("stored record {version} is damaged: {source}")]
    Record {
        version: VersionId,
        #[source]
        source: RecordError,
    },
    #[error("write-back file: {0}")]
    Spill(#[from] std::io::Error),
    #[error("received version {version} is invalid: {detail}")]
    BadRemote { version: VersionId, detail: String },
    #[error("the store belongs to group {stored}, but group.key names group {key}; the data dir is inconsistent")]
    GroupMismatch { stored: String, key: String },
}

pub type Result<T> = std::result::Result<T, RepoError>;

/// What a new version of an entry should say; `commit` fills in the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub location: Vec<Link>,
    pub attrs: Attrs,
    pub content: Content,
}

/// The clock as kept in `meta` (read back by `Repo::open`).
fn hlc_bytes(hlc: Hlc) -> Vec<u8> {
    let mut b = hlc.wall_ns.to_le_bytes().to_vec();
    b.extend_from_slice(&hlc.counter.to_le_bytes());
    b
}

/// What a new version supersedes (its parents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// What the plain name shows: every head except those of conflicting content,
    /// so writing to a file never resolves a conflict silently.
    Shown,
    /// The version the draft was made from: a file written while a peer's version
    /// of it arrived forks from what the writer saw, so both versions stay heads
    /// instead of the later one silently replacing the other.
    Version(VersionId),
    /// An explicit merge of these heads (dismissing or resolving a conflict), whose
    /// content is that of `content_from` (None: the draft's content is new).
    Merge {
        parents: Vec<VersionId>,
        content_from: Option<VersionId>,
    },
    /// The first version of an entry whose name the caller reserved when it
    /// handed the entry out (a file created here, committed at its first close).
    /// The name is not checked again: an entry of a peer's that took it meanwhile
    /// is concurrent with ours, and both keep it, as when both had synced. With a
    /// clock reading (`reserve_hlc`, taken at the create), the version carries it:
    /// the file's ctime and its directory's times stay what the mount showed.
    Reserved(Option<Hlc>),
}

/// One `Repo::subscribe_if` listener.
struct Subscriber {
    tx: tokio::sync::mpsc::UnboundedSender<ChangeBatch>,
    wants: Box<dyn Fn(&ChangeBatch) -> bool + Send + Sync>,
}

struct StagedSubscriber {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<ChunkId>>,
    wants: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Resolved state of one entry (see `merge`): what it shows and what it is made of.
#[derive(Clone, Debug)]
pub struct EntryState {
    pub id: EntryId,
    /// The head whose content is shown under the plain name.
    pub head: SignedRecord,
    /// All heads with their generations.
    pub heads: Vec<(VersionId, u64)>,
    /// Generation of `head` (its `@vN`).
    pub generation: u64,
    /// The merged fields as shown (location, attrs, content), with the version that
    /// set each in the `*_from` stamps (always `Some`).
    view: VersionRecord,
    /// Losing content changes, shown as `name@vN` (empty unless a real conflict).
    pub conflicts: Vec<Conflict>,
    /// The heads a write to the plain name supersedes: all but the conflicts'.
    pub absorbs: Vec<VersionId>,
}

impl EntryState {
    /// The entry as shown: for several heads, a merged record that no version holds
    /// as such (its `parents`, `seq` and `author` are the shown head's or empty).
    pub fn record(&self) -> &VersionRecord {
        &self.view
    }
    pub fn draft(&self) -> Draft {
        let r = &self.view;
        Draft {
            location: r.location.clone(),
            attrs: r.attrs,
            content: r.content.clone(),
        }
    }
    pub fn is_alive(&self) -> bool {
        !self.view.content.is_tombstone()
    }
    /// True if `v` is what the entry shows: a head, or the content shown under the
    /// plain name or as a conflict (such a version's data is never purged).
    pub fn shows(&self, v: VersionId) -> bool {
        self.heads.iter().any(|(h, _)| *h == v)
            || self.view.content_from == Some(v)
            || self.conflicts.iter().any(|c| c.version == v)
    }
    /// A deleted directory kept visible because a live entry is still in it.
    pub fn is_revived(&self) -> bool {
        self.head.record.content.is_tombstone() && !self.view.content.is_tombstone()
    }
}

/// An entry's versions as the store holds them (for `merge`).
struct StoredVersions<'a> {
    repo: &'a Repo,
    entry: EntryId,
    gens: std::sync::OnceLock<HashMap<VersionId, u64>>,
}

impl<'a> StoredVersions<'a> {
    fn new(repo: &'a Repo, entry: EntryId) -> Self {
        StoredVersions {
            repo,
            entry,
            gens: std::sync::OnceLock::new(),
        }
    }
}

impl merge::Versions for StoredVersions<'_> {
    fn record(&self, v: VersionId) -> Result<Option<SignedRecord>> {
        self.repo.stored_record(v)
    }
    fn generation(&self, v: VersionId) -> Result<Option<u64>> {
        if self.gens.get().is_none() {
            let all = self.repo.store.entry_versions(self.entry)?;
            let _ = self.gens.set(all.into_iter().map(|(g, v)| (v, g)).collect());
        }
        Ok(self.gens.get().and_then(|m| m.get(&v).copied()))
    }
}

/// One line of history.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    pub generation: u64,
    pub record: SignedRecord,
}

struct CommitState {
    next_seq: u64,
    hlc: Hlc,
}

/// The repository of one node.
pub struct Repo {
    store: Store,
    data_dir: DataDir,
    key: SigningKey,
    node: NodeId,
    root: EntryId,
    /// Held for the whole of a local commit: serialises seq numbers and heads.
    commit_state: Mutex<CommitState>,
    /// Resolved entry states (bounded); a commit replaces its entries' states.
    entries: Mutex<EntryCache<Arc<EntryState>>>,
    /// Recently read chunks (verified), so sequential 4 KiB reads do not re-read and
    /// re-hash a 64 KiB chunk sixteen times.
    chunks: Mutex<LruCache<ChunkId, Arc<Vec<u8>>>>,
    /// Chunks being read from the store right now, and the signal that one is done:
    /// a reader that finds its chunk here waits for it instead of reading and
    /// hashing it a second time next to the read-ahead worker that got there first.
    loading: Mutex<std::collections::HashSet<ChunkId>>,
    loaded: parking_lot::Condvar,
    /// Recently loaded chunk lists by manifest root.
    manifests: Mutex<LruCache<ChunkId, Arc<ChunkList>>>,
    /// Counts gc sweeps that deleted chunks (see `chunk_list`).
    sweeps: std::sync::atomic::AtomicU64,
    /// Directory mtime events (cache of the `dir_times` index; None = none recorded).
    dir_times: Mutex<EntryCache<Option<DirTime>>>,
    /// Our records committed without a signature yet (signed by `sign_pending`).
    unsigned: Mutex<Vec<VersionId>>,
    /// Chunk read-ahead queue (see `start_prefetch`); unset in tools that only
    /// open the store.
    prefetch: std::sync::OnceLock<std::sync::mpsc::SyncSender<ChunkId>>,
    group: GroupKey,
    /// author → highest seq held (see `vector`).
    vector: Mutex<HashMap<NodeId, u64>>,
    /// Received records not yet in the tree (see `remote`).
    pending: Mutex<HashMap<VersionId, SignedRecord>>,
    /// Pending records waiting for a parent to join: parent → records.
    waiting_parent: Mutex<HashMap<VersionId, Vec<VersionId>>>,
    /// Directories shown away from their merged location because the move there
    /// would close a cycle: entry → (the move skipped, the location shown instead).
    /// Kept in the `meta` column family.
    cycle_breaks: Mutex<HashMap<EntryId, (VersionId, Vec<Link>)>>,
    /// Versions a purge record let go (version → its entry; see `gc`).
    purged: Mutex<HashMap<VersionId, EntryId>>,
    /// Where the next gc sweep looks for orphans (see `gc::OrphanWatch`).
    orphan_watch: Mutex<gc::OrphanWatch>,
    /// (orphan mark, epoch) of the last complete sweep (see `sweep_plan`).
    last_sweep: Mutex<Option<(u64, u64)>>,
    /// Who hears about changes (the network announcer, the kernel-cache invalidator).
    subscribers: Mutex<Vec<Subscriber>>,
    /// Who hears about chunks stored ahead for files still being written (the
    /// network, so members can fetch a large file while it is written).
    staged_subscribers: Mutex<Vec<StagedSubscriber>>,
    /// Counts published change batches (see `epoch`).
    epoch: std::sync::atomic::AtomicU64,
    /// Batches published so far, and the last of them the kernel's caches did not
    /// see (`ChangeBatch::kernel_knows` false).
    published: std::sync::atomic::AtomicU64,
    unseen: std::sync::atomic::AtomicU64,
    /// The last batch the mount's invalidator has handled; `None` without a mount
    /// (see `wait_for_kernel`).
    kernel_seen: Mutex<Option<u64>>,
    kernel_seen_cv: parking_lot::Condvar,
    /// Entries in conflict (see `conflict_index`), and the lock its one walk holds.
    conflict_index: Mutex<conflict_index::ConflictIndex>,
    conflict_walk: Mutex<()>,
}

/// Chunks read ahead of a sequential reader. Blob reads from RocksDB get no kernel
/// read-ahead (each is its own small pread), so without this a cold sequential read
/// waits for one 64 KiB disk read at a time.
/// Kernel read-ahead asks for up to 1 MiB per read, several reads at a time: with
/// less than that ahead, readers fetched most chunks themselves.
const PREFETCH_CHUNKS: usize = 32;
/// Verified chunks kept (≈ 8 MiB at the average chunk size): what the read-ahead
/// holds plus the reads in flight.
const CACHED_CHUNKS: NonZeroUsize = NonZeroUsize::new(128).unwrap();
/// Chunk lists kept, by manifest root.
const CACHED_MANIFESTS: NonZeroUsize = NonZeroUsize::new(16).unwrap();

const META_GROUP: &str = "group";
const META_HLC: &str = "hlc";
const META_CYCLE_BREAKS: &str = "cycle_breaks";
/// Deletions beneath a directory count as deleted with it (`Repo::undelete_beneath`)
/// while each follows the next within this: `rm -r` deletes entry after entry with
/// milliseconds between them, and an editor's swap file deleted minutes earlier is
/// not part of it.
pub const BURST_GAP: std::time::Duration = std::time::Duration::from_secs(10);

/// What `Repo::undelete_beneath` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UndeleteReport {
    pub restored: usize,
    pub skipped: usize,
}

/// True for what a deleted entry can come back with: not a deletion or a gc record.
fn has_content(c: &Content) -> bool {
    matches!(
        c,
        Content::File { .. } | Content::Symlink { .. } | Content::Dir | Content::Special { .. }
    )
}

/// Set once the `gone` index holds every entry deleted so far (stores from before
/// it existed are indexed on their first open).
const META_GONE_INDEXED: &str = "gone_indexed";

impl Repo {
    /// Opens the repository of an initialised data dir. The caller holds the data
    /// dir lock.
    pub fn open(data_dir: &DataDir) -> Result<Repo> {
        data_dir.check()?;
        let key = data_dir.load_key()?;
        let node = NodeId(key.verifying_key().to_bytes());
        let store = Store::open(&data_dir.db_path())?;
        data_dir.upgrade_format()?;
        std::fs::create_dir_all(data_dir.spill_dir())?;
        let group = data_dir.load_group()?;
        match store.get_meta(META_GROUP)? {
            Some(g) if g != group.id => {
                return Err(RepoError::GroupMismatch {
                    stored: hex::encode(&g[..g.len().min(4)]),
                    key: hex::encode(&group.id[..4]),
                })
            }
            Some(_) => {}
            None => store.put_meta(META_GROUP, &group.id)?,
        }
        let root = EntryId::root_of(&group.id);
        let vector: HashMap<NodeId, u64> = store.last_seqs()?.into_iter().collect();
        let mut pending = HashMap::new();
        for v in store.pending_versions()? {
            if let Some(b) = store.get_record(v)? {
                let r = SignedRecord::decode(&b, false).map_err(|source| RepoError::Record { version: v, source })?;
                pending.insert(v, r);
            }
        }
        let cycle_breaks = match store.get_meta(META_CYCLE_BREAKS)? {
            Some(b) => bincode::serde::decode_from_slice::<Vec<(EntryId, VersionId, Vec<Link>)>, _>(
                &b,
                bincode::config::standard(),
            )
            .map_err(|e| StoreError::CorruptValue {
                what: "meta",
                detail: format!("cycle breaks: {e}"),
            })?
            .0
            .into_iter()
            .map(|(e, v, l)| (e, (v, l)))
            .collect(),
            None => HashMap::new(),
        };
        let next_seq = store.last_seq(node)? + 1;
        let hlc = match store.get_meta(META_HLC)? {
            Some(b) if b.len() == 12 => Hlc {
                wall_ns: u64::from_le_bytes(b[..8].try_into().expect("length checked")),
                counter: u32::from_le_bytes(b[8..].try_into().expect("length checked")),
            },
            _ => Hlc::default(),
        };
        let purged = Self::load_purged(&store)?;
        let orphan_watch = gc::OrphanWatch::new(store.first_chunk_key());
        let repo = Repo {
            store,
            data_dir: data_dir.clone(),
            key,
            node,
            root,
            commit_state: Mutex::new(CommitState { next_seq, hlc }),
            entries: Mutex::new(EntryCache::new(cache::CACHED_ENTRIES)),
            chunks: Mutex::new(LruCache::new(CACHED_CHUNKS)),
            loading: Mutex::new(std::collections::HashSet::new()),
            loaded: parking_lot::Condvar::new(),
            manifests: Mutex::new(LruCache::new(CACHED_MANIFESTS)),
            sweeps: std::sync::atomic::AtomicU64::new(0),
            dir_times: Mutex::new(EntryCache::new(cache::CACHED_DIR_TIMES)),
            unsigned: Mutex::new(Vec::new()),
            prefetch: std::sync::OnceLock::new(),
            group,
            vector: Mutex::new(vector),
            pending: Mutex::new(pending),
            waiting_parent: Mutex::new(HashMap::new()),
            cycle_breaks: Mutex::new(cycle_breaks),
            purged: Mutex::new(purged),
            orphan_watch: Mutex::new(orphan_watch),
            last_sweep: Mutex::new(None),
            subscribers: Mutex::new(Vec::new()),
            staged_subscribers: Mutex::new(Vec::new()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            published: std::sync::atomic::AtomicU64::new(0),
            unseen: std::sync::atomic::AtomicU64::new(0),
            kernel_seen: Mutex::new(None),
            kernel_seen_cv: parking_lot::Condvar::new(),
            conflict_index: Mutex::new(Default::default()),
            conflict_walk: Mutex::new(()),
        };
        repo.queue_unsigned_from_store()?;
        repo.index_gone_once()?;
        // The root's first version is deterministic (author-independent content is not
        // possible: records are signed), so each member creates its own; the root
        // then has one head per member until someone changes it, which is harmless:
        // directories have no content to conflict on.
        if repo.store.get_heads(root)?.is_none() {
            let attrs = Attrs {
                mode: 0o755,
                // SAFETY: getuid/getgid cannot fail.
                uid: unsafe { libc::getuid() },
                gid: unsafe { libc::getgid() },
                mtime: crate::model::Timestamp::now(),
                atime: crate::model::Timestamp::now(),
            };
            repo.commit(vec![(
                root,
                Draft {
                    location: vec![],
                    attrs,
                    content: Content::Dir,
                },
            )])?;
            repo.store.sync()?;
        }
        Ok(repo)
    }

    pub fn root(&self) -> EntryId {
        self.root
    }
    pub fn node(&self) -> NodeId {
        self.node
    }
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn group(&self) -> &GroupKey {
        &self.group
    }

    /// Hears about every change to the tree from now on.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<ChangeBatch> {
        self.subscribe_if(|_| true)
    }

    /// Hears about the changes `wants` picks, asked as each one happens. A batch
    /// nobody wants is not sent: every send wakes the subscriber's thread, and a
    /// burst of creates made one batch per file for each subscriber.
    pub fn subscribe_if(
        &self,
        wants: impl Fn(&ChangeBatch) -> bool + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<ChangeBatch> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers.lock().push(Subscriber {
            tx,
            wants: Box::new(wants),
        });
        rx
    }

    /// Hears about chunks stored ahead of a commit for a file still being written
    /// (`staged`), whenever `wants` says so at that moment.
    pub fn subscribe_staged(
        &self,
        wants: impl Fn() -> bool + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Vec<ChunkId>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.staged_subscribers.lock().push(StagedSubscriber {
            tx,
            wants: Box::new(wants),
        });
        rx
    }

    /// Says that `chunks` of a file being written are stored here, before any
    /// version names them: members may fetch them now rather than after the
    /// commit (a 1 GiB copy would otherwise start moving only at its close). Only
    /// a hint: the version that will name them is announced as usual.
    pub fn staged(&self, chunks: Vec<ChunkId>) {
        if chunks.is_empty() {
            return;
        }
        self.staged_subscribers
            .lock()
            .retain(|s| !(s.wants)() || s.tx.send(chunks.clone()).is_ok());
    }

    /// Entry states held in memory now (bounded: `cache::CACHED_ENTRIES`).
    pub fn cached_entries(&self) -> usize {
        self.entries.lock().len()
    }

    /// Moves on after every stored change to the tree, local or remote. An answer
    /// read from the store while this stayed the same still holds: the mount
    /// skips checking a name again that its lookup just found free.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    fn publish(&self, mut batch: ChangeBatch) {
        use std::sync::atomic::Ordering;
        // After the batch is written: a reader that saw the old epoch before its
        // read and sees it again now read the store without this batch's changes
        // or with all of them.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if batch.changes.is_empty() {
            return;
        }
        let mut subscribers = self.subscribers.lock();
        // Numbered under the lock: subscribers get batches in this order.
        batch.seq = self.published.fetch_add(1, Ordering::AcqRel) + 1;
        if !batch.kernel_knows {
            self.unseen.fetch_max(batch.seq, Ordering::AcqRel);
        }
        subscribers.retain(|s| !(s.wants)(&batch) || s.tx.send(batch.clone()).is_ok());
    }

    /// The mount's invalidator starts (`on`) or stops handling the batches the
    /// kernel did not see; those published before it started are not its to wait
    /// for, and without it `wait_for_kernel` waits for nothing.
    pub fn watch_kernel(&self, on: bool) {
        let published = self.published.load(std::sync::atomic::Ordering::Acquire);
        *self.kernel_seen.lock() = on.then_some(published);
        self.kernel_seen_cv.notify_all();
    }

    /// The invalidator has dropped what the kernel cached of batch `seq`.
    pub fn kernel_saw(&self, seq: u64) {
        if let Some(s) = &mut *self.kernel_seen.lock() {
            *s = (*s).max(seq);
        }
        self.kernel_seen_cv.notify_all();
    }

    /// Waits, at most `timeout`, until the mount's kernel caches show every change
    /// published so far: a `distribox restore` returns once `cat` reads what it
    /// restored, not the size or pages the kernel cached before. True if they do
    /// (or there is no mount). Never from a FUSE callback: dropping a name the
    /// kernel cached takes the directory's lock, which the callback's system call
    /// may hold.
    pub fn wait_for_kernel(&self, timeout: std::time::Duration) -> bool {
        let want = self.unseen.load(std::sync::atomic::Ordering::Acquire);
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = self.kernel_seen.lock();
        loop {
            match *seen {
                None => return true,
                Some(s) if s >= want => return true,
                Some(_) => {}
            }
            if self.kernel_seen_cv.wait_until(&mut seen, deadline).timed_out() {
                return false;
            }
        }
    }

    /// Makes every committed version durable against power loss.
    pub fn sync(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }

    /// A stored record by id (a missing one is store corruption: ids come from indexes).
    pub fn record(&self, id: VersionId) -> Result<SignedRecord> {
        self.stored_record(id)?.ok_or_else(|| {
            StoreError::CorruptValue {
                what: "versions",
                detail: format!("record {id} is referenced but missing"),
            }
            .into()
        })
    }

    /// A stored record by id, None if this node does not hold it (ids from peers).
    fn stored_record(&self, id: VersionId) -> Result<Option<SignedRecord>> {
        match self.store.get_record(id)? {
            None => Ok(None),
            Some(b) => SignedRecord::decode(&b, false)
                .map(Some)
                .map_err(|source| RepoError::Record { version: id, source }),
        }
    }

    /// State of an entry (alive or tombstoned); NotFound if it never existed.
    pub fn get(&self, entry: EntryId) -> Result<Arc<EntryState>> {
        EntryCache::get_or_load(&self.entries, entry, || {
            let heads = self.store.get_heads(entry)?.ok_or(RepoError::NotFound { entry })?;
            Ok(Arc::new(self.resolve(entry, heads)?))
        })
    }

    /// Resolves an entry's heads from the store (see `merge`), then the two rules
    /// that look beyond the entry: a deleted directory holding live entries stays,
    /// and a move that closed a directory cycle is skipped.
    fn resolve(&self, entry: EntryId, heads: EntryHeads) -> Result<EntryState> {
        let versions = StoredVersions::new(self, entry);
        let mut state = merge::resolve(entry, heads.heads, &versions)?;
        if !state.is_alive() && self.store.has_children(entry)? {
            if let Some(r) = merge::revive(&state, &versions)? {
                state = r;
            }
        }
        if let Some((from, loc)) = self.cycle_breaks.lock().get(&entry) {
            if state.record().location_from == Some(*from) {
                state = merge::relocated(&state, loc.clone());
            }
        }
        Ok(state)
    }

    /// The entry shown as `name` in `parent`. When several entries hold the name
    /// (created at once on two nodes), the lowest entry id gets the plain name and
    /// the others answer to `name@<first 8 hex digits of their id>` (see
    /// `children`), so nothing is hidden and every node shows the same names.
    pub fn lookup(&self, parent: EntryId, name: &[u8]) -> Result<Option<EntryId>> {
        let found = self.store.get_children_named(parent, name)?;
        if let Some(first) = found.first() {
            return Ok(Some(*first));
        }
        if let Some((base, tag)) = names::parse_entry_suffix(name) {
            for e in self.store.get_children_named(parent, base)?.into_iter().skip(1) {
                if e.to_hex().starts_with(tag) {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// A directory's listing with the names `lookup` answers to.
    pub fn children(&self, parent: EntryId) -> Result<Vec<(Vec<u8>, EntryId)>> {
        let mut out: Vec<(Vec<u8>, EntryId)> = Vec::new();
        let mut prev: Option<Vec<u8>> = None;
        for (name, e) in self.store.list_children(parent)? {
            if prev.as_ref() == Some(&name) {
                let mut alt = name.clone();
                alt.push(b'@');
                alt.extend_from_slice(&e.to_hex().as_bytes()[..8]);
                out.push((alt, e));
            } else {
                prev = Some(name.clone());
                out.push((name, e));
            }
        }
        Ok(out)
    }

    pub fn has_children(&self, parent: EntryId) -> Result<bool> {
        Ok(self.store.has_children(parent)?)
    }

    /// True if `ancestor` is `entry` or one of its parent directories.
    pub fn is_ancestor(&self, ancestor: EntryId, entry: EntryId) -> Result<bool> {
        let mut cur = entry;
        for _ in 0..4096 {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == self.root {
                return Ok(false);
            }
            match self.get(cur)?.record().location.first() {
                Some(l) => cur = l.parent,
                None => return Ok(false),
            }
        }
        Ok(true) // absurdly deep: treat as a cycle rather than loop forever
    }

    /// A path for display ("docs/a.txt"), from the entry's first link.
    pub fn path_of(&self, entry: EntryId) -> Option<String> {
        self.walk_path(entry, |_| None).map(|(p, _)| p)
    }

    /// The path from the root to `entry` through each entry's first link; where an
    /// entry has none (it is deleted), `gone_link` may supply the link it had.
    /// Also true if it did. None if a link is missing or the walk does not end.
    fn walk_path(&self, entry: EntryId, gone_link: impl Fn(EntryId) -> Option<Link>) -> Option<(String, bool)> {
        let (mut parts, mut cur, mut gone) = (Vec::new(), entry, false);
        while cur != self.root {
            let l = match self.get(cur).ok()?.record().location.first() {
                Some(l) => l.clone(),
                None => {
                    gone = true;
                    gone_link(cur)?
                }
            };
            parts.push(String::from_utf8_lossy(&l.name).into_owned());
            cur = l.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some((parts.join("/"), gone))
    }

    /// Commits new versions of several entries in one atomic batch (a rename over an
    /// existing file touches two). Entries not yet in the store are created. A draft
    /// equal to the current state is skipped. Each new version supersedes what the
    /// plain name shows now (`Base::Shown`). Returns the new states in order.
    pub fn commit(&self, changes: Vec<(EntryId, Draft)>) -> Result<Vec<Arc<EntryState>>> {
        Ok(self
            .commit_based(changes.into_iter().map(|(e, d)| (e, d, Base::Shown)).collect())?
            .into_iter()
            .map(|(s, _)| s)
            .collect())
    }

    /// As `commit`, with what each new version supersedes spelled out (see `Base`).
    /// Returns each entry's new state and the id of the version made (None when the
    /// draft changed nothing).
    pub fn commit_based(
        &self,
        changes: Vec<(EntryId, Draft, Base)>,
    ) -> Result<Vec<(Arc<EntryState>, Option<VersionId>)>> {
        self.commit_staged(changes, StagedChunks::default())
    }

    /// As `commit_based`, writing `staged` chunks (see `DirtyFile::prepare_content`)
    /// in the same batch as the records.
    pub fn commit_staged(
        &self,
        changes: Vec<(EntryId, Draft, Base)>,
        staged: StagedChunks,
    ) -> Result<Vec<(Arc<EntryState>, Option<VersionId>)>> {
        self.commit_from(changes, staged, true)
    }

    /// A commit the kernel does not know of (`restore`, `resolve_keep`, ...: asked
    /// for by the CLI or the API, not done through the mount).
    fn commit_outside_mount(&self, changes: Vec<(EntryId, Draft, Base)>) -> Result<Arc<EntryState>> {
        Ok(self.commit_from(changes, StagedChunks::default(), false)?.remove(0).0)
    }

    /// The commits: `through_mount` when the change was made by a file operation
    /// (what the kernel caches shows it already; see `ChangeBatch::kernel_knows`).
    fn commit_from(
        &self,
        changes: Vec<(EntryId, Draft, Base)>,
        staged: StagedChunks,
        through_mount: bool,
    ) -> Result<Vec<(Arc<EntryState>, Option<VersionId>)>> {
        let mut cs = self.commit_state.lock();
        let mut tx = Apply::new(self);
        let mut seq = cs.next_seq;
        let mut hlc = cs.hlc;
        let mut created: Vec<(Link, EntryId)> = Vec::new();
        let mut made: Vec<Option<VersionId>> = Vec::new();
        for (entry, draft, base) in changes {
            // Content that names a manifest gc has swept (a purged version restored
            // or kept in a race with the sweep) must not become a version: its data
            // is gone. Under the commit lock, so no sweep runs between this and the
            // record.
            if let Content::File {
                manifest: Some(root), ..
            } = &draft.content
            {
                if !staged.contains(*root) && !self.store.has_chunk(*root)? {
                    return Err(crate::store::StoreError::MissingChunk { chunk: *root }.into());
                }
            }
            let prev = tx.current(entry)?;
            // A reserved first version: its name was checked by the caller, and it
            // may carry a clock reading taken then.
            let reserved = match base {
                Base::Reserved(at) if prev.is_none() => Some(at),
                _ => None,
            };
            let (check_names, stamp) = (reserved.is_none(), reserved.flatten());
            // What the new version supersedes, its generation, the record its
            // fields are compared with for the `*_from` stamps, and those stamps.
            let (parents, generation, reference, mut from) = match (base, &prev) {
                (_, None) => (Vec::new(), 1, None, [None; 3]),
                (Base::Version(b), Some(p)) if b != p.head.id => {
                    let r = tx.record(b)?;
                    let g = self.generation_of(entry, b)?;
                    let from = [r.content_from(), r.location_from(), r.attrs_from()].map(Some);
                    (vec![b], g + 1, Some(r.record), from)
                }
                (Base::Merge { parents, content_from }, Some(p)) => {
                    let mut gens = Vec::new();
                    for v in &parents {
                        let (_, g) = p
                            .heads
                            .iter()
                            .find(|(h, _)| h == v)
                            .ok_or(RepoError::NotHead { version: *v })?;
                        gens.push(*g);
                    }
                    let v = p.record();
                    let from = [content_from, v.location_from, v.attrs_from];
                    // The content stamp is the caller's; only the others compare.
                    let mut reference = v.clone();
                    reference.content = draft.content.clone();
                    (parents, names::generation(gens), Some(reference), from)
                }
                (_, Some(p)) => {
                    if p.absorbs.len() == 1 && p.draft() == draft {
                        tx.states.push(p.clone());
                        made.push(None);
                        continue;
                    }
                    let gens = p.heads.iter().filter(|(v, _)| p.absorbs.contains(v)).map(|(_, g)| *g);
                    let v = p.record();
                    let from = [v.content_from, v.location_from, v.attrs_from];
                    (p.absorbs.clone(), names::generation(gens), Some(v.clone()), from)
                }
            };
            if let Some(r) = &reference {
                for (changed, slot) in [
                    r.content != draft.content,
                    r.location != draft.location,
                    r.attrs != draft.attrs,
                ]
                .into_iter()
                .zip(from.iter_mut())
                {
                    if changed {
                        *slot = None;
                    }
                }
            }
            // A reserved reading is below `hlc` already (`reserve_hlc` ticked it).
            let at = match stamp {
                Some(at) => at,
                None => {
                    hlc = Hlc::tick(hlc, crate::model::hlc::now_ns());
                    hlc
                }
            };
            let old_links = reference.map(|r| r.location).unwrap_or_default();
            for l in &draft.location {
                if check_names && !old_links.contains(l) {
                    created.push((l.clone(), entry));
                }
            }
            let [content_from, location_from, attrs_from] = from;
            let record = VersionRecord {
                entry,
                parents,
                author: self.node,
                seq,
                hlc: at,
                location: draft.location,
                attrs: draft.attrs,
                content: draft.content,
                content_from,
                location_from,
                attrs_from,
            };
            let signed = SignedRecord::unsigned(record);
            tx.batch.put_record(signed.id, self.node, seq, &signed.bytes);
            made.push(Some(signed.id));
            tx.add_version(signed, generation)?;
            seq += 1;
        }
        // A name this batch gives an entry must be free unless this batch frees it.
        let (removed, _) = tx.link_changes();
        for (l, entry) in &created {
            for other in self.store.get_children_named(l.parent, &l.name)? {
                if other != *entry && !removed.contains(&(l.clone(), other)) {
                    return Err(RepoError::Exists {
                        name: String::from_utf8_lossy(&l.name).into_owned(),
                    });
                }
            }
        }
        tx.batch.put_meta(META_HLC, &hlc_bytes(hlc));
        tx.batch.put_staged(staged)?;
        let (out, changes) = tx.finish()?;
        cs.next_seq = seq;
        cs.hlc = hlc;
        self.vector.lock().insert(self.node, seq - 1);
        self.unsigned.lock().extend(made.iter().flatten().copied());
        self.publish(ChangeBatch {
            remote: false,
            kernel_knows: through_mount,
            changes,
            seq: 0,
        });
        Ok(out.into_iter().zip(made).collect())
    }

    /// A clock reading for a version committed later (see `Base::Reserved`).
    pub fn reserve_hlc(&self) -> Hlc {
        let mut cs = self.commit_state.lock();
        cs.hlc = Hlc::tick(cs.hlc, crate::model::hlc::now_ns());
        cs.hlc
    }

    /// Generation of one version of an entry (its `@vN`).
    fn generation_of(&self, entry: EntryId, v: VersionId) -> Result<u64> {
        self.store
            .entry_versions(entry)?
            .into_iter()
            .find(|(_, x)| *x == v)
            .map(|(g, _)| g)
            .ok_or(RepoError::NotFound { entry })
    }

    /// The latest event that set a directory's mtime (a name change in it or its own
    /// utimens), if any since it was created.
    pub fn dir_time(&self, dir: EntryId) -> Result<Option<DirTime>> {
        EntryCache::get_or_load(&self.dir_times, dir, || Ok(self.store.get_dir_time(dir)?))
    }

    /// Signs the records committed unsigned (see `SignedRecord::unsigned`). Run in the
    /// background and before shutdown; idempotent.
    pub fn sign_pending(&self) -> Result<usize> {
        let ids: Vec<VersionId> = std::mem::take(&mut *self.unsigned.lock());
        if ids.is_empty() {
            return Ok(0);
        }
        let sealed = self.seal(&ids);
        if sealed.is_err() {
            self.unsigned.lock().extend(ids); // retry later
        }
        sealed
    }

    /// Seals those of `ids` not signed yet, 64 to a signature, in one write.
    fn seal(&self, ids: &[VersionId]) -> Result<usize> {
        let mut todo = Vec::with_capacity(ids.len());
        for id in ids {
            match self.store.get_record(*id)? {
                Some(bytes) if !SignedRecord::is_signed(&bytes) => {
                    // A frame that does not decode can never be signed; sealing it
                    // with the others would fail the whole batch every time.
                    match SignedRecord::decode(&bytes, false) {
                        Ok(_) => todo.push((*id, bytes)),
                        Err(e) => {
                            tracing::error!(version = %id, error = %e, "stored record of ours is corrupt; it stays unsigned and is never sent")
                        }
                    }
                }
                _ => {}
            }
        }
        let mut batch = self.store.batch();
        for group in todo.chunks(crate::model::seal::MAX_BATCH) {
            let frames: Vec<&[u8]> = group.iter().map(|(_, b)| b.as_slice()).collect();
            let sealed = SignedRecord::sealed_frames(&frames, &self.key).map_err(|source| RepoError::Record {
                version: group[0].0,
                source,
            })?;
            for ((id, _), bytes) in group.iter().zip(&sealed) {
                batch.replace_record(*id, bytes);
            }
        }
        self.store.write(batch)?;
        Ok(todo.len())
    }

    /// Finds records left unsigned by an earlier run that stopped before signing them.
    fn queue_unsigned_from_store(&self) -> Result<()> {
        let mut q = Vec::new();
        self.store.for_each_version(|author, _, v| -> Result<()> {
            if author == self.node {
                if let Some(b) = self.store.get_record(v)? {
                    if !SignedRecord::is_signed(&b) {
                        q.push(v);
                    }
                }
            }
            Ok(())
        })?;
        self.unsigned.lock().extend(q);
        Ok(())
    }

    /// Starts the read-ahead workers (a mounted node calls this once).
    pub fn start_prefetch(self: &Arc<Self>, workers: usize) {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ChunkId>(64);
        if self.prefetch.set(tx).is_err() {
            return;
        }
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (repo, rx) = (Arc::downgrade(self), rx.clone());
            std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().recv();
                    let (Ok(id), Some(repo)) = (next, repo.upgrade()) else {
                        return;
                    };
                    let _ = repo.chunk(id); // errors surface on the real read
                })
                .expect("spawning a thread at startup");
        }
    }

    fn prefetch_after(&self, list: &ChunkList, idx: usize) {
        let Some(tx) = self.prefetch.get() else { return };
        // Only for a reader that looks sequential (the chunk before this one is
        // cached or being read: kernel read-ahead sends several reads at once): for
        // random reads, 32 chunks ahead are 2 MiB read and hashed for nothing.
        if idx > 0 {
            let prev = list.refs()[idx - 1].id;
            if !self.chunks.lock().contains(&prev) && !self.loading.lock().contains(&prev) {
                return;
            }
        }
        let end = (idx + 1 + PREFETCH_CHUNKS).min(list.refs().len());
        for r in &list.refs()[(idx + 1).min(end)..end] {
            if self.chunks.lock().contains(&r.id) || self.loading.lock().contains(&r.id) {
                continue;
            }
            if tx.try_send(r.id).is_err() {
                break; // queue full: the workers are busy enough
            }
        }
    }

    /// Reads a chunk (verified against its hash; cached).
    pub fn chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        loop {
            if let Some(c) = self.chunks.lock().get(&id) {
                return Ok(c.clone());
            }
            let mut loading = self.loading.lock();
            if !loading.contains(&id) {
                loading.insert(id);
                break;
            }
            // Another thread is reading it; look again once it is done (if it
            // failed, we read it ourselves and see the error too).
            self.loaded.wait(&mut loading);
        }
        let data = self.store.get_chunk(id).map(Arc::new);
        if let Ok(d) = &data {
            self.chunks.lock().put(id, d.clone());
        }
        self.loading.lock().remove(&id);
        self.loaded.notify_all();
        Ok(data?)
    }

    /// The chunk list behind a manifest root (cached).
    pub fn chunk_list(&self, manifest: Option<ChunkId>) -> Result<Arc<ChunkList>> {
        let Some(root) = manifest else {
            return Ok(Arc::new(ChunkList::default()));
        };
        if let Some(l) = self.manifests.lock().get(&root) {
            return Ok(l.clone());
        }
        let sweeps = self.sweeps.load(std::sync::atomic::Ordering::SeqCst);
        let list = Arc::new(chunking::load_manifest(Some(root), |id| {
            self.store.get_chunk(id).map_err(RepoError::from)
        })?);
        let mut cache = self.manifests.lock();
        // A gc sweep that deleted chunks meanwhile may have deleted nodes of this
        // manifest: caching it would hide that they are gone (a record naming it
        // could join without them).
        if self.sweeps.load(std::sync::atomic::Ordering::SeqCst) == sweeps {
            cache.put(root, list.clone());
        }
        Ok(list)
    }

    /// Copies bytes `[offset, offset + len)` of a chunk list into `out` (clamped to
    /// the list's length).
    pub fn read_chunks(&self, list: &ChunkList, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let end = (offset + len).min(list.len_bytes());
        let mut pos = offset;
        while pos < end {
            let idx = list.index_at(pos).expect("pos is inside the list");
            let start = list.start(idx);
            let data = self.chunk(list.refs()[idx].id)?;
            self.prefetch_after(list, idx);
            let from = (pos - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
            pos = start + to as u64;
        }
        Ok(())
    }

    fn store_manifest(&self, refs: &[chunking::ChunkRef]) -> Result<Option<ChunkId>> {
        chunking::build_manifest(refs, |id, bytes| {
            self.store.put_chunk(id, &bytes).map(|_| ()).map_err(RepoError::from)
        })
    }

    /// As `store_manifest`, staging the nodes the store lacks.
    fn stage_manifest(&self, refs: &[chunking::ChunkRef], staged: &mut StagedChunks) -> Result<Option<ChunkId>> {
        chunking::build_manifest(refs, |id, bytes| {
            self.store
                .stage_chunk(staged, id, &bytes)
                .map(|_| ())
                .map_err(RepoError::from)
        })
    }

    /// (generation, author, id) of every version of an entry: what `names::select`
    /// picks from.
    pub fn version_names(&self, entry: EntryId) -> Result<Vec<(u64, NodeId, VersionId)>> {
        let mut out = Vec::new();
        for (g, v) in self.store.entry_versions(entry)? {
            out.push((g, self.record(v)?.record.author, v));
        }
        Ok(out)
    }

    /// The version of an entry a history name (`@v3`, `@v3-<author>`) means, if
    /// exactly one matches.
    pub fn version_by_name(&self, entry: EntryId, name: &names::VersionName) -> Result<Option<SignedRecord>> {
        let mut same_gen = Vec::new();
        for (g, v) in self.store.entry_versions(entry)? {
            if g == name.generation {
                same_gen.push((g, self.record(v)?.record.author, v));
            }
        }
        names::select(&same_gen, name).map(|v| self.record(v)).transpose()
    }

    /// Deleted entries that last held `name` in `parent`, most recently deleted
    /// first: where `name@vN` and `distribox restore` look once no entry holds the
    /// name any more.
    pub fn deleted_named(&self, parent: EntryId, name: &[u8]) -> Result<Vec<EntryId>> {
        let link = Link {
            parent,
            name: name.to_vec(),
        };
        let mut found = Vec::new();
        for entry in self.store.get_gone_named(parent, name)? {
            if let Some(st) = self.deleted_from(entry, &link)? {
                found.push((st.record().hlc, entry));
            }
        }
        found.sort_by(|a, b| b.cmp(a));
        Ok(found.into_iter().map(|(_, e)| e).collect())
    }

    /// What was deleted in `dir` and can be brought back by name: for each name no
    /// entry holds now, the entry deleted under it last, in name order.
    pub fn deleted_in(&self, dir: EntryId) -> Result<Vec<(Vec<u8>, EntryId)>> {
        let mut names: Vec<Vec<u8>> = self.store.list_gone(dir)?.into_iter().map(|(n, _)| n).collect();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            if self.lookup(dir, &name)?.is_some() {
                continue;
            }
            if let Some(&entry) = self.deleted_named(dir, &name)?.first() {
                out.push((name, entry));
            }
        }
        Ok(out)
    }

    /// The state of `entry` if it is deleted and `link` was one of its names when
    /// it was (a `gone` row stays when an entry comes back, moves and is deleted
    /// elsewhere: that row no longer says where it was).
    fn deleted_from(&self, entry: EntryId, link: &Link) -> Result<Option<Arc<EntryState>>> {
        let st = match self.get(entry) {
            Ok(st) => st,
            // A row whose entry the store no longer has says nothing.
            Err(RepoError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if st.is_alive() || !self.last_location(entry)?.contains(link) {
            return Ok(None);
        }
        Ok(Some(st))
    }

    /// The entry whose history `name@vN` in `parent` names: the live one holding
    /// `name`, or when none does, the one deleted under it last (so `rm f; cat
    /// f@v2` still works), as `distribox log` and `restore` take it.
    pub fn history_entry(&self, parent: EntryId, name: &[u8]) -> Result<Option<EntryId>> {
        Ok(match self.lookup(parent, name)? {
            Some(e) => Some(e),
            None => self.deleted_named(parent, name)?.first().copied(),
        })
    }

    /// Fills the `gone` index from the records of a store written before it
    /// existed: every deleted entry under the location its last live version had.
    fn index_gone_once(&self) -> Result<()> {
        if self.store.get_meta(META_GONE_INDEXED)?.is_some() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        let mut n = 0u64;
        for entry in self.store.all_entries()? {
            // Resolved without the cache: that would keep every entry of the store
            // in memory for the life of the process.
            let links = self
                .store
                .get_heads(entry)
                .map_err(RepoError::from)
                .and_then(|h| h.ok_or(RepoError::NotFound { entry }))
                .and_then(|h| self.resolve(entry, h))
                .and_then(|st| {
                    if st.is_alive() {
                        Ok(Vec::new())
                    } else {
                        self.last_location(entry)
                    }
                });
            match links {
                Ok(links) => {
                    for l in links {
                        batch.put_gone(l.parent, &l.name, entry);
                        n += 1;
                    }
                }
                Err(e) => tracing::warn!(%entry, error = %e, "cannot index this entry's deleted names"),
            }
        }
        batch.put_meta(META_GONE_INDEXED, &[1]);
        self.store.write(batch)?;
        if n > 0 {
            tracing::info!(names = n, "indexed the names of deleted files");
        }
        Ok(())
    }

    /// The links of an entry's latest version that had any (where a deleted entry
    /// last was; empty if it never had a place).
    fn last_location(&self, entry: EntryId) -> Result<Vec<Link>> {
        Ok(self
            .latest_version_where(entry, |r| !r.location.is_empty())?
            .map(|r| r.record.location)
            .unwrap_or_default())
    }

    /// An entry's latest version with content (what a deleted entry had last).
    pub fn last_content(&self, entry: EntryId) -> Result<Option<VersionId>> {
        Ok(self
            .latest_version_where(entry, |r| has_content(&r.content))?
            .map(|r| r.id))
    }

    /// An entry's latest version (by clock) that `keep` accepts.
    fn latest_version_where(
        &self,
        entry: EntryId,
        keep: impl Fn(&VersionRecord) -> bool,
    ) -> Result<Option<SignedRecord>> {
        let mut last: Option<SignedRecord> = None;
        for (_, v) in self.store.entry_versions(entry)? {
            let r = self.record(v)?;
            if keep(&r.record) && last.as_ref().is_none_or(|l| r.record.hlc > l.record.hlc) {
                last = Some(r);
            }
        }
        Ok(last)
    }

    /// `path_of`, or for a deleted entry the path it last had (through deleted
    /// directories too) and `true`.
    pub fn last_path_of(&self, entry: EntryId) -> Option<(String, bool)> {
        self.walk_path(entry, |e| self.last_location(e).ok()?.into_iter().next())
    }

    /// The `name@vN` suffixes under which an entry's conflicting versions are listed,
    /// each the shortest that means that version.
    pub fn conflict_names(&self, state: &EntryState) -> Result<Vec<(String, VersionId)>> {
        if state.conflicts.is_empty() {
            return Ok(Vec::new());
        }
        let all = self.version_names(state.id)?;
        Ok(state
            .conflicts
            .iter()
            .filter_map(|c| names::shortest_name(&all, c.version).map(|n| (n.suffix(), c.version)))
            .collect())
    }

    /// Dismisses one conflicting version: a merge of the shown content with the heads
    /// carrying `version`, so the `name@vN` entry disappears on every node. The
    /// version stays in history.
    pub fn dismiss(&self, entry: EntryId, version: VersionId) -> Result<Arc<EntryState>> {
        let p = self.get(entry)?;
        let c = p
            .conflicts
            .iter()
            .find(|c| c.version == version)
            .ok_or_else(|| RepoError::NotConflict {
                name: format!("version {version}"),
            })?;
        let mut parents = p.absorbs.clone();
        parents.extend(&c.heads);
        let base = Base::Merge {
            parents,
            content_from: p.record().content_from,
        };
        Ok(self.commit_based(vec![(entry, p.draft(), base)])?.remove(0).0)
    }

    /// Makes `version`'s content the entry's, superseding every head: the conflict
    /// is resolved on every node. `version` may be any version of the entry.
    pub fn resolve_keep(&self, entry: EntryId, version: VersionId) -> Result<Arc<EntryState>> {
        let p = self.get(entry)?;
        let keep = self.record(version)?;
        if self.is_purged(version)? {
            return Err(RepoError::Purged { version });
        }
        if !p.is_alive() {
            return Err(RepoError::CannotRestore {
                what: format!("version {version}"),
                why: "its file is deleted; bring it back with `distribox restore`",
            });
        }
        if keep.record.entry != entry || keep.record.content.is_tombstone() {
            return Err(RepoError::NotConflict {
                name: format!("version {version}"),
            });
        }
        let current = p.record().content_from == Some(version) || p.conflicts.iter().any(|c| c.version == version);
        let mut draft = p.draft();
        draft.content = keep.record.content.clone();
        draft.attrs.mtime = keep.record.attrs.mtime;
        let base = Base::Merge {
            parents: p.heads.iter().map(|(v, _)| *v).collect(),
            content_from: current.then_some(version),
        };
        self.commit_outside_mount(vec![(entry, draft, base)])
    }

    /// A new version of the entry with the content of an older one (conflicts
    /// elsewhere stay as they are).
    pub fn restore(&self, entry: EntryId, version: VersionId) -> Result<Arc<EntryState>> {
        let p = self.get(entry)?;
        let old = self.record(version)?;
        if self.is_purged(version)? {
            return Err(RepoError::Purged { version });
        }
        if !p.is_alive()
            || old.record.entry != entry
            || !matches!(old.record.content, Content::File { .. } | Content::Symlink { .. })
        {
            return Err(RepoError::NotConflict {
                name: format!("version {version}"),
            });
        }
        let mut draft = p.draft();
        draft.content = old.record.content.clone();
        draft.attrs.mtime = old.record.attrs.mtime;
        self.commit_outside_mount(vec![(entry, draft, Base::Shown)])
    }

    /// Brings a deleted entry back at `at` as a new version with an old version's
    /// content and attributes (a directory comes back empty; what was deleted in
    /// it can be brought back the same way once it is there).
    pub fn undelete(&self, entry: EntryId, version: VersionId, at: Link) -> Result<Arc<EntryState>> {
        let p = self.get(entry)?;
        let old = self.record(version)?;
        if self.is_purged(version)? {
            return Err(RepoError::Purged { version });
        }
        let what = format!("version {version}");
        if p.is_alive() {
            return Err(RepoError::CannotRestore {
                what,
                why: "its file is not deleted",
            });
        }
        if old.record.entry != entry || !has_content(&old.record.content) {
            return Err(RepoError::CannotRestore {
                what,
                why: "not a version with content",
            });
        }
        let draft = Draft {
            location: vec![at],
            attrs: old.record.attrs,
            content: old.record.content.clone(),
        };
        self.commit_outside_mount(vec![(entry, draft, Base::Shown)])
    }

    /// After a directory came back (`undelete`), brings back what was deleted
    /// beneath it together with it: the entries its deleting member deleted beneath
    /// it in one burst ending with the directory (each deletion at most `BURST_GAP`
    /// before the next; `rm -r` deletes the contents first), each with its last
    /// version that had content, under its old name, parents first. An entry whose
    /// name was taken since, whose directory stays deleted, or whose data gc purged
    /// is left as it is and counted as skipped.
    pub fn undelete_beneath(&self, dir: EntryId, dir_deleted: &VersionRecord) -> Result<UndeleteReport> {
        let mut found: Vec<(Hlc, EntryId, VersionId, Link)> = Vec::new();
        let mut queue = vec![dir];
        while let Some(d) = queue.pop() {
            for (name, entry) in self.store.list_gone(d)? {
                let link = Link { parent: d, name };
                let Some(st) = self.deleted_from(entry, &link)? else {
                    continue;
                };
                if st.record().author != dir_deleted.author {
                    continue;
                }
                let Some(last) = self.latest_version_where(entry, |r| has_content(&r.content))? else {
                    continue;
                };
                if last.record.content.is_dir() {
                    queue.push(entry);
                }
                found.push((st.record().hlc, entry, last.id, link));
            }
        }
        // Latest deletion first: a directory's own deletion follows its contents'.
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let gap = BURST_GAP.as_nanos() as u64;
        let mut edge = dir_deleted.hlc.wall_ns;
        let mut report = UndeleteReport::default();
        for (at, entry, last, link) in found {
            if at.wall_ns.saturating_add(gap) < edge {
                break;
            }
            edge = edge.min(at.wall_ns);
            if !self.get(link.parent)?.is_alive() || self.lookup(link.parent, &link.name)?.is_some() {
                report.skipped += 1;
                continue;
            }
            match self.undelete(entry, last, link) {
                Ok(_) => report.restored += 1,
                Err(
                    RepoError::Exists { .. }
                    | RepoError::Purged { .. }
                    | RepoError::CannotRestore { .. }
                    | RepoError::Store(StoreError::MissingChunk { .. }),
                ) => report.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Every version of an entry, oldest first.
    pub fn history(&self, entry: EntryId) -> Result<Vec<VersionInfo>> {
        self.store
            .entry_versions(entry)?
            .into_iter()
            .map(|(generation, v)| {
                Ok(VersionInfo {
                    generation,
                    record: self.record(v)?,
                })
            })
            .collect()
    }

    /// The most recent versions across the whole folder that `keep` accepts, newest
    /// first. Reads every record (the filter runs before the limit, so a narrow
    /// filter still finds `limit`) but holds only the `limit` newest so far: the
    /// GUI's log asks this of folders with millions of versions.
    pub fn recent(&self, limit: usize, keep: impl Fn(&SignedRecord) -> bool) -> Result<Vec<VersionInfo>> {
        // A min-heap of the newest `limit`: its top is the oldest of them.
        let mut newest = std::collections::BinaryHeap::new();
        self.store.for_each_version(|_, _, v| -> Result<()> {
            let r = self.record(v)?;
            if keep(&r) {
                newest.push(std::cmp::Reverse(Newest(r)));
                if newest.len() > limit {
                    newest.pop();
                }
            }
            Ok(())
        })?;
        // Ascending by Reverse is newest first.
        let all: Vec<SignedRecord> = newest
            .into_sorted_vec()
            .into_iter()
            .map(|std::cmp::Reverse(Newest(r))| r)
            .collect();
        all.into_iter()
            .map(|record| {
                let generation = self
                    .store
                    .entry_versions(record.record.entry)?
                    .into_iter()
                    .find(|(_, v)| *v == record.id)
                    .map(|(g, _)| g)
                    .unwrap_or(0);
                Ok(VersionInfo { generation, record })
            })
            .collect()
    }
}

/// Orders records by (hybrid clock, author, id): the order `Repo::recent` lists
/// them in (the id only breaks ties, so which record a limit keeps never depends on
/// the walk's order).
struct Newest(SignedRecord);

impl Newest {
    fn key(&self) -> (Hlc, NodeId, VersionId) {
        (self.0.record.hlc, self.0.record.author, self.0.id)
    }
}

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Newest {}

impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}
