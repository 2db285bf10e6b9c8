//! Reuse of scratch buffers. An op's output allocated through a
//! [`Recorder`](super::Recorder) comes from this pool; when its last handle
//! drops, the buffer goes back, even while recorded work still reads it, and
//! a later allocation of the same size in the same submission takes it over.
//! That is safe because one command buffer runs in order, with a barrier
//! between dispatches. It is what lets a step's transient tensors share
//! memory, and gradient checkpointing free a block's activations.
//!
//! Two rules keep it safe:
//! - a pooled buffer is only written by recorded work, never by
//!   `queue.write_buffer` (which would run before the whole submission);
//! - buffers are only reused while at most one recorder is open, so reuse
//!   never reorders work between two submissions.
//!
//! A freed buffer that no allocation has wanted for [`KEEP_SUBMITS`]
//! submissions is released, so sizes that stop recurring (generation's
//! growing attention rows) do not pile up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::tensor::Storage;

/// Submissions a freed buffer waits for reuse before it is released.
const KEEP_SUBMITS: u64 = 3;

#[derive(Default)]
struct Free {
    /// Freed buffers by byte size, each with the submission count at its return.
    by_size: HashMap<u64, Vec<(Arc<Storage>, u64)>>,
    idle_bytes: u64,
    submits: u64,
    open_recorders: usize,
}

/// The free list of one device.
#[derive(Default)]
pub(crate) struct Pool {
    free: Mutex<Free>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        // A panic while holding the lock cannot leave the lists inconsistent
        // (every update is a push or a pop), so a poisoned lock is still usable.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A freed buffer of exactly `bytes`, if reuse is safe now.
    pub(crate) fn take(&self, bytes: u64) -> Option<Arc<Storage>> {
        let mut f = self.lock();
        if f.open_recorders > 1 {
            return None;
        }
        let (storage, _) = f.by_size.get_mut(&bytes)?.pop()?;
        f.idle_bytes -= bytes;
        Some(storage)
    }

    /// The last handle of a pooled tensor dropped.
    pub(crate) fn give_back(&self, storage: Arc<Storage>) {
        let mut f = self.lock();
        let bytes = storage.bytes();
        let at = f.submits;
        f.idle_bytes += bytes;
        f.by_size.entry(bytes).or_default().push((storage, at));
    }

    pub(crate) fn recorder_opened(&self) {
        self.lock().open_recorders += 1;
    }

    pub(crate) fn recorder_closed(&self) {
        let mut f = self.lock();
        f.open_recorders = f.open_recorders.saturating_sub(1);
    }

    /// A submission went out: release buffers nobody wanted for a while.
    pub(crate) fn submitted(&self) {
        let released = {
            let mut f = self.lock();
            f.submits += 1;
            let now = f.submits;
            let mut released = Vec::new();
            for list in f.by_size.values_mut() {
                list.retain(|(s, at)| {
                    let keep = now - at < KEEP_SUBMITS;
                    if !keep {
                        released.push(s.clone());
                    }
                    keep
                });
            }
            f.by_size.retain(|_, l| !l.is_empty());
            f.idle_bytes -= released.iter().map(|s| s.bytes()).sum::<u64>();
            released
        };
        drop(released); // outside the lock: dropping a Storage updates the tracker
    }

    /// Release every idle buffer now.
    pub(crate) fn trim(&self) {
        let released: Vec<_> = {
            let mut f = self.lock();
            f.idle_bytes = 0;
            f.by_size.drain().collect()
        };
        drop(released);
    }

    /// Bytes of freed buffers waiting for reuse.
    pub(crate) fn idle_bytes(&self) -> u64 {
        self.lock().idle_bytes
    }
}
