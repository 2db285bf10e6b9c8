//! Elementwise f32 arithmetic (`shaders/elementwise.wgsl`): residual adds,
//! gradient accumulation and scaling, fills and copies. Tensors are flat here:
//! only element counts matter, but operands must have the same shape so a
//! mix-up is caught.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, same_shape, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per workgroup (one value each).
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    s: f32,
    seed: u32,
    threshold: u32,
    /// The column entries' row length.
    cols: u32,
}

fn launch(rec: &mut Recorder, op: &'static str, entry: &'static str, s: f32, bound: &[(u32, &Tensor)]) -> Result<()> {
    launch_seeded(rec, op, entry, s, (0, 0), bound)
}

fn launch_seeded(
    rec: &mut Recorder,
    op: &'static str,
    entry: &'static str,
    s: f32,
    (seed, threshold): (u32, u32),
    bound: &[(u32, &Tensor)],
) -> Result<()> {
    let n = bound[0].1.numel();
    let p = Params { n: u32_count(op, "element count", n)?, s, seed, threshold, cols: 1 };
    rec.dispatch_bound(&key(entry), &p, bound, grid_1d(n.div_ceil(WG as usize)))
}

fn not_aliased(op: &'static str, acc: &Tensor, b: &Tensor) -> Result<()> {
    if acc.same_buffer(b) {
        return Err(Error::invalid(op, "the updated tensor and the operand share a buffer"));
    }
    Ok(())
}

/// out = a + b. a, b, out: same shape.
pub fn add(rec: &mut Recorder, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    all_f32("add", &[("a", a), ("b", b)])?;
    same_shape("add", ("a", a), ("b", b))?;
    let out = rec.alloc(a.shape(), DType::F32)?;
    launch(rec, "add", "add", 0.0, &[(1, a), (2, b), (3, &out)])?;
    Ok(out)
}

/// out = a · b (elementwise). a, b, out: same shape.
pub fn mul(rec: &mut Recorder, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    all_f32("mul", &[("a", a), ("b", b)])?;
    same_shape("mul", ("a", a), ("b", b))?;
    let out = rec.alloc(a.shape(), DType::F32)?;
    launch(rec, "mul", "mul", 0.0, &[(1, a), (2, b), (3, &out)])?;
    Ok(out)
}

/// out (…, C) = x ⊙ l (C), every row of x scaled by l. x and out: same
/// shape.
pub fn mul_columns(rec: &mut Recorder, x: &Tensor, l: &Tensor) -> Result<Tensor> {
    const OP: &str = "mul_columns";
    all_f32(OP, &[("x", x), ("l", l)])?;
    let cols = column_count(OP, x, &[("l", l)])?;
    let out = rec.alloc(x.shape(), DType::F32)?;
    launch_columns(rec, OP, "mul_columns", cols, &[(1, x), (2, l), (3, &out)])?;
    Ok(out)
}

/// The row length of x (…, C), checking each vector holds one value a column.
fn column_count(op: &'static str, x: &Tensor, vectors: &[(&str, &Tensor)]) -> Result<usize> {
    let cols = x.shape().last().copied().unwrap_or(0);
    for (name, t) in vectors {
        if t.numel() != cols {
            let detail = format!("{name} {:?} does not hold one value a column of {:?}", t.shape(), x.shape());
            return Err(Error::shape(op, detail));
        }
    }
    Ok(cols)
}

/// A column entry over `bound[0]`'s elements, rows of `cols`.
fn launch_columns(
    rec: &mut Recorder,
    op: &'static str,
    entry: &'static str,
    cols: usize,
    bound: &[(u32, &Tensor)],
) -> Result<()> {
    let n = bound[0].1.numel();
    if n == 0 {
        return Ok(());
    }
    let p = Params { n: u32_count(op, "element count", n)?, s: 0.0, seed: 0, threshold: 0, cols: cols as u32 };
    rec.dispatch_bound(&key(entry), &p, bound, grid_1d(n.div_ceil(WG as usize)))
}

/// acc (…, C) = acc ⊙ g (C) (+ shift (C)), every row scaled by g (and
/// shifted) in place: DoRA's `g ⊙ y + (1 − g) ⊙ b` in a generation. acc
/// shares no buffer with g or shift.
pub fn scale_columns_inplace(rec: &mut Recorder, acc: &Tensor, g: &Tensor, shift: Option<&Tensor>) -> Result<()> {
    const OP: &str = "scale_columns_inplace";
    let mut vectors = vec![("g", g)];
    vectors.extend(shift.map(|s| ("shift", s)));
    all_f32(OP, &[("acc", acc)])?;
    all_f32(OP, &vectors)?;
    let cols = column_count(OP, acc, &vectors)?;
    for (_, t) in &vectors {
        not_aliased(OP, acc, t)?;
    }
    match shift {
        Some(b) => launch_columns(rec, OP, "affine_columns", cols, &[(4, acc), (1, g), (2, b)]),
        None => launch_columns(rec, OP, "scale_columns", cols, &[(4, acc), (1, g)]),
    }
}

/// out = s · x. x, out: same shape.
pub fn scale(rec: &mut Recorder, x: &Tensor, s: f32) -> Result<Tensor> {
    all_f32("scale", &[("x", x)])?;
    let out = rec.alloc(x.shape(), DType::F32)?;
    launch(rec, "scale", "scale", s, &[(1, x), (3, &out)])?;
    Ok(out)
}

/// acc += s · b, in place. acc, b: same shape, different buffers.
pub fn add_scaled(rec: &mut Recorder, acc: &Tensor, b: &Tensor, s: f32) -> Result<()> {
    all_f32("add_scaled", &[("acc", acc), ("b", b)])?;
    same_shape("add_scaled", ("acc", acc), ("b", b))?;
    not_aliased("add_scaled", acc, b)?;
    launch(rec, "add_scaled", "add_scaled", s, &[(4, acc), (2, b)])
}

/// x = s · x, in place.
pub fn scale_inplace(rec: &mut Recorder, x: &Tensor, s: f32) -> Result<()> {
    all_f32("scale_inplace", &[("x", x)])?;
    launch(rec, "scale_inplace", "scale_inplace", s, &[(4, x)])
}

/// Every element of x becomes `value`.
pub fn fill(rec: &mut Recorder, x: &Tensor, value: f32) -> Result<()> {
    all_f32("fill", &[("x", x)])?;
    launch(rec, "fill", "fill", value, &[(4, x)])
}

/// Inverted dropout with probability `p`: out = x · keep / (1 − p), where
/// `keep` is a fixed function of (`seed`, element index), so the backward is
/// this same call on dy with the same seed. p = 0 is a plain copy; p must be
/// in [0, 1). Element i is kept when the top 24 bits of
/// `pcg_hash(i ^ pcg_hash(seed))` are at least [`dropout_threshold`]`(p)`.
pub fn dropout(rec: &mut Recorder, x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    const OP: &str = "dropout";
    all_f32(OP, &[("x", x)])?;
    let threshold = dropout_threshold(p)
        .ok_or_else(|| Error::invalid(OP, format!("the dropout probability must be in [0, 1), got {p}")))?;
    let out = rec.alloc(x.shape(), DType::F32)?;
    let scale = dropout_scale(p);
    launch_seeded(rec, OP, "dropout", scale, (seed, threshold), &[(1, x), (3, &out)])?;
    Ok(out)
}

/// x += magnitude · (2u − 1) in place, u uniform in [0, 1) from the top 24
/// bits of `pcg_hash(i ^ pcg_hash(seed))` for element i: noise uniform in
/// [−magnitude, magnitude), a fixed function of (`seed`, index) as dropout's
/// mask (NEFTune's noise on the embeddings; `kernels::reference::dropout::uniform_noise`).
pub fn add_uniform_noise(rec: &mut Recorder, x: &Tensor, magnitude: f32, seed: u32) -> Result<()> {
    const OP: &str = "add_uniform_noise";
    all_f32(OP, &[("x", x)])?;
    if !(magnitude.is_finite() && magnitude >= 0.0) {
        return Err(Error::invalid(OP, format!("the noise magnitude must be finite and ≥ 0, got {magnitude}")));
    }
    launch_seeded(rec, OP, "uniform_noise", magnitude, (seed, 0), &[(4, x)])
}

/// The 24-bit drop threshold for probability p: an element is dropped with
/// probability threshold / 2²⁴ ≈ p. None unless 0 ≤ p < 1.
pub fn dropout_threshold(p: f32) -> Option<u32> {
    if !(0.0..1.0).contains(&p) {
        return None;
    }
    Some((p as f64 * (1u64 << 24) as f64).round() as u32)
}

/// What a kept element is multiplied by: 1 / (1 − p), in f32.
pub fn dropout_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// dst = src, any dtype: the same element count and dtype (shapes may differ,
/// as a reshape). Recorded as a buffer copy.
pub fn copy(rec: &mut Recorder, src: &Tensor, dst: &Tensor) -> Result<()> {
    if src.dtype() != dst.dtype() {
        return Err(Error::DType { op: "copy", arg: "dst", expected: src.dtype().name(), got: dst.dtype().name() });
    }
    if src.numel() != dst.numel() {
        return Err(Error::shape(
            "copy",
            format!("src {:?} and dst {:?} hold different element counts", src.shape(), dst.shape()),
        ));
    }
    if src.same_buffer(dst) {
        return Ok(());
    }
    // Whole words: a tensor's buffer is padded to 4 bytes, so an odd-sized u8/f16 tail copies its padding too.
    let bytes = (src.numel() * src.dtype().size()).div_ceil(4) as u64 * 4;
    rec.copy(src, 0, dst, 0, bytes)
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Elementwise, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    [
        "add",
        "mul",
        "scale",
        "add_scaled",
        "scale_inplace",
        "fill",
        "dropout",
        "uniform_noise",
        "mul_columns",
        "scale_columns",
        "affine_columns",
    ]
    .map(key)
    .to_vec()
}
