//! Per-kernel GPU time from timestamp queries: with profiling on, every
//! dispatch is counted under its kernel's name and timed; with it off,
//! nothing is collected. One test: profiling is a per-device switch.

mod common;

use common::{block_on, gpu, randn};
use webpeft::gpu::{Recorder, Tensor};
use webpeft::kernels::elementwise::{add, scale};

#[test]
fn profiling_counts_and_times_every_dispatch_by_kernel() {
    let gpu = gpu();
    assert!(gpu.info().timestamp_query, "lavapipe has timestamp queries");
    let x = Tensor::from_slice(gpu, &[4096], &randn(1, 4096)).unwrap();
    let record = |n: usize| {
        let mut rec = Recorder::new(gpu);
        let mut y = scale(&mut rec, &x, 2.0).unwrap();
        for _ in 1..n {
            y = scale(&mut rec, &y, 0.5).unwrap();
        }
        let _ = add(&mut rec, &y, &x).unwrap();
        rec.submit().unwrap();
    };

    record(2); // profiling off: nothing is kept
    gpu.set_profiling(true).unwrap();
    record(3);
    record(4);
    gpu.set_profiling(false).unwrap();
    let times = block_on(gpu.take_profile()).unwrap();
    let find = |k: &str| times.iter().find(|t| t.kernel == k).unwrap_or_else(|| panic!("no {k} in {times:?}"));
    assert_eq!(find("elementwise/scale").calls, 7, "{times:?}");
    assert_eq!(find("elementwise/add").calls, 1 + 1, "{times:?}");
    assert_eq!(times.len(), 2, "only the kernels that ran: {times:?}");
    assert!(times.iter().all(|t| t.total_ms.is_finite() && t.total_ms >= 0.0), "{times:?}");
    assert!(times.windows(2).all(|w| w[0].total_ms >= w[1].total_ms), "slowest first: {times:?}");
    assert!(block_on(gpu.take_profile()).unwrap().is_empty(), "taking the profile empties it");
}
