//! Responder side of the cookie mechanism: a secret rotated every two minutes, cookies
//! bound to the source address, mac2 checks and cookie replies.

use std::net::SocketAddr;

use omni_proto::PublicKey;
use omni_proto::constants::COOKIE_SECRET_LIFETIME;
use omni_proto::mac::{self, Cookie, Mac};
use omni_proto::wire::{cookie_reply, macs};
use zeroize::Zeroize;

pub struct CookieChecker {
    own_public: PublicKey,
    secret: [u8; 32],
    previous: [u8; 32],
    born_ms: u64,
}

impl Drop for CookieChecker {
    fn drop(&mut self) {
        self.secret.zeroize();
        self.previous.zeroize();
    }
}

impl CookieChecker {
    pub fn new(own_public: PublicKey, now_ms: u64) -> Self {
        Self { own_public, secret: rand::random(), previous: rand::random(), born_ms: now_ms }
    }

    fn rotate(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.born_ms) >= COOKIE_SECRET_LIFETIME.as_millis() as u64 {
            self.previous = self.secret;
            self.secret = rand::random();
            self.born_ms = now_ms;
        }
    }

    /// Whether the message's mac2 is a cookie we handed to `src` (this or the last secret).
    pub fn verify_mac2(&mut self, msg: &[u8], src: &SocketAddr, now_ms: u64) -> bool {
        self.rotate(now_ms);
        [&self.secret, &self.previous]
            .iter()
            .any(|s| macs::verify_mac2(msg, &mac::make_cookie(s, src)))
    }

    /// A cookie reply to a message from `src` whose sender index and mac1 are given.
    pub fn reply(
        &mut self,
        sender_index: u32,
        msg_mac1: &Mac,
        src: &SocketAddr,
        now_ms: u64,
    ) -> [u8; cookie_reply::LEN] {
        self.rotate(now_ms);
        let cookie: Cookie = mac::make_cookie(&self.secret, src);
        let nonce: [u8; 24] = rand::random();
        let repr = cookie_reply::Repr {
            receiver_index: sender_index,
            nonce,
            sealed_cookie: mac::seal_cookie(&self.own_public, &nonce, msg_mac1, &cookie),
        };
        let mut out = [0u8; cookie_reply::LEN];
        repr.emit(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_proto::Identity;

    #[test]
    fn cookie_reply_gives_a_cookie_that_passes_mac2() {
        let responder = Identity::from_seed([1; 32]).public_key();
        let mut cc = CookieChecker::new(responder, 0);
        let src: SocketAddr = "10.0.0.9:4444".parse().unwrap();
        let mut msg = [0x5au8; omni_proto::wire::handshake_init::LEN];
        let m1 = macs::seal(&mut msg, &mac::mac1_key(&responder), None);
        assert!(!cc.verify_mac2(&msg, &src, 0));
        let reply = cc.reply(77, &m1, &src, 0);
        let p = cookie_reply::Packet::new_checked(&reply[..]).unwrap();
        assert_eq!(p.receiver_index(), 77);
        let cookie = mac::open_cookie(&responder, p.nonce(), &m1, p.sealed_cookie()).unwrap();
        macs::seal(&mut msg, &mac::mac1_key(&responder), Some(&cookie));
        assert!(cc.verify_mac2(&msg, &src, 1000));
        // From another address the cookie is worthless.
        assert!(!cc.verify_mac2(&msg, &"10.0.0.9:4445".parse().unwrap(), 1000));
        // Still valid one rotation later, not two.
        assert!(cc.verify_mac2(&msg, &src, 130_000));
        assert!(!cc.verify_mac2(&msg, &src, 260_000));
    }
}
