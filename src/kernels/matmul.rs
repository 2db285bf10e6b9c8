//! f32 matrix multiply in the three orientations training needs (`shaders/matmul.wgsl`).

use bytemuck::{Pod, Zeroable};

use super::blocked::{self, is_real_gpu, Blocks, GemvTiles, Vec4Loads};
use super::low_rank::{self, Fused, LowRank, StoreParams};
use super::output_op::{FusedOp, OutputOp};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Gpu, Kernel, PipelineKey, Recorder, Tensor};

/// One (batched) multiply `C = alpha·op(A)·op(B) (+ C)`, with explicit strides
/// and offsets so a call can work on part of a tensor (a chunk of a weight, a
/// column slice of the logits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    /// A is stored (K, M) instead of (M, K).
    pub trans_a: bool,
    /// B is stored (N, K) instead of (K, N).
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub a_off: usize,
    pub b_off: usize,
    pub c_off: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f32,
    pub accumulate: bool,
}

impl Gemm {
    /// Contiguous operands: A (M, K) or (K, M), B (K, N) or (N, K), C (M, N).
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Self {
            m,
            n,
            k,
            batch: 1,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            a_off: 0,
            b_off: 0,
            c_off: 0,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
            alpha: 1.0,
            accumulate: false,
        }
    }

    pub fn batched(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    pub fn accumulate(mut self, on: bool) -> Self {
        self.accumulate = on;
        self
    }

    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }

    /// Whether the decoding GEMV can run it: y = x·Wᵀ, few rows, one batch,
    /// vec4-aligned rows.
    pub fn gemv_ok(&self) -> bool {
        self.m <= GemvTiles::MAX_M && self.batch == 1 && self.vec4_entry() == Some("matmul_nt")
    }

    /// The operands the blocked GEMM can load as vec4s: each whose contiguous
    /// extent, row stride, offset and batch stride are multiples of 4.
    fn vec4_loads(&self) -> Vec4Loads {
        let aligned = |ld: usize, off: usize, stride: usize, along: usize| {
            ld % 4 == 0 && off % 4 == 0 && (self.batch == 1 || stride % 4 == 0) && along % 4 == 0
        };
        Vec4Loads {
            a: aligned(self.lda, self.a_off, self.stride_a, if self.trans_a { self.m } else { self.k }),
            b: aligned(self.ldb, self.b_off, self.stride_b, if self.trans_b { self.k } else { self.n }),
        }
    }

    /// The entry point of the vec4 fast path, when the layout allows it.
    fn vec4_entry(&self) -> Option<&'static str> {
        let a4 = self.lda % 4 == 0 && self.a_off % 4 == 0 && (self.batch == 1 || self.stride_a % 4 == 0);
        let b4 = self.ldb % 4 == 0 && self.b_off % 4 == 0 && (self.batch == 1 || self.stride_b % 4 == 0);
        if !(a4 && b4) {
            return None;
        }
        match (self.trans_a, self.trans_b) {
            (false, true) if self.k % 4 == 0 => Some("matmul_nt"),
            (false, false) if self.k % 4 == 0 && self.n % 4 == 0 => Some("matmul_nn"),
            (true, false) if self.m % 4 == 0 && self.n % 4 == 0 => Some("matmul_tn"),
            _ => None,
        }
    }

    fn check(&self, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
        for (name, t) in [("a", a), ("b", b), ("c", c)] {
            t.expect_dtype("matmul", name, DType::F32)?;
        }
        if self.m == 0 || self.n == 0 || self.batch == 0 {
            return Ok(());
        }
        let (a_rows, a_cols) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        let (b_rows, b_cols) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        let last = |off: usize, stride: usize, rows: usize, ld: usize, cols: usize| {
            off + (self.batch - 1) * stride + rows.saturating_sub(1) * ld + cols
        };
        for (name, t, end, ld, cols) in [
            ("a", a, last(self.a_off, self.stride_a, a_rows, self.lda, a_cols), self.lda, a_cols),
            ("b", b, last(self.b_off, self.stride_b, b_rows, self.ldb, b_cols), self.ldb, b_cols),
            ("c", c, last(self.c_off, self.stride_c, self.m, self.ldc, self.n), self.ldc, self.n),
        ] {
            if ld < cols && !(self.k == 0 && name != "c") {
                return Err(Error::shape(
                    "matmul",
                    format!("row stride {ld} of `{name}` is less than its {cols} columns"),
                ));
            }
            if self.k > 0 || name == "c" {
                if end > t.numel() {
                    return Err(Error::shape(
                        "matmul",
                        format!(
                            "{}x{}x{} (batch {}) reads `{name}` up to element {end}, but it has {} ({:?})",
                            self.m,
                            self.n,
                            self.k,
                            self.batch,
                            t.numel(),
                            t.shape()
                        ),
                    ));
                }
                if end > u32::MAX as usize {
                    return Err(Error::shape("matmul", format!("`{name}` is too large to index with 32 bits")));
                }
            }
        }
        Ok(())
    }

    fn params(&self) -> MatmulParams {
        MatmulParams {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            batch: self.batch as u32,
            lda: self.lda as u32,
            ldb: self.ldb as u32,
            ldc: self.ldc as u32,
            accumulate: self.accumulate as u32,
            a_off: self.a_off as u32,
            b_off: self.b_off as u32,
            c_off: self.c_off as u32,
            alpha: self.alpha,
            stride_a: self.stride_a as u32,
            stride_b: self.stride_b as u32,
            stride_c: self.stride_c as u32,
            k_split: 0,
            lr: StoreParams::default(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
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

/// Outputs per invocation (tm × tn) and workgroup shape (wx × wy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub tm: u32,
    pub tn: u32,
    pub wx: u32,
    pub wy: u32,
}

impl Default for Tiles {
    fn default() -> Self {
        Tiles { tm: 8, tn: 8, wx: 8, wy: 8 }
    }
}

impl Blocks {
    /// [`Blocks::for_shape`] of a [`Gemm`].
    pub fn for_gemm(g: &Gemm) -> Blocks {
        Blocks::for_shape(g.m, g.n, g.batch)
    }
}

impl Tiles {
    /// The tuned tile for an orientation. On lavapipe every per-invocation
    /// buffer load costs far more than an FMA, so large register tiles win;
    /// these were the best of a sweep (`webpeft bench --sweep`) on it, and are
    /// reasonable on real GPUs too (256 outputs per invocation, 16–64
    /// invocations per workgroup).
    pub fn tuned(trans_a: bool, trans_b: bool) -> Tiles {
        match (trans_a, trans_b) {
            (false, true) => Tiles { tm: 16, tn: 32, wx: 4, wy: 4 },
            (false, false) => Tiles { tm: 16, tn: 16, wx: 8, wy: 8 },
            _ => Tiles { tm: 16, tn: 16, wx: 4, wy: 4 },
        }
    }

    /// [`Tiles::tuned`], except for products at most 32 columns wide (LoRA's
    /// h = x·Aᵀ and dh = dy·B, N = r): 16×16 tiles in 4×4 workgroups, 64
    /// columns a workgroup instead of 128 to 256 (chosen on lavapipe; the
    /// sweep is in the README's "Tuning decisions").
    pub fn for_gemm(g: &Gemm) -> Tiles {
        if g.n <= 32 {
            Tiles { tm: 16, tn: 16, wx: 4, wy: 4 }
        } else {
            Self::tuned(g.trans_a, g.trans_b)
        }
    }

    /// Tiles for at most [`Tiles::FEW_ROWS`] rows of A stored untransposed:
    /// every row in one invocation (exactly the rows there are up to 4, then
    /// 8), 8 columns each, 32 invocations a workgroup, so a decoding step's one
    /// row does not compute clamped copies of itself. Each output still sums
    /// its products in the same order as with the big tiles, so the numbers
    /// do not change.
    pub fn few_rows(m: usize, trans_a: bool) -> Option<Tiles> {
        let tm = match m {
            0..=4 => m.max(1) as u32,
            _ => 8,
        };
        (m <= Self::FEW_ROWS && !trans_a).then_some(Tiles { tm, tn: 8, wx: 32, wy: 1 })
    }

    /// Up to this many rows count as "few" (decoding a batch of prompts).
    pub const FEW_ROWS: usize = 8;
}

/// Which kernel runs a [`Gemm`]: the tuned register-tiled one (vec4 when the
/// layout allows), or the one-output-per-invocation yardstick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Tiled(Tiles),
    Scalar(Tiles),
    Naive,
    /// The 8-lane subgroup kernels (`shaders/matmul_subgroup.wgsl`) where the
    /// device allows them and the layout takes vec4 loads; `Tiled` otherwise.
    Subgroup(SgTiles),
    /// The workgroup-memory GEMM for real GPUs (`shaders/gemm_blocked.wgsl`):
    /// any orientation, shape, stride and offset; K split where the blocks
    /// alone would leave the GPU idle ([`blocked::auto_splits`]).
    Blocked(Blocks),
    /// The same with K split in this many parts (1: no split).
    BlockedSplit(Blocks, u32),
    /// The decoding GEMV (`shaders/gemv.wgsl`, its subgroup reduction in
    /// `shaders/gemv_subgroup.wgsl`) for y = x·Wᵀ with at most
    /// [`GemvTiles::MAX_M`] rows, one batch and a vec4 layout; `Blocked`
    /// otherwise. The subgroup reduction falls back to the portable one on
    /// a device without subgroups.
    Gemv(GemvTiles),
}

/// Block of the subgroup kernels: one 8-lane subgroup (= one workgroup)
/// computes `sr` rows × `8·tn` columns of C, each lane `sr × tn` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgTiles {
    /// Rows per subgroup, a multiple of 32.
    pub sr: u32,
    /// Columns per lane, a multiple of 4.
    pub tn: u32,
}

impl SgTiles {
    /// The block tuned on lavapipe (`webpeft bench --sweep-sg`): 32×16, 512
    /// outputs per lane (the sweep is in the README's "Tuning decisions").
    pub fn tuned(_trans_a: bool, _trans_b: bool) -> SgTiles {
        SgTiles { sr: 32, tn: 16 }
    }

    /// The block for a product's shape. LoRA's products are skinny (r = 16
    /// columns, or a K or M of r), and the 128 columns of the big block would
    /// mostly compute padding: at most 32 columns take 32×4 (32 columns a
    /// subgroup), a K or M of at most 32 takes 32×8, all else [`SgTiles::tuned`].
    /// Bigger row blocks lose: they leave too few subgroups to run in
    /// parallel (chosen on lavapipe; see the README's "Tuning decisions").
    pub fn for_gemm(g: &Gemm) -> SgTiles {
        if g.n <= 32 {
            SgTiles { sr: 32, tn: 4 }
        } else if g.k <= 32 || g.m <= 32 {
            SgTiles { sr: 32, tn: 8 }
        } else {
            Self::tuned(g.trans_a, g.trans_b)
        }
    }

    /// Largest block (outputs per lane) accepted. lavapipe 22.3 no longer
    /// unrolls a 64×16 block: its accumulators go to scratch memory, it is
    /// slow, and in a trial it returned wrong sums once K reached 256.
    pub const MAX_OUTPUTS: u32 = 640;

    fn valid(self) -> bool {
        self.sr > 0 && self.sr % 32 == 0 && self.tn > 0 && self.tn % 4 == 0 && self.sr * self.tn <= Self::MAX_OUTPUTS
    }
}

/// The subgroup width the subgroup kernels are written for.
const SG_WIDTH: u32 = 8;

/// Whether this device runs the subgroup kernels: it has subgroups, and they
/// are always exactly [`SG_WIDTH`] lanes wide (the kernels broadcast from
/// lanes 0..8 and map lanes to columns by that width).
pub fn subgroups_usable(gpu: &Gpu) -> bool {
    let info = gpu.info();
    gpu.features().contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == SG_WIDTH
        && info.subgroup_max_size == SG_WIDTH
}

fn key(entry: &'static str, g: &Gemm, tiles: Tiles) -> PipelineKey {
    PipelineKey::new(Kernel::Matmul, entry)
        .with("TM", Const::U32(tiles.tm))
        .with("TN", Const::U32(tiles.tn))
        .with("WX", Const::U32(tiles.wx))
        .with("WY", Const::U32(tiles.wy))
        .with("TRANS_A", Const::Bool(g.trans_a))
        .with("TRANS_B", Const::Bool(g.trans_b))
}

/// Record `C = alpha·op(A)·op(B) (+ C)` with the tuned kernel.
pub fn gemm(rec: &mut Recorder, g: &Gemm, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    gemm_with(rec, g, a, b, c, Variant::tuned(rec.gpu(), g))
}

impl Variant {
    /// The kernel `gemm` uses for `g` on `gpu`: for a few rows (a decoding
    /// step's matrix-vector products), a tile of exactly those rows, since the
    /// big blocks would compute 16–32 rows to keep one; else the subgroup
    /// kernel where it runs, else the tuned register tiles.
    pub fn tuned(gpu: &Gpu, g: &Gemm) -> Variant {
        if is_real_gpu(gpu) {
            return if g.gemv_ok() {
                let product = super::tune::Product::Gemv {
                    format: crate::quant::QuantFormat::F32,
                    half: false,
                    m: g.m,
                    n: g.n,
                    k: g.k,
                };
                Variant::Gemv(super::tune::gemv_for(gpu, product, GemvTiles::for_f32(gpu, g.n)))
            } else {
                Variant::Blocked(super::tune::blocks_for(gpu, super::tune::Product::F32(*g), Blocks::for_gemm(g)))
            };
        }
        if let Some(t) = Tiles::few_rows(g.m, g.trans_a) {
            return Variant::Tiled(t);
        }
        if subgroups_usable(gpu) && g.vec4_entry().is_some() {
            Variant::Subgroup(SgTiles::for_gemm(g))
        } else {
            Variant::Tiled(Tiles::for_gemm(g))
        }
    }
}

/// Record a multiply with a chosen kernel (the benchmark compares them).
pub fn gemm_with(rec: &mut Recorder, g: &Gemm, a: &Tensor, b: &Tensor, c: &Tensor, variant: Variant) -> Result<()> {
    record(rec, g, a, b, c, variant, None, None)
}

/// `C = op(A)·op(B) (+ C)` (one batch, alpha 1) through `variant` with
/// `scale·h·B_termᵀ` added as it stores C (`shaders/low_rank.wgsl`),
/// whatever the rows (the tests' and the benchmark's way in;
/// `qmatmul::qlinear_low_rank` and `qlinear_backward_low_rank` decide when
/// to fuse).
pub fn gemm_low_rank_with(
    rec: &mut Recorder,
    g: &Gemm,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    term: &LowRank,
    variant: Variant,
) -> Result<()> {
    record(rec, g, a, b, c, variant, Some((term, 0)), None)
}

/// [`gemm_low_rank_with`] with an output op after the term (or without a
/// term), the op's column 0 C's (the tests' way in).
#[allow(clippy::too_many_arguments)]
pub fn gemm_op_with(
    rec: &mut Recorder,
    g: &Gemm,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    term: Option<&LowRank>,
    op: OutputOp,
    variant: Variant,
) -> Result<()> {
    record(rec, g, a, b, c, variant, term.map(|t| (t, 0)), Some((op, 0)))
}

/// [`gemm`] with a fused term (B's row `row` is the one of C's column 0)
/// and output op (its column `col` C's column 0).
pub(crate) fn gemm_fused(
    rec: &mut Recorder,
    g: &Gemm,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    term: Fused,
    op: FusedOp,
) -> Result<()> {
    record(rec, g, a, b, c, Variant::tuned(rec.gpu(), g), term, op)
}

/// Checks that a term fits the product `g` (one batch, alpha 1: the GEMV
/// and the blocked GEMM add the term before alpha): h has C's M rows and B
/// the rows `row..row + N`, both r wide.
fn check_term(g: &Gemm, (t, row): (&LowRank, usize)) -> Result<()> {
    let fits = match (t.h_dims(), t.b_dims()) {
        (Some((hm, _, _)), Some((bo, _))) => hm == g.m && row + g.n <= bo,
        _ => false,
    };
    if g.batch != 1 || g.alpha != 1.0 || !fits {
        return Err(Error::shape(
            LowRank::OP,
            format!(
                "{} and {} {:?} (from row {row}) do not fit a {}x{}x{} product (batch {}, alpha {})",
                t.h_label(),
                if t.transposed { "Bᵀ" } else { "B" },
                t.b.shape(),
                g.m,
                g.n,
                g.k,
                g.batch,
                g.alpha
            ),
        ));
    }
    t.h.expect_dtype(LowRank::OP, "h", DType::F32)?;
    t.b.expect_dtype(LowRank::OP, "B", DType::F32)
}

#[allow(clippy::too_many_arguments)]
fn record<'a>(
    rec: &mut Recorder,
    g: &Gemm,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    variant: Variant,
    term: Fused<'a>,
    op: FusedOp<'a>,
) -> Result<()> {
    g.check(a, b, c)?;
    if let Some(t) = term {
        check_term(g, t)?;
    }
    if let Some((o, col)) = op {
        if g.batch != 1 {
            return Err(Error::shape(
                OutputOp::OP,
                format!("an output op on a batch of {}: one product only", g.batch),
            ));
        }
        o.check(g.m, (col, g.n), g.accumulate)?;
    }
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let params = MatmulParams { lr: low_rank::store_params(term, op), ..g.params() };
    let fused = term.is_some();
    let op_code = low_rank::op_code(op);
    let bind = |bound: &[(u32, &'a Tensor)]| low_rank::with_bindings(bound, term, op);
    let variant = match variant {
        Variant::Subgroup(_) if !(subgroups_usable(rec.gpu()) && g.vec4_entry().is_some()) => {
            Variant::Tiled(Tiles::for_gemm(g))
        }
        Variant::Gemv(_) if !g.gemv_ok() => Variant::Blocked(Blocks::for_gemm(g)),
        v => v,
    };
    match variant {
        Variant::Blocked(t) => {
            let splits = blocked::auto_splits(t, g.m, g.n, g.k, g.batch);
            record_blocked(rec, g, params, (a, b), &bind(&[(6, c)]), (t, splits), op_code)
        }
        Variant::BlockedSplit(t, splits) => {
            record_blocked(rec, g, params, (a, b), &bind(&[(6, c)]), (t, splits), op_code)
        }
        Variant::Gemv(t) => {
            let t = t.on(rec.gpu());
            t.check().map_err(|e| Error::shape("matmul", e))?;
            let key = gemv_key(t, g.m).low_rank(fused).output_op(op_code);
            rec.dispatch_bound(&key, &params, &bind(&[(1, a), (2, b), (3, c)]), t.grid(g.n))
        }
        Variant::Subgroup(t) => {
            if !t.valid() {
                return Err(Error::shape(
                    "matmul",
                    format!("subgroup block {t:?}: rows must be a multiple of 32, columns of 4, at most {} outputs per lane", SgTiles::MAX_OUTPUTS),
                ));
            }
            let groups = [div(g.n, SG_WIDTH * t.tn), div(g.m, t.sr), g.batch as u32];
            let key = subgroup_key(g, t).low_rank(fused).output_op(op_code);
            rec.dispatch_bound(&key, &params, &bind(&[(1, a), (2, b), (3, c)]), groups)
        }
        Variant::Tiled(t) if g.vec4_entry().is_some() => {
            let entry = g.vec4_entry().unwrap_or("matmul_nt");
            let groups = [div(g.n, t.wx * t.tn), div(g.m, t.wy * t.tm), g.batch as u32];
            rec.dispatch_bound(
                &key(entry, g, t).low_rank(fused).output_op(op_code),
                &params,
                &bind(&[(1, a), (2, b), (3, c)]),
                groups,
            )
        }
        Variant::Tiled(t) | Variant::Scalar(t) => {
            let groups = [div(g.n, t.wx * t.tn), div(g.m, t.wy * t.tm), g.batch as u32];
            let key = key("matmul_scalar", g, t).low_rank(fused).output_op(op_code);
            rec.dispatch_bound(&key, &params, &bind(&[(4, a), (5, b), (6, c)]), groups)
        }
        Variant::Naive => {
            let groups = [div(g.n, 16), div(g.m, 16), g.batch as u32];
            rec.dispatch_bound(
                &naive_key(g).low_rank(fused).output_op(op_code),
                &params,
                &bind(&[(4, a), (5, b), (6, c)]),
                groups,
            )
        }
    }
}

/// The blocked GEMM; `stores` binds C, a fused term's factors and an
/// output op's operand (OUTPUT_OP `op_code`).
fn record_blocked(
    rec: &mut Recorder,
    g: &Gemm,
    params: MatmulParams,
    (a, b): (&Tensor, &Tensor),
    stores: &[(u32, &Tensor)],
    (t, splits): (Blocks, u32),
    op_code: u32,
) -> Result<()> {
    t.check(rec.gpu()).map_err(|e| Error::shape("matmul", e))?;
    let fused = stores.iter().any(|(binding, _)| *binding == 8);
    let key = |entry| {
        let op = if blocked::stores_output(entry) { op_code } else { 0 };
        blocked_key(g, t, entry).low_rank(fused && blocked::adds_term(entry)).output_op(op)
    };
    let set = |p: &mut MatmulParams, k: u32| p.k_split = k;
    // The vec4 views (1, 2) and the scalar ones (4, 5): the block entries use both.
    let operands = [(1, a), (2, b), (4, a), (5, b)];
    blocked::record(rec, key, params, set, &operands, stores, t, (g.m, g.n, g.k, g.batch), (splits, 1))
}

/// The one-output-per-invocation yardstick (16×16 workgroups; TM and TN
/// only size the module's other entries).
fn naive_key(g: &Gemm) -> PipelineKey {
    key("matmul_naive", g, Tiles { tm: 4, tn: 4, wx: 16, wy: 16 })
}

/// The subgroup kernel for `g`'s orientation (which takes vec4 loads).
fn subgroup_key(g: &Gemm, t: SgTiles) -> PipelineKey {
    let entry = match g.vec4_entry() {
        Some("matmul_nn") => "matmul_nn_sg",
        Some("matmul_tn") => "matmul_tn_sg",
        _ => "matmul_nt_sg",
    };
    PipelineKey::new(Kernel::MatmulSubgroup, entry)
        .with("TM", Const::U32(4))
        .with("TN", Const::U32(t.tn))
        .with("WX", Const::U32(SG_WIDTH))
        .with("WY", Const::U32(1))
        .with("TRANS_A", Const::Bool(g.trans_a))
        .with("TRANS_B", Const::Bool(g.trans_b))
        .with("SR", Const::U32(t.sr))
}

fn blocked_key(g: &Gemm, t: Blocks, entry: &'static str) -> PipelineKey {
    t.with_consts(PipelineKey::new(Kernel::MatmulBlocked, entry), g.vec4_loads())
        .with("TRANS_A", Const::Bool(g.trans_a))
        .with("TRANS_B", Const::Bool(g.trans_b))
}

fn gemv_key(t: GemvTiles, m: usize) -> PipelineKey {
    let kernel = if t.subgroup { Kernel::MatmulGemvSubgroup } else { Kernel::MatmulGemv };
    t.with_consts(PipelineKey::new(kernel, t.entry()), m)
        .with("TRANS_A", Const::Bool(false))
        .with("TRANS_B", Const::Bool(true))
}

/// Every pipeline [`gemm_with`] can request on `gpu` (`kernels::variants`),
/// for both kernel families (either can be forced on any adapter): per
/// orientation, the register tiles [`Variant::tuned`] picks (few rows, skinny,
/// tuned) through the vec4 entry where the orientation has one and the scalar
/// one for other layouts, the yardstick, the subgroup blocks where the device
/// runs them; the blocked GEMM with every block `blocks` lists, A and B each
/// loaded as vec4s or not; the GEMV for 1..=`GemvTiles::MAX_M` rows in every
/// layout the autotuner times (`tune::gemv_candidates`) and the skinny
/// products' ([`GemvTiles::for_f32`]); and for a Linear's
/// forward (A·Bᵀ) and its dx (A·B) each of them with a low-rank term in its
/// store ([`gemm_low_rank_with`]), and for the forward each kernel that
/// makes the final store with an output op after its term (SwiGLU's gate,
/// the op that binds the most; the GEMV at 1 and `GemvTiles::MAX_M` rows,
/// the first block; [`gemm_op_with`]).
pub(crate) fn pipeline_keys(gpu: &Gpu, blocks: &[Blocks]) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    // A key, its low-rank form where a Linear's product can ask for it, and
    // where a Linear's forward makes the final store that key (with its term
    // where it takes one) with the output op that binds the most (SwiGLU's gate).
    let mut push = |key: PipelineKey, fusable: bool, op: bool| {
        if op {
            keys.push(key.clone().low_rank(fusable).output_op(2));
        }
        if fusable {
            keys.push(key.clone().low_rank(true));
        }
        keys.push(key);
    };
    for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
        let linear = !trans_a;
        let forward = !trans_a && trans_b;
        // Aligned shapes: (m, n, k) that take the vec4 entry where there is one.
        let g = |m, n, k| Gemm::new(m, n, k, trans_a, trans_b);
        let big = g(256, 256, 256);
        let mut tiles = vec![Tiles::for_gemm(&g(256, 16, 256)), Tiles::for_gemm(&big)];
        tiles.extend((0..=Tiles::FEW_ROWS).filter_map(|m| Tiles::few_rows(m, trans_a)));
        for t in tiles {
            if let Some(entry) = big.vec4_entry() {
                push(key(entry, &big, t), linear, forward);
            }
            push(key("matmul_scalar", &big, t), linear, forward);
        }
        push(naive_key(&big), linear, forward);
        if subgroups_usable(gpu) && big.vec4_entry().is_some() {
            for shape in [g(256, 16, 256), g(256, 256, 16), big] {
                push(subgroup_key(&big, SgTiles::for_gemm(&shape)), linear, forward);
            }
        }
        // Each operand loaded as vec4s or not (an odd offset turns one off).
        let layouts = [(0, 0), (1, 0), (0, 1), (1, 1)].map(|(a_off, b_off)| Gemm { a_off, b_off, ..big });
        for (i, &b) in blocks.iter().enumerate() {
            for layout in &layouts {
                for entry in ["gemm_blocked", "gemm_blocked_split", "gemm_split_sum"] {
                    let op = forward && i == 0 && blocked::stores_output(entry);
                    push(blocked_key(layout, b, entry), linear && blocked::adds_term(entry), op);
                }
            }
        }
    }
    let mut gemvs = super::tune::gemv_candidates(gpu);
    gemvs.push(GemvTiles::for_f32(gpu, 1)); // the skinny products' rule
    for t in gemvs {
        for m in 1..=GemvTiles::MAX_M {
            push(gemv_key(t, m), true, m == 1 || m == GemvTiles::MAX_M);
        }
    }
    keys
}

fn div(n: usize, d: u32) -> u32 {
    n.div_ceil(d as usize) as u32
}

fn dims2(op: &'static str, arg: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape() {
        [] => Err(Error::shape(op, format!("`{arg}` is a scalar, expected a matrix"))),
        [n] => Ok((1, *n)),
        s => Ok((s[..s.len() - 1].iter().product(), s[s.len() - 1])),
    }
}

/// y = x·Wᵀ for x (…, in) and a Linear weight W (out, in): y (…, out).
pub fn linear(rec: &mut Recorder, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = dims2("linear", "x", x)?;
    let (n, kw) = dims2("linear", "weight", w)?;
    if k != kw || w.shape().len() != 2 {
        return Err(Error::shape(
            "linear",
            format!("x {:?} does not match weight {:?} (out, in)", x.shape(), w.shape()),
        ));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap_or(&mut 0) = n;
    let y = rec.alloc(&shape, DType::F32)?; // gemm writes every element
    gemm(rec, &Gemm::new(m, n, k, false, true), x, w, &y)?;
    Ok(y)
}

/// dx = dy·W for dy (…, out) and W (out, in): dx (…, in).
pub fn linear_backward_input(rec: &mut Recorder, dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, n) = dims2("linear_backward_input", "dy", dy)?;
    let (nw, k) = dims2("linear_backward_input", "weight", w)?;
    if n != nw || w.shape().len() != 2 {
        return Err(Error::shape(
            "linear_backward_input",
            format!("dy {:?} does not match weight {:?}", dy.shape(), w.shape()),
        ));
    }
    let mut shape = dy.shape().to_vec();
    *shape.last_mut().unwrap_or(&mut 0) = k;
    let dx = rec.alloc(&shape, DType::F32)?; // gemm writes every element
    gemm(rec, &Gemm::new(m, k, n, false, false), dy, w, &dx)?;
    Ok(dx)
}

/// dW = dyᵀ·x for dy (…, out) and x (…, in): dW (out, in).
pub fn linear_backward_weight(rec: &mut Recorder, dy: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (rows, n) = dims2("linear_backward_weight", "dy", dy)?;
    let (rows_x, k) = dims2("linear_backward_weight", "x", x)?;
    if rows != rows_x {
        return Err(Error::shape(
            "linear_backward_weight",
            format!("dy {:?} and x {:?} have different rows", dy.shape(), x.shape()),
        ));
    }
    let dw = rec.alloc(&[n, k], DType::F32)?; // gemm writes every element
    let mut g = Gemm::new(n, k, rows, true, false);
    g.lda = n;
    gemm(rec, &g, dy, x, &dw)?;
    Ok(dw)
}
