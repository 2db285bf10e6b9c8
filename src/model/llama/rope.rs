//! RoPE cos/sin tables, computed on the CPU exactly as transformers
//! (`rope_inv_freq`, `rope_cos_sin`) and uploaded once, for positions
//! `0..rows`. They start at [`INITIAL_ROWS`] positions (or
//! `max_position_embeddings`, if fewer) and grow, by powers of two, the first
//! time a longer sequence comes: Llama 3.1's 131072 positions would be
//! 2 × 64 MiB up front for head_dim 128.
//!
//! As transformers (4.57) computes them for Llama: `inv_freq` from
//! `_compute_default_rope_parameters`, adjusted by `_compute_llama3_parameters`
//! when `rope_scaling.rope_type == "llama3"` (`modeling_rope_utils.py`), and
//! `cos`, `sin` of `cat(freqs, freqs)` with `freqs = pos · inv_freq`
//! (`LlamaRotaryEmbedding.forward`). Frequencies follow torch's f32 operation
//! order, so they match torch's CPU values to about 1 ulp (its vectorised
//! `pow`/`cos`/`sin` round within 1 ulp; these are correctly rounded).

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::Config;

/// Positions covered by the tables at load.
pub const INITIAL_ROWS: usize = 2048;

/// cos and sin for positions `0..rows`, both (rows, head_dim); row `p` is
/// position `p`. Packed rows ([`RopeCache::packed`]) instead have one row
/// per token, (B·T, head_dim), at that token's position in its example.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Packed rows: (B, T) u32, the index in its row at which each token's
    /// example begins; attention keeps to it. `None`: one sequence per row.
    pub segment_starts: Option<Tensor>,
    /// Sliding layers' starts (B, N) u32: the first key each query sees,
    /// `segment_starts` (or 0) raised to `position − window + 1`. `None`
    /// where the window cuts no query's keys: the sliding layers then attend
    /// as the others do.
    pub window_starts: Option<Tensor>,
}

impl RopeTables {
    /// Positions covered.
    pub fn rows(&self) -> usize {
        self.cos.shape()[0]
    }

    /// Sets [`window_starts`](Self::window_starts) for `window` (the
    /// config's, `None` when no layer slides) and the queries of `batch` rows
    /// of `n` at positions `first..first + n` of their row's keys, each
    /// seeing keys from `starts` (B·N; `None`: from 0) without the window:
    /// transformers' `kv_idx > q_idx − sliding_window`.
    pub(crate) fn slide(
        &mut self,
        gpu: &Gpu,
        window: Option<usize>,
        (batch, n): (usize, usize),
        first: usize,
        starts: Option<&[u32]>,
    ) -> Result<()> {
        let Some(window) = window.filter(|&w| first + n > w) else {
            return Ok(()); // every key a query could see is within its window
        };
        let start = |k: usize| starts.map_or(0, |s| s[k]);
        let slid: Vec<u32> =
            (0..batch * n).map(|k| start(k).max((first + k % n + 1).saturating_sub(window) as u32)).collect();
        if (0..batch * n).any(|k| slid[k] != start(k)) {
            self.window_starts = Some(Tensor::from_slice(gpu, &[batch, n], &slid)?);
        }
        Ok(())
    }
}

/// The tables of one model, grown on demand up to `max_position_embeddings`.
#[derive(Debug)]
pub(crate) struct RopeCache {
    /// (head_dim / 2), scaled as `rope_scaling` says.
    inv_freq: Vec<f32>,
    /// What multiplies cos and sin ([`RopeScaling::attention_factor`]).
    attention: f32,
    max_positions: usize,
    tables: Mutex<RopeTables>,
}

impl RopeCache {
    pub(crate) fn new(gpu: &Gpu, config: &Config) -> Result<RopeCache> {
        let inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling.as_ref());
        let attention = config.rope_scaling.map_or(1.0, |s| s.attention_factor());
        let max_positions = config.max_position_embeddings;
        let tables = upload(gpu, &inv_freq, attention, INITIAL_ROWS.min(max_positions))?;
        Ok(RopeCache { inv_freq, attention, max_positions, tables: Mutex::new(tables) })
    }

    /// Tables covering at least positions `0..positions`.
    pub(crate) fn tables(&self, gpu: &Gpu, positions: usize) -> Result<RopeTables> {
        if positions > self.max_positions {
            return Err(Error::shape(
                "Model::forward",
                format!("{positions} positions are more than max_position_embeddings {}", self.max_positions),
            ));
        }
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if tables.rows() < positions {
            *tables =
                upload(gpu, &self.inv_freq, self.attention, positions.next_power_of_two().min(self.max_positions))?;
        }
        Ok(tables.clone())
    }

    /// The tables of a packed batch from its position ids (B, T): cos and sin
    /// (B·T, head_dim), one row per token at its position id, and where each
    /// token's example begins (`t − position_ids[b][t]`). Each row's ids count
    /// 0, 1, … within an example and restart at 0 where the next begins.
    /// Sliding layers (`window`) see keys from the later of the example's
    /// start and their window's.
    pub(crate) fn packed(
        &self,
        gpu: &Gpu,
        position_ids: &[Vec<u32>],
        (b, t): (usize, usize),
        window: Option<usize>,
    ) -> Result<RopeTables> {
        const OP: &str = "Model::forward";
        if position_ids.len() != b || position_ids.iter().any(|row| row.len() != t) {
            return Err(Error::shape(OP, format!("position_ids must be (batch, seq) = ({b}, {t}), as the input ids")));
        }
        let mut starts = Vec::with_capacity(b * t);
        for (r, row) in position_ids.iter().enumerate() {
            for (i, &pos) in row.iter().enumerate() {
                let follows = pos == 0 || (i > 0 && row[i - 1] + 1 == pos);
                if !follows || pos as usize >= self.max_positions {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "position_ids[{r}][{i}] = {pos}: each example counts 0, 1, … below \
                             max_position_embeddings {} and the next restarts at 0",
                            self.max_positions
                        ),
                    ));
                }
                starts.push((i - pos as usize) as u32);
            }
        }
        let flat: Vec<u32> = position_ids.concat();
        let (cos, sin) = rope_cos_sin(&self.inv_freq, &flat, self.attention);
        let head_dim = 2 * self.inv_freq.len();
        let mut tables = RopeTables {
            cos: Tensor::from_slice(gpu, &[b * t, head_dim], &cos)?,
            sin: Tensor::from_slice(gpu, &[b * t, head_dim], &sin)?,
            segment_starts: Some(Tensor::from_slice(gpu, &[b, t], &starts)?),
            window_starts: None,
        };
        tables.slide(gpu, window, (b, t), 0, Some(&starts))?;
        Ok(tables)
    }

    /// The inverse frequencies, (head_dim / 2) (transformers' `rotary_emb.inv_freq`).
    pub(crate) fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}

fn upload(gpu: &Gpu, inv_freq: &[f32], attention: f32, rows: usize) -> Result<RopeTables> {
    let positions: Vec<u32> = (0..rows as u32).collect();
    let (cos, sin) = rope_cos_sin(inv_freq, &positions, attention);
    let head_dim = 2 * inv_freq.len();
    Ok(RopeTables {
        cos: Tensor::from_slice(gpu, &[rows, head_dim], &cos)?,
        sin: Tensor::from_slice(gpu, &[rows, head_dim], &sin)?,
        segment_starts: None,
        window_starts: None,
    })
}

/// `rope_scaling`: how transformers' `ROPE_INIT_FUNCTIONS`
/// (`modeling_rope_utils.py`) change the default inverse frequencies and,
/// for YaRN, cos and sin.
///
/// The factors are f64 because transformers holds them as Python floats; each
/// is rounded to f32 exactly where torch combines it with an f32 tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// "linear" (position interpolation): `inv_freq / factor`.
    Linear { factor: f64 },
    /// "dynamic" (NTK-aware): the base grows with a sequence longer than
    /// `max_position_embeddings`. webpeft runs none longer, and up to it
    /// transformers' base is `theta · (factor·M/M − (factor − 1))^(d/(d−2))`.
    Dynamic { factor: f64, max_position_embeddings: usize },
    /// "yarn".
    Yarn(YarnScaling),
    /// "llama3" (Llama 3.1 and later).
    Llama3(Llama3Scaling),
}

impl RopeScaling {
    /// What multiplies cos and sin (`attention_scaling`): YaRN's attention
    /// factor, 1 for the others.
    pub fn attention_factor(&self) -> f32 {
        match self {
            RopeScaling::Yarn(y) => y.attention_factor as f32,
            _ => 1.0,
        }
    }
}

/// `rope_scaling` of type "llama3".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`, 8.0 for Llama 3.1, 32.0 for Llama 3.2.
    pub factor: f64,
    /// `low_freq_factor`, 1.0 in the released models.
    pub low_freq_factor: f64,
    /// `high_freq_factor`, 4.0 in the released models.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`, 8192 in the released models.
    pub original_max_position_embeddings: u32,
}

/// `rope_scaling` of type "yarn" (Qwen2.5's and Qwen3's long-context
/// setting), its defaults resolved as `_compute_yarn_parameters` resolves them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnScaling {
    /// `factor`.
    pub factor: f64,
    /// `original_max_position_embeddings`, else the config's `max_position_embeddings`.
    pub original_max_position_embeddings: f64,
    /// `attention_factor`, else `get_mscale(factor, mscale) / get_mscale(factor,
    /// mscale_all_dim)` when both are given and non-zero, else
    /// `0.1·ln(factor) + 1` (1 for a factor ≤ 1).
    pub attention_factor: f64,
    /// `beta_fast` (32 when absent or 0).
    pub beta_fast: f64,
    /// `beta_slow` (1 when absent or 0).
    pub beta_slow: f64,
    /// `truncate` (true): the correction range's ends rounded outwards to whole dimensions.
    pub truncate: bool,
}

/// Inverse frequencies, (head_dim / 2).
///
/// - head_dim: the rotated dimension (even)
/// - theta: `rope_theta`
/// - scaling: `rope_scaling`, `None` for the default RoPE
///
/// Default, in torch's order (all f32):
/// `e = float(arange(0, dim, 2)) / dim; inv = 1.0 / (theta ** e)`,
/// where `1.0 / t` is `t.reciprocal() * 1.0`.
///
/// linear: `inv / factor`. dynamic: the default with its base (f64, as
/// Python computes it). yarn (tensor arithmetic in f32):
/// ```text
/// extrapolation = 1.0 / pos_freqs,  interpolation = 1.0 / (factor * pos_freqs)    (pos_freqs = theta ** e)
/// low, high = correction range of beta_fast, beta_slow     (Python floats; floor/ceil when truncate)
/// ramp = clamp((arange(d/2) - low) / (high - low), 0, 1),  ext = 1 - ramp
/// inv = interpolation * (1 - ext) + extrapolation * ext
/// ```
///
/// llama3 (all tensor arithmetic in f32; Python scalars rounded to f32 where
/// they meet a tensor):
/// ```text
/// low_wavelen  = old_ctx / low_freq_factor          (Python float)
/// high_wavelen = old_ctx / high_freq_factor
/// wavelen = 2π / inv            = inv.reciprocal() * f32(2π)
/// inv_l   = where(wavelen > low_wavelen, inv / factor, inv)
/// smooth  = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
///           where old_ctx / wavelen = wavelen.reciprocal() * old_ctx
/// smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
/// medium  = !(wavelen < high_wavelen) && !(wavelen > low_wavelen)
/// inv     = where(medium, smoothed, inv_l)
/// ```
/// Divisions by a scalar are true f32 divisions (torch's CPU kernel; its CUDA
/// kernel multiplies by the reciprocal instead, which differs by an ulp when
/// the divisor is not a power of two).
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    assert!(head_dim % 2 == 0 && head_dim > 0, "rope_inv_freq: head_dim must be even, got {head_dim}");
    let pow_freqs = |base: f64| -> Vec<f32> {
        let dim = head_dim as f32;
        (0..head_dim)
            .step_by(2)
            .map(|i| {
                let exponent = i as f32 / dim;
                // torch: pow(f32(base), exponent) in f32; here correctly rounded via f64.
                ((base as f32) as f64).powf(exponent as f64) as f32
            })
            .collect()
    };
    let default = |base: f64| -> Vec<f32> { pow_freqs(base).into_iter().map(|p| 1.0 / p).collect() };
    match scaling {
        None => default(theta),
        Some(RopeScaling::Linear { factor }) => default(theta).into_iter().map(|inv| inv / *factor as f32).collect(),
        Some(&RopeScaling::Dynamic { factor, max_position_embeddings }) => {
            let (d, m) = (head_dim as f64, max_position_embeddings as f64);
            default(theta * ((factor * m / m) - (factor - 1.0)).powf(d / (d - 2.0)))
        }
        Some(RopeScaling::Yarn(y)) => yarn_inv_freq(&pow_freqs(theta), theta, y),
        Some(RopeScaling::Llama3(s)) => llama3_inv_freq(default(theta), s),
    }
}

/// `_compute_yarn_parameters`' inverse frequencies from `pos_freqs`
/// (`theta ** e`, f32): interpolated (÷ factor) below the correction range,
/// extrapolated (the default) above it, a linear ramp between.
fn yarn_inv_freq(pos_freqs: &[f32], theta: f64, y: &YarnScaling) -> Vec<f32> {
    let dim = 2 * pos_freqs.len();
    let correction_dim = |rotations: f64| {
        (dim as f64 * (y.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001; // transformers' guard against a zero-width ramp
    }
    let (low32, span) = (low as f32, (high - low) as f32);
    let factor = y.factor as f32;
    pos_freqs
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
            let ext = 1.0 - ramp;
            let (extrapolation, interpolation) = (1.0 / p, 1.0 / (factor * p));
            interpolation * (1.0 - ext) + extrapolation * ext
        })
        .collect()
}

fn llama3_inv_freq(inv_freq: Vec<f32>, s: &Llama3Scaling) -> Vec<f32> {
    let old_ctx = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = (old_ctx / s.low_freq_factor) as f32;
    let high_freq_wavelen = (old_ctx / s.high_freq_factor) as f32;
    let factor = s.factor as f32;
    let low_freq_factor = s.low_freq_factor as f32;
    let freq_factor_span = (s.high_freq_factor - s.low_freq_factor) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;

    inv_freq
        .into_iter()
        .map(|inv| {
            let wavelen = (1.0 / inv) * two_pi;
            let inv_l = if wavelen > low_freq_wavelen { inv / factor } else { inv };
            let smooth = ((1.0 / wavelen) * old_ctx as f32 - low_freq_factor) / freq_factor_span;
            let smoothed = (1.0 - smooth) * inv_l / factor + smooth * inv_l;
            // torch's `~(wavelen < high) * ~(wavelen > low)`, kept literally.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            if is_medium {
                smoothed
            } else {
                inv_l
            }
        })
        .collect()
}

/// Returns `(cos, sin)`, each (positions.len(), 2 * inv_freq.len()).
///
/// - inv_freq: (head_dim / 2), from [`rope_inv_freq`]
/// - positions: (seq), the absolute position of each row
/// - attention: [`RopeScaling::attention_factor`] (1 but for YaRN)
///
/// `freqs = f32(pos) * inv_freq` (one f32 product, as torch's matmul with an
/// inner dimension of 1), `emb = cat(freqs, freqs)`, and cos/sin of `emb`
/// correctly rounded to f32 (computed in f64), each times `attention` in f32.
pub fn rope_cos_sin(inv_freq: &[f32], positions: &[u32], attention: f32) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let head_dim = 2 * half;
    let mut cos = vec![0.0f32; positions.len() * head_dim];
    let mut sin = vec![0.0f32; positions.len() * head_dim];
    for (s, &pos) in positions.iter().enumerate() {
        for (j, &f) in inv_freq.iter().enumerate() {
            let angle = (pos as f32 * f) as f64;
            let (sn, cs) = (angle.sin() as f32 * attention, angle.cos() as f32 * attention);
            for col in [j, j + half] {
                cos[s * head_dim + col] = cs;
                sin[s * head_dim + col] = sn;
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;

    const LLAMA3: RopeScaling = RopeScaling::Llama3(Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });

    #[test]
    fn default_inv_freq_known_values() {
        // head_dim 8, theta 10000: 10000^-(0, 1/4, 2/4, 3/4) = 1, 0.1, 0.01, 0.001.
        let inv = rope_inv_freq(8, 10000.0, None);
        assert_close("inv_freq", &inv, &[1.0, 0.1, 0.01, 0.001], 0.0, 2e-7);
        assert_eq!(inv[0], 1.0);
    }

    #[test]
    fn llama3_inv_freq_regions() {
        let head_dim = 128;
        let plain = rope_inv_freq(head_dim, 500000.0, None);
        let scaled = rope_inv_freq(head_dim, 500000.0, Some(&LLAMA3));
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        let (mut high, mut medium, mut low) = (0, 0, 0);
        for (&p, &s) in plain.iter().zip(&scaled) {
            let wavelen = (1.0 / p) * two_pi;
            if wavelen < 2048.0 {
                // High frequencies are untouched.
                assert_eq!(s, p);
                high += 1;
            } else if wavelen > 8192.0 {
                // Low frequencies are divided by the factor.
                assert_eq!(s, p / 8.0);
                low += 1;
            } else {
                // In between, a blend strictly between the two.
                assert!(s < p && s > p / 8.0, "medium frequency {s} not in ({}, {p})", p / 8.0);
                medium += 1;
            }
        }
        assert_eq!(high + medium + low, 64);
        assert!(high > 0 && medium > 0 && low > 0, "{high} {medium} {low}");
        // Monotonically decreasing frequencies survive the blend.
        assert!(scaled.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn cos_sin_layout() {
        let inv = rope_inv_freq(6, 10000.0, None);
        let (cos, sin) = rope_cos_sin(&inv, &[0, 3], 1.0);
        assert_eq!(cos.len(), 12);
        assert_eq!(&cos[..6], &[1.0; 6]);
        assert_eq!(&sin[..6], &[0.0; 6]);
        for j in 0..3 {
            let angle = 3.0f32 * inv[j];
            assert_eq!(cos[6 + j], cos[6 + j + 3]);
            assert_eq!(sin[6 + j], sin[6 + j + 3]);
            assert_close("cos", &[cos[6 + j]], &[angle.cos()], 1e-7, 0.0);
            assert_close("sin", &[sin[6 + j]], &[angle.sin()], 1e-7, 0.0);
        }
    }
}
