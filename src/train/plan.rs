//! A memory plan before loading: the GPU bytes that training a method at a
//! batch size and sequence length will need — frozen weights, the adapter and
//! its optimizer state, and the activations of one step — and whether the
//! largest single buffer fits the device's binding limit.
//!
//! The activation estimate follows how a step uses memory: an op's output goes
//! back to the device's pool when its last handle drops, and a later output of
//! the same size reuses it, even within the step's one submission. So the peak
//! is what the forward keeps for the backward (every layer's activations, or
//! with gradient checkpointing only each layer's input plus one recomputed
//! layer), the working set of one layer's backward, and the loss head's chunk
//! buffers. Micro-batches of one step reuse the same buffers. It is checked
//! against measured peaks in `tests/train_plan.rs`.

use std::collections::BTreeSet;

use serde::Serialize;

use ::safetensors::Dtype;

use crate::gpu::KernelFamily;
use crate::kernels::attention::flash_backward_scratch;
use crate::kernels::blocked::{auto_splits, Blocks};
use crate::model::Config;
use crate::quant::{FourBitOptions, QuantFormat};

/// What the plan is for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    pub quant: QuantFormat,
    /// FP4 levels and double quantization for an NF4 `quant`.
    pub four_bit: FourBitOptions,
    /// The adapter's shape: LoRA's rank and projections, a bottleneck's
    /// width and units, (IA)³'s vectors.
    pub adapter: PlanAdapter,
    pub batch: usize,
    pub seq: usize,
    /// Micro-batches per step (they reuse one set of activation buffers).
    pub grad_accum: usize,
    /// Gradient checkpointing: recompute each layer's activations in the backward.
    pub checkpointing: bool,
    /// The kernels the device runs (`Gpu::kernel_family`): the real-GPU
    /// family's attention backward allocates scratch the CPU family's does
    /// not. `Auto` plans as a real GPU, the users' case.
    pub kernels: KernelFamily,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlanAdapter {
    /// r, the projection names adapted in every layer, whether LoRA
    /// dropout is on (each Linear then keeps its own dropped input), DoRA (a
    /// magnitude per output row; each Linear keeps an (M, out) term), and
    /// whether the init replaces the base weights (PiSSA, OLoRA, LoftQ: see
    /// [`MemoryPlan::init_bytes`]).
    /// `outer_params`: what it trains outside the layers (LoRA on the
    /// embedding or the head, trainable token rows, modules_to_save's copies).
    Lora { r: usize, targets: Vec<String>, dropout: bool, dora: bool, adjusts_base: bool, outer_params: u64 },
    /// AdaLoRA at `init_r` = r: LoRA's shape plus E (r per module), A∘E kept
    /// per module for the backward, and the rank allocator's two EMAs.
    AdaLora { r: usize, targets: Vec<String>, dropout: bool },
    /// Bottleneck width and units per layer.
    Bottleneck { size: usize, units_per_layer: usize },
    /// (IA)³: the projections scaled in every layer, and whether each is
    /// feed-forward (its input scaled) or not (its output).
    Ia3 { modules: Vec<(String, bool)> },
    /// Prompt tuning: the virtual tokens put before every row (the layers
    /// then run on seq + virtual_tokens positions).
    PromptTuning { virtual_tokens: usize },
    /// Prefix tuning: the keys and values every layer's attention sees before
    /// the row's (attention then spans seq + virtual_tokens positions);
    /// `encoder_hidden`: the width of the MLP they come from (`prefix_projection`).
    PrefixTuning { virtual_tokens: usize, encoder_hidden: Option<usize> },
    /// P-tuning: prompt tuning's virtual tokens, made by an MLP `encoder_hidden` wide.
    PTuning { virtual_tokens: usize, encoder_hidden: usize },
    /// Trainable token rows by themselves (PEFT's TRAINABLE_TOKENS): `rows` rows of the embedding.
    TrainableTokens { rows: usize },
}

/// Bytes, by what holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    pub weight_bytes: u64,
    /// What double quantization saves on the frozen weights (0 without it).
    pub double_quant_saved_bytes: u64,
    pub adapter_bytes: u64,
    /// Gradients, AdamW's two moments, and the copies a failed step restores.
    pub optimizer_bytes: u64,
    pub activation_bytes: u64,
    pub total_bytes: u64,
    /// The transient GPU bytes of an init that replaces base weights (PiSSA,
    /// OLoRA, LoftQ), before training: while one Linear is replaced, its new
    /// weight and the f32 rows it is uploaded from are alive beside the old
    /// one (the float copy and the decomposition live on the CPU). 0 for
    /// other adapters; at most `total_bytes`'s training peak on the models
    /// webpeft targets, and counted in `total_bytes` when it is not.
    pub init_bytes: u64,
    /// The largest buffer that cannot be split (a chunk of logits, the MLP's
    /// activations).
    pub largest_buffer_bytes: u64,
    /// The device's `max_storage_buffer_binding_size`.
    pub binding_limit_bytes: u64,
    /// The largest buffer fits one binding.
    pub fits: bool,
}

fn proj_shape(config: &Config, name: &str) -> (usize, usize) {
    let (d, i, q, kv) = (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim());
    match name {
        "q_proj" => (q, d),
        "k_proj" | "v_proj" => (kv, d),
        "o_proj" => (d, q),
        "gate_proj" | "up_proj" => (i, d),
        _ => (d, i), // down_proj
    }
}

/// The length of an (IA)³ vector on projection `name`: its input width when
/// feed-forward, its output width otherwise.
fn ia3_len(config: &Config, name: &str, feedforward: bool) -> u64 {
    let (out, inp) = proj_shape(config, name);
    (if feedforward { inp } else { out }) as u64
}

/// Frozen weights: the blocks' Linears in `quant` (Q8_0 rows that are not a
/// multiple of 32 in f16); under any base but f32 the embedding and the head
/// in the checkpoint's dtype where that is bf16 or f16 (as `Model::load`
/// keeps them); everything else f32.
pub fn weight_bytes(config: &Config, quant: QuantFormat) -> u64 {
    weight_bytes_with(config, quant, FourBitOptions::default())
}

/// [`weight_bytes`] with the 4-bit options of an NF4 `quant`: double
/// quantization stores each block's absmax in one byte instead of four
/// (0.127 instead of 0.5 bits of scale per weight).
pub fn weight_bytes_with(config: &Config, quant: QuantFormat, four_bit: FourBitOptions) -> u64 {
    config
        .tensor_names()
        .iter()
        .map(|t| {
            let quantized = t.name.starts_with("model.layers.") && t.name.ends_with("_proj.weight");
            let (rows, cols) = match t.shape.as_slice() {
                [r, c] => (*r, *c),
                s => (1, s.iter().product()),
            };
            let table = t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight";
            let fmt = match (quantized, config.torch_dtype) {
                (true, _) => quant.storage_for(cols),
                (false, Some(dtype)) if table && quant != QuantFormat::F32 => match dtype {
                    Dtype::BF16 => QuantFormat::Bf16,
                    Dtype::F16 => QuantFormat::F16,
                    _ => QuantFormat::F32,
                },
                _ => QuantFormat::F32,
            };
            match fmt {
                QuantFormat::Nf4 => four_bit.bytes_for(rows, cols) as u64,
                _ => fmt.bytes_for(rows, cols) as u64,
            }
        })
        .sum()
}

/// The plan for `input` on a model of `config`, against `binding_limit` bytes.
pub fn plan_memory(config: &Config, input: &PlanInput, binding_limit: u64) -> MemoryPlan {
    let layers = config.num_hidden_layers as u64;
    let (d, i, v) = (config.hidden_size as u64, config.intermediate_size as u64, config.vocab_size as u64);
    let (q, kv) = (config.q_dim() as u64, config.kv_dim() as u64);
    // Rows of a micro-batch through the layers (prompt tuning's virtual
    // tokens included) and through the loss head (the rows' own tokens).
    let virtual_tokens = match input.adapter {
        PlanAdapter::PromptTuning { virtual_tokens } | PlanAdapter::PTuning { virtual_tokens, .. } => virtual_tokens,
        _ => 0,
    };
    let m = (input.batch * (input.seq + virtual_tokens)) as u64;
    let m_head = (input.batch * input.seq) as u64;
    let heads = config.num_attention_heads as u64;

    let adapter_params: u64 = match &input.adapter {
        PlanAdapter::Lora { r, targets, .. } | PlanAdapter::AdaLora { r, targets, .. } => {
            // AdaLoRA's E (r), DoRA's m (out)
            let e = matches!(input.adapter, PlanAdapter::AdaLora { .. }) as usize;
            let m = matches!(input.adapter, PlanAdapter::Lora { dora: true, .. }) as usize;
            let outer = match input.adapter {
                PlanAdapter::Lora { outer_params, .. } => outer_params,
                _ => 0,
            };
            outer
                + layers
                    * targets
                        .iter()
                        .map(|t| {
                            let (out, inp) = proj_shape(config, t);
                            (*r * (inp + out + e) + m * out) as u64
                        })
                        .sum::<u64>()
        }
        PlanAdapter::Bottleneck { size, units_per_layer } => {
            layers * *units_per_layer as u64 * (2 * d * *size as u64 + *size as u64 + d)
        }
        PlanAdapter::Ia3 { modules } => layers * modules.iter().map(|(t, ff)| ia3_len(config, t, *ff)).sum::<u64>(),
        PlanAdapter::PromptTuning { virtual_tokens } => *virtual_tokens as u64 * d,
        PlanAdapter::TrainableTokens { rows } => *rows as u64 * d,
        PlanAdapter::PrefixTuning { virtual_tokens, encoder_hidden: None } => layers * 2 * *virtual_tokens as u64 * kv,
        // Every copy of a reparametrised adapter (gradients, moments, backups)
        // holds the table and MLP, the prompt they make and the MLP's saved
        // hidden activations (two per hidden layer).
        PlanAdapter::PrefixTuning { virtual_tokens, encoder_hidden: Some(h) } => {
            let (p, h, out) = (*virtual_tokens as u64, *h as u64, layers * 2 * kv);
            p * kv + (kv + 1) * h + (h + 1) * out + p * out + 2 * p * h
        }
        PlanAdapter::PTuning { virtual_tokens, encoder_hidden } => {
            let (v, h) = (*virtual_tokens as u64, *encoder_hidden as u64);
            v * d + (d + 1) * h + (h + 1) * h + (h + 1) * d + v * d + 4 * v * h
        }
    };
    let adapter_bytes = adapter_params * 4;
    // Gradients, two moments and three backups; AdaLoRA's allocator adds its
    // two EMAs and their backups.
    let per_param = if matches!(input.adapter, PlanAdapter::AdaLora { .. }) { 10 } else { 6 };
    let optimizer_bytes = adapter_bytes * per_param;

    // Floats one layer's forward keeps for its backward: x and h, the norms'
    // rstd, roped q and k, v, the attention output and logsumexp, gate and up.
    let mut saved = 2 * m * d + 2 * m + 2 * m * q + 2 * m * kv + heads * m + 2 * m * i;
    // Qwen3's q_norm and k_norm keep q and k before them and their 1/rms.
    if config.qk_norm {
        saved += m * (q + kv) + m * (config.num_attention_heads + config.num_key_value_heads) as u64;
    }
    // Floats of the transient tensors alive at once in one layer's backward
    // (the pool hands the same buffers to every layer): SwiGLU's three
    // (M, I) gradients, the residual stream's (M, D) gradients, and the
    // attention's dout, dq, dk, dv and delta.
    let mut work = 3 * m * i + 7 * m * d + 2 * m * q + 2 * m * kv + heads * m;
    match &input.adapter {
        PlanAdapter::Lora { r, targets, dropout, .. } | PlanAdapter::AdaLora { r, targets, dropout } => {
            if matches!(input.adapter, PlanAdapter::AdaLora { .. }) {
                saved += targets.iter().map(|t| (*r * proj_shape(config, t).1) as u64).sum::<u64>();
                // A∘E
            }
            let has = |names: &[&str]| targets.iter().any(|t| names.contains(&t.as_str()));
            saved += if *dropout {
                // each Linear keeps its own dropped input
                targets.iter().map(|t| m * proj_shape(config, t).1 as u64).sum::<u64>()
            } else {
                // the shared inputs: input_layernorm's and post_attention_layernorm's
                // outputs and SwiGLU's (o_proj's input is kept anyway)
                m * d * (has(&["q_proj", "k_proj", "v_proj"]) as u64 + has(&["gate_proj", "up_proj"]) as u64)
                    + m * i * has(&["down_proj"]) as u64
            };
            saved += targets.len() as u64 * m * *r as u64; // x·Aᵀ
            work += m * *r as u64 + if *dropout { 2 * m * i.max(q) } else { 0 };
            if let PlanAdapter::Lora { dora: true, .. } = input.adapter {
                // DoRA: each Linear keeps t = z₀ + s·lora (M, out) and g, 1/n
                // (out). The pool reuses a buffer only for the same size, so
                // each distinct shape holds its own transients: the dense
                // W + s·B·A of the norm, and about four (M, out) products in
                // the backward (g ⊙ dy, its spread, dy ⊙ t, and one of
                // LoRA's); with dropout also d·Wᵀ's gradient (M, in).
                let shapes: BTreeSet<(usize, usize)> = targets.iter().map(|t| proj_shape(config, t)).collect();
                let outs: BTreeSet<usize> = shapes.iter().map(|s| s.0).collect();
                let ins: BTreeSet<usize> = shapes.iter().map(|s| s.1).collect();
                saved += targets.iter().map(|t| (m + 2) * proj_shape(config, t).0 as u64).sum::<u64>();
                work += shapes.iter().map(|(out, inp)| (out * inp) as u64).sum::<u64>();
                work += outs.iter().map(|&out| 4 * m * out as u64).sum::<u64>();
                if *dropout {
                    work += ins.iter().map(|&inp| m * inp as u64).sum::<u64>();
                }
            }
        }
        PlanAdapter::Bottleneck { size, units_per_layer } => {
            let size = *size as u64;
            saved += *units_per_layer as u64 * (m * d + 2 * m * size);
            work += m * d + 3 * m * size;
        }
        PlanAdapter::Ia3 { modules } => {
            // Each scaled Linear keeps its own output (or, feed-forward, its
            // unscaled input); the backward's scaling makes the product
            // whose column sums are l's gradient, and the scaled gradient.
            let widest = modules.iter().map(|(t, ff)| ia3_len(config, t, *ff)).max().unwrap_or(0);
            saved += modules.iter().map(|(t, ff)| m * ia3_len(config, t, *ff)).sum::<u64>();
            work += 2 * m * widest;
        }
        // The rows with the prompt before them, and in the backward their
        // gradient padded back to every position.
        PlanAdapter::PromptTuning { .. } | PlanAdapter::PTuning { .. } => work += 2 * m * d,
        // A tied head's backward takes the rows' columns of each logits chunk: (M, rows).
        PlanAdapter::TrainableTokens { rows } => work += m * *rows as u64,
        PlanAdapter::PrefixTuning { virtual_tokens, .. } => {
            // Attention keeps q, k, v, its output and logsumexp over the
            // prefix's positions too, and its backward pads and splits them.
            let mp = (input.batch * virtual_tokens) as u64;
            saved += 2 * mp * q + 2 * mp * kv + heads * mp;
            work += 2 * (m + mp) * q + 2 * (m + mp) * kv;
        }
    }
    if input.kernels != KernelFamily::Cpu {
        // The flash backward's split dkv scratch, one buffer for every layer.
        let prefix = match input.adapter {
            PlanAdapter::PrefixTuning { virtual_tokens, .. } => virtual_tokens,
            _ => 0,
        };
        let tq = input.seq + virtual_tokens;
        let shape = (input.batch, tq, tq + prefix);
        let heads = (config.num_attention_heads, config.num_key_value_heads, config.head_dim);
        work += flash_backward_scratch(shape, heads, binding_limit) as u64;
    }
    let checkpointing = input.checkpointing;
    let kept = if checkpointing {
        // Each layer keeps its input; one recomputed layer is alive at a time.
        layers * m * d + saved
    } else {
        layers * saved
    };
    // Training computes the logits in row chunks that reuse one buffer.
    let chunk_rows =
        crate::model::llama::loss::logits_chunk_rows(config.vocab_size, binding_limit).min(m_head as usize) as u64;
    let logits = chunk_rows * v;
    // The last layer's output, model.norm's output and rstd, dxn, and the
    // chunk buffers: rows of xn and dxn, the logits, per-row loss and targets.
    let mut head = 3 * m_head * d + m_head + logits + chunk_rows * (2 * d + 3) + m_head;
    if input.kernels != KernelFamily::Cpu {
        // dxn = dlogits·W (rows, V)·(V, D) has a long K: the blocked GEMM
        // may split it, into partial sums of its own.
        let (rows, d, v) = (chunk_rows as usize, d as usize, v as usize);
        let splits = auto_splits(Blocks::for_shape(rows, d, 1), rows, d, v, 1) as u64;
        head += if splits > 1 { splits * chunk_rows * d as u64 } else { 0 };
    }
    let activation_bytes = (kept + work + head) * 4;

    let weight = weight_bytes_with(config, input.quant, input.four_bit);
    // Buffers that cannot be split: a logits chunk (at least one row), the
    // MLP's (M, I) and the attention's (M, H·hd) activations. Weights are
    // split by rows to the binding limit already.
    let largest = (logits.max(v) * 4).max(m * i * 4).max(m * q * 4);
    let init_bytes = match &input.adapter {
        PlanAdapter::Lora { targets, adjusts_base: true, .. } => targets
            .iter()
            .map(|t| {
                let (out, inp) = proj_shape(config, t);
                (input.quant.storage_for(inp).bytes_for(out, inp) + QuantFormat::F32.bytes_for(out, inp)) as u64
            })
            .max()
            .unwrap_or(0),
        _ => 0,
    };
    let training = weight + adapter_bytes + optimizer_bytes + activation_bytes;
    MemoryPlan {
        weight_bytes: weight,
        double_quant_saved_bytes: weight_bytes(config, input.quant).saturating_sub(weight),
        adapter_bytes,
        optimizer_bytes,
        activation_bytes,
        init_bytes,
        total_bytes: training.max(weight + adapter_bytes + init_bytes),
        largest_buffer_bytes: largest,
        binding_limit_bytes: binding_limit,
        fits: largest <= binding_limit,
    }
}
