//! Token embedding lookup, the reference for `shaders/embedding.wgsl`.

/// Gathers one table row per id.
///
/// - ids: (n), each `< vocab`
/// - table: (vocab, dim), `model.embed_tokens.weight`
/// - out: (n, dim)
pub fn embedding_forward(ids: &[u32], table: &[f32], vocab: usize, dim: usize) -> Vec<f32> {
    assert_eq!(table.len(), vocab * dim, "embedding_forward: table must be (vocab, dim)");
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let id = id as usize;
        assert!(id < vocab, "embedding_forward: token id {id} is outside the vocabulary of {vocab}");
        out.extend_from_slice(&table[id * dim..(id + 1) * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::embedding_forward;

    #[test]
    fn gathers_rows() {
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        assert_eq!(embedding_forward(&[2, 0, 2], &table, 3, 2), [20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        assert!(embedding_forward(&[], &table, 3, 2).is_empty());
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn rejects_out_of_range_ids() {
        embedding_forward(&[3], &[0.0; 6], 3, 2);
    }
}
