//! Bind groups kept between submissions (`src/gpu/bind_groups.rs`): a kept
//! group is reused with the new submission's parameters, never a stale
//! block; groups of released buffers are dropped; two threads submitting at
//! once each get their own parameters.

mod common;

use common::{block_on, gpu, randn};
use webpeft::gpu::{Recorder, Tensor};
use webpeft::kernels::elementwise::scale_inplace;

/// x ← x·s, one submission for each s, none waited for.
fn scale_each(x: &Tensor, factors: &[f32]) {
    for &s in factors {
        let mut rec = Recorder::new(gpu());
        scale_inplace(&mut rec, x, s).unwrap();
        rec.submit().unwrap();
    }
}

#[test]
fn kept_groups_take_each_submissions_parameters_and_go_with_their_buffers() {
    let gpu = gpu();
    gpu.trim_memory();
    assert_eq!(gpu.kept_bind_groups(), 0, "trim_memory drops every kept group");
    let a = randn(3, 777);
    let x = Tensor::from_slice(gpu, &[777], &a).unwrap();
    // The same pipeline, buffer and parameter offset three times: one group,
    // three different scales, in order.
    scale_each(&x, &[2.0, 3.0, 5.0]);
    assert_eq!(gpu.kept_bind_groups(), 1);
    let want: Vec<f32> = a.iter().map(|v| v * 2.0 * 3.0 * 5.0).collect();
    assert_eq!(block_on(x.to_vec::<f32>(gpu)).unwrap(), want);

    // Its buffer released: the next submission drops the group (it would
    // otherwise hold the buffer's memory).
    drop(x);
    let y = Tensor::from_slice(gpu, &[5], &[1.0; 5]).unwrap();
    scale_each(&y, &[4.0]);
    assert_eq!(gpu.kept_bind_groups(), 1, "only y's group is left");
    assert_eq!(block_on(y.to_vec::<f32>(gpu)).unwrap(), vec![4.0; 5]);

    // Threads submitting at once each get their own parameters (one test
    // function: the counts above need no other submissions in between).
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let a = randn(10 + t, 513);
                let x = Tensor::from_slice(common::gpu(), &[513], &a).unwrap();
                let s = 1.0 + t as f32 / 8.0; // a power of two's fraction: exact products
                scale_each(&x, &[s; 24]);
                let got = block_on(x.to_vec::<f32>(common::gpu())).unwrap();
                let want: Vec<f32> = a.iter().map(|v| (0..24).fold(*v, |acc, _| acc * s)).collect();
                assert_eq!(got, want, "thread {t}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
