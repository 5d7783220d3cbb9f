//! docs/configuration.md shows every key of nucleus.toml, and only those.

use std::path::Path;

use omni_nucleus::config::{File, file_keys};

#[test]
fn docs_configuration_shows_every_key() {
    let tables: Vec<&str> = file_keys().iter().map(|(t, _)| *t).collect();
    assert_eq!(tables, omni_cli::field_names::<File>(), "file_keys() lists every table of File");
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    omni_testkit::docs::assert_documents(&page, "omni-nucleus", &file_keys());
}
