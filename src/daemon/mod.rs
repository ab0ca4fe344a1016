//! Wires a node together: data dir lock, repo, network, FUSE session, control
//! socket, signals. `run_mount` serves a folder; `run_serve` is the always-on member
//! with no mount (it stores and relays everything).
//!
//! Uses: everything below it. Process model (DESIGN.md): `distribox mount DIR`
//! re-executes the binary with `--foreground` in a new session and waits for it to
//! say the mount is live; the node runs until the folder is unmounted (`fusermount -u`,
//! `distribox unmount`, SIGTERM), then commits pending writes, syncs and exits 0.

pub mod control;
mod mountpoint;

pub use mountpoint::{check_mountpoint, is_mounted, mount_device, MountpointError};

use crate::fs::{DistriboxFs, FsOptions};
use crate::model::{names, EntryId, VersionId};
use crate::repo::{Repo, RepoError};
use crate::store::{DataDir, DataDirError};
use crate::sync::NetConfig;
use control::{ControlRequest, ControlResponse, LogLine, StatusInfo, VersionNode};
use fuser::{Config, MountOption, SessionACL};
use parking_lot::Mutex;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Mountpoint(#[from] MountpointError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("cannot mount {path}: {source} (is fuse3 installed and /dev/fuse accessible?)")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error("control socket {path}: {source}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the node tells whoever started it that the mount is live (or why not).
pub trait Ready {
    fn ready(&mut self, mountpoint: &Path);
}

/// Options of a mounted node.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub data_dir: DataDir,
    pub mountpoint: PathBuf,
    pub fs: FsOptions,
    /// Let other users in (`allow_other` + `default_permissions`).
    pub allow_other: bool,
    pub threads: usize,
    /// None: no network (a purely local folder).
    pub net: Option<NetConfig>,
    /// Run the default retention policy this often (None: never).
    pub gc_every: Option<std::time::Duration>,
}

/// Shared by the control socket: what the node can report and how it stops.
struct NodeCtl {
    repo: Arc<Repo>,
    /// The mounted filesystem (None for `serve`): gc asks it whether files are
    /// being written.
    fs: Option<DistriboxFs>,
    sync: Option<crate::sync::SyncHandle>,
    mountpoint: Option<PathBuf>,
    data_dir: PathBuf,
    started: Instant,
    stop: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// The parts every running node has, mounted or not.
struct Node {
    repo: Arc<Repo>,
    signer: Signer,
    sock: PathBuf,
}

impl Node {
    fn start(data_dir: &DataDir) -> Result<Node, DaemonError> {
        let repo = Arc::new(Repo::open(data_dir)?);
        let signer = spawn_signer(repo.clone());
        Ok(Node {
            repo,
            signer,
            sock: data_dir.control_socket(),
        })
    }

    /// Listens on the control socket (the CLI's way in) in a thread.
    fn listen_control(&self, ctl: Arc<Mutex<NodeCtl>>) -> Result<(), DaemonError> {
        let _ = std::fs::remove_file(&self.sock);
        let listener = UnixListener::bind(&self.sock).map_err(|source| DaemonError::Control {
            path: self.sock.clone(),
            source,
        })?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(listener, ctl))
            .expect("spawning a thread at startup");
        Ok(())
    }

    /// Signs, flushes and syncs everything: the process exits without waiting for
    /// every Arc<Repo> to drop, and chunks written without the WAL live in memtables
    /// until flushed.
    fn shutdown(self, sync: Option<crate::sync::SyncHandle>) {
        if let Some(s) = sync {
            s.stop();
        }
        self.signer.stop();
        let repo = &self.repo;
        if let Err(err) = repo
            .sign_pending()
            .and_then(|_| repo.store().flush().map_err(Into::into))
            .and_then(|_| repo.sync())
        {
            tracing::error!(error = %err, "signing records at shutdown failed; they are signed at next start");
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn on_signals(action: impl Fn() + Send + 'static) -> Result<(), std::io::Error> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "signal received; stopping");
                action();
            }
        })
        .expect("spawning a thread at startup");
    Ok(())
}

/// Options of the always-on node.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: DataDir,
    pub net: NetConfig,
    pub gc_every: Option<std::time::Duration>,
}

/// Runs a member without a mount until SIGTERM/SIGINT or a shutdown request.
pub fn run_serve(cfg: ServeConfig, ready: &mut dyn Ready) -> Result<(), DaemonError> {
    cfg.data_dir.check()?;
    let _lock = cfg.data_dir.lock()?;
    let node = Node::start(&cfg.data_dir)?;
    let span = tracing::info_span!("node", node = %node.repo.node());
    let _enter = span.enter();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stop_tx = Arc::new(Mutex::new(stop_tx));
    let sync = crate::sync::start(node.repo.clone(), cfg.net.clone())?;
    if let Some(every) = cfg.gc_every {
        spawn_gc(Arc::downgrade(&node.repo), None, every);
    }
    let ctl = Arc::new(Mutex::new(NodeCtl {
        repo: node.repo.clone(),
        fs: None,
        sync: Some(sync),
        mountpoint: None,
        data_dir: cfg.data_dir.root.clone(),
        started: Instant::now(),
        stop: {
            let tx = stop_tx.clone();
            Box::new(move || {
                let _ = tx.lock().send(());
                Ok(())
            })
        },
    }));
    node.listen_control(ctl.clone())?;
    {
        let tx = stop_tx.clone();
        on_signals(move || {
            let _ = tx.lock().send(());
        })
        .map_err(|source| DaemonError::Control {
            path: node.sock.clone(),
            source,
        })?;
    }
    tracing::info!(data_dir = %cfg.data_dir.root.display(), "serving (no mount)");
    ready.ready(Path::new(""));
    let _ = stop_rx.recv();
    let sync = ctl.lock().sync.take();
    node.shutdown(sync);
    tracing::info!("stopped; store closed");
    Ok(())
}

/// Runs a mounted node until its folder is unmounted.
pub fn run_mount(cfg: MountConfig, ready: &mut dyn Ready) -> Result<(), DaemonError> {
    let mountpoint = check_mountpoint(&cfg.mountpoint)?;
    cfg.data_dir.init(None)?;
    let _lock = cfg.data_dir.lock()?;
    let node = Node::start(&cfg.data_dir)?;
    let repo = node.repo.clone();
    repo.start_prefetch(2);
    let span = tracing::info_span!("node", node = %repo.node());
    let _enter = span.enter();
    let fs = DistriboxFs::new(repo.clone(), cfg.fs.clone());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("distribox".into()),
        MountOption::Subtype("distribox".into()),
    ];
    if cfg.allow_other {
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(cfg.threads.max(1));
    let mut session = fuser::Session::new(fs.clone(), &mountpoint, &config).map_err(|source| DaemonError::Mount {
        path: mountpoint.clone(),
        source,
    })?;
    let unmounter = Arc::new(Mutex::new(session.unmount_callable()));
    raise_readahead(&mountpoint);
    // Remote versions: drop the kernel's cached pages and names (from a thread of
    // its own, never inside a FUSE callback).
    let _invalidator = fs.spawn_invalidator(session.notifier(), repo.subscribe());
    let sync = match &cfg.net {
        Some(net) => Some(crate::sync::start(repo.clone(), net.clone())?),
        None => None,
    };
    if let Some(every) = cfg.gc_every {
        spawn_gc(Arc::downgrade(&repo), Some(fs.clone()), every);
    }
    let ctl = Arc::new(Mutex::new(NodeCtl {
        repo: repo.clone(),
        fs: Some(fs.clone()),
        sync,
        mountpoint: Some(mountpoint.clone()),
        data_dir: cfg.data_dir.root.clone(),
        started: Instant::now(),
        stop: {
            let unmounter = unmounter.clone();
            Box::new(move || {
                unmounter
                    .lock()
                    .unmount()
                    .map_err(|e| format!("unmount failed: {e} (is a file in the folder still open?)"))
            })
        },
    }));
    node.listen_control(ctl.clone())?;
    {
        let unmounter = unmounter.clone();
        on_signals(move || {
            if let Err(err) = unmounter.lock().unmount() {
                tracing::warn!(error = %err, "unmount after signal failed; try `fusermount3 -uz`");
            }
        })
        .map_err(|source| DaemonError::Control {
            path: node.sock.clone(),
            source,
        })?;
    }
    let idle = fs.spawn_idle_committer();
    tracing::info!(mountpoint = %mountpoint.display(), data_dir = %cfg.data_dir.root.display(), "mounted");
    ready.ready(&mountpoint);
    let result = session.run();
    fs.flush_all();
    let _ = idle.join();
    let sync = ctl.lock().sync.take();
    node.shutdown(sync);
    match result {
        Ok(()) => tracing::info!("unmounted; store closed"),
        Err(err) => tracing::warn!(error = %err, "FUSE session ended with an error"),
    }
    Ok(())
}

/// The kernel caps a FUSE mount's read-ahead at the block layer default (128 KiB)
/// whatever the filesystem asks for; 1 MiB windows read a large file ~25% faster.
/// Only root may change it, so this is best effort.
fn raise_readahead(mountpoint: &Path) {
    let Some(dev) = mount_device(mountpoint) else { return };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&knob, "1024") {
        Ok(()) => tracing::debug!(path = %knob, "read-ahead raised to 1 MiB"),
        Err(err) => tracing::debug!(path = %knob, error = %err, "could not raise read-ahead (needs root)"),
    }
}

/// Signs locally committed records off the FUSE request path (signing costs more
/// than the rest of a commit).
struct Signer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Signer {
    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_signer(repo: Arc<Repo>) -> Signer {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("signer".into())
        .spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(250));
                if let Err(err) = repo.sign_pending() {
                    tracing::warn!(error = %err, "signing records failed; will retry");
                }
            }
        })
        .expect("spawning a thread at startup");
    Signer {
        stop,
        thread: Some(thread),
    }
}

fn serve_control(listener: UnixListener, ctl: Arc<Mutex<NodeCtl>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let resp = match serde_json::from_str::<ControlRequest>(&line) {
            Err(e) => ControlResponse::Error {
                message: format!("bad request: {e}"),
            },
            Ok(req) => answer_control(&ctl, req),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        let _ = conn.write_all(out.as_bytes());
    }
}

fn answer_control(ctl: &Mutex<NodeCtl>, req: ControlRequest) -> ControlResponse {
    if let ControlRequest::Gc { policy, dry_run } = &req {
        // Without holding the control lock: status must answer meanwhile.
        let (repo, fs) = {
            let c = ctl.lock();
            (c.repo.clone(), c.fs.clone())
        };
        return match run_gc(&repo, fs.as_ref(), policy, *dry_run) {
            Ok(report) => ControlResponse::Gc { report },
            Err(message) => ControlResponse::Error { message },
        };
    }
    let c = ctl.lock();
    let repo = &c.repo;
    match req {
        ControlRequest::Status => {
            let (chunks, chunk_bytes) = repo.store().chunk_stats().unwrap_or((0, 0));
            let (chunks_wanted, bytes_received) = c.sync.as_ref().map(|s| s.transfers()).unwrap_or((0, 0));
            let peers = c.sync.as_ref().map(|s| s.peers()).unwrap_or_default();
            ControlResponse::Status(StatusInfo {
                node: repo.node().to_hex(),
                pid: std::process::id(),
                mountpoint: c.mountpoint.as_ref().map(|p| p.display().to_string()),
                data_dir: c.data_dir.display().to_string(),
                local_versions: repo.store().last_seq(repo.node()).unwrap_or(0),
                store_bytes: repo.store().disk_usage(),
                chunks,
                chunk_bytes,
                uptime_secs: c.started.elapsed().as_secs(),
                group: hex::encode(repo.group().id),
                listen: c.sync.as_ref().map(|s| s.listen_addrs()).unwrap_or_default(),
                peers_online: peers.iter().filter(|p| p.online).count(),
                peers_known: peers.len(),
                versions_pending: repo.pending_ids().len(),
                chunks_wanted,
                bytes_received,
            })
        }
        ControlRequest::Log { path, limit } => match log_lines(repo, path.as_deref(), limit) {
            Ok(lines) => ControlResponse::Log { lines },
            Err(message) => ControlResponse::Error { message },
        },
        ControlRequest::Peers => match &c.sync {
            Some(s) => ControlResponse::Peers { peers: s.peers() },
            None => ControlResponse::Error {
                message: "this node runs without a network (--no-net)".into(),
            },
        },
        ControlRequest::Versions { path } => match versions_of(repo, &path) {
            Ok(versions) => ControlResponse::Versions { versions },
            Err(message) => ControlResponse::Error { message },
        },
        ControlRequest::Resolve { path, keep } => done(resolve_conflict(repo, &path, &keep)),
        ControlRequest::Restore { path } => done(restore_version(repo, &path)),
        ControlRequest::Gc { .. } => unreachable!("answered above"),
        ControlRequest::Shutdown => match (c.stop)() {
            Ok(()) => ControlResponse::Ok,
            Err(message) => ControlResponse::Error { message },
        },
    }
}

/// Applies a retention policy. Chunks are swept only while no file has unwritten
/// changes: those changes' chunks are not named by any record yet.
pub fn run_gc(
    repo: &Repo,
    fs: Option<&DistriboxFs>,
    policy: &crate::repo::Policy,
    dry_run: bool,
) -> Result<crate::repo::GcReport, String> {
    let mut report = repo.gc(policy, dry_run).map_err(|e| e.to_string())?;
    if dry_run {
        return Ok(report);
    }
    let swept = match fs {
        Some(fs) => fs.while_no_writes(|idle| idle.then(|| repo.sweep())),
        None => Some(repo.sweep()),
    };
    if let Some(r) = swept {
        let (chunks, bytes) = r.map_err(|e| e.to_string())?;
        report.swept = true;
        report.chunks_freed = chunks;
        report.bytes_freed = bytes;
    }
    Ok(report)
}

/// Runs the default retention policy every `every` until the node stops.
fn spawn_gc(repo: std::sync::Weak<Repo>, fs: Option<DistriboxFs>, every: std::time::Duration) {
    let spawned = std::thread::Builder::new().name("gc".into()).spawn(move || loop {
        std::thread::sleep(every);
        let Some(repo) = repo.upgrade() else { return };
        match run_gc(&repo, fs.as_ref(), &crate::repo::Policy::default(), false) {
            Ok(r) => tracing::info!(purged = r.versions_purged, bytes_freed = r.bytes_freed, "retention run"),
            Err(e) => tracing::warn!(error = %e, "retention run failed"),
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the retention thread; run `distribox gc` by hand");
    }
}

fn done(r: Result<String, String>) -> ControlResponse {
    match r {
        Ok(message) => ControlResponse::Done { message },
        Err(message) => ControlResponse::Error { message },
    }
}

fn kind_of(c: &crate::model::Content) -> &'static str {
    match c {
        crate::model::Content::File { .. } => "file",
        crate::model::Content::Dir => "dir",
        crate::model::Content::Symlink { .. } => "symlink",
        crate::model::Content::Special { .. } => "special",
        crate::model::Content::Tombstone => "deleted",
        crate::model::Content::Purge { .. } => "purge",
    }
}

/// Splits `dir/report.txt@v3` into the entry of `dir/report.txt` and the version
/// `v3` names (a real file called `report.txt@v3` wins).
fn resolve_versioned_path(repo: &Repo, rel: &str) -> Result<(EntryId, Option<VersionId>), String> {
    if let Ok(e) = resolve_path(repo, rel) {
        return Ok((e, None));
    }
    let (dir, last) = match rel.rsplit_once('/') {
        Some((d, l)) => (d, l),
        None => ("", rel),
    };
    let (base, name) =
        names::parse_version_name(last.as_bytes()).ok_or_else(|| format!("{rel}: no such file in the folder"))?;
    let base = std::str::from_utf8(base).map_err(|_| format!("{rel}: not a valid name"))?;
    let entry = resolve_path(repo, &Path::new(dir).join(base).to_string_lossy())?;
    let v = repo
        .version_by_name(entry, &name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{rel}: no such version (several versions may share v{}; see `distribox versions`)",
                name.generation
            )
        })?;
    Ok((entry, Some(v.id)))
}

/// Every version of a path, newest generation first.
pub fn versions_of(repo: &Repo, rel: &str) -> Result<Vec<VersionNode>, String> {
    let (entry, _) = resolve_versioned_path(repo, rel)?;
    let state = repo.get(entry).map_err(|e| e.to_string())?;
    let all = repo.version_names(entry).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (g, _, v) in &all {
        let r = repo.record(*v).map_err(|e| e.to_string())?;
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
            purged: repo.is_purged(*v).map_err(|e| e.to_string())?,
        });
    }
    out.sort_by(|a, b| b.n.cmp(&a.n).then(b.time.cmp(&a.time)).then(b.version.cmp(&a.version)));
    Ok(out)
}

fn resolve_conflict(repo: &Repo, rel: &str, keep: &str) -> Result<String, String> {
    let (entry, in_path) = resolve_versioned_path(repo, rel)?;
    let keep_v = if keep.is_empty() {
        in_path.ok_or_else(|| format!("{rel}: say which version to keep (--keep vN)"))?
    } else {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        let (_, name) = names::parse_version_name(format!("{base}@{keep}").as_bytes())
            .ok_or_else(|| format!("{keep}: not a version name (like v3 or v3-1a2b3c4d)"))?;
        repo.version_by_name(entry, &name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{rel}: no version {keep} (see `distribox versions`)"))?
            .id
    };
    let before = repo.get(entry).map_err(|e| e.to_string())?;
    let st = repo.resolve_keep(entry, keep_v).map_err(|e| e.to_string())?;
    let kept = if keep.is_empty() {
        rel.rsplit('/').next().unwrap_or(rel).to_string()
    } else {
        format!("{}@{keep}", rel.rsplit('/').next().unwrap_or(rel))
    };
    Ok(format!(
        "{rel} now holds the content of {kept} (as v{}) on every member; {} head(s) merged",
        st.generation,
        before.heads.len()
    ))
}

fn restore_version(repo: &Repo, rel: &str) -> Result<String, String> {
    let (entry, v) = resolve_versioned_path(repo, rel)?;
    let v = v.ok_or_else(|| format!("{rel}: name a version to restore, like {rel}@v2"))?;
    if repo.is_purged(v).map_err(|e| e.to_string())? {
        return Err(format!(
            "{rel}: that version's data was purged by gc (retention policy); it cannot be restored"
        ));
    }
    let st = repo.restore(entry, v).map_err(|e| e.to_string())?;
    Ok(format!("restored the content of {rel} as v{}", st.generation))
}

/// Finds the entry at a folder-relative path.
fn resolve_path(repo: &Repo, rel: &str) -> Result<crate::model::EntryId, String> {
    let mut cur = repo.root();
    for comp in Path::new(rel).components() {
        use std::path::Component;
        match comp {
            Component::Normal(name) => {
                use std::os::unix::ffi::OsStrExt;
                cur = repo
                    .lookup(cur, name.as_bytes())
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{rel}: no such file in the folder"))?;
            }
            Component::CurDir => {}
            _ => return Err(format!("{rel}: path must stay inside the folder")),
        }
    }
    Ok(cur)
}

fn format_time(hlc: crate::model::Hlc) -> String {
    humantime::format_rfc3339_seconds(hlc.system_time()).to_string()
}

/// History of a path (oldest first) or recent changes across the folder (newest
/// first).
pub fn log_lines(repo: &Repo, path: Option<&str>, limit: usize) -> Result<Vec<LogLine>, String> {
    let (infos, heads): (Vec<_>, Vec<crate::model::VersionId>) = match path {
        Some(p) if !p.is_empty() => {
            let entry = resolve_path(repo, p)?;
            let heads = repo
                .get(entry)
                .map_err(|e| e.to_string())?
                .heads
                .iter()
                .map(|h| h.0)
                .collect();
            (repo.history(entry).map_err(|e| e.to_string())?, heads)
        }
        _ => (repo.recent(limit).map_err(|e| e.to_string())?, Vec::new()),
    };
    Ok(infos
        .into_iter()
        .map(|v| {
            let r = &v.record.record;
            let kind = kind_of(&r.content);
            LogLine {
                n: v.generation,
                version: v.record.id.to_string(),
                time: format_time(r.hlc),
                author: r.author.to_string(),
                size: r.content.size(),
                kind: kind.into(),
                path: repo.path_of(r.entry).unwrap_or_else(|| "(deleted)".into()),
                head: heads.contains(&v.record.id),
            }
        })
        .collect())
}
