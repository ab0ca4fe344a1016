//! History names: `name@vN` addresses version N of the entry shown as `name`.
//!
//! N is the version's generation: 1 for a creation, else 1 + the highest parent
//! generation. Generation is a function of the record set alone, so every node that
//! holds the same records gives a version the same N, and adding records never
//! changes an existing version's N. (Conflicts — several versions with one N — get
//! an author suffix in the conflicts work; see docs/conflicts.md.)

/// Splits `report.txt@v3` into (`report.txt`, 3). Returns None for anything that is
/// not exactly `<non-empty name>@v<positive decimal>`.
pub fn parse_history_name(name: &[u8]) -> Option<(&[u8], u64)> {
    let at = name.windows(2).rposition(|w| w == b"@v")?;
    let (base, rest) = (&name[..at], &name[at + 2..]);
    if base.is_empty() || rest.is_empty() || rest.len() > 19 || rest[0] == b'0' {
        return None;
    }
    if !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(rest).ok()?.parse().ok()?;
    Some((base, n))
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
        assert_eq!(parse_history_name(b"a.txt@v3"), Some((&b"a.txt"[..], 3)));
        assert_eq!(parse_history_name(b"x@v2@v10"), Some((&b"x@v2"[..], 10)));
        for bad in [&b"a.txt"[..], b"@v3", b"a@v", b"a@v0", b"a@v01", b"a@vx", b"a@v-1"] {
            assert_eq!(parse_history_name(bad), None, "{:?}", String::from_utf8_lossy(bad));
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
