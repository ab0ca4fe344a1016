//! Wire messages. Every body starts with the protocol version; bincode inside a
//! length-prefixed frame with a hard size cap, so a peer cannot make us allocate
//! more than the cap or parse anything but these types.

use crate::model::{ChunkId, NodeId};
use serde::{Deserialize, Serialize};

/// Largest request frame we accept (requests are ids and ranges).
pub const MAX_REQUEST: usize = 256 * 1024;
/// Largest response frame (a batch of chunks).
pub const MAX_RESPONSE: usize = 32 * 1024 * 1024;
/// Chunks asked for in one request.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;
/// Records sent in one response.
pub const MAX_RECORDS_PER_RESPONSE: usize = 2000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// "Here is what I hold; what do you hold?" Anti-entropy, on connect and
    /// periodically.
    Vector { vector: Vec<(NodeId, u64)> },
    /// Signed records of `author` with seq in `from..=to`.
    Records { author: NodeId, from: u64, to: u64 },
    /// Chunk bytes by id.
    Chunks { ids: Vec<ChunkId> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Our vector, plus the members we know and where they listen (so members that
    /// only know one common peer find each other).
    Vector {
        vector: Vec<(NodeId, u64)>,
        peers: Vec<(Vec<u8>, Vec<String>)>,
    },
    Records {
        #[serde(with = "serde_bytes_vec")]
        records: Vec<Vec<u8>>,
    },
    /// One slot per asked id, None where we do not have it.
    Chunks {
        chunks: Vec<Option<serde_bytes::ByteBuf>>,
    },
    Error {
        message: String,
    },
}

/// The versioned envelope of every request and response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    pub body: T,
}

/// Gossip announcement: "records of `author` up to `seq` are available". Small, and
/// never file data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Announce {
    pub version: u32,
    pub author: NodeId,
    pub seq: u64,
}

/// Chunks in one `Staged` hint: 512 ids are 16 KiB, well inside gossipsub's
/// 64 KiB messages, and a 16 MiB pre-chunking pass has ~256 chunks.
pub const MAX_STAGED_CHUNKS: usize = 512;
/// Largest `Staged` message we decode.
pub const MAX_STAGED: usize = 32 * 1024;

/// Gossip hint: "I just stored these chunks of a file I am still writing". A
/// member may fetch them from the sender at once, so a large file moves while it
/// is written; the version naming them comes later, announced as usual, and only
/// then does anything show. Hashes only, never file data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Staged {
    pub version: u32,
    pub chunks: Vec<ChunkId>,
}

/// Encodes into a `Vec` of exactly the right size: bincode's serde path grows its
/// `Vec` by doubling, and reallocating a 4 MiB chunk answer was 7% of the serving
/// node's CPU in a 1 GiB transfer (perf, 2026-12-01).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let config = bincode::config::standard();
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(v, &mut size, config).expect("counting bytes cannot fail");
    let mut out = Vec::with_capacity(size.bytes_written);
    bincode::serde::encode_into_std_write(v, &mut out, config).expect("encoding into a Vec cannot fail");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], limit: usize) -> Result<T, String> {
    if b.len() > limit {
        return Err(format!("message of {} bytes exceeds the {limit}-byte limit", b.len()));
    }
    let (v, used) = bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 64 << 20 }>())
        .map_err(|e| e.to_string())?;
    if used != b.len() {
        return Err("trailing bytes after the message".into());
    }
    Ok(v)
}

/// Serialises a list of byte strings as byte strings (not sequences of u8).
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|b| Bytes::new(b)).collect::<Vec<_>>().serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?
            .into_iter()
            .map(ByteBuf::into_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let r = Envelope {
            version: 1,
            body: Response::Chunks {
                chunks: vec![Some(serde_bytes::ByteBuf::from(vec![7u8; 1000])), None],
            },
        };
        let b = encode(&r);
        assert!(b.len() < 1100, "bytes are packed, not one varint per byte: {}", b.len());
        let back: Envelope<Response> = decode(&b, MAX_RESPONSE).unwrap();
        assert!(matches!(back.body, Response::Chunks { chunks } if chunks.len() == 2));
        assert!(decode::<Envelope<Response>>(&b, 10).is_err());
        assert!(decode::<Envelope<Response>>(&b[..b.len() - 3], MAX_RESPONSE).is_err());
        assert!(decode::<Envelope<Request>>(&[0xff; 40], MAX_REQUEST).is_err());
    }
}
