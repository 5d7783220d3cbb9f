//! `config.example.toml` against the daemon's own parser: it shows every key the parser
//! takes (and no other), every value it shows parses, and every value not marked
//! "(example)" is the default.

use std::collections::BTreeMap;
use std::path::Path;

use omni_cli::field_names;
use omni_daemon::config::{CliOverrides, FileConfig, Settings, file_keys};

/// A `# key = value   # comment` line of the example, in its section.
#[derive(Debug)]
struct Line {
    section: String,
    key: String,
    value: String,
    example: bool,
}

/// The commented-out key lines of the example, under their `[section]` / `[[section]]`
/// headers (which may be commented out too).
fn example_lines(text: &str) -> Vec<Line> {
    let mut section = String::new();
    let mut lines = Vec::new();
    for raw in text.lines() {
        let l = raw.trim_start_matches('#').trim();
        if let Some(h) = l.strip_prefix('[') {
            section = h.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some((key, rest)) = l.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        // The value ends where its comment starts (no value here holds a '#').
        let (value, comment) = rest.split_once('#').unwrap_or((rest, ""));
        lines.push(Line {
            section: section.clone(),
            key: key.to_string(),
            value: value.trim().to_string(),
            example: comment.contains("(example)"),
        });
    }
    lines
}

fn example() -> Vec<Line> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let text = std::fs::read_to_string(&path).expect("config.example.toml at the repository root");
    // As shipped (everything commented out) it is a valid file that changes nothing.
    let file = FileConfig::parse(&text, &path).expect("the example parses as it is");
    let defaults = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
    assert_eq!(Settings::resolve(file, CliOverrides::default()).unwrap(), defaults);
    example_lines(&text)
}

fn table(section: &str, body: &str) -> String {
    if section == "peers" { format!("[[peers]]\n{body}") } else { format!("[{section}]\n{body}") }
}

#[test]
fn the_example_shows_every_key_the_parser_takes_and_no_other() {
    let lines = example();
    let shown: BTreeMap<(String, String), usize> = lines
        .iter()
        .map(|l| ((l.section.clone(), l.key.clone()), 1))
        .fold(BTreeMap::new(), |mut m, (k, n)| {
            *m.entry(k).or_insert(0) += n;
            m
        });
    let sections: Vec<&str> = file_keys().iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sections,
        field_names::<FileConfig>(),
        "config::file_keys() must list every table of FileConfig, in order"
    );
    let mut missing = Vec::new();
    for (section, keys) in file_keys() {
        for key in keys {
            match shown.get(&(section.to_string(), key.to_string())) {
                None => missing.push(format!("[{section}] {key}")),
                Some(1) => {}
                Some(n) => panic!("[{section}] {key} is shown {n} times"),
            }
        }
    }
    assert!(missing.is_empty(), "config.example.toml does not show: {}", missing.join(", "));
    for l in &lines {
        let known =
            file_keys().iter().any(|(s, keys)| *s == l.section && keys.contains(&l.key.as_str()));
        assert!(
            known,
            "config.example.toml shows [{}] {}, which the parser rejects",
            l.section, l.key
        );
    }
}

#[test]
fn every_value_shown_parses_and_defaults_are_the_defaults() {
    let lines = example();
    let path = Path::new("config.example.toml");
    // All of a table's lines together: the shown values have the types the parser wants
    // (a table like [[peers]] needs its keys together).
    let mut by_section: BTreeMap<&str, String> = BTreeMap::new();
    for l in &lines {
        by_section.entry(&l.section).or_default().push_str(&format!("{} = {}\n", l.key, l.value));
    }
    for (section, body) in &by_section {
        let text = table(section, body);
        FileConfig::parse(&text, path).unwrap_or_else(|e| panic!("{text}\n{e}"));
    }
    // A line that shows the default changes nothing when it is uncommented.
    let defaults = Settings::resolve(FileConfig::default(), CliOverrides::default()).unwrap();
    let mut checked = 0;
    for l in lines.iter().filter(|l| !l.example) {
        let text = table(&l.section, &format!("{} = {}\n", l.key, l.value));
        let resolved =
            Settings::resolve(FileConfig::parse(&text, path).unwrap(), CliOverrides::default())
                .unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(
            resolved, defaults,
            "[{}] {} = {} is not the default",
            l.section, l.key, l.value
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} lines show a default");
}

#[test]
fn docs_configuration_shows_every_key() {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    omni_testkit::docs::assert_documents(&page, "omni-daemon", &file_keys());
}
