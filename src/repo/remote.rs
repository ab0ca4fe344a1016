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
    #[error("record {version} by {author} names an invalid file name {name:?}")]
    BadName {
        version: VersionId,
        author: NodeId,
        name: String,
    },
}

/// A name a directory entry can have: not empty, not `.`/`..`, no `/` or NUL.
fn valid_name(n: &[u8]) -> bool {
    !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
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
    pub fn records_of(
        &self,
        author: NodeId,
        from: u64,
        to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>> {
        if author == self.node {
            // Durable before anyone else holds them: a seq we hand out must never
            // be reused after a power loss.
            self.sign_pending()?;
            self.sync()?;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, v) in self.store.versions_of_author(author, from, to, limit)? {
            match self.store.get_record(v)? {
                Some(b) if SignedRecord::is_signed(&b) => {
                    bytes += b.len();
                    if bytes > max_bytes && !out.is_empty() {
                        break;
                    }
                    out.push(b);
                }
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
            if let Some(l) = r.record.location.iter().find(|l| !valid_name(&l.name)) {
                out.rejected.push(Rejected::BadName {
                    version: r.id,
                    author,
                    name: String::from_utf8_lossy(&l.name).into_owned(),
                });
                // Later records of this author then wait behind it (seq order keeps
                // the vector exact): a member that sends such names is broken.
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

    /// True if a purge (stored, or joining in `tx`) names `v`.
    fn purge_marked(&self, v: VersionId, tx: &Apply) -> bool {
        self.purged.lock().contains_key(&v) || tx.purged.iter().any(|(p, _)| *p == v)
    }

    /// Chunks a pending record still needs. A missing manifest node comes back
    /// alone (its children are unknown until it arrives); then the data chunks.
    pub fn missing_chunks(&self, v: VersionId) -> Result<Vec<ChunkId>> {
        let Some(r) = self.pending.lock().get(&v).cloned() else {
            return Ok(Vec::new());
        };
        if self.purged.lock().contains_key(&v) {
            // Purged: its data may exist nowhere; it joins once a version that
            // supersedes it is here (see `integrate_ready`).
            return Ok(Vec::new());
        }
        self.missing_chunks_of(&r, usize::MAX)
    }

    /// A pending record and how many bytes of its data are not here yet (its whole
    /// size while the manifest itself is missing). None once it joined.
    pub fn pending_progress(&self, v: VersionId) -> Result<Option<(SignedRecord, u64)>> {
        let Some(r) = self.pending.lock().get(&v).cloned() else {
            return Ok(None);
        };
        let Content::File {
            manifest: Some(root),
            size,
        } = r.record.content
        else {
            return Ok(Some((r, 0)));
        };
        if self.purged.lock().contains_key(&v) {
            return Ok(Some((r, 0)));
        }
        let list = match self.chunk_list(Some(root)) {
            Ok(l) => l,
            Err(RepoError::Store(StoreError::MissingChunk { .. })) => return Ok(Some((r, size))),
            Err(e) => return Err(e),
        };
        let mut missing = 0u64;
        let mut seen = std::collections::HashSet::new();
        for c in list.refs() {
            if seen.insert(c.id) && !self.store.has_chunk(c.id)? {
                missing += u64::from(c.len);
            }
        }
        Ok(Some((r, missing.min(size))))
    }

    fn missing_chunks_of(&self, r: &SignedRecord, limit: usize) -> Result<Vec<ChunkId>> {
        let Content::File {
            manifest: Some(root),
            size,
        } = r.record.content
        else {
            return Ok(Vec::new());
        };
        let list = match self.chunk_list(Some(root)) {
            Ok(l) => l,
            Err(RepoError::Store(StoreError::MissingChunk { chunk })) => return Ok(vec![chunk]),
            Err(e) => return Err(e),
        };
        if list.len_bytes() != size {
            return Err(RepoError::BadRemote {
                version: r.id,
                detail: format!("its manifest holds {} bytes but it says {size}", list.len_bytes()),
            });
        }
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

    /// Lets `candidates` (pending records whose chunks the caller saw arrive) join
    /// the tree if their parents are in it, then every pending record that was
    /// waiting for one of them, in one atomic batch. A record whose parent is not
    /// in yet is remembered under that parent, so the cost is per record, not per
    /// call × everything pending. Returns how many joined.
    pub fn integrate_ready(&self, candidates: Vec<VersionId>) -> Result<usize> {
        let _cs = self.commit_state.lock();
        let mut pending = self.pending.lock();
        let mut waiting = self.waiting_parent.lock();
        let mut tx = Apply::new(self);
        let mut joined: Vec<SignedRecord> = Vec::new();
        let mut assigned: HashMap<VersionId, u64> = HashMap::new();
        let mut work = candidates;
        let mut result = Ok(());
        while let Some(v) = work.pop() {
            let Some(r) = pending.get(&v) else { continue };
            let blocked = r
                .record
                .parents
                .iter()
                .find(|p| pending.contains_key(p) || self.store.get_record(**p).ok().flatten().is_none());
            if let Some(p) = blocked {
                let p = *p;
                let w = waiting.entry(p).or_default();
                if !w.contains(&v) {
                    w.push(v);
                }
                if pending.contains_key(&p) && self.purge_marked(p, &tx) {
                    work.push(p); // it may join without its data now that a child waits
                }
                continue;
            }
            // A record that cannot join (bad manifest, a parent of another entry)
            // stays pending and is reported; it must not stop the others.
            match self.missing_chunks_of(r, 1) {
                Ok(m) if m.is_empty() => {}
                // Its data was purged: nobody may have it any more, and the versions
                // after it must not wait for it forever. Only once a version that
                // supersedes it is here, so it never shows as a head without data.
                Ok(_) if self.purge_marked(v, &tx) && waiting.get(&v).is_some_and(|w| !w.is_empty()) => {}
                Ok(_) => continue, // its chunks are still coming: it is a candidate again then
                Err(e) => {
                    tracing::warn!(version = %v, error = %e, "received version cannot join the tree; left aside");
                    continue;
                }
            }
            let mut gens = Vec::new();
            for p in &r.record.parents {
                match assigned
                    .get(p)
                    .copied()
                    .map(Ok)
                    .unwrap_or_else(|| self.generation_of(r.record.entry, *p))
                {
                    Ok(g) => gens.push(g),
                    Err(e) => {
                        tracing::warn!(version = %v, parent = %p, error = %e, "received version names a parent outside its entry; left aside");
                        break;
                    }
                }
            }
            if gens.len() != r.record.parents.len() {
                continue;
            }
            let gen = names::generation(gens);
            let r = pending.remove(&v).expect("looked up above");
            tx.batch.delete_pending(v);
            joined.push(r.clone());
            assigned.insert(v, gen);
            if r.record.content.is_purge() {
                // Pending versions it names may join now even without their data.
                let named = tx.purge(&r);
                work.extend(named.into_iter().filter(|n| pending.contains_key(n)));
            } else if let Err(e) = tx.add_version(r, gen) {
                result = Err(e);
                break;
            }
            work.extend(waiting.remove(&v).unwrap_or_default());
        }
        let outcome = result.and_then(|_| {
            if joined.is_empty() {
                Ok(None)
            } else {
                tx.finish().map(Some)
            }
        });
        match outcome {
            Ok(None) => Ok(0),
            Ok(Some((_, changes))) => {
                drop((pending, waiting));
                self.publish(ChangeBatch {
                    remote: true,
                    kernel_knows: false,
                    changes,
                    seq: 0,
                });
                Ok(joined.len())
            }
            Err(e) => {
                // Nothing was written: they are all still pending.
                for r in joined {
                    pending.insert(r.id, r);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attrs, Content, EntryId, Link, SealVerifier};
    use crate::repo::Draft;
    use crate::store::DataDir;
    use ed25519_dalek::Signer;

    /// A data dir from before seals holds records signed one by one and records not
    /// signed yet (both format 1). After the upgrade the first are served as they are,
    /// the second get sealed, and a peer verifies all of them.
    #[test]
    fn records_signed_one_by_one_and_unsigned_ones_are_served_verifiable() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        dd.init(None).unwrap();
        let repo = Repo::open(&dd).unwrap();
        let dir = |name: &str| Draft {
            location: vec![Link {
                parent: repo.root(),
                name: name.as_bytes().to_vec(),
            }],
            attrs: Attrs {
                mode: 0o755,
                ..Default::default()
            },
            content: Content::Dir,
        };
        repo.commit(vec![(EntryId::random(), dir("a")), (EntryId::random(), dir("b"))])
            .unwrap();
        let ours = repo.store.versions_of_author(repo.node, 1, 100, 100).unwrap();
        assert!(ours.len() >= 2);
        // The oldest one signed as builds before seals did.
        let (_, old) = ours[0];
        let placeholder = repo.store.get_record(old).unwrap().unwrap();
        assert!(!SignedRecord::is_signed(&placeholder));
        let mut legacy = placeholder[..placeholder.len() - 64].to_vec();
        legacy.extend_from_slice(&repo.key.sign(&legacy[5..]).to_bytes());
        let mut b = repo.store.batch();
        b.replace_record(old, &legacy);
        repo.store.write(b).unwrap();

        let served = repo.records_of(repo.node, 1, 100, 100, usize::MAX).unwrap();
        assert_eq!(served.len(), ours.len(), "every record is signed and served");
        assert_eq!(served[0], legacy, "a record signed one by one goes out as it is");
        let mut v = SealVerifier::new();
        for (bytes, (_, id)) in served.iter().zip(&ours) {
            assert_eq!(SignedRecord::decode_verified(bytes, &mut v).unwrap().id, *id);
        }
        assert!(served[1..].iter().all(|b| b[0] == crate::model::record::RECORD_FORMAT));
    }
}
