//! Byte accounting of every live GPU allocation, so memory can be reported and
//! the planner checked against what was really used.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live and peak bytes of GPU buffers owned by webpeft on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// Bytes of every buffer held right now (tensors, and the pool's).
    pub live_bytes: u64,
    /// The most `live_bytes` has been since creation or the last `reset_peak`.
    pub peak_bytes: u64,
    /// Number of live buffers.
    pub live_buffers: u64,
    /// Of `live_bytes`, freed op outputs the pool keeps for reuse.
    pub pooled_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct MemoryTracker {
    live: AtomicU64,
    peak: AtomicU64,
    buffers: AtomicU64,
}

impl MemoryTracker {
    pub(crate) fn alloc(&self, bytes: u64) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.buffers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn free(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
        self.buffers.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
            live_buffers: self.buffers.load(Ordering::Relaxed),
            pooled_bytes: 0,
        }
    }

    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}
