//! Version records: the immutable unit of history and of sync.
//!
//! A record's id is the BLAKE3 hash of its signed body bytes exactly as stored or
//! received; we never re-encode a record we did not author, so ids survive any
//! future change of the encoder.
//!
//! Wire/disk framing of a signed record:
//! `[RECORD_FORMAT: u8][body_len: u32 LE][body: bincode][signature: 64 bytes]`,
//! where the signature (Ed25519, by `author`) covers the body.

use super::hlc::Hlc;
use super::ids::{ChunkId, EntryId, NodeId, VersionId};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format byte leading every encoded record; bump on an incompatible change.
pub const RECORD_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is truncated or has a bad frame ({len} bytes)")]
    Frame { len: usize },
    #[error("record format {found} is not supported (this build reads {RECORD_FORMAT})")]
    Format { found: u8 },
    #[error("record body does not decode: {0}")]
    Decode(String),
    #[error("record signature does not verify for author {author}")]
    Signature { author: NodeId },
}

/// One (parent directory, name) link of an entry. Names are raw bytes: Unix file
/// names need not be UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    pub parent: EntryId,
    pub name: Vec<u8>,
}

/// Seconds + nanoseconds since the epoch, signed so pre-1970 times (tar archives)
/// survive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }

    /// As a SystemTime; values beyond what the platform represents (a peer may
    /// send anything) clamp to the epoch instead of panicking.
    pub fn to_system(self) -> SystemTime {
        let nanos = Duration::from_nanos(self.nanos.min(999_999_999) as u64);
        if self.secs >= 0 {
            UNIX_EPOCH
                .checked_add(Duration::from_secs(self.secs as u64) + nanos)
                .unwrap_or(UNIX_EPOCH)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))
                .and_then(|t| t.checked_add(nanos))
                .unwrap_or(UNIX_EPOCH)
        }
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }
}

/// Attributes as tar keeps them: numbers, not names. ctime is the version's HLC time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    /// Permission bits only (`mode & 0o7777`); the file type lives in `Content`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub atime: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What the entry holds in this version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A regular file; `manifest` is the root of its chunk manifest (None when empty).
    File {
        size: u64,
        manifest: Option<ChunkId>,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    Special {
        kind: SpecialKind,
        rdev: u64,
    },
    /// Deleted. Kept forever: sync and "delete loses to a concurrent edit" need it.
    Tombstone,
    /// Not a version of the entry but a retention decision about it: the data of
    /// these versions of `entry` may be dropped (`repo::gc`). It travels in its
    /// author's record stream like any record, so every node learns the same
    /// decisions; it has no parents and never becomes a head.
    Purge {
        versions: Vec<VersionId>,
    },
}

impl Content {
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Content::Tombstone)
    }
    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir)
    }
    pub fn is_purge(&self) -> bool {
        matches!(self, Content::Purge { .. })
    }
    pub fn size(&self) -> u64 {
        match self {
            Content::File { size, .. } => *size,
            Content::Symlink { target } => target.len() as u64,
            _ => 0,
        }
    }
}

/// The signed body of a version record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub entry: EntryId,
    /// Heads this version supersedes: none for a creation, two or more for a merge.
    pub parents: Vec<VersionId>,
    pub author: NodeId,
    /// Per-author sequence number, 1-based and gap-free: anti-entropy ranges use it.
    pub seq: u64,
    pub hlc: Hlc,
    /// All (parent, name) links; empty for a tombstone.
    pub location: Vec<Link>,
    pub attrs: Attrs,
    pub content: Content,
    /// The version that last set each field group; `None` means this version did.
    /// Resolution of several heads merges field by field using these.
    pub content_from: Option<VersionId>,
    pub location_from: Option<VersionId>,
    pub attrs_from: Option<VersionId>,
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// A record together with the exact bytes it was stored/received as.
#[derive(Clone, Debug)]
pub struct SignedRecord {
    pub id: VersionId,
    pub record: VersionRecord,
    pub bytes: Vec<u8>,
}

impl SignedRecord {
    /// Encodes and signs a record we author.
    pub fn sign(record: VersionRecord, key: &SigningKey) -> Self {
        let mut s = Self::unsigned(record);
        s.bytes = Self::signed_bytes(&s.bytes, key).expect("we just framed these bytes");
        s
    }

    /// Encodes a record we author with an all-zero signature. Signing costs ~45 µs,
    /// more than the rest of a commit, and the id covers only the body, so local
    /// commits store records unsigned and a background task signs them (see
    /// `Repo::sign_pending`); a record is always signed before it leaves the node.
    pub fn unsigned(record: VersionRecord) -> Self {
        let body =
            bincode::serde::encode_to_vec(&record, bincode_config()).expect("encoding a record into a Vec cannot fail");
        let mut bytes = Vec::with_capacity(1 + 4 + body.len() + 64);
        bytes.push(RECORD_FORMAT);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[0u8; 64]);
        let id = VersionId(*blake3::hash(&body).as_bytes());
        SignedRecord { id, record, bytes }
    }

    /// True if framed record bytes carry a real (not placeholder) signature.
    pub fn is_signed(bytes: &[u8]) -> bool {
        bytes.len() >= 64 && bytes[bytes.len() - 64..].iter().any(|&b| b != 0)
    }

    /// The same framed record with its signature filled in by `key`.
    pub fn signed_bytes(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, RecordError> {
        let frame = || RecordError::Frame { len: bytes.len() };
        let len_bytes: [u8; 4] = bytes.get(1..5).ok_or_else(frame)?.try_into().map_err(|_| frame())?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = bytes.get(5..5 + len).ok_or_else(frame)?;
        if bytes.len() != 5 + len + 64 {
            return Err(frame());
        }
        let mut out = bytes[..5 + len].to_vec();
        out.extend_from_slice(&key.sign(body).to_bytes());
        Ok(out)
    }

    /// Decodes stored or received bytes, checking framing and, if `verify`, the
    /// author's signature. The id is derived from the bytes, never trusted from outside.
    pub fn decode(bytes: &[u8], verify: bool) -> Result<Self, RecordError> {
        let frame = || RecordError::Frame { len: bytes.len() };
        let (&fmt, rest) = bytes.split_first().ok_or_else(frame)?;
        if fmt != RECORD_FORMAT {
            return Err(RecordError::Format { found: fmt });
        }
        let len_bytes: [u8; 4] = rest.get(..4).ok_or_else(frame)?.try_into().map_err(|_| frame())?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let body = rest.get(4..4 + len).ok_or_else(frame)?;
        let sig = rest.get(4 + len..).ok_or_else(frame)?;
        if sig.len() != 64 {
            return Err(frame());
        }
        let (record, used): (VersionRecord, usize) = bincode::serde::decode_from_slice(body, bincode_config())
            .map_err(|e| RecordError::Decode(e.to_string()))?;
        if used != body.len() {
            return Err(RecordError::Decode("trailing bytes after body".into()));
        }
        if verify {
            let bad = || RecordError::Signature { author: record.author };
            let vk = VerifyingKey::from_bytes(&record.author.0).map_err(|_| bad())?;
            let sig = Signature::from_slice(sig).map_err(|_| bad())?;
            vk.verify(body, &sig).map_err(|_| bad())?;
        }
        let id = VersionId(*blake3::hash(body).as_bytes());
        Ok(SignedRecord {
            id,
            record,
            bytes: bytes.to_vec(),
        })
    }

    /// Effective `*_from` stamps: a `None` stamp names this record itself.
    pub fn content_from(&self) -> VersionId {
        self.record.content_from.unwrap_or(self.id)
    }
    pub fn location_from(&self) -> VersionId {
        self.record.location_from.unwrap_or(self.id)
    }
    pub fn attrs_from(&self) -> VersionId {
        self.record.attrs_from.unwrap_or(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &SigningKey) -> VersionRecord {
        VersionRecord {
            entry: EntryId([7; 16]),
            parents: vec![],
            author: NodeId(key.verifying_key().to_bytes()),
            seq: 1,
            hlc: Hlc { wall_ns: 5, counter: 0 },
            location: vec![Link {
                parent: EntryId([1; 16]),
                name: b"a.txt".to_vec(),
            }],
            attrs: Attrs {
                mode: 0o644,
                ..Default::default()
            },
            content: Content::File {
                size: 3,
                manifest: Some(ChunkId([2; 32])),
            },
            content_from: None,
            location_from: None,
            attrs_from: None,
        }
    }

    #[test]
    fn roundtrip_and_id_from_bytes() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let s = SignedRecord::sign(sample(&key), &key);
        let d = SignedRecord::decode(&s.bytes, true).unwrap();
        assert_eq!(d.id, s.id);
        assert_eq!(d.record, s.record);
    }

    #[test]
    fn unsigned_then_signed_keeps_the_id() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let u = SignedRecord::unsigned(sample(&key));
        assert!(!SignedRecord::is_signed(&u.bytes));
        assert!(
            SignedRecord::decode(&u.bytes, true).is_err(),
            "a placeholder signature never verifies"
        );
        let signed = SignedRecord::signed_bytes(&u.bytes, &key).unwrap();
        assert!(SignedRecord::is_signed(&signed));
        let d = SignedRecord::decode(&signed, true).unwrap();
        assert_eq!(d.id, u.id);
        assert_eq!(signed, SignedRecord::sign(sample(&key), &key).bytes);
    }

    #[test]
    fn tampered_record_is_rejected() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let s = SignedRecord::sign(sample(&key), &key);
        let mut bytes = s.bytes.clone();
        let n = bytes.len();
        bytes[n - 70] ^= 1; // inside the body
        assert!(SignedRecord::decode(&bytes, true).is_err());
        assert!(SignedRecord::decode(&bytes[..10], true).is_err());
        let mut fmt = s.bytes.clone();
        fmt[0] = 99;
        assert!(matches!(
            SignedRecord::decode(&fmt, true),
            Err(RecordError::Format { found: 99 })
        ));
    }

    #[test]
    fn timestamps_before_epoch_roundtrip() {
        for secs in [-5i64, 0, 1_700_000_000] {
            let t = Timestamp { secs, nanos: 123 };
            assert_eq!(Timestamp::from_system(t.to_system()), t);
        }
    }
}
