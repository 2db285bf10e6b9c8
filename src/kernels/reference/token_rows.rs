//! Trainable token rows, the reference for `shaders/token_rows.wgsl`: the
//! table W (vocab, dim) with rows `indices` replaced by delta (k, dim), as
//! PEFT's `W.index_copy(0, indices, delta)`, and its gradient.

/// W with rows `indices` replaced by `delta` (PEFT's `get_merged_weights`).
pub fn merged_table(table: &[f32], indices: &[u32], delta: &[f32], dim: usize) -> Vec<f32> {
    let mut w = table.to_vec();
    for (j, &id) in indices.iter().enumerate() {
        let id = id as usize;
        w[id * dim..(id + 1) * dim].copy_from_slice(&delta[j * dim..(j + 1) * dim]);
    }
    w
}

/// The gradient of delta (k, dim) for a gradient `dw` (vocab, dim) of the
/// merged table: its rows `indices`.
pub fn rows_of(dw: &[f32], indices: &[u32], dim: usize) -> Vec<f32> {
    indices.iter().flat_map(|&id| dw[id as usize * dim..(id as usize + 1) * dim].iter().copied()).collect()
}

/// The embedding's gradient (vocab, dim) for dx (n, dim) at ids (n): row
/// `id` gets the sum of its tokens' dx rows, in token order.
pub fn embedding_backward(ids: &[u32], dx: &[f32], vocab: usize, dim: usize) -> Vec<f32> {
    let mut dw = vec![0.0; vocab * dim];
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..dim {
            dw[id as usize * dim + c] += dx[t * dim + c];
        }
    }
    dw
}

/// out (n, r) = a[:, ids]ᵀ for a (r, vocab): LoRA's embedding A read by id.
pub fn ids_gather(a: &[f32], ids: &[u32], r: usize, vocab: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| (0..r).map(move |c| if (id as usize) < vocab { a[c * vocab + id as usize] } else { 0.0 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_rows_and_picks_their_gradients() {
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        let w = merged_table(&table, &[2, 0], &[7.0, 8.0, 5.0, 6.0], 2);
        assert_eq!(w, [5.0, 6.0, 10.0, 11.0, 7.0, 8.0]);
        let dw = embedding_backward(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2);
        assert_eq!(dw, [0.0, 0.0, 3.0, 4.0, 6.0, 8.0]);
        assert_eq!(rows_of(&dw, &[2, 0], 2), [6.0, 8.0, 0.0, 0.0]);
    }
}
