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

mod cache;
mod writeback;

pub use writeback::{DirtyFile, PrechunkPlan};

use crate::chunking::{self, ChunkList, ChunkingError};
use crate::model::{
    names, Attrs, ChunkId, Content, EntryId, Hlc, Link, NodeId, RecordError, SignedRecord, Timestamp, VersionId,
    VersionRecord,
};
use crate::store::{DataDir, DataDirError, DirTime, EntryHeads, Store, StoreError};
use cache::Lru;
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use std::collections::HashMap;
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
    #[error("version v{generation} is ambiguous (several versions share it)")]
    Ambiguous { generation: u64 },
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
}

pub type Result<T> = std::result::Result<T, RepoError>;

/// What a new version of an entry should say; `commit` fills in the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub location: Vec<Link>,
    pub attrs: Attrs,
    pub content: Content,
}

/// Resolved state of one entry: its winning head and all heads.
#[derive(Clone, Debug)]
pub struct EntryState {
    pub id: EntryId,
    /// The head shown under the plain name.
    pub head: SignedRecord,
    /// All heads with their generations.
    pub heads: Vec<(VersionId, u64)>,
    /// Generation of `head` (its `@vN`).
    pub generation: u64,
}

impl EntryState {
    pub fn record(&self) -> &VersionRecord {
        &self.head.record
    }
    pub fn draft(&self) -> Draft {
        let r = &self.head.record;
        Draft {
            location: r.location.clone(),
            attrs: r.attrs,
            content: r.content.clone(),
        }
    }
    pub fn is_alive(&self) -> bool {
        !self.head.record.content.is_tombstone()
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
    /// Resolved entry states; invalidated by every commit touching the entry.
    entries: Mutex<HashMap<EntryId, Arc<EntryState>>>,
    /// Recently read chunks (verified), so sequential 4 KiB reads do not re-read and
    /// re-hash a 64 KiB chunk sixteen times.
    chunks: Mutex<Lru<ChunkId, Arc<Vec<u8>>>>,
    /// Recently loaded chunk lists by manifest root.
    manifests: Mutex<Lru<ChunkId, Arc<ChunkList>>>,
    /// Directory mtime events (cache of the `dir_times` index; None = none recorded).
    dir_times: Mutex<HashMap<EntryId, Option<DirTime>>>,
    /// Our records committed without a signature yet (signed by `sign_pending`).
    unsigned: Mutex<Vec<VersionId>>,
    /// Chunk read-ahead queue (see `start_prefetch`); unset in tools that only
    /// open the store.
    prefetch: std::sync::OnceLock<std::sync::mpsc::SyncSender<ChunkId>>,
}

/// Chunks read ahead of a sequential reader. Blob reads from RocksDB get no kernel
/// read-ahead (each is its own small pread), so without this a cold sequential read
/// waits for one 64 KiB disk read at a time.
const PREFETCH_CHUNKS: usize = 8;

const META_GROUP: &str = "group";
const META_HLC: &str = "hlc";

impl Repo {
    /// Opens the repository of an initialised data dir. The caller holds the data
    /// dir lock.
    pub fn open(data_dir: &DataDir) -> Result<Repo> {
        data_dir.check()?;
        let key = data_dir.load_key()?;
        let node = NodeId(key.verifying_key().to_bytes());
        let store = Store::open(&data_dir.db_path())?;
        std::fs::create_dir_all(data_dir.spill_dir())?;
        let group = match store.get_meta(META_GROUP)? {
            Some(g) => g,
            None => {
                let g: [u8; 32] = rand::random();
                store.put_meta(META_GROUP, &g)?;
                g.to_vec()
            }
        };
        let root = EntryId::root_of(&group);
        let next_seq = store.last_seq(node)? + 1;
        let hlc = match store.get_meta(META_HLC)? {
            Some(b) if b.len() == 12 => Hlc {
                wall_ns: u64::from_le_bytes(b[..8].try_into().expect("length checked")),
                counter: u32::from_le_bytes(b[8..].try_into().expect("length checked")),
            },
            _ => Hlc::default(),
        };
        let repo = Repo {
            store,
            data_dir: data_dir.clone(),
            key,
            node,
            root,
            commit_state: Mutex::new(CommitState { next_seq, hlc }),
            entries: Mutex::new(HashMap::new()),
            chunks: Mutex::new(Lru::new(64)),
            manifests: Mutex::new(Lru::new(16)),
            dir_times: Mutex::new(HashMap::new()),
            unsigned: Mutex::new(Vec::new()),
            prefetch: std::sync::OnceLock::new(),
        };
        repo.queue_unsigned_from_store()?;
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

    /// Makes every committed version durable against power loss.
    pub fn sync(&self) -> Result<()> {
        Ok(self.store.sync()?)
    }

    /// A stored record by id (a missing one is store corruption: ids come from indexes).
    pub fn record(&self, id: VersionId) -> Result<SignedRecord> {
        let bytes = self.store.get_record(id)?.ok_or_else(|| StoreError::CorruptValue {
            what: "versions",
            detail: format!("record {id} is referenced but missing"),
        })?;
        SignedRecord::decode(&bytes, false).map_err(|source| RepoError::Record { version: id, source })
    }

    /// State of an entry (alive or tombstoned); NotFound if it never existed.
    pub fn get(&self, entry: EntryId) -> Result<Arc<EntryState>> {
        if let Some(s) = self.entries.lock().get(&entry) {
            return Ok(s.clone());
        }
        let heads = self.store.get_heads(entry)?.ok_or(RepoError::NotFound { entry })?;
        let state = Arc::new(self.resolve(entry, heads)?);
        self.entries.lock().insert(entry, state.clone());
        Ok(state)
    }

    /// Picks the head shown under the plain name: the latest by (HLC, author).
    /// (Field-by-field merging of several heads is the conflicts work.)
    fn resolve(&self, entry: EntryId, heads: EntryHeads) -> Result<EntryState> {
        let mut best: Option<(SignedRecord, u64)> = None;
        for (v, g) in &heads.heads {
            let r = self.record(*v)?;
            let better = match &best {
                None => true,
                Some((b, _)) => (r.record.hlc, r.record.author) > (b.record.hlc, b.record.author),
            };
            if better {
                best = Some((r, *g));
            }
        }
        let (head, generation) = best.ok_or(RepoError::NotFound { entry })?;
        Ok(EntryState {
            id: entry,
            head,
            heads: heads.heads,
            generation,
        })
    }

    pub fn lookup(&self, parent: EntryId, name: &[u8]) -> Result<Option<EntryId>> {
        Ok(self.store.get_child(parent, name)?)
    }

    pub fn children(&self, parent: EntryId) -> Result<Vec<(Vec<u8>, EntryId)>> {
        Ok(self.store.list_children(parent)?)
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
        let mut parts = Vec::new();
        let mut cur = entry;
        while cur != self.root {
            let s = self.get(cur).ok()?;
            let l = s.record().location.first()?.clone();
            parts.push(String::from_utf8_lossy(&l.name).into_owned());
            cur = l.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// Commits new versions of several entries in one atomic batch (a rename over an
    /// existing file touches two). Entries not yet in the store are created. A draft
    /// equal to the current state is skipped. Returns the new states in order.
    pub fn commit(&self, changes: Vec<(EntryId, Draft)>) -> Result<Vec<Arc<EntryState>>> {
        let mut cs = self.commit_state.lock();
        let mut batch = self.store.batch();
        let mut removed_links: Vec<Link> = Vec::new();
        let mut added_links: Vec<(Link, EntryId)> = Vec::new();
        let mut out: Vec<Arc<EntryState>> = Vec::new();
        let mut seq = cs.next_seq;
        let mut hlc = cs.hlc;
        // Events that set a directory's displayed mtime (see `store::DirTime`).
        let mut dir_events: Vec<(EntryId, DirTime)> = Vec::new();
        for (entry, draft) in changes {
            // A second change to one entry in the same batch chains on the first.
            let pending = out.iter().rev().find(|s| s.id == entry).cloned();
            let prev = match pending.map(Ok).unwrap_or_else(|| self.get(entry)) {
                Ok(s) => Some(s),
                Err(RepoError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(p) = &prev {
                if p.draft() == draft && p.heads.len() == 1 {
                    out.push(p.clone());
                    continue;
                }
            }
            hlc = Hlc::tick(hlc, crate::model::hlc::now_ns());
            let (parents, parent_gens): (Vec<VersionId>, Vec<u64>) = prev
                .as_ref()
                .map(|p| p.heads.iter().copied().unzip())
                .unwrap_or_default();
            let stamp = |changed: bool, from: Option<VersionId>| if changed { None } else { from };
            let (content_from, location_from, attrs_from) = match &prev {
                None => (None, None, None),
                Some(p) => {
                    let r = p.record();
                    (
                        stamp(r.content != draft.content, Some(p.head.content_from())),
                        stamp(r.location != draft.location, Some(p.head.location_from())),
                        stamp(r.attrs != draft.attrs, Some(p.head.attrs_from())),
                    )
                }
            };
            let old_location = prev.as_ref().map(|p| p.record().location.clone()).unwrap_or_default();
            let name_event = DirTime {
                hlc,
                mtime: Timestamp::from_system(hlc.system_time()),
            };
            for l in &old_location {
                if !draft.location.contains(l) {
                    removed_links.push(l.clone());
                    dir_events.push((l.parent, name_event));
                }
            }
            for l in &draft.location {
                if !old_location.contains(l) {
                    added_links.push((l.clone(), entry));
                    dir_events.push((l.parent, name_event));
                }
            }
            if draft.content.is_dir() && attrs_from.is_none() {
                dir_events.push((
                    entry,
                    DirTime {
                        hlc,
                        mtime: draft.attrs.mtime,
                    },
                ));
            }
            let record = VersionRecord {
                entry,
                parents,
                author: self.node,
                seq,
                hlc,
                location: draft.location,
                attrs: draft.attrs,
                content: draft.content,
                content_from,
                location_from,
                attrs_from,
            };
            let signed = SignedRecord::unsigned(record);
            let generation = names::generation(parent_gens);
            batch.put_record(signed.id, self.node, seq, &signed.bytes);
            let heads = vec![(signed.id, generation)];
            batch.put_heads(entry, &EntryHeads { heads: heads.clone() });
            batch.put_entry_version(entry, generation, signed.id);
            seq += 1;
            out.push(Arc::new(EntryState {
                id: entry,
                head: signed,
                heads,
                generation,
            }));
        }
        // Names must be free unless this batch frees them.
        for (l, _) in &added_links {
            if self.store.get_child(l.parent, &l.name)?.is_some() && !removed_links.contains(l) {
                return Err(RepoError::Exists {
                    name: String::from_utf8_lossy(&l.name).into_owned(),
                });
            }
        }
        for l in &removed_links {
            batch.delete_child(l.parent, &l.name);
        }
        for (l, entry) in &added_links {
            batch.put_child(l.parent, &l.name, *entry);
        }
        let mut new_dir_times: Vec<(EntryId, DirTime)> = Vec::new();
        for (dir, ev) in dir_events {
            let cur = match new_dir_times.iter().find(|(d, _)| *d == dir) {
                Some((_, t)) => Some(*t),
                None => self.dir_time(dir)?,
            };
            if cur.map(|c| ev.hlc > c.hlc).unwrap_or(true) {
                new_dir_times.retain(|(d, _)| *d != dir);
                new_dir_times.push((dir, ev));
            }
        }
        for (dir, t) in &new_dir_times {
            batch.put_dir_time(*dir, t);
        }
        let mut hlc_bytes = hlc.wall_ns.to_le_bytes().to_vec();
        hlc_bytes.extend_from_slice(&hlc.counter.to_le_bytes());
        batch.put_meta(META_HLC, &hlc_bytes);
        self.store.write(batch)?;
        cs.next_seq = seq;
        cs.hlc = hlc;
        let mut cache = self.entries.lock();
        for s in &out {
            cache.insert(s.id, s.clone());
        }
        drop(cache);
        let mut dt = self.dir_times.lock();
        for (dir, t) in new_dir_times {
            dt.insert(dir, Some(t));
        }
        drop(dt);
        self.unsigned.lock().extend(
            out.iter()
                .filter(|s| !SignedRecord::is_signed(&s.head.bytes))
                .map(|s| s.head.id),
        );
        Ok(out)
    }

    /// The latest event that set a directory's mtime (a name change in it or its own
    /// utimens), if any since it was created.
    pub fn dir_time(&self, dir: EntryId) -> Result<Option<DirTime>> {
        if let Some(t) = self.dir_times.lock().get(&dir) {
            return Ok(*t);
        }
        let t = self.store.get_dir_time(dir)?;
        self.dir_times.lock().insert(dir, t);
        Ok(t)
    }

    /// Signs the records committed unsigned (see `SignedRecord::unsigned`). Run in the
    /// background and before shutdown; idempotent.
    pub fn sign_pending(&self) -> Result<usize> {
        let ids: Vec<VersionId> = std::mem::take(&mut *self.unsigned.lock());
        if ids.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        let mut n = 0;
        for id in &ids {
            let Some(bytes) = self.store.get_record(*id)? else {
                continue;
            };
            if SignedRecord::is_signed(&bytes) {
                continue;
            }
            let signed = SignedRecord::signed_bytes(&bytes, &self.key)
                .map_err(|source| RepoError::Record { version: *id, source })?;
            batch.replace_record(*id, &signed);
            n += 1;
        }
        if let Err(e) = self.store.write(batch) {
            self.unsigned.lock().extend(ids); // retry later
            return Err(e.into());
        }
        Ok(n)
    }

    /// Finds records left unsigned by an earlier run that stopped before signing them.
    fn queue_unsigned_from_store(&self) -> Result<()> {
        let mut q = Vec::new();
        for (author, _, v) in self.store.all_versions_by_author()? {
            if author == self.node {
                if let Some(b) = self.store.get_record(v)? {
                    if !SignedRecord::is_signed(&b) {
                        q.push(v);
                    }
                }
            }
        }
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
        let end = (idx + 1 + PREFETCH_CHUNKS).min(list.refs().len());
        for r in &list.refs()[(idx + 1).min(end)..end] {
            if self.chunks.lock().contains(&r.id) {
                continue;
            }
            if tx.try_send(r.id).is_err() {
                break; // queue full: the workers are busy enough
            }
        }
    }

    /// Reads a chunk (verified against its hash; cached).
    pub fn chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.chunks.lock().get(&id) {
            return Ok(c.clone());
        }
        let data = Arc::new(self.store.get_chunk(id)?);
        self.chunks.lock().put(id, data.clone());
        Ok(data)
    }

    /// The chunk list behind a manifest root (cached).
    pub fn chunk_list(&self, manifest: Option<ChunkId>) -> Result<Arc<ChunkList>> {
        let Some(root) = manifest else {
            return Ok(Arc::new(ChunkList::default()));
        };
        if let Some(l) = self.manifests.lock().get(&root) {
            return Ok(l.clone());
        }
        let list = Arc::new(chunking::load_manifest(Some(root), |id| {
            self.store.get_chunk(id).map_err(RepoError::from)
        })?);
        self.manifests.lock().put(root, list.clone());
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

    /// Version `generation` of an entry. Errors if several versions share it.
    pub fn version_by_generation(&self, entry: EntryId, generation: u64) -> Result<Option<SignedRecord>> {
        let matches: Vec<VersionId> = self
            .store
            .entry_versions(entry)?
            .into_iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v)
            .collect();
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(self.record(*one)?)),
            _ => Err(RepoError::Ambiguous { generation }),
        }
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

    /// The most recent versions across the whole folder, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<VersionInfo>> {
        let mut all = Vec::new();
        for (_, _, v) in self.store.all_versions_by_author()? {
            all.push(self.record(v)?);
        }
        all.sort_by_key(|r| std::cmp::Reverse((r.record.hlc, r.record.author)));
        all.truncate(limit);
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
