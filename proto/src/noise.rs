//! Noise parameters and thin wrappers over snow's handshake state.
//!
//! Pattern `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`: the initiator knows the responder's
//! static key in advance (static peers, or the Nucleus' member list), the psk (cluster
//! secret, zeros without one) is mixed into the second message. The static keys are the
//! X25519 forms of the nodes' Ed25519 identities.
//!
//! The transport keys from the split are handed to the data plane, which seals with ring's
//! ChaCha20-Poly1305 using the Noise nonce layout (4 zero bytes + 64-bit LE counter).

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use snow::HandshakeState;

use crate::constants::LABEL_PSK;
use crate::tai64n;

pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake hash so OmniNervous handshakes never verify as anything else.
pub const PROLOGUE: &[u8] = b"OmniNervous v1 L2 fabric";
/// Noise message 1: ephemeral (32) + encrypted static (32+16) + encrypted TAI64N (12+16).
pub const INITIATION_NOISE_LEN: usize = 32 + 48 + tai64n::LEN + 16;
/// Noise message 2: ephemeral (32) + encrypted empty payload (16).
pub const RESPONSE_NOISE_LEN: usize = 32 + 16;

/// A 32-byte pre-shared key; zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl Psk {
    /// The all-zero psk of static-peer mode without a cluster secret.
    pub fn none() -> Self {
        Self([0; 32])
    }

    /// The psk of a cluster: BLAKE2s(label || len(name) || name || secret), so two
    /// clusters sharing a secret by accident still cannot talk to each other.
    pub fn for_cluster(cluster: &str, secret: &[u8]) -> Self {
        use blake2::{Blake2s256, Digest};
        let d = Blake2s256::new()
            .chain_update(LABEL_PSK)
            .chain_update((cluster.len() as u32).to_le_bytes())
            .chain_update(cluster.as_bytes())
            .chain_update(secret)
            .finalize();
        Self(d.into())
    }
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// Errors of the Noise layer.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("noise: {0}")]
    Snow(#[from] snow::Error),
}

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("constant Noise parameter string is valid")
}

/// A handshake state for the initiator towards `remote_x25519`.
pub fn initiator(
    local_secret: &[u8; 32],
    remote_x25519: &[u8; 32],
    psk: &Psk,
) -> Result<HandshakeState, NoiseError> {
    Ok(snow::Builder::new(params())
        .local_private_key(local_secret)?
        .remote_public_key(remote_x25519)?
        .prologue(PROLOGUE)?
        .psk(2, &psk.0)?
        .build_initiator()?)
}

/// A handshake state for the responder.
pub fn responder(local_secret: &[u8; 32], psk: &Psk) -> Result<HandshakeState, NoiseError> {
    Ok(snow::Builder::new(params())
        .local_private_key(local_secret)?
        .prologue(PROLOGUE)?
        .psk(2, &psk.0)?
        .build_responder()?)
}

/// Transport keys of one session, from this node's point of view. Zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// Splits a finished handshake into transport keys.
pub fn split(hs: &mut HandshakeState) -> SessionKeys {
    let (mut a, mut b) = hs.dangerously_get_raw_split();
    let keys = if hs.is_initiator() {
        SessionKeys { send: a, recv: b }
    } else {
        SessionKeys { send: b, recv: a }
    };
    a.zeroize();
    b.zeroize();
    keys
}

/// Writes Noise message 1 with the timestamp payload. Returns the message bytes.
pub fn write_initiation(
    hs: &mut HandshakeState,
    timestamp: &tai64n::Tai64n,
) -> Result<[u8; INITIATION_NOISE_LEN], NoiseError> {
    let mut out = [0u8; INITIATION_NOISE_LEN];
    let n = hs.write_message(&timestamp.to_bytes(), &mut out)?;
    debug_assert_eq!(n, INITIATION_NOISE_LEN);
    Ok(out)
}

/// Reads Noise message 1; returns the initiator's X25519 static key and its timestamp.
pub fn read_initiation(
    hs: &mut HandshakeState,
    msg: &[u8; INITIATION_NOISE_LEN],
) -> Result<([u8; 32], Option<tai64n::Tai64n>), NoiseError> {
    let mut payload = Zeroizing::new([0u8; INITIATION_NOISE_LEN]);
    let n = hs.read_message(msg, &mut payload[..])?;
    let mut remote = [0u8; 32];
    if let Some(rs) = hs.get_remote_static() {
        remote.copy_from_slice(rs);
    }
    Ok((remote, tai64n::Tai64n::from_bytes(&payload[..n])))
}

/// Writes Noise message 2 (empty payload).
pub fn write_response(hs: &mut HandshakeState) -> Result<[u8; RESPONSE_NOISE_LEN], NoiseError> {
    let mut out = [0u8; RESPONSE_NOISE_LEN];
    let n = hs.write_message(&[], &mut out)?;
    debug_assert_eq!(n, RESPONSE_NOISE_LEN);
    Ok(out)
}

/// Reads Noise message 2.
pub fn read_response(
    hs: &mut HandshakeState,
    msg: &[u8; RESPONSE_NOISE_LEN],
) -> Result<(), NoiseError> {
    let mut payload = [0u8; RESPONSE_NOISE_LEN];
    hs.read_message(msg, &mut payload)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::tai64n::Tai64n;

    fn handshake(
        psk_i: &Psk,
        psk_r: &Psk,
    ) -> Result<(SessionKeys, SessionKeys, [u8; 32]), NoiseError> {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), psk_i)?;
        let mut r = responder(&b.x25519_secret(), psk_r)?;
        let ts = Tai64n::from_unix(1000, 0);
        let m1 = write_initiation(&mut i, &ts)?;
        let (remote, got_ts) = read_initiation(&mut r, &m1)?;
        assert_eq!(got_ts, Some(ts));
        let m2 = write_response(&mut r)?;
        read_response(&mut i, &m2)?;
        Ok((split(&mut i), split(&mut r), remote))
    }

    #[test]
    fn handshake_yields_matching_keys_and_identity() {
        let (ki, kr, remote) = handshake(&Psk::none(), &Psk::none()).unwrap();
        assert_eq!(ki.send, kr.recv);
        assert_eq!(ki.recv, kr.send);
        assert_ne!(ki.send, ki.recv);
        assert_eq!(remote, Identity::from_seed([1; 32]).public_key().x25519());
    }

    #[test]
    fn psk_mismatch_fails_the_handshake() {
        let p1 = Psk::for_cluster("fleet", b"secret-1");
        let p2 = Psk::for_cluster("fleet", b"secret-2");
        assert!(handshake(&p1, &p2).is_err());
        assert!(handshake(&p1, &p1).is_ok());
        assert_ne!(Psk::for_cluster("a", b"s").0, Psk::for_cluster("b", b"s").0);
    }
}
