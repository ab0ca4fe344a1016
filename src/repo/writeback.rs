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
use crate::chunking::{self, ChunkList};
use crate::model::{ChunkId, Timestamp};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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
    /// from scratch (see `prechunk_plan`).
    pre: PreChunked,
    /// Bumped by every write or truncate that lands below `pre.upto` or inside a
    /// range handed to a background pass, so a pass that raced with it throws its
    /// result away.
    generation: u64,
    /// End of the furthest range handed to a background pass since the last
    /// invalidation: the pass may still be reading below it.
    planned_to: u64,
}

/// Chunks of bytes `[0, upto)` of a file written from empty; `upto` is a final cut
/// point (a FastCDC cut depends only on the `MAX_CHUNK` bytes after the chunk start,
/// so a cut at least that far behind the write front never moves).
#[derive(Default)]
struct PreChunked {
    refs: Vec<chunking::ChunkRef>,
    upto: u64,
}

/// What a background pre-chunking pass should read (taken under the lock, run
/// without it).
pub struct PrechunkPlan {
    spill: File,
    from: u64,
    to: u64,
    generation: u64,
}

/// Result of a pass, applied under the lock if nothing raced with it.
pub struct PrechunkDone {
    refs: Vec<chunking::ChunkRef>,
    /// Where the pass started: it only extends pre-chunked data ending there.
    from: u64,
    upto: u64,
    generation: u64,
}

/// Start pre-chunking once this much unchunked data has piled up.
const PRECHUNK_AFTER: u64 = 8 << 20;

impl PrechunkPlan {
    /// Cuts and stores the chunks of the planned range (no lock held).
    pub fn run(self, repo: &Repo) -> Result<PrechunkDone> {
        // Chunks cut ahead are garbage if the file is then deleted or never fits
        // (nothing collects unreferenced chunks yet), and they coexist with the
        // spill copy: only chunk ahead while there is room for several times that.
        if !repo.store().room_for(4 * (self.to - self.from)) {
            return Ok(PrechunkDone {
                refs: Vec::new(),
                from: self.from,
                upto: self.from,
                generation: self.generation,
            });
        }
        let reader = SpillReader {
            file: &self.spill,
            pos: self.from,
            end: self.to,
        };
        let mut refs = Vec::new();
        let mut pos = self.from;
        for c in chunking::split(reader) {
            let (r, bytes) = c?;
            // Only cuts that can no longer move: the chunk start is at least
            // MAX_CHUNK behind the end of what was written when we started.
            if pos + chunking::MAX_CHUNK as u64 > self.to {
                break;
            }
            repo.store().put_chunk_opt(r.id, &bytes, false)?;
            refs.push(r);
            pos += r.len as u64;
        }
        Ok(PrechunkDone {
            refs,
            from: self.from,
            upto: pos,
            generation: self.generation,
        })
    }
}

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
            pre: PreChunked::default(),
            generation: 0,
            planned_to: 0,
        }
    }

    /// Written from scratch: nothing of the base survives, so chunking from offset 0
    /// can run ahead of the commit.
    fn fresh(&self) -> bool {
        self.base_valid == 0
    }

    /// Forgets pre-chunked data at or past `offset` (it is being changed), and the
    /// result of any pass still reading there. Checking only `pre.upto` let a pass
    /// that had not reported yet install chunks of bytes rewritten meanwhile.
    fn invalidate_pre(&mut self, offset: u64) {
        if offset < self.pre.upto.max(self.planned_to) {
            self.pre = PreChunked::default();
            self.planned_to = 0;
            self.generation += 1;
        }
    }

    /// A background chunking pass worth running now, if any.
    pub fn prechunk_plan(&mut self) -> Option<PrechunkPlan> {
        if !self.fresh() || self.size < self.pre.upto + PRECHUNK_AFTER {
            return None;
        }
        // Only a contiguous written prefix can be chunked ahead.
        let (&s, &e) = self.ranges.iter().next()?;
        if s != 0 || e < self.pre.upto + PRECHUNK_AFTER {
            return None;
        }
        let Spill::File(f) = &self.spill else { return None };
        let spill = f.try_clone().ok()?;
        self.planned_to = self.planned_to.max(e);
        Some(PrechunkPlan {
            spill,
            from: self.pre.upto,
            to: e,
            generation: self.generation,
        })
    }

    /// Records a finished pass unless a write below its range raced with it, or it
    /// does not start where the pre-chunked data ends (two passes planned from the
    /// same point, the second started after the first reported: appending its
    /// chunks would repeat bytes).
    pub fn prechunk_apply(&mut self, done: PrechunkDone) {
        if done.generation != self.generation || !self.fresh() || done.from != self.pre.upto {
            return;
        }
        self.pre.refs.extend(done.refs);
        self.pre.upto = done.upto;
    }

    /// True if there is anything to commit.
    pub fn is_dirty(&self) -> bool {
        self.pending
            || !self.ranges.is_empty()
            || self.base_valid < self.base.len_bytes()
            || self.size != self.base.len_bytes()
    }

    /// Stores written bytes at their offset: in memory while the file's written
    /// extent is small (no spill file to create and delete per small file), in the
    /// spill file beyond that.
    fn spill_write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
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
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.spill_path)?;
                if let Spill::Mem(v) = &self.spill {
                    f.write_all_at(v, 0)?;
                }
                f.write_all_at(data, offset)?;
                self.spill = Spill::File(f);
            }
        }
        Ok(())
    }

    fn spill_read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.spill {
            Spill::Mem(v) => buf.copy_from_slice(&v[offset as usize..offset as usize + buf.len()]),
            Spill::File(f) => f.read_exact_at(buf, offset)?,
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
                Spill::None => {}
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
                Source::Spill => {
                    let start = out.len();
                    out.resize(start + (to - pos) as usize, 0);
                    self.spill_read(&mut out[start..], pos)?;
                }
                Source::Base => repo.read_chunks(&self.base, pos, to - pos, out)?,
                Source::Zero => out.resize(out.len() + (to - pos) as usize, 0),
            }
            pos = to;
        }
        Ok(())
    }

    /// Emptied (truncated to 0) and nothing written since: what O_TRUNC leaves.
    pub fn only_emptied(&self) -> bool {
        self.size == 0 && self.ranges.is_empty() && !self.pending
    }

    /// The version holding the last `commit_content` result is durable.
    pub fn committed(&mut self) {
        self.pending = false;
    }

    /// Chunks what changed, stores the new chunks and manifest, and makes the result
    /// the new base. Returns the new (size, manifest root).
    pub fn commit_content(&mut self, repo: &Repo) -> Result<(u64, Option<ChunkId>)> {
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
                return Ok((self.size, repo.store_manifest(base.refs())?));
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
        let restart = if self.fresh() && self.pre.upto > 0 {
            // Chunks cut in the background already cover [0, upto).
            refs = self.pre.refs.clone();
            self.pre.upto
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
        let mut pos = restart;
        // The first few MiB of a commit go through the WAL (small files: no flush);
        // past that, chunks skip the WAL and one flush makes them durable before the
        // record is written.
        let mut logged = 0u64;
        for c in chunking::split(reader) {
            let (r, bytes) = c?;
            let wal = logged < WAL_BYTES_PER_COMMIT;
            if repo.store().put_chunk_opt(r.id, &bytes, wal)? && wal {
                logged += bytes.len() as u64;
            }
            refs.push(r);
            pos += r.len as u64;
            if pos >= last_change_end && pos < self.size && !tail_changed {
                if let Some(j) = base.boundary_at(pos) {
                    refs.extend_from_slice(&base.refs()[j..]);
                    break;
                }
            }
        }
        let list = ChunkList::new(refs);
        if list.len_bytes() != self.size {
            // A bookkeeping bug must cost this commit (EIO; the next commit point
            // chunks everything afresh), never record a version with the wrong bytes.
            self.pre = PreChunked::default();
            self.planned_to = 0;
            self.generation += 1;
            return Err(std::io::Error::other(format!(
                "chunked {} bytes of a {}-byte file; not committing",
                list.len_bytes(),
                self.size
            ))
            .into());
        }
        let root = repo.store_manifest(list.refs())?;
        self.base = Arc::new(list);
        self.base_valid = self.size;
        self.ranges.clear();
        self.pre = PreChunked::default();
        self.planned_to = 0;
        self.generation += 1;
        self.pending = true;
        self.drop_spill();
        Ok((self.size, root))
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
    File(File),
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

    /// Commits the file and reads back the version's bytes; its chunk list must
    /// cover exactly the committed size.
    fn commit_and_read(repo: &Repo, f: &mut DirtyFile) -> Vec<u8> {
        let (size, root) = f.commit_content(repo).unwrap();
        let list = repo.chunk_list(root).unwrap();
        assert_eq!(list.len_bytes(), size);
        let mut got = Vec::new();
        repo.read_chunks(&list, 0, size, &mut got).unwrap();
        got
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
}
