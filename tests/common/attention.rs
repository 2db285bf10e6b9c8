//! What the attention test files share: the shape of a case and the
//! tolerances of the kernels against the CPU reference.

use webpeft::gpu::Recorder;
use webpeft::kernels::attention::{
    attention_backward, attention_backward_segmented, attention_forward, attention_forward_segmented, Variant,
};
use webpeft::kernels::reference::attention as cpu;
use webpeft::Tensor;

use super::{block_on, gpu, randn};

// Online softmax and un-normalised accumulation vs the reference's two-pass
// softmax: a few ulp of O(1) outputs.
pub const OUT_ABS: f32 = 2e-6;
pub const OUT_REL: f32 = 1e-5;
// Gradients sum over up to T·group terms, and P is recomputed from lse.
pub const GRAD_ABS: f32 = 1e-5;
pub const GRAD_REL: f32 = 1e-4;

/// Every variant; the subgroup one runs the portable kernels where subgroups cannot, the flash one is forced.
pub const VARIANTS: [Variant; 3] = [Variant::Portable, Variant::Subgroup, Variant::Flash];

/// The flash kernels with their dk and dv work forced into 1 (the unsplit
/// kernel), 2 and 3 parts (uneven: parts of one query more, and empty ones
/// where a key block sees fewer queries than that). `Variant::Flash` chooses
/// the parts itself: on the tests' small shapes, mostly several.
pub const FORCED_SPLITS: [Variant; 3] = [Variant::FlashSplit(1), Variant::FlashSplit(2), Variant::FlashSplit(3)];

/// A case: q (batch, seq, hq, d), k and v (batch, seq, hkv, d).
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

impl Dims {
    pub fn q(&self) -> [usize; 4] {
        [self.batch, self.seq, self.hq, self.d]
    }
    pub fn kv(&self) -> [usize; 4] {
        [self.batch, self.seq, self.hkv, self.d]
    }
    pub fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
    /// The CPU reference forward: (out, probs).
    pub fn reference(&self, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        cpu::attention_forward(q, k, v, self.batch, self.seq, self.hq, self.hkv, self.d, self.scale())
    }
}

/// Seeded inputs of a case: q spread (×1.5) so the softmax is not nearly uniform.
pub struct Inputs {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub dout: Vec<f32>,
}

pub fn inputs(s: Dims, seed: u64) -> Inputs {
    let (nq, nkv) = (s.batch * s.seq * s.hq * s.d, s.batch * s.seq * s.hkv * s.d);
    let q = randn(seed, nq).into_iter().map(|x| 1.5 * x).collect();
    Inputs { q, k: randn(seed + 1, nkv), v: randn(seed + 2, nkv), dout: randn(seed + 3, nq) }
}

/// GPU out, lse, dq, dk, dv in one submit; `starts` None runs the plain kernels.
pub fn run(s: Dims, x: &Inputs, starts: Option<&[u32]>, variant: Variant) -> [Vec<f32>; 5] {
    let gpu = gpu();
    let tq = Tensor::from_slice(gpu, &s.q(), &x.q).unwrap();
    let tk = Tensor::from_slice(gpu, &s.kv(), &x.k).unwrap();
    let tv = Tensor::from_slice(gpu, &s.kv(), &x.v).unwrap();
    let tdout = Tensor::from_slice(gpu, &s.q(), &x.dout).unwrap();
    let mut rec = Recorder::new(gpu);
    let (out, lse, dq, dk, dv) = match starts {
        Some(starts) => {
            let ts = Tensor::from_slice(gpu, &[s.batch, s.seq], starts).unwrap();
            let (out, lse) = attention_forward_segmented(&mut rec, &tq, &tk, &tv, &ts, s.scale(), variant).unwrap();
            let (dq, dk, dv) =
                attention_backward_segmented(&mut rec, &tdout, &tq, &tk, &tv, &out, &lse, &ts, s.scale(), variant)
                    .unwrap();
            (out, lse, dq, dk, dv)
        }
        None => {
            let (out, lse) = attention_forward(&mut rec, &tq, &tk, &tv, s.scale(), variant).unwrap();
            let (dq, dk, dv) =
                attention_backward(&mut rec, &tdout, &tq, &tk, &tv, &out, &lse, s.scale(), variant).unwrap();
            (out, lse, dq, dk, dv)
        }
    };
    rec.submit().unwrap();
    [&out, &lse, &dq, &dk, &dv].map(|t| block_on(t.to_vec::<f32>(gpu)).unwrap())
}
