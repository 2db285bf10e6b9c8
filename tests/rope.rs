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
use webpeft::kernels::rope::{rope_backward, rope_backward_inplace, rope_cached, rope_forward, rope_forward_inplace};
use webpeft::model::llama::rope::{rope_cos_sin, rope_inv_freq, Llama3Scaling, RopeScaling};
use webpeft::{DType, Error, Tensor};

// Two products and a sum per value: the shader compiler may fuse one into an
// FMA, so allow an ulp or two of O(1) values.
const ABS: f32 = 1e-6;
const REL: f32 = 1e-6;
const FD_TOL: f32 = 2e-3;

const LLAMA3: RopeScaling = RopeScaling::Llama3(Llama3Scaling {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 64,
});

/// (cos, sin), each (rows, head_dim).
type Tables = (Vec<f32>, Vec<f32>);

/// Tables for positions 0..rows, and the rows `offset..offset + seq` of them.
fn tables(rows: usize, head_dim: usize, offset: usize, seq: usize) -> (Tables, Tables) {
    let inv = rope_inv_freq(head_dim, 10000.0, Some(&LLAMA3));
    let positions: Vec<u32> = (0..rows as u32).collect();
    let (cos, sin) = rope_cos_sin(&inv, &positions, 1.0);
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

/// A decoding step's RoPE and cache write in one launch (`rope_cached`)
/// against the reference: q rotated in place, k rotated into the cache rows
/// at the offset, v copied there exactly, every other cache row untouched
/// (caches full of garbage), k itself left as it was; GQA heads, a head_dim
/// that is no multiple of 4, batch 2, one step and a chunk.
#[test]
fn rope_cached_rotates_q_and_writes_the_caches() {
    let gpu = gpu();
    let (batch, heads, kv, hd, capacity) = (2, 6, 2, 10, 9);
    for (offset, seq) in [(4, 1), (2, 5)] {
        let ((cos, sin), (cs, sn)) = tables(16, hd, offset, seq);
        let q = randn(1, batch * seq * heads * hd);
        let k = randn(2, batch * seq * kv * hd);
        let v = randn(3, batch * seq * kv * hd);
        let (kc0, vc0) = (randn(4, batch * capacity * kv * hd), randn(5, batch * capacity * kv * hd));
        let t = |shape: &[usize], data: &[f32]| Tensor::from_slice(gpu, shape, data).unwrap();
        let (tq, tk, tv) =
            (t(&[batch, seq, heads, hd], &q), t(&[batch, seq, kv, hd], &k), t(&[batch, seq, kv, hd], &v));
        let (tkc, tvc) = (t(&[batch, capacity, kv, hd], &kc0), t(&[batch, capacity, kv, hd], &vc0));
        let (tcos, tsin) = (t(&[16, hd], &cos), t(&[16, hd], &sin));
        let mut rec = Recorder::new(gpu);
        rope_cached(&mut rec, &tq, &tk, &tv, &tcos, &tsin, &tkc, &tvc, offset).unwrap();
        rec.submit().unwrap();
        let read = |x: &Tensor| block_on(x.to_vec::<f32>(gpu)).unwrap();

        let mut want_q = q.clone();
        cpu::rope_forward(&mut want_q, &cs, &sn, batch, seq, heads, hd);
        assert_close("rope_cached q", &read(&tq), &want_q, ABS, REL);
        let mut rotated_k = k.clone();
        cpu::rope_forward(&mut rotated_k, &cs, &sn, batch, seq, kv, hd);
        let (mut want_kc, mut want_vc) = (kc0.clone(), vc0.clone());
        let row = kv * hd;
        for b in 0..batch {
            let (from, to) = ((b * seq) * row, (b * capacity + offset) * row);
            want_kc[to..to + seq * row].copy_from_slice(&rotated_k[from..from + seq * row]);
            want_vc[to..to + seq * row].copy_from_slice(&v[from..from + seq * row]);
        }
        assert_close("rope_cached k cache", &read(&tkc), &want_kc, ABS, REL);
        assert_eq!(read(&tvc), want_vc, "v copied exactly, other rows untouched");
        let kc = read(&tkc);
        for (i, (got, old)) in kc.iter().zip(&kc0).enumerate() {
            let r = (i / row) % capacity;
            if r < offset || r >= offset + seq {
                assert_eq!(got.to_bits(), old.to_bits(), "k cache row {r} must be untouched");
            }
        }
        assert_eq!(read(&tk), k, "k is left as it was");
    }
    // Caches too short for the rows, and k and v that do not match q, are refused.
    let z = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let (tab, q, k) = (z(&[16, 10]), z(&[1, 2, 6, 10]), z(&[1, 2, 2, 10]));
    let mut rec = Recorder::new(gpu);
    let err = rope_cached(&mut rec, &q, &k, &k, &tab, &tab, &z(&[1, 5, 2, 10]), &z(&[1, 5, 2, 10]), 4).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rope_cached", .. }), "{err}");
    let err = rope_cached(&mut rec, &q, &z(&[1, 3, 2, 10]), &k, &tab, &tab, &z(&[1, 9, 2, 10]), &z(&[1, 9, 2, 10]), 0)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(rec.is_empty());
}
