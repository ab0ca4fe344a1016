//! Folder-relative questions and actions, shared by the control socket (the CLI) and
//! the REST API: one implementation, so `distribox versions FILE` and
//! `GET /api/v1/versions?path=FILE` can never disagree.
//!
//! Every path here is relative to the folder root and is checked before use: an
//! absolute path, a `..` component or a NUL byte is refused, so no request can name
//! anything outside the folder.

use super::control::{ConflictInfo, DeletedItem, DirItem, LogLine, TransferItem, VersionNode};
use crate::chunking::ChunkList;
use crate::model::{names, Content, EntryId, Link, SignedRecord, VersionId};
use crate::repo::{Repo, RepoError};
use std::path::{Component, Path};
use std::sync::Arc;

/// Why a query failed; the variant decides the HTTP status and the message is the
/// one line a user reads.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The version exists but gc let its data go.
    #[error("{0}")]
    Gone(String),
    #[error("store: {0}")]
    Internal(String),
}

impl From<RepoError> for QueryError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Purged { .. } => QueryError::Gone(e.to_string()),
            RepoError::NotFound { .. } => QueryError::NotFound(e.to_string()),
            RepoError::NotConflict { .. }
            | RepoError::CannotRestore { .. }
            | RepoError::NotHead { .. }
            | RepoError::NotDir
            | RepoError::IsDir
            | RepoError::Exists { .. }
            | RepoError::NotEmpty
            | RepoError::Cycle => QueryError::BadRequest(e.to_string()),
            _ => QueryError::Internal(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, QueryError>;

/// Refuses paths that could leave the folder; `""`, `"."` and `"/"`-free relative
/// paths pass.
pub fn check_rel(rel: &str) -> Result<()> {
    if rel.contains('\0') {
        return Err(QueryError::BadRequest(format!("{rel:?}: a path cannot contain NUL")));
    }
    for comp in Path::new(rel).components() {
        match comp {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(QueryError::BadRequest(format!(
                    "{rel}: path must stay inside the folder"
                )))
            }
        }
    }
    Ok(())
}

/// Finds the entry at a folder-relative path.
pub fn resolve_path(repo: &Repo, rel: &str) -> Result<EntryId> {
    check_rel(rel)?;
    let mut cur = repo.root();
    for comp in Path::new(rel).components() {
        if let Component::Normal(name) = comp {
            use std::os::unix::ffi::OsStrExt;
            cur = repo
                .lookup(cur, name.as_bytes())?
                .ok_or_else(|| QueryError::NotFound(format!("{rel}: no such file in the folder")))?;
        }
    }
    Ok(cur)
}

/// Splits a folder-relative path into its directory part and last name.
fn split_last(rel: &str) -> (&str, &str) {
    match rel.trim_end_matches('/').rsplit_once('/') {
        Some((d, l)) => (d, l),
        None => ("", rel.trim_end_matches('/')),
    }
}

/// Splits `dir/report.txt@v3` into the entry of `dir/report.txt` and the version
/// `v3` names (a real file called `report.txt@v3` wins). With no file at
/// `dir/report.txt`, the version is looked for among the files deleted there.
pub fn resolve_versioned_path(repo: &Repo, rel: &str) -> Result<(EntryId, Option<VersionId>)> {
    let (entry, v, _) = resolve_version_at(repo, rel)?;
    Ok((entry, v))
}

/// As `resolve_versioned_path`, with the name in its directory that a named
/// version belongs to (where a deleted file comes back).
fn resolve_version_at(repo: &Repo, rel: &str) -> Result<(EntryId, Option<VersionId>, Option<Link>)> {
    let not_found = || QueryError::NotFound(format!("{rel}: no such file in the folder"));
    match resolve_path(repo, rel) {
        Ok(e) => return Ok((e, None, None)),
        Err(QueryError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let (dir, last) = split_last(rel);
    let (base, name) = names::parse_version_name(last.as_bytes()).ok_or_else(not_found)?;
    let base = std::str::from_utf8(base).map_err(|_| QueryError::BadRequest(format!("{rel}: not a valid name")))?;
    check_rel(&Path::new(dir).join(base).to_string_lossy())?;
    let parent = resolve_path(repo, dir)?;
    let entry = repo.history_entry(parent, base.as_bytes())?.ok_or_else(not_found)?;
    let v = repo.version_by_name(entry, &name)?.ok_or_else(|| {
        QueryError::NotFound(format!(
            "{rel}: no such version (several versions may share v{}; see `distribox versions`)",
            name.generation
        ))
    })?;
    let at = Link {
        parent,
        name: base.as_bytes().to_vec(),
    };
    Ok((entry, Some(v.id), Some(at)))
}

/// The entry whose history a path shows: the file there, or if there is none the
/// one most recently deleted there.
pub fn resolve_history_path(repo: &Repo, rel: &str) -> Result<EntryId> {
    match resolve_versioned_path(repo, rel) {
        Err(QueryError::NotFound(msg)) => deleted_at_path(repo, rel)?
            .map(|(e, _)| e)
            .ok_or(QueryError::NotFound(msg)),
        other => other.map(|(e, _)| e),
    }
}

pub fn kind_of(c: &Content) -> &'static str {
    match c {
        Content::File { .. } => "file",
        Content::Dir => "dir",
        Content::Symlink { .. } => "symlink",
        Content::Special { .. } => "special",
        Content::Tombstone => "deleted",
        Content::Purge { .. } => "purge",
    }
}

pub fn format_time(hlc: crate::model::Hlc) -> String {
    humantime::format_rfc3339_seconds(hlc.system_time()).to_string()
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Every version of a path, newest generation first.
pub fn versions_of(repo: &Repo, rel: &str) -> Result<Vec<VersionNode>> {
    let entry = resolve_history_path(repo, rel)?;
    let state = repo.get(entry)?;
    let all = repo.version_names(entry)?;
    let mut out = Vec::new();
    for (g, _, v) in &all {
        let r = repo.record(*v)?;
        out.push(VersionNode {
            name: names::shortest_name(&all, *v)
                .map(|n| n.suffix())
                .unwrap_or_else(|| format!("v{g}")),
            n: *g,
            version: v.to_hex(),
            parents: r.record.parents.iter().map(|p| p.to_hex()).collect(),
            time: format_time(r.record.hlc),
            author: r.record.author.to_string(),
            size: r.record.content.size(),
            kind: kind_of(&r.record.content).into(),
            head: state.heads.iter().any(|(h, _)| h == v),
            shown: state.head.id == *v,
            conflict: state.conflicts.iter().any(|c| c.version == *v),
            purged: repo.is_purged(*v)?,
        });
    }
    out.sort_by(|a, b| b.n.cmp(&a.n).then(b.time.cmp(&a.time)).then(b.version.cmp(&a.version)));
    Ok(out)
}

/// After a change made here (not through the mount): the command returns once the
/// mount's kernel caches no longer show what it replaced, so that `cat` right after
/// `distribox restore` reads the restored content, not a size the kernel cached.
fn settle_kernel(repo: &Repo) {
    if !repo.wait_for_kernel(std::time::Duration::from_secs(2)) {
        tracing::warn!("the mount's caches were not refreshed within 2 s; a read right now may show the old content");
    }
}

/// Makes version `keep` (or the one named in the path, `report.txt@v3`) the content
/// of the file and retires every other head.
pub fn resolve_conflict(repo: &Repo, rel: &str, keep: &str) -> Result<String> {
    let (entry, in_path) = resolve_versioned_path(repo, rel)?;
    let base = rel.rsplit('/').next().unwrap_or(rel);
    let keep_v = if keep.is_empty() {
        in_path.ok_or_else(|| QueryError::BadRequest(format!("{rel}: say which version to keep (--keep vN)")))?
    } else {
        let (_, name) = names::parse_version_name(format!("{base}@{keep}").as_bytes())
            .ok_or_else(|| QueryError::BadRequest(format!("{keep}: not a version name (like v3 or v3-1a2b3c4d)")))?;
        repo.version_by_name(entry, &name)?
            .ok_or_else(|| QueryError::NotFound(format!("{rel}: no version {keep} (see `distribox versions`)")))?
            .id
    };
    if repo.is_purged(keep_v)? {
        return Err(QueryError::Gone(format!(
            "{rel}: that version's data was purged by gc (retention policy); keep another one"
        )));
    }
    let before = repo.get(entry)?;
    let st = repo.resolve_keep(entry, keep_v)?;
    settle_kernel(repo);
    let kept = if keep.is_empty() {
        base.to_string()
    } else {
        format!("{base}@{keep}")
    };
    Ok(format!(
        "{rel} now holds the content of {kept} (as v{}) on every member; {} head(s) merged",
        st.generation,
        before.heads.len()
    ))
}

/// Records a new version of a file with the content of an old one (`notes.txt@v2`).
/// A deleted file (or directory) comes back under its old name, with the named
/// version or, given its plain name, its last content.
pub fn restore_version(repo: &Repo, rel: &str) -> Result<String> {
    let (entry, v, at) = match resolve_version_at(repo, rel) {
        Ok(found) => found,
        Err(QueryError::NotFound(msg)) => match deleted_at_path(repo, rel)? {
            Some((entry, at)) => (entry, repo.last_content(entry)?, Some(at)),
            None => return Err(QueryError::NotFound(msg)),
        },
        Err(e) => return Err(e),
    };
    let (Some(v), Some(at)) = (v, at) else {
        return Err(QueryError::BadRequest(format!(
            "{rel}: name a version to restore, like {rel}@v2 (`distribox log {rel}` lists them)"
        )));
    };
    if repo.is_purged(v)? {
        return Err(QueryError::Gone(format!(
            "{rel}: that version's data was purged by gc (retention policy); it cannot be restored"
        )));
    }
    let before = repo.get(entry)?;
    if before.is_alive() {
        let st = repo.restore(entry, v)?;
        settle_kernel(repo);
        return Ok(format!("restored the content of {rel} as v{}", st.generation));
    }
    let st = repo.undelete(entry, v, at.clone())?;
    let (dir, _) = split_last(rel);
    let path = Path::new(dir).join(String::from_utf8_lossy(&at.name).as_ref());
    let from = names::shortest_name(&repo.version_names(entry)?, v)
        .map(|n| n.suffix())
        .unwrap_or_default();
    let mut msg = format!(
        "brought back {} as it was in {}@{from} (now v{})",
        path.display(),
        path.display(),
        st.generation
    );
    if st.record().content.is_dir() {
        let r = repo.undelete_beneath(entry, before.record())?;
        let noun = if r.restored == 1 { "entry" } else { "entries" };
        msg += &format!(", and {} {noun} deleted with it", r.restored);
        if r.skipped > 0 {
            msg += &format!(
                " ({} not: their name was taken since, their directory stays deleted, or gc purged their data)",
                r.skipped
            );
        }
    }
    settle_kernel(repo);
    Ok(msg)
}

/// The entry most recently deleted at `rel`, with the name it had there; None if
/// none was (or `rel`'s directory does not exist).
fn deleted_at_path(repo: &Repo, rel: &str) -> Result<Option<(EntryId, Link)>> {
    let (dir, last) = split_last(rel);
    let parent = match resolve_path(repo, dir) {
        Ok(p) => p,
        Err(QueryError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = last.as_bytes().to_vec();
    Ok(repo
        .deleted_named(parent, &name)?
        .first()
        .map(|e| (*e, Link { parent, name })))
}

/// Which versions `log_lines` reports.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LogFilter {
    /// One path's whole history (oldest first); otherwise recent changes across the
    /// folder (newest first).
    pub path: Option<String>,
    pub limit: usize,
    /// Only versions by authors whose id starts with this (hex).
    #[serde(default)]
    pub author: Option<String>,
    /// Only versions made at or after this Unix time (seconds).
    #[serde(default)]
    pub since: Option<i64>,
    /// Only recent changes at or below this folder path.
    #[serde(default)]
    pub under: Option<String>,
}

/// History of a path (oldest first) or recent changes across the folder (newest
/// first), filtered.
pub fn log_lines(repo: &Repo, f: &LogFilter) -> Result<Vec<LogLine>> {
    let author = f.author.as_deref().map(str::to_ascii_lowercase);
    let keep = |r: &SignedRecord| {
        author
            .as_deref()
            .is_none_or(|a| r.record.author.to_hex().starts_with(a))
            && f.since.is_none_or(|s| unix_secs(r.record.hlc.system_time()) >= s)
    };
    let (infos, heads): (Vec<_>, Vec<VersionId>) = match f.path.as_deref() {
        Some(p) if !p.is_empty() => {
            let entry = resolve_history_path(repo, p)?;
            let heads = repo.get(entry)?.heads.iter().map(|h| h.0).collect();
            let mut h = repo.history(entry)?;
            h.retain(|v| keep(&v.record));
            (h, heads)
        }
        _ => {
            let under = match f.under.as_deref() {
                Some(u) => {
                    resolve_path(repo, u)?;
                    // Compared with `path_of` names: `./docs/` is `docs`.
                    let norm: Vec<String> = Path::new(u)
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                            _ => None,
                        })
                        .collect();
                    (!norm.is_empty()).then(|| norm.join("/"))
                }
                None => None,
            };
            let inside = |r: &SignedRecord| match &under {
                None => true,
                Some(u) => repo
                    .path_of(r.record.entry)
                    .is_some_and(|p| p == *u || p.starts_with(&format!("{u}/"))),
            };
            (repo.recent(f.limit, |r| keep(r) && inside(r))?, Vec::new())
        }
    };
    // One path per entry: a deleted one's takes a pass over its history.
    let mut paths: std::collections::HashMap<EntryId, (String, bool)> = std::collections::HashMap::new();
    Ok(infos
        .into_iter()
        .map(|v| {
            let r = &v.record.record;
            let (path, deleted) = paths
                .entry(r.entry)
                .or_insert_with(|| repo.last_path_of(r.entry).unwrap_or_else(|| ("?".into(), true)))
                .clone();
            LogLine {
                n: v.generation,
                version: v.record.id.to_string(),
                time: format_time(r.hlc),
                author: r.author.to_string(),
                size: r.content.size(),
                kind: kind_of(&r.content).into(),
                path,
                head: heads.contains(&v.record.id),
                deleted,
            }
        })
        .collect())
}

/// Finds the directory at a folder-relative path (a file there is bad input).
fn resolve_dir(repo: &Repo, rel: &str) -> Result<EntryId> {
    let dir = resolve_path(repo, rel)?;
    if !matches!(repo.get(dir)?.record().content, Content::Dir) {
        return Err(QueryError::BadRequest(format!("{rel}: not a directory")));
    }
    Ok(dir)
}

/// What was deleted in a directory and can be brought back by its path (no entry
/// holds the name since), latest deletion first.
pub fn deleted_in(repo: &Repo, rel: &str) -> Result<Vec<DeletedItem>> {
    let dir = resolve_dir(repo, rel)?;
    let mut out = Vec::new();
    for (name, entry) in repo.deleted_in(dir)? {
        let Some(last) = repo.last_content(entry)? else {
            continue;
        };
        let (st, rec) = (repo.get(entry)?, repo.record(last)?);
        let name = String::from_utf8_lossy(&name).into_owned();
        out.push((
            st.record().hlc,
            DeletedItem {
                path: Path::new(rel).join(&name).to_string_lossy().into_owned(),
                kind: kind_of(&rec.record.content).into(),
                size: rec.record.content.size(),
                last: names::shortest_name(&repo.version_names(entry)?, last)
                    .map(|n| n.suffix())
                    .unwrap_or_default(),
                deleted: format_time(st.record().hlc),
                deleted_by: st.record().author.to_string(),
            },
        ));
    }
    out.sort_by_key(|(hlc, _)| std::cmp::Reverse(*hlc));
    Ok(out.into_iter().map(|(_, item)| item).collect())
}

/// A directory's listing as the mount shows it: every entry, then each conflicting
/// version of it as `name@vN`.
pub fn list_dir(repo: &Repo, rel: &str) -> Result<Vec<DirItem>> {
    let dir = resolve_dir(repo, rel)?;
    let mut out = Vec::new();
    for (name, child) in repo.children(dir)? {
        let st = repo.get(child)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let rec = st.record();
        out.push(DirItem {
            name: name.clone(),
            kind: kind_of(&rec.content).into(),
            size: rec.content.size(),
            mtime: rec.attrs.mtime.secs,
            version: format!("v{}", st.generation),
            conflict_of: None,
            conflicts: st.conflicts.len(),
        });
        for (suffix, v) in repo.conflict_names(&st)? {
            let r = repo.record(v)?;
            out.push(DirItem {
                name: format!("{name}@{suffix}"),
                kind: kind_of(&r.record.content).into(),
                size: r.record.content.size(),
                mtime: r.record.attrs.mtime.secs,
                version: suffix,
                conflict_of: Some(name.clone()),
                conflicts: 0,
            });
        }
    }
    Ok(out)
}

/// Every entry in the folder that shows conflicting versions, under the path the
/// mount shows it at (its first name, for an entry with several), from the
/// conflict index (`Repo::conflicted`).
pub fn conflicts(repo: &Repo) -> Result<Vec<ConflictInfo>> {
    let mut out = Vec::new();
    for entry in repo.conflicted()? {
        let st = repo.get(entry)?;
        let Some(path) = repo.display_path(entry) else {
            continue; // not in the tree: nothing to show or resolve by path
        };
        if st.conflicts.is_empty() {
            continue;
        }
        let all = repo.version_names(entry)?;
        out.push(ConflictInfo {
            path,
            shown: names::shortest_name(&all, st.head.id)
                .map(|n| n.suffix())
                .unwrap_or_else(|| format!("v{}", st.generation)),
            versions: repo.conflict_names(&st)?.into_iter().map(|(s, _)| s).collect(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Bytes of received versions' data not here yet (what `transfers` sums, without
/// naming where each will appear).
pub fn bytes_missing(repo: &Repo) -> Result<u64> {
    let mut sum = 0;
    for v in repo.pending_ids() {
        if let Some((_, missing)) = repo.pending_progress(v)? {
            sum += missing;
        }
    }
    Ok(sum)
}

/// Received versions still waiting for data: where each will appear and how much
/// of it is still to come (at most `limit`, largest remainder first).
pub fn transfers(repo: &Repo, limit: usize) -> Result<Vec<TransferItem>> {
    let mut out = Vec::new();
    for v in repo.pending_ids() {
        let Some((rec, missing)) = repo.pending_progress(v)? else {
            continue;
        };
        let r = &rec.record;
        let path = r
            .location
            .first()
            .map(|l| {
                let name = String::from_utf8_lossy(&l.name);
                match repo.path_of(l.parent) {
                    Some(p) if !p.is_empty() => format!("{p}/{name}"),
                    Some(_) => name.into_owned(),
                    None => format!("(new folder)/{name}"),
                }
            })
            .unwrap_or_else(|| "(deleted)".into());
        out.push(TransferItem {
            version: rec.id.to_hex(),
            path,
            author: r.author.to_string(),
            size: r.content.size(),
            bytes_missing: missing,
        });
    }
    out.sort_by(|a, b| b.bytes_missing.cmp(&a.bytes_missing).then(a.path.cmp(&b.path)));
    out.truncate(limit);
    Ok(out)
}

/// What a download of `rel` (a file, or `file@vN`) reads.
pub enum Readable {
    File { size: u64, chunks: Arc<ChunkList> },
    Symlink(Vec<u8>),
}

/// Opens the content of a path or of a version of it for reading.
pub fn open_content(repo: &Repo, rel: &str) -> Result<Readable> {
    let (entry, v) = resolve_versioned_path(repo, rel)?;
    let rec = match v {
        Some(v) => repo.record(v)?,
        None => repo.get(entry)?.head.clone(),
    };
    if repo.is_purged(rec.id)? {
        return Err(QueryError::Gone(format!(
            "{rel}: that version's data was purged by gc (retention policy)"
        )));
    }
    match rec.record.content {
        Content::File { size, manifest } => Ok(Readable::File {
            size,
            chunks: repo.chunk_list(manifest)?,
        }),
        Content::Symlink { target } => Ok(Readable::Symlink(target)),
        Content::Dir => Err(QueryError::BadRequest(format!(
            "{rel}: a directory has no content to download"
        ))),
        _ => Err(QueryError::BadRequest(format!("{rel}: not a file"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        for ok in [
            "", ".", "a", "a/b", "./a", "a/./b", "a@v1", "..a", "a..", "a/...", "a\\..\\b", "..@v1",
        ] {
            assert!(check_rel(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "..",
            "../a",
            "a/..",
            "a/../b",
            "/a",
            "/",
            "a/../../b",
            "a\0b",
            "../a@v1",
        ] {
            assert!(
                matches!(check_rel(bad), Err(QueryError::BadRequest(_))),
                "{bad:?} allowed"
            );
        }
    }
}
