//! The data model: ids, version records, the hybrid logical clock, and the rules that
//! turn a set of records into entry state (heads, winner, `@vN` names).
//!
//! Owns: record encoding and signing, history naming. Uses: nothing below it — the
//! model is pure so its laws can be tested without a store.
//!
//! Invariants: a record's id is the hash of its body bytes; an (author, seq) pair names
//! at most one record; the visible state of an entry depends only on its set of records.

pub mod hlc;
pub mod ids;
pub mod names;
pub mod record;
pub mod seal;

pub use hlc::Hlc;
pub use ids::{ChunkId, EntryId, NodeId, VersionId};
pub use record::{Attrs, Content, Link, RecordError, SignedRecord, SpecialKind, Timestamp, VersionRecord};
pub use seal::SealVerifier;
