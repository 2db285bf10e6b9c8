//! The metrics TRL's `SFTTrainer` logs beside the loss, as it computes them
//! for each micro-batch (`compute_loss`):
//!
//! ```text
//! entropy             = Σ_{b,t} mask[b,t]·H(softmax(logits[b,t])) / Σ mask     every real position
//! mean_token_accuracy = #{argmax(logits[b,t]) = labels[b,t+1] ≠ −100} / #{labels[b,t+1] ≠ −100}
//! num_tokens         += Σ mask                                               over the whole run
//! ```
//!
//! `mask` is the attention mask: each row's tokens before its padding
//! ([`Batch::lengths`]). A packed batch, which TRL flattens into one row
//! without padding, counts the same tokens. Under prompt tuning (and
//! P-tuning) the virtual positions are left out of both, so the last one's
//! prediction of a row's first label is in the loss but not in the accuracy.
//! TRL appends each micro-batch's values and logs their mean, so with
//! gradient accumulation a step's figure is the mean over its micro-batches
//! of each one's mean; an evaluation's, the mean over its batches.
//!
//! The GPU adds them up as the loss is computed
//! ([`chunked_lm_loss`](crate::model::llama::loss::chunked_lm_loss)'s
//! `metrics`), each position weighted by its share of the two means.

use super::data::Batch;
use crate::model::llama::IGNORE_INDEX;

/// Each position's weight in the entropy and the accuracy of a micro-batch
/// whose metrics count `share` of the logged mean: (rows · S) pairs in the
/// layout of `targets` (S = T, or 1 + T after virtual tokens, the last
/// virtual position first).
///
/// - targets: the micro-batch's shifted labels ([`shift_labels_after`](crate::model::llama::shift_labels_after))
/// - virtual_tokens: the adapter's virtual tokens (0: none)
pub fn metric_weights(batch: &Batch, targets: &[i32], virtual_tokens: usize, share: f32) -> Vec<[f32; 2]> {
    let rows = batch.input_ids.len().max(1);
    let stride = targets.len() / rows;
    let first = usize::from(virtual_tokens > 0); // the last virtual position's prediction
    let real = |j: usize| j % stride >= first;
    let mask_tokens: usize = batch.lengths.iter().sum();
    let predicted = targets.iter().enumerate().filter(|&(j, &t)| real(j) && t != IGNORE_INDEX).count();
    let entropy_weight = share / mask_tokens.max(1) as f32;
    let hit_weight = if predicted == 0 { 0.0 } else { share / predicted as f32 }; // TRL: accuracy 0
    targets
        .iter()
        .enumerate()
        .map(|(j, &t)| {
            if !real(j) {
                return [0.0, 0.0];
            }
            let (row, position) = (j / stride, j % stride - first);
            let in_mask = batch.lengths.get(row).is_some_and(|&len| position < len);
            [if in_mask { entropy_weight } else { 0.0 }, if t != IGNORE_INDEX { hit_weight } else { 0.0 }]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_virtual_positions_are_left_out() {
        let mut b = Batch::new(vec![vec![1, 2, 3], vec![4, 5, 0]], vec![vec![1, 2, 3], vec![4, 5, -100]]);
        b.lengths = vec![3, 2];
        // Shifted: row 0 → [2, 3, −100], row 1 → [5, −100, −100].
        let w = metric_weights(&b, &[2, 3, -100, 5, -100, -100], 0, 0.5);
        let (e, h) = (0.5 / 5.0, 0.5 / 3.0);
        assert_eq!(w, vec![[e, h], [e, h], [e, 0.0], [e, h], [e, 0.0], [0.0, 0.0]]);
        // After virtual tokens each row's first target is the last virtual position's: in neither.
        let w = metric_weights(&b, &[1, 2, 3, -100, 4, 5, -100, -100], 4, 1.0);
        let (e, h) = (1.0 / 5.0, 1.0 / 3.0);
        let want = [[0.0, 0.0], [e, h], [e, h], [e, 0.0], [0.0, 0.0], [e, h], [e, 0.0], [0.0, 0.0]];
        assert_eq!(w, want.to_vec());
        // No label predicted: accuracy 0, as TRL's.
        assert!(metric_weights(&b, &[-100; 6], 0, 1.0).iter().all(|w| w[1] == 0.0));
    }
}
