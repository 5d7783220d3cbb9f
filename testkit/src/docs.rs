//! The keys a configuration page documents, for tests that hold the page to the parser.
//!
//! The page has a `## <program> ...` heading per program, a `### `[table]`` (or
//! `### `[[table]]``) heading per table, and under it one table row per key whose first
//! cell is the key in backquotes.

use std::collections::BTreeSet;

/// `(table, key)` for every key row under `program`'s heading.
pub fn documented_keys(markdown: &str, program: &str) -> BTreeSet<(String, String)> {
    let mut keys = BTreeSet::new();
    let (mut in_program, mut table) = (false, None::<String>);
    for line in markdown.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            in_program = h.split_whitespace().next() == Some(program);
            table = None;
        } else if let Some(h) = line.strip_prefix("### ") {
            table = Some(h.trim_matches(|c| c == '`' || c == '[' || c == ']' || c == ' ').into());
        } else if let (true, Some(t), Some(row)) = (in_program, &table, line.strip_prefix("| `"))
            && let Some((key, _)) = row.split_once('`')
        {
            keys.insert((t.clone(), key.to_string()));
        }
    }
    keys
}

/// Panics naming every key the parser takes that the page does not show, and every key
/// the page shows that the parser does not take.
pub fn assert_documents(
    markdown: &str,
    program: &str,
    parser: &[(&'static str, &'static [&'static str])],
) {
    let shown = documented_keys(markdown, program);
    let taken: BTreeSet<(String, String)> = parser
        .iter()
        .flat_map(|(t, keys)| keys.iter().map(|k| (t.to_string(), k.to_string())))
        .collect();
    let missing: Vec<_> = taken.difference(&shown).map(|(t, k)| format!("[{t}] {k}")).collect();
    let extra: Vec<_> = shown.difference(&taken).map(|(t, k)| format!("[{t}] {k}")).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md ({program}): not documented: {missing:?}; documented but not taken by the parser: {extra:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "## a (x.toml)\n### `[t]`\n| key | d |\n|---|---|\n| `k1` | 1 |\n\
                        ### `[[p]]`\n| `k2` | x |\n## b (y.toml)\n### `[t]`\n| `k3` | 2 |\n";

    #[test]
    fn keys_are_read_per_program_and_table() {
        let a: Vec<_> = documented_keys(PAGE, "a").into_iter().collect();
        assert_eq!(a, [("p".into(), "k2".into()), ("t".into(), "k1".into())]);
        assert_documents(PAGE, "b", &[("t", &["k3"])]);
    }

    #[test]
    #[should_panic(expected = "not documented: [\"[t] k4\"]")]
    fn a_missing_key_fails() {
        assert_documents(PAGE, "b", &[("t", &["k3", "k4"])]);
    }
}
