//! The three membership parsers (certificates, revocations, policies) on arbitrary bytes:
//! as whole statements, as bodies signed by a fixed authority (random bytes almost never
//! carry a valid signature, so this is how the body parsers are reached), and as text. No
//! panic; what parses re-signs to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omni_proto::Identity;
use omni_proto::membership::cert::SignedCertificate;
use omni_proto::membership::policy::SignedPolicy;
use omni_proto::membership::revocation::SignedRevocation;
use omni_proto::membership::{self, Kind};

fuzz_target!(|data: &[u8]| {
    let authority = Identity::from_seed([7; 32]);
    for kind in [Kind::Certificate, Kind::Revocation, Kind::Policy] {
        let signed = membership::seal(kind, &data[..data.len().min(membership::MAX_BODY)], &authority);
        for bytes in [data, &signed[..]] {
            match kind {
                Kind::Certificate => {
                    if let Ok(s) = SignedCertificate::parse(bytes) {
                        if s.authority == authority.public_key() {
                            assert_eq!(s.cert.sign(&authority).unwrap(), bytes);
                        }
                        let _ = s.admit(&s.authority, &s.cert.cluster, s.cert.not_before);
                    }
                }
                Kind::Revocation => {
                    if let Ok(s) = SignedRevocation::parse(bytes)
                        && s.authority == authority.public_key()
                    {
                        assert_eq!(s.revocation.sign(&authority).unwrap(), bytes);
                    }
                }
                Kind::Policy => {
                    if let Ok(s) = SignedPolicy::parse(bytes) {
                        if s.authority == authority.public_key() {
                            assert_eq!(s.policy.sign(&authority).unwrap(), bytes);
                        }
                        let groups = vec!["a".to_string()];
                        let _ = s.policy.permission(&groups, &groups).allows(0x0800, Some(1));
                    }
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = membership::from_text(kind, text);
        }
    }
});
