//! One transport session: its keys and its view of the session's shared counter state.
//!
//! Sealing and opening are in place: the caller's buffer holds the 16-byte transport
//! header, then the frame, then room for the 16-byte tag, so no byte is copied.
//!
//! Several workers may hold the same session (one [`Session`] each, over one shared-memory
//! [`SessionSlot`]): send counters are taken from the slot in small blocks (one atomic add
//! per block, so no two workers ever use the same nonce and their counters stay close
//! together for the receiver's window), and the receive window is the slot's lock-free
//! [`omni_shm::replay::ReplayWindow`]. Because the slot outlives the process, a restarted data
//! plane resumes a session without reusing a nonce or accepting a packet it already
//! delivered.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, Nonce};

use omni_proto::constants::{AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use omni_proto::features::Features;
use omni_proto::noise::SessionKeys;
use omni_proto::wire::transport::{self, ChecksumPartial, Header, Kind};

use crate::secret::AeadKey;
use omni_shm::layout::SessionSlot;
use omni_shm::replay::WINDOW;
use std::sync::atomic::Ordering;

/// Send counters are taken from the shared slot this many at a time.
pub const TX_BLOCK: u64 = 64;
/// A worker drops the rest of its block once the others have taken counters this far
/// past it (it sent little meanwhile): its next packets would land too far behind the
/// receiver's window.
const TX_BLOCK_STALE: u64 = WINDOW / 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Counter already seen, too old, or past the limit.
    Replay,
    /// Tag did not verify.
    Auth,
}

/// The AEAD part of sealing one transport message, prepared by
/// [`Session::prepare_seal`]: the key, the counter (nonce) and the frame length.
#[derive(Clone)]
pub struct SealJob {
    key: Arc<AeadKey>,
    counter: u64,
    len: usize,
}

impl SealJob {
    /// Encrypts `buf[16..16 + len]` in place and appends the tag. Returns the message
    /// length, or `None` if the buffer is too short.
    #[inline]
    pub fn run(&self, buf: &mut [u8]) -> Option<usize> {
        seal_with(&self.key, self.counter, self.len, buf)
    }

    /// The length the sealed message will have.
    pub fn sealed_len(&self) -> usize {
        self.len + TRANSPORT_HEADER_LEN + AEAD_TAG_LEN
    }
}

/// Encrypts `buf[16..16 + len]` in place under `key` and nonce `counter`, appending the
/// tag. Returns the message length, or `None` if the buffer is too short.
#[inline]
fn seal_with(key: &AeadKey, counter: u64, len: usize, buf: &mut [u8]) -> Option<usize> {
    let end = TRANSPORT_HEADER_LEN + len;
    if buf.len() < end + AEAD_TAG_LEN {
        return None;
    }
    let (header, body) = buf[..end].split_at_mut(TRANSPORT_HEADER_LEN);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(transport::nonce(counter)),
            Aad::from(transport::associated_data(header)),
            body,
        )
        .ok()?;
    buf[end..end + AEAD_TAG_LEN].copy_from_slice(tag.as_ref());
    Some(end + AEAD_TAG_LEN)
}

pub struct Session {
    pub local_index: u32,
    pub remote_index: u32,
    pub peer: u16,
    pub initiator: bool,
    pub created_ms: u64,
    /// The data plane already asked control for a rekey of this session.
    pub rekey_requested: bool,
    /// The peer takes frames with partial checksums (both ends agreed to
    /// [`Features::CHECKSUM_STATE`]).
    pub checksum_state: bool,
    /// The peer answers path probes ([`Features::PATH_PROBES`]).
    pub path_probes: bool,
    /// Keys are wiped from memory when the session goes (the `Arc`'s last holder).
    send: Arc<AeadKey>,
    recv: Arc<AeadKey>,
    /// This worker's next send counter and the end of its block.
    tx_next: u64,
    tx_end: u64,
}

/// Empties a claimed slot (no counter taken, nothing received) and gives it to `owner`.
fn empty_for(slot: &SessionSlot, owner: u64) {
    slot.tx_reserved.store(0, Ordering::Relaxed);
    slot.replay().reset();
    slot.owner.store(owner, Ordering::Release);
}

/// `owner` while a worker resets the slot for a new session.
fn claiming(local_index: u32) -> u64 {
    2u64 << 32 | local_index as u64
}

impl Session {
    /// A session over `keys`. If `slot` already belongs to this session (the same index:
    /// another worker holds it too, or the data plane restarted), it is joined as it is:
    /// sending continues past every counter taken, receiving refuses everything already
    /// accepted. Otherwise the slot is claimed and emptied first.
    pub fn new(
        local_index: u32,
        remote_index: u32,
        peer: u16,
        initiator: bool,
        created_ms: u64,
        keys: &SessionKeys,
        slot: &SessionSlot,
    ) -> Self {
        let owner = 1u64 << 32 | local_index as u64;
        // Bounded: a claimer resets 2 KiB and publishes; a claimer that died mid-way (its
        // process gone) leaves `claiming`, which the next claim simply takes over.
        for _ in 0..1_000_000 {
            let held = slot.owner.load(Ordering::Acquire);
            if held == owner {
                break;
            }
            if held == claiming(local_index) {
                std::hint::spin_loop();
                continue;
            }
            if slot
                .owner
                .compare_exchange(held, claiming(local_index), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                empty_for(slot, owner);
                break;
            }
        }
        if slot.owner.load(Ordering::Acquire) != owner {
            // Only a claimer that died half-way leaves this: take the slot over.
            empty_for(slot, owner);
        }
        let tx_next = slot.tx_reserved.load(Ordering::Relaxed);
        Self {
            local_index,
            remote_index,
            peer,
            initiator,
            created_ms,
            rekey_requested: false,
            checksum_state: keys.features.contains(Features::CHECKSUM_STATE),
            path_probes: keys.features.contains(Features::PATH_PROBES),
            send: Arc::new(AeadKey::new(keys.aead, &keys.send)),
            recv: Arc::new(AeadKey::new(keys.aead, &keys.recv)),
            tx_next,
            tx_end: tx_next,
        }
    }

    /// This worker's next send counter (at least every counter it used).
    pub fn tx_counter(&self) -> u64 {
        self.tx_next
    }

    /// Seals the frame at `buf[16..16 + len]` in place: writes the header before it and the
    /// tag after it. Returns the length of the transport message (`len + 32`). `buf` must be
    /// at least `len + 32` bytes. `None` when the counter is exhausted (`limit`).
    /// `checksum`: the frame's checksum state for the header; only for a session with
    /// [`Session::checksum_state`] (the caller completes the checksum otherwise).
    #[inline]
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        len: usize,
        checksum: Option<ChecksumPartial>,
        limit: u64,
        slot: &SessionSlot,
    ) -> Option<usize> {
        if buf.len() < TRANSPORT_HEADER_LEN + len + AEAD_TAG_LEN {
            return None;
        }
        // The key is used where it is (no reference-count traffic per packet).
        let counter = self.take_counter(buf, checksum, limit, slot)?;
        seal_with(&self.send, counter, len, buf)
    }

    /// As [`Session::seal`] for a message that is not a frame (a control message, a path
    /// probe): the header is marked ([`transport::mark`]) before the AEAD, which
    /// authenticates the mark.
    pub fn seal_marked(
        &mut self,
        kind: Kind,
        buf: &mut [u8],
        len: usize,
        limit: u64,
        slot: &SessionSlot,
    ) -> Option<usize> {
        if buf.len() < TRANSPORT_HEADER_LEN + len + AEAD_TAG_LEN {
            return None;
        }
        let counter = self.take_counter(buf, None, limit, slot)?;
        transport::mark(buf, kind);
        seal_with(&self.send, counter, len, buf)
    }

    /// The part of sealing that must happen in order: takes the next counter and writes the
    /// header. The AEAD itself is the returned job, which any thread may run later.
    #[inline]
    pub fn prepare_seal(
        &mut self,
        buf: &mut [u8],
        len: usize,
        checksum: Option<ChecksumPartial>,
        limit: u64,
        slot: &SessionSlot,
    ) -> Option<SealJob> {
        let counter = self.take_counter(buf, checksum, limit, slot)?;
        Some(SealJob { key: self.send.clone(), counter, len })
    }

    /// Takes the next send counter (a new block from the slot when this worker's runs out
    /// or fell too far behind) and writes the transport header with it. `None` at `limit`.
    #[inline]
    fn take_counter(
        &mut self,
        buf: &mut [u8],
        checksum: Option<ChecksumPartial>,
        limit: u64,
        slot: &SessionSlot,
    ) -> Option<u64> {
        debug_assert!(checksum.is_none() || self.checksum_state, "peer did not agree");
        if self.tx_next >= self.tx_end
            || slot.tx_reserved.load(Ordering::Relaxed) > self.tx_next + TX_BLOCK_STALE
        {
            let block = slot.tx_reserved.fetch_add(TX_BLOCK, Ordering::Relaxed);
            self.tx_next = block;
            self.tx_end = block.saturating_add(TX_BLOCK);
        }
        let counter = self.tx_next;
        if counter >= limit {
            return None;
        }
        self.tx_next = counter + 1;
        Header { receiver_index: self.remote_index, counter, checksum, kind: Kind::Frame }
            .emit(buf);
        Some(counter)
    }

    /// Whether the counter could be accepted (before spending time on the AEAD).
    #[inline]
    pub fn replay_check(&self, counter: u64, slot: &SessionSlot) -> bool {
        slot.replay().check(counter)
    }

    /// Opens a whole transport message in place (its header already parsed, the index
    /// already matched). On success the frame is at `pkt[16..16 + n]`; returns `n`.
    /// `sole`: this is the only worker receiving on the session (the window is then
    /// updated without locked instructions).
    #[inline]
    pub fn open(
        &self,
        pkt: &mut [u8],
        counter: u64,
        slot: &SessionSlot,
        sole: bool,
    ) -> Result<usize, OpenError> {
        let window = slot.replay_for(sole);
        if !window.check(counter) {
            return Err(OpenError::Replay);
        }
        let n = open_with(&self.recv, counter, pkt)?;
        if !window.update(counter) {
            return Err(OpenError::Replay);
        }
        Ok(n)
    }

    /// The AEAD part of opening, for another thread to run: `None` when the counter is
    /// already refused by the replay window (checked again by [`Session::accept`] once
    /// the tag verified, since a copy of the packet may have been accepted meanwhile).
    pub fn open_job(&self, counter: u64, slot: &SessionSlot) -> Option<OpenJob> {
        slot.replay().check(counter).then(|| OpenJob { key: self.recv.clone(), counter })
    }

    /// Marks an authenticated counter as received. `false`: a replay, to be dropped.
    /// `sole` as for [`Session::open`].
    pub fn accept(&self, counter: u64, slot: &SessionSlot, sole: bool) -> bool {
        slot.replay_for(sole).update(counter)
    }
}

/// The AEAD of opening one transport message, made by [`Session::open_job`]. Running it
/// does not touch the session: the replay window is updated by [`Session::accept`].
pub struct OpenJob {
    key: Arc<AeadKey>,
    counter: u64,
}

impl OpenJob {
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Opens the transport message `pkt` in place; returns the frame length.
    #[inline]
    pub fn run(&self, pkt: &mut [u8]) -> Result<usize, OpenError> {
        open_with(&self.key, self.counter, pkt)
    }
}

/// Verifies and decrypts the transport message `pkt` (header, body, tag) in place.
#[inline]
fn open_with(key: &AeadKey, counter: u64, pkt: &mut [u8]) -> Result<usize, OpenError> {
    let len = pkt.len();
    if len < TRANSPORT_HEADER_LEN + AEAD_TAG_LEN {
        return Err(OpenError::Auth);
    }
    let (header, body_and_tag) = pkt.split_at_mut(TRANSPORT_HEADER_LEN);
    key.open_in_place(
        Nonce::assume_unique_for_key(transport::nonce(counter)),
        Aad::from(transport::associated_data(header)),
        body_and_tag,
    )
    .map_err(|_| OpenError::Auth)?;
    Ok(len - TRANSPORT_HEADER_LEN - AEAD_TAG_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{AES_256_GCM, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
    use omni_proto::aead::Aead;

    fn keys_for(aead: Aead) -> (SessionKeys, SessionKeys) {
        (
            SessionKeys { send: [1; 32], recv: [2; 32], aead, features: Features::SUPPORTED },
            SessionKeys { send: [2; 32], recv: [1; 32], aead, features: Features::SUPPORTED },
        )
    }

    fn keys() -> (SessionKeys, SessionKeys) {
        keys_for(Aead::ChaCha20Poly1305)
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for aead in Aead::ALL {
            seal_open_round_trip_and_tamper_with(aead);
        }
    }

    fn seal_open_round_trip_and_tamper_with(aead: Aead) {
        let (ka, kb) = keys_for(aead);
        let (sa, sb) = (SessionSlot::default(), SessionSlot::default());
        let mut a = Session::new(1, 2, 0, true, 0, &ka, &sa);
        let b = Session::new(2, 1, 0, false, 0, &kb, &sb);
        let frame = b"hello fabric frame";
        let mut buf = vec![0u8; 16 + frame.len() + 16];
        buf[16..16 + frame.len()].copy_from_slice(frame);
        let n = a.seal(&mut buf, frame.len(), None, u64::MAX, &sa).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(&buf[..4], &[4, 0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(buf[4..8].try_into().unwrap()),
            2,
            "receiver index is the peer's"
        );
        assert_ne!(&buf[16..16 + frame.len()], frame, "encrypted");

        let mut tampered = buf.clone();
        tampered[20] ^= 1;
        assert_eq!(b.open(&mut tampered, 0, &sb, true), Err(OpenError::Auth));

        let mut copy = buf.clone();
        assert_eq!(b.open(&mut copy, 0, &sb, true), Ok(frame.len()));
        assert_eq!(&copy[16..16 + frame.len()], frame);
        // The same packet again is a replay.
        let mut again = buf.clone();
        assert_eq!(b.open(&mut again, 0, &sb, true), Err(OpenError::Replay));
        // A forged packet did not consume a counter: counter 1 still opens.
        let mut buf2 = vec![0u8; 16 + 3 + 16];
        a.seal(&mut buf2, 3, None, u64::MAX, &sa).unwrap();
        assert_eq!(b.open(&mut buf2, 1, &sb, true), Ok(3));
        assert_eq!(sb.rx_next.load(Ordering::Relaxed), 2);
    }

    /// Checksum state travels in the header's bytes 1-3 and is authenticated (it is the
    /// AEAD's associated data): changing it, adding it or removing it fails the tag.
    #[test]
    fn checksum_state_is_authenticated() {
        for aead in Aead::ALL {
            let (ka, kb) = keys_for(aead);
            let (sa, sb) = (SessionSlot::default(), SessionSlot::default());
            let mut a = Session::new(1, 2, 0, true, 0, &ka, &sa);
            let b = Session::new(2, 1, 0, false, 0, &kb, &sb);
            assert!(a.checksum_state && b.checksum_state);
            let c = ChecksumPartial { start: 34, offset: 16 };
            let mut buf = vec![0u8; 16 + 60 + 16];
            let n = a.seal(&mut buf, 60, Some(c), u64::MAX, &sa).unwrap();
            assert_eq!(&buf[..4], &[4, 16, 34, 0]);
            for state in [[6, 34, 0], [16, 35, 0], [16, 34, 1], [0, 0, 0]] {
                let mut forged = buf[..n].to_vec();
                forged[1..4].copy_from_slice(&state);
                assert_eq!(b.open(&mut forged, 0, &sb, true), Err(OpenError::Auth), "{state:?}");
            }
            let mut ok = buf[..n].to_vec();
            assert_eq!(b.open(&mut ok, 0, &sb, true), Ok(60));
            // A message sealed without state does not open once state is added.
            let mut plain = vec![0u8; 16 + 60 + 16];
            a.seal(&mut plain, 60, None, u64::MAX, &sa).unwrap();
            plain[1..4].copy_from_slice(&[16, 34, 0]);
            assert_eq!(b.open(&mut plain, 1, &sb, true), Err(OpenError::Auth));
        }
        // Without the feature agreed, the session says so (the engine then completes
        // checksums itself).
        let (mut ka, _) = keys();
        ka.features = Features::NONE;
        let sa = SessionSlot::default();
        assert!(!Session::new(1, 2, 0, true, 0, &ka, &sa).checksum_state);
    }

    #[test]
    fn matches_raw_aead_with_noise_nonce() {
        matches_raw_aead_with(Aead::ChaCha20Poly1305, &CHACHA20_POLY1305);
        matches_raw_aead_with(Aead::Aes256Gcm, &AES_256_GCM);
    }

    #[test]
    fn sessions_of_different_aeads_do_not_open_each_others_packets() {
        let (ka, _) = keys_for(Aead::Aes256Gcm);
        let (_, kb) = keys_for(Aead::ChaCha20Poly1305);
        let (sa, sb) = (SessionSlot::default(), SessionSlot::default());
        let mut a = Session::new(1, 2, 0, true, 0, &ka, &sa);
        let b = Session::new(2, 1, 0, false, 0, &kb, &sb);
        let mut buf = vec![0u8; 16 + 5 + 16];
        a.seal(&mut buf, 5, None, u64::MAX, &sa).unwrap();
        assert_eq!(b.open(&mut buf, 0, &sb, true), Err(OpenError::Auth));
    }

    fn matches_raw_aead_with(aead: Aead, alg: &'static aws_lc_rs::aead::Algorithm) {
        let (ka, _) = keys_for(aead);
        let sa = SessionSlot::default();
        let mut a = Session::new(1, 9, 0, true, 0, &ka, &sa);
        for _ in 0..5 {
            let mut tmp = vec![0u8; 64];
            a.seal(&mut tmp, 10, None, u64::MAX, &sa).unwrap();
        }
        let mut buf = vec![0u8; 16 + 4 + 16];
        buf[16..20].copy_from_slice(b"abcd");
        a.seal(&mut buf, 4, None, u64::MAX, &sa).unwrap();
        // Independent computation: the AEAD, nonce = 0^4 || LE64(5), no AAD.
        let k = LessSafeKey::new(UnboundKey::new(alg, &[1; 32]).unwrap());
        let mut expect = b"abcd".to_vec();
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&5u64.to_le_bytes());
        k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut expect)
            .unwrap();
        assert_eq!(&buf[16..], &expect[..]);
        assert_eq!(&buf[8..16], &5u64.to_le_bytes());
    }

    #[test]
    fn counter_limit_stops_sending() {
        let (ka, _) = keys();
        let sa = SessionSlot::default();
        let mut a = Session::new(1, 2, 0, true, 0, &ka, &sa);
        let mut buf = vec![0u8; 64];
        assert!(a.seal(&mut buf, 1, None, 2, &sa).is_some());
        assert!(a.seal(&mut buf, 1, None, 2, &sa).is_some());
        assert!(a.seal(&mut buf, 1, None, 2, &sa).is_none());
    }

    /// Two workers holding the same session over one slot: they never use the same
    /// counter, and the receiver (itself two workers over one slot) takes every packet
    /// exactly once, whichever worker each copy reaches.
    #[test]
    fn workers_share_a_session_without_nonce_reuse_or_double_delivery() {
        let (ka, kb) = keys();
        let (sa, sb) = (SessionSlot::default(), SessionSlot::default());
        let mut senders =
            [Session::new(3, 4, 0, true, 0, &ka, &sa), Session::new(3, 4, 0, true, 0, &ka, &sa)];
        let receivers =
            [Session::new(4, 3, 0, false, 0, &kb, &sb), Session::new(4, 3, 0, false, 0, &kb, &sb)];
        let mut seen = std::collections::HashSet::new();
        let mut packets = Vec::new();
        for i in 0..1000usize {
            // Uneven interleaving: worker 1 sends one packet for every three of worker 0.
            let w = usize::from(i % 4 == 3);
            let mut buf = vec![0u8; 16 + 2 + 16];
            buf[16..18].copy_from_slice(&(i as u16).to_le_bytes());
            senders[w].seal(&mut buf, 2, None, u64::MAX, &sa).unwrap();
            let counter = u64::from_le_bytes(buf[8..16].try_into().unwrap());
            assert!(seen.insert(counter), "counter {counter} used twice");
            packets.push((counter, buf));
        }
        for (n, (counter, p)) in packets.iter().enumerate() {
            // Each packet reaches one receiving worker, and a copy (a replay) the other.
            let (first, second) = (&receivers[n % 2], &receivers[(n + 1) % 2]);
            assert_eq!(first.open(&mut p.clone(), *counter, &sb, false), Ok(2));
            assert_eq!(second.open(&mut p.clone(), *counter, &sb, false), Err(OpenError::Replay));
        }
        // A third worker joining later continues past every counter taken.
        let late = Session::new(3, 4, 0, true, 0, &ka, &sa);
        assert!(late.tx_counter() > *seen.iter().max().unwrap());
    }

    #[test]
    fn restart_resumes_without_nonce_reuse_or_replay() {
        let (ka, kb) = keys();
        let (sa, sb) = (SessionSlot::default(), SessionSlot::default());
        let mut a = Session::new(7, 8, 0, true, 0, &ka, &sa);
        let b = Session::new(8, 7, 0, false, 0, &kb, &sb);
        let mut sent = Vec::new();
        for i in 0..10u8 {
            let mut buf = vec![0u8; 16 + 1 + 16];
            buf[16] = i;
            a.seal(&mut buf, 1, None, u64::MAX, &sa).unwrap();
            sent.push(buf);
        }
        for (i, p) in sent.iter().enumerate().take(6) {
            assert_eq!(b.open(&mut p.clone(), i as u64, &sb, true), Ok(1));
        }
        // Both data planes restart and rebuild the sessions from their slots.
        let mut a2 = Session::new(7, 8, 0, true, 0, &ka, &sa);
        let b2 = Session::new(8, 7, 0, false, 0, &kb, &sb);
        assert!(a2.tx_counter() >= 10, "sending resumes past every used counter");
        assert_eq!(a2.tx_counter(), TX_BLOCK);
        for (i, p) in sent.iter().enumerate() {
            let expect = if i < 6 { Err(OpenError::Replay) } else { Ok(1) };
            assert_eq!(
                b2.open(&mut p.clone(), i as u64, &sb, true),
                expect,
                "{i}: delivered ones refused, others not"
            );
        }
        let mut buf = vec![0u8; 16 + 1 + 16];
        a2.seal(&mut buf, 1, None, u64::MAX, &sa).unwrap();
        assert_eq!(b2.open(&mut buf, TX_BLOCK, &sb, true), Ok(1));
        // A different session in the slot starts afresh.
        let a3 = Session::new(99, 8, 0, true, 0, &ka, &sa);
        assert_eq!(a3.tx_counter(), 0);
    }
}
