//! Handshake machinery that is not Noise itself: the responder's cookie mechanism and the
//! per-source rate limiter (boringtun keeps these in separate files too).

pub mod cookie;
pub mod rate_limiter;
