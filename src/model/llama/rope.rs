//! RoPE cos/sin tables, computed on the CPU exactly as transformers
//! (`rope_inv_freq`, `rope_cos_sin`) and uploaded once, for positions
//! `0..rows`. They start at [`INITIAL_ROWS`] positions (or
//! `max_position_embeddings`, if fewer) and grow, by powers of two, the first
//! time a longer sequence comes: Llama 3.1's 131072 positions would be
//! 2 × 64 MiB up front for head_dim 128.

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::reference::rope::{rope_cos_sin, rope_inv_freq};
use crate::model::Config;

/// Positions covered by the tables at load.
pub const INITIAL_ROWS: usize = 2048;

/// cos and sin for positions `0..rows`, both (rows, head_dim); row `p` is
/// position `p`.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// Positions covered.
    pub fn rows(&self) -> usize {
        self.cos.shape()[0]
    }
}

/// The tables of one model, grown on demand up to `max_position_embeddings`.
#[derive(Debug)]
pub(crate) struct RopeCache {
    /// (head_dim / 2), llama3-scaled when the config says so.
    inv_freq: Vec<f32>,
    max_positions: usize,
    tables: Mutex<RopeTables>,
}

impl RopeCache {
    pub(crate) fn new(gpu: &Gpu, config: &Config) -> Result<RopeCache> {
        let inv_freq = rope_inv_freq(config.head_dim, config.rope_theta as f32, config.rope_scaling.as_ref());
        let max_positions = config.max_position_embeddings;
        let tables = upload(gpu, &inv_freq, INITIAL_ROWS.min(max_positions))?;
        Ok(RopeCache { inv_freq, max_positions, tables: Mutex::new(tables) })
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
            *tables = upload(gpu, &self.inv_freq, positions.next_power_of_two().min(self.max_positions))?;
        }
        Ok(tables.clone())
    }

    /// The inverse frequencies, (head_dim / 2) (transformers' `rotary_emb.inv_freq`).
    pub(crate) fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}

fn upload(gpu: &Gpu, inv_freq: &[f32], rows: usize) -> Result<RopeTables> {
    let positions: Vec<u32> = (0..rows as u32).collect();
    let (cos, sin) = rope_cos_sin(inv_freq, &positions);
    let head_dim = 2 * inv_freq.len();
    Ok(RopeTables {
        cos: Tensor::from_slice(gpu, &[rows, head_dim], &cos)?,
        sin: Tensor::from_slice(gpu, &[rows, head_dim], &sin)?,
    })
}
