//! History names: `name@vN` addresses version N of the entry shown as `name`.
//!
//! N is the version's generation: 1 for a creation, else 1 + the highest parent
//! generation. Generation is a function of the record set alone, so every node that
//! holds the same records gives a version the same N, and adding records never
//! changes an existing version's N. Where several versions of an entry share an N
//! (concurrent edits), each also answers to `name@vN-<author>` (8 hex digits of its
//! author's node id), and if even that is shared, `name@vN-<author>-<version>`; a
//! shorter form resolves only while it is unique. So a name that means a version
//! today can stop resolving when more versions arrive, but never comes to mean a
//! different one (see docs/conflicts.md; `select` is the one rule).

use super::ids::{NodeId, VersionId};

/// The part after `@` in a history name, parsed: `v3`, `v3-1a2b3c4d` or
/// `v3-1a2b3c4d-9f8e7d6c`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionName {
    pub generation: u64,
    /// First 8 hex digits of the author's node id.
    pub author: Option<String>,
    /// First 8 hex digits of the version id.
    pub version: Option<String>,
}

impl VersionName {
    /// The suffix as shown after `@`.
    pub fn suffix(&self) -> String {
        let mut s = format!("v{}", self.generation);
        for part in [&self.author, &self.version].into_iter().flatten() {
            s.push('-');
            s.push_str(part);
        }
        s
    }

    fn matches(&self, generation: u64, author: &NodeId, version: &VersionId) -> bool {
        self.generation == generation
            && self
                .author
                .as_ref()
                .is_none_or(|a| author.to_hex().starts_with(a.as_str()))
            && self
                .version
                .as_ref()
                .is_none_or(|v| version.to_hex().starts_with(v.as_str()))
    }
}

fn is_hex8(b: &[u8]) -> bool {
    b.len() == 8 && b.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Splits `report.txt@v3-1a2b3c4d` into (`report.txt`, its `VersionName`). None for
/// anything not exactly `<non-empty name>@v<positive decimal>[-<8 hex>[-<8 hex>]]`.
pub fn parse_version_name(name: &[u8]) -> Option<(&[u8], VersionName)> {
    let at = name.windows(2).rposition(|w| w == b"@v")?;
    let (base, rest) = (&name[..at], &name[at + 2..]);
    let mut parts = rest.split(|b| *b == b'-');
    let digits = parts.next()?;
    let author = parts.next();
    let version = parts.next();
    if base.is_empty() || parts.next().is_some() || digits.is_empty() || digits.len() > 19 || digits[0] == b'0' {
        return None;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let generation: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let hex = |p: Option<&[u8]>| -> Option<Option<String>> {
        match p {
            None => Some(None),
            Some(p) if is_hex8(p) => Some(Some(String::from_utf8(p.to_vec()).ok()?)),
            Some(_) => None,
        }
    };
    Some((
        base,
        VersionName {
            generation,
            author: hex(author)?,
            version: hex(version)?,
        },
    ))
}

/// The version `name` means among an entry's versions (generation, author, id):
/// the only one it matches, or None when it matches none or several.
pub fn select(versions: &[(u64, NodeId, VersionId)], name: &VersionName) -> Option<VersionId> {
    let mut found = versions.iter().filter(|(g, a, v)| name.matches(*g, a, v));
    let first = found.next()?;
    match found.next() {
        None => Some(first.2),
        Some(_) => None,
    }
}

/// The shortest name that means `target` among `versions` today.
pub fn shortest_name(versions: &[(u64, NodeId, VersionId)], target: VersionId) -> Option<VersionName> {
    let (g, a, v) = versions.iter().find(|(_, _, v)| *v == target)?;
    let hex8 = |s: String| s[..8].to_string();
    let candidates = [
        VersionName {
            generation: *g,
            author: None,
            version: None,
        },
        VersionName {
            generation: *g,
            author: Some(hex8(a.to_hex())),
            version: None,
        },
        VersionName {
            generation: *g,
            author: Some(hex8(a.to_hex())),
            version: Some(hex8(v.to_hex())),
        },
    ];
    candidates.into_iter().find(|n| select(versions, n) == Some(target))
}

/// Splits `notes.txt@1a2b3c4d` into (`notes.txt`, `1a2b3c4d`): the name of an entry
/// that shares its name with another (see `Repo::lookup`).
pub fn parse_entry_suffix(name: &[u8]) -> Option<(&[u8], &str)> {
    let at = name.iter().rposition(|b| *b == b'@')?;
    let (base, tag) = (&name[..at], &name[at + 1..]);
    if base.is_empty() || tag.len() != 8 || !tag.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return None;
    }
    Some((base, std::str::from_utf8(tag).ok()?))
}

/// Generation of a version given its parents' generations.
pub fn generation(parent_gens: impl IntoIterator<Item = u64>) -> u64 {
    1 + parent_gens.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_names() {
        let g = |n: &[u8]| parse_version_name(n).map(|(b, v)| (b.to_vec(), v.generation));
        assert_eq!(g(b"a.txt@v3"), Some((b"a.txt".to_vec(), 3)));
        assert_eq!(g(b"x@v2@v10"), Some((b"x@v2".to_vec(), 10)));
        for bad in [&b"a.txt"[..], b"@v3", b"a@v", b"a@v0", b"a@v01", b"a@vx", b"a@v-1"] {
            assert_eq!(g(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn version_names_parse_with_optional_author_and_version() {
        let (b, n) = parse_version_name(b"r.txt@v3-0123abcd").unwrap();
        assert_eq!(
            (b, n.generation, n.author.as_deref(), n.version),
            (&b"r.txt"[..], 3, Some("0123abcd"), None)
        );
        let (_, n) = parse_version_name(b"r.txt@v3-0123abcd-00ff00ff").unwrap();
        assert_eq!(n.suffix(), "v3-0123abcd-00ff00ff");
        for bad in [
            &b"r@v3-"[..],
            b"r@v3-0123abc",
            b"r@v3-0123ABCD",
            b"r@v3-0123abcd-",
            b"r@v3-a-b-c",
            b"r@v0-0123abcd",
        ] {
            assert_eq!(parse_version_name(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }
    fn ver(b: u8) -> VersionId {
        VersionId([b; 32])
    }

    #[test]
    fn shortest_name_adds_the_author_only_when_a_generation_is_shared() {
        let mut vs = vec![(1, node(1), ver(1)), (2, node(1), ver(2))];
        assert_eq!(shortest_name(&vs, ver(2)).unwrap().suffix(), "v2");
        vs.push((2, node(2), ver(3)));
        assert_eq!(shortest_name(&vs, ver(2)).unwrap().suffix(), "v2-01010101");
        assert_eq!(shortest_name(&vs, ver(3)).unwrap().suffix(), "v2-02020202");
        vs.push((2, node(2), ver(4)));
        assert_eq!(shortest_name(&vs, ver(4)).unwrap().suffix(), "v2-02020202-04040404");
    }

    proptest::proptest! {
        /// Versions arrive in any order; a name that meant a version once means that
        /// version or nothing forever after.
        #[test]
        fn a_name_never_comes_to_mean_another_version(
            vs in proptest::collection::vec((1u64..4, 0u8..3, proptest::prelude::any::<u8>()), 1..24)
        ) {
            let mut seen: Vec<(u64, NodeId, VersionId)> = Vec::new();
            let mut bound: Vec<(VersionName, VersionId)> = Vec::new();
            for (g, a, v) in vs {
                if seen.iter().any(|(_, _, x)| *x == ver(v)) {
                    continue;
                }
                seen.push((g, node(a), ver(v)));
                for (name, was) in &bound {
                    let now = select(&seen, name);
                    proptest::prop_assert!(now.is_none() || now == Some(*was), "{} moved", name.suffix());
                }
                for (_, _, x) in &seen {
                    if let Some(n) = shortest_name(&seen, *x) {
                        bound.push((n, *x));
                    }
                }
            }
        }
    }

    #[test]
    fn entry_suffix_needs_eight_lowercase_hex_digits() {
        assert_eq!(parse_entry_suffix(b"a.txt@0123abcd"), Some((&b"a.txt"[..], "0123abcd")));
        for bad in [&b"a.txt"[..], b"@0123abcd", b"a@0123abc", b"a@0123ABCD", b"a@v3"] {
            assert_eq!(parse_entry_suffix(bad), None);
        }
    }

    #[test]
    fn generation_is_one_past_highest_parent() {
        assert_eq!(generation([]), 1);
        assert_eq!(generation([1]), 2);
        assert_eq!(generation([3, 5, 4]), 6);
    }
}
