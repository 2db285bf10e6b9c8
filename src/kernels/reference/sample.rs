//! CPU reference for `shaders/sample.wgsl` (and `model::llama::sample`):
//! transformers' sampling rule written as plainly as possible. Every value
//! is sorted by (score descending, index ascending) with a comparator, top-k
//! keeps the scores ≥ the k-th, top-p the shortest prefix whose probability
//! (f64) reaches top_p, min-p the scores whose exp(s − max) (f32) reaches
//! min_p, and the race picks the kept token with the largest
//! score − ln E (`kernels::sample::race_noise`), the lower index on ties.

use std::cmp::Ordering;

use crate::kernels::sample::{draw_base, race_noise, Sampling};

/// What the rule makes of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// The token (None for a row of NaNs only, or an empty one).
    pub token: Option<u32>,
    /// The kept tokens, most likely first (empty where the largest score is
    /// not finite: then the token is the largest logit's).
    pub kept: Vec<usize>,
    /// Each kept token's race value, in `kept`'s order.
    pub race: Vec<f64>,
    /// Values that are not NaN.
    pub values: usize,
}

/// The draw from `logits` (V) with `sampling` (row 0: draw `sampling.draw`).
pub fn sample_row(logits: &[f32], sampling: &Sampling) -> Draw {
    let scores: Vec<f32> = logits.iter().map(|&l| l / sampling.temperature).collect();
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !scores[i].is_nan()).collect();
    let values = order.len();
    let none = Draw { token: None, kept: Vec::new(), race: Vec::new(), values };
    // No NaN is left, so every pair compares (−0 and 0 as equal).
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b)));
    let Some(&first) = order.first() else { return none };
    let max = scores[first];
    if !max.is_finite() {
        let mut top = first;
        for &i in &order {
            if logits[i] > logits[top] || (logits[i] == logits[top] && i < top) {
                top = i;
            }
        }
        return Draw { token: Some(top as u32), ..none };
    }
    let mut kept = order;
    if sampling.top_k > 0 && sampling.top_k < values {
        let kth = scores[kept[sampling.top_k - 1]];
        kept.retain(|&i| scores[i] >= kth);
    }
    if sampling.top_p < 1.0 {
        let weights: Vec<f64> = kept.iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
        let sum: f64 = weights.iter().sum();
        let mut cum = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cum += w / sum;
            if cum >= sampling.top_p as f64 {
                kept.truncate(n + 1);
                break;
            }
        }
    }
    if sampling.min_p > 0.0 {
        kept.retain(|&i| (scores[i] - max).exp() >= sampling.min_p);
    }
    let base = draw_base(sampling.seed, sampling.draw);
    let race: Vec<f64> = kept.iter().map(|&i| scores[i] as f64 - race_noise(base, i as u32)).collect();
    let mut best = 0;
    for n in 1..kept.len() {
        if race[n] > race[best] || (race[n] == race[best] && kept[n] < kept[best]) {
            best = n;
        }
    }
    Draw { token: Some(kept[best] as u32), kept, race, values }
}

/// transformers' `RepetitionPenaltyLogitsProcessor` on one row: each token of
/// `ids` (repeats and all) has its logit divided by `penalty` where ≥ 0 and
/// multiplied by it where negative, once.
pub fn repetition_penalty(logits: &[f32], ids: &[u32], penalty: f32) -> Vec<f32> {
    let mut out = logits.to_vec();
    for (i, value) in out.iter_mut().enumerate() {
        if ids.contains(&(i as u32)) {
            *value = if *value < 0.0 { *value * penalty } else { *value / penalty };
        }
    }
    out
}

/// transformers' `NoBadWordsLogitsProcessor` (a `SequenceBiasLogitsProcessor`
/// of −∞) on one row: the one-token words always get the logit −∞; a longer
/// word, unless it is longer than `ids`, bans its last token where its other
/// tokens are the last of `ids`. (transformers drops a word that is just an
/// eos before this; so do its callers.)
pub fn bad_words(logits: &[f32], ids: &[u32], words: &[Vec<u32>]) -> Vec<f32> {
    let mut bias = vec![0.0f32; logits.len()];
    for w in words.iter().filter(|w| w.len() == 1) {
        bias[w[0] as usize] = f32::NEG_INFINITY;
    }
    for w in words.iter().filter(|w| w.len() > 1 && w.len() <= ids.len()) {
        let Some((last, prefix)) = w.split_last() else { continue };
        if ids[ids.len() - prefix.len()..] == *prefix {
            bias[*last as usize] += f32::NEG_INFINITY;
        }
    }
    logits.iter().zip(&bias).map(|(l, b)| l + b).collect()
}

/// transformers' `NoRepeatNGramLogitsProcessor` on one row: the n-grams of
/// `ids` (each `ngram` consecutive tokens) grouped by their first n − 1
/// tokens, and the last tokens of those whose first n − 1 are the last n − 1
/// of `ids` get the logit −∞; nothing while `ids` is shorter than n − 1.
pub fn no_repeat_ngram(logits: &[f32], ids: &[u32], ngram: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    if ngram == 0 || ids.len() + 1 < ngram {
        return out;
    }
    let mut next: std::collections::HashMap<&[u32], Vec<u32>> = std::collections::HashMap::new();
    for gram in ids.windows(ngram) {
        next.entry(&gram[..ngram - 1]).or_default().push(gram[ngram - 1]);
    }
    for &banned in next.get(&ids[ids.len() + 1 - ngram..]).map_or(&[][..], Vec::as_slice) {
        if let Some(l) = out.get_mut(banned as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    out
}
