//! The tree is a function of the record set, not of the order records arrive in.
//! Real repositories (RocksDB in temp dirs) exchange real signed records through
//! `Repo::receive` / `integrate_ready`, the same calls the network uses; every
//! arrival order must give every observer the same tree.

use distribox::model::{Attrs, Content, EntryId, Link, SignedRecord};
use distribox::repo::{Draft, Repo};
use distribox::store::{DataDir, GroupKey};
use std::collections::BTreeSet;

struct Member {
    _dir: tempfile::TempDir,
    repo: Repo,
}

fn member(group: GroupKey) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::new(dir.path().join("data"));
    dd.init(Some(group)).unwrap();
    let repo = Repo::open(&dd).unwrap();
    Member { _dir: dir, repo }
}

/// Every record `from` authored with seq in `seqs`, signed.
fn records(from: &Repo, seqs: std::ops::RangeInclusive<u64>) -> Vec<SignedRecord> {
    from.records_of(from.node(), *seqs.start(), *seqs.end(), 10_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|b| SignedRecord::decode(b, true).unwrap())
        .collect()
}

fn deliver(to: &Repo, recs: Vec<SignedRecord>) {
    let got = to.receive(recs).unwrap();
    assert!(got.rejected.is_empty(), "{:?}", got.rejected);
    to.integrate_ready(to.pending_ids()).unwrap();
}

fn dir(parent: EntryId, name: &str) -> Draft {
    Draft {
        location: vec![Link {
            parent,
            name: name.as_bytes().to_vec(),
        }],
        attrs: Attrs {
            mode: 0o755,
            ..Default::default()
        },
        content: Content::Dir,
    }
}

/// Every path below the root.
fn tree(repo: &Repo) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(repo.root(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for (name, e) in repo.children(d).unwrap() {
            let p = format!("{prefix}/{}", String::from_utf8_lossy(&name));
            out.insert(p.clone());
            assert!(out.len() < 1000, "a cycle in the listing");
            stack.push((e, p));
        }
    }
    out
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// root/{A, X/B}; concurrently A→B, X→A, B→A (each pair would close a cycle).
/// Whatever order the three moves arrive in, every observer shows the same tree
/// and keeps all three directories reachable.
#[test]
fn concurrent_cycle_forming_moves_converge_in_any_order() {
    let group = GroupKey::generate();
    let n: Vec<Member> = (0..3).map(|_| member(group)).collect();
    let root = n[0].repo.root();
    let (a, x, b) = (EntryId::random(), EntryId::random(), EntryId::random());
    n[0].repo
        .commit(vec![(a, dir(root, "A")), (x, dir(root, "X")), (b, dir(x, "B"))])
        .unwrap();
    let base = records(&n[0].repo, 1..=4);
    for m in &n[1..] {
        deliver(&m.repo, base.clone());
    }
    // Each member makes one move, in this order (so their clocks order them).
    let moves = [(0, a, b, "A"), (1, x, a, "X"), (2, b, a, "B")];
    for (i, e, into, name) in moves {
        let r = &n[i].repo;
        let mut d = r.get(e).unwrap().draft();
        d.location = vec![Link {
            parent: into,
            name: name.as_bytes().to_vec(),
        }];
        r.commit(vec![(e, d)]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let deliveries: Vec<Vec<SignedRecord>> = vec![
        records(&n[0].repo, 5..=5),
        records(&n[1].repo, 1..=2),
        records(&n[2].repo, 1..=2),
    ];
    let mut seen: Option<BTreeSet<String>> = None;
    for order in permutations(3) {
        let obs = member(group);
        deliver(&obs.repo, base.clone());
        for i in &order {
            deliver(&obs.repo, deliveries[*i].clone());
        }
        let t = tree(&obs.repo);
        for d in ["A", "X", "B"] {
            assert!(
                t.iter().any(|p| p.ends_with(&format!("/{d}"))),
                "{d} unreachable after order {order:?}: {t:?}"
            );
        }
        match &seen {
            None => seen = Some(t),
            Some(s) => assert_eq!(s, &t, "order {order:?} gave another tree"),
        }
    }
}

/// Writes `data` as the new content of file `e` (created under the root as `name`
/// if new), through the same write-back path the filesystem uses.
fn write_file(repo: &Repo, e: EntryId, name: &str, data: &[u8], spill: &std::path::Path) {
    use distribox::chunking::ChunkList;
    use distribox::model::Timestamp;
    let mut f = distribox::repo::DirtyFile::new(
        std::sync::Arc::new(ChunkList::default()),
        0,
        spill.join(name),
        Timestamp::now(),
    );
    f.write(repo, 0, data).unwrap();
    let (size, manifest) = f.commit_content(repo).unwrap();
    let mut d = match repo.get(e) {
        Ok(s) => s.draft(),
        Err(_) => Draft {
            location: vec![Link {
                parent: repo.root(),
                name: name.as_bytes().to_vec(),
            }],
            attrs: Attrs {
                mode: 0o644,
                ..Default::default()
            },
            content: Content::Tombstone,
        },
    };
    d.content = Content::File { size, manifest };
    repo.commit(vec![(e, d)]).unwrap();
}

/// Copies every chunk `to`'s pending records need that `from` still has.
fn copy_chunks(from: &Repo, to: &Repo) {
    for _ in 0..8 {
        let mut any = false;
        for v in to.pending_ids() {
            for c in to.missing_chunks(v).unwrap() {
                if let Ok(bytes) = from.store().get_chunk(c) {
                    to.store().put_chunk(c, &bytes).unwrap();
                    any = true;
                }
            }
        }
        to.integrate_ready(to.pending_ids()).unwrap();
        if !any {
            break;
        }
    }
}

/// A member purges old versions of a file and sweeps their data; a member that
/// hears of the purge before the versions themselves still joins every version
/// (the purged ones without data) and shows the file.
#[test]
fn a_purge_that_arrives_before_its_versions_does_not_strand_them() {
    let group = GroupKey::generate();
    let (writer, keeper, late) = (member(group), member(group), member(group));
    let spill = tempfile::tempdir().unwrap();
    let f = EntryId::random();
    for i in 0..4u8 {
        write_file(&writer.repo, f, "f.bin", &vec![i; 300_000], spill.path());
    }
    let written = records(&writer.repo, 1..=u64::MAX);
    deliver(&keeper.repo, written.clone());
    copy_chunks(&writer.repo, &keeper.repo);
    assert!(keeper.repo.pending_ids().is_empty());
    let policy = distribox::repo::Policy {
        keep_last: 1,
        keep_days: 0,
        coalesce_secs: 0,
        only_deleted: false,
    };
    let report = keeper.repo.gc(&policy, false).unwrap();
    assert!(report.versions_purged >= 3, "{report:?}");
    let plan = keeper.repo.sweep_plan().unwrap();
    let (_, freed) = keeper.repo.sweep(plan).unwrap();
    assert!(freed >= 3 * 300_000, "swept {freed} bytes");

    // The late member hears the keeper's purge first, then the writer's versions,
    // and can fetch data only from the keeper (the writer is gone).
    deliver(&late.repo, records(&keeper.repo, 1..=u64::MAX));
    deliver(&late.repo, written);
    copy_chunks(&keeper.repo, &late.repo);
    assert!(late.repo.pending_ids().is_empty(), "versions left stranded");
    let shown = late.repo.get(f).unwrap();
    assert_eq!(shown.heads.len(), 1);
    let mut out = Vec::new();
    let list = late.repo.chunk_list(match shown.record().content {
        Content::File { manifest, .. } => manifest,
        _ => panic!("not a file"),
    });
    late.repo.read_chunks(&list.unwrap(), 0, 300_000, &mut out).unwrap();
    assert_eq!(out, vec![3u8; 300_000]);
    assert_eq!(tree(&late.repo), tree(&keeper.repo));
}

/// Records are sealed up to 64 to a signature: every record of a 130-commit burst
/// still verifies on its own (`records` checks each with a fresh verifier), the
/// burst took a handful of signatures, and a member that receives it builds the
/// same tree.
#[test]
fn a_burst_of_records_is_sealed_in_batches_that_verify_one_by_one() {
    let group = GroupKey::generate();
    let (a, b) = (member(group), member(group));
    let root = a.repo.root();
    for i in 0..130 {
        a.repo
            .commit(vec![(EntryId::random(), dir(root, &format!("d{i}")))])
            .unwrap();
    }
    let all = records(&a.repo, 1..=1000);
    assert_eq!(all.len(), 131, "the root's record and 130 directories");
    let signatures: BTreeSet<Vec<u8>> = all
        .iter()
        .map(|r| {
            let body_end = 5 + u32::from_le_bytes(r.bytes[1..5].try_into().unwrap()) as usize;
            r.bytes[body_end..body_end + 64].to_vec()
        })
        .collect();
    assert!(
        (3..=4).contains(&signatures.len()),
        "131 records sealed 64 to a signature, got {} signatures",
        signatures.len()
    );
    deliver(&b.repo, all);
    assert_eq!(tree(&a.repo), tree(&b.repo));
    assert_eq!(tree(&b.repo).len(), 130);
}

/// A gc sweep plans without locks; records that arrive between its walk and its
/// delete keep the chunks they name, although no record named them when it looked
/// (here: chunks a member fetched on a hint, then restarted, before the record).
#[test]
fn a_sweep_keeps_chunks_named_by_records_that_arrive_after_its_walk() {
    let group = GroupKey::generate();
    let writer = member(group);
    let spill = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..600_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_file(&writer.repo, EntryId::random(), "f.bin", &data, spill.path());
    let recs = records(&writer.repo, 1..=u64::MAX);
    let mut chunks = Vec::new();
    for r in &recs {
        if let Content::File {
            manifest: Some(root), ..
        } = r.record.content
        {
            chunks.extend(distribox::chunking::chunk_ids_of(root, |id| {
                writer.repo.store().get_chunk(id).ok()
            }));
        }
    }
    assert!(chunks.len() > 2, "the file should span several chunks");
    // Two members hold the chunks but no record (as after a hinted fetch), and
    // restart: the chunks are now an earlier run's, old enough to be orphans.
    let holder = |with_records: bool| -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path().join("data"));
        dd.init(Some(group)).unwrap();
        {
            let repo = Repo::open(&dd).unwrap();
            for c in &chunks {
                repo.store()
                    .put_chunk(*c, &writer.repo.store().get_chunk(*c).unwrap())
                    .unwrap();
            }
        }
        let repo = Repo::open(&dd).unwrap();
        let plan = repo.sweep_plan().unwrap();
        if with_records {
            deliver(&repo, recs.clone());
            assert!(repo.pending_ids().is_empty(), "the records join: their chunks are here");
        }
        let swept = repo.sweep(plan).unwrap();
        for c in &chunks {
            assert_eq!(repo.store().has_chunk(*c).unwrap(), with_records, "chunk {c}");
        }
        swept
    };
    assert_eq!(
        holder(true),
        (0, 0),
        "a sweep deleted chunks a record that arrived meanwhile names"
    );
    assert_eq!(holder(false).0 as usize, chunks.len(), "unnamed old chunks are orphans");
}
