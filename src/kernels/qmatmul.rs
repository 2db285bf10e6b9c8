//! Matmul through a frozen, possibly quantized Linear weight
//! (`shaders/qmatmul.wgsl`, its subgroup variants in
//! `shaders/qmatmul_subgroup.wgsl`, and `matmul.wgsl` for f32 weights).
//!
//! A [`QWeight`] is split by rows into chunks that each fit one storage
//! binding: real browsers bind 128 MiB, and a 128k×2k f32 embedding or
//! lm_head is 1 GiB. Chunk `c` holds output rows `[row_start, row_start+rows)`,
//! so the forward pass writes a column slice of y per chunk, and the backward
//! pass sums each chunk's part of dx = dy·W (the first chunk writes, the rest
//! accumulate). NF4 chunks start on a 64-value block of the flattened weight,
//! so a chunk's blocks are exactly the whole weight's blocks.

use bytemuck::{Pod, Zeroable};

use super::blocked::{self, is_real_gpu, Blocks, GemvTiles, Vec4Loads};
use super::low_rank::{self, Fused, LowRank, StoreParams};
use super::matmul::{gemm_fused, subgroups_usable, Gemm, SgTiles, Tiles};
use super::output_op::{add_bias, FusedOp, OutputOp};
use super::quant::{dequantize, quantize, Layout, Packed};
use super::swiglu::swiglu_forward;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Gpu, Kernel, PipelineKey, Recorder, Tensor};
use crate::quant::{ComputeDtype, QuantError, QuantFormat, F16_COMPUTE_MAX_ABS};

/// The storage of one chunk of rows.
#[derive(Clone, Debug)]
pub enum ChunkData {
    F32(Tensor),
    Quant(Packed),
}

/// Rows `[row_start, row_start + rows)` of a weight, in one binding each.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub row_start: usize,
    pub rows: usize,
    pub data: ChunkData,
}

/// A frozen Linear weight (out = rows, in = cols), f32, f16, Q8_0 or NF4, split
/// into chunks that each fit the device's binding limit.
#[derive(Clone, Debug)]
pub struct QWeight {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<Chunk>,
    /// The largest |value| the weight holds (a bound for Q8_0: 128·|scale|).
    pub max_abs: f32,
    /// The arithmetic of its quantized kernels; see [`QWeight::set_compute`].
    compute: ComputeDtype,
}

impl QWeight {
    /// Whether every chunk is stored quantized (f16 included), not f32.
    fn quantized(&self) -> bool {
        self.chunks.iter().all(|c| matches!(c.data, ChunkData::Quant(_)))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Rows per chunk so that `bytes_per_row` rows fit one binding, rounded down
/// to keep NF4 blocks whole.
fn rows_per_chunk(
    gpu: &Gpu,
    what: &str,
    rows: usize,
    cols: usize,
    bytes_per_row: u64,
    format: QuantFormat,
) -> Result<usize> {
    let max = gpu.max_binding_bytes();
    let align = match format {
        QuantFormat::Nf4 => 64 / gcd(cols, 64),
        _ => 1,
    };
    let fit = (max / bytes_per_row.max(1)) as usize / align * align;
    if fit == 0 {
        return Err(Error::OverLimit {
            what: format!("{what}: {align} row(s) of {cols} values"),
            bytes: bytes_per_row * align as u64,
            limit: max,
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    Ok(fit.min(rows.max(1)))
}

impl QWeight {
    /// Upload a row-major (rows, cols) f32 weight and store it in `format`.
    /// Quantization runs on the GPU one chunk at a time, so the f32 copy on the
    /// GPU never exceeds one chunk.
    pub fn from_f32(gpu: &Gpu, data: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Result<QWeight> {
        if data.len() != rows * cols {
            return Err(Error::shape("QWeight::from_f32", format!("{} values for a {rows}x{cols} weight", data.len())));
        }
        if format == QuantFormat::Q8_0 && cols % crate::quant::Q8_0_BLOCK != 0 {
            return Err(crate::quant::QuantError::Q8RowLength { cols }.into());
        }
        if format == QuantFormat::F16 {
            crate::quant::check_f16_range(data)?;
        }
        let max_abs = data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        Self::from_chunks(gpu, (rows, cols), format, max_abs, |start, n| {
            Tensor::from_slice(gpu, &[n, cols], &data[start * cols..(start + n) * cols])
        })
    }

    /// A (rows, cols) weight of zeros in `format`, made on the GPU with no
    /// data from the CPU: the autotuner's operands (a product's speed does
    /// not depend on its values).
    pub fn zeros(gpu: &Gpu, rows: usize, cols: usize, format: QuantFormat) -> Result<QWeight> {
        if format == QuantFormat::Q8_0 && cols % crate::quant::Q8_0_BLOCK != 0 {
            return Err(crate::quant::QuantError::Q8RowLength { cols }.into());
        }
        Self::from_chunks(gpu, (rows, cols), format, 0.0, |_, n| Tensor::zeros(gpu, &[n, cols], DType::F32))
    }

    /// A trainable f32 copy of the weight, dequantized as the kernels see
    /// it, made on the GPU one chunk at a time (PEFT's `modules_to_save`
    /// starts as a copy of the frozen module).
    pub fn f32_copy(&self, gpu: &Gpu) -> Result<QWeight> {
        let cols = self.cols;
        Self::from_chunks(gpu, (self.rows, cols), QuantFormat::F32, self.max_abs, |start, n| {
            let out = Tensor::zeros(gpu, &[n, cols], DType::F32)?;
            let mut rec = Recorder::new(gpu);
            for c in self.chunks.iter().filter(|c| c.row_start < start + n && start < c.row_start + c.rows) {
                let f32_chunk = match &c.data {
                    ChunkData::F32(t) => t.clone(),
                    ChunkData::Quant(p) => dequantize(&mut rec, p)?,
                };
                let (from, to) = (start.max(c.row_start), (start + n).min(c.row_start + c.rows));
                let row = cols as u64 * 4;
                let (src, dst) = ((from - c.row_start) as u64 * row, (from - start) as u64 * row);
                rec.copy(&f32_chunk, src, &out, dst, (to - from) as u64 * row)?;
            }
            rec.submit()?;
            Ok(out)
        })
    }

    /// The weight whose rows `start..start + n` `chunk(start, n)` gives as
    /// f32 (n, cols) on the GPU, one chunk at a time, stored in `format`.
    fn from_chunks(
        gpu: &Gpu,
        (rows, cols): (usize, usize),
        format: QuantFormat,
        max_abs: f32,
        mut chunk: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<QWeight> {
        let per = rows_per_chunk(gpu, "weight", rows, cols, cols as u64 * 4, format)?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows || (rows == 0 && chunks.is_empty()) {
            let n = per.min(rows - start);
            let f32_chunk = chunk(start, n)?;
            let data = match format {
                QuantFormat::F32 => ChunkData::F32(f32_chunk),
                _ => {
                    let mut rec = Recorder::new(gpu);
                    let flat = f32_chunk.reshape(&[n * cols])?;
                    let packed = quantize(&mut rec, &flat, format)?;
                    rec.submit()?;
                    ChunkData::Quant(packed)
                }
            };
            chunks.push(Chunk { row_start: start, rows: n, data });
            start += n;
            if rows == 0 {
                break;
            }
        }
        Ok(QWeight { format, rows, cols, chunks, max_abs, compute: ComputeDtype::F32 })
    }

    /// A weight already packed on the CPU (from a pre-quantized file).
    pub fn from_nf4(gpu: &Gpu, q: &crate::quant::Nf4, rows: usize, cols: usize) -> Result<QWeight> {
        if q.len != rows * cols {
            return Err(Error::shape("QWeight::from_nf4", format!("{} values for a {rows}x{cols} weight", q.len)));
        }
        // Chunks as if f32, as `from_f32` cuts them: a chunk is dequantized
        // whole into one binding (DoRA's norms, merging, `to_f32`).
        let per = rows_per_chunk(gpu, "NF4 weight", rows, cols, cols as u64 * 4, QuantFormat::Nf4)?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = per.min(rows - start);
            let part = q.slice(start * cols, (start + n) * cols);
            chunks.push(Chunk { row_start: start, rows: n, data: ChunkData::Quant(Packed::from_nf4(gpu, &part)?) });
            start += n;
        }
        let max_abs = q.absmax.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        Ok(QWeight { format: QuantFormat::Nf4, rows, cols, chunks, max_abs, compute: ComputeDtype::F32 })
    }

    /// A weight already packed on the CPU as Q8_0.
    pub fn from_q8_0(gpu: &Gpu, q: &crate::quant::Q8_0) -> Result<QWeight> {
        let (rows, cols) = (q.rows, q.cols);
        let per = rows_per_chunk(gpu, "Q8_0 weight", rows, cols, cols as u64 * 4, QuantFormat::Q8_0)?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = per.min(rows - start);
            let part = crate::quant::Q8_0 {
                rows: n,
                cols,
                scales: q.scales[start * cols / 32..(start + n) * cols / 32].to_vec(),
                qs: q.qs[start * cols..(start + n) * cols].to_vec(),
            };
            chunks.push(Chunk { row_start: start, rows: n, data: ChunkData::Quant(Packed::from_q8_0(gpu, &part)?) });
            start += n;
        }
        let max_abs = q.scales.iter().fold(0.0f32, |m, v| m.max(v.to_f32().abs())) * 128.0;
        Ok(QWeight { format: QuantFormat::Q8_0, rows, cols, chunks, max_abs, compute: ComputeDtype::F32 })
    }

    /// Compute in `dtype` from now on, and return the dtype in effect (see
    /// [`QWeight::compute_for`]); on an error nothing changes.
    pub fn set_compute(&mut self, gpu: &Gpu, dtype: ComputeDtype) -> Result<ComputeDtype> {
        self.compute = self.compute_for(gpu, dtype)?;
        Ok(self.compute)
    }

    /// The dtype `dtype` would give this weight on `gpu`. f16 applies to the
    /// quantized and f16 formats on devices with SHADER_F16 (elsewhere the
    /// weight computes in f32); it is refused for a weight past
    /// ±[`F16_COMPUTE_MAX_ABS`], which f16 sums could overflow.
    pub fn compute_for(&self, gpu: &Gpu, dtype: ComputeDtype) -> Result<ComputeDtype> {
        let effective = match dtype {
            ComputeDtype::F16 if self.format != QuantFormat::F32 && gpu.info().shader_f16 => ComputeDtype::F16,
            _ => ComputeDtype::F32,
        };
        if effective == ComputeDtype::F16 && self.max_abs > F16_COMPUTE_MAX_ABS {
            return Err(QuantError::F16ComputeRange { max_abs: self.max_abs }.into());
        }
        Ok(effective)
    }

    /// The arithmetic its quantized kernels use.
    pub fn compute(&self) -> ComputeDtype {
        self.compute
    }

    /// GPU bytes of the weight.
    pub fn bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| match &c.data {
                ChunkData::F32(t) => t.bytes(),
                ChunkData::Quant(p) => p.bytes(),
            })
            .sum()
    }

    /// Download the weight as f32 (dequantized exactly as the kernels see it).
    pub async fn to_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for chunk in &self.chunks {
            let t = match &chunk.data {
                ChunkData::F32(t) => t.clone(),
                ChunkData::Quant(p) => {
                    let mut rec = Recorder::new(gpu);
                    let t = dequantize(&mut rec, p)?;
                    rec.submit()?;
                    t
                }
            };
            out.extend(t.to_vec::<f32>(gpu).await?);
        }
        Ok(out)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    accumulate: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    alpha: f32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    k_split: u32,
    lr: StoreParams,
}

/// Which quantized kernel: the register-tiled one, the 8-lane subgroup one,
/// or the yardstick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QVariant {
    Tiled,
    Naive,
    /// The subgroup kernels (`shaders/qmatmul_subgroup.wgsl`) where the device
    /// allows them and the layout takes vec4 loads; `Tiled` otherwise. The
    /// block's rows must be a multiple of 8 here (32 for the f32 kernels).
    Subgroup(SgTiles),
    /// The workgroup-memory GEMM for real GPUs (`shaders/gemm_blocked.wgsl`),
    /// dequantizing W as it stages it: any shape, both directions. A weight
    /// computing in f16 takes its f16 form (`shaders/gemm_blocked_f16.wgsl`).
    Blocked(Blocks),
    /// The same with K split in this many parts (1: no split).
    BlockedSplit(Blocks, u32),
    /// The decoding GEMV (`shaders/gemv.wgsl`, its subgroup reduction in
    /// `shaders/gemv_subgroup.wgsl`) for y = x·Wᵀ with at most
    /// [`GemvTiles::MAX_M`] rows and vec4-aligned rows; `Blocked` otherwise.
    /// A weight computing in f16 runs its f16 form (`shaders/gemv_f16.wgsl`).
    Gemv(GemvTiles),
}

impl QVariant {
    /// The subgroup kernels with the tuned block, [`QVariant::SG_TILES`].
    pub fn subgroup() -> QVariant {
        QVariant::Subgroup(Self::SG_TILES)
    }

    /// Block of the quantized subgroup kernels: 32 rows × 16 columns a lane,
    /// as the f32 ones (chosen on lavapipe; see the README's "Tuning decisions").
    pub const SG_TILES: SgTiles = SgTiles { sr: 32, tn: 16 };

    /// The kernel the `qlinear*` functions use for `m` rows of x (or dy),
    /// computing in `compute`: on real GPUs the GEMV for a few rows going
    /// forward, else the blocked GEMM (tuned per shape class); on CPU
    /// rasterizers the subgroup kernel where it runs and the layout is
    /// `aligned` for vec4 loads, except for a few rows (a decoding step),
    /// where the tiled kernel's few-rows tiles compute only the rows there are.
    pub fn tuned(
        gpu: &Gpu,
        format: QuantFormat,
        g: &Gemm,
        aligned: bool,
        backward: bool,
        compute: ComputeDtype,
    ) -> QVariant {
        let m = g.m;
        if is_real_gpu(gpu) {
            let half = compute == ComputeDtype::F16 && gpu.info().shader_f16;
            return if !backward && aligned && m <= GemvTiles::MAX_M {
                let product = super::tune::Product::Gemv { format, half, m, n: g.n, k: g.k };
                QVariant::Gemv(super::tune::gemv_for(gpu, product, GemvTiles::for_weight(gpu, format)))
            } else {
                let product = super::tune::Product::Quant { format, backward, half, m, n: g.n, k: g.k };
                QVariant::Blocked(super::tune::blocks_for(gpu, product, Blocks::for_shape(m, g.n, 1)))
            };
        }
        if subgroups_usable(gpu) && aligned && m > Tiles::FEW_ROWS {
            Self::subgroup()
        } else {
            QVariant::Tiled
        }
    }
}

/// Tiles as the f32 kernels of the same orientation (see `Tiles::tuned`).
fn tiles(backward: bool, m: usize) -> Tiles {
    Tiles::few_rows(m, false).unwrap_or_else(|| Tiles::tuned(false, !backward))
}

/// Whether a chunk's multiply can take the vec4 entries: x rows, the chunk's
/// offset into them and K aligned to 4, and for dx = dy·W the output columns.
fn vec4_layout(g: &Gemm, backward: bool) -> bool {
    g.lda % 4 == 0 && g.a_off % 4 == 0 && g.k % 4 == 0 && (!backward || g.n % 4 == 0)
}

/// Bindings of the vec4 entries: x (or dy) as vec4s, the codes, the scales, the output.
fn bind4_of<'a>(x: &'a Tensor, p: &'a Packed, out: &'a Tensor) -> [(u32, &'a Tensor); 4] {
    [(1, x), (2, &p.codes), (3, &p.scales), (4, out)]
}

/// Tiles of the f16-compute kernels: 4 rows × 8 columns an invocation, 8×8
/// invocations a workgroup, a register budget that suits a GPU (the only
/// place f16 arithmetic pays; lavapipe emulates it). Not tuned on one yet.
/// Few rows take [`Tiles::few_rows`].
const F16_TILES: Tiles = Tiles { tm: 4, tn: 8, wx: 8, wy: 8 };

/// Lanes of a subgroup the subgroup kernels are written for (checked by
/// `subgroups_usable`).
const SG_LANES: u32 = 8;

fn qkey(entry: &'static str, layout: Layout, forward: bool, t: Tiles) -> PipelineKey {
    qkey_in(Kernel::QMatmul, entry, layout, forward, t)
}

fn qkey_in(kernel: Kernel, entry: &'static str, layout: Layout, forward: bool, t: Tiles) -> PipelineKey {
    PipelineKey::new(kernel, entry)
        .with("FORMAT", layout.constant())
        .with("FORWARD", Const::Bool(forward))
        .with("TM", Const::U32(t.tm))
        .with("TN", Const::U32(t.tn))
        .with("WX", Const::U32(t.wx))
        .with("WY", Const::U32(t.wy))
}

/// The f16-compute kernels (`shaders/qmatmul_f16.wgsl`).
fn f16_key(layout: Layout, backward: bool, t: Tiles) -> PipelineKey {
    let entry = if backward { "qmatmul_nn_f16" } else { "qmatmul_nt_f16" };
    qkey_in(Kernel::QMatmulF16, entry, layout, !backward, t)
}

/// The yardstick: one output per invocation, 16×16 workgroups (TM and TN
/// only size the module's other entries).
fn naive_key(layout: Layout, backward: bool) -> PipelineKey {
    qkey("qmatmul_naive", layout, !backward, Tiles { tm: 4, tn: 4, wx: 16, wy: 16 })
}

fn blocked_key(layout: Layout, backward: bool, aligned: bool, t: Blocks, entry: &'static str) -> PipelineKey {
    t.with_consts(PipelineKey::new(Kernel::QMatmulBlocked, entry), Vec4Loads::both(aligned))
        .with("FORMAT", layout.constant())
        .with("FORWARD", Const::Bool(!backward))
}

/// The f16-compute blocked GEMM (`shaders/gemm_blocked_f16.wgsl`).
fn blocked_f16_key(layout: Layout, backward: bool, aligned: bool, t: Blocks, entry: &'static str) -> PipelineKey {
    t.with_consts(PipelineKey::new(Kernel::QMatmulBlockedF16, entry), Vec4Loads::both(aligned))
        .with("FORMAT", layout.constant())
        .with("FORWARD", Const::Bool(!backward))
}

/// The row-scale pass of the f16 blocked GEMM: one pipeline whatever the
/// block (it reads only x or dy; the block constants only size the module).
fn row_scales_key(layout: Layout, backward: bool) -> PipelineKey {
    blocked_f16_key(layout, backward, false, Blocks::MEDIUM, "f16_row_scales")
}

/// The GEMV's module for its reduction and, with `half`, f16 compute.
fn gemv_key(layout: Layout, t: GemvTiles, m: usize, half: bool) -> PipelineKey {
    let kernel = match (half, t.subgroup) {
        (false, false) => Kernel::QMatmulGemv,
        (false, true) => Kernel::QMatmulGemvSubgroup,
        (true, false) => Kernel::QMatmulGemvF16,
        (true, true) => Kernel::QMatmulGemvF16Subgroup,
    };
    t.with_consts(PipelineKey::new(kernel, t.entry()), m)
        .with("FORMAT", layout.constant())
        .with("FORWARD", Const::Bool(true))
}

fn subgroup_key(layout: Layout, backward: bool, sg: SgTiles) -> PipelineKey {
    let entry = if backward { "qmatmul_nn_sg" } else { "qmatmul_nt_sg" };
    // TM, WX and WY only size qmatmul.wgsl's own entries in this module.
    PipelineKey::new(Kernel::QMatmulSubgroup, entry)
        .with("FORMAT", layout.constant())
        .with("FORWARD", Const::Bool(!backward))
        .with("TM", Const::U32(4))
        .with("TN", Const::U32(sg.tn))
        .with("WX", Const::U32(SG_LANES))
        .with("WY", Const::U32(1))
        .with("SR", Const::U32(sg.sr))
}

/// Every pipeline the `qlinear*` functions and [`qgemm_with`] can request on
/// `gpu` (`kernels::variants`), for both kernel families, for each stored
/// layout (NF4, FP4, each with or without double quantization, Q8_0, f16)
/// and direction: the register tiles (few rows or the
/// tuned ones) through the vec4 and the scalar entries, the yardstick, the
/// subgroup block and the f16-compute kernels where the device runs them, the
/// blocked GEMM with every block `blocks` lists (x and W staged as vec4s or not),
/// and the forward GEMV for 1..=`GemvTiles::MAX_M` rows in every layout the
/// autotuner times (`tune::gemv_candidates`: the subgroup reduction where the
/// device has subgroups), and in f16 where the device has shader-f16; and
/// each one a fused low-rank term can ask for with the term in its store
/// (`low_rank::fuses`: the tiles of at most [`LowRank::FUSED_ROWS`] rows, the
/// blocked GEMM, the GEMV, either direction; the yardstick and the subgroup
/// block forward, through [`qgemm_low_rank_with`]); and for NF4 each
/// forward kernel that makes the final store with an output op after its
/// term (SwiGLU's gate, the op that binds the most; the GEMV at 1 and
/// `GemvTiles::MAX_M` rows, the first block).
pub(crate) fn pipeline_keys(gpu: &Gpu, blocks: &[Blocks]) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    // A key, its low-rank form where a product can ask for it, and where a
    // Linear's forward makes the final store that key (with its term where
    // it takes one) with the output op that binds the most (SwiGLU's gate),
    // for one format (the op's code is the same in every format's module).
    let mut push = |key: PipelineKey, fusable: bool, op: bool| {
        if op {
            keys.push(key.clone().low_rank(fusable).output_op(2));
        }
        if fusable {
            keys.push(key.clone().low_rank(true));
        }
        keys.push(key);
    };
    for format in Layout::ALL {
        let ops = format == Layout::Nf4;
        for backward in [false, true] {
            let entry = if backward { "qmatmul_nn" } else { "qmatmul_nt" };
            for m in [1, 2, 3, 4, 8, Tiles::FEW_ROWS + 1] {
                let t = tiles(backward, m);
                let few = m <= LowRank::FUSED_ROWS;
                push(qkey(entry, format, !backward, t), few, ops && !backward);
                push(qkey("qmatmul_scalar", format, !backward, t), few, ops && !backward);
                if gpu.info().shader_f16 {
                    push(
                        f16_key(format, backward, Tiles::few_rows(m, false).unwrap_or(F16_TILES)),
                        few,
                        ops && !backward,
                    );
                }
            }
            push(naive_key(format, backward), !backward, ops && !backward);
            if subgroups_usable(gpu) {
                push(subgroup_key(format, backward, QVariant::SG_TILES), !backward, ops && !backward);
            }
            for (i, &b) in blocks.iter().enumerate() {
                for aligned in [false, true] {
                    for entry in ["gemm_blocked", "gemm_blocked_split", "gemm_split_sum"] {
                        let op = ops && !backward && i == 0 && blocked::stores_output(entry);
                        push(blocked_key(format, backward, aligned, b, entry), blocked::adds_term(entry), op);
                    }
                    if gpu.info().shader_f16 && b.check_f16(gpu).is_ok() {
                        for entry in ["gemm_blocked_f16", "gemm_blocked_split_f16"] {
                            let op = ops && !backward && i == 0 && entry == "gemm_blocked_f16";
                            push(blocked_f16_key(format, backward, aligned, b, entry), blocked::adds_term(entry), op);
                        }
                    }
                }
            }
            if gpu.info().shader_f16 {
                push(row_scales_key(format, backward), false, false);
            }
        }
        let halves: &[bool] = if gpu.info().shader_f16 { &[false, true] } else { &[false] };
        for &half in halves {
            for t in super::tune::gemv_candidates(gpu) {
                for m in 1..=GemvTiles::MAX_M {
                    push(gemv_key(format, t, m, half), true, ops && (m == 1 || m == GemvTiles::MAX_M));
                }
            }
        }
    }
    keys
}

/// Forward `out = x·Wᵀ` (x (M, cols) → out (M, rows)) or, with `backward`,
/// `out = dy·W` (dy (M, rows) → out (M, cols)); `accumulate` adds to `out`.
pub fn qgemm_with(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    out: &Tensor,
    backward: bool,
    variant: QVariant,
) -> Result<()> {
    qgemm_acc(rec, x, w, out, backward, false, Some(variant), (None, None))
}

/// Forward `out = x·Wᵀ + scale·h·Bᵀ` (or with `backward`, `out = dy·W +
/// scale·h·Bᵀ`) through `variant` with the term fused into its store
/// whatever the rows (the tests' and the benchmark's way in;
/// [`qlinear_low_rank`] and [`qlinear_backward_low_rank`] decide when to fuse).
pub fn qgemm_low_rank_with(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    out: &Tensor,
    backward: bool,
    term: &LowRank,
    variant: QVariant,
) -> Result<()> {
    if !w.quantized() {
        return Err(Error::invalid(LowRank::OP, "this is the quantized kernels' way in: W is f32 (see matmul)"));
    }
    let (inp, cols) = if backward { (w.rows, w.cols) } else { (w.cols, w.rows) };
    term.check(x, cols, inp)?;
    qgemm_acc(rec, x, w, out, backward, false, Some(variant), (Some(term), None))
}

/// [`qgemm_with`] with `accumulate`, and with `variant` None the kernel
/// [`QVariant::tuned`] picks for each chunk; each chunk's store adds
/// `term` (going forward; going backward the first chunk's) and then does
/// `op` (forward only).
#[allow(clippy::too_many_arguments)]
fn qgemm_acc(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    out: &Tensor,
    backward: bool,
    accumulate: bool,
    variant: Option<QVariant>,
    (term, output_op): (Option<&LowRank>, Option<OutputOp>),
) -> Result<()> {
    let op = if backward { "linear_backward_input" } else { "linear" };
    x.expect_dtype(op, "x", DType::F32)?;
    out.expect_dtype(op, "out", DType::F32)?;
    let (in_dim, out_dim) = if backward { (w.rows, w.cols) } else { (w.cols, w.rows) };
    let x_cols = *x.shape().last().unwrap_or(&0);
    if x_cols != in_dim || x.shape().is_empty() {
        return Err(Error::shape(
            op,
            format!("input {:?} does not match a ({}, {}) weight", x.shape(), w.rows, w.cols),
        ));
    }
    let m = x.numel() / in_dim.max(1);
    if out.numel() != m * out_dim {
        return Err(Error::shape(op, format!("output {:?} should hold {m}x{out_dim}", out.shape())));
    }
    if let Some(o) = output_op {
        if backward {
            return Err(Error::invalid(OutputOp::OP, "an output op belongs to a Linear's forward, not to dx"));
        }
        o.check(m, (0, out_dim), accumulate)?;
    }
    for (i, chunk) in w.chunks.iter().enumerate() {
        let acc = accumulate || (backward && i > 0);
        let mut g = if backward {
            // dx (M, cols) += dy[:, chunk] (M, rows_c) · W_c (rows_c, cols)
            let mut g = Gemm::new(m, w.cols, chunk.rows, false, false);
            g.lda = w.rows;
            g.a_off = chunk.row_start;
            g
        } else {
            // y[:, chunk] (M, rows_c) = x (M, cols) · W_cᵀ
            let mut g = Gemm::new(m, chunk.rows, w.cols, false, true);
            g.ldc = w.rows;
            g.c_off = chunk.row_start;
            g
        };
        g.accumulate = acc;
        // The term of this chunk's columns going forward; going backward
        // every chunk adds into all of dx's columns, and the first adds the term.
        let term = match backward {
            false => term.map(|t| (t, chunk.row_start)),
            true => term.filter(|_| i == 0).map(|t| (t, 0)),
        };
        let op = output_op.map(|o| (o, chunk.row_start));
        match &chunk.data {
            ChunkData::F32(t) => gemm_fused(rec, &g, (x, t, out), term, op)?,
            ChunkData::Quant(p) => {
                // Chosen per chunk: a chunk's offset into dy decides the alignment.
                let aligned = vec4_layout(&g, backward);
                let v =
                    variant.unwrap_or_else(|| QVariant::tuned(rec.gpu(), w.format, &g, aligned, backward, w.compute));
                let half = w.compute == ComputeDtype::F16 && rec.gpu().info().shader_f16;
                record_quant(rec, &g, x, p, out, backward, v, half, (term, op))?
            }
        }
    }
    Ok(())
}

/// Record one chunk's product with `variant`; `term` (with B's row of the
/// chunk's first output) is added by the store of whichever kernel runs.
#[allow(clippy::too_many_arguments)]
fn record_quant<'a>(
    rec: &mut Recorder,
    g: &Gemm,
    x: &'a Tensor,
    p: &'a Packed,
    out: &'a Tensor,
    backward: bool,
    variant: QVariant,
    half: bool,
    (term, op): (Fused<'a>, FusedOp<'a>),
) -> Result<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let params = Params {
        m: g.m as u32,
        n: g.n as u32,
        k: g.k as u32,
        batch: 1,
        lda: g.lda as u32,
        ldb: 0,
        ldc: g.ldc as u32,
        accumulate: g.accumulate as u32,
        a_off: g.a_off as u32,
        b_off: 0,
        c_off: g.c_off as u32,
        alpha: 1.0,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        k_split: 0,
        lr: low_rank::store_params(term, op),
    };
    let fused = term.is_some();
    let op_code = low_rank::op_code(op);
    let with_terms = |bound: &[(u32, &'a Tensor)]| low_rank::with_bindings(bound, term, op);
    let bind4 = with_terms(&bind4_of(x, p, out));
    let aligned = vec4_layout(g, backward);
    // Decoding in f16: the GEMV's f16 form (the blocked one and qmatmul_f16.wgsl's tiles below).
    if let (QVariant::Gemv(t), true) = (variant, half && !backward && aligned && g.m <= GemvTiles::MAX_M) {
        return record_gemv(rec, g, params, &bind4, p, t, true, (fused, op_code));
    }
    let variant = match variant {
        QVariant::Subgroup(_) if !(subgroups_usable(rec.gpu()) && aligned) => QVariant::Tiled,
        QVariant::Gemv(_) if backward || !aligned || g.m > GemvTiles::MAX_M => {
            QVariant::Blocked(Blocks::for_shape(g.m, g.n, 1))
        }
        v => v,
    };
    if half {
        match variant {
            QVariant::Blocked(t) => {
                return record_blocked_f16(
                    rec,
                    g,
                    x,
                    p,
                    &with_terms(&[(4, out)]),
                    backward,
                    aligned,
                    (t, None),
                    (params, op_code),
                )
            }
            QVariant::BlockedSplit(t, s) => {
                let stores = with_terms(&[(4, out)]);
                return record_blocked_f16(rec, g, x, p, &stores, backward, aligned, (t, Some(s)), (params, op_code));
            }
            // shaders/qmatmul_f16.wgsl for the other variants (it has no
            // subgroup form); odd layouts and the yardstick stay f32 below.
            QVariant::Naive => {}
            _ if aligned => {
                let t = Tiles::few_rows(g.m, false).unwrap_or(F16_TILES);
                let groups =
                    [g.n.div_ceil((t.wx * t.tn) as usize) as u32, g.m.div_ceil((t.wy * t.tm) as usize) as u32, 1];
                return rec.dispatch_bound(
                    &f16_key(p.layout, backward, t).low_rank(fused).output_op(op_code),
                    &params,
                    &bind4,
                    groups,
                );
            }
            _ => {}
        }
    }
    let t = tiles(backward, g.m);
    let tiled = [g.n.div_ceil((t.wx * t.tn) as usize) as u32, g.m.div_ceil((t.wy * t.tm) as usize) as u32, 1];
    let bind1 = with_terms(&[(5, x), (2, &p.codes), (3, &p.scales), (4, out)]);
    let op = if backward { "linear_backward_input" } else { "linear" };
    match variant {
        QVariant::Blocked(t) | QVariant::BlockedSplit(t, _) => {
            t.check(rec.gpu()).map_err(|e| Error::shape(op, e))?;
            let splits = match variant {
                QVariant::BlockedSplit(_, s) => s,
                _ => blocked::auto_splits(t, g.m, g.n, g.k, 1),
            };
            let key = |entry| {
                let op = if blocked::stores_output(entry) { op_code } else { 0 };
                blocked_key(p.layout, backward, aligned, t, entry)
                    .low_rank(fused && blocked::adds_term(entry))
                    .output_op(op)
            };
            let set = |p: &mut Params, k: u32| p.k_split = k;
            // x by vec4s (binding 1) where aligned, else by scalars (5): both bound.
            let operands = [(1, x), (5, x), (2, &p.codes), (3, &p.scales)];
            let stores = with_terms(&[(4, out)]);
            blocked::record(rec, key, params, set, &operands, &stores, t, (g.m, g.n, g.k, 1), (splits, 1))
        }
        QVariant::Gemv(t) => record_gemv(rec, g, params, &bind4, p, t, false, (fused, op_code)),
        QVariant::Subgroup(sg) => {
            if !(sg.sr > 0 && sg.sr % 8 == 0 && sg.tn > 0 && sg.tn % 4 == 0 && sg.sr * sg.tn <= SgTiles::MAX_OUTPUTS) {
                return Err(Error::shape(
                    op,
                    format!(
                        "subgroup block {sg:?}: rows must be a multiple of 8, columns of 4, at most {} outputs per lane",
                        SgTiles::MAX_OUTPUTS
                    ),
                ));
            }
            let groups = [g.n.div_ceil((SG_LANES * sg.tn) as usize) as u32, g.m.div_ceil(sg.sr as usize) as u32, 1];
            rec.dispatch_bound(
                &subgroup_key(p.layout, backward, sg).low_rank(fused).output_op(op_code),
                &params,
                &bind4,
                groups,
            )
        }
        QVariant::Tiled if aligned => {
            let entry = if backward { "qmatmul_nn" } else { "qmatmul_nt" };
            rec.dispatch_bound(
                &qkey(entry, p.layout, !backward, t).low_rank(fused).output_op(op_code),
                &params,
                &bind4,
                tiled,
            )
        }
        QVariant::Tiled => {
            let key = qkey("qmatmul_scalar", p.layout, !backward, t).low_rank(fused).output_op(op_code);
            rec.dispatch_bound(&key, &params, &bind1, tiled)
        }
        QVariant::Naive => {
            let groups = [g.n.div_ceil(16) as u32, g.m.div_ceil(16) as u32, 1];
            rec.dispatch_bound(
                &naive_key(p.layout, backward).low_rank(fused).output_op(op_code),
                &params,
                &bind1,
                groups,
            )
        }
    }
}

/// The blocked GEMM in f16 arithmetic (`shaders/gemm_blocked_f16.wgsl`):
/// x's (or dy's) row scales into a scratch tensor, then the blocks, K split
/// in `splits` parts (None: as the f32 kernel would split it); `stores`
/// binds the output and a low-rank term's factors.
#[allow(clippy::too_many_arguments)]
fn record_blocked_f16(
    rec: &mut Recorder,
    g: &Gemm,
    x: &Tensor,
    p: &Packed,
    stores: &[(u32, &Tensor)],
    backward: bool,
    aligned: bool,
    (blocks, splits): (Blocks, Option<u32>),
    (params, op_code): (Params, u32),
) -> Result<()> {
    let op = if backward { "linear_backward_input" } else { "linear" };
    blocks.check_f16(rec.gpu()).map_err(|e| Error::shape(op, e))?;
    // The f16 block entries; the sum of the splits is the f32 module's.
    let fused = stores.iter().any(|(binding, _)| *binding == 8);
    let key = |entry| {
        match entry {
            "gemm_blocked" => blocked_f16_key(p.layout, backward, aligned, blocks, "gemm_blocked_f16"),
            "gemm_blocked_split" => blocked_f16_key(p.layout, backward, aligned, blocks, "gemm_blocked_split_f16"),
            other => blocked_key(p.layout, backward, aligned, blocks, other),
        }
        .low_rank(fused && blocked::adds_term(entry))
        .output_op(if blocked::stores_output(entry) { op_code } else { 0 })
    };
    let scales = rec.alloc(&[g.m], DType::F32)?; // f16_row_scales writes every row
    rec.dispatch_bound(&row_scales_key(p.layout, backward), &params, &[(5, x), (6, &scales)], super::grid_1d(g.m))?;
    let splits = splits.unwrap_or_else(|| blocked::auto_splits(blocks, g.m, g.n, g.k, 1));
    let set = |p: &mut Params, k: u32| p.k_split = k;
    let operands = [(5, x), (2, &p.codes), (3, &p.scales), (6, &scales)];
    // Splits of whole f16 runs, so they sum the reference's runs.
    let split = (splits, Blocks::F16_RUN_K);
    blocked::record(rec, key, params, set, &operands, stores, blocks, (g.m, g.n, g.k, 1), split)
}

/// The decoding GEMV forward, in f16 with `half` (`shaders/gemv_f16.wgsl`,
/// the arithmetic of `shaders/qmatmul_f16.wgsl`), else in f32; `bind4`
/// binds x, the weight's codes and scales, y and, when `fused`, the
/// low-rank term's factors.
#[allow(clippy::too_many_arguments)]
fn record_gemv(
    rec: &mut Recorder,
    g: &Gemm,
    params: Params,
    bind4: &[(u32, &Tensor)],
    p: &Packed,
    t: GemvTiles,
    half: bool,
    (fused, op_code): (bool, u32),
) -> Result<()> {
    let t = t.on(rec.gpu());
    t.check().map_err(|e| Error::shape("linear", e))?;
    // The codes once more as 16-byte units, for wide spans (binding 10).
    let bound = [bind4, &[(10, &p.codes)]].concat();
    let key = gemv_key(p.layout, t, g.m, half).low_rank(fused).output_op(op_code);
    rec.dispatch_bound(&key, &params, &bound, t.grid(g.n))
}

/// y = x·Wᵀ for x (…, in): y (…, out).
pub fn qlinear(rec: &mut Recorder, x: &Tensor, w: &QWeight) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.rows;
    }
    let y = rec.alloc(&shape, DType::F32)?; // each chunk writes its columns
    qgemm_acc(rec, x, w, &y, false, false, None, (None, None))?;
    Ok(y)
}

/// y = x·Wᵀ + scale·h·Bᵀ for x (…, in), a LoRA-adapted frozen Linear's
/// output (…, out). Where [`low_rank::fuses`] (at most
/// [`LowRank::FUSED_ROWS`] rows, or any with the kernels of real GPUs,
/// unless `low_rank::set_fused` turned fusing off) the product adds the
/// term as it stores y (`shaders/low_rank.wgsl`), whichever kernel runs it,
/// f32 or quantized; else one more product adds it (the same sum in another
/// order).
pub fn qlinear_low_rank(rec: &mut Recorder, x: &Tensor, w: &QWeight, term: &LowRank) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.rows;
    }
    let y = rec.alloc(&shape, DType::F32)?; // each chunk writes its columns
    qlinear_into(rec, x, w, &y, false, (Some(term), None))?;
    Ok(y)
}

/// A frozen Linear's forward into `out` (…, out) for x (…, in): x·Wᵀ, plus
/// a low-rank term, plus the Linear's bias (N), each where there is one,
/// written or with `accumulate` added to what `out` holds (as decoding adds
/// into the residual stream). The product's store adds the term where
/// [`low_rank::fuses`] and then the bias (`shaders/output_op.wgsl`); a term
/// that does not fuse is one more product, and the bias a launch after it.
pub fn qlinear_into(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    out: &Tensor,
    accumulate: bool,
    (term, bias): (Option<&LowRank>, Option<&Tensor>),
) -> Result<()> {
    let op = bias.map(OutputOp::Bias);
    let Some(term) = term else { return qgemm_acc(rec, x, w, out, false, accumulate, None, (None, op)) };
    let (m, _) = term.check(x, w.rows, w.cols)?;
    if low_rank::fuses(rec.gpu(), m) {
        return qgemm_acc(rec, x, w, out, false, accumulate, None, (Some(term), op));
    }
    qgemm_acc(rec, x, w, out, false, accumulate, None, (None, None))?;
    term.add_to(rec, out)?;
    bias.map_or(Ok(()), |bias| add_bias(rec, out, bias))
}

/// SwiGLU through up_proj's product: h = silu(gate)·(x·Wᵀ + term) (…, out)
/// for x (…, in) and gate (…, out), gate_proj's output, with the gate
/// applied as the product stores (`shaders/output_op.wgsl`), so up's output
/// is never stored and SwiGLU is no launch of its own; where a term does
/// not fuse, up is computed whole and SwiGLU's own kernel gates it.
pub fn qlinear_gated(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    term: Option<&LowRank>,
    gate: &Tensor,
) -> Result<Tensor> {
    let h = rec.alloc(gate.shape(), DType::F32)?; // each chunk writes its columns
    if gate.shape().last() != Some(&w.rows) {
        let detail = format!("gate {:?} does not match a ({}, {}) weight's outputs", gate.shape(), w.rows, w.cols);
        return Err(Error::shape(OutputOp::OP, detail));
    }
    let gate2 = gate.reshape(&[gate.numel() / w.rows.max(1), w.rows])?;
    let fuses = term.is_none_or(|t| t.check(x, w.rows, w.cols).is_ok_and(|(m, _)| low_rank::fuses(rec.gpu(), m)));
    if fuses {
        qgemm_acc(rec, x, w, &h, false, false, None, (term, Some(OutputOp::Gate(&gate2))))?;
        return Ok(h);
    }
    qlinear_into(rec, x, w, &h, false, (term, None))?;
    swiglu_forward(rec, gate, &h)
}

/// Forward `out = x·Wᵀ (+ scale·h·Bᵀ)` through `variant` with `op` done by
/// its store after the term (the tests' way in; [`qlinear_into`] and
/// [`qlinear_gated`] decide when to fuse).
pub fn qgemm_op_with(
    rec: &mut Recorder,
    x: &Tensor,
    w: &QWeight,
    out: &Tensor,
    term: Option<&LowRank>,
    op: OutputOp,
    variant: QVariant,
) -> Result<()> {
    if let Some(term) = term {
        term.check(x, w.rows, w.cols)?;
    }
    qgemm_acc(rec, x, w, out, false, false, Some(variant), (term, Some(op)))
}

/// dx = dy·W + scale·h·Bᵀ (+ dx with `accumulate`) for dy (…, out) into dx
/// (…, in): the frozen path's dx and a LoRA-adapted Linear's own share,
/// `term` = d(xa)·A (h = d(xa) (M, r), Bᵀ = lora_A (r, in), see
/// [`LowRank::new_transposed`]), added as the product stores dx where
/// [`low_rank::fuses`], else by one more product.
pub fn qlinear_backward_low_rank(
    rec: &mut Recorder,
    dy: &Tensor,
    w: &QWeight,
    dx: &Tensor,
    accumulate: bool,
    term: &LowRank,
) -> Result<()> {
    let (m, _) = term.check(dy, w.cols, w.rows)?;
    if low_rank::fuses(rec.gpu(), m) {
        return qgemm_acc(rec, dy, w, dx, true, accumulate, None, (Some(term), None));
    }
    qgemm_acc(rec, dy, w, dx, true, accumulate, None, (None, None))?;
    term.add_to(rec, dx)
}

/// dx = dy·W for dy (…, out): dx (…, in). The weight is frozen: no dW.
pub fn qlinear_backward_input(rec: &mut Recorder, dy: &Tensor, w: &QWeight) -> Result<Tensor> {
    let mut shape = dy.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = w.cols;
    }
    let dx = rec.alloc(&shape, DType::F32)?; // chunk 0 writes, the rest add
    qgemm_acc(rec, dy, w, &dx, true, false, None, (None, None))?;
    Ok(dx)
}

/// out += x·Wᵀ (or dy·W with `backward`): for adding a frozen path into a
/// tensor that already holds another term.
/// grad (out, in) += dyᵀ·x for dy (M, out) and x (M, in): the gradient of
/// y = x·Wᵀ at a trained f32 weight held in row chunks (each chunk's rows
/// take their columns of dy).
pub fn weight_grad_accumulate(rec: &mut Recorder, dy: &Tensor, x: &Tensor, grad: &QWeight) -> Result<()> {
    const OP: &str = "weight gradient";
    let (out, cols) = (grad.rows, grad.cols);
    let m = dy.numel() / out.max(1);
    if dy.shape().last() != Some(&out) || x.numel() != m * cols {
        let detail = format!("dy {:?} and x {:?} for a ({out}, {cols}) weight", dy.shape(), x.shape());
        return Err(Error::shape(OP, detail));
    }
    for c in &grad.chunks {
        let ChunkData::F32(t) = &c.data else {
            return Err(Error::invalid(OP, format!("the gradient is stored as {}, expected f32", grad.format)));
        };
        let mut g = Gemm::new(c.rows, cols, m, true, false).accumulate(true); // (rows, in) += dy[:, rows]ᵀ·x
        g.lda = out;
        g.a_off = c.row_start;
        super::matmul::gemm(rec, &g, dy, x, t)?;
    }
    Ok(())
}

pub fn qlinear_accumulate(rec: &mut Recorder, x: &Tensor, w: &QWeight, out: &Tensor, backward: bool) -> Result<()> {
    qgemm_acc(rec, x, w, out, backward, true, None, (None, None))
}

/// out = x·Wᵀ (or dy·W with `backward`) into an existing tensor, its old
/// contents ignored (so it needs no clearing first).
pub fn qlinear_write(rec: &mut Recorder, x: &Tensor, w: &QWeight, out: &Tensor, backward: bool) -> Result<()> {
    qgemm_acc(rec, x, w, out, backward, false, None, (None, None))
}
