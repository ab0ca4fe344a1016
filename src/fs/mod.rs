//! The FUSE filesystem: the `fuser::Filesystem` impl, inode table, open handles and
//! write-back state, and the only place a domain error becomes an errno.
//!
//! Uses: `repo` only — never the network.
//!
//! Commit points (DESIGN.md): a written file becomes a new version on flush, fsync or
//! release, and after `idle_commit` without writes while it stays open. Metadata
//! operations (chmod, rename, mkdir, ...) commit at once. A file unlinked while open
//! stays deleted: commits from its handles are skipped once its head is a tombstone.
//!
//! Locking: `dirty` map lock → one file's `DirtyEntry` lock → `Inner::commit` →
//! `Inner::fresh` → the repo's commit lock; never in the other order, and never the
//! map lock across I/O. Nothing that holds `Inner::commit` takes a `DirtyEntry` lock
//! or the `dirty` map.

pub mod busy_poll;
mod inodes;
mod write_behind;

use crate::chunking::ChunkList;
use crate::model::{names, Attrs, Content, EntryId, Hlc, Link, SignedRecord, SpecialKind, Timestamp, VersionId};
use crate::repo::cache::{EntryCache, CACHED_SUBDIR_COUNTS};
use crate::repo::{Base, DirtyFile, Draft, EntryState, Repo, RepoError};
use crate::store::StoreError;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use inodes::{ContentKey, InodeTable, Target, ROOT_INO};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use write_behind::WriteBehind;

/// Tunables of a mount.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Commit a file kept open after this long without writes.
    pub idle_commit: Duration,
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            idle_commit: Duration::from_secs(2),
            ttl: Duration::from_secs(1),
        }
    }
}

type FsResult<T> = Result<T, Errno>;

/// The changes one setattr request asks for.
#[derive(Default)]
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    fh: Option<FileHandle>,
}

/// Maps a domain error to the errno the caller sees (the one place this happens).
fn errno(e: RepoError) -> Errno {
    match e {
        RepoError::NotFound { .. } | RepoError::NotConflict { .. } | RepoError::CannotRestore { .. } => Errno::ENOENT,
        RepoError::Exists { .. } => Errno::EEXIST,
        RepoError::NotEmpty => Errno::ENOTEMPTY,
        RepoError::NotDir => Errno::ENOTDIR,
        RepoError::IsDir => Errno::EISDIR,
        RepoError::Cycle => Errno::EINVAL,
        RepoError::Purged { .. } => Errno::ENODATA,
        RepoError::Store(StoreError::NoSpace(_)) => Errno::ENOSPC,
        RepoError::Spill(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => Errno::ENOSPC,
        other => {
            tracing::error!(error = %other, "I/O error");
            Errno::EIO
        }
    }
}

/// `file->f_flags` bit of an open made by execve(2) (`__FMODE_EXEC` in the kernel;
/// FUSE passes it on in OPEN's flags, libc has no name for it).
const FMODE_EXEC: i32 = 0x20;

/// How long the names of a file that lost one of several names are handed to the
/// kernel uncached.
///
/// After a successful unlink (or rename over a target) the kernel lowers the
/// inode's link count itself, in the unlinking process once it wakes up from our
/// reply. A listing or lookup by another process that read the count after our
/// commit and lands before that decrement makes the kernel count one link too few:
/// a file left with one name shows none, and link(2) to it fails with ENOENT in the
/// kernel without asking us (`tests/fs_ops.rs::a_file_that_lost_one_of_its_names_can_be_linked_at_once`).
/// While the names the file keeps are uncached, the next path walk to one of them
/// looks it up again and brings the true count. A wake-up takes far less than this.
/// A stat(2) racing the same way is not covered (its reply sets no name timeout):
/// the count stays short until the name's cache time (`FsOptions::ttl`) runs out.
const UNLINK_SETTLE: Duration = Duration::from_secs(2);

fn e<T>(r: Result<T, RepoError>) -> FsResult<T> {
    r.map_err(errno)
}

struct DirtyEntry {
    file: DirtyFile,
    /// Set when a peer's version of this entry lands while this state exists: the
    /// head the writer was working from. The next commit forks from it, so the
    /// peer's version and ours both stay heads (see `Repo::commit_based`).
    fork_from: Option<VersionId>,
    last_write: Instant,
    /// When the pending data last changed: the file's ctime until it is committed
    /// (write, truncate and fallocate change ctime at once, as on ext4).
    changed: SystemTime,
    /// Taken out of `Inner::dirty` (see `retire_dirty`): changes made here would be
    /// seen by no commit, so a writer holding it fetches a fresh state instead.
    retired: bool,
    /// A change from outside the mount (a peer's version, a restore) landed while
    /// a writer kept this state (see `drop_superseded_state`): it goes once no
    /// handle that may write is left and nothing is pending.
    superseded: bool,
}

impl DirtyEntry {
    fn touch(&mut self) {
        self.last_write = Instant::now();
        self.changed = SystemTime::now();
    }
}

enum HandleKind {
    /// A file handle; `snapshot` is the content it opened (what it reads while the
    /// file has no uncommitted writes).
    File {
        snapshot: Arc<ChunkList>,
        size: u64,
        /// The committed content `snapshot` is, if the file had no unwritten
        /// changes at open (see `inodes::PageCache`).
        content: Option<ContentKey>,
        writable: bool,
        /// Opened by execve(2): the file is a running program's text.
        exec: bool,
        /// Bypasses the page cache (see `DistriboxFs::direct_write_handle`).
        direct: bool,
        /// This handle's sequential writes through the page cache.
        behind: WriteBehind,
    },
    Dir {
        listing: Vec<(Vec<u8>, u64, FileType)>,
    },
}

struct Handle {
    ino: u64,
    kind: HandleKind,
}

/// Work for the kernel after a write, done by a thread of the invalidator (see
/// `DistriboxFs::spawn_invalidator`).
enum AfterWrite {
    /// Answered once the written range is dropped from the kernel's pages.
    Answer(WrittenRange),
    /// Pages a sequential writer is done with (`write_behind`).
    DropPages { ino: u64, offset: u64, len: u64 },
}

/// What a write did, for `DistriboxFs::write`.
struct Written {
    len: u32,
    /// Other handles may have the range cached (see `answer_write`).
    others_cached: bool,
    /// (offset, len) of pages the handle is done with.
    drop_pages: Option<(u64, u64)>,
}

/// A direct write that other handles' cached pages may not show yet: answered once
/// the invalidator has dropped them (see `DistriboxFs::answer_write`).
struct WrittenRange {
    ino: u64,
    offset: u64,
    written: u32,
    reply: ReplyWrite,
}

/// A file handle just opened, and what the open replies to the kernel.
struct OpenedHandle {
    fh: u64,
    fopen: FopenFlags,
}

/// A regular file created here that has no version yet: its first one is made at
/// its first commit point (close, fsync, idle), with whatever was written by then,
/// so `create + write + close` is one version (one record to store, sign and send)
/// instead of an empty one followed by the content. Until then the entry exists
/// only here; anything but lookups, attributes, reads and writes of it first
/// commits it as the empty file it is (`settle`).
struct NewFile {
    link: Link,
    attrs: Attrs,
    /// Its create's clock reading: its ctime, and what its first version carries
    /// if nothing was written (`Base::Reserved`).
    created: Hlc,
    since: Instant,
}

/// What a new file holds before its first write.
const EMPTY_FILE: Content = Content::File {
    size: 0,
    manifest: None,
};

/// The new file holding `name` in `dir`, if any.
fn fresh_named_in(fresh: &HashMap<EntryId, NewFile>, dir: EntryId, name: &[u8]) -> Option<EntryId> {
    fresh
        .iter()
        .find(|(_, f)| f.link.parent == dir && f.link.name == name)
        .map(|(id, _)| *id)
}

impl NewFile {
    fn draft(&self) -> Draft {
        Draft {
            location: vec![self.link.clone()],
            attrs: self.attrs,
            content: EMPTY_FILE,
        }
    }
}

/// setgid directories pass their group on, and to subdirectories the bit too, as
/// on ext4.
fn inherit_group(dir: &EntryState, mut attrs: Attrs, is_dir: bool) -> Attrs {
    if dir.record().attrs.mode & 0o2000 != 0 {
        attrs.gid = dir.record().attrs.gid;
        if is_dir {
            attrs.mode |= 0o2000;
        }
    }
    attrs
}

struct Inner {
    repo: Arc<Repo>,
    opts: FsOptions,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    dirty: Mutex<HashMap<EntryId, Arc<Mutex<DirtyEntry>>>>,
    /// Files created here that have no version yet (see `NewFile`). Held while one
    /// of them is committed, so a lookup never finds it in neither place.
    fresh: Mutex<HashMap<EntryId, NewFile>>,
    /// The last name a lookup found free, with the repo's epoch from before it
    /// looked: the create that follows the kernel's lookup need not look again.
    last_miss: Mutex<Option<(EntryId, Vec<u8>, u64)>>,
    /// Open file handles per entry, so write-back state is dropped with the last one.
    open_count: Mutex<HashMap<EntryId, u32>>,
    /// Handles per entry opened by execve(2) (see `open_handle`).
    exec_count: Mutex<HashMap<EntryId, u32>>,
    /// Cached subdirectory counts (for a directory's nlink; bounded).
    subdirs: Mutex<EntryCache<u32>>,
    /// Files that just lost one of several names, and when (see `UNLINK_SETTLE`).
    lost_name: Mutex<HashMap<EntryId, Instant>>,
    /// Run first when the FUSE session ends (see `on_session_end`).
    session_end: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Write-only handles may bypass the page cache (see `direct_write_handle`).
    direct_writes: AtomicBool,
    /// Ranges that direct writes changed while other handles had the file open,
    /// and pages sequential writers are done with, for the invalidator (see
    /// `spawn_invalidator`).
    after_writes: Mutex<Option<std::sync::mpsc::Sender<AfterWrite>>>,
    stop: AtomicBool,
    /// The entry a background chunking pass is running for (see `start_prechunk`),
    /// and the signal that it finished.
    prechunk: Mutex<Option<EntryId>>,
    prechunk_done: parking_lot::Condvar,
    /// Held from reading an entry's state to committing the draft made from it, so
    /// two operations on one entry cannot both start from the same state and the
    /// later commit undo the earlier one (an unlink during a large file's close).
    commit: Mutex<()>,
    /// Requests counted for the busy-poll governor, once it runs (see `busy_poll`).
    busy: std::sync::OnceLock<Arc<busy_poll::Activity>>,
}

/// The mounted filesystem. Cloning shares the same state (the idle-commit thread
/// holds a clone).
#[derive(Clone)]
pub struct DistriboxFs {
    inner: Arc<Inner>,
}

fn file_type(content: &Content) -> FileType {
    match content {
        Content::File { .. } | Content::Tombstone | Content::Purge { .. } => FileType::RegularFile,
        Content::Dir => FileType::Directory,
        Content::Symlink { .. } => FileType::Symlink,
        Content::Special { kind, .. } => match kind {
            SpecialKind::Fifo => FileType::NamedPipe,
            SpecialKind::Socket => FileType::Socket,
            SpecialKind::CharDevice => FileType::CharDevice,
            SpecialKind::BlockDevice => FileType::BlockDevice,
        },
    }
}

fn time_of(t: Option<TimeOrNow>) -> Option<Timestamp> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(s) => Timestamp::from_system(s),
        TimeOrNow::Now => Timestamp::now(),
    })
}

fn name_bytes(name: &OsStr) -> FsResult<Vec<u8>> {
    let b = name.as_bytes();
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(b.to_vec())
}

impl DistriboxFs {
    pub fn new(repo: Arc<Repo>, opts: FsOptions) -> Self {
        let root = repo.root();
        DistriboxFs {
            inner: Arc::new(Inner {
                repo,
                opts,
                inodes: Mutex::new(InodeTable::new(root)),
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                dirty: Mutex::new(HashMap::new()),
                fresh: Mutex::new(HashMap::new()),
                last_miss: Mutex::new(None),
                open_count: Mutex::new(HashMap::new()),
                exec_count: Mutex::new(HashMap::new()),
                subdirs: Mutex::new(EntryCache::new(CACHED_SUBDIR_COUNTS)),
                lost_name: Mutex::new(HashMap::new()),
                session_end: Mutex::new(None),
                direct_writes: AtomicBool::new(false),
                busy: std::sync::OnceLock::new(),
                after_writes: Mutex::new(None),
                stop: AtomicBool::new(false),
                prechunk: Mutex::new(None),
                prechunk_done: parking_lot::Condvar::new(),
                commit: Mutex::new(()),
            }),
        }
    }

    /// What to do as soon as the FUSE session ends, before pending writes are
    /// committed: the daemon releases fuser's mount handle here. fuser 0.18 unmounts
    /// the mount point again when that handle is dropped, even after the kernel has
    /// unmounted it (its `is_mounted` check reads the dead connection's POLLERR as
    /// "mounted"; fixed upstream in cberner/fuser#703, not released): a warning in
    /// every node's log, and an `umount` of whatever was mounted there since. Done
    /// here, that second unmount comes right after the first instead of after the
    /// commits, and its error is ours to ignore.
    pub fn on_session_end(&self, f: impl FnOnce() + Send + 'static) {
        *self.inner.session_end.lock() = Some(Box::new(f));
    }

    /// Starts the busy-poll governor for `dev` (a duplicate of one FUSE thread's
    /// descriptor): that thread polls during bursts of requests, until a `window`
    /// with fewer than two (see `busy_poll`). The governor stops when the returned
    /// guard drops.
    pub fn start_busy_poll(&self, dev: std::os::fd::OwnedFd, window: Duration) -> std::io::Result<busy_poll::BusyPoll> {
        let poll = busy_poll::BusyPoll::start(dev, window)?;
        let _ = self.inner.busy.set(poll.activity());
        Ok(poll)
    }

    fn note(&self) {
        if let Some(b) = self.inner.busy.get() {
            b.note();
        }
    }

    /// Starts the thread that commits files kept open without writes.
    pub fn spawn_idle_committer(&self) -> std::thread::JoinHandle<()> {
        let fs = self.clone();
        std::thread::Builder::new()
            .name("idle-commit".into())
            .spawn(move || {
                let tick = (fs.inner.opts.idle_commit / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
                while !fs.inner.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    fs.commit_idle();
                }
            })
            .expect("spawning a thread at startup")
    }

    /// Cuts and stores the chunks of a file being written from scratch on another
    /// thread while the writer keeps writing, so close/fsync only chunk the tail.
    /// One pass at a time; a write arriving meanwhile simply plans the next one.
    /// Returns false if the pass did not start (another one is running).
    fn start_prechunk(&self, entry: EntryId, d: Arc<Mutex<DirtyEntry>>, plan: crate::repo::PrechunkPlan) -> bool {
        {
            let mut running = self.inner.prechunk.lock();
            if running.is_some() {
                return false;
            }
            *running = Some(entry);
        }
        let fs = self.clone();
        let spawned = std::thread::Builder::new().name("prechunk".into()).spawn(move || {
            match plan.run(fs.repo()) {
                Ok(done) => {
                    let ids = done.chunk_ids();
                    if d.lock().file.prechunk_apply(done) {
                        fs.repo().staged(ids);
                    }
                }
                Err(err) => {
                    tracing::debug!(entry = %entry, error = %err, "background chunking failed; commit will redo it");
                    d.lock().file.prechunk_failed();
                }
            }
            fs.prechunk_finished();
        });
        if spawned.is_err() {
            self.prechunk_finished();
            return false;
        }
        true
    }

    fn prechunk_finished(&self) {
        *self.inner.prechunk.lock() = None;
        self.inner.prechunk_done.notify_all();
    }

    /// Waits until no background pass runs for `entry`: a commit that started
    /// while one did would chunk the same bytes again and throw the pass away.
    fn await_prechunk(&self, entry: EntryId) {
        let mut running = self.inner.prechunk.lock();
        while *running == Some(entry) {
            self.inner.prechunk_done.wait(&mut running);
        }
    }

    /// Holds a writer whose file keeps more unchunked data in memory than allowed
    /// until a background pass has chunked some of it: writing then goes at the
    /// speed of chunking, and close/fsync find little left to chunk.
    fn relieve_tail(&self, entry: EntryId, d: &Arc<Mutex<DirtyEntry>>) -> FsResult<()> {
        use crate::repo::TailPressure;
        let mut retries = 0;
        loop {
            let plan = {
                let mut g = d.lock();
                match g.file.tail_pressure() {
                    TailPressure::None => return Ok(()),
                    TailPressure::Stuck => return e(g.file.tail_to_spill()),
                    TailPressure::Wait => g.file.prechunk_plan(),
                }
            };
            let had_plan = plan.is_some();
            if plan.is_some_and(|p| self.start_prechunk(entry, d.clone(), p)) {
                continue;
            }
            let mut running = self.inner.prechunk.lock();
            if running.is_some() {
                let _ = self
                    .inner
                    .prechunk_done
                    .wait_for(&mut running, Duration::from_millis(100));
            } else if had_plan && retries < 3 {
                // The pass that kept ours from starting ended just now: start ours.
                retries += 1;
            } else {
                // No pass runs and none could start (none due, or no thread for
                // one): nothing would ever shrink it.
                drop(running);
                return e(d.lock().file.tail_to_spill());
            }
        }
    }

    fn commit_idle(&self) {
        let candidates: Vec<(EntryId, Arc<Mutex<DirtyEntry>>)> =
            self.inner.dirty.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (entry, d) in candidates {
            let due = {
                let g = d.lock();
                g.file.is_dirty() && g.last_write.elapsed() >= self.inner.opts.idle_commit
            };
            if due {
                if let Err(err) = self.commit_entry(entry, |_| {}) {
                    tracing::warn!(entry = %entry, error = ?err, "idle commit failed; will retry");
                }
            }
        }
        // New files kept open without writes get their (empty) first version too;
        // those being written wait for their writes to go idle, above.
        let idle = self.inner.opts.idle_commit;
        let old: Vec<EntryId> = self
            .inner
            .fresh
            .lock()
            .iter()
            .filter(|(_, f)| f.since.elapsed() >= idle)
            .map(|(id, _)| *id)
            .collect();
        if !old.is_empty() {
            // States locked outside the map (see `commit_pending_entry`).
            let states: Vec<(EntryId, Option<Arc<Mutex<DirtyEntry>>>)> = {
                let dirty = self.inner.dirty.lock();
                old.into_iter().map(|id| (id, dirty.get(&id).cloned())).collect()
            };
            let unwritten: Vec<EntryId> = states
                .into_iter()
                .filter(|(_, d)| d.as_ref().is_none_or(|d| !d.lock().file.is_dirty()))
                .map(|(id, _)| id)
                .collect();
            if let Err(err) = self.settle(|id, _| unwritten.contains(&id)) {
                tracing::warn!(error = ?err, "idle commit of new files failed; will retry");
            }
        }
    }

    /// Inode numbers the mount maps now: those the kernel holds, those open, and
    /// recently listed ones (see `inodes`).
    pub fn inodes_known(&self) -> usize {
        self.inner.inodes.lock().len()
    }

    /// Commits every pending write and syncs the store (unmount, shutdown).
    pub fn flush_all(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        let entries: Vec<EntryId> = self.inner.dirty.lock().keys().copied().collect();
        for entry in entries {
            if let Err(err) = self.commit_entry(entry, |_| {}) {
                tracing::error!(entry = %entry, error = ?err, "commit at unmount failed");
            }
        }
        if let Err(err) = self.settle(|_, _| true) {
            tracing::error!(error = ?err, "commit of new files at unmount failed");
        }
        if let Err(err) = self.inner.repo.sync() {
            tracing::error!(error = %err, "sync at unmount failed");
        }
    }

    /// Runs `f` with no write able to start meanwhile; `f` learns whether no file
    /// has unwritten changes (an entry busy committing counts as unwritten).
    pub fn while_no_writes<R>(&self, f: impl FnOnce(bool) -> R) -> R {
        // Every write-back state stays locked while `f` runs: a writer that fetched
        // one before we took the map must not write (and store chunks) meanwhile.
        let dirty = self.inner.dirty.lock();
        let mut guards = Vec::with_capacity(dirty.len());
        let mut idle = true;
        for d in dirty.values() {
            match d.try_lock() {
                Some(g) => {
                    idle &= !g.file.is_dirty();
                    guards.push(g);
                }
                None => idle = false,
            }
        }
        let r = f(idle);
        drop(guards);
        r
    }

    fn repo(&self) -> &Repo {
        &self.inner.repo
    }

    fn target(&self, ino: INodeNo) -> FsResult<Target> {
        self.inner.inodes.lock().get(ino.0).ok_or(Errno::ENOENT)
    }

    fn entry_of(&self, ino: INodeNo) -> FsResult<EntryId> {
        match self.target(ino)? {
            Target::Entry(e) => Ok(e),
            Target::Version(..) => Err(Errno::EROFS),
        }
    }

    fn live(&self, entry: EntryId) -> FsResult<Arc<EntryState>> {
        let s = e(self.repo().get(entry))?;
        if s.is_alive() {
            Ok(s)
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn dir(&self, ino: INodeNo) -> FsResult<(EntryId, Arc<EntryState>)> {
        let entry = self.entry_of(ino)?;
        let s = self.live(entry)?;
        if !s.record().content.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok((entry, s))
    }

    fn subdir_count(&self, dir: EntryId) -> FsResult<u32> {
        // Not cached if a change in `dir` is noted meanwhile (`forget_subdirs`).
        EntryCache::get_or_load(&self.inner.subdirs, dir, || {
            let mut n = 0;
            for (_, child) in e(self.repo().children(dir))? {
                if e(self.repo().get(child))?.record().content.is_dir() {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Drops the kernel's cached pages, attributes and names of entries changed by
    /// peers or by the CLI and the API (a restore), from a thread of its own: a
    /// notification sent from inside a FUSE callback, or while holding a lock a
    /// callback needs, deadlocks. Handles opened before keep reading the content
    /// they opened (their snapshot). A second thread drops the page ranges that
    /// direct writes changed while other handles had the file open, then answers
    /// those writes (`answer_write`), and drops the pages sequential writers are
    /// done with (`write_behind`).
    pub fn spawn_invalidator(
        &self,
        notifier: fuser::Notifier,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<crate::repo::ChangeBatch>,
    ) -> std::thread::JoinHandle<()> {
        let (tx, after_writes) = std::sync::mpsc::channel::<AfterWrite>();
        *self.inner.after_writes.lock() = Some(tx);
        let writes = notifier.clone();
        std::thread::Builder::new()
            .name("invalidate-writes".into())
            .spawn(move || {
                // ENOENT just means the kernel had nothing cached.
                for w in after_writes {
                    match w {
                        AfterWrite::Answer(w) => {
                            let _ = writes.inval_inode(INodeNo(w.ino), w.offset as i64, i64::from(w.written));
                            w.reply.written(w.written);
                        }
                        AfterWrite::DropPages { ino, offset, len } => {
                            let _ = writes.inval_inode(INodeNo(ino), offset as i64, len as i64);
                        }
                    }
                }
            })
            .expect("spawning a thread at startup");
        let fs = self.clone();
        // Tests slow it down to show that a restore waits for it.
        let delay = std::env::var("DISTRIBOX_TEST_INVALIDATE_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        self.repo().watch_kernel(true);
        std::thread::Builder::new()
            .name("invalidate".into())
            .spawn(move || {
                // However the thread ends (a panic too), restores stop waiting for it.
                struct Unwatch(Arc<Repo>);
                impl Drop for Unwatch {
                    fn drop(&mut self) {
                        self.0.watch_kernel(false);
                    }
                }
                let _unwatch = Unwatch(fs.inner.repo.clone());
                while let Some(batch) = changes.blocking_recv() {
                    if let Some(d) = delay {
                        std::thread::sleep(d);
                    }
                    if !batch.kernel_knows {
                        for c in &batch.changes {
                            fs.invalidate(&notifier, c, batch.remote);
                        }
                    }
                    fs.repo().kernel_saw(batch.seq);
                }
            })
            .expect("spawning a thread at startup")
    }

    fn invalidate(&self, notifier: &fuser::Notifier, c: &crate::repo::Change, remote: bool) {
        self.drop_superseded_state(c.entry);
        let dirty = self.inner.dirty.lock().get(&c.entry).cloned();
        if let (Some(d), true) = (dirty, remote) {
            let mut g = d.lock();
            if g.fork_from.is_none() {
                g.fork_from = c.head_before;
            }
        }
        let ino = self.inner.inodes.lock().known_ino(c.entry);
        if let Some(ino) = ino {
            // ENOENT just means the kernel had nothing cached.
            let _ = notifier.inval_inode(INodeNo(ino), 0, -1);
        }
        let mut parents = Vec::new();
        for l in &c.links {
            parents.push(l.parent);
            let p = self.inner.inodes.lock().known_ino(l.parent);
            if let Some(p) = p {
                let _ = notifier.inval_entry(INodeNo(p), OsStr::from_bytes(&l.name));
                let _ = notifier.inval_inode(INodeNo(p), 0, -1);
            }
        }
        self.forget_subdirs(&parents);
    }

    fn forget_subdirs(&self, dirs: &[EntryId]) {
        self.inner.subdirs.lock().forget(dirs);
    }

    fn attr_from(
        &self,
        ino: u64,
        record: (&Attrs, &Content),
        ctime: SystemTime,
        nlink: u32,
        size_override: Option<(u64, Timestamp)>,
    ) -> FileAttr {
        let (attrs, content) = record;
        let (size, mtime) = size_override.unwrap_or((content.size(), attrs.mtime));
        let rdev = match content {
            Content::Special { rdev, .. } => *rdev as u32,
            _ => 0,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: attrs.atime.to_system(),
            mtime: mtime.to_system(),
            ctime,
            crtime: ctime,
            kind: file_type(content),
            perm: (attrs.mode & 0o7777) as u16,
            nlink,
            uid: attrs.uid,
            gid: attrs.gid,
            rdev,
            blksize: 65536,
            flags: 0,
        }
    }

    /// Size and mtime of an entry's pending writes, and when they last changed.
    fn dirty_size(&self, entry: EntryId) -> Option<((u64, Timestamp), SystemTime)> {
        let d = self.inner.dirty.lock().get(&entry).cloned()?;
        let g = d.lock();
        Some(((g.file.size, g.file.mtime), g.changed))
    }

    /// Attributes of a live or open-but-deleted entry, as they are now.
    ///
    /// Pending writes are looked at before the committed state, never after: a
    /// close commits them and then drops them, so whichever moment this runs at, one
    /// of the two holds the latest content. Read the other way round, a getattr
    /// racing with the release that commits could see neither (pjdfstest's
    /// open_trunc saw the times from before `open(O_TRUNC)` now and then).
    fn entry_attr(&self, ino: u64, entry: EntryId) -> FsResult<FileAttr> {
        let dirty = self.dirty_size(entry);
        if let Some((attrs, created)) = self.fresh_attrs(entry) {
            let created = created.system_time();
            let ctime = dirty.map_or(created, |(_, c)| created.max(c));
            return Ok(self.attr_from(ino, (&attrs, &EMPTY_FILE), ctime, 1, dirty.map(|(o, _)| o)));
        }
        let state = e(self.repo().get(entry))?;
        let ctime = state.record().hlc.system_time();
        if !state.is_alive() {
            // Deleted but still open: show the last live version with no links.
            let prev = match state.record().parents.first() {
                Some(p) => Some(e(self.repo().record(*p))?),
                None => None,
            };
            let rec = prev.map(|p| p.record).unwrap_or_else(|| state.record().clone());
            let ctime = dirty.map_or(ctime, |(_, c)| ctime.max(c));
            return Ok(self.attr_from(ino, (&rec.attrs, &rec.content), ctime, 0, dirty.map(|(o, _)| o)));
        }
        let rec = state.record();
        let nlink = match rec.content {
            Content::Dir => 2 + self.subdir_count(state.id)?,
            _ => rec.location.len().max(1) as u32,
        };
        let mut ctime = ctime;
        let over = match rec.content {
            Content::File { .. } => dirty.map(|(o, changed)| {
                ctime = ctime.max(changed);
                o
            }),
            // A directory's times follow the names in it without a version of their
            // own: the latest name change or utimens wins (repo::dir_time).
            Content::Dir => {
                // New files in it count from their create (their versions carry
                // that time, see `NewFile::created`).
                let fresh = self
                    .inner
                    .fresh
                    .lock()
                    .values()
                    .filter(|f| f.link.parent == state.id)
                    .map(|f| (f.created, Timestamp::from_system(f.created.system_time())))
                    .max_by_key(|(h, _)| *h);
                let repo_t = e(self.repo().dir_time(state.id))?.map(|t| (t.hlc, t.mtime));
                // On a tie the stored time wins (`max_by_key` keeps the last).
                let latest = fresh.into_iter().chain(repo_t).max_by_key(|(h, _)| *h);
                latest.map(|(h, mtime)| {
                    ctime = ctime.max(h.system_time());
                    (0, mtime)
                })
            }
            _ => None,
        };
        Ok(self.attr_from(ino, (&rec.attrs, &rec.content), ctime, nlink, over))
    }

    fn version_attr(&self, ino: u64, record: &SignedRecord) -> FileAttr {
        let r = &record.record;
        let mut a = self.attr_from(ino, (&r.attrs, &r.content), r.hlc.system_time(), 1, None);
        a.perm &= !0o222;
        a
    }

    fn attr(&self, ino: INodeNo) -> FsResult<FileAttr> {
        match self.target(ino)? {
            Target::Entry(entry) => self.entry_attr(ino.0, entry),
            Target::Version(_, v) => {
                let r = e(self.repo().record(v))?;
                Ok(self.version_attr(ino.0, &r))
            }
        }
    }

    /// How long the kernel may cache a name. `name@vN` is never cached: which entry
    /// `name` is can change (a rename, a peer's version) and the kernel would go on
    /// showing the old entry's version under it.
    ///
    /// Nor, for a while, are the names of a file that just lost another of its
    /// names (see `UNLINK_SETTLE`).
    fn ttl_of(&self, ino: INodeNo) -> Duration {
        let target = self.inner.inodes.lock().get(ino.0);
        match target {
            Some(Target::Version(..)) => Duration::ZERO,
            Some(Target::Entry(entry)) if self.lost_name_lately(entry) => Duration::ZERO,
            _ => self.inner.opts.ttl,
        }
    }

    /// Called before committing the removal of one of the names of `s` (unlink,
    /// or a rename over it); only a file that keeps others is noted.
    fn note_lost_name(&self, s: &EntryState) {
        if s.record().content.is_dir() || s.record().location.len() < 2 {
            return;
        }
        let (entry, now) = (s.id, Instant::now());
        let mut m = self.inner.lost_name.lock();
        m.retain(|_, at| now.duration_since(*at) < UNLINK_SETTLE);
        m.insert(entry, now);
    }

    fn lost_name_lately(&self, entry: EntryId) -> bool {
        let m = self.inner.lost_name.lock();
        m.get(&entry).is_some_and(|at| at.elapsed() < UNLINK_SETTLE)
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        let (dir, _) = self.dir(parent)?;
        let name = name_bytes(name)?;
        let epoch = self.repo().epoch();
        let Some(target) = self.child_target(dir, &name)? else {
            *self.inner.last_miss.lock() = Some((dir, name, epoch));
            return Err(Errno::ENOENT);
        };
        match target {
            Target::Entry(child) => {
                if !self.is_fresh(child) {
                    self.live(child)?;
                }
                self.hand_out(target, |ino| self.entry_attr(ino, child))
            }
            Target::Version(_, v) => {
                let rec = e(self.repo().record(v))?;
                self.hand_out(target, |ino| Ok(self.version_attr(ino, &rec)))
            }
        }
    }

    /// `target`'s number and attributes for a reply that hands them to the kernel,
    /// counted as a reference it will FORGET (`InodeTable::looked_up`); not counted
    /// if the attributes cannot be had.
    fn hand_out(&self, target: Target, attr: impl FnOnce(u64) -> FsResult<FileAttr>) -> FsResult<FileAttr> {
        let ino = self.inner.inodes.lock().looked_up(target);
        attr(ino).inspect_err(|_| self.inner.inodes.lock().forget(ino, 1))
    }

    /// What `name` in `dir` shows: a real entry, or — only if no entry has that
    /// name — a version of one as `name@vN` (history, a conflict listed by
    /// readdir, or a deleted file's; read-only either way).
    fn child_target(&self, dir: EntryId, name: &[u8]) -> FsResult<Option<Target>> {
        if let Some(child) = self.fresh_named(dir, name) {
            return Ok(Some(Target::Entry(child)));
        }
        if let Some(child) = e(self.repo().lookup(dir, name))? {
            return Ok(Some(Target::Entry(child)));
        }
        let Some((base, n)) = names::parse_version_name(name) else {
            return Ok(None);
        };
        // A new file not committed yet holds the name but has no versions.
        if self.fresh_named(dir, base).is_some() {
            return Ok(None);
        }
        let Some(child) = e(self.repo().history_entry(dir, base))? else {
            return Ok(None);
        };
        let Some(rec) = e(self.repo().version_by_name(child, &n))? else {
            return Ok(None);
        };
        if !matches!(rec.record.content, Content::File { .. } | Content::Symlink { .. }) {
            return Ok(None);
        }
        Ok(Some(Target::Version(child, rec.id)))
    }

    fn new_attrs(req: &Request, mode: u32, umask: u32) -> Attrs {
        let now = Timestamp::now();
        Attrs {
            mode: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            mtime: now,
            atime: now,
        }
    }

    /// Creates a new entry under `parent` and returns its inode attributes.
    fn create_entry(&self, parent: INodeNo, name: &OsStr, attrs: Attrs, content: Content) -> FsResult<FileAttr> {
        let (dir, dstate) = self.dir(parent)?;
        let name = name_bytes(name)?;
        // `commit` refuses a name held by another entry (EEXIST); only the alias
        // of an entry that shares its name (`name@1a2b3c4d`) needs a look first.
        if self.fresh_named(dir, &name).is_some()
            || (names::parse_entry_suffix(&name).is_some() && e(self.repo().lookup(dir, &name))?.is_some())
        {
            return Err(Errno::EEXIST);
        }
        let attrs = inherit_group(&dstate, attrs, content.is_dir());
        let is_dir = content.is_dir();
        let id = EntryId::random();
        let draft = Draft {
            location: vec![Link { parent: dir, name }],
            attrs,
            content,
        };
        e(self.repo().commit(vec![(id, draft)]))?;
        if is_dir {
            self.forget_subdirs(&[dir]);
        }
        self.hand_out(Target::Entry(id), |ino| self.entry_attr(ino, id))
    }

    /// Creates a regular file under `parent` with no version yet (see `NewFile`).
    fn create_file(&self, parent: INodeNo, name: &OsStr, attrs: Attrs) -> FsResult<FileAttr> {
        let (dir, dstate) = self.dir(parent)?;
        let name = name_bytes(name)?;
        let attrs = inherit_group(&dstate, attrs, false);
        let id = EntryId::random();
        {
            // Checked and reserved under one lock: the name's commit will not
            // check it again (`Base::Reserved`).
            let mut fresh = self.inner.fresh.lock();
            let taken = fresh_named_in(&fresh, dir, &name).is_some();
            let known_free = self
                .inner
                .last_miss
                .lock()
                .as_ref()
                .is_some_and(|(d, n, epoch)| *d == dir && *n == name && *epoch == self.repo().epoch());
            if taken || (!known_free && e(self.repo().lookup(dir, &name))?.is_some()) {
                return Err(Errno::EEXIST);
            }
            let link = Link { parent: dir, name };
            let (created, since) = (self.repo().reserve_hlc(), Instant::now());
            fresh.insert(
                id,
                NewFile {
                    link,
                    attrs,
                    created,
                    since,
                },
            );
        }
        self.hand_out(Target::Entry(id), |ino| self.entry_attr(ino, id))
    }

    fn is_fresh(&self, entry: EntryId) -> bool {
        self.inner.fresh.lock().contains_key(&entry)
    }

    fn fresh_attrs(&self, entry: EntryId) -> Option<(Attrs, Hlc)> {
        self.inner.fresh.lock().get(&entry).map(|f| (f.attrs, f.created))
    }

    /// True if `dir` holds anything, counting new files that have no version yet
    /// (created, not yet closed): the store alone would call such a directory
    /// empty, and rmdir would succeed on it (the directory then came back, revived,
    /// when the file's first version was committed).
    fn has_children(&self, dir: EntryId) -> FsResult<bool> {
        if self.inner.fresh.lock().values().any(|f| f.link.parent == dir) {
            return Ok(true);
        }
        e(self.repo().has_children(dir))
    }

    fn fresh_named(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        fresh_named_in(&self.inner.fresh.lock(), dir, name)
    }

    /// Commits the first version of the new files `which` picks, as the empty
    /// files they are so far (their pending writes commit later, as for any file):
    /// before an operation that needs them in the repo, such as a rename, a
    /// listing of their directory or a chmod.
    fn settle(&self, which: impl Fn(EntryId, &NewFile) -> bool) -> FsResult<()> {
        let mut fresh = self.inner.fresh.lock();
        let picked: Vec<EntryId> = fresh
            .iter()
            .filter(|(id, f)| which(**id, f))
            .map(|(id, _)| *id)
            .collect();
        if picked.is_empty() {
            return Ok(());
        }
        let changes = picked
            .iter()
            .map(|id| (*id, fresh[id].draft(), Base::Reserved(Some(fresh[id].created))))
            .collect();
        e(self.repo().commit_based(changes))?;
        for id in picked {
            fresh.remove(&id);
        }
        Ok(())
    }

    fn settle_entry(&self, entry: EntryId) -> FsResult<()> {
        self.settle(|id, _| id == entry)
    }

    fn settle_in(&self, dirs: &[EntryId]) -> FsResult<()> {
        self.settle(|_, f| dirs.contains(&f.link.parent))
    }

    fn dirty_entry(
        &self,
        entry: EntryId,
        fallback: Option<(&Arc<ChunkList>, u64)>,
    ) -> FsResult<Arc<Mutex<DirtyEntry>>> {
        let mut map = self.inner.dirty.lock();
        if let Some(d) = map.get(&entry) {
            return Ok(d.clone());
        }
        // A new file that has no version yet is empty (its first version is made
        // from this state, or without one only as the empty file).
        let (list, size, mtime) = match self.fresh_attrs(entry) {
            Some((attrs, _)) => (Arc::new(ChunkList::default()), 0, attrs.mtime),
            None => {
                let s = e(self.repo().get(entry))?;
                let (list, size) = match (&s.record().content, fallback) {
                    (Content::File { size, manifest }, _) => (e(self.repo().chunk_list(*manifest))?, *size),
                    (Content::Tombstone, Some((l, size))) => (l.clone(), size),
                    (Content::Dir, _) => return Err(Errno::EISDIR),
                    _ => return Err(Errno::EINVAL),
                };
                (list, size, s.record().attrs.mtime)
            }
        };
        let spill = self.repo().data_dir().spill_dir().join(entry.to_hex());
        let d = Arc::new(Mutex::new(DirtyEntry {
            file: DirtyFile::new(list, size, spill, mtime),
            fork_from: None,
            last_write: Instant::now(),
            changed: SystemTime::UNIX_EPOCH,
            retired: false,
            superseded: false,
        }));
        map.insert(entry, d.clone());
        Ok(d)
    }

    /// Runs `f` on the entry's write-back state, under its lock, and returns that
    /// state too. A state retired between fetching and locking it is fetched again:
    /// a truncate by path racing with the asynchronous release of the file's last
    /// handle once landed in a state the release had just dropped, and was lost.
    fn with_dirty<R>(
        &self,
        entry: EntryId,
        fallback: Option<(&Arc<ChunkList>, u64)>,
        f: impl FnOnce(&mut DirtyEntry) -> FsResult<R>,
    ) -> FsResult<(Arc<Mutex<DirtyEntry>>, R)> {
        loop {
            let d = self.dirty_entry(entry, fallback)?;
            let mut g = d.lock();
            if g.retired {
                continue;
            }
            let r = f(&mut g)?;
            drop(g);
            return Ok((d, r));
        }
    }

    /// Commits an entry's pending writes (if any) plus `edit` as one version.
    fn commit_entry(&self, entry: EntryId, edit: impl FnOnce(&mut Draft)) -> FsResult<Arc<EntryState>> {
        self.await_prechunk(entry);
        let dirty = self.inner.dirty.lock().get(&entry).cloned();
        let mut guard = dirty.as_ref().map(|d| d.lock());
        if !self.is_fresh(entry) {
            let state = e(self.repo().get(entry))?;
            if !state.is_alive() {
                return Ok(state); // deleted while open: stays deleted
            }
        }
        // Chunk the pending writes first: that can take a while, and only this
        // file's lock is held meanwhile.
        // Small content is only staged: written with the record, installed after.
        let mut content = None;
        let mut new_content = None;
        let mut staged = Default::default();
        if let Some(g) = guard.as_mut() {
            if g.file.is_dirty() {
                let mut new = e(g.file.prepare_content(self.repo()))?;
                let c = Content::File {
                    size: new.size,
                    manifest: new.root,
                };
                content = Some((c, g.file.mtime));
                staged = std::mem::take(&mut new.staged);
                new_content = Some(new);
            }
        }
        let st = {
            // The draft starts from the entry as it is now: an unlink or rename
            // committed while the content was chunked stands.
            let _commit = self.inner.commit.lock();
            let mut fresh = self.inner.fresh.lock();
            if let Some(nf) = fresh.get(&entry) {
                // Its first version: what was written so far, under its name.
                let mut draft = nf.draft();
                // Written: a version of now. Not: the empty file of its create.
                let mut at = Some(nf.created);
                if let Some((c, mtime)) = &content {
                    draft.content = c.clone();
                    draft.attrs.mtime = *mtime;
                    at = None;
                }
                edit(&mut draft);
                let st = e(self
                    .repo()
                    .commit_staged(vec![(entry, draft, Base::Reserved(at))], staged))?
                .remove(0);
                fresh.remove(&entry);
                st
            } else {
                drop(fresh);
                let state = e(self.repo().get(entry))?;
                if !state.is_alive() {
                    return Ok(state); // deleted meanwhile: stays deleted
                }
                let mut draft = state.draft();
                let mut base = Base::Shown;
                if let Some((c, mtime)) = &content {
                    let fork = guard.as_ref().and_then(|g| g.fork_from);
                    if let Some(b) = fork.filter(|b| *b != state.head.id) {
                        // A peer's version landed while we wrote: ours forks from what
                        // the writer saw instead of replacing theirs.
                        let r = e(self.repo().record(b))?;
                        if !r.record.content.is_tombstone() {
                            draft.location = r.record.location.clone();
                            draft.attrs = r.record.attrs;
                        }
                        base = Base::Version(b);
                    }
                    draft.content = c.clone();
                    draft.attrs.mtime = *mtime;
                }
                edit(&mut draft);
                e(self.repo().commit_staged(vec![(entry, draft, base)], staged))?.remove(0)
            }
        };
        let (st, _) = st;
        if let Some(new) = new_content {
            if let Some(g) = guard.as_mut() {
                g.file.content_committed(new);
                g.fork_from = None;
                g.superseded = false;
            }
            tracing::debug!(entry = %entry, version = %st.head.id, "committed file content");
        }
        Ok(st)
    }

    /// Drops an entry's write-back state if nothing is pending and no handle is open
    /// on it. A clean state left behind would go on serving the content it was made
    /// from after the entry's content changed by other means (a rename over it).
    fn drop_clean_dirty(&self, entry: EntryId) {
        if !self.inner.open_count.lock().contains_key(&entry) {
            self.retire_dirty(entry, |g| !g.file.is_dirty());
        }
    }

    /// After a change from outside the mount (a peer, a restore): drops the entry's
    /// write-back state if nothing is pending, unless a handle that may write is
    /// open. Kept, a clean state went on serving the content it was made from to
    /// every reader, also those that opened after the change, until every handle on
    /// the file closed (a viewer that keeps the file open was enough). A writer's
    /// state stays: its next writes go on from what it saw (see `fork_from`).
    fn drop_superseded_state(&self, entry: EntryId) {
        if !self.has_writer_on(entry) {
            self.retire_dirty(entry, |g| !g.file.is_dirty());
            return;
        }
        let state = self.inner.dirty.lock().get(&entry).cloned();
        if let Some(d) = state {
            d.lock().superseded = true;
        }
        // The writer may have gone meanwhile (its release saw no mark yet).
        if !self.has_writer_on(entry) {
            self.retire_dirty(entry, |g| !g.file.is_dirty());
        }
    }

    /// Takes `entry`'s write-back state out of the map if `drop_it` says so, deciding
    /// and marking it under the state's lock: a writer that fetched it just before
    /// then sees it retired and starts over instead of writing where no commit looks.
    /// The map is not held while waiting for that lock: a commit holds it while it
    /// chunks the file (seconds for a large one), and every file operation of the
    /// mount needs the map meanwhile.
    fn retire_dirty(&self, entry: EntryId, drop_it: impl FnOnce(&DirtyEntry) -> bool) {
        let Some(d) = self.inner.dirty.lock().get(&entry).cloned() else {
            return;
        };
        {
            let mut g = d.lock();
            if g.retired || !drop_it(&g) {
                return;
            }
            // Writers that fetch it from the map until it is gone see this and
            // fetch again (`with_dirty`).
            g.retired = true;
        }
        // Wherever it is now: a rename may have moved it to another entry meanwhile.
        self.inner.dirty.lock().retain(|_, m| !Arc::ptr_eq(m, &d));
    }

    /// True if a handle that may write is open on any inode of `entry`.
    fn has_writer_on(&self, entry: EntryId) -> bool {
        let writers: Vec<u64> = self
            .inner
            .handles
            .lock()
            .values()
            .filter(|h| matches!(h.kind, HandleKind::File { writable: true, .. }))
            .map(|h| h.ino)
            .collect();
        let inodes = self.inner.inodes.lock();
        writers.iter().any(|ino| inodes.get(*ino) == Some(Target::Entry(entry)))
    }

    /// Write-only handles (`cp`, `tar`, shell redirects, editors' saves) bypass the
    /// kernel's page cache: their bytes go from the writer's buffer to us, instead
    /// of being copied into page cache pages first that nobody reads (the next open
    /// drops them anyway: the file changed). A 1 GiB `cp` into the mount took
    /// ~10% less time and grew the page cache by 2 MiB instead of 1 GiB
    /// (docs/performance.md, "Write-only handles"). Handles that can read keep the
    /// page cache: reads, read-ahead and shared mmap need it.
    ///
    /// Where the kernel drops other handles' cached pages only before a direct
    /// write (6.6 to 6.18, before the fix "fuse: Invalidate the page cache after
    /// FOPEN_DIRECT_IO write"), a reader could cache the old bytes while the write
    /// is under way: so a direct write into a file others have open is answered
    /// only once the invalidator has dropped the range (`answer_write`). Set-id
    /// bits such a write must clear: `kill_suidgid`.
    fn direct_write_handle(&self, flags: OpenFlags) -> bool {
        matches!(flags.acc_mode(), OpenAccMode::O_WRONLY) && self.inner.direct_writes.load(Ordering::Relaxed)
    }

    /// Answers a write: at once, unless it was a direct write into a file other
    /// handles have open; then once a thread of the invalidator has dropped the
    /// range from the kernel's pages, so that no reader, told by the writer that
    /// the write is done, finds old bytes cached while it was under way; likewise
    /// after `kill_suidgid` changed the mode, which the kernel keeps cached with
    /// the other attributes that the notification drops. That thread, not this
    /// callback, talks to the kernel: a notification sent from a callback can
    /// wait for a READ only this session's threads would serve.
    fn answer_write(&self, ino: INodeNo, offset: u64, written: u32, invalidate_first: bool, reply: ReplyWrite) {
        if !invalidate_first {
            return reply.written(written);
        }
        let w = WrittenRange {
            ino: ino.0,
            offset,
            written,
            reply,
        };
        if let Err(AfterWrite::Answer(w)) = self.after_write(AfterWrite::Answer(w)) {
            w.reply.written(w.written);
        }
    }

    /// Hands `w` to the invalidator's write thread; gives it back if there is none.
    fn after_write(&self, w: AfterWrite) -> Result<(), AfterWrite> {
        match &*self.inner.after_writes.lock() {
            Some(tx) => tx.send(w).map_err(|std::sync::mpsc::SendError(w)| w),
            None => Err(w),
        }
    }

    /// Clears the set-id bits a write by a user without CAP_FSETID clears (the
    /// kernel's rule: set-user-ID, and set-group-ID if the group may execute). The
    /// kernel asks for it on direct writes (`FUSE_WRITE_KILL_SUIDGID`); on cached
    /// ones it sends a SETATTR itself.
    ///
    /// True if it changed the mode: the kernel still has the old one cached
    /// (`answer_write` then drops it before the write is answered).
    fn kill_suidgid(&self, ino: INodeNo) -> FsResult<bool> {
        let entry = self.entry_of(ino)?;
        let mode = match self.fresh_attrs(entry) {
            Some((attrs, _)) => attrs.mode,
            None => {
                let s = e(self.repo().get(entry))?;
                if !s.is_alive() {
                    // Deleted while open: writes go on; there is no mode to change.
                    return Ok(false);
                }
                s.record().attrs.mode
            }
        };
        let mut kill = mode & libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP != 0 {
            kill |= libc::S_ISGID;
        }
        if kill != 0 {
            self.commit_entry(entry, |d| d.attrs.mode &= !kill)?;
        }
        Ok(kill != 0)
    }

    fn handle_commit(&self, ino: INodeNo) -> FsResult<()> {
        self.commit_pending(ino, false)
    }

    /// Commits pending writes of `ino`. On a flush (`is_flush`) a file that was only
    /// emptied so far is left for the next commit point: shells open with O_TRUNC,
    /// dup2 the fd and close the original before writing, and that close must not
    /// record an empty version in between.
    fn commit_pending(&self, ino: INodeNo, is_flush: bool) -> FsResult<()> {
        match self.target(ino)? {
            Target::Entry(entry) => self.commit_pending_entry(entry, is_flush),
            Target::Version(..) => Ok(()),
        }
    }

    fn commit_pending_entry(&self, entry: EntryId, is_flush: bool) -> FsResult<()> {
        // The state is locked outside the map: a commit of this file (idle, or
        // another handle's) holds it while chunking, and every file operation of
        // the mount needs the map meanwhile.
        let state = self.inner.dirty.lock().get(&entry).cloned();
        let has_dirty = state.is_some_and(|d| {
            let g = d.lock();
            g.file.is_dirty() && !(is_flush && g.file.only_emptied())
        });
        if has_dirty {
            self.commit_entry(entry, |_| {})?;
        } else if !is_flush {
            // A new file closed or synced without writes: it is an empty file.
            // (Not on a flush: see above; its release comes.)
            self.settle_entry(entry)?;
        }
        Ok(())
    }

    /// Opens a file handle; also says whether the kernel may keep the pages it has
    /// cached for `ino` (FOPEN_KEEP_CACHE): only if they were filled from exactly
    /// the content the file has now (see `inodes::PageCache`). Without it the
    /// kernel drops them, and every open read the whole file again through FUSE.
    fn open_handle(&self, ino: INodeNo, flags: OpenFlags) -> FsResult<OpenedHandle> {
        let writable = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let exec = flags.0 & FMODE_EXEC != 0;
        let changes_seen = self.inner.inodes.lock().page_changes(ino.0);
        let (snapshot, size, content) = match self.target(ino)? {
            Target::Version(entry, v) => {
                if writable || trunc {
                    return Err(Errno::EROFS);
                }
                if e(self.repo().is_purged(v))? {
                    tracing::warn!(entry = %entry, version = %v, "read of a version whose data gc purged (retention policy)");
                    return Err(Errno::ENODATA);
                }
                match e(self.repo().record(v))?.record.content {
                    Content::File { size, manifest } => {
                        (e(self.repo().chunk_list(manifest))?, size, Some((size, manifest)))
                    }
                    _ => return Err(Errno::EINVAL),
                }
            }
            Target::Entry(entry) => {
                let fresh = self.is_fresh(entry);
                let (list, size, content) = if fresh {
                    (Arc::new(ChunkList::default()), 0, None)
                } else {
                    let s = self.live(entry)?;
                    match &s.record().content {
                        Content::File { size, manifest } => {
                            (e(self.repo().chunk_list(*manifest))?, *size, Some((*size, *manifest)))
                        }
                        Content::Dir => return Err(Errno::EISDIR),
                        _ => (Arc::new(ChunkList::default()), 0, None),
                    }
                };
                // Unwritten changes are what the file holds, not its committed content.
                // A state locked by a commit in progress counts as unwritten: waiting
                // for a large file's chunking is not worth a kept page cache.
                let state = self.inner.dirty.lock().get(&entry).cloned();
                let unwritten = state.is_some_and(|d| d.try_lock().is_none_or(|g| g.file.is_dirty()));
                let content = content.filter(|_| !trunc && !unwritten);
                // The kernel refuses to write a running program, but with atomic
                // O_TRUNC it lets a truncating open through to us first and only then
                // says ETXTBSY (for O_RDONLY|O_TRUNC) — after it has set the size to
                // 0 and the program faulted on its next page. Refuse here instead.
                if (trunc || writable) && self.inner.exec_count.lock().contains_key(&entry) {
                    return Err(Errno::ETXTBSY);
                }
                if trunc && !fresh {
                    // Any access mode: the kernel takes the file to be empty now.
                    self.with_dirty(entry, Some((&list, size)), |g| {
                        e(g.file.truncate(0))?;
                        g.touch();
                        Ok(())
                    })?;
                }
                *self.inner.open_count.lock().entry(entry).or_default() += 1;
                if exec {
                    *self.inner.exec_count.lock().entry(entry).or_default() += 1;
                }
                (list, size, content)
            }
        };
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        let direct = self.direct_write_handle(flags);
        let keep_cache = {
            let mut inodes = self.inner.inodes.lock();
            inodes.pin(ino.0);
            inodes.reopen_pages(ino.0, fh, content, changes_seen)
        };
        self.inner.handles.lock().insert(
            fh,
            Handle {
                ino: ino.0,
                kind: HandleKind::File {
                    snapshot,
                    size,
                    content,
                    writable,
                    exec,
                    direct,
                    behind: WriteBehind::default(),
                },
            },
        );
        let mut fopen = FopenFlags::empty();
        if keep_cache {
            fopen |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if direct {
            fopen |= FopenFlags::FOPEN_DIRECT_IO;
        }
        // A handle that cannot write has nothing to commit when it is closed: no
        // FLUSH round trip for each file `cat`, `grep` or a compiler reads. (Its
        // RELEASE still comes, after close(2) has returned.)
        if !writable && !trunc {
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        Ok(OpenedHandle { fh, fopen })
    }

    /// True if a handle that may write is open on inode `ino`.
    fn has_writable_handle(&self, ino: INodeNo) -> bool {
        self.inner
            .handles
            .lock()
            .values()
            .any(|h| h.ino == ino.0 && matches!(h.kind, HandleKind::File { writable: true, .. }))
    }

    /// A file handle's snapshot (content and size at open) and whether it may write.
    fn file_handle(&self, fh: FileHandle) -> FsResult<(Arc<ChunkList>, u64, bool)> {
        self.file_handle_content(fh)
            .map(|(list, size, _, writable)| (list, size, writable))
    }

    /// As `file_handle`, with the committed content the handle opened (if it did).
    fn file_handle_content(&self, fh: FileHandle) -> FsResult<(Arc<ChunkList>, u64, Option<ContentKey>, bool)> {
        match self.inner.handles.lock().get(&fh.0) {
            Some(Handle {
                kind:
                    HandleKind::File {
                        snapshot,
                        size,
                        content,
                        writable,
                        ..
                    },
                ..
            }) => Ok((snapshot.clone(), *size, *content, *writable)),
            _ => Err(Errno::EBADF),
        }
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (snapshot, snap_size, content, _) = self.file_handle_content(fh)?;
        let mut out = Vec::with_capacity(size as usize);
        if let Target::Entry(entry) = self.target(ino)? {
            let dirty = self.inner.dirty.lock().get(&entry).cloned();
            if let Some(d) = dirty {
                let g = d.lock();
                e(g.file.read(self.repo(), offset, size as u64, &mut out))?;
                drop(g);
                // These pages now hold the write-back state, not a known commit.
                self.inner.inodes.lock().pages_read(ino.0, fh.0, None);
                return Ok(out);
            }
        }
        let len = (size as u64).min(snap_size.saturating_sub(offset));
        e(self.repo().read_chunks(&snapshot, offset, len, &mut out))?;
        // A handle opened before the file changed fills the pages with what it
        // opened: not what the next open would vouch for.
        self.inner.inodes.lock().pages_read(ino.0, fh.0, content);
        Ok(out)
    }

    /// Applies a write: the count written, whether the kernel's pages of the
    /// range must be dropped before it is answered (`answer_write`), and which
    /// pages the handle is done with (`write_behind`).
    fn do_write(&self, ino: INodeNo, fh: FileHandle, offset: u64, data: &[u8]) -> FsResult<Written> {
        let entry = self.entry_of(ino)?;
        let (snapshot, snap_size, writable) = self.file_handle(fh)?;
        if !writable {
            return Err(Errno::EBADF);
        }
        // The kernel's pages hold these bytes already, stored or not (a failed
        // write-back of mmap'ed pages leaves them cached): forget before and after,
        // so that neither a failure nor an open racing the write vouches for them.
        self.inner.inodes.lock().pages_changed(ino.0);
        let (d, (plan, pressed)) = self.with_dirty(entry, Some((&snapshot, snap_size)), |g| {
            e(g.file.write(self.repo(), offset, data))?;
            g.touch();
            let pressed = g.file.tail_pressure() != crate::repo::TailPressure::None;
            Ok((g.file.prechunk_plan(), pressed))
        })?;
        self.inner.inodes.lock().pages_changed(ino.0);
        let (direct, drop_pages) = match self.inner.handles.lock().get_mut(&fh.0) {
            Some(Handle {
                kind: HandleKind::File { direct, behind, .. },
                ..
            }) => (
                *direct,
                if *direct {
                    None
                } else {
                    behind.wrote(offset, data.len() as u64)
                },
            ),
            _ => (false, None),
        };
        // Others' cached pages: see `answer_write`.
        let others_cached = direct && self.inner.open_count.lock().get(&entry).is_some_and(|n| *n > 1);
        if let Some(plan) = plan {
            self.start_prechunk(entry, d.clone(), plan);
        }
        if pressed {
            self.relieve_tail(entry, &d)?;
        }
        Ok(Written {
            len: data.len() as u32,
            others_cached,
            drop_pages,
        })
    }

    /// `copy_file_range` within the mount without moving bytes: the destination
    /// takes the source's chunks (`DirtyFile::share_from`), so `cp` of a large file
    /// inside the folder costs a commit, no reads, no writes and no transfer to
    /// members. `None` when sharing does not fit (written source, copy into the
    /// middle of a file, ...): the caller lets the kernel copy the bytes.
    fn do_copy_range(
        &self,
        from: (INodeNo, FileHandle, u64),
        to: (INodeNo, FileHandle, u64),
        len: u64,
    ) -> FsResult<Option<u64>> {
        let ((ino_in, fh_in, off_in), (ino_out, fh_out, off_out)) = (from, to);
        let (snapshot, snap_size, _) = self.file_handle(fh_in)?;
        let (out_snapshot, out_size, writable) = self.file_handle(fh_out)?;
        if !writable {
            return Err(Errno::EBADF);
        }
        let dest = self.entry_of(ino_out)?;
        // What the source reads now: its snapshot, or its write-back state if it has
        // one (clean only: written bytes are not chunks yet).
        let (list, size) = match self.target(ino_in)? {
            Target::Entry(src) if src == dest => return Ok(None),
            Target::Entry(src) => {
                // Pages dirtied through a shared mmap reach us only at writeback,
                // and the kernel does not write the source's back before a copy.
                if self.has_writable_handle(ino_in) {
                    return Ok(None);
                }
                let dirty = self.inner.dirty.lock().get(&src).cloned();
                match dirty {
                    Some(d) => match d.lock().file.clean_content() {
                        Some(c) => c,
                        None => return Ok(None),
                    },
                    None => (snapshot, snap_size),
                }
            }
            Target::Version(..) => (snapshot, snap_size),
        };
        if off_in >= size {
            return Ok(Some(0));
        }
        if off_in != off_out {
            return Ok(None);
        }
        // The count in a FUSE reply is 32 bits: a larger copy returns short, and
        // the caller (`cp` loops) asks again from there.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        let (_, shared) = self.with_dirty(dest, Some((&out_snapshot, out_size)), |g| {
            // A handle may outlive its version's data (purged and swept while
            // open): sharing must not record a version whose chunks are gone. Checked
            // with the destination's write-back state held, which a sweep waits for.
            for r in list.refs() {
                if !e(self.repo().store().has_chunk(r.id).map_err(RepoError::from))? {
                    return Ok(None);
                }
            }
            let n = g.file.share_from(&list, size, off_out, len);
            if n.is_some() {
                g.touch();
            }
            Ok(n)
        })?;
        if let Some(n) = shared {
            self.inner.inodes.lock().pages_changed(ino_out.0);
            tracing::debug!(entry = %dest, offset = off_out, bytes = n, "copy shares the source's chunks");
        }
        Ok(shared)
    }

    fn do_setattr(&self, ino: INodeNo, a: SetAttr) -> FsResult<FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = a;
        let entry = self.entry_of(ino)?;
        self.settle_entry(entry)?;
        let s = e(self.repo().get(entry))?;
        if let Some(size) = size {
            if s.record().content.is_dir() {
                return Err(Errno::EISDIR);
            }
            if !matches!(s.record().content, Content::File { .. } | Content::Tombstone) {
                return Err(Errno::EINVAL);
            }
            let snap = fh.and_then(|fh| self.file_handle(fh).ok().map(|(l, s, _)| (l, s)));
            self.with_dirty(entry, snap.as_ref().map(|(l, s)| (l, *s)), |g| {
                e(g.file.truncate(size))?;
                g.touch();
                Ok(())
            })?;
            self.inner.inodes.lock().pages_changed(ino.0);
        }
        let attrs_change = mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some();
        if attrs_change || (size.is_some() && fh.is_none()) {
            let (atime, mtime) = (time_of(atime), time_of(mtime));
            self.commit_entry(entry, |d| {
                if let Some(m) = mode {
                    d.attrs.mode = m & 0o7777;
                }
                if let Some(u) = uid {
                    d.attrs.uid = u;
                }
                if let Some(g) = gid {
                    d.attrs.gid = g;
                }
                if let Some(t) = atime {
                    d.attrs.atime = t;
                }
                if let Some(t) = mtime {
                    d.attrs.mtime = t;
                }
                // chown by anyone clears set-id bits, as the kernel does on ext4.
                if (uid.is_some() || gid.is_some()) && mode.is_none() && !d.content.is_dir() {
                    d.attrs.mode &= !0o6000;
                }
            })?;
            if let Some(t) = mtime {
                if let Some(d) = self.inner.dirty.lock().get(&entry) {
                    d.lock().file.mtime = t;
                }
            }
            // truncate(2) by path on a file nobody has open: its write-back state
            // has served its purpose.
            self.drop_clean_dirty(entry);
            return self.entry_attr(ino.0, entry);
        }
        self.attr(ino)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, want_dir: bool) -> FsResult<()> {
        let (dir, _) = self.dir(parent)?;
        self.settle_in(&[dir])?;
        let name = name_bytes(name)?;
        let child = match self.child_target(dir, &name)?.ok_or(Errno::ENOENT)? {
            Target::Entry(child) => child,
            Target::Version(child, v) => {
                // Removing a listed conflict dismisses that version everywhere; other
                // history is read-only.
                let _commit = self.inner.commit.lock();
                let s = self.live(child)?;
                if want_dir || !s.conflicts.iter().any(|c| c.version == v) {
                    return Err(Errno::EROFS);
                }
                e(self.repo().dismiss(child, v))?;
                return Ok(());
            }
        };
        let s = self.live(child)?;
        let is_dir = s.record().content.is_dir();
        match (want_dir, is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if is_dir && self.has_children(child)? {
            return Err(Errno::ENOTEMPTY);
        }
        let link = Link { parent: dir, name };
        if without_link(&s, &link).content.is_tombstone() && !self.inner.open_count.lock().contains_key(&child) {
            // Uncommitted writes of a closed file being deleted (left behind when the
            // disk filled up) go with it; dropping them first frees their spill space.
            self.retire_dirty(child, |_| true);
        }
        {
            // From the state as it is now: a close may have committed new content
            // since the checks above.
            let _commit = self.inner.commit.lock();
            let s = self.live(child)?;
            self.note_lost_name(&s);
            e(self.repo().commit(vec![(child, without_link(&s, &link))]))?;
        }
        if is_dir {
            self.forget_subdirs(&[dir]);
        }
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let (sdir, _) = self.dir(parent)?;
        let (ddir, _) = self.dir(newparent)?;
        self.settle_in(&[sdir, ddir])?;
        let (name, newname) = (name_bytes(name)?, name_bytes(newname)?);
        let src = e(self.repo().lookup(sdir, &name))?.ok_or(Errno::ENOENT)?;
        let dst = e(self.repo().lookup(ddir, &newname))?;
        if dst.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        if dst == Some(src) {
            return Ok(()); // two links of one file: POSIX says do nothing
        }
        // Commit pending writes first, so what moves is what was written.
        self.commit_pending_entry(src, false)?;
        if let Some(dst) = dst {
            self.commit_pending_entry(dst, false)?;
        }
        // Held until the rename is committed (see `Inner::commit`).
        let commit = self.inner.commit.lock();
        let s = self.live(src)?;
        let src_is_dir = s.record().content.is_dir();
        if src_is_dir && e(self.repo().is_ancestor(src, ddir))? {
            return Err(Errno::EINVAL);
        }
        let src_link = Link { parent: sdir, name };
        let dst_link = Link {
            parent: ddir,
            name: newname,
        };
        let mut changes = Vec::new();
        let mut adopt = None;
        if let Some(dst) = dst {
            let d = self.live(dst)?;
            let dst_is_dir = d.record().content.is_dir();
            match (src_is_dir, dst_is_dir) {
                (false, true) => return Err(Errno::EISDIR),
                (true, false) => return Err(Errno::ENOTDIR),
                (true, true) if self.has_children(dst)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            let atomic_save = matches!(s.record().content, Content::File { .. })
                && matches!(d.record().content, Content::File { .. })
                && s.record().location.len() == 1
                && d.record().location.len() == 1;
            if atomic_save {
                // Editor-style save: the target keeps its identity and history and
                // gets the new content; the temporary entry simply ends.
                let mut nd = d.draft();
                nd.content = s.record().content.clone();
                nd.attrs = s.record().attrs;
                changes.push((dst, nd));
                changes.push((src, without_link(&s, &src_link)));
                adopt = Some(dst);
            } else {
                self.note_lost_name(&d);
                changes.push((dst, without_link(&d, &dst_link)));
            }
        }
        if adopt.is_none() {
            let mut nd = s.draft();
            nd.location.retain(|l| l != &src_link);
            nd.location.push(dst_link);
            changes.push((src, nd));
        }
        e(self.repo().commit(changes))?;
        drop(commit);
        if let Some(dst) = adopt {
            // The target's own write-back state was made from the content it just
            // lost; pending state of the source now belongs to it (below).
            self.retire_dirty(dst, |_| true);
            let mut inodes = self.inner.inodes.lock();
            let src_ino = inodes.entry_ino(src);
            inodes.adopt(dst, src_ino);
            let mut dirty = self.inner.dirty.lock();
            if let Some(d) = dirty.remove(&src) {
                // One made for the target since it was retired above (rare).
                if let Some(old) = dirty.insert(dst, d) {
                    old.lock().retired = true;
                }
            }
            for counts in [&self.inner.open_count, &self.inner.exec_count] {
                let mut c = counts.lock();
                if let Some(n) = c.remove(&src) {
                    *c.entry(dst).or_default() += n;
                }
            }
        }
        self.forget_subdirs(&[sdir, ddir]);
        Ok(())
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> FsResult<FileAttr> {
        let entry = self.entry_of(ino)?;
        let (dir, _) = self.dir(newparent)?;
        self.settle(|id, f| id == entry || f.link.parent == dir)?;
        let newname = name_bytes(newname)?;
        let s = self.live(entry)?;
        if s.record().content.is_dir() {
            return Err(Errno::EPERM);
        }
        if e(self.repo().lookup(dir, &newname))?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.commit_entry(entry, |d| {
            d.location.push(Link {
                parent: dir,
                name: newname,
            })
        })?;
        let attr = self.entry_attr(ino.0, entry)?;
        self.inner.inodes.lock().looked_up_ino(ino.0);
        Ok(attr)
    }

    fn do_opendir(&self, ino: INodeNo) -> FsResult<u64> {
        let (dir, s) = self.dir(ino)?;
        self.settle_in(&[dir])?;
        let parent_ino = match s.record().location.first() {
            Some(l) => self.inner.inodes.lock().entry_ino(l.parent),
            None => ROOT_INO,
        };
        let mut listing = vec![
            (b".".to_vec(), ino.0, FileType::Directory),
            (b"..".to_vec(), parent_ino, FileType::Directory),
        ];
        for (name, child) in e(self.repo().children(dir))? {
            let cs = e(self.repo().get(child))?;
            let cino = self.inner.inodes.lock().entry_ino(child);
            listing.push((name.clone(), cino, file_type(&cs.record().content)));
            for (suffix, v) in e(self.repo().conflict_names(&cs))? {
                let kind = file_type(&e(self.repo().record(v))?.record.content);
                let vino = self.inner.inodes.lock().version_ino(child, v);
                let mut alt = name.clone();
                alt.push(b'@');
                alt.extend_from_slice(suffix.as_bytes());
                listing.push((alt, vino, kind));
            }
        }
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        self.inner.inodes.lock().pin(ino.0);
        self.inner.handles.lock().insert(
            fh,
            Handle {
                ino: ino.0,
                kind: HandleKind::Dir { listing },
            },
        );
        Ok(fh)
    }

    fn release_handle(&self, fh: FileHandle) -> FsResult<()> {
        let h = self.inner.handles.lock().remove(&fh.0);
        let Some(h) = h else { return Ok(()) };
        // With other handles still open, an only-emptied state is theirs to commit:
        // a file rewritten right after it was closed (open with O_TRUNC, write)
        // gets the earlier handle's release in between, asynchronously.
        let others_open = match self.inner.inodes.lock().get(h.ino) {
            Some(Target::Entry(entry)) => self.inner.open_count.lock().get(&entry).is_some_and(|n| *n > 1),
            _ => false,
        };
        let result = self.commit_pending(INodeNo(h.ino), others_open);
        let target = self.inner.inodes.lock().get(h.ino);
        if let (HandleKind::File { exec, writable, .. }, Some(Target::Entry(entry))) = (&h.kind, target) {
            if *exec {
                count_down(&mut self.inner.exec_count.lock(), entry);
            }
            if count_down(&mut self.inner.open_count.lock(), entry) {
                // Drop write-back state once nothing is pending — or nothing can be
                // (the file was deleted while open: its data goes with it, as POSIX says).
                let deleted = self.repo().get(entry).map(|s| !s.is_alive()).unwrap_or(true);
                self.retire_dirty(entry, |g| deleted || !g.file.is_dirty());
            } else if *writable && !self.has_writer_on(entry) {
                // The last writer went: a state an outside change superseded goes
                // too, though readers still have the file open.
                self.retire_dirty(entry, |g| g.superseded && !g.file.is_dirty());
            }
        }
        self.inner.inodes.lock().unpin(h.ino);
        result
    }
}

/// Takes one off `entry`'s count; true if that was the last.
fn count_down(counts: &mut HashMap<EntryId, u32>, entry: EntryId) -> bool {
    let n = counts.entry(entry).or_insert(1);
    *n -= 1;
    let last = *n == 0;
    if last {
        counts.remove(&entry);
    }
    last
}

fn without_link(s: &EntryState, link: &Link) -> Draft {
    let mut d = s.draft();
    d.location.retain(|l| l != link);
    if d.location.is_empty() {
        d.content = Content::Tombstone;
    }
    d
}

fn reply_attr(r: FsResult<FileAttr>, ttl: Duration, reply: ReplyAttr) {
    match r {
        Ok(a) => reply.attr(&ttl, &a),
        Err(err) => reply.error(err),
    }
}

fn reply_entry(r: FsResult<FileAttr>, ttl: Duration, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&ttl, &a, Generation(0)),
        Err(err) => reply.error(err),
    }
}

fn reply_empty(r: FsResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(err) => reply.error(err),
    }
}

impl Filesystem for DistriboxFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Let open(O_TRUNC) arrive as one request, so `echo x > f` records one
        // version instead of an empty one followed by the new content.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Hand out attributes with directory listings: `ls -l`, `find`, `rsync`
        // then need no lookup per name.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // Kernels that offer this flag (6.6 and later) also drop other handles'
        // cached pages of the range a direct write changes, in the same series;
        // older ones would leave a reader's cached pages stale.
        let coherent = config
            .capabilities()
            .contains(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        self.inner.direct_writes.store(coherent, Ordering::Relaxed);
        Ok(())
    }

    fn destroy(&mut self) {
        let end = self.inner.session_end.lock().take();
        if let Some(end) = end {
            end();
        }
        self.flush_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.note();
        let r = self.do_lookup(parent, name);
        let ttl = match &r {
            Ok(a) => self.ttl_of(a.ino),
            Err(_) => self.inner.opts.ttl,
        };
        reply_entry(r, ttl, reply)
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.inodes.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.note();
        reply_attr(self.attr(ino), self.inner.opts.ttl, reply)
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.note();
        reply_attr(
            self.do_setattr(
                ino,
                SetAttr {
                    mode,
                    uid,
                    gid,
                    size,
                    atime,
                    mtime,
                    fh,
                },
            ),
            self.inner.opts.ttl,
            reply,
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.note();
        let r = match self.target(ino) {
            Ok(Target::Entry(entry)) => self
                .settle_entry(entry)
                .and_then(|_| self.live(entry))
                .map(|s| s.record().content.clone()),
            Ok(Target::Version(_, v)) => e(self.repo().record(v)).map(|r| r.record.content),
            Err(err) => Err(err),
        };
        match r {
            Ok(Content::Symlink { target }) => reply.data(&target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(err) => reply.error(err),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        self.note();
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => None,
            libc::S_IFIFO => Some(SpecialKind::Fifo),
            libc::S_IFSOCK => Some(SpecialKind::Socket),
            libc::S_IFCHR => Some(SpecialKind::CharDevice),
            libc::S_IFBLK => Some(SpecialKind::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        let content = match kind {
            None => Content::File {
                size: 0,
                manifest: None,
            },
            Some(kind) => Content::Special {
                kind,
                rdev: rdev as u64,
            },
        };
        reply_entry(
            self.create_entry(parent, name, Self::new_attrs(req, mode, umask), content),
            self.inner.opts.ttl,
            reply,
        )
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.note();
        reply_entry(
            self.create_entry(parent, name, Self::new_attrs(req, mode, umask), Content::Dir),
            self.inner.opts.ttl,
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.note();
        reply_empty(self.remove(parent, name, false), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.note();
        reply_empty(self.remove(parent, name, true), reply)
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.note();
        let content = Content::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        };
        reply_entry(
            self.create_entry(parent, link_name, Self::new_attrs(req, 0o777, 0), content),
            self.inner.opts.ttl,
            reply,
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.note();
        reply_empty(self.do_rename(parent, name, newparent, newname, flags), reply)
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.note();
        reply_entry(self.do_link(ino, newparent, newname), self.inner.opts.ttl, reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.note();
        match self.open_handle(ino, flags) {
            Ok(h) => reply.opened(FileHandle(h.fh), h.fopen),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Not counted for busy polling: with a random 4 KiB reader (fio, QD1, cold
        // cache) polling kept itself on and the reads got slower, not faster
        // (docs/performance.md, "Busy polling of /dev/fuse").
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(err),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.note();
        let mut mode_changed = false;
        if wf.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            match self.kill_suidgid(ino) {
                Ok(changed) => mode_changed = changed,
                Err(err) => return reply.error(err),
            }
        }
        match self.do_write(ino, fh, offset, data) {
            Ok(w) => {
                if let Some((offset, len)) = w.drop_pages {
                    // Without an invalidator the pages just stay cached.
                    let _ = self.after_write(AfterWrite::DropPages {
                        ino: ino.0,
                        offset,
                        len,
                    });
                }
                self.answer_write(ino, offset, w.len, w.others_cached || mode_changed, reply)
            }
            Err(err) => reply.error(err),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        self.note();
        self.inner.inodes.lock().handle_used(ino.0, fh.0);
        reply_empty(self.commit_pending(ino, true), reply)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.note();
        reply_empty(self.release_handle(fh), reply)
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.note();
        reply_empty(self.handle_commit(ino).and_then(|_| e(self.repo().sync())), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.note();
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(err) => reply.error(err),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.note();
        let handles = self.inner.handles.lock();
        let Some(Handle {
            kind: HandleKind::Dir { listing },
            ..
        }) = handles.get(&fh.0)
        else {
            return reply.error(Errno::EBADF);
        };
        for (i, (name, ino, kind)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        self.note();
        // Copy out the part we serve so no lock is held while attributes are read.
        let page: Vec<(Vec<u8>, u64)> = {
            let handles = self.inner.handles.lock();
            let Some(Handle {
                kind: HandleKind::Dir { listing },
                ..
            }) = handles.get(&fh.0)
            else {
                return reply.error(Errno::EBADF);
            };
            listing
                .iter()
                .skip(offset as usize)
                .take(512)
                .map(|(n, i, _)| (n.clone(), *i))
                .collect()
        };
        let ttl = self.inner.opts.ttl;
        let dir = match self.entry_of(ino) {
            Ok(d) => d,
            Err(err) => return reply.error(err),
        };
        for (i, (name, cino)) in page.into_iter().enumerate() {
            // Each entry becomes a dentry in the kernel's cache, so it must show the
            // name as it is now, not as it was at opendir: a name renamed or removed
            // since would linger as a ghost, and a directory under its old name would
            // alias the dentry the kernel already has for it (ESTALE). The kernel
            // keeps this directory's names still while we answer.
            // The kernel takes a reference to every entry but the dots.
            let dots = name == b"." || name == b"..";
            let cino = if dots {
                cino
            } else {
                match self.child_target(dir, &name) {
                    Ok(Some(target)) => self.inner.inodes.lock().looked_up(target),
                    _ => continue, // removed since opendir
                }
            };
            let unref = || {
                if !dots {
                    self.inner.inodes.lock().forget(cino, 1);
                }
            };
            let Ok(attr) = self.attr(INodeNo(cino)) else {
                unref();
                continue; // removed since opendir
            };
            let ttl = if dots { ttl } else { self.ttl_of(INodeNo(cino)) };
            if reply.add(
                INodeNo(cino),
                offset + i as u64 + 1,
                OsStr::from_bytes(&name),
                &ttl,
                &attr,
                Generation(0),
            ) {
                unref(); // did not fit: not sent
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.note();
        let h = self.inner.handles.lock().remove(&fh.0);
        if let Some(h) = h {
            self.inner.inodes.lock().unpin(h.ino);
        }
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.note();
        reply_empty(e(self.repo().sync()), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.note();
        let path = std::ffi::CString::new(self.repo().data_dir().root.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: statvfs writes into a zeroed struct we own; path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        )
    }

    /// No ioctl applies to these files, as on a local disk's regular files. Asked
    /// far more often than one might think: every `open()` in Python checks
    /// `isatty()` (TCGETS), and fuser's default answer logs a warning each time
    /// (2,000 opens, 2,000 warnings in node.log).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.note();
        reply.error(Errno::ENOTTY)
    }

    /// No extended attributes (yet). ENOSYS makes the kernel stop asking for this
    /// mount and answer EOPNOTSUPP itself; without this, the kernel's check for
    /// `security.capability` on the first write left a warning in every node's log.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        self.note();
        reply.error(Errno::ENOSYS)
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.note();
        let r = self.attr(ino).and_then(|a| {
            if mask.contains(AccessFlags::W_OK) && matches!(self.target(ino), Ok(Target::Version(..))) {
                return Err(Errno::EROFS);
            }
            if req.uid() == 0 || mask.is_empty() {
                return Ok(());
            }
            let bits = if req.uid() == a.uid {
                (a.perm >> 6) & 7
            } else if req.gid() == a.gid {
                (a.perm >> 3) & 7
            } else {
                a.perm & 7
            };
            let need = (mask.bits() & 7) as u16;
            if bits & need == need {
                Ok(())
            } else {
                Err(Errno::EACCES)
            }
        });
        reply_empty(r, reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.note();
        let r = self
            .create_file(parent, name, Self::new_attrs(req, mode, umask))
            .and_then(|attr| {
                let h = self
                    .open_handle(attr.ino, OpenFlags(flags))
                    .inspect_err(|_| self.inner.inodes.lock().forget(attr.ino.0, 1))?;
                Ok((attr, h))
            });
        match r {
            // Only DIRECT_IO: the close of a new file commits it, whatever its mode.
            Ok((attr, h)) => reply.created(
                &self.inner.opts.ttl,
                &attr,
                Generation(0),
                FileHandle(h.fh),
                h.fopen & FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(err) => reply.error(err),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.note();
        match self.do_copy_range((ino_in, fh_in, offset_in), (ino_out, fh_out, offset_out), len) {
            Ok(Some(n)) => reply.written(n as u32),
            // Not ENOSYS: that would switch the kernel's copy offload off for good.
            Ok(None) => reply.error(Errno::EOPNOTSUPP),
            Err(err) => reply.error(err),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.note();
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let r = self.attr(ino).and_then(|a| {
            if offset + length > a.size {
                self.do_setattr(
                    ino,
                    SetAttr {
                        size: Some(offset + length),
                        fh: Some(fh),
                        ..SetAttr::default()
                    },
                )
                .map(|_| ())
            } else {
                Ok(())
            }
        });
        reply_empty(r, reply)
    }
}
