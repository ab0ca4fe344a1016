//! Invitation tokens: everything a new member needs — the group id, the group
//! secret and where to reach a member — in one copy-pasteable string.
//!
//! Format: `dbx1-` + hex of bincode(`Token`). Whoever holds a token is a member, so
//! treat it like a password.

use crate::store::GroupKey;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "dbx1-";

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("not a Distribox invitation (it should start with {PREFIX}; copy the whole token)")]
    Prefix,
    #[error("the invitation is damaged ({0}); copy the whole token again")]
    Damaged(String),
}

#[derive(Serialize, Deserialize)]
struct Token {
    group: [u8; 32],
    secret: [u8; 32],
    addrs: Vec<String>,
}

pub fn encode(group: &GroupKey, addrs: &[String]) -> String {
    let t = Token {
        group: group.id,
        secret: group.secret,
        addrs: addrs.to_vec(),
    };
    let b = bincode::serde::encode_to_vec(&t, bincode::config::standard()).expect("encoding into a Vec cannot fail");
    // A checksum so a truncated paste is caught rather than joining a wrong group.
    let sum = blake3::hash(&b);
    format!("{PREFIX}{}{}", hex::encode(&b), hex::encode(&sum.as_bytes()[..4]))
}

pub fn decode(token: &str) -> Result<(GroupKey, Vec<String>), InviteError> {
    let h = token.trim().strip_prefix(PREFIX).ok_or(InviteError::Prefix)?;
    let all = hex::decode(h).map_err(|e| InviteError::Damaged(e.to_string()))?;
    if all.len() < 68 {
        return Err(InviteError::Damaged("too short".into()));
    }
    let (b, sum) = all.split_at(all.len() - 4);
    if &blake3::hash(b).as_bytes()[..4] != sum {
        return Err(InviteError::Damaged("checksum mismatch".into()));
    }
    let (t, _): (Token, usize) =
        bincode::serde::decode_from_slice(b, bincode::config::standard().with_limit::<{ 1 << 20 }>())
            .map_err(|e| InviteError::Damaged(e.to_string()))?;
    Ok((
        GroupKey {
            id: t.group,
            secret: t.secret,
        },
        t.addrs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_caught() {
        let g = GroupKey::generate();
        let addrs =
            vec!["/ip4/127.0.0.1/tcp/7467/p2p/12D3KooWDx8yJKVEN5LsCsovRb8HyHKA79cBshzShsE14ioS6Kok".to_string()];
        let t = encode(&g, &addrs);
        let (g2, a2) = decode(&t).unwrap();
        assert_eq!(g, g2);
        assert_eq!(a2, addrs);
        assert!(matches!(decode("hello"), Err(InviteError::Prefix)));
        assert!(decode(&t[..t.len() - 2]).is_err());
        let mut flipped = t.clone().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
        assert!(decode(std::str::from_utf8(&flipped).unwrap()).is_err());
    }
}
