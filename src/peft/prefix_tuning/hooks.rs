//! Where prefix tuning meets the model: the `prefix` hook point, giving every
//! layer's attention its P keys and values before the row's (PEFT's
//! `past_key_values`). Their gradient is the sum over the batch of the
//! gradient at the prefix positions.

use super::adapter::PrefixTuningAdapter;
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::model::llama::hooks::{Hooks, Proj, Sublayer};
use crate::peft::pass::Pass;
use crate::peft::prompt_tuning::hooks::add_batch_sum;

impl Pass<'_, PrefixTuningAdapter> {
    /// `part` (P, KV·hd) for every row: (B, P, KV, hd).
    fn batched(&self, rec: &mut Recorder, part: &Tensor, batch: usize) -> Result<Tensor> {
        let c = &self.params.config;
        let (p, kv) = (c.num_virtual_tokens, c.num_attention_heads);
        let out = rec.alloc(&[batch, p, kv, c.token_dim / kv], DType::F32)?;
        for b in 0..batch {
            rec.copy(part, 0, &out, b as u64 * part.bytes(), part.bytes())?;
        }
        Ok(out)
    }
}

impl Hooks for Pass<'_, PrefixTuningAdapter> {
    fn plain_residual(&self, _layer: usize, _site: Sublayer) -> bool {
        true
    }

    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        true
    }

    fn prefix_len(&self) -> usize {
        self.params.config.num_virtual_tokens
    }

    fn prefix_forward(&self, rec: &mut Recorder, layer: usize, batch: usize) -> Result<Option<(Tensor, Tensor)>> {
        let (Some(k), Some(v)) = (self.params.keys.get(layer), self.params.values.get(layer)) else { return Ok(None) };
        Ok(Some((self.batched(rec, k, batch)?, self.batched(rec, v, batch)?)))
    }

    fn prefix_backward(&self, rec: &mut Recorder, layer: usize, dk: &Tensor, dv: &Tensor) -> Result<()> {
        let g = self.grads("prefix_tuning_backward")?;
        add_batch_sum(rec, dk, &g.keys[layer])?;
        add_batch_sum(rec, dv, &g.values[layer])
    }
}
