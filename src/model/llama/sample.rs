//! The CPU's token pick from a row of logits: greedy's argmax, and sampling
//! by transformers' rule (temperature → top-k → top-p → min-p → typical →
//! ε cutoff → η cutoff → a draw from the softmax of what is kept; the last
//! three on the CPU only). The draw is the race of `kernels::sample`: the
//! kept token with the largest score − ln E, E hashed from (seed, draw,
//! index), so the GPU's `sample_rows` picks the same token up to float
//! rounding. Decoding draws on the GPU; this is its fallback where the GPU's
//! candidates do not hold the kept set, and a pick for rows already on the CPU.

use super::GenerationConfig;
use crate::error::{Error, Result};
use crate::kernels::sample::{draw_base, race_noise};

/// The index of the largest logit, the lowest on ties (as `torch.argmax`);
/// NaNs are skipped. None for an empty row or one of NaNs only.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

/// The sort key of token `index`'s score (not NaN): ascending keys are
/// descending scores, ties (−0 and 0 too, as `partial_cmp` has them) by
/// ascending index, which is the low 32 bits.
fn rank_key(score: f32, index: usize) -> u64 {
    let bits = (score + 0.0).to_bits(); // −0 + 0 = +0
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    (u64::from(!ascending) << 32) | index as u64
}

/// transformers' repetition penalty on one row of logits (V), in place: each
/// token in `seen` (bit i of word i / 32: token i, as
/// `kernels::sample::seen_tokens` makes it) has its logit divided by
/// `penalty` where ≥ 0 and multiplied by it where negative, as the GPU's
/// `repetition_penalty` does.
pub fn penalize_seen(logits: &mut [f32], seen: &[u32], penalty: f32) {
    for (w, &bits) in seen.iter().enumerate().filter(|(_, &b)| b != 0) {
        for b in 0..32 {
            if bits >> b & 1 == 1 {
                if let Some(l) = logits.get_mut(w * 32 + b) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
    }
}

/// transformers' `no_repeat_ngram_size` on one row of logits (V), in place:
/// every n-gram of `ids` (the sequence so far) whose first n − 1 tokens are
/// its last n − 1 bans its last token (logit −∞), as the GPU's
/// `ban_repeated_ngrams` does.
pub fn ban_seen_ngrams(logits: &mut [f32], ids: &[u32], ngram: usize) {
    if ngram == 0 || ngram > ids.len() {
        return;
    }
    let tail = &ids[ids.len() + 1 - ngram..];
    for gram in ids.windows(ngram).filter(|g| g[..ngram - 1] == *tail) {
        if let Some(l) = logits.get_mut(gram[ngram - 1] as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// `ids` get the logit −∞ in one row of logits (V), in place (an eos before
/// `min_new_tokens`, `begin_suppress_tokens`); ids past the row are none of its.
pub fn ban_ids(logits: &mut [f32], ids: &[u32]) {
    for &id in ids {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// transformers' `bad_words_ids` on one row of logits (V), in place: a word
/// whose tokens but the last are the last of `ids` (the sequence so far;
/// a one-token word always) bans its last token (logit −∞), as the GPU's
/// `ban_words` does; a word longer than `ids` bans nothing.
pub fn ban_bad_words(logits: &mut [f32], ids: &[u32], words: &[Vec<u32>]) {
    for w in words {
        let Some((&last, prefix)) = w.split_last() else { continue };
        if w.len() <= ids.len() && ids.ends_with(prefix) {
            if let Some(l) = logits.get_mut(last as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// A row of logits with no token to pick, on the CPU or on the GPU.
pub(crate) fn no_token() -> Error {
    Error::invalid("sample", "the logits row is empty or all NaN")
}

/// Picks token number `draw` of a generation from one row of logits (V):
/// [`argmax`] when greedy, else transformers' order: logits / temperature,
/// then top-k, top-p, min-p, typical_p, epsilon_cutoff and eta_cutoff, then
/// the race over what is left (the kept token
/// with the largest score − ln E, E from `config.seed` and `draw`; lowest
/// index on ties). A row whose largest score is not finite gives its argmax.
pub fn sample(logits: &[f32], config: &GenerationConfig, draw: u32) -> Result<u32> {
    let pick = |i: Option<usize>| i.map(|i| i as u32).ok_or_else(no_token);
    if config.greedy {
        return pick(argmax(logits));
    }
    config.validate()?;
    let top = pick(argmax(logits))? as usize;
    let scores: Vec<f32> = logits.iter().map(|&l| l / config.temperature).collect();
    let base = draw_base(config.seed, draw);
    let uncut = (config.top_k == 0 || config.top_k >= logits.len()) && config.top_p >= 1.0 && config.min_p <= 0.0;
    if uncut && !config.cuts_by_entropy() {
        // Nothing is cut: the race runs over every value, in index order, unsorted.
        let max = scores.iter().filter(|s| !s.is_nan()).fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        if !max.is_finite() {
            return Ok(top as u32);
        }
        return pick(race(&scores, (0..scores.len()).filter(|&i| !scores[i].is_nan()), base));
    }
    match kept_by_warpers(&scores, config) {
        Some(kept) => pick(race(&scores, kept.into_iter(), base)),
        None => Ok(top as u32),
    }
}

/// The tokens sampling with `config` may draw from `logits` (V), most likely
/// first: what transformers' warpers leave finite after temperature. A row
/// whose largest score is not finite keeps its argmax alone.
pub fn kept_tokens(logits: &[f32], config: &GenerationConfig) -> Result<Vec<usize>> {
    config.validate()?;
    let top = argmax(logits).ok_or_else(no_token)?;
    let scores: Vec<f32> = logits.iter().map(|&l| l / config.temperature).collect();
    Ok(kept_by_warpers(&scores, config).unwrap_or_else(|| vec![top]))
}

/// top-k, top-p, min-p, then typical_p and the ε/η cutoffs on `scores`
/// (logits / temperature): the kept tokens, most likely first; None where
/// the largest score is not finite (or every score is NaN).
fn kept_by_warpers(scores: &[f32], config: &GenerationConfig) -> Option<Vec<usize>> {
    // Candidates, most likely first (lower index first on ties), as integer
    // keys: a vocabulary of 128k is sorted in a few ms this way, not 15.
    let mut keys: Vec<u64> =
        scores.iter().enumerate().filter(|(_, s)| !s.is_nan()).map(|(i, &s)| rank_key(s, i)).collect();
    // top-k: keep scores ≥ the k-th largest, found without sorting them all.
    if config.top_k > 0 && config.top_k < keys.len() {
        let kth = *keys.select_nth_unstable(config.top_k - 1).1 >> 32;
        keys.retain(|&k| k >> 32 <= kth);
        keys.sort_unstable();
    } else {
        // Still in index order: a stable sort by the score's half keeps ties so.
        radsort::sort_by_key(&mut keys, |&k| (k >> 32) as u32);
    }
    let mut order: Vec<usize> = keys.iter().map(|&k| (k & u64::from(u32::MAX)) as usize).collect();
    let max = scores[*order.first()?];
    if !max.is_finite() {
        return None;
    }
    // top-p: the smallest prefix whose probability reaches top_p, at least one.
    let mut keep = order.len();
    if config.top_p < 1.0 {
        let weights: Vec<f64> = order.iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
        let sum: f64 = weights.iter().sum();
        let mut cum = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cum += w / sum;
            if cum >= config.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    // min-p: the most likely tokens whose exp(s − max) reaches min_p (the first's is 1).
    if config.min_p > 0.0 {
        keep = order[..keep].partition_point(|&i| (scores[i] - max).exp() >= config.min_p);
    }
    order.truncate(keep);
    Some(if config.cuts_by_entropy() { cut_by_entropy(scores, order, config) } else { order })
}

/// transformers' `TypicalLogitsWarper`, `EpsilonLogitsWarper` and
/// `EtaLogitsWarper`, in that order, on the tokens `kept` so far (most likely
/// first; the others are −∞ to them, so each softmax is over what is kept).
/// Returns what is left, most likely first (typical's set need not be a
/// most-likely prefix).
fn cut_by_entropy(scores: &[f32], mut kept: Vec<usize>, config: &GenerationConfig) -> Vec<usize> {
    // log p of each kept token and the entropy, in f64.
    let stats = |kept: &[usize]| {
        let max = scores[kept[0]] as f64;
        let sum: f64 = kept.iter().map(|&i| (scores[i] as f64 - max).exp()).sum();
        let log_p: Vec<f64> = kept.iter().map(|&i| scores[i] as f64 - max - sum.ln()).collect();
        let entropy = -log_p.iter().map(|&l| l.exp() * l).sum::<f64>();
        (log_p, entropy)
    };
    if config.typical_p < 1.0 && !kept.is_empty() {
        let (log_p, entropy) = stats(&kept);
        // Sorted by |−log p − H| (ties in kept order), kept until the mass reaches typical_p:
        // every token no farther from H than the one where it is reached (the first always).
        let shifted: Vec<f64> = log_p.iter().map(|&l| (-l - entropy).abs()).collect();
        let mut by_shift: Vec<usize> = (0..kept.len()).collect();
        by_shift.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]).then(a.cmp(&b)));
        let mut cum = 0.0;
        let mut last = by_shift.len() - 1;
        for (n, &j) in by_shift.iter().enumerate() {
            cum += log_p[j].exp();
            if cum >= config.typical_p as f64 {
                last = n;
                break;
            }
        }
        let bound = shifted[by_shift[last]];
        let first = by_shift[0];
        kept = kept.iter().enumerate().filter(|&(n, _)| shifted[n] <= bound || n == first).map(|(_, &i)| i).collect();
    }
    // A token below the cutoff is dropped unless it ties the most likely's score.
    let cut = |kept: Vec<usize>, below: &dyn Fn(f64) -> bool| {
        let (log_p, _) = stats(&kept);
        let top = scores[kept[0]];
        kept.iter().zip(&log_p).filter(|&(&i, &l)| !below(l.exp()) || scores[i] >= top).map(|(&i, _)| i).collect()
    };
    if config.epsilon_cutoff > 0.0 && !kept.is_empty() {
        let epsilon = config.epsilon_cutoff as f64;
        kept = cut(kept, &|p| p < epsilon);
    }
    if config.eta_cutoff > 0.0 && !kept.is_empty() {
        let eta = config.eta_cutoff as f64;
        let (_, entropy) = stats(&kept);
        let cutoff = eta.min(eta.sqrt() * (-entropy).exp());
        kept = cut(kept, &|p| p < cutoff);
    }
    kept
}

/// The most a token's race value exceeds its score: −ln E ≤ −ln(−ln(1 − 2⁻²⁴)).
const MOST_NOISE: f64 = 16.64;

/// The race's winner among `kept`: the largest score − ln E (`race_noise`),
/// the lower index on ties. Where `kept` comes most likely first, it stops
/// at the first token whose score is too low to win with any noise.
fn race(scores: &[f32], kept: impl Iterator<Item = usize>, base: u32) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for i in kept {
        let score = scores[i] as f64;
        if let Some((b, _)) = best {
            if score + MOST_NOISE < b {
                continue;
            }
        }
        let value = score - race_noise(base, i as u32);
        if best.is_none_or(|(b, bi)| value > b || (value == b && i < bi)) {
            best = Some((value, i));
        }
    }
    best.map(|(_, i)| i)
}
