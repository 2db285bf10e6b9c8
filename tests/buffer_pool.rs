//! The buffer pool: an op's output freed mid-recording is reused by the next
//! output of its size in the same submission, and the results stay right;
//! reused zeros are really zero; pooled buffers refuse queue writes; two open
//! recorders turn reuse off; the pool's idle bytes are released after a few
//! submissions or on `trim_memory`. One test: the counters are per device.

mod common;

use common::{block_on, gpu, randn};
use webpeft::gpu::{DType, Recorder, Tensor};
use webpeft::kernels::elementwise::{add, scale};
use webpeft::Error;

#[test]
fn freed_outputs_are_reused_within_a_submission_and_results_stay_right() {
    let gpu = gpu();
    gpu.trim_memory();
    let n = 1000;
    let a = randn(1, n);
    let x = Tensor::from_slice(gpu, &[n], &a).unwrap();

    // A chain x → 2x → 4x → … where each step's input is dropped once used:
    // 8 steps of one size need 2 buffers, not 8.
    let before = gpu.memory().live_buffers;
    let mut rec = Recorder::new(gpu);
    let mut y = scale(&mut rec, &x, 2.0).unwrap();
    for _ in 0..7 {
        y = scale(&mut rec, &y, 2.0).unwrap();
    }
    rec.submit().unwrap();
    let got = block_on(y.to_vec::<f32>(gpu)).unwrap();
    let want: Vec<f32> = a.iter().map(|v| v * 256.0).collect();
    assert_eq!(got, want);
    let made = gpu.memory().live_buffers - before;
    assert!(made <= 2, "a chain of 8 outputs made {made} buffers");

    // A reused buffer handed out as zeros is cleared in order: it held
    // 256·x a moment ago.
    drop(y);
    let mut rec = Recorder::new(gpu);
    let z = rec.zeros(&[n], DType::F32).unwrap();
    let sum = add(&mut rec, &z, &x).unwrap();
    rec.submit().unwrap();
    assert_eq!(gpu.memory().live_buffers - before, 2, "z and the sum reused the pool");
    assert_eq!(block_on(z.to_vec::<f32>(gpu)).unwrap(), vec![0.0; n]);
    assert_eq!(block_on(sum.to_vec::<f32>(gpu)).unwrap(), a);

    // A pooled output cannot be written through the queue (it would land
    // before recorded work that still reads the old contents).
    let err = sum.write(gpu, &a).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "Tensor::write", .. }), "{err}");

    // With two recorders open, nothing is reused: the second could be
    // submitted first and overwrite what the first still reads.
    drop((z, sum));
    let idle = gpu.memory().pooled_bytes;
    assert!(idle >= 2 * 4 * n as u64);
    let mut first = Recorder::new(gpu);
    let mut second = Recorder::new(gpu);
    let _w = scale(&mut second, &x, 3.0).unwrap();
    assert_eq!(gpu.memory().pooled_bytes, idle, "no reuse with two recorders open");
    drop(second);
    let _v = scale(&mut first, &x, 3.0).unwrap();
    assert_eq!(gpu.memory().pooled_bytes, idle - 4 * n as u64, "reuse again with one open");
    first.submit().unwrap();

    // Idle buffers nobody asks for go after a few submissions, or at once on trim.
    for _ in 0..4 {
        let mut rec = Recorder::new(gpu);
        let _ = scale(&mut rec, &Tensor::from_slice(gpu, &[3], &[1.0f32, 2.0, 3.0]).unwrap(), 1.0).unwrap();
        rec.submit().unwrap();
    }
    assert!(gpu.memory().pooled_bytes < 4 * n as u64, "{:?}", gpu.memory());
    gpu.trim_memory();
    assert_eq!(gpu.memory().pooled_bytes, 0);
}
