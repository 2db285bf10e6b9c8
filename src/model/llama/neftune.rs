//! NEFTune (Jain et al., "NEFTune: Noisy Embeddings Improve Instruction
//! Finetuning", 2023), as transformers' Trainer applies it with
//! `neftune_noise_alpha`: in training, uniform noise in [−m, m) is added to
//! the embedding module's output (after any adapter on `embed_tokens`, before
//! prompt tuning's virtual tokens), m = α / √(T·D) for a (B, T, D) output.
//!
//! transformers computes m in f32 as torch does `alpha / torch.sqrt(tensor(T·D))`:
//! the reciprocal of the f32 square root, times α. The draws are webpeft's
//! own (a hash of the seed and the element's index, as dropout's masks), not
//! torch's generator's; the distribution is the same.

/// One forward's noise on the embeddings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbeddingNoise {
    /// `neftune_noise_alpha`.
    pub alpha: f32,
    /// The draws' seed (one per micro-batch).
    pub seed: u32,
    /// T of transformers' (B, T, D) output: the rows' length, or for packed
    /// rows every token of the batch (TRL's padding-free collator makes them
    /// one row).
    pub tokens: usize,
}

impl EmbeddingNoise {
    /// m = α / √(T·D), in f32 as torch computes it.
    pub fn magnitude(&self, hidden: usize) -> f32 {
        let dims = (self.tokens * hidden) as f32;
        (1.0 / dims.sqrt()) * self.alpha
    }
}
