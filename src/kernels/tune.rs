//! The autotuner of the blocked GEMM and the decoding GEMV: on a real GPU
//! each product's block shape (or GEMV layout and reduction) is timed once
//! per (adapter, shape class) and the fastest kept.
//!
//! How it runs: when `gemm` or `qlinear` meets a shape class it has no choice
//! for, it uses the fallback table ([`Blocks::for_shape`]) and notes the
//! product as pending. [`autotune_pending`] (the trainer calls it after its
//! first step, generation after its first token, the CLI's bench before
//! timing) times every candidate on random operands of each pending
//! product's shape and keeps the fastest, so
//! exactly the products a run makes are tuned, and later steps use the
//! choices. [`Tuning::to_json`] and [`Tuning::merge_json`] carry the choices
//! across runs: natively a file in the user's cache folder
//! (`GpuOptions::tuning_cache`), in the browser whatever storage the page
//! uses (`gpu.exportTuning()` / `gpu.importTuning()`).
//!
//! A shape class is the product's kind (f32 in an orientation, through a
//! quantized weight forward or backward, or a GEMV through a weight) with M,
//! N, K and the batch rounded up to powers of two: shapes of a class are
//! close enough to share a block.

use std::collections::BTreeMap;

use super::blocked::{Blocks, GemvTiles};
use super::matmul::{gemm_with, Gemm, Variant};
use super::qmatmul::{qgemm_with, QVariant, QWeight};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::quant::QuantFormat;
use crate::util::clock;

/// A product the blocked kernel runs, as the tuner needs to remake it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Product {
    /// An f32 product (contiguous operands of its shape are timed).
    F32(Gemm),
    /// Through a frozen weight: forward `x (m, k) · Wᵀ` with W (n, k), or
    /// backward `dy (m, k) · W` with W (k, n); `half`: computing in f16
    /// (`shaders/gemm_blocked_f16.wgsl`, its own class).
    Quant { format: QuantFormat, backward: bool, half: bool, m: usize, n: usize, k: usize },
    /// Decoding's GEMV `x (m, k) · Wᵀ` (m ≤ 8) through W (n, k): an f32
    /// weight (`QuantFormat::F32`, through `gemm`) or a frozen quantized one,
    /// computing in f16 with `half`.
    Gemv { format: QuantFormat, half: bool, m: usize, n: usize, k: usize },
}

impl Product {
    fn dims(&self) -> (usize, usize, usize, usize) {
        match *self {
            Product::F32(g) => (g.m, g.n, g.k, g.batch),
            Product::Quant { m, n, k, .. } | Product::Gemv { m, n, k, .. } => (m, n, k, 1),
        }
    }

    /// The shape class: "f32 nt m2^9 n2^4 k2^11 b2^0", "nf4 fwd m2^9 …".
    pub fn class(&self) -> String {
        let kind = match self {
            Product::F32(g) => {
                format!("f32 {}{}", if g.trans_a { "t" } else { "n" }, if g.trans_b { "t" } else { "n" })
            }
            Product::Quant { format, backward, half, .. } => {
                format!(
                    "{} {}{}",
                    format.name(),
                    if *backward { "bwd" } else { "fwd" },
                    if *half { " f16" } else { "" }
                )
            }
            Product::Gemv { format, half, .. } => format!("gemv {}{}", format.name(), if *half { " f16" } else { "" }),
        };
        let (m, n, k, b) = self.dims();
        let l = |v: usize| v.max(1).next_power_of_two().trailing_zeros();
        format!("{kind} m2^{} n2^{} k2^{} b2^{}", l(m), l(n), l(k), l(b))
    }

    fn flops(&self) -> f64 {
        let (m, n, k, b) = self.dims();
        2.0 * (m * n * k * b) as f64
    }

    /// Bytes of the operands the tuner allocates to time it.
    fn bytes(&self) -> usize {
        let (m, n, k, b) = self.dims();
        4 * b * (m * k + k * n + m * n)
    }
}

/// The choices made so far and the products still to tune: one per device,
/// kept in the device's state slot ([`Gpu::with_state`]).
#[derive(Debug, Default)]
pub struct Tuning {
    choices: BTreeMap<String, Blocks>,
    /// The GEMV classes' choices ("gemv nf4 m2^0 …").
    gemv: BTreeMap<String, GemvTiles>,
    pending: BTreeMap<String, Product>,
    /// The cache file's choices have been read (natively, the first time the
    /// device's tuning is used).
    loaded: bool,
}

impl Tuning {
    pub fn len(&self) -> usize {
        self.choices.len() + self.gemv.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The choices as JSON: `{"f32 nt m2^9 …": [bm, bn, bk, tm, tn, buffers], …,
    /// "gemv nf4 m2^0 …": [lanes, rows, subgroup (0 or 1), wide (0 or 1)], …}`.
    pub fn to_json(&self) -> String {
        let blocks = self.choices.iter().map(|(k, b)| (k, vec![b.bm, b.bn, b.bk, b.tm, b.tn, b.buffers]));
        let gemv = self.gemv.iter().map(|(k, t)| (k, vec![t.lanes, t.rows, t.subgroup as u32, t.wide as u32]));
        let map: BTreeMap<&String, Vec<u32>> = blocks.chain(gemv).collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
    }

    /// Add the choices of [`Tuning::to_json`]'s output; entries that are not
    /// valid blocks on `gpu` are skipped. Returns how many were taken.
    pub fn merge_json(&mut self, gpu: &Gpu, json: &str) -> std::result::Result<usize, String> {
        let map: BTreeMap<String, Vec<u32>> =
            serde_json::from_str(json).map_err(|e| format!("tuning: not a map of block shapes: {e}"))?;
        let mut taken = 0;
        for (class, v) in map {
            match (class.starts_with("gemv "), v.as_slice()) {
                // Files written before wide spans have no `wide`: off.
                (true, &[lanes, rows, subgroup]) | (true, &[lanes, rows, subgroup, _]) => {
                    let wide = v.get(3).copied().unwrap_or(0);
                    let t = GemvTiles { lanes, rows, subgroup: subgroup == 1, wide: wide == 1 };
                    if subgroup <= 1 && wide <= 1 && t.check().is_ok() && t.on(gpu) == t {
                        self.pending.remove(&class);
                        self.gemv.insert(class, t);
                        taken += 1;
                    }
                }
                // Files written before double buffering have no `buffers`: one.
                (false, &[bm, bn, bk, tm, tn]) | (false, &[bm, bn, bk, tm, tn, _]) => {
                    let buffers = v.get(5).copied().unwrap_or(1);
                    let b = Blocks { bm, bn, bk, tm, tn, buffers };
                    if fits(&class, b, gpu) {
                        self.pending.remove(&class);
                        self.choices.insert(class, b);
                        taken += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(taken)
    }
}

/// Whether `b` builds on `gpu` for products of `class`: an f16-compute
/// class ([`Product::class`] "… fwd f16 …") needs [`Blocks::check_f16`].
fn fits(class: &str, b: Blocks, gpu: &Gpu) -> bool {
    if class.contains(" f16 m") {
        b.check_f16(gpu).is_ok()
    } else {
        b.check(gpu).is_ok()
    }
}

/// `gpu`'s tuning, borrowed for `f`; natively the cache file's choices for
/// this device are read in the first time.
fn with_tuning<R>(gpu: &Gpu, f: impl FnOnce(&mut Tuning) -> R) -> R {
    gpu.with_state(|t: &mut Tuning| {
        if !t.loaded {
            t.loaded = true;
            load_cache(gpu, t);
        }
        f(t)
    })
}

/// The tuned choices as JSON (see [`Tuning::to_json`]).
pub fn tuning_json(gpu: &Gpu) -> String {
    with_tuning(gpu, |t| t.to_json())
}

/// Take tuned choices from JSON (an earlier run's [`tuning_json`]); returns
/// how many were valid blocks on `gpu`.
pub fn import_tuning(gpu: &Gpu, json: &str) -> std::result::Result<usize, String> {
    with_tuning(gpu, |t| t.merge_json(gpu, json))
}

/// Shape classes tuned so far, and products waiting to be tuned.
pub fn tuning_counts(gpu: &Gpu) -> (usize, usize) {
    with_tuning(gpu, |t| (t.len(), t.pending()))
}

/// Natively, this device's choices from the tuning cache file (an unreadable
/// or foreign file is ignored: tuning just runs again).
fn load_cache(gpu: &Gpu, t: &mut Tuning) {
    #[cfg(not(target_arch = "wasm32"))]
    if let (true, Some(path)) = (gpu.autotune, &gpu.tuning_cache) {
        let all: serde_json::Map<String, serde_json::Value> =
            std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if let Some(mine) = all.get(&gpu.tuning_key()) {
            let _ = t.merge_json(gpu, &mine.to_string());
        }
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (gpu, t);
}

/// Natively, this device's choices written into the tuning cache file,
/// keeping other adapters' entries. Best effort: a cache that cannot be
/// written costs a retune next time, nothing else.
fn save_cache(gpu: &Gpu) {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(path) = &gpu.tuning_cache {
        let mut all: serde_json::Map<String, serde_json::Value> =
            std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mine: serde_json::Value = serde_json::from_str(&tuning_json(gpu)).unwrap_or_default();
        all.insert(gpu.tuning_key(), mine);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Whole or not at all for a process reading it meanwhile: a temporary file of this process's renamed over it.
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&temp, serde_json::Value::Object(all).to_string()).is_ok() {
            let _ = std::fs::rename(&temp, path);
        }
    }
    #[cfg(target_arch = "wasm32")]
    let _ = gpu;
}

/// The block for `product`: the tuned choice for its class, else `fallback`
/// (and, where the device autotunes, the product is noted for tuning).
pub fn blocks_for(gpu: &Gpu, product: Product, fallback: Blocks) -> Blocks {
    let class = product.class();
    with_tuning(gpu, |t| {
        if let Some(b) = t.choices.get(&class) {
            return *b;
        }
        if gpu.autotune && product.bytes() <= MAX_TUNE_BYTES && product.flops() >= MIN_TUNE_FLOPS {
            t.pending.entry(class).or_insert(product);
        }
        fallback
    })
}

/// The GEMV layout for `product` (a [`Product::Gemv`]): the tuned choice for
/// its class, else `fallback` (and, where the device autotunes and W has at
/// least [`MIN_GEMV_WEIGHTS`] values, the product is noted for tuning).
pub fn gemv_for(gpu: &Gpu, product: Product, fallback: GemvTiles) -> GemvTiles {
    let class = product.class();
    let (_, n, k, _) = product.dims();
    with_tuning(gpu, |t| {
        if let Some(g) = t.gemv.get(&class) {
            return *g;
        }
        if gpu.autotune && n * k >= MIN_GEMV_WEIGHTS && product.bytes() <= MAX_TUNE_BYTES {
            t.pending.entry(class).or_insert(product);
        }
        fallback
    })
}

/// Weights under this many values keep the GEMV's rule (LoRA's r-wide
/// factors, small heads): their products are launch-bound whatever the layout.
pub const MIN_GEMV_WEIGHTS: usize = 1 << 20;

/// The GEMV layouts timed on `gpu`: [`GemvTiles::for_gpu`] first, then 32,
/// 64 and 16 lanes a row with the workgroup's tree and, where the device has
/// subgroups, with subgroup sums, each with and without wide spans
/// ([`GemvTiles::wide`]); the untuned rule of every format
/// ([`GemvTiles::for_weight`]) is among them.
pub fn gemv_candidates(gpu: &Gpu) -> Vec<GemvTiles> {
    let mut out = vec![GemvTiles::for_gpu(gpu)];
    for wide in [false, true] {
        for subgroup in [false, true] {
            for (lanes, rows) in [(32, 8), (64, 4), (16, 16)] {
                let t = GemvTiles { lanes, rows, subgroup, wide }.on(gpu);
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

/// Products under this many FLOPs are not tuned: launch overhead dominates
/// them whatever the block (row sums against a ones vector, tiny batches).
pub const MIN_TUNE_FLOPS: f64 = 1e7;

/// Products whose operands would take more than this are not tuned (their
/// class keeps the table's block): the tuner allocates its own copies.
pub const MAX_TUNE_BYTES: usize = 256 << 20;

/// The block shapes timed for a product of `m × n` outputs: for LoRA's skinny
/// products (a side of at most 32), blocks of that width and 64–256 long;
/// else the common shapes of 64–256 invocations with 4×4 to 8×8 per
/// invocation. The fallback table's choice is always among them.
pub fn candidates(m: usize, n: usize, batch: usize) -> Vec<Blocks> {
    let b = Blocks::new;
    let mut out = vec![Blocks::for_shape(m, n, batch)];
    let skinny = |side: usize| if side <= 16 { vec![16] } else { vec![16, 32] };
    if n <= 32 {
        for bn in skinny(n) {
            for bm in [64, 128, 256] {
                out.push(b(bm, bn, 16, 4, 4));
            }
        }
    } else if m <= 32 {
        for bm in skinny(m) {
            for bn in [64, 128, 256] {
                out.push(b(bm, bn, 16, 4, 4));
            }
        }
    } else {
        out.extend([
            Blocks::LARGE,
            Blocks::MEDIUM,
            b(128, 64, 8, 8, 4),
            b(64, 128, 8, 4, 8),
            b(64, 64, 8, 4, 4),
            b(128, 128, 16, 8, 8),
            b(64, 64, 16, 8, 8),
            Blocks::LARGE.double_buffered(),
            Blocks::MEDIUM.double_buffered(),
        ]);
    }
    let mut seen = Vec::new();
    out.retain(|b| {
        let new = !seen.contains(b);
        seen.push(*b);
        new
    });
    out
}

/// Every block the launchers can pick on `gpu` short of an imported tuning
/// file (whose blocks are any that pass [`Blocks::check`]): the fallback
/// table's and every candidate the autotuner times, for each branch of
/// [`candidates`] (`kernels::variants` compiles them all).
pub(crate) fn all_candidates(gpu: &Gpu) -> Vec<Blocks> {
    let shapes = [(1024, 8), (1024, 24), (8, 1024), (24, 1024), (4096, 4096), (256, 256)];
    let mut out: Vec<Blocks> = Vec::new();
    for (m, n) in shapes {
        for b in candidates(m, n, 1) {
            if b.check(gpu).is_ok() && !out.contains(&b) {
                out.push(b);
            }
        }
    }
    out
}

/// One tuned class: the block chosen, and its time against the fallback's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Tuned {
    pub class: String,
    /// The block chosen ("128x128x8/8x8") or the GEMV layout ("gemv 32x8 subgroup").
    pub choice: String,
    pub ms: f64,
    pub fallback_ms: f64,
    pub candidates: usize,
}

/// Time the candidates of every pending product and keep the fastest of
/// each; with a cache file, save every choice there. A no-op with nothing
/// pending.
pub async fn autotune_pending(gpu: &Gpu) -> Result<Vec<Tuned>> {
    let pending: Vec<(String, Product)> = with_tuning(gpu, |t| std::mem::take(&mut t.pending).into_iter().collect());
    if !pending.is_empty() {
        // The step's freed buffers go first, so the operands made to time
        // with take their place instead of adding to them.
        gpu.trim_memory();
    }
    let mut report = Vec::new();
    for (class, product) in pending {
        let (m, n, _, batch) = product.dims();
        let cands: Vec<Candidate> = match product {
            Product::Gemv { .. } => gemv_candidates(gpu).into_iter().map(Candidate::Gemv).collect(),
            _ => candidates(m, n, batch).into_iter().filter(|&b| fits(&class, b, gpu)).map(Candidate::Blocks).collect(),
        };
        let mut times = Vec::with_capacity(cands.len());
        let timer = Timer::new(gpu, &product)?;
        for &c in &cands {
            times.push(timer.time(gpu, c).await?);
        }
        let Some(best) = (0..cands.len()).min_by(|&i, &j| times[i].total_cmp(&times[j])) else { continue };
        let choice = match cands[best] {
            Candidate::Blocks(b) => {
                with_tuning(gpu, |t| t.choices.insert(class.clone(), b));
                b.to_string()
            }
            Candidate::Gemv(g) => {
                with_tuning(gpu, |t| t.gemv.insert(class.clone(), g));
                g.to_string()
            }
        };
        report.push(Tuned {
            class,
            choice,
            ms: times[best] * 1e3,
            fallback_ms: times[0] * 1e3,
            candidates: cands.len(),
        });
        gpu.trim_memory();
    }
    if !report.is_empty() {
        save_cache(gpu);
    }
    Ok(report)
}

/// What the tuner times: a block of the blocked GEMM, or a GEMV layout.
#[derive(Clone, Copy, Debug)]
enum Candidate {
    Blocks(Blocks),
    Gemv(GemvTiles),
}

/// Random operands of one product, and the calls that time a block on them.
struct Timer {
    product: Product,
    a: Tensor,
    b: Option<Tensor>,
    w: Option<QWeight>,
    c: Tensor,
}

impl Timer {
    /// Operands of zeros, made on the GPU (a product's speed does not
    /// depend on its values): nothing is drawn or uploaded from the CPU,
    /// which in a browser would grow the page's memory by the operands.
    fn new(gpu: &Gpu, product: &Product) -> Result<Timer> {
        let zeros = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32);
        Ok(match *product {
            Product::F32(g) => {
                let g = Gemm::new(g.m, g.n, g.k, g.trans_a, g.trans_b).batched(g.batch);
                let (a, b, c) =
                    (zeros(&[g.batch * g.m * g.k])?, zeros(&[g.batch * g.k * g.n])?, zeros(&[g.batch * g.m * g.n])?);
                Timer { product: Product::F32(g), a, b: Some(b), w: None, c }
            }
            Product::Quant { format, backward, half, m, n, k } => {
                let (rows, cols) = if backward { (k, n) } else { (n, k) };
                let mut w = QWeight::zeros(gpu, rows, cols, format)?;
                if half {
                    w.set_compute(gpu, crate::quant::ComputeDtype::F16)?;
                }
                Timer { product: *product, a: zeros(&[m, k])?, b: None, w: Some(w), c: zeros(&[m, n])? }
            }
            Product::Gemv { format, half, m, n, k } => {
                let (a, c) = (zeros(&[m, k])?, zeros(&[m, n])?);
                if format == QuantFormat::F32 {
                    return Ok(Timer { product: *product, a, b: Some(zeros(&[n, k])?), w: None, c });
                }
                let mut w = QWeight::zeros(gpu, n, k, format)?;
                if half {
                    w.set_compute(gpu, crate::quant::ComputeDtype::F16)?;
                }
                Timer { product: *product, a, b: None, w: Some(w), c }
            }
        })
    }

    fn record(&self, rec: &mut Recorder, candidate: Candidate) -> Result<()> {
        match (&self.product, &self.b, &self.w, candidate) {
            (Product::F32(g), Some(b), _, Candidate::Blocks(t)) => {
                gemm_with(rec, g, &self.a, b, &self.c, Variant::Blocked(t))
            }
            (Product::Quant { backward, .. }, _, Some(w), Candidate::Blocks(t)) => {
                qgemm_with(rec, &self.a, w, &self.c, *backward, QVariant::Blocked(t))
            }
            (&Product::Gemv { m, n, k, .. }, Some(b), _, Candidate::Gemv(t)) => {
                gemm_with(rec, &Gemm::new(m, n, k, false, true), &self.a, b, &self.c, Variant::Gemv(t))
            }
            (Product::Gemv { .. }, _, Some(w), Candidate::Gemv(t)) => {
                qgemm_with(rec, &self.a, w, &self.c, false, QVariant::Gemv(t))
            }
            _ => Ok(()),
        }
    }

    /// Seconds per call of `candidate`: one call to build the pipeline, one
    /// to estimate, then the median of three submissions of enough calls to
    /// take about 2 ms.
    async fn time(&self, gpu: &Gpu, candidate: Candidate) -> Result<f64> {
        let run = async |calls: usize| -> Result<f64> {
            let mut rec = Recorder::new(gpu);
            for _ in 0..calls {
                self.record(&mut rec, candidate)?;
            }
            let start = clock::seconds();
            rec.submit()?;
            gpu.synchronize().await?;
            Ok((clock::seconds() - start) / calls as f64)
        };
        run(1).await?;
        let once = run(1).await?;
        let calls = ((2e-3 / once.max(1e-6)) as usize).clamp(1, 32);
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(run(calls).await?);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[1])
    }
}
