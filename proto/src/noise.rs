//! Noise parameters and thin wrappers over snow's handshake state.
//!
//! Pattern `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`: the initiator knows the responder's
//! static key in advance (static peers, or the Nucleus' member list), the psk (cluster
//! secret, zeros without one) is mixed into the second message. The static keys are the
//! X25519 forms of the nodes' Ed25519 identities.
//!
//! The initiation's payload is the TAI64N timestamp, the AEADs the initiator accepts
//! for transport and the features it understands; the response's payload names the AEAD
//! the responder chose (see [`crate::aead`]) and the features both understand (see
//! [`crate::features`]). The transport keys from the split are handed to the data plane, which
//! seals with that AEAD (AWS-LC) using the Noise nonce layout (4 zero bytes + 64-bit LE
//! counter).

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use snow::HandshakeState;

use crate::aead::{Aead, AeadSet};
use crate::constants::LABEL_PSK;
use crate::features::Features;
use crate::tai64n;

pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Mixed into the handshake hash so OmniNervous handshakes never verify as anything else.
pub const PROLOGUE: &[u8] = b"OmniNervous v1 L2 fabric";
/// Payload of message 1: TAI64N timestamp, then a u32 LE word: the offered AEADs (bit set,
/// bits 0-15) and the features understood (bits 16-23).
pub const INITIATION_PAYLOAD_LEN: usize = tai64n::LEN + 4;
/// Noise message 1: ephemeral (32) + encrypted static (32+16) + encrypted payload (16+16).
pub const INITIATION_NOISE_LEN: usize = 32 + 48 + INITIATION_PAYLOAD_LEN + 16;
/// Payload of message 2: the chosen AEAD's id, the features both ends understand, then 2
/// reserved bytes (zero, ignored).
pub const RESPONSE_PAYLOAD_LEN: usize = 4;
/// Noise message 2: ephemeral (32) + encrypted payload (4+16).
pub const RESPONSE_NOISE_LEN: usize = 32 + RESPONSE_PAYLOAD_LEN + 16;
/// The most extension bytes a handshake payload may carry after its fixed part: one
/// certificate of the largest size, as a TLV.
pub const MAX_EXTENSIONS: usize = TLV_HEAD + crate::membership::cert::MAX_LEN;
/// Kind and length of an extension.
const TLV_HEAD: usize = 3;
const EXT_CERTIFICATE: u8 = 1;

/// What a handshake payload may carry after its fixed part, each as a TLV (kind u8, length
/// u16 LE, value): the sender's certificate (kind 1), when its cluster has an authority.
/// Unknown kinds are skipped, so later extensions do not break older nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub certificate: Option<Vec<u8>>,
}

impl Extensions {
    fn len(&self) -> usize {
        self.certificate.as_ref().map_or(0, |c| TLV_HEAD + c.len())
    }

    fn write(&self, out: &mut [u8]) {
        if let Some(c) = &self.certificate {
            out[0] = EXT_CERTIFICATE;
            out[1..3].copy_from_slice(&(c.len() as u16).to_le_bytes());
            out[3..3 + c.len()].copy_from_slice(c);
        }
    }

    fn read(mut b: &[u8]) -> Result<Self, NoiseError> {
        let mut ext = Self::default();
        while !b.is_empty() {
            if b.len() < TLV_HEAD {
                return Err(NoiseError::BadExtension("a cut extension header"));
            }
            let n = u16::from_le_bytes([b[1], b[2]]) as usize;
            let value =
                b.get(TLV_HEAD..TLV_HEAD + n).ok_or(NoiseError::BadExtension("a cut extension"))?;
            if b[0] == EXT_CERTIFICATE {
                if ext.certificate.is_some() {
                    return Err(NoiseError::BadExtension("two certificates"));
                }
                ext.certificate = Some(value.to_vec());
            }
            b = &b[TLV_HEAD + n..];
        }
        Ok(ext)
    }

    fn check_size(&self) -> Result<(), NoiseError> {
        if self.len() > MAX_EXTENSIONS {
            return Err(NoiseError::BadExtension(
                "a certificate larger than any the authority signs",
            ));
        }
        Ok(())
    }
}

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
    #[error("handshake payload of {0} bytes, expected {1}")]
    BadPayload(usize, usize),
    #[error("the responder chose AEAD id {0}, which was not offered")]
    AeadNotOffered(u8),
    #[error("handshake extensions: {0}")]
    BadExtension(&'static str),
    #[error("a handshake message of {0} bytes")]
    BadLength(usize),
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

/// Transport keys of one session, from this node's point of view, the AEAD they are for
/// and the features both ends understand. Zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
    #[zeroize(skip)]
    pub aead: Aead,
    #[zeroize(skip)]
    pub features: Features,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({}, {}, <redacted>)", self.aead, self.features)
    }
}

/// Splits a finished handshake into transport keys for `aead` (what the response named).
pub fn split(hs: &mut HandshakeState, aead: Aead, features: Features) -> SessionKeys {
    let (mut a, mut b) = hs.dangerously_get_raw_split();
    let keys = if hs.is_initiator() {
        SessionKeys { send: a, recv: b, aead, features }
    } else {
        SessionKeys { send: b, recv: a, aead, features }
    };
    a.zeroize();
    b.zeroize();
    keys
}

/// Writes Noise message 1 with the timestamp, the AEADs offered, the features understood
/// and the extensions. Returns the bytes.
pub fn write_initiation(
    hs: &mut HandshakeState,
    timestamp: &tai64n::Tai64n,
    offer: AeadSet,
    features: Features,
    ext: &Extensions,
) -> Result<Vec<u8>, NoiseError> {
    ext.check_size()?;
    let mut payload = vec![0u8; INITIATION_PAYLOAD_LEN + ext.len()];
    payload[..tai64n::LEN].copy_from_slice(&timestamp.to_bytes());
    let word = offer.bits() & 0xffff | (features.bits() as u32) << 16;
    payload[tai64n::LEN..INITIATION_PAYLOAD_LEN].copy_from_slice(&word.to_le_bytes());
    ext.write(&mut payload[INITIATION_PAYLOAD_LEN..]);
    let mut out = vec![0u8; INITIATION_NOISE_LEN + ext.len()];
    let n = hs.write_message(&payload, &mut out)?;
    debug_assert_eq!(n, out.len());
    Ok(out)
}

/// What an authenticated initiation says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiation {
    /// The initiator's X25519 static key.
    pub remote: [u8; 32],
    /// `None` for a timestamp that is not valid TAI64N.
    pub timestamp: Option<tai64n::Tai64n>,
    pub offer: AeadSet,
    /// What the initiator understands (unknown bits included).
    pub features: Features,
    pub ext: Extensions,
}

/// Reads Noise message 1.
pub fn read_initiation(hs: &mut HandshakeState, msg: &[u8]) -> Result<Initiation, NoiseError> {
    if !(INITIATION_NOISE_LEN..=INITIATION_NOISE_LEN + MAX_EXTENSIONS).contains(&msg.len()) {
        return Err(NoiseError::BadLength(msg.len()));
    }
    let mut payload = Zeroizing::new(vec![0u8; msg.len()]);
    let n = hs.read_message(msg, &mut payload[..])?;
    if n < INITIATION_PAYLOAD_LEN {
        return Err(NoiseError::BadPayload(n, INITIATION_PAYLOAD_LEN));
    }
    let mut remote = [0u8; 32];
    if let Some(rs) = hs.get_remote_static() {
        remote.copy_from_slice(rs);
    }
    let mut bits = [0u8; 4];
    bits.copy_from_slice(&payload[tai64n::LEN..INITIATION_PAYLOAD_LEN]);
    let word = u32::from_le_bytes(bits);
    Ok(Initiation {
        remote,
        timestamp: tai64n::Tai64n::from_bytes(&payload[..tai64n::LEN]),
        offer: AeadSet::from_bits(word & 0xffff),
        features: Features::from_bits((word >> 16) as u8),
        ext: Extensions::read(&payload[INITIATION_PAYLOAD_LEN..n])?,
    })
}

/// Writes Noise message 2, naming the AEAD chosen for the session and the features both
/// ends understand, with the extensions.
pub fn write_response(
    hs: &mut HandshakeState,
    chosen: Aead,
    agreed: Features,
    ext: &Extensions,
) -> Result<Vec<u8>, NoiseError> {
    ext.check_size()?;
    let mut payload = vec![0u8; RESPONSE_PAYLOAD_LEN + ext.len()];
    payload[0] = chosen.id();
    payload[1] = agreed.bits();
    ext.write(&mut payload[RESPONSE_PAYLOAD_LEN..]);
    let mut out = vec![0u8; RESPONSE_NOISE_LEN + ext.len()];
    let n = hs.write_message(&payload, &mut out)?;
    debug_assert_eq!(n, out.len());
    Ok(out)
}

/// What an authenticated response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub aead: Aead,
    pub features: Features,
    pub ext: Extensions,
}

/// Reads Noise message 2; the AEAD the responder chose must be one of `offered` (what our
/// initiation offered), and the features agreed are never more than `understood` (what our
/// initiation announced).
pub fn read_response(
    hs: &mut HandshakeState,
    msg: &[u8],
    offered: AeadSet,
    understood: Features,
) -> Result<Response, NoiseError> {
    if !(RESPONSE_NOISE_LEN..=RESPONSE_NOISE_LEN + MAX_EXTENSIONS).contains(&msg.len()) {
        return Err(NoiseError::BadLength(msg.len()));
    }
    let mut payload = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut payload)?;
    if n < RESPONSE_PAYLOAD_LEN {
        return Err(NoiseError::BadPayload(n, RESPONSE_PAYLOAD_LEN));
    }
    let features = Features::from_bits(payload[1]).intersect(understood);
    let ext = Extensions::read(&payload[RESPONSE_PAYLOAD_LEN..n])?;
    match Aead::from_id(payload[0]) {
        Some(aead) if offered.contains(aead) => Ok(Response { aead, features, ext }),
        _ => Err(NoiseError::AeadNotOffered(payload[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::tai64n::Tai64n;

    const BOTH: [Aead; 2] = [Aead::ChaCha20Poly1305, Aead::Aes256Gcm];

    /// A whole handshake: the initiator offers `offer`, the responder accepts `accept`.
    fn handshake_with(
        psk_i: &Psk,
        psk_r: &Psk,
        offer: AeadSet,
        accept: AeadSet,
    ) -> Result<(SessionKeys, SessionKeys, [u8; 32]), NoiseError> {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), psk_i)?;
        let mut r = responder(&b.x25519_secret(), psk_r)?;
        let ts = Tai64n::from_unix(1000, 0);
        let m1 = write_initiation(&mut i, &ts, offer, Features::SUPPORTED, &Extensions::default())?;
        let init = read_initiation(&mut r, &m1)?;
        assert_eq!(init.timestamp, Some(ts));
        assert_eq!(init.offer, offer);
        assert_eq!(init.features, Features::SUPPORTED);
        let chosen = accept.choose(init.offer).expect("a common AEAD");
        let agreed = init.features.intersect(Features::SUPPORTED);
        let m2 = write_response(&mut r, chosen, agreed, &Extensions::default())?;
        let got = read_response(&mut i, &m2, offer, Features::SUPPORTED)?;
        let (got, got_features) = (got.aead, got.features);
        assert_eq!((got, got_features), (chosen, agreed));
        Ok((split(&mut i, got, got_features), split(&mut r, chosen, agreed), init.remote))
    }

    fn handshake(
        psk_i: &Psk,
        psk_r: &Psk,
    ) -> Result<(SessionKeys, SessionKeys, [u8; 32]), NoiseError> {
        handshake_with(psk_i, psk_r, AeadSet::of(&BOTH), AeadSet::of(&BOTH))
    }

    #[test]
    fn handshake_yields_matching_keys_and_identity() {
        let (ki, kr, remote) = handshake(&Psk::none(), &Psk::none()).unwrap();
        assert_eq!(ki.send, kr.recv);
        assert_eq!(ki.recv, kr.send);
        assert_ne!(ki.send, ki.recv);
        assert_eq!((ki.aead, kr.aead), (Aead::Aes256Gcm, Aead::Aes256Gcm));
        assert_eq!(remote, Identity::from_seed([1; 32]).public_key().x25519());
    }

    #[test]
    fn both_sides_agree_on_the_aead_the_responder_chose() {
        let chacha = AeadSet::of(&[Aead::ChaCha20Poly1305]);
        let (ki, kr, _) =
            handshake_with(&Psk::none(), &Psk::none(), AeadSet::of(&BOTH), chacha).unwrap();
        assert_eq!((ki.aead, kr.aead), (Aead::ChaCha20Poly1305, Aead::ChaCha20Poly1305));
        let (ki, kr, _) =
            handshake_with(&Psk::none(), &Psk::none(), chacha, AeadSet::of(&BOTH)).unwrap();
        assert_eq!((ki.aead, kr.aead), (Aead::ChaCha20Poly1305, Aead::ChaCha20Poly1305));
    }

    #[test]
    fn the_initiator_refuses_an_aead_it_did_not_offer() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let chacha = AeadSet::of(&[Aead::ChaCha20Poly1305]);
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
        let mut r = responder(&b.x25519_secret(), &Psk::none()).unwrap();
        let m1 = write_initiation(
            &mut i,
            &Tai64n::from_unix(1, 0),
            chacha,
            Features::NONE,
            &Extensions::default(),
        )
        .unwrap();
        read_initiation(&mut r, &m1).unwrap();
        let m2 = write_response(&mut r, Aead::Aes256Gcm, Features::NONE, &Extensions::default())
            .unwrap();
        assert!(matches!(
            read_response(&mut i, &m2, chacha, Features::NONE),
            Err(NoiseError::AeadNotOffered(1))
        ));
    }

    #[test]
    fn a_tampered_offer_breaks_the_handshake() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
        let mut r = responder(&b.x25519_secret(), &Psk::none()).unwrap();
        let mut m1 = write_initiation(
            &mut i,
            &Tai64n::from_unix(1, 0),
            AeadSet::of(&BOTH),
            Features::SUPPORTED,
            &Extensions::default(),
        )
        .unwrap();
        // The offer's bytes sit just before the last tag.
        m1[INITIATION_NOISE_LEN - 16 - 4] ^= 0x02;
        assert!(read_initiation(&mut r, &m1).is_err());
    }

    /// Features are agreed only when both ends announce them; a node that knows none (an
    /// older build: zeros) gets none, whichever side it is on.
    #[test]
    fn features_are_what_both_ends_understand() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let run = |initiator_knows: Features, responder_knows: Features| {
            let mut i =
                initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
            let mut r = responder(&b.x25519_secret(), &Psk::none()).unwrap();
            let offer = AeadSet::of(&BOTH);
            let m1 = write_initiation(
                &mut i,
                &Tai64n::from_unix(1, 0),
                offer,
                initiator_knows,
                &Extensions::default(),
            )
            .unwrap();
            let init = read_initiation(&mut r, &m1).unwrap();
            assert_eq!(init.offer, offer, "features do not leak into the AEAD set");
            let agreed = init.features.intersect(responder_knows);
            let m2 =
                write_response(&mut r, Aead::Aes256Gcm, agreed, &Extensions::default()).unwrap();
            let got = read_response(&mut i, &m2, offer, initiator_knows).unwrap().features;
            (agreed, got)
        };
        let s = Features::SUPPORTED;
        assert_eq!(run(s, s), (s, s));
        assert_eq!(run(Features::NONE, s), (Features::NONE, Features::NONE));
        assert_eq!(run(s, Features::NONE), (Features::NONE, Features::NONE));
        // A responder claiming more than was announced gets only what was announced.
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
        let mut r = responder(&b.x25519_secret(), &Psk::none()).unwrap();
        let m1 = write_initiation(
            &mut i,
            &Tai64n::from_unix(1, 0),
            AeadSet::of(&BOTH),
            Features::NONE,
            &Extensions::default(),
        )
        .unwrap();
        read_initiation(&mut r, &m1).unwrap();
        let m2 = write_response(
            &mut r,
            Aead::Aes256Gcm,
            Features::from_bits(0xff),
            &Extensions::default(),
        )
        .unwrap();
        let got = read_response(&mut i, &m2, AeadSet::of(&BOTH), Features::NONE).unwrap();
        assert_eq!((got.aead, got.features), (Aead::Aes256Gcm, Features::NONE));
    }

    /// Certificates ride in both payloads, encrypted; without one the messages keep
    /// WireGuard's sizes.
    #[test]
    fn extensions_carry_certificates_both_ways() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let (ca, cb) = (vec![0xca; 300], vec![0xcb; 17]);
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
        let mut r = responder(&b.x25519_secret(), &Psk::none()).unwrap();
        let ext_a = Extensions { certificate: Some(ca.clone()) };
        let ts = Tai64n::from_unix(1, 0);
        let m1 = write_initiation(&mut i, &ts, AeadSet::of(&BOTH), Features::NONE, &ext_a).unwrap();
        assert_eq!(m1.len(), INITIATION_NOISE_LEN + 3 + 300);
        assert!(!m1.windows(8).any(|w| w == [0xca; 8]), "the certificate is encrypted");
        let init = read_initiation(&mut r, &m1).unwrap();
        assert_eq!(init.ext.certificate, Some(ca));
        let ext_b = Extensions { certificate: Some(cb.clone()) };
        let m2 = write_response(&mut r, Aead::Aes256Gcm, Features::NONE, &ext_b).unwrap();
        assert_eq!(m2.len(), RESPONSE_NOISE_LEN + 3 + 17);
        let resp = read_response(&mut i, &m2, AeadSet::of(&BOTH), Features::NONE).unwrap();
        assert_eq!(resp.ext.certificate, Some(cb));
        // Too large to send.
        let huge = Extensions { certificate: Some(vec![0; MAX_EXTENSIONS]) };
        let mut i = initiator(&a.x25519_secret(), &b.public_key().x25519(), &Psk::none()).unwrap();
        assert!(write_initiation(&mut i, &ts, AeadSet::of(&BOTH), Features::NONE, &huge).is_err());
    }

    #[test]
    fn extensions_parse_strictly_and_skip_unknown_kinds() {
        let cert = |n: usize| [&[1u8][..], &(n as u16).to_le_bytes(), &vec![7; n]].concat();
        assert_eq!(Extensions::read(&[]).unwrap(), Extensions::default());
        assert_eq!(Extensions::read(&cert(5)).unwrap().certificate, Some(vec![7; 5]));
        let unknown = [&[9u8, 2, 0, 0xaa, 0xbb][..], &cert(1)].concat();
        assert_eq!(Extensions::read(&unknown).unwrap().certificate, Some(vec![7]));
        assert!(Extensions::read(&cert(5)[..7]).is_err(), "cut value");
        assert!(Extensions::read(&[1, 0]).is_err(), "cut header");
        assert!(Extensions::read(&[cert(1), cert(1)].concat()).is_err(), "two certificates");
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
