//! The libp2p side: transport with group membership, behaviours, wire messages.
//!
//! Owns: building the swarm (TCP + the group-secret stream layer + noise + yamux),
//! the behaviours (gossipsub for announcements, request-response for vectors,
//! records and chunks, identify, ping, mDNS), and the wire format. Uses: nothing
//! above `model` — `sync` drives the swarm and talks to the repository.
//!
//! Membership: the key of the stream layer under Noise (`group_stream`, libp2p's
//! pnet construction with ChaCha20) is derived from the group secret. A peer without
//! it reads garbage, so the noise handshake fails before any protocol runs: it gets
//! no record and no chunk. The layer does not cover QUIC, so there is no QUIC
//! transport.

mod codec;
mod group_stream;
pub mod wire;

pub use codec::SyncCodec;

use crate::store::GroupKey;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, identity, mdns, noise, ping, request_response, tcp, yamux, StreamProtocol, Swarm};
use std::time::Duration;

/// Request-response protocol name; the number is the wire version. A peer speaking
/// another version fails protocol negotiation, which `sync` logs as incompatible.
/// (Builds before protocol 2 also use another group-layer key, so they already fail
/// the handshake under it, as a non-member does.)
pub const SYNC_PROTOCOL: &str = "/distribox/sync/2";
/// Carried in every message body too (see `wire`).
pub const PROTO_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("setting up the network: {0}")]
    Setup(String),
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub rr: request_response::Behaviour<SyncCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: libp2p::swarm::behaviour::toggle::Toggle<mdns::tokio::Behaviour>,
}

/// The libp2p identity of a node: the same Ed25519 key that signs its records, so
/// a peer id names exactly one author.
pub fn keypair(secret: [u8; 32]) -> identity::Keypair {
    let mut s = secret;
    identity::Keypair::ed25519_from_bytes(&mut s).expect("32 bytes is a valid ed25519 secret")
}

/// The peer id of an author.
pub fn peer_of(node: &crate::model::NodeId) -> Option<libp2p::PeerId> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(node.as_bytes()).ok()?;
    Some(identity::PublicKey::from(pk).to_peer_id())
}

/// The gossipsub topic of a group (derived from the public group id).
pub fn topic(group: &GroupKey) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("distribox/{}", hex::encode(group.id)))
}

/// The group's topic for hints about chunks of files still being written
/// (`wire::Staged`). A topic of its own: builds that do not know the message
/// never subscribe to it, so they neither see nor misread it.
pub fn staged_topic(group: &GroupKey) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("distribox/{}/staged", hex::encode(group.id)))
}

pub fn build_swarm(key: identity::Keypair, group: &GroupKey, mdns_on: bool) -> Result<Swarm<Behaviour>, NetError> {
    let gate = group_stream::GroupStreamKey::from_secret(&group.secret);
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| gate.handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)),
            )
        })
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let gs_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                .validation_mode(gossipsub::ValidationMode::Strict)
                .max_transmit_size(64 * 1024)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gs_config)?;
            let rr = request_response::Behaviour::with_codec(
                SyncCodec,
                [(
                    StreamProtocol::new(SYNC_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(32),
            );
            let identify = identify::Behaviour::new(identify::Config::new("/distribox/1".into(), key.public()));
            let ping = ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(10)),
            );
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config {
                        query_interval: Duration::from_secs(10),
                        ..Default::default()
                    },
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                rr,
                identify,
                ping,
                mdns: mdns.into(),
            })
        })
        .map_err(|e| setup(&e))?
        // Quiet connections stay up: "offline" should mean offline (ping decides).
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}
