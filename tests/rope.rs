//! RoPE forward and backward (out of place and in place, with a position
//! offset into the tables) against the CPU reference, and the backward
//! against finite differences of the reference forward.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::assert_close;
use webpeft::kernels::reference::rope as cpu;
use webpeft::kernels::rope::{rope_backward, rope_backward_inplace, rope_forward, rope_forward_inplace};
use webpeft::model::llama::rope::{rope_cos_sin, rope_inv_freq, RopeScaling};
use webpeft::{DType, Error, Tensor};

// Two products and a sum per value: the shader compiler may fuse one into an
// FMA, so allow an ulp or two of O(1) values.
const ABS: f32 = 1e-6;
const REL: f32 = 1e-6;
const FD_TOL: f32 = 2e-3;

const LLAMA3: RopeScaling =
    RopeScaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 };

/// (cos, sin), each (rows, head_dim).
type Tables = (Vec<f32>, Vec<f32>);

/// Tables for positions 0..rows, and the rows `offset..offset + seq` of them.
fn tables(rows: usize, head_dim: usize, offset: usize, seq: usize) -> (Tables, Tables) {
    let inv = rope_inv_freq(head_dim, 10000.0, Some(&LLAMA3));
    let positions: Vec<u32> = (0..rows as u32).collect();
    let (cos, sin) = rope_cos_sin(&inv, &positions);
    let part = |t: &[f32]| t[offset * head_dim..(offset + seq) * head_dim].to_vec();
    let sliced = (part(&cos), part(&sin));
    ((cos, sin), sliced)
}

#[test]
fn matches_reference_with_offset_and_in_place() {
    let gpu = gpu();
    let (batch, seq, heads, head_dim, rows) = (2, 13, 6, 20, 40);
    for (offset, seed) in [(0, 1), (7, 2), (rows - seq, 3)] {
        let shape = [batch, seq, heads, head_dim];
        let x = randn(seed, batch * seq * heads * head_dim);
        let ((cos, sin), (cos_s, sin_s)) = tables(rows, head_dim, offset, seq);
        let tx = Tensor::from_slice(gpu, &shape, &x).unwrap();
        let tio = Tensor::from_slice(gpu, &shape, &x).unwrap();
        let tback = Tensor::from_slice(gpu, &shape, &x).unwrap();
        let tc = Tensor::from_slice(gpu, &[rows, head_dim], &cos).unwrap();
        let ts = Tensor::from_slice(gpu, &[rows, head_dim], &sin).unwrap();
        let mut rec = Recorder::new(gpu);
        let y = rope_forward(&mut rec, &tx, &tc, &ts, offset).unwrap();
        rope_forward_inplace(&mut rec, &tio, &tc, &ts, offset).unwrap();
        let dx = rope_backward(&mut rec, &tx, &tc, &ts, offset).unwrap();
        rope_backward_inplace(&mut rec, &tback, &tc, &ts, offset).unwrap();
        rec.submit().unwrap();

        let mut want_y = x.clone();
        cpu::rope_forward(&mut want_y, &cos_s, &sin_s, batch, seq, heads, head_dim);
        let mut want_dx = x.clone();
        cpu::rope_backward(&mut want_dx, &cos_s, &sin_s, batch, seq, heads, head_dim);
        let read = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();
        assert_close(&format!("forward, offset {offset}"), &read(&y), &want_y, ABS, REL);
        assert_close(&format!("forward in place, offset {offset}"), &read(&tio), &want_y, ABS, REL);
        assert_close(&format!("backward, offset {offset}"), &read(&dx), &want_dx, ABS, REL);
        assert_close(&format!("backward in place, offset {offset}"), &read(&tback), &want_dx, ABS, REL);
    }
}

#[test]
fn backward_matches_finite_differences() {
    let gpu = gpu();
    let (batch, seq, heads, head_dim, offset) = (2, 5, 3, 12, 4);
    let shape = [batch, seq, heads, head_dim];
    let x = randn(10, batch * seq * heads * head_dim);
    let dy = randn(11, x.len());
    let ((cos, sin), (cos_s, sin_s)) = tables(offset + seq, head_dim, offset, seq);
    let tdy = Tensor::from_slice(gpu, &shape, &dy).unwrap();
    let tc = Tensor::from_slice(gpu, &[offset + seq, head_dim], &cos).unwrap();
    let ts = Tensor::from_slice(gpu, &[offset + seq, head_dim], &sin).unwrap();
    let mut rec = Recorder::new(gpu);
    let dx = rope_backward(&mut rec, &tdy, &tc, &ts, offset).unwrap();
    rec.submit().unwrap();
    let dx: Vec<f32> = block_on(dx.to_vec(gpu)).unwrap();
    let idx = sample(x.len(), 40, 12);
    let num = numeric_grad(&x, &idx, 1e-2, |x| {
        let mut y = x.to_vec();
        cpu::rope_forward(&mut y, &cos_s, &sin_s, batch, seq, heads, head_dim);
        dot64(&y, &dy)
    });
    assert_close("dx vs finite differences", &gather(&dx, &idx), &num, FD_TOL, FD_TOL);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let x = Tensor::zeros(gpu, &[1, 4, 2, 8], DType::F32).unwrap();
    let table = Tensor::zeros(gpu, &[6, 8], DType::F32).unwrap();
    // Positions 3..7 need 7 rows; the table has 6.
    let err = rope_forward(&mut rec, &x, &table, &table, 3).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rope_forward", .. }), "{err}");
    let odd = Tensor::zeros(gpu, &[1, 4, 2, 7], DType::F32).unwrap();
    let err = rope_backward(&mut rec, &odd, &table, &table, 0).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rope_backward", .. }), "{err}");
    let flat = Tensor::zeros(gpu, &[4, 16], DType::F32).unwrap();
    let err = rope_forward_inplace(&mut rec, &flat, &table, &table, 0).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let wrong_d = Tensor::zeros(gpu, &[6, 10], DType::F32).unwrap();
    let err = rope_forward(&mut rec, &x, &wrong_d, &table, 0).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let utable = Tensor::zeros(gpu, &[6, 8], DType::U32).unwrap();
    let err = rope_backward_inplace(&mut rec, &x, &table, &utable, 0).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "sin", expected: "f32", got: "u32", .. }), "{err}");
    assert!(rec.is_empty());
}
