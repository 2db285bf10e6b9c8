//! llama.cpp's names for Hugging Face Llama-family tensors (gguf-py's
//! `TensorNameMap` for the `llama`, `qwen2` and `qwen3` architectures), the Q/K row
//! order its converter uses for `llama`, and the llama3 RoPE factors it
//! stores as a tensor.

/// The GGUF name of a checkpoint tensor, or `None` when llama.cpp has none.
/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let short = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{suffix}"))
}

/// Which permutation a llama-arch q/k tensor gets: the number of heads its
/// rows hold (q: attention heads, k: key-value heads), else `None`.
pub fn permute_heads(hf: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
    let is = |p: &str| hf.ends_with(&format!("{p}.weight")) || hf.ends_with(&format!("{p}.bias"));
    if is("q_proj") {
        Some(n_head)
    } else if is("k_proj") {
        Some(n_head_kv)
    } else {
        None
    }
}

/// The converter's `LlamaModel.permute` on a (rows, cols) row-major tensor
/// of `heads` heads: within each head, HF's rotate-half layout (first half
/// of the rotary pairs, then the second) becomes ggml's interleaved pairs,
/// `reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)`:
/// new row h·d + 2i + j = old row h·d + j·d/2 + i.
pub fn permute_rows(x: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (to, from) = (h * d + 2 * i + j, h * d + j * half + i);
                out[to * cols..(to + 1) * cols].copy_from_slice(&x[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// `rope_freqs.weight` for llama3 RoPE scaling, in f32 as the converter's
/// torch code computes it (PyTorch on the CPU turns `scalar / tensor` into
/// `reciprocal(tensor) · scalar`; the same roundings here give the same bits): per rotary pair, 1 below the high-frequency
/// wavelength, `factor` above the low one, and in between
/// 1 / ((1 − s)/factor + s) with s = (L/λ − low)/(high − low).
pub fn llama3_rope_factors(base: f32, dim: usize, factor: f32, low: f32, high: f32, old_ctx: f32) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / base.powf(i as f32 / dim as f32);
            let wavelen = (1.0 / freq) * (2.0 * std::f64::consts::PI) as f32;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = ((1.0 / wavelen) * old_ctx - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(gguf_name("model.layers.11.mlp.down_proj.weight").as_deref(), Some("blk.11.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_proj.bias").as_deref(), Some("blk.0.attn_k.bias"));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_interleaves_each_head() {
        // 2 heads of 4 rows, 1 column: head rows (a0 a1 b0 b1) -> (a0 b0 a1 b1).
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        assert_eq!(permute_rows(&x, 8, 1, 2), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }
}

#[cfg(test)]
mod rope_tests {
    use super::*;

    #[test]
    fn llama3_factors_match_the_converter() {
        // convert_hf_to_gguf.py's torch code for llama_gqa (theta 1e4, head_dim 24, factor 8, low 1, high 4, L 32).
        let f = llama3_rope_factors(10000.0, 24, 8.0, 1.0, 4.0, 32.0);
        let bits: Vec<u32> = f.iter().map(|v| v.to_bits()).collect();
        assert_eq!(&bits[..4], &[1.0f32.to_bits(), 0x3ff4d3ef, 0x40d0a7c3, 8.0f32.to_bits()], "{f:?}");
    }
}
