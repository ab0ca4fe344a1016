//! Seals: one Ed25519 signature over a batch of up to 64 of an author's records.
//!
//! Signing every record cost ~30 µs on the author and verifying it ~60 µs on every
//! receiver — a third of a receiving node's sync thread when 10,000 small files
//! arrive. A seal signs the root of a BLAKE3 Merkle tree over the batch's record ids
//! instead; each record carries its own path to the root, so it still verifies on
//! its own (a relay can send any subset), and a receiver verifies each root once.
//!
//! Encoding (after a record's body, see `record`): `[signature: 64][depth: u8]
//! [index: u16 LE][depth × 32-byte sibling hashes]`, siblings from the leaf up.
//! The tree has 2^depth leaves; unused ones are all-zero hashes, which no leaf hash
//! can equal. Leaves, inner nodes and the signed message use distinct BLAKE3 keys, so
//! no node can be passed off as a leaf, nor a seal signature as a record signature.

use super::ids::{NodeId, VersionId};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// Most records under one signature: a path is then ≤ 6 hashes (192 bytes).
pub const MAX_BATCH: usize = 64;
const MAX_DEPTH: u8 = 6;
const HEADER: usize = 64 + 1 + 2;

static LEAF_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key("distribox record seal leaf v1", b""));
static NODE_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key("distribox record seal node v1", b""));
static ROOT_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key("distribox record seal root v1", b""));

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("seal is malformed ({len} bytes)")]
    Malformed { len: usize },
    #[error("seal signature does not verify")]
    Signature,
}

fn leaf(id: &VersionId) -> [u8; 32] {
    *blake3::keyed_hash(&LEAF_KEY, id.as_bytes()).as_bytes()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&NODE_KEY);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// What the signature covers: the root and the depth (so a path cannot be cut short).
fn message(depth: u8, root: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&ROOT_KEY);
    h.update(&[depth]);
    h.update(root);
    *h.finalize().as_bytes()
}

/// Seals `ids` (1..=MAX_BATCH of them, all by `key`'s owner): one seal per id, in order.
pub fn seal(ids: &[VersionId], key: &SigningKey) -> Vec<Vec<u8>> {
    assert!(
        !ids.is_empty() && ids.len() <= MAX_BATCH,
        "a seal covers 1..={MAX_BATCH} records"
    );
    let depth = ids.len().next_power_of_two().trailing_zeros() as u8;
    let mut levels: Vec<Vec<[u8; 32]>> = Vec::with_capacity(depth as usize + 1);
    let mut level: Vec<[u8; 32]> = ids.iter().map(leaf).collect();
    level.resize(1 << depth, [0; 32]);
    while level.len() > 1 {
        let up = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        levels.push(std::mem::replace(&mut level, up));
    }
    let sig = key.sign(&message(depth, &level[0])).to_bytes();
    (0..ids.len())
        .map(|i| {
            let mut out = Vec::with_capacity(HEADER + 32 * depth as usize);
            out.extend_from_slice(&sig);
            out.push(depth);
            out.extend_from_slice(&(i as u16).to_le_bytes());
            for (d, lv) in levels.iter().enumerate() {
                out.extend_from_slice(&lv[(i >> d) ^ 1]);
            }
            out
        })
        .collect()
}

/// The length of the seal starting `bytes` (they may go on), if its header is there.
pub fn seal_len(bytes: &[u8]) -> Option<usize> {
    let depth = *bytes.get(64)?;
    (depth <= MAX_DEPTH).then_some(HEADER + 32 * depth as usize)
}

/// Checks seals, remembering authors' keys and the roots already verified, so a
/// batch of 64 records costs one signature check. Bounded: forgets all when full.
#[derive(Default)]
pub struct SealVerifier {
    keys: HashMap<NodeId, VerifyingKey>,
    /// (author, signed message, signature) triples that verified. The signature is
    /// part of the key: a record whose path is right but whose signature bytes were
    /// altered must not pass (it would be stored, and served, as received).
    roots: HashSet<(NodeId, [u8; 32], [u8; 64])>,
}

const MAX_REMEMBERED: usize = 4096;

impl SealVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ok if `seal` proves that `author` signed the record `id`.
    pub fn verify(&mut self, author: &NodeId, id: &VersionId, seal: &[u8]) -> Result<(), SealError> {
        let malformed = || SealError::Malformed { len: seal.len() };
        if seal_len(seal) != Some(seal.len()) {
            return Err(malformed());
        }
        let depth = seal[64];
        let index = u16::from_le_bytes([seal[65], seal[66]]) as usize;
        if index >> depth != 0 {
            return Err(malformed());
        }
        let mut h = leaf(id);
        for (d, sib) in seal[HEADER..].chunks_exact(32).enumerate() {
            let sib: &[u8; 32] = sib.try_into().expect("chunks_exact(32)");
            h = if (index >> d) & 1 == 0 {
                node(&h, sib)
            } else {
                node(sib, &h)
            };
        }
        let msg = message(depth, &h);
        let sig: [u8; 64] = seal[..64].try_into().expect("seal_len checked the length");
        let seen = (*author, msg, sig);
        if self.roots.contains(&seen) {
            return Ok(());
        }
        self.verify_signature(author, &msg, &sig)?;
        if self.roots.len() >= MAX_REMEMBERED {
            self.roots.clear();
        }
        self.roots.insert(seen);
        Ok(())
    }

    /// Ok if `signature` is `author`'s Ed25519 signature of `message` (also how
    /// records from before seals are signed: over their body).
    pub fn verify_signature(&mut self, author: &NodeId, message: &[u8], signature: &[u8]) -> Result<(), SealError> {
        let vk = match self.keys.get(author) {
            Some(vk) => *vk,
            None => {
                // Decompressing the key is a third of a verification: done once.
                let vk = VerifyingKey::from_bytes(&author.0).map_err(|_| SealError::Signature)?;
                if self.keys.len() >= MAX_REMEMBERED {
                    self.keys.clear();
                }
                self.keys.insert(*author, vk);
                vk
            }
        };
        let sig = Signature::from_slice(signature).map_err(|_| SealError::Signature)?;
        vk.verify(message, &sig).map_err(|_| SealError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_ids(n: usize) -> Vec<VersionId> {
        (0..n)
            .map(|i| VersionId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect()
    }

    fn author(key: &SigningKey) -> NodeId {
        NodeId(key.verifying_key().to_bytes())
    }

    #[test]
    fn every_record_of_every_batch_size_verifies_alone() {
        let key = SigningKey::from_bytes(&[3; 32]);
        for n in [1, 2, 3, 5, 8, 33, 63, 64] {
            let ids = make_ids(n);
            let seals = seal(&ids, &key);
            assert_eq!(seals.len(), n);
            for (id, s) in ids.iter().zip(&seals) {
                assert_eq!(seal_len(s), Some(s.len()));
                // A fresh verifier each time: no help from a remembered root.
                assert_eq!(SealVerifier::new().verify(&author(&key), id, s), Ok(()), "n={n}");
            }
        }
    }

    #[test]
    fn a_seal_proves_only_its_own_record_and_author() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let ids = make_ids(5);
        let seals = seal(&ids, &key);
        let mut v = SealVerifier::new();
        assert_eq!(v.verify(&author(&key), &ids[0], &seals[0]), Ok(()));
        // Another record of the same batch with record 0's path: the root differs.
        assert_eq!(v.verify(&author(&key), &ids[1], &seals[0]), Err(SealError::Signature));
        // Another author, even for a root this verifier already accepted.
        assert_eq!(v.verify(&author(&other), &ids[0], &seals[0]), Err(SealError::Signature));
        // A record outside the batch.
        assert_eq!(
            v.verify(&author(&key), &make_ids(6)[5], &seals[4]),
            Err(SealError::Signature)
        );
    }

    #[test]
    fn a_remembered_batch_does_not_excuse_altered_signature_bytes() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let ids = make_ids(4);
        let seals = seal(&ids, &key);
        let mut v = SealVerifier::new();
        assert_eq!(v.verify(&author(&key), &ids[0], &seals[0]), Ok(()));
        let mut bad = seals[1].clone();
        bad[10] ^= 1;
        assert_eq!(v.verify(&author(&key), &ids[1], &bad), Err(SealError::Signature));
        assert_eq!(v.verify(&author(&key), &ids[1], &seals[1]), Ok(()));
    }

    #[test]
    fn tampered_seals_are_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let ids = make_ids(4);
        let s = &seal(&ids, &key)[2];
        let a = author(&key);
        for at in [0, 63, 64, 65, 66, HEADER, s.len() - 1] {
            let mut bad = s.clone();
            bad[at] ^= 1;
            assert!(
                SealVerifier::new().verify(&a, &ids[2], &bad).is_err(),
                "flipped byte {at}"
            );
        }
        assert!(SealVerifier::new().verify(&a, &ids[2], &s[..s.len() - 1]).is_err());
        let mut deep = s.clone();
        deep[64] = MAX_DEPTH + 1;
        assert!(SealVerifier::new().verify(&a, &ids[2], &deep).is_err());
        // A path cut short: an inner node presented as the root of a shallower tree.
        let mut short = s[..HEADER + 32].to_vec();
        short[64] = 1;
        assert!(SealVerifier::new().verify(&a, &ids[2], &short).is_err());
    }
}
