//! Write-back state of a file being written: the committed chunk list it started
//! from plus the bytes written since, kept in a sparse spill file on disk.
//!
//! Why a spill file: patching 1 MiB in the middle of a 4 GiB file must neither copy
//! the file nor hold it in memory. Written ranges go to the spill file at their own
//! offsets; everything else is still read from the base chunks. On commit only the
//! region from the first changed chunk up to the point where the new cut points meet
//! the old ones again is re-chunked (FastCDC cut points depend only on the content
//! from the previous cut, so past that point the old chunks are reused as they are).

use super::{Repo, Result};
use crate::chunking::{self, ChunkBytes, ChunkList};
use crate::model::{ChunkId, Timestamp};
use crate::store::StagedChunks;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// New chunk bytes per commit written through the WAL before switching to
/// WAL-less writes plus one flush.
const WAL_BYTES_PER_COMMIT: u64 = 8 << 20;

/// Dirty state of one file entry.
pub struct DirtyFile {
    /// The chunk list of the version these writes apply to.
    base: Arc<ChunkList>,
    /// Base bytes at or past this offset are gone (a truncate cut them); reads there
    /// give zeros unless rewritten.
    base_valid: u64,
    /// Current logical size.
    pub size: u64,
    /// Written ranges, start → end, non-overlapping and non-adjacent.
    ranges: BTreeMap<u64, u64>,
    spill: Spill,
    spill_path: PathBuf,
    /// mtime to record with the next commit.
    pub mtime: Timestamp,
    /// Content was chunked into `base` but its version is not committed yet (the
    /// record write failed, e.g. disk full): the next commit must still record it.
    pending: bool,
    /// Chunks already cut and stored, in the background, for a file being written
    /// from scratch (see `prechunk_plan`): bytes `[0, pre.len_bytes())`, whose end is
    /// a final cut point (a FastCDC cut depends only on the `MAX_CHUNK` bytes after
    /// the chunk start, so a cut at least that far behind the write front never
    /// moves).
    pre: ChunkList,
    /// Bumped by every write or truncate that lands below `pre.len_bytes()` or inside a
    /// range handed to a background pass, so a pass that raced with it throws its
    /// result away.
    generation: u64,
    /// End of the furthest range handed to a background pass since the last
    /// invalidation: the pass may still be reading below it.
    planned_to: u64,
    /// A pass over the in-memory tail made no progress (see `tail_pressure`).
    stuck: bool,
}

/// What a background pre-chunking pass should read (taken under the lock, run
/// without it).
pub struct PrechunkPlan {
    source: PlanSource,
    from: u64,
    to: u64,
    generation: u64,
}

/// Result of a pass, applied under the lock if nothing raced with it.
pub struct PrechunkDone {
    refs: Vec<chunking::ChunkRef>,
    /// Where the pass started: it only extends pre-chunked data ending there.
    from: u64,
    generation: u64,
}

impl PrechunkDone {
    /// The chunks this pass stored, in file order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.refs.iter().map(|r| r.id).collect()
    }
}

/// Start pre-chunking once this much unchunked data has piled up.
const PRECHUNK_AFTER: u64 = 8 << 20;
/// A pass reads at most this much (it stores all but its last `MAX_CHUNK` or so,
/// whose cut may still move).
const PASS_MAX: u64 = 16 << 20;

impl PrechunkPlan {
    /// Cuts and stores the chunks of the planned range (no lock held).
    pub fn run(self, repo: &Repo) -> Result<PrechunkDone> {
        // Chunks cut ahead are garbage if the file is then deleted or never fits
        // (until a gc sweep finds them), and they coexist with the spill copy:
        // only chunk ahead while there is room for several times that.
        if !repo.store().room_for(4 * (self.to - self.from)) {
            return Ok(PrechunkDone {
                refs: Vec::new(),
                from: self.from,
                generation: self.generation,
            });
        }
        // Only cuts that can no longer move: the chunk start is at least MAX_CHUNK
        // behind the end of what was written when we started.
        let to = self.to;
        let decide = |start, _| {
            if start + chunking::MAX_CHUNK as u64 > to {
                Cut::Stop
            } else {
                Cut::Take
            }
        };
        let expected = self.to - self.from;
        let refs = match &self.source {
            PlanSource::File(file) => {
                let reader = SpillReader {
                    file,
                    pos: self.from,
                    end: self.to,
                };
                let chunks = chunking::cut(reader).map(|c| c.map(ChunkBytes::Owned));
                store_chunks(repo, chunks, self.from, expected, Sink::Store { wal_bytes: 0 }, decide)?
            }
            PlanSource::Tail(blocks) => {
                let chunks = chunking::cut_blocks(blocks, self.from, self.to);
                store_chunks(repo, chunks, self.from, expected, Sink::Store { wal_bytes: 0 }, decide)?
            }
        };
        Ok(PrechunkDone {
            refs,
            from: self.from,
            generation: self.generation,
        })
    }
}

/// Where `store_chunks` puts new chunks.
enum Sink<'a> {
    /// Into the store now; the first `wal_bytes` of new chunk bytes go through the
    /// WAL.
    Store { wal_bytes: u64 },
    /// Held for the record's write.
    Stage(&'a mut StagedChunks),
}

/// At most this many bytes to chunk are staged (held in memory until the commit's
/// write) rather than stored at once.
const STAGE_MAX: u64 = 1 << 20;

/// Content chunked for a commit: its size and manifest root, and for staged
/// content the chunk list to install once the version is recorded.
pub struct NewContent {
    pub size: u64,
    pub root: Option<ChunkId>,
    list: Option<ChunkList>,
    /// Chunks to write with the record (`Repo::commit_staged`).
    pub staged: StagedChunks,
}

impl NewContent {
    fn installed(size: u64, root: Option<ChunkId>) -> Self {
        NewContent {
            size,
            root,
            list: None,
            staged: StagedChunks::default(),
        }
    }
}

/// What `store_chunks` does with the chunk just cut.
enum Cut {
    Take,
    /// Store it, then stop.
    TakeAndStop,
    /// Stop without it.
    Stop,
}

/// Streams of at least this many bytes are cut on one thread and hashed and stored
/// on another: on two cores FastCDC's gear hash and BLAKE3 plus the memtable copy
/// take about as long as each other, and a 1 GiB write waited on one thread doing
/// both. Smaller streams (most files) are not worth a thread.
const PIPELINE_FROM: u64 = 4 << 20;

/// Stores the chunks `chunks` cuts (about `expected` bytes of the file from offset
/// `from`), asking `decide(start, end)` (file offsets) about each chunk, into
/// `sink`; returns the chunks in order.
fn store_chunks(
    repo: &Repo,
    chunks: impl Iterator<Item = std::result::Result<ChunkBytes, chunking::ChunkingError>>,
    from: u64,
    expected: u64,
    sink: Sink<'_>,
    mut decide: impl FnMut(u64, u64) -> Cut,
) -> Result<Vec<chunking::ChunkRef>> {
    let (wal_bytes, mut staged) = match sink {
        Sink::Store { wal_bytes } => (wal_bytes, None),
        Sink::Stage(staged) => (0, Some(staged)),
    };
    let store = |bytes: ChunkBytes, logged: &mut u64| -> Result<chunking::ChunkRef> {
        let r = chunking::ChunkRef::of(&bytes);
        let wal = *logged < wal_bytes;
        if repo.store().put_chunk_opt(r.id, &bytes, wal)? && wal {
            *logged += bytes.len() as u64;
        }
        Ok(r)
    };
    let mut pos = from;
    let mut next = |bytes: &[u8]| -> (bool, bool) {
        let end = pos + bytes.len() as u64;
        let (take, go_on) = match decide(pos, end) {
            Cut::Take => (true, true),
            Cut::TakeAndStop => (true, false),
            Cut::Stop => (false, false),
        };
        pos = end;
        (take, go_on)
    };
    // Staged content is small (`STAGE_MAX`): never worth the pipeline.
    if expected < PIPELINE_FROM || staged.is_some() {
        let mut refs = Vec::new();
        let mut logged = 0;
        for c in chunks {
            let bytes = c?;
            let (take, go_on) = next(&bytes);
            if take {
                refs.push(match staged.as_deref_mut() {
                    Some(staged) => {
                        let r = chunking::ChunkRef::of(&bytes);
                        repo.store().stage_chunk(staged, r.id, &bytes)?;
                        r
                    }
                    None => store(bytes, &mut logged)?,
                });
            }
            if !go_on {
                break;
            }
        }
        return Ok(refs);
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ChunkBytes>(8);
        let worker = std::thread::Builder::new().name("chunk-store".into()).spawn_scoped(
            s,
            move || -> Result<Vec<chunking::ChunkRef>> {
                let mut refs = Vec::new();
                let mut logged = 0;
                for bytes in rx {
                    refs.push(store(bytes, &mut logged)?);
                }
                Ok(refs)
            },
        )?;
        let mut cut_error = None;
        for c in chunks {
            let bytes = match c {
                Ok(b) => b,
                Err(e) => {
                    cut_error = Some(e);
                    break;
                }
            };
            let (take, go_on) = next(&bytes);
            // A failed send means the worker stopped on an error it returns below.
            if take && tx.send(bytes).is_err() || !go_on {
                break;
            }
        }
        drop(tx);
        let refs = worker.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        match cut_error {
            Some(e) => Err(e.into()),
            None => Ok(refs),
        }
    })
}

/// Where a pass reads the bytes it chunks: the spill file, or the in-memory tail's
/// blocks (shared with the file, which starts a new block rather than append to one
/// a pass holds).
enum PlanSource {
    File(File),
    Tail(Vec<(u64, Arc<Vec<u8>>)>),
}

/// Reads `[pos, end)` of a spill file for a pass.
struct SpillReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SpillReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = (out.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut out[..n], self.pos)?;
        if got == 0 {
            // Truncated under the pass: a cut made at this early end would store a
            // chunk the file never has.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl DirtyFile {
    pub fn new(base: Arc<ChunkList>, size: u64, spill_path: PathBuf, mtime: Timestamp) -> Self {
        let base_valid = base.len_bytes().min(size);
        DirtyFile {
            base,
            base_valid,
            size,
            ranges: BTreeMap::new(),
            spill: Spill::None,
            spill_path,
            mtime,
            pending: false,
            pre: ChunkList::default(),
            generation: 0,
            planned_to: 0,
            stuck: false,
        }
    }

    /// Written from scratch: nothing of the base survives, so chunking from offset 0
    /// can run ahead of the commit.
    fn fresh(&self) -> bool {
        self.base_valid == 0
    }

    /// Forgets pre-chunked data at or past `offset` (it is being changed), and the
    /// result of any pass still reading there. Checking only `pre.len_bytes()` let a pass
    /// that had not reported yet install chunks of bytes rewritten meanwhile.
    fn invalidate_pre(&mut self, offset: u64) {
        if offset < self.pre.len_bytes().max(self.planned_to) {
            self.pre = ChunkList::default();
            self.planned_to = 0;
            self.generation += 1;
        }
    }

    /// A background chunking pass worth running now, if any.
    pub fn prechunk_plan(&mut self) -> Option<PrechunkPlan> {
        if !self.fresh() || self.size < self.pre.len_bytes() + PRECHUNK_AFTER {
            return None;
        }
        // Only a contiguous written prefix can be chunked ahead.
        let (&s, &e) = self.ranges.iter().next()?;
        if s != 0 || e < self.pre.len_bytes() + PRECHUNK_AFTER {
            return None;
        }
        // Short passes: a writer held back by a full tail resumes after one of
        // them, rather than after the whole backlog is chunked.
        let e = e.min(self.pre.len_bytes() + PASS_MAX);
        let source = match &self.spill {
            Spill::File(f) => PlanSource::File(f.try_clone().ok()?),
            Spill::Tail(t) => PlanSource::Tail(t.blocks_from(self.pre.len_bytes())),
            _ => return None,
        };
        self.planned_to = self.planned_to.max(e);
        Some(PrechunkPlan {
            source,
            from: self.pre.len_bytes(),
            to: e,
            generation: self.generation,
        })
    }

    /// Records a finished pass unless a write below its range raced with it, or it
    /// does not start where the pre-chunked data ends (two passes planned from the
    /// same point, the second started after the first reported: appending its
    /// chunks would repeat bytes). True if the pass's chunks now belong to the file.
    pub fn prechunk_apply(&mut self, done: PrechunkDone) -> bool {
        if done.generation != self.generation || !self.fresh() || done.from != self.pre.len_bytes() {
            return false;
        }
        if done.refs.is_empty() {
            // No progress (no room for chunks ahead): a writer waiting for the
            // in-memory tail to shrink must move it to the spill file instead.
            self.stuck = true;
        }
        self.pre.extend(done.refs);
        if let Spill::Tail(t) = &mut self.spill {
            t.forget_below(self.pre.len_bytes());
        }
        true
    }

    /// A pass failed (e.g. the disk is full): a writer waiting for the in-memory
    /// tail to shrink must not wait for passes that fail again.
    pub fn prechunk_failed(&mut self) {
        self.stuck = true;
    }

    /// The in-memory tail of a file written from scratch holds more than a file
    /// may keep there: the writer should wait for a background pass to chunk it
    /// (or, if passes make no progress, call `tail_to_spill`).
    pub fn tail_pressure(&self) -> TailPressure {
        match &self.spill {
            Spill::Tail(t) if t.bytes > TAIL_MAX_PER_FILE => {
                if self.stuck {
                    TailPressure::Stuck
                } else {
                    TailPressure::Wait
                }
            }
            _ => TailPressure::None,
        }
    }

    /// Leaves the in-memory tail mode: the pre-chunked prefix becomes the base
    /// (as if committed, but with no version yet: `pending`), and the bytes past it
    /// move to the spill file. Called before any write that is not an append, any
    /// truncate, and when memory for tails runs short.
    pub fn tail_to_spill(&mut self) -> Result<()> {
        let Spill::Tail(t) = &self.spill else { return Ok(()) };
        let from = self.pre.len_bytes();
        tracing::debug!(
            size = self.size,
            tail = t.bytes,
            prechunked = from,
            "moving a file's in-memory tail to its spill file"
        );
        let f = self.new_spill_file()?;
        for (off, block) in t.blocks.iter() {
            let end = off + block.len() as u64;
            if end > from {
                let skip = from.saturating_sub(*off) as usize;
                f.write_all_at(&block[skip..], off + skip as u64)?;
            }
        }
        self.spill = Spill::File(f);
        self.stuck = false;
        let pre = std::mem::take(&mut self.pre);
        self.planned_to = 0;
        self.generation += 1;
        let chunked = pre.len_bytes();
        if chunked > 0 {
            self.base = Arc::new(pre);
            self.base_valid = chunked;
            self.pending = true;
            self.ranges.clear();
            if chunked < self.size {
                self.ranges.insert(chunked, self.size);
            }
        }
        Ok(())
    }

    /// True if there is anything to commit.
    pub fn is_dirty(&self) -> bool {
        self.pending
            || !self.ranges.is_empty()
            || self.base_valid < self.base.len_bytes()
            || self.size != self.base.len_bytes()
    }

    /// An append to a file written from scratch and still one range from 0: its
    /// bytes can go to the in-memory tail.
    fn is_pure_append(&self, offset: u64) -> bool {
        let one_range = match self.ranges.len() {
            0 => self.size == 0,
            1 => self.ranges.first_key_value() == Some((&0, &self.size)),
            _ => false,
        };
        offset == self.size && self.fresh() && one_range
    }

    /// Stores written bytes at their offset: in memory while the file's written
    /// extent is small (no spill file to create and delete per small file), in an
    /// in-memory tail while a file is appended from scratch (background passes chunk
    /// and drop it), in the spill file otherwise.
    fn spill_write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        if end > MEM_SPILL_MAX && self.is_pure_append(offset) {
            if let Spill::Tail(t) = &mut self.spill {
                if t.admit(data.len() as u64) {
                    t.append(offset, data);
                    return Ok(());
                }
            } else if !matches!(self.spill, Spill::File(_)) && self.spill_len() == offset {
                if let Some(mut t) = Tail::admitting(end) {
                    if let Spill::Mem(v) = std::mem::replace(&mut self.spill, Spill::None) {
                        t.adopt(v);
                    }
                    t.append(offset, data);
                    self.spill = Spill::Tail(t);
                    return Ok(());
                }
            }
        }
        if let Spill::Tail(_) = self.spill {
            self.tail_to_spill()?;
        }
        match &mut self.spill {
            Spill::Mem(v) if end <= MEM_SPILL_MAX => {
                if (v.len() as u64) < end {
                    v.resize(end as usize, 0);
                }
                v[offset as usize..end as usize].copy_from_slice(data);
            }
            Spill::None if end <= MEM_SPILL_MAX => {
                let mut v = vec![0u8; end as usize];
                v[offset as usize..].copy_from_slice(data);
                self.spill = Spill::Mem(v);
            }
            Spill::File(f) => f.write_all_at(data, offset)?,
            _ => {
                let f = self.new_spill_file()?;
                if let Spill::Mem(v) = &self.spill {
                    f.write_all_at(v, 0)?;
                }
                f.write_all_at(data, offset)?;
                self.spill = Spill::File(f);
            }
        }
        Ok(())
    }

    /// The spill file, created empty (or emptied).
    fn new_spill_file(&self) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.spill_path)
    }

    /// Bytes held in memory from offset 0 (`Spill::None` / `Spill::Mem`).
    fn spill_len(&self) -> u64 {
        match &self.spill {
            Spill::Mem(v) => v.len() as u64,
            _ => 0,
        }
    }

    /// Appends `[offset, offset + len)` of the written bytes to `out`.
    fn spill_read(&self, repo: &Repo, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        match &self.spill {
            Spill::Mem(v) => out.extend_from_slice(&v[offset as usize..(offset + len) as usize]),
            Spill::File(f) => {
                out.resize(start + len as usize, 0);
                f.read_exact_at(&mut out[start..], offset)?;
            }
            Spill::Tail(t) => {
                // Below the tail's start the bytes are already chunked and stored.
                let below = (t.start.saturating_sub(offset)).min(len);
                if below > 0 {
                    repo.read_chunks(&self.pre, offset, below, out)?;
                }
                let from = out.len();
                out.resize(start + len as usize, 0);
                chunking::copy_blocks(&t.blocks, offset + below, &mut out[from..]);
            }
            Spill::None => unreachable!("a dirty range implies spilled bytes"),
        }
        Ok(())
    }

    fn drop_spill(&mut self) {
        if let Spill::File(_) = std::mem::replace(&mut self.spill, Spill::None) {
            let _ = std::fs::remove_file(&self.spill_path);
        }
    }

    pub fn write(&mut self, repo: &Repo, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !repo.store().admit_bytes(data.len() as u64) {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
        }
        if matches!(self.spill, Spill::Tail(_)) && !self.is_pure_append(offset) {
            // Before the pre-chunked prefix is forgotten: it holds bytes the
            // tail no longer has.
            self.tail_to_spill()?;
        }
        self.invalidate_pre(offset);
        self.spill_write(offset, data)?;
        let end = offset + data.len() as u64;
        self.add_range(offset, end);
        self.size = self.size.max(end);
        self.mtime = Timestamp::now();
        Ok(())
    }

    fn add_range(&mut self, mut start: u64, mut end: u64) {
        // Merge with every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    pub fn truncate(&mut self, size: u64) -> Result<()> {
        self.tail_to_spill()?;
        self.invalidate_pre(size);
        if size < self.size {
            let cut: Vec<(u64, u64)> = self
                .ranges
                .range(..)
                .filter(|(_, &e)| e > size)
                .map(|(&s, &e)| (s, e))
                .collect();
            for (s, _) in cut {
                let e = self.ranges.remove(&s).expect("listed above");
                if s < size {
                    self.ranges.insert(s, size.min(e));
                }
            }
            self.base_valid = self.base_valid.min(size);
            match &mut self.spill {
                Spill::File(f) => f.set_len(size)?,
                Spill::Mem(v) => v.truncate(size as usize),
                Spill::None | Spill::Tail(_) => {}
            }
        }
        self.size = size;
        self.mtime = Timestamp::now();
        Ok(())
    }

    /// Next segment starting at `pos`: (end, source) where source says where its bytes
    /// come from.
    fn segment(&self, pos: u64) -> (u64, Source) {
        if let Some((&s, &e)) = self.ranges.range(..=pos).next_back() {
            if pos < e {
                return (e, Source::Spill);
            }
            debug_assert!(s <= pos);
        }
        let next_dirty = self.ranges.range(pos..).next().map(|(&s, _)| s).unwrap_or(u64::MAX);
        if pos < self.base_valid {
            (self.base_valid.min(next_dirty), Source::Base)
        } else {
            (self.size.min(next_dirty), Source::Zero)
        }
    }

    /// Reads `[offset, offset + len)` of the current logical content into `out`.
    pub fn read(&self, repo: &Repo, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<()> {
        let end = (offset + len).min(self.size);
        let mut pos = offset;
        while pos < end {
            let (seg_end, src) = self.segment(pos);
            let to = seg_end.min(end);
            match src {
                Source::Spill => self.spill_read(repo, pos, to - pos, out)?,
                Source::Base => repo.read_chunks(&self.base, pos, to - pos, out)?,
                Source::Zero => out.resize(out.len() + (to - pos) as usize, 0),
            }
            pos = to;
        }
        Ok(())
    }

    /// The committed content this state stands for, if nothing is written on top of
    /// it: what a copy from this file may share.
    pub fn clean_content(&self) -> Option<(Arc<ChunkList>, u64)> {
        (!self.is_dirty()).then(|| (self.base.clone(), self.size))
    }

    /// `copy_file_range` by sharing chunks instead of copying bytes: makes
    /// `[offset, offset + n)` of this file the same range of `src` (`src_size`
    /// bytes), n = `len` cut at the source's end. Only where that is the whole
    /// effect: the copy lands at the same offset, exactly at this file's end, and
    /// this file is either empty or holds nothing but `src`'s content below
    /// `offset` (an earlier call of the same copy: a copy larger than a FUSE reply
    /// can count returns short, and `cp` asks again from there).
    /// Then only the chunk at the copy's end is cut again at commit, and a copy of
    /// a whole file cuts nothing. `None` if the copy must move bytes after all.
    pub fn share_from(&mut self, src: &Arc<ChunkList>, src_size: u64, offset: u64, len: u64) -> Option<u64> {
        let untouched = self.ranges.is_empty()
            && self.pre.len_bytes() == 0
            && self.planned_to == 0
            && !matches!(self.spill, Spill::Tail(_))
            && self.size == offset
            && self.base_valid == offset;
        let same_base = offset == 0 || Arc::ptr_eq(&self.base, src) || self.base.refs() == src.refs();
        if !untouched || !same_base || src.len_bytes() != src_size || offset > src_size {
            return None;
        }
        let n = len.min(src_size - offset);
        self.base = src.clone();
        self.base_valid = offset + n;
        self.size = offset + n;
        // A copy of a whole file leaves nothing for `is_dirty` to see.
        self.pending = true;
        self.generation += 1;
        self.mtime = Timestamp::now();
        Some(n)
    }

    /// Emptied (truncated to 0) and nothing written since: what O_TRUNC leaves.
    pub fn only_emptied(&self) -> bool {
        self.size == 0 && self.ranges.is_empty() && !self.pending
    }

    /// The version holding the last `commit_content` result is durable.
    pub fn committed(&mut self) {
        self.pending = false;
    }

    /// The version of `new` (from `prepare_content`) is recorded.
    pub fn content_committed(&mut self, new: NewContent) {
        if let Some(list) = new.list {
            self.install(list);
        }
        self.committed();
    }

    /// Chunks what changed, stores the new chunks and manifest, and makes the result
    /// the new base. Returns the new (size, manifest root).
    pub fn commit_content(&mut self, repo: &Repo) -> Result<(u64, Option<ChunkId>)> {
        let new = self.chunk_content(repo, None)?;
        Ok((new.size, new.root))
    }

    /// As `commit_content`, but when little is new (a small file) its chunks are
    /// staged for the record's own write (`Repo::commit_staged`) and the file is
    /// left as it is until `committed` installs them: if the commit fails, nothing
    /// of it was stored and the written bytes are still here for the next attempt.
    pub fn prepare_content(&mut self, repo: &Repo) -> Result<NewContent> {
        let mut staged = StagedChunks::default();
        let new = self.chunk_content(repo, Some(&mut staged))?;
        Ok(NewContent { staged, ..new })
    }

    /// The chunking of `commit_content`/`prepare_content`. Stages into `stage` if
    /// given and at most `STAGE_MAX` bytes need chunking; otherwise stores and
    /// installs.
    fn chunk_content(&mut self, repo: &Repo, stage: Option<&mut StagedChunks>) -> Result<NewContent> {
        let base = self.base.clone();
        let base_len = base.len_bytes();
        let tail_changed = self.base_valid < base_len || self.size != base_len;
        let first_dirty = self.ranges.keys().next().copied();
        let first_change = match (first_dirty, tail_changed) {
            (Some(d), true) => d.min(self.base_valid),
            (Some(d), false) => d,
            (None, true) => self.base_valid,
            (None, false) => {
                self.pending = true;
                let root = match stage {
                    Some(staged) => repo.stage_manifest(base.refs(), staged)?,
                    None => repo.store_manifest(base.refs())?,
                };
                return Ok(NewContent::installed(self.size, root));
            }
        };
        let last_change_end = if tail_changed {
            self.size
        } else {
            self.ranges.values().copied().max().unwrap_or(0)
        };
        // Restart chunking at the start of the chunk holding the first change (or the
        // last chunk, whose end was cut by EOF rather than content, when appending).
        let restart_idx = match base.index_at(first_change) {
            Some(i) => i,
            None => base.refs().len().saturating_sub(1),
        };
        let restart = if base.refs().is_empty() {
            0
        } else {
            base.start(restart_idx)
        };
        let mut refs: Vec<chunking::ChunkRef> = base.refs()[..restart_idx.min(base.refs().len())].to_vec();
        let restart = if self.fresh() && self.pre.len_bytes() > 0 {
            // Chunks cut in the background already cover [0, upto).
            refs = self.pre.refs().to_vec();
            self.pre.len_bytes()
        } else {
            restart
        };
        let reader = LogicalReader {
            file: self,
            repo,
            pos: restart,
            end: self.size,
            buf: Vec::new(),
            buf_pos: 0,
        };
        // The first few MiB of a commit go through the WAL (small files: no flush);
        // past that, chunks skip the WAL and one flush makes them durable before the
        // record is written. Past the last change, chunking stops where a cut meets
        // one of the old version's: the rest of its chunks are reused as they are.
        let size = self.size;
        let meets_old =
            |end: u64| end >= last_change_end && end < size && !tail_changed && base.boundary_at(end).is_some();
        let chunks = chunking::cut(reader).map(|c| c.map(ChunkBytes::Owned));
        let mut stage = stage.filter(|_| size - restart <= STAGE_MAX);
        let sink = match stage.as_deref_mut() {
            Some(staged) => Sink::Stage(staged),
            None => Sink::Store {
                wal_bytes: WAL_BYTES_PER_COMMIT,
            },
        };
        let fresh_refs = store_chunks(repo, chunks, restart, size - restart, sink, |_, end| {
            if meets_old(end) {
                Cut::TakeAndStop
            } else {
                Cut::Take
            }
        })?;
        let pos = restart + fresh_refs.iter().map(|r| r.len as u64).sum::<u64>();
        refs.extend(fresh_refs);
        if meets_old(pos) {
            let j = base.boundary_at(pos).expect("checked by meets_old");
            refs.extend_from_slice(&base.refs()[j..]);
        }
        let list = ChunkList::new(refs);
        if list.len_bytes() != self.size {
            // A bookkeeping bug must cost this commit (EIO; the next commit point
            // chunks everything afresh), never record a version with the wrong bytes.
            // An in-memory tail no longer holds the pre-chunked bytes: keep them.
            if !matches!(self.spill, Spill::Tail(_)) {
                self.pre = ChunkList::default();
            }
            self.planned_to = 0;
            self.generation += 1;
            return Err(std::io::Error::other(format!(
                "chunked {} bytes of a {}-byte file; not committing",
                list.len_bytes(),
                self.size
            ))
            .into());
        }
        if let Some(staged) = stage {
            let root = repo.stage_manifest(list.refs(), staged)?;
            return Ok(NewContent {
                size,
                root,
                list: Some(list),
                staged: StagedChunks::default(),
            });
        }
        let root = repo.store_manifest(list.refs())?;
        self.install(list);
        Ok(NewContent::installed(size, root))
    }

    /// Makes `list` (stored) the new base: the written bytes are no longer needed.
    fn install(&mut self, list: ChunkList) {
        self.base = Arc::new(list);
        self.base_valid = self.size;
        self.ranges.clear();
        self.pre = ChunkList::default();
        self.planned_to = 0;
        self.generation += 1;
        self.pending = true;
        self.drop_spill();
    }
}

impl Drop for DirtyFile {
    fn drop(&mut self) {
        self.drop_spill();
    }
}

/// Where written bytes wait for the next commit.
enum Spill {
    None,
    Mem(Vec<u8>),
    /// Bytes `[start, size)` of a file appended from scratch; the bytes below are
    /// in the pre-chunked prefix.
    Tail(Tail),
    File(File),
}

/// What a writer should do about a file's in-memory tail (see `tail_pressure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailPressure {
    None,
    /// Wait for a background pass to chunk part of it.
    Wait,
    /// Passes make no progress: move it to the spill file.
    Stuck,
}

/// One file may keep this much unchunked data in memory before its writer waits
/// for chunking to catch up; that also bounds what close or fsync still chunk.
const TAIL_MAX_PER_FILE: u64 = 32 << 20;
/// All files together keep at most this much in memory tails; past it, files
/// append through their spill files.
const TAIL_MAX_TOTAL: u64 = 128 << 20;
/// Bytes held by all in-memory tails of this process.
static TAIL_BYTES: AtomicU64 = AtomicU64::new(0);
/// Appends go into blocks of at least this size.
const TAIL_BLOCK: usize = 1 << 20;

/// The unchunked end of a file appended from scratch, kept in memory: writing it
/// to a spill file and reading it back for chunking was a quarter of the node's
/// CPU while writing a large file.
struct Tail {
    /// Offset of the first byte held.
    start: u64,
    /// Contiguous blocks (offset, bytes), from `start` to the file's end.
    blocks: VecDeque<(u64, Arc<Vec<u8>>)>,
    /// Bytes held (counted in `TAIL_BYTES`).
    bytes: u64,
}

impl Tail {
    /// An empty tail for a file about to put `bytes` there, if memory for tails
    /// allows.
    fn admitting(bytes: u64) -> Option<Tail> {
        let t = Tail {
            start: 0,
            blocks: VecDeque::new(),
            bytes: 0,
        };
        t.admit(bytes).then_some(t)
    }

    fn admit(&self, more: u64) -> bool {
        TAIL_BYTES.load(Ordering::Acquire) + more <= TAIL_MAX_TOTAL
    }

    /// Takes over the file's small in-memory bytes (offset 0).
    fn adopt(&mut self, v: Vec<u8>) {
        let n = v.len() as u64;
        if n > 0 {
            self.blocks.push_back((0, Arc::new(v)));
            self.bytes += n;
            TAIL_BYTES.fetch_add(n, Ordering::AcqRel);
        }
    }

    fn end(&self) -> u64 {
        self.blocks.back().map_or(self.start, |(o, b)| o + b.len() as u64)
    }

    fn append(&mut self, offset: u64, data: &[u8]) {
        debug_assert_eq!(offset, self.end());
        let n = data.len() as u64;
        match self.blocks.back_mut().and_then(|(_, b)| Arc::get_mut(b)) {
            Some(b) if b.capacity() - b.len() >= data.len() => b.extend_from_slice(data),
            _ => {
                let mut b = Vec::with_capacity(TAIL_BLOCK.max(data.len()));
                b.extend_from_slice(data);
                self.blocks.push_back((offset, Arc::new(b)));
            }
        }
        self.bytes += n;
        TAIL_BYTES.fetch_add(n, Ordering::AcqRel);
    }

    /// Shared handles on the blocks holding bytes at or past `from`.
    fn blocks_from(&self, from: u64) -> Vec<(u64, Arc<Vec<u8>>)> {
        self.blocks
            .iter()
            .filter(|(o, b)| o + b.len() as u64 > from)
            .map(|(o, b)| (*o, b.clone()))
            .collect()
    }

    /// Drops the blocks that end at or below `upto` (chunked and stored).
    fn forget_below(&mut self, upto: u64) {
        while let Some((o, b)) = self.blocks.front() {
            let end = o + b.len() as u64;
            if end > upto {
                break;
            }
            let n = b.len() as u64;
            self.blocks.pop_front();
            self.bytes -= n;
            self.start = end;
            TAIL_BYTES.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        TAIL_BYTES.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Written extents up to this size stay in memory.
const MEM_SPILL_MAX: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Spill,
    Base,
    Zero,
}

/// Streams the logical content of a dirty file for re-chunking.
struct LogicalReader<'a> {
    file: &'a DirtyFile,
    repo: &'a Repo,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl Read for LogicalReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf_pos >= self.buf.len() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let want = (self.end - self.pos).min(256 * 1024);
            self.buf.clear();
            self.buf_pos = 0;
            self.file
                .read(self.repo, self.pos, want, &mut self.buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.pos += self.buf.len() as u64;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DataDir;

    fn repo(dir: &std::path::Path) -> Repo {
        let dd = DataDir::new(dir);
        dd.init(None).unwrap();
        Repo::open(&dd).unwrap()
    }

    use crate::chunking::tests::data as bytes;

    /// Write-back state of a file being written from empty.
    fn fresh_file(repo: &Repo) -> DirtyFile {
        DirtyFile::new(
            Arc::new(ChunkList::default()),
            0,
            repo.data_dir().spill_dir().join("f"),
            Timestamp::now(),
        )
    }

    /// Appends `data` in 1 MiB writes, running each background pass a write plans
    /// right away.
    fn append_with_passes(repo: &Repo, f: &mut DirtyFile, data: &[u8]) {
        for (i, block) in data.chunks(1 << 20).enumerate() {
            f.write(repo, (i << 20) as u64, block).unwrap();
            if let Some(plan) = f.prechunk_plan() {
                f.prechunk_apply(plan.run(repo).unwrap());
            }
        }
    }

    /// Overwrites MiB number `mib` of the file (and of `data`, its expected bytes)
    /// with new bytes.
    fn patch_mib(repo: &Repo, f: &mut DirtyFile, data: &mut [u8], mib: usize, seed: u64) {
        let patch = bytes(1 << 20, seed);
        f.write(repo, (mib << 20) as u64, &patch).unwrap();
        data[mib << 20..(mib + 1) << 20].copy_from_slice(&patch);
    }

    /// Commits the file and reads back the version's bytes; its chunk list must
    /// cover exactly the committed size.
    fn commit_and_read(repo: &Repo, f: &mut DirtyFile) -> Vec<u8> {
        let (size, root) = f.commit_content(repo).unwrap();
        let list = repo.chunk_list(root).unwrap();
        assert_eq!(list.len_bytes(), size);
        let mut got = Vec::new();
        repo.read_chunks(&list, 0, size, &mut got).unwrap();
        // However it was written, the file is cut as its bytes chunked in one go
        // would be: that is what makes equal content dedup, here and on peers.
        let whole: Vec<chunking::ChunkRef> = chunking::split(&got[..]).map(|c| c.unwrap().0).collect();
        assert!(
            list.refs() == &whole[..],
            "cut points differ from chunking the content in one go"
        );
        got
    }

    /// Staged content that never got its record (the commit failed) stored
    /// nothing and changed nothing: the written bytes are still the file's, and
    /// the next attempt stores them. Once committed, the staged chunks are the
    /// file's base.
    #[test]
    fn staged_content_waits_for_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let data = bytes(300 << 10, 7);
        f.write(&repo, 0, &data).unwrap();
        let first = f.prepare_content(&repo).unwrap();
        let root = first.root.expect("non-empty content has a manifest");
        assert!(!first.staged.is_empty(), "small content is staged");
        assert!(first.staged.contains(root), "its manifest node too");
        assert!(
            !repo.store().has_chunk(root).unwrap(),
            "nothing stored before the record"
        );
        drop(first); // the commit failed
        assert!(f.is_dirty());
        let mut got = Vec::new();
        f.read(&repo, 0, data.len() as u64, &mut got).unwrap();
        assert!(got == data, "the written bytes are still there");
        let mut again = f.prepare_content(&repo).unwrap();
        assert_eq!(again.root, Some(root));
        let mut batch = repo.store().batch();
        batch.put_staged(std::mem::take(&mut again.staged)).unwrap();
        repo.store().write(batch).unwrap();
        f.content_committed(again);
        assert!(!f.is_dirty());
        let list = repo.chunk_list(Some(root)).unwrap();
        let mut stored = Vec::new();
        repo.read_chunks(&list, 0, list.len_bytes(), &mut stored).unwrap();
        assert!(stored == data, "the staged chunks were stored with the batch");
    }

    /// A background pass planned before a truncate and rewrite, reporting after
    /// them, must not have its chunks (of the old bytes) committed.
    #[test]
    fn a_pass_that_raced_with_a_rewrite_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let old = bytes(10 << 20, 1);
        f.write(&repo, 0, &old).unwrap();
        let plan = f.prechunk_plan().expect("10 MiB written from scratch");
        let done = plan.run(&repo).unwrap();
        // Meanwhile the writer starts over with other bytes.
        f.truncate(0).unwrap();
        let new = bytes(10 << 20, 2);
        f.write(&repo, 0, &new).unwrap();
        f.prechunk_apply(done);
        let got = commit_and_read(&repo, &mut f);
        assert_eq!(got.len(), new.len());
        assert!(got == new, "committed content is the rewrite, not the old bytes");
    }

    /// Appends from scratch: the bytes wait in memory, passes chunk and drop them,
    /// reads see every byte (below the tail from the stored chunks), and a rewrite
    /// in the middle moves the rest to the spill file with the chunked prefix as
    /// its base. Nothing is lost on the way.
    #[test]
    fn an_appended_file_keeps_its_tail_in_memory_until_a_rewrite() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let mut data = bytes(40 << 20, 4);
        append_with_passes(&repo, &mut f, &data);
        let Spill::Tail(t) = &f.spill else {
            panic!("appends from scratch stay in memory")
        };
        assert!(t.start > 0, "passes dropped the chunked blocks");
        assert!(!f.spill_path.exists(), "no spill file");
        let mut got = Vec::new();
        f.read(&repo, 0, data.len() as u64, &mut got).unwrap();
        assert!(got == data, "reads see chunked and in-memory bytes");
        // Rewrite 1 MiB in the chunked prefix.
        patch_mib(&repo, &mut f, &mut data, 3, 5);
        assert!(matches!(f.spill, Spill::File(_)));
        assert!(commit_and_read(&repo, &mut f) == data);
    }

    /// Background passes over appends, and a later patch that re-chunks only
    /// around itself, both leave the cuts of chunking the content in one go.
    #[test]
    fn passes_and_patches_cut_as_chunking_in_one_go() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let mut data = bytes(40 << 20, 8);
        append_with_passes(&repo, &mut f, &data);
        assert!(f.pre.len_bytes() > 16 << 20, "several passes ran");
        assert!(commit_and_read(&repo, &mut f) == data);
        f.committed();
        patch_mib(&repo, &mut f, &mut data, 7, 9);
        assert!(commit_and_read(&repo, &mut f) == data);
    }

    /// A truncate of an appended file leaves the memory tail; the kept bytes and
    /// later appends are all there.
    #[test]
    fn a_truncate_keeps_the_bytes_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let mut data = bytes(30 << 20, 6);
        f.write(&repo, 0, &data[..1 << 20]).unwrap();
        f.write(&repo, 1 << 20, &data[1 << 20..]).unwrap();
        let plan = f.prechunk_plan().unwrap();
        f.prechunk_apply(plan.run(&repo).unwrap());
        f.truncate(20 << 20).unwrap();
        data.truncate(20 << 20);
        let more = bytes(2 << 20, 7);
        f.write(&repo, 20 << 20, &more).unwrap();
        data.extend_from_slice(&more);
        assert!(commit_and_read(&repo, &mut f) == data);
    }

    /// Two passes planned from the same point, the second run after the first
    /// reported: the second's chunks must not be appended again.
    #[test]
    fn a_second_pass_from_the_same_start_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let mut f = fresh_file(&repo);
        let data = bytes(20 << 20, 3);
        f.write(&repo, 0, &data[..10 << 20]).unwrap();
        let first = f.prechunk_plan().unwrap();
        let second = f.prechunk_plan().unwrap();
        f.prechunk_apply(first.run(&repo).unwrap());
        f.write(&repo, 10 << 20, &data[10 << 20..]).unwrap();
        f.prechunk_apply(second.run(&repo).unwrap());
        assert!(commit_and_read(&repo, &mut f) == data);
    }

    /// A copy by sharing takes the source's chunks as they are (a whole copy cuts
    /// nothing new), in parts as the kernel splits it, and refuses where sharing
    /// would not be the copy's whole effect.
    #[test]
    fn a_shared_copy_is_the_source_in_parts_or_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo(tmp.path());
        let data = bytes(3 << 20, 21);
        let mut src = fresh_file(&repo);
        src.write(&repo, 0, &data).unwrap();
        let (size, root) = src.commit_content(&repo).unwrap();
        src.committed();
        let list = repo.chunk_list(root).unwrap();

        let mut whole = fresh_file(&repo);
        assert_eq!(whole.share_from(&list, size, 0, u64::MAX), Some(size));
        assert!(whole.is_dirty(), "a whole copy must still be committed");
        let (_, whole_root) = whole.commit_content(&repo).unwrap();
        assert_eq!(whole_root, root, "a whole copy is the source's manifest");

        let mut parts = fresh_file(&repo);
        assert_eq!(parts.share_from(&list, size, 0, 1_000_001), Some(1_000_001));
        assert_eq!(parts.share_from(&list, size, 5, 10), None, "not at the end");
        assert_eq!(parts.share_from(&list, size, 1_000_001, 1 << 20), Some(1 << 20));
        let end = 1_000_001 + (1 << 20);
        assert_eq!(commit_and_read(&repo, &mut parts), data[..end]);

        let mut written = fresh_file(&repo);
        written.write(&repo, 0, b"x").unwrap();
        assert_eq!(written.share_from(&list, size, 1, 10), None, "holds written bytes");
        assert_eq!(
            src.clean_content().map(|(l, s)| (l.refs().to_vec(), s)),
            Some((list.refs().to_vec(), size))
        );
        src.write(&repo, 0, b"y").unwrap();
        assert!(src.clean_content().is_none(), "a written source has no clean content");
    }
}
