//! DoRA's kernels (`shaders/dora.wgsl`), PEFT's `DoraLinearLayer`
//! (peft/tuners/lora/dora.py), on a dense block of rows `row_off..row_off +
//! rows` of a Linear's (out, in) weight (a dequantized or copied chunk, to
//! which the caller has added s·B·A):
//!
//! - [`magnitude_scale`]: n = ‖W + s·B·A‖ per row, g = m / n, and 1 / n
//!   (the magnitude's gradient divides by the norm; PEFT's init sets m = n);
//! - [`scale_rows`]: the block's rows times g, or divided by g (merge, unmerge).
//!
//! Nothing is submitted or read back here.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per workgroup (one workgroup per row).
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row_off: u32,
    _pad: u32,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Dora, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["magnitude_scale", "scale_rows", "unscale_rows"].map(key).to_vec()
}

/// (rows, cols) of the block w, checking that its rows from `row_off` fit the
/// (out) vectors.
fn block(op: &'static str, w: &Tensor, row_off: usize, vectors: &[(&str, &Tensor)]) -> Result<(usize, usize)> {
    let (rows, cols) = match w.shape() {
        [r, c] => (*r, *c),
        s => return Err(Error::shape(op, format!("w is {s:?}, expected (rows, in)"))),
    };
    for (arg, v) in vectors {
        if v.shape().len() != 1 || row_off + rows > v.numel() {
            return Err(Error::shape(
                op,
                format!("rows {row_off}..{} of w do not fit `{arg}` {:?}, expected (out)", row_off + rows, v.shape()),
            ));
        }
    }
    u32_count(op, "element count", rows * cols)?;
    Ok((rows, cols))
}

fn params(rows: usize, cols: usize, row_off: usize) -> Params {
    Params { rows: rows as u32, cols: cols as u32, row_off: row_off as u32, _pad: 0 }
}

/// The per-row outputs of [`magnitude_scale`], (out) each.
#[derive(Clone, Debug)]
pub struct Scales {
    /// n = ‖W + s·B·A‖
    pub n: Tensor,
    /// g = m / n
    pub g: Tensor,
    /// 1 / n
    pub inv_n: Tensor,
}

/// For a block w (rows, in) holding rows `row_off..row_off + rows` of
/// `W + scaling·B·A`, with i = row_off + the block's row: n[i] = ‖w[row]‖₂,
/// g[i] = m[i] / n[i], inv_n[i] = 1 / n[i]; m and the outputs are (out).
pub fn magnitude_scale(rec: &mut Recorder, w: &Tensor, row_off: usize, m: &Tensor, out: &Scales) -> Result<()> {
    const OP: &str = "dora magnitude_scale";
    let all = [("w", w), ("m", m), ("n", &out.n), ("g", &out.g), ("inv_n", &out.inv_n)];
    all_f32(OP, &all)?;
    let (rows, cols) = block(OP, w, row_off, &all[1..])?;
    if all[2..].iter().any(|(_, t)| t.numel() != m.numel()) {
        return Err(Error::shape(OP, format!("n, g and inv_n must have the {} values of m", m.numel())));
    }
    for (i, (a, x)) in all.iter().enumerate() {
        if let Some((b, _)) = all[i + 1..].iter().find(|(_, y)| x.same_buffer(y)) {
            return Err(Error::invalid(OP, format!("`{a}` and `{b}` share a buffer")));
        }
    }
    let bound = [(1, w), (2, m), (3, &out.g), (4, &out.inv_n), (7, &out.n)];
    rec.dispatch_bound(&key("magnitude_scale"), &params(rows, cols, row_off), &bound, grid_1d(rows))
}

/// Row i of the block w (rows, in), row `row_off + i` of its Linear, times
/// g[row_off + i] (or divided by it with `divide`), in place; g is (out).
pub fn scale_rows(rec: &mut Recorder, w: &Tensor, row_off: usize, g: &Tensor, divide: bool) -> Result<()> {
    const OP: &str = "dora scale_rows";
    all_f32(OP, &[("w", w), ("g", g)])?;
    let (rows, cols) = block(OP, w, row_off, &[("g", g)])?;
    if w.same_buffer(g) {
        return Err(Error::invalid(OP, "w and g share a buffer"));
    }
    let entry = if divide { "unscale_rows" } else { "scale_rows" };
    rec.dispatch_bound(&key(entry), &params(rows, cols, row_off), &[(5, w), (6, g)], grid_1d(rows))
}
