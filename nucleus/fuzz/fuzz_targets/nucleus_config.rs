//! The Nucleus's TOML config on arbitrary text: parsing and validation never panic; what
//! is accepted is usable; every refusal says something.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use omni_nucleus::config::{File, Overrides, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = match File::parse(text, Path::new("fuzz.toml")) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    match Settings::resolve(file, Overrides::default()) {
        Ok(s) => {
            assert!(s.register_interval >= 1);
            assert!(s.member_timeout.as_secs() > u64::from(s.register_interval));
            assert!(s.max_members >= 1);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
