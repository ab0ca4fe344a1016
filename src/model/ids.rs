//! Typed ids. Every id is a newtype so a chunk hash can never be passed where a
//! version id is expected; `Display` prints 8 hex chars (enough to tell ids apart in
//! logs), `Debug` prints the full value.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Byte length of this id.
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses an id from exactly `LEN` bytes (from disk or a peer).
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(b).ok().map(Self)
            }

            pub fn from_hex(s: &str) -> Option<Self> {
                Self::from_slice(&hex::decode(s).ok()?)
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(&self.0[..4]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }
    };
}

id_type!(
    /// BLAKE3 hash of a chunk's bytes (file data or a manifest node).
    ChunkId,
    32
);
id_type!(
    /// BLAKE3 hash of a version record's canonical (signed body) encoding.
    VersionId,
    32
);
id_type!(
    /// Stable id of a file, directory, symlink or special node, chosen at creation;
    /// renames never change it.
    EntryId,
    16
);
id_type!(
    /// A node's Ed25519 public key: it names the author of a record and checks its
    /// signature.
    NodeId,
    32
);

impl ChunkId {
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl VersionId {
    /// A record's id: the BLAKE3 of its body bytes exactly as framed (see `record`).
    pub fn of_body(body: &[u8]) -> Self {
        VersionId(*blake3::hash(body).as_bytes())
    }
}

impl EntryId {
    /// A fresh random entry id (128 bits: collisions are not a practical concern).
    pub fn random() -> Self {
        EntryId(rand::random())
    }

    /// The root directory's id is derived from the group id so every member agrees
    /// on it without exchanging anything.
    pub fn root_of(group: &[u8]) -> Self {
        let h = blake3::derive_key("distribox root entry v1", group);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[..16]);
        EntryId(id)
    }
}
