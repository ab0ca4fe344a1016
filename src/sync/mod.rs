//! Keeping members in sync: anti-entropy by version vectors, announcements, record
//! and chunk fetching, redialing.
//!
//! Owns: the swarm event loop (one thread with its own tokio runtime), which asks
//! peers for what we lack and answers what they ask. Uses: `repo` (through
//! `block_in_place`: RocksDB calls block) and `net` (the swarm and wire types).
//!
//! Delivery never depends on gossip: an announcement only makes a fetch happen
//! sooner. On every connection and every 30 s each side sends its version vector;
//! the other asks for exactly the (author, seq) ranges it lacks. Received records
//! wait (pending) until their chunks are fetched, then join the tree atomically.

pub mod invite;
pub mod peers;

use crate::model::{ChunkId, NodeId, SignedRecord, VersionId};
use crate::net::wire::{self, Announce, Envelope, Request, Response, Staged};
use crate::net::{Behaviour, BehaviourEvent, PROTO_VERSION};
use crate::repo::{ChangeBatch, Repo};
use futures::StreamExt;
use libp2p::request_response::{self as rr, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use parking_lot::Mutex;
use peers::{PeerInfo, PeerTable};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Chunk requests in flight at once (each ≤ 64 chunks): bounds memory while a large
/// file streams in, and spreads requests over every peer that has the data.
const MAX_CHUNK_REQUESTS: usize = 8;
const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FLUSH_EVERY: u64 = 32 << 20;
/// Members learned from other members' lists (a small group; a bound against a
/// member that sends endless lists).
const MAX_KNOWN_PEERS: usize = 256;
/// Least time between two announcements of our records. Each one signs and syncs
/// the records committed since the last and publishes a signed gossip message; a
/// burst of creates (thousands per second) would otherwise pay that per commit.
/// The first commit after a quiet spell is announced at once. Every round also
/// costs each member a record fetch, a chunk fetch and a batch to apply: 10,000
/// files copied in took A 1.53–1.66 s and B 0.79–0.87 s of CPU with 10 ms
/// between rounds, 1.32–1.58 s and 0.64–0.76 s with 50 ms (docs/performance.md).
const ANNOUNCE_GAP: Duration = Duration::from_millis(50);
/// Chunk requests for hinted chunks (`wire::Staged`) stop short of
/// `MAX_CHUNK_REQUESTS` by this many, so a record that lands meanwhile (a small
/// file saved while a large one streams in) gets its chunks without queueing
/// behind the large file.
const KEPT_FOR_RECORDS: usize = 2;
/// Hinted chunks remembered at once (~4 GiB of 64 KiB chunks; ~5 MiB of state).
/// Hints past it are dropped: the commit's record fetches those chunks anyway.
const MAX_HINTED: usize = 65_536;

/// Whether a received chunk is stored through the WAL (see `on_chunks`): those no
/// larger than FastCDC's minimum, i.e. small files' only chunks, a large file's
/// last one and manifest nodes.
fn logged_on_receipt(chunk: &[u8]) -> bool {
    chunk.len() <= crate::chunking::MIN_CHUNK as usize
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("cannot listen on {addr}: {reason} (is another node using it? pick another with --listen)")]
    Listen { addr: String, reason: String },
    #[error("starting the network thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Network options of a node.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
}

/// A running sync engine. Dropping it does not stop it; call `stop`.
pub struct SyncHandle {
    table: Arc<Mutex<PeerTable>>,
    repo: Arc<Repo>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncHandle {
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.table.lock().infos(&self.repo.vector())
    }
    /// Addresses we listen on, each ending in /p2p/<our peer id>.
    pub fn listen_addrs(&self) -> Vec<String> {
        let t = self.table.lock();
        let me = t.local.map(|p| p.to_string()).unwrap_or_default();
        t.listen.iter().map(|a| format!("{a}/p2p/{me}")).collect()
    }
    /// Chunks still wanted, bytes received so far, and the receive rate (bytes/s).
    pub fn transfers(&self) -> (usize, u64, u64) {
        let t = self.table.lock();
        (t.chunks_wanted, t.bytes_received, t.rate_bps())
    }
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the network for `repo`. Returns once the listeners are up.
pub fn start(repo: Arc<Repo>, cfg: NetConfig) -> Result<SyncHandle, SyncError> {
    let key = repo
        .data_dir()
        .load_key()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let keypair = crate::net::keypair(key.to_bytes());
    let table = Arc::new(Mutex::new(PeerTable::default()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), SyncError>>();
    let (repo2, table2) = (repo.clone(), table.clone());
    let want_listen = !cfg.listen.is_empty();
    let thread = std::thread::Builder::new().name("net".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("net-worker")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e.into()));
                return;
            }
        };
        rt.block_on(async move {
            let engine = match Engine::new(repo2, keypair, table2, &cfg) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            engine.run(stop_rx).await;
        });
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("network thread died at startup").into()),
    }
    // Give the listeners a moment to report their addresses (for `invite`).
    for _ in 0..50 {
        if !want_listen || !table.lock().listen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(SyncHandle {
        table,
        repo,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Chunk bytes for a peer (verified on read; None where missing or damaged). With
/// `corrupt` (test hook) every chunk gets one byte flipped.
fn read_chunks(repo: &Repo, ids: &[ChunkId], corrupt: bool) -> Vec<Option<serde_bytes::ByteBuf>> {
    ids.iter()
        .map(|id| match repo.store().get_chunk(*id) {
            Ok(mut b) => {
                if corrupt && !b.is_empty() {
                    b[0] ^= 0xff;
                }
                Some(serde_bytes::ByteBuf::from(b))
            }
            Err(crate::store::StoreError::MissingChunk { .. }) => None,
            Err(e) => {
                tracing::error!(chunk = %id, error = %e, "cannot serve chunk");
                None
            }
        })
        .collect()
}

type Served = (rr::ResponseChannel<Envelope<Response>>, Response);

/// How a request is answered: at once, or after reading chunks off the loop.
enum Answer {
    Now(Response),
    ReadChunks(Vec<ChunkId>),
}

/// Outcome of verifying and storing one chunk answer (see `Engine::on_chunks`).
struct Stored {
    peer: PeerId,
    good: Vec<ChunkId>,
    bytes: u64,
    corrupt: Vec<ChunkId>,
    missing: Vec<ChunkId>,
    unstored: Vec<ChunkId>,
    error: Option<String>,
}

/// An error with its sources, "outer: inner: …" (libp2p's transport errors print
/// nothing themselves).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.retain(|p| !p.is_empty());
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}

/// Runs blocking store work from the event loop (RocksDB calls block).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

struct Engine {
    repo: Arc<Repo>,
    me: NodeId,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    /// Where hints about files still being written go (`wire::Staged`).
    staged_topic: gossipsub::IdentTopic,
    table: Arc<Mutex<PeerTable>>,
    peers_file: PathBuf,
    changes: tokio::sync::mpsc::UnboundedReceiver<ChangeBatch>,
    /// Chunks our mount stored ahead for files still being written, to hint.
    staged: tokio::sync::mpsc::UnboundedReceiver<Vec<ChunkId>>,
    /// Members with at least one connection (what `changes` is filtered by).
    online: Arc<std::sync::atomic::AtomicUsize>,
    /// Outstanding record requests: request → (peer, author). One per author.
    record_reqs: HashMap<OutboundRequestId, (PeerId, NodeId)>,
    asking: HashSet<NodeId>,
    /// chunk → pending records waiting for it; record → chunks it still waits for.
    want: HashMap<ChunkId, Vec<VersionId>>,
    waiting: HashMap<VersionId, usize>,
    queue: VecDeque<ChunkId>,
    /// Chunks a member hinted it holds (a file it is still writing) and we lack:
    /// chunk → that member. Queued in `hint_queue` or in flight; fetched only from
    /// that member, after what pending records need, and dropped if it fails.
    hinted: HashMap<ChunkId, PeerId>,
    hint_queue: VecDeque<ChunkId>,
    chunk_reqs: HashMap<OutboundRequestId, (PeerId, Vec<ChunkId>)>,
    /// Peers that did not have (or sent bad data for) a chunk.
    tried: HashMap<ChunkId, HashSet<PeerId>>,
    /// Chunks no connected peer had; retried at the next anti-entropy round.
    parked: Vec<ChunkId>,
    next_peer: usize,
    announce: bool,
    /// When the last announcement went out (see `ANNOUNCE_GAP`).
    announced_at: Option<Instant>,
    /// Test hook (`DISTRIBOX_TEST_CORRUPT_SENT_CHUNKS=1`): play a lying peer that
    /// flips a byte in every chunk it serves, so tests can check that receivers
    /// catch it. Logged loudly at start.
    corrupt_sends: bool,
    /// Checks received records' signatures, one per batch of an author's records.
    verifier: crate::model::SealVerifier,
    /// Chunk bytes stored without the WAL since the last flush (see `on_chunks`).
    unflushed: u64,
    /// Pending records whose chunks are all here: the next `integrate` offers them.
    ready: Vec<VersionId>,
    /// Answers computed off the loop (chunk reads), to send.
    served_tx: tokio::sync::mpsc::UnboundedSender<Served>,
    served_rx: tokio::sync::mpsc::UnboundedReceiver<Served>,
    /// Chunk answers being verified/stored on the blocking pool (count toward the
    /// in-flight limit), and their outcomes.
    storing: usize,
    stored_tx: tokio::sync::mpsc::UnboundedSender<Stored>,
    stored_rx: tokio::sync::mpsc::UnboundedReceiver<Stored>,
}

impl Engine {
    fn new(
        repo: Arc<Repo>,
        keypair: libp2p::identity::Keypair,
        table: Arc<Mutex<PeerTable>>,
        cfg: &NetConfig,
    ) -> Result<Engine, SyncError> {
        let local = keypair.public().to_peer_id();
        let mut swarm = crate::net::build_swarm(keypair, repo.group(), cfg.mdns)?;
        let topic = crate::net::topic(repo.group());
        let staged_topic = crate::net::staged_topic(repo.group());
        for t in [&topic, &staged_topic] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(t)
                .map_err(|e| crate::net::NetError::Setup(e.to_string()))?;
        }
        for a in &cfg.listen {
            swarm.listen_on(a.clone()).map_err(|e| SyncError::Listen {
                addr: a.to_string(),
                reason: error_chain(&e),
            })?;
        }
        let peers_file = peers::peers_file(&repo.data_dir().root);
        {
            let mut t = table.lock();
            t.local = Some(local);
            for (peer, addrs) in peers::load_known(&peers_file) {
                let Ok(peer) = peer.parse::<PeerId>() else { continue };
                for a in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    t.add_addr(peer, a);
                }
            }
            for a in &cfg.peers {
                match a.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(peer)) => {
                        t.add_addr(peer, a.clone());
                    }
                    _ => {
                        // No peer id: dial once by address; identify fills it in.
                        if let Err(e) = swarm.dial(a.clone()) {
                            tracing::warn!(addr = %a, error = %e, "cannot dial --peer address");
                        }
                    }
                }
            }
            for p in t.peers.values_mut() {
                p.next_dial = Some(Instant::now());
                p.backoff = Duration::from_secs(1);
            }
        }
        // Local changes are announced, and only to someone: with no member
        // connected, one that connects later compares version vectors.
        let online = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let anyone = online.clone();
        let changes = repo.subscribe_if(move |b| !b.remote && anyone.load(std::sync::atomic::Ordering::Relaxed) > 0);
        let anyone = online.clone();
        let staged = repo.subscribe_staged(move || anyone.load(std::sync::atomic::Ordering::Relaxed) > 0);
        let me = repo.node();
        let (served_tx, served_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stored_tx, stored_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut e = Engine {
            repo,
            me,
            swarm,
            topic,
            staged_topic,
            table,
            peers_file,
            changes,
            staged,
            online,
            record_reqs: HashMap::new(),
            asking: HashSet::new(),
            want: HashMap::new(),
            waiting: HashMap::new(),
            queue: VecDeque::new(),
            hinted: HashMap::new(),
            hint_queue: VecDeque::new(),
            chunk_reqs: HashMap::new(),
            tried: HashMap::new(),
            parked: Vec::new(),
            next_peer: 0,
            announce: true,
            announced_at: None,
            corrupt_sends: std::env::var_os("DISTRIBOX_TEST_CORRUPT_SENT_CHUNKS").is_some(),
            verifier: crate::model::SealVerifier::new(),
            unflushed: 0,
            ready: Vec::new(),
            served_tx,
            served_rx,
            storing: 0,
            stored_tx,
            stored_rx,
        };
        if e.corrupt_sends {
            tracing::warn!("DISTRIBOX_TEST_CORRUPT_SENT_CHUNKS is set: this node sends corrupt chunks (test hook)");
        }
        e.resume_pending();
        Ok(e)
    }

    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_round = Instant::now();
        loop {
            let due = self.announce_due();
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(batch) = self.changes.recv() => {
                    if !batch.remote {
                        self.announce = true;
                    }
                    while let Ok(b) = self.changes.try_recv() {
                        self.announce |= !b.remote;
                    }
                }
                _ = tick.tick() => {
                    self.redial();
                    if last_round.elapsed() >= ANTI_ENTROPY_EVERY {
                        last_round = Instant::now();
                        self.anti_entropy_round();
                    }
                }
                Some((channel, body)) = self.served_rx.recv() => {
                    let _ = self.swarm.behaviour_mut().rr.send_response(
                        channel,
                        Envelope {
                            version: PROTO_VERSION,
                            body,
                        },
                    );
                }
                Some(st) = self.stored_rx.recv() => self.on_stored(st),
                Some(ids) = self.staged.recv() => self.publish_staged(ids),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
                _ = &mut stop => break,
            }
            if self.announce && self.announce_due().is_none() {
                self.announce_local();
            }
            self.schedule_chunks();
        }
        peers::save_known(&self.peers_file, &self.table.lock());
        tracing::info!("network stopped");
    }

    // ------------------------------------------------------------ swarm events

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(addr = %address, "listening");
                self.table.lock().listen.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let mut t = self.table.lock();
                let p = t.peers.entry(peer_id).or_default();
                p.online = true;
                p.last_seen = Some(SystemTime::now());
                p.backoff = Duration::from_secs(1);
                p.next_dial = None;
                drop(t);
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    if self.table.lock().add_addr(peer_id, addr) {
                        peers::save_known(&self.peers_file, &self.table.lock());
                    }
                }
                if num_established.get() == 1 {
                    self.online.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(peer = %peer_id, "peer online");
                    self.send_vector(peer_id);
                    // A new source: chunks nobody had may be there.
                    self.unpark();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                let mut t = self.table.lock();
                if let Some(p) = t.peers.get_mut(&peer_id) {
                    p.online = false;
                    p.next_dial = Some(Instant::now() + p.backoff.max(Duration::from_secs(1)));
                }
                drop(t);
                self.online.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(peer = %peer_id, cause = ?cause, "peer offline");
                self.requeue_from(peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr, error, ..
            } => {
                // A node without the group secret ends here (the group stream
                // layer decrypts to garbage, so noise fails).
                tracing::info!(addr = %send_back_addr, error = %error, "refused a connection (not a member, or not Distribox)");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.on_rr(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => {
                if message.topic == self.staged_topic.hash() {
                    // Signed messages name their author: the member holding the chunks.
                    self.on_staged(message.source.unwrap_or(propagation_source), &message.data);
                } else {
                    self.on_announce(propagation_source, &message.data);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if info.protocol_version != "/distribox/1" {
                    tracing::warn!(peer = %peer_id, version = %info.protocol_version, "peer speaks another Distribox protocol version; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let mut changed = false;
                for a in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, a.clone());
                    changed |= self.table.lock().add_addr(peer_id, a);
                }
                if changed {
                    peers::save_known(&self.peers_file, &self.table.lock());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => match result {
                Ok(rtt) => {
                    let mut t = self.table.lock();
                    let p = t.peers.entry(peer).or_default();
                    p.rtt = Some(rtt);
                    p.last_seen = Some(SystemTime::now());
                }
                Err(e) => {
                    // A stopped or vanished peer: drop it now rather than waiting for
                    // TCP to notice, so `peers` says offline within seconds.
                    tracing::info!(peer = %peer, error = %e, "ping failed; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    if self.table.lock().add_addr(peer, addr.clone()) {
                        tracing::info!(peer = %peer, addr = %addr, "discovered on the LAN");
                    }
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(_)) => {}
            _ => {}
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut t = self.table.lock();
            for (id, p) in t.peers.iter_mut() {
                if p.online || p.addrs.is_empty() || self.swarm.is_connected(id) {
                    continue;
                }
                match p.next_dial {
                    Some(at) if at <= now => {
                        due.push((*id, p.addrs.clone()));
                        p.backoff = (p.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                        p.next_dial = Some(now + p.backoff);
                    }
                    None => p.next_dial = Some(now + p.backoff.max(Duration::from_secs(1))),
                    _ => {}
                }
            }
        }
        for (peer, addrs) in due {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(peer = %peer, error = %e, "redial failed");
            }
        }
    }

    // ------------------------------------------------------------ requests

    fn request(&mut self, peer: PeerId, body: Request) -> OutboundRequestId {
        self.swarm.behaviour_mut().rr.send_request(
            &peer,
            Envelope {
                version: PROTO_VERSION,
                body,
            },
        )
    }

    fn our_vector(&self) -> Vec<(NodeId, u64)> {
        let mut v: Vec<_> = self.repo.vector().into_iter().collect();
        v.sort();
        v
    }

    fn send_vector(&mut self, peer: PeerId) {
        let vector = self.our_vector();
        self.request(peer, Request::Vector { vector });
    }

    /// Puts chunks no connected peer had back in the queue, untried.
    fn unpark(&mut self) {
        for c in std::mem::take(&mut self.parked) {
            self.tried.remove(&c);
            self.queue.push_back(c);
        }
    }

    fn anti_entropy_round(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            self.send_vector(p);
        }
        // Chunks nobody had last time: someone may have them now.
        self.unpark();
        self.resume_pending();
    }

    /// Asks `peer` for every record range it has and we lack.
    fn pull(&mut self, peer: PeerId, theirs: &[(NodeId, u64)]) {
        let ours = self.repo.vector();
        for (author, seq) in theirs {
            let have = ours.get(author).copied().unwrap_or(0);
            if *seq <= have || self.asking.contains(author) {
                continue;
            }
            if *author == self.me {
                tracing::error!(peer = %peer, seq, have, "peer holds records signed with this node's key that this node never wrote: is a copy of this data dir running elsewhere?");
                continue;
            }
            let to = (*seq).min(have + wire::MAX_RECORDS_PER_RESPONSE as u64);
            let id = self.request(
                peer,
                Request::Records {
                    author: *author,
                    from: have + 1,
                    to,
                },
            );
            self.asking.insert(*author);
            self.record_reqs.insert(id, (peer, *author));
        }
    }

    fn on_announce(&mut self, from: PeerId, data: &[u8]) {
        let a: Announce = match wire::decode(data, 1024) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "malformed announcement; ignored");
                return;
            }
        };
        if a.version != PROTO_VERSION {
            tracing::warn!(peer = %from, version = a.version, "announcement of an incompatible protocol version; ignored");
            return;
        }
        if let Some(p) = self.table.lock().peers.get_mut(&from) {
            p.last_seen = Some(SystemTime::now());
            // Remember it: if a fetch for this author is in flight, its answer
            // continues up to this seq instead of waiting for the next round.
            let known = p.vector.entry(a.author).or_default();
            *known = (*known).max(a.seq);
        }
        self.pull(from, &[(a.author, a.seq)]);
    }

    /// When a pending announcement is held back by `ANNOUNCE_GAP` (None: send it now,
    /// or nothing to send).
    fn announce_due(&self) -> Option<Instant> {
        let due = self.announced_at? + ANNOUNCE_GAP;
        (self.announce && due > Instant::now()).then_some(due)
    }

    /// Publishes "our records go up to seq N" after making them durable and signed.
    /// With nobody connected there is no one to tell: a member that connects later
    /// compares version vectors and fetches (signing and syncing them first, see
    /// `Repo::records_of`).
    fn announce_local(&mut self) {
        self.announce = false;
        if self.swarm.connected_peers().next().is_none() {
            return;
        }
        self.announced_at = Some(Instant::now());
        let repo = self.repo.clone();
        if let Err(e) = blocking(|| repo.sign_pending().and_then(|_| repo.sync())) {
            tracing::warn!(error = %e, "could not sign/sync records before announcing; retrying");
            self.announce = true;
            return;
        }
        let seq = self.repo.vector().get(&self.me).copied().unwrap_or(0);
        self.publish(self.me, seq);
    }

    fn publish(&mut self, author: NodeId, seq: u64) {
        let msg = wire::encode(&Announce {
            version: PROTO_VERSION,
            author,
            seq,
        });
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), msg) {
            Ok(_) => tracing::debug!(author = %author, seq, "announced"),
            // Routine in a small group or just after start: anti-entropy delivers.
            Err(e) => tracing::debug!(error = %e, "announcement not sent"),
        }
    }

    /// Hints the chunks our mount just stored for a file it is still writing.
    fn publish_staged(&mut self, mut ids: Vec<ChunkId>) {
        while let Ok(more) = self.staged.try_recv() {
            ids.extend(more);
        }
        for part in ids.chunks(wire::MAX_STAGED_CHUNKS) {
            let msg = wire::encode(&Staged {
                version: PROTO_VERSION,
                chunks: part.to_vec(),
            });
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.staged_topic.clone(), msg)
            {
                tracing::debug!(error = %e, "staged-chunk hint not sent");
                return;
            }
        }
        tracing::debug!(chunks = ids.len(), "hinted staged chunks");
    }

    /// Queues the hinted chunks we lack, to fetch from the member that holds them.
    fn on_staged(&mut self, from: PeerId, data: &[u8]) {
        let s: Staged = match wire::decode(data, wire::MAX_STAGED) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "malformed staged-chunk hint; ignored");
                return;
            }
        };
        if s.version != PROTO_VERSION || s.chunks.len() > wire::MAX_STAGED_CHUNKS {
            tracing::warn!(peer = %from, version = s.version, n = s.chunks.len(), "staged-chunk hint of another protocol version or too long; ignored");
            return;
        }
        // Only the writer has them; a member that relayed the hint does not.
        if !self.swarm.is_connected(&from) {
            return;
        }
        let room = MAX_HINTED.saturating_sub(self.hinted.len());
        let fresh: Vec<ChunkId> = s
            .chunks
            .into_iter()
            .filter(|c| !self.hinted.contains_key(c) && !self.want.contains_key(c))
            .take(room)
            .collect();
        if fresh.is_empty() {
            return;
        }
        let repo = self.repo.clone();
        // Chunks fetched ahead are only worth it while there is plenty of room:
        // they take space before any version names them.
        let room_for = fresh.len() as u64 * crate::chunking::MAX_CHUNK as u64;
        let lacking = blocking(|| -> crate::store::Result<Vec<ChunkId>> {
            if !repo.store().room_for(room_for) {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for c in fresh {
                if !repo.store().has_chunk(c)? {
                    out.push(c);
                }
            }
            Ok(out)
        });
        match lacking {
            Ok(lacking) => {
                for c in lacking {
                    self.hinted.insert(c, from);
                    self.hint_queue.push_back(c);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot check hinted chunks against the store"),
        }
    }

    /// Forgets a hinted chunk; one a pending record now needs goes to the
    /// ordinary queue.
    fn drop_hint(&mut self, c: ChunkId) {
        if self.hinted.remove(&c).is_some() && self.want.contains_key(&c) {
            self.queue.push_back(c);
        }
    }

    /// Forgets `c` as hinted after a failed fetch; true if no record wants it, so
    /// it is not retried (a record that needs it later asks for it as usual).
    fn only_a_hint(&mut self, c: &ChunkId) -> bool {
        self.hinted.remove(c).is_some() && !self.want.contains_key(c)
    }

    /// The next hinted chunks to ask for, all from one member: up to a request's
    /// worth, in the order they were hinted (file order).
    fn next_hint_batch(&mut self) -> Option<(PeerId, Vec<ChunkId>)> {
        let mut batch: Vec<ChunkId> = Vec::new();
        let mut from: Option<PeerId> = None;
        while batch.len() < wire::MAX_CHUNKS_PER_REQUEST {
            let Some(&c) = self.hint_queue.front() else { break };
            let Some(&peer) = self.hinted.get(&c) else {
                self.hint_queue.pop_front(); // arrived or dropped meanwhile
                continue;
            };
            if from.is_some_and(|f| f != peer) {
                break;
            }
            self.hint_queue.pop_front();
            if !self.swarm.is_connected(&peer) {
                self.drop_hint(c);
                continue;
            }
            from = Some(peer);
            batch.push(c);
        }
        Some((from?, batch))
    }

    fn on_rr(&mut self, ev: rr::Event<Envelope<Request>, Envelope<Response>>) {
        match ev {
            rr::Event::Message {
                peer,
                message: rr::Message::Request { request, channel, .. },
                ..
            } => {
                let resp = match self.answer(peer, request) {
                    Answer::Now(resp) => resp,
                    Answer::ReadChunks(ids) => {
                        // Chunk reads (RocksDB + BLAKE3 over up to 64 chunks) run on
                        // the blocking pool so serving and receiving overlap; the
                        // answer comes back through `served`.
                        let (repo, corrupt, tx) = (self.repo.clone(), self.corrupt_sends, self.served_tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let chunks = read_chunks(&repo, &ids, corrupt);
                            let _ = tx.send((channel, Response::Chunks { chunks }));
                        });
                        return;
                    }
                };
                let _ = self.swarm.behaviour_mut().rr.send_response(
                    channel,
                    Envelope {
                        version: PROTO_VERSION,
                        body: resp,
                    },
                );
            }
            rr::Event::Message {
                peer,
                message: rr::Message::Response { request_id, response },
                ..
            } => {
                if response.version != PROTO_VERSION {
                    tracing::warn!(peer = %peer, version = response.version, "response of an incompatible protocol version; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer);
                    self.failed(request_id, peer);
                    return;
                }
                self.on_response(peer, request_id, response.body);
            }
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                match &error {
                    rr::OutboundFailure::UnsupportedProtocols => {
                        tracing::warn!(peer = %peer, "peer does not speak {} (incompatible Distribox version?)", crate::net::SYNC_PROTOCOL)
                    }
                    e => tracing::debug!(peer = %peer, error = %e, "request failed"),
                }
                self.failed(request_id, peer);
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                tracing::warn!(peer = %peer, error = %error, "bad or failed request from peer");
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }

    fn failed(&mut self, id: OutboundRequestId, peer: PeerId) {
        if let Some((_, author)) = self.record_reqs.remove(&id) {
            self.asking.remove(&author);
        }
        if let Some((_, chunks)) = self.chunk_reqs.remove(&id) {
            for c in chunks {
                if self.only_a_hint(&c) {
                    continue;
                }
                self.tried.entry(c).or_default().insert(peer);
                self.queue.push_back(c);
            }
        }
    }

    /// Puts chunks asked of a peer that went away back in the queue.
    fn requeue_from(&mut self, peer: PeerId) {
        let chunk_ids = self
            .chunk_reqs
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(id, _)| *id);
        let record_ids = self
            .record_reqs
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(id, _)| *id);
        let ids: Vec<OutboundRequestId> = chunk_ids.chain(record_ids).collect();
        for id in ids {
            self.failed(id, peer);
        }
    }

    /// Answers a peer's request from the store.
    fn answer(&mut self, peer: PeerId, req: Envelope<Request>) -> Answer {
        if req.version != PROTO_VERSION {
            tracing::warn!(peer = %peer, version = req.version, "request of an incompatible protocol version; refused");
            return Answer::Now(Response::Error {
                message: format!(
                    "protocol version {} not supported (this node speaks {PROTO_VERSION})",
                    req.version
                ),
            });
        }
        if let Some(p) = self.table.lock().peers.get_mut(&peer) {
            p.last_seen = Some(SystemTime::now());
        }
        let repo = self.repo.clone();
        Answer::Now(match req.body {
            Request::Vector { vector } => {
                {
                    let mut t = self.table.lock();
                    let p = t.peers.entry(peer).or_default();
                    p.vector = vector.iter().copied().collect();
                    p.vector_known = true;
                }
                self.pull(peer, &vector);
                Response::Vector {
                    vector: self.our_vector(),
                    peers: self.peer_list(peer),
                }
            }
            Request::Records { author, from, to } => {
                match blocking(|| {
                    repo.records_of(author, from, to, wire::MAX_RECORDS_PER_RESPONSE, wire::MAX_RESPONSE / 2)
                }) {
                    Ok(records) => Response::Records { records },
                    Err(e) => {
                        tracing::error!(error = %e, "reading records for a peer failed");
                        Response::Error {
                            message: "store error".into(),
                        }
                    }
                }
            }
            Request::Chunks { ids } if ids.len() > wire::MAX_CHUNKS_PER_REQUEST => {
                tracing::warn!(peer = %peer, n = ids.len(), "peer asked for too many chunks at once; refused");
                Response::Error {
                    message: format!("at most {} chunks per request", wire::MAX_CHUNKS_PER_REQUEST),
                }
            }
            Request::Chunks { ids } => return Answer::ReadChunks(ids),
        })
    }

    /// Members we know of (except the asker), with their addresses.
    fn peer_list(&self, asker: PeerId) -> Vec<(Vec<u8>, Vec<String>)> {
        self.table
            .lock()
            .peers
            .iter()
            .filter(|(id, p)| **id != asker && !p.addrs.is_empty())
            .map(|(id, p)| (id.to_bytes(), p.addrs.iter().map(|a| a.to_string()).collect()))
            .collect()
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, body: Response) {
        let expected = matches!(
            (
                &body,
                self.record_reqs.contains_key(&id),
                self.chunk_reqs.contains_key(&id)
            ),
            (Response::Records { .. }, true, _)
                | (Response::Chunks { .. }, _, true)
                | (Response::Vector { .. }, false, false)
                | (Response::Error { .. }, _, _)
        );
        if !expected {
            tracing::warn!(peer = %peer, "peer answered with the wrong kind of response; dropped");
            self.failed(id, peer);
            return;
        }
        match body {
            Response::Vector { vector, peers } => {
                {
                    let mut t = self.table.lock();
                    let p = t.peers.entry(peer).or_default();
                    p.vector = vector.iter().copied().collect();
                    p.vector_known = true;
                }
                self.pull(peer, &vector);
                let mut new = Vec::new();
                let room = MAX_KNOWN_PEERS.saturating_sub(self.table.lock().peers.len());
                for (pid, addrs) in peers.into_iter().take(room) {
                    let Ok(pid) = PeerId::from_bytes(&pid) else { continue };
                    for a in addrs.iter().take(16).filter_map(|a| a.parse::<Multiaddr>().ok()) {
                        if self.table.lock().add_addr(pid, a) {
                            new.push(pid);
                        }
                    }
                }
                for pid in new {
                    if !self.swarm.is_connected(&pid) {
                        if let Some(p) = self.table.lock().peers.get_mut(&pid) {
                            p.next_dial = Some(Instant::now());
                        }
                    }
                }
            }
            Response::Records { records } => {
                let Some((_, author)) = self.record_reqs.remove(&id) else {
                    return;
                };
                self.asking.remove(&author);
                self.on_records(peer, author, records);
            }
            Response::Chunks { chunks } => {
                let Some((_, ids)) = self.chunk_reqs.remove(&id) else {
                    return;
                };
                self.on_chunks(peer, ids, chunks);
            }
            Response::Error { message } => {
                tracing::warn!(peer = %peer, message = %message, "peer refused a request");
                self.failed(id, peer);
            }
        }
    }

    fn on_records(&mut self, peer: PeerId, author: NodeId, records: Vec<Vec<u8>>) {
        let mut recs = Vec::with_capacity(records.len());
        for b in &records {
            match SignedRecord::decode_verified(b, &mut self.verifier) {
                Ok(r) if r.record.author == author => recs.push(r),
                Ok(r) => {
                    tracing::warn!(peer = %peer, version = %r.id, "peer sent a record of another author than asked; dropped");
                    break;
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "peer sent a bad record; dropped");
                    break;
                }
            }
        }
        let repo = self.repo.clone();
        let received = match blocking(|| repo.receive(recs)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "storing received records failed");
                return;
            }
        };
        for r in &received.rejected {
            tracing::warn!(peer = %peer, "{r}");
        }
        if !received.stored.is_empty() {
            tracing::debug!(peer = %peer, author = %author, n = received.stored.len(), "records received");
            for v in &received.stored {
                self.need(*v);
            }
            self.integrate();
            // Tell others this node can now serve them (relaying through members
            // that are not connected to the author).
            let seq = self.repo.vector().get(&author).copied().unwrap_or(0);
            self.publish(author, seq);
        }
        // More to fetch from this peer?
        let theirs: Vec<(NodeId, u64)> = self
            .table
            .lock()
            .peers
            .get(&peer)
            .and_then(|p| p.vector.get(&author).map(|s| (author, *s)))
            .into_iter()
            .collect();
        if !received.stored.is_empty() {
            self.pull(peer, &theirs);
        }
    }

    // ------------------------------------------------------------ chunks

    /// Queues the chunks a pending record still needs.
    fn need(&mut self, v: VersionId) {
        let repo = self.repo.clone();
        let missing = match blocking(|| repo.missing_chunks(v)) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(version = %v, error = %e, "cannot tell which chunks a record needs");
                return;
            }
        };
        if missing.is_empty() {
            self.waiting.remove(&v);
            self.ready.push(v);
            return;
        }
        self.waiting.insert(v, missing.len());
        for c in missing {
            let w = self.want.entry(c).or_default();
            // A hinted chunk is already on its way (or queued): `on_stored` serves
            // this record when it lands; if the hint's fetch fails it is queued as
            // usual (`only_a_hint` is false for a wanted chunk), and `drop_hint`
            // queues it if the writer went away before it was asked for.
            if w.is_empty() && !self.hinted.contains_key(&c) {
                self.queue.push_back(c);
            }
            if !w.contains(&v) {
                w.push(v);
            }
        }
        self.table.lock().chunks_wanted = self.want.len();
    }

    /// Picks up records left pending by an earlier run (resume after restart).
    fn resume_pending(&mut self) {
        let pending = self.repo.pending_ids();
        for v in pending {
            if !self.waiting.contains_key(&v) {
                self.need(v);
            }
        }
        self.integrate();
    }

    fn integrate(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        let repo = self.repo.clone();
        match blocking(|| repo.integrate_ready(ready)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(versions = n, "remote versions landed"),
            Err(e) => tracing::error!(error = %e, "applying received versions failed"),
        }
    }

    fn schedule_chunks(&mut self) {
        let peers: Vec<PeerId> = {
            let mut p: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            p.sort();
            p
        };
        if peers.is_empty() {
            return;
        }
        while self.chunk_reqs.len() + self.storing < MAX_CHUNK_REQUESTS && !self.queue.is_empty() {
            let peer = peers[self.next_peer % peers.len()];
            self.next_peer += 1;
            let mut batch = Vec::new();
            let mut skipped = Vec::new();
            while batch.len() < wire::MAX_CHUNKS_PER_REQUEST {
                let Some(c) = self.queue.pop_front() else { break };
                if !self.want.contains_key(&c) {
                    continue; // arrived meanwhile
                }
                let tried = self.tried.get(&c);
                if tried.map(|t| t.contains(&peer)).unwrap_or(false) {
                    if tried.map(|t| peers.iter().all(|p| t.contains(p))).unwrap_or(false) {
                        self.parked.push(c); // nobody connected has it
                    } else {
                        skipped.push(c);
                    }
                    continue;
                }
                batch.push(c);
            }
            for c in skipped.into_iter().rev() {
                self.queue.push_front(c);
            }
            if batch.is_empty() {
                if self
                    .queue
                    .iter()
                    .all(|c| self.tried.get(c).map(|t| t.contains(&peer)).unwrap_or(false))
                {
                    // This peer has none of what is left; try the next one, and stop
                    // after a full circle.
                    if self.next_peer % peers.len() == 0 {
                        break;
                    }
                }
                continue;
            }
            let id = self.request(peer, Request::Chunks { ids: batch.clone() });
            self.chunk_reqs.insert(id, (peer, batch));
        }
        while self.chunk_reqs.len() + self.storing + KEPT_FOR_RECORDS < MAX_CHUNK_REQUESTS {
            let Some((peer, batch)) = self.next_hint_batch() else {
                break;
            };
            let id = self.request(peer, Request::Chunks { ids: batch.clone() });
            self.chunk_reqs.insert(id, (peer, batch));
        }
    }

    /// Verifies and stores a chunk answer on the blocking pool (BLAKE3 and RocksDB
    /// writes off the event loop); `on_stored` does the bookkeeping.
    fn on_chunks(&mut self, peer: PeerId, ids: Vec<ChunkId>, chunks: Vec<Option<serde_bytes::ByteBuf>>) {
        if chunks.len() != ids.len() {
            tracing::warn!(peer = %peer, asked = ids.len(), got = chunks.len(), "peer answered a chunk request with the wrong number of slots; dropped");
        }
        // Received chunks skip the WAL (half the disk writes); flushing every
        // FLUSH_EVERY bytes bounds what a crash mid-transfer makes us fetch again.
        // Small ones (whole small files, manifest nodes) go through the WAL: each
        // record stored after unlogged chunks first flushes them to table files,
        // and 10,000 small files arriving made that a flush per answer.
        let size: u64 = chunks
            .iter()
            .flatten()
            .filter(|b| !logged_on_receipt(b))
            .map(|b| b.len() as u64)
            .sum();
        self.unflushed += size;
        let flush = self.unflushed >= FLUSH_EVERY;
        if flush {
            self.unflushed = 0;
        }
        self.storing += 1;
        let (repo, tx) = (self.repo.clone(), self.stored_tx.clone());
        tokio::task::spawn_blocking(move || {
            let mut out = Stored {
                peer,
                good: Vec::new(),
                bytes: 0,
                corrupt: Vec::new(),
                missing: Vec::new(),
                unstored: Vec::new(),
                error: None,
            };
            let mut slots = chunks.into_iter();
            let mut small = Vec::new();
            for id in ids {
                match slots.next().flatten() {
                    Some(b) if ChunkId::of(&b) == id => {
                        if logged_on_receipt(&b) {
                            small.push((id, b));
                        } else if let Err(e) = repo.store().put_chunk_opt(id, &b, false) {
                            out.error = Some(e.to_string());
                            out.unstored.push(id);
                        } else {
                            out.bytes += b.len() as u64;
                            out.good.push(id);
                        }
                    }
                    Some(_) => out.corrupt.push(id),
                    None => out.missing.push(id),
                }
            }
            let refs: Vec<(ChunkId, &[u8])> = small.iter().map(|(id, b)| (*id, &b[..])).collect();
            match repo.store().put_chunks_logged(&refs) {
                Ok(()) => {
                    out.bytes += refs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                    out.good.extend(refs.iter().map(|(id, _)| *id));
                }
                Err(e) => {
                    out.error = Some(e.to_string());
                    out.unstored.extend(refs.iter().map(|(id, _)| *id));
                }
            }
            if flush {
                if let Err(e) = repo.store().flush_chunks() {
                    out.error = Some(e.to_string());
                }
            }
            let _ = tx.send(out);
        });
    }

    fn on_stored(&mut self, st: Stored) {
        self.storing = self.storing.saturating_sub(1);
        let peer = st.peer;
        for id in &st.corrupt {
            tracing::warn!(peer = %peer, chunk = %id, "peer sent chunk data that does not match its hash; fetching it elsewhere");
        }
        let mut retry = Vec::new();
        for id in st.corrupt.iter().chain(&st.missing) {
            if self.only_a_hint(id) {
                continue;
            }
            self.tried.entry(*id).or_default().insert(peer);
            retry.push(*id);
        }
        if let Some(e) = &st.error {
            tracing::error!(error = %e, "storing received chunks failed (disk full?); will retry");
            for id in &st.unstored {
                self.hinted.remove(id);
            }
            self.parked.extend(st.unstored.iter().copied());
        }
        let bytes = st.bytes;
        let got = st.good;
        self.table.lock().received(bytes);
        for c in retry {
            self.queue.push_back(c);
        }
        let mut done = Vec::new();
        for id in got {
            self.tried.remove(&id);
            self.hinted.remove(&id);
            for v in self.want.remove(&id).unwrap_or_default() {
                if let Some(n) = self.waiting.get_mut(&v) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        done.push(v);
                    }
                }
            }
        }
        self.table.lock().chunks_wanted = self.want.len();
        if done.is_empty() {
            return;
        }
        for v in done {
            self.need(v); // a manifest node arrived: now its children are known
        }
        self.integrate();
    }
}
