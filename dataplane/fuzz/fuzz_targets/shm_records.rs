//! Records read from the shared-memory rings (written by another process): no panic,
//! and decoded commands and events re-encode to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_shm::records::{
    COMMAND_SLOT, Command, EVENT_SLOT, Event, PACKET_SLOT, PacketRecord, decode_packet,
    decode_record, encode_control, encode_packet,
};

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
    // A record re-encodes to one that reads the same.
    if let Ok(r) = decode_record(data)
        && data.len() <= PACKET_SLOT
    {
        let mut slot = vec![0u8; PACKET_SLOT];
        match r {
            PacketRecord::Datagram { addr, ttl, bytes } => {
                assert!(encode_packet(&mut slot, addr, ttl, bytes))
            }
            PacketRecord::Control { peer, bytes } => assert!(encode_control(&mut slot, peer, bytes)),
        }
        assert_eq!(decode_record(&slot).unwrap(), r);
    }
});
