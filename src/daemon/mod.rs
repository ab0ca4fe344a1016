//! Wires a node together: data dir lock, repo, network, FUSE session, control
//! socket, signals. `run_mount` serves a folder; `run_serve` is the always-on member
//! with no mount (it stores and relays everything).
//!
//! Uses: everything below it. Process model (DESIGN.md): `distribox mount DIR`
//! re-executes the binary with `--foreground` in a new session and waits for it to
//! say the mount is live; the node runs until the folder is unmounted (`fusermount -u`,
//! `distribox unmount`, SIGTERM), then commits pending writes, syncs and exits 0.

pub mod control;
pub mod logfile;
mod mountpoint;
pub mod query;
pub mod web;

pub use mountpoint::{check_mountpoint, is_mounted, mount_device, MountpointError};

use crate::fs::{DistriboxFs, FsOptions};
use crate::repo::{Repo, RepoError};
use crate::store::{DataDir, DataDirError};
use crate::sync::NetConfig;
use control::{ControlRequest, ControlResponse, StatusInfo, TransfersInfo};
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
    #[error(transparent)]
    Web(#[from] web::WebError),
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
    /// Poll for the next FUSE request this long after a burst (see `fs::busy_poll`);
    /// None: never.
    pub busy_poll: Option<std::time::Duration>,
    /// None: no network (a purely local folder).
    pub net: Option<NetConfig>,
    /// Run the default retention policy this often (None: never).
    pub gc_every: Option<std::time::Duration>,
    pub gui: web::GuiListen,
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
    /// `http://ADDR/` of the web GUI, if it runs.
    gui: Option<String>,
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
        repo.store().stop_background_work();
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
    pub gui: web::GuiListen,
}

/// Runs a member without a mount until SIGTERM/SIGINT or a shutdown request.
pub fn run_serve(cfg: ServeConfig, ready: &mut dyn Ready) -> Result<(), DaemonError> {
    cfg.data_dir.check()?;
    let _lock = cfg.data_dir.lock()?;
    let gui_socket = web::bind(&cfg.gui, &cfg.data_dir)?;
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
        gui: None,
        stop: {
            let tx = stop_tx.clone();
            Box::new(move || {
                let _ = tx.lock().send(());
                Ok(())
            })
        },
    }));
    node.listen_control(ctl.clone())?;
    let gui = start_gui(gui_socket, &ctl)?;
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
    if let Some(g) = gui {
        g.stop();
    }
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
    let gui_socket = web::bind(&cfg.gui, &cfg.data_dir)?;
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
    // Busy polling needs each thread to read a descriptor of its own, so the one
    // that polls does so alone; fuser opens /dev/fuse again for them (in `run`,
    // after the mount is reported ready), so check now that this process can.
    let busy_poll = cfg.busy_poll.filter(|_| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .inspect_err(|err| tracing::warn!(error = %err, "cannot open /dev/fuse; FUSE threads will not busy-poll"))
            .is_ok()
    });
    config.clone_fd = busy_poll.is_some();
    let mut session = fuser::Session::new(fs.clone(), &mountpoint, &config).map_err(|source| DaemonError::Mount {
        path: mountpoint.clone(),
        source,
    })?;
    let unmounter = Arc::new(Mutex::new(session.unmount_callable()));
    {
        let unmounter = unmounter.clone();
        fs.on_session_end(move || {
            // Held only by the stop path (a signal, the control socket) while it
            // unmounts: nothing left to do then. After an unmount from outside
            // this fails (EINVAL).
            if let Some(mut u) = unmounter.try_lock() {
                if let Err(err) = u.unmount() {
                    tracing::debug!(error = %err, "mount point already unmounted");
                }
            }
        });
    }
    raise_readahead(&mountpoint);
    let busy_poll = busy_poll.and_then(|window| {
        use std::os::fd::AsFd;
        let started = session
            .as_fd()
            .try_clone_to_owned()
            .and_then(|dev| fs.start_busy_poll(dev, window));
        started
            .inspect_err(|err| tracing::warn!(error = %err, "busy polling unavailable; FUSE threads only sleep"))
            .ok()
    });
    // Remote versions: drop the kernel's cached pages and names (from a thread of
    // its own, never inside a FUSE callback).
    // Only peers' changes need the kernel's caches dropped.
    let _invalidator = fs.spawn_invalidator(session.notifier(), repo.subscribe_if(|b| !b.kernel_knows));
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
        gui: None,
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
    let gui = start_gui(gui_socket, &ctl)?;
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
    drop(busy_poll);
    if let Some(g) = gui {
        g.stop();
    }
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

/// Starts the web GUI and REST API on its bound socket and tells the control
/// socket where it is.
fn start_gui(bound: Option<web::Bound>, ctl: &Arc<Mutex<NodeCtl>>) -> Result<Option<web::WebHandle>, DaemonError> {
    let Some(bound) = bound else { return Ok(None) };
    let handle = bound.serve(ctl.clone())?;
    ctl.lock().gui = Some(format!("http://{}/", handle.addr));
    Ok(Some(handle))
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
    // Queries run without the control lock (they can take a while on a big
    // folder; status and the GUI must answer meanwhile).
    let repo = ctl.lock().repo.clone();
    let repo = &repo;
    match req {
        ControlRequest::Status => ControlResponse::Status(Box::new(status_of(ctl))),
        ControlRequest::Log(filter) => answer(query::log_lines(repo, &filter), |lines| ControlResponse::Log { lines }),
        ControlRequest::Tree { path } => answer(query::list_dir(repo, &path), |items| ControlResponse::Tree { items }),
        ControlRequest::Conflicts => answer(query::conflicts(repo), |conflicts| ControlResponse::Conflicts {
            conflicts,
        }),
        ControlRequest::Transfers => answer(transfers_of(ctl), ControlResponse::Transfers),
        ControlRequest::Peers => match &ctl.lock().sync {
            Some(s) => ControlResponse::Peers { peers: s.peers() },
            None => ControlResponse::Error {
                message: "this node runs without a network (--no-net)".into(),
            },
        },
        ControlRequest::Deleted { path } => answer(query::deleted_in(repo, &path), |items| ControlResponse::Deleted {
            items,
        }),
        ControlRequest::Versions { path } => answer(query::versions_of(repo, &path), |versions| {
            ControlResponse::Versions { versions }
        }),
        ControlRequest::Resolve { path, keep } => done(query::resolve_conflict(repo, &path, &keep)),
        ControlRequest::Restore { path } => done(query::restore_version(repo, &path)),
        ControlRequest::Gc { .. } => unreachable!("answered above"),
        ControlRequest::Shutdown => match (ctl.lock().stop)() {
            Ok(()) => ControlResponse::Ok,
            Err(message) => ControlResponse::Error { message },
        },
    }
}

/// The node's status. The control lock is held only to read the cheap parts;
/// what is still to arrive is computed after (it reads pending manifests).
fn status_of(ctl: &Mutex<NodeCtl>) -> StatusInfo {
    let (
        repo,
        mountpoint,
        data_dir,
        uptime_secs,
        gui,
        listen,
        peers,
        (chunks_wanted, bytes_received, rate_bps),
        inodes,
    ) = {
        let c = ctl.lock();
        (
            c.repo.clone(),
            c.mountpoint.as_ref().map(|p| p.display().to_string()),
            c.data_dir.display().to_string(),
            c.started.elapsed().as_secs(),
            c.gui.clone(),
            c.sync.as_ref().map(|s| s.listen_addrs()).unwrap_or_default(),
            c.sync.as_ref().map(|s| s.peers()).unwrap_or_default(),
            c.sync.as_ref().map(|s| s.transfers()).unwrap_or_default(),
            c.fs.as_ref().map_or(0, |f| f.inodes_known()),
        )
    };
    let (chunks, chunk_bytes) = repo.store().chunk_stats().unwrap_or((0, 0));
    let versions_pending = repo.pending_ids().len();
    let bytes_missing = if versions_pending > 0 {
        query::bytes_missing(&repo).unwrap_or(0)
    } else {
        0
    };
    StatusInfo {
        node: repo.node().to_hex(),
        pid: std::process::id(),
        mountpoint,
        data_dir,
        local_versions: repo.store().last_seq(repo.node()).unwrap_or(0),
        store_bytes: repo.store().disk_usage(),
        chunks,
        chunk_bytes,
        uptime_secs,
        group: hex::encode(repo.group().id),
        listen,
        peers_online: peers.iter().filter(|p| p.online).count(),
        peers_known: peers.len(),
        versions_pending,
        chunks_wanted,
        bytes_received,
        bytes_missing,
        rate_bps,
        eta_secs: eta(bytes_missing, rate_bps),
        gui,
        rss_bytes: resident_bytes(),
        inodes,
        cached_entries: repo.cached_entries(),
        store_memory: repo.store().memory(),
    }
}

/// This process's resident memory (VmRSS), 0 if /proc cannot say.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// What is arriving from peers (see `status_of` for the locking).
fn transfers_of(ctl: &Mutex<NodeCtl>) -> Result<TransfersInfo, query::QueryError> {
    let (repo, (chunks_wanted, bytes_received, rate_bps)) = {
        let c = ctl.lock();
        (
            c.repo.clone(),
            c.sync.as_ref().map(|s| s.transfers()).unwrap_or_default(),
        )
    };
    let mut items = query::transfers(&repo, usize::MAX)?;
    let bytes_missing = items.iter().map(|i| i.bytes_missing).sum();
    let versions_pending = items.len();
    items.truncate(100);
    Ok(TransfersInfo {
        versions_pending,
        chunks_wanted,
        bytes_received,
        bytes_missing,
        rate_bps,
        eta_secs: eta(bytes_missing, rate_bps),
        items,
    })
}

/// Seconds left at the current rate; None while nothing arrives.
fn eta(missing: u64, rate_bps: u64) -> Option<u64> {
    (missing > 0 && rate_bps > 0).then(|| missing.div_ceil(rate_bps))
}

/// Applies a retention policy. Chunks are swept only while no file has unwritten
/// changes: those changes' chunks are not named by any record yet.
pub fn run_gc(
    repo: &Arc<Repo>,
    fs: Option<&DistriboxFs>,
    policy: &crate::repo::Policy,
    dry_run: bool,
) -> Result<crate::repo::GcReport, String> {
    let mut report = repo.gc(policy, dry_run).map_err(|e| e.to_string())?;
    if dry_run {
        return Ok(report);
    }
    // The walk over every manifest runs without locks; only the check of what
    // changed since, and the delete, hold writes back.
    let plan = repo.sweep_plan().map_err(|e| e.to_string())?;
    let swept = match fs {
        Some(fs) => fs.while_no_writes(|idle| idle.then(|| repo.sweep(plan))),
        None => Some(repo.sweep(plan)),
    };
    if let Some(r) = swept {
        let (chunks, bytes) = r.map_err(|e| e.to_string())?;
        report.swept = true;
        report.chunks_freed = chunks;
        report.bytes_freed = bytes;
        if chunks > 0 {
            reclaim_in_background(repo);
            report.reclaiming = true;
        }
    }
    Ok(report)
}

/// Gives the disk space of swept chunks back (`Store::reclaim_space`) in a thread
/// of its own: on a big store that takes minutes, longer than a CLI waits for an
/// answer. One at a time; a request while one runs makes it go round once more.
fn reclaim_in_background(repo: &Arc<Repo>) {
    /// (running, asked again meanwhile)
    static STATE: Mutex<(bool, bool)> = Mutex::new((false, false));
    {
        let mut st = STATE.lock();
        if st.0 {
            st.1 = true;
            return;
        }
        *st = (true, false);
    }
    let repo = repo.clone();
    let spawned = std::thread::Builder::new().name("reclaim".into()).spawn(move || loop {
        let started = Instant::now();
        match repo.store().reclaim_space() {
            Ok(r) => tracing::info!(
                before = r.before,
                after = r.after,
                rewrote = r.rewrote,
                no_room = r.no_room,
                secs = started.elapsed().as_secs_f64(),
                "gave the disk space of deleted chunks back"
            ),
            Err(e) => tracing::warn!(error = %e, "giving the disk space of deleted chunks back failed"),
        }
        let mut st = STATE.lock();
        if !st.1 || repo.store().is_stopping() {
            *st = (false, false);
            return;
        }
        st.1 = false;
    });
    if let Err(e) = spawned {
        *STATE.lock() = (false, false);
        tracing::warn!(error = %e, "cannot start the thread that gives disk space back");
    }
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

fn done(r: Result<String, query::QueryError>) -> ControlResponse {
    answer(r, |message| ControlResponse::Done { message })
}

fn answer<T>(r: Result<T, query::QueryError>, ok: impl FnOnce(T) -> ControlResponse) -> ControlResponse {
    match r {
        Ok(v) => ok(v),
        Err(e) => ControlResponse::Error { message: e.to_string() },
    }
}
