//! Distribox: peer-to-peer file sync served as a versioning FUSE filesystem.
//!
//! Layout (each module's own doc says what it owns, what it may use, its invariants):
//! - `model`: ids, version records, hybrid logical clock, `@vN` names — pure types.
//! - `store`: RocksDB column families, chunks, records, atomic batches, the data dir.
//! - `chunking`: FastCDC cut points, chunk manifests (Merkle tree), offset lookup.
//! - `repo`: the one API for the tree — lookup, read, write-back, commit versions.
//! - `fs`: the `fuser::Filesystem` implementation; errno mapping happens only here.
//! - `net`: the libp2p swarm — group-gated transport, behaviours, wire messages.
//! - `sync`: anti-entropy, announcements, record and chunk fetching (drives `net`,
//!   talks to `repo`).
//! - `daemon`: wires a node (lock, repo, FUSE session, control socket, signals).
//! - `cli`: clap commands; talks to a running node over the control socket.
//!
//! Dependency order: model ← store ← chunking ← repo ← {fs, net ← sync} ← daemon ← cli.

pub mod chunking;
pub mod cli;
pub mod daemon;
pub mod fs;
pub mod graph;
pub mod model;
pub mod net;
pub mod repo;
pub mod store;
pub mod sync;
