//! Version records: the immutable unit of history and of sync.
//!
//! A record's id is the BLAKE3 hash of its signed body bytes exactly as stored or
//! received; we never re-encode a record we did not author, so ids survive any
//! future change of the encoder.
//!
//! Wire/disk framing of a record, `[format: u8][body_len: u32 LE][body: bincode]`
//! then, by format:
//! - 2 (`RECORD_FORMAT`): a seal (`model::seal`): one Ed25519 signature by `author`
//!   over a batch of records, and this record's path in it;
//! - 1: a 64-byte Ed25519 signature by `author` over the body (records made before
//!   seals; still read and sent as they are). All zero = not signed yet.

use super::hlc::Hlc;
use super::ids::{ChunkId, EntryId, NodeId, VersionId};
use super::seal::{self, SealError, SealVerifier};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Format byte leading every record this build signs; bump on an incompatible change.
pub const RECORD_FORMAT: u8 = 2;
/// One signature per record; also the frame of a record not signed yet.
const SINGLE_SIGNATURE_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is truncated or has a bad frame ({len} bytes)")]
    Frame { len: usize },
    #[error("record format {found} is not supported (this build reads 1 and {RECORD_FORMAT})")]
    Format { found: u8 },
    #[error("record body does not decode: {0}")]
    Decode(String),
    #[error("record signature does not verify for author {author}: {source}")]
    Signature { author: NodeId, source: SealError },
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

/// A framed record split into its parts (see the module comment).
struct Frame<'a> {
    format: u8,
    body: &'a [u8],
    /// The signature (format 1) or the seal (format 2).
    proof: &'a [u8],
}

impl<'a> Frame<'a> {
    fn split(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let frame = || RecordError::Frame { len: bytes.len() };
        let (&format, rest) = bytes.split_first().ok_or_else(frame)?;
        if format != RECORD_FORMAT && format != SINGLE_SIGNATURE_FORMAT {
            return Err(RecordError::Format { found: format });
        }
        let len_bytes: [u8; 4] = rest.get(..4).ok_or_else(frame)?.try_into().map_err(|_| frame())?;
        let end = (u32::from_le_bytes(len_bytes) as usize)
            .checked_add(4)
            .ok_or_else(frame)?;
        let body = rest.get(4..end).ok_or_else(frame)?;
        let proof = rest.get(end..).ok_or_else(frame)?;
        let proof_len = match format {
            RECORD_FORMAT => seal::seal_len(proof),
            _ => Some(64),
        };
        if proof_len != Some(proof.len()) {
            return Err(frame());
        }
        Ok(Frame { format, body, proof })
    }
}

impl SignedRecord {
    /// Encodes and signs a record we author (a batch of one).
    pub fn sign(record: VersionRecord, key: &SigningKey) -> Self {
        let mut s = Self::unsigned(record);
        let mut sealed = Self::sealed_frames(&[s.bytes.as_slice()], key).expect("we just framed these bytes");
        s.bytes = sealed.pop().expect("one frame in, one out");
        s
    }

    /// Encodes a record we author with an all-zero signature. Signing costs ~30 µs,
    /// more than the rest of a small commit, and the id covers only the body, so local
    /// commits store records unsigned and a background task seals them in batches
    /// (see `Repo::sign_pending`); a record is always signed before it leaves the node.
    pub fn unsigned(record: VersionRecord) -> Self {
        let body =
            bincode::serde::encode_to_vec(&record, bincode_config()).expect("encoding a record into a Vec cannot fail");
        let mut bytes = Vec::with_capacity(1 + 4 + body.len() + 64);
        bytes.push(SINGLE_SIGNATURE_FORMAT);
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&[0u8; 64]);
        let id = VersionId::of_body(&body);
        SignedRecord { id, record, bytes }
    }

    /// True if framed record bytes carry a real (not placeholder) signature.
    pub fn is_signed(bytes: &[u8]) -> bool {
        match bytes.first() {
            Some(&RECORD_FORMAT) => true,
            _ => bytes.len() >= 64 && bytes[bytes.len() - 64..].iter().any(|&b| b != 0),
        }
    }

    /// The same framed records (ours, 1..=`seal::MAX_BATCH` of them) sealed by `key`
    /// under one signature, in order.
    pub fn sealed_frames(frames: &[&[u8]], key: &SigningKey) -> Result<Vec<Vec<u8>>, RecordError> {
        let bodies = frames
            .iter()
            .map(|b| Frame::split(b).map(|f| f.body))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<VersionId> = bodies.iter().map(|b| VersionId::of_body(b)).collect();
        let seals = seal::seal(&ids, key);
        Ok(bodies
            .iter()
            .zip(seals)
            .map(|(body, seal)| {
                let mut out = Vec::with_capacity(5 + body.len() + seal.len());
                out.push(RECORD_FORMAT);
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(&seal);
                out
            })
            .collect())
    }

    /// Decodes stored or received bytes, checking framing and, if `verify`, the
    /// author's signature. The id is derived from the bytes, never trusted from outside.
    pub fn decode(bytes: &[u8], verify: bool) -> Result<Self, RecordError> {
        Self::decode_inner(bytes, verify.then(SealVerifier::new).as_mut())
    }

    /// `decode` with the author's signature checked by `verifier`, which remembers
    /// the batches it has already verified.
    pub fn decode_verified(bytes: &[u8], verifier: &mut SealVerifier) -> Result<Self, RecordError> {
        Self::decode_inner(bytes, Some(verifier))
    }

    fn decode_inner(bytes: &[u8], verifier: Option<&mut SealVerifier>) -> Result<Self, RecordError> {
        let f = Frame::split(bytes)?;
        let (record, used): (VersionRecord, usize) = bincode::serde::decode_from_slice(f.body, bincode_config())
            .map_err(|e| RecordError::Decode(e.to_string()))?;
        if used != f.body.len() {
            return Err(RecordError::Decode("trailing bytes after body".into()));
        }
        let id = VersionId::of_body(f.body);
        if let Some(v) = verifier {
            let checked = match f.format {
                RECORD_FORMAT => v.verify(&record.author, &id, f.proof),
                _ => v.verify_signature(&record.author, f.body, f.proof),
            };
            checked.map_err(|source| RecordError::Signature {
                author: record.author,
                source,
            })?;
        }
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
        let signed = SignedRecord::sealed_frames(&[u.bytes.as_slice()], &key)
            .unwrap()
            .remove(0);
        assert!(SignedRecord::is_signed(&signed));
        let d = SignedRecord::decode(&signed, true).unwrap();
        assert_eq!(d.id, u.id);
        assert_eq!(signed, SignedRecord::sign(sample(&key), &key).bytes);
    }

    #[test]
    fn a_sealed_batch_verifies_record_by_record_and_seals_do_not_swap() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let unsigned: Vec<SignedRecord> = (1..=5)
            .map(|seq| SignedRecord::unsigned(VersionRecord { seq, ..sample(&key) }))
            .collect();
        let frames: Vec<&[u8]> = unsigned.iter().map(|u| u.bytes.as_slice()).collect();
        let sealed = SignedRecord::sealed_frames(&frames, &key).unwrap();
        let mut verifier = SealVerifier::new();
        for (u, b) in unsigned.iter().zip(&sealed) {
            assert_eq!(SignedRecord::decode(b, true).unwrap().id, u.id);
            assert_eq!(SignedRecord::decode_verified(b, &mut verifier).unwrap().id, u.id);
        }
        // Record 0's body with record 1's seal.
        let body_end = 5 + u32::from_le_bytes(sealed[0][1..5].try_into().unwrap()) as usize;
        let seal_1 = &sealed[1][5 + u32::from_le_bytes(sealed[1][1..5].try_into().unwrap()) as usize..];
        let swapped = [&sealed[0][..body_end], seal_1].concat();
        assert!(matches!(
            SignedRecord::decode_verified(&swapped, &mut verifier),
            Err(RecordError::Signature { .. })
        ));
    }

    #[test]
    fn records_signed_one_by_one_still_verify() {
        use ed25519_dalek::Signer;
        let key = SigningKey::from_bytes(&[9; 32]);
        let u = SignedRecord::unsigned(sample(&key));
        let mut legacy = u.bytes[..u.bytes.len() - 64].to_vec();
        legacy.extend_from_slice(&key.sign(&legacy[5..]).to_bytes());
        assert!(SignedRecord::is_signed(&legacy));
        assert_eq!(SignedRecord::decode(&legacy, true).unwrap().id, u.id);
        let n = legacy.len();
        legacy[n - 1] ^= 1;
        assert!(SignedRecord::decode(&legacy, true).is_err());
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
