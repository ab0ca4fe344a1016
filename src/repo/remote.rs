//! Records from peers: storing them, telling what data they still need, and letting
//! them join the tree once complete.
//!
//! A received record is stored at once (so our version vector covers it and nobody
//! sends it again) but stays *pending* — invisible — until its parents are part of
//! the tree and every chunk it names is local. So a reader never sees a partial
//! file, and a crash mid-transfer resumes with only the missing chunks.

use super::apply::{Apply, ChangeBatch};
use super::{Repo, RepoError, Result};
use crate::model::{names, ChunkId, Content, Hlc, NodeId, SignedRecord, VersionId};
use crate::store::StoreError;
use std::collections::HashMap;

/// Why a received record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("record {version} by {author} seq {seq}: expected seq {expected} next from that author")]
    OutOfOrder {
        version: VersionId,
        author: NodeId,
        seq: u64,
        expected: u64,
    },
    #[error("record {version} claims to be by this node, which never wrote it (is another node running with a copy of this data dir?)")]
    ForgedSelf { version: VersionId },
}

/// What `receive` did with a batch.
#[derive(Debug, Default)]
pub struct Received {
    /// Newly stored (now pending) record ids.
    pub stored: Vec<VersionId>,
    /// Records refused, with the reason (the caller logs them with the peer).
    pub rejected: Vec<Rejected>,
}

impl Repo {
    /// Our version vector: author → highest seq held. Seqs are stored gap-free (see
    /// `receive`), so this is exact: we hold every record up to it.
    pub fn vector(&self) -> HashMap<NodeId, u64> {
        self.vector.lock().clone()
    }

    /// Signed records of `author` with seq in `from..=to` (at most `limit`), for a
    /// peer. Stops at a record not yet signed (ours, signed shortly).
    pub fn records_of(&self, author: NodeId, from: u64, to: u64, limit: usize) -> Result<Vec<Vec<u8>>> {
        if author == self.node {
            self.sign_pending()?;
        }
        let mut out = Vec::new();
        for (_, v) in self.store.versions_of_author(author, from, to)?.into_iter().take(limit) {
            match self.store.get_record(v)? {
                Some(b) if SignedRecord::is_signed(&b) => out.push(b),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Stores verified records from a peer. Each author's records must arrive in seq
    /// order without gaps (we ask for exact ranges); anything else is refused, which
    /// keeps the version vector exact.
    pub fn receive(&self, mut recs: Vec<SignedRecord>) -> Result<Received> {
        recs.sort_by_key(|r| (r.record.author, r.record.seq));
        let mut cs = self.commit_state.lock();
        let mut out = Received::default();
        let mut batch = self.store.batch();
        let mut vector = self.vector.lock().clone();
        let mut hlc = cs.hlc;
        let mut new_pending = Vec::new();
        for r in recs {
            let (author, seq) = (r.record.author, r.record.seq);
            let have = vector.get(&author).copied().unwrap_or(0);
            if seq <= have {
                continue; // already held (a duplicate answer)
            }
            if author == self.node {
                out.rejected.push(Rejected::ForgedSelf { version: r.id });
                continue;
            }
            if seq != have + 1 {
                out.rejected.push(Rejected::OutOfOrder {
                    version: r.id,
                    author,
                    seq,
                    expected: have + 1,
                });
                continue;
            }
            batch.put_record(r.id, author, seq, &r.bytes);
            batch.put_pending(r.id);
            vector.insert(author, seq);
            hlc = Hlc::observe(hlc, r.record.hlc);
            out.stored.push(r.id);
            new_pending.push(r);
        }
        if out.stored.is_empty() {
            return Ok(out);
        }
        self.store.write(batch)?;
        cs.hlc = hlc;
        *self.vector.lock() = vector;
        let mut p = self.pending.lock();
        for r in new_pending {
            p.insert(r.id, r);
        }
        Ok(out)
    }

    /// Ids of records waiting to join the tree.
    pub fn pending_ids(&self) -> Vec<VersionId> {
        self.pending.lock().keys().copied().collect()
    }

    /// Chunks a pending record still needs. A missing manifest node comes back
    /// alone (its children are unknown until it arrives); then the data chunks.
    pub fn missing_chunks(&self, v: VersionId) -> Result<Vec<ChunkId>> {
        self.missing_chunks_upto(v, usize::MAX)
    }

    fn missing_chunks_upto(&self, v: VersionId, limit: usize) -> Result<Vec<ChunkId>> {
        let Some(r) = self.pending.lock().get(&v).cloned() else {
            return Ok(Vec::new());
        };
        let Content::File {
            manifest: Some(root), ..
        } = r.record.content
        else {
            return Ok(Vec::new());
        };
        let list = match self.chunk_list(Some(root)) {
            Ok(l) => l,
            Err(RepoError::Store(StoreError::MissingChunk { chunk })) => return Ok(vec![chunk]),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in list.refs() {
            if seen.insert(c.id) && !self.store.has_chunk(c.id)? {
                out.push(c.id);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Lets every pending record whose parents are in the tree and whose chunks are
    /// all local join the tree, in one atomic batch. Returns how many joined.
    pub fn integrate_ready(&self) -> Result<usize> {
        let _cs = self.commit_state.lock();
        let mut pending = self.pending.lock().clone();
        let mut tx = Apply::new(self);
        let mut joined = Vec::new();
        let mut assigned: HashMap<VersionId, u64> = HashMap::new();
        loop {
            let mut progress = false;
            let mut ids: Vec<VersionId> = pending.keys().copied().collect();
            ids.sort_by_key(|v| (pending[v].record.hlc, *v));
            for v in ids {
                let r = &pending[&v];
                let parents_in = r
                    .record
                    .parents
                    .iter()
                    .all(|p| !pending.contains_key(p) && self.store.get_record(*p).ok().flatten().is_some());
                if !parents_in || !self.missing_chunks_upto(v, 1)?.is_empty() {
                    continue;
                }
                let mut gens = Vec::new();
                for p in &r.record.parents {
                    gens.push(match assigned.get(p) {
                        Some(g) => *g,
                        None => self.generation_of(r.record.entry, *p)?,
                    });
                }
                let gen = names::generation(gens);
                let r = pending.remove(&v).expect("listed above");
                tx.batch.delete_pending(v);
                tx.add_version(r, gen)?;
                assigned.insert(v, gen);
                joined.push(v);
                progress = true;
            }
            if !progress {
                break;
            }
        }
        if joined.is_empty() {
            return Ok(0);
        }
        let (_, changes) = tx.finish()?;
        let mut p = self.pending.lock();
        for v in &joined {
            p.remove(v);
        }
        drop(p);
        self.publish(ChangeBatch { remote: true, changes });
        Ok(joined.len())
    }
}
