//! What an entry with several heads shows: the field-by-field merge of DESIGN.md.
//!
//! Each head names, per field group, the version that last set it (`content_from`,
//! `location_from`, `attrs_from`). For each field we take those stamps over the live
//! heads and drop every one that is an ancestor of another: one left means one side
//! changed the field (or both made the same change) and it simply wins; several left
//! is a real clash, decided by the latest (HLC, author) of the version that made the
//! change. A clash on content is a *conflict*: the losers stay visible as
//! `name@vN` entries until someone dismisses them or resolves. Tombstones lose to
//! any live head (a delete never destroys a concurrent edit).
//!
//! Everything here depends only on the heads and the records they reach, so every
//! node holding the same records resolves an entry the same way.

use super::{EntryState, Result};
use crate::model::{EntryId, NodeId, SignedRecord, VersionId, VersionRecord};
use std::collections::{HashMap, HashSet};

/// Read access to an entry's versions, from the store or from a batch being built.
pub(super) trait Versions {
    fn record(&self, v: VersionId) -> Result<Option<SignedRecord>>;
    /// The generation of a version of this entry; None if it is not one.
    fn generation(&self, v: VersionId) -> Result<Option<u64>>;
}

/// A losing content change still shown, as `name@vN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The version that made the change (what `name@vN` reads).
    pub version: VersionId,
    pub generation: u64,
    pub author: NodeId,
    /// The heads carrying this content (the parents a dismissal supersedes).
    pub heads: Vec<VersionId>,
}

/// Ordering key of a change: later HLC wins, then the higher author id, then id.
type Key = (crate::model::Hlc, NodeId, VersionId);

struct Field {
    winner: VersionId,
    /// Other changes that were not superseded (real clashes), best first.
    losers: Vec<VersionId>,
}

struct Resolver<'a, V: Versions> {
    versions: &'a V,
    records: HashMap<VersionId, Option<SignedRecord>>,
    gens: HashMap<VersionId, Option<u64>>,
}

impl<V: Versions> Resolver<'_, V> {
    fn record(&mut self, v: VersionId) -> Result<Option<SignedRecord>> {
        if let Some(r) = self.records.get(&v) {
            return Ok(r.clone());
        }
        let r = self.versions.record(v)?;
        self.records.insert(v, r.clone());
        Ok(r)
    }

    fn gen(&mut self, v: VersionId) -> Result<Option<u64>> {
        if let Some(g) = self.gens.get(&v) {
            return Ok(*g);
        }
        let g = self.versions.generation(v)?;
        self.gens.insert(v, g);
        Ok(g)
    }

    /// True if `a` is a proper ancestor of `b`. Generations prune the walk: an
    /// ancestor always has a lower generation than its descendants.
    fn is_ancestor(&mut self, a: VersionId, b: VersionId) -> Result<bool> {
        let (Some(ga), Some(gb)) = (self.gen(a)?, self.gen(b)?) else {
            return Ok(false);
        };
        if ga >= gb {
            return Ok(false);
        }
        let mut seen = HashSet::new();
        let mut stack = vec![b];
        while let Some(x) = stack.pop() {
            let Some(r) = self.record(x)? else { continue };
            for p in r.record.parents {
                if p == a {
                    return Ok(true);
                }
                if self.gen(p)?.is_some_and(|g| g > ga) && seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        Ok(false)
    }

    /// Merges one field over `heads` given each head's stamp for it.
    fn field(&mut self, heads: &[&SignedRecord], stamp: impl Fn(&SignedRecord) -> VersionId) -> Result<Field> {
        let mut stamps: Vec<VersionId> = heads.iter().map(|h| stamp(h)).collect();
        stamps.sort();
        stamps.dedup();
        let mut maximal = Vec::new();
        for &s in &stamps {
            let mut superseded = false;
            for &t in &stamps {
                if t != s && self.is_ancestor(s, t)? {
                    superseded = true;
                    break;
                }
            }
            if !superseded {
                maximal.push(s);
            }
        }
        let mut keyed = Vec::new();
        for s in maximal {
            keyed.push((self.key(s, heads, &stamp)?, s));
        }
        keyed.sort_by_key(|k| std::cmp::Reverse(k.0));
        let mut it = keyed.into_iter().map(|(_, s)| s);
        let winner = it.next().expect("heads is not empty");
        Ok(Field {
            winner,
            losers: it.collect(),
        })
    }

    /// The ordering key of change `s`: its own record's, or (if a peer stamped a
    /// version we do not hold) that of the latest head carrying it.
    fn key(
        &mut self,
        s: VersionId,
        heads: &[&SignedRecord],
        stamp: &impl Fn(&SignedRecord) -> VersionId,
    ) -> Result<Key> {
        if self.gen(s)?.is_some() {
            if let Some(r) = self.record(s)? {
                return Ok((r.record.hlc, r.record.author, s));
            }
        }
        let h = latest(heads.iter().copied().filter(|h| stamp(h) == s)).expect("s is some head's stamp");
        Ok((h.record.hlc, h.record.author, s))
    }
}

fn latest<'a>(heads: impl Iterator<Item = &'a SignedRecord>) -> Option<&'a SignedRecord> {
    heads.max_by_key(|h| (h.record.hlc, h.record.author, h.id))
}

/// Resolves an entry's heads (with their generations) into the state it shows.
pub(super) fn resolve(entry: EntryId, heads: Vec<(VersionId, u64)>, versions: &impl Versions) -> Result<EntryState> {
    let mut r = Resolver {
        versions,
        records: HashMap::new(),
        gens: heads.iter().map(|(v, g)| (*v, Some(*g))).collect(),
    };
    let mut recs = Vec::with_capacity(heads.len());
    for (v, _) in &heads {
        match r.record(*v)? {
            Some(rec) => recs.push(rec),
            None => {
                return Err(crate::store::StoreError::CorruptValue {
                    what: "entries",
                    detail: format!("head {v} of entry {entry} has no record"),
                }
                .into())
            }
        }
    }
    let gen_of = |v: VersionId| heads.iter().find(|(h, _)| *h == v).map(|(_, g)| *g).unwrap_or(1);
    let live: Vec<&SignedRecord> = recs.iter().filter(|h| !h.record.content.is_tombstone()).collect();
    if live.len() <= 1 {
        // One live head (the usual case) or only tombstones: nothing to merge.
        let shown = live
            .first()
            .copied()
            .or_else(|| latest(recs.iter()))
            .ok_or(super::RepoError::NotFound { entry })?
            .clone();
        let mut view = shown.record.clone();
        view.content_from = Some(shown.content_from());
        view.location_from = Some(shown.location_from());
        view.attrs_from = Some(shown.attrs_from());
        return Ok(EntryState {
            id: entry,
            generation: gen_of(shown.id),
            absorbs: heads.iter().map(|(v, _)| *v).collect(),
            heads,
            head: shown,
            view,
            conflicts: Vec::new(),
        });
    }
    let content = r.field(&live, SignedRecord::content_from)?;
    let location = r.field(&live, SignedRecord::location_from)?;
    let attrs = r.field(&live, SignedRecord::attrs_from)?;
    let carrying = |stamp: VersionId, f: fn(&SignedRecord) -> VersionId| {
        latest(live.iter().copied().filter(|h| f(h) == stamp)).expect("a winner is some head's stamp")
    };
    let shown = carrying(content.winner, SignedRecord::content_from).clone();
    let mut conflicts = Vec::new();
    for loser in content.losers {
        let carrier = carrying(loser, SignedRecord::content_from);
        if carrier.record.content == shown.record.content {
            continue; // the same bytes reached by two paths: nothing to choose between
        }
        let (version, generation) = match r.gen(loser)? {
            Some(g) => (loser, g),
            None => (carrier.id, gen_of(carrier.id)),
        };
        let author = match r.record(version)? {
            Some(rec) => rec.record.author,
            None => carrier.record.author,
        };
        let heads_of: Vec<VersionId> = live
            .iter()
            .filter(|h| h.content_from() == loser)
            .map(|h| h.id)
            .collect();
        conflicts.push(Conflict {
            version,
            generation,
            author,
            heads: heads_of,
        });
    }
    conflicts.sort_by_key(|c| (c.generation, c.version));
    let in_conflict: HashSet<VersionId> = conflicts.iter().flat_map(|c| c.heads.iter().copied()).collect();
    let attrs_carrier = carrying(attrs.winner, SignedRecord::attrs_from);
    let mut view_attrs = attrs_carrier.record.attrs;
    if shown.record.hlc > attrs_carrier.record.hlc {
        // mtime travels with the content it describes unless a later change set it.
        view_attrs.mtime = shown.record.attrs.mtime;
    }
    let view = VersionRecord {
        entry,
        parents: Vec::new(),
        author: shown.record.author,
        seq: shown.record.seq,
        hlc: shown.record.hlc,
        location: carrying(location.winner, SignedRecord::location_from)
            .record
            .location
            .clone(),
        attrs: view_attrs,
        content: shown.record.content.clone(),
        content_from: Some(content.winner),
        location_from: Some(location.winner),
        attrs_from: Some(attrs.winner),
    };
    Ok(EntryState {
        id: entry,
        generation: gen_of(shown.id),
        absorbs: heads
            .iter()
            .map(|(v, _)| *v)
            .filter(|v| !in_conflict.contains(v))
            .collect(),
        heads,
        head: shown,
        view,
        conflicts,
    })
}

/// A deleted directory that still holds a live entry stays visible (DESIGN: the
/// entry survives), showing the last live version before the delete. None if the
/// entry is not a deleted directory.
pub(super) fn revive(state: &EntryState, versions: &impl Versions) -> Result<Option<EntryState>> {
    if state.is_alive() {
        return Ok(None);
    }
    let mut seen = HashSet::new();
    let mut queue: std::collections::VecDeque<VersionId> = state.head.record.parents.iter().copied().collect();
    while let Some(v) = queue.pop_front() {
        if !seen.insert(v) {
            continue;
        }
        let Some(r) = versions.record(v)? else { continue };
        if r.record.content.is_dir() {
            let mut s = state.clone();
            s.view.location = r.record.location.clone();
            s.view.attrs = r.record.attrs;
            s.view.content = r.record.content.clone();
            s.view.location_from = Some(r.location_from());
            s.view.attrs_from = Some(r.attrs_from());
            s.view.content_from = Some(r.content_from());
            return Ok(Some(s));
        }
        if !r.record.content.is_tombstone() {
            return Ok(None); // not a directory
        }
        queue.extend(r.record.parents.iter().copied());
    }
    Ok(None)
}

/// The same state shown at `location` instead of its merged one (a move that would
/// close a directory cycle is skipped; see `Apply::break_cycles`).
pub(super) fn relocated(state: &EntryState, location: Vec<super::Link>) -> EntryState {
    let mut s = state.clone();
    s.view.location = location;
    s
}
