//! Records read from the shared-memory rings (written by another process): no panic,
//! and decoded commands and events re-encode to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_shm::records::{COMMAND_SLOT, Command, EVENT_SLOT, Event, decode_packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        let mut slot = [0u8; COMMAND_SLOT];
        c.encode(&mut slot);
        let again = Command::decode(&slot).expect("re-encoded command decodes");
        assert_eq!(format!("{c:?}"), format!("{again:?}"));
    }
    if let Ok(e) = Event::decode(data) {
        let mut slot = [0u8; EVENT_SLOT];
        e.encode(&mut slot);
        assert_eq!(Event::decode(&slot).unwrap(), e);
    }
    let _ = decode_packet(data);
});
