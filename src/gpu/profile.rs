//! Where GPU time goes: with profiling on, every dispatch of a submission runs
//! in its own compute pass with timestamp queries at its start and end, and
//! [`Gpu::take_profile`](super::Gpu::take_profile) sums the times by kernel
//! entry point. Needs `Features::TIMESTAMP_QUERY`; costs a pass per dispatch,
//! so it is for benchmarks, never for training runs.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// Queries per set (wgpu's maximum): two per dispatch.
pub(crate) const QUERIES_PER_SET: u32 = 4096;

/// Time spent in one kernel entry point.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    /// `family/entry_point`, e.g. `qmatmul/qgemm_nf4`.
    pub kernel: String,
    pub calls: u64,
    pub total_ms: f64,
}

/// Resolved timestamps of one submission waiting to be read back: two u64
/// ticks per dispatch, in `labels`' order.
pub(crate) struct PendingTimes {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) labels: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Profiler {
    pub(crate) enabled: std::sync::atomic::AtomicBool,
    pub(crate) pending: Mutex<Vec<PendingTimes>>,
}

impl Profiler {
    pub(crate) fn is_on(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn push(&self, p: PendingTimes) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    pub(crate) fn take(&self) -> Vec<PendingTimes> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Sums (end − start) per label from raw ticks, slowest kernel first.
pub(crate) fn summarise(runs: &[(Vec<u64>, Vec<String>)], period_ns: f64) -> Vec<KernelTime> {
    let mut by: HashMap<&str, (u64, f64)> = HashMap::new();
    for (ticks, labels) in runs {
        for (j, label) in labels.iter().enumerate() {
            let (start, end) = (ticks[2 * j], ticks[2 * j + 1]);
            let e = by.entry(label.as_str()).or_default();
            e.0 += 1;
            e.1 += end.saturating_sub(start) as f64 * period_ns / 1e6;
        }
    }
    let mut out: Vec<KernelTime> =
        by.into_iter().map(|(k, (calls, ms))| KernelTime { kernel: k.to_string(), calls, total_ms: ms }).collect();
    out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    out
}
