//! AEAD keys that are wiped when dropped. ring's `LessSafeKey` keeps the key (for
//! ChaCha20, the key words themselves; for AES, the expanded round keys) in plain memory
//! and does not clear it on drop; [`AeadKey`] owns one and overwrites every byte of it
//! before the memory is released.

use std::mem::{MaybeUninit, size_of};
use std::ops::Deref;

use omni_proto::aead::Aead;
use ring::aead::{AES_256_GCM, Algorithm, CHACHA20_POLY1305, LessSafeKey, UnboundKey};

// Overwriting the key in place is only sound if dropping it has nothing else to do.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

/// A transport AEAD key (ChaCha20-Poly1305 or AES-256-GCM), zeroised on drop.
pub struct AeadKey {
    // Always initialised until `drop`, which overwrites it with zeros (MaybeUninit: zero
    // bytes need not be a valid `LessSafeKey`).
    key: MaybeUninit<LessSafeKey>,
}

/// ring's implementation of `aead`.
pub fn ring_algorithm(aead: Aead) -> &'static Algorithm {
    match aead {
        Aead::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Aead::Aes256Gcm => &AES_256_GCM,
    }
}

impl AeadKey {
    pub fn new(aead: Aead, bytes: &[u8; 32]) -> Self {
        // Both take 32-byte keys, so this cannot fail.
        let key = UnboundKey::new(ring_algorithm(aead), bytes).expect("a 32-byte AEAD key");
        Self { key: MaybeUninit::new(LessSafeKey::new(key)) }
    }
}

impl Deref for AeadKey {
    type Target = LessSafeKey;

    fn deref(&self) -> &LessSafeKey {
        // SAFETY: `key` is initialised in `new` and only overwritten in `drop`.
        unsafe { self.key.assume_init_ref() }
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        let p = self.key.as_mut_ptr().cast::<u8>();
        for i in 0..size_of::<LessSafeKey>() {
            // SAFETY: `p + i` is within `key`, which we own exclusively; volatile so the
            // compiler does not drop the writes as dead stores.
            unsafe { p.add(i).write_volatile(0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(slot: &MaybeUninit<AeadKey>) -> Vec<u8> {
        // SAFETY: reads the bytes of storage we own; every byte was written (by the key's
        // construction or by its drop).
        unsafe {
            std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<AeadKey>()).to_vec()
        }
    }

    #[test]
    fn key_bytes_are_gone_after_drop() {
        let secret: [u8; 32] = std::array::from_fn(|i| 0xa0 ^ i as u8);
        for aead in Aead::ALL {
            let mut slot = MaybeUninit::new(AeadKey::new(aead, &secret));
            // The key is in there (the check below can fail): ChaCha20 keeps the key words,
            // AES-NI's schedule starts with the key itself (bitsliced AES without the
            // instructions stores it transformed, so only check where it is plain).
            let before = raw(&slot);
            if aead == Aead::ChaCha20Poly1305 || aead.hardware_accelerated() {
                assert!(before.windows(32).any(|w| w == secret), "{aead}: key in the struct");
            }
            // ...and after the drop, not a byte of the struct is left.
            // SAFETY: initialised above, dropped once, not used afterwards.
            unsafe { slot.assume_init_drop() };
            assert!(raw(&slot).iter().all(|b| *b == 0), "{aead}");
        }
    }

    #[test]
    fn seals_like_ring() {
        for (aead, alg) in
            [(Aead::ChaCha20Poly1305, &CHACHA20_POLY1305), (Aead::Aes256Gcm, &AES_256_GCM)]
        {
            let k = AeadKey::new(aead, &[7; 32]);
            let nonce = || ring::aead::Nonce::assume_unique_for_key([1; 12]);
            let mut a = b"frame".to_vec();
            k.seal_in_place_append_tag(nonce(), ring::aead::Aad::empty(), &mut a).unwrap();
            let plain = LessSafeKey::new(UnboundKey::new(alg, &[7; 32]).unwrap());
            let mut b = b"frame".to_vec();
            plain.seal_in_place_append_tag(nonce(), ring::aead::Aad::empty(), &mut b).unwrap();
            assert_eq!(a, b, "{aead}");
        }
        // The two are different ciphers (a key is never usable under the other).
        let mut c = b"frame".to_vec();
        let mut g = b"frame".to_vec();
        let nonce = ring::aead::Nonce::assume_unique_for_key;
        AeadKey::new(Aead::ChaCha20Poly1305, &[7; 32])
            .seal_in_place_append_tag(nonce([1; 12]), ring::aead::Aad::empty(), &mut c)
            .unwrap();
        AeadKey::new(Aead::Aes256Gcm, &[7; 32])
            .seal_in_place_append_tag(nonce([1; 12]), ring::aead::Aad::empty(), &mut g)
            .unwrap();
        assert_ne!(c, g);
    }
}
