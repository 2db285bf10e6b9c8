//! The matmul shapes for real GPUs: block tiles of the workgroup-memory GEMM
//! (`shaders/gemm_blocked.wgsl`) and the decoding GEMV (`shaders/gemv.wgsl`),
//! shared by the f32 and the quantized launchers, and which adapters get them.
//!
//! lavapipe and the browser's SwiftShader are CPUs: there every per-lane
//! buffer load is a scalar loop and barriers are expensive, so huge register
//! tiles without workgroup memory win (`Tiles`, `SgTiles`). On a GPU those
//! same kernels spill registers and leave SMs idle; there the blocked kernel
//! (moderate register tiles, 64–256 invocations, operands staged in workgroup
//! memory, coalesced loads) and a bandwidth-bound GEMV for decoding are the
//! right shapes. The choice is made by the adapter's device type.

use crate::gpu::{Const, Gpu, KernelFamily, PipelineKey};

/// Whether `gpu` runs the kernels of real GPUs: a discrete, integrated,
/// virtual or unknown adapter, not a CPU rasterizer (lavapipe, llvmpipe,
/// SwiftShader: the adapter says `Cpu`, and on the web wgpu reports a
/// fallback adapter so), unless [`crate::GpuOptions::kernels`] forced a family.
pub fn is_real_gpu(gpu: &Gpu) -> bool {
    gpu.kernel_family() == KernelFamily::Gpu
}

/// One workgroup of the blocked GEMM computes a `bm × bn` block of C, walking
/// K in slices of `bk`, each invocation a `tm × tn` register tile; the slices
/// are staged in `buffers` (1 or 2) copies of workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
    /// 1: one staging buffer, two barriers a slice (the next slice waits in
    /// registers until everyone has read the last); 2: double-buffered, one
    /// barrier a slice (each slice is staged while the other buffer is read),
    /// for twice the workgroup memory. The f16 kernel takes 1.
    pub buffers: u32,
}

impl Blocks {
    /// A block with one staging buffer.
    pub const fn new(bm: u32, bn: u32, bk: u32, tm: u32, tn: u32) -> Blocks {
        Blocks { bm, bn, bk, tm, tn, buffers: 1 }
    }

    /// The same block double-buffered.
    pub const fn double_buffered(self) -> Blocks {
        Blocks { buffers: 2, ..self }
    }

    /// 128×128 blocks of 8×8 per invocation (256 invocations, 64 outputs
    /// each), K in slices of 8: the classic shape for f32 GEMM on NVIDIA and
    /// AMD cards, for products big enough to give every SM several blocks.
    pub const LARGE: Blocks = Blocks::new(128, 128, 8, 8, 8);
    /// 64×64 blocks of 4×4 (256 invocations): four times the blocks of
    /// [`Blocks::LARGE`], for mid-sized products (1024³ is 256 blocks).
    pub const MEDIUM: Blocks = Blocks::new(64, 64, 16, 4, 4);

    /// Blocks in a launch of `m × n` outputs, `batch` times.
    fn count(self, m: usize, n: usize, batch: usize) -> usize {
        m.div_ceil(self.bm as usize) * n.div_ceil(self.bn as usize) * batch
    }

    /// The block for a product of `m × n` outputs (over `k`, `batch` times):
    /// LoRA's skinny products (a side of at most 32) get blocks of that side
    /// so no invocation computes padding; the rest take [`Blocks::LARGE`]
    /// where that still makes at least [`Blocks::FILL`] blocks, else
    /// [`Blocks::MEDIUM`].
    pub fn for_shape(m: usize, n: usize, batch: usize) -> Blocks {
        if n <= 16 {
            Blocks::new(128, 16, 16, 4, 4)
        } else if n <= 32 {
            Blocks::new(128, 32, 16, 4, 4)
        } else if m <= 16 {
            Blocks::new(16, 256, 16, 4, 4)
        } else if m <= 32 {
            Blocks::new(32, 128, 16, 4, 4)
        } else if Self::LARGE.count(m, n, batch) >= Self::FILL {
            Self::LARGE
        } else {
            Self::MEDIUM
        }
    }

    /// Blocks a launch should have to keep a large GPU busy (an H200 has 132
    /// SMs; two blocks each).
    pub const FILL: usize = 264;

    pub fn invocations(self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    /// Workgroup memory of one block: the padded A and B slices, f32, in
    /// each staging buffer.
    pub fn workgroup_bytes(self) -> u32 {
        4 * self.bk * (self.bm + 4 + self.bn + 4) * self.buffers
    }

    /// Workgroup memory of one block of the f16-compute kernel
    /// (`shaders/gemm_blocked_f16.wgsl`): the slices in halves, rows padded by
    /// 8 halves, and its row-scale pass's 64 words.
    pub fn workgroup_bytes_f16(self) -> u32 {
        (2 * self.bk * (self.bm + 8 + self.bn + 8)).max(4 * 64)
    }

    /// k per f16 partial sum in the f16-compute kernel: its slices must divide it.
    pub const F16_RUN_K: u32 = 32;

    /// Whether the f16-compute kernel can be built with these blocks on
    /// `gpu`: as [`Blocks::check`], with BK dividing [`Blocks::F16_RUN_K`]
    /// and the f16 slices in workgroup memory.
    pub fn check_f16(self, gpu: &Gpu) -> Result<(), String> {
        if self.bk == 0 || Self::F16_RUN_K % self.bk != 0 || self.buffers != 1 {
            return Err(format!("block {self:?}: bk must divide {} and one buffer for f16 compute", Self::F16_RUN_K));
        }
        self.check_with(gpu, self.workgroup_bytes_f16())
    }

    /// Whether the kernel can be built with these blocks on `gpu`.
    pub fn check(self, gpu: &Gpu) -> Result<(), String> {
        self.check_with(gpu, self.workgroup_bytes())
    }

    fn check_with(self, gpu: &Gpu, workgroup_bytes: u32) -> Result<(), String> {
        let info = gpu.info();
        let shaped = self.tm > 0
            && self.tn > 0
            && self.bk > 0
            && self.tm % 4 == 0
            && self.tn % 4 == 0
            && self.bm % self.tm == 0
            && self.bn % self.tn == 0
            && self.bm >= self.tm
            && self.bn >= self.tn;
        if !shaped {
            return Err(format!("block {self:?}: tm and tn must be multiples of 4 that divide bm and bn"));
        }
        if !matches!(self.buffers, 1 | 2) {
            return Err(format!("block {self:?}: 1 or 2 staging buffers"));
        }
        if self.invocations() > info.max_compute_invocations_per_workgroup.min(256) {
            return Err(format!("block {self:?}: {} invocations, at most 256", self.invocations()));
        }
        if workgroup_bytes > info.max_compute_workgroup_storage_size {
            return Err(format!(
                "block {self:?}: {} bytes of workgroup memory, the device has {}",
                workgroup_bytes, info.max_compute_workgroup_storage_size
            ));
        }
        Ok(())
    }

    /// The prelude constants of the core (TM and TN are shared with the host
    /// module's own register-tiled entries, which these modules never launch);
    /// `loads`: the operands staged four values at a time (with BK a multiple
    /// of 4; the sum of split-K's partials reads neither, so one sum pipeline
    /// serves every layout).
    pub(crate) fn with_consts(self, key: PipelineKey, loads: Vec4Loads) -> PipelineKey {
        let whole = self.bk % 4 == 0 && key.entry != "gemm_split_sum";
        key.with("A_VEC4", Const::Bool(loads.a && whole))
            .with("B_VEC4", Const::Bool(loads.b && whole))
            .with("TM", Const::U32(self.tm))
            .with("TN", Const::U32(self.tn))
            .with("WX", Const::U32(self.bn / self.tn))
            .with("WY", Const::U32(self.bm / self.tm))
            .with("BM", Const::U32(self.bm))
            .with("BN", Const::U32(self.bn))
            .with("BK", Const::U32(self.bk))
            .with("BUFFERS", Const::U32(self.buffers))
    }

    /// Workgroups for `m × n` outputs, `batch` times.
    pub(crate) fn grid(self, m: usize, n: usize, batch: usize) -> [u32; 3] {
        [n.div_ceil(self.bn as usize) as u32, m.div_ceil(self.bm as usize) as u32, batch as u32]
    }
}

/// Which operands of a blocked GEMM are loaded as vec4s along their contiguous
/// dimension (`A_VEC4`, `B_VEC4` in gemm_blocked.wgsl): one load instruction
/// for four values (and, for a quantized weight, one decoded word). Only
/// where the layout keeps every vec4 whole and aligned: the contiguous
/// extent, the row stride, the offset and the batch stride multiples of 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vec4Loads {
    pub a: bool,
    pub b: bool,
}

impl Vec4Loads {
    /// Both operands, or neither.
    pub const fn both(on: bool) -> Vec4Loads {
        Vec4Loads { a: on, b: on }
    }
}

/// "128x128x8/8x8" (`bench --sweep-blocks`' form), "…/2" double-buffered.
impl std::fmt::Display for Blocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)?;
        if self.buffers != 1 {
            write!(f, "/{}", self.buffers)?;
        }
        Ok(())
    }
}

/// The decoding GEMV (`shaders/gemv.wgsl`): `rows` rows of W a workgroup,
/// `lanes` invocations a row, whose partial sums meet either in a tree in
/// workgroup memory (portable) or through subgroup operations
/// (`shaders/gemv_subgroup.wgsl`, needs Features::SUBGROUP; any subgroup
/// width: the workgroup is sized for `lanes` a row, and a row takes one
/// subgroup or several, whatever width the device runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvTiles {
    pub lanes: u32,
    pub rows: u32,
    pub subgroup: bool,
    /// bitsandbytes' way of decoding (`GV_WIDE`): each lane takes spans of 32
    /// consecutive weights, one 16-byte load of 4-bit codes (two of Q8_0,
    /// four of f16, eight vec4s of f32) where K is a multiple of 32, and the
    /// 4-bit levels come from a copy in workgroup memory. Off: lanes take
    /// consecutive 4-weight groups in turn, half a 4-bit word a load, and
    /// the levels come from a private table. An autotuner candidate: on
    /// lavapipe it is slower (a K of 512 is 16 spans for 32 lanes; arrays of
    /// vec4s and workgroup memory cost a CPU more than a table lookup); on a
    /// GPU the tuner's timing decides.
    pub wide: bool,
}

impl GemvTiles {
    /// 32 lanes (one NVIDIA/Apple subgroup) on each of 8 rows: 256
    /// invocations, the portable reduction.
    pub const DEFAULT: GemvTiles = GemvTiles { lanes: 32, rows: 8, subgroup: false, wide: false };

    /// The same shape with the subgroup reduction.
    pub const SUBGROUP: GemvTiles = GemvTiles { subgroup: true, ..Self::DEFAULT };

    /// A product through fewer rows of W than this is skinny
    /// ([`GemvTiles::for_f32`]): LoRA's x·Aᵀ through its r rows.
    pub const SKINNY_ROWS: usize = 64;

    /// The skinny products' layout: 256 lanes on one row a workgroup.
    pub const SKINNY: GemvTiles = GemvTiles { lanes: 256, rows: 1, subgroup: false, wide: false };

    /// Up to this many rows of x (decoding a batch of prompts).
    pub const MAX_M: usize = 8;

    /// The GEMV for `gpu`: the subgroup reduction where the device has
    /// subgroups (a subgroup sum in place of the tree's log2(lanes) barrier
    /// steps; W is read the same way), else the portable one. A rule, not a
    /// timing: the autotuner (`kernels::tune`) times the others.
    pub fn for_gpu(gpu: &Gpu) -> GemvTiles {
        if gpu.features().contains(wgpu::Features::SUBGROUP) {
            Self::SUBGROUP
        } else {
            Self::DEFAULT
        }
    }

    /// [`GemvTiles::for_gpu`] through a weight of `format`, untuned: with
    /// wide spans for 4-bit codes, bitsandbytes' and llama.cpp's way, where
    /// a lane's load is 16 whole bytes (32 codes) and consecutive lanes read
    /// consecutive bytes, and the levels come from workgroup memory (the
    /// 4-value loads read 2 bytes of a word two lanes share, and look the
    /// levels up in a private table, which a GPU keeps in local memory).
    /// Wider formats keep 4-value groups: a span of them is 32 or more bytes
    /// a lane, which consecutive lanes no longer read together.
    pub fn for_weight(gpu: &Gpu, format: crate::quant::QuantFormat) -> GemvTiles {
        GemvTiles { wide: format == crate::quant::QuantFormat::Nf4, ..Self::for_gpu(gpu) }
    }

    /// The untuned GEMV through an f32 W of `n` rows: [`GemvTiles::for_gpu`],
    /// or for fewer than [`GemvTiles::SKINNY_ROWS`] rows [`GemvTiles::SKINNY`]
    /// with the device's reduction. Decoding through a LoRA makes one such
    /// product an adapted Linear (x·Aᵀ, r rows of K = in): 32 lanes on each
    /// of 8 rows would give it r / 8 workgroups whose lanes each walk 16
    /// vec4 steps of K = 2048 (64 of 8192), a chain of dependent loads on an
    /// otherwise idle GPU; 256 lanes a row take 2 (8) steps each, in one
    /// (two) unrolled passes. Too few weights to tune (`tune::MIN_GEMV_WEIGHTS`):
    /// the rule is the layout.
    pub fn for_f32(gpu: &Gpu, n: usize) -> GemvTiles {
        match n < Self::SKINNY_ROWS {
            true => GemvTiles { subgroup: Self::for_gpu(gpu).subgroup, ..Self::SKINNY },
            false => Self::for_gpu(gpu),
        }
    }

    /// These tiles as `gpu` can run them: without subgroups, the portable reduction.
    pub(crate) fn on(self, gpu: &Gpu) -> GemvTiles {
        GemvTiles { subgroup: self.subgroup && gpu.features().contains(wgpu::Features::SUBGROUP), ..self }
    }

    pub fn check(self) -> Result<(), String> {
        let lanes_ok = if self.subgroup { self.lanes > 0 } else { self.lanes.is_power_of_two() };
        if !lanes_ok || self.rows == 0 || self.lanes * self.rows > 256 {
            return Err(format!(
                "GEMV {self:?}: lanes a power of two (any count with subgroups), at most 256 invocations"
            ));
        }
        Ok(())
    }

    /// The entry point (the reduction) in a GEMV module.
    pub(crate) fn entry(self) -> &'static str {
        if self.subgroup {
            "gemv_nt_sg"
        } else {
            "gemv_nt"
        }
    }

    pub(crate) fn with_consts(self, key: PipelineKey, m: usize) -> PipelineKey {
        key.with("TM", Const::U32(4))
            .with("TN", Const::U32(4))
            .with("WX", Const::U32(self.lanes))
            .with("WY", Const::U32(self.rows))
            .with("GV_M", Const::U32(m as u32))
            .with("GV_LANES", Const::U32(self.lanes))
            .with("GV_ROWS", Const::U32(self.rows))
            .with("GV_WIDE", Const::Bool(self.wide))
    }

    pub(crate) fn grid(self, n: usize) -> [u32; 3] {
        [n.div_ceil(self.rows as usize) as u32, 1, 1]
    }
}

/// "gemv 32x8", "gemv 32x8 subgroup wide" (`bench`'s and the tuner's form).
impl std::fmt::Display for GemvTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gemv {}x{}", self.lanes, self.rows)?;
        if self.subgroup {
            write!(f, " subgroup")?;
        }
        if self.wide {
            write!(f, " wide")?;
        }
        Ok(())
    }
}

/// Splits of K for a product of `m × n` outputs over `k` (`batch` times):
/// more than one only where the blocks alone would leave most of a large GPU
/// idle (fewer than [`Blocks::FILL`] / 2) and K is long enough to give each
/// split at least [`Blocks::MIN_SPLIT_K`].
pub fn auto_splits(blocks: Blocks, m: usize, n: usize, k: usize, batch: usize) -> u32 {
    let count = blocks.count(m, n, batch).max(1);
    if count >= Blocks::FILL / 2 {
        return 1;
    }
    let want = Blocks::FILL.div_ceil(count);
    want.min(k / Blocks::MIN_SPLIT_K).clamp(1, Blocks::MAX_SPLITS) as u32
}

impl Blocks {
    /// The shortest K a split of split-K gets.
    pub const MIN_SPLIT_K: usize = 256;
    /// Most splits of one product.
    pub const MAX_SPLITS: usize = 32;
}

/// Whether a blocked entry point adds a fused low-rank term (its pipeline
/// is the module's low-rank form): the block kernels do, to their tiles
/// (split 0 of split-K to its partial sums); the sum of the splits does not.
pub(crate) fn adds_term(entry: &str) -> bool {
    entry != "gemm_split_sum"
}

/// Whether `entry` makes the final store of C, where an output op
/// (`shaders/output_op.wgsl`) applies: not the split-K pass, whose sums go
/// to the partial slices.
pub(crate) fn stores_output(entry: &str) -> bool {
    entry != "gemm_blocked_split"
}

/// Record the blocked GEMM: one launch of `gemm_blocked`, or with `splits`
/// above 1 `gemm_blocked_split` into a scratch tensor of partial sums and
/// `gemm_split_sum` into C. `key` names the host module's pipeline for an
/// entry point; `operands` binds A and B (and a host's extra tensors),
/// `stores` binds C, a fused low-rank term's factors (bindings 8 and 9,
/// which the block launch binds) and an output op's operand (binding 11,
/// which the launch making the final store binds); `params` is the host's launch parameters with `batch`,
/// `m`, `n`, `k` as in the product, and `set_split` writes K per split into
/// them; each split's K is a multiple of the block's `bk` and of `k_align`.
/// The scratch must fit one binding, else fewer splits are used.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record<P: bytemuck::Pod>(
    rec: &mut crate::gpu::Recorder,
    key: impl Fn(&'static str) -> PipelineKey,
    mut params: P,
    set_split: impl Fn(&mut P, u32),
    operands: &[(u32, &crate::gpu::Tensor)],
    stores: &[(u32, &crate::gpu::Tensor)],
    blocks: Blocks,
    (m, n, k, batch): (usize, usize, usize, usize),
    (splits, k_align): (u32, u32),
) -> crate::error::Result<()> {
    let max_splits = (rec.gpu().max_binding_bytes() / (4 * (m * n * batch).max(1) as u64)).max(1) as u32;
    let align = blocks.bk.max(k_align).max(1) as usize;
    let k_split = k.div_ceil(splits.clamp(1, max_splits) as usize).next_multiple_of(align).max(1);
    let splits = k.div_ceil(k_split).max(1);
    if splits == 1 {
        let bound = [operands, stores].concat();
        return rec.dispatch_bound(&key("gemm_blocked"), &params, &bound, blocks.grid(m, n, batch));
    }
    set_split(&mut params, k_split as u32);
    let (term, finals): (Vec<_>, Vec<_>) = stores.iter().partition(|(binding, _)| matches!(binding, 8 | 9));
    let partial = rec.alloc(&[splits * batch * m * n], crate::gpu::DType::F32)?; // every element written
    let bound = [operands, &term, &[(7, &partial)]].concat();
    rec.dispatch_bound(&key("gemm_blocked_split"), &params, &bound, blocks.grid(m, n, batch * splits))?;
    let groups = super::grid_1d((batch * m * n).div_ceil(256));
    rec.dispatch_bound(&key("gemm_split_sum"), &params, &[&finals[..], &[(7, &partial)]].concat(), groups)
}
