//! Merging trainable token rows into the model, as PEFT's `merge`
//! (`W.index_copy(0, indices, delta)` into the embedding, a tied head sharing
//! its buffers, or into an untied head for its own rows) and `unmerge` (the
//! table's own rows put back).

use super::TrainableTokens;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::qmatmul::{ChunkData, QWeight};
use crate::model::llama::Model;

impl TrainableTokens {
    /// Copies the rows into `model`'s embedding (an untied head's own rows:
    /// into `lm_head`); returns the rows they replaced (k, D), for
    /// [`TrainableTokens::unmerge_from`].
    pub fn merge_into(&self, gpu: &Gpu, model: &Model) -> Result<Tensor> {
        let table = self.table(model);
        let mut rec = Recorder::new(gpu);
        let own = crate::kernels::embedding::embedding_weight(&mut rec, table, self.rows().indices)?; // (k, D)
        rec.submit()?;
        write_rows(gpu, table, &self.indices, &self.delta)?;
        Ok(own)
    }

    /// Puts the table's own rows (from [`TrainableTokens::merge_into`]) back.
    pub fn unmerge_from(&self, gpu: &Gpu, model: &Model, own: &Tensor) -> Result<()> {
        write_rows(gpu, self.table(model), &self.indices, own)
    }

    /// The weight whose rows these are: an untied head's own rows belong to
    /// `lm_head`, every other to the embedding (which a tied head shares).
    fn table<'m>(&self, model: &'m Model) -> &'m QWeight {
        match self.in_head && !model.lm_head_is_tied() {
            true => &model.lm_head,
            false => &model.embed_tokens,
        }
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
                        "trainable token rows into a table stored as {}: load the model with an f32 base",
                        p.format
                    ),
                ))
            }
            None => return Err(Error::invalid("merge", format!("token id {id} is not a row of the embedding"))),
        }
    }
    rec.submit()
}
