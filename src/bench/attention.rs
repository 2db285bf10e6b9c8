//! Attention figures: the forward and the backward (dq, then dk and dv) of
//! each kernel variant at the Llama-3.2-1B training shape (1×512, 32 query
//! heads, 8 kv heads of 64), so that one adapter's run compares them.
//! GFLOP/s counts the causal half of the products as FlashAttention does:
//! q·kᵀ and P·v forward (2 · T² · D · H), and five such products backward
//! (the kernels recompute some of them, which the figure does not count).
//! The flash kernels run twice: with their dk and dv work split as
//! [`Variant::Flash`] chooses, and unsplit (`FlashSplit(1)`);
//! [`dkv_launch_sizes`] says how big either launch is. Then a decoding
//! step's attention (one query position against 512 and 4096 cached keys),
//! portable against split-KV.

use super::{calls_for, fill, time_calls, Figure};
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::kernels::attention::{attention_backward, attention_forward, attention_forward_cached, FlashTiles, Variant};
use crate::kernels::matmul::subgroups_usable;

/// (batch, seq, query heads, kv heads, head_dim) of Llama-3.2-1B at 1×512.
const SHAPE: (usize, usize, usize, usize, usize) = (1, 512, 32, 8, 64);

/// The variants that run here (the subgroup one only with 8-lane
/// subgroups), the one [`Variant::Auto`] picks marked.
pub async fn attention_figures(gpu: &Gpu, repeats: usize, report: &mut dyn FnMut(&Figure)) -> Result<Vec<Figure>> {
    let (batch, seq, hq, hkv, d) = SHAPE;
    let q = Tensor::from_slice(gpu, &[batch, seq, hq, d], &fill(batch * seq * hq * d, 5))?;
    let k = Tensor::from_slice(gpu, &[batch, seq, hkv, d], &fill(batch * seq * hkv * d, 6))?;
    let v = Tensor::from_slice(gpu, &[batch, seq, hkv, d], &fill(batch * seq * hkv * d, 7))?;
    let dout = Tensor::from_slice(gpu, &[batch, seq, hq, d], &fill(batch * seq * hq * d, 8))?;
    let scale = 1.0 / (d as f32).sqrt();
    let causal = (batch * hq * d) as f64 * (seq * seq) as f64; // 2 · T² / 2 · D · H: one causal product
    let auto = Variant::Auto.resolve(gpu, seq as u32, d);
    let mut variants = vec![Variant::Portable, Variant::Flash, Variant::FlashSplit(1)];
    if subgroups_usable(gpu) {
        variants.insert(1, Variant::Subgroup);
    }
    let mut out = Vec::new();
    for variant in variants {
        let name = format!("{variant:?}{}", if variant == auto { " (auto)" } else { "" }).to_lowercase();
        let flops = 2.0 * causal;
        let secs = time_calls(gpu, calls_for(flops, false), repeats, |rec| {
            attention_forward(rec, &q, &k, &v, scale, variant).map(|_| ())
        })
        .await?;
        out.push(figure(format!("attention fwd {name}"), flops, secs));
        report(&out[out.len() - 1]);
        // The forward's out and lse once, outside the timing.
        let mut rec = crate::gpu::Recorder::new(gpu);
        let (o, lse) = attention_forward(&mut rec, &q, &k, &v, scale, variant)?;
        rec.submit()?;
        let flops = 5.0 * causal;
        let secs = time_calls(gpu, calls_for(flops, false), repeats, |rec| {
            attention_backward(rec, &dout, &q, &k, &v, &o, &lse, scale, variant).map(|_| ())
        })
        .await?;
        out.push(figure(format!("attention bwd {name}"), flops, secs));
        report(&out[out.len() - 1]);
    }
    // Decoding: one query position against a cache of `context` keys, the
    // portable kernel (a few invocations, every key in turn) against the
    // split-KV one; GB/s counts the cache's k and v rows read once.
    for context in [512, 4096] {
        let cache = |seed| Tensor::from_slice(gpu, &[batch, context, hkv, d], &fill(batch * context * hkv * d, seed));
        let (kc, vc) = (cache(9)?, cache(10)?);
        let q1 = Tensor::from_slice(gpu, &[batch, 1, hq, d], &fill(batch * hq * d, 11))?;
        let auto = Variant::Auto.resolve(gpu, 1, d);
        for variant in [Variant::Portable, Variant::SplitKv] {
            let name = format!("{variant:?}{}", if variant == auto { " (auto)" } else { "" }).to_lowercase();
            let flops = 4.0 * (batch * hq * d * context) as f64;
            let secs = time_calls(gpu, calls_for(flops, false).max(8), repeats, |rec| {
                attention_forward_cached(rec, &q1, &kc, &vc, None, context - 1, scale, variant).map(|_| ())
            })
            .await?;
            let bytes = (2 * batch * context * hkv * d * 4) as f64;
            out.push(Figure {
                kernel: format!("attention decode {name}"),
                shape: format!("1B decoding step, {context} keys, {hq}/{hkv} heads of {d}"),
                gflops: flops / secs / 1e9,
                ms_per_call: secs * 1e3,
                m: 1,
                n: context,
                k: d,
                op: "attention",
                weight_gbps: Some(bytes / secs / 1e9),
            });
            report(&out[out.len() - 1]);
        }
    }
    Ok(out)
}

/// The flash dk and dv launch at the Llama-1B shape, unsplit (one workgroup
/// per 32 keys of a kv head) and split as [`Variant::Flash`] splits it (then
/// a sum pass, one vec4 of dk and of dv an invocation), as lines to print.
pub fn dkv_launch_sizes() -> [String; 2] {
    let (batch, seq, hq, hkv, d) = SHAPE;
    let t = FlashTiles::new(d, hq / hkv);
    let (blocks, kb) = (t.dkv_blocks(batch, seq, hkv), t.kb as usize);
    let parts = t.dkv_parts(batch, seq, seq, hq, hkv) as usize;
    let wg = FlashTiles::WG as usize;
    let sum = (batch * seq * hkv * d / 4).div_ceil(wg);
    [
        format!(
            "flash dkv launch, 1B attention {batch}×{seq}, {hq}/{hkv} heads of {d}: unsplit {blocks} workgroups × {kb} \
             invocations = {}",
            blocks * kb
        ),
        format!(
            "  split in {parts} parts: {} workgroups × {kb} invocations = {}, then the sum: {sum} × {wg} = {}",
            blocks * parts,
            blocks * parts * kb,
            sum * wg
        ),
    ]
}

fn figure(kernel: String, flops: f64, secs: f64) -> Figure {
    let (batch, seq, hq, hkv, d) = SHAPE;
    Figure {
        kernel,
        shape: format!("1B attention {batch}×{seq}, {hq}/{hkv} heads of {d}"),
        gflops: flops / secs / 1e9,
        ms_per_call: secs * 1e3,
        m: seq,
        n: seq,
        k: d,
        op: "attention",
        weight_gbps: None,
    }
}
