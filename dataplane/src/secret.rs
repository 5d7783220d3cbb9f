//! AEAD keys that are wiped when dropped. AWS-LC keeps a key's state (for ChaCha20 the key
//! words, for AES the expanded round keys and the GHASH table) in one `EVP_AEAD_CTX` it
//! allocates with `OPENSSL_malloc`; dropping the key frees it with `EVP_AEAD_CTX_free`,
//! whose `OPENSSL_free` overwrites the whole allocation (`OPENSSL_cleanse`) before
//! releasing it. No copy of the key bytes stays in Rust memory: [`AeadKey::new`] takes them
//! by reference. (With ring, whose keys live inline and are not cleared on drop, this type
//! overwrote them itself.)

use std::ops::Deref;

use aws_lc_rs::aead::{AES_256_GCM, Algorithm, CHACHA20_POLY1305, LessSafeKey, UnboundKey};
use omni_proto::aead::Aead;

/// A transport AEAD key (ChaCha20-Poly1305 or AES-256-GCM), wiped on drop by the library.
pub struct AeadKey {
    key: LessSafeKey,
}

/// AWS-LC's implementation of `aead`.
pub fn algorithm(aead: Aead) -> &'static Algorithm {
    match aead {
        Aead::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Aead::Aes256Gcm => &AES_256_GCM,
    }
}

impl AeadKey {
    pub fn new(aead: Aead, bytes: &[u8; 32]) -> Self {
        // Both take 32-byte keys, so this cannot fail (short of the allocator failing).
        let key = UnboundKey::new(algorithm(aead), bytes).expect("a 32-byte AEAD key");
        Self { key: LessSafeKey::new(key) }
    }
}

impl Deref for AeadKey {
    type Target = LessSafeKey;

    fn deref(&self) -> &LessSafeKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{Aad, Nonce};

    #[test]
    fn seals_like_the_raw_library() {
        for aead in Aead::ALL {
            let k = AeadKey::new(aead, &[7; 32]);
            let nonce = || Nonce::assume_unique_for_key([1; 12]);
            let mut a = b"frame".to_vec();
            k.seal_in_place_append_tag(nonce(), Aad::empty(), &mut a).unwrap();
            let plain = LessSafeKey::new(UnboundKey::new(algorithm(aead), &[7; 32]).unwrap());
            let mut b = b"frame".to_vec();
            plain.seal_in_place_append_tag(nonce(), Aad::empty(), &mut b).unwrap();
            assert_eq!(a, b, "{aead}");
        }
        // The two are different ciphers (a key is never usable under the other).
        let mut c = b"frame".to_vec();
        let mut g = b"frame".to_vec();
        let nonce = Nonce::assume_unique_for_key;
        AeadKey::new(Aead::ChaCha20Poly1305, &[7; 32])
            .seal_in_place_append_tag(nonce([1; 12]), Aad::empty(), &mut c)
            .unwrap();
        AeadKey::new(Aead::Aes256Gcm, &[7; 32])
            .seal_in_place_append_tag(nonce([1; 12]), Aad::empty(), &mut g)
            .unwrap();
        assert_ne!(c, g);
    }

    /// Known-answer test (RFC 8439 section 2.8.2 for ChaCha20-Poly1305; the all-zero key
    /// and nonce vector of McGrew & Viega test case 14 for AES-256-GCM): the library is
    /// the cipher the protocol names, not merely self-consistent.
    #[test]
    fn known_answers() {
        let mut buf = vec![0u8; 16];
        let tag = AeadKey::new(Aead::Aes256Gcm, &[0; 32])
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut buf,
            )
            .unwrap();
        assert_eq!(hex(&buf), "cea7403d4d606b6e074ec5d3baf39d18");
        assert_eq!(hex(tag.as_ref()), "d0d1c8a799996bf0265b98b5d48ab919");

        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = [0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
        let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
        let mut text = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = AeadKey::new(Aead::ChaCha20Poly1305, &key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut text,
            )
            .unwrap();
        assert_eq!(&hex(&text)[..32], "d31a8d34648e60db7b86afbc53ef7ec2");
        assert_eq!(hex(tag.as_ref()), "1ae10b594f09e26a7e902ecbd0600691");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
