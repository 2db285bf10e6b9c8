//! Merging trainable token rows into the model, as PEFT's `merge`
//! (`W.index_copy(0, indices, delta)` into the embedding; a tied head shares
//! its buffers) and `unmerge` (the embedding's own rows put back).

use super::TrainableTokens;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::qmatmul::{ChunkData, QWeight};
use crate::model::llama::Model;

impl TrainableTokens {
    /// Copies the rows into `model`'s embedding; returns the rows they
    /// replaced (k, D), for [`TrainableTokens::unmerge_from`].
    pub fn merge_into(&self, gpu: &Gpu, model: &Model) -> Result<Tensor> {
        let mut rec = Recorder::new(gpu);
        let own = model.embed(&mut rec, self.rows().indices)?; // (k, D)
        rec.submit()?;
        write_rows(gpu, &model.embed_tokens, &self.indices, &self.delta)?;
        Ok(own)
    }

    /// Puts the embedding's own rows (from [`TrainableTokens::merge_into`]) back.
    pub fn unmerge_from(&self, gpu: &Gpu, model: &Model, own: &Tensor) -> Result<()> {
        write_rows(gpu, &model.embed_tokens, &self.indices, own)
    }
}

/// Rows `rows` (k, D) into table rows `ids` of `table`. The table must be
/// f32: a 16-bit copy would round the rows.
fn write_rows(gpu: &Gpu, table: &QWeight, ids: &[u32], rows: &Tensor) -> Result<()> {
    let row = table.cols as u64 * 4;
    let mut rec = Recorder::new(gpu);
    for (j, &id) in ids.iter().enumerate() {
        let id = id as usize;
        let chunk = table.chunks.iter().find(|c| (c.row_start..c.row_start + c.rows).contains(&id));
        match chunk.map(|c| (c.row_start, &c.data)) {
            Some((start, ChunkData::F32(t))) => rec.copy(rows, j as u64 * row, t, (id - start) as u64 * row, row)?,
            Some((_, ChunkData::Quant(p))) => {
                return Err(Error::invalid(
                    "merge",
                    format!(
                        "trainable token rows into an embedding stored as {}: load the model with an f32 base",
                        p.format
                    ),
                ))
            }
            None => return Err(Error::invalid("merge", format!("token id {id} is not a row of the embedding"))),
        }
    }
    rec.submit()
}
