//! Causal self-attention with grouped-query heads (`shaders/attention.wgsl`),
//! transformers' eager semantics: `softmax(q·kᵀ·scale + causal mask)·v` in
//! f32, query head h reading kv head `h / (n_heads / n_kv_heads)`.
//!
//! Memory: the forward saves only the logsumexp of each query row's scores,
//! `lse` (batch, n_heads, seq) — `4·B·Hq·T` bytes, e.g. 64 KiB for 1×32×512 —
//! instead of the probabilities (`4·B·Hq·T²`, 32 MiB for the same shapes, and
//! over the binding limit at T = 2048). The backward recomputes the
//! probabilities from q, k and lse; it also needs v, the forward's `out` and
//! `dout`, and makes one (batch, n_heads, seq) scratch tensor (and, where
//! the flash kernels split the dk and dv work, one of its parts' partial
//! sums: `2 · parts` times the size of k; 16 MiB at the Llama-1B shape).
//!
//! Packed rows: [`attention_forward_segmented`] and
//! [`attention_backward_segmented`] keep each query inside its own example
//! (block-diagonal causal), given where each query's example starts.
//!
//! Speed: each invocation holds a register tile of several query rows (or
//! key rows, for dk and dv) and every k, v, q or dout row it loads, as vec4s,
//! serves the whole tile; a head_dim that is not a multiple of 4 runs
//! zero-padded. Where the device has 8-lane subgroups (lavapipe), the
//! subgroup kernels also share each loaded row between the 8 lanes; they need
//! a sequence that fills the lanes, so decoding keeps the portable kernels.
//! On real GPUs (`kernels::blocked::is_real_gpu`) training and prefill run the
//! flash kernels (`shaders/attention_flash.wgsl`): a workgroup stages tiles
//! of k and v (q and dout, for dk and dv) in workgroup memory once for all
//! its invocations, one query (key) row each; see [`FlashTiles`]. Their dk
//! and dv launch has one workgroup of 32 per 32 keys of a kv head (128 at
//! the Llama-1B shape), too few for a large GPU, so each key block's work is
//! cut into parts that a second pass sums ([`FlashTiles::dkv_parts`]).

use bytemuck::{Pod, Zeroable};

use super::blocked::Blocks;
use super::checks::{all_f32, dims, same_shape, u32_count};
use super::grid_1d;
use super::matmul::subgroups_usable;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Gpu, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 64;
/// Lanes of the subgroups the subgroup kernels are written for.
const SG_WIDTH: u32 = 8;
/// The largest head_dim (a tile of one row then holds 64 vec4s an array).
pub const MAX_HEAD_DIM: usize = 256;
/// Rows × head_dim / 4 of an invocation's register tile. Each invocation
/// holds two to four such arrays (q and the output sums; q, dout and dq; or
/// k, v, dk and dv). lavapipe's compiler unrolls a loop nest over one only up
/// to about 800 operations, and its compile time grows steeply with the
/// arrays: 64 is 4 rows at head_dim 64, 2 at 128, and compiles in seconds.
const TILE_VEC4S: usize = 64;
/// The same on a real GPU (`kernels::blocked::is_real_gpu`): its registers,
/// not a compiler's unrolling, are the budget. Two to four arrays of 64 vec4s
/// (1,024 floats) would spill to local memory and leave one warp an SM; 16
/// vec4s keep an invocation near 128–256 registers (one row at head_dim 64)
/// and give the launch many more invocations. Chosen from how GPUs work, not
/// yet timed on one.
const GPU_TILE_VEC4S: usize = 16;

/// The flash kernels' shapes (`shaders/attention_flash.wgsl`) for a head_dim
/// and a kv group: one query row per invocation of a forward or dq
/// workgroup (`g` query heads × `bp` positions of one kv group, `g · bp ≤
/// WG`), one key row per invocation of a dkv workgroup (`kb` keys), and key
/// (query) tiles of `bk` rows staged in workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashTiles {
    pub g: u32,
    pub bp: u32,
    pub bk: u32,
    pub kb: u32,
}

impl FlashTiles {
    /// Invocations of a forward or dq workgroup (the module's WG, which the
    /// prelude gives every attention kernel): 64 query rows.
    pub const WG: u32 = WG;
    /// Key rows (invocations) of a dkv workgroup: 32, so that the Llama-1B
    /// shape (512 keys × 8 kv heads) still makes 128 workgroups.
    pub const KB: u32 = 32;
    /// WebGPU's default `maxComputeWorkgroupStorageSize`: two tiles of `bk`
    /// rows × head_dim f32 fit in it.
    pub const WORKGROUP_BYTES: u32 = 16 << 10;
    /// The widest head the flash kernels take: each invocation keeps two
    /// (forward) to four (dkv) rows of head_dim in registers, 256 to 512
    /// floats at 128 already. Wider heads (up to [`MAX_HEAD_DIM`]) run the
    /// register-tiled kernels.
    pub const MAX_HEAD_DIM: usize = 128;

    /// Tiles for `head_dim` (padded to a multiple of 4) and `group` query
    /// heads per kv head: as many heads of the group as divide it, up to 16,
    /// so that a block spans few positions (its causal edge wastes little);
    /// tiles of as many rows as fit 16 KiB (64 at head_dim ≤ 32, 32 at 64,
    /// 16 at 128).
    pub fn new(head_dim: usize, group: usize) -> FlashTiles {
        let d4 = head_dim.div_ceil(4) as u32;
        let g = (1..=group.min(16)).rev().find(|g| group % g == 0).unwrap_or(1) as u32;
        let bk = (Self::WORKGROUP_BYTES / (2 * 16 * d4)).clamp(1, 64);
        FlashTiles { g, bp: Self::WG / g, bk, kb: Self::KB }
    }

    /// Workgroup memory of either kernel: two tiles of `bk` rows of `d4` vec4s.
    pub fn workgroup_bytes(self, d4: u32) -> u32 {
        2 * 16 * self.bk * d4
    }

    /// Workgroups of the unsplit dkv launch: one per `kb` keys of each
    /// (batch, kv head).
    pub fn dkv_blocks(self, batch: usize, tkv: usize, hkv: usize) -> usize {
        batch * hkv * tkv.div_ceil(self.kb as usize)
    }

    /// The parts [`Variant::Flash`] cuts each dkv key block's work into
    /// (`shaders/attention_flash.wgsl`'s split dkv), for `tq` queries of `hq`
    /// heads against `tkv` keys of `hkv`: 1 where the unsplit launch has
    /// [`DKV_FILL_INVOCATIONS`], else enough parts to reach it, at most
    /// [`MAX_DKV_PARTS`] and never more than the query tiles of the longest
    /// key block (`hq / hkv` heads × ⌈tq / bk⌉).
    pub fn dkv_parts(self, batch: usize, tq: usize, tkv: usize, hq: usize, hkv: usize) -> u32 {
        let invocations = (self.dkv_blocks(batch, tkv, hkv) * self.kb as usize).max(1);
        if invocations >= DKV_FILL_INVOCATIONS {
            return 1;
        }
        let tiles = (hq / hkv.max(1)) * tq.div_ceil(self.bk as usize);
        DKV_FILL_INVOCATIONS.div_ceil(invocations).min(MAX_DKV_PARTS as usize).min(tiles).max(1) as u32
    }
}

/// Invocations a flash dkv launch should have before its key blocks' work is
/// split ([`FlashTiles::dkv_parts`]): as many as the blocked matmul's
/// [`Blocks::FILL`] workgroups of 256, its measure of a launch that keeps a
/// large GPU busy (67,584). An H200's 132 SMs hold up to 2,048 invocations
/// each, but dkv workgroups of 32 take 16 KiB of workgroup memory each, so
/// about 13 of them (416 invocations) fit an SM's 228 KiB: some 57k
/// invocations on the whole GPU, just under this target. Chosen from how GPUs
/// work, not yet timed on one.
pub const DKV_FILL_INVOCATIONS: usize = Blocks::FILL * 256;

/// Most parts a flash dkv key block's work is cut into: each part re-stages
/// the q and dout tiles at its edges and writes a whole (batch, seq,
/// n_kv_heads, head_dim) dk and dv of partial sums, which the sum pass reads
/// back (at the Llama-1B shape, 2 MiB a part).
pub const MAX_DKV_PARTS: u32 = 8;

/// Floats of the scratch a training backward's attention allocates on the
/// real-GPU kernel family: the flash kernels' split dkv writes every part's dk
/// and dv, `(2 · parts, batch, tkv, hkv, head_dim)` (head_dim padded to 4),
/// where it splits ([`FlashTiles::dkv_parts`], fewer parts where the scratch
/// would pass `binding_limit` bytes). 0 where the flash kernels do not run
/// (fewer than [`FLASH_MIN_SEQ`] queries, heads wider than
/// [`FlashTiles::MAX_HEAD_DIM`]) or do not split. For the memory plan.
pub fn flash_backward_scratch(
    (batch, tq, tkv): (usize, usize, usize),
    (hq, hkv, head_dim): (usize, usize, usize),
    binding_limit: u64,
) -> usize {
    if head_dim > FlashTiles::MAX_HEAD_DIM || tq < FLASH_MIN_SEQ as usize || hkv == 0 {
        return 0;
    }
    let dk = batch * tkv * hkv * head_dim.next_multiple_of(4);
    let max_parts = (binding_limit / (8 * dk as u64).max(1)).max(1) as usize;
    let parts = (FlashTiles::new(head_dim, hq / hkv).dkv_parts(batch, tq, tkv, hq, hkv) as usize).min(max_parts);
    if parts > 1 {
        2 * parts * dk
    } else {
        0
    }
}

/// Which attention kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// On real GPUs (`kernels::blocked::is_real_gpu`) the flash kernels for
    /// sequences of at least [`FLASH_MIN_SEQ`] queries and head dims up to
    /// [`FlashTiles::MAX_HEAD_DIM`]; elsewhere the subgroup kernels where
    /// they run and the queries fill a subgroup's lanes (training, prefill);
    /// else the portable ones (decoding).
    Auto,
    /// `shaders/attention.wgsl`: register tiles and vec4 loads; runs everywhere.
    Portable,
    /// `shaders/attention_subgroup.wgsl`: the 8 lanes of a subgroup share
    /// every row they load (native only, 8-lane subgroups: lavapipe).
    Subgroup,
    /// `shaders/attention_flash.wgsl`: key and value tiles in workgroup
    /// memory, one row per invocation (real GPUs; runs everywhere, head dims
    /// up to [`FlashTiles::MAX_HEAD_DIM`], else the portable kernels). The
    /// dk and dv work of each key block is split where the key blocks alone
    /// would leave a large GPU idle ([`FlashTiles::dkv_parts`]).
    Flash,
    /// The same with each dkv key block's work cut into this many parts (1:
    /// no split; a part left without queries of a block stores zeros).
    FlashSplit(u32),
    /// `shaders/attention_split_kv.wgsl`, the forward of a few queries
    /// against many keys (decoding): the keys cut into splits, a workgroup
    /// each, then their partial sums combined. Real GPUs get it for fewer
    /// than [`FLASH_MIN_SEQ`] queries; runs everywhere. Forward only: the
    /// backward (and packed rows) take the portable kernels.
    SplitKv,
}

/// The split-KV forward's shape (`shaders/attention_split_kv.wgsl`): at most
/// this many query rows a workgroup, keys a block.
const SPLIT_RB: u32 = 32;
const SPLIT_KB: u32 = 64;

/// The split-KV forward's rows a workgroup for `rows` rows of a kv head (a
/// power of two, so few pipelines) and its invocations: a key each, one or
/// two row lanes.
fn split_kv_shape(rows: usize) -> (u32, u32) {
    let rb = (rows.next_power_of_two() as u32).min(SPLIT_RB);
    (rb, if rb >= 8 { 2 * SPLIT_KB } else { SPLIT_KB })
}
/// Workgroups the split-KV forward aims for (all its splits together): a
/// few per SM of a large GPU.
const SPLIT_TARGET_WORKGROUPS: usize = 512;

/// The fewest queries [`Variant::Auto`] gives the flash kernels: a block is
/// 64 query rows (heads × positions), and decoding's few queries would leave
/// most of its invocations idle.
pub const FLASH_MIN_SEQ: u32 = 16;

impl Variant {
    /// The kernels that run for `tq` queries of `head_dim`: `self`, or the
    /// portable ones where the others cannot run.
    pub fn resolve(self, gpu: &Gpu, tq: u32, head_dim: usize) -> Variant {
        let subgroups = subgroups_usable(gpu);
        let flash = head_dim <= FlashTiles::MAX_HEAD_DIM;
        let real_gpu = super::blocked::is_real_gpu(gpu);
        match self {
            Variant::Auto if flash && real_gpu && tq >= FLASH_MIN_SEQ => Variant::Flash,
            Variant::Auto if real_gpu && tq < FLASH_MIN_SEQ => Variant::SplitKv,
            Variant::SplitKv => Variant::SplitKv,
            Variant::Auto if subgroups && tq >= SG_WIDTH => Variant::Subgroup,
            Variant::Subgroup if subgroups => Variant::Subgroup,
            Variant::Flash if flash => Variant::Flash,
            Variant::FlashSplit(parts) if flash => Variant::FlashSplit(parts),
            _ => Variant::Portable,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    tq: u32,
    tkv: u32,
    hq: u32,
    hkv: u32,
    offset: u32,
    scale: f32,
    parts: u32, // the split dkv's parts (attention_backward_dkv_flash_split, attention_dkv_sum)
}

/// Checks q (B, Tq, Hq, D) against k and v (B, Tkv, Hkv, D) and returns the
/// uniform block for keys 0..tkv and queries from `offset`.
fn check(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize, scale: f32) -> Result<Params> {
    all_f32(op, &[("q", q), ("k", k), ("v", v)])?;
    let [batch, tq, hq, d] = dims(op, "q", "(batch, seq, n_heads, head_dim)", q)?;
    let [kb, tkv, hkv, kd] = dims(op, "k", "(batch, seq, n_kv_heads, head_dim)", k)?;
    same_shape(op, ("k", k), ("v", v))?;
    if kb != batch || kd != d {
        return Err(Error::shape(
            op,
            format!("k {:?} does not match q {:?} in batch or head_dim", k.shape(), q.shape()),
        ));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(Error::shape(op, format!("n_heads {hq} must be a multiple of n_kv_heads {hkv}")));
    }
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(Error::shape(op, format!("head_dim {d} must be in 1..={MAX_HEAD_DIM}")));
    }
    if offset + tq > tkv {
        return Err(Error::shape(
            op,
            format!("queries at positions {offset}..{} need that many rows of k, which has {tkv}", offset + tq),
        ));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(op, format!("scale must be finite, got {scale}")));
    }
    // Counted as head_dim padded to a multiple of 4, as the kernels run it.
    let padded = d.next_multiple_of(4);
    u32_count(op, "q's element count", q.numel() / d * padded)?;
    u32_count(op, "k's element count", k.numel() / d * padded)?;
    Ok(Params {
        batch: batch as u32,
        tq: tq as u32,
        tkv: tkv as u32,
        hq: hq as u32,
        hkv: hkv as u32,
        offset: offset as u32,
        scale,
        parts: 1,
    })
}

/// A launch's kernels and register tiles (see `shaders/attention.wgsl`): G
/// query heads of one kv group × P positions per forward or dq invocation, PK
/// key rows per dkv invocation. Heads first: they share every key without a
/// causal edge. The subgroup kernels give each of 8 lanes such a tile; the
/// flash kernels take `flash` instead (and P = PK = 1).
#[derive(Clone, Copy)]
struct Launch {
    variant: Variant, // Portable, Subgroup or Flash (FlashSplit too), as resolved for the device
    segments: bool,   // packed rows: the kernels read starts (binding 16)
    d4: u32,
    g: u32,
    p: u32,
    pk: u32,
    flash: Option<FlashTiles>,
    dkv_parts: u32, // the flash dkv's parts (1: unsplit); 1 for the other variants
}

impl Launch {
    fn new(gpu: &Gpu, variant: Variant, p: &Params, head_dim: usize) -> Launch {
        let budget = if super::blocked::is_real_gpu(gpu) { GPU_TILE_VEC4S } else { TILE_VEC4S };
        Self::with_budget(gpu, variant, p, head_dim, budget)
    }

    fn with_budget(gpu: &Gpu, variant: Variant, p: &Params, head_dim: usize, budget: usize) -> Launch {
        let d4 = head_dim.div_ceil(4);
        let group = (p.hq / p.hkv) as usize;
        let variant = variant.resolve(gpu, p.tq, head_dim);
        if let Variant::Flash | Variant::FlashSplit(_) = variant {
            let t = FlashTiles::new(head_dim, group);
            let dkv_parts = match variant {
                Variant::FlashSplit(parts) => parts.max(1),
                _ => t.dkv_parts(p.batch as usize, p.tq as usize, p.tkv as usize, p.hq as usize, p.hkv as usize),
            };
            let (variant, flash) = (Variant::Flash, Some(t));
            return Launch { variant, segments: false, d4: d4 as u32, g: t.g, p: 1, pk: 1, flash, dkv_parts };
        }
        let rows = (budget / d4).clamp(1, 8);
        let g = (1..=rows.min(group)).rev().find(|g| group % g == 0).unwrap_or(1);
        // Powers of two, so that generation's few sequence lengths share pipelines.
        let positions = (rows / g).min((p.tq as usize).next_power_of_two()).max(1);
        let pk = rows.min((p.tkv as usize).next_power_of_two());
        let (g, p, pk) = (g as u32, positions as u32, pk as u32);
        Launch { variant, segments: false, d4: d4 as u32, g, p, pk, flash: None, dkv_parts: 1 }
    }

    fn key(&self, entry: &'static str) -> PipelineKey {
        let (subgroup, plain, flash) = match self.segments {
            false => (Kernel::AttentionSubgroup, Kernel::Attention, Kernel::AttentionFlash),
            true => (Kernel::AttentionSubgroupSegmented, Kernel::AttentionSegmented, Kernel::AttentionFlashSegmented),
        };
        let (kernel, entry) = match (self.variant, entry) {
            (_, "attention_repad") => (Kernel::Attention, entry),
            (Variant::Subgroup, "attention_forward") => (subgroup, "attention_forward_sg"),
            (Variant::Subgroup, "attention_backward_dq") => (subgroup, "attention_backward_dq_sg"),
            (Variant::Subgroup, "attention_backward_dkv") => (subgroup, "attention_backward_dkv_sg"),
            (Variant::Flash, "attention_forward") => (flash, "attention_forward_flash"),
            (Variant::Flash, "attention_backward_dq") => (flash, "attention_backward_dq_flash"),
            (Variant::Flash, "attention_backward_dkv") => (flash, "attention_backward_dkv_flash"),
            (Variant::Flash, "attention_backward_dkv_split") => (flash, "attention_backward_dkv_flash_split"),
            (Variant::Flash, "attention_dkv_sum") => (flash, "attention_dkv_sum"),
            _ => (plain, entry),
        };
        let key = PipelineKey::new(kernel, entry)
            .with("WG", Const::U32(WG))
            .with("D4", Const::U32(self.d4))
            .with("G", Const::U32(self.g))
            .with("P", Const::U32(self.p))
            .with("PK", Const::U32(self.pk));
        match self.flash.filter(|_| kernel == flash) {
            Some(t) => key.with("BP", Const::U32(t.bp)).with("BK", Const::U32(t.bk)).with("KB", Const::U32(t.kb)),
            None => key,
        }
    }

    /// The grid of the forward and of attention_backward_dq.
    fn query_grid(&self, p: &Params) -> [u32; 3] {
        let chunks = (p.batch * (p.hq / self.g)) as usize;
        if let Some(t) = self.flash {
            return grid_1d(chunks * p.tq.div_ceil(t.bp) as usize);
        }
        match self.variant {
            Variant::Subgroup => grid_1d(chunks * p.tq.div_ceil(SG_WIDTH * self.p) as usize),
            _ => grid_1d((chunks * p.tq.div_ceil(self.p) as usize).div_ceil(WG as usize)),
        }
    }

    /// The grid of attention_backward_dkv (for the flash kernels, of its
    /// split with `p.parts` parts).
    fn key_grid(&self, p: &Params) -> [u32; 3] {
        let heads = (p.batch * p.hkv) as usize;
        if let Some(t) = self.flash {
            return grid_1d(t.dkv_blocks(p.batch as usize, p.tkv as usize, p.hkv as usize) * p.parts as usize);
        }
        match self.variant {
            Variant::Subgroup => grid_1d(heads * p.tkv.div_ceil(SG_WIDTH * self.pk) as usize),
            _ => grid_1d((heads * p.tkv.div_ceil(self.pk) as usize).div_ceil(WG as usize)),
        }
    }
}

/// `x` (…, d) with its last dimension copied into width `to`: zero columns
/// appended, or trailing ones dropped. The kernels load head_dim in vec4s; a
/// head_dim that is not a multiple of 4 runs zero-padded.
fn repad(rec: &mut Recorder, launch: &Launch, x: &Tensor, to: usize) -> Result<Tensor> {
    let (rows, from) = (x.numel() / x.shape()[3], x.shape()[3]);
    let mut shape = x.shape().to_vec();
    shape[3] = to;
    let y = rec.alloc(&shape, DType::F32)?;
    let p = Params { batch: rows as u32, tq: from as u32, tkv: to as u32, ..Params::zeroed() };
    let portable = Launch { variant: Variant::Portable, flash: None, ..*launch };
    let groups = grid_1d((rows * to).div_ceil(WG as usize));
    rec.dispatch_bound(&portable.key("attention_repad"), &p, &[(14, x), (15, &y)], groups)?;
    Ok(y)
}

/// The forward, packed rows when `starts` is given.
fn forward(
    rec: &mut Recorder,
    [q, k, v]: [&Tensor; 3],
    starts: Option<&Tensor>,
    p: &Params,
    variant: Variant,
) -> Result<(Tensor, Tensor)> {
    let d = q.shape()[3];
    let variant = match variant.resolve(rec.gpu(), p.tq, d) {
        Variant::SplitKv if starts.is_some() => Variant::Portable,
        v => v,
    };
    let launch = Launch { segments: starts.is_some(), ..Launch::new(rec.gpu(), variant, p, d) };
    let padded = launch.d4 as usize * 4;
    if padded != d {
        let (qp, kp, vp) =
            (repad(rec, &launch, q, padded)?, repad(rec, &launch, k, padded)?, repad(rec, &launch, v, padded)?);
        let (out, lse) = forward_vec4(rec, &launch, [&qp, &kp, &vp], starts, p)?;
        return Ok((repad(rec, &launch, &out, d)?, lse));
    }
    forward_vec4(rec, &launch, [q, k, v], starts, p)
}

fn forward_vec4(
    rec: &mut Recorder,
    launch: &Launch,
    [q, k, v]: [&Tensor; 3],
    starts: Option<&Tensor>,
    p: &Params,
) -> Result<(Tensor, Tensor)> {
    if launch.variant == Variant::SplitKv {
        return forward_split_kv(rec, launch.d4, [q, k, v], p);
    }
    let out = rec.alloc(q.shape(), DType::F32)?;
    let lse = rec.alloc(&[p.batch as usize, p.hq as usize, p.tq as usize], DType::F32)?;
    // Only the packed rows' kernels bind starts (binding 16).
    let bound = [(1, q), (2, k), (3, v), (4, &out), (5, &lse)];
    let bound = with_starts(&bound, starts);
    rec.dispatch_bound(&launch.key("attention_forward"), p, &bound, launch.query_grid(p))?;
    Ok((out, lse))
}

/// The split-KV forward (`shaders/attention_split_kv.wgsl`): as many key
/// splits as bring the workgroups near [`SPLIT_TARGET_WORKGROUPS`], whole
/// blocks of keys each; then one pass combines them into out and lse.
fn forward_split_kv(rec: &mut Recorder, d4: u32, [q, k, v]: [&Tensor; 3], p: &Params) -> Result<(Tensor, Tensor)> {
    let (batch, tq, hq, hkv) = (p.batch as usize, p.tq as usize, p.hq as usize, p.hkv as usize);
    let (rb, wg) = split_kv_shape(hq / hkv * tq);
    let row_blocks = (hq / hkv * tq).div_ceil(rb as usize);
    let units = batch * hkv * row_blocks;
    let key_blocks = (p.offset as usize + tq).div_ceil(SPLIT_KB as usize);
    let parts = SPLIT_TARGET_WORKGROUPS.div_ceil(units).clamp(1, key_blocks.max(1));
    let params = Params { parts: parts as u32, ..*p };
    let rows = batch * hq * tq;
    let part_o = rec.alloc(&[parts * rows * d4 as usize * 4], DType::F32)?;
    let part_ml = rec.alloc(&[parts * rows * 2], DType::F32)?;
    let out = rec.alloc(q.shape(), DType::F32)?;
    let lse = rec.alloc(&[batch, hq, tq], DType::F32)?;
    let key = |entry| split_kv_key(entry, d4, rb, wg);
    let split = [(1, q), (2, k), (3, v), (17, &part_o), (18, &part_ml)];
    rec.dispatch_bound(&key("attention_forward_split"), &params, &split, grid_1d(units * parts))?;
    let combine = [(19, &part_o), (20, &part_ml), (4, &out), (5, &lse)];
    let groups = grid_1d((rows * d4 as usize).div_ceil(wg as usize));
    rec.dispatch_bound(&key("attention_combine_splits"), &params, &combine, groups)?;
    Ok((out, lse))
}

fn split_kv_key(entry: &'static str, d4: u32, rb: u32, wg: u32) -> PipelineKey {
    PipelineKey::new(Kernel::AttentionSplitKv, entry)
        .with("WG", Const::U32(wg))
        .with("D4", Const::U32(d4))
        .with("G", Const::U32(1))
        .with("P", Const::U32(1))
        .with("PK", Const::U32(1))
        .with("RB", Const::U32(rb))
        .with("KB", Const::U32(SPLIT_KB))
}

/// Returns `(out, lse)`.
///
/// - q: (batch, seq, n_heads, head_dim), after RoPE
/// - k, v: (batch, seq, n_kv_heads, head_dim), k after RoPE
/// - scale: usually `1 / sqrt(head_dim)`
/// - out: (batch, seq, n_heads, head_dim)
/// - lse: (batch, n_heads, seq), logsumexp of each row of scaled scores; saved for backward
/// - variant: which kernels; [`Variant::Auto`] picks, and the subgroup ones
///   fall back to the portable ones where they cannot run
pub fn attention_forward(
    rec: &mut Recorder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor)> {
    self_attention("attention_forward", rec, [q, k, v], None, scale, variant)
}

/// The forward over a sequence's own keys (tkv = tq), checked, with or
/// without packed rows' starts.
fn self_attention(
    op: &'static str,
    rec: &mut Recorder,
    [q, k, v]: [&Tensor; 3],
    starts: Option<&Tensor>,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor)> {
    let p = check(op, q, k, v, 0, scale)?;
    if p.tkv != p.tq {
        return Err(Error::shape(op, format!("q {:?} and k {:?} must have the same seq", q.shape(), k.shape())));
    }
    if let Some(starts) = starts {
        check_starts(op, starts, &p)?;
    }
    forward(rec, [q, k, v], starts, &p, variant)
}

/// [`attention_forward`] for packed rows, several examples to a row: query
/// i of row b sees keys `starts[b, i] ..= i` only, its own example's
/// (block-diagonal causal, as transformers' eager attention with the 4-D mask
/// that blocks every other example).
///
/// - starts: (batch, seq) u32, the position at which each query's example
///   begins: `starts[b, i] ≤ i` and non-decreasing along the row (a query
///   starting after itself sees no key: its output is NaN)
pub fn attention_forward_segmented(
    rec: &mut Recorder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: &Tensor,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor)> {
    self_attention("attention_forward_segmented", rec, [q, k, v], Some(starts), scale, variant)
}

/// starts must be (batch, seq) u32.
fn check_starts(op: &'static str, starts: &Tensor, p: &Params) -> Result<()> {
    starts.expect_dtype(op, "starts", DType::U32)?;
    let want = [p.batch as usize, p.tq as usize];
    if starts.shape() != want {
        return Err(Error::shape(op, format!("starts {:?} must be {want:?} (batch, seq)", starts.shape())));
    }
    Ok(())
}

/// Returns `(dq, dk, dv)` for `dout`, given the forward's inputs, its `out`
/// and `lse`; dk and dv are summed over the query heads sharing each kv head.
///
/// - dout, out: (batch, seq, n_heads, head_dim); lse: (batch, n_heads, seq)
/// - q, k, v, scale, variant: as given to [`attention_forward`]
/// - dq: (batch, seq, n_heads, head_dim); dk, dv: (batch, seq, n_kv_heads, head_dim)
#[allow(clippy::too_many_arguments)] // the backward needs everything the forward had, and more
pub fn attention_backward(
    rec: &mut Recorder,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward(rec, [dout, q, k, v, out, lse], None, scale, variant)
}

/// [`attention_backward`] for packed rows: the gradients of
/// [`attention_forward_segmented`] with the same `starts` (batch, seq).
#[allow(clippy::too_many_arguments)] // the backward needs everything the forward had, and more
pub fn attention_backward_segmented(
    rec: &mut Recorder,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    starts: &Tensor,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward(rec, [dout, q, k, v, out, lse], Some(starts), scale, variant)
}

fn backward(
    rec: &mut Recorder,
    [dout, q, k, v, out, lse]: [&Tensor; 6],
    starts: Option<&Tensor>,
    scale: f32,
    variant: Variant,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = if starts.is_some() { "attention_backward_segmented" } else { "attention_backward" };
    let p = check(op, q, k, v, 0, scale)?;
    all_f32(op, &[("dout", dout), ("out", out), ("lse", lse)])?;
    same_shape(op, ("q", q), ("dout", dout))?;
    same_shape(op, ("q", q), ("out", out))?;
    if p.tkv != p.tq {
        return Err(Error::shape(op, format!("q {:?} and k {:?} must have the same seq", q.shape(), k.shape())));
    }
    let lse_shape = [p.batch as usize, p.hq as usize, p.tq as usize];
    if lse.shape() != lse_shape {
        return Err(Error::shape(op, format!("lse {:?} must be {lse_shape:?} (batch, n_heads, seq)", lse.shape())));
    }
    if let Some(starts) = starts {
        check_starts(op, starts, &p)?;
    }
    let d = q.shape()[3];
    let launch = Launch { segments: starts.is_some(), ..Launch::new(rec.gpu(), variant, &p, d) };
    let padded = launch.d4 as usize * 4;
    if padded != d {
        let mut pad = |x: &Tensor| repad(rec, &launch, x, padded);
        let (dp, qp, kp, vp, op) = (pad(dout)?, pad(q)?, pad(k)?, pad(v)?, pad(out)?);
        let [dq, dk, dv] = backward_vec4(rec, &launch, [&dp, &qp, &kp, &vp, &op, lse], starts, &p)?;
        return Ok((repad(rec, &launch, &dq, d)?, repad(rec, &launch, &dk, d)?, repad(rec, &launch, &dv, d)?));
    }
    let [dq, dk, dv] = backward_vec4(rec, &launch, [dout, q, k, v, out, lse], starts, &p)?;
    Ok((dq, dk, dv))
}

/// `bound` and, for packed rows, their starts at binding 16.
fn with_starts<'a>(bound: &[(u32, &'a Tensor)], starts: Option<&'a Tensor>) -> Vec<(u32, &'a Tensor)> {
    bound.iter().copied().chain(starts.map(|s| (16, s))).collect()
}

/// `[dq, dk, dv]` from `[dout, q, k, v, out, lse]`, head_dim a multiple of 4.
fn backward_vec4(
    rec: &mut Recorder,
    launch: &Launch,
    inputs: [&Tensor; 6],
    starts: Option<&Tensor>,
    p: &Params,
) -> Result<[Tensor; 3]> {
    let [dout, q, k, v, out, lse] = inputs;
    let dq = rec.alloc(q.shape(), DType::F32)?;
    let dk = rec.alloc(k.shape(), DType::F32)?;
    let dv = rec.alloc(v.shape(), DType::F32)?;
    let delta = rec.alloc(lse.shape(), DType::F32)?;
    let bound = [(1, q), (2, k), (3, v), (6, out), (7, dout), (8, lse), (9, &dq), (10, &delta)];
    rec.dispatch_bound(&launch.key("attention_backward_dq"), p, &with_starts(&bound, starts), launch.query_grid(p))?;
    // The split dkv's scratch must fit one binding, else fewer parts.
    let max_parts = (rec.gpu().max_binding_bytes() / (2 * dk.bytes()).max(1)).max(1);
    let parts = launch.dkv_parts.min(u32::try_from(max_parts).unwrap_or(u32::MAX));
    if parts == 1 {
        let bound = [(1, q), (2, k), (3, v), (7, dout), (8, lse), (11, &delta), (12, &dk), (13, &dv)];
        rec.dispatch_bound(&launch.key("attention_backward_dkv"), p, &with_starts(&bound, starts), launch.key_grid(p))?;
        return Ok([dq, dk, dv]);
    }
    let p = Params { parts, ..*p };
    // (parts · 2, batch, seq, n_kv_heads, head_dim): each part's dk, then its dv; every element written.
    let mut scratch = k.shape().to_vec();
    scratch.insert(0, 2 * parts as usize);
    let partial = rec.alloc(&scratch, DType::F32)?;
    let bound = [(1, q), (2, k), (3, v), (7, dout), (8, lse), (11, &delta), (17, &partial)];
    let key = launch.key("attention_backward_dkv_split");
    rec.dispatch_bound(&key, &p, &with_starts(&bound, starts), launch.key_grid(&p))?;
    let groups = grid_1d((k.numel() / 4).div_ceil(WG as usize));
    rec.dispatch_bound(&launch.key("attention_dkv_sum"), &p, &[(12, &dk), (13, &dv), (17, &partial)], groups)?;
    Ok([dq, dk, dv])
}

/// Attention for generation: queries at positions `offset .. offset + seq`
/// against the first `offset + seq` rows of a KV cache (rows past them are
/// never read). Write the new keys and values with [`write_kv_cache`] first.
///
/// - q: (batch, seq, n_heads, head_dim)
/// - k_cache, v_cache: (batch, capacity, n_kv_heads, head_dim), capacity ≥ offset + seq
/// - starts: `None` (every query sees keys from 0), or (batch, seq) u32: the
///   first key each query sees (a sliding window's `position − window + 1`),
///   non-decreasing along the row and at most the query's position
/// - out: (batch, seq, n_heads, head_dim)
///
/// A head_dim that is not a multiple of 4 copies the whole cache, zero-padded,
/// at every call.
#[allow(clippy::too_many_arguments)] // the cache's two tensors, and where each query's keys begin
pub fn attention_forward_cached(
    rec: &mut Recorder,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    starts: Option<&Tensor>,
    offset: usize,
    scale: f32,
    variant: Variant,
) -> Result<Tensor> {
    const OP: &str = "attention_forward_cached";
    let p = check(OP, q, k_cache, v_cache, offset, scale)?;
    if let Some(starts) = starts {
        check_starts(OP, starts, &p)?;
    }
    Ok(forward(rec, [q, k_cache, v_cache], starts, &p, variant)?.0)
}

/// Copies `new` (batch, seq, n_kv_heads, head_dim) into rows
/// `offset .. offset + seq` of `cache` (batch, capacity, n_kv_heads, head_dim):
/// one buffer copy per batch row.
pub fn write_kv_cache(rec: &mut Recorder, new: &Tensor, cache: &Tensor, offset: usize) -> Result<()> {
    const OP: &str = "write_kv_cache";
    all_f32(OP, &[("new", new), ("cache", cache)])?;
    let [batch, seq, heads, d] = dims(OP, "new", "(batch, seq, n_kv_heads, head_dim)", new)?;
    let [cb, capacity, ch, cd] = dims(OP, "cache", "(batch, capacity, n_kv_heads, head_dim)", cache)?;
    if (cb, ch, cd) != (batch, heads, d) || offset + seq > capacity {
        return Err(Error::shape(
            OP,
            format!("rows {offset}..{} of {:?} do not fit cache {:?}", offset + seq, new.shape(), cache.shape()),
        ));
    }
    let row = (heads * d * 4) as u64;
    for b in 0..batch {
        let src = (b * seq) as u64 * row;
        let dst = (b * capacity + offset) as u64 * row;
        rec.copy(new, src, cache, dst, seq as u64 * row)?;
    }
    Ok(())
}

/// Pipelines the launchers here request on `gpu` (`kernels::variants`). The
/// tiles follow from the shapes (head_dim, heads per kv head, sequence), too
/// many to compile them all, so this is a sample that reaches every branch of
/// [`Launch::new`] for both kernel families and both variants: each register
/// budget's row counts from 8 down to 1 (head dims from 4 to
/// [`MAX_HEAD_DIM`], padded ones among them), query heads per tile 1–4 and
/// odd, and a decoding step, a short and a long sequence. The flash
/// kernels' constants follow from head_dim and the group alone: a sample of
/// tile rows 64 to 16 and blocks of 1 and 3 heads (their compile is slow on
/// lavapipe), packed rows for two of them, each with the split dkv and its sum.
pub(crate) fn pipeline_keys(gpu: &Gpu) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for budget in [TILE_VEC4S, GPU_TILE_VEC4S] {
        for head_dim in [4, 6, 12, 20, 36, 48, 64, 128, MAX_HEAD_DIM] {
            for group in [1, 3, 4] {
                for (tq, tkv) in [(1, 64), (3, 3), (64, 64)] {
                    let p = Params { batch: 1, tq, tkv, hq: group, hkv: 1, ..Params::zeroed() };
                    for variant in [Variant::Portable, Variant::Subgroup] {
                        let launch = Launch::with_budget(gpu, variant, &p, head_dim, budget);
                        for entry in ["attention_forward", "attention_backward_dq", "attention_backward_dkv"] {
                            keys.push(launch.key(entry));
                            keys.push(Launch { segments: true, ..launch }.key(entry));
                        }
                        if head_dim % 4 != 0 {
                            keys.push(Launch { variant: Variant::Portable, ..launch }.key("attention_repad"));
                        }
                    }
                }
            }
        }
    }
    let flash = [(4, 1), (20, 3), (64, 1), (64, 3), (128, 1), (128, 3)];
    for (head_dim, group) in flash.into_iter().chain([(12, 4), (64, 4)]) {
        let p = Params { batch: 1, tq: 64, tkv: 64, hq: group, hkv: 1, ..Params::zeroed() };
        let launch = Launch::with_budget(gpu, Variant::Flash, &p, head_dim, GPU_TILE_VEC4S);
        let segments = !flash.contains(&(head_dim, group));
        let entries = ["attention_forward", "attention_backward_dq", "attention_backward_dkv"];
        for entry in entries.into_iter().chain(["attention_backward_dkv_split", "attention_dkv_sum"]) {
            keys.push(Launch { segments, ..launch }.key(entry));
        }
    }
    // The split-KV forward: its constants follow from head_dim and the rows
    // of a kv head (heads a group × queries).
    for (d4, rows) in [(1, 3), (5, 1), (16, 4), (16, 39), (32, 2), (32, 8), (MAX_HEAD_DIM as u32 / 4, 16)] {
        let (rb, wg) = split_kv_shape(rows);
        keys.extend(["attention_forward_split", "attention_combine_splits"].map(|e| split_kv_key(e, d4, rb, wg)));
    }
    keys
}
