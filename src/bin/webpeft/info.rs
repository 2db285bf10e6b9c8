//! `webpeft info`: a model folder's architecture, parameters and bytes per weight format.

use std::io::Write;

use webpeft::model::checkpoint::Checkpoint;
use webpeft::model::config::Config;
use webpeft::model::source::DirFiles;
use webpeft::quant::{FourBitOptions, QuantFormat};

pub async fn info(dir: &std::path::Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let files = DirFiles::new(dir)?;
    let config = Config::load(&files).await?;
    let checkpoint = Checkpoint::open_for(&files, &config).await?;
    // A pre-quantized folder: bitsandbytes' layout, or webpeft's.
    let stored = webpeft::model::bnb::describe(&checkpoint).or_else(|| {
        webpeft::model::quantized::stored_format(&checkpoint).ok().flatten().map(|f| format!("webpeft {f}"))
    });
    let formats = [QuantFormat::F32, QuantFormat::Q8_0, QuantFormat::Nf4];
    let mut bytes: Vec<(&str, u64)> =
        formats.iter().map(|f| (f.name(), webpeft::train::plan::weight_bytes(&config, *f))).collect();
    // bitsandbytes' double quantization: each block's absmax in one byte, not four.
    let dq = FourBitOptions { double_quant: true, ..Default::default() };
    let nf4_dq = webpeft::train::plan::weight_bytes_with(&config, QuantFormat::Nf4, dq);
    let quantized_params: u64 = config
        .tensor_names()
        .iter()
        .filter(|t| t.name.starts_with("model.layers.") && t.name.ends_with("_proj.weight"))
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let nf4 = bytes[2].1;
    // Negative on tiny models: the layout keeps a 1 KiB map per weight.
    let saved_per_param = (nf4 as f64 - nf4_dq as f64) / quantized_params.max(1) as f64;
    bytes.push(("nf4+dq", nf4_dq));
    // Q8_0 keeps Linears whose rows are not a multiple of 32 in f16, as llama.cpp does.
    let q8_f16 = config
        .tensor_names()
        .iter()
        .filter(|t| t.name.starts_with("model.layers.") && t.name.ends_with("_proj.weight"))
        .filter(|t| t.shape.last().is_some_and(|&c| QuantFormat::Q8_0.storage_for(c) != QuantFormat::Q8_0))
        .count();
    if json {
        let out = serde_json::json!({
            "model_type": config.model_type.name(),
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_position_embeddings,
            "sliding_window": config.sliding_window.as_ref().map(|s| s.window),
            "sliding_layers": config.sliding_window.as_ref().map_or(0, |s| s.layers.iter().filter(|&&l| l).count()),
            "tie_word_embeddings": config.tie_word_embeddings,
            "parameters": config.parameter_count(),
            "tensors": checkpoint.names().count(),
            "weight_bytes": bytes.iter().map(|(n, b)| (n.to_string(), *b)).collect::<std::collections::BTreeMap<_, _>>(),
            "q8_0_linears_in_f16": q8_f16,
            "double_quant_saved_bytes_per_parameter": saved_per_param,
            "stored": stored,
        });
        out!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    out!("model:        {}", dir.display());
    out!(
        "architecture: {} ({} layers, hidden {}, intermediate {})",
        config.model_type.name(),
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size
    );
    out!(
        "attention:    {} heads, {} kv heads, head_dim {}",
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim
    );
    out!("vocabulary:   {} (tied embeddings: {})", config.vocab_size, config.tie_word_embeddings);
    if let webpeft::model::config::ModelHead::SequenceClassification { num_labels, problem_type } = config.head {
        let problem = problem_type.map_or(String::new(), |p| format!(", {}", p.name()));
        out!("head:         score, {num_labels} labels{problem} (a sequence classifier: no lm_head)");
    }
    out!("context:      {} positions, rope_theta {}", config.max_position_embeddings, config.rope_theta);
    if let Some(s) = &config.sliding_window {
        let sliding = s.layers.iter().filter(|&&l| l).count();
        out!("sliding:      a window of {} keys on {sliding} of {} layers", s.window, config.num_hidden_layers);
    }
    out!("parameters:   {} in {} tensors", config.parameter_count(), checkpoint.names().count());
    if let Some(s) = &stored {
        out!("stored:       {s} (loads with --quant nf4, its bytes as they are)");
    }
    for (name, b) in bytes {
        let fallback = if name == QuantFormat::Q8_0.name() && q8_f16 > 0 {
            format!("; {q8_f16} with rows not a multiple of 32 in f16")
        } else if name == "nf4+dq" {
            let (verb, v) =
                if saved_per_param >= 0.0 { ("saves", saved_per_param) } else { ("costs", -saved_per_param) };
            format!(" with double quantization, which {verb} {v:.4} bytes ({:.3} bits) a quantized parameter", v * 8.0)
        } else {
            String::new()
        };
        out!(
            "weights {:<6} {:>8.2} MiB  (block Linears in {name}{fallback}, the rest f32)",
            name,
            b as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
