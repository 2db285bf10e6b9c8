//! The memory plan against what a training step really allocates (peak live
//! GPU bytes measured by the tensor accounting), for LoRA, DoRA, a bottleneck
//! adapter and the other methods on f32 and NF4 bases (from f32 and bf16 checkpoints); and a step too big for the binding limit is
//! reported as not fitting before anything is loaded.

mod common;

use common::{block_on, gpu};
use webpeft::bench::train::{
    llama_1b_config, llama_1b_plan_input, llama_config, random_model_files, train_figure, StepSetup,
};
use webpeft::model::Config;
use webpeft::quant::QuantFormat;
use webpeft::train::plan::{plan_memory, PlanAdapter, PlanInput};
use webpeft::train::recipe::{AdapterRecipe, Method};
use webpeft::Gpu;

/// A model (V, D, I, layers) at (batch, seq) on `gpu`. `bf16`: the checkpoint is stored in bf16, so under a quantized base the
/// embedding and the head stay bf16 (and must be planned so).
fn check(gpu: &Gpu, (vocab, d, inter, layers): (usize, usize, usize, usize), (batch, seq): (usize, usize), bf16: bool) {
    let mut json = llama_config(vocab, d, inter, layers, 4, 2);
    if bf16 {
        json = json.replace("\"torch_dtype\":\"float32\"", "\"torch_dtype\":\"bfloat16\"");
    }
    let config = Config::from_json(json.as_bytes()).unwrap();
    let files = random_model_files(&json, 3).unwrap();
    let all: Vec<String> = webpeft::peft::LORA_MODULES.iter().map(|s| s.to_string()).collect();
    let ia3 = AdapterRecipe::new(Method::Ia3).plan_adapter(&config).unwrap();
    assert_eq!(
        ia3,
        PlanAdapter::Ia3 {
            modules: vec![("k_proj".into(), false), ("v_proj".into(), false), ("down_proj".into(), true)]
        }
    );
    let kv = config.kv_dim(); // prefix tuning's token_dim, its MLP's default width
    let mut peaks = std::collections::HashMap::new();
    for checkpointing in [false, true] {
        for (quant, method, adapter) in [
            (QuantFormat::F32, "lora", lora_r16(&all, false)),
            (QuantFormat::Nf4, "dora", lora_r16(&all, true)),
            (QuantFormat::Nf4, "adalora", PlanAdapter::AdaLora { r: 16, targets: all.clone(), dropout: false }),
            (QuantFormat::Nf4, "seq_bn", PlanAdapter::Bottleneck { size: d / 16, units_per_layer: 1 }),
            (QuantFormat::Q8_0, "ia3", ia3.clone()),
            (QuantFormat::Nf4, "prompt_tuning", PlanAdapter::PromptTuning { virtual_tokens: 20 }),
            (QuantFormat::F32, "prefix_tuning", PlanAdapter::PrefixTuning { virtual_tokens: 20, encoder_hidden: None }),
            (
                QuantFormat::F32,
                "prefix_projection",
                PlanAdapter::PrefixTuning { virtual_tokens: 20, encoder_hidden: Some(kv) },
            ),
            (QuantFormat::Nf4, "p_tuning", PlanAdapter::PTuning { virtual_tokens: 20, encoder_hidden: d }),
        ] {
            let (four_bit, kernels) = (Default::default(), gpu.kernel_family());
            let input = PlanInput { quant, four_bit, adapter, batch, seq, grad_accum: 1, checkpointing, kernels };
            let plan = plan_memory(&config, &input, 128 << 20);
            let setup = StepSetup { checkpointing, steps: 1, ..StepSetup::new(quant, method, batch, seq) };
            let f = block_on(train_figure(gpu, "plan", &files, &setup)).unwrap();
            let ratio = plan.total_bytes as f64 / f.peak_gpu_bytes as f64;
            eprintln!(
                "{kernels:?} kernels, V {vocab} D {d} I {inter} L {layers} bf16 {bf16} {batch}×{seq} {} {method} ckpt {checkpointing}: planned {} B \
                 (weights {}, activations {}), measured peak {} B: plan/measured {ratio:.3}",
                quant.name(),
                plan.total_bytes,
                plan.weight_bytes,
                plan.activation_bytes,
                f.peak_gpu_bytes
            );
            assert_eq!(plan.weight_bytes, f.weight_bytes, "weights are counted exactly");
            assert!((0.9..=1.1).contains(&ratio), "plan off by {ratio}: more than 10%");
            assert!(plan.fits);
            peaks.insert((method, checkpointing), f.peak_gpu_bytes);
        }
    }
    for method in
        ["lora", "dora", "adalora", "seq_bn", "ia3", "prompt_tuning", "prefix_tuning", "prefix_projection", "p_tuning"]
    {
        let (plain, ckpt) = (peaks[&(method, false)], peaks[&(method, true)]);
        assert!(ckpt < plain, "{method}: checkpointing keeps less ({ckpt} vs {plain} B)");
    }
}

// One test a device: the peak counter belongs to the device, so the
// measurements on it must not overlap.
#[test]
fn plan_matches_the_measured_peak() {
    // The test device's family on three shapes; the other family's kernels (what they keep differs, not the
    // methods' or the checkpoint's buffers) on the odd one.
    let gpu = gpu();
    check(gpu, (384, 64, 128, 2), (4, 32), false);
    check(gpu, (1000, 128, 352, 2), (2, 48), false);
    check(gpu, (512, 96, 256, 4), (2, 64), true);
    check(common::gpu_family(), (1000, 128, 352, 2), (2, 48), false);
    check_qwen3(gpu);
}

#[test]
fn activations_over_the_binding_limit_do_not_fit_and_logits_are_chunked() {
    let json = llama_1b_config();
    let config = Config::from_json(json.as_bytes()).unwrap();
    let input = llama_1b_plan_input();
    assert!(config.tie_word_embeddings, "Llama-3.2-1B ties its embedding");
    let plan = plan_memory(&config, &input, 128 << 20);
    // The full logits would be 262 MB; a chunk stays within 16 MiB.
    assert!(plan.fits, "{plan:?}");
    assert!(plan.largest_buffer_bytes <= 128 << 20);
    eprintln!(
        "Llama-3.2-1B shape, NF4, LoRA r 16, 1×512, checkpointing: {:.2} GiB planned",
        plan.total_bytes as f64 / (1u64 << 30) as f64
    );
    assert!(plan.total_bytes < 4 << 30, "the 1B target plans under 4 GiB: {plan:?}");
    let without = plan_memory(&config, &PlanInput { checkpointing: false, ..input.clone() }, 128 << 20);
    assert!(without.total_bytes > plan.total_bytes);
    let big = plan_memory(&config, &PlanInput { batch: 8, seq: 2048, ..input }, 128 << 20);
    assert!(!big.fits, "(16384, 8192) f32 MLP activations are 512 MiB: {big:?}");
    assert!(big.largest_buffer_bytes > big.binding_limit_bytes);
}

/// Qwen3 (q_norm and k_norm keep q and k before them for the backward): the
/// plan of LoRA on all seven projections against the measured peak, with and
/// without checkpointing.
fn check_qwen3(gpu: &Gpu) {
    let json = llama_config(384, 64, 128, 2, 4, 2)
        .replace("\"model_type\":\"llama\"", "\"model_type\":\"qwen3\",\"head_dim\":32")
        .replace("LlamaForCausalLM", "Qwen3ForCausalLM");
    let config = Config::from_json(json.as_bytes()).unwrap();
    assert!(config.qk_norm && config.head_dim == 32);
    let files = random_model_files(&json, 5).unwrap();
    let all: Vec<String> = webpeft::peft::LORA_MODULES.iter().map(|s| s.to_string()).collect();
    for checkpointing in [false, true] {
        let adapter = lora_r16(&all, false);
        let (quant, kernels) = (QuantFormat::F32, gpu.kernel_family());
        let input = PlanInput {
            quant,
            four_bit: Default::default(),
            adapter,
            batch: 4,
            seq: 32,
            grad_accum: 1,
            checkpointing,
            kernels,
        };
        let plan = plan_memory(&config, &input, 128 << 20);
        let setup = StepSetup { checkpointing, steps: 1, ..StepSetup::new(quant, "lora", 4, 32) };
        let f = block_on(train_figure(gpu, "plan", &files, &setup)).unwrap();
        let ratio = plan.total_bytes as f64 / f.peak_gpu_bytes as f64;
        eprintln!(
            "qwen3 lora ckpt {checkpointing}: planned {} B, measured {} B: {ratio:.3}",
            plan.total_bytes, f.peak_gpu_bytes
        );
        assert_eq!(plan.weight_bytes, f.weight_bytes, "weights are counted exactly");
        assert!((0.9..=1.1).contains(&ratio), "plan off by {ratio}: more than 10%");
    }
}

/// LoRA r 16 on the projections `all`, without dropout (and DoRA where `dora`).
fn lora_r16(all: &[String], dora: bool) -> PlanAdapter {
    PlanAdapter::Lora { r: 16, targets: all.to_vec(), dropout: false, dora, adjusts_base: false, outer_params: 0 }
}
