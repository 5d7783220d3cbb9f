//! The Noise IK messages: answering initiations (rate limit, cookies under load),
//! completing responses, taking cookie replies, and starting handshakes.

use super::*;

impl Fabric {
    fn under_load(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.load_window_ms) >= 1000 {
            self.load_window_ms = now_ms;
            self.load_count = 0;
        }
        self.load_count += 1;
        self.load_count > self.cookie_threshold
    }

    pub(super) fn on_initiation(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        let Ok(pkt) = handshake_init::Packet::new_checked(msg) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        // The data plane checked mac1; check again: the ring is another process's output.
        if !macs::verify_mac1(msg, &self.own_mac1_key) {
            self.stats.dropped_bad_handshake += 1;
            return;
        }
        if !self.rate_limiter.allow(src.addr().ip(), now_ms) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        if self.under_load(now_ms) && !self.cookies.verify_mac2(msg, &src.addr(), now_ms) {
            let reply = self.cookies.reply(pkt.sender_index(), &pkt.mac1(), &src.addr(), now_ms);
            self.out.push(Output::Inject { to: src, bytes: reply.to_vec(), ttl: 0 });
            self.stats.cookie_replies_sent += 1;
            return;
        }
        let Ok(mut hs) = noise::responder(&self.x25519_secret, &self.psk) else { return };
        let Ok(init) = noise::read_initiation(&mut hs, pkt.noise()) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let (remote, ts) = (init.remote, init.timestamp);
        let Some(&id) = self.by_x25519.get(&remote) else {
            // A valid handshake from a key we do not know: silent, counted.
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        let Some(ts) = ts else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        if self.peers[id as usize].last_initiation.is_some_and(|last| ts <= last) {
            self.stats.dropped_replayed_initiation += 1;
            return;
        }
        let Some(admitted) = self.admit(now_ms, id, init.ext.certificate.as_deref()) else {
            return;
        };
        let Some(aead) = self.ciphers.choose(init.offer) else {
            // Authenticated, so worth saying why this peer cannot connect.
            self.stats.dropped_no_common_cipher += 1;
            let peer = &mut self.peers[id as usize];
            if peer.cipher_refusal_logged_ms.is_none_or(|t| now_ms.saturating_sub(t) >= 60_000) {
                peer.cipher_refusal_logged_ms = Some(now_ms);
                warn!(
                    peer = %peer.public_key.short(),
                    offered = %init.offer,
                    accepted = %self.ciphers,
                    refused = self.stats.dropped_no_common_cipher,
                    "handshake refused: no transport cipher in common (see the `cipher` setting)"
                );
            }
            return;
        };
        let agreed = init.features.intersect(Features::SUPPORTED);
        let ext = self.handshake_extensions();
        let Ok(resp_noise) = noise::write_response(&mut hs, aead, agreed, &ext) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let Some(local_index) = self.indices.alloc() else {
            debug!("session table full; dropping handshake");
            return;
        };
        let keys = noise::split(&mut hs, aead, agreed);
        let mut out = handshake_resp::Repr {
            sender_index: local_index,
            receiver_index: pkt.sender_index(),
            noise: &resp_noise,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_vec();
        let peer = &mut self.peers[id as usize];
        let cookie = peer.cookie.filter(|(_, t)| {
            now_ms.saturating_sub(*t) < omni_proto::constants::COOKIE_LIFETIME.as_millis() as u64
        });
        macs::seal(&mut out, &peer.mac1_key, cookie.as_ref().map(|(c, _)| c));
        peer.last_initiation = Some(ts);
        let session = SessionInfo {
            local_index,
            remote_index: pkt.sender_index(),
            keys,
            created_ms: now_ms,
            initiator: false,
        };
        self.set_endpoint(id, src);
        let displaced = self.peers[id as usize].next.replace(session.clone());
        if let Some(old) = displaced {
            self.forget_index(old.local_index);
        }
        self.by_index.insert(local_index, id);
        self.admitted(id, admitted);
        // Both sides punch at once, so often both initiate. Once we have answered theirs, our
        // own attempt is redundant (and, if the other NAT dropped it, would only come back
        // as another handshake after its retry). Exactly one side may give up its attempt,
        // or each would drop the other's answer: the one with the lower key does. Either
        // side does when its own has gone nowhere yet but as openers (which die on the way,
        // punch.rs): the other side never saw it, and sending it now would only make a
        // second session.
        let p = &self.peers[id as usize];
        let unseen = p
            .pending
            .as_ref()
            .is_some_and(|x| x.deferred.as_ref().is_some_and(|d| d.to.len() == x.sent_to.len()));
        if (self.public_key() < p.public_key || unseen)
            && let Some(p) = self.peers[id as usize].pending.take()
        {
            self.forget_index(p.local_index);
        }
        self.cmd(install_cmd(id, &session, SessionPlace::Next, now_ms));
        self.out.push(Output::Inject { to: src, bytes: out, ttl: 0 });
        self.peers[id as usize].last_handshake_ms = Some(now_ms);
        self.stats.handshakes_completed += 1;
        info!(peer = %self.peers[id as usize].public_key.short(), %src, cipher = %aead, "handshake completed (responder)");
    }

    pub(super) fn on_response(&mut self, now_ms: u64, src: Endpoint, msg: &[u8]) {
        let Ok(pkt) = handshake_resp::Packet::new_checked(msg) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        if !macs::verify_mac1(msg, &self.own_mac1_key) {
            self.stats.dropped_bad_handshake += 1;
            return;
        }
        let idx = pkt.receiver_index();
        let Some(&id) = self.by_index.get(&idx) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let peer = &mut self.peers[id as usize];
        let Some(pending) = peer.pending.as_mut().filter(|p| p.local_index == idx) else {
            self.stats.dropped_bad_handshake += 1;
            return;
        };
        let resp = match noise::read_response(
            &mut pending.hs,
            pkt.noise(),
            pending.offer,
            Features::SUPPORTED,
        ) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, noise::NoiseError::AeadNotOffered(_)) {
                    warn!(peer = %peer.public_key.short(), "handshake response refused: {e}");
                }
                self.stats.dropped_bad_handshake += 1;
                return;
            }
        };
        let mut pending = peer.pending.take().expect("checked above");
        let Some(admitted) = self.admit(now_ms, id, resp.ext.certificate.as_deref()) else {
            self.forget_index(pending.local_index);
            return;
        };
        let (aead, agreed) = (resp.aead, resp.features);
        let keys = noise::split(&mut pending.hs, aead, agreed);
        let session = SessionInfo {
            local_index: idx,
            remote_index: pkt.sender_index(),
            keys,
            created_ms: now_ms,
            initiator: true,
        };
        self.set_endpoint(id, src);
        self.admitted(id, admitted);
        let peer = &mut self.peers[id as usize];
        let old_prev = peer.previous.take();
        peer.previous = peer.current.replace(session.clone());
        peer.last_handshake_ms = Some(now_ms);
        if let Some(old) = old_prev {
            self.forget_index(old.local_index);
        }
        self.cmd(install_cmd(id, &session, SessionPlace::Current, now_ms));
        self.stats.handshakes_completed += 1;
        info!(peer = %self.peers[id as usize].public_key.short(), %src, cipher = %aead, "handshake completed (initiator)");
    }

    pub(super) fn on_cookie_reply(&mut self, now_ms: u64, msg: &[u8]) {
        let Ok(pkt) = cookie_reply::Packet::new_checked(msg) else { return };
        let Some(&id) = self.by_index.get(&pkt.receiver_index()) else { return };
        let peer = &mut self.peers[id as usize];
        let Some(pending) = peer.pending.as_ref().filter(|p| p.local_index == pkt.receiver_index())
        else {
            return;
        };
        if let Some(cookie) =
            mac::open_cookie(&peer.public_key, pkt.nonce(), &pending.mac1, pkt.sealed_cookie())
        {
            peer.cookie = Some((cookie, now_ms));
            self.stats.cookies_received += 1;
            debug!(peer = %peer.public_key.short(), "cookie received; next initiation carries mac2");
        }
    }

    /// Starts (or restarts) a handshake towards peer `id`, sent to every destination that
    /// may reach it (the first that answers wins).
    pub fn initiate(&mut self, now_ms: u64, id: u16) {
        self.initiate_with(now_ms, id, false);
    }

    pub(super) fn initiate_with(&mut self, now_ms: u64, id: u16, probe: bool) {
        if self.peers[id as usize].revoked {
            return;
        }
        let dests = self.destinations(now_ms, id, probe);
        if dests.is_empty() {
            return;
        }
        let started_ms = match self.peers[id as usize].pending.take() {
            Some(old) => {
                self.forget_index(old.local_index);
                old.started_ms
            }
            None => now_ms,
        };
        let Some(local_index) = self.indices.alloc() else { return };
        let peer = &self.peers[id as usize];
        let Ok(mut hs) = noise::initiator(&self.x25519_secret, &peer.x25519, &self.psk) else {
            self.indices.release(local_index);
            return;
        };
        let offer = self.ciphers;
        let ext = self.handshake_extensions();
        let Ok(noise_bytes) =
            noise::write_initiation(&mut hs, &Tai64n::now(), offer, Features::SUPPORTED, &ext)
        else {
            self.indices.release(local_index);
            return;
        };
        let mut msg = handshake_init::Repr {
            sender_index: local_index,
            noise: &noise_bytes,
            mac1: [0; 16],
            mac2: [0; 16],
        }
        .to_vec();
        let cookie = peer.cookie.filter(|(_, t)| {
            now_ms.saturating_sub(*t) < omni_proto::constants::COOKIE_LIFETIME.as_millis() as u64
        });
        let mac1 = macs::seal(&mut msg, &peer.mac1_key, cookie.as_ref().map(|(c, _)| c));
        // WireGuard's jitter is up to 333 ms on a 5 s timeout; keep that proportion when the
        // timeout is configured shorter.
        let timeout_ms = self.timers.rekey_timeout.as_millis() as u64;
        let max_jitter =
            (omni_proto::constants::REKEY_TIMEOUT_JITTER.as_millis() as u64).min(timeout_ms / 15);
        let next_retry_ms = now_ms + timeout_ms + rand::random::<u64>() % (max_jitter + 1);
        let deferred = self.send_initiation(now_ms, id, &dests, &msg);
        self.peers[id as usize].pending = Some(Pending {
            local_index,
            hs,
            started_ms,
            next_retry_ms,
            sent_ms: now_ms,
            probe,
            mac1,
            offer,
            deferred,
            sent_to: dests.clone(),
        });
        self.by_index.insert(local_index, id);
        self.stats.handshakes_initiated += 1;
        debug!(peer = %self.peers[id as usize].public_key.short(), ?dests, "handshake initiation sent");
    }

    /// Starts a handshake now unless one is already running.
    /// Starts a handshake with every peer whose endpoint is known. A daemon that adopts a
    /// running data plane calls it: the sessions there were its predecessor's (their keys
    /// died with it) and were reset; without this the peers would keep sending on them
    /// until something on this side had a frame to send.
    pub fn handshake_known_peers(&mut self, now_ms: u64) {
        for id in 0..self.peers.len() {
            if self.peers[id].endpoint.is_some() {
                self.request_handshake(now_ms, id as u16);
            }
        }
    }

    pub fn request_handshake(&mut self, now_ms: u64, id: u16) {
        if (id as usize) < self.peers.len() && self.peers[id as usize].pending.is_none() {
            let p = &mut self.peers[id as usize];
            if p.dynamic && p.current.is_none() && p.punch_started_ms.is_none() {
                p.punch_started_ms = Some(now_ms);
                p.relay_tried = false;
            }
            self.initiate(now_ms, id);
        }
    }
}
