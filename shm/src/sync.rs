//! Atomics and cells, from `loom` when the crate is built with `--cfg loom`, else from
//! `core`. Only the ring (the code whose memory ordering matters across processes) is
//! compiled under loom.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A value alone on its cache line (two, in fact: adjacent-line prefetch pairs lines), so
/// the producer's and the consumer's indices never share one.
#[repr(C, align(128))]
#[derive(Default)]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
