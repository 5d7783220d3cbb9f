//! Public keys and identity files from arbitrary text: no panic; valid keys round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = s.parse::<omni_proto::PublicKey>() {
            assert_eq!(k.to_base64().parse::<omni_proto::PublicKey>().unwrap(), k);
            let _ = k.x25519();
        }
        let _ = omni_proto::Identity::from_file_text(s, "fuzz");
    }
});
