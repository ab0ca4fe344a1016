//! What this node knows about other members: addresses (remembered across restarts
//! in `<data dir>/peers.json`), online state, round-trip time, version vectors.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// One member as `distribox peers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer: String,
    /// Short node id (as in `distribox log`).
    pub node: String,
    pub online: bool,
    pub addrs: Vec<String>,
    /// Unix seconds of the last sign of life (None: never seen).
    pub last_seen: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// Records they hold that we lack, and records we hold that they lack (from the
    /// last vector exchange); both 0 = in sync.
    pub missing_here: u64,
    pub missing_there: u64,
    /// The counts above come from a vector it sent (false: not compared yet).
    #[serde(default)]
    pub vector_known: bool,
}

#[derive(Default)]
pub struct Peer {
    pub addrs: Vec<Multiaddr>,
    pub online: bool,
    pub last_seen: Option<SystemTime>,
    pub rtt: Option<Duration>,
    pub vector: HashMap<crate::model::NodeId, u64>,
    /// A vector came from it (an empty one is a valid answer: it holds nothing).
    pub vector_known: bool,
    /// Redial schedule while offline.
    pub next_dial: Option<Instant>,
    pub backoff: Duration,
}

#[derive(Default)]
pub struct PeerTable {
    pub peers: HashMap<PeerId, Peer>,
    pub listen: Vec<Multiaddr>,
    pub local: Option<PeerId>,
    /// Bytes of chunk data received, and chunks still wanted (for `status`).
    pub chunks_wanted: usize,
    pub bytes_received: u64,
    /// (when, bytes_received then), one sample per arrival, the last RATE_WINDOW.
    received_at: std::collections::VecDeque<(Instant, u64)>,
}

/// Bytes per second in `samples` ((when, cumulative bytes), oldest first) over
/// the RATE_WINDOW before `now`.
fn rate(samples: &std::collections::VecDeque<(Instant, u64)>, now: Instant) -> u64 {
    let Some(&(_, last)) = samples.back() else {
        return 0;
    };
    let start = now.checked_sub(RATE_WINDOW).unwrap_or(now);
    // Baseline: the newest sample at or before the window's start, else the first.
    let (t0, b0) = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= start)
        .copied()
        .unwrap_or(samples[0]);
    if last == b0 {
        return 0;
    }
    let secs = now.duration_since(t0.max(start)).as_secs_f64().max(1.0);
    ((last - b0) as f64 / secs) as u64
}

/// How far back the receive rate looks: long enough to smooth batch arrivals,
/// short enough that a stalled transfer shows 0 soon.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl PeerTable {
    /// Counts received chunk bytes (for `status`: total and rate).
    pub fn received(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let now = Instant::now();
        if self.received_at.is_empty() {
            self.received_at.push_back((now, self.bytes_received));
        }
        self.bytes_received += bytes;
        self.received_at.push_back((now, self.bytes_received));
        // Keep one sample from before the window as the baseline.
        while self.received_at.len() > 1 && now.duration_since(self.received_at[1].0) > RATE_WINDOW {
            self.received_at.pop_front();
        }
    }

    /// Bytes per second received over the last RATE_WINDOW (0 when nothing came
    /// in that time): bytes since the last sample before the window's start,
    /// over the time since then (at most the window).
    pub fn rate_bps(&self) -> u64 {
        rate(&self.received_at, Instant::now())
    }

    pub fn add_addr(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        if Some(peer) == self.local || !dialable(&addr) {
            return false;
        }
        let p = self.peers.entry(peer).or_default();
        if p.addrs.contains(&addr) {
            return false;
        }
        p.addrs.push(addr);
        true
    }

    pub fn infos(&self, ours: &HashMap<crate::model::NodeId, u64>) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let (mut here, mut there) = (0u64, 0u64);
                if p.vector_known {
                    for (a, s) in &p.vector {
                        here += s.saturating_sub(ours.get(a).copied().unwrap_or(0));
                    }
                    for (a, s) in ours {
                        there += s.saturating_sub(p.vector.get(a).copied().unwrap_or(0));
                    }
                }
                PeerInfo {
                    peer: id.to_string(),
                    node: node_of(id).map(|n| n.to_string()).unwrap_or_default(),
                    online: p.online,
                    addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                    last_seen: p
                        .last_seen
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    missing_here: here,
                    missing_there: there,
                    vector_known: p.vector_known,
                }
            })
            .collect();
        out.sort_by(|a, b| (!a.online, &a.peer).cmp(&(!b.online, &b.peer)));
        out
    }
}

/// The author id behind a peer id (both are the node's Ed25519 key).
pub fn node_of(peer: &PeerId) -> Option<crate::model::NodeId> {
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(&peer.to_bytes()[2..]).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(crate::model::NodeId(ed.to_bytes()))
}

/// Addresses worth remembering: not unspecified (0.0.0.0) or port 0.
fn dialable(a: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    !a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        Protocol::Tcp(0) => true,
        _ => false,
    })
}

/// Known members' addresses on disk: peer id → addresses.
pub fn peers_file(data_dir: &Path) -> PathBuf {
    data_dir.join("peers.json")
}

pub fn load_known(path: &Path) -> BTreeMap<String, Vec<String>> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

pub fn save_known(path: &Path, table: &PeerTable) {
    let known: BTreeMap<String, Vec<String>> = table
        .peers
        .iter()
        .filter(|(_, p)| !p.addrs.is_empty())
        .map(|(id, p)| (id.to_string(), p.addrs.iter().map(|a| a.to_string()).collect()))
        .collect();
    let tmp = path.with_extension("json.tmp");
    let ok = serde_json::to_string_pretty(&known).ok().map(|s| {
        std::fs::write(&tmp, s)
            .and_then(|_| std::fs::rename(&tmp, path))
            .is_ok()
    });
    if ok != Some(true) {
        tracing::warn!(path = %path.display(), "could not save known peers");
    }
}

/// Adds peers (with addresses ending in /p2p/<id>) to the known-peers file: `join`.
pub fn remember(path: &Path, addrs: &[Multiaddr]) -> Result<usize, String> {
    let mut known = load_known(path);
    let mut n = 0;
    for a in addrs {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = a.iter().last() else {
            return Err(format!("{a}: address must end in /p2p/<peer id>"));
        };
        let list = known.entry(peer.to_string()).or_default();
        let s = a.to_string();
        if !list.contains(&s) {
            list.push(s);
            n += 1;
        }
    }
    let s = serde_json::to_string_pretty(&known).map_err(|e| e.to_string())?;
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_peer_ids_name_the_same_key() {
        let secret = [7u8; 32];
        let sk = ed25519_dalek::SigningKey::from_bytes(&secret);
        let node = crate::model::NodeId(sk.verifying_key().to_bytes());
        let peer = crate::net::keypair(secret).public().to_peer_id();
        assert_eq!(node_of(&peer), Some(node));
        assert_eq!(crate::net::peer_of(&node), Some(peer));
    }

    #[test]
    fn rate_counts_only_the_window() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let mut v = std::collections::VecDeque::new();
        assert_eq!(rate(&v, at(0)), 0);
        // 0 before, then 10 MB over 5 s.
        v.push_back((at(0), 0));
        for i in 1..=5 {
            v.push_back((at(i), i * 2_000_000));
        }
        assert_eq!(rate(&v, at(5)), 2_000_000);
        // 20 s later nothing arrived: 0, not an average over old bytes.
        assert_eq!(rate(&v, at(25)), 0);
        // At 12 s the window is 2..12: 6 MB (samples 3, 4, 5) over 10 s.
        assert_eq!(rate(&v, at(12)), 600_000);
    }
}
