//! Handshake machinery that is not Noise itself: the responder's cookie mechanism (the
//! per-source rate limiter is `omni_proto::rate_limiter`, shared with the Nucleus).

pub mod cookie;
