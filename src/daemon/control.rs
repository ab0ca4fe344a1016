//! The control socket: how the CLI talks to a running node. One JSON request per
//! line, one JSON response per line, on a Unix socket inside the data dir (mode 0600
//! through the data dir's 0700).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    /// History of one path (relative to the folder root), or recent changes.
    Log(super::query::LogFilter),
    /// A directory's listing as the mount shows it (conflicts as `name@vN`).
    Tree {
        path: String,
    },
    /// Entries deleted in a directory that `restore` can bring back by name.
    Deleted {
        path: String,
    },
    /// Every file that shows conflicting versions.
    Conflicts,
    /// Versions arriving from peers: what is still to come, rate, ETA.
    Transfers,
    /// Members: online state, addresses, RTT, how far in sync.
    Peers,
    /// Every version of a path (relative to the folder root) with its parents.
    Versions {
        path: String,
    },
    /// Make version `keep` (`v3`, `v3-1a2b3c4d`) the content of `path` and retire
    /// every other head.
    Resolve {
        path: String,
        keep: String,
    },
    /// Record a new version of a file with the content of `path` (`name@vN`).
    Restore {
        path: String,
    },
    /// Apply a retention policy: purge old versions' data, sweep unused chunks.
    Gc {
        policy: crate::repo::Policy,
        dry_run: bool,
    },
    /// Commit everything, unmount and exit.
    Shutdown,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlResponse {
    Status(Box<StatusInfo>),
    Log {
        lines: Vec<LogLine>,
    },
    Peers {
        peers: Vec<crate::sync::peers::PeerInfo>,
    },
    Versions {
        versions: Vec<VersionNode>,
    },
    Gc {
        report: crate::repo::GcReport,
    },
    Tree {
        items: Vec<DirItem>,
    },
    Deleted {
        items: Vec<DeletedItem>,
    },
    Conflicts {
        conflicts: Vec<ConflictInfo>,
    },
    Transfers(TransfersInfo),
    /// A version was made; `message` says what happened.
    Done {
        message: String,
    },
    Ok,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusInfo {
    pub node: String,
    pub pid: u32,
    pub mountpoint: Option<String>,
    pub data_dir: String,
    /// Versions this node has authored.
    pub local_versions: u64,
    pub store_bytes: u64,
    /// Distinct chunks stored and their total size (each stored once: dedup).
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub uptime_secs: u64,
    /// Group id (hex).
    pub group: String,
    /// Addresses the node listens on, each ending in /p2p/<peer id>.
    pub listen: Vec<String>,
    pub peers_online: usize,
    pub peers_known: usize,
    /// Received versions waiting for data, and chunks still to fetch.
    pub versions_pending: usize,
    pub chunks_wanted: usize,
    pub bytes_received: u64,
    /// Data of pending versions not here yet, receive rate over the last seconds,
    /// and the time left at that rate (None while nothing arrives).
    #[serde(default)]
    pub bytes_missing: u64,
    #[serde(default)]
    pub rate_bps: u64,
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// The web GUI and REST API (`http://ADDR/`), if it runs.
    #[serde(default)]
    pub gui: Option<String>,
    /// The node's resident memory (VmRSS), inode numbers its mount maps, and entry
    /// states it keeps in memory: all three stay bounded however many files come
    /// and go.
    #[serde(default)]
    pub rss_bytes: u64,
    #[serde(default)]
    pub inodes: usize,
    #[serde(default)]
    pub cached_entries: usize,
    /// Of the resident memory, what the store holds.
    #[serde(default)]
    pub store_memory: crate::store::StoreMemory,
}

/// One name in a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirItem {
    pub name: String,
    pub kind: String,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
    /// The version shown (`v5`), or for a conflict entry its suffix (`v3-1a2b3c4d`).
    pub version: String,
    /// For `name@vN` entries: the plain name this is a conflicting version of.
    pub conflict_of: Option<String>,
    /// How many conflicting versions the entry lists next to it.
    pub conflicts: usize,
}

/// An entry deleted in a directory whose name no other entry holds since (so
/// `distribox restore PATH` brings it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedItem {
    /// Folder-relative path it had.
    pub path: String,
    /// What it was last: file, dir, symlink or special.
    pub kind: String,
    pub size: u64,
    /// Its last version with content (`v2`): what `restore PATH` brings back.
    pub last: String,
    /// When it was deleted (RFC 3339) and by which member.
    pub deleted: String,
    pub deleted_by: String,
}

/// A file showing conflicting versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub path: String,
    /// The version the plain name shows (`v4`, `v3-1a2b3c4d`).
    pub shown: String,
    /// The others, each listed as `path@<name>`.
    pub versions: Vec<String>,
}

/// A received version waiting for its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferItem {
    pub version: String,
    pub path: String,
    pub author: String,
    pub size: u64,
    pub bytes_missing: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransfersInfo {
    pub versions_pending: usize,
    pub chunks_wanted: usize,
    pub bytes_received: u64,
    pub bytes_missing: u64,
    pub rate_bps: u64,
    pub eta_secs: Option<u64>,
    /// The largest remainders first (at most 100).
    pub items: Vec<TransferItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Generation (`@vN`).
    pub n: u64,
    pub version: String,
    pub time: String,
    pub author: String,
    pub size: u64,
    pub kind: String,
    /// Where the file is, or where it last was if it is deleted now.
    pub path: String,
    pub head: bool,
    /// The file is deleted now (its versions stay readable as `path@vN`).
    #[serde(default)]
    pub deleted: bool,
}

/// One version in an entry's graph (see `distribox versions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionNode {
    /// Its name after `@`: `v3`, or `v3-<author>` where a generation is shared.
    pub name: String,
    pub n: u64,
    pub version: String,
    pub parents: Vec<String>,
    pub time: String,
    pub author: String,
    pub size: u64,
    pub kind: String,
    /// No other version names it as a parent.
    pub head: bool,
    /// Its content is what the plain name shows.
    pub shown: bool,
    /// A conflicting content listed as `name@vN`.
    pub conflict: bool,
    /// Its data was dropped by gc (the record stays).
    pub purged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no node is running for data dir {data_dir} (start one with `distribox mount DIR`)")]
    NotRunning { data_dir: String },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("node sent a response this CLI does not understand: {0}")]
    Protocol(String),
}

/// Sends one request to the node owning `socket` and waits for its answer.
pub fn call(socket: &Path, data_dir: &Path, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
    let mut s = UnixStream::connect(socket).map_err(|_| ControlError::NotRunning {
        data_dir: data_dir.display().to_string(),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    serde_json::from_str(&resp).map_err(|e| ControlError::Protocol(e.to_string()))
}
